//! Exposure: which service may listen where, over which transport, and
//! whether it may run without authentication or encryption. This module is
//! the only place those rules are written; every path that puts a socket
//! in service goes through [`check`]:
//!
//! ```text
//! serve (bind) ───────────┐
//! socket activation ──────┤
//! --check-config ─────────┼──> check(listeners, rules) ──> Ok | Refused
//! SIGHUP reload ──────────┘    (the reload checks the sockets already bound
//!                               against the new configuration)
//! ```
//!
//! The rules:
//!
//! | service | transports | off loopback |
//! |---|---|---|
//! | echo | tcp, udp | yes |
//! | time | udp | yes |
//! | exec | tcp, tls | tls; tcp only with `allow_plaintext`; never with `no_auth` |
//! | exec-legacy | tcp | never (it has no authentication) |
//! | metrics | tcp | yes (read-only counters) |
//!
//! "Loopback" is judged on the address actually bound or passed in (a name
//! such as `localhost` is resolved first), so `0.0.0.0` and `[::]` are not
//! loopback, and an IPv4-mapped `::ffff:127.0.0.1` is.

use std::fmt;
use std::net::SocketAddr;

use crate::endpoint::{Endpoint, Transport};

/// The services a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Echo,
    Time,
    /// Native remote execution (PROTOCOL.md §3).
    Exec,
    /// Tutorial-compatible remote execution (PROTOCOL.md §4).
    ExecLegacy,
    /// Prometheus metrics.
    Metrics,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that banners can align with `{:<5}`.
        f.pad(match self {
            Service::Echo => "echo",
            Service::Time => "time",
            Service::Exec => "exec",
            Service::ExecLegacy => "exec-legacy",
            Service::Metrics => "metrics",
        })
    }
}

/// The settings the rules depend on (from `ExecConfig::exposure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    /// Exec runs without authentication.
    pub no_auth: bool,
    /// The operator allows plaintext exec off loopback.
    pub allow_plaintext: bool,
}

/// One socket a service listens on (or would): what `check` judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub service: Service,
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Listener {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_addr(self.transport, self.addr)
    }
}

/// Why a listener may not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{service}: {transport}:// is not a transport of this service ({})", transports(*service))]
    Transport {
        service: Service,
        transport: Transport,
    },
    #[error(
        "{service}: {addr} is not a loopback address, and this service has no authentication; \
         it may listen on loopback addresses only"
    )]
    LegacyOffLoopback { service: Service, addr: SocketAddr },
    #[error(
        "exec: {addr} is not a loopback address, and exec runs without authentication (no_auth); \
         unauthenticated exec is allowed on loopback addresses only"
    )]
    NoAuthOffLoopback { addr: SocketAddr },
    #[error(
        "exec: tcp://{addr} is not a loopback address: commands and their output would cross \
         the network in the clear; use tls://, or allow_plaintext (--allow-plaintext)"
    )]
    PlaintextOffLoopback { addr: SocketAddr },
}

/// The transports `service` can be served over, for messages.
fn transports(service: Service) -> &'static str {
    match service {
        Service::Echo => "tcp or udp",
        Service::Time => "udp",
        Service::Exec => "tcp or tls",
        Service::ExecLegacy | Service::Metrics => "tcp",
    }
}

