//! Starting a job's process without fork: `clone(CLONE_VM | CLONE_VFORK)`,
//! as glibc's `posix_spawn` does, with the child's setup of PROTOCOL.md
//! §3.3 that `posix_spawn` cannot do (credentials, a cgroup, every signal
//! disposition at its default).
//!
//! A fork of the server copies its page tables, marks every writable page
//! copy-on-write (a TLB shootdown on every core the server runs on), and
//! the child throws it all away at `execve`: `perf` of a `true` loop put
//! `_Fork`, `dup_mmap`, `exit_mmap` and the shootdowns at over a quarter
//! of the server's samples. Here the child borrows the server's memory
//! and the calling thread waits until the child has called `execve` (or
//! exited), so nothing is copied.
//!
//! ```text
//!  parent thread                         child (server's memory, own stack)
//!  argv, envp, fds prepared
//!  block every signal
//!  clone(VM|VFORK|PIDFD) ───────────────> dispositions to default, mask empty
//!   (suspended)                           setsid, [TIOCSCTTY], fds 0-2, others cloexec
//!                                         keeper, cgroup, rlimit
//!                                         setgroups, setgid, setuid (raw syscalls)
//!                                         chdir, execve ── or: errno in `err`, _exit(127)
//!  <─────────────────────────────────────
//!  restore the mask; `err` set? reap, fail
//! ```
//!
//! The rules of a CLONE_VM child: it shares the parent's heap, so it
//! allocates nothing, takes no lock, and touches only what was prepared
//! for it; it shares glibc's state, so credentials change by raw system
//! calls (glibc's `setuid` would try to signal the server's threads); and
//! no handler of the server may run in it, so every signal is blocked
//! across the clone and dispositions are reset before they are unblocked.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;

/// The child's stack: it runs a few system calls, nothing recursive.
const STACK: usize = 64 * 1024;

/// What the child does between clone and exec; everything in it was
/// allocated by the parent.
pub struct ChildSetup<'a> {
    /// The program, its argv (NUL-terminated array) and its environment.
    pub program: &'a CStr,
    pub argv: &'a [*const libc::c_char],
    pub envp: &'a [*const libc::c_char],
    /// Descriptors for the child's 0, 1 and 2 (each 3 or above).
    pub stdio: [RawFd; 3],
    /// Take descriptor 0 (a terminal) as the controlling terminal.
    pub controlling_tty: bool,
    /// The job cgroup's `cgroup.procs`, to join while still root.
    pub cgroup_fd: Option<RawFd>,
    pub nproc: Option<libc::rlimit>,
    /// uid, gid and supplementary groups to switch to.
    pub ids: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t])>,
    pub cwd: Option<&'a CStr>,
}

/// Marks the errno of a failed `chdir` in the child, so the parent can say
/// the working directory was at fault rather than the program.
pub const CWD_FAILED: i32 = 0x4000_0000;

/// A job's main process: its pid, and a pidfd to wait on.
pub struct Child {
    pid: libc::pid_t,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

/// Spawns the child `setup` describes; the caller registers the pid with
/// the reaper and the keeper. Needs a tokio runtime (the pidfd is
/// registered with it).
pub fn spawn(setup: &ChildSetup<'_>) -> io::Result<Child> {
    if setup.stdio.iter().any(|&fd| fd < 3) {
        return Err(io::Error::other("internal error: stdio descriptor below 3"));
    }
    if setup.argv.last().is_none_or(|p| !p.is_null())
        || setup.envp.last().is_none_or(|p| !p.is_null())
    {
        return Err(io::Error::other(
            "internal error: argv or envp unterminated",
        ));
    }
    let mut stack: Vec<u8> = Vec::with_capacity(STACK);
    // The top, 16-byte aligned (the x86-64 and aarch64 ABIs).
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    let mut shared = Shared { setup, err: 0 };
    let mut pidfd: libc::c_int = -1;
    let all = full_set();
    let mut old: libc::sigset_t = unsafe_zeroed_set();
    // SAFETY: a raw sigprocmask on sets we own (raw, so that glibc's own
    // signals are blocked too: no handler may run in the child).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const libc::sigset_t,
            &mut old as *mut libc::sigset_t,
            8usize,
        );
    }
    // SAFETY: the child runs `child_main` on `stack`, which outlives it
    // (CLONE_VFORK: this thread is suspended until the child has exec'd or
    // exited); `shared` is read and written only by the child while this
    // thread waits; the pidfd is written by the kernel before clone
    // returns.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&mut shared as *mut Shared<'_>).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores this thread's mask from the copy taken above.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        );
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_err);
    }
    // SAFETY: the kernel gave us this descriptor (CLONE_PIDFD) and nobody
    // else holds it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: a plain read of our own value, which the child may have
    // written through the pointer it was given.
    let err = unsafe { std::ptr::read_volatile(&shared.err) };
    if err != 0 {
        // The child exited at once: reap it (it cannot be waited for by
        // anyone else, its pid is ours until then).
        let mut st = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err(io::Error::from_raw_os_error(err));
    }
    // SAFETY: the descriptor is open and owned by the OwnedFd that the
    // AsyncFd keeps until it is dropped (and so deregistered).
    let pidfd = match unsafe { AsyncFd::register(pidfd) } {
        Ok(fd) => fd,
        Err(e) => {
            // Not to be left running untracked: its group (itself, since
            // it has exec'd after setsid) is killed and it is reaped.
            // SAFETY: signals and waits for our own child.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(io::Error::from(e));
        }
    };
    Ok(Child {
        pid,
        pidfd: Some(pidfd),
        status: None,
    })
}

