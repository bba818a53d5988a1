//! Process-wide OS settings.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft open-file limit to the hard limit and returns the new
/// soft limit. Many distributions start processes at a soft limit of 1,024,
/// which a server with thousands of clients passes at once; the hard limit
/// is the administrator's real ceiling (as Go's runtime and nginx's
/// `worker_rlimit_nofile` treat it).
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// The process's own figures for the `process_*` metrics.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub vm_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub start_time_seconds: f64,
}

/// Reads [`ProcessFigures`] from /proc/self (Linux); `None` where it
/// cannot be read.
pub fn process_figures() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: fields are
    // counted after its closing parenthesis, where field 3 (state) is 0.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse::<f64>().ok() };
    // SAFETY: sysconf reads a constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    if ticks <= 0.0 {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let (max_fds, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    Some(ProcessFigures {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        vm_bytes: field(23)?,
        rss_bytes: field(24)? * page,
        open_fds,
        max_fds: max_fds as f64,
        start_time_seconds: boot + field(22)? / ticks,
    })
}

/// The local zone at `unix_secs` as the C library sees it: the offset east
/// of UTC in seconds and the abbreviation (`CET`, `EDT`, ...) that C's
/// `strftime("%Z")` prints. Both come from one `localtime_r`, so they
/// always belong to the same zone, and `TZ` is understood exactly as
/// `date` and Python understand it (chrono's own reading of `TZ` falls back
/// to UTC on strings glibc accepts, which gave UTC times labelled `EDT`).
pub fn local_zone(unix_secs: i64) -> Option<(i32, String)> {
    let t = libc::time_t::try_from(unix_secs).ok()?;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `localtime_r` fills the `tm` we own and returns null on
    // failure. `tm_zone` then points into the C library's zone table, valid
    // until the next `tzset`; it is copied out at once.
    unsafe {
        if libc::localtime_r(&t, tm.as_mut_ptr()).is_null() {
            return None;
        }
        let tm = tm.assume_init();
        let offset = i32::try_from(tm.tm_gmtoff).ok()?;
        let name = if tm.tm_zone.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(tm.tm_zone)
                .to_string_lossy()
                .into_owned()
        };
        Some((offset, name))
    }
}

/// The kernel's `struct sigaction`, in the layout of x86_64 and arm64
/// (other architectures differ: see the fallback below).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Sets `sig` to its default action with the raw system call, which also
/// works for the signals glibc reserves for itself (32, 33) and refuses to
/// touch through `sigaction`. Async-signal-safe (usable after fork).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn default_action_raw(sig: i32) {
    let k = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: a plain system call with a valid struct and no old-action out
    // pointer; an invalid signal number just fails.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &k as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            std::mem::size_of::<u64>(),
        );
    }
}

/// The process's umask (process-wide), read from /proc: setting it to
/// read it would race with other threads creating files.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Ignores `sig` process-wide (the server's own; jobs reset every
/// disposition).
pub fn ignore_signal(sig: i32) {
    // SAFETY: setting a disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(sig, libc::SIG_IGN);
    }
}

/// Highest descriptor the fallback of [`cloexec_from`] visits when the
/// kernel lacks `close_range(CLOSE_RANGE_CLOEXEC)` (Linux < 5.11). Default
/// 65,536: a loop of `fcntl` calls per spawn must stay cheap, and stray
/// descriptors inherited at start-up sit at small numbers.
pub const CLOEXEC_FALLBACK_LIMIT: i32 = 65_536;

/// Marks every descriptor from `first` up close-on-exec, so that an exec
/// keeps only those below it. Marking, not closing: std reports a failed
/// exec through a close-on-exec pipe that must stay open until the exec.
/// Async-signal-safe (usable after fork): plain system calls only.
pub fn cloexec_from(first: u32) {
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor
    // flags; no memory is touched.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // ENOSYS (before 5.9) or EINVAL (the flag before 5.11): one fcntl per
    // descriptor, up to the open-file limit (capped).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        i32::try_from(lim.rlim_cur).unwrap_or(i32::MAX)
    } else {
        CLOEXEC_FALLBACK_LIMIT
    };
    let first = i32::try_from(first).unwrap_or(i32::MAX);
    for fd in first..soft.min(CLOEXEC_FALLBACK_LIMIT) {
        // SAFETY: fcntl on a descriptor number that may not be open: it
        // then fails with EBADF and changes nothing.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Elsewhere, the C library's `sigaction`: every signal but the C
/// library's own (which it refuses to touch) goes back to its default.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn default_action_raw(sig: i32) {
    // SAFETY: sigaction with a zeroed (SIG_DFL, empty mask) action and no
    // old-action pointer; async-signal-safe; an invalid signal just fails.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}
