//! Pseudo-terminals for jobs that ask for one (`exec` with `pty`, the
//! client's `-t`): the job's descriptors 0, 1 and 2 are the terminal's
//! slave side and it is the job's controlling terminal; the server keeps
//! the master side and moves bytes between it and the connection.
//!
//! ```text
//! stdin frames ──> master ══ kernel line discipline ══ slave: job's 0, 1, 2
//! stdout frames <── master   (echo, ^C -> SIGINT,       (controlling tty;
//!                             \n -> \r\n; stdout and     stderr lands in
//!                             stderr are one stream)     stdout, as ssh -t)
//! resize ──> TIOCSWINSZ on master ──> SIGWINCH to the terminal's foreground group
//! eof ──> the terminal's end-of-file character (^D), in canonical mode
//! ```
//!
//! The master is non-blocking and read through tokio's reactor; reading it
//! fails with EIO once no process holds the slave open, which is the
//! terminal's end of file. Once the slave is hung up, the reactor reports
//! the master as ready for good (a hang-up is never cleared) while a write
//! still fails with EAGAIN: a write then ends with an error instead of
//! trying again, or it would spin on the CPU forever.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use nix::unistd::{Gid, Uid};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The server's side of a job's terminal; clones share it.
#[derive(Clone)]
pub struct Pty(Arc<AsyncFd<OwnedFd>>);

/// Opens a terminal of `rows` x `cols` whose slave belongs to `owner`
/// (the job's user) with mode 0620 and group `tty`, as sshd leaves it: a
/// job run as another user can reopen its own terminal (`/dev/tty`,
/// `sudo`, `write`), and no other user can read it. Returns the master
/// and the slave, both close-on-exec; the slave goes to the job.
pub fn open(rows: u16, cols: u16, owner: Uid) -> io::Result<(Pty, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain system calls on descriptors owned here; each result is
    // checked before it is used.
    let master = unsafe {
        let fd = libc::posix_openpt(flags);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let m = master.as_raw_fd();
    // SAFETY: as above.
    unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let slave = open_slave(m, flags)?;
    if Uid::effective().is_root() {
        let (group, mode) = match tty_group() {
            Some(g) => (g.as_raw(), 0o620),
            None => (u32::MAX, 0o600), // -1: group unchanged
        };
        // SAFETY: fchmod/fchown on a descriptor we own. The mode first,
        // while the slave is still the server's: changing the mode of a
        // file of another user's would need CAP_FOWNER, which a hardened
        // unit does not grant.
        unsafe {
            if libc::fchmod(slave.as_raw_fd(), mode) != 0
                || libc::fchown(slave.as_raw_fd(), owner.as_raw(), group) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
    }
    set_size(m, rows, cols)?;
    set_nonblocking(m)?;
    // SAFETY: `master` is an open descriptor the AsyncFd owns from here
    // on, and an OwnedFd always gives the same one.
    let master = unsafe { AsyncFd::register(master) }?;
    Ok((Pty(Arc::new(master)), slave))
}

/// The slave of master `m`: by TIOCGPTPEER (Linux 4.13), which cannot be
/// raced by whoever can rename things under /dev/pts in a container, else
/// by the name ptsname gives.
fn open_slave(m: RawFd, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the ioctl returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(m, libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name within `name`'s
    // length; open takes that name.
    unsafe {
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::open(name.as_ptr(), flags);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The `tty` group, looked up once (never between fork and exec).
fn tty_group() -> Option<Gid> {
    static TTY: OnceLock<Option<Gid>> = OnceLock::new();
    *TTY.get_or_init(|| {
        nix::unistd::Group::from_name("tty")
            .ok()
            .flatten()
            .map(|g| g.gid)
    })
}

fn set_size(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child, after `setsid`: makes the terminal on descriptor 0 the
/// controlling terminal of the job's new session. Async-signal-safe.
pub fn make_controlling_in_child() -> io::Result<()> {
    // SAFETY: one ioctl on descriptor 0.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Pty {
    /// Sets the window size; the kernel tells the terminal's foreground
    /// process group with SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_size(self.0.as_raw_fd(), rows, cols)
    }

    /// The terminal's end-of-file character, when the line discipline is
    /// in canonical mode (where it means end of input); a program that put
    /// the terminal in raw mode reads bytes, and has no end of input to
    /// give it.
    fn eof_char(&self) -> Option<u8> {
        let t = nix::sys::termios::tcgetattr(self.0.get_ref()).ok()?;
        t.local_flags
            .contains(nix::sys::termios::LocalFlags::ICANON)
            .then(|| t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize])
    }
}

/// Whether the slave side is hung up (no process holds it): the kernel
/// says so in `poll`, and the reactor's readiness, which keeps a hang-up
/// for good, cannot be cleared by a failed attempt.
fn hung_up(master: &AsyncFd<OwnedFd>) -> bool {
    let mut p = libc::pollfd {
        fd: master.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLHUP != 0
}

/// Reads what the job wrote to its terminal; EIO (no process holds the
/// slave any more) is the end of file.
impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: read into the initialised part of `buf`.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Hung up with nothing to read: the end, not a retry.
                Err(_would_block) if hung_up(&self.0) => return Poll::Ready(Ok(())),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Types into the terminal. Shutting it down types the end-of-file
/// character once (see [`Pty::eof_char`]); the terminal stays open.
impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: write from `data`, which outlives the call.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) if hung_up(&self.0) => {
                    return Poll::Ready(Err(io::Error::from_raw_os_error(libc::EIO)));
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.eof_char() {
            Some(c) => self.as_mut().poll_write(cx, &[c]).map_ok(|_| ()),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A terminal nobody reads fills; once its slave is closed too, a
    /// write must fail. (The reactor keeps a hang-up as readiness for
    /// good, so a write that retried on EAGAIN would spin forever inside
    /// one poll, out of reach of any timeout or cancellation.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_to_a_full_hung_up_terminal_fails_instead_of_spinning() {
        let (mut pty, slave) = open(24, 80, Uid::effective()).expect("a terminal");
        let line = [[b'x'; 63].as_slice(), b"\n"].concat();
        // Full for certain, not by a timing: written until EAGAIN, again
        // after the kernel had time to move what it could, until a round
        // takes nothing.
        let fd = pty.0.as_raw_fd();
        let mut idle_rounds = 0;
        for _ in 0..1_000 {
            let mut took = 0;
            loop {
                // SAFETY: a write from `line` to the master we hold.
                let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
                if n <= 0 {
                    break;
                }
                took += n;
            }
            idle_rounds = if took == 0 { idle_rounds + 1 } else { 0 };
            if idle_rounds == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(idle_rounds, 3, "the terminal never filled");
        drop(slave);
        let write = tokio::spawn(async move { pty.write_all(&line).await });
        let ended = tokio::time::timeout(Duration::from_secs(5), write).await;
        assert!(
            matches!(ended, Ok(Ok(Err(_)))),
            "a write to a hung-up terminal did not fail: {ended:?}"
        );
    }
}
