//! One native exec connection: handshake, then many concurrent jobs.
//!
//! ```text
//! socket ─read─> FrameCodec ─> session loop ──spawn──> job tasks
//!                                   │                     │ stdout/stderr frames
//!                                   ▼                     ▼
//! socket <─write─ FrameCodec <─ writer task <── bounded channel (back-pressure)
//! ```
//!
//! The session loop owns the job table. A job's `exit` goes through the
//! loop, which removes the job before queueing the frame, so a client may
//! reuse an id as soon as it has seen `exit`. Every output frame of a job is
//! queued before its `exit`. When the loop ends (disconnect, protocol error,
//! shutdown) every job's group is killed (TERM, then KILL) and reaped.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::{BoxRead, BoxWrite};
use bytes::Bytes;
use futures_util::StreamExt;
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::detached::{self, Detached};
use super::job::{self, JobTiming};
use super::policy::Refusal;
use super::process::{self, JobSpec};
use super::relay::{Ticket, TicketKey};
use super::transfer;
use super::{ExecShared, IdentitySlot, PerIdentity, audit};
use crate::identity::{AuthMode, Identity, Presented, Proof, Restrictions};
use crate::proto::auth::{self, KEY_NAMESPACE, Role, is_nonce};
use crate::proto::jobs::{self, AttachRequest, JobInfo, JobState, KillRequest};
use crate::proto::message::{OUTPUT_WINDOWS, STDIN_FRAME_COST, Stamp};
use crate::proto::transfer::{EntryKind, ExpectRequest, Hop, PutRequest, Stored};
use crate::proto::{
    ClientMsg, ErrorCode, ExecRequest, ExitStatus, FrameCodec, FrameWriter, ParseError, ServerMsg,
    VERSION,
};
use crate::server::listener::TurnedAway;
use crate::server::sources::HandshakeGuard;
use std::sync::atomic::{AtomicU64, Ordering};

/// Frames queued for the writer; small, so a client that stops reading
/// stops the jobs quickly.
const WRITE_QUEUE: usize = 16;
/// Why jobs end and connections close when the server stops.
pub(super) const SHUTTING_DOWN: &str = "server shutting down";
/// Stdin chunks queued per job.
const STDIN_QUEUE: usize = 4;
/// Output frames queued for a detached job's ring.
const HUB_QUEUE: usize = 1;

/// A request that passed every check, holding its job slot.
struct Admission {
    id: u64,
    spec: JobSpec,
    /// The command as the policy approved it, for the log and the audit.
    approved: crate::proto::Command,
    timing: JobTiming,
    /// Its `max_output`, if it has one.
    cap: Option<Arc<job::OutputCap>>,
    /// Its frames stamped with the time (`timestamps`).
    timestamps: bool,
    /// Who the connection authenticated as, for the audit.
    who: Arc<Identity>,
    slot: crate::server::limit::LimitGuard,
    /// The identity's job, for its `max-jobs=`.
    identity_slot: IdentitySlot,
    /// (§3.10) To be detached: its ID, and its place under the limits.
    detach: Option<(String, detached::Reservation)>,
}

/// A running transfer and the job slots it holds.
struct TransferSlot {
    handle: transfer::Handle,
    _slot: crate::server::limit::LimitGuard,
    _identity_slot: IdentitySlot,
}

struct JobHandle {
    group: Group,
    stdin: Option<Stdin>,
    /// The job's terminal, for `resize`.
    pty: Option<super::pty::Pty>,
    /// The job's output window, when the client gave one.
    output: Option<Arc<job::OutputWindow>>,
    /// Kills the job; for an attachment, ends the attachment only.
    cancel: CancellationToken,
}

/// What a job id of the connection stands for.
enum Group {
    /// A job of its own, with its process group.
    Own(Pid),
    /// (§3.10) An attachment to a detached job, which is not the
    /// connection's to kill.
    Attached(Arc<Detached>),
}

impl JobHandle {
    /// The group the connection kills when it closes.
    fn own_group(&self) -> Option<Pid> {
        match self.group {
            Group::Own(p) => Some(p),
            Group::Attached(_) => None,
        }
    }
}

/// The session's end of a job's stdin.
struct Stdin {
    tx: mpsc::Sender<Bytes>,
    /// With windows: what the job's stdin holds against its window (each
    /// frame's bytes plus [`STDIN_FRAME_COST`]), given back as the job
    /// takes it.
    charged: Option<Arc<AtomicU64>>,
}

/// A job's end, reported to the session loop.
struct JobDone {
    id: u64,
    /// The job's group, for a job of the connection's own (`None`: an
    /// attachment).
    pgid: Option<Pid>,
    status: ExitStatus,
    /// Output dropped past `max_output` (an attachment's: also what fell
    /// out of the job's buffer before it was sent).
    dropped: u64,
    /// Stopped for passing `max_output`.
    capped: bool,
    /// Why a detached job ended, as it recorded it.
    reason: Option<String>,
    /// An attachment that ended without its job (taken over).
    detached: bool,
}

/// The `error` frame a plain-TCP exec connection gets when it is turned
/// away before its handshake, in place of `hello`, so the client can say
/// why instead of "the server closed the connection".
pub fn turned_away_frame(why: TurnedAway) -> Vec<u8> {
    use crate::server::sources::Refusal;
    let (code, message) = match why {
        TurnedAway::Limit => (
            ErrorCode::Busy,
            "the server is at its connection limit (exec.max_connections); try again later",
        ),
        TurnedAway::Source(Refusal::PerSource) => (
            ErrorCode::Busy,
            "too many connections from your address (exec.max_connections_per_source)",
        ),
        TurnedAway::Source(Refusal::Penalty) => (
            ErrorCode::AuthFailed,
            "too many failed logins from your address: refused for a while \
             (exec.auth_penalty, doubling up to exec.auth_penalty_max)",
        ),
        TurnedAway::Source(Refusal::Unauthenticated) => (
            ErrorCode::Busy,
            "too many connections in their handshake, from your address or in all \
             (exec.max_unauthenticated_per_source, exec.max_startups); try again later",
        ),
    };
    let mut buf = bytes::BytesMut::new();
    let frame = ServerMsg::error(None, code, message).to_frame();
    match tokio_util::codec::Encoder::encode(&mut FrameCodec::default(), frame, &mut buf) {
        Ok(()) => buf.to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Takes a new exec connection: a handshake slot first (before TLS, so a
/// TLS handshake counts as unauthenticated too), then the TLS handshake if
/// any, then `serve`. One deadline, `handshake_timeout`, covers the TLS
/// and the token handshakes together.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<ExecShared>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // MaxStartups: a bounded number of connections may be unauthenticated
    // at once, in all and per source, so a flood of silent connections
    // cannot lock everyone else out until their handshake deadlines.
    let live = shared.live();
    let cfg = &live.cfg;
    let Ok(slot) = shared.sources.start_handshake(
        peer.ip(),
        cfg.max_startups,
        cfg.max_unauthenticated_per_source,
        cfg.unauthenticated_penalty,
    ) else {
        shared.counters.rejected_handshake.inc();
        debug!("too many unauthenticated connections; closing");
        if tls.is_none() {
            crate::server::listener::say_why(
                &stream,
                Some(turned_away_frame),
                TurnedAway::Source(crate::server::sources::Refusal::Unauthenticated),
            );
        }
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let mut link = Link {
        peer,
        tls: tls.is_some(),
        fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
        channel: None,
    };
    let Some(acceptor) = tls else {
        return serve(stream, link, slot, deadline, shared, shutdown).await;
    };
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = slot.evicted().cancelled() => {
            debug!("handshake slot taken over by another source");
            return Ok(());
        }
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return Ok(());
            }
            Err(_) => {
                debug!("TLS handshake deadline passed");
                return Ok(());
            }
        },
    };
    link.fd = std::os::fd::AsRawFd::as_raw_fd(stream.get_ref().0);
    // Key signatures are bound to this TLS session (PROTOCOL.md §3.7).
    link.channel = stream
        .get_ref()
        .1
        .export_keying_material([0u8; 32], auth::EXPORTER_LABEL, None)
        .ok();
    serve(stream, link, slot, deadline, shared, shutdown).await
}

