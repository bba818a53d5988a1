//! The sending side of a relay chain (PROTOCOL.md §3.9), shared by the
//! CLI (`put --hosts --relay`, the chain's start) and by each relay host
//! (passing on what it receives): send one file to the first of a list
//! of hosts that takes it whole, logging in with that host's ticket, and
//! go on to the next when one fails.
//!
//! ```text
//! forward(file, [H1/T1, H2/T2, ...]) ── auth {ticket T1}, put, data... ─> H1 ── stored {relayed} ─> done
//!                                    └─ H1 unreachable or failed ─> H2, from the start
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ClientAuth, ExecClient};
use crate::proto::transfer::{Hop, PutRequest, RELAY_STALL, Relayed};

/// How long a hop has to answer the connection and the login.
const HOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The output window a sender gives (it reads nothing but replies).
const HOP_OUTPUT_WINDOW: u64 = 1 << 20;

/// What a [`forward`] did.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// How each hop tried fared, then what the one that took the file
    /// said of those after it.
    pub fared: Vec<Relayed>,
    /// Bytes of data sent, over every hop tried.
    pub sent: u64,
}

/// Sends `file` to the first of `hops` that takes it whole, as
/// `template` says (its `relay` left out: each host has its own from the
/// client), reading it as `written` says it grows to `template.size`;
/// hops that fail are passed over.
pub async fn forward(
    template: PutRequest,
    file: std::fs::File,
    written: tokio::sync::watch::Receiver<u64>,
    hops: Vec<Hop>,
    cancel: CancellationToken,
) -> Forwarded {
    let mut done = Forwarded::default();
    let fared = &mut done.fared;
    for (i, hop) in hops.iter().enumerate() {
        let Ok(file) = file.try_clone() else {
            break;
        };
        let put = PutRequest {
            relay: Vec::new(),
            ..template.clone()
        };
        let tried = tokio::select! {
            r = to_hop(hop, put, file, written.clone(), hops.len() - i - 1) => r,
            () = cancel.cancelled() => return done,
        };
        match tried {
            Ok((sent, mut after)) => {
                fared.push(Relayed {
                    addr: hop.addr.clone(),
                    ok: true,
                    error: None,
                });
                fared.append(&mut after);
                done.sent += sent;
                return done;
            }
            Err((sent, e)) => {
                done.sent += sent;
                tracing::warn!(hop = %hop.addr, error = %e, "relay hop failed; passing it over");
                fared.push(Relayed {
                    addr: hop.addr.clone(),
                    ok: false,
                    error: Some(e),
                });
                if written.has_changed().is_err() && *written.borrow() < template.size {
                    // The file stopped arriving here: nothing to pass on.
                    fared.extend(hops.iter().skip(i + 1).map(|h| Relayed {
                        addr: h.addr.clone(),
                        ok: false,
                        error: Some("not reached: the host before it failed".into()),
                    }));
                    return done;
                }
            }
        }
    }
    done
}

/// One hop: log in with its ticket, send the file as it grows; the bytes
/// sent, and what it said of the hops after it (`after` of them at most).
async fn to_hop(
    hop: &Hop,
    put: PutRequest,
    file: std::fs::File,
    written: tokio::sync::watch::Receiver<u64>,
    after: usize,
) -> Result<(u64, Vec<Relayed>), (u64, String)> {
    let auth = ClientAuth::ticket(hop.ticket.clone(), HOP_OUTPUT_WINDOW);
    let addr = hop.addr.strip_prefix("tcp://").unwrap_or(&hop.addr);
    let mut c = ExecClient::connect(addr, &auth, HOP_TIMEOUT)
        .await
        .map_err(|e| (0, e.to_string()))?;
    let name = PathBuf::from(&put.path);
    let size = put.size;
    // Sent from 0 (no resume for a growing file): the progress is the
    // count, and each call a sign of the hop's life.
    let sent = AtomicU64::new(0);
    let start = tokio::time::Instant::now();
    let alive = AtomicU64::new(0);
    let ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let seen = |at: u64, _| {
        sent.fetch_max(at, Ordering::Relaxed);
        alive.store(ms(), Ordering::Relaxed);
    };
    let sending = c.put_from(put, file, &name, Some(written.clone()), Some(&seen));
    // A hop that stops taking data, or goes silent once it has it all, is
    // passed over; waiting for this host's own input is not its fault.
    // Once it has it all, its heartbeats keep it only so long: each host
    // after it may take a stall and a resend of the whole file (found by
    // attack: a hop that heartbeats forever held the chain).
    let stall = u64::try_from(RELAY_STALL.as_millis()).unwrap_or(u64::MAX);
    let stalled = async {
        let mut all_sent_at = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (have, now) = (*written.borrow(), ms());
            let took = sent.load(Ordering::Relaxed);
            if have <= took && have < size {
                alive.store(now, Ordering::Relaxed);
            } else if now.saturating_sub(alive.load(Ordering::Relaxed)) > stall {
                return;
            }
            if took >= size {
                let at = *all_sent_at.get_or_insert(now);
                let rest = (after as u64 + 1).saturating_mul(stall.saturating_add(2 * at));
                if now.saturating_sub(at) > stall.saturating_add(rest) {
                    return;
                }
            }
        }
    };
    let put = tokio::select! {
        r = sending => r.map_err(|e| (sent.load(Ordering::Relaxed), e.to_string()))?,
        () = stalled => {
            let why = format!("no sign of life for {RELAY_STALL:?}: passed over");
            return Err((sent.load(Ordering::Relaxed), why));
        }
    };
    Ok((put.sent, put.stored.relayed))
}
