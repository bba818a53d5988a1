//! Job processes as the operating system sees them: spawning one in a
//! session and process group of its own, with credentials, working
//! directory, environment and descriptors set in the child; signalling,
//! killing and reaping its group. Nothing here knows the protocol: the job
//! module turns requests into a [`JobSpec`] and processes into frames.
//!
//! ```text
//! JobSpec ─ spawn ─ clone(VM|VFORK) ─ child (spawn.rs): signals default,
//!                 │                setsid, [pty: TIOCSCTTY], fds 3.. cloexec,
//!                 │                setgroups/setgid/setuid, chdir, exec
//!                 └ parent: pid registered with the reaper (main process,
//!                           left to tokio) and the keeper (group)
//! kill_group: TERM, KILL after a grace, until the group is gone
//! ```

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use super::spawn::{CWD_FAILED, Child};
use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::time::Instant;

/// Environment variables passed from the server to jobs (plus `LC_*`).
const PASSED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"];
/// PATH for jobs, and for looking up programs, when the server has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The user jobs run as, resolved once at start-up (never between fork and
/// exec, where looking up /etc/group is not safe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: String,
    pub shell: String,
}

impl RunAs {
    /// Looks `name` up; the server must be root to switch to it.
    pub fn resolve(name: &str) -> anyhow::Result<RunAs> {
        let user = User::from_name(name)
            .with_context(|| format!("cannot look up user {name:?}"))?
            .with_context(|| format!("no such user {name:?}"))?;
        if !Uid::effective().is_root() {
            bail!("--run-as needs the server to run as root");
        }
        let cname = CString::new(name).context("user name contains NUL")?;
        let groups =
            nix::unistd::getgrouplist(&cname, user.gid).context("cannot read the user's groups")?;
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir.to_string_lossy().into_owned(),
            shell: user.shell.to_string_lossy().into_owned(),
        })
    }
}

/// What to run, already judged by the policy: the process is started
/// exactly as this says.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The program and its arguments; `argv[0]` is what is executed (an
    /// absolute path, or `/bin/sh` for a shell line).
    pub argv: Vec<String>,
    /// The request's variables, over the few the server passes (§3.3).
    pub env: BTreeMap<String, String>,
    /// Entered as the job's user.
    pub cwd: Option<String>,
    /// A pipe for stdin (else `/dev/null`).
    pub stdin: bool,
    pub run_as: Option<RunAs>,
    /// Tasks the job may have at once (`exec.max_processes`; see the
    /// cgroup module for how it is enforced).
    pub max_processes: Option<u64>,
    /// A terminal for descriptors 0-2 instead of pipes (and `stdin`).
    pub pty: Option<crate::proto::PtyRequest>,
}

/// A spawned job, before its task runs.
pub struct Spawned {
    /// The job's number, unique in this server process: the audit
    /// trail's `job`, the `started` frame's `job`, its cgroup's name.
    pub job: u64,
    pub child: Child,
    pub pgid: Pid,
    pub pid: u32,
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
    /// The master of the job's terminal, when it has one: its stdin and
    /// its output, both.
    pub pty: Option<super::pty::Pty>,
}

