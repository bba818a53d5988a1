//! One job: a child process in its own session and process group, its
//! credentials and working directory set in the child, its pipes streamed
//! as frames, its end reported once, and its group killed and reaped.
//!
//! ```text
//! spawn ── started ──┬─ stdout pump ── stdout frames ─┐
//!                    ├─ stderr pump ── stderr frames ─┼─> writer (bounded: back-pressure)
//!                    └─ wait: exit | timeout | cancel ┘
//!                         after exit, pipes get `drain_grace` to reach EOF
//!                         (time blocked on a slow client does not count),
//!                         then exit is reported
//! ```
//!
//! The pumps read a pipe only when the previous chunk has been queued for
//! the client, so a client that stops reading stops the job (its pipe
//! fills) instead of growing the server's memory.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::policy::RunAs;
use crate::proto::frame::CHUNK;
use crate::proto::{Command, ErrorCode, ExitStatus, ServerMsg};

/// Environment variables passed from the server to jobs (plus `LC_*`).
const PASSED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"];
/// PATH for jobs when the server has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Timing policy for a job.
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub drain_grace: Duration,
}

/// A spawned job, before its task runs.
pub struct Spawned {
    pub child: Child,
    pub pgid: Pid,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
}

/// Builds the environment of §3.3: a few variables from the server, then
/// the request's, which override.
pub fn job_env(
    request_env: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in std::env::vars() {
        if PASSED_ENV.contains(&k.as_str()) || k.starts_with("LC_") {
            env.insert(k, v);
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if let Some(u) = run_as {
        for (k, v) in [
            ("HOME", &u.home),
            ("USER", &u.name),
            ("LOGNAME", &u.name),
            ("SHELL", &u.shell),
        ] {
            env.insert(k.into(), v.clone());
        }
    }
    for (k, v) in request_env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// Checks what the kernel would refuse or misread in an exec request.
pub fn check_request(
    command: &Command,
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Result<(), String> {
    let nul = |s: &str| s.contains('\0');
    match command {
        Command::Shell(c) if nul(c) => return Err("cmd contains a NUL byte".into()),
        Command::Argv(a) if a.iter().any(|s| nul(s)) => {
            return Err("argv contains a NUL byte".into());
        }
        Command::Argv(a) if a.first().is_some_and(|p| p.is_empty()) => {
            return Err("argv[0] is empty".into());
        }
        _ => {}
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || nul(k) || nul(v) {
            return Err(format!("bad environment variable {k:?}"));
        }
    }
    if cwd.is_some_and(|c| c.is_empty() || nul(c)) {
        return Err("bad cwd".into());
    }
    Ok(())
}

/// Spawns `command` in a new session and process group (whose id is the
/// returned pid) with a clean environment, default signal dispositions, an
/// empty signal mask, descriptors 0-2 only, as the run-as user and in
/// `cwd` entered as that user. Registered with the reaper and the keeper.
pub fn spawn(
    command: &Command,
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    with_stdin: bool,
    run_as: Option<&RunAs>,
) -> io::Result<Spawned> {
    let mut cmd = match command {
        Command::Shell(line) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
        Command::Argv(argv) => {
            let (prog, args) = argv
                .split_first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
            let mut c = tokio::process::Command::new(prog);
            c.args(args);
            c
        }
    };
    cmd.env_clear().envs(job_env(env, run_as));
    // Entered in the child after the switch to the job's user (std's
    // `current_dir` would enter it as the server, before `pre_exec`), so a
    // directory the user cannot reach is refused. Allocated before the fork.
    let dir = cwd
        .map(|d| std::ffi::CString::new(d).map(|c| (d.to_string(), c)))
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cwd contains a NUL byte"))?;
    cmd.stdin(if with_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(false);
    // The hook forces fork+exec where std would otherwise use posix_spawn.
    // Measured: posix_spawn would give ~20% more jobs/s for `true`, but
    // glibc's posix_spawn leaves its internal signals (32, 33) ignored in
    // the child, and jobs must start with every disposition at its default
    // (PROTOCOL.md §3.3); see docs/BENCHMARKS.md.
    let ids = run_as.map(|u| (u.uid, u.gid, u.groups.clone()));
    let dir_c = dir.as_ref().map(|(_, c)| c.clone());
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (rt_sigaction, sigprocmask, setsid,
    // close_range or fcntl, setgroups, setgid, setuid, chdir) on data
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            reset_signals()?;
            // A session of its own, not just a group: a process can move
            // only to groups of its own session, so no job process can
            // join the server's group (and escape the group kill) with
            // setpgid. The group's id is still the job's pid.
            nix::unistd::setsid()?;
            // Descriptors the server inherited without close-on-exec stay
            // out of the job: it gets 0, 1 and 2 only.
            crate::sys::cloexec_from(3);
            // Groups first, then the group, then the user: each step needs
            // the privileges the next one drops.
            if let Some((uid, gid, groups)) = &ids {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            if let Some(d) = &dir_c
                && libc::chdir(d.as_ptr()) != 0
            {
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(io::Error::from_raw_os_error(CWD_FAILED | errno));
            }
            Ok(())
        });
    }
    let mut child = super::reaper::spawn_main(|| cmd.spawn(), |c| c.id()).map_err(|e| {
        match (e.raw_os_error(), &dir) {
            (Some(code), Some((d, _))) if code & CWD_FAILED != 0 => {
                let os = io::Error::from_raw_os_error(code & !CWD_FAILED);
                io::Error::new(os.kind(), CwdError(format!("cannot enter {d}: {os}")))
            }
            _ => e,
        }
    })?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
    let pgid = Pid::from_raw(pid as i32);
    super::keeper::hold(pgid);
    let stdin = child.stdin.take();
    Ok(Spawned {
        child,
        pgid,
        pid,
        stdin,
    })
}

/// Marks the errno of a failed `chdir` in the child. std passes the child's
/// error to the parent as a bare errno; this bit (far above any errno)
/// tells a cwd failure from an exec failure with the same errno (ENOENT,
/// EACCES), so the error can name the directory.
const CWD_FAILED: i32 = 0x4000_0000;

/// The job's working directory could not be entered (as the job's user).
#[derive(Debug)]
struct CwdError(String);

impl std::fmt::Display for CwdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CwdError {}

/// In the child: every signal back to its default action, none blocked, so
/// whatever the server ignores or blocks does not leak into jobs.
fn reset_signals() -> io::Result<()> {
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            crate::sys::default_action_raw(sig);
        }
    }
    // SAFETY: sigemptyset/sigprocmask on a local set; async-signal-safe.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    Ok(())
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

/// A signal's name without `SIG`, or its number for one nix cannot name.
pub fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => s.as_str().trim_start_matches("SIG").to_string(),
        Err(_) => sig.to_string(),
    }
}

fn to_status(st: std::process::ExitStatus, timed_out: bool) -> ExitStatus {
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal {
            name: signal_name(sig),
            timed_out,
        },
        (None, None) => ExitStatus::Code(-1),
    }
}

