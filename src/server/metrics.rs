//! `--metrics ADDR`: the counters, rendered by the prometheus-client crate
//! (label escaping, type suffixes, OpenMetrics), over a small HTTP/1.1
//! responder.
//!
//! ```text
//! GET|HEAD /metrics[?query]  200, Prometheus text 0.0.4, or OpenMetrics 1.0
//!                            when Accept names application/openmetrics-text
//! GET|HEAD /                 the same (probes that scrape the root)
//! other paths                404        other methods   405, Allow: GET, HEAD
//! keep-alive                 HTTP/1.1's default; `Connection: close` ends it
//! ```
//!
//! The query string is ignored: Prometheus sends its scrape `params` there.
//! Like every other listener it is bounded: at most [`MAX_CONNECTIONS`]
//! connections at once (the rest are closed as soon as they are accepted),
//! each request must arrive within [`EXCHANGE_TIMEOUT`] and be answered
//! within it, and a kept-alive connection idle for [`KEEP_ALIVE`] is
//! closed, so silent or non-reading peers cannot pile up descriptors.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::stats::{DURATION_BUCKETS, Stats};

/// The most of a request head read; a longer head gets 431.
const MAX_REQUEST: usize = 8 * 1024;
/// Metrics connections served at once; over this, new ones are closed at
/// once. A scraper needs one; the headroom is for a few dashboards and
/// probes. Default (fixed): 64.
pub const MAX_CONNECTIONS: usize = 64;
/// Each request must arrive, and its response be written, within this.
/// Default (fixed): 5 s.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive connection with no new request for this long is closed
/// (Prometheus scrapes every 15 s to 1 min and reconnects cheaply).
/// Default (fixed): 30 s.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The page's registry: the services' counters under `switchboard_`, the
/// process's own under `process_`, as every Prometheus client names them.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(stats: Arc<Stats>) -> Metrics {
        let mut registry = Registry::default();
        registry
            .sub_registry_with_prefix("switchboard")
            .register_collector(Box::new(Services(stats)));
        registry.register_collector(Box::new(Process));
        Metrics { registry }
    }

    /// The page, in OpenMetrics text or in Prometheus text 0.0.4.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut page = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut page, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut page, &self.registry)
        };
        // Writing to a String fails only if an encoder reports an error
        // of its own; what was written is still the best answer.
        if let Err(e) = encoded {
            debug!(error = %e, "metrics encoding stopped early");
        }
        page
    }
}

/// The services' counters, read at each scrape.
#[derive(Debug)]
struct Services(Arc<Stats>);

/// One sample: its labels and value.
type Sample<'a> = (&'a [(&'a str, &'a str)], u64);

/// Writes one family of samples of `kind` (a counter or a gauge).
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[Sample<'_>],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            // A family without labels has its one sample.
            return value(kind, *v, m);
        }
        value(kind, *v, m.encode_family(labels)?)?;
    }
    Ok(())
}

fn value(kind: MetricType, v: u64, m: MetricEncoder) -> std::fmt::Result {
    match kind {
        MetricType::Gauge => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m),
        _ => ConstCounter::new(v).encode(m),
    }
}

