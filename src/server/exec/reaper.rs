//! Reaping the orphans a child subreaper adopts.
//!
//! The server is a child subreaper, so a job process whose parent dies is
//! re-parented to it; one that also left the job's process group (`setsid`)
//! is out of reach of reaping by group and would stay a zombie of the
//! server forever. The reaper waits for every zombie child of the server
//! except the jobs' main processes, which their `spawn::Child` reaps
//! through its pidfd: a status taken from under it is an exit code the
//! client never gets.
//!
//! ```text
//! spawn ── gate (shared) ── clone/exec ── register pid ── release
//! Child: pidfd readable ── lock ── waitpid(pid) ── unregister ── unlock
//! SIGCHLD (+50 ms) or tick ── gate (exclusive) ── lock ── scan zombie children
//!                             ── not registered? waitpid(pid)
//! ```
//!
//! The gate held across the spawn means the reaper never sees a main
//! process it does not know about; spawns share it, so they do not wait on
//! each other. A main process is unregistered in the same locked step that
//! reaps it, so a pid freed there and given to the next job is registered
//! only after the old entry is gone.
//!
//! Only a process that owns all its children may run this (the
//! `switchboard` binary): a library embedding the server, such as a test
//! harness, has children of its own whose statuses it expects to collect.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// The safety net behind SIGCHLD (which the kernel coalesces, and which a
/// scan of `/proc/PID/task/*/children` can miss while pids change).
/// Default 5 s.
pub const REAP_TICK: Duration = Duration::from_secs(5);

/// How long after a SIGCHLD the reaper waits before its pass, so that a
/// burst of job ends costs one scan of /proc, not one each. Default 50 ms.
pub const REAP_BATCH: Duration = Duration::from_millis(50);

/// Main processes of jobs, by pid. Each is reaped by its own `Child`
/// ([`wait_main`]), which takes it out under the same lock, so a pid
/// freed by that reap and given to a new job is never forgotten by the
/// old one.
static MAINS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);
static ENABLED: AtomicBool = AtomicBool::new(false);
/// A child that is not a job but whose end is worth a warning (the keeper).
static WATCHED: AtomicI32 = AtomicI32::new(0);

/// Spawns hold it shared from before the fork until their main process is
/// registered; a reaper pass holds it exclusively, so it never sees a main
/// process that is not registered yet.
static GATE: RwLock<()> = RwLock::new(());

fn mains() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    MAINS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns a job's main process with `spawn` and registers its pid, under
/// the lock the reaper takes, so that the reaper never waits for it. A
/// plain call when the reaper is off.
pub fn spawn_main<T>(
    spawn: impl FnOnce() -> io::Result<T>,
    pid_of: impl FnOnce(&T) -> Option<u32>,
) -> io::Result<T> {
    if !ENABLED.load(Ordering::Acquire) {
        return spawn();
    }
    // Shared: spawns run side by side; the reaper's pass waits for them.
    let _gate = GATE.read().unwrap_or_else(|e| e.into_inner());
    let child = spawn()?;
    if let Some(pid) = pid_of(&child).and_then(|p| i32::try_from(p).ok()) {
        mains().get_or_insert_with(HashSet::new).insert(pid);
    }
    Ok(child)
}

/// Reaps job main process `pid` if it has ended (its raw wait status),
/// and forgets it; never waits.
pub fn wait_main(pid: i32) -> io::Result<Option<i32>> {
    let mut guard = mains();
    let mut st = 0;
    // SAFETY: waitpid on a pid of our own child with a status we own.
    match unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } {
        0 => Ok(None),
        p if p == pid => {
            if let Some(m) = guard.as_mut() {
                m.remove(&pid);
            }
            Ok(Some(st))
        }
        _ => Err(io::Error::last_os_error()),
    }
}

/// Names a child whose exit is logged as a warning (the keeper).
pub fn watch(pid: u32) {
    WATCHED.store(i32::try_from(pid).unwrap_or(0), Ordering::Relaxed);
}

