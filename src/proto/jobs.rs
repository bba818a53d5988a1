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

use super::ServerMsg;

/// The most record bytes one `jobs` frame carries: below the smallest
/// `max_body` a server or client may have (64 KiB).
const FRAME_RECORDS: usize = 60 * 1024;

/// The `jobs` frames answering request `id`: as many as the records need,
/// all but the last with `more`.
pub fn frames(id: u64, jobs: Vec<JobInfo>) -> Vec<ServerMsg> {
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    let mut size = 2;
    for j in jobs {
        let len = serde_json::to_vec(&j).map_or(0, |v| v.len()) + 1;
        if !batch.is_empty() && size + len > FRAME_RECORDS {
            frames.push(ServerMsg::Jobs {
                id,
                jobs: std::mem::take(&mut batch),
                more: true,
            });
            size = 2;
        }
        size += len;
        batch.push(j);
    }
    frames.push(ServerMsg::Jobs {
        id,
        jobs: batch,
        more: false,
    });
    frames
}

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
    /// The command as the policy approved it: the shell command line, or
    /// the argv words quoted as a shell would need them.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A running job's record, for tests.
    pub(crate) fn sample() -> JobInfo {
        JobInfo {
            detached: "0123456789abcdef0123456789abcdef".into(),
            job: 7,
            pid: 4242,
            command: "make test".into(),
            tty: true,
            stdin: true,
            state: JobState::Running,
            started: "2026-12-03T17:31:20.359847Z".into(),
            ended: None,
            code: None,
            signal: None,
            timed_out: false,
            reason: None,
            buffered: 8,
            lost: 3,
            dropped: 0,
            attached: true,
            forgotten: false,
        }
    }

    #[test]
    fn long_lists_take_several_frames_within_the_smallest_body() {
        let info = |n: usize| JobInfo {
            detached: format!("{n:032x}"),
            job: n as u64,
            command: "\u{1b}".repeat(1024),
            ..sample()
        };
        let frames = frames(3, (0..100).map(info).collect());
        assert!(frames.len() > 1);
        let mut seen = 0;
        for (n, f) in frames.iter().enumerate() {
            let ServerMsg::Jobs { id: 3, jobs, more } = f else {
                panic!("{f:?}");
            };
            assert_eq!(*more, n + 1 < frames.len());
            assert!(f.to_frame().body.len() <= 64 * 1024);
            seen += jobs.len();
        }
        assert_eq!(seen, 100);
        assert_eq!(super::frames(4, vec![]).len(), 1);
    }
}
