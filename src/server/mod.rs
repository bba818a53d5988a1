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
//!
//! | module | what lives there |
//! |---|---|
//! | [`listener`] | binding, the TCP accept loop (limits, per-source checks, back-off) |
//! | [`limit`] | resizable connection and job limits |
//! | [`sources`] | per-source accounting: connections, MaxStartups handshake slots, penalties |
//! | [`reload`] | SIGHUP: the live configuration and what a reload applies |
//! | [`echo`], [`time`], [`udp`], [`ratelimit`] | the echo and time services |
//! | [`exec`] | remote execution: sessions, jobs, processes, policy, audit, keeper, reaper |
//! | [`metrics`], [`stats`] | counters and their Prometheus page |

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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::FutureExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::ServerConfig;
use crate::endpoint::Transport;
use crate::exposure;
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
    tls: Option<(Arc<rustls::ServerConfig>, crate::tls::TlsInfo)>,
    exec: Arc<ExecShared>,
    tracker: TaskTracker,
    limits: Limits,
    echo_sources: Arc<sources::Sources>,
}

impl Server {
    /// Everything a start checks short of binding and creating files: the
    /// configuration's ranges, the exposure rules on its resolved
    /// addresses, the command policy (the run-as user), the credentials
    /// (the token file and host key if they exist, `authorized_keys` and
    /// the other key files), the TLS certificate and key, where the audit
    /// trail goes.
    /// `--check-config` and SIGHUP reload run this, so what they accept is
    /// what a start accepts.
    pub async fn preflight(config: &ServerConfig) -> anyhow::Result<()> {
        Self::judge(config, crate::identity::Load::Check).await?;
        crate::auditlog::check(&config.server.audit_log)
    }

    /// [`preflight`](Self::preflight) but for the audit trail, which a
    /// reload only warns about: the trail's file (a mode logrotate got
    /// wrong, say) must not keep a revoked key or a rotated token in force.
    /// `how`: [`Load::Check`](crate::identity::Load::Check), or `Reload`
    /// (whose key listings may have been emptied).
    pub(crate) async fn judge(
        config: &ServerConfig,
        how: crate::identity::Load,
    ) -> anyhow::Result<()> {
        config.validate()?;
        exposure::resolve_and_check(config.listen_endpoints(), config.exec.exposure()).await?;
        exec::policy::Policy::from_config(&config.exec)?;
        let serves_exec = !config.exec.listen.is_empty();
        crate::identity::Credentials::load(&config.exec, serves_exec, how)?;
        if let (Some(c), Some(k)) = (&config.exec.tls_cert, &config.exec.tls_key) {
            crate::tls::server_identity(c, k)?;
        }
        Ok(())
    }

    /// Validates `config`, judges its endpoints by the exposure rules and
    /// binds every one. Fails, naming the endpoint, if any is refused or
    /// cannot be bound; nothing is served until [`run`](Server::run).
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Server> {
        config.validate()?;
        let sockets = bind_endpoints(&config, config.listen_endpoints()).await?;
        Self::assemble(config, sockets)
    }

