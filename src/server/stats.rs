//! Counters the services keep: what was served, refused and dropped.
//!
//! Plain relaxed atomics: they are statistics, never used for control flow,
//! and are read by tests today and by a metrics endpoint later.

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
    /// Requests refused by the command policy.
    pub forbidden: Counter,
}

/// Every service's counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub echo_tcp: Arc<TcpCounters>,
    pub echo_udp: Arc<UdpCounters>,
    pub time_udp: Arc<UdpCounters>,
    pub exec_tcp: Arc<TcpCounters>,
    pub exec: Arc<ExecCounters>,
}
