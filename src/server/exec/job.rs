//! One job as the protocol sees it: an approved request turned into a
//! [`JobSpec`], the process's pipes streamed as frames, its end reported
//! once. Starting, signalling and killing the process is
//! [`super::process`]'s.
//!
//! ```text
//! spawn ── started ──┬─ stdout pump ── stdout frames ─┐
//!                    ├─ stderr pump ── stderr frames ─┼─> writer (bounded: back-pressure)
//!                    └─ wait: exit | timeout | cancel ┘
//!   (a job on a terminal: one pump, of the terminal's master, as stdout)
//!                         after exit, pipes get `drain_grace` to reach EOF
//!                         (time blocked on a slow client does not count),
//!                         then exit is reported
//! ```
//!
//! Past the job's `max_output` ([`OutputCap`]) the pumps go on reading
//! and drop what they read, so the job neither blocks on a full pipe nor
//! costs the client anything more; with `max_output_kill` the job is
//! stopped instead.
//!
//! The pumps read a pipe only when the previous chunk has been queued for
//! the client (and, with an output window, when the window had room for
//! it), so a client that stops reading stops the job (its pipe fills)
//! instead of growing the server's memory. With windows (PROTOCOL.md
//! §3.6), stdin frames are given back as the job takes them.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use super::spawn::Child;
use bytes::{BufMut, Bytes, BytesMut};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::policy::Refusal;
use super::process::{JobSpec, SetupError, Spawned, kill_and_wait, reap_group, signal_name};
use crate::proto::frame::CHUNK;
use crate::proto::message::Stamp;
use crate::proto::{Command, ErrorCode, ExecRequest, ExitStatus, ServerMsg};

/// Timing policy for a job.
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub drain_grace: Duration,
}

/// The process an approved request makes: `approved` is the command the
/// policy handed back (argv[0] resolved), the rest comes from the request.
/// What the kernel would refuse or misread (NUL bytes, an empty name) is a
/// `bad_request`.
pub fn spec(
    approved: &super::policy::Approved,
    req: &ExecRequest,
    live: &super::Live,
) -> Result<JobSpec, Refusal> {
    let bad = |m: String| Err(Refusal::new(ErrorCode::BadRequest, m));
    let nul = |s: &str| s.contains('\0');
    let argv = match &approved.command {
        Command::Shell(c) if nul(c) => return bad("cmd contains a NUL byte".into()),
        Command::Shell(c) => vec!["/bin/sh".into(), "-c".into(), c.clone()],
        Command::Argv(a) if a.iter().any(|s| nul(s)) => {
            return bad("argv contains a NUL byte".into());
        }
        Command::Argv(a) if a.first().is_none_or(|p| p.is_empty()) => {
            return bad("argv[0] is empty".into());
        }
        Command::Argv(a) => a.clone(),
    };
    if let Some(k) = req
        .env
        .iter()
        .find(|(k, v)| k.is_empty() || k.contains('=') || nul(k) || nul(v))
        .map(|(k, _)| k)
    {
        return bad(format!("bad environment variable {k:?}"));
    }
    if req.cwd.as_deref().is_some_and(|c| c.is_empty() || nul(c)) {
        return bad("bad cwd".into());
    }
    Ok(JobSpec {
        argv,
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        stdin: req.stdin,
        run_as: approved.run_as.clone(),
        max_processes: (live.cfg.max_processes > 0).then_some(live.cfg.max_processes),
        pty: req.pty.clone(),
    })
}

/// Signal names a client may send (§3.3).
pub fn client_signal(name: &str) -> Option<Signal> {
    Some(match name {
        "HUP" => Signal::SIGHUP,
        "INT" => Signal::SIGINT,
        "QUIT" => Signal::SIGQUIT,
        "KILL" => Signal::SIGKILL,
        "TERM" => Signal::SIGTERM,
        "USR1" => Signal::SIGUSR1,
        "USR2" => Signal::SIGUSR2,
        _ => return None,
    })
}

