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
