//! The audit trail as a stream of its own, apart from the log: one JSON
//! object per line for each job started and ended, each request refused
//! and each failed login, written whatever the log level (`-q` and
//! `RUST_LOG=warn` silence the log, never the trail).
//!
//! ```text
//! records ─ JSON line ─> Sink (bounded queue) ─> writer thread ─> FILE: append, 0600,
//!                                                                 reopened on SIGHUP
//!                                   or the log's own sink (`-`) ─> stderr (the journal
//!                                                                 under systemd)
//! ```
//!
//! Writing never blocks a connection: a record that finds the queue full
//! or cannot be written is dropped and counted
//! (`switchboard_audit_records_lost_total`), and the next record written
//! is preceded by one that says how many were lost and why
//! (`{"audit":"lost",...}`), so a gap in the trail is itself on record.
//! Every record carries `ts` (UTC, milliseconds) and `audit` (its kind).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::logsink::{QUEUE_LINES, Sink};

/// Where the trail goes (`server.audit_log`, `--audit-log`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum AuditTarget {
    /// `-`: stderr, with the log (the journal under systemd). The default,
    /// so that the trail is never off unless someone said so.
    #[default]
    Stderr,
    /// A file, appended to, created 0600.
    File(PathBuf),
    /// `none`: no trail.
    Off,
}

impl From<String> for AuditTarget {
    fn from(s: String) -> Self {
        match s.as_str() {
            "-" | "" => AuditTarget::Stderr,
            "none" => AuditTarget::Off,
            _ => AuditTarget::File(PathBuf::from(s)),
        }
    }
}

impl From<AuditTarget> for String {
    fn from(t: AuditTarget) -> Self {
        match t {
            AuditTarget::Stderr => "-".into(),
            AuditTarget::Off => "none".into(),
            AuditTarget::File(p) => p.display().to_string(),
        }
    }
}

impl std::fmt::Display for AuditTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditTarget::Stderr => f.write_str("stderr"),
            AuditTarget::Off => f.write_str("off"),
            AuditTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The stream, once opened; `None` inside: off.
static STREAM: OnceLock<Option<&'static Sink>> = OnceLock::new();
/// Set by SIGHUP: the file is reopened before the next record.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Opens the trail where `target` says, once per process (a second call
/// keeps the first stream: the target is a restart-only setting). A file
/// that cannot be opened is an error at start, not a silent loss.
pub fn open(target: &AuditTarget) -> anyhow::Result<()> {
    let sink = match target {
        AuditTarget::Off => None,
        AuditTarget::Stderr => Some(crate::logsink::stderr()),
        AuditTarget::File(path) => {
            let file = open_file(path)?;
            let out = Reopening {
                path: path.clone(),
                file,
            };
            Some(Sink::start_with(QUEUE_LINES, out, lost_record))
        }
    };
    let _ = STREAM.set(sink);
    Ok(())
}

