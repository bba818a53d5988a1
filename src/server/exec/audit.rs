//! The audit trail of exec, on the `switchboard::audit` target: one record
//! per job that ran, native or legacy (with the names of the variables its
//! request set; never their values, which may be secrets), and one per
//! request refused before anything ran.
//!
//! Every string a peer chose (the command, its cwd) is written with `Debug`
//! formatting, so a newline or a control character in it is logged escaped
//! and cannot start a line of its own: a forged audit record would need the
//! log to print the peer's bytes raw, which nothing here does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;

use crate::proto::{Command, ErrorCode, ExitStatus};

/// Which protocol a job came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `switchboard/1` (PROTOCOL.md §3).
    Native,
    /// The tutorial-compatible protocol (PROTOCOL.md §4), unauthenticated.
    Legacy,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Native => "native",
            Via::Legacy => "legacy",
        }
    }
}

/// Who ran what, where, and how it ended.
#[derive(Debug, Clone)]
pub struct JobRecord<'a> {
    pub via: Via,
    pub peer: SocketAddr,
    /// The authenticated identity (`token:…`, or `none`).
    pub who: &'a str,
    /// The client's job id (legacy: the command's number on its connection).
    pub id: u64,
    pub pid: u32,
    pub command: &'a Command,
    pub cwd: Option<&'a str>,
    /// The variables the request set (only their names are logged).
    pub env: &'a BTreeMap<String, String>,
    /// Whether it ran on a terminal (`pty`).
    pub tty: bool,
    pub status: &'a ExitStatus,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Writes the record of one finished job.
pub fn job(r: &JobRecord<'_>) {
    info!(
        target: "switchboard::audit",
        via = r.via.name(),
        peer = %r.peer,
        who = ?r.who,
        id = r.id,
        pid = r.pid,
        command = ?r.command,
        cwd = ?r.cwd.unwrap_or("-"),
        env = ?r.env.keys().collect::<Vec<_>>(),
        tty = r.tty,
        status = ?r.status,
        duration_ms = u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        stdout_bytes = r.stdout_bytes,
        stderr_bytes = r.stderr_bytes,
        "job"
    );
}

/// A request, as far as it is known when it is refused.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub via: Via,
    pub peer: SocketAddr,
    pub who: &'a str,
    pub id: u64,
    /// None when the frame was not even a valid request.
    pub command: Option<&'a Command>,
    /// The variables it asked to set (only their names are logged).
    pub env: &'a BTreeMap<String, String>,
}

/// Writes the record of a request refused before anything ran (a
/// malformed request, limits, policy, a program that cannot be started):
/// attempts are part of the trail too.
pub fn refused(r: &Request<'_>, code: ErrorCode, why: &str) {
    info!(
        target: "switchboard::audit",
        via = r.via.name(),
        peer = %r.peer,
        who = ?r.who,
        id = r.id,
        command = ?r.command,
        env = ?r.env.keys().collect::<Vec<_>>(),
        code = code.as_str(),
        why = ?why,
        "refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_are_escaped_in_the_record() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let command = Command::Shell("true\nFORGED audit line".into());
        let env = BTreeMap::from([("K\nFORGED".to_string(), "secret".to_string())]);
        tracing::subscriber::with_default(subscriber, || {
            job(&JobRecord {
                via: Via::Legacy,
                peer: "127.0.0.1:1".parse().unwrap(),
                who: "none",
                id: 1,
                pid: 2,
                command: &command,
                cwd: Some("/tmp\nFORGED"),
                env: &env,
                tty: false,
                status: &ExitStatus::Code(0),
                duration: Duration::from_millis(3),
                stdout_bytes: 0,
                stderr_bytes: 0,
            })
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r"true\nFORGED audit line"), "{text}");
        assert!(text.contains(r"/tmp\nFORGED"), "{text}");
        assert!(text.contains(r"K\nFORGED"), "{text}");
        assert!(!text.contains("secret"), "values are never logged: {text}");
    }
}
