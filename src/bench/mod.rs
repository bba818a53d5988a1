//! The load generator (`switchboard bench`): request/response load over the
//! typed clients, every reply checked byte for byte, latency in an HDR
//! histogram. Every run is bounded by `--duration` and, optionally,
//! `--requests`.
//!
//! Modes ([`Mode`]): request/response (`echo`, `udp-echo`, `udp-time`,
//! `exec`, with `--inflight` jobs per connection), streams (`stream`,
//! `exec-stream`, MB/s), fresh connections (`connect`, `exec-connect`) and
//! held idle connections (`idle`). With `--server-pid` the server's
//! resident memory is read from /proc before and after the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{
    ClientAuth, ClientError, EchoClient, ExecClient, ExecReceiver, ExecSender, JobEvent, TimeClient,
};
use crate::proto::{ClientMsg, Command, ExecRequest, ExitStatus};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TCP echo, request/response per connection.
    Echo,
    /// UDP echo, one datagram in flight per socket.
    UdpEcho,
    /// UDP time (`%Y-%m-%d %X`), one datagram in flight per socket.
    UdpTime,
    /// Exec: jobs of `--cmd` (default `true`) over kept authenticated
    /// connections, one job at a time per connection.
    Exec,
    /// Exec output stream: one job `head -c --bytes /dev/zero`, MB/s.
    ExecStream,
    /// TCP echo stream: `--bytes` written in `--size` writes while the
    /// echo is read back and checked, on one connection; MB/s.
    Stream,
    /// A fresh TCP connection, one round trip, close: connections/s.
    Connect,
    /// A fresh exec connection, handshake and one job each time: jobs/s.
    ExecConnect,
    /// Hold `--conns` idle echo connections; with `--server-pid`, the
    /// server's RSS per connection.
    Idle,
}

impl Mode {
    pub const ALL: [Mode; 9] = [
        Mode::Echo,
        Mode::UdpEcho,
        Mode::UdpTime,
        Mode::Exec,
        Mode::ExecStream,
        Mode::Stream,
        Mode::Connect,
        Mode::ExecConnect,
        Mode::Idle,
    ];

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Mode::Echo => "TCP echo, request/response per connection",
            Mode::UdpEcho => "UDP echo, one datagram in flight per socket",
            Mode::UdpTime => "UDP time (`%Y-%m-%d %X`), one datagram in flight per socket",
            Mode::Exec => {
                "Exec: jobs of `--cmd` (default `true`) over kept authenticated connections, one job at a time per connection"
            }
            Mode::ExecStream => "Exec output stream: one job `head -c --bytes /dev/zero`, MB/s",
            Mode::Stream => {
                "TCP echo stream: `--bytes` written in `--size` writes while the echo is read back and checked, on one connection; MB/s"
            }
            Mode::Connect => "A fresh TCP connection, one round trip, close: connections/s",
            Mode::ExecConnect => "A fresh exec connection, handshake and one job each time: jobs/s",
            Mode::Idle => {
                "Hold `--conns` idle echo connections; with `--server-pid`, the server's RSS per connection"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::UdpEcho => "udp-echo",
            Mode::UdpTime => "udp-time",
            Mode::Exec => "exec",
            Mode::ExecStream => "exec-stream",
            Mode::Stream => "stream",
            Mode::Connect => "connect",
            Mode::ExecConnect => "exec-connect",
            Mode::Idle => "idle",
        }
    }
}

/// A bench run's parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub mode: Mode,
    pub addr: String,
    pub conns: usize,
    pub size: usize,
    pub duration: Duration,
    /// Stop after this many requests in all (0: only the duration bounds it).
    pub requests: u64,
    pub timeout: Duration,
    pub server_pid: Option<u32>,
    /// Exec modes: how to authenticate, and the command (`exec`) or the
    /// byte count (`exec-stream`).
    pub exec_auth: Option<ClientAuth>,
    pub cmd: String,
    pub bytes: u64,
    /// exec: jobs in flight per connection.
    pub inflight: usize,
    /// exec-connect: handshakes in progress at once, at most.
    pub handshakes: usize,
    /// Show a progress bar (on a terminal, not with --json).
    pub progress: bool,
}