/// What a session knows of its connection besides its bytes.
#[derive(Debug, Clone, Copy)]
struct Link {
    peer: SocketAddr,
    /// Over TLS (for the byte counters).
    tls: bool,
    /// The TCP socket under the stream (TLS or not), for
    /// [`crate::net::peer_gone`]; open for as long as the session runs,
    /// which owns the stream's halves.
    fd: std::os::fd::RawFd,
    /// Under TLS: the session's exporter value, which key signatures
    /// cover ([`auth::EXPORTER_LABEL`]).
    channel: Option<[u8; 32]>,
}

/// Serves one connection until the client leaves, breaks the protocol, or
/// `shutdown` fires. `slot` is its handshake slot, given back once the
/// handshake is over; the handshake must end by `deadline`.
async fn serve(
    stream: impl crate::net::IntoHalves,
    link: Link,
    handshake_slot: HandshakeGuard,
    deadline: tokio::time::Instant,
    shared: Arc<ExecShared>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let live = shared.live();
    let cfg = &live.cfg;
    let peer = link.peer;
    let (rd, wr) = stream.into_halves();
    let codec = || FrameCodec::new(cfg.max_header, cfg.max_body);
    let mut reader = FramedRead::new(rd, codec());
    let (tx, rx) = mpsc::channel::<ServerMsg>(WRITE_QUEUE);
    let mut writer = tokio::spawn(write_loop(FrameWriter::new(wr, codec()), rx));
    // From before the handshake, which judges the key by the files as
    // they were at its start: a reload during it is seen by the session.
    let reloads = shared.reloads();

    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Handshake::Abandoned,
        _ = handshake_slot.evicted().cancelled() => {
            debug!("handshake slot taken over by another source");
            Handshake::Abandoned
        }
        r = tokio::time::timeout_at(deadline, handshake(&mut reader, &tx, &live, &link, &shared)) => match r {
            Ok(outcome) => outcome,
            Err(_) => {
                debug!("handshake deadline passed");
                Handshake::Abandoned
            }
        },
    };
    match &outcome {
        Handshake::Ok { .. } => {
            handshake_slot.authenticated();
            shared.sources.auth_ok(peer.ip());
        }
        Handshake::Failed(Failed { why, key, named }) => {
            drop(handshake_slot);
            shared.counters.auth_failures.inc();
            shared.counters.identity_auth_failure(named);
            info!(%why, key = key.as_deref().unwrap_or("-"), "authentication failed");
            audit::login_failed(peer, key.as_deref(), why);
            let (penalty, failures) =
                shared
                    .sources
                    .auth_failed(peer.ip(), cfg.auth_penalty, cfg.auth_penalty_max);
            if let Some(p) = penalty {
                warn!(
                    failures,
                    penalty = ?p,
                    "failed logins from this address: its connections are refused for the penalty"
                );
            }
        }
        Handshake::Refused { who, why } => {
            drop(handshake_slot);
            shared.counters.rejected_identity.inc();
            info!(identity = %who.name, %why, "login refused");
            audit::login_refused(peer, who, why);
        }
        Handshake::Abandoned => drop(handshake_slot),
    }
    let authenticated = matches!(outcome, Handshake::Ok { .. });
    if let Handshake::Ok {
        stdin_window,
        output_window,
        who,
        identity_slot,
        ticket,
    } = outcome
    {
        // What this connection proved, judged now, as it authenticates: a
        // reload changes neither. The token file is judged again here: one
        // exposed since the last reload proves nothing.
        let proved = match &who.proof {
            Proof::Token(digest) => Some(*digest),
            _ => None,
        };
        let conn_cancel = shutdown.child_token();
        let server_shutdown = shutdown.clone();
        let judged_from = match &ticket {
            Some(t) => {
                t.hold(conn_cancel.clone());
                t.judged_from
            }
            None => link.peer.ip(),
        };
        let mut session = Session {
            shared: shared.clone(),
            tx: tx.clone(),
            jobs: HashMap::new(),
            transfers: HashMap::new(),
            transfer_done: mpsc::unbounded_channel(),
            lingering: Vec::new(),
            done: mpsc::unbounded_channel(),
            conn_cancel,
            shutdown: server_shutdown,
            link,
            stdin_window,
            output_window,
            stop: None,
            who: Arc::new(who),
            _identity_slot: identity_slot,
            proved,
            root_rule_at_auth: live
                .policy
                .root_token
                .as_ref()
                .is_some_and(crate::secrets::RootToken::holds),
            judged_from,
            ticket,
            ticket_used: false,
            expects: HashMap::new(),
        };
        session.run(&mut reader, &shutdown, reloads).await;
        let reason = shutdown.is_cancelled().then_some(SHUTTING_DOWN);
        session.close(reason).await;
    }
    drop(tx);
    // The writer flushes what is queued, then half-closes; then what the
    // client still sends is read until it closes. Both within one
    // kill_grace, since the peer may not be reading (2x, as first built:
    // found by attack).
    let deadline = tokio::time::Instant::now() + cfg.kill_grace;
    if tokio::time::timeout_at(deadline, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    } else if authenticated {
        linger(reader.get_mut(), deadline).await;
    }
    Ok(())
}

