//! The echo client, over TCP or UDP.
//!
//! Echo keeps lengths (ASCII upper-casing is one byte for one byte), so over
//! TCP a request's reply is exactly as long as the request: that is how the
//! client knows where a reply ends on an unframed byte stream.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{ClientError, DEFAULT_UDP_RETRIES, connect_tcp, connect_udp, udp_round_trip};

enum Conn {
    Tcp(TcpStream),
    /// The socket, the server, and the retransmissions per request.
    Udp(UdpSocket, SocketAddr, u32),
}

/// A connection to an echo service.
pub struct EchoClient {
    conn: Conn,
    addr: String,
    timeout: Duration,
}

impl EchoClient {
    /// Connects over TCP to `addr` (`HOST:PORT`). `timeout` bounds the
    /// connect and each wait for reply bytes.
    pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        let stream = connect_tcp(addr, timeout).await?;
        Ok(EchoClient {
            conn: Conn::Tcp(stream),
            addr: addr.to_string(),
            timeout,
        })
    }

    /// Prepares a UDP socket for `addr`; `timeout` bounds each request,
    /// its [`DEFAULT_UDP_RETRIES`] retransmissions included.
    pub async fn connect_udp(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        let (sock, peer) = connect_udp(addr).await?;
        Ok(EchoClient {
            conn: Conn::Udp(sock, peer, DEFAULT_UDP_RETRIES),
            addr: addr.to_string(),
            timeout,
        })
    }

    /// UDP: sends a request up to `retries` more times while no reply
    /// comes (at most [`super::MAX_UDP_RETRIES`]); 0 sends each request
    /// once. TCP retransmits by itself and ignores this.
    pub fn with_retries(mut self, retries: u32) -> Self {
        if let Conn::Udp(_, _, r) = &mut self.conn {
            *r = retries;
        }
        self
    }

    /// Sends `data` and returns its echo. Over UDP, `data` is one datagram.
    pub async fn request(&mut self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        match &mut self.conn {
            Conn::Udp(sock, peer, retries) => {
                udp_round_trip(sock, *peer, data, self.timeout, *retries).await
            }
            Conn::Tcp(stream) => {
                // Write and read at once: a large request must not fill both
                // directions' buffers before we start reading.
                let (mut rd, mut wr) = stream.split();
                let want = data.len();
                let mut reply = vec![0u8; want];
                let timeout = self.timeout;
                let addr = &self.addr;
                let read = async {
                    let mut got = 0;
                    while got < want {
                        let slot = reply.get_mut(got..).unwrap_or_default();
                        let n = match tokio::time::timeout(timeout, rd.read(slot)).await {
                            Err(_) => {
                                return Err(ClientError::Timeout {
                                    addr: format!("tcp://{addr}"),
                                    after: timeout,
                                });
                            }
                            Ok(r) => r?,
                        };
                        if n == 0 {
                            return Err(ClientError::Closed { got, want });
                        }
                        got += n;
                    }
                    Ok(())
                };
                let write = async { wr.write_all(data).await.map_err(ClientError::Io) };
                tokio::try_join!(write, read)?;
                Ok(reply)
            }
        }
    }

    /// TCP only: copies `input` to the server and the echo to `output` at
    /// the same time, half-closes at the end of `input`, and returns once the
    /// server has closed its side (every byte echoed). Returns bytes echoed.
    pub async fn pipe<R, W>(self, mut input: R, mut output: W) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Conn::Tcp(mut stream) = self.conn else {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "pipe is for TCP; over UDP send one datagram per request",
            )));
        };
        let (mut rd, mut wr) = stream.split();
        let up = async {
            tokio::io::copy(&mut input, &mut wr).await?;
            wr.shutdown().await
        };
        let down = async {
            let n = tokio::io::copy(&mut rd, &mut output).await?;
            output.flush().await?;
            Ok::<u64, io::Error>(n)
        };
        let ((), n) = tokio::try_join!(up, down)?;
        Ok(n)
    }

    /// TCP only: half-closes and waits for the server to close its side,
    /// returning anything it still sent.
    pub async fn finish(self) -> Result<Vec<u8>, ClientError> {
        let mut rest = Vec::new();
        if let Conn::Tcp(mut stream) = self.conn {
            stream.shutdown().await?;
            let read = stream.read_to_end(&mut rest);
            if tokio::time::timeout(self.timeout, read).await.is_err() {
                return Err(ClientError::Timeout {
                    addr: format!("tcp://{}", self.addr),
                    after: self.timeout,
                });
            }
        }
        Ok(rest)
    }
}
