//! Counters the services keep: what was served, refused and dropped.
//!
//! Plain relaxed atomics: they are statistics, never used for control flow;
//! tests read them, and `--metrics` serves them (see [`super::metrics`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing (or, for gauges, up-and-down) counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) of the job-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 8] = [0.005, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0];

/// A cumulative histogram of durations with fixed buckets (Prometheus style).
#[derive(Debug, Default)]
pub struct Histogram {
    /// One counter per bucket in [`DURATION_BUCKETS`] (non-cumulative), then +Inf.
    buckets: [Counter; 9],
    sum_micros: Counter,
    count: Counter,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.inc();
        }
        self.sum_micros
            .add(d.as_micros().min(u128::from(u64::MAX)) as u64);
        self.count.inc();
    }

    /// The count in each bucket on its own (not cumulative; the last is
    /// +Inf), the sum in seconds, and the count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        (
            self.buckets.iter().map(Counter::get).collect(),
            self.sum_micros.get() as f64 / 1e6,
            self.count.get(),
        )
    }
}

/// Counters of one TCP service, all its endpoints together.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Connections accepted and served.
    pub accepted: Counter,
    /// Connections closed at once because the connection limit was reached.
    pub rejected: Counter,
    /// Connections closed at once: the per-source limit, or an auth penalty.
    pub rejected_source: Counter,
    /// Connections open now.
    pub open: Counter,
    /// Connections closed by the idle timeout.
    pub idle_closed: Counter,
    /// Bytes received from clients.
    pub bytes_in: Counter,
    /// Bytes sent to clients.
    pub bytes_out: Counter,
}

/// Counters of one UDP service, all its sockets together.
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Datagrams received.
    pub received: Counter,
    /// Replies sent.
    pub replied: Counter,
    /// Replies that were `error: ...` datagrams.
    pub error_replies: Counter,
    /// Dropped: source port below 1024 (reflection-loop guard).
    pub dropped_low_port: Counter,
    /// Dropped: the source was over its rate limit (or the limiter was full).
    pub dropped_rate_limited: Counter,
    /// Replies the kernel refused to send.
    pub send_errors: Counter,
    /// Bytes received and sent.
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

/// Counters of the exec service.
#[derive(Debug, Default)]
pub struct ExecCounters {
    /// Handshakes refused (wrong MAC, or a frame before `auth`).
    pub auth_failures: Counter,
    /// Jobs spawned.
    pub jobs_started: Counter,
    /// Connections closed before `hello`: too many handshakes in progress.
    pub rejected_handshake: Counter,
    /// Logins refused: the identity was at its `max-connections=`.
    pub rejected_identity: Counter,
    /// Requests refused by the command policy.
    pub forbidden: Counter,
    /// Jobs running now.
    pub jobs_running: Counter,
    /// Finished jobs by outcome.
    pub jobs_exit_zero: Counter,
    pub jobs_exit_nonzero: Counter,
    pub jobs_signaled: Counter,
    pub jobs_timed_out: Counter,
    /// Job durations.
    pub job_seconds: Histogram,
    /// Job bytes on native connections over plain TCP, and over TLS.
    pub tcp: JobBytes,
    pub tls: JobBytes,
    /// Jobs started and failed logins by identity (`key`'s name, a
    /// principal, `token:…`, `none`, `unknown` for a key or signature
    /// that proved nothing). Bounded: names come from the server's own
    /// files, never from a peer.
    by_identity: std::sync::Mutex<std::collections::BTreeMap<String, IdentityCounts>>,
}

/// What [`ExecCounters`] counts per identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityCounts {
    pub jobs_started: u64,
    pub auth_failures: u64,
}

/// The bytes of native exec jobs on connections of one transport: frame
/// bodies only (no frame headers, handshakes or TLS records).
#[derive(Debug, Default)]
pub struct JobBytes {
    /// Stdin bytes received for jobs (`stdin` frame bodies).
    pub stdin: Counter,
    /// Job output sent (`stdout` and `stderr` frame bodies), counted when
    /// each job ends.
    pub output: Counter,
}

impl ExecCounters {
    /// A job started for `identity`.
    pub fn identity_job(&self, identity: &str) {
        self.per_identity(identity, |c| c.jobs_started += 1);
    }

    /// A failed login that named `identity`.
    pub fn identity_auth_failure(&self, identity: &str) {
        self.per_identity(identity, |c| c.auth_failures += 1);
    }

    fn per_identity(&self, identity: &str, f: impl FnOnce(&mut IdentityCounts)) {
        let mut map = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(identity) {
            Some(c) => f(c),
            None => f(map.entry(identity.to_string()).or_default()),
        }
    }

    /// Every identity's counts, by name.
    pub fn identities(&self) -> Vec<(String, IdentityCounts)> {
        let map = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The byte counters of connections over TLS (`tls`) or plain TCP.
    pub fn bytes(&self, tls: bool) -> &JobBytes {
        if tls { &self.tls } else { &self.tcp }
    }

    /// A finished job: outcome, duration, output bytes (on a connection
    /// over TLS or not); one fewer running.
    pub fn record_job(
        &self,
        status: &crate::proto::ExitStatus,
        output_bytes: u64,
        elapsed: std::time::Duration,
        tls: bool,
    ) {
        use crate::proto::ExitStatus;
        self.jobs_running.dec();
        match status {
            ExitStatus::Code(0) => self.jobs_exit_zero.inc(),
            ExitStatus::Code(_) => self.jobs_exit_nonzero.inc(),
            ExitStatus::Signal {
                timed_out: true, ..
            } => self.jobs_timed_out.inc(),
            ExitStatus::Signal { .. } => self.jobs_signaled.inc(),
        }
        self.job_seconds.observe(elapsed);
        self.bytes(tls).output.add(output_bytes);
    }
}

/// Every service's counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub echo_tcp: Arc<TcpCounters>,
    pub echo_udp: Arc<UdpCounters>,
    pub time_udp: Arc<UdpCounters>,
    /// Native exec connections over plain TCP, over TLS, and the
    /// tutorial-compatible protocol's.
    pub exec_tcp: Arc<TcpCounters>,
    pub exec_tls: Arc<TcpCounters>,
    pub exec_legacy: Arc<TcpCounters>,
    pub exec: Arc<ExecCounters>,
}

impl Stats {
    /// Connections of every TCP service open now.
    pub fn connections_open(&self) -> u64 {
        [
            &self.echo_tcp,
            &self.exec_tcp,
            &self.exec_tls,
            &self.exec_legacy,
        ]
        .iter()
        .map(|c| c.open.get())
        .sum()
    }
}
