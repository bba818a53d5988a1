//! Detached jobs (PROTOCOL.md §3.10): a job started with `detach` runs on
//! after its connection closes, its output kept in a bounded buffer until
//! a connection of the same identity attaches to it.
//!
//! ```text
//! job task: pumps ─> hub ─> Ring (bounded: the oldest bytes fall out, counted)
//!                                │ changed
//!                                ▼
//! attachment (one at a time): follow ─ stdout/stderr {id} ─> its session's writer
//! its session: stdin {id} ─> relay ─> the job's stdin queue ─> job::stdin_writer
//! ```
//!
//! The job never waits for an attached client: output goes to the ring,
//! and a client that falls behind by more than the ring skips what fell
//! out (its `exit` counts it in `dropped`). A new attachment takes the job
//! over from the one before, which may be a connection over a dead link
//! the server has not noticed yet.
//!
//! Who may see a job is decided in one place, [`Registry::find`] and
//! [`Registry::list`]: its owner's identity name (per key or principal;
//! per token in token mode). Whether the owner is still accepted is judged
//! by [`Registry::judge`], at each reload and each sweep: a job whose
//! owner was removed, revoked or expired, or whose token was rotated, is
//! stopped and forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::job::{self, JobEnd};
use super::policy::Refusal;
use super::process;
use crate::identity::Identity;
use crate::proto::jobs::{JobInfo, JobState};
use crate::proto::message::Stamp;
use crate::proto::{Command, ErrorCode, ExitStatus, ServerMsg};

/// The shortest ID prefix `attach` and `kill` take.
pub const MIN_PREFIX: usize = 4;
/// The longest command a job's record carries; the rest is cut (`...`),
/// so that a `jobs` answer stays small.
const MAX_COMMAND: usize = 1024;
/// What each kept chunk costs against the buffer besides its bytes: a
/// job writing a byte at a time must not hold a million chunks.
const CHUNK_COST: usize = 128;
/// Chunks a follower takes from the ring at a time.
const TAKE: usize = 64;
/// How often ended jobs are looked at for expiry, and owners judged again.
const SWEEP: Duration = Duration::from_secs(1);
/// Why the server stops a job whose owner is no longer accepted.
pub const OWNER_GONE: &str = "its owner is no longer accepted";
/// Why a `kill` stopped a job.
pub const KILLED: &str = "killed (jobs --kill)";

/// The server's detached jobs, by ID.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    sweeping: AtomicBool,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Arc<Detached>>,
    /// Admitted requests not yet started, per owner: they count.
    reserved: HashMap<String, usize>,
}