impl Collector for Services {
    /// One block per family, in page order. Long by design (over 80
    /// lines): the list reads as the page it renders.
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        let (echo, tcp, tls, legacy) = (&s.echo_tcp, &s.exec_tcp, &s.exec_tls, &s.exec_legacy);
        let conns = |name, help, kind, get: fn(&super::stats::TcpCounters) -> u64| {
            let samples: [Sample<'_>; 4] = [
                (&[("service", "echo"), ("transport", "tcp")], get(echo)),
                (&[("service", "exec"), ("transport", "tcp")], get(tcp)),
                (&[("service", "exec"), ("transport", "tls")], get(tls)),
                (
                    &[("service", "exec_legacy"), ("transport", "tcp")],
                    get(legacy),
                ),
            ];
            (name, help, kind, samples)
        };
        for (name, help, kind, samples) in [
            conns(
                "connections_open",
                "TCP connections open now.",
                Gauge,
                |c| c.open.get(),
            ),
            conns(
                "connections",
                "TCP connections accepted and served.",
                Counter,
                |c| c.accepted.get(),
            ),
        ] {
            family(&mut e, name, help, kind, &samples)?;
        }
        family(
            &mut e,
            "connections_rejected",
            "TCP connections closed at once, by reason: the connection limit, the \
             per-source limit or an auth penalty, too many handshakes in progress, \
             an identity at its max-connections= (after its login).",
            Counter,
            &[
                (
                    &[("service", "echo"), ("reason", "limit")],
                    echo.rejected.get(),
                ),
                (
                    &[("service", "echo"), ("reason", "source")],
                    echo.rejected_source.get(),
                ),
                (
                    &[("service", "exec"), ("reason", "limit")],
                    tcp.rejected.get() + tls.rejected.get(),
                ),
                (
                    &[("service", "exec"), ("reason", "source")],
                    tcp.rejected_source.get() + tls.rejected_source.get(),
                ),
                (
                    &[("service", "exec"), ("reason", "handshakes")],
                    s.exec.rejected_handshake.get(),
                ),
                (
                    &[("service", "exec"), ("reason", "identity")],
                    s.exec.rejected_identity.get(),
                ),
                (
                    &[("service", "exec_legacy"), ("reason", "limit")],
                    legacy.rejected.get(),
                ),
                (
                    &[("service", "exec_legacy"), ("reason", "source")],
                    legacy.rejected_source.get(),
                ),
            ],
        )?;
        family(
            &mut e,
            "idle_closed",
            "Echo connections closed by the idle timeout.",
            Counter,
            &[(&[("service", "echo")], echo.idle_closed.get())],
        )?;
        let (ue, ut, x) = (&s.echo_udp, &s.time_udp, &s.exec);
        family(
            &mut e,
            "bytes_received",
            "Payload bytes received: echo's TCP stream and UDP datagrams, time's request \
             datagrams, and native exec's job stdin (stdin frame bodies; no frame headers, \
             handshakes or TLS records).",
            Counter,
            &[
                (
                    &[("service", "echo"), ("transport", "tcp")],
                    echo.bytes_in.get(),
                ),
                (
                    &[("service", "echo"), ("transport", "udp")],
                    ue.bytes_in.get(),
                ),
                (
                    &[("service", "time"), ("transport", "udp")],
                    ut.bytes_in.get(),
                ),
                (
                    &[("service", "exec"), ("transport", "tcp")],
                    x.tcp.stdin.get(),
                ),
                (
                    &[("service", "exec"), ("transport", "tls")],
                    x.tls.stdin.get(),
                ),
            ],
        )?;
        family(
            &mut e,
            "bytes_sent",
            "Payload bytes sent: echo's replies, time's reply datagrams, and native exec's \
             job output (stdout and stderr frame bodies, counted as each job ends; no frame \
             headers or TLS records).",
            Counter,
            &[
                (
                    &[("service", "echo"), ("transport", "tcp")],
                    echo.bytes_out.get(),
                ),
                (
                    &[("service", "echo"), ("transport", "udp")],
                    ue.bytes_out.get(),
                ),
                (
                    &[("service", "time"), ("transport", "udp")],
                    ut.bytes_out.get(),
                ),
                (
                    &[("service", "exec"), ("transport", "tcp")],
                    x.tcp.output.get(),
                ),
                (
                    &[("service", "exec"), ("transport", "tls")],
                    x.tls.output.get(),
                ),
            ],
        )?;
        family(
            &mut e,
            "udp_datagrams_received",
            "UDP datagrams received.",
            Counter,
            &[
                (&[("service", "echo")], ue.received.get()),
                (&[("service", "time")], ut.received.get()),
            ],
        )?;
        family(
            &mut e,
            "udp_replies",
            "UDP replies sent.",
            Counter,
            &[
                (&[("service", "echo")], ue.replied.get()),
                (&[("service", "time")], ut.replied.get()),
            ],
        )?;
        family(
            &mut e,
            "udp_dropped",
            "UDP datagrams dropped, by reason: a source port below 1024 (reflection \
             guard), the per-source rate limit, a reply the kernel refused.",
            Counter,
            &[
                (
                    &[("service", "echo"), ("reason", "low_port")],
                    ue.dropped_low_port.get(),
                ),
                (
                    &[("service", "echo"), ("reason", "rate_limit")],
                    ue.dropped_rate_limited.get(),
                ),
                (
                    &[("service", "echo"), ("reason", "send_error")],
                    ue.send_errors.get(),
                ),
                (
                    &[("service", "time"), ("reason", "low_port")],
                    ut.dropped_low_port.get(),
                ),
                (
                    &[("service", "time"), ("reason", "rate_limit")],
                    ut.dropped_rate_limited.get(),
                ),
                (
                    &[("service", "time"), ("reason", "send_error")],
                    ut.send_errors.get(),
                ),
            ],
        )?;
        family(
            &mut e,
            "time_error_replies",
            "Time requests answered with an error.",
            Counter,
            &[(&[], ut.error_replies.get())],
        )?;
        family(
            &mut e,
            "jobs_running",
            "Exec jobs running now.",
            Gauge,
            &[(&[], x.jobs_running.get())],
        )?;
        family(
            &mut e,
            "jobs",
            "Finished native exec jobs, by outcome.",
            Counter,
            &[
                (&[("outcome", "exit_zero")], x.jobs_exit_zero.get()),
                (&[("outcome", "exit_nonzero")], x.jobs_exit_nonzero.get()),
                (&[("outcome", "signal")], x.jobs_signaled.get()),
                (&[("outcome", "timeout")], x.jobs_timed_out.get()),
            ],
        )?;
        family(
            &mut e,
            "auth_failures",
            "Failed exec logins (a wrong token, a key not accepted, a request before \
             authentication).",
            Counter,
            &[(&[], x.auth_failures.get())],
        )?;
        let identities = x.identities();
        let labels: Vec<[(&str, &str); 1]> = identities
            .iter()
            .map(|(n, _)| [("identity", n.as_str())])
            .collect();
        let rows =
            |f: fn(&crate::server::stats::IdentityCounts) -> u64| -> Vec<(&[(&str, &str)], u64)> {
                labels
                    .iter()
                    .zip(&identities)
                    .map(|(l, (_, c))| (&l[..], f(c)))
                    .collect()
            };
        family(
            &mut e,
            "identity_jobs",
            "Exec jobs started, by identity (a key's name, a certificate's principal, \
             token:ID, none).",
            Counter,
            &rows(|c| c.jobs_started),
        )?;
        family(
            &mut e,
            "identity_auth_failures",
            "Failed exec logins by the identity they named (unknown: a key not listed, or \
             a signature that proved nothing).",
            Counter,
            &rows(|c| c.auth_failures),
        )?;
        family(
            &mut e,
            "jobs_forbidden",
            "Exec requests refused by the command policy.",
            Counter,
            &[(&[], x.forbidden.get())],
        )?;
        family(
            &mut e,
            "log_lines_dropped",
            "Log lines lost because the log could not be written (full disk, closed or \
             stalled pipe).",
            Counter,
            &[(&[], crate::logsink::dropped())],
        )?;
        family(
            &mut e,
            "audit_records_lost",
            "Audit records lost because the trail could not be written (with \
             server.audit_log = -, the trail shares stderr's queue and this counts the \
             log's lost lines too).",
            Counter,
            &[(&[], crate::auditlog::lost())],
        )?;
        let (counts, sum, count) = x.job_seconds.snapshot();
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        let mut m = e.encode_descriptor(
            "job_duration",
            "Native exec job durations.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        let build = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        build.encode(e.encode_descriptor(
            "build",
            "The running build.",
            None,
            build.metric_type(),
        )?)
    }
}

