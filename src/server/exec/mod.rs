//! Remote execution: the native `switchboard/1` service ([`session`], one
//! per connection, and [`job`], one per process) and the tutorial-compatible
//! mode ([`legacy`]). Process handling that knows nothing of the protocol:
//! [`process`] (a job's process as the system sees it), [`spawn`] (its
//! start without fork, and its wait through a pidfd), [`reaper`] (orphans
//! the server adopts) and [`keeper`] (job groups die with the server).

pub mod audit;
pub mod cgroup;
pub mod detached;
pub mod job;
pub mod keeper;
pub mod legacy;
pub mod policy;
pub mod process;
pub mod pty;
pub mod reaper;
pub mod relay;
pub mod session;
pub mod spawn;
pub mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;

use super::limit::Limit;
use super::sources::Sources;
use super::stats::ExecCounters;
use crate::config::ExecConfig;
use crate::identity::Credentials;

/// What SIGHUP can replace while connections stay up: read once per
/// connection (the handshake) or per request (limits, policy, and whether
/// the connection's key still gets in).
pub struct Live {
    pub cfg: ExecConfig,
    /// Token, keys, certificates (`mode` None: authentication is off,
    /// loopback only).
    pub credentials: Credentials,
    pub policy: policy::Policy,
}

impl Live {
    pub fn new(cfg: ExecConfig, credentials: Credentials, policy: policy::Policy) -> Live {
        Live {
            cfg,
            credentials,
            policy,
        }
    }
}

/// Connections and running jobs per identity, over the whole server,
/// for `max-connections=` and `max-jobs=`.
#[derive(Debug, Default)]
pub struct PerIdentity(Mutex<HashMap<String, [usize; 2]>>);

/// One connection (`CONN`) or job (`JOB`) of an identity, given back when
/// dropped.
#[derive(Debug)]
pub struct IdentitySlot {
    of: Arc<PerIdentity>,
    name: String,
    kind: usize,
}

impl PerIdentity {
    pub const CONN: usize = 0;
    pub const JOB: usize = 1;

    /// Takes a slot of `kind` for `name`, unless it already has `max`.
    pub fn take(
        self: &Arc<Self>,
        name: &str,
        kind: usize,
        max: Option<usize>,
    ) -> Option<IdentitySlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let counts = map.entry(name.to_string()).or_default();
        let held = counts.get_mut(kind)?;
        if max.is_some_and(|m| *held >= m) {
            if *counts == [0, 0] {
                map.remove(name);
            }
            return None;
        }
        *held += 1;
        Some(IdentitySlot {
            of: self.clone(),
            name: name.to_string(),
            kind,
        })
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut map = self.of.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = map.get_mut(&self.name) {
            if let Some(held) = counts.get_mut(self.kind) {
                *held = held.saturating_sub(1);
            }
            if *counts == [0, 0] {
                map.remove(&self.name);
            }
        }
    }
}

/// What every exec connection of a server shares.
pub struct ExecShared {
    live: std::sync::RwLock<Arc<Live>>,
    /// Running jobs over all connections.
    pub job_slots: Arc<Limit>,
    /// Running transfers over all connections (`exec.max_transfers`).
    pub transfer_slots: Arc<Limit>,
    pub counters: Arc<ExecCounters>,
    /// Job tasks, so that shutdown can wait for them to kill and reap.
    pub tracker: TaskTracker,
    /// Per-source connection, handshake and penalty bookkeeping.
    pub sources: Arc<Sources>,
    pub per_identity: Arc<PerIdentity>,
    /// Relay tickets issued by `expect` (PROTOCOL.md §3.9).
    pub tickets: Arc<relay::Tickets>,
    /// Detached jobs (PROTOCOL.md §3.10).
    pub detached: Arc<detached::Registry>,
    /// Bumped by each reload: sessions then judge their identity again.
    reloaded: tokio::sync::watch::Sender<u64>,
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
            transfer_slots: Limit::new(live.cfg.max_transfers),
            live: std::sync::RwLock::new(Arc::new(live)),
            job_slots,
            counters,
            tracker,
            sources,
            per_identity: Arc::default(),
            tickets: Arc::default(),
            detached: Arc::default(),
            reloaded: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes when the live settings are replaced.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// The current settings, token and policy.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces them (SIGHUP); connections keep running, and detached
    /// jobs whose owners the new credentials no longer accept are stopped.
    pub fn replace(&self, live: Live) {
        let live = Arc::new(live);
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live.clone();
        self.detached.judge(&live);
        self.reloaded.send_modify(|n| *n += 1);
    }
}

/// Set by the `switchboard` binary: the grace the keeper gives job groups
/// between TERM and KILL.
static OWN_PROCESS: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Declares that this process is the `switchboard` server and nothing else,
/// which [`become_subreaper`] then relies on: every child it has is its to
/// reap (so the [`reaper`] may wait for any zombie child that is not a
/// job's main process), and its own executable is `switchboard` (so a
/// [`keeper`] can be started from it, killing job groups with
/// `kill_grace` if the server dies). Call before `Server::run`. A library
/// embedding the server (the tests' in-process servers) leaves this off:
/// its other children stay its own and no keeper runs; orphans are then
/// reaped only by process group.
pub fn own_process(kill_grace: std::time::Duration) {
    let _ = OWN_PROCESS.set(kill_grace);
}

/// Makes this process the reaper of orphaned job processes: a background
/// process whose parent (say, the job's shell) dies is re-parented to the
/// server instead of to PID 1, which in a container may never reap it. The
/// job code reaps such orphans by process group; in a process declared
/// with [`own_process`], the [`reaper`] also reaps those that left their
/// group, and the [`keeper`] is started. Called by `Server::run` (inside
/// the runtime) when an exec endpoint exists.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned job processes are left to PID 1");
    }
    if let Some(grace) = OWN_PROCESS.get() {
        // The keeper first: it is a child the reaper must be free to reap
        // from the start (it is not a job), and its spawn must not race
        // the reaper's waits.
        keeper::start(*grace);
        reaper::start();
        match cgroup::init() {
            Some(dir) => tracing::info!(dir = %dir.display(), "job cgroups (exec.max_processes)"),
            None => tracing::info!(
                "no writable pids cgroup: exec.max_processes falls back to RLIMIT_NPROC, which does not bind root jobs"
            ),
        }
    }
}