/// A detached job admitted and not yet started: it holds its place under
/// the limits until [`Registry::insert`] or its drop.
pub struct Reservation {
    registry: Arc<Registry>,
    owner: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(n) = inner.reserved.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.reserved.remove(&self.owner);
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more detached job of `owner`, under
    /// `exec.max_detached` (per identity) and `max_detached_total`.
    pub fn reserve(
        self: &Arc<Self>,
        owner: &str,
        cfg: &crate::config::ExecConfig,
    ) -> Result<Reservation, Refusal> {
        if cfg.max_detached == 0 {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "detached jobs are off on this server (exec.max_detached = 0)",
            ));
        }
        let mut inner = self.lock();
        let held = inner.reserved.get(owner).copied().unwrap_or(0)
            + inner
                .jobs
                .values()
                .filter(|j| j.owner.name == owner)
                .count();
        if held >= cfg.max_detached {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!(
                    "{owner} has its {} detached jobs (exec.max_detached); kill or forget one \
                     (switchboard jobs --kill ID), or wait for ended ones to expire",
                    cfg.max_detached
                ),
            ));
        }
        let all = inner.jobs.len() + inner.reserved.values().sum::<usize>();
        if all >= cfg.max_detached_total {
            return Err(Refusal::new(
                ErrorCode::Busy,
                "the server keeps its maximum of detached jobs (exec.max_detached_total)",
            ));
        }
        *inner.reserved.entry(owner.to_string()).or_default() += 1;
        Ok(Reservation {
            registry: self.clone(),
            owner: owner.to_string(),
        })
    }

    /// Keeps a started job in the place its reservation held.
    pub fn insert(&self, place: Reservation, job: Arc<Detached>) {
        self.lock().jobs.insert(job.id.clone(), job);
        drop(place);
    }

    /// The caller's job whose ID is `id` or begins with it. Someone else's
    /// job is not found, as one that never was: the answer says nothing of
    /// other identities' jobs.
    pub fn find(&self, owner: &str, id: &str) -> Result<Arc<Detached>, Refusal> {
        if id.len() < MIN_PREFIX {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("a detached job's ID, or {MIN_PREFIX} characters of it at least"),
            ));
        }
        let inner = self.lock();
        let mut mine = inner
            .jobs
            .values()
            .filter(|j| j.owner.name == owner && j.id.starts_with(id));
        match (mine.next(), mine.next()) {
            (Some(j), None) => Ok(j.clone()),
            (None, _) => Err(Refusal::new(
                ErrorCode::NoSuchJob,
                format!("no detached job {id}"),
            )),
            (Some(_), Some(_)) => Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("{id} begins the IDs of several of your detached jobs: give more of it"),
            )),
        }
    }

    /// The caller's jobs, oldest first.
    pub fn list(&self, owner: &str) -> Vec<JobInfo> {
        let mut mine: Vec<_> = self
            .lock()
            .jobs
            .values()
            .filter(|j| j.owner.name == owner)
            .cloned()
            .collect();
        mine.sort_by_key(|j| (j.started, j.job));
        mine.iter().map(|j| j.info()).collect()
    }

    /// Forgets an ended job (`kill` of one that has ended).
    pub fn forget(&self, job: &Detached) {
        self.lock().jobs.remove(&job.id);
    }

    /// Judges every job's owner by the credentials as they are now (a
    /// reload, a sweep): a job whose owner is no longer accepted is
    /// stopped, and forgotten once ended; an ended job past
    /// `exec.detached_ttl` is forgotten.
    pub fn judge(&self, live: &super::Live) {
        let now = crate::identity::unix_now();
        let ttl = live.cfg.detached_ttl;
        self.lock().jobs.retain(|_, j| {
            let accepted = live
                .credentials
                .recheck(&j.owner, j.judged_from, now)
                .is_ok();
            if !accepted {
                j.stop(OWNER_GONE);
            }
            let (keep, action, why) = match j.ended_at() {
                None => (true, "", ""),
                Some(_) if !accepted => (false, "forget", OWNER_GONE),
                Some(at) => (at.elapsed() < ttl, "expire", "exec.detached_ttl passed"),
            };
            if !keep {
                super::audit::detached_dropped(&j.owner, action, &j.id, j.job, why);
            }
            keep
        });
    }

    /// Starts the task that sweeps the jobs ([`Registry::judge`]) every
    /// second until `shutdown`; once per server, at its first detached
    /// job.
    pub fn sweep_from(&self, shared: &Arc<super::ExecShared>, shutdown: &CancellationToken) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(SWEEP) => {}
                }
                shared.detached.judge(&shared.live());
            }
        });
    }
}