/// How a process ended, as the protocol reports it.
pub fn exit_status(st: std::process::ExitStatus, timed_out: bool) -> ExitStatus {
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal {
            name: signal_name(sig),
            timed_out,
        },
        (None, None) => ExitStatus::Code(-1),
    }
}

/// Where a job's stdin frames go: its stdin pipe, or its terminal.
pub type Input = Box<dyn AsyncWrite + Send + Unpin>;

/// What a job reads from the client and what it writes, as the spawn left
/// them: its stdin pipe (if asked for) and its output pipes, or its
/// terminal for all three.
pub fn streams(mut spawned: Spawned) -> (Child, Option<Input>, Outputs) {
    let child = spawned.child;
    match spawned.pty.take() {
        Some(pty) => {
            let input = Box::new(pty.clone()) as Input;
            (child, Some(input), (Some(Box::new(pty)), None))
        }
        None => {
            let stdin = spawned.stdin.take().map(|s| Box::new(s) as Input);
            let out = spawned.stdout.take().map(|o| Box::new(o) as Output);
            let err = spawned.stderr.take().map(|e| Box::new(e) as Output);
            (child, stdin, (out, err))
        }
    }
}

/// A job's stdout and stderr; a terminal is all stdout.
pub type Outputs = (Option<Output>, Option<Output>);
type Output = Box<dyn AsyncRead + Send + Unpin>;

/// Gives a job's stdin window back as the job takes its input
/// (PROTOCOL.md §3.6).
pub struct Grant {
    pub id: u64,
    /// What the job's stdin holds against its window.
    pub charged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub out: mpsc::Sender<ServerMsg>,
}

/// Copies the client's stdin frames into the job's stdin. Ends (closing
/// the pipe, or typing end-of-file on a terminal) when the channel closes
/// (`eof`); a job that closed its stdin makes further data be discarded.
/// With a `grant`, each frame taken (written, or discarded) frees its cost
/// in the window and tells the client so. Ends at once when the job has
/// `ended`: a write blocked on a pipe or terminal that a leftover process
/// holds and never reads would otherwise keep this task, and the terminal,
/// for as long as that process lives.
pub async fn stdin_writer(
    mut stdin: Input,
    mut rx: mpsc::Receiver<Bytes>,
    ended: CancellationToken,
    grant: Option<Grant>,
) {
    let mut broken = false;
    loop {
        let data = tokio::select! {
            d = rx.recv() => d,
            () = ended.cancelled() => break,
        };
        let Some(data) = data else {
            // `eof`: the end of the job's input.
            tokio::select! {
                _ = stdin.shutdown() => {}
                () = ended.cancelled() => {}
            }
            return;
        };
        if !broken {
            tokio::select! {
                r = stdin.write_all(&data) => broken = r.is_err(),
                () = ended.cancelled() => {
                    give_back(grant.as_ref(), frame_cost(&data)).await;
                    break;
                }
            }
        }
        give_back(grant.as_ref(), frame_cost(&data)).await;
    }
    // The job is over: what is still sent to it until the session lets go
    // of it (the job's `exit` seen) is dropped and given back, so that
    // every frame's cost comes back to the client (PROTOCOL.md §3.6).
    if grant.is_some() {
        while let Some(data) = rx.recv().await {
            give_back(grant.as_ref(), frame_cost(&data)).await;
        }
    }
}

/// What a stdin frame costs against its job's window.
pub(super) fn frame_cost(data: &Bytes) -> u64 {
    data.len() as u64 + crate::proto::message::STDIN_FRAME_COST
}

