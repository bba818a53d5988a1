//! The time client: a `strftime` format out, the server's time back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{ClientError, DEFAULT_UDP_RETRIES, connect_udp, udp_round_trip};
use crate::timefmt::ERROR_PREFIX;

/// A UDP socket aimed at a time service.
pub struct TimeClient {
    sock: UdpSocket,
    peer: SocketAddr,
    timeout: Duration,
    retries: u32,
}

impl TimeClient {
    /// Prepares a socket for `addr` (`HOST:PORT`); `timeout` bounds each
    /// query, its [`DEFAULT_UDP_RETRIES`] retransmissions included.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        let (sock, peer) = connect_udp(addr).await?;
        Ok(TimeClient {
            sock,
            peer,
            timeout,
            retries: DEFAULT_UDP_RETRIES,
        })
    }

    /// Sends a query up to `retries` more times while no reply comes
    /// (at most [`super::MAX_UDP_RETRIES`]); 0 sends each query once.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The time formatted with `format` (empty: the server's default). A
    /// server's `error: ...` reply becomes [`ClientError::Server`].
    pub async fn query(&self, format: &str) -> Result<String, ClientError> {
        let reply = udp_round_trip(
            &self.sock,
            self.peer,
            format.as_bytes(),
            self.timeout,
            self.retries,
        )
        .await?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        match text.strip_prefix(ERROR_PREFIX) {
            // A reply that merely echoes a literal "error: " in the format
            // is still a time, so only call it an error if the format did
            // not start that way.
            Some(msg) if !format.starts_with(ERROR_PREFIX) => {
                Err(ClientError::Server(msg.to_string()))
            }
            _ => Ok(text),
        }
    }

    /// The raw reply datagram, error or not.
    pub async fn query_raw(&self, format: &[u8]) -> Result<Vec<u8>, ClientError> {
        udp_round_trip(&self.sock, self.peer, format, self.timeout, self.retries).await
    }
}