/// The process's own figures, named as every Prometheus client library
/// names them, read from /proc/self at each scrape.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = crate::sys::process_figures() else {
            return Ok(());
        };
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, unit, v: f64| {
            ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
        };
        ConstCounter::new(p.cpu_seconds).encode(e.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        let bytes = Some(&Unit::Bytes);
        gauge(
            &mut e,
            "process_resident_memory",
            "Resident memory size.",
            bytes,
            p.rss_bytes,
        )?;
        gauge(
            &mut e,
            "process_virtual_memory",
            "Virtual memory size.",
            bytes,
            p.vm_bytes,
        )?;
        gauge(
            &mut e,
            "process_open_fds",
            "Open file descriptors.",
            None,
            p.open_fds,
        )?;
        gauge(
            &mut e,
            "process_max_fds",
            "The soft limit of open file descriptors.",
            None,
            p.max_fds,
        )?;
        gauge(
            &mut e,
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            Some(&Unit::Seconds),
            p.start_time_seconds,
        )
    }
}

/// Serves the metrics until `shutdown`.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, shutdown: CancellationToken) {
    let metrics = Arc::new(Metrics::new(stats));
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
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                r = converse(stream, &metrics) => if let Err(e) = r {
                    debug!(error = %e, "metrics connection ended");
                },
                _ = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// One request, as far as the responder cares.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    openmetrics: bool,
    /// The peer asked to close after this response (or speaks HTTP/1.0).
    close: bool,
}

