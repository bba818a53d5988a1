//! `switchboard exec --hosts HOSTS -- CMD`: one command on many servers, in
//! parallel, as pdsh and clush do.
//!
//! Output is either streamed with each line prefixed by its host (pdsh),
//! gathered with identical outputs grouped (`--gather`, as `clush -b` /
//! `dshbak -c`), or one JSON record per host (`--json`). A summary of the
//! failures goes to stderr; the exit status is 0 only if every host ran the
//! command and it exited 0 (`--max-rc`: the largest status instead).
//!
//! With `--canary`, `--batch` or `--max-fail` the hosts run in waves
//! ([`crate::rollout`]); hosts never started are reported `skipped`, with
//! why, and count as failed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::ExecArgs;
use super::lines::{self, ClockOffset, StampedText};
use crate::client::exec::{EXIT_CONNECTION, exit_code};
use crate::client::{ClientAuth, ClientError, ExecClient, JobEvent};
use crate::proto::message::Stamp;
use crate::proto::{ClientMsg, ExitStatus};
use crate::rollout::Rollout;

/// How one host's run ended.
#[derive(Debug, Clone)]
enum Outcome {
    Exit(ExitStatus),
    Connect(String),
    Auth(String),
    /// The server refused the job; a spawn failure's shell status.
    Refused(String, Option<i32>),
    Failed(String),
    /// Not started: the canary failed, or `--max-fail` was reached.
    Skipped(String),
    /// (`--detach`) Started detached under this ID.
    Detached(String),
}

#[derive(Debug, Clone, Serialize)]
struct Record {
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
    timed_out: bool,
    /// `connect`, `auth`, `refused` (the server refused the job), `failed`
    /// or `skipped` (not started).
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'static str>,
    /// The wave the host was in (1 for a plain fan-out).
    wave: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    canary: bool,
    /// Why a host was not started.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// (`--detach`) The job's ID on that host.
    #[serde(skip_serializing_if = "Option::is_none")]
    detached: Option<String>,
    duration_ms: u64,
    /// Output received (and counted, kept or not).
    stdout_bytes: u64,
    stderr_bytes: u64,
    /// Output the server dropped past the job's `max_output`.
    #[serde(skip_serializing_if = "is_zero")]
    dropped_bytes: u64,
    /// Not all of the output is in `stdout`/`stderr`.
    truncated: bool,
    /// `--timestamps`: the server's clock minus this client's, and how far
    /// off that may be.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_offset_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_within_us: Option<i64>,
    /// `--timestamps`: the output's lines with the server's time of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<Vec<LineRecord>>,
    stdout: String,
    stderr: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

struct HostRun {
    host: String,
    place: Place,
    outcome: Outcome,
    duration: Duration,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_bytes: u64,
    stderr_bytes: u64,
    dropped: u64,
    truncated: bool,
    /// `--timestamps`: the server's clock against ours.
    clock: Option<ClockOffset>,
    /// `--json --timestamps`: the lines kept, and their bytes.
    lines: Vec<LineRecord>,
    lines_bytes: usize,
}

impl HostRun {
    fn status(&self) -> u8 {
        match &self.outcome {
            Outcome::Exit(s) => exit_code(s),
            // As for one host: a program not found is 127, and so on.
            Outcome::Refused(_, Some(st)) => u8::try_from(*st).unwrap_or(EXIT_CONNECTION),
            Outcome::Skipped(_) => 1,
            Outcome::Detached(_) => 0,
            _ => EXIT_CONNECTION,
        }
    }

    fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Exit(ExitStatus::Code(c)) => format!("exit {c}"),
            Outcome::Exit(ExitStatus::Signal {
                timed_out: true, ..
            }) => "timed out".into(),
            Outcome::Exit(ExitStatus::Signal { name, .. }) => format!("killed by SIG{name}"),
            Outcome::Connect(e) => format!("connect: {e}"),
            Outcome::Auth(e) => format!("auth: {e}"),
            Outcome::Refused(e, _) => format!("refused: {e}"),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::Skipped(e) => format!("skipped: {e}"),
            Outcome::Detached(id) => format!("detached {id}"),
        }
    }

    fn record(&self) -> Record {
        let (exit_code, signal, timed_out, error) = match &self.outcome {
            Outcome::Exit(ExitStatus::Code(c)) => (Some(*c), None, false, None),
            Outcome::Exit(ExitStatus::Signal { name, timed_out }) => {
                (None, Some(name.clone()), *timed_out, None)
            }
            Outcome::Detached(_) => (None, None, false, None),
            _ => (None, None, false, Some(self.describe())),
        };
        let failure = match &self.outcome {
            Outcome::Exit(_) | Outcome::Detached(_) => None,
            Outcome::Connect(_) => Some("connect"),
            Outcome::Auth(_) => Some("auth"),
            Outcome::Refused(..) => Some("refused"),
            Outcome::Failed(_) => Some("failed"),
            Outcome::Skipped(_) => Some("skipped"),
        };
        let skipped = match &self.outcome {
            Outcome::Skipped(why) => Some(why.clone()),
            _ => None,
        };
        Record {
            host: self.host.clone(),
            exit_code,
            signal,
            timed_out,
            failure,
            wave: self.place.wave,
            canary: self.place.canary,
            skipped,
            error,
            detached: match &self.outcome {
                Outcome::Detached(id) => Some(id.clone()),
                _ => None,
            },
            duration_ms: self.duration.as_millis() as u64,
            stdout_bytes: self.stdout_bytes,
            stderr_bytes: self.stderr_bytes,
            dropped_bytes: self.dropped,
            truncated: self.truncated || self.dropped > 0,
            clock_offset_us: self.clock.map(|c| c.offset_us),
            clock_within_us: self.clock.map(|c| c.within_us),
            lines: self.clock.map(|_| self.lines.clone()),
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
        }
    }
}

/// Writes complete lines prefixed with the host (and, with
/// `--timestamps`, the time); keeps the partial last line.
struct Prefixer {
    host: String,
    lines: [StampedText; 2],
}

impl Prefixer {
    fn feed(&mut self, is_err: bool, data: &[u8], ts: Option<Stamp>, last: bool) {
        let mut text = Vec::new();
        let host = self.host.as_bytes();
        if let Some(lines) = self.lines.get_mut(usize::from(is_err)) {
            // Every piece on a line of its own: other hosts' lines come
            // between.
            lines.feed(data, ts, last, |p| {
                text.extend_from_slice(lines::prefix(p.ts).as_bytes());
                text.extend_from_slice(host);
                text.extend_from_slice(b": ");
                text.extend_from_slice(p.bytes);
                if !p.bytes.ends_with(b"\n") {
                    text.push(b'\n');
                }
            });
        }
        if text.is_empty() {
            return;
        }
        // One write per batch of whole lines keeps hosts' lines unmixed.
        let written = if is_err {
            std::io::stderr().lock().write_all(&text)
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(&text).and_then(|()| o.flush())
        };
        // Our reader went away (`exec --hosts H -- yes | head`): end as a
        // local process ends on SIGPIPE, quietly with 141; the closed
        // connections end the jobs.
        if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
            std::process::exit(141);
        }
    }
}

/// A stamped line of a `--json --timestamps` record.
#[derive(Debug, Clone, Serialize)]
struct LineRecord {
    #[serde(serialize_with = "rfc3339")]
    ts: Option<Stamp>,
    stream: &'static str,
    text: String,
}

/// What each kept line costs against `--json --timestamps`' keep besides
/// its bytes: its record and allocation, about 100 bytes.
const LINE_COST: usize = 128;

fn rfc3339<S: serde::Serializer>(ts: &Option<Stamp>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(t) => s.serialize_str(&t.rfc3339()),
        None => s.serialize_none(),
    }
}

struct Plan {
    args: ExecArgs,
    auth: ClientAuth,
    words: Vec<String>,
    stream: bool,
    /// Output kept per host (`--gather`, `--json`), and asked of the
    /// servers as the jobs' `max_output` so they send no more.
    keep: Option<u64>,
    /// `--encoding`: what the hosts' output is decoded from.
    encoding: Option<&'static encoding_rs::Encoding>,
}

/// Output kept per host for `--gather`/`--json` without `--max-output`...
const KEEP_PER_HOST: u64 = 1 << 20;
/// ...and over all hosts: 10,000 hosts keep 6.5 KiB each. (A record's
/// JSON is written one at a time, and NUL bytes take six each in it.)
const KEEP_TOTAL: u64 = 64 << 20;