struct Shared<'a> {
    setup: &'a ChildSetup<'a>,
    /// The child's errno (with [`CWD_FAILED`] for chdir) if it failed.
    err: i32,
}

/// The child. Only system calls on prepared data; every failure stores
/// errno and exits 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Shared`, alive and untouched by the
    // parent until this child execs or exits.
    let shared = unsafe { &mut *arg.cast::<Shared<'_>>() };
    let code = match child_setup(shared.setup) {
        Ok(()) => {
            let s = shared.setup;
            // SAFETY: NUL-terminated arrays of C strings the parent keeps
            // alive; execve returns only on failure.
            unsafe { libc::execve(s.program.as_ptr(), s.argv.as_ptr(), s.envp.as_ptr()) };
            errno()
        }
        Err(e) => e,
    };
    shared.err = if code == 0 { libc::EINVAL } else { code };
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

fn child_setup(s: &ChildSetup<'_>) -> Result<(), i32> {
    let check = |r: libc::c_long| if r < 0 { Err(errno()) } else { Ok(()) };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            crate::sys::default_action_raw(sig);
        }
    }
    let empty = unsafe_zeroed_set();
    // SAFETY: raw system calls on values and prepared data only.
    unsafe {
        check(libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        ))?;
        // A session of its own (see process.rs for why not just a group).
        check(libc::syscall(libc::SYS_setsid))?;
        for (target, &fd) in s.stdio.iter().enumerate() {
            check(libc::syscall(libc::SYS_dup3, fd, target, 0))?;
        }
        if s.controlling_tty {
            check(libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSCTTY, 0))?;
        }
    }
    super::keeper::hold_self_in_child();
    crate::sys::cloexec_from(3);
    if let Some(fd) = s.cgroup_fd {
        super::cgroup::join_in_child(fd).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    }
    // SAFETY: as above.
    unsafe {
        if let Some(limit) = &s.nproc {
            check(libc::syscall(
                libc::SYS_setrlimit,
                libc::RLIMIT_NPROC,
                limit as *const libc::rlimit,
            ))?;
        }
        // Groups first, then the group, then the user: each step needs
        // the privileges the next one drops.
        if let Some((uid, gid, groups)) = s.ids {
            check(libc::syscall(
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
        }
        if let Some(d) = s.cwd
            && libc::syscall(libc::SYS_chdir, d.as_ptr()) < 0
        {
            return Err(CWD_FAILED | errno());
        }
    }
    Ok(())
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn unsafe_zeroed_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

fn full_set() -> libc::sigset_t {
    let mut set = unsafe_zeroed_set();
    // SAFETY: fills a set we own.
    unsafe { libc::sigfillset(&mut set) };
    set
}

impl Child {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the process to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.status {
                return Ok(st);
            }
            if self.try_reap()? {
                continue;
            }
            let Some(fd) = &self.pidfd else {
                return Err(io::Error::other("internal error: no pidfd"));
            };
            // Readable once the process has ended.
            let mut ready = fd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Reaps the process if it has ended; whether it had.
    fn try_reap(&mut self) -> io::Result<bool> {
        match super::reaper::wait_main(self.pid)? {
            None => Ok(false),
            Some(st) => {
                self.status = Some(ExitStatus::from_raw(st));
                self.pidfd = None;
                Ok(true)
            }
        }
    }
}

impl Drop for Child {
    /// A process never waited for is reaped when it ends, by a task that
    /// holds its pidfd (the reaper leaves jobs' main processes alone).
    fn drop(&mut self) {
        if self.status.is_some() || self.try_reap().unwrap_or(true) {
            return;
        }
        let (Ok(rt), Some(fd)) = (tokio::runtime::Handle::try_current(), self.pidfd.take()) else {
            return;
        };
        // Not a `Child`: a task dropped unrun (a runtime shutting down)
        // must not drop another `Child` and spawn again, forever.
        let pid = self.pid;
        rt.spawn(async move {
            while let Ok(mut ready) = fd.readable().await {
                ready.clear_ready();
                if !matches!(super::reaper::wait_main(pid), Ok(None)) {
                    return;
                }
            }
        });
    }
}

/// Builds a NUL-terminated array of pointers into `strings` (which must
/// outlive it).
pub fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}
