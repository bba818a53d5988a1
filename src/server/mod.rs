//! The server: binds every endpoint of the configuration, runs each service
//! on its sockets, and shuts down gracefully.
//!
//! ```text
//! Server::bind(config) ── binds all endpoints (port 0 gets a real port)
//!        │                 └─ endpoints(): what was bound, for banners and tests
//!        └─ run(shutdown) ── one task per listener / UDP socket, one per connection
//!                            shutdown cancelled ─> stop accepting, connections
//!                            finish their current write and close; after
//!                            `shutdown_grace` the rest are dropped
//! ```
//!
//! Services take an already-bound socket and a cancellation token, so tests
//! bind `127.0.0.1:0` and read the real port back (mini-redis's habit).

pub mod echo;
pub mod exec;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod sources;
pub mod stats;
pub mod time;
pub mod udp;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::ServerConfig;
use crate::endpoint::{Endpoint, Transport};
use crate::proto::auth::{self, TokenSource};
use exec::ExecShared;
use listener::{AcceptContext, accept_loop, bind_tcp, bind_udp};
use stats::Stats;

/// The services a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One bound endpoint: the service and the real local address.
#[derive(Debug, Clone)]
pub struct Bound {
    pub service: Service,
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Bound {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_addr(self.transport, self.addr)
    }
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A server with all its sockets bound, ready to [`run`](Server::run).
pub struct Server {
    config: Arc<ServerConfig>,
    sockets: Vec<(Bound, Socket)>,
    stats: Arc<Stats>,
    token_info: Option<TokenInfo>,
    tls: Option<(Arc<rustls::ServerConfig>, TlsInfo)>,
    exec: Arc<ExecShared>,
    tracker: TaskTracker,
    limits: Limits,
    has_exec: bool,
}

/// The semaphores behind the limits that SIGHUP can resize.
#[derive(Clone)]
struct Limits {
    echo_connections: Arc<Semaphore>,
    exec_connections: Arc<Semaphore>,
    jobs: Arc<Semaphore>,
}

/// Applies a new configuration to a running server (see [`Server::reloader`]).
///
/// Reloaded: the exec token (a rotated token file), the command policy,
/// every exec limit and deadline read per connection or per request, and
/// the sizes of the connection and job limits. Not reloaded, with a
/// warning: endpoints, TLS certificates, echo/time/UDP settings.
/// Connections stay up throughout; new settings apply to new connections
/// and requests.
pub struct Reloader {
    current: std::sync::Mutex<ServerConfig>,
    exec: Arc<ExecShared>,
    limits: Limits,
    has_exec: bool,
    native_exec: bool,
}

impl Reloader {
    /// Validates `new`, applies what can change live, and returns warnings
    /// about what cannot. On error nothing changes.
    pub fn reload(&self, new: ServerConfig) -> anyhow::Result<Vec<String>> {
        new.validate()?;
        let token = if self.native_exec && !new.exec.no_auth {
            Some(auth::server_token(new.exec.token_file.as_deref())?.0)
        } else {
            None
        };
        let policy = exec::policy::Policy::from_config(&new.exec)?;
        let mut old = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut warnings = Vec::new();
        let fixed = [
            ("echo.listen", old.echo.listen != new.echo.listen),
            ("time.listen", old.time.listen != new.time.listen),
            (
                "exec.listen",
                old.exec.listen != new.exec.listen
                    || old.exec.legacy_listen != new.exec.legacy_listen,
            ),
            ("server.metrics", old.server.metrics != new.server.metrics),
            (
                "exec TLS certificate",
                old.exec.tls_cert != new.exec.tls_cert || old.exec.tls_key != new.exec.tls_key,
            ),
            (
                "echo settings",
                old.echo.mode != new.echo.mode
                    || old.echo.idle_timeout != new.echo.idle_timeout
                    || old.echo.buffer_size != new.echo.buffer_size,
            ),
            (
                "time/udp settings",
                old.time.utc != new.time.utc
                    || old.time.reply_cap != new.time.reply_cap
                    || old.udp.rate_limit != new.udp.rate_limit,
            ),
        ];
        for (what, changed) in fixed {
            if changed {
                warnings.push(format!("{what} changed: takes effect at the next restart"));
            }
        }
        resize(
            &self.limits.echo_connections,
            old.echo.max_connections,
            new.echo.max_connections,
        );
        resize(
            &self.limits.exec_connections,
            old.exec.max_connections,
            new.exec.max_connections,
        );
        resize(&self.limits.jobs, old.exec.max_jobs, new.exec.max_jobs);
        if self.has_exec && policy.refuses_root() {
            warnings.push(
                "running as root without run_as or allow_root: exec jobs will be refused".into(),
            );
        }
        self.exec
            .replace(exec::Live::new(new.exec.clone(), token, policy));
        *old = new;
        Ok(warnings)
    }
}

/// Grows or shrinks a limit's semaphore. Shrinking takes back only free
/// permits; the rest go as connections or jobs end.
fn resize(sem: &Semaphore, old: usize, new: usize) {
    if new > old {
        sem.add_permits(new - old);
    } else if old > new {
        let mut left = old - new;
        while left > 0 {
            let taken = sem.forget_permits(left);
            if taken == 0 {
                break;
            }
            left -= taken;
        }
    }
}

/// The exec TLS certificate, for the banner.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// SHA-256 of the certificate, lower-case hex.
    pub fingerprint: String,
    pub cert: std::path::PathBuf,
    /// The self-signed certificate was created by this start.
    pub created: bool,
}