/// Whether `service` can be served over `transport` at all (no address
/// involved: configuration validation and socket activation ask this).
pub fn transport_allowed(service: Service, transport: Transport) -> Result<(), Refused> {
    let ok = matches!(
        (service, transport),
        (Service::Echo, Transport::Tcp | Transport::Udp)
            | (Service::Time, Transport::Udp)
            | (Service::Exec, Transport::Tcp | Transport::Tls)
            | (Service::ExecLegacy | Service::Metrics, Transport::Tcp)
    );
    if ok {
        Ok(())
    } else {
        Err(Refused::Transport { service, transport })
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Whether a server running as root may run jobs as root without being
/// told to (`--run-as`, `--allow-root`): it serves exec, every exec socket
/// is on a loopback address, none is unauthenticated (`no_auth`) or the
/// tutorial protocol (which has no authentication), and the token is a
/// file only root can read. Then whoever can start a job already holds
/// root's secret, and a root job gives nothing away. Judged on the
/// sockets being served, at start (activation included) and at every
/// reload (`no_auth` and the token can change live); returns the token
/// file, which is judged again at every root job.
pub fn root_jobs_without_asking<'a>(
    listeners: impl IntoIterator<Item = &'a Listener>,
    rules: Rules,
    token: Option<&crate::secrets::TokenSource>,
) -> Option<crate::secrets::RootToken> {
    let mut exec = false;
    for l in listeners {
        match l.service {
            Service::ExecLegacy => return None,
            Service::Exec if !is_loopback(l.addr) => return None,
            Service::Exec => exec = true,
            _ => {}
        }
    }
    match token {
        Some(crate::secrets::TokenSource::File(path)) if exec && !rules.no_auth => {
            crate::secrets::RootToken::now(path)
        }
        _ => None,
    }
}

/// Judges one listener under `rules`.
pub fn check_one(l: &Listener, rules: Rules) -> Result<(), Refused> {
    transport_allowed(l.service, l.transport)?;
    if is_loopback(l.addr) {
        return Ok(());
    }
    match l.service {
        Service::ExecLegacy => Err(Refused::LegacyOffLoopback {
            service: l.service,
            addr: l.addr,
        }),
        Service::Exec if rules.no_auth => Err(Refused::NoAuthOffLoopback { addr: l.addr }),
        Service::Exec if l.transport == Transport::Tcp && !rules.allow_plaintext => {
            Err(Refused::PlaintextOffLoopback { addr: l.addr })
        }
        _ => Ok(()),
    }
}

/// Judges every listener; the first refusal wins.
pub fn check<'a>(
    listeners: impl IntoIterator<Item = &'a Listener>,
    rules: Rules,
) -> Result<(), Refused> {
    listeners.into_iter().try_for_each(|l| check_one(l, rules))
}

/// Resolves the endpoints a configuration asks for
/// (`ServerConfig::listen_endpoints`) into the listeners they would bind,
/// and judges them: what `serve` does before binding, and what
/// `--check-config` and reload do instead of binding.
pub async fn resolve_and_check(
    wanted: impl Iterator<Item = (Service, &Endpoint)>,
    rules: Rules,
) -> Result<Vec<Listener>, ResolveError> {
    let mut out = Vec::new();
    for (service, endpoint) in wanted {
        let addrs = endpoint
            .resolve()
            .await
            .map_err(|source| ResolveError::Resolve {
                service,
                endpoint: endpoint.clone(),
                source,
            })?;
        for addr in addrs {
            let l = Listener {
                service,
                transport: endpoint.transport,
                addr,
            };
            check_one(&l, rules).map_err(|refused| ResolveError::Refused {
                refused,
                endpoint: endpoint.clone(),
            })?;
            out.push(l);
        }
    }
    Ok(out)
}