/// Whether the trail could be opened where `target` says, without
/// creating anything (`--check-config`, a reload): an existing file must
/// pass [`open_file`]'s rules, a new one needs its directory.
pub fn check(target: &AuditTarget) -> anyhow::Result<()> {
    let AuditTarget::File(path) = target else {
        return Ok(());
    };
    if path.symlink_metadata().is_ok() {
        return open_trail(path, false).map(drop);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "cannot create the audit log {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Opens the trail for appending, created 0600 if missing: at start, on
/// SIGHUP's reopen, and (without creating) for `--check-config`.
fn open_file(path: &Path) -> anyhow::Result<File> {
    open_trail(path, true)
}

/// The one place the trail's file is judged. Often in a directory other
/// users can write to (a log directory, /tmp), so: never through a
/// symbolic link (O_NOFOLLOW: a link planted there would have a root
/// server append to the file it points at), never a FIFO or a device
/// (O_NONBLOCK keeps a FIFO without reader from hanging the open), a
/// regular file of the server's own user, which neither other users nor
/// the group may write (forged records) and others may not read (commands
/// may carry secrets); the group may read it (logrotate's `create 0640
/// root adm`).
fn open_trail(path: &Path, create: bool) -> anyhow::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let what = || format!("cannot open the audit log {}", path.display());
    let file = OpenOptions::new()
        .append(true)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(what)?;
    let meta = file.metadata().with_context(what)?;
    let euid = nix::unistd::Uid::effective().as_raw();
    let why = if !meta.file_type().is_file() {
        Some("it is not a regular file".to_string())
    } else if meta.uid() != euid {
        Some(format!(
            "it belongs to uid {}, not this server's",
            meta.uid()
        ))
    } else if meta.mode() & 0o026 != 0 {
        Some(format!(
            "its mode {:04o} lets others read it or others or the group write it; \
             run: chmod 640 {}",
            meta.mode() & 0o7777,
            path.display()
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(anyhow::anyhow!("{}: {why}", what())),
        None => Ok(file),
    }
}

/// SIGHUP: the file is reopened by name before the next record (after
/// logrotate moved it away).
pub fn reopen() {
    REOPEN.store(true, Ordering::Relaxed);
}

/// Records lost so far (queue full, or the file could not be written).
pub fn lost() -> u64 {
    match STREAM.get() {
        Some(Some(sink)) => sink.dropped(),
        _ => 0,
    }
}

/// Writes one record of kind `audit` with `fields`. A process that never
/// opened the stream (an embedded server, a test) writes to stderr, the
/// default.
pub fn record(audit: &str, fields: Map<String, Value>) {
    let sink = match STREAM.get_or_init(|| Some(crate::logsink::stderr())) {
        Some(sink) => sink,
        None => return,
    };
    sink.send(line(audit, fields));
}

/// The JSON line of a record: `ts` and `audit` first (written by hand:
/// a JSON map sorts its keys), then `fields`.
fn line(audit: &str, fields: Map<String, Value>) -> Vec<u8> {
    let text = |s: &str| Value::String(s.into()).to_string();
    let mut line = format!("{{\"ts\":{},\"audit\":{}", text(&now()), text(audit)).into_bytes();
    if fields.is_empty() {
        line.push(b'}');
    } else {
        // `{"k":…}` joins as `,"k":…}`.
        let rest = serde_json::to_vec(&Value::Object(fields)).unwrap_or_default();
        line.push(b',');
        line.extend_from_slice(rest.get(1..).unwrap_or_default());
    }
    line.push(b'\n');
    line
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The record that reports a loss, in the trail itself.
fn lost_record(lost: u64, why: &str, torn: bool) -> Vec<u8> {
    let mut fields = Map::new();
    fields.insert("records".into(), lost.into());
    fields.insert("why".into(), why.into());
    let mut line = line("lost", fields);
    if torn {
        line.insert(0, b'\n');
    }
    line
}

/// The audit file, reopened by name when SIGHUP asked for it. If the
/// reopen fails, records go on to the file already open (better a
/// rotated file than none) and the failure is logged.
struct Reopening {
    path: PathBuf,
    file: File,
}

impl Write for Reopening {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if REOPEN.swap(false, Ordering::Relaxed) {
            match open_file(&self.path) {
                Ok(f) => self.file = f,
                Err(e) => tracing::error!("audit log: {e:#}; writing on to the open file"),
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_and_print_as_written() {
        for (text, target) in [
            ("-", AuditTarget::Stderr),
            ("none", AuditTarget::Off),
            (
                "/var/log/sb.audit",
                AuditTarget::File("/var/log/sb.audit".into()),
            ),
        ] {
            assert_eq!(AuditTarget::from(text.to_string()), target);
            assert_eq!(String::from(target), text);
        }
    }

    #[test]
    fn a_record_is_one_json_line_with_its_kind_and_time_first() {
        let mut fields = Map::new();
        fields.insert("cmd".into(), "echo \"hi\"\nFORGED".into());
        let line = String::from_utf8(line("job", fields)).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.starts_with(r#"{"ts":""#), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["audit"], "job");
        assert_eq!(v["cmd"], "echo \"hi\"\nFORGED");
        let lost: Value = serde_json::from_slice(&lost_record(3, "disk full", true)).unwrap();
        assert_eq!(
            (lost["audit"].as_str(), lost["records"].as_u64()),
            (Some("lost"), Some(3))
        );
    }
}