/// What `--gather`/`--json` keep per host of `hosts`: `--max-output`, or
/// a share of [`KEEP_TOTAL`] up to [`KEEP_PER_HOST`]; nothing kept when
/// output is streamed.
fn keep_per_host(max_output: Option<u64>, kept: bool, hosts: usize) -> Option<u64> {
    match (max_output, kept) {
        (Some(m), _) => Some(m),
        (None, false) => None,
        (None, true) => Some((KEEP_TOTAL / hosts.max(1) as u64).min(KEEP_PER_HOST)),
    }
}

/// Connects to one host (`tls://` for TLS) and authenticates; the failure
/// as the host's outcome.
async fn connect_host(host: &str, plan: &Plan) -> Result<ExecClient, Outcome> {
    let (addr, tls) = match host.strip_prefix("tls://") {
        Some(a) => match plan.args.conn.client_tls(a) {
            Ok(t) => (a, Some(t)),
            Err(e) => return Err(Outcome::Connect(format!("{e:#}"))),
        },
        None => (host, None),
    };
    let connected = plan.args.conn.connect(addr, tls.as_ref(), &plan.auth).await;
    match connected {
        Ok(c) => {
            if let Some(first) = c.first_use() {
                super::tell_first_use(addr, first);
            }
            Ok(c)
        }
        Err(ClientError::AuthFailed(e)) => Err(Outcome::Auth(e)),
        Err(e) => Err(Outcome::Connect(e.to_string())),
    }
}

impl HostRun {
    /// Counts a chunk of output and keeps what fits under `max` bytes.
    fn keep(&mut self, is_err: bool, data: &[u8], max: Option<u64>) {
        let (buf, count) = if is_err {
            (&mut self.stderr, &mut self.stderr_bytes)
        } else {
            (&mut self.stdout, &mut self.stdout_bytes)
        };
        *count += data.len() as u64;
        let Some(max) = max else { return };
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let room = max.saturating_sub(buf.len()).min(data.len());
        buf.extend_from_slice(data.get(..room).unwrap_or_default());
        self.truncated |= room < data.len();
    }

    /// `--json --timestamps`: cuts a chunk into stamped lines and keeps
    /// them until one does not fit under `max` bytes.
    fn keep_lines(
        &mut self,
        lines: &mut [StampedText; 2],
        is_err: bool,
        data: &[u8],
        ts: Option<Stamp>,
        last: bool,
        max: Option<u64>,
    ) {
        let max = max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let Some(l) = lines.get_mut(usize::from(is_err)) else {
            return;
        };
        let (kept, held, truncated) = (&mut self.lines, &mut self.lines_bytes, &mut self.truncated);
        l.feed(data, ts, last, |p| {
            // What a kept line costs besides its text (the record, its
            // allocation): a job printing empty lines fills the keep as
            // fast as one printing long ones. The first line that does not
            // fit ends the keeping: no gaps.
            let cost = p.bytes.len() + LINE_COST;
            if held.saturating_add(cost) > max {
                *held = usize::MAX;
                *truncated = true;
                return;
            }
            *held += cost;
            kept.push(LineRecord {
                ts: p.ts,
                stream: if is_err { "stderr" } else { "stdout" },
                text: String::from_utf8_lossy(p.bytes).into_owned(),
            });
        });
    }
}

impl HostRun {
    fn new(host: String, place: Place, outcome: Outcome) -> HostRun {
        HostRun {
            host,
            place,
            outcome,
            duration: Duration::ZERO,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            dropped: 0,
            truncated: false,
            clock: None,
            lines: Vec::new(),
            lines_bytes: 0,
        }
    }
}