/// Why the endpoints a configuration asks for cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{service}: cannot resolve {endpoint}")]
    Resolve {
        service: Service,
        endpoint: Endpoint,
        source: std::io::Error,
    },
    #[error("{refused} (listen = {endpoint})")]
    Refused {
        refused: Refused,
        endpoint: Endpoint,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(service: Service, transport: Transport, addr: &str) -> Listener {
        Listener {
            service,
            transport,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn every_forbidden_combination_is_refused_and_loopback_is_fine() {
        let base = Rules::default();
        let no_auth = Rules {
            no_auth: true,
            ..base
        };
        let plaintext = Rules {
            allow_plaintext: true,
            ..base
        };
        let both = Rules {
            no_auth: true,
            allow_plaintext: true,
        };
        use Service::*;
        use Transport::*;
        let cases: &[(&Rules, Listener, bool)] = &[
            (&base, l(Exec, Tcp, "127.0.0.1:1"), true),
            (&base, l(Exec, Tcp, "[::1]:1"), true),
            (&base, l(Exec, Tcp, "[::ffff:127.0.0.1]:1"), true),
            (&base, l(Exec, Tcp, "0.0.0.0:1"), false),
            (&base, l(Exec, Tcp, "[::]:1"), false),
            (&base, l(Exec, Tls, "0.0.0.0:1"), true),
            (&plaintext, l(Exec, Tcp, "0.0.0.0:1"), true),
            (&no_auth, l(Exec, Tls, "0.0.0.0:1"), false),
            (&no_auth, l(Exec, Tls, "127.0.0.1:1"), true),
            (&both, l(Exec, Tcp, "0.0.0.0:1"), false),
            (&base, l(ExecLegacy, Tcp, "0.0.0.0:1"), false),
            (&plaintext, l(ExecLegacy, Tcp, "[::]:1"), false),
            (&base, l(ExecLegacy, Tcp, "127.0.0.2:1"), true),
            (&base, l(ExecLegacy, Tls, "127.0.0.1:1"), false),
            (&base, l(Echo, Tls, "127.0.0.1:1"), false),
            (&base, l(Echo, Udp, "0.0.0.0:1"), true),
            (&base, l(Time, Tcp, "127.0.0.1:1"), false),
            (&base, l(Metrics, Udp, "127.0.0.1:1"), false),
            (&base, l(Metrics, Tcp, "0.0.0.0:1"), true),
        ];
        for (cfg, listener, ok) in cases {
            assert_eq!(
                check_one(listener, **cfg).is_ok(),
                *ok,
                "{listener:?} {cfg:?}"
            );
        }
    }

    #[test]
    fn root_jobs_only_where_only_root_can_reach_them() {
        use crate::secrets::TokenSource;
        let l = |service, addr: &str| Listener {
            service,
            transport: Transport::Tcp,
            addr: addr.parse().unwrap(),
        };
        let auth = Rules {
            no_auth: false,
            allow_plaintext: true,
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Owned by whoever runs the tests: root's only when that is root.
        let roots = nix::unistd::Uid::effective().is_root();
        let token = TokenSource::File(file);
        let lo = [
            l(Service::Exec, "127.0.0.1:1"),
            l(Service::Echo, "0.0.0.0:2"),
        ];
        assert_eq!(
            root_jobs_without_asking(&lo, auth, Some(&token)).is_some(),
            roots
        );
        let off = [
            l(Service::Exec, "127.0.0.1:1"),
            l(Service::Exec, "0.0.0.0:1"),
        ];
        assert!(root_jobs_without_asking(&off, auth, Some(&token)).is_none());
        let legacy = [
            l(Service::Exec, "127.0.0.1:1"),
            l(Service::ExecLegacy, "127.0.0.1:3"),
        ];
        assert!(root_jobs_without_asking(&legacy, auth, Some(&token)).is_none());
        let no_auth = Rules {
            no_auth: true,
            ..auth
        };
        assert!(root_jobs_without_asking(&lo, no_auth, Some(&token)).is_none());
        assert!(root_jobs_without_asking(&lo, auth, Some(&TokenSource::Env)).is_none());
        assert!(root_jobs_without_asking(&lo, auth, None).is_none());
        assert!(
            root_jobs_without_asking(&[l(Service::Echo, "127.0.0.1:2")], auth, Some(&token))
                .is_none()
        );
        // A directory others may write to: they could put a token of theirs.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        assert!(root_jobs_without_asking(&lo, auth, Some(&token)).is_none());
    }

    #[test]
    fn a_token_directly_in_a_sticky_directory_is_not_roots_alone() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root to own the files");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sticky = dir.path().join("tmp");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(
            &sticky,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        let token = sticky.join("token");
        std::fs::write(&token, "x").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Anyone may create the free name there: not root's alone.
        assert!(!crate::secrets::is_roots_alone(&token));
        // A root-only directory below a sticky one is.
        let inner = sticky.join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::fs::rename(&token, inner.join("token")).unwrap();
        assert!(crate::secrets::is_roots_alone(&inner.join("token")));
    }
}
