//! What exec puts in the audit trail ([`crate::auditlog`]): a record when a
//! job starts and one when it ends, native or legacy; one for each request
//! refused before anything ran; one for each failed login. Fields are
//! typed JSON: `argv` an array (what was executed; `shell` when it was a
//! command line), `exit_code` or `signal`, sizes and durations as numbers,
//! `env` the names the request set (never their values, which may be
//! secrets). `job` numbers jobs over the whole server process (the client's
//! `id` restarts on every connection), and is in the `started` frame too.
//!
//! A peer chooses the strings here (its command, its cwd): JSON escaping
//! keeps a newline or a control character in them from starting a record
//! of its own. They are clipped (see [`MAX_TEXT`]), so one request cannot
//! make a record, or the queue of records, large.
//!
//! ```text
//! {"ts":"2026-12-02T15:52:58.804Z","audit":"job_ended","job":7,"via":"native",
//!  "peer":"127.0.0.1:50122","who":"alice","auth":"key",
//!  "key":"SHA256:0pQ0…","id":1,"pid":4242,
//!  "argv":["/bin/sh","-c","make test"],"shell":true,"cwd":null,"env":[],
//!  "tty":false,"exit_code":0,"timed_out":false,"duration_ms":1840,
//!  "stdout_bytes":5120,"stderr_bytes":0}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::auditlog;
use crate::identity::Identity;
use crate::proto::{Command, ErrorCode, ExitStatus};

/// Bytes of peer-chosen text one record keeps: the command's words
/// together, and each other string. Clipped text ends in `…` and the
/// record says `"clipped":true`.
pub const MAX_TEXT: usize = 4096;
/// Environment names one record lists.
pub const MAX_ENV_NAMES: usize = 64;

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

/// Who asked, from where, on which connection.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub via: Via,
    pub peer: SocketAddr,
    /// The authenticated identity ([`Identity::audit_fields`]: `who`,
    /// `auth`, and the key or certificate).
    pub who: &'a Identity,
    /// The client's job id (legacy: the command's number on its connection).
    pub id: u64,
}

/// A job that runs: what it is, as the policy approved it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub who: Who<'a>,
    /// The server-wide job number.
    pub job: u64,
    pub pid: u32,
    pub command: &'a Command,
    pub cwd: Option<&'a str>,
    /// The variables the request set (only their names are recorded).
    pub env: &'a BTreeMap<String, String>,
    /// Whether it runs on a terminal (`pty`).
    pub tty: bool,
    /// (PROTOCOL.md §3.10) Its ID, when it was detached.
    pub detached: Option<&'a str>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub status: &'a ExitStatus,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Output read past the job's `max_output` and dropped.
    pub dropped_bytes: u64,
    /// Why the server ended it, for a detached job it stopped (PROTOCOL.md
    /// §3.10: `kill`, its owner no longer accepted).
    pub reason: Option<&'a str>,
}

/// The record of a job that has just started.
pub fn started(j: &Job<'_>) {
    auditlog::record("job_started", job_fields(j));
}

/// The record of a job that has ended.
pub fn ended(j: &Job<'_>, e: &End<'_>) {
    let mut f = job_fields(j);
    match e.status {
        ExitStatus::Code(c) => {
            f.insert("exit_code".into(), json!(c));
            f.insert("timed_out".into(), json!(false));
        }
        ExitStatus::Signal { name, timed_out } => {
            f.insert("signal".into(), json!(name));
            f.insert("timed_out".into(), json!(timed_out));
        }
    }
    let ms = u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX);
    f.insert("duration_ms".into(), json!(ms));
    f.insert("stdout_bytes".into(), json!(e.stdout_bytes));
    f.insert("stderr_bytes".into(), json!(e.stderr_bytes));
    if e.dropped_bytes > 0 {
        f.insert("dropped_bytes".into(), json!(e.dropped_bytes));
    }
    if let Some(r) = e.reason {
        f.insert("reason".into(), json!(r));
    }
    auditlog::record("job_ended", f);
}