/// Loads the operator's certificate, or creates/keeps the self-signed one
/// beside the token file.
fn load_tls(config: &ServerConfig) -> anyhow::Result<(Arc<rustls::ServerConfig>, TlsInfo)> {
    let x = &config.exec;
    let (cert, key, created) = match (&x.tls_cert, &x.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let dir = match &x.token_file {
                Some(t) => t
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default(),
                None => auth::default_token_path()
                    .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
                    .context("no config directory for the self-signed certificate")?,
            };
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                names.push(h.trim().to_string());
            }
            for e in x.listen.iter().filter(|e| e.transport == Transport::Tls) {
                if !names.contains(&e.host) && e.host != "0.0.0.0" && e.host != "::" {
                    names.push(e.host.clone());
                }
            }
            crate::tls::self_signed(&dir, &names)?
        }
    };
    let id = crate::tls::server_identity(&cert, &key)?;
    Ok((
        id.config,
        TlsInfo {
            fingerprint: id.fingerprint,
            cert,
            created,
        },
    ))
}

/// Where the exec token came from, for the banner.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub source: TokenSource,
    /// The file was created by this start.
    pub created: bool,
}

impl Server {
    /// Validates `config` and binds every endpoint. Fails, naming the
    /// endpoint, if any cannot be bound; nothing is served until [`run`](Server::run).
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Server> {
        config.validate()?;
        let mut sockets = Vec::new();
        let wanted = config
            .echo
            .listen
            .iter()
            .map(|e| (Service::Echo, e))
            .chain(config.time.listen.iter().map(|e| (Service::Time, e)))
            .chain(config.exec.listen.iter().map(|e| (Service::Exec, e)))
            .chain(
                config
                    .exec
                    .legacy_listen
                    .iter()
                    .map(|e| (Service::ExecLegacy, e)),
            )
            .chain(config.server.metrics.iter().map(|e| (Service::Metrics, e)));
        for (service, endpoint) in wanted {
            let addrs = endpoint
                .resolve()
                .await
                .with_context(|| format!("{service}: cannot resolve {endpoint}"))?;
            for addr in addrs {
                let unauthenticated = service == Service::ExecLegacy
                    || (service == Service::Exec && config.exec.no_auth);
                if unauthenticated && !addr.ip().is_loopback() {
                    anyhow::bail!(
                        "{service}: {endpoint} resolves to {addr}, which is not a loopback address; \
                         unauthenticated exec is allowed on loopback only"
                    );
                }
                if service == Service::Exec
                    && endpoint.transport == Transport::Tcp
                    && !addr.ip().is_loopback()
                    && !config.exec.allow_plaintext
                {
                    anyhow::bail!(
                        "exec: {endpoint} ({addr}) is not a loopback address: commands and their output \
                         would cross the network in the clear; use tls://, or --allow-plaintext"
                    );
                }
                let socket = match endpoint.transport {
                    Transport::Tcp | Transport::Tls => bind_tcp(addr).map(Socket::Tcp),
                    Transport::Udp => bind_udp(addr, config.udp.recv_buffer).map(Socket::Udp),
                }
                .with_context(|| format!("{service}: cannot bind {endpoint} ({addr})"))?;
                let addr = match &socket {
                    Socket::Tcp(l) => l.local_addr()?,
                    Socket::Udp(s) => s.local_addr()?,
                };
                let bound = Bound {
                    service,
                    transport: endpoint.transport,
                    addr,
                };
                sockets.push((bound, socket));
            }
        }
        Self::assemble(config, sockets)
    }

