//! Relay chains (PROTOCOL.md §3.9): a file sent once by the client,
//! stored by each host and passed on to the next as it arrives.
//!
//! No host logs in to another with the client's credentials. The client,
//! logged in to every host itself, tells each host but the first what
//! will come (`expect`: the destination, the length, the SHA-256 and the
//! hosts after it) and gets a ticket back; the host before it logs in with
//! that ticket and can only bring those bytes, which must hash as the
//! client said. Each host reports to the client on the client's own
//! connection, so no host vouches for another.
//!
//! ```text
//! client ── expect {hops after H2} ─> H2 ── ticket T2 ─> client    (H3.. likewise, last first)
//! client ── put {relay: [H2/T2, H3/T3, ...]} + data ─> H1
//!   H1: write .sb-part ─┬─> stored (to client, after its hop is done)
//!                       └─> client::relay::forward: auth {ticket T2}, put + data read back ─> H2
//!   H2: same with the hops it was told by the client; stored/error ─> client (on its own connection)
//! a hop that cannot be reached, or fails, is passed over for the next one
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::policy::Refusal;
use crate::identity::Identity;
use crate::proto::transfer::{Hop, MAX_RELAY_HOPS, PutRequest};
use crate::proto::{ErrorCode, ServerMsg};

/// Tickets outstanding over the server at most (each holds a header's
/// worth at most, 64 KiB by default): more `expect`s get `busy`.
pub const MAX_TICKETS: usize = 1024;

/// A relay chain as a client gave it: at most [`MAX_RELAY_HOPS`] hosts,
/// each a plain `tcp://` address (a hop over TLS would need the next
/// host's certificate, which this side cannot check yet) with a ticket.
pub fn check_hops(hops: &[Hop]) -> Result<(), Refusal> {
    let bad = |why: String| Err(Refusal::new(ErrorCode::BadRequest, why));
    if hops.len() > MAX_RELAY_HOPS {
        return bad(format!(
            "a relay chain holds at most {MAX_RELAY_HOPS} hosts"
        ));
    }
    for h in hops {
        if h.addr.starts_with("tls://") {
            return bad(format!("{}: relaying over TLS is not supported", h.addr));
        }
        if !crate::proto::auth::is_nonce(&h.ticket) {
            return bad(format!("{}: not a relay ticket", h.addr));
        }
    }
    Ok(())
}

/// What an `expect` fixed, for the connection that brings the file.
#[derive(Debug)]
pub struct Ticket {
    /// Its key in [`Tickets`] (set when issued).
    pub key: TicketKey,
    /// The `expect`'s id on the registering connection (its reports).
    pub expect_id: u64,
    /// The put as the client gave it: destination, length, mode, and the
    /// hops after this host.
    pub put: PutRequest,
    pub sha256: String,
    /// Who registered it, and from where: the bringing connection is
    /// judged as that identity, from that address.
    pub who: Identity,
    pub judged_from: IpAddr,
    /// The registering connection's frames: the verdict goes there.
    pub report: mpsc::Sender<ServerMsg>,
    /// The connection bringing the file now: a newer one takes over (the
    /// host before was passed over by the one before it).
    holder: Mutex<Option<CancellationToken>>,
}

impl Ticket {
    pub fn new(
        expect_id: u64,
        put: PutRequest,
        sha256: String,
        who: Identity,
        judged_from: IpAddr,
        report: mpsc::Sender<ServerMsg>,
    ) -> Ticket {
        Ticket {
            key: [0; 32],
            expect_id,
            put,
            sha256,
            who,
            judged_from,
            report,
            holder: Mutex::new(None),
        }
    }

    /// Makes `conn` the connection bringing the file, ending the one
    /// before it, if any.
    pub fn hold(&self, conn: CancellationToken) {
        let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = holder.replace(conn) {
            old.cancel();
        }
    }
}

/// The tickets of the server, by the SHA-256 of their text (a lookup by
/// hash does not leak the ticket through timing).
#[derive(Default)]
pub struct Tickets {
    map: Mutex<HashMap<[u8; 32], Arc<Ticket>>>,
}

/// A ticket's key in [`Tickets`].
pub type TicketKey = [u8; 32];

impl Tickets {
    /// Issues a ticket: its text for the client, its key for the
    /// registering connection to withdraw it. `None` at [`MAX_TICKETS`].
    pub fn issue(&self, mut t: Ticket) -> Option<(String, TicketKey)> {
        let text = crate::proto::auth::nonce().ok()?;
        let key: TicketKey = Sha256::digest(text.as_bytes()).into();
        t.key = key;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TICKETS {
            return None;
        }
        map.insert(key, Arc::new(t));
        Some((text, key))
    }

    pub fn find(&self, text: &str) -> Option<Arc<Ticket>> {
        let key: TicketKey = Sha256::digest(text.as_bytes()).into();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).cloned()
    }

    pub fn contains(&self, key: &TicketKey) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(key)
    }

    /// Withdraws a ticket (its file arrived, failed, or its registering
    /// connection closed); the connection bringing it ends too.
    pub fn withdraw(&self, key: &TicketKey) {
        let t = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(key)
        };
        if let Some(t) = t
            && let Some(h) = t.holder.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            h.cancel();
        }
    }
}
