//! The datagram loop shared by the UDP services: receive, police, reply.
//!
//! ```text
//! recv_from ──> source port < 1024? ──drop (reflection-loop guard)
//!          └──> over the source's rate? ──drop
//!          └──> respond(request) ──> send_to(source)
//! ```
//!
//! The receive buffer is 65,536 bytes, so the largest datagram (65,507
//! bytes over IPv4) arrives whole. Errors on one datagram never end the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::ratelimit::RateLimiter;
use super::stats::UdpCounters;
use crate::config::UdpConfig;

/// Bytes read per datagram: more than any UDP payload.
const RECV_BUF: usize = 65_536;
/// Source ports below this are privileged services (echo 7, chargen 19,
/// daytime 13, ...): answering them invites a reply loop.
const MIN_SOURCE_PORT: u16 = 1024;

/// Serves `socket` until `shutdown`. `respond` turns a request into the
/// reply (written into the given, cleared buffer) and says whether it is an
/// error reply.
pub async fn serve_udp<F>(
    socket: UdpSocket,
    cfg: &UdpConfig,
    counters: Arc<UdpCounters>,
    shutdown: CancellationToken,
    mut respond: F,
) where
    F: FnMut(&[u8], &mut Vec<u8>) -> bool,
{
    let mut limiter = (cfg.rate_limit > 0)
        .then(|| RateLimiter::new(cfg.rate_limit, cfg.rate_burst, cfg.max_sources));
    let mut buf = vec![0u8; RECV_BUF];
    let mut reply = Vec::with_capacity(RECV_BUF);
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(x) => x,
            Err(e) => {
                // Linux reports ICMP errors for earlier replies here; they
                // concern that one peer. Pause briefly so a persistent
                // error cannot spin the loop.
                debug!(error = %e, "recv_from failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        counters.received.inc();
        counters.bytes_in.add(n as u64);
        if peer.port() < MIN_SOURCE_PORT {
            counters.dropped_low_port.inc();
            debug!(%peer, "dropped: privileged source port");
            continue;
        }
        if let Some(l) = limiter.as_mut()
            && !l.allow(peer.ip(), Instant::now())
        {
            counters.dropped_rate_limited.inc();
            trace!(%peer, "dropped: rate limit");
            continue;
        }
        let request = buf.get(..n).unwrap_or_default();
        reply.clear();
        if respond(request, &mut reply) {
            counters.error_replies.inc();
        }
        send(&socket, &reply, peer, &counters).await;
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], peer: SocketAddr, counters: &UdpCounters) {
    match socket.send_to(reply, peer).await {
        Ok(_) => {
            counters.replied.inc();
            counters.bytes_out.add(reply.len() as u64);
            trace!(%peer, len = reply.len(), "replied");
        }
        Err(e) => {
            counters.send_errors.inc();
            if counters.send_errors.get() % 1000 == 1 {
                warn!(%peer, error = %e, "send_to failed");
            }
        }
    }
}
