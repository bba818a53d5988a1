//! `exec.max_processes`: a cgroup per job whose `pids.max` caps the tasks
//! (processes and threads) the job may have at once, where the server has
//! a pids cgroup it may write; RLIMIT_NPROC for non-root jobs otherwise.
//!
//! RLIMIT_NPROC counts every process of the job's *user*, not of the job,
//! and does not apply to root; a cgroup counts exactly the job's tasks,
//! root's included, and sees the ones that left the job's process group
//! with setsid, so that when the job is over they are killed too.
//!
//! Where the job cgroups go (found once, at start):
//!
//! ```text
//! cgroup v1: <pids mount>/<server's pids cgroup>/sb-<server>-job-<n>
//! cgroup v2: <v2 mount>/<X>/sb-<server>-job-<n>, X the server's cgroup
//!            if it is the root, else its parent, when "pids" is in X's
//!            cgroup.subtree_control (systemd: Delegate=pids with
//!            DelegateSubgroup=, so the server sits in a leaf below X)
//! ```
//!
//! `<server>` is the server's pid and its start time (`PID.TICKS`, from
//! /proc): a pid alone would be the same for a server restarted as pid 1 of
//! a container, and could belong to an unrelated process by the next start.
//!
//! A job joins its cgroup in the child before exec, through a descriptor
//! opened before the fork (a write of "0" to `cgroup.procs`). When its
//! process group is released, whatever is left in the cgroup is killed and
//! the directory removed (retried later while the kernel still counts
//! exiting tasks).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::unistd::Pid;

/// The directory job cgroups are made in, when there is one.
static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// Job cgroups by the job's process group.
static JOBS: Mutex<Vec<(i32, PathBuf)>> = Mutex::new(Vec::new());
/// Released job cgroups whose removal must be tried again.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Finds where job cgroups can go and removes those left by servers that
/// died. Called once in the server process, before any job; returns the
/// directory, if any.
pub fn init() -> Option<&'static Path> {
    BASE.get_or_init(|| {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let base = find_base(&cgroups, &mounts, |p| std::fs::read_to_string(p).ok())?;
        if !writable(&base) {
            return None;
        }
        remove_stale(&base);
        Some(base)
    })
    .as_deref()
}

/// The job cgroups' directory, once [`init`] has found one.
pub fn base() -> Option<&'static Path> {
    BASE.get().and_then(|b| b.as_deref())
}

/// Where job cgroups go, from /proc/self/cgroup and /proc/self/mountinfo
/// (`read` reads a file of the hierarchy). Pure but for `read`, for tests.
pub fn find_base(
    cgroups: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<PathBuf> {
    let mut v2 = None;
    let mut v1 = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "pids") {
            v1 = Some(path);
        }
    }
    if let Some(path) = v1
        && let Some(dir) = mounted_dir(
            mountinfo,
            |fs, opts| fs == "cgroup" && has(opts, "pids"),
            path,
        )
    {
        return Some(dir);
    }
    let own = mounted_dir(mountinfo, |fs, _| fs == "cgroup2", v2?)?;
    let root = mounted_dir(mountinfo, |fs, _| fs == "cgroup2", "/")?;
    let candidate = if own == root {
        own
    } else {
        own.parent()?.to_path_buf()
    };
    let control = read(&candidate.join("cgroup.subtree_control"))?;
    has_word(&control, "pids").then_some(candidate)
}

fn has(opts: &str, word: &str) -> bool {
    opts.split(',').any(|o| o == word)
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

/// The directory of cgroup `path` in the hierarchy mounted by the first
/// mountinfo line that `is` accepts (file system type, super options),
/// taking the mount's own root into account (containers mount a subtree).
fn mounted_dir(mountinfo: &str, is: impl Fn(&str, &str) -> bool, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let (fs, _source, opts) = (right.next()?, right.next()?, right.next().unwrap_or(""));
        if !is(fs, opts) {
            return None;
        }
        let (root, mount) = (*left.get(3)?, *left.get(4)?);
        let rel = if root == "/" {
            path
        } else {
            path.strip_prefix(root)?
        };
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() {
            PathBuf::from(mount)
        } else {
            Path::new(mount).join(rel)
        })
    })
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Removes the job cgroups of servers that are gone (a server killed with
/// SIGKILL cannot clean up): what is left in them is killed, and those
/// whose tasks are still exiting are retried by [`sweep`].
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(server) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sb-"))
            .and_then(|n| n.split_once("-job-"))
            .map(|(server, _)| server)
        else {
            continue;
        };
        if !instance_alive(server) {
            kill_members(&e.path());
            if std::fs::remove_dir(e.path()).is_err() {
                lock(&PENDING).push(e.path());
            }
        }
    }
}

/// This process as job cgroup names say it: `PID.TICKS`.
fn instance() -> &'static str {
    static ME: OnceLock<String> = OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        let start = start_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0);
        format!("{pid}.{start}")
    })
}

