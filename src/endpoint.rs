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
    #[error("{0:?}: not a host name or address")]
    BadHost(String),
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
        let (transport, rest) = split_scheme(s)?;
        let (host, port) = split_host_port(rest, s, None)?;
        Ok((transport, host.to_string(), port))
    }

    /// Parses a client's address, the one parser of every client and of
    /// `--hosts`: `[SCHEME://]HOST[:PORT]`, an IPv6 host in brackets
    /// (`[::1]`, `[::1]:8080`); a missing port is `default_port`. Returns the
    /// transport the scheme named, if any, and the endpoint's host and port.
    ///
    /// ```text
    /// web01            -> (None, web01, default_port)
    /// tls://web01:8443 -> (Some(Tls), web01, 8443)
    /// [::1]            -> (None, ::1, default_port)
    /// host:99999, :80, http://x, a b, [::1   -> errors
    /// ```
    pub fn parse_client(
        s: &str,
        default_port: u16,
    ) -> Result<(Option<Transport>, String, u16), EndpointError> {
        let (transport, rest) = split_scheme(s)?;
        let (host, port) = split_host_port(rest, s, Some(default_port))?;
        // In brackets, an IPv6 address. Otherwise names and IPv4
        // addresses: letters, digits, `-`, `.`, `_`; a name whose last
        // label is a number must be a whole dotted-quad address: the
        // resolver would read `12`, `127.1` or `0x7f.1` as IPv4 addresses
        // no one meant.
        if rest.starts_with('[') {
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(EndpointError::BadHost(s.to_string()));
            }
        } else {
            let name_chars = host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            let last = host
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .unwrap_or(host);
            let numeric = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
            if !name_chars
                || !host.bytes().any(|b| b.is_ascii_alphanumeric())
                || host.starts_with(['-', '.'])
                || (numeric && host.parse::<std::net::Ipv4Addr>().is_err())
            {
                return Err(EndpointError::BadHost(s.to_string()));
            }
        }
        Ok((transport, host.to_string(), port))
    }

    /// Whether a word is meant as an address, for clients whose address is
    /// optional before free text (echo, time): it has a scheme, starts with
    /// `[`, or is `HOST:DIGITS` with a host of name characters (or none).
    /// Such a word is then parsed with [`parse_client`](Self::parse_client),
    /// and a malformed one is an error, never text. `hello`, `note:`,
    /// `re:abc` and `%H:%M:00` are text.
    pub fn looks_like_address(word: &str) -> bool {
        word.contains("://")
            || word.starts_with('[')
            || word.rsplit_once(':').is_some_and(|(host, port)| {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            })
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
/// The transport a `SCHEME://` prefix names, and the rest.
fn split_scheme(s: &str) -> Result<(Option<Transport>, &str), EndpointError> {
    Ok(match s.split_once("://") {
        Some(("tcp", rest)) => (Some(Transport::Tcp), rest),
        Some(("udp", rest)) => (Some(Transport::Udp), rest),
        Some(("tls", rest)) => (Some(Transport::Tls), rest),
        Some(_) => return Err(EndpointError::Scheme(s.to_string())),
        None => (None, s),
    })
}

/// `HOST:PORT` or `[V6]:PORT` in `rest` (of `whole`, for the errors); with
/// a `default`, the port may be left out. The host is not judged here.
fn split_host_port<'a>(
    rest: &'a str,
    whole: &str,
    default: Option<u16>,
) -> Result<(&'a str, u16), EndpointError> {
    let s = whole.to_string();
    let malformed = || match default {
        Some(_) => EndpointError::BadHost(whole.to_string()),
        None => EndpointError::MissingPort(whole.to_string()),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(malformed)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(malformed)?)),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(EndpointError::Ipv6NeedsBrackets(s));
            }
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(EndpointError::EmptyHost(s));
    }
    let port = match (port, default) {
        (None, Some(d)) => d,
        (None, None) => return Err(EndpointError::MissingPort(s)),
        (Some(p), _) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().map_err(|_| EndpointError::BadPort(s))?
        }
        (Some(_), _) => return Err(EndpointError::BadPort(s)),
    };
    Ok((host, port))
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

    #[test]
    fn client_addresses_are_parsed_not_guessed() {
        let ok = |s: &str| Endpoint::parse_client(s, 8080).unwrap();
        assert_eq!(ok("web01"), (None, "web01".into(), 8080));
        assert_eq!(ok("web01:9"), (None, "web01".into(), 9));
        assert_eq!(
            ok("tls://n-1.example:8443"),
            (Some(Transport::Tls), "n-1.example".into(), 8443)
        );
        assert_eq!(
            ok("tcp://127.0.0.1"),
            (Some(Transport::Tcp), "127.0.0.1".into(), 8080)
        );
        assert_eq!(ok("[::1]"), (None, "::1".into(), 8080));
        assert_eq!(ok("udp://[::1]:0"), (Some(Transport::Udp), "::1".into(), 0));
        for bad in [
            "host:99999",
            ":8080",
            "host:",
            "host:8x",
            "http://x",
            "tls://",
            "[::1",
            "[::1]x",
            "[nope]:1",
            "::1",
            "fe80::1:22",
            "a b",
            "a/b:1",
            "a@b",
            // What the resolver would read as IPv4 numbers, and non-names.
            "12",
            "12:30",
            "2130706433:1",
            "127.1",
            "0x7f.1:1",
            "-",
            ".",
            "_",
            "-a",
        ] {
            assert!(Endpoint::parse_client(bad, 8080).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn words_that_look_like_addresses() {
        for yes in [
            "h:1",
            ":8080",
            "host:99999",
            "udp://x",
            "tls://h:1",
            "[::1]",
            "[x",
            "12:30",
        ] {
            assert!(Endpoint::looks_like_address(yes), "{yes}");
        }
        for no in [
            "hello", "note:", "re:abc", "%H:%M", "%H:%M:00", "", "a-b.c", "a b:1",
        ] {
            assert!(!Endpoint::looks_like_address(no), "{no}");
        }
    }
}