/// The record of a request refused before anything ran (a malformed
/// request, limits, policy, a program that cannot be started): attempts
/// are part of the trail too. `command` is `None` when the frame was not
/// even a valid request.
pub fn refused(
    who: &Who<'_>,
    command: Option<&Command>,
    env: &BTreeMap<String, String>,
    code: ErrorCode,
    why: &str,
) {
    let mut clipped = false;
    let mut f = who_fields(who);
    if let Some(c) = command {
        command_fields(&mut f, c, &mut clipped);
    }
    f.insert("env".into(), env_names(env, &mut clipped));
    f.insert("code".into(), json!(code.as_str()));
    f.insert("message".into(), json!(clip(why, &mut clipped)));
    if clipped {
        f.insert("clipped".into(), json!(true));
    }
    auditlog::record("refused", f);
}

/// The record of a connection acting on a detached job (PROTOCOL.md
/// §3.10): `action` is `attach`, `kill` or `forget`; `detached` its ID (as
/// the request gave it, when refused), `job` its number once found; a
/// refusal's code and message (someone probing for other identities' jobs
/// leaves these).
pub fn detached(
    who: &Who<'_>,
    action: &str,
    detached: &str,
    job: Option<u64>,
    refused: Option<(ErrorCode, &str)>,
) {
    let mut clipped = false;
    let mut f = who_fields(who);
    f.insert("action".into(), json!(action));
    f.insert("detached".into(), json!(clip(detached, &mut clipped)));
    if let Some(j) = job {
        f.insert("job".into(), json!(j));
    }
    if let Some((code, why)) = refused {
        f.insert("code".into(), json!(code.as_str()));
        f.insert("message".into(), json!(clip(why, &mut clipped)));
    }
    if clipped {
        f.insert("clipped".into(), json!(true));
    }
    auditlog::record("detached", f);
}

/// The record of a detached job the server forgot by itself: `action` is
/// `expire` (its `exec.detached_ttl` passed) or `forget` with `why` (its
/// owner no longer accepted).
pub fn detached_dropped(owner: &Identity, action: &str, detached: &str, job: u64, why: &str) {
    let mut f = owner.audit_fields();
    f.insert("action".into(), json!(action));
    f.insert("detached".into(), json!(detached));
    f.insert("job".into(), json!(job));
    f.insert("message".into(), json!(why));
    auditlog::record("detached", f);
}

/// The record of a file transfer that ran (PROTOCOL.md §3.8): direction
/// (`put`, `get`, `list`), the path on the server, bytes, the content's
/// SHA-256, and the outcome (`ok`, `skipped`, `interrupted`, `cancelled`,
/// or an error code with its message).
pub fn transfer(who: &Who<'_>, r: &super::transfer::Record) {
    let mut clipped = false;
    let mut f = who_fields(who);
    f.insert("direction".into(), json!(r.direction));
    f.insert("path".into(), json!(clip(&r.path, &mut clipped)));
    f.insert("bytes".into(), json!(r.bytes));
    if let Some(h) = &r.sha256 {
        f.insert("sha256".into(), json!(h));
    }
    f.insert("outcome".into(), json!(r.outcome));
    if let Some(m) = &r.message {
        f.insert("message".into(), json!(clip(m, &mut clipped)));
    }
    if clipped {
        f.insert("clipped".into(), json!(true));
    }
    auditlog::record("transfer", f);
}

/// The record of a transfer refused before it started (policy, limits).
pub fn transfer_refused(who: &Who<'_>, direction: &str, path: &str, code: ErrorCode, why: &str) {
    let mut clipped = false;
    let mut f = who_fields(who);
    f.insert("direction".into(), json!(direction));
    f.insert("path".into(), json!(clip(path, &mut clipped)));
    f.insert("code".into(), json!(code.as_str()));
    f.insert("message".into(), json!(clip(why, &mut clipped)));
    if clipped {
        f.insert("clipped".into(), json!(true));
    }
    auditlog::record("refused", f);
}

/// The record of a failed login (a wrong MAC, a key not accepted, a bad
/// handshake): what fail2ban and its kind watch for. `key`: the
/// fingerprint of the key the client tried, if it tried one.
pub fn login_failed(peer: SocketAddr, key: Option<&str>, why: &str) {
    let mut clipped = false;
    let mut f = Map::new();
    f.insert("peer".into(), json!(peer.to_string()));
    if let Some(k) = key {
        f.insert("key".into(), json!(k));
    }
    f.insert("message".into(), json!(clip(why, &mut clipped)));
    auditlog::record("login_failed", f);
}

