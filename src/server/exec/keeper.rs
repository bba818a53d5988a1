//! The keeper: a small process that kills the jobs' process groups when
//! the server dies without cleaning up (`kill -9`, the OOM killer, a
//! crash), so that nothing a job starts outlives its connection even then,
//! and without systemd or cgroups.
//!
//! ```text
//! server ──"+PGID\n" / "-PGID\n"──> pipe ──> switchboard __keeper (own process group)
//!                                      read every DRAIN_EVERY (records wake nobody)
//!   dies: the pipe's write end closes ──> POLLHUP ──> read the rest, TERM every
//!                                         group held, KILL after the grace,
//!                                         empty the dead server's job cgroups, exit
//! ```
//!
//! The write end is close-on-exec and held only by the server, so EOF
//! means the server is gone. It is non-blocking: the async runtime never
//! waits on the keeper. If the keeper dies the server logs a warning and
//! goes on without it.
//!
//! The keeper re-executes the server's own binary (`/proc/self/exe`, which
//! still works if the file was replaced by an upgrade), so only the
//! `switchboard` binary starts it; a library embedding the server does not.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

/// The hidden subcommand that runs the keeper.
pub const SUBCOMMAND: &str = "__keeper";
/// How often the keeper forgets groups that died on their own (a lingering
/// group the server stopped tracking), so that it never signals a process
/// group id that was reused. Default 1 s.
pub const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// How often the keeper reads the records queued in its pipe (64 KiB,
/// raised to 1 MiB where the kernel allows: tens of thousands of records
/// between two reads). Default 50 ms.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// The longest record line the keeper accepts ("+" or "-" and a pid).
const MAX_LINE: usize = 32;

/// The pipe's write end (non-blocking), once the keeper runs.
static PIPE: OnceLock<Mutex<std::process::ChildStdin>> = OnceLock::new();
/// Set once a write failed for good: warned once, not retried.
static BROKEN: AtomicBool = AtomicBool::new(false);
/// The same write end as a bare descriptor (-1: no keeper), for a job's
/// child process to register itself between clone and exec, where no lock
/// may be taken.
static PIPE_FD: AtomicI32 = AtomicI32::new(-1);

/// Starts the keeper for this server process with `grace` between TERM and
/// KILL. Errors leave the server running without a keeper (logged).
pub fn start(grace: Duration) {
    if PIPE.get().is_some() {
        return;
    }
    match spawn_keeper(grace) {
        Ok((pid, pipe)) => {
            super::reaper::watch(pid);
            PIPE_FD.store(pipe.as_raw_fd(), Ordering::Relaxed);
            let _ = PIPE.set(Mutex::new(pipe));
            info!(pid, "keeper started: jobs die with the server");
        }
        Err(e) => warn!(
            error = %e,
            "cannot start the keeper: jobs would outlive a server that is killed"
        ),
    }
}