/// Reads and drops what the client still sends (say, the window grants of
/// a job it was reading when the server stopped) until it closes its end,
/// or `deadline`. Closed with bytes of its unread, the connection would be
/// reset, and the client could lose the last frames sent to it (its jobs'
/// `exit`s and why: found by attack).
async fn linger(rd: &mut BoxRead, deadline: tokio::time::Instant) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    // At most 64 MiB, whatever the deadline.
    for _ in 0..4096 {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

async fn write_loop(mut sink: FrameWriter<BoxWrite>, mut rx: mpsc::Receiver<ServerMsg>) {
    while let Some(msg) = rx.recv().await {
        if sink.feed(msg.to_frame()).await.is_err() {
            return;
        }
        // Write a batch with one flush (one writev when it is small);
        // flush when nothing else is queued.
        while let Ok(msg) = rx.try_recv() {
            if sink.feed(msg.to_frame()).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// How a handshake ended.
#[derive(Debug)]
enum Handshake {
    /// Authenticated as `who`, with the stdin window agreed on if the
    /// client asked for one, and the output window it gave (PROTOCOL.md
    /// §3.6); holding the identity's connection slot.
    Ok {
        stdin_window: Option<u64>,
        output_window: Option<u64>,
        who: Identity,
        identity_slot: IdentitySlot,
        /// (§3.9) Logged in with this relay ticket.
        ticket: Option<Arc<Ticket>>,
    },
    /// Wrong MAC, a key not accepted, or a frame other than `auth`: counts
    /// toward the penalty.
    Failed(Failed),
    /// Authenticated, but the identity is at its `max-connections=`.
    Refused { who: Identity, why: String },
    /// EOF, a protocol error, a deadline: no credential was tried.
    Abandoned,
}

/// A failed login: `why` is for the server's log and audit trail (the
/// client hears less); `key` the fingerprint of the key tried; `named` the
/// identity the metrics count it against.
#[derive(Debug)]
struct Failed {
    why: std::borrow::Cow<'static, str>,
    key: Option<String>,
    named: String,
}

impl Failed {
    fn new(why: impl Into<std::borrow::Cow<'static, str>>, named: &str) -> Failed {
        Failed {
            why: why.into(),
            key: None,
            named: named.into(),
        }
    }
}

/// What the client hears when its key is not accepted, whatever the
/// reason (unknown, revoked, expired, from=, a bad signature): the reason
/// goes to the server's log and audit trail only.
const KEY_NOT_ACCEPTED: &str = "the key was not accepted";

/// Runs §3.2 (and §3.7 for keys); `Ok` when the client is authenticated
/// and `ready` is queued. One step after another as the protocol text has
/// them, so the two can be read side by side.
async fn handshake(
    reader: &mut FramedRead<BoxRead, FrameCodec>,
    tx: &mpsc::Sender<ServerMsg>,
    live: &super::Live,
    link: &Link,
    shared: &ExecShared,
) -> Handshake {
    let creds = &live.credentials;
    let Ok(server_nonce) = auth::nonce() else {
        return Handshake::Abandoned;
    };
    // An old client reads `auth` only: `either` names the token there.
    let (method, methods) = match creds.mode {
        None => ("none", vec![]),
        Some(AuthMode::Token) => ("hmac-sha256", vec![]),
        Some(AuthMode::Key) => ("publickey", vec![]),
        Some(AuthMode::Either) => (
            "hmac-sha256",
            vec!["hmac-sha256".to_string(), "publickey".to_string()],
        ),
    };
    let hello = ServerMsg::Hello {
        version: VERSION,
        server: crate::VERSION.to_string(),
        auth: method.into(),
        nonce: creds.mode.map(|_| server_nonce.clone()),
        methods,
        host_key: creds.keys.as_ref().map(|k| k.host_public()),
    };
    if tx.send(hello).await.is_err() {
        return Handshake::Abandoned;
    }
    let fail = |code: ErrorCode, msg: &str| ServerMsg::error(None, code, msg);
    let frame = match reader.next().await {
        None => return Handshake::Abandoned,
        Some(Err(e)) => {
            let _ = tx.send(fail(ErrorCode::Protocol, &e.to_string())).await;
            return Handshake::Abandoned;
        }
        Some(Ok(f)) => f,
    };
    let is_auth = frame.kind() == "auth";
    let a = match ClientMsg::parse(frame) {
        Ok(ClientMsg::Auth(a)) => a,
        Err(ParseError::BadRequest { message, .. }) if is_auth => {
            let _ = tx.send(fail(ErrorCode::Protocol, &message)).await;
            return Handshake::Abandoned;
        }
        _ => {
            let _ = tx
                .send(fail(ErrorCode::AuthFailed, "authenticate first"))
                .await;
            return Handshake::Failed(Failed::new("a request before authentication", "unknown"));
        }
    };
    if a.version != VERSION {
        let _ = tx
            .send(fail(ErrorCode::Protocol, "unsupported version"))
            .await;
        return Handshake::Abandoned;
    }
    if let Some(w) = a.output_window
        && !OUTPUT_WINDOWS.contains(&w)
    {
        let why = format!(
            "output_window must be between {} and {}",
            OUTPUT_WINDOWS.start(),
            OUTPUT_WINDOWS.end()
        );
        let _ = tx.send(fail(ErrorCode::Protocol, &why)).await;
        return Handshake::Abandoned;
    }
    let client_nonce = a.nonce.clone().filter(|n| is_nonce(n));
    // A relay ticket (§3.9) stands for the identity that had it issued;
    // the connection may then bring one file, nothing else.
    let ticket = a.ticket.as_deref().map(|text| shared.tickets.find(text));
    let proved = match (creds.mode, a.method.as_deref(), &creds.token, &creds.keys) {
        _ if ticket.is_some() => match ticket.clone().flatten() {
            Some(t) => Ok((t.who.clone(), Restrictions::NONE.into(), ServerProof::None)),
            None => Err(Failed::new("an unknown relay ticket", "ticket")),
        },
        (None, _, _, _) => Ok((Identity::NONE, Restrictions::NONE.into(), ServerProof::None)),
        (Some(_), Some("publickey"), _, Some(keys)) => {
            key_login(&a, client_nonce.as_deref(), &server_nonce, keys, link)
        }
        (Some(_), None | Some("hmac-sha256"), Some(token), _) => {
            let ok = match (&client_nonce, &a.mac) {
                (Some(cn), Some(m)) => token.verify_client(&server_nonce, cn, m),
                _ => false,
            };
            match (ok, &client_nonce) {
                (true, Some(cn)) => Ok((
                    Identity::token(token),
                    Restrictions::NONE.into(),
                    ServerProof::Mac(token.server_mac(&server_nonce, cn)),
                )),
                _ => Err(Failed::new("the token was not accepted", "token")),
            }
        }
        (Some(_), m, _, _) => Err(Failed::new(
            format!(
                "method {:?} is not accepted here",
                m.unwrap_or("hmac-sha256")
            ),
            "unknown",
        )),
    };
    let (who, restrictions, proof) = match proved {
        Ok(p) => p,
        Err(failed) => {
            let said = match a.method.as_deref() {
                _ if ticket.is_some() => "the relay ticket was not accepted",
                Some("publickey") => KEY_NOT_ACCEPTED,
                _ => "the token was not accepted",
            };
            let _ = tx.send(fail(ErrorCode::AuthFailed, said)).await;
            return Handshake::Failed(failed);
        }
    };
    // max-connections= counts the identity's connections over the server:
    // every one, so that a limit a reload adds counts those already open.
    let max = restrictions.max_connections;
    let identity_slot = match shared.per_identity.take(&who.name, PerIdentity::CONN, max) {
        Some(slot) => slot,
        None => {
            let why = format!(
                "{} is at its max-connections= limit ({} connections at once); try again later",
                who.name,
                max.unwrap_or_default()
            );
            let _ = tx.send(fail(ErrorCode::Busy, &why)).await;
            return Handshake::Refused { who, why };
        }
    };
    // The window the client asked for, as configured now.
    let stdin_window = a.window.then_some(live.cfg.stdin_window);
    let (mac, signature) = match proof {
        ServerProof::None => (None, None),
        ServerProof::Mac(m) => (Some(m), None),
        ServerProof::Signature(s) => (None, Some(s)),
    };
    let ready = ServerMsg::Ready {
        mac,
        signature,
        identity: creds.mode.map(|_| who.name.to_string()),
        stdin_window,
        output_window: a.output_window,
    };
    debug!(identity = %who.name, "authenticated");
    if tx.send(ready).await.is_ok() {
        Handshake::Ok {
            stdin_window,
            output_window: a.output_window,
            who,
            identity_slot,
            ticket: ticket.flatten(),
        }
    } else {
        Handshake::Abandoned
    }
}

/// How the server proves itself in `ready`.
enum ServerProof {
    None,
    /// The token's HMAC (§3.2).
    Mac(String),
    /// The host key's signature (§3.7).
    Signature(String),
}

/// A key login (§3.7): the client's signature over the transcript first,
/// whatever the key (so an unknown key costs what a known one does), then
/// the one judgement of the key ([`crate::identity::KeyAuth::admit`]);
/// admitted, the host key signs the server's transcript for `ready`.
fn key_login(
    a: &crate::proto::AuthRequest,
    client_nonce: Option<&str>,
    server_nonce: &str,
    keys: &crate::identity::KeyAuth,
    link: &Link,
) -> Result<(Identity, Arc<Restrictions>, ServerProof), Failed> {
    use ssh_key::{HashAlg, LineEnding, PublicKey, SshSig};
    let cn = client_nonce.ok_or_else(|| Failed::new("a malformed client nonce", "unknown"))?;
    let presented = a
        .key
        .as_deref()
        .and_then(Presented::parse)
        .ok_or_else(|| Failed::new("not an Ed25519 key or certificate", "unknown"))?;
    let fp = presented
        .key_data()
        .fingerprint(HashAlg::Sha256)
        .to_string();
    let refused = |why: std::borrow::Cow<'static, str>, named: Option<String>| Failed {
        why,
        key: Some(fp.clone()),
        named: named.unwrap_or_else(|| "unknown".into()),
    };
    let host_fp = keys.host_fingerprint();
    let transcript = auth::key_transcript(
        Role::Client,
        server_nonce,
        cn,
        &host_fp,
        &fp,
        link.channel.as_ref(),
    );
    let signed = a
        .signature
        .as_deref()
        .and_then(|pem| SshSig::from_pem(pem).ok())
        .is_some_and(|sig| {
            sig.public_key() == presented.key_data()
                && PublicKey::from(presented.key_data().clone())
                    .verify(KEY_NAMESPACE, &transcript, &sig)
                    .is_ok()
        });
    if !signed {
        return Err(refused("the signature does not verify".into(), None));
    }
    let (who, restrictions) = keys
        .admit(&presented, link.peer.ip(), crate::identity::unix_now())
        .map_err(|d| refused(d.why, d.name))?;
    let server = auth::key_transcript(
        Role::Server,
        server_nonce,
        cn,
        &host_fp,
        &fp,
        link.channel.as_ref(),
    );
    let signature = keys
        .host_key
        .sign(KEY_NAMESPACE, HashAlg::Sha512, &server)
        .and_then(|s| s.to_pem(LineEnding::LF))
        .map_err(|e| refused(format!("the host key cannot sign: {e}").into(), None))?;
    Ok((who, restrictions, ServerProof::Signature(signature)))
}

struct Session {
    shared: Arc<ExecShared>,
    tx: mpsc::Sender<ServerMsg>,
    jobs: HashMap<u64, JobHandle>,
    /// File transfers (PROTOCOL.md §3.8), in the jobs' id space.
    transfers: HashMap<u64, TransferSlot>,
    transfer_done: (
        mpsc::UnboundedSender<transfer::Finished>,
        mpsc::UnboundedReceiver<transfer::Finished>,
    ),
    /// Groups of finished jobs that still have processes (background
    /// children): killed when the connection closes.
    lingering: Vec<Pid>,
    done: (
        mpsc::UnboundedSender<JobDone>,
        mpsc::UnboundedReceiver<JobDone>,
    ),
    conn_cancel: CancellationToken,
    /// The server's shutdown, which detached jobs run under instead of
    /// the connection.
    shutdown: CancellationToken,
    link: Link,
    /// The stdin window of each job, when the client keeps to windows
    /// (PROTOCOL.md §3.6): its input is then never waited for.
    stdin_window: Option<u64>,
    /// Each job's output window, when the client gave one (PROTOCOL.md
    /// §3.6): a job's output waits for the client to take what it sent.
    output_window: Option<u64>,
    /// Why the session ends without reading further: the client was seen
    /// to leave while the reading of its connection was held up, or broke
    /// a window.
    stop: Option<&'static str>,
    /// Who authenticated: judged again at each request and each reload.
    who: Arc<Identity>,
    /// The identity's connection, for its `max-connections=`.
    _identity_slot: IdentitySlot,
    /// The SHA-256 of the token this connection proved, if any: root jobs
    /// by the exposure rule need it to be the token in force.
    proved: Option<[u8; 32]>,
    /// Whether root jobs were allowed by the exposure rule when this
    /// connection authenticated ([`super::policy::Policy::refuses_root_to`]).
    root_rule_at_auth: bool,
    /// Where the identity is judged from (`from=`): the peer, or for a
    /// relay ticket's connection the address the ticket was issued to.
    judged_from: std::net::IpAddr,
    /// (§3.9) A connection that logged in with a relay ticket: it may
    /// bring that one file, nothing else; `ticket_used` once it has begun.
    ticket: Option<Arc<Ticket>>,
    ticket_used: bool,
    /// (§3.9) Tickets this connection's `expect`s issued, by id: withdrawn
    /// when it closes.
    expects: HashMap<u64, TicketKey>,
}

impl Session {
    async fn run(
        &mut self,
        reader: &mut FramedRead<BoxRead, FrameCodec>,
        shutdown: &CancellationToken,
        mut reloads: tokio::sync::watch::Receiver<u64>,
    ) {
        let live = self.shared.live();
        let (idle, frame_timeout) = (live.cfg.idle_timeout, live.cfg.frame_timeout);
        let mut tick =
            tokio::time::interval((idle.min(frame_timeout) / 4).min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_activity = Instant::now();
        // (frames decoded so far, when the current partial frame was first seen)
        let mut partial: Option<(u64, Instant)> = None;
        // Ended from outside: a relay ticket taken over or withdrawn.
        let ended = self.conn_cancel.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = ended.cancelled() => return,
                // A key removed, revoked or expired closes its connections
                // (and their jobs) at the reload that says so.
                Ok(()) = reloads.changed() => {
                    if let Err(why) = self.still_in() {
                        self.send(ServerMsg::error(None, ErrorCode::AuthFailed, why)).await;
                        return;
                    }
                }
                _ = tick.tick() => {
                    if self.jobs.is_empty() && self.transfers.is_empty() && last_activity.elapsed() >= idle {
                        debug!("idle timeout");
                        return;
                    }
                    // Slowloris guard: the same frame incomplete for too long.
                    let decoded = reader.decoder().frames_decoded();
                    partial = match partial {
                        _ if reader.read_buffer().is_empty() => None,
                        Some((n, since)) if n == decoded => {
                            if since.elapsed() >= frame_timeout {
                                debug!("frame not completed in time");
                                self.send(ServerMsg::error(None, ErrorCode::Protocol, format!("frame not completed within {frame_timeout:?}"))).await;
                                return;
                            }
                            Some((n, since))
                        }
                        _ => Some((decoded, Instant::now())),
                    };
                }
                Some(d) = self.done.1.recv() => {
                    last_activity = Instant::now();
                    self.finish(d).await
                }
                Some(f) = self.transfer_done.1.recv() => {
                    last_activity = Instant::now();
                    self.transfer_finished(f).await
                }
                f = reader.next() => match f {
                    None => return,
                    Some(Err(e)) => {
                        debug!(error = %e, "protocol error");
                        self.send(ServerMsg::error(None, ErrorCode::Protocol, e.to_string())).await;
                        return;
                    }
                    Some(Ok(frame)) => {
                        last_activity = Instant::now();
                        let is_exec = frame.kind() == "exec";
                        match ClientMsg::parse(frame) {
                            Ok(msg) => {
                                self.handle(msg).await;
                                if let Some(why) = self.stop {
                                    debug!("{why}");
                                    return;
                                }
                            }
                            Err(e) => {
                                if is_exec {
                                    self.audit_malformed(&e);
                                }
                                self.send(ServerMsg::error(e.id(), e.code(), e.to_string())).await
                            }
                        }
                    }
                },
            }
        }
    }

    /// An `exec` frame that is not a valid request is refused before
    /// anything is known of its command; it still gets its audit record.
    fn audit_malformed(&self, e: &ParseError) {
        let none = std::collections::BTreeMap::new();
        let who = self.audit_who(e.id().unwrap_or(0));
        audit::refused(&who, None, &none, e.code(), &e.to_string());
    }

    /// This connection's side of its audit records, for job `id`.
    fn audit_who(&self, id: u64) -> audit::Who<'_> {
        audit::Who {
            via: audit::Via::Native,
            peer: self.link.peer,
            who: &self.who,
            id,
        }
    }

    /// What every job, transfer and `expect` passes first: the identity
    /// judged again (not accepted any more: the connection ends) and the
    /// id free under the connection's limit.
    fn admit_id(&mut self, id: u64, live: &super::Live) -> Result<Arc<Restrictions>, Refusal> {
        let restrictions = self.still_in().map_err(|why| {
            self.stop = Some("the identity is no longer accepted");
            Refusal::new(ErrorCode::AuthFailed, why)
        })?;
        self.id_free(id, live.cfg.max_jobs_per_connection)?;
        Ok(restrictions)
    }

    /// Whether root by the exposure rule still holds for this connection:
    /// allowed when it authenticated, and the token it proved still the
    /// one in force (a token replaced by a reload, rotated because it
    /// leaked, takes root away from its holders).
    fn proved_current(&self, live: &super::Live) -> bool {
        self.root_rule_at_auth
            && self.proved.is_some()
            && self.proved == live.credentials.token.as_ref().map(|t| t.digest())
    }

    /// What this connection's identity may do now: the credentials as
    /// they are now judge it as at its handshake. `Err` (the key was
    /// removed, revoked or has expired; its kind of login was turned off)
    /// ends the connection, with the reason logged and audited.
    fn still_in(&self) -> Result<Arc<Restrictions>, String> {
        let live = self.shared.live();
        live.credentials
            .recheck(&self.who, self.judged_from, crate::identity::unix_now())
            .map_err(|d| {
                info!(identity = %self.who.name, why = %d, "identity no longer accepted; closing");
                audit::login_failed(
                    self.link.peer,
                    self.who.fingerprint().as_deref(),
                    &format!("{} no longer accepted: {d}", self.who.name),
                );
                format!(
                    "{} is no longer accepted here (removed, revoked or expired): closing",
                    self.who.name
                )
            })
    }

    async fn send(&self, msg: ServerMsg) {
        let _ = self.tx.send(msg).await;
    }

    async fn finish(&mut self, d: JobDone) {
        if let Some(job) = self.jobs.remove(&d.id) {
            // An attachment's stdin relay ends with it.
            job.cancel.cancel();
        }
        // The one place a finished job's group is judged: still alive, it
        // lingers until gone or killed; gone, it is released now. (A
        // detached job's is its own task's.)
        if let Some(pgid) = d.pgid {
            if process::group_alive(pgid) {
                self.lingering.push(pgid);
            } else {
                process::release_group(pgid);
            }
        }
        self.lingering.retain(|&p| {
            let alive = process::group_alive(p);
            if !alive {
                process::release_group(p);
            }
            alive
        });
        if d.detached {
            let why = "another connection attached to the job: this one no longer follows it \
                       (the job runs on)";
            return self
                .send(ServerMsg::error(Some(d.id), ErrorCode::Detached, why))
                .await;
        }
        // Shutdown cancels the jobs at once (their tokens are children of
        // it), so a job may end here before the loop sees the shutdown.
        let reason = match (d.reason, self.conn_cancel.is_cancelled(), d.capped) {
            (Some(r), _, _) => Some(r),
            (None, true, _) => Some(SHUTTING_DOWN.into()),
            (None, false, true) => Some(job::CAPPED.into()),
            (None, false, false) => None,
        };
        self.send(ServerMsg::Exit {
            id: d.id,
            status: d.status,
            reason,
            dropped: d.dropped,
        })
        .await;
    }

    async fn handle(&mut self, msg: ClientMsg) {
        // A relay ticket's connection brings its one file (§3.9): the put
        // as the ticket's `expect` gave it, whatever this one says.
        let msg = match (&self.ticket, msg) {
            (None, msg) => msg,
            (Some(t), ClientMsg::Put(r))
                if !self.ticket_used && self.shared.tickets.contains(&t.key) =>
            {
                self.ticket_used = true;
                ClientMsg::Put(PutRequest {
                    id: r.id,
                    ..t.put.clone()
                })
            }
            (
                Some(_),
                msg @ (ClientMsg::Data { .. }
                | ClientMsg::Done(_)
                | ClientMsg::Cancel { .. }
                | ClientMsg::Window { .. }
                | ClientMsg::Ping),
            ) => msg,
            (Some(_), msg) => {
                let why = "a relay ticket brings one file, nothing else";
                return self
                    .send(ServerMsg::error(msg.id(), ErrorCode::Forbidden, why))
                    .await;
            }
        };
        match msg {
            ClientMsg::Ping => self.send(ServerMsg::Pong).await,
            ClientMsg::Auth { .. } => {
                self.send(ServerMsg::error(
                    None,
                    ErrorCode::BadRequest,
                    "already authenticated",
                ))
                .await
            }
            ClientMsg::Exec(req) => {
                let id = req.id;
                let started = match self.admit(req) {
                    Ok(admission) => self.start(admission).await,
                    Err(refusal) => Err(refusal),
                };
                if let Err(r) = started {
                    self.send(ServerMsg::Error {
                        id: Some(id),
                        code: r.code,
                        message: r.message,
                        exit_status: r.exit_status,
                    })
                    .await;
                }
            }
            ClientMsg::Stdin { id, data } => {
                self.shared
                    .counters
                    .bytes(self.link.tls)
                    .stdin
                    .add(data.len() as u64);
                let Some(job) = self.jobs.get(&id) else {
                    return self.send(no_such_job(id)).await;
                };
                match &job.stdin {
                    None => {
                        self.send(ServerMsg::error(
                            Some(id),
                            ErrorCode::BadRequest,
                            "job has no stdin (or it was closed)",
                        ))
                        .await
                    }
                    Some(_) if data.is_empty() => {}
                    // Windows: the input fits in the job's window or the
                    // client broke the protocol; either way nothing waits,
                    // so signals and other jobs are never held up.
                    Some(Stdin {
                        tx,
                        charged: Some(charged),
                    }) => {
                        let window = self.stdin_window.unwrap_or_default();
                        let cost = data.len() as u64 + STDIN_FRAME_COST;
                        if charged.load(Ordering::Acquire) + cost > window {
                            let why =
                                format!("stdin beyond the window of job {id} ({window} bytes)");
                            self.send(ServerMsg::error(Some(id), ErrorCode::Protocol, why))
                                .await;
                            self.stop = Some("a client broke a stdin window");
                            return;
                        }
                        charged.fetch_add(cost, Ordering::AcqRel);
                        // Room by construction (a slot per cost); fails
                        // only once the job's stdin writer has ended.
                        let _ = tx.try_send(data);
                    }
                    // No windows: a job that does not read its input fills
                    // the queue, and the wait for room stops the reading of
                    // the connection (flow control is TCP's). It gives up
                    // when the client is gone (its writer failed, or its
                    // FIN or reset arrived behind the unread bytes) or the
                    // server stops: the session then ends and the jobs are
                    // killed. A send fails only once the writer has ended.
                    Some(Stdin { tx, charged: None }) => {
                        tokio::select! {
                            _ = tx.send(data) => {}
                            () = self.tx.closed() => {
                                self.stop = Some("the client left while its stdin waited for a job");
                            }
                            () = self.conn_cancel.cancelled() => {}
                            () = left(self.link.fd) => {
                                self.stop = Some("the client left while its stdin waited for a job");
                            }
                        }
                    }
                }
            }
            ClientMsg::Eof { id } => match self.jobs.get_mut(&id) {
                None => self.send(no_such_job(id)).await,
                Some(job) => job.stdin = None,
            },
            ClientMsg::Put(r) => self.start_transfer(transfer::Request::Put(r)).await,
            ClientMsg::Expect(e) => {
                let id = e.put.id;
                let answer = match self.issue_ticket(e) {
                    Ok(ticket) => ServerMsg::Ticket { id, ticket },
                    Err(r) => ServerMsg::error(Some(id), r.code, r.message),
                };
                self.send(answer).await;
            }
            ClientMsg::Jobs { id } => {
                let answer = match self.admit_id(id, &self.shared.live()) {
                    Ok(_) => jobs::frames(id, self.shared.detached.list(&self.who.name)),
                    Err(r) => vec![ServerMsg::error(Some(id), r.code, r.message)],
                };
                for frame in answer {
                    self.send(frame).await;
                }
            }
            ClientMsg::Attach(r) => {
                let (id, which) = (r.id, r.detached.clone());
                if let Err(r) = self.attach(r).await {
                    let refused = Some((r.code, r.message.as_str()));
                    audit::detached(&self.audit_who(id), "attach", &which, None, refused);
                    self.send(ServerMsg::error(Some(id), r.code, r.message))
                        .await;
                }
            }
            ClientMsg::Kill(r) => {
                let (id, which) = (r.id, r.detached.clone());
                if let Err(r) = self.kill(r).await {
                    let refused = Some((r.code, r.message.as_str()));
                    audit::detached(&self.audit_who(id), "kill", &which, None, refused);
                    self.send(ServerMsg::error(Some(id), r.code, r.message))
                        .await;
                }
            }
            ClientMsg::Get(r) => self.start_transfer(transfer::Request::Get(r)).await,
            ClientMsg::List(r) => self.start_transfer(transfer::Request::List(r)).await,
            ClientMsg::Data { id, offset, data } => self.transfer_data(id, offset, data).await,
            ClientMsg::Done(d) => {
                let id = d.id;
                match self
                    .transfers
                    .get(&id)
                    .and_then(|t| t.handle.input.as_ref())
                {
                    Some(input) => {
                        let _ = input.send(transfer::PutInput::Done(d));
                    }
                    None => self.send(no_such_job(id)).await,
                }
            }
            ClientMsg::Cancel { id } => match self.transfers.get(&id) {
                Some(t) => {
                    t.handle.cancel.cancel();
                    if let Some(input) = &t.handle.input {
                        let _ = input.send(transfer::PutInput::Cancel);
                    }
                }
                None => self.send(no_such_job(id)).await,
            },
            ClientMsg::Window { id, output } => {
                // A job that has ended owes nothing more: its grants are
                // moot.
                let window = match self.transfers.get(&id) {
                    Some(t) => t.handle.window.clone(),
                    None => self.jobs.get(&id).and_then(|j| j.output.clone()),
                };
                let Some(window) = window else {
                    return;
                };
                if let Err(why) = window.give_back(output) {
                    self.send(ServerMsg::error(Some(id), ErrorCode::Protocol, why))
                        .await;
                    self.stop = Some("a client gave back more output window than it was sent");
                }
            }
            ClientMsg::Resize { id, rows, cols } => {
                let Some(job) = self.jobs.get(&id) else {
                    return self.send(no_such_job(id)).await;
                };
                let resized = match &job.pty {
                    Some(pty) => pty.resize(rows, cols).map_err(|e| e.to_string()),
                    None => Err("job has no terminal (exec without pty)".into()),
                };
                if let Err(why) = resized {
                    self.send(ServerMsg::error(Some(id), ErrorCode::BadRequest, why))
                        .await
                }
            }
            ClientMsg::Signal { id, signal } => {
                let Some(job) = self.jobs.get(&id) else {
                    return self.send(no_such_job(id)).await;
                };
                match job::client_signal(&signal) {
                    Some(sig) => match &job.group {
                        Group::Own(pgid) => {
                            process::signal_group(*pgid, sig);
                        }
                        Group::Attached(d) => {
                            d.signal(sig);
                        }
                    },
                    None => {
                        self.send(ServerMsg::error(
                            Some(id),
                            ErrorCode::BadRequest,
                            format!("unknown signal {signal:?} (HUP INT QUIT KILL TERM USR1 USR2)"),
                        ))
                        .await
                    }
                }
            }
        }
    }

    /// Judges a request against the connection's jobs, the server's job
    /// slots and the policy, as they are now (SIGHUP may have changed
    /// them); admitted, it holds its job slot until the job ends.
    fn admit(&mut self, req: ExecRequest) -> Result<Admission, Refusal> {
        let (id, command, env) = (req.id, req.command.clone(), req.env.clone());
        let judged = self.judge(req);
        if let Err(r) = &judged {
            if r.code == ErrorCode::Forbidden {
                self.shared.counters.forbidden.inc();
            }
            let who = self.audit_who(id);
            audit::refused(&who, Some(&command), &env, r.code, &r.message);
        }
        judged
    }

    fn judge(&mut self, req: ExecRequest) -> Result<Admission, Refusal> {
        let id = req.id;
        let live = self.shared.live();
        let restrictions = self.admit_id(id, &live)?;
        let slot = self
            .shared
            .job_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Refusal::new(ErrorCode::Busy, "the server is running its maximum of jobs")
            })?;
        // The policy hands back exactly what is to run (argv[0] resolved).
        let approved = live
            .policy
            .check(&req, self.proved_current(&live), &restrictions)?;
        let spec = job::spec(&approved, &req, &live)?;
        let identity_slot = self.identity_job(&restrictions)?;
        let detach = match req.detach {
            false => None,
            true => {
                let place = self.shared.detached.reserve(&self.who.name, &live.cfg)?;
                Some((detached::new_id()?, place))
            }
        };
        let timeout = match req.timeout_ms {
            Some(ms) => Some(Duration::from_millis(ms)),
            None if !live.cfg.job_timeout.is_zero() => Some(live.cfg.job_timeout),
            None => None,
        };
        Ok(Admission {
            id,
            spec,
            approved: approved.command,
            timing: JobTiming {
                timeout,
                kill_grace: live.cfg.kill_grace,
                drain_grace: live.cfg.drain_grace,
            },
            cap: job::OutputCap::new(&req.output, live.cfg.max_output),
            timestamps: req.output.timestamps,
            who: self.who.clone(),
            slot,
            identity_slot,
            detach,
        })
    }

    /// A job (or transfer) of the identity's, under its `max-jobs=` if it
    /// has one. Every job is counted, so that a limit a reload adds counts
    /// the jobs already running (a detached one may run for days: found
    /// by attack).
    fn identity_job(&self, r: &Restrictions) -> Result<IdentitySlot, Refusal> {
        self.shared
            .per_identity
            .take(&self.who.name, PerIdentity::JOB, r.max_jobs)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::Busy,
                    format!(
                        "{} is at its max-jobs= limit ({} jobs at once); try again when one ends",
                        self.who.name,
                        r.max_jobs.unwrap_or_default()
                    ),
                )
            })
    }

    /// Whether `id` may start a job or transfer: not running already, and
    /// the connection under its limit (transfers count as jobs).
    fn id_free(&mut self, id: u64, max: usize) -> Result<(), Refusal> {
        // An `expect` holds its id until its ticket is spent.
        let tickets = &self.shared.tickets;
        self.expects.retain(|_, key| tickets.contains(key));
        if self.jobs.contains_key(&id)
            || self.transfers.contains_key(&id)
            || self.expects.contains_key(&id)
        {
            return Err(Refusal::new(
                ErrorCode::DuplicateId,
                format!("job {id} is running"),
            ));
        }
        let running = self.jobs.len() + self.transfers.len() + self.expects.len();
        if running >= max {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!("{running} jobs and transfers running on this connection"),
            ));
        }
        Ok(())
    }

    /// Starts a transfer (PROTOCOL.md §3.8) through the same admission as
    /// a job: the identity judged again, the id, the connection's and the
    /// server's job slots, the identity's `max-jobs=`, and the policy
    /// ([`super::policy::Policy::check_files`]), which picks the user it
    /// runs as and where it may go.
    async fn start_transfer(&mut self, req: transfer::Request) {
        let id = req.id();
        let (direction, path) = (req.direction(), req.path().to_string());
        let started = self.admit_transfer(req);
        if let Err(r) = started {
            if r.code == ErrorCode::Forbidden {
                self.shared.counters.forbidden.inc();
            }
            audit::transfer_refused(&self.audit_who(id), direction, &path, r.code, &r.message);
            self.send(ServerMsg::error(Some(id), r.code, r.message))
                .await;
        }
    }

    /// What every transfer and `expect` goes through: the identity judged
    /// again, the id, the relay chain if any (§3.9), and the policy
    /// ([`super::policy::Policy::check_files`]).
    fn judge_files(
        &mut self,
        id: u64,
        relay: &[Hop],
    ) -> Result<(Arc<Restrictions>, transfer::FilesApproved), Refusal> {
        let live = self.shared.live();
        let restrictions = self.admit_id(id, &live)?;
        super::relay::check_hops(relay)?;
        let approved = live.policy.check_files(
            self.proved_current(&live),
            &restrictions,
            !relay.is_empty(),
        )?;
        Ok((restrictions, approved))
    }

    /// (§3.9) Registers a file another host of a relay chain will bring,
    /// judged as a put of this connection's would be, and answers with
    /// the ticket that host logs in with. The verdict comes, with this
    /// id, when the file has arrived or failed.
    fn issue_ticket(&mut self, e: ExpectRequest) -> Result<String, Refusal> {
        let id = e.put.id;
        if e.put.kind != EntryKind::File || e.put.base.is_some() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "expect: relays carry single files",
            ));
        }
        if !(e.sha256.len() == 64 && e.sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "expect: sha256 must be 64 hex digits",
            ));
        }
        self.judge_files(id, &e.put.relay)?;
        let ticket = Ticket::new(
            id,
            e.put,
            e.sha256.to_ascii_lowercase(),
            (*self.who).clone(),
            self.judged_from,
            self.tx.clone(),
        );
        let (text, key) = self.shared.tickets.issue(ticket).ok_or_else(|| {
            Refusal::new(
                ErrorCode::Busy,
                "the server holds its maximum of relay tickets",
            )
        })?;
        self.expects.insert(id, key);
        Ok(text)
    }

    fn admit_transfer(&mut self, req: transfer::Request) -> Result<(), Refusal> {
        let id = req.id();
        let live = self.shared.live();
        let (Some(_), Some(output_window)) = (self.stdin_window, self.output_window) else {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "file transfers need the windows of PROTOCOL.md §3.6 (window and output_window in auth)",
            ));
        };
        let relay = match &req {
            transfer::Request::Put(r) => r.relay.as_slice(),
            _ => &[],
        };
        let (restrictions, approved) = self.judge_files(id, relay)?;
        let slot = self
            .shared
            .transfer_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Refusal::new(
                    ErrorCode::Busy,
                    "the server is running its maximum of transfers (exec.max_transfers)",
                )
            })?;
        let identity_slot = self.identity_job(&restrictions)?;
        info!(
            id,
            direction = req.direction(),
            path = req.path(),
            "transfer started"
        );
        let out = transfer::Out {
            tx: self.tx.clone(),
            finished: self.transfer_done.0.clone(),
            rt: tokio::runtime::Handle::current(),
            who: self.who.clone(),
            peer: self.link.peer,
        };
        let handle = transfer::start(
            req,
            approved,
            live.cfg.transfer_window,
            output_window,
            self.ticket.as_ref().map(|t| t.sha256.clone()),
            out,
            self.conn_cancel.child_token(),
        )
        .map_err(|e| {
            Refusal::new(
                ErrorCode::IoError,
                format!("cannot start the transfer: {e}"),
            )
        })?;
        self.transfers.insert(
            id,
            TransferSlot {
                handle,
                _slot: slot,
                _identity_slot: identity_slot,
            },
        );
        Ok(())
    }

    /// A `put`'s data: within its window (the one `accepted` gave, §3.8) or the
    /// connection ends; handed to its thread, never waited for.
    async fn transfer_data(&mut self, id: u64, offset: u64, data: Bytes) {
        self.shared
            .counters
            .bytes(self.link.tls)
            .stdin
            .add(data.len() as u64);
        let Some((input, charged, window)) = self.transfers.get(&id).and_then(|t| {
            let input = t.handle.input.clone()?;
            Some((input, t.handle.charged.clone(), t.handle.put_window))
        }) else {
            return self.send(no_such_job(id)).await;
        };
        let cost = data.len() as u64 + STDIN_FRAME_COST;
        if charged.load(Ordering::Acquire) + cost > window {
            let why = format!("data beyond the window of transfer {id} ({window} bytes)");
            self.send(ServerMsg::error(Some(id), ErrorCode::Protocol, why))
                .await;
            self.stop = Some("a client broke a transfer's window");
            return;
        }
        charged.fetch_add(cost, Ordering::AcqRel);
        let _ = input.send(transfer::PutInput::Data { offset, data });
    }

    /// A transfer ended (its thread logged and audited it): forgotten
    /// first, so its id is free again, then its last frame.
    async fn transfer_finished(&mut self, f: transfer::Finished) {
        self.transfers.remove(&f.id);
        let Some(last) = f.last else {
            return;
        };
        // A relayed file's verdict goes to the client that expected it,
        // under its `expect`'s id; the ticket is then spent. (An
        // interrupted one keeps it: the host before may try again, or be
        // passed over for another.)
        let verdict = match (&self.ticket, &last) {
            (Some(t), ServerMsg::Stored(s)) => Some((
                t.clone(),
                ServerMsg::Stored(Stored {
                    id: t.expect_id,
                    ..s.clone()
                }),
            )),
            (Some(t), ServerMsg::Error { code, message, .. }) => Some((
                t.clone(),
                ServerMsg::error(Some(t.expect_id), *code, message.clone()),
            )),
            _ => None,
        };
        // The client hears first, so its verdict is on its way before the
        // chain's end reaches it through the hosts.
        if let Some((t, verdict)) = &verdict {
            let _ = t.report.send(verdict.clone()).await;
        }
        self.send(last).await;
        if let Some((t, _)) = verdict {
            self.shared.tickets.withdraw(&t.key);
        }
    }

    /// Starts an admitted job: spawn, `started`, and the task that streams
    /// it to its end (then audits it and reports to the session loop, or
    /// for a detached job (§3.10) keeps its output and end for `attach`).
    async fn start(&mut self, a: Admission) -> Result<(), Refusal> {
        let Admission {
            id,
            spec,
            approved,
            timing,
            cap,
            timestamps,
            who,
            slot,
            identity_slot,
            detach,
        } = a;
        let spawned = process::spawn(&spec)
            .map_err(|e| job::spawn_refusal(&e, &spec))
            .inspect_err(|r| {
                let who = self.audit_who(id);
                audit::refused(&who, Some(&approved), &spec.env, r.code, &r.message);
            })?;
        let (pid, pgid, pty) = (spawned.pid, spawned.pgid, spawned.pty.clone());
        let job_no = spawned.job;
        self.shared.counters.jobs_started.inc();
        self.shared.counters.identity_job(&who.name);
        let detached_id = detach.as_ref().map(|(d, _)| d.clone());
        info!(id, job = job_no, pid, tty = pty.is_some(), detached = detached_id.as_deref(), command = ?approved, "job started");
        audit::started(&job_record(
            self.audit_who(id),
            job_no,
            pid,
            &approved,
            &spec,
            detached_id.as_deref(),
        ));

        let (child, input, outputs) = job::streams(spawned);
        let ended = CancellationToken::new();
        let (out, detached, hub, job_cancel) = match detach {
            None => {
                let stdin = input.map(|input| {
                    let (stdin, rx, grant) = self.stdin_queue(id);
                    tokio::spawn(job::stdin_writer(input, rx, ended.clone(), grant));
                    stdin
                });
                let cancel = self.conn_cancel.child_token();
                let output = self
                    .output_window
                    .map(|w| Arc::new(job::OutputWindow::new(w)));
                let out = job::Out {
                    tx: self.tx.clone(),
                    window: output.clone(),
                    cap,
                    timestamps,
                };
                self.jobs.insert(
                    id,
                    JobHandle {
                        group: Group::Own(pgid),
                        stdin,
                        pty,
                        output,
                        cancel: cancel.clone(),
                    },
                );
                (out, None, None, cancel)
            }
            Some((detached_id, place)) => {
                // Its stdin waits for an attachment; nobody paces its
                // output: the ring drops the oldest instead.
                let stdin = input.map(|input| {
                    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
                    tokio::spawn(job::stdin_writer(input, rx, ended.clone(), None));
                    tx
                });
                let d = Detached::new(detached::Spawned {
                    id: detached_id,
                    owner: who.clone(),
                    judged_from: self.judged_from,
                    command: approved.clone(),
                    job: job_no,
                    pid,
                    pgid,
                    pty,
                    stdin,
                    buffer: self.shared.live().cfg.detached_buffer,
                    cancel: self.shutdown.child_token(),
                });
                self.shared.detached.insert(place, d.clone());
                self.shared
                    .detached
                    .sweep_from(&self.shared, &self.shutdown);
                // The ring takes frames as they come: a queue in front of
                // it only holds read buffers (64 KiB each) while the server
                // is short of CPU (64 jobs flooding their rings: 156 MB of
                // RSS with 16 frames queued each, 110 MB with 1).
                let (tx, rx) = mpsc::channel(HUB_QUEUE);
                let out = job::Out {
                    tx,
                    window: None,
                    cap,
                    timestamps: true,
                };
                let cancel = d.cancel_token();
                (out, Some(d), Some(rx), cancel)
            }
        };
        // After the job is registered: a detached one may be attached to
        // as soon as its ID is known.
        self.send(ServerMsg::Started {
            id,
            pid,
            job: Some(job_no),
            ts: timestamps.then(Stamp::now),
            detached: detached_id.clone(),
        })
        .await;

        let done = self.done.0.clone();
        let counters = self.shared.counters.clone();
        counters.jobs_running.inc();
        let (peer, tls) = (self.link.peer, self.link.tls);
        self.shared.tracker.spawn(async move {
            let started = Instant::now();
            let run = job::run(id, (child, outputs), pgid, timing, out, job_cancel);
            let end = match (&detached, hub) {
                (Some(d), Some(hub)) => tokio::join!(run, d.fill(hub)).0,
                _ => run.await,
            };
            ended.cancel();
            drop((slot, identity_slot));
            let output = end.stdout_bytes + end.stderr_bytes;
            counters.record_job(&end.status, output, started.elapsed(), tls);
            let who = audit::Who {
                via: audit::Via::Native,
                peer,
                who: &who,
                id,
            };
            let job = job_record(who, job_no, pid, &approved, &spec, detached_id.as_deref());
            let reason = detached.as_ref().and_then(|d| d.end_reason(&end));
            let how = audit::End {
                status: &end.status,
                duration: started.elapsed(),
                stdout_bytes: end.stdout_bytes,
                stderr_bytes: end.stderr_bytes,
                dropped_bytes: end.dropped,
                reason: reason.as_deref(),
            };
            audit::ended(&job, &how);
            match detached {
                Some(d) => d.finish(&end, reason, timing.kill_grace).await,
                None => {
                    let _ = done.send(JobDone {
                        id,
                        pgid: Some(pgid),
                        status: end.status,
                        dropped: end.dropped,
                        capped: end.capped,
                        reason: None,
                        detached: false,
                    });
                }
            }
        });
        Ok(())
    }

    /// A job's stdin queue as this connection feeds it: with windows, a
    /// slot for each frame the window can hold, and the grant that gives
    /// each frame's cost back as the job takes it.
    fn stdin_queue(&self, id: u64) -> (Stdin, mpsc::Receiver<Bytes>, Option<job::Grant>) {
        let slots = self.stdin_window.map_or(STDIN_QUEUE, |w| {
            usize::try_from(w / STDIN_FRAME_COST + 1).unwrap_or(STDIN_QUEUE)
        });
        let (tx, rx) = mpsc::channel(slots);
        let charged = self.stdin_window.map(|_| Arc::new(AtomicU64::new(0)));
        let grant = charged.clone().map(|charged| job::Grant {
            id,
            charged,
            out: self.tx.clone(),
        });
        (Stdin { tx, charged }, rx, grant)
    }

    /// (§3.10) Follows a detached job of this identity's under `r.id`: its
    /// record, its buffered output, then its live output and its end; this
    /// connection's stdin, signals and resizes go to it meanwhile. Takes
    /// the job over from an attachment before.
    async fn attach(&mut self, r: AttachRequest) -> Result<(), Refusal> {
        let id = r.id;
        self.admit_id(id, &self.shared.live())?;
        let d = self.shared.detached.find(&self.who.name, &r.detached)?;
        // Not the connection's child: at shutdown an attachment follows
        // its job (stopped by the shutdown) to its exit. `close`, `finish`,
        // a takeover or the session's drop ends it.
        let token = CancellationToken::new();
        let (n, info, start) = d.attach(token.clone());
        info!(id, job = d.job, detached = %d.id, "attached");
        audit::detached(&self.audit_who(id), "attach", &d.id, Some(d.job), None);
        let stdin = info.stdin.then(|| {
            let (stdin, rx, grant) = self.stdin_queue(id);
            tokio::spawn(detached::relay(d.clone(), rx, token.clone(), grant));
            stdin
        });
        let output = self
            .output_window
            .map(|w| Arc::new(job::OutputWindow::new(w)));
        self.send(ServerMsg::Attached { id, info }).await;
        let out = job::Out {
            tx: self.tx.clone(),
            window: output.clone(),
            cap: None,
            timestamps: false,
        };
        let (follow, done, cancel) = (d.clone(), self.done.0.clone(), token.clone());
        let closing = self.conn_cancel.clone();
        tokio::spawn(async move {
            let followed = detached::follow(
                follow.clone(),
                id,
                start,
                out,
                r.timestamps,
                cancel,
                closing,
            )
            .await;
            follow.detach(n);
            let done_msg = match followed {
                detached::Followed::Exit {
                    status,
                    reason,
                    dropped,
                } => JobDone {
                    id,
                    pgid: None,
                    status,
                    dropped,
                    capped: false,
                    reason,
                    detached: false,
                },
                detached::Followed::Detached => JobDone {
                    id,
                    pgid: None,
                    status: ExitStatus::Code(-1),
                    dropped: 0,
                    capped: false,
                    reason: None,
                    detached: true,
                },
            };
            let _ = done.send(done_msg);
        });
        self.jobs.insert(
            id,
            JobHandle {
                pty: d.pty.clone(),
                group: Group::Attached(d),
                stdin,
                output,
                cancel: token,
            },
        );
        Ok(())
    }

    /// (§3.10) Stops a detached job of this identity's (the answer, its
    /// record, comes once it has ended), or forgets one that has ended
    /// (the answer is its last record).
    async fn kill(&mut self, r: KillRequest) -> Result<(), Refusal> {
        let id = r.id;
        let live = self.shared.live();
        self.admit_id(id, &live)?;
        let d = self.shared.detached.find(&self.who.name, &r.detached)?;
        let info = d.info();
        let forget = info.state == JobState::Exited;
        let action = if forget { "forget" } else { "kill" };
        info!(id, job = d.job, detached = %d.id, action, "detached job");
        audit::detached(&self.audit_who(id), action, &d.id, Some(d.job), None);
        if forget {
            self.shared.detached.forget(&d);
            let info = JobInfo {
                forgotten: true,
                ..info
            };
            self.send(ServerMsg::Jobs {
                id,
                jobs: vec![info],
                more: false,
            })
            .await;
            return Ok(());
        }
        d.stop(detached::KILLED);
        // The job's TERM, its KILL, and the drain of its pipes.
        let limit = live.cfg.kill_grace * 3 + live.cfg.drain_grace;
        let (tx, closing) = (self.tx.clone(), self.conn_cancel.clone());
        tokio::spawn(async move {
            // The connection's writer waits for this sender: not past the
            // connection's close.
            tokio::select! {
                () = d.wait_end(limit) => {}
                () = closing.cancelled() => return,
            }
            let _ = tx
                .send(ServerMsg::Jobs {
                    id,
                    jobs: vec![d.info()],
                    more: false,
                })
                .await;
        });
        Ok(())
    }

    /// Kills every job and every lingering group of this connection, and
    /// waits (bounded) for the job tasks to reap their processes. With a
    /// `reason` (the server is shutting down) the client still gets each
    /// job's `exit`, carrying the reason, and then an error frame saying
    /// why the connection closes: the end of the story, not a bare close.
    async fn close(mut self, reason: Option<&'static str>) {
        self.conn_cancel.cancel();
        // Transfers end with their connection: a put keeps what arrived
        // (for --resume), a get stops; their threads audit them. Tickets
        // it had issued go too (the files they stood for arrive nowhere).
        self.transfers.clear();
        for key in self.expects.values() {
            self.shared.tickets.withdraw(key);
        }
        let grace = self.shared.live().cfg.kill_grace;
        let mut kills: Vec<_> = self
            .lingering
            .drain(..)
            .map(|p| process::kill_group(p, grace))
            .collect();
        // The connection's own jobs are killed. Attachments end with it,
        // except at shutdown: the shutdown stops their jobs too, and they
        // follow them to their exits.
        for job in self.jobs.values() {
            if reason.is_none() || job.own_group().is_some() {
                job.cancel.cancel();
            }
        }
        let pgids = self.own_groups();
        // Job tasks kill their own groups; wait for them to report (and
        // at shutdown, attachments for their jobs' exits).
        let deadline = tokio::time::Instant::now() + grace * 3;
        while !self.jobs.is_empty() {
            let Ok(Some(d)) = tokio::time::timeout_at(deadline, self.done.1.recv()).await else {
                break;
            };
            self.jobs.remove(&d.id);
            if let Some(why) = reason.filter(|_| !d.detached) {
                let exit = ServerMsg::Exit {
                    id: d.id,
                    status: d.status,
                    reason: Some(d.reason.unwrap_or_else(|| why.into())),
                    dropped: d.dropped,
                };
                let _ = tokio::time::timeout_at(deadline, self.tx.send(exit)).await;
            }
        }
        for job in self.jobs.values() {
            job.cancel.cancel();
        }
        if let Some(why) = reason {
            let bye = ServerMsg::error(None, ErrorCode::ShuttingDown, why);
            let _ = tokio::time::timeout_at(deadline, self.tx.send(bye)).await;
        }
        // Background members of the jobs' groups may have outlived the
        // main processes.
        kills.extend(pgids.into_iter().map(|p| process::kill_group(p, grace)));
        futures_util::future::join_all(kills).await;
        // Killed and released above: nothing for `drop` to do.
        self.jobs.clear();
    }
}

