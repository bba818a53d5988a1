//! The local terminal of `exec -t`, as ssh -t treats it: raw mode while
//! the job runs (every key, Ctrl-C included, goes to the job's terminal,
//! whose line discipline does what a local one would), restored on every
//! way out; the window size, sent at the start and on SIGWINCH; and the
//! escapes that get a user out of a job that no longer answers.
//!
//! ```text
//! after Enter:  ~.  disconnect      ~~  send one ~      ~?  list these
//! ```

use std::io::{self, IsTerminal};

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// The terminal on stdin, in raw mode until dropped. Dropping restores it
/// as it was: a normal exit, an error, the escape, a signal the client
/// handles (TERM, HUP) and a panic all unwind through the guard.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on stdin, when stdin is a terminal (`None` otherwise).
    pub fn enter() -> io::Result<Option<RawMode>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSADRAIN, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The signals a client on a raw terminal listens for: window-size
/// changes, and every signal whose default action would end the process
/// with the terminal left raw. Made before the terminal is made raw, so
/// that no such signal can arrive in between.
pub struct TtySignals {
    winch: Signal,
    fatal: mpsc::Receiver<String>,
}

/// What a [`TtySignals`] delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtySignal {
    /// The window changed size.
    Resized,
    /// A signal that ends the client (named without `SIG`): restore the
    /// terminal and leave.
    Fatal(String),
}

/// The signals that end a process by default and that a program can catch,
/// but INT (the job's, in raw mode a key sent as a byte), PIPE (Rust
/// ignores it: writes fail instead) and the synchronous faults (ILL, FPE,
/// SEGV, BUS), which tokio refuses. The real-time signals are added to them.
const FATAL: [(i32, &str); 16] = [
    (libc::SIGTERM, "TERM"),
    (libc::SIGHUP, "HUP"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGVTALRM, "VTALRM"),
    (libc::SIGPROF, "PROF"),
    (libc::SIGXCPU, "XCPU"),
    (libc::SIGXFSZ, "XFSZ"),
    (libc::SIGPWR, "PWR"),
    (libc::SIGSYS, "SYS"),
    (libc::SIGTRAP, "TRAP"),
    (libc::SIGABRT, "ABRT"),
    (libc::SIGSTKFLT, "STKFLT"),
    (libc::SIGIO, "IO"),
];

impl TtySignals {
    /// Installs the handlers; inside a tokio runtime.
    pub fn new() -> io::Result<TtySignals> {
        let winch = signal(SignalKind::window_change())?;
        let realtime = (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .map(|n| (n, format!("RTMIN+{}", n - libc::SIGRTMIN())));
        let all: Vec<(i32, String)> = FATAL
            .iter()
            .map(|&(n, name)| (n, name.to_string()))
            .chain(realtime)
            .collect();
        let (tx, fatal) = mpsc::channel(all.len());
        for (number, name) in all {
            // Best effort: a signal the runtime will not handle keeps its
            // default action.
            let Ok(mut s) = signal(SignalKind::from_raw(number)) else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if s.recv().await.is_some() {
                    let _ = tx.send(name).await;
                }
            });
        }
        Ok(TtySignals { winch, fatal })
    }

    /// The next signal.
    pub async fn next(&mut self) -> TtySignal {
        tokio::select! {
            Some(()) = self.winch.recv() => TtySignal::Resized,
            Some(name) = self.fatal.recv() => TtySignal::Fatal(name),
            else => std::future::pending().await,
        }
    }
}

/// The window size (rows, columns) of the terminal on stdin, stdout or
/// stderr, the first that is one; `(0, 0)` (unknown, as ssh sends it)
/// when none is.
pub fn window_size() -> (u16, u16) {
    for fd in [0, 1, 2] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills the winsize we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 {
            return (ws.ws_row, ws.ws_col);
        }
    }
    (0, 0)
}

/// What an escape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `~.`: end the connection (the job is killed with it).
    Disconnect,
    /// `~?`: list the escapes.
    Help,
}

/// The list `~?` prints (raw mode: lines end in CR LF).
pub const ESCAPE_HELP: &str = "\r\nSupported escape sequences:\r\n \
     ~.   - terminate connection (and the job)\r\n \
     ~~   - send the escape character\r\n \
     ~?   - this message\r\n\
     (Note that escapes are only recognized immediately after newline.)\r\n";

/// ssh's escape reader: a `~` typed first on a line is held until the
/// next key says what it is.
#[derive(Debug)]
pub struct Escapes {
    line_start: bool,
    tilde: bool,
}

impl Default for Escapes {
    fn default() -> Self {
        Escapes {
            line_start: true,
            tilde: false,
        }
    }
}

impl Escapes {
    /// Appends to `send` what the typed `input` gives the job, and says
    /// which escape it held, if any. Input after `~.` is dropped.
    pub fn feed(&mut self, input: &[u8], send: &mut Vec<u8>) -> Option<Escape> {
        let mut asked = None;
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => return Some(Escape::Disconnect),
                    b'?' => {
                        asked = Some(Escape::Help);
                        continue;
                    }
                    b'~' => {
                        send.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    // Not an escape: the ~ was typed for the job.
                    _ => send.push(b'~'),
                }
            } else if self.line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            send.push(b);
            self.line_start = b == b'\r' || b == b'\n';
        }
        asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut Escapes, input: &[u8]) -> (Vec<u8>, Option<Escape>) {
        let mut send = Vec::new();
        let asked = e.feed(input, &mut send);
        (send, asked)
    }

    #[test]
    fn escapes_are_read_only_first_on_a_line() {
        let mut e = Escapes::default();
        assert_eq!(feed(&mut e, b"~."), (vec![], Some(Escape::Disconnect)));

        let mut e = Escapes::default();
        assert_eq!(feed(&mut e, b"a~.b"), (b"a~.b".to_vec(), None));
        assert_eq!(
            feed(&mut e, b"\r~.rest"),
            (b"\r".to_vec(), Some(Escape::Disconnect))
        );

        // Split across reads, as typed keys are.
        let mut e = Escapes::default();
        assert_eq!(feed(&mut e, b"ls\n~"), (b"ls\n".to_vec(), None));
        assert_eq!(feed(&mut e, b"."), (vec![], Some(Escape::Disconnect)));
    }

    #[test]
    fn a_doubled_or_unknown_escape_sends_the_tilde() {
        let mut e = Escapes::default();
        assert_eq!(feed(&mut e, b"~~."), (b"~.".to_vec(), None));
        let mut e = Escapes::default();
        assert_eq!(feed(&mut e, b"~x~."), (b"~x~.".to_vec(), None));
        let mut e = Escapes::default();
        assert_eq!(feed(&mut e, b"~?ok"), (b"ok".to_vec(), Some(Escape::Help)));
        let mut e = Escapes::default();
        assert_eq!(
            feed(&mut e, b"~\r~."),
            (b"~\r".to_vec(), Some(Escape::Disconnect))
        );
    }
}