/// One detached job.
pub struct Detached {
    pub id: String,
    owner: Arc<Identity>,
    /// Where the owner was judged from (`from=`) when it detached the job.
    judged_from: IpAddr,
    command: String,
    pub job: u64,
    pid: u32,
    pgid: Pid,
    started: Stamp,
    /// The job's terminal, for `resize`.
    pub pty: Option<super::pty::Pty>,
    /// Stops the job (TERM, then KILL): `kill`, its owner revoked, the
    /// server's shutdown (it is a child of it).
    cancel: CancellationToken,
    /// Its stdin, while open: attachments' relays send here.
    stdin: Mutex<Option<mpsc::Sender<Bytes>>>,
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

struct State {
    ring: Ring,
    end: Option<Ended>,
    /// Why the server stopped it, when it did.
    stopped: Option<&'static str>,
    /// The attachment following it now: its number and token.
    attachment: Option<(u64, CancellationToken)>,
    attachments: u64,
}

#[derive(Clone)]
struct Ended {
    status: ExitStatus,
    reason: Option<String>,
    /// Output past its `max_output`.
    dropped: u64,
    at: Stamp,
    when: Instant,
}

/// What [`Detached::new`] takes of a job that was just spawned.
pub struct Spawned {
    /// From [`new_id`].
    pub id: String,
    pub owner: Arc<Identity>,
    pub judged_from: IpAddr,
    pub command: Command,
    pub job: u64,
    pub pid: u32,
    pub pgid: Pid,
    pub pty: Option<super::pty::Pty>,
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub buffer: u64,
    pub cancel: CancellationToken,
}

impl Detached {
    pub fn new(s: Spawned) -> Arc<Detached> {
        let command = s.command.text();
        let command = match command.char_indices().nth(MAX_COMMAND) {
            Some((cut, _)) => format!("{}...", command.get(..cut).unwrap_or_default()),
            None => command,
        };
        Arc::new(Detached {
            id: s.id,
            owner: s.owner,
            judged_from: s.judged_from,
            command,
            job: s.job,
            pid: s.pid,
            pgid: s.pgid,
            started: Stamp::now(),
            pty: s.pty,
            cancel: s.cancel,
            stdin: Mutex::new(s.stdin),
            state: Mutex::new(State {
                ring: Ring::new(usize::try_from(s.buffer).unwrap_or(usize::MAX)),
                end: None,
                stopped: None,
                attachment: None,
                attachments: 0,
            }),
            changed: watch::Sender::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token the job task runs under.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    fn ended_at(&self) -> Option<Instant> {
        self.lock().end.as_ref().map(|e| e.when)
    }

    /// Stops the job (TERM to its group, KILL after the grace), saying why
    /// in its end; nothing if it has ended.
    pub fn stop(&self, why: &'static str) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.stopped.get_or_insert(why);
            self.cancel.cancel();
        }
    }

    /// Sends `sig` to the job's group while the job runs: its group is
    /// released when it ends, under the same lock, so the signal cannot
    /// reach a group that reused its number. False once it has ended.
    pub fn signal(&self, sig: Signal) -> bool {
        let st = self.lock();
        st.end.is_none() && process::signal_group(self.pgid, sig)
    }

    /// Its record, as `jobs` and `attached` give it.
    pub fn info(&self) -> JobInfo {
        let st = self.lock();
        let (code, signal, timed_out) = match st.end.as_ref().map(|e| &e.status) {
            None => (None, None, false),
            Some(ExitStatus::Code(c)) => (Some(*c), None, false),
            Some(ExitStatus::Signal { name, timed_out }) => (None, Some(name.clone()), *timed_out),
        };
        JobInfo {
            detached: self.id.clone(),
            job: self.job,
            pid: self.pid,
            command: self.command.clone(),
            tty: self.pty.is_some(),
            stdin: self
                .stdin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some(),
            state: match st.end {
                None => JobState::Running,
                Some(_) => JobState::Exited,
            },
            started: self.started.rfc3339(),
            ended: st.end.as_ref().map(|e| e.at.rfc3339()),
            code,
            signal,
            timed_out,
            reason: st.end.as_ref().and_then(|e| e.reason.clone()),
            buffered: st.ring.end - st.ring.start,
            lost: st.ring.start,
            dropped: st.end.as_ref().map_or(0, |e| e.dropped),
            attached: st.attachment.is_some(),
            forgotten: false,
        }
    }

    /// Keeps the job's output frames in its ring until the pumps end.
    pub async fn fill(&self, mut rx: mpsc::Receiver<ServerMsg>) {
        while let Some(msg) = rx.recv().await {
            let (stderr, data, ts) = match msg {
                ServerMsg::Stdout { data, ts, .. } => (false, data, ts),
                ServerMsg::Stderr { data, ts, .. } => (true, data, ts),
                _ => continue,
            };
            // A copy of its own: a frame's bytes share the pump's 64 KiB
            // read buffer, which a small chunk kept for long would pin.
            let data = Bytes::copy_from_slice(&data);
            self.lock()
                .ring
                .push(stderr, data, ts.unwrap_or_else(Stamp::now));
            self.changed.send_replace(());
        }
    }

    /// Why the server ended the job, if it did: stopped (`kill`, its
    /// owner no longer accepted), past `max_output_kill`, or shut down.
    pub fn end_reason(&self, end: &JobEnd) -> Option<String> {
        match (self.lock().stopped, end.capped) {
            (Some(why), _) => Some(why.to_string()),
            (None, true) => Some(job::CAPPED.to_string()),
            (None, false) if self.cancel.is_cancelled() => {
                Some(super::session::SHUTTING_DOWN.to_string())
            }
            (None, false) => None,
        }
    }

    /// Records the job's end (after every output frame), then kills what
    /// is left of its group: with no connection to hold them, background
    /// processes of a detached job end with it.
    pub async fn finish(&self, end: &JobEnd, reason: Option<String>, grace: Duration) {
        {
            let mut st = self.lock();
            st.end = Some(Ended {
                status: end.status.clone(),
                reason,
                dropped: end.dropped,
                at: Stamp::now(),
                when: Instant::now(),
            });
        }
        self.changed.send_replace(());
        self.close_stdin();
        process::kill_group(self.pgid, grace).await;
    }

    /// Resolves once the job has ended and its end is recorded, or after
    /// `limit`.
    pub async fn wait_end(&self, limit: Duration) {
        let mut changed = self.changed.subscribe();
        let ended = async {
            while self.lock().end.is_none() {
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, ended).await;
    }

    /// Ends the job's stdin (an attached client's `eof`).
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn stdin_sender(&self) -> Option<mpsc::Sender<Bytes>> {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `token` the job's attachment, ending the one before (taken
    /// over); returns its number, the job's record, and where in the
    /// output the attachment begins (the oldest byte kept).
    pub fn attach(&self, token: CancellationToken) -> (u64, JobInfo, u64) {
        let (n, start) = {
            let mut st = self.lock();
            st.attachments += 1;
            let n = st.attachments;
            if let Some((_, before)) = st.attachment.replace((n, token)) {
                before.cancel();
            }
            (n, st.ring.start)
        };
        (n, self.info(), start)
    }

    /// Attachment `n` has ended.
    pub fn detach(&self, n: u64) {
        let mut st = self.lock();
        if st.attachment.as_ref().is_some_and(|(a, _)| *a == n) {
            st.attachment = None;
        }
    }
}

/// How an attachment ended.
pub enum Followed {
    /// The job ended and everything kept of its output was sent.
    Exit {
        status: ExitStatus,
        reason: Option<String>,
        /// Past `max_output`, plus what fell out of the ring before this
        /// attachment could send it.
        dropped: u64,
    },
    /// The attachment was ended (taken over, or its connection closing).
    Detached,
}

/// Sends job `d`'s output from offset `cursor` on under `id`, then its
/// end; through `out` (the attachment's connection, paced by its output
/// window). `timestamps`: each frame keeps the time it was read. Once
/// `closing` (the connection's end at the server's shutdown, when nothing
/// reads the client's window grants any more), only the end is still
/// sent, the output not sent counted in its `dropped`.
pub async fn follow(
    d: Arc<Detached>,
    id: u64,
    mut cursor: u64,
    out: job::Out,
    timestamps: bool,
    cancel: CancellationToken,
    closing: CancellationToken,
) -> Followed {
    let mut changed = d.changed.subscribe();
    let mut skipped = 0u64;
    loop {
        changed.borrow_and_update();
        let (chunks, end, written) = {
            let st = d.lock();
            let (missed, chunks) = st.ring.since(cursor);
            skipped += missed;
            cursor = cursor.max(st.ring.start);
            (chunks, st.end.clone(), st.ring.end)
        };
        if chunks.is_empty() || closing.is_cancelled() {
            if let Some(end) = end {
                return Followed::Exit {
                    status: end.status,
                    reason: end.reason,
                    dropped: end.dropped + skipped + written.saturating_sub(cursor),
                };
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() {
                    return Followed::Detached;
                },
                () = cancel.cancelled() => return Followed::Detached,
            }
            continue;
        }
        for c in chunks {
            let len = c.data.len() as u64;
            let ts = timestamps.then_some(c.ts);
            let msg = match c.stderr {
                false => ServerMsg::Stdout {
                    id,
                    data: c.data,
                    ts,
                },
                true => ServerMsg::Stderr {
                    id,
                    data: c.data,
                    ts,
                },
            };
            tokio::select! {
                r = out.send(msg, len) => if r.is_err() {
                    return Followed::Detached;
                },
                () = cancel.cancelled() => return Followed::Detached,
                // Waiting on a window nobody gives back any more.
                () = closing.cancelled() => break,
            }
            cursor = c.offset + len;
        }
    }
}

/// Passes an attachment's stdin frames on to the job, giving each frame's
/// cost back once the job's queue took it. The attachment's `eof` (its
/// channel closed while it is still attached) ends the job's stdin; an
/// attachment that ends leaves it open for the next.
pub async fn relay(
    d: Arc<Detached>,
    mut rx: mpsc::Receiver<Bytes>,
    attachment: CancellationToken,
    grant: Option<job::Grant>,
) {
    loop {
        let data = tokio::select! {
            data = rx.recv() => data,
            () = attachment.cancelled() => return,
        };
        let Some(data) = data else {
            if !attachment.is_cancelled() {
                d.close_stdin();
            }
            return;
        };
        let cost = job::frame_cost(&data);
        if let Some(tx) = d.stdin_sender() {
            tokio::select! {
                _ = tx.send(data) => {}
                () = attachment.cancelled() => return,
            }
        }
        job::give_back(grant.as_ref(), cost).await;
    }
}

/// A new job ID: 128 random bits, in hex.
pub fn new_id() -> Result<String, Refusal> {
    crate::proto::auth::random_bytes::<16>()
        .map(|b| crate::proto::auth::hex(&b))
        .map_err(|e| Refusal::new(ErrorCode::IoError, format!("cannot name the job: {e}")))
}

/// A job's output, kept up to `cap` bytes; the oldest falls out first.
/// Offsets count every byte the job wrote since it started.
struct Ring {
    chunks: VecDeque<Chunk>,
    cap: usize,
    held: usize,
    /// The offset of the oldest byte kept: the bytes that fell out.
    start: u64,
    /// The offset after the newest byte.
    end: u64,
}

#[derive(Clone)]
struct Chunk {
    offset: u64,
    stderr: bool,
    data: Bytes,
    ts: Stamp,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            chunks: VecDeque::new(),
            cap,
            held: 0,
            start: 0,
            end: 0,
        }
    }

    fn push(&mut self, stderr: bool, mut data: Bytes, ts: Stamp) {
        let len = data.len();
        let mut offset = self.end;
        self.end += len as u64;
        let room = self.cap.saturating_sub(CHUNK_COST).max(1);
        if len > room {
            // Only its end fits.
            data = data.slice(len - room..);
            offset = self.end - room as u64;
        }
        let cost = data.len() + CHUNK_COST;
        while self.held + cost > self.cap {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.held -= old.data.len() + CHUNK_COST;
        }
        self.held += cost;
        self.chunks.push_back(Chunk {
            offset,
            stderr,
            data,
            ts,
        });
        self.start = self.chunks.front().map_or(self.end, |c| c.offset);
    }

    /// What is kept from `cursor` on (the first [`TAKE`] chunks of it),
    /// and how many bytes after `cursor` fell out before they could be
    /// taken.
    fn since(&self, cursor: u64) -> (u64, Vec<Chunk>) {
        let missed = self.start.saturating_sub(cursor);
        let from = cursor.max(self.start);
        let chunks = self
            .chunks
            .iter()
            .filter(|c| c.offset + c.data.len() as u64 > from)
            .take(TAKE)
            .map(|c| match usize::try_from(from.saturating_sub(c.offset)) {
                Ok(0) | Err(_) => c.clone(),
                Ok(skip) => Chunk {
                    offset: c.offset + skip as u64,
                    data: c.data.slice(skip.min(c.data.len())..),
                    ..c.clone()
                },
            })
            .collect();
        (missed, chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, b: u8) -> Bytes {
        Bytes::from(vec![b; n])
    }

    #[test]
    fn the_ring_drops_the_oldest_and_counts_it() {
        // Room for two 4-byte chunks.
        let mut r = Ring::new(2 * (4 + CHUNK_COST) + 2);
        r.push(false, bytes(4, b'a'), Stamp(1));
        r.push(true, bytes(4, b'b'), Stamp(2));
        assert_eq!((r.start, r.end), (0, 8));
        r.push(false, bytes(4, b'c'), Stamp(3));
        // `a` fell out whole: kept bytes never split a frame.
        assert_eq!((r.start, r.end, r.held), (4, 12, 2 * (4 + CHUNK_COST)));
        let (missed, got) = r.since(0);
        assert_eq!(missed, 4);
        assert_eq!(
            got.iter().map(|c| (c.offset, c.stderr)).collect::<Vec<_>>(),
            [(4, true), (8, false)]
        );
        // A cursor within a chunk gets the rest of it.
        let (missed, got) = r.since(10);
        assert_eq!(missed, 0);
        assert_eq!(got.first().map(|c| (c.offset, c.data.len())), Some((10, 2)));
        assert!(r.since(12).1.is_empty());
    }

    #[test]
    fn a_chunk_larger_than_the_ring_keeps_its_end() {
        let mut r = Ring::new(4 + CHUNK_COST);
        r.push(false, Bytes::from_static(b"abcdefgh"), Stamp(1));
        assert_eq!((r.start, r.end, r.held), (4, 8, 4 + CHUNK_COST));
        let (missed, got) = r.since(0);
        assert_eq!(missed, 4);
        assert_eq!(
            got.first().map(|c| c.data.clone()),
            Some(Bytes::from_static(b"efgh"))
        );
    }

    #[test]
    fn tiny_chunks_are_bounded_by_their_cost() {
        let mut r = Ring::new(65_536);
        for _ in 0..100_000 {
            r.push(false, bytes(1, b'x'), Stamp(1));
        }
        assert_eq!(r.chunks.len(), 65_536 / (1 + CHUNK_COST));
        assert_eq!(r.since(0).1.len(), TAKE);
    }
}