    /// A server on sockets handed over by a service manager (systemd
    /// socket activation): each socket serves the service it is named for,
    /// and the configuration's endpoints are not bound, but for metrics
    /// configured with no socket passed for them (off by default, so a
    /// configured endpoint is meant: served, not silently dropped).
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
        // Metrics are off unless configured: one configured with no socket
        // passed for it is bound here, rather than silently not served.
        if !sockets.iter().any(|(b, _)| b.service == Service::Metrics) {
            let metrics = config
                .listen_endpoints()
                .filter(|(s, _)| *s == Service::Metrics);
            let bound = bind_endpoints(&config, metrics).await?;
            for (b, _) in &bound {
                info!(endpoint = %b.endpoint(), "metrics: no socket passed for them; bound as configured");
            }
            sockets.extend(bound);
        }
        Self::assemble(config, sockets)
    }

    /// Everything after binding, common to every way of getting sockets:
    /// the exposure rules, then credentials, TLS identity, policy.
    fn assemble(config: ServerConfig, sockets: Vec<(Bound, Socket)>) -> anyhow::Result<Server> {
        // Every service switched off (`--echo none --time none --exec
        // none`), or no socket passed: a mistake, not a server. Judged on
        // the sockets, which every way of starting has.
        if sockets.is_empty() {
            anyhow::bail!("nothing to serve: every service is switched off");
        }
        exposure::check(sockets.iter().map(|(b, _)| b), config.exec.exposure())?;
        let has = |s: Service| sockets.iter().any(|(b, _)| b.service == s);
        let credentials = crate::identity::Credentials::load(
            &config.exec,
            has(Service::Exec),
            crate::identity::Load::Start,
        )?;
        let tls = if sockets.iter().any(|(b, _)| b.transport == Transport::Tls) {
            Some(crate::tls::load_server(&config.exec)?)
        } else {
            None
        };
        let mut policy = exec::policy::Policy::from_config(&config.exec)?;
        policy.root_token = exposure::root_jobs_without_asking(
            sockets.iter().map(|(b, _)| b),
            config.exec.exposure(),
            credentials.root_rule_source(),
        );
        if (has(Service::Exec) || has(Service::ExecLegacy)) && policy.refuses_root() {
            warn!("running as root without --run-as or --allow-root: exec jobs will be refused");
        }
        let stats = Arc::new(Stats::default());
        let tracker = TaskTracker::new();
        let limits = Limits::new(&config);
        let exec = Arc::new(ExecShared::new(
            exec::Live::new(config.exec.clone(), credentials, policy),
            limits.jobs.clone(),
            stats.exec.clone(),
            tracker.clone(),
            Arc::new(sources::Sources::new(config.server.netblocks())),
        ));
        let echo_sources = Arc::new(sources::Sources::new(config.server.netblocks()));
        Ok(Server {
            live: LiveConfig::new(config),
            sockets,
            stats,
            tls,
            exec,
            tracker,
            limits,
            echo_sources,
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
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The TLS certificate in use, if any endpoint is `tls://`.
    pub fn tls_info(&self) -> Option<&crate::tls::TlsInfo> {
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

    /// What exec does with a job now (`jobs run as root`, `jobs refused:
    /// ...`), for the banner.
    pub fn exec_jobs(&self) -> String {
        self.exec.live().policy.jobs()
    }

    /// What exec authenticates with, one line each, for the banner: the
    /// token file, the host key (and its fingerprint), the keys and
    /// principals listed.
    pub fn auth_lines(&self) -> Vec<String> {
        let live = self.exec.live();
        let c = &live.credentials;
        let mut out = Vec::new();
        if let Some(mode) = c.mode {
            out.push(format!("auth  {}", mode.name()));
        }
        if let Some(source) = &c.token_source {
            let state = if c.token_created { "created" } else { "from" };
            out.push(format!("token {state} {source}"));
        }
        if let Some(k) = &c.keys {
            let state = if k.host_key_created {
                "created"
            } else {
                "from"
            };
            out.push(format!("host key {state} {}", k.host_key_path.display()));
            out.push(format!("host key fingerprint {}", k.host_fingerprint()));
            let (keys, principals, cas) = k.counts();
            out.push(format!(
                "keys  {keys} in {}; {principals} principals of {cas} CA keys",
                k.authorized_keys.display()
            ));
        }
        out
    }

    /// Serves until `shutdown` is cancelled, then gives open connections
    /// `shutdown_grace` (as configured at that moment) to finish. Returns
    /// once everything has stopped or the grace has run out (remaining
    /// tasks are aborted when the runtime ends).
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            live,
            sockets,
            stats,
            tls,
            exec,
            tracker,
            limits,
            echo_sources,
            ..
        } = self;
        if sockets
            .iter()
            .any(|(b, _)| matches!(b.service, Service::Exec | Service::ExecLegacy))
        {
            exec::become_subreaper();
        }
        let run = Running {
            cfg: live.get(),
            live: live.clone(),
            stats: stats.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            limits,
            legacy_sources: Arc::new(sources::Sources::new(live.get().server.netblocks())),
            echo_sources,
            exec,
            tls: tls.map(|(c, _)| tokio_rustls::TlsAcceptor::from(c)),
        };
        for (bound, socket) in sockets {
            let span =
                info_span!("listener", service = %bound.service, endpoint = %bound.endpoint());
            let task = match (bound.service, socket) {
                (Service::Echo, Socket::Tcp(l)) => run.echo_tcp(l).boxed(),
                (Service::Echo, Socket::Udp(s)) => run.echo_udp(s).boxed(),
                (Service::Time, Socket::Udp(s)) => run.time(s).boxed(),
                (Service::Exec, Socket::Tcp(l)) => match run.exec(l, bound.transport) {
                    Some(task) => task.boxed(),
                    None => {
                        warn!("no TLS certificate loaded; endpoint ignored");
                        continue;
                    }
                },
                (Service::ExecLegacy, Socket::Tcp(l)) => run.exec_legacy(l).boxed(),
                (Service::Metrics, Socket::Tcp(l)) => {
                    metrics::serve(l, stats.clone(), shutdown.clone()).boxed()
                }
                // `exposure` refuses these before anything is bound.
                (service, _) => {
                    warn!("{service} has no such transport; endpoint ignored");
                    continue;
                }
            };
            tracker.spawn(task.instrument(span));
        }
        tracker.close();
        shutdown.cancelled().await;
        // The grace as configured now (SIGHUP may have changed it), and
        // never shorter than what it takes to kill a job that ignores TERM
        // and tell its client: clients get every job's end.
        let now = live.get();
        let grace = now
            .server
            .shutdown_grace
            .max(now.exec.kill_grace + Duration::from_secs(1));
        info!("shutting down: no new connections; open ones get {grace:?}");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                open = stats.connections_open(),
                "shutdown grace passed; closing the remaining connections"
            );
        }
        // Job cgroups whose last tasks were still exiting at release.
        exec::cgroup::sweep();
    }
}

