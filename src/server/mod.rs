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
pub mod limit;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod sources;
pub mod stats;
pub mod time;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::ServerConfig;
use crate::endpoint::Transport;
use crate::exposure;
use crate::proto::auth::{self, TokenSource};
use exec::ExecShared;
use listener::{AcceptContext, accept_loop, bind_tcp, bind_udp};
use reload::{Limits, LiveConfig};
use stats::Stats;

/// One bound endpoint: the service and the real local address.
pub use crate::exposure::Listener as Bound;
pub use crate::exposure::Service;
pub use reload::Reloader;

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A server with all its sockets bound, ready to [`run`](Server::run).
pub struct Server {
    live: Arc<LiveConfig>,
    sockets: Vec<(Bound, Socket)>,
    stats: Arc<Stats>,
    token_info: Option<TokenInfo>,
    tls: Option<(Arc<rustls::ServerConfig>, TlsInfo)>,
    exec: Arc<ExecShared>,
    tracker: TaskTracker,
    limits: Limits,
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
    /// Validates `config`, judges its endpoints by the exposure rules and
    /// binds every one. Fails, naming the endpoint, if any is refused or
    /// cannot be bound; nothing is served until [`run`](Server::run).
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Server> {
        config.validate()?;
        let mut sockets = Vec::new();
        for wanted in exposure::resolve_and_check(&config).await? {
            let (service, endpoint) = (wanted.service, wanted.endpoint());
            let socket = match wanted.transport {
                Transport::Tcp | Transport::Tls => bind_tcp(wanted.addr).map(Socket::Tcp),
                Transport::Udp => bind_udp(wanted.addr, config.udp.recv_buffer).map(Socket::Udp),
            }
            .with_context(|| format!("{service}: cannot bind {endpoint}"))?;
            let addr = match &socket {
                Socket::Tcp(l) => l.local_addr()?,
                Socket::Udp(s) => s.local_addr()?,
            };
            sockets.push((Bound { addr, ..wanted }, socket));
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
            let bound = Bound {
                service: p.service,
                transport: p.transport,
                addr,
            };
            sockets.push((bound, socket));
        }
        Self::assemble(config, sockets)
    }

    /// Everything after binding, common to every way of getting sockets:
    /// the exposure rules, then token, TLS identity, policy.
    fn assemble(config: ServerConfig, sockets: Vec<(Bound, Socket)>) -> anyhow::Result<Server> {
        exposure::check(sockets.iter().map(|(b, _)| b), &config)?;
        let has = |s: Service| sockets.iter().any(|(b, _)| b.service == s);
        let (token, token_info) = if has(Service::Exec) && !config.exec.no_auth {
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
        if (has(Service::Exec) || has(Service::ExecLegacy)) && policy.refuses_root() {
            warn!("running as root without --run-as or --allow-root: exec jobs will be refused");
        }
        let stats = Arc::new(Stats::default());
        let tracker = TaskTracker::new();
        let limits = Limits::new(&config);
        let exec = Arc::new(ExecShared::new(
            exec::Live::new(config.exec.clone(), token, policy),
            limits.jobs.clone(),
            stats.exec.clone(),
            tracker.clone(),
            Arc::new(sources::Sources::new(config.server.netblocks())),
        ));
        Ok(Server {
            live: LiveConfig::new(config),
            sockets,
            stats,
            token_info,
            tls,
            exec,
            tracker,
            limits,
        })
    }

    /// A handle that applies a new configuration to this server while it
    /// runs (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: self.live.clone(),
            exec: self.exec.clone(),
            limits: self.limits.clone(),
            listeners: self.endpoints(),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// The TLS certificate in use, if any endpoint is `tls://`.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().map(|(_, info)| info)
    }

    /// Every bound endpoint, with its real port.
    pub fn endpoints(&self) -> Vec<Bound> {
        self.sockets.iter().map(|(b, _)| *b).collect()
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

    /// The configuration as it is now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.live.get()
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
        let live = self.live;
        let cfg = live.get();
        let stats = self.stats;
        let echo_sources = Arc::new(sources::Sources::new(cfg.server.netblocks()));
        let exec_shared = self.exec;
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
                    let live = live.clone();
                    let ctx = AcceptContext {
                        service: "echo",
                        limit: self.limits.echo_connections.clone(),
                        counters: stats.echo_tcp.clone(),
                        shutdown: shutdown.clone(),
                        tracker: tracker.clone(),
                        sources: echo_sources.clone(),
                        per_source: Arc::new(move || live.get().echo.max_connections_per_source),
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
                    let shared = exec_shared.clone();
                    let ctx = AcceptContext {
                        service: if service == Service::Exec {
                            "exec"
                        } else {
                            "exec-legacy"
                        },
                        limit: self.limits.exec_connections.clone(),
                        counters: stats.exec_tcp.clone(),
                        shutdown: shutdown.clone(),
                        tracker: tracker.clone(),
                        sources: shared.sources.clone(),
                        per_source: {
                            let shared = shared.clone();
                            Arc::new(move || shared.live().cfg.max_connections_per_source)
                        },
                    };
                    if service == Service::ExecLegacy {
                        tracker.spawn(
                            accept_loop(listener, ctx, move |stream, peer| {
                                exec::legacy::serve(stream, peer, shared.clone(), shutdown.clone())
                            })
                            .instrument(span),
                        );
                        continue;
                    }
                    let tls = match bound.transport {
                        Transport::Tls => match tls_acceptor.clone() {
                            Some(a) => Some(a),
                            None => {
                                warn!("no TLS certificate loaded; endpoint ignored");
                                continue;
                            }
                        },
                        _ => None,
                    };
                    tracker.spawn(
                        accept_loop(listener, ctx, move |stream, peer| {
                            exec::session::accept(
                                stream,
                                peer,
                                tls.clone(),
                                shared.clone(),
                                shutdown.clone(),
                            )
                        })
                        .instrument(span),
                    );
                }
                (Service::Metrics, Socket::Tcp(listener)) => {
                    tracker
                        .spawn(metrics::serve(listener, stats.clone(), shutdown).instrument(span));
                }
                (_, Socket::Udp(_)) => warn!("no UDP service here; endpoint ignored"),
                (Service::Time, Socket::Tcp(_)) => {
                    // `exposure` refuses tcp:// for time.
                    warn!("time has no TCP service; endpoint ignored");
                }
            }
        }
        tracker.close();
        shutdown.cancelled().await;
        // The grace as configured now: SIGHUP may have changed it.
        let grace = live.get().server.shutdown_grace;
        info!("shutting down: no new connections; open ones get {grace:?}");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                open = stats.echo_tcp.open.get(),
                "shutdown grace passed; closing the remaining connections"
            );
        }
    }
}