/// Frees `cost` of a job's window, then tells the client (with windows):
/// in that order, so that what the client sends on hearing of it fits.
pub(super) async fn give_back(grant: Option<&Grant>, cost: u64) {
    let Some(g) = grant else { return };
    g.charged
        .fetch_sub(cost, std::sync::atomic::Ordering::AcqRel);
    let freed = ServerMsg::Window {
        id: g.id,
        stdin: cost,
    };
    // Fails only once the connection is gone, and the job with it.
    let _ = g.out.send(freed).await;
}

/// How a job ended, and what it sent.
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub status: ExitStatus,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Output read past `max_output` and dropped.
    pub dropped: u64,
    /// Stopped by the server for passing `max_output` (`max_output_kill`).
    pub capped: bool,
}

/// Why the server stopped a job that passed its `max_output` with
/// `max_output_kill` (the `exit` frame's `reason`).
pub const CAPPED: &str = "output past max_output";

/// A job's `max_output` (PROTOCOL.md §3.3): what may still be sent, and
/// what was dropped; shared by its stdout and stderr pumps.
#[derive(Debug)]
pub struct OutputCap {
    left: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
    kill: bool,
    /// Cancelled once output was dropped.
    reached: CancellationToken,
}

impl OutputCap {
    /// The cap a request gets: the smaller of what it asked and the
    /// server's `exec.max_output` (0: none); `None` when neither sets one.
    pub fn new(
        asked: &crate::proto::OutputOptions,
        server_max: u64,
    ) -> Option<std::sync::Arc<OutputCap>> {
        let max = match (asked.max_output, server_max) {
            (None, 0) => return None,
            (Some(m), 0) => m,
            (None, s) => s,
            (Some(m), s) => m.min(s),
        };
        Some(std::sync::Arc::new(OutputCap {
            left: max.into(),
            dropped: 0.into(),
            kill: asked.max_output_kill,
            reached: CancellationToken::new(),
        }))
    }

    /// Of `len` bytes read, how many may be sent; the rest is dropped and
    /// counted.
    fn take(&self, len: u64) -> u64 {
        use std::sync::atomic::Ordering;
        let mut keep = 0;
        let _ = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                keep = left.min(len);
                Some(left - keep)
            });
        if keep < len {
            self.dropped.fetch_add(len - keep, Ordering::AcqRel);
            self.reached.cancel();
        }
        keep
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves when the job is to be stopped for its output: never
    /// without `max_output_kill`.
    async fn stop(cap: Option<&OutputCap>) {
        match cap {
            Some(c) if c.kill => c.reached.cancelled().await,
            _ => std::future::pending().await,
        }
    }
}

/// Runs a spawned job to its end and returns how it ended. `out` carries
/// output frames to the writer; `cancel` kills the job (disconnect,
/// shutdown).
pub async fn run(
    id: u64,
    (mut child, (stdout, stderr)): (Child, Outputs),
    pgid: Pid,
    timing: JobTiming,
    out: Out,
    cancel: CancellationToken,
) -> JobEnd {
    let (exited_tx, exited_rx) = watch::channel::<Option<Instant>>(None);
    let cap = out.cap.clone();
    // Polled in this task, not spawned: a task of their own cost every
    // job a hand-off between threads (and the wake-up of a parked worker)
    // when its pipes ended.
    let pumps = pump_both(
        id,
        stdout,
        stderr,
        out,
        exited_rx,
        timing.drain_grace,
        cancel.clone(),
    );
    tokio::pin!(pumps);
    let mut pumped = None;

    let timeout = async {
        match timing.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let mut timed_out = false;
    let mut capped = false;
    // The pumps go on while the process runs, and may end first.
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            r = &mut pumps, if pumped.is_none() => pumped = Some(r),
            _ = &mut timeout => {
                timed_out = true;
                debug!(id, "job timed out; killing its group");
                break kill_and_wait_pumping(&mut child, pgid, timing.kill_grace, &mut pumps, &mut pumped).await;
            }
            _ = cancel.cancelled() => {
                debug!(id, "job cancelled; killing its group");
                break kill_and_wait_pumping(&mut child, pgid, timing.kill_grace, &mut pumps, &mut pumped).await;
            }
            () = OutputCap::stop(cap.as_deref()), if !capped => {
                capped = true;
                debug!(id, "job past its max_output; killing its group");
                break kill_and_wait_pumping(&mut child, pgid, timing.kill_grace, &mut pumps, &mut pumped).await;
            }
        }
    };
    let _ = exited_tx.send(Some(Instant::now()));
    // The pumps stop on EOF or when the drain grace runs out; either way
    // every byte they read has been queued before `exit` is.
    let (stdout_bytes, stderr_bytes) = match pumped {
        Some(r) => r,
        None => pumps.await,
    };
    reap_group(pgid);
    // Releasing the group (or keeping it to kill) is the session's call, in
    // one place: two checks here and there once left a group that emptied
    // between them (its last member calling setsid) released by neither,
    // and that member alive in the job's cgroup.
    let status = match status {
        Ok(st) => exit_status(st, timed_out),
        Err(e) => {
            debug!(id, error = %e, "wait failed");
            ExitStatus::Code(-1)
        }
    };
    JobEnd {
        status,
        stdout_bytes,
        stderr_bytes,
        dropped: cap.as_deref().map_or(0, OutputCap::dropped),
        capped,
    }
}

