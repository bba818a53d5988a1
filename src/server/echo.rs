//! The upper-case echo service (PROTOCOL.md §1), TCP and UDP.
//!
//! TCP is a byte stream with no framing, so the connection task is a copy
//! loop that transforms bytes in place ([`EchoMode::apply`] never changes a
//! length). Memory per client is bounded by `buffer_size`, because nothing
//! more is read until what was read has been written back: a client that
//! sends and never reads stalls on its own full socket buffers (TCP
//! back-pressure) and is closed after `idle_timeout` without progress.
//!
//! An idle connection holds no buffer at all: the task waits for
//! readability first and takes a buffer only while data is flowing, which is
//! what keeps thousands of idle connections cheap.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::stats::TcpCounters;
use crate::config::{EchoConfig, EchoMode};

/// The UDP reply: the request, transformed.
pub fn udp_reply(mode: EchoMode, request: &[u8], reply: &mut Vec<u8>) {
    reply.extend_from_slice(request);
    mode.apply(reply);
}

/// How a TCP connection ended, for the logs and counters.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client half-closed and everything was echoed back.
    ClientDone,
    /// Nothing received, or no reply accepted, for `idle_timeout`.
    Idle,
    /// The server is shutting down.
    Shutdown,
}

/// Serves one TCP echo connection until the client is done, it idles out,
/// or `shutdown` fires.
pub async fn serve_tcp(
    mut stream: TcpStream,
    cfg: Arc<EchoConfig>,
    counters: Arc<TcpCounters>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let ending = echo_loop(&mut stream, &cfg, &counters, &shutdown).await?;
    debug!(?ending, "echo connection ending");
    match ending {
        Ending::ClientDone | Ending::Shutdown => {
            // Half-close: the client sees EOF after the last echoed byte.
            // Bounded, since the peer may not be reading.
            let _ = timeout(cfg.idle_timeout, stream.shutdown()).await;
        }
        Ending::Idle => counters.idle_closed.inc(),
    }
    Ok(())
}

async fn echo_loop(
    stream: &mut TcpStream,
    cfg: &EchoConfig,
    counters: &TcpCounters,
    shutdown: &CancellationToken,
) -> io::Result<Ending> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Ending::Shutdown),
            r = timeout(cfg.idle_timeout, stream.readable()) => match r {
                Err(_) => return Ok(Ending::Idle),
                Ok(r) => r?,
            },
        }
        // Data is (probably) waiting: take a buffer for as long as it flows.
        let mut buf = BytesMut::with_capacity(cfg.buffer_size);
        loop {
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return Ok(Ending::ClientDone),
                Ok(n) => {
                    counters.bytes_in.add(n as u64);
                    cfg.mode.apply(&mut buf);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Ending::Shutdown),
                        r = timeout(cfg.idle_timeout, stream.write_all(&buf)) => match r {
                            Err(_) => return Ok(Ending::Idle),
                            Ok(r) => r?,
                        },
                    }
                    counters.bytes_out.add(buf.len() as u64);
                    buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}