/// Sends `sig` to the group; false if the group no longer exists.
pub fn signal_group(pgid: Pid, sig: Signal) -> bool {
    killpg(pgid, sig) != Err(Errno::ESRCH)
}

/// Whether any process is left in the group.
pub fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None) != Err(Errno::ESRCH)
}

/// Reaps members of `pgid` that are our children (orphans re-parented to
/// the server, which is a child subreaper). Never waits.
pub fn reap_group(pgid: Pid) {
    loop {
        match waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// TERM to the whole group, KILL after `grace`, until no process of the
/// group is left (orphans that are our children are reaped on the way).
/// Bounded: gives up after `grace` past the KILL.
pub async fn kill_group(pgid: Pid, grace: Duration) {
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        if !signal_group(pgid, sig) {
            super::keeper::release(pgid);
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            reap_group(pgid);
            if !group_alive(pgid) {
                super::keeper::release(pgid);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Copies the client's stdin frames into the job's stdin. Ends (closing
/// the pipe) when the channel closes (`eof` or job end); a job that closed
/// its stdin makes further data be discarded.
pub async fn stdin_writer(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    let mut broken = false;
    while let Some(data) = rx.recv().await {
        if !broken && stdin.write_all(&data).await.is_err() {
            broken = true;
        }
    }
    let _ = stdin.shutdown().await;
}

/// How a job ended, and what it sent.
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub status: ExitStatus,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Runs a spawned job to its end and returns how it ended. `out` carries
/// output frames to the writer; `cancel` kills the job (disconnect,
/// shutdown).
pub async fn run(
    id: u64,
    mut child: Child,
    pgid: Pid,
    timing: JobTiming,
    out: mpsc::Sender<ServerMsg>,
    cancel: CancellationToken,
) -> JobEnd {
    let (exited_tx, exited_rx) = watch::channel::<Option<Instant>>(None);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pumps = tokio::spawn(pump_both(
        id,
        stdout,
        stderr,
        out,
        exited_rx,
        timing.drain_grace,
        cancel.clone(),
    ));

    let timeout = async {
        match timing.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut timed_out = false;
    let status = tokio::select! {
        st = child.wait() => st,
        _ = timeout => {
            timed_out = true;
            debug!(id, "job timed out; killing its group");
            kill_and_wait(&mut child, pgid, timing.kill_grace).await
        }
        _ = cancel.cancelled() => {
            debug!(id, "job cancelled; killing its group");
            kill_and_wait(&mut child, pgid, timing.kill_grace).await
        }
    };
    let _ = exited_tx.send(Some(Instant::now()));
    // The pumps stop on EOF or when the drain grace runs out; either way
    // every byte they read has been queued before `exit` is.
    let (stdout_bytes, stderr_bytes) = pumps.await.unwrap_or_default();
    reap_group(pgid);
    // A group still alive lingers for the session to kill (which releases
    // it); the keeper also forgets groups that die on their own.
    if !group_alive(pgid) {
        super::keeper::release(pgid);
    }
    let status = match status {
        Ok(st) => to_status(st, timed_out),
        Err(e) => {
            debug!(id, error = %e, "wait failed");
            ExitStatus::Code(-1)
        }
    };
    JobEnd {
        status,
        stdout_bytes,
        stderr_bytes,
    }
}

async fn kill_and_wait(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
) -> io::Result<std::process::ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(st) => st,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

async fn pump_both(
    id: u64,
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    out: mpsc::Sender<ServerMsg>,
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
    out: &mpsc::Sender<ServerMsg>,
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
        let exit_time = *exited.borrow();
        let n = match exit_time {
            Some(t) => {
                match tokio::time::timeout_at(t + grace + blocked, pipe.read_buf(&mut buf)).await {
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
                r = pipe.read_buf(&mut buf) => r,
                _ = exited.changed() => continue,
            },
        };
        match n {
            Ok(0) | Err(_) => return sent,
            Ok(_) => {
                let data = buf.split().freeze();
                let len = data.len() as u64;
                let msg = if is_stderr {
                    ServerMsg::Stderr { id, data }
                } else {
                    ServerMsg::Stdout { id, data }
                };
                let t0 = Instant::now();
                tokio::select! {
                    r = out.send(msg) => if r.is_err() {
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

/// The error frame for a failed spawn.
pub fn spawn_error(id: u64, e: &io::Error, command: &Command) -> ServerMsg {
    let what = match command {
        Command::Shell(_) => "/bin/sh".to_string(),
        Command::Argv(a) => a.first().cloned().unwrap_or_default(),
    };
    let message = match e.get_ref().and_then(|i| i.downcast_ref::<CwdError>()) {
        Some(cwd) => format!("cannot run {what}: working directory: {cwd}"),
        None => format!("cannot run {what}: {e}"),
    };
    ServerMsg::error(Some(id), ErrorCode::SpawnFailed, message)
}