/// The request in a head (the bytes up to the blank line); `None` when
/// it is not HTTP.
fn parse_request(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut close = version == "HTTP/1.0";
    let mut openmetrics = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => close = value.split(',').any(|v| v.trim() == "close"),
            "accept" => openmetrics = value.contains("application/openmetrics-text"),
            _ => {}
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        openmetrics,
        close,
    })
}

/// The response to `req`: status line, headers and body (empty for HEAD).
fn respond(req: &Request, metrics: &Metrics) -> Vec<u8> {
    let (status, content_type, body, allow) = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            let kind = if req.openmetrics {
                OPENMETRICS_TEXT
            } else {
                PROMETHEUS_TEXT
            };
            ("200 OK", kind, metrics.render(req.openmetrics), false)
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; try GET /metrics\n".to_string(),
            false,
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed; GET or HEAD /metrics\n".to_string(),
            true,
        ),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if allow {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if req.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Answers requests on one connection until the peer closes it, asks to
/// close, sends something that is not HTTP, or goes quiet.
async fn converse(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        // The first request has the exchange's time to arrive; later ones
        // the keep-alive's.
        let wait = if first { EXCHANGE_TIMEOUT } else { KEEP_ALIVE };
        first = false;
        let head = match tokio::time::timeout(wait, read_head(&mut stream, &mut buf)).await {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let (reply, close) = match head.as_deref().and_then(parse_request) {
            Some(req) => (respond(&req, metrics), req.close),
            None => {
                let mut r = String::new();
                let _ = write!(
                    r,
                    "HTTP/1.1 {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    if head.is_none() {
                        "431 Request Header Fields Too Large"
                    } else {
                        "400 Bad Request"
                    }
                );
                (r.into_bytes(), true)
            }
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, stream.write_all(&reply)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        }
        if close {
            return stream.shutdown().await;
        }
    }
}

/// Reads one request head (through its blank line) out of `buf` and the
/// stream: `Ok(None)` at EOF before a request, `Ok(Some(None))` for a head
/// over [`MAX_REQUEST`]. Bytes after the head stay in `buf` for the next
/// request (pipelining).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Option<Vec<u8>>>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Ok(Some(Some(head)));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(Some(None));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(head: &str) -> Option<Request> {
        parse_request(head.as_bytes())
    }

    #[test]
    fn requests_are_read_as_scrapers_send_them() {
        let r = req("GET /metrics?module=x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (r.path.as_str(), r.close, r.openmetrics),
            ("/metrics", false, false)
        );
        let r = req(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: Close\r\n\r\n",
        )
        .unwrap();
        assert!(r.openmetrics && r.close);
        assert!(req("GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert_eq!(req("\u{16}\u{3}\u{1} binary"), None);
        assert_eq!(req("GET /metrics SPDY/3\r\n\r\n"), None);
    }

    #[test]
    fn the_page_is_valid_in_both_formats_and_head_has_no_body() {
        let m = Metrics::new(Arc::new(Stats::default()));
        let text = m.render(false);
        assert!(
            text.contains("# TYPE switchboard_connections_total counter"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_connections_total{service=\"exec\",transport=\"tls\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_job_duration_seconds_bucket{le=\"+Inf\"} 0"),
            "{text}"
        );
        assert!(text.contains("switchboard_build_info{version="), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        let om = m.render(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        let get = Request {
            method: "GET".into(),
            path: "/metrics".into(),
            openmetrics: false,
            close: false,
        };
        let head = Request {
            method: "HEAD".into(),
            ..get
        };
        let reply = String::from_utf8(respond(&head, &m)).unwrap();
        assert!(
            reply.ends_with("\r\n\r\n") && reply.starts_with("HTTP/1.1 200 OK"),
            "{reply}"
        );
        let post = Request {
            method: "POST".into(),
            ..head
        };
        let reply = String::from_utf8(respond(&post, &m)).unwrap();
        assert!(reply.starts_with("HTTP/1.1 405") && reply.contains("Allow: GET, HEAD"));
    }
}
