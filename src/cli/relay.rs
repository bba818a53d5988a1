//! `switchboard put --hosts HOSTS --relay FILE DEST` (PROTOCOL.md §3.9):
//! the file leaves this machine once; each host stores it and passes it
//! on to the next as it arrives.
//!
//! ```text
//! 1. log in to every host (as --hosts does), hash FILE
//! 2. expect on each host, last first: each gets the hosts after it, with their tickets
//! 3. forward FILE to the first host that takes it (its ticket), which passes it on
//! 4. each host's verdict, from that host on this side's own connection
//! ```
//!
//! A host is only ever told the file by the client itself: another host
//! brings the bytes, and they must hash as the client said.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use sha2::Digest;

use super::TransferArgs;
use super::transfer::{OUTPUT_WINDOW, Plan, entry_request, own_name};
use crate::client::relay::forward;
use crate::client::{ClientAuth, ExecClient};
use crate::proto::transfer::{EntryKind, Hop, PutRequest, Stored, hash_prefix, hex};

/// How long a host's verdict may lag behind the chain's end (they travel
/// on different connections; a host sends its verdict before it answers
/// the host before it). A host the chain passed over may have none: it
/// gets the short one.
const VERDICT_GRACE: Duration = Duration::from_secs(5);
const PASSED_OVER_GRACE: Duration = Duration::from_secs(1);

/// One host of the chain as this side sees it.
struct Host {
    label: String,
    client: Option<ExecClient>,
    /// The `expect`'s id and the ticket it issued.
    ticket: Option<(u64, String)>,
    /// Why it has no part (or no more) in the chain.
    error: Option<String>,
}

pub(super) fn put(args: TransferArgs, plan: Plan) -> anyhow::Result<ExitCode> {
    let [src] = plan.sources.as_slice() else {
        bail!("--relay sends one file");
    };
    let src = Path::new(src);
    let meta = std::fs::metadata(src).with_context(|| src.display().to_string())?;
    if !meta.is_file() {
        bail!("{}: --relay sends one regular file", src.display());
    }
    if !args.fan.rollout()?.is_plain() {
        bail!(
            "--relay sends through every host in one chain: --canary, --batch and --max-fail do not apply"
        );
    }
    let hosts = plan.hosts.clone().unwrap_or_default();
    if let Some(h) = hosts.iter().find(|h| h.starts_with("tls://")) {
        bail!("{h}: --relay goes over plain TCP only (hosts cannot check each other's TLS yet)");
    }
    let file = std::fs::File::open(src).with_context(|| src.display().to_string())?;
    let size = meta.len();
    let sha256 = hex(&hash_prefix(&file, size)
        .with_context(|| src.display().to_string())?
        .finalize());
    let req = PutRequest {
        path: plan.dest.clone(),
        name: Some(own_name(src)?),
        ..entry_request(&meta, EntryKind::File, &args)
    };
    let auth = ClientAuth {
        window: true,
        output_window: Some(OUTPUT_WINDOW),
        ..args.conn.auth()?
    };
    let _ = crate::sys::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let width = args.fan.fanout;
    let args = std::sync::Arc::new(args);
    let conns = {
        let (args, auth) = (args.clone(), auth.clone());
        rt.block_on(super::fanout::run_all(&hosts, width, move |host| {
            let (args, auth) = (args.clone(), auth.clone());
            async move {
                let c = args.conn.connect(&host, None, &auth).await;
                (host, c)
            }
        }))
    };
    let mut chain: Vec<Host> = conns
        .into_iter()
        .map(|(label, c)| match c {
            Ok(c) => Host {
                label,
                client: Some(c),
                ticket: None,
                error: None,
            },
            Err(e) => Host {
                label,
                client: None,
                ticket: None,
                error: Some(format!("{e:#}")),
            },
        })
        .collect();
    let (sent, verdicts) = rt.block_on(run(&mut chain, req, file, &sha256));
    report(&args, src, &chain, &verdicts, sent)
}

