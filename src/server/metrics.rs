//! `--metrics ADDR`: the counters as Prometheus text (exposition format
//! 0.0.4) over a minimal HTTP/1.1 responder. [`render`] is pure; [`serve`]
//! answers `GET /metrics` (and `GET /`) and closes each connection.
//!
//! Like every other listener it is bounded: at most [`MAX_CONNECTIONS`]
//! connections at once (the rest are closed as soon as they are accepted),
//! and each gets [`EXCHANGE_TIMEOUT`] for the whole exchange, request and
//! response, so silent or non-reading peers cannot pile up descriptors.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::stats::{DURATION_BUCKETS, Stats};

/// The most of a request head read; the rest is ignored.
const MAX_REQUEST: usize = 8 * 1024;
/// Metrics connections served at once; over this, new ones are closed at
/// once. A scraper needs one; the headroom is for a few dashboards and
/// probes. Default (fixed): 64.
pub const MAX_CONNECTIONS: usize = 64;
/// The whole exchange (read the request, write the response) must be done
/// within this, or the connection is dropped. Default (fixed): 5 s.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The counters in Prometheus text format. Long by design (over 80
/// lines): one block per metric family, in exposition order, so the list
/// reads as the page it renders; splitting it would scatter the list.
pub fn render(s: &Stats) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(o, "# HELP switchboard_{name} {help}");
        let _ = writeln!(o, "# TYPE switchboard_{name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(o, "switchboard_{name} {v}");
            } else {
                let _ = writeln!(o, "switchboard_{name}{{{labels}}} {v}");
            }
        }
    };
    let (e, x) = (&s.echo_tcp, &s.exec_tcp);
    family(
        "connections_open",
        "gauge",
        "TCP connections open now.",
        &[
            ("service=\"echo\"", e.open.get()),
            ("service=\"exec\"", x.open.get()),
        ],
    );
    family(
        "connections_total",
        "counter",
        "TCP connections accepted and served.",
        &[
            ("service=\"echo\"", e.accepted.get()),
            ("service=\"exec\"", x.accepted.get()),
        ],
    );
    family(
        "connections_rejected_total",
        "counter",
        "TCP connections closed at once, by reason.",
        &[
            ("service=\"echo\",reason=\"limit\"", e.rejected.get()),
            (
                "service=\"echo\",reason=\"source\"",
                e.rejected_source.get(),
            ),
            ("service=\"exec\",reason=\"limit\"", x.rejected.get()),
            (
                "service=\"exec\",reason=\"source\"",
                x.rejected_source.get(),
            ),
            (
                "service=\"exec\",reason=\"handshakes\"",
                s.exec.rejected_handshake.get(),
            ),
        ],
    );
    family(
        "idle_closed_total",
        "counter",
        "Echo connections closed by the idle timeout.",
        &[("service=\"echo\"", e.idle_closed.get())],
    );
    let (ue, ut) = (&s.echo_udp, &s.time_udp);
    family(
        "bytes_received_total",
        "counter",
        "Bytes received from clients.",
        &[
            ("service=\"echo\",transport=\"tcp\"", e.bytes_in.get()),
            ("service=\"echo\",transport=\"udp\"", ue.bytes_in.get()),
            ("service=\"time\",transport=\"udp\"", ut.bytes_in.get()),
            ("service=\"exec\",transport=\"tcp\"", s.exec.bytes_in.get()),
        ],
    );
    family(
        "bytes_sent_total",
        "counter",
        "Bytes sent to clients (exec: job output).",
        &[
            ("service=\"echo\",transport=\"tcp\"", e.bytes_out.get()),
            ("service=\"echo\",transport=\"udp\"", ue.bytes_out.get()),
            ("service=\"time\",transport=\"udp\"", ut.bytes_out.get()),
            ("service=\"exec\",transport=\"tcp\"", s.exec.bytes_out.get()),
        ],
    );
    family(
        "udp_datagrams_received_total",
        "counter",
        "UDP datagrams received.",
        &[
            ("service=\"echo\"", ue.received.get()),
            ("service=\"time\"", ut.received.get()),
        ],
    );
    family(
        "udp_replies_total",
        "counter",
        "UDP replies sent.",
        &[
            ("service=\"echo\"", ue.replied.get()),
            ("service=\"time\"", ut.replied.get()),
        ],
    );
    family(
        "udp_dropped_total",
        "counter",
        "UDP datagrams dropped, by reason.",
        &[
            (
                "service=\"echo\",reason=\"low_port\"",
                ue.dropped_low_port.get(),
            ),
            (
                "service=\"echo\",reason=\"rate_limit\"",
                ue.dropped_rate_limited.get(),
            ),
            (
                "service=\"echo\",reason=\"send_error\"",
                ue.send_errors.get(),
            ),
            (
                "service=\"time\",reason=\"low_port\"",
                ut.dropped_low_port.get(),
            ),
            (
                "service=\"time\",reason=\"rate_limit\"",
                ut.dropped_rate_limited.get(),
            ),
            (
                "service=\"time\",reason=\"send_error\"",
                ut.send_errors.get(),
            ),
        ],
    );
    family(
        "time_error_replies_total",
        "counter",
        "Time requests answered with an error.",
        &[("", ut.error_replies.get())],
    );
    let c = &s.exec;
    family(
        "jobs_running",
        "gauge",
        "Exec jobs running now.",
        &[("", c.jobs_running.get())],
    );
    family(
        "jobs_total",
        "counter",
        "Finished exec jobs, by outcome.",
        &[
            ("outcome=\"exit_zero\"", c.jobs_exit_zero.get()),
            ("outcome=\"exit_nonzero\"", c.jobs_exit_nonzero.get()),
            ("outcome=\"signal\"", c.jobs_signaled.get()),
            ("outcome=\"timeout\"", c.jobs_timed_out.get()),
        ],
    );
    family(
        "auth_failures_total",
        "counter",
        "Failed exec authentications.",
        &[("", c.auth_failures.get())],
    );
    family(
        "jobs_forbidden_total",
        "counter",
        "Exec requests refused by the command policy.",
        &[("", c.forbidden.get())],
    );
    family(
        "log_lines_dropped_total",
        "counter",
        "Log lines lost because the log could not be written (full disk, closed or stalled pipe).",
        &[("", crate::logsink::dropped())],
    );
    family(
        "audit_records_lost_total",
        "counter",
        "Audit records lost because the trail could not be written (with server.audit_log = -, the trail shares stderr's queue and this counts the log's lost lines too).",
        &[("", crate::auditlog::lost())],
    );
    let (cumulative, sum, count) = c.job_seconds.snapshot();
    let _ = writeln!(
        o,
        "# HELP switchboard_job_duration_seconds Exec job durations."
    );
    let _ = writeln!(o, "# TYPE switchboard_job_duration_seconds histogram");
    for (bound, n) in DURATION_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
        .zip(cumulative)
    {
        let _ = writeln!(
            o,
            "switchboard_job_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let _ = writeln!(o, "switchboard_job_duration_seconds_sum {sum}");
    let _ = writeln!(o, "switchboard_job_duration_seconds_count {count}");
    o
}

/// Serves the metrics until `shutdown`.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Accepting and closing (rather than not accepting) keeps the
        // backlog from filling with connections nobody will serve.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("metrics connection limit reached; closing");
            drop(stream);
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &stats)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "metrics request failed"),
                Err(_) => debug!("metrics exchange deadline passed"),
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let ok = line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ");
    let (status, body) = if ok {
        ("200 OK", render(stats))
    } else {
        ("404 Not Found", "not found; try GET /metrics\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
