//! Typed messages of `switchboard/1` (PROTOCOL.md §3.2-3.3), to and from
//! [`Frame`]s. Unknown header fields are ignored; an unknown `type` is
//! [`ParseError::UnknownType`], missing or ill-typed fields
//! [`ParseError::BadRequest`], both answered on the wire without closing.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::frame::Frame;
use super::jobs::{AttachRequest, JobInfo, KillRequest};
use super::transfer::{
    Accepted, DoneRequest, Entry, ExpectRequest, FileMeta, GetRequest, ListRequest, Listed,
    PutRequest, Sent, Stored,
};

/// Error codes of §3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Protocol,
    AuthFailed,
    UnknownType,
    BadRequest,
    DuplicateId,
    NoSuchJob,
    Busy,
    SpawnFailed,
    Forbidden,
    /// The server is shutting down (sent without an id, last, before it
    /// closes the connection).
    ShuttingDown,
    /// (Transfers, §3.8) no such file or directory.
    NotFound,
    /// (§3.8) the user the transfer runs as may not do that.
    PermissionDenied,
    /// (§3.8) a path that must be a directory is not one.
    NotADirectory,
    /// (§3.8) a file would replace a directory, or a directory was asked
    /// for as a file.
    IsADirectory,
    /// (§3.8) a directory would replace a file, or another transfer is
    /// writing the same file.
    Exists,
    /// (§3.8) the disk (or a quota, or a file-size limit) is full.
    NoSpace,
    /// (§3.8) what arrived does not hash to what was sent: nothing kept.
    HashMismatch,
    /// (§3.8) any other failure of the file system.
    IoError,
    /// (§3.10) an attachment ended without its job: another connection
    /// attached to the same detached job.
    Detached,
    /// A code this build does not know (forward compatibility).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "protocol",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::NoSuchJob => "no_such_job",
            ErrorCode::Busy => "busy",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::Exists => "exists",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::IoError => "io_error",
            ErrorCode::Detached => "detached",
            ErrorCode::Other => "other",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A shell command line, run by `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments, no shell.
    Argv(Vec<String>),
}

impl Command {
    /// A word quoted for a POSIX shell, as it is when it needs no quotes.
    pub fn quote_word(w: &str) -> String {
        let safe = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c);
        if !w.is_empty() && w.chars().all(safe) {
            w.to_string()
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    }

    /// The command as one line for people: the command line, or the
    /// words quoted as a shell would need them.
    pub fn text(&self) -> String {
        match self {
            Command::Shell(line) => line.clone(),
            Command::Argv(words) => words
                .iter()
                .map(|w| Command::quote_word(w))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// An `exec` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub id: u64,
    pub command: Command,
    pub stdin: bool,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub timeout_ms: Option<u64>,
    /// A terminal for the job (`-t`); `None`: pipes.
    pub pty: Option<PtyRequest>,
    /// How much output to send, and how (§3.3).
    pub output: OutputOptions,
    /// (§3.10) Run on after the connection closes, its output kept on the
    /// server for `attach`.
    pub detach: bool,
}

/// What a job's output may be (PROTOCOL.md §3.3): capped, stamped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// Stamp the job's `started`, `stdout` and `stderr` frames with the
    /// server's time (`ts`).
    pub timestamps: bool,
    /// Output to send at most, stdout and stderr together; past it the
    /// rest is read and dropped, and the `exit` frame counts it. The
    /// server's `exec.max_output`, when set, is the most a request gets.
    pub max_output: Option<u64>,
    /// Stop the job (TERM, then KILL) once `max_output` is reached,
    /// instead of letting it run on.
    pub max_output_kill: bool,
}

impl ExecRequest {
    /// A shell command line with no stdin, env, cwd, timeout or terminal.
    pub fn shell(id: u64, cmd: impl Into<String>) -> Self {
        ExecRequest {
            id,
            command: Command::Shell(cmd.into()),
            stdin: false,
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            pty: None,
            output: OutputOptions::default(),
            detach: false,
        }
    }
}

/// The `pty` of an `exec` request: the job runs on a pseudo-terminal of
/// this size (0: unknown, as ssh sends when it cannot tell), with `TERM`
/// set to `term`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PtyRequest {
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// What each `stdin` frame costs against a job's stdin window besides
/// its bytes (PROTOCOL.md §3.6): many tiny frames cost memory too.
pub const STDIN_FRAME_COST: u64 = 64;

/// What each `stdout` or `stderr` frame costs against a job's output
/// window besides its bytes (PROTOCOL.md §3.6), as for stdin.
pub const OUTPUT_FRAME_COST: u64 = 64;
/// The output windows a client may give (PROTOCOL.md §3.6): room for two
/// full frames at least.
pub const OUTPUT_WINDOWS: std::ops::RangeInclusive<u64> = 131_072..=1 << 30;

/// Longest `TERM` a request may give.
pub const MAX_TERM: usize = 64;

impl PtyRequest {
    /// A terminal type is a name (`xterm-256color`, `screen.linux`), never
    /// a path or anything a shell or the terminfo lookup would read more
    /// into.
    pub fn check_term(term: &str) -> bool {
        !term.is_empty()
            && term.len() <= MAX_TERM
            && term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
    }
}

/// The client's `auth` frame (§3.2, with the extensions of §3.6 and §3.7).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct AuthRequest {
    pub version: u64,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// (Extension) the client keeps to per-job stdin windows (§3.6).
    #[serde(default)]
    pub window: bool,
    /// (Extension) each job's output window, which the client gives back
    /// as it takes the output (§3.6).
    #[serde(default)]
    pub output_window: Option<u64>,
    /// (Extension, §3.7) `publickey`; absent: the token's HMAC.
    #[serde(default)]
    pub method: Option<String>,
    /// (§3.7) the client's public key or certificate, an OpenSSH line.
    #[serde(default)]
    pub key: Option<String>,
    /// (§3.7) the client's SSH signature of the transcript, PEM.
    #[serde(default)]
    pub signature: Option<String>,
    /// (§3.9) a relay ticket: the host before this one in a relay chain,
    /// bringing the one file the ticket was issued for.
    #[serde(default)]
    pub ticket: Option<String>,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    Auth(AuthRequest),
    Exec(ExecRequest),
    Stdin {
        id: u64,
        data: Bytes,
    },
    Eof {
        id: u64,
    },
    Signal {
        id: u64,
        signal: String,
    },
    /// (Extension) the client took `output` bytes (frame costs included)
    /// of job `id`'s output: the server may send that much more.
    Window {
        id: u64,
        output: u64,
    },
    /// The job's terminal changed size (only for a job with a `pty`).
    Resize {
        id: u64,
        rows: u16,
        cols: u16,
    },
    Ping,
    /// (§3.8) send a file, directory or link.
    Put(PutRequest),
    /// (§3.8) receive a file.
    Get(GetRequest),
    /// (§3.8) what a path holds, recursively.
    List(ListRequest),
    /// (§3.8) a `put`'s bytes at `offset`.
    Data {
        id: u64,
        offset: u64,
        data: Bytes,
    },
    /// (§3.8) the end of a `put`'s data.
    Done(DoneRequest),
    /// (§3.8) stop a transfer: a `put` keeps nothing, a `get` sends no more.
    Cancel {
        id: u64,
    },
    /// (§3.9) a file will come from another host of a relay chain.
    Expect(ExpectRequest),
    /// (§3.10) the caller's detached jobs.
    Jobs {
        id: u64,
    },
    /// (§3.10) follow a detached job.
    Attach(AttachRequest),
    /// (§3.10) stop a detached job, or forget one that ended.
    Kill(KillRequest),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal { name: String, timed_out: bool },
}

/// Frames a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    Hello {
        version: u64,
        server: String,
        auth: String,
        nonce: Option<String>,
        /// (Extension, §3.7) every method the server accepts, when more
        /// than `auth`.
        methods: Vec<String>,
        /// (§3.7) the server's host key, an OpenSSH public key line, when
        /// it accepts keys.
        host_key: Option<String>,
    },
    Ready {
        mac: Option<String>,
        /// (Extension, §3.7) the host key's SSH signature of the
        /// transcript, PEM, after a key login.
        signature: Option<String>,
        /// (§3.7) who the client is to this server.
        identity: Option<String>,
        /// (Extension) the stdin window of each job, in bytes, when the
        /// client asked for windows (PROTOCOL.md §3.6).
        stdin_window: Option<u64>,
        /// (Extension) the output window the server keeps to, when the
        /// client gave one.
        output_window: Option<u64>,
    },
    Started {
        id: u64,
        pid: u32,
        /// (Extension) the job's number over the whole server, as the
        /// audit trail records it.
        job: Option<u64>,
        /// (Extension) the server's time, for a job that asked for
        /// `timestamps`.
        ts: Option<Stamp>,
        /// (§3.10) the job was detached under this ID: nothing more comes
        /// for `id`, which is free again.
        detached: Option<String>,
    },
    Stdout {
        id: u64,
        data: Bytes,
        /// (Extension) when the server read it, for a job that asked for
        /// `timestamps`.
        ts: Option<Stamp>,
    },
    Stderr {
        id: u64,
        data: Bytes,
        ts: Option<Stamp>,
    },
    Exit {
        id: u64,
        status: ExitStatus,
        /// Why the server ended the job, when it did so for a reason of its
        /// own (`"server shutting down"`); absent otherwise.
        reason: Option<String>,
        /// Output bytes dropped past the job's `max_output` (on the wire,
        /// with `truncated: true`, only when not 0).
        dropped: u64,
    },
    Error {
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        /// `spawn_failed` only: the status a shell gives the same failure
        /// (127 program not found, 126 not executable, 1 working
        /// directory), for clients to exit with.
        exit_status: Option<i32>,
    },
    Pong,
    /// (Extension) `stdin` more bytes of job `id`'s stdin window are
    /// free again (PROTOCOL.md §3.6).
    Window {
        id: u64,
        stdin: u64,
    },
    /// (§3.8) a file `put` may send its data.
    Accepted(Accepted),
    /// (§3.9) the ticket an `expect` issued.
    Ticket {
        id: u64,
        ticket: String,
    },
    /// (§3.8) a `put` is complete.
    Stored(Stored),
    /// (§3.8) the file a `get` sends.
    File(FileMeta),
    /// (§3.8) a `get`'s bytes at `offset`.
    Data {
        id: u64,
        offset: u64,
        data: Bytes,
    },
    /// (§3.8) a `get` is complete.
    Sent(Sent),
    /// (§3.8) some of a `list`'s entries.
    Entries {
        id: u64,
        entries: Vec<Entry>,
    },
    /// (§3.8) the end of a `list`.
    Listed(Listed),
    /// (§3.10) detached jobs: the caller's (`jobs`), or the one a `kill`
    /// stopped; `more`: further `jobs` frames follow for `id`.
    Jobs {
        id: u64,
        jobs: Vec<JobInfo>,
        more: bool,
    },
    /// (§3.10) `id` follows this detached job now.
    Attached {
        id: u64,
        info: JobInfo,
    },
}

/// Why a well-formed frame is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown type {0:?}")]
    UnknownType(String),
    #[error("{message}")]
    BadRequest { id: Option<u64>, message: String },
}

impl ParseError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::UnknownType(_) => ErrorCode::UnknownType,
            ParseError::BadRequest { .. } => ErrorCode::BadRequest,
        }
    }
    pub fn id(&self) -> Option<u64> {
        match self {
            ParseError::UnknownType(_) => None,
            ParseError::BadRequest { id, .. } => *id,
        }
    }
}

/// The longest text for people a server's frame may carry as is.
pub const MAX_TEXT: usize = 1024;

/// Text a server sends for people (an error's message, an exit's
/// reason), made safe to print: control characters and bidirectional
/// overrides shown escaped (`\u{1b}`), at most [`MAX_TEXT`] characters.
/// Clients print these on the user's terminal: raw, a hostile server
/// could set its title, write its clipboard or erase the client's own
/// warnings.
pub fn for_people(s: String) -> String {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if s.len() <= MAX_TEXT && !s.chars().any(unsafe_char) {
        return s;
    }
    let mut out = String::new();
    for c in s.chars().take(MAX_TEXT) {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(MAX_TEXT).is_some() {
        out.push_str("...");
    }
    out
}

/// A signal as an `exit` names it: a name without `SIG` or a number.
fn is_signal_name(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Adds `ts` to a header, when there is one.
fn stamped(h: &mut Value, ts: Option<Stamp>) {
    if let Some(t) = ts {
        h["ts"] = json!(t.rfc3339());
    }
}

fn fields<T: DeserializeOwned>(header: &Map<String, Value>) -> Result<T, ParseError> {
    T::deserialize(Value::Object(header.clone())).map_err(|e| ParseError::BadRequest {
        id: header.get("id").and_then(Value::as_u64),
        message: format!(
            "{}: {e}",
            header.get("type").and_then(Value::as_str).unwrap_or("?")
        ),
    })
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

#[derive(Deserialize)]
struct TicketFields {
    id: u64,
    ticket: String,
}

#[derive(Deserialize)]
struct OutputGrantFields {
    id: u64,
    output: u64,
}

#[derive(Deserialize)]
struct ExecFields {
    id: u64,
    #[serde(default)]
    cmd: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    pty: Option<PtyRequest>,
    #[serde(default)]
    max_output: Option<u64>,
    #[serde(default)]
    max_output_kill: bool,
    #[serde(default)]
    timestamps: bool,
    #[serde(default)]
    detach: bool,
}

#[derive(Deserialize)]
struct SignalFields {
    id: u64,
    signal: String,
}

#[derive(Deserialize)]
struct ResizeFields {
    id: u64,
    rows: u16,
    cols: u16,
}

impl ClientMsg {
    /// The job or transfer the message is about, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientMsg::Auth(_) | ClientMsg::Ping => None,
            ClientMsg::Exec(r) => Some(r.id),
            ClientMsg::Put(r) => Some(r.id),
            ClientMsg::Get(r) => Some(r.id),
            ClientMsg::List(r) => Some(r.id),
            ClientMsg::Done(r) => Some(r.id),
            ClientMsg::Expect(r) => Some(r.put.id),
            ClientMsg::Attach(r) => Some(r.id),
            ClientMsg::Kill(r) => Some(r.id),
            ClientMsg::Jobs { id } => Some(*id),
            ClientMsg::Stdin { id, .. }
            | ClientMsg::Eof { id }
            | ClientMsg::Signal { id, .. }
            | ClientMsg::Window { id, .. }
            | ClientMsg::Resize { id, .. }
            | ClientMsg::Data { id, .. }
            | ClientMsg::Cancel { id } => Some(*id),
        }
    }

    /// The typed message in a frame.
    pub fn parse(frame: Frame) -> Result<ClientMsg, ParseError> {
        let h = &frame.header;
        Ok(match frame.kind() {
            "auth" => ClientMsg::Auth(fields(h)?),
            "window" => {
                let f: OutputGrantFields = fields(h)?;
                ClientMsg::Window {
                    id: f.id,
                    output: f.output,
                }
            }
            "exec" => {
                let f: ExecFields = fields(h)?;
                let bad = |message: &str| ParseError::BadRequest {
                    id: Some(f.id),
                    message: message.to_string(),
                };
                let command = match (f.cmd, f.argv) {
                    (Some(cmd), None) => Command::Shell(cmd),
                    (None, Some(argv)) if !argv.is_empty() => Command::Argv(argv),
                    (None, Some(_)) => return Err(bad("exec: argv is empty")),
                    (Some(_), Some(_)) => return Err(bad("exec: give cmd or argv, not both")),
                    (None, None) => return Err(bad("exec: needs cmd or argv")),
                };
                if let Some(term) = f.pty.as_ref().and_then(|p| p.term.as_deref())
                    && !PtyRequest::check_term(term)
                {
                    return Err(bad(&format!(
                        "exec: pty.term must be 1 to {MAX_TERM} letters, digits or -_.+"
                    )));
                }
                ClientMsg::Exec(ExecRequest {
                    id: f.id,
                    command,
                    stdin: f.stdin,
                    env: f.env,
                    cwd: f.cwd,
                    timeout_ms: f.timeout_ms,
                    pty: f.pty,
                    output: OutputOptions {
                        timestamps: f.timestamps,
                        max_output: f.max_output,
                        max_output_kill: f.max_output_kill,
                    },
                    detach: f.detach,
                })
            }
            "stdin" => ClientMsg::Stdin {
                id: fields::<IdOnly>(h)?.id,
                data: frame.body.clone(),
            },
            "eof" => ClientMsg::Eof {
                id: fields::<IdOnly>(h)?.id,
            },
            "signal" => {
                let f: SignalFields = fields(h)?;
                ClientMsg::Signal {
                    id: f.id,
                    signal: f.signal,
                }
            }
            "resize" => {
                let f: ResizeFields = fields(h)?;
                ClientMsg::Resize {
                    id: f.id,
                    rows: f.rows,
                    cols: f.cols,
                }
            }
            "ping" => ClientMsg::Ping,
            "put" => ClientMsg::Put(fields(h)?),
            "get" => ClientMsg::Get(fields(h)?),
            "list" => ClientMsg::List(fields(h)?),
            "data" => {
                let f: DataFields = fields(h)?;
                ClientMsg::Data {
                    id: f.id,
                    offset: f.offset,
                    data: frame.body.clone(),
                }
            }
            "done" => ClientMsg::Done(fields(h)?),
            "expect" => ClientMsg::Expect(fields(h)?),
            "jobs" => ClientMsg::Jobs {
                id: fields::<IdOnly>(h)?.id,
            },
            "attach" => ClientMsg::Attach(fields(h)?),
            "kill" => ClientMsg::Kill(fields(h)?),
            "cancel" => ClientMsg::Cancel {
                id: fields::<IdOnly>(h)?.id,
            },
            other => return Err(ParseError::UnknownType(other.to_string())),
        })
    }

    /// The frame for this message.
    pub fn to_frame(&self) -> Frame {
        let (header, body) = match self {
            ClientMsg::Put(r) => (typed("put", r), Bytes::new()),
            ClientMsg::Get(r) => (typed("get", r), Bytes::new()),
            ClientMsg::List(r) => (typed("list", r), Bytes::new()),
            ClientMsg::Done(r) => (typed("done", r), Bytes::new()),
            ClientMsg::Expect(r) => (typed("expect", r), Bytes::new()),
            ClientMsg::Attach(r) => (typed("attach", r), Bytes::new()),
            ClientMsg::Kill(r) => (typed("kill", r), Bytes::new()),
            ClientMsg::Jobs { id } => (json!({"type": "jobs", "id": id}), Bytes::new()),
            ClientMsg::Data { id, offset, data } => (
                json!({"type": "data", "id": id, "offset": offset}),
                data.clone(),
            ),
            ClientMsg::Cancel { id } => (json!({"type": "cancel", "id": id}), Bytes::new()),
            ClientMsg::Auth(a) => {
                let mut h = json!({"type": "auth", "version": a.version});
                if let Some(w) = a.output_window {
                    h["output_window"] = json!(w);
                }
                if a.window {
                    h["window"] = json!(true);
                }
                for (name, v) in [
                    ("nonce", &a.nonce),
                    ("mac", &a.mac),
                    ("method", &a.method),
                    ("key", &a.key),
                    ("signature", &a.signature),
                    ("ticket", &a.ticket),
                ] {
                    if let Some(v) = v {
                        h[name] = json!(v);
                    }
                }
                (h, Bytes::new())
            }
            ClientMsg::Exec(r) => {
                let mut h = json!({"type": "exec", "id": r.id});
                match &r.command {
                    Command::Shell(c) => h["cmd"] = json!(c),
                    Command::Argv(a) => h["argv"] = json!(a),
                }
                if r.stdin {
                    h["stdin"] = json!(true);
                }
                if !r.env.is_empty() {
                    h["env"] = json!(r.env);
                }
                if let Some(c) = &r.cwd {
                    h["cwd"] = json!(c);
                }
                if let Some(t) = r.timeout_ms {
                    h["timeout_ms"] = json!(t);
                }
                if let Some(p) = &r.pty {
                    h["pty"] = json!(p);
                }
                if let Some(m) = r.output.max_output {
                    h["max_output"] = json!(m);
                }
                if r.output.max_output_kill {
                    h["max_output_kill"] = json!(true);
                }
                if r.output.timestamps {
                    h["timestamps"] = json!(true);
                }
                if r.detach {
                    h["detach"] = json!(true);
                }
                (h, Bytes::new())
            }
            ClientMsg::Stdin { id, data } => (json!({"type": "stdin", "id": id}), data.clone()),
            ClientMsg::Eof { id } => (json!({"type": "eof", "id": id}), Bytes::new()),
            ClientMsg::Signal { id, signal } => (
                json!({"type": "signal", "id": id, "signal": signal}),
                Bytes::new(),
            ),
            ClientMsg::Window { id, output } => (
                json!({"type": "window", "id": id, "output": output}),
                Bytes::new(),
            ),
            ClientMsg::Resize { id, rows, cols } => (
                json!({"type": "resize", "id": id, "rows": rows, "cols": cols}),
                Bytes::new(),
            ),
            ClientMsg::Ping => (json!({"type": "ping"}), Bytes::new()),
        };
        to_frame(header, body)
    }
}

/// A header from a serde struct, with its `type`.
fn typed<T: Serialize>(kind: &str, fields: &T) -> Value {
    let mut h = serde_json::to_value(fields).unwrap_or_else(|_| json!({}));
    h["type"] = json!(kind);
    h
}

#[derive(Deserialize)]
struct MoreFields {
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct DataFields {
    id: u64,
    offset: u64,
}

fn to_frame(header: Value, body: Bytes) -> Frame {
    let header = match header {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Frame { header, body }
}

#[derive(Deserialize)]
struct HelloFields {
    version: u64,
    #[serde(default)]
    server: String,
    auth: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    host_key: Option<String>,
}

#[derive(Deserialize)]
struct ReadyFields {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    window: Option<WindowFields>,
}

#[derive(Deserialize)]
struct WindowFields {
    #[serde(default)]
    stdin: Option<u64>,
    #[serde(default)]
    output: Option<u64>,
}

#[derive(Deserialize)]
struct GrantFields {
    id: u64,
    stdin: u64,
}

#[derive(Deserialize)]
struct StartedFields {
    id: u64,
    pid: u32,
    #[serde(default)]
    job: Option<u64>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    detached: Option<String>,
}

#[derive(Deserialize)]
struct OutputFields {
    id: u64,
    #[serde(default)]
    ts: Option<String>,
}

/// A frame's `ts`, which must be RFC 3339 when present.
fn stamp(id: u64, ts: Option<String>) -> Result<Option<Stamp>, ParseError> {
    ts.map(|t| {
        Stamp::parse(&t).ok_or_else(|| ParseError::BadRequest {
            id: Some(id),
            message: format!("ts {t:?} is not an RFC 3339 time"),
        })
    })
    .transpose()
}

/// A server's time on a frame (`ts`, PROTOCOL.md §3.3): microseconds since
/// the Unix epoch; RFC 3339 in UTC with microseconds on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(pub i64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp(chrono::Utc::now().timestamp_micros())
    }

    /// `2026-12-03T15:17:10.709123Z`.
    pub fn rfc3339(self) -> String {
        chrono::DateTime::<chrono::Utc>::from_timestamp_micros(self.0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    }

    /// An RFC 3339 time within years 1-9999 in UTC (what
    /// [`Stamp::rfc3339`] can write back).
    pub fn parse(s: &str) -> Option<Stamp> {
        use chrono::Datelike;
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?.to_utc();
        (1..=9999)
            .contains(&t.year())
            .then(|| Stamp(t.timestamp_micros()))
    }
}

#[derive(Deserialize)]
struct ExitFields {
    id: u64,
    #[serde(default)]
    code: Option<i32>,
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    timed_out: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    dropped: u64,
}

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(default)]
    id: Option<u64>,
    code: ErrorCode,
    #[serde(default)]
    message: String,
    #[serde(default)]
    exit_status: Option<i32>,
}

impl ServerMsg {
    /// The typed message in a frame (the client side of the codec).
    pub fn parse(frame: Frame) -> Result<ServerMsg, ParseError> {
        let h = &frame.header;
        Ok(match frame.kind() {
            "hello" => {
                let f: HelloFields = fields(h)?;
                ServerMsg::Hello {
                    version: f.version,
                    server: f.server,
                    auth: f.auth,
                    nonce: f.nonce,
                    methods: f.methods,
                    host_key: f.host_key,
                }
            }
            "ready" => {
                let f: ReadyFields = fields(h)?;
                ServerMsg::Ready {
                    mac: f.mac,
                    signature: f.signature,
                    identity: f.identity,
                    stdin_window: f.window.as_ref().and_then(|w| w.stdin),
                    output_window: f.window.as_ref().and_then(|w| w.output),
                }
            }
            "window" => {
                let f: GrantFields = fields(h)?;
                ServerMsg::Window {
                    id: f.id,
                    stdin: f.stdin,
                }
            }
            "started" => {
                let f: StartedFields = fields(h)?;
                ServerMsg::Started {
                    id: f.id,
                    pid: f.pid,
                    job: f.job,
                    ts: stamp(f.id, f.ts)?,
                    detached: f.detached.map(for_people),
                }
            }
            kind @ ("stdout" | "stderr") => {
                let f: OutputFields = fields(h)?;
                let (id, data, ts) = (f.id, frame.body.clone(), stamp(f.id, f.ts)?);
                match kind {
                    "stdout" => ServerMsg::Stdout { id, data, ts },
                    _ => ServerMsg::Stderr { id, data, ts },
                }
            }
            "exit" => {
                let f: ExitFields = fields(h)?;
                let status = match (f.code, f.signal) {
                    (Some(c), None) => ExitStatus::Code(c),
                    (None, Some(name)) if !is_signal_name(&name) => {
                        return Err(ParseError::BadRequest {
                            id: Some(f.id),
                            message: "exit: a signal is a name (TERM) or a number".into(),
                        });
                    }
                    (None, Some(name)) => ExitStatus::Signal {
                        name,
                        timed_out: f.timed_out,
                    },
                    _ => {
                        return Err(ParseError::BadRequest {
                            id: Some(f.id),
                            message: "exit: needs exactly one of code and signal".into(),
                        });
                    }
                };
                ServerMsg::Exit {
                    id: f.id,
                    status,
                    reason: f.reason.map(for_people),
                    dropped: f.dropped,
                }
            }
            "error" => {
                let f: ErrorFields = fields(h)?;
                ServerMsg::Error {
                    id: f.id,
                    code: f.code,
                    message: for_people(f.message),
                    exit_status: f.exit_status,
                }
            }
            "pong" => ServerMsg::Pong,
            "accepted" => ServerMsg::Accepted(fields(h)?),
            "ticket" => {
                let f: TicketFields = fields(h)?;
                ServerMsg::Ticket {
                    id: f.id,
                    ticket: f.ticket,
                }
            }
            "stored" => ServerMsg::Stored(fields(h)?),
            "file" => ServerMsg::File(fields(h)?),
            "sent" => ServerMsg::Sent(fields(h)?),
            "listed" => ServerMsg::Listed(fields(h)?),
            "data" => {
                let f: DataFields = fields(h)?;
                ServerMsg::Data {
                    id: f.id,
                    offset: f.offset,
                    data: frame.body.clone(),
                }
            }
            "jobs" => {
                let id = fields::<IdOnly>(h)?.id;
                let jobs: Vec<JobInfo> =
                    serde_json::from_slice(&frame.body).map_err(|e| ParseError::BadRequest {
                        id: Some(id),
                        message: format!("jobs: {e}"),
                    })?;
                let jobs = jobs.into_iter().map(JobInfo::for_people).collect();
                let more = fields::<MoreFields>(h)?.more;
                ServerMsg::Jobs { id, jobs, more }
            }
            "attached" => {
                let id = fields::<IdOnly>(h)?.id;
                let info: JobInfo = fields(h)?;
                ServerMsg::Attached {
                    id,
                    info: info.for_people(),
                }
            }
            "entries" => {
                let id = fields::<IdOnly>(h)?.id;
                let entries =
                    serde_json::from_slice(&frame.body).map_err(|e| ParseError::BadRequest {
                        id: Some(id),
                        message: format!("entries: {e}"),
                    })?;
                ServerMsg::Entries { id, entries }
            }
            other => return Err(ParseError::UnknownType(other.to_string())),
        })
    }

    /// The frame for this message.
    pub fn to_frame(&self) -> Frame {
        let (header, body) = match self {
            ServerMsg::Hello {
                version,
                server,
                auth,
                nonce,
                methods,
                host_key,
            } => {
                let mut h =
                    json!({"type": "hello", "version": version, "server": server, "auth": auth});
                if let Some(n) = nonce {
                    h["nonce"] = json!(n);
                }
                if !methods.is_empty() {
                    h["methods"] = json!(methods);
                }
                if let Some(k) = host_key {
                    h["host_key"] = json!(k);
                }
                (h, Bytes::new())
            }
            ServerMsg::Ready {
                mac,
                signature,
                identity,
                stdin_window,
                output_window,
            } => {
                let mut h = json!({"type": "ready"});
                for (name, v) in [
                    ("mac", mac),
                    ("signature", signature),
                    ("identity", identity),
                ] {
                    if let Some(v) = v {
                        h[name] = json!(v);
                    }
                }
                if let Some(w) = stdin_window {
                    h["window"] = json!({ "stdin": w });
                }
                if let Some(w) = output_window {
                    h["window"]["output"] = json!(w);
                }
                (h, Bytes::new())
            }
            ServerMsg::Window { id, stdin } => (
                json!({"type": "window", "id": id, "stdin": stdin}),
                Bytes::new(),
            ),
            ServerMsg::Started {
                id,
                pid,
                job,
                ts,
                detached,
            } => {
                let mut h = json!({"type": "started", "id": id, "pid": pid});
                if let Some(j) = job {
                    h["job"] = json!(j);
                }
                if let Some(d) = detached {
                    h["detached"] = json!(d);
                }
                stamped(&mut h, *ts);
                (h, Bytes::new())
            }
            ServerMsg::Stdout { id, data, ts } => {
                let mut h = json!({"type": "stdout", "id": id});
                stamped(&mut h, *ts);
                (h, data.clone())
            }
            ServerMsg::Stderr { id, data, ts } => {
                let mut h = json!({"type": "stderr", "id": id});
                stamped(&mut h, *ts);
                (h, data.clone())
            }
            ServerMsg::Exit {
                id,
                status,
                reason,
                dropped,
            } => {
                let mut h = match status {
                    ExitStatus::Code(c) => json!({"type": "exit", "id": id, "code": c}),
                    ExitStatus::Signal { name, timed_out } => {
                        let mut h = json!({"type": "exit", "id": id, "signal": name});
                        if *timed_out {
                            h["timed_out"] = json!(true);
                        }
                        h
                    }
                };
                if let Some(r) = reason {
                    h["reason"] = json!(r);
                }
                if *dropped > 0 {
                    h["truncated"] = json!(true);
                    h["dropped"] = json!(dropped);
                }
                (h, Bytes::new())
            }
            ServerMsg::Error {
                id,
                code,
                message,
                exit_status,
            } => {
                let mut h = json!({"type": "error", "code": code.as_str(), "message": message});
                if let Some(id) = id {
                    h["id"] = json!(id);
                }
                if let Some(st) = exit_status {
                    h["exit_status"] = json!(st);
                }
                (h, Bytes::new())
            }
            ServerMsg::Pong => (json!({"type": "pong"}), Bytes::new()),
            ServerMsg::Accepted(m) => (typed("accepted", m), Bytes::new()),
            ServerMsg::Ticket { id, ticket } => (
                json!({"type": "ticket", "id": id, "ticket": ticket}),
                Bytes::new(),
            ),
            ServerMsg::Stored(m) => (typed("stored", m), Bytes::new()),
            ServerMsg::File(m) => (typed("file", m), Bytes::new()),
            ServerMsg::Sent(m) => (typed("sent", m), Bytes::new()),
            ServerMsg::Listed(m) => (typed("listed", m), Bytes::new()),
            ServerMsg::Data { id, offset, data } => (
                json!({"type": "data", "id": id, "offset": offset}),
                data.clone(),
            ),
            ServerMsg::Jobs { id, jobs, more } => {
                let mut h = json!({"type": "jobs", "id": id});
                if *more {
                    h["more"] = json!(true);
                }
                (h, Bytes::from(serde_json::to_vec(jobs).unwrap_or_default()))
            }
            ServerMsg::Attached { id, info } => {
                let mut h = typed("attached", info);
                h["id"] = json!(id);
                (h, Bytes::new())
            }
            ServerMsg::Entries { id, entries } => (
                json!({"type": "entries", "id": id}),
                Bytes::from(serde_json::to_vec(entries).unwrap_or_default()),
            ),
        };
        to_frame(header, body)
    }

    /// An error frame.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            id,
            code,
            message: message.into(),
            exit_status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_info() -> JobInfo {
        crate::proto::jobs::tests::sample()
    }

    #[test]
    fn commands_read_as_a_shell_would_take_them() {
        let argv = Command::Argv(vec![
            "printf".into(),
            "%s\n".into(),
            "it's".into(),
            "".into(),
        ]);
        assert_eq!(argv.text(), "printf '%s\n' 'it'\\''s' ''");
        assert_eq!(Command::Shell("ls | wc".into()).text(), "ls | wc");
    }

    use crate::proto::frame::parse_header;

    fn parse_client(h: &str) -> Result<ClientMsg, ParseError> {
        ClientMsg::parse(Frame {
            header: parse_header(h.as_bytes()).unwrap(),
            body: Bytes::new(),
        })
    }

    #[test]
    fn client_messages_round_trip() {
        let msgs = vec![
            ClientMsg::Auth(AuthRequest {
                version: 1,
                nonce: Some("ab".into()),
                mac: Some("cd".into()),
                window: true,
                output_window: Some(1 << 20),
                ..AuthRequest::default()
            }),
            ClientMsg::Auth(AuthRequest {
                version: 1,
                nonce: Some("ab".into()),
                method: Some("publickey".into()),
                key: Some("ssh-ed25519 AAAA x".into()),
                signature: Some("-----BEGIN SSH SIGNATURE-----\n...".into()),
                ..AuthRequest::default()
            }),
            ClientMsg::Window {
                id: 4,
                output: 65_600,
            },
            ClientMsg::Exec(ExecRequest {
                id: 7,
                command: Command::Argv(vec!["ls".into(), "-l".into()]),
                stdin: true,
                env: BTreeMap::from([("K".into(), "V".into())]),
                cwd: Some("/tmp".into()),
                timeout_ms: Some(5000),
                pty: None,
                output: OutputOptions {
                    max_output: Some(10 << 20),
                    max_output_kill: true,
                    timestamps: true,
                },
                detach: true,
            }),
            ClientMsg::Jobs { id: 3 },
            ClientMsg::Attach(AttachRequest {
                id: 4,
                detached: "0123abcd".into(),
                timestamps: true,
            }),
            ClientMsg::Kill(KillRequest {
                id: 5,
                detached: "0123".into(),
            }),
            ClientMsg::Exec(ExecRequest {
                pty: Some(PtyRequest {
                    rows: 40,
                    cols: 100,
                    term: Some("xterm-256color".into()),
                }),
                ..ExecRequest::shell(9, "vim")
            }),
            ClientMsg::Resize {
                id: 9,
                rows: 50,
                cols: 132,
            },
            ClientMsg::Exec(ExecRequest::shell(8, "ls | wc")),
            ClientMsg::Stdin {
                id: 1,
                data: Bytes::from_static(b"data"),
            },
            ClientMsg::Eof { id: 1 },
            ClientMsg::Signal {
                id: 1,
                signal: "INT".into(),
            },
            ClientMsg::Ping,
        ];
        for m in msgs {
            assert_eq!(ClientMsg::parse(m.to_frame()).unwrap(), m);
        }
    }

    #[test]
    fn text_for_people_is_safe_to_print() {
        let parse = |h: &str| {
            ServerMsg::parse(Frame {
                header: crate::proto::frame::parse_header(h.as_bytes()).unwrap(),
                body: Bytes::new(),
            })
        };
        let evil = r#"{"type":"error","id":1,"code":"other","message":"x\u001b]0;PWNED\u0007\r\u001b[2K\u202ey"}"#;
        let Ok(ServerMsg::Error { message, .. }) = parse(evil) else {
            panic!()
        };
        assert_eq!(message, r"x\u{1b}]0;PWNED\u{7}\u{d}\u{1b}[2K\u{202e}y");
        let long = format!(
            r#"{{"type":"exit","id":1,"code":0,"reason":"{}"}}"#,
            "a".repeat(5000)
        );
        let Ok(ServerMsg::Exit {
            reason: Some(r), ..
        }) = parse(&long)
        else {
            panic!()
        };
        assert_eq!(r.len(), MAX_TEXT + 3);
        assert!(parse(r#"{"type":"exit","id":1,"signal":"TERM\u001b[2K"}"#).is_err());
        assert!(
            parse(&format!(
                r#"{{"type":"exit","id":1,"signal":"{}"}}"#,
                "S".repeat(17)
            ))
            .is_err()
        );
        assert!(parse(r#"{"type":"exit","id":1,"signal":"34"}"#).is_ok());
    }

    #[test]
    fn stamps_are_rfc3339_with_microseconds() {
        let t = Stamp(1_796_310_000_000_001);
        assert_eq!(t.rfc3339(), "2026-12-03T15:00:00.000001Z");
        assert_eq!(Stamp::parse(&t.rfc3339()), Some(t));
        assert_eq!(
            Stamp::parse("2026-12-03T16:00:00.000001+01:00"),
            Some(t),
            "any offset"
        );
        assert_eq!(
            Stamp::parse("9999-12-31T23:59:59-23:59"),
            None,
            "year 10000 in UTC"
        );
        assert_eq!(
            Stamp::parse("0001-01-01T00:00:00+23:59"),
            None,
            "year 0 in UTC"
        );
        let bad = r#"{"type":"stdout","id":1,"ts":"yesterday"}"#;
        let frame = Frame {
            header: crate::proto::frame::parse_header(bad.as_bytes()).unwrap(),
            body: Bytes::from_static(b"x"),
        };
        assert!(ServerMsg::parse(frame).is_err());
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = vec![
            ServerMsg::Hello {
                version: 1,
                server: "switchboard 0.1.0".into(),
                auth: "hmac-sha256".into(),
                nonce: Some("00".into()),
                methods: vec![],
                host_key: None,
            },
            ServerMsg::Hello {
                version: 1,
                server: "switchboard 0.1.0".into(),
                auth: "hmac-sha256".into(),
                nonce: Some("00".into()),
                methods: vec!["hmac-sha256".into(), "publickey".into()],
                host_key: Some("ssh-ed25519 AAAA".into()),
            },
            ServerMsg::Ready {
                mac: None,
                signature: None,
                identity: None,
                stdin_window: None,
                output_window: None,
            },
            ServerMsg::Ready {
                mac: Some("ef".into()),
                signature: Some("sig".into()),
                identity: Some("alice".into()),
                stdin_window: Some(262_144),
                output_window: Some(1 << 20),
            },
            ServerMsg::Window {
                id: 3,
                stdin: 65_600,
            },
            ServerMsg::Started {
                id: 1,
                pid: 42,
                job: Some(9),
                ts: Some(Stamp(1_796_310_000_123_456)),
                detached: None,
            },
            ServerMsg::Started {
                id: 2,
                pid: 43,
                job: None,
                ts: None,
                detached: Some("0123456789abcdef0123456789abcdef".into()),
            },
            ServerMsg::Jobs {
                id: 3,
                jobs: vec![
                    job_info(),
                    JobInfo {
                        state: crate::proto::jobs::JobState::Exited,
                        ended: Some("2026-12-03T17:31:23.362860Z".into()),
                        signal: Some("TERM".into()),
                        timed_out: true,
                        reason: Some("killed (jobs --kill)".into()),
                        dropped: 5,
                        forgotten: true,
                        ..job_info()
                    },
                ],
                more: true,
            },
            ServerMsg::Jobs {
                id: 4,
                jobs: vec![],
                more: false,
            },
            ServerMsg::Attached {
                id: 5,
                info: job_info(),
            },
            ServerMsg::Stdout {
                id: 1,
                data: Bytes::from_static(b"out"),
                ts: None,
            },
            ServerMsg::Stderr {
                id: 1,
                data: Bytes::from_static(b"err"),
                ts: Some(Stamp(1_796_310_000_000_001)),
            },
            ServerMsg::Exit {
                id: 1,
                status: ExitStatus::Signal {
                    name: "KILL".into(),
                    timed_out: true,
                },
                reason: None,
                dropped: 0,
            },
            ServerMsg::Exit {
                id: 2,
                status: ExitStatus::Code(44),
                reason: Some("server shutting down".into()),
                dropped: 9_000_000,
            },
            ServerMsg::error(Some(3), ErrorCode::NoSuchJob, "no job 3"),
            ServerMsg::Pong,
        ];
        for m in msgs {
            assert_eq!(ServerMsg::parse(m.to_frame()).unwrap(), m);
        }
    }

    #[test]
    fn wrong_shapes_are_bad_requests_and_unknown_types_are_named() {
        assert_eq!(
            parse_client(r#"{"type":"launch"}"#),
            Err(ParseError::UnknownType("launch".into()))
        );
        for h in [
            r#"{"type":"exec"}"#,
            r#"{"type":"exec","id":-1,"cmd":"x"}"#,
            r#"{"type":"exec","id":"1","cmd":"x"}"#,
            r#"{"type":"exec","id":1}"#,
            r#"{"type":"exec","id":1,"cmd":"x","argv":["x"]}"#,
            r#"{"type":"exec","id":1,"argv":[]}"#,
            r#"{"type":"exec","id":1,"argv":[1]}"#,
            r#"{"type":"exec","id":1,"cmd":"x","env":{"K":1}}"#,
            r#"{"type":"exec","id":1,"cmd":"x","timeout_ms":-5}"#,
            r#"{"type":"signal","id":1}"#,
            r#"{"type":"auth"}"#,
            r#"{"type":"exec","id":1,"cmd":"x","pty":{"rows":70000}}"#,
            r#"{"type":"exec","id":1,"cmd":"x","pty":{"term":"../../tmp/x"}}"#,
            r#"{"type":"exec","id":1,"cmd":"x","pty":{"term":""}}"#,
            r#"{"type":"exec","id":1,"cmd":"x","pty":true}"#,
            r#"{"type":"resize","id":1,"rows":-1,"cols":80}"#,
            r#"{"type":"resize","id":1}"#,
        ] {
            let e = parse_client(h).unwrap_err();
            assert_eq!(e.code(), ErrorCode::BadRequest, "{h}");
        }
        // The id is kept when it can be read, so the error names the job.
        assert_eq!(
            parse_client(r#"{"type":"exec","id":4}"#).unwrap_err().id(),
            Some(4)
        );
        // Unknown fields are ignored.
        assert_eq!(
            parse_client(r#"{"type":"ping","x":1}"#),
            Ok(ClientMsg::Ping)
        );
    }
}