impl Session {
    /// The groups of the connection's own jobs (not its attachments').
    fn own_groups(&self) -> Vec<Pid> {
        self.jobs
            .values()
            .filter_map(JobHandle::own_group)
            .collect()
    }
}

impl Drop for Session {
    /// `close` leaves no job and no lingering group; a session dropped
    /// without it (its task dropped by a runtime shutting down, as in an
    /// embedded server or a test, or a panic) kills what is left at once.
    fn drop(&mut self) {
        // Attachments are not the connection's children (see `attach`).
        for job in self.jobs.values() {
            job.cancel.cancel();
        }
        let pgids = self.own_groups();
        for pgid in pgids.into_iter().chain(self.lingering.drain(..)) {
            process::kill_group_now(pgid);
        }
    }
}

/// A job's audit record, from what the policy approved and the spec.
fn job_record<'a>(
    who: audit::Who<'a>,
    job: u64,
    pid: u32,
    approved: &'a crate::proto::Command,
    spec: &'a JobSpec,
    detached: Option<&'a str>,
) -> audit::Job<'a> {
    audit::Job {
        who,
        job,
        pid,
        command: approved,
        cwd: spec.cwd.as_deref(),
        env: &spec.env,
        tty: spec.pty.is_some(),
        detached,
    }
}

/// Resolves once the peer of socket `fd` has gone ([`crate::net::peer_gone`]),
/// looked at every 100 ms: a wait that the reading of the connection
/// cannot end (it is the reading that waits).
async fn left(fd: std::os::fd::RawFd) {
    loop {
        if crate::net::peer_gone(fd) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn no_such_job(id: u64) -> ServerMsg {
    ServerMsg::error(
        Some(id),
        ErrorCode::NoSuchJob,
        format!("no running job {id}"),
    )
}
