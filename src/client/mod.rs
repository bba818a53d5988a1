//! Typed clients, one per service, shared by the CLI, the tests and the
//! load generator.

mod echo;
pub mod exec;
pub mod relay;
mod time;
pub mod transfer;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};

pub use echo::EchoClient;
pub use exec::{ClientAuth, ExecClient, ExecReceiver, ExecSender, JobEvent, JobFailure, Output};
pub use time::TimeClient;

/// Default time a client waits for a connection or a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Retransmissions of a UDP request that got no reply, by default (as
/// `dig`'s `+retry=2`): through 5% loss each way, one request in ~1,000 then
/// goes unanswered instead of one in ten.
pub const DEFAULT_UDP_RETRIES: u32 = 2;

/// The most retransmissions asked for that are honoured: with the waits
/// doubling inside one timeout, more would make the first wait too short
/// to mean anything.
pub const MAX_UDP_RETRIES: u32 = 10;

/// The largest UDP payload (IPv4).
pub const MAX_DATAGRAM: usize = 65_507;

/// What can go wrong talking to a service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {addr}: {cause}")]
    Resolve { addr: String, cause: io::Error },
    #[error("cannot connect to {addr}: {cause}{}", refused_hint(cause))]
    Connect { addr: String, cause: io::Error },
    #[error("no connection to {addr} within {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("no reply from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// A plain-TCP exec connection that never got the server's `hello`,
    /// which a switchboard server sends at once.
    #[error(
        "no hello from tcp://{addr} within {after:?}: if it is a tls:// endpoint, use \
         tls://{addr}; otherwise it is not a switchboard exec port"
    )]
    NoHello { addr: String, after: Duration },
    #[error("no reply from {addr} after {tries} {} in {after:?}", if *tries == 1 { "try" } else { "tries" })]
    NoReply {
        addr: String,
        tries: u32,
        after: Duration,
    },
    #[error("nothing is listening on udp://{addr} (ICMP port unreachable)")]
    UdpRefused { addr: String },
    #[error("the server closed the connection after {got} of {want} reply bytes")]
    Closed { got: usize, want: usize },
    #[error("request of {0} bytes is larger than a UDP datagram (65,507 bytes)")]
    TooLarge(usize),
    #[error("server: {0}")]
    Server(String),
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A frame broke the codec's rules (or the connection failed under it).
    #[error("{}", frame_error(.0))]
    Frame(#[from] crate::proto::frame::FrameError),
    /// A well-formed frame that is not a valid server message.
    #[error("protocol error: {0}")]
    Message(#[from] crate::proto::ParseError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server refused the job ({}): {message}", code.as_str())]
    Job {
        code: crate::proto::ErrorCode,
        message: String,
        /// `spawn_failed`: the status a shell would give (127, 126, 1).
        exit_status: Option<i32>,
    },
    /// Transparent, so that a printed error chain says it once.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A file on this side (a transfer's source or destination) failed;
    /// the connection is fine. The message names the file.
    #[error(transparent)]
    Local(io::Error),
}

/// A connection that failed under the codec is said as such, not as a
/// broken protocol (a reset, a server killed mid-stream).
fn frame_error(e: &crate::proto::frame::FrameError) -> String {
    match e {
        crate::proto::frame::FrameError::Io(io) => format!("connection lost: {io}"),
        other => format!("protocol error: {other}"),
    }
}

fn refused_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        " (is `switchboard serve` running there?)"
    } else {
        ""
    }
}

async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let resolved: Result<Vec<SocketAddr>, io::Error> =
        tokio::net::lookup_host(addr).await.map(|it| it.collect());
    match resolved {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(ClientError::Resolve {
            addr: addr.to_string(),
            cause: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }),
        Err(cause) => Err(ClientError::Resolve {
            addr: addr.to_string(),
            cause,
        }),
    }
}

/// Connects to the first address of `addr` (`HOST:PORT`) that answers,
/// trying each in turn within `timeout` overall.
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let addrs = resolve(addr).await?;
    let attempt = async {
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no addresses")))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(ClientError::ConnectTimeout {
            addr: addr.to_string(),
            after: timeout,
        }),
        Ok(Err(cause)) => Err(ClientError::Connect {
            addr: addr.to_string(),
            cause,
        }),
        Ok(Ok(s)) => {
            // Requests are small and interactive: don't let Nagle hold them.
            s.set_nodelay(true)?;
            Ok(s)
        }
    }
}

/// A UDP socket connected to `addr`: the kernel then drops datagrams from
/// anyone else, and reports ICMP port-unreachable as `ConnectionRefused`.
pub async fn connect_udp(addr: &str) -> Result<(UdpSocket, SocketAddr), ClientError> {
    let addrs = resolve(addr).await?;
    let mut last = None;
    for a in addrs {
        let local: SocketAddr = if a.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).await?;
        match sock.connect(a).await {
            Ok(()) => return Ok((sock, a)),
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::Connect {
        addr: addr.to_string(),
        cause: last.unwrap_or_else(|| io::Error::other("no addresses")),
    })
}

/// Sends one datagram on a connected socket and waits for one reply,
/// sending it again up to `retries` times while none comes. The waits
/// double (1, 2, 4, ... units) and together make `timeout`, so a lossy path
/// is retried quickly and a slow one still gets most of the time. Both UDP
/// services are idempotent: a late reply to an earlier copy is as good as
/// the reply to the last. Stale replies (to requests that timed out) are
/// discarded first.
pub(crate) async fn udp_round_trip(
    sock: &UdpSocket,
    peer: SocketAddr,
    request: &[u8],
    timeout: Duration,
    retries: u32,
) -> Result<Vec<u8>, ClientError> {
    if request.len() > MAX_DATAGRAM {
        return Err(ClientError::TooLarge(request.len()));
    }
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while sock.try_recv(&mut buf).is_ok() {}
    let refused = |e: io::Error| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            ClientError::UdpRefused {
                addr: peer.to_string(),
            }
        } else {
            ClientError::Io(e)
        }
    };
    let tries = retries.min(MAX_UDP_RETRIES) + 1;
    let unit = timeout / ((1u32 << tries) - 1);
    let deadline = tokio::time::Instant::now() + timeout;
    for try_no in 0..tries {
        sock.send(request).await.map_err(refused)?;
        let wait = if try_no + 1 == tries {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            unit * (1u32 << try_no)
        };
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Err(_) => continue,
            Ok(Err(e)) => return Err(refused(e)),
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }
    Err(ClientError::NoReply {
        addr: format!("udp://{peer}"),
        tries,
        after: timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameError;

    #[test]
    fn a_lost_connection_is_not_called_a_protocol_error() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let lost = ClientError::Frame(FrameError::Io(reset)).to_string();
        assert!(lost.starts_with("connection lost: "), "{lost}");
        let bad = ClientError::Frame(FrameError::NoType).to_string();
        assert!(bad.starts_with("protocol error: "), "{bad}");
    }
}