    /// A server on sockets handed over by a service manager (systemd
    /// socket activation): the configuration's endpoints are not bound;
    /// each socket serves the service it is named for.
    pub async fn from_activation(
        config: ServerConfig,
        passed: Vec<crate::activation::Passed>,
    ) -> anyhow::Result<Server> {
        config.validate()?;
        let mut sockets = Vec::new();
        for p in passed {
            let (socket, addr) = match p.socket {
                crate::activation::PassedSocket::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let l = TcpListener::from_std(l)?;
                    let addr = l.local_addr()?;
                    (Socket::Tcp(l), addr)
                }
                crate::activation::PassedSocket::Udp(u) => {
                    u.set_nonblocking(true)?;
                    let u = UdpSocket::from_std(u)?;
                    let addr = u.local_addr()?;
                    (Socket::Udp(u), addr)
                }
            };
            let unauthenticated = p.service == Service::ExecLegacy
                || (p.service == Service::Exec && config.exec.no_auth);
            if unauthenticated && !addr.ip().is_loopback() {
                anyhow::bail!(
                    "{}: passed socket {addr} is not on a loopback address",
                    p.service
                );
            }
            sockets.push((
                Bound {
                    service: p.service,
                    transport: p.transport,
                    addr,
                },
                socket,
            ));
        }
        Self::assemble(config, sockets)
    }

    /// Everything after binding: token, TLS identity, policy.
    fn assemble(config: ServerConfig, sockets: Vec<(Bound, Socket)>) -> anyhow::Result<Server> {
        let has_exec = sockets
            .iter()
            .any(|(b, _)| matches!(b.service, Service::Exec | Service::ExecLegacy));
        let native = sockets.iter().any(|(b, _)| b.service == Service::Exec);
        let (token, token_info) = if native && !config.exec.no_auth {
            let (token, source, created) = auth::server_token(config.exec.token_file.as_deref())?;
            (Some(token), Some(TokenInfo { source, created }))
        } else {
            (None, None)
        };
        let tls = if sockets.iter().any(|(b, _)| b.transport == Transport::Tls) {
            Some(load_tls(&config)?)
        } else {
            None
        };
        let policy = exec::policy::Policy::from_config(&config.exec)?;
        if has_exec && policy.refuses_root() {
            warn!("running as root without --run-as or --allow-root: exec jobs will be refused");
        }
        let stats = Arc::new(Stats::default());
        let tracker = TaskTracker::new();
        let limits = Limits {
            echo_connections: Arc::new(Semaphore::new(config.echo.max_connections)),
            exec_connections: Arc::new(Semaphore::new(config.exec.max_connections)),
            jobs: Arc::new(Semaphore::new(config.exec.max_jobs)),
        };
        let exec = Arc::new(ExecShared::new(
            exec::Live::new(config.exec.clone(), token, policy),
            limits.jobs.clone(),
            stats.exec.clone(),
            tracker.clone(),
            Arc::new(sources::Sources::default()),
        ));
        Ok(Server {
            config: Arc::new(config),
            sockets,
            stats,
            token_info,
            tls,
            exec,
            tracker,
            limits,
            has_exec,
        })
    }

    /// A handle that applies a new configuration to this server while it
    /// runs (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            current: std::sync::Mutex::new((*self.config).clone()),
            exec: self.exec.clone(),
            limits: self.limits.clone(),
            has_exec: self.has_exec,
            native_exec: self.sockets.iter().any(|(b, _)| b.service == Service::Exec),
        }
    }

    /// The TLS certificate in use, if any endpoint is `tls://`.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().map(|(_, info)| info)
    }

    /// Every bound endpoint, with its real port.
    pub fn endpoints(&self) -> Vec<Bound> {
        self.sockets.iter().map(|(b, _)| b.clone()).collect()
    }

    /// The first bound address of `service` over `transport`, if any.
    pub fn addr(&self, service: Service, transport: Transport) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .map(|(b, _)| b)
            .find(|b| b.service == service && b.transport == transport)
            .map(|b| b.addr)
    }

    /// The services' counters; they stay readable after `run` ends.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Where the exec token is, if exec runs with authentication.
    pub fn token_info(&self) -> Option<&TokenInfo> {
        self.token_info.as_ref()
    }

    /// Serves until `shutdown` is cancelled, then gives open connections
    /// `shutdown_grace` to finish. Returns once everything has stopped or
    /// the grace has run out (remaining tasks are aborted when the runtime
    /// ends).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = self.tracker;
        let cfg = self.config;
        let stats = self.stats;
        let echo_limit = self.limits.echo_connections.clone();
        let exec_limit = self.limits.exec_connections.clone();
        let echo_sources = Arc::new(sources::Sources::default());
        let exec_shared = self.exec;
        let exec_sources = exec_shared.sources.clone();
        let tls_acceptor = self
            .tls
            .as_ref()
            .map(|(c, _)| tokio_rustls::TlsAcceptor::from(c.clone()));
        if self
            .sockets
            .iter()
            .any(|(b, _)| matches!(b.service, Service::Exec | Service::ExecLegacy))
        {
            exec::become_subreaper();
        }
        for (bound, socket) in self.sockets {
            let span =
                info_span!("listener", service = %bound.service, endpoint = %bound.endpoint());
            let shutdown = shutdown.clone();
            let cfg = cfg.clone();
            match (bound.service, socket) {
                (Service::Echo, Socket::Tcp(listener)) => {
                    let ctx = AcceptContext {
                        service: "echo",
                        limit: echo_limit.clone(),
                        counters: stats.echo_tcp.clone(),
                        shutdown: shutdown.clone(),
                        tracker: tracker.clone(),
                        sources: echo_sources.clone(),
                        per_source: cfg.echo.max_connections_per_source,
                    };
                    let counters = stats.echo_tcp.clone();
                    let echo = Arc::new(cfg.echo.clone());
                    tracker.spawn(
                        accept_loop(listener, ctx, move |stream, _peer| {
                            echo::serve_tcp(
                                stream,
                                echo.clone(),
                                counters.clone(),
                                shutdown.clone(),
                            )
                        })
                        .instrument(span),
                    );
                }
                (Service::Echo, Socket::Udp(socket)) => {
                    let counters = stats.echo_udp.clone();
                    let mode = cfg.echo.mode;
                    tracker.spawn(
                        async move {
                            udp::serve_udp(socket, &cfg.udp, counters, shutdown, |req, reply| {
                                echo::udp_reply(mode, req, reply);
                                false
                            })
                            .await
                        }
                        .instrument(span),
                    );
                }
                (Service::Time, Socket::Udp(socket)) => {
                    let counters = stats.time_udp.clone();
                    tracker.spawn(
                        async move {
                            let (utc, cap) = (cfg.time.utc, cfg.time.reply_cap);
                            udp::serve_udp(socket, &cfg.udp, counters, shutdown, |req, reply| {
                                time::reply_now(req, utc, cap, reply)
                            })
                            .await
                        }
                        .instrument(span),
                    );
                }
                (service @ (Service::Exec | Service::ExecLegacy), Socket::Tcp(listener)) => {
                    let ctx = AcceptContext {
                        service: if service == Service::Exec {
                            "exec"
                        } else {
                            "exec-legacy"
                        },
                        limit: exec_limit.clone(),
                        counters: stats.exec_tcp.clone(),
                        shutdown: shutdown.clone(),
                        tracker: tracker.clone(),
                        sources: exec_sources.clone(),
                        per_source: cfg.exec.max_connections_per_source,
                    };
                    let shared = exec_shared.clone();
                    if bound.transport == Transport::Tls {
                        let Some(acceptor) = tls_acceptor.clone() else {
                            warn!("no TLS certificate loaded; endpoint ignored");
                            continue;
                        };
                        tracker.spawn(
                            accept_loop(listener, ctx, move |stream, peer| {
                                let (acceptor, shared, shutdown) =
                                    (acceptor.clone(), shared.clone(), shutdown.clone());
                                async move {
                                    // The TLS handshake has its own deadline (the exec
                                    // handshake's), so silent clients cannot hold slots.
                                    let deadline = shared.live().cfg.handshake_timeout;
                                    let tls = match tokio::time::timeout(
                                        deadline,
                                        acceptor.accept(stream),
                                    )
                                    .await
                                    {
                                        Ok(Ok(s)) => s,
                                        Ok(Err(e)) => {
                                            tracing::debug!(error = %e, "TLS handshake failed");
                                            return Ok(());
                                        }
                                        Err(_) => {
                                            tracing::debug!("TLS handshake deadline passed");
                                            return Ok(());
                                        }
                                    };
                                    exec::session::serve(tls, peer, shared, shutdown).await
                                }
                            })
                            .instrument(span),
                        );
                    } else if service == Service::Exec {
                        tracker.spawn(
                            accept_loop(listener, ctx, move |stream, peer| {
                                exec::session::serve(stream, peer, shared.clone(), shutdown.clone())
                            })
                            .instrument(span),
                        );
                    } else {
                        tracker.spawn(
                            accept_loop(listener, ctx, move |stream, peer| {
                                exec::legacy::serve(stream, peer, shared.clone(), shutdown.clone())
                            })
                            .instrument(span),
                        );
                    }
                }
                (Service::Metrics, Socket::Tcp(listener)) => {
                    tracker
                        .spawn(metrics::serve(listener, stats.clone(), shutdown).instrument(span));
                }
                (_, Socket::Udp(_)) => warn!("no UDP service here; endpoint ignored"),
                (Service::Time, Socket::Tcp(_)) => {
                    // `ServerConfig::validate` refuses tcp:// for time.
                    warn!("time has no TCP service; endpoint ignored");
                }
            }
        }
        tracker.close();
        shutdown.cancelled().await;
        info!(
            "shutting down: no new connections; open ones get {:?}",
            cfg.server.shutdown_grace
        );
        if tokio::time::timeout(cfg.server.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = stats.echo_tcp.open.get(),
                "shutdown grace passed; closing the remaining connections"
            );
        }
    }
}