/// [`kill_and_wait`], with the pumps still polled meanwhile (output the
/// job writes while it is being stopped keeps flowing, as it did when the
/// pumps were a task of their own).
async fn kill_and_wait_pumping(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
    pumps: &mut std::pin::Pin<&mut impl std::future::Future<Output = (u64, u64)>>,
    pumped: &mut Option<(u64, u64)>,
) -> std::io::Result<std::process::ExitStatus> {
    let kill = kill_and_wait(child, pgid, grace);
    tokio::pin!(kill);
    loop {
        tokio::select! {
            st = &mut kill => return st,
            r = pumps.as_mut(), if pumped.is_none() => *pumped = Some(r),
        }
    }
}

async fn pump_both(
    id: u64,
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    out: Out,
    exited: watch::Receiver<Option<Instant>>,
    grace: Duration,
    cancel: CancellationToken,
) -> (u64, u64) {
    let a = async {
        match stdout {
            Some(r) => pump(id, r, false, &out, exited.clone(), grace, &cancel).await,
            None => 0,
        }
    };
    let b = async {
        match stderr {
            Some(r) => pump(id, r, true, &out, exited.clone(), grace, &cancel).await,
            None => 0,
        }
    };
    tokio::join!(a, b)
}

/// Streams one pipe as frames until EOF, or until the drain grace after the
/// main process's exit has passed with the pipe still open. Returns the
/// bytes queued for the client.
async fn pump(
    id: u64,
    mut pipe: impl AsyncRead + Unpin,
    is_stderr: bool,
    out: &Out,
    mut exited: watch::Receiver<Option<Instant>>,
    grace: Duration,
    cancel: &CancellationToken,
) -> u64 {
    let mut sent = 0u64;
    let mut buf = BytesMut::new();
    // Time spent waiting for the client after the exit: it extends the
    // deadline, since the grace is for other processes holding the pipe,
    // not for a slow reader.
    let mut blocked = Duration::ZERO;
    loop {
        buf.reserve(CHUNK);
        // A frame holds 64 KiB at most (PROTOCOL.md §3.3), whatever room
        // the buffer has: an output window counts on it.
        let mut room = (&mut buf).limit(CHUNK);
        let exit_time = *exited.borrow();
        let n = match exit_time {
            Some(t) => {
                match tokio::time::timeout_at(t + grace + blocked, pipe.read_buf(&mut room)).await {
                    Ok(r) => r,
                    Err(_) => {
                        debug!(
                            id,
                            is_stderr, "pipe still open after the drain grace; closing it"
                        );
                        return sent;
                    }
                }
            }
            None => tokio::select! {
                r = pipe.read_buf(&mut room) => r,
                _ = exited.changed() => continue,
            },
        };
        match n {
            Ok(0) | Err(_) => return sent,
            Ok(_) => {
                let mut data = buf.split().freeze();
                if let Some(cap) = &out.cap {
                    let keep = cap.take(data.len() as u64);
                    data.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
                    if data.is_empty() {
                        continue;
                    }
                }
                let len = data.len() as u64;
                let ts = out.timestamps.then(Stamp::now);
                let msg = if is_stderr {
                    ServerMsg::Stderr { id, data, ts }
                } else {
                    ServerMsg::Stdout { id, data, ts }
                };
                let t0 = Instant::now();
                tokio::select! {
                    r = out.send(msg, len) => if r.is_err() {
                        return sent; // the connection is gone
                    },
                    // Closing: nobody will read the rest.
                    _ = cancel.cancelled() => return sent,
                }
                sent += len;
                if exit_time.is_some() || exited.borrow().is_some() {
                    blocked += t0.elapsed();
                }
            }
        }
    }
}

