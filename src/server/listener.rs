//! Binding sockets and the TCP accept loop shared by the TCP services.
//!
//! The accept loop owns three policies:
//! - a global connection limit (a semaphore shared by every endpoint of a
//!   service) and a per-source-address one. A connection over either, or
//!   from a source serving an authentication penalty, is accepted and
//!   closed at once, so the client learns promptly instead of waiting in
//!   the backlog;
//! - accept errors never end the loop: per-connection errors (the peer gave
//!   up before we accepted) are skipped, resource errors such as EMFILE back
//!   off from 10 ms up to 1 s and retry, so the server recovers when load
//!   drops instead of spinning or exiting;
//! - one task and one `tracing` span (service, peer address) per connection;
//!   a connection's error is logged where its task ends and goes no further.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use super::limit::Limit;
use super::sources::Sources;
use super::stats::TcpCounters;

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds a TCP listener with `SO_REUSEADDR` (restarts do not wait out
/// TIME_WAIT) and, for IPv6, `IPV6_V6ONLY` (an IPv6 wildcard does not take
/// the IPv4 port too). Must be called inside a Tokio runtime.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds a UDP socket, asking for a receive buffer of `recv_buffer` bytes so
/// bursts of full-size (65,507-byte) datagrams are not dropped by the kernel.
/// Must be called inside a Tokio runtime.
pub fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // The kernel caps this at net.core.rmem_max; a smaller buffer still works.
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        debug!(error = %e, "could not set SO_RCVBUF");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// What the accept loop needs besides the listener.
#[derive(Clone)]
pub struct AcceptContext {
    pub service: &'static str,
    /// The service's connection limit, every endpoint together.
    pub limit: Arc<Limit>,
    pub counters: Arc<TcpCounters>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Per-source bookkeeping.
    pub sources: Arc<Sources>,
    /// The per-source connection limit as configured now (0: none).
    pub per_source: Arc<dyn Fn() -> usize + Send + Sync>,
    /// What to write to a connection turned away, before closing it: for
    /// protocols whose server speaks first (the native exec protocol in
    /// plain TCP), so the client can say why; None: close without a word.
    pub turned_away: Option<fn(TurnedAway) -> Vec<u8>>,
}

/// Why the accept loop turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnedAway {
    /// The service's connection limit.
    Limit,
    /// The source's limits or penalty.
    Source(crate::server::sources::Refusal),
}

/// Best effort, never waiting: a fresh socket's send buffer takes a small
/// frame whole, and a peer that has sent nothing yet (the server speaks
/// first) gets a clean close after it rather than a reset.
pub fn say_why(
    stream: &TcpStream,
    turned_away: Option<fn(TurnedAway) -> Vec<u8>>,
    why: TurnedAway,
) {
    if let Some(f) = turned_away {
        let _ = stream.try_write(&f(why));
    }
}

/// Accepts connections until `shutdown`, running `handle` for each in its
/// own task on the tracker.
pub async fn accept_loop<F, Fut>(listener: TcpListener, ctx: AcceptContext, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = BACKOFF_MIN;
                x
            }
            Err(e) if is_per_connection(&e) => {
                debug!(service = ctx.service, error = %e, "accept: peer went away");
                continue;
            }
            Err(e) => {
                warn!(service = ctx.service, error = %e, ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            ctx.counters.rejected.inc();
            debug!(service = ctx.service, %peer, "connection limit reached; closing");
            say_why(&stream, ctx.turned_away, TurnedAway::Limit);
            drop(stream);
            continue;
        };
        let source = match ctx.sources.connect(peer.ip(), (ctx.per_source)()) {
            Ok(g) => g,
            Err(why) => {
                ctx.counters.rejected_source.inc();
                debug!(service = ctx.service, %peer, ?why, "source refused; closing");
                say_why(&stream, ctx.turned_away, TurnedAway::Source(why));
                drop(stream);
                continue;
            }
        };
        // Replies written in pieces would otherwise wait up to 40 ms on
        // Nagle's algorithm for the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(service = ctx.service, %peer, error = %e, "set TCP_NODELAY failed");
        }
        ctx.counters.accepted.inc();
        ctx.counters.open.inc();
        let counters = ctx.counters.clone();
        let span = info_span!("conn", service = ctx.service, %peer);
        let fut = handle(stream, peer);
        ctx.tracker.spawn(
            async move {
                debug!("accepted");
                match fut.await {
                    Ok(()) => debug!("closed"),
                    Err(e) => debug!(error = %e, "closed with error"),
                }
                counters.open.dec();
                drop(source);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Errors that concern one connection that is already gone, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
