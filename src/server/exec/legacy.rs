//! The tutorial-compatible exec protocol (PROTOCOL.md §4), for the
//! tutorial's final client, unmodified. Unauthenticated, so it is bound to
//! loopback addresses only and off unless asked for.
//!
//! ```text
//! C: <up to 1,024 bytes: a shell command line>
//! S: <i32 little-endian n> <n bytes: stdout, then stderr>
//! ... repeated until the client closes
//! ```

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::ExecShared;
use super::job;
use crate::proto::Command;

/// One read is one command, as in the tutorial's `conn.recv(1024)`.
const READ_SIZE: usize = 1024;

/// Serves one legacy connection.
pub async fn serve(
    mut stream: TcpStream,
    shared: Arc<ExecShared>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = stream.read(&mut buf) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        info!(command = %line.trim_end(), "legacy command");
        let output = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            o = run(&line, &shared) => o,
        };
        // The reply's length is an i32; the cap keeps it well inside.
        let len = i32::try_from(output.len()).unwrap_or(i32::MAX);
        stream.write_all(&len.to_le_bytes()).await?;
        stream.write_all(&output).await?;
    }
}

/// Runs `line` with `sh -c` and returns stdout followed by stderr, at most
/// `legacy_output_cap` bytes (the rest is read and discarded so the command
/// can finish).
async fn run(line: &str, shared: &ExecShared) -> Vec<u8> {
    let live = shared.live();
    let cap = live.cfg.legacy_output_cap;
    let Ok(_slot) = shared.job_slots.clone().try_acquire_owned() else {
        return b"switchboard: the server is running its maximum of jobs\n".to_vec();
    };
    let command = Command::Shell(line.to_string());
    if let Err(why) = live
        .policy
        .check(&crate::proto::ExecRequest::shell(0, line))
    {
        shared.counters.forbidden.inc();
        return format!("switchboard: forbidden: {why}\n").into_bytes();
    }
    let run_as = live.policy.run_as.as_ref();
    let mut spawned = match job::spawn(&command, &BTreeMap::new(), None, false, run_as) {
        Ok(s) => s,
        Err(e) => return format!("switchboard: cannot run /bin/sh: {e}\n").into_bytes(),
    };
    shared.counters.jobs_started.inc();
    let (stdout, stderr) = (spawned.child.stdout.take(), spawned.child.stderr.take());
    let (out, err) = tokio::join!(read_capped(stdout, cap), read_capped(stderr, cap));
    let _ = spawned.child.wait().await;
    // Anything the command left running in its group goes with it.
    job::kill_group(spawned.pgid, live.cfg.kill_grace).await;
    let mut all = out;
    all.extend_from_slice(
        err.get(..cap.saturating_sub(all.len()).min(err.len()))
            .unwrap_or_default(),
    );
    debug!(bytes = all.len(), "legacy reply");
    all
}

async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(chunk.get(..room).unwrap_or_default());
            }
        }
    }
}
