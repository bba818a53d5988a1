//! Byte streams that are either plain TCP or TLS, split into halves that
//! can live in different tasks (a reader and a writer).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The read half of a connection.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection that can be split into owned halves.
pub trait IntoHalves {
    fn into_halves(self) -> (BoxRead, BoxWrite);
}

impl IntoHalves for TcpStream {
    fn into_halves(self) -> (BoxRead, BoxWrite) {
        // Lock-free for plain TCP.
        let (r, w) = self.into_split();
        (Box::new(r), Box::new(w))
    }
}

impl IntoHalves for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_halves(self) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self);
        (Box::new(r), Box::new(w))
    }
}

impl IntoHalves for tokio_rustls::client::TlsStream<TcpStream> {
    fn into_halves(self) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self);
        (Box::new(r), Box::new(w))
    }
}

/// Whether the peer of the TCP socket `fd` has gone: it sent its FIN
/// (POLLRDHUP, which the kernel reports as soon as the FIN arrives, even
/// with data still unread before it) or reset the connection. For a
/// connection whose reading has stopped (a job that does not read its
/// input holds it up), where a read would only reach the end after every
/// byte before it. Never waits.
pub fn peer_gone(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
