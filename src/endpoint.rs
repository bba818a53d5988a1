//! Endpoints: where a service listens or a client connects.
//!
//! ```text
//! tcp://HOST:PORT     udp://HOST:PORT     tls://HOST:PORT (exec)
//! HOST:PORT (transport from context)
//! HOST = name | IPv4 | [IPv6]             PORT = 0..=65535 (0: any free port)
//! ```
//!
//! The host is kept as written and resolved at bind/connect time, so a name
//! like `localhost` binds every address it resolves to.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// The transport of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    /// TCP with TLS 1.3 (exec only).
    Tls,
}

impl Transport {
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// A transport plus a host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

/// Why an endpoint string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?}: unknown scheme (expected tcp://, udp:// or tls://)")]
    Scheme(String),
    #[error("{0:?}: expected HOST:PORT")]
    MissingPort(String),
    #[error("{0:?}: bad port (expected 0-65535)")]
    BadPort(String),
    #[error("{0:?}: IPv6 addresses need brackets, e.g. [::1]:9000")]
    Ipv6NeedsBrackets(String),
    #[error("{0:?}: empty host")]
    EmptyHost(String),
}

impl Endpoint {
    pub fn new(transport: Transport, host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            transport,
            host: host.into(),
            port,
        }
    }

    /// An endpoint for an already-known socket address.
    pub fn from_addr(transport: Transport, addr: SocketAddr) -> Self {
        Endpoint::new(transport, addr.ip().to_string(), addr.port())
    }

    /// Parses `tcp://HOST:PORT`, `udp://HOST:PORT`, or a bare `HOST:PORT`.
    /// Returns the transport named by the scheme, if any, and the rest.
    pub fn parse_loose(s: &str) -> Result<(Option<Transport>, String, u16), EndpointError> {
        let (transport, rest) = match s.split_once("://") {
            Some(("tcp", rest)) => (Some(Transport::Tcp), rest),
            Some(("udp", rest)) => (Some(Transport::Udp), rest),
            Some(("tls", rest)) => (Some(Transport::Tls), rest),
            Some(_) => return Err(EndpointError::Scheme(s.to_string())),
            None => (None, s),
        };
        let (host, port) = split_host_port(rest, s)?;
        Ok((transport, host, port))
    }

    /// Parses an endpoint, using `default` when the string has no scheme.
    pub fn parse_with_default(s: &str, default: Transport) -> Result<Self, EndpointError> {
        let (t, host, port) = Self::parse_loose(s)?;
        Ok(Endpoint::new(t.unwrap_or(default), host, port))
    }

    /// `HOST:PORT` with IPv6 hosts in brackets, ready for `lookup_host`.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host to socket addresses (duplicates removed, order kept).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.host),
            ));
        }
        Ok(out)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    /// Requires a scheme: `tcp://HOST:PORT` or `udp://HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Self::parse_loose(s)? {
            (Some(t), host, port) => Ok(Endpoint::new(t, host, port)),
            (None, _, _) => Err(EndpointError::Scheme(s.to_string())),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport, self.host_port())
    }
}

/// Splits `HOST:PORT` (`rest`); errors quote the whole input (`whole`).
fn split_host_port(rest: &str, whole: &str) -> Result<(String, u16), EndpointError> {
    let s = whole;
    let (host, port) = if let Some(rest) = rest.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| EndpointError::MissingPort(s.to_string()))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| EndpointError::MissingPort(s.to_string()))?;
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::MissingPort(s.to_string()))?;
        if host.contains(':') {
            return Err(EndpointError::Ipv6NeedsBrackets(s.to_string()));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(EndpointError::EmptyHost(s.to_string()));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EndpointError::BadPort(s.to_string()));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| EndpointError::BadPort(s.to_string()))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes_and_hosts() {
        let e: Endpoint = "tcp://127.0.0.1:9000".parse().unwrap();
        assert_eq!(e, Endpoint::new(Transport::Tcp, "127.0.0.1", 9000));
        let e: Endpoint = "udp://[::1]:0".parse().unwrap();
        assert_eq!(e, Endpoint::new(Transport::Udp, "::1", 0));
        assert_eq!(e.to_string(), "udp://[::1]:0");
        let e = Endpoint::parse_with_default("localhost:9001", Transport::Udp).unwrap();
        assert_eq!(e.to_string(), "udp://localhost:9001");
    }

    #[test]
    fn rejects_bad_endpoints() {
        for bad in [
            "http://x:1",
            "tcp://x",
            "tcp://x:",
            "tcp://x:65536",
            "tcp://x:+1",
            "tcp://::1:9000",
            "tcp://:9000",
            "tcp://[::1]9000",
            "127.0.0.1:9000",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} should be rejected");
        }
    }
}