/// Registers the chain, sends the file, gathers the verdicts: the bytes
/// sent, and each host's verdict (`None`: none came).
async fn run(
    chain: &mut [Host],
    req: PutRequest,
    file: std::fs::File,
    sha256: &str,
) -> (u64, Vec<Option<Result<Stored, String>>>) {
    // Last first: each host is told the tickets of the hosts after it.
    let mut hops: Vec<Hop> = Vec::new();
    for h in chain.iter_mut().rev() {
        let Some(c) = h.client.as_mut() else { continue };
        let r = PutRequest {
            relay: hops.clone(),
            ..req.clone()
        };
        match c.expect_file(r, sha256).await {
            Ok((id, ticket)) => {
                hops.insert(
                    0,
                    Hop {
                        addr: h.label.clone(),
                        ticket: ticket.clone(),
                    },
                );
                h.ticket = Some((id, ticket));
            }
            Err(e) => {
                h.error = Some(format!("{e:#}"));
                h.client = None;
            }
        }
    }
    // Each host's verdict, on its own connection, while the file goes.
    let mut waits = Vec::new();
    for h in chain.iter_mut() {
        let (Some(mut c), Some((id, _))) = (h.client.take(), h.ticket.clone()) else {
            waits.push(None);
            continue;
        };
        waits.push(Some(tokio::spawn(async move {
            c.expected(id).await.map_err(|e| format!("{e:#}"))
        })));
    }
    let (written_tx, written) = tokio::sync::watch::channel(req.size);
    let sent = if hops.is_empty() {
        crate::client::relay::Forwarded::default()
    } else {
        let cancel = tokio_util::sync::CancellationToken::new();
        forward(req, file, written, hops, cancel).await
    };
    drop(written_tx);
    // Hosts the chain passed over may say nothing: their reason is its.
    let now = tokio::time::Instant::now();
    let mut verdicts = Vec::new();
    for (h, w) in chain.iter_mut().zip(waits) {
        let Some(w) = w else {
            verdicts.push(None);
            continue;
        };
        let passed_over = sent
            .fared
            .iter()
            .find(|f| f.addr == h.label && !f.ok)
            .and_then(|f| f.error.clone());
        let grace = if passed_over.is_some() {
            PASSED_OVER_GRACE
        } else {
            VERDICT_GRACE
        };
        let v = match tokio::time::timeout_at(now + grace, w).await {
            Ok(Ok(v)) => Some(v),
            _ => {
                h.error = Some(passed_over.unwrap_or_else(|| "no verdict from the host".into()));
                None
            }
        };
        verdicts.push(v);
    }
    (sent.sent, verdicts)
}

/// One JSON record per host (with --json), the summary, the exit status.
fn report(
    args: &TransferArgs,
    src: &Path,
    chain: &[Host],
    verdicts: &[Option<Result<Stored, String>>],
    sent: u64,
) -> anyhow::Result<ExitCode> {
    let mut failed = Vec::new();
    for (i, (h, v)) in chain.iter().zip(verdicts).enumerate() {
        // What this side sent goes on the first record: one file's worth.
        let sent = if i == 0 { sent } else { 0 };
        let record = match v {
            Some(Ok(s)) => json!({
                "direction": "put", "host": h.label, "source": src, "path": s.path,
                "bytes": s.bytes, "sent": sent, "sha256": s.sha256, "relay": true, "ok": true,
            }),
            other => {
                let why = match other {
                    Some(Err(e)) => e.clone(),
                    _ => h.error.clone().unwrap_or_else(|| "not reached".into()),
                };
                say!("switchboard: {}: put {}: {why}", h.label, src.display());
                failed.push((h.label.as_str(), why.clone()));
                json!({
                    "direction": "put", "host": h.label, "source": src, "sent": sent,
                    "relay": true, "ok": false, "message": why,
                })
            }
        };
        if args.json {
            println!("{record}");
        }
    }
    super::fanout::summary(chain.len(), &failed, &[]);
    Ok(ExitCode::from(u8::from(!failed.is_empty())))
}
