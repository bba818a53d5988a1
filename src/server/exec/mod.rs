//! Remote execution: the native `switchboard/1` service ([`session`], one
//! per connection, and [`job`], one per process) and the tutorial-compatible
//! mode ([`legacy`]).

pub mod audit;
pub mod job;
pub mod legacy;
pub mod policy;
pub mod session;

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::limit::Limit;
use super::sources::Sources;
use super::stats::ExecCounters;
use crate::config::ExecConfig;
use crate::proto::auth::Token;

/// What SIGHUP can replace while connections stay up: read once per
/// connection (the handshake) or per request (limits, policy).
pub struct Live {
    pub cfg: ExecConfig,
    /// None: authentication is off (loopback only).
    pub token: Option<Token>,
    pub policy: policy::Policy,
    /// Who the token is, for the audit log: `token:` and the first 8 hex
    /// digits of its SHA-256, or `none`.
    pub auth_id: String,
}

impl Live {
    pub fn new(cfg: ExecConfig, token: Option<Token>, policy: policy::Policy) -> Live {
        let auth_id = match &token {
            Some(t) => format!("token:{}", t.id()),
            None => "none".into(),
        };
        Live {
            cfg,
            token,
            policy,
            auth_id,
        }
    }
}

/// What every exec connection of a server shares.
pub struct ExecShared {
    live: std::sync::RwLock<Arc<Live>>,
    /// Running jobs over all connections.
    pub job_slots: Arc<Limit>,
    pub counters: Arc<ExecCounters>,
    /// Job tasks, so that shutdown can wait for them to kill and reap.
    pub tracker: TaskTracker,
    /// Per-source connection, handshake and penalty bookkeeping.
    pub sources: Arc<Sources>,
}

impl ExecShared {
    pub fn new(
        live: Live,
        job_slots: Arc<Limit>,
        counters: Arc<ExecCounters>,
        tracker: TaskTracker,
        sources: Arc<Sources>,
    ) -> Self {
        ExecShared {
            live: std::sync::RwLock::new(Arc::new(live)),
            job_slots,
            counters,
            tracker,
            sources,
        }
    }

    /// The current settings, token and policy.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces them (SIGHUP); connections keep running.
    pub fn replace(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }
}

/// Makes this process the reaper of orphaned job processes: a background
/// process whose parent (say, the job's shell) dies is re-parented to the
/// server instead of to PID 1, which in a container may never reap it. The
/// job code reaps such orphans by process group.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned job processes are left to PID 1");
    }
}
