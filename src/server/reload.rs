//! SIGHUP: applying a new configuration to a running server.
//!
//! ```text
//! new config ─ preflight (as a start: validate, exposure on the resolved
//!              endpoints, policy, TLS files) ─ exposure::check(bound
//!              sockets, new) ─ credentials (never created) ─ policy
//!      │            any failure: nothing changes, the error is returned
//!      ├─ restart-only settings (ServerConfig::restart_settings) compared
//!      │  as a whole: each one that changed is named in a warning; so is
//!      │  an audit trail that would be refused (never a failed reload)
//!      └─ everything else applied: connection and job limits resized, the
//!         live copy replaced (read per accept, connection and request)
//! ```
//!
//! Connections stay up throughout; new settings apply to new connections
//! and requests, but for a key removed, revoked or expired, or a token
//! replaced: its connections are closed and their jobs killed (each
//! session judges its identity again at the reload's signal).

use std::sync::{Arc, RwLock};

use super::exec::{self, ExecShared};
use super::limit::Limit;
use crate::config::ServerConfig;
use crate::exposure::{self, Listener, Service};

/// The configuration as it is now, for the readers that take it per
/// accept or at shutdown.
#[derive(Debug)]
pub struct LiveConfig(RwLock<Arc<ServerConfig>>);

impl LiveConfig {
    pub fn new(config: ServerConfig) -> Arc<LiveConfig> {
        Arc::new(LiveConfig(RwLock::new(Arc::new(config))))
    }

    pub fn get(&self) -> Arc<ServerConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, config: ServerConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

/// The limits that SIGHUP can resize.
#[derive(Debug, Clone)]
pub struct Limits {
    pub echo_connections: Arc<Limit>,
    pub exec_connections: Arc<Limit>,
    /// Legacy connections never authenticate, so they count apart: a
    /// flood of them cannot take the native endpoint's connections.
    pub legacy_connections: Arc<Limit>,
    pub jobs: Arc<Limit>,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Limits {
        Limits {
            echo_connections: Limit::new(config.echo.max_connections),
            exec_connections: Limit::new(config.exec.max_connections),
            legacy_connections: Limit::new(config.exec.max_connections),
            jobs: Limit::new(config.exec.max_jobs),
        }
    }

    fn apply(&self, config: &ServerConfig) {
        self.echo_connections.set_max(config.echo.max_connections);
        self.exec_connections.set_max(config.exec.max_connections);
        self.legacy_connections.set_max(config.exec.max_connections);
        self.jobs.set_max(config.exec.max_jobs);
    }
}

/// Applies a new configuration to a running server (see [`super::Server::reloader`]).
pub struct Reloader {
    pub(super) live: Arc<LiveConfig>,
    pub(super) exec: Arc<ExecShared>,
    pub(super) limits: Limits,
    /// The sockets being served: the new configuration is judged against
    /// them, since endpoints change only at a restart.
    pub(super) listeners: Vec<Listener>,
    /// Serialises reloads, so two signals in a row apply in order.
    pub(super) lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Checks `new` as a start would ([`super::Server::preflight`], the
    /// audit trail only warned about) and
    /// against the sockets being served, applies what can change live, and
    /// returns warnings about what cannot. On error nothing changes.
    pub async fn reload(&self, new: ServerConfig) -> anyhow::Result<Vec<String>> {
        let _one_at_a_time = self.lock.lock().await;
        let applied = self.apply(new).await;
        match applied {
            Err(e) if self.token_off_if_replaced() => Err(e.context(
                "the token file was changed but cannot be used: token logins are off (and \
                 connections that proved the old token closed) until a reload succeeds",
            )),
            r => r,
        }
    }

    /// After a failed reload: a token file that no longer holds the token
    /// in force was rotated (it leaked, say) into a file the reload
    /// refused (a mode others can read, a typo in the configuration
    /// beside it). Keeping the old token would fail open; the token is
    /// taken out of force instead, everything else kept. True if so.
    fn token_off_if_replaced(&self) -> bool {
        let live = self.exec.live();
        let creds = &live.credentials;
        let (Some(token), Some(crate::secrets::TokenSource::File(path))) =
            (&creds.token, &creds.token_source)
        else {
            return false;
        };
        if crate::secrets::token_file_digest(path) == Some(token.digest()) {
            return false;
        }
        let credentials = crate::identity::Credentials {
            token: None,
            ..creds.clone()
        };
        let mut policy = live.policy.clone();
        policy.root_token = None;
        self.exec
            .replace(exec::Live::new(live.cfg.clone(), credentials, policy));
        true
    }

    async fn apply(&self, new: ServerConfig) -> anyhow::Result<Vec<String>> {
        super::Server::judge(&new, crate::identity::Load::Reload).await?;
        exposure::check(&self.listeners, new.exec.exposure())?;
        let has = |s: Service| self.listeners.iter().any(|l| l.service == s);
        let credentials = crate::identity::Credentials::load(
            &new.exec,
            has(Service::Exec),
            crate::identity::Load::Reload,
        )?;
        let mut policy = exec::policy::Policy::from_config(&new.exec)?;
        policy.root_token = exposure::root_jobs_without_asking(
            &self.listeners,
            new.exec.exposure(),
            credentials.root_rule_source(),
        );
        let old = self.live.get();
        let mut warnings: Vec<String> = old
            .restart_changes(&new)
            .into_iter()
            .map(|name| format!("{name} changed: takes effect at the next restart"))
            .collect();
        if (has(Service::Exec) || has(Service::ExecLegacy)) && policy.refuses_root() {
            warnings.push(
                "running as root without run_as or allow_root: exec jobs will be refused".into(),
            );
        }
        if credentials.keys.as_ref().is_some_and(|k| k.admits_nobody()) {
            warnings.push(
                "no key or certificate can log in now: the key listings are empty or gone".into(),
            );
        }
        if let Err(e) = crate::auditlog::check(&new.server.audit_log) {
            warnings.push(format!("{e:#}; records go on to the file already open"));
        }
        self.limits.apply(&new);
        self.exec.transfer_slots.set_max(new.exec.max_transfers);
        self.exec
            .replace(exec::Live::new(new.exec.clone(), credentials, policy));
        self.live.set(new);
        Ok(warnings)
    }
}