/// The result, also printed as one JSON line with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub conns: usize,
    pub size: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub min_us: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Server RSS with every connection open, before the load.
    pub server_rss_kib_before: Option<u64>,
    /// Server RSS with every connection open, after the load.
    pub server_rss_kib_after: Option<u64>,
    /// exec-stream: megabytes (10^6 bytes) per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_sec: Option<f64>,
    /// The first error seen, to say what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Errors by cause (the error's message), with their counts.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_kinds: BTreeMap<String, u64>,
}

/// Resident memory of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn payload(size: usize, conn: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + ((i + conn) % 26) as u8).collect()
}

/// Runs the load; all clients connect before the clock starts.
pub async fn run(p: Params) -> anyhow::Result<Report> {
    match p.mode {
        Mode::Exec if p.inflight > 1 => return exec_inflight(p).await,
        Mode::ExecStream => return exec_stream(p).await,
        Mode::Stream => return stream(p).await,
        Mode::Idle => return idle(p).await,
        _ => {}
    }
    let clients = connect_all(&p).await?;
    // Connected and idle: the baseline for memory per connection.
    let rss_before = p.server_pid.and_then(rss_kib);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + p.duration;
    let bar = progress(&p, issued.clone());
    let mut tasks = Vec::with_capacity(p.conns);
    for (i, client) in clients.into_iter().enumerate() {
        let (stop, issued) = (stop.clone(), issued.clone());
        let req = payload(p.size, i);
        let want = req.to_ascii_uppercase();
        let limit = p.requests;
        let budget = Budget {
            deadline,
            limit,
            issued,
        };
        tasks.push(tokio::spawn(round_trips(client, req, want, stop, budget)));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    let mut error_kinds = BTreeMap::new();
    let mut open = Vec::with_capacity(p.conns);
    for t in tasks {
        let (ok, err, hist, client, first, kinds) = t.await?;
        open.push(client);
        requests += ok;
        errors += err;
        first_error = first_error.or(first);
        for (k, n) in kinds {
            *error_kinds.entry(k).or_insert(0) += n;
        }
        if let Some(h) = hist {
            total.add(h)?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let seconds = start.elapsed().as_secs_f64();
    let rss_after = p.server_pid.and_then(rss_kib);
    drop(open);
    let mut report = Report::from_latencies(
        &p,
        p.mode.name().to_string(),
        requests,
        errors,
        seconds,
        &total,
    );
    report.server_rss_kib_before = rss_before;
    report.server_rss_kib_after = rss_after;
    report.first_error = first_error;
    report.error_kinds = error_kinds;
    Ok(report)
}

/// One connection's share of a request/response run: round trips until
/// the deadline, the request limit or `stop`; counts, latencies, the first
/// error, and the client back, still connected (so the server's memory is
/// read with every connection open).
async fn round_trips(
    mut client: Client,
    req: Vec<u8>,
    want: Vec<u8>,
    stop: Arc<AtomicBool>,
    budget: Budget,
) -> (
    u64,
    u64,
    Option<Histogram<u64>>,
    Client,
    Option<String>,
    HashMap<String, u64>,
) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    let mut kinds: HashMap<String, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) && budget.more() {
        let t0 = Instant::now();
        // A request still waiting when the time is up (a lost datagram's
        // timeout) is given up after a short grace and counted neither
        // way: `--duration 1s` takes about a second.
        let left = budget.deadline.saturating_duration_since(t0) + END_GRACE;
        let Ok(result) = tokio::time::timeout(left, client.round_trip(&req)).await else {
            break;
        };
        let bad = match result {
            Ok(reply) if client.is_time() => reply
                .starts_with(crate::timefmt::ERROR_PREFIX.as_bytes())
                .then(|| String::from_utf8_lossy(&reply).into_owned()),
            Ok(reply) if client.is_exec() => {
                (!reply.is_empty()).then(|| "the job wrote to stdout".to_string())
            }
            Ok(reply) if reply == want => None,
            Ok(_) => Some("a reply that is not the request upper-cased".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = bad {
            *kinds.entry(e.clone()).or_insert(0) += 1;
            first_error.get_or_insert(e);
            errors += 1;
            if errors > 100 && ok == 0 {
                break; // nothing works: do not spin
            }
        } else {
            ok += 1;
            let us = t0.elapsed().as_micros().max(1) as u64;
            if let Some(h) = hist.as_mut() {
                let _ = h.record(us.min(60_000_000));
            }
        }
    }
    // The client goes back to the caller so that connections are
    // still open when the server's memory is read.
    (ok, errors, hist, client, first_error, kinds)
}

/// The connections of a request/response run, all opened before the
/// clock starts.
async fn connect_all(p: &Params) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(p.conns);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(p.handshakes.max(1)));
    for _ in 0..p.conns {
        clients.push(match p.mode {
            Mode::Echo => Client::Echo(EchoClient::connect_tcp(&p.addr, p.timeout).await?),
            // No retransmissions: the report counts every request lost.
            Mode::UdpEcho => Client::Echo(
                EchoClient::connect_udp(&p.addr, p.timeout)
                    .await?
                    .with_retries(0),
            ),
            Mode::UdpTime => Client::Time(
                TimeClient::connect(&p.addr, p.timeout)
                    .await?
                    .with_retries(0),
            ),
            Mode::Connect => Client::Connect(p.addr.clone(), p.timeout),
            Mode::ExecConnect => Client::ExecConnect {
                addr: p.addr.clone(),
                auth: p.exec_auth.clone().unwrap_or_else(ClientAuth::none),
                timeout: p.timeout,
                cmd: p.cmd.clone(),
                handshakes: handshakes.clone(),
            },
            Mode::Exec | Mode::ExecStream | Mode::Stream | Mode::Idle => {
                let auth = p.exec_auth.clone().unwrap_or_else(ClientAuth::none);
                Client::Exec(
                    Box::new(ExecClient::connect(&p.addr, &auth, p.timeout).await?),
                    p.cmd.clone(),
                )
            }
        });
    }
    Ok(clients)
}

impl Report {
    /// A request/response report from counts and a latency histogram.
    fn from_latencies(
        p: &Params,
        mode: String,
        requests: u64,
        errors: u64,
        seconds: f64,
        h: &Histogram<u64>,
    ) -> Report {
        Report {
            mode,
            conns: p.conns,
            size: p.size,
            requests,
            errors,
            seconds,
            requests_per_sec: requests as f64 / seconds.max(1e-9),
            min_us: if requests == 0 { 0 } else { h.min() },
            mean_us: h.mean() as u64,
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            server_rss_kib_before: None,
            server_rss_kib_after: None,
            mb_per_sec: None,
            first_error: None,
            error_kinds: BTreeMap::new(),
        }
    }
}

/// One job streaming `p.bytes` zero bytes; every byte counted.
async fn exec_stream(p: Params) -> anyhow::Result<Report> {
    let auth = p.exec_auth.clone().unwrap_or_else(ClientAuth::none);
    let mut c = ExecClient::connect(&p.addr, &auth, p.timeout).await?;
    let rss_before = p.server_pid.and_then(rss_kib);
    let id = c.next_id();
    let (mut tx, mut rx) = c.split();
    let req = ExecRequest {
        id,
        command: Command::Argv(vec![
            "head".into(),
            "-c".into(),
            p.bytes.to_string(),
            "/dev/zero".into(),
        ]),
        stdin: false,
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        pty: None,
        output: Default::default(),
        detach: false,
    };
    let start = Instant::now();
    tx.send(ClientMsg::Exec(req)).await?;
    let mut got = 0u64;
    let mut nonzero = false;
    let mut rss_peak = rss_before;
    let mut frames = 0u64;
    let status = loop {
        match rx.job_event(id).await? {
            JobEvent::Stdout(data, _) => {
                got += data.len() as u64;
                // An OR over the whole frame (vectorised) rather than a
                // search that stops early: the check byte by byte took a
                // fifth of the machine at 900 MB/s, on the cores the
                // server being measured shares.
                nonzero |= data.iter().fold(0u8, |acc, &b| acc | b) != 0;
                frames += 1;
                if frames.is_multiple_of(1024) {
                    rss_peak = rss_peak.max(p.server_pid.and_then(rss_kib));
                }
            }
            JobEvent::Exit { status, .. } => break status,
            JobEvent::Failed(f) => anyhow::bail!("server: {}", f.message),
            JobEvent::Started { .. }
            | JobEvent::Stderr(..)
            | JobEvent::Window { .. }
            | JobEvent::Transfer(_)
            | JobEvent::Attached(_)
            | JobEvent::Jobs { .. } => {}
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let ok = got == p.bytes && !nonzero && status == ExitStatus::Code(0);
    let mb = Some(got as f64 / 1e6 / seconds.max(1e-9));
    Ok(single(&p, ok, seconds, mb, (rss_before, rss_peak)))
}

enum Client {
    Echo(EchoClient),
    Time(TimeClient),
    Exec(Box<ExecClient>, String),
    /// A new connection per request.
    Connect(String, Duration),
    /// A new exec connection per job; `handshakes` holds the number in
    /// progress at once under the server's per-source limit.
    ExecConnect {
        addr: String,
        auth: ClientAuth,
        timeout: Duration,
        cmd: String,
        handshakes: Arc<tokio::sync::Semaphore>,
    },
}

impl Client {
    async fn round_trip(&mut self, req: &[u8]) -> Result<Vec<u8>, ClientError> {
        match self {
            Client::Echo(c) => c.request(req).await,
            Client::Time(c) => c.query_raw(b"").await,
            Client::Exec(c, cmd) => {
                // Success is exit 0; the reply is the job's (empty) stdout.
                let out = c.run(cmd).await?;
                if out.status != ExitStatus::Code(0) {
                    return Err(ClientError::Server(format!("{:?}", out.status)));
                }
                Ok(out.stdout)
            }
            Client::Connect(addr, timeout) => {
                let mut c = EchoClient::connect_tcp(addr, *timeout).await?;
                let reply = c.request(req).await?;
                c.finish().await?;
                Ok(reply)
            }
            Client::ExecConnect {
                addr,
                auth,
                timeout,
                cmd,
                handshakes,
            } => {
                let mut c = {
                    let _slot = handshakes.acquire().await;
                    ExecClient::connect(addr, auth, *timeout).await?
                };
                let out = c.run(cmd).await?;
                if out.status != ExitStatus::Code(0) {
                    return Err(ClientError::Server(format!("{:?}", out.status)));
                }
                Ok(out.stdout)
            }
        }
    }

    fn is_exec(&self) -> bool {
        matches!(self, Client::Exec(..) | Client::ExecConnect { .. })
    }

    fn is_time(&self) -> bool {
        matches!(self, Client::Time(_))
    }
}

impl std::fmt::Display for Report {
    /// A summary of a few lines, in milliseconds, with the fields that mean
    /// something for the mode (as redis-benchmark's), the errors by cause,
    /// and a warning when a server limit is the likely cause of them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        let n = |what: &str| {
            let s = if self.conns == 1 { "" } else { "s" };
            format!("{} {what}{s}", self.conns)
        };
        let what = match self.mode.as_str() {
            m if m.starts_with("udp") => format!("{}, {} B requests", n("socket"), self.size),
            "echo" | "connect" => format!("{}, {} B requests", n("connection"), self.size),
            "idle" => n("idle connection"),
            "stream" | "exec-stream" => "1 stream".to_string(),
            _ => n("connection"),
        };
        writeln!(f, "{}: {what}, {:.2} s", self.mode, self.seconds)?;
        let one_shot = self.mode == "stream" || self.mode == "exec-stream" || self.mode == "idle";
        if one_shot {
            let verdict = if self.errors == 0 { "ok" } else { "FAILED" };
            writeln!(f, "  result       {verdict}")?;
        } else {
            writeln!(
                f,
                "  requests     {} ok, {} failed",
                self.requests, self.errors
            )?;
            writeln!(f, "  throughput   {:.0} requests/s", self.requests_per_sec)?;
            if self.requests > 0 {
                writeln!(
                    f,
                    "  latency ms   min {:.3}  mean {:.3}  p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                    ms(self.min_us),
                    ms(self.mean_us),
                    ms(self.p50_us),
                    ms(self.p95_us),
                    ms(self.p99_us),
                    ms(self.p999_us),
                    ms(self.max_us)
                )?;
            }
        }
        if let Some(m) = self.mb_per_sec {
            writeln!(f, "  throughput   {m:.0} MB/s")?;
        }
        if self.mode.starts_with("udp") {
            let sent = self.requests + self.errors;
            let pct = 100.0 * self.errors as f64 / (sent.max(1) as f64);
            writeln!(f, "  lost         {} of {sent} ({pct:.2}%)", self.errors)?;
        }
        if let (Some(a), Some(b)) = (self.server_rss_kib_before, self.server_rss_kib_after) {
            write!(f, "  server RSS   {a} -> {b} KiB")?;
            if self.mode == "idle" {
                let per = (b.saturating_sub(a) as f64) / (self.conns.max(1) as f64);
                write!(f, " ({per:.1} KiB per idle connection)")?;
            }
            writeln!(f)?;
        }
        let mut kinds: Vec<(&String, &u64)> = self.error_kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        for (cause, n) in kinds.iter().take(5) {
            writeln!(f, "  errors       {n} x {cause}")?;
        }
        if kinds.len() > 5 {
            writeln!(f, "  errors       ... and {} other causes", kinds.len() - 5)?;
        }
        if let Some(w) = self.limit_warning() {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

impl Report {
    /// A CSV header line and a line of values: every field of the JSON
    /// record that is a number or text (absent ones empty), in its order.
    pub fn csv(&self) -> String {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return String::new();
        };
        let (mut names, mut values) = (Vec::new(), Vec::new());
        for name in [
            "mode",
            "conns",
            "size",
            "requests",
            "errors",
            "seconds",
            "requests_per_sec",
            "min_us",
            "mean_us",
            "p50_us",
            "p95_us",
            "p99_us",
            "p999_us",
            "max_us",
            "server_rss_kib_before",
            "server_rss_kib_after",
            "mb_per_sec",
            "first_error",
        ] {
            names.push(name.to_string());
            values.push(match fields.get(name) {
                Some(serde_json::Value::String(s)) => format!("\"{}\"", s.replace('"', "\"\"")),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            });
        }
        format!("{}\n{}\n", names.join(","), values.join(","))
    }

    /// The server limit a run's errors most likely come from, and how to
    /// raise it, where the errors themselves cannot say (UDP loss, a
    /// connection closed without a word).
    fn limit_warning(&self) -> Option<String> {
        if self.errors == 0 {
            return None;
        }
        let sent_per_sec = (self.requests + self.errors) as f64 / self.seconds.max(1e-9);
        // Every socket of the bench shares one source address, and a
        // rate-limited datagram is dropped without a word.
        if self.mode.starts_with("udp") {
            return Some(format!(
                "{sent_per_sec:.0} datagrams/s from one address, some unanswered: the server's \
                 per-source rate limit drops what passes it (udp.rate_limit, 2,000/s by default; \
                 `serve --udp-rate-limit 0` to measure without it)"
            ));
        }
        if (self.mode == "echo" || self.mode == "connect") && self.conns > 4_096 {
            return Some(
                "more than 4,096 connections from one address: the server's default \
                 echo.max_connections_per_source (`serve --max-connections-per-source 0`)"
                    .to_string(),
            );
        }
        None
    }
}

/// A report for one-shot modes (stream, idle).
fn single(
    p: &Params,
    ok: bool,
    seconds: f64,
    mb: Option<f64>,
    rss: (Option<u64>, Option<u64>),
) -> Report {
    Report {
        mode: p.mode.name().to_string(),
        conns: p.conns,
        size: p.size,
        requests: u64::from(ok),
        errors: u64::from(!ok),
        seconds,
        requests_per_sec: 0.0,
        min_us: 0,
        mean_us: 0,
        p50_us: 0,
        p95_us: 0,
        p99_us: 0,
        p999_us: 0,
        max_us: 0,
        server_rss_kib_before: rss.0,
        server_rss_kib_after: rss.1,
        mb_per_sec: mb,
        first_error: None,
        error_kinds: BTreeMap::new(),
    }
}

/// One connection: a writer sends `p.bytes` in `p.size`-byte writes while
/// the reader checks every echoed byte.
async fn stream(p: Params) -> anyhow::Result<Report> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = crate::client::connect_tcp(&p.addr, p.timeout).await?;
    let (mut rd, mut wr) = stream.into_split();
    let size = p.size.max(1);
    let chunk: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let want = chunk.to_ascii_uppercase();
    let total = p.bytes;
    let start = Instant::now();
    let writer = async {
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(size as u64) as usize;
            wr.write_all(chunk.get(..n).unwrap_or_default()).await?;
            sent += n as u64;
        }
        wr.shutdown().await
    };
    let reader = async {
        const READ: usize = 256 * 1024;
        let mut buf = vec![0u8; READ];
        // The expected bytes from any offset within one period, long
        // enough for a whole read: each check is one slice comparison.
        let expected: Vec<u8> = want.iter().copied().cycle().take(size + READ).collect();
        let (mut got, mut good) = (0u64, true);
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let at = (got % size as u64) as usize;
            good &= buf.get(..n) == expected.get(at..at + n);
            got += n as u64;
        }
        Ok::<_, std::io::Error>((got, good))
    };
    let ((), (got, good)) = tokio::try_join!(writer, reader)?;
    let seconds = start.elapsed().as_secs_f64();
    let ok = good && got == total;
    Ok(single(
        &p,
        ok,
        seconds,
        Some(got as f64 / 1e6 / seconds.max(1e-9)),
        (None, None),
    ))
}