/// Builds the environment of §3.3: a few variables from the server, then
/// the request's, which override.
pub fn job_env(
    request_env: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
    term: Option<&str>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in std::env::vars() {
        if PASSED_ENV.contains(&k.as_str()) || k.starts_with("LC_") {
            env.insert(k, v);
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    // The job's user's own: the run-as user's, else the server's user's
    // from the password database (a unit without User= sets none of
    // them, and `sudo` may pass another user's HOME).
    static SERVER_USER: std::sync::OnceLock<Option<RunAs>> = std::sync::OnceLock::new();
    let user = run_as.or_else(|| {
        SERVER_USER
            .get_or_init(|| {
                let u = User::from_uid(Uid::effective()).ok().flatten()?;
                Some(RunAs {
                    name: u.name,
                    uid: u.uid,
                    gid: u.gid,
                    groups: Vec::new(),
                    home: u.dir.to_string_lossy().into_owned(),
                    shell: u.shell.to_string_lossy().into_owned(),
                })
            })
            .as_ref()
    });
    if let Some(u) = user {
        for (k, v) in [
            ("HOME", &u.home),
            ("USER", &u.name),
            ("LOGNAME", &u.name),
            ("SHELL", &u.shell),
        ] {
            env.insert(k.into(), v.clone());
        }
    }
    // A terminal's type comes with the terminal, as ssh's pty-req sets it.
    if let Some(t) = term {
        env.insert("TERM".into(), t.into());
    }
    for (k, v) in request_env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// Spawns `spec` in a new session and process group (whose id is the
/// returned pid) with a clean environment, default signal dispositions, an
/// empty signal mask, descriptors 0-2 only, as the run-as user and in the
/// cwd entered as that user (the child's side is in [`super::spawn`]).
/// Registered with the reaper and the keeper.
pub fn spawn(spec: &JobSpec) -> io::Result<Spawned> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let cstring = |s: &str, what: &str| CString::new(s).map_err(|_| invalid(what));
    let prog = spec.argv.first().ok_or_else(|| invalid("empty argv"))?;
    let program = cstring(prog, "argv contains a NUL byte")?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstring(a, "argv contains a NUL byte"))
        .collect::<io::Result<Vec<_>>>()?;
    let term = spec.pty.as_ref().and_then(|p| p.term.as_deref());
    let envp = job_env(&spec.env, spec.run_as.as_ref(), term)
        .into_iter()
        .map(|(k, v)| cstring(&format!("{k}={v}"), "environment contains a NUL byte"))
        .collect::<io::Result<Vec<_>>>()?;
    // Entered in the child after the switch to the job's user, so a
    // directory the user cannot reach is refused.
    let dir = spec
        .cwd
        .as_deref()
        .map(|d| cstring(d, "cwd contains a NUL byte").map(|c| (d.to_string(), c)))
        .transpose()?;
    // The child's ends are closed here when this function returns: from
    // then on only the job holds them, and the server reads end of file
    // (a terminal's master: EIO) once the job's processes let go.
    let mut child_ends: Vec<OwnedFd> = Vec::new();
    let (stdio, pty, stdin, stdout, stderr) = match &spec.pty {
        Some(p) => {
            let owner = spec.run_as.as_ref().map_or_else(Uid::effective, |u| u.uid);
            let (master, slave) = super::pty::open(p.rows, p.cols, owner).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    SetupError(format!("cannot allocate a terminal: {e}")),
                )
            })?;
            let t = slave.as_raw_fd();
            child_ends.push(slave);
            ([t; 3], Some(master), None, None, None)
        }
        None => {
            let (stdin_fd, stdin) = if spec.stdin {
                let (r, w) = pipe()?;
                let fd = r.as_raw_fd();
                child_ends.push(r);
                (fd, Some(tokio::net::unix::pipe::Sender::from_owned_fd(w)?))
            } else {
                (dev_null()?.as_raw_fd(), None)
            };
            let (out_r, out_w) = pipe()?;
            // A stream of output moves in fewer, larger turns between the
            // job and the server; refused (a kernel limit), the default
            // 64 KiB stays.
            let _ = nix::fcntl::fcntl(&out_r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(STDOUT_PIPE));
            let (err_r, err_w) = pipe()?;
            let stdio = [stdin_fd, out_w.as_raw_fd(), err_w.as_raw_fd()];
            child_ends.extend([out_w, err_w]);
            let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?;
            let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)?;
            (stdio, None, stdin, Some(stdout), Some(stderr))
        }
    };
    // exec.max_processes: the job's own cgroup where there is one, else
    // RLIMIT_NPROC where it binds (a job user other than root).
    let job = next_job();
    let cgroup = match spec.max_processes {
        Some(max) => super::cgroup::prepare(max, job)?,
        None => None,
    };
    let root_job = match &spec.run_as {
        Some(u) => u.uid.is_root(),
        None => Uid::effective().is_root(),
    };
    let nproc = spec
        .max_processes
        .filter(|_| cgroup.is_none() && !root_job)
        .map(|n| libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        });
    let groups: Vec<libc::gid_t> = spec
        .run_as
        .as_ref()
        .map(|u| u.groups.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    let (argv_p, envp_p) = (super::spawn::pointers(&argv), super::spawn::pointers(&envp));
    let setup = super::spawn::ChildSetup {
        program: &program,
        argv: &argv_p,
        envp: &envp_p,
        stdio,
        controlling_tty: pty.is_some(),
        cgroup_fd: cgroup.as_ref().map(|c| c.procs_fd()),
        nproc,
        ids: spec
            .run_as
            .as_ref()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw(), groups.as_slice())),
        cwd: dir.as_ref().map(|(_, c)| c.as_c_str()),
    };
    let child = super::reaper::spawn_main(|| super::spawn::spawn(&setup), |c| Some(c.id()))
        .map_err(|e| match (e.raw_os_error(), &dir) {
            (Some(code), Some((d, _))) if code & CWD_FAILED != 0 => {
                let os = io::Error::from_raw_os_error(code & !CWD_FAILED);
                io::Error::new(
                    os.kind(),
                    SetupError(format!("working directory: cannot enter {d}: {os}")),
                )
            }
            _ => e,
        })?;
    drop(child_ends);
    let pid = child.id();
    // The child has registered its group with the keeper already.
    let pgid = Pid::from_raw(pid as i32);
    if let Some(c) = cgroup {
        c.adopt(pgid);
    }
    Ok(Spawned {
        job,
        child,
        pgid,
        pid,
        stdin,
        stdout,
        stderr,
        pty,
    })
}

