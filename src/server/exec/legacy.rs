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
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::ExecShared;
use super::audit::{self, JobRecord, Via};
use super::{job, process};
use crate::proto::{ExecRequest, ExitStatus};

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
    // Numbers the connection's commands for the audit log, as a native
    // client's job ids do.
    let mut seq: u64 = 0;
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = stream.read(&mut buf) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        seq += 1;
        let line = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        // Debug, not Display: the line is the peer's, newlines included.
        info!(%peer, id = seq, command = ?line, "legacy command");
        let output = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            o = run(&line, peer, seq, &shared) => o,
        };
        // The reply's length is an i32; the cap keeps it well inside.
        let len = i32::try_from(output.len()).unwrap_or(i32::MAX);
        stream.write_all(&len.to_le_bytes()).await?;
        stream.write_all(&output).await?;
    }
}

/// Runs `line` with `sh -c` and returns stdout followed by stderr, at most
/// `legacy_output_cap` bytes (the rest is read and discarded so the command
/// can finish). The job is audited like a native one.
async fn run(line: &str, peer: SocketAddr, id: u64, shared: &ExecShared) -> Vec<u8> {
    let live = shared.live();
    let cap = live.cfg.legacy_output_cap;
    let Ok(_slot) = shared.job_slots.clone().try_acquire_owned() else {
        return b"switchboard: the server is running its maximum of jobs\n".to_vec();
    };
    let command = match live.policy.check(&ExecRequest::shell(id, line)) {
        Ok(command) => command,
        Err(refusal) => {
            if refusal.code == crate::proto::ErrorCode::Forbidden {
                shared.counters.forbidden.inc();
            }
            let code = refusal.code.as_str();
            info!(%peer, id, command = ?line, code, why = ?refusal.message, "refused");
            return format!(
                "switchboard: {}: {}\n",
                refusal.code.as_str(),
                refusal.message
            )
            .into_bytes();
        }
    };
    let request = ExecRequest::shell(id, line);
    let spawned = job::spec(&command, &request, live.policy.run_as.as_ref())
        .and_then(|spec| process::spawn(&spec).map_err(|e| job::spawn_refusal(&e, &spec)));
    let started = Instant::now();
    let mut spawned = match spawned {
        Ok(s) => s,
        Err(r) => return format!("switchboard: {}: {}\n", r.code.as_str(), r.message).into_bytes(),
    };
    shared.counters.jobs_started.inc();
    let (stdout, stderr) = (spawned.child.stdout.take(), spawned.child.stderr.take());
    let ((out, out_total), (err, err_total)) =
        tokio::join!(read_capped(stdout, cap), read_capped(stderr, cap));
    let status = match spawned.child.wait().await {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal {
                name: process::signal_name(sig),
                timed_out: false,
            },
            (None, None) => ExitStatus::Code(-1),
        },
        Err(_) => ExitStatus::Code(-1),
    };
    // Anything the command left running in its group goes with it.
    process::kill_group(spawned.pgid, live.cfg.kill_grace).await;
    audit::job(&JobRecord {
        via: Via::Legacy,
        peer,
        who: "none",
        id,
        pid: spawned.pid,
        command: &command,
        cwd: None,
        status: &status,
        duration: started.elapsed(),
        stdout_bytes: out_total,
        stderr_bytes: err_total,
    });
    let mut all = out;
    all.extend_from_slice(
        err.get(..cap.saturating_sub(all.len()).min(err.len()))
            .unwrap_or_default(),
    );
    debug!(bytes = all.len(), "legacy reply");
    all
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