/// Where a job's output frames go: the connection's writer, paced by the
/// job's output window when the client gave one.
#[derive(Clone)]
pub struct Out {
    pub tx: mpsc::Sender<ServerMsg>,
    pub window: Option<std::sync::Arc<OutputWindow>>,
    pub cap: Option<std::sync::Arc<OutputCap>>,
    /// Stamp each frame with the time it was read (`timestamps`).
    pub timestamps: bool,
}

impl Out {
    /// Queues an output frame of `len` bytes, first waiting for room in
    /// the job's window; `Err` once the connection is gone.
    pub(super) async fn send(&self, msg: ServerMsg, len: u64) -> Result<(), ()> {
        if let Some(w) = &self.window {
            w.take(len + crate::proto::message::OUTPUT_FRAME_COST)
                .await?;
        }
        self.tx.send(msg).await.map_err(|_| ())
    }
}

/// A job's output window (PROTOCOL.md §3.6): what the server may still
/// send before the client says it took it.
pub struct OutputWindow {
    room: tokio::sync::Semaphore,
    /// Costs sent and not yet given back: a client may give back no more.
    owed: std::sync::atomic::AtomicU64,
}

impl OutputWindow {
    pub fn new(window: u64) -> OutputWindow {
        OutputWindow {
            room: tokio::sync::Semaphore::new(usize::try_from(window).unwrap_or(0)),
            owed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) async fn take(&self, cost: u64) -> Result<(), ()> {
        let n = u32::try_from(cost).map_err(|_| ())?;
        self.room.acquire_many(n).await.map_err(|_| ())?.forget();
        self.owed
            .fetch_add(cost, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// The client took `k` of what was sent; more than was sent is a
    /// protocol error (and would let the window grow without bound).
    pub fn give_back(&self, k: u64) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        self.owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(k)
            })
            .map_err(|owed| {
                format!("output window given back ({k}) beyond what was sent ({owed})")
            })?;
        self.room.add_permits(usize::try_from(k).unwrap_or(0));
        Ok(())
    }
}

/// The refusal for a spawn that failed.
pub fn spawn_refusal(e: &io::Error, spec: &JobSpec) -> Refusal {
    use super::policy::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP};
    let what = spec.argv.first().map(String::as_str).unwrap_or_default();
    match e.get_ref().and_then(|i| i.downcast_ref::<SetupError>()) {
        Some(setup) => Refusal::spawn_failed(setup.to_string(), EXIT_SETUP),
        None if e.kind() == io::ErrorKind::NotFound => {
            Refusal::spawn_failed(format!("cannot run {what}: {e}"), EXIT_NOT_FOUND)
        }
        None => Refusal::spawn_failed(format!("cannot run {what}: {e}"), EXIT_NOT_EXECUTABLE),
    }
}