async fn run_host(host: String, place: Place, plan: Arc<Plan>) -> HostRun {
    let started = Instant::now();
    let mut run = HostRun::new(host.clone(), place, Outcome::Failed(String::new()));
    let client = match connect_host(&host, &plan).await {
        Ok(c) => c,
        Err(outcome) => {
            run.outcome = outcome;
            run.duration = started.elapsed();
            return run;
        }
    };
    let (mut tx, mut rx) = client.split();
    let mut req = plan.args.request(1, plan.words.clone());
    // What is kept here bounds what is asked of the servers; a detached
    // job's output is kept there, for `attach`, not here.
    if !plan.args.detach {
        req.output.max_output = plan.keep;
    }
    let id = req.id;
    let text = || {
        [
            StampedText::new(plan.encoding),
            StampedText::new(plan.encoding),
        ]
    };
    let mut prefix = plan.stream.then(|| Prefixer {
        host: host.clone(),
        lines: text(),
    });
    let mut decoders = plan.encoding.map(|e| [e.new_decoder(), e.new_decoder()]);
    // --json --timestamps: the lines with their times, for the record.
    let mut stamped = (plan.args.json && plan.args.timestamps).then(text);
    let mut detached = None;
    let result = async {
        let sent = std::time::SystemTime::now();
        tx.send(ClientMsg::Exec(req)).await?;
        loop {
            let (is_err, raw, ts) = match rx.job_event(id).await? {
                JobEvent::Exit {
                    status, dropped, ..
                } => {
                    run.dropped = dropped;
                    return Ok(status);
                }
                JobEvent::Failed(f) => return Err(f.into()),
                // --detach: the job's ID is the host's answer.
                JobEvent::Started {
                    detached: Some(id), ..
                } => {
                    detached = Some(id);
                    return Ok(ExitStatus::Code(0));
                }
                JobEvent::Started { .. } if plan.args.detach => {
                    return Err(ClientError::Protocol(
                        "the server does not keep detached jobs (it ran the job attached; \
                         it is killed as this client leaves)"
                            .into(),
                    ));
                }
                JobEvent::Started { ts: Some(ts), .. } => {
                    let clock = ClockOffset::measure(sent, ts, std::time::SystemTime::now());
                    if plan.stream {
                        say!("switchboard: {host}: {}", clock.describe());
                    }
                    run.clock = Some(clock);
                    continue;
                }
                JobEvent::Started { .. }
                | JobEvent::Window { .. }
                | JobEvent::Transfer(_)
                | JobEvent::Attached(_)
                | JobEvent::Jobs { .. } => {
                    continue;
                }
                JobEvent::Stdout(data, ts) => (false, data, ts),
                JobEvent::Stderr(data, ts) => (true, data, ts),
            };
            // Lines are cut on the raw bytes (each keeps the frame of its
            // first byte), then decoded; what is kept whole is decoded here.
            if let Some(p) = prefix.as_mut() {
                p.feed(is_err, &raw, ts, false);
            }
            if let Some(l) = stamped.as_mut() {
                run.keep_lines(l, is_err, &raw, ts, false, plan.keep);
            }
            let data = match decoders
                .as_mut()
                .and_then(|d| d.get_mut(usize::from(is_err)))
            {
                Some(d) => bytes::Bytes::from(lines::decode(d, &raw, false)),
                None => raw,
            };
            run.keep(is_err, &data, plan.keep);
        }
    }
    .await;
    for is_err in [false, true] {
        if let Some(p) = prefix.as_mut() {
            p.feed(is_err, b"", None, true);
        }
        if let Some(l) = stamped.as_mut() {
            run.keep_lines(l, is_err, b"", None, true, plan.keep);
        }
        // What a character split at the end held back in the decoder.
        if let Some(d) = decoders
            .as_mut()
            .and_then(|d| d.get_mut(usize::from(is_err)))
        {
            run.keep(is_err, lines::decode(d, b"", true).as_bytes(), plan.keep);
        }
    }
    run.outcome = match (result, detached) {
        (Ok(_), Some(id)) => {
            // Text: a line `host: ID` on stdout, for scripts to keep.
            if let Some(p) = prefix.as_mut() {
                p.feed(false, format!("{id}\n").as_bytes(), None, true);
            }
            Outcome::Detached(id)
        }
        (Ok(status), None) => Outcome::Exit(status),
        (
            Err(ClientError::Job {
                code,
                message,
                exit_status,
            }),
            _,
        ) => Outcome::Refused(format!("{}: {message}", code.as_str()), exit_status),
        (Err(e), _) => Outcome::Failed(e.to_string()),
    };
    run.duration = started.elapsed();
    // Kept for the end; what a Vec grew past its contents is not.
    run.stdout.shrink_to_fit();
    run.stderr.shrink_to_fit();
    run
}