/// Holds `p.conns` idle echo connections for `p.duration` (one round trip
/// each first, so the server has really accepted them).
async fn idle(p: Params) -> anyhow::Result<Report> {
    let before = p.server_pid.and_then(rss_kib);
    let start = Instant::now();
    let mut held = Vec::with_capacity(p.conns);
    let mut ok = true;
    for _ in 0..p.conns {
        let mut c = EchoClient::connect_tcp(&p.addr, p.timeout).await?;
        ok &= c.request(b"x").await.map(|r| r == b"X").unwrap_or(false);
        held.push(c);
    }
    tokio::time::sleep(p.duration.min(Duration::from_secs(60))).await;
    let after = p.server_pid.and_then(rss_kib);
    let seconds = start.elapsed().as_secs_f64();
    drop(held);
    Ok(single(&p, ok, seconds, None, (before, after)))
}

/// A progress bar over the run's duration, counting requests, when asked.
fn progress(p: &Params, count: Arc<AtomicU64>) -> Option<indicatif::ProgressBar> {
    if !p.progress {
        return None;
    }
    let total = p.duration.as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let b = bar.clone();
    tokio::spawn(async move {
        while !b.is_finished() {
            let done = count.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            b.set_position((start.elapsed().as_millis() as u64).min(total));
            b.set_message(format!("{done} requests, {:.0}/s", done as f64 / secs));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(bar)
}

/// Exec with `p.inflight` jobs outstanding on each of `p.conns`
/// connections (jobs run concurrently on the server).
/// How long a request in flight at the deadline is still waited for.
const END_GRACE: Duration = Duration::from_millis(250);

/// When a load run stops issuing: a deadline, and a request limit shared by
/// every connection (0: none).
struct Budget {
    deadline: Instant,
    limit: u64,
    issued: Arc<AtomicU64>,
}

impl Budget {
    /// Whether one more request may be issued (and counts it).
    fn more(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        // Counted always: the progress bar shows it.
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.limit == 0 || n < self.limit
    }
}

/// One connection keeping `inflight` jobs of `cmd` running until the
/// budget is spent; jobs that succeeded (with their latencies) and failed.
async fn jobs_in_flight(
    mut tx: ExecSender,
    mut rx: ExecReceiver,
    cmd: String,
    inflight: usize,
    budget: Budget,
) -> (u64, u64, Option<Histogram<u64>>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut next = 0u64;

    while pending.len() < inflight && budget.more() {
        next += 1;
        if tx
            .send(ClientMsg::Exec(ExecRequest::shell(next, cmd.clone())))
            .await
            .is_err()
        {
            break;
        }
        pending.insert(next, Instant::now());
    }
    while !pending.is_empty() {
        let done = match rx.event().await {
            Ok(Some((Some(id), JobEvent::Exit { status, .. }))) => {
                Some((id, status == ExitStatus::Code(0)))
            }
            Ok(Some((Some(id), JobEvent::Failed(_)))) => Some((id, false)),
            Ok(Some(_)) => None,
            Ok(None) | Err(_) => break,
        };
        let Some((id, good)) = done else { continue };
        if let Some(t0) = pending.remove(&id) {
            if good {
                ok += 1;
                if let Some(h) = hist.as_mut() {
                    let _ = h.record((t0.elapsed().as_micros().max(1) as u64).min(60_000_000));
                }
            } else {
                errors += 1;
            }
        }
        if budget.more() {
            next += 1;
            if tx
                .send(ClientMsg::Exec(ExecRequest::shell(next, cmd.clone())))
                .await
                .is_ok()
            {
                pending.insert(next, Instant::now());
            }
        }
    }
    errors += pending.len() as u64;
    (ok, errors, hist)
}

async fn exec_inflight(p: Params) -> anyhow::Result<Report> {
    let auth = p.exec_auth.clone().unwrap_or_else(ClientAuth::none);
    let mut conns = Vec::with_capacity(p.conns);
    for _ in 0..p.conns {
        conns.push(
            ExecClient::connect(&p.addr, &auth, p.timeout)
                .await?
                .split(),
        );
    }
    let issued = Arc::new(AtomicU64::new(0));
    let bar = progress(&p, issued.clone());
    let start = Instant::now();
    let deadline = start + p.duration;
    let mut tasks = Vec::new();
    for (tx, rx) in conns {
        let (cmd, inflight, limit, issued) =
            (p.cmd.clone(), p.inflight, p.requests, issued.clone());
        let budget = Budget {
            deadline,
            limit,
            issued,
        };
        tasks.push(tokio::spawn(jobs_in_flight(tx, rx, cmd, inflight, budget)));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (ok, err, hist) = t.await?;
        requests += ok;
        errors += err;
        if let Some(h) = hist {
            total.add(h)?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mode = format!("exec (inflight {})", p.inflight);
    Ok(Report::from_latencies(
        &p, mode, requests, errors, seconds, &total,
    ))
}