/// Starts the reaper task: a pass [`REAP_BATCH`] after a SIGCHLD, and
/// every [`REAP_TICK`]. Call once, inside the runtime, before any job spawns.
pub fn start() {
    if ENABLED.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "no SIGCHLD stream; orphans are reaped every {REAP_TICK:?}");
                None
            }
        };
        let mut tick = tokio::time::interval(REAP_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = async {
                    match sigchld.as_mut() {
                        Some(s) => { s.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    // Busy servers see a SIGCHLD per job: one pass per
                    // REAP_BATCH covers them all (the kernel and tokio
                    // coalesce the signals meanwhile).
                    tokio::time::sleep(REAP_BATCH).await;
                }
                _ = tick.tick() => {}
            }
            // /proc reads and a lock that a spawn (fork) may hold: off the
            // runtime's worker threads.
            // An orphan just reaped may have been the last task of a
            // released job cgroup, which can now be removed.
            let _ = tokio::task::spawn_blocking(|| {
                reap_once();
                super::cgroup::sweep();
            })
            .await;
        }
    });
}

/// One pass: waits for every zombie child that is not a job's main
/// process. Returns how many were reaped.
pub fn reap_once() -> usize {
    let _gate = GATE.write().unwrap_or_else(|e| e.into_inner());
    let me = nix::unistd::getpid().as_raw();
    let zombies: Vec<i32> = children(me)
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.state == 'Z'))
        .collect();
    let mut guard = mains();
    let mains = guard.get_or_insert_with(HashSet::new);
    let mut reaped = 0;
    for pid in zombies {
        if mains.contains(&pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(status) => {
                reaped += 1;
                if pid == WATCHED.load(Ordering::Relaxed) {
                    warn!(
                        pid,
                        ?status,
                        "the keeper exited: jobs are no longer killed if the server dies"
                    );
                } else {
                    debug!(pid, ?status, "reaped an orphan");
                }
            }
        }
    }
    reaped
}

/// The children of process `me`: from `/proc/me/task/*/children` (one
/// read per thread, since an orphan is adopted by one of the server's
/// threads), or where the kernel lacks those files (no
/// CONFIG_PROC_CHILDREN) from a scan of every `/proc/PID/stat`, which costs
/// a read per process on the machine.
fn children(me: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut have_children_files = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{me}/task")) {
        for t in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
                have_children_files = true;
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if have_children_files {
        return out;
    }
    if let Ok(all) = std::fs::read_dir("/proc") {
        for e in all.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                && stat(pid).is_some_and(|s| s.ppid == me)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// Whether any process of group `pgid` is still running (a zombie, dead
/// but not yet waited for by whoever adopted it, does not count). Reads
/// every `/proc/PID/stat`.
pub fn group_running(pgid: i32) -> bool {
    let Ok(all) = std::fs::read_dir("/proc") else {
        // No /proc: assume the worst.
        return true;
    };
    all.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(stat)
            .is_some_and(|s| s.pgid == pgid && s.state != 'Z')
    })
}

struct Stat {
    state: char,
    ppid: i32,
    pgid: i32,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and ')': fields follow the last.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, ppid 4, pgrp 5.
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_zombie(pid: i32) -> bool {
        for _ in 0..1000 {
            if stat(pid).is_some_and(|s| s.state == 'Z') {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    // The only unit test that spawns or reaps processes: reap_once waits
    // for every unregistered zombie child of the test process.
    #[tokio::test]
    #[allow(clippy::zombie_processes, reason = "reap_once reaps it: the point")]
    async fn leaves_registered_mains_to_tokio_and_reaps_the_rest() {
        ENABLED.store(true, Ordering::Release);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let mut main = spawn_main(|| cmd.spawn(), |c| c.id()).expect("spawn");
        let main_pid = main.id().expect("pid") as i32;
        let stray = std::process::Command::new("true").spawn().expect("spawn");
        let stray_pid = stray.id() as i32;
        // The runtime is blocked here, so tokio cannot reap in between.
        assert!(wait_zombie(main_pid) && wait_zombie(stray_pid));
        assert!(reap_once() >= 1);
        assert!(stat(stray_pid).is_none(), "the stray zombie was reaped");
        let st = main.wait().await.expect("tokio still has its child");
        assert_eq!(st.code(), Some(7));
    }

    #[test]
    fn reads_its_own_stat() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        // The main thread's state: running or asleep, never a zombie.
        assert!(matches!(s.state, 'R' | 'S'), "{}", s.state);
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(s.pgid, nix::unistd::getpgrp().as_raw());
    }
}