/// The record of a login refused after it proved who it is: the identity
/// was at its `max-connections=`.
pub fn login_refused(peer: SocketAddr, who: &Identity, why: &str) {
    let mut clipped = false;
    let mut f = who.audit_fields();
    f.insert("peer".into(), json!(peer.to_string()));
    f.insert("message".into(), json!(clip(why, &mut clipped)));
    auditlog::record("login_refused", f);
}

fn who_fields(w: &Who<'_>) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("via".into(), json!(w.via.name()));
    f.insert("peer".into(), json!(w.peer.to_string()));
    f.extend(w.who.audit_fields());
    f.insert("id".into(), json!(w.id));
    f
}

fn job_fields(j: &Job<'_>) -> Map<String, Value> {
    let mut clipped = false;
    let mut f = Map::new();
    f.insert("job".into(), json!(j.job));
    f.extend(who_fields(&j.who));
    f.insert("pid".into(), json!(j.pid));
    command_fields(&mut f, j.command, &mut clipped);
    f.insert(
        "cwd".into(),
        j.cwd.map_or(Value::Null, |c| json!(clip(c, &mut clipped))),
    );
    f.insert("env".into(), env_names(j.env, &mut clipped));
    f.insert("tty".into(), json!(j.tty));
    if let Some(d) = j.detached {
        f.insert("detached".into(), json!(d));
    }
    if clipped {
        f.insert("clipped".into(), json!(true));
    }
    f
}

/// `argv` as executed (`/bin/sh -c LINE` for a command line, with
/// `shell`), its words clipped to [`MAX_TEXT`] bytes together.
fn command_fields(f: &mut Map<String, Value>, command: &Command, clipped: &mut bool) {
    let (words, shell): (Vec<&str>, bool) = match command {
        Command::Shell(line) => (vec!["/bin/sh", "-c", line], true),
        Command::Argv(argv) => (argv.iter().map(String::as_str).collect(), false),
    };
    let mut room = MAX_TEXT;
    let mut argv = Vec::new();
    for w in words {
        if room == 0 {
            *clipped = true;
            break;
        }
        let kept = clip_to(w, room, clipped);
        room = room.saturating_sub(kept.len());
        argv.push(Value::String(kept));
    }
    f.insert("argv".into(), Value::Array(argv));
    f.insert("shell".into(), json!(shell));
}

fn env_names(env: &BTreeMap<String, String>, clipped: &mut bool) -> Value {
    if env.len() > MAX_ENV_NAMES {
        *clipped = true;
    }
    Value::Array(
        env.keys()
            .take(MAX_ENV_NAMES)
            .map(|k| json!(clip_to(k, 256, clipped)))
            .collect(),
    )
}

fn clip(s: &str, clipped: &mut bool) -> String {
    clip_to(s, MAX_TEXT, clipped)
}

/// `s` cut to at most `max` bytes on a character boundary, `…` marking a
/// cut.
fn clip_to(s: &str, max: usize, clipped: &mut bool) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    *clipped = true;
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_argv_arrays_and_long_text_is_clipped() {
        let mut f = Map::new();
        let mut clipped = false;
        command_fields(&mut f, &Command::Shell("echo hi".into()), &mut clipped);
        assert_eq!(f["argv"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(f["shell"], json!(true));
        assert!(!clipped);

        let long = "é".repeat(MAX_TEXT);
        let mut f = Map::new();
        command_fields(
            &mut f,
            &Command::Argv(vec!["/bin/echo".into(), long.clone(), "more".into()]),
            &mut clipped,
        );
        assert!(clipped);
        let argv = f["argv"].as_array().unwrap();
        let total: usize = argv.iter().map(|w| w.as_str().unwrap().len()).sum();
        assert!(total <= MAX_TEXT + "…".len(), "{total}");
        assert_eq!(argv.len(), 2, "nothing after the clipped word");
        assert!(argv[1].as_str().unwrap().ends_with('…'));
    }
}