/// Prints the hosts' records (`--json`) or their output grouped by
/// identical output and status (`--gather`); streamed output was printed
/// as it came.
fn print_results(results: &[HostRun], json: bool, gather: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for r in results {
            writeln!(out, "{}", serde_json::to_string(&r.record())?)?;
        }
    } else if gather {
        // Identical output and status, grouped: clush -b / dshbak -c.
        // (stdout, stderr, status) -> hosts
        type Key = (Vec<u8>, Vec<u8>, String);
        let mut groups: BTreeMap<Key, Vec<&str>> = BTreeMap::new();
        for r in results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Exit(_) | Outcome::Detached(_)))
        {
            groups
                .entry((r.stdout.clone(), r.stderr.clone(), r.describe()))
                .or_default()
                .push(&r.host);
        }
        for ((stdout, stderr, status), hosts) in groups {
            writeln!(out, "----------------")?;
            writeln!(out, "{} ({status})", crate::hosts::fold(&hosts))?;
            writeln!(out, "----------------")?;
            out.write_all(&stdout)?;
            out.write_all(&stderr)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The fan-out summary on stderr: how many hosts, how many failed and
/// why each did; hosts not started, folded by why.
pub(super) fn summary(total: usize, failed: &[(&str, String)], skipped: &[(&str, String)]) {
    let skipped_note = match skipped.len() {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    say!(
        "switchboard: {total} host{}, {} ok, {} failed{skipped_note}",
        if total == 1 { "" } else { "s" },
        total - failed.len() - skipped.len(),
        failed.len()
    );
    for (host, why) in failed {
        say!("  {host}: {why}");
    }
    let mut by_why: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (host, why) in skipped {
        by_why.entry(why).or_default().push(host);
    }
    for (why, hosts) in by_why {
        say!("  skipped ({why}): {}", crate::hosts::fold(&hosts));
    }
}

/// Descriptors the client keeps for itself besides its hosts'.
const FD_RESERVE: u64 = 64;

/// `--fanout` within the open-file limit (raised to the hard limit
/// first), for hosts that hold `per_host` descriptors each while they
/// run: hosts past it wait for a slot instead of failing with EMFILE.
pub(super) fn width_within_fds(width: usize, per_host: u64) -> usize {
    let limit = crate::sys::raise_fd_limit().unwrap_or(1024);
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE) / per_host.max(1))
        .unwrap_or(usize::MAX)
        .max(1);
    if width > room {
        say!(
            "switchboard: --fanout {width} would pass the open-file limit ({limit}): {room} at a time"
        );
    }
    width.min(room)
}

/// Where a host stands in a rollout.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place {
    /// From 1 (a plain fan-out is one wave).
    pub wave: usize,
    pub canary: bool,
}