/// The kernel buffer of a job's stdout pipe (stderr keeps the default 64
/// KiB): at most this much output waits in the kernel per job, so
/// `exec.max_jobs` (512) jobs hold at most 160 MiB in their two pipes.
/// `head -c 1G /dev/zero` streamed 1,247 -> 1,393 MB/s (medians of 3,
/// docs/BENCHMARKS.md). Default 256 KiB.
pub const STDOUT_PIPE: i32 = 256 * 1024;

/// `/dev/null` for jobs' stdin, opened once (an open per job showed in
/// the spawn's profile).
fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let fd = OwnedFd::from(std::fs::File::open("/dev/null")?);
    Ok(NULL.get_or_init(|| fd))
}

/// A pipe whose ends are closed on exec (the child's end is put on 0-2 by
/// dup3, which clears the flag on the copy).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// The next job number: counted from 1 over the whole server process
/// (native and legacy jobs alike), never reused while it runs.
fn next_job() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What the job needed before its program could start (its working
/// directory, entered as the job's user; its terminal) failed: inside the
/// `io::Error` that [`spawn`] returns, saying which and why.
#[derive(Debug)]
pub struct SetupError(String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

/// A signal's name without `SIG`, or its number for one nix cannot name.
pub fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => s.as_str().trim_start_matches("SIG").to_string(),
        Err(_) => sig.to_string(),
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

/// The job's group is gone: the keeper forgets it, and what is left in
/// its cgroup (processes that left the group) is killed.
pub fn release_group(pgid: Pid) {
    super::keeper::release(pgid);
    super::cgroup::release(pgid);
}

/// Kills a job's group if dropped before [`disarm`](GroupGuard::disarm):
/// a connection task dropped without its cleanup (a runtime shut down
/// under it, as in an embedded server or a test, or a panic) still leaves
/// no job running. SIGKILL at once: there is no task left to wait out a
/// grace.
pub struct GroupGuard(Option<Pid>);

impl GroupGuard {
    pub fn new(pgid: Pid) -> GroupGuard {
        GroupGuard(Some(pgid))
    }

    /// The group was killed and released by the normal path.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group_now(pgid);
        }
    }
}

/// SIGKILL to the group, then forgets it: for destructors, which cannot
/// wait out a TERM grace.
pub fn kill_group_now(pgid: Pid) {
    let _ = killpg(pgid, Signal::SIGKILL);
    release_group(pgid);
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
            release_group(pgid);
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            reap_group(pgid);
            if !group_alive(pgid) {
                release_group(pgid);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// TERM to `child`'s group, KILL after `grace`; waits for the child.
pub async fn kill_and_wait(
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
