//! Detached jobs (PROTOCOL.md §3.10): frames to start a job that outlives
//! its connection, list the caller's, re-attach to one and stop one, in
//! the same framing and id space as jobs.
//!
//! ```text
//! detach: C exec {id, ..., detach: true}
//!         S started {id, pid, job, detached: "ID"}     (nothing more for id)
//! list:   C jobs {id}
//!         S jobs {id, size} + JSON array of records
//! attach: C attach {id, detached: "ID", timestamps?}
//!         S attached {id, ...record}
//!         S stdout/stderr {id} ...   (the buffer, then live output)
//!         C stdin/eof/signal/resize/window {id} ...
//!         S exit {id, ...}    or error {id, code: "detached"}: attached elsewhere
//! kill:   C kill {id, detached: "ID"}
//!         S jobs {id, size} + JSON array of the one record, once it ended
//! ```

use serde::{Deserialize, Serialize};

/// `attach`: follow a detached job of the caller's under `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub id: u64,
    /// The job's ID, or a prefix of it that only one of the caller's
    /// detached jobs has (4 characters at least).
    pub detached: String,
    /// Stamp the output frames with the time the server read them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamps: bool,
}

/// `kill`: stop a running detached job of the caller's (TERM, then KILL
/// after the server's grace), or forget one that has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    pub id: u64,
    /// As in [`AttachRequest::detached`].
    pub detached: String,
}

/// Whether a detached job still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Exited,
}

/// What the server tells of one detached job (`jobs`, `attached`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its ID: 32 lower-case hex digits.
    pub detached: String,
    /// The server-wide job number, as the audit trail has it.
    pub job: u64,
    pub pid: u32,
    /// The command as the policy approved it (argv words joined by
    /// spaces, or the shell command line).
    pub command: String,
    /// It runs on a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Its stdin is open: an attached client's `stdin` frames reach it.
    #[serde(default)]
    pub stdin: bool,
    pub state: JobState,
    /// RFC 3339, UTC, microseconds.
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// How it ended: one of `code` and `signal`, once `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Why the server ended it, when it did (shutdown, `kill`, its owner
    /// no longer accepted, `max_output_kill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Output bytes its buffer holds now.
    pub buffered: u64,
    /// Output bytes that fell out of the buffer (oldest first) to make
    /// room: a client attaching now does not get them.
    pub lost: u64,
    /// Output bytes read past its `max_output` and never kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
    /// A client is attached to it now.
    #[serde(default)]
    pub attached: bool,
    /// (`kill`'s answer) It had ended, and is forgotten now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forgotten: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl JobInfo {
    /// Its text fields made safe to print ([`super::message::for_people`]):
    /// a server chooses them.
    pub fn for_people(self) -> JobInfo {
        use super::message::for_people;
        JobInfo {
            detached: for_people(self.detached),
            command: for_people(self.command),
            started: for_people(self.started),
            ended: self.ended.map(for_people),
            signal: self.signal.map(for_people),
            reason: self.reason.map(for_people),
            ..self
        }
    }
}