/// Runs `run` for the hosts at the `which` indices, `width` at a time,
/// started in the order of `which` (a slot is taken before a host's task
/// exists, so tasks cannot overtake each other to it); (index, result)
/// pairs in that order.
async fn run_some<R, F, Fut>(
    hosts: &[String],
    which: &[usize],
    width: usize,
    run: F,
) -> Vec<(usize, R)>
where
    R: Send + 'static,
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(width.max(1)));
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for &i in which {
        let Some(host) = hosts.get(i) else { continue };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (run, done, host) = (run.clone(), done.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let r = run(host).await;
            done.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = std::mem::take(&mut *done.lock().unwrap_or_else(|e| e.into_inner()));
    v.sort_by_key(|(i, _)| which.iter().position(|w| w == i));
    v
}

/// Runs `run` for every host, `width` at a time; the results in the
/// hosts' order.
pub(super) async fn run_all<R, F, Fut>(hosts: &[String], width: usize, run: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let all: Vec<usize> = (0..hosts.len()).collect();
    let v = run_some(hosts, &all, width, run).await;
    v.into_iter().map(|(_, r)| r).collect()
}

/// Runs every host in the waves `rollout` makes of them, `width` at a time
/// within a wave; the results in the hosts' order. Shared by `exec
/// --hosts` and `put`/`get --hosts`.
pub(super) async fn run_rollout<R, F, Fut, S>(
    hosts: &[String],
    width: usize,
    rollout: &Rollout,
    run: F,
    skip: S,
    failed: fn(&R) -> bool,
) -> anyhow::Result<Vec<R>>
where
    R: Send + 'static,
    F: Fn(String, Place) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
    S: Fn(String, Place, String) -> R + Clone + Send + Sync + 'static,
{
    let waves = rollout.waves(hosts).map_err(anyhow::Error::msg)?;
    let gate = Arc::new(rollout.gate(hosts.len()));
    let mut out: Vec<Option<R>> = hosts.iter().map(|_| None).collect();
    let mut stop: Option<String> = None;
    for wave in &waves {
        let place = Place {
            wave: wave.number,
            canary: wave.canary,
        };
        if let Some(why) = &stop {
            for &i in &wave.hosts {
                if let (Some(slot), Some(host)) = (out.get_mut(i), hosts.get(i)) {
                    *slot = Some(skip(host.clone(), place, why.clone()));
                }
            }
            continue;
        }
        if waves.len() > 1 {
            say!(
                "switchboard: wave {} of {}{}: {} host{}",
                wave.number,
                waves.len(),
                if wave.canary { " (canary)" } else { "" },
                wave.hosts.len(),
                if wave.hosts.len() == 1 { "" } else { "s" }
            );
        }
        let (run, skip, gate2) = (run.clone(), skip.clone(), gate.clone());
        let ran = run_some(hosts, &wave.hosts, width, move |host| {
            let (run, skip, gate) = (run.clone(), skip.clone(), gate2.clone());
            async move {
                // Asked once a slot is free: hosts waiting for one when
                // the gate closes are not started.
                if !gate.open() {
                    return skip(host, place, gate.reason());
                }
                let r = run(host, place).await;
                gate.record(failed(&r));
                r
            }
        })
        .await;
        for (i, r) in ran {
            if wave.canary && failed(&r) {
                stop = Some(crate::rollout::CANARY_FAILED.into());
            }
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(r);
            }
        }
        if stop.is_none() && !gate.open() {
            stop = Some(gate.reason());
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Runs `words` on every one of `hosts` (expanded by [`crate::hosts::expand`]).
pub fn fanout(
    args: ExecArgs,
    hosts: Vec<String>,
    words: Vec<String>,
    auth: ClientAuth,
    encoding: Option<&'static encoding_rs::Encoding>,
) -> anyhow::Result<ExitCode> {
    if stdin_has_input() {
        say!("switchboard: warning: stdin is not sent to the hosts (fan-out jobs read /dev/null)");
    }
    if words.is_empty() {
        anyhow::bail!("--hosts needs a command: switchboard exec --hosts HOSTS -- CMD");
    }
    let (gather, json, max_rc) = (args.gather, args.json, args.max_rc);
    let width = width_within_fds(args.fan.fanout, 1);
    let rollout = args.fan.rollout()?;
    let plan = Arc::new(Plan {
        stream: !gather && !json,
        keep: keep_per_host(args.max_output, gather || json, hosts.len()),
        encoding,
        args,
        auth,
        words,
    });
    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let results = rt.block_on(run_rollout(
        &hosts,
        width,
        &rollout,
        move |host, place| run_host(host, place, plan.clone()),
        |host, place, why| HostRun::new(host, place, Outcome::Skipped(why)),
        |r: &HostRun| r.status() != 0,
    ))?;
    print_results(&results, json, gather)?;
    let failed: Vec<&HostRun> = results.iter().filter(|r| r.status() != 0).collect();
    if !json {
        let (mut why, mut skipped) = (Vec::new(), Vec::new());
        for r in &failed {
            match &r.outcome {
                Outcome::Skipped(s) => skipped.push((r.host.as_str(), s.clone())),
                _ => why.push((r.host.as_str(), r.describe())),
            }
        }
        summary(results.len(), &why, &skipped);
        // Text and --gather show no record: say whose output is not whole.
        let cut: Vec<&str> = results
            .iter()
            .filter(|r| r.truncated || r.dropped > 0)
            .map(|r| r.host.as_str())
            .collect();
        if !cut.is_empty() {
            say!(
                "switchboard: output truncated (max_output) on {} host{}: {}",
                cut.len(),
                if cut.len() == 1 { "" } else { "s" },
                crate::hosts::fold(&cut)
            );
        }
    }
    let code = match (failed.is_empty(), max_rc) {
        (true, _) => 0,
        (false, true) => results.iter().map(HostRun::status).max().unwrap_or(0),
        (false, false) => 1,
    };
    Ok(ExitCode::from(code))
}

/// Whether stdin is a pipe or a file: input the user meant for the jobs.
/// A terminal or /dev/null is not.
fn stdin_has_input() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd).metadata().is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_file() || t.is_socket()
    })
}