/// Judges `wanted` by the exposure rules and binds every endpoint:
/// `serve`'s sockets, and under socket activation those of a configured
/// service that systemd passed none for (metrics). Fails, naming the
/// endpoint, if any is refused or cannot be bound.
async fn bind_endpoints<'a>(
    config: &ServerConfig,
    wanted: impl Iterator<Item = (Service, &'a crate::endpoint::Endpoint)>,
) -> anyhow::Result<Vec<(Bound, Socket)>> {
    let mut sockets: Vec<(Bound, Socket)> = Vec::new();
    for wanted in exposure::resolve_and_check(wanted, config.exec.exposure()).await? {
        let (service, endpoint) = (wanted.service, wanted.endpoint());
        let bind = |addr| match wanted.transport {
            Transport::Tcp | Transport::Tls => bind_tcp(addr).map(Socket::Tcp),
            Transport::Udp => bind_udp(addr, config.udp.recv_buffer).map(Socket::Udp),
        };
        // `--echo HOST:0` is one service on TCP and UDP: it gets one
        // port for both, as a fixed port does, when that port is free
        // on the other transport.
        let udp = wanted.transport == Transport::Udp;
        let twin = sockets.iter().find(|(b, _)| {
            wanted.addr.port() == 0
                && b.service == service
                && b.addr.ip() == wanted.addr.ip()
                && (b.transport == Transport::Udp) != udp
        });
        let socket = match twin.map(|(b, _)| b.addr) {
            Some(twin) => bind(twin).or_else(|_| bind(wanted.addr)),
            None => bind(wanted.addr),
        }
        .with_context(|| format!("{service}: cannot bind {endpoint}"))?;
        let addr = match &socket {
            Socket::Tcp(l) => l.local_addr()?,
            Socket::Udp(s) => s.local_addr()?,
        };
        sockets.push((Bound { addr, ..wanted }, socket));
    }
    Ok(sockets)
}