fn spawn_keeper(grace: Duration) -> io::Result<(u32, std::process::ChildStdin)> {
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(SUBCOMMAND)
        .arg(grace.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Out of the server's group: a terminal's Ctrl-C must not reach it.
        .process_group(0);
    // SAFETY: runs between fork and exec; cloexec_from makes only system
    // calls.
    unsafe {
        cmd.pre_exec(|| {
            crate::sys::cloexec_from(3);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no pipe to the keeper"))?;
    // Non-blocking, so a stuck keeper can never stall the runtime. Only
    // this end: the keeper's read end is a separate open file.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = pipe.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        // Room for the records of a burst of jobs between two of the
        // keeper's reads; the default 64 KiB where this is refused.
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
    }
    // Not waited for here: the reaper collects it (and warns) if it exits.
    Ok((child.id(), pipe))
}

/// Writes one record at once, from the caller's thread: a record is queued
/// in the kernel before the job's `started` frame goes out, so a server
/// killed right after still has its job covered. Records are far below
/// PIPE_BUF, so each write is whole or fails (EAGAIN: the keeper stopped
/// reading a pipe's worth of records ago).
fn send(op: char, pgid: Pid) {
    let Some(pipe) = PIPE.get() else { return };
    if BROKEN.load(Ordering::Relaxed) {
        return;
    }
    let line = format!("{op}{}\n", pgid.as_raw());
    let mut pipe = pipe.lock().unwrap_or_else(|e| e.into_inner());
    match pipe.write(line.as_bytes()) {
        Ok(n) if n == line.len() => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            warn!(
                pgid = pgid.as_raw(),
                "the keeper is not reading: this job group is not covered if the server dies"
            )
        }
        Ok(_) | Err(_) => {
            BROKEN.store(true, Ordering::Relaxed);
            warn!("the keeper is gone: jobs are no longer killed if the server dies");
        }
    }
}

/// In a job's child, between clone and exec, once it leads its own group:
/// registers that group with the keeper. Done by the child, not by the
/// server after the spawn returns, so that a server killed in between
/// leaves no job unknown: the child's copy of the pipe's write end keeps
/// the keeper from seeing EOF until this record is in. Async-signal-safe: an atomic load, `getpid`, `write`, no allocation.
pub fn hold_self_in_child() {
    let fd = PIPE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: getpid cannot fail.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        if let Some(d) = digits.get_mut(n) {
            *d = b'0' + (pid % 10) as u8;
        }
        n += 1;
        pid /= 10;
        if pid == 0 || n == digits.len() {
            break;
        }
    }
    let mut line = [0u8; 12];
    line[0] = b'+';
    for i in 0..n {
        line[1 + i] = digits[n - 1 - i];
    }
    line[1 + n] = b'\n';
    // SAFETY: a write of our own buffer to a descriptor we hold; a failure
    // (EAGAIN on a full pipe) leaves the parent's record to cover it.
    unsafe {
        libc::write(fd, line.as_ptr().cast(), n + 2);
    }
}

/// The group is gone; the keeper forgets it.
pub fn release(pgid: Pid) {
    send('-', pgid);
}

/// The keeper process: `switchboard __keeper GRACE_MS`, its stdin the read
/// end of the server's pipe.
pub fn main(args: &[String]) -> ExitCode {
    let grace = args
        .first()
        .and_then(|a| a.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(2));
    // A terminal's hang-up or Ctrl-C is the server's business; the keeper
    // stops only when the server is gone.
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: setting a disposition to SIG_IGN installs no handler.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    // Holds no directory busy (an unmount, a deleted working directory).
    let _ = std::env::set_current_dir("/");
    // The server is this process's parent until it dies.
    let server = nix::unistd::getppid();
    let mut held = HashSet::new();
    // Unbuffered: poll(2) must see every byte not yet consumed.
    // SAFETY: descriptor 0 is the pipe from the server, owned by nobody
    // else in this process.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(0) };
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE + 1);
    let mut buf = [0u8; 4096];
    let mut last_prune = Instant::now();
    // Read without waiting: records are taken in batches, below.
    // SAFETY: fcntl on our own descriptor 0 (the read end is an open file
    // of its own: the server's write end keeps its flags).
    unsafe {
        let flags = libc::fcntl(0, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(0, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    loop {
        if last_prune.elapsed() >= PRUNE_EVERY {
            held.retain(|&p| killpg(Pid::from_raw(p), None) != Err(Errno::ESRCH));
            last_prune = Instant::now();
        }
        let gone = hung_up(pipe.as_raw_fd(), DRAIN_EVERY);
        // Everything queued so far (all of it once the server is gone).
        let eof = loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            };
            for &b in buf.get(..n).unwrap_or_default() {
                if b != b'\n' {
                    // An over-long line is garbage; it is dropped whole.
                    if line.len() <= MAX_LINE {
                        line.push(b);
                    }
                    continue;
                }
                apply(&mut held, &line);
                line.clear();
            }
        };
        if eof || gone {
            break;
        }
    }
    kill_all(&held, grace);
    empty_job_cgroups(server);
    ExitCode::SUCCESS
}

/// Processes that left their job's group (`setsid`) are out of reach of
/// the group kill, but still in the job's cgroup when the server has
/// them (`exec.max_processes`). Once the server is dead (this process
/// re-parented), the job cgroups of dead servers are emptied and removed
/// as a server's start does it (`cgroup::init`, the one place), not at the
/// next start only. Bounded: gives up waiting after a second.
fn empty_job_cgroups(server: Pid) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while nix::unistd::getppid() == server && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Past its exit, to a zombie or gone: what `init` takes as dead.
    std::thread::sleep(Duration::from_millis(20));
    let _ = super::cgroup::init();
    // Cgroups whose last tasks were still exiting: once more.
    std::thread::sleep(Duration::from_millis(100));
    super::cgroup::sweep();
}

/// Whether the pipe's write end is gone (the server died) within `wait`.
/// Data alone does not wake the keeper (no POLLIN asked): a job's record
/// costs the server a write, not a wake-up of this process and a switch
/// to it; records are read every [`DRAIN_EVERY`] instead.
fn hung_up(fd: RawFd, wait: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd we own.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

fn apply(held: &mut HashSet<i32>, line: &[u8]) {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let (op, num) = text.split_at_checked(1).unwrap_or(("", ""));
    let Ok(pgid) = num.parse::<i32>() else { return };
    // Never 0 or 1 (the caller's group, init), never the keeper's own group.
    if pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw() {
        return;
    }
    match op {
        "+" => {
            held.insert(pgid);
        }
        "-" => {
            held.remove(&pgid);
        }
        _ => {}
    }
}

/// TERM to every group, KILL after `grace` to those still there.
fn kill_all(held: &HashSet<i32>, grace: Duration) {
    let alive = |p: &i32| killpg(Pid::from_raw(*p), None) != Err(Errno::ESRCH);
    let mut left: Vec<i32> = held.iter().copied().filter(alive).collect();
    if left.is_empty() {
        return;
    }
    // Not eprintln!: it panics when stderr is a closed pipe or a full
    // disk, and the keeper must go on to kill the groups whatever its log.
    let _ = writeln!(
        std::io::stderr(),
        "switchboard keeper: the server is gone; killing {} job group(s)",
        left.len()
    );
    for &p in &left {
        let _ = killpg(Pid::from_raw(p), Signal::SIGTERM);
    }
    // The server was the jobs' reaper; their zombies now wait for init,
    // which may be slow to collect them, so a group of zombies is done.
    let deadline = Instant::now() + grace;
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left.retain(|&p| super::reaper::group_running(p));
    }
    for &p in &left {
        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_parsed_and_garbage_ignored() {
        let mut held = HashSet::new();
        for l in [
            "+100",
            "+200",
            "-100",
            "+0",
            "+1",
            "+-5",
            "x300",
            "+",
            "",
            "+9999999999",
        ] {
            apply(&mut held, l.as_bytes());
        }
        assert_eq!(held, HashSet::from([200]));
    }
}