/// Whether the server `PID.TICKS` still runs: that pid, started at that
/// time, and not a zombie.
fn instance_alive(server: &str) -> bool {
    let Some((pid, ticks)) = server.split_once('.') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (state, start) = parse_stat(&stat).unwrap_or(("", 0));
    state != "Z" && state != "X" && !state.is_empty() && start.to_string() == ticks
}

fn start_ticks(path: &str) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(path).ok()?).map(|(_, t)| t)
}

/// The state and the start time (field 22, clock ticks since boot) from a
/// /proc/PID/stat line; the command name may hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// A job cgroup made for a spawn: the child joins it through `procs`.
/// Dropped without [`adopt`](Prepared::adopt) (the spawn failed), it is
/// removed.
pub struct Prepared {
    /// `None` once adopted: the directory then outlives this value.
    dir: Option<PathBuf>,
    procs: OwnedFd,
}

/// Makes a cgroup for job number `job` (the server-wide number the audit
/// trail gives it) with `pids.max` = `max`; `None` when the server has no
/// pids cgroup.
pub fn prepare(max: u64, job: u64) -> io::Result<Option<Prepared>> {
    let Some(base) = base() else {
        return Ok(None);
    };
    let dir = base.join(format!("sb-{}-job-{job}", instance()));
    std::fs::create_dir(&dir)?;
    let made = (|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("pids.max"))?
            .write_all(max.to_string().as_bytes())?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
    })();
    match made {
        Ok(f) => Ok(Some(Prepared {
            dir: Some(dir),
            procs: f.into(),
        })),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            Err(e)
        }
    }
}

impl Prepared {
    /// The descriptor the child writes "0" to, joining the cgroup.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The job started: its cgroup now lives until its group is released.
    pub fn adopt(mut self, pgid: Pid) {
        if let Some(dir) = self.dir.take() {
            lock(&JOBS).push((pgid.as_raw(), dir));
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// In the child, before exec: joins the cgroup (async-signal-safe: one
/// write on a descriptor opened before the fork).
pub fn join_in_child(fd: RawFd) -> io::Result<()> {
    // SAFETY: a write of a static buffer to a descriptor we hold.
    if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The job's group is gone: whatever is left in its cgroup (processes
/// that left the group with setsid) is killed and the cgroup removed.
pub fn release(pgid: Pid) {
    let dir = {
        let mut jobs = lock(&JOBS);
        let Some(i) = jobs.iter().position(|(p, _)| *p == pgid.as_raw()) else {
            return;
        };
        jobs.swap_remove(i).1
    };
    let mut pending = lock(&PENDING);
    pending.push(dir);
    // Earlier ones whose tasks have since exited go too.
    pending.retain(|d| {
        kill_members(d);
        std::fs::remove_dir(d).is_err() && d.exists()
    });
}

/// Tries once more to remove released cgroups (at shutdown).
pub fn sweep() {
    lock(&PENDING).retain(|d| {
        kill_members(d);
        std::fs::remove_dir(d).is_err() && d.exists()
    });
}

fn kill_members(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "8:pids:/ci/job\n4:memory:/x\n0::/\n";
    const MOUNTS_V1: &str = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_pids_hierarchy_is_found_with_the_servers_path() {
        let base = find_base(V1, MOUNTS_V1, |_| None).unwrap();
        assert_eq!(base, Path::new("/sys/fs/cgroup/pids/ci/job"));
    }

    #[test]
    fn a_mount_of_a_subtree_is_resolved_against_its_root() {
        let mounts = "31 25 0:27 /ci /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let base = find_base(V1, mounts, |_| None).unwrap();
        assert_eq!(base, Path::new("/sys/fs/cgroup/pids/job"));
    }

    #[test]
    fn v2_needs_pids_delegated_to_the_parent_of_the_servers_leaf() {
        let cg = "0::/system.slice/switchboard.service/server\n";
        let mounts = "25 1 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let unit = Path::new("/sys/fs/cgroup/system.slice/switchboard.service");
        let read =
            |p: &Path| (p == unit.join("cgroup.subtree_control")).then(|| "cpu pids\n".into());
        assert_eq!(find_base(cg, mounts, read).as_deref(), Some(unit));
        let not_delegated = |_: &Path| Some("cpu memory\n".to_string());
        assert_eq!(find_base(cg, mounts, not_delegated), None);
    }

    #[test]
    fn v2_root_cgroup_is_used_directly() {
        let mounts = "25 1 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let read = |_: &Path| Some("pids".to_string());
        assert_eq!(
            find_base("0::/\n", mounts, read).as_deref(),
            Some(Path::new("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup_file_lines_no_base() {
        assert_eq!(find_base("", MOUNTS_V1, |_| None), None);
        assert_eq!(find_base("garbage", "garbage", |_| None), None);
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(parse_stat(stat), Some(("S", 98765)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn an_instance_is_alive_only_with_its_own_start_time() {
        assert!(instance_alive(instance()), "{}", instance());
        let pid = std::process::id();
        assert!(!instance_alive(&format!("{pid}.1")));
        assert!(!instance_alive(&pid.to_string()));
        assert!(!instance_alive("x.y"));
    }
}