/// What the services of a running server share; one method per service
/// builds the task that serves one of its sockets.
struct Running {
    /// The configuration at start, for what needs a restart to change.
    cfg: Arc<ServerConfig>,
    live: Arc<LiveConfig>,
    stats: Arc<Stats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    limits: Limits,
    echo_sources: Arc<sources::Sources>,
    /// Legacy connections count apart from native ones (see `Limits`).
    legacy_sources: Arc<sources::Sources>,
    exec: Arc<ExecShared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Running {
    fn accept_context(
        &self,
        service: &'static str,
        limit: &Arc<limit::Limit>,
        counters: &Arc<stats::TcpCounters>,
        sources: &Arc<sources::Sources>,
        per_source: Arc<dyn Fn() -> usize + Send + Sync>,
    ) -> AcceptContext {
        AcceptContext {
            service,
            limit: limit.clone(),
            counters: counters.clone(),
            shutdown: self.shutdown.clone(),
            tracker: self.tracker.clone(),
            sources: sources.clone(),
            per_source,
            turned_away: None,
        }
    }

    fn echo_tcp(&self, listener: TcpListener) -> impl Future<Output = ()> + Send + 'static {
        let live = self.live.clone();
        let ctx = self.accept_context(
            "echo",
            &self.limits.echo_connections,
            &self.stats.echo_tcp,
            &self.echo_sources,
            Arc::new(move || live.get().echo.max_connections_per_source),
        );
        let (counters, shutdown) = (self.stats.echo_tcp.clone(), self.shutdown.clone());
        let echo = Arc::new(self.cfg.echo.clone());
        accept_loop(listener, ctx, move |stream, _peer| {
            echo::serve_tcp(stream, echo.clone(), counters.clone(), shutdown.clone())
        })
    }

    fn echo_udp(&self, socket: UdpSocket) -> impl Future<Output = ()> + Send + 'static {
        let (cfg, counters, shutdown) = (
            self.cfg.clone(),
            self.stats.echo_udp.clone(),
            self.shutdown.clone(),
        );
        async move {
            let mode = cfg.echo.mode;
            udp::serve_udp(socket, &cfg.udp, counters, shutdown, |req, reply| {
                echo::udp_reply(mode, req, reply);
                false
            })
            .await
        }
    }

    fn time(&self, socket: UdpSocket) -> impl Future<Output = ()> + Send + 'static {
        let (cfg, counters, shutdown) = (
            self.cfg.clone(),
            self.stats.time_udp.clone(),
            self.shutdown.clone(),
        );
        async move {
            let (utc, cap) = (cfg.time.utc, cfg.time.reply_cap);
            udp::serve_udp(socket, &cfg.udp, counters, shutdown, |req, reply| {
                time::reply_now(req, utc, cap, reply)
            })
            .await
        }
    }

    fn exec_context(
        &self,
        service: &'static str,
        limit: &Arc<limit::Limit>,
        counters: &Arc<stats::TcpCounters>,
        sources: &Arc<sources::Sources>,
    ) -> AcceptContext {
        let shared = self.exec.clone();
        self.accept_context(
            service,
            limit,
            counters,
            sources,
            Arc::new(move || shared.live().cfg.max_connections_per_source),
        )
    }

    /// None for a `tls://` socket when no certificate was loaded.
    fn exec(
        &self,
        listener: TcpListener,
        transport: Transport,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let tls = match transport {
            Transport::Tls => Some(self.tls.clone()?),
            _ => None,
        };
        let (shared, shutdown) = (self.exec.clone(), self.shutdown.clone());
        let counters = match transport {
            Transport::Tls => &self.stats.exec_tls,
            _ => &self.stats.exec_tcp,
        };
        let limit = &self.limits.exec_connections;
        let mut ctx = self.exec_context("exec", limit, counters, &self.exec.sources);
        // A TLS client expects a ServerHello, not a frame: silence there.
        if tls.is_none() {
            ctx.turned_away = Some(exec::session::turned_away_frame);
        }
        Some(accept_loop(listener, ctx, move |stream, peer| {
            exec::session::accept(stream, peer, tls.clone(), shared.clone(), shutdown.clone())
        }))
    }

    fn exec_legacy(&self, listener: TcpListener) -> impl Future<Output = ()> + Send + 'static {
        let (shared, shutdown) = (self.exec.clone(), self.shutdown.clone());
        accept_loop(
            listener,
            self.exec_context(
                "exec-legacy",
                &self.limits.legacy_connections,
                &self.stats.exec_legacy,
                &self.legacy_sources,
            ),
            move |stream, peer| exec::legacy::serve(stream, peer, shared.clone(), shutdown.clone()),
        )
    }
}
