//! The tutorial-compatible exec protocol (PROTOCOL.md §4), for the
//! tutorial's final client, unmodified. Unauthenticated, so it is bound to
//! loopback addresses only and off unless asked for.
//!
//! ```text
//! C: <up to 1,024 bytes: a shell command line>
//! S: <i32 little-endian n> <n bytes: stdout, then stderr>
//! ... repeated until the client closes
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::ExecShared;
use super::audit::{self, Via};
use super::policy::Refusal;
use super::{job, process};
use crate::proto::{ErrorCode, ExecRequest, ExitStatus};

/// One read is one command, as in the tutorial's `conn.recv(1024)`.
const READ_SIZE: usize = 1024;

/// Serves one legacy connection from `peer`.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ExecShared>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_SIZE];
    // What the peer sent while its last command ran: its next command.
    let mut ahead: Vec<u8> = Vec::new();
    // Numbers the connection's commands for the audit log, as a native
    // client's job ids do.
    let mut seq: u64 = 0;
    loop {
        let line = if ahead.is_empty() {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = stream.read(&mut buf) => r?,
            };
            if n == 0 {
                return Ok(());
            }
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned()
        } else {
            String::from_utf8_lossy(&std::mem::take(&mut ahead)).into_owned()
        };
        seq += 1;
        // Debug, not Display: the line is the peer's, newlines included.
        info!(%peer, id = seq, command = ?line, "legacy command");
        // The job ends with its connection, as a native one does: a peer
        // that goes away, or a shutdown, cancels it (killed, reaped and
        // audited all the same).
        let cancel = CancellationToken::new();
        let mut job = std::pin::pin!(run(&line, peer, seq, &shared, &cancel));
        let output = tokio::select! {
            o = &mut job => o,
            _ = shutdown.cancelled() => {
                cancel.cancel();
                job.await;
                return Ok(());
            }
            _ = peer_gone(&mut stream, &mut ahead) => {
                debug!("peer left mid-command; killing the job");
                cancel.cancel();
                job.await;
                return Ok(());
            }
        };
        // The reply's length is an i32; the cap keeps it well inside.
        let len = i32::try_from(output.len()).unwrap_or(i32::MAX);
        stream.write_all(&len.to_le_bytes()).await?;
        stream.write_all(&output).await?;
    }
}

/// Ends when the peer has closed (or half-closed) or reset the connection.
/// What it sends meanwhile is kept in `ahead` as its next command, up to
/// one read's worth ([`READ_SIZE`]); reading goes on, so a close is still
/// seen after it. A peer that sends more than that ahead is no longer
/// watched until the command ends.
async fn peer_gone(stream: &mut TcpStream, ahead: &mut Vec<u8>) {
    let mut buf = [0u8; READ_SIZE];
    loop {
        let room = READ_SIZE.saturating_sub(ahead.len());
        if room == 0 {
            return std::future::pending().await;
        }
        match stream.read(buf.get_mut(..room).unwrap_or_default()).await {
            Ok(0) | Err(_) => return,
            Ok(n) => ahead.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// Runs `line` with `sh -c` and returns stdout followed by stderr, at most
/// `legacy_output_cap` bytes (the rest is read and discarded so the command
/// can finish). `cancel` kills it (its whole group). Audited like a native
/// job, refusals included.
async fn run(
    line: &str,
    peer: SocketAddr,
    id: u64,
    shared: &ExecShared,
    cancel: &CancellationToken,
) -> Vec<u8> {
    let live = shared.live();
    let cap = live.cfg.legacy_output_cap;
    let request = ExecRequest::shell(id, line);
    let refused = |r: Refusal| {
        if r.code == ErrorCode::Forbidden {
            shared.counters.forbidden.inc();
        }
        let who = audit::Who {
            via: Via::Legacy,
            peer,
            who: &crate::identity::Identity::NONE,
            id,
        };
        audit::refused(
            &who,
            Some(&request.command),
            &request.env,
            r.code,
            &r.message,
        );
        format!("switchboard: {}: {}\n", r.code.as_str(), r.message).into_bytes()
    };
    let Ok(_slot) = shared.job_slots.clone().try_acquire_owned() else {
        return refused(Refusal::new(
            ErrorCode::Busy,
            "the server is running its maximum of jobs",
        ));
    };
    // Unauthenticated: never root by the exposure rule.
    let approved = match live
        .policy
        .check(&request, false, &crate::identity::Restrictions::NONE)
    {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    let spawned = job::spec(&approved, &request, &live)
        .and_then(|spec| process::spawn(&spec).map_err(|e| job::spawn_refusal(&e, &spec)));
    let started = Instant::now();
    let mut spawned = match spawned {
        Ok(s) => s,
        Err(r) => return refused(r),
    };
    shared.counters.jobs_started.inc();
    let job = audit::Job {
        detached: None,
        who: audit::Who {
            via: Via::Legacy,
            peer,
            who: &crate::identity::Identity::NONE,
            id,
        },
        job: spawned.job,
        pid: spawned.pid,
        command: &approved.command,
        cwd: None,
        env: &request.env,
        tty: false,
    };
    audit::started(&job);
    let ((out, out_total), (err, err_total), status) =
        collect(&mut spawned, cap, cancel, live.cfg.kill_grace).await;
    audit::ended(
        &job,
        &audit::End {
            status: &status,
            duration: started.elapsed(),
            stdout_bytes: out_total,
            stderr_bytes: err_total,
            // The reply's cap (legacy_output_cap) is not max_output.
            dropped_bytes: 0,
            reason: None,
        },
    );
    let mut all = out;
    all.extend_from_slice(
        err.get(..cap.saturating_sub(all.len()).min(err.len()))
            .unwrap_or_default(),
    );
    debug!(bytes = all.len(), "legacy reply");
    all
}

/// A legacy job's output (at most `cap` bytes of each stream, with the
/// totals read) and how it ended; `cancel` kills it. Anything it left
/// running in its group goes with it.
async fn collect(
    spawned: &mut process::Spawned,
    cap: usize,
    cancel: &CancellationToken,
    grace: Duration,
) -> ((Vec<u8>, u64), (Vec<u8>, u64), ExitStatus) {
    let mut guard = process::GroupGuard::new(spawned.pgid);
    let (stdout, stderr) = (spawned.stdout.take(), spawned.stderr.take());
    let child = &mut spawned.child;
    let outputs = async {
        let outputs = tokio::join!(read_capped(stdout, cap), read_capped(stderr, cap));
        (outputs, child.wait().await)
    };
    let ((out, err), waited) = tokio::select! {
        done = outputs => done,
        _ = cancel.cancelled() => {
            let st = process::kill_and_wait(&mut spawned.child, spawned.pgid, grace).await;
            (((Vec::new(), 0), (Vec::new(), 0)), st)
        }
    };
    let status = match waited {
        Ok(st) => job::exit_status(st, false),
        Err(_) => ExitStatus::Code(-1),
    };
    process::kill_group(spawned.pgid, grace).await;
    guard.disarm();
    (out, err, status)
}

/// Reads a pipe to EOF; returns the first `cap` bytes and the total read.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut total = 0u64;
    let Some(mut pipe) = pipe else {
        return (kept, total);
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return (kept, total),
            Ok(n) => {
                total += n as u64;
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(chunk.get(..room).unwrap_or_default());
            }
        }
    }
}
