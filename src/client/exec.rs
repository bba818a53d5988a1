//! The exec client (`switchboard/1`, PROTOCOL.md §3): handshake, then jobs.
//!
//! [`ExecClient::run`] is the simple form (collect a job's output);
//! [`ExecClient::split`] gives a sender and a receiver for callers that
//! stream output, forward stdin and send signals at the same time (the CLI,
//! the load generator).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::net::{BoxRead, BoxWrite, IntoHalves};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::codec::FramedRead;

use super::{ClientError, connect_tcp};
use crate::identity::keys::ClientKey;
use crate::proto::auth::{self, Role, Token};
use crate::proto::message::Stamp;
use crate::proto::{
    AuthRequest, ClientMsg, ErrorCode, ExecRequest, ExitStatus, FrameCodec, FrameWriter, ServerMsg,
    VERSION,
};

/// Exit status when the connection, the handshake or the protocol failed.
pub const EXIT_CONNECTION: u8 = 255;
/// Exit status when the job timed out (as `timeout(1)`).
pub const EXIT_TIMED_OUT: u8 = 124;

/// The exit status of `switchboard exec` for a job's end (PROTOCOL.md §3.4):
/// its code, 128 + N for signal N, 124 when it timed out.
pub fn exit_code(status: &ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => (*c & 0xff) as u8,
        ExitStatus::Signal {
            timed_out: true, ..
        } => EXIT_TIMED_OUT,
        ExitStatus::Signal { name, .. } => {
            nix::sys::signal::Signal::from_str(&format!("SIG{name}"))
                .map(|s| 128u8.wrapping_add(s as i32 as u8))
                .unwrap_or(EXIT_CONNECTION)
        }
    }
}

/// How the client authenticates.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The shared token; None to connect only to servers without auth.
    pub token: Option<Token>,
    /// A key (PROTOCOL.md §3.7), used when the server accepts keys.
    pub key: Option<Arc<ClientKey>>,
    /// Where plain-TCP servers' host keys are trusted on first use and
    /// checked afterwards (`HOST:PORT` entries); `None`: a host key is
    /// taken as it comes (tests, the load generator). Under TLS the
    /// certificate proves the server instead.
    pub known_hosts: Option<PathBuf>,
    /// Accept a server that says `"auth":"none"` (refused by default, since
    /// such a server cannot prove it is the one we meant).
    pub allow_unauthenticated: bool,
    /// Ask for per-job stdin windows (PROTOCOL.md §3.6): the caller then
    /// sends a job no more stdin than its window holds, counting each
    /// frame's bytes plus [`crate::proto::message::STDIN_FRAME_COST`], and
    /// gets it back through [`JobEvent::Window`].
    pub window: bool,
    /// Give each job this output window (PROTOCOL.md §3.6): the caller
    /// then gives back each output frame's bytes plus
    /// [`crate::proto::message::OUTPUT_FRAME_COST`] once it has taken
    /// it (`ClientMsg::Window`), or the job's output stops.
    pub output_window: Option<u64>,
    /// (§3.9) Log in with a relay ticket instead: the connection may then
    /// bring the one file the ticket was issued for, nothing else.
    pub ticket: Option<String>,
}

impl ClientAuth {
    pub fn token(token: Token) -> Self {
        ClientAuth {
            token: Some(token),
            key: None,
            known_hosts: None,
            allow_unauthenticated: false,
            window: false,
            output_window: None,
            ticket: None,
        }
    }

    /// A key, checking host keys against `known_hosts` when given.
    pub fn key(key: Arc<ClientKey>, known_hosts: Option<PathBuf>) -> Self {
        ClientAuth {
            key: Some(key),
            known_hosts,
            ..ClientAuth::token_less()
        }
    }

    fn token_less() -> Self {
        ClientAuth {
            token: None,
            key: None,
            known_hosts: None,
            allow_unauthenticated: false,
            window: false,
            output_window: None,
            ticket: None,
        }
    }

    /// A relay hop's login (§3.9): the ticket alone, with the windows a
    /// put needs.
    pub fn ticket(ticket: String, output_window: u64) -> Self {
        ClientAuth {
            ticket: Some(ticket),
            window: true,
            output_window: Some(output_window),
            ..ClientAuth::token_less()
        }
    }

    pub fn none() -> Self {
        ClientAuth {
            token: None,
            key: None,
            known_hosts: None,
            allow_unauthenticated: true,
            window: false,
            output_window: None,
            ticket: None,
        }
    }
}

/// A finished job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// What happened to a job, as the receiver saw it. `Exit` and `Failed`
/// are a job's last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    Started {
        pid: u32,
        /// The server-wide job number (servers that send it).
        job: Option<u64>,
        /// The server's time, when the job asked for `timestamps`.
        ts: Option<Stamp>,
        /// (§3.10) Detached under this ID: the job's last event here.
        detached: Option<String>,
    },
    /// (§3.10) Attached to this detached job: its buffered output, then
    /// its live output, follow.
    Attached(crate::proto::jobs::JobInfo),
    /// (§3.10) The answer to `jobs` or `kill`, in one frame or several:
    /// the request's last event unless `more`.
    Jobs {
        jobs: Vec<crate::proto::jobs::JobInfo>,
        more: bool,
    },
    /// Output, and when the server read it (with `timestamps`).
    Stdout(Bytes, Option<Stamp>),
    Stderr(Bytes, Option<Stamp>),
    /// The job ended; `reason` when the server ended it for a reason of
    /// its own (shutdown, `max_output_kill`); `dropped`: output past its
    /// `max_output`, not sent.
    Exit {
        status: ExitStatus,
        reason: Option<String>,
        dropped: u64,
    },
    /// The request failed (before or instead of running), or the
    /// connection failed for every job (an error frame without an id).
    Failed(JobFailure),
    /// The job took `stdin` more bytes of its stdin window (frame costs
    /// included): that much more may be sent.
    Window {
        stdin: u64,
    },
    /// A file transfer's frame (PROTOCOL.md §3.8): transfers share the
    /// jobs' ids, windows and errors.
    Transfer(TransferEvent),
}

/// The frames of a file transfer (PROTOCOL.md §3.8), as
/// [`super::transfer`] takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    Accepted(crate::proto::transfer::Accepted),
    Stored(crate::proto::transfer::Stored),
    File(crate::proto::transfer::FileMeta),
    Data {
        offset: u64,
        data: Bytes,
    },
    Sent(crate::proto::transfer::Sent),
    Entries(Vec<crate::proto::transfer::Entry>),
    Listed(crate::proto::transfer::Listed),
    /// (§3.9) the ticket an `expect` issued.
    Ticket(String),
}

/// Why a job did not run: the server's `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub code: ErrorCode,
    pub message: String,
    /// `spawn_failed`: the status a shell would give (127, 126, 1).
    pub exit_status: Option<i32>,
}

impl From<JobFailure> for ClientError {
    fn from(f: JobFailure) -> Self {
        ClientError::Job {
            code: f.code,
            message: f.message,
            exit_status: f.exit_status,
        }
    }
}

impl JobEvent {
    /// The event a server message is, and the job it concerns (`None`: every
    /// job of the connection); `None` for messages about no job.
    pub fn from_msg(msg: ServerMsg) -> Option<(Option<u64>, JobEvent)> {
        Some(match msg {
            ServerMsg::Started {
                id,
                pid,
                job,
                ts,
                detached,
            } => (
                Some(id),
                JobEvent::Started {
                    pid,
                    job,
                    ts,
                    detached,
                },
            ),
            ServerMsg::Attached { id, info } => (Some(id), JobEvent::Attached(info)),
            ServerMsg::Jobs { id, jobs, more } => (Some(id), JobEvent::Jobs { jobs, more }),
            ServerMsg::Stdout { id, data, ts } => (Some(id), JobEvent::Stdout(data, ts)),
            ServerMsg::Stderr { id, data, ts } => (Some(id), JobEvent::Stderr(data, ts)),
            ServerMsg::Exit {
                id,
                status,
                reason,
                dropped,
            } => (
                Some(id),
                JobEvent::Exit {
                    status,
                    reason,
                    dropped,
                },
            ),
            ServerMsg::Error {
                id,
                code,
                message,
                exit_status,
            } => (
                id,
                JobEvent::Failed(JobFailure {
                    code,
                    message,
                    exit_status,
                }),
            ),
            ServerMsg::Window { id, stdin } => (Some(id), JobEvent::Window { stdin }),
            ServerMsg::Accepted(m) => (Some(m.id), JobEvent::Transfer(TransferEvent::Accepted(m))),
            ServerMsg::Stored(m) => (Some(m.id), JobEvent::Transfer(TransferEvent::Stored(m))),
            ServerMsg::Ticket { id, ticket } => {
                (Some(id), JobEvent::Transfer(TransferEvent::Ticket(ticket)))
            }
            ServerMsg::File(m) => (Some(m.id), JobEvent::Transfer(TransferEvent::File(m))),
            ServerMsg::Sent(m) => (Some(m.id), JobEvent::Transfer(TransferEvent::Sent(m))),
            ServerMsg::Listed(m) => (Some(m.id), JobEvent::Transfer(TransferEvent::Listed(m))),
            ServerMsg::Data { id, offset, data } => (
                Some(id),
                JobEvent::Transfer(TransferEvent::Data { offset, data }),
            ),
            ServerMsg::Entries { id, entries } => (
                Some(id),
                JobEvent::Transfer(TransferEvent::Entries(entries)),
            ),
            ServerMsg::Hello { .. } | ServerMsg::Ready { .. } | ServerMsg::Pong => return None,
        })
    }

    /// Whether this is the job's last event.
    pub fn is_end(&self) -> bool {
        matches!(
            self,
            JobEvent::Exit { .. }
                | JobEvent::Failed(_)
                | JobEvent::Jobs { more: false, .. }
                | JobEvent::Started {
                    detached: Some(_),
                    ..
                }
                | JobEvent::Transfer(
                    TransferEvent::Stored(_) | TransferEvent::Sent(_) | TransferEvent::Listed(_)
                )
        )
    }
}

/// The sending half of a connection.
pub struct ExecSender {
    sink: FrameWriter<BoxWrite>,
}

/// The receiving half of a connection.
pub struct ExecReceiver {
    stream: FramedRead<BoxRead, FrameCodec>,
}

/// An authenticated connection to an exec service.
pub struct ExecClient {
    tx: ExecSender,
    rx: ExecReceiver,
    next_id: u64,
    /// The server's per-job stdin window, when windows were asked for and
    /// granted.
    stdin_window: Option<u64>,
    /// The output window the server keeps to, when one was given.
    output_window: Option<u64>,
    /// Who the server says this client is (servers that say).
    identity: Option<String>,
    // Boxed: rare, and kept out of the size of every client.
    first_use: Option<Box<crate::tls::FirstUse>>,
}

impl ExecSender {
    pub async fn send(&mut self, msg: ClientMsg) -> Result<(), ClientError> {
        self.sink
            .send(msg.to_frame())
            .await
            .map_err(ClientError::from)
    }

    /// Sends `data` as stdin frames of at most 64 KiB.
    pub async fn stdin(&mut self, id: u64, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(crate::proto::frame::CHUNK) {
            self.sink
                .feed(
                    ClientMsg::Stdin {
                        id,
                        data: Bytes::copy_from_slice(chunk),
                    }
                    .to_frame(),
                )
                .await?;
        }
        self.sink.flush().await.map_err(ClientError::from)
    }

    /// Queues a frame without flushing (see [`flush`](Self::flush)).
    pub async fn feed(&mut self, msg: ClientMsg) -> Result<(), ClientError> {
        self.sink
            .feed(msg.to_frame())
            .await
            .map_err(ClientError::from)
    }

    /// Sends what [`feed`](Self::feed) queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.sink.flush().await.map_err(ClientError::from)
    }

    /// Half-closes the connection.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.sink.close().await.map_err(ClientError::from)
    }
}

impl ExecReceiver {
    /// The next event of any job, with the job's id (`None`: an error that
    /// concerns every job); `Ok(None)` when the server closed the
    /// connection. Messages about no job (`pong`) are skipped.
    pub async fn event(&mut self) -> Result<Option<(Option<u64>, JobEvent)>, ClientError> {
        loop {
            let Some(msg) = self.recv().await? else {
                return Ok(None);
            };
            if let Some(ev) = JobEvent::from_msg(msg) {
                return Ok(Some(ev));
            }
        }
    }

    /// The next event of job `id`, skipping other jobs'; an error without
    /// an id counts as this job's. A close before the job's last event is
    /// an error.
    pub async fn job_event(&mut self, id: u64) -> Result<JobEvent, ClientError> {
        loop {
            match self.event().await? {
                None => {
                    return Err(ClientError::Protocol(
                        "the server closed the connection mid-job".into(),
                    ));
                }
                Some((about, ev)) if about.is_none_or(|a| a == id) => return Ok(ev),
                Some(_) => {}
            }
        }
    }

    /// (§3.10) The answer to `jobs` or `kill` request `id`, its frames
    /// gathered: the records, or the server's refusal.
    pub async fn jobs_answer(
        &mut self,
        id: u64,
    ) -> Result<Result<Vec<crate::proto::jobs::JobInfo>, JobFailure>, ClientError> {
        let mut all = Vec::new();
        loop {
            match self.job_event(id).await? {
                JobEvent::Jobs { jobs, more } => {
                    all.extend(jobs);
                    if !more {
                        return Ok(Ok(all));
                    }
                }
                JobEvent::Failed(f) => return Ok(Err(f)),
                _ => {
                    return Err(ClientError::Protocol(
                        "the server did not answer with jobs".into(),
                    ));
                }
            }
        }
    }

    /// The next message; `Ok(None)` when the server closed the connection.
    pub async fn recv(&mut self) -> Result<Option<ServerMsg>, ClientError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(frame)) => ServerMsg::parse(frame).map(Some).map_err(ClientError::from),
        }
    }
}

/// A failed TLS handshake, said plainly where the cause is known: a
/// server that answered in plain text is a `tcp://` endpoint.
fn tls_error(addr: &str, e: std::io::Error) -> ClientError {
    let plain = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        });
    if plain {
        ClientError::Tls(format!(
            "the server at {addr} answered in plain text, not TLS: use tcp://{addr}"
        ))
    } else {
        ClientError::Tls(e.to_string())
    }
}

/// Where a handshake runs: for messages, for the host key's known_hosts
/// entry (plain TCP only), and the TLS session key signatures cover.
struct Site {
    what: String,
    /// The address connected to (`IP:PORT`, `[IPv6]:PORT`), on plain TCP.
    known_as: Option<String>,
    channel: Option<[u8; 32]>,
}

/// The server's host key from `hello`, checked against known_hosts on
/// plain TCP (first use recorded once the server has proved it holds it).
struct HostKey {
    key: ssh_key::PublicKey,
    fingerprint: String,
    /// Not yet in known_hosts: (file, entry, hex SHA-256) to record.
    unknown: Option<(PathBuf, String, String)>,
}

/// A client holding a key meets a plain-TCP server that offers only the
/// token, where known_hosts says a host key answered before: an impostor
/// in the middle may be stripping `publickey` to get a token MAC it can
/// replay to the real server (which a key signature, bound to the host
/// key, never is). Refused, as ssh refuses a changed host key.
fn refuse_downgrade(auth: &ClientAuth, site: &Site) -> Result<(), ClientError> {
    let (Some(path), Some(addr)) = (&auth.known_hosts, &site.known_as) else {
        return Ok(());
    };
    let entry = format!("host-key:{addr}");
    match crate::tls::known_fingerprint(path, &entry) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(ClientError::AuthFailed(format!(
            "{addr} took keys before ({} has its host key) but now offers only the token: \
             someone may be in the middle. If the server was changed to token-only on purpose, \
             remove the line {entry} from that file",
            path.display()
        ))),
        Err(e) => Err(ClientError::AuthFailed(format!("{e:#}"))),
    }
}

impl HostKey {
    fn from_hello(
        line: Option<&str>,
        auth: &ClientAuth,
        site: &Site,
    ) -> Result<HostKey, ClientError> {
        let key = line
            .and_then(|l| ssh_key::PublicKey::from_openssh(l).ok())
            .filter(|k| crate::identity::strong_ed25519(k.key_data()))
            .ok_or_else(|| {
                ClientError::Protocol("hello offers keys without an Ed25519 host_key".into())
            })?;
        let fp = key.fingerprint(ssh_key::HashAlg::Sha256);
        let fingerprint = fp.to_string();
        let mut unknown = None;
        if let (Some(path), Some(addr)) = (&auth.known_hosts, &site.known_as) {
            let entry = format!("host-key:{addr}");
            let hex = auth::hex(fp.sha256().unwrap_or_default().as_slice());
            match crate::tls::known_fingerprint(path, &entry)
                .map_err(|e| ClientError::AuthFailed(format!("{e:#}")))?
            {
                Some(known) if known == hex => {}
                Some(known) => {
                    return Err(ClientError::AuthFailed(format!(
                        "HOST KEY CHANGED for {addr}: the server's host key is {fingerprint} \
                         (sha256 {hex}), {} has sha256 {known}. Someone may be impersonating \
                         the server; if the key was replaced on purpose, remove the line \
                         host-key:{addr} from that file",
                        path.display()
                    )));
                }
                None => unknown = Some((path.clone(), entry, hex)),
            }
        }
        Ok(HostKey {
            key,
            fingerprint,
            unknown,
        })
    }

    fn verifies(&self, pem: &str, transcript: &[u8]) -> bool {
        ssh_key::SshSig::from_pem(pem).is_ok_and(|sig| {
            self.key
                .verify(auth::KEY_NAMESPACE, transcript, &sig)
                .is_ok()
        })
    }

    /// Records a first-seen host key.
    fn commit(self) -> Option<crate::tls::FirstUse> {
        let (path, entry, hex) = self.unknown?;
        Some(crate::tls::FirstUse {
            fingerprint: self.fingerprint,
            recorded: crate::tls::record_known_host(&path, &entry, &hex)
                .map_err(|e| format!("{e:#}")),
            kind: "host key",
        })
    }
}

impl ExecClient {
    /// Connects to `addr` (`HOST:PORT`) and authenticates. `timeout` bounds
    /// the connect and the handshake each.
    pub async fn connect(
        addr: &str,
        auth: &ClientAuth,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = connect_tcp(addr, timeout).await?;
        // Host keys are on record by the address connected to, however
        // it was spelt (`localhost`, `[::ffff:127.0.0.1]`): one server,
        // one entry, which no other spelling can get around.
        let peer = stream.peer_addr()?;
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let site = Site {
            what: format!("tcp://{addr}"),
            known_as: Some(peer.to_string()),
            channel: None,
        };
        Self::handshake_over(stream.into_halves(), &site, auth, timeout)
            .await
            .map_err(|e| match e {
                // A TLS port (or another service's) waits for us to speak.
                ClientError::Timeout { after, .. } => ClientError::NoHello {
                    addr: addr.to_string(),
                    after,
                },
                e => e,
            })
    }

    /// Connects with TLS 1.3 to `addr`, verifying the server as `tls` says,
    /// then authenticates; a first-seen certificate is recorded only once
    /// the server has also proved it knows the token (see
    /// [`first_use`](Self::first_use)).
    pub async fn connect_tls(
        addr: &str,
        tls: &crate::tls::ClientTls,
        auth: &ClientAuth,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = connect_tcp(addr, timeout).await?;
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let handshake = connector.connect(tls.server_name.clone(), stream);
        let stream = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(tls_error(addr, e)),
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: format!("tls://{addr} (TLS handshake)"),
                    after: timeout,
                });
            }
        };
        // Key signatures cover this TLS session (PROTOCOL.md §3.7).
        let channel = stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], auth::EXPORTER_LABEL, None)
            .ok();
        let site = Site {
            what: format!("tls://{addr}"),
            known_as: None,
            channel,
        };
        let mut client = Self::handshake_over(stream.into_halves(), &site, auth, timeout).await?;
        client.first_use = tls.commit().map(Box::new);
        Ok(client)
    }

    async fn handshake_over(
        (rd, wr): (crate::net::BoxRead, crate::net::BoxWrite),
        site: &Site,
        auth: &ClientAuth,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut client = ExecClient {
            tx: ExecSender {
                sink: FrameWriter::new(wr, FrameCodec::default()),
            },
            rx: ExecReceiver {
                stream: FramedRead::new(rd, FrameCodec::default()),
            },
            next_id: 0,
            stdin_window: None,
            output_window: None,
            identity: None,
            first_use: None,
        };
        match tokio::time::timeout(timeout, client.handshake(auth, site)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: format!("{} (handshake)", site.what),
                    after: timeout,
                });
            }
        }
        Ok(client)
    }

    async fn expect(&mut self) -> Result<ServerMsg, ClientError> {
        match self.rx.recv().await? {
            // The server closes without a word past its connection and
            // handshake limits (it owes an unauthenticated peer nothing);
            // name them, as the usual cause, for whoever hits one.
            None => Err(ClientError::Protocol(
                "the server closed the connection during the handshake (as it does past \
                 exec.max_connections, exec.max_connections_per_source, exec.max_startups \
                 or exec.max_unauthenticated_per_source, and to a source penalised for \
                 failed logins)"
                    .into(),
            )),
            Some(ServerMsg::Error {
                code: ErrorCode::AuthFailed,
                message,
                ..
            }) => Err(ClientError::AuthFailed(message)),
            Some(ServerMsg::Error { code, message, .. }) => {
                Err(ClientError::Server(format!("{}: {message}", code.as_str())))
            }
            Some(m) => Ok(m),
        }
    }

    /// Sends `request` and takes a `ready` that proves nothing (a server
    /// without authentication, a relay ticket's login).
    async fn unproved_login(&mut self, request: AuthRequest) -> Result<(), ClientError> {
        self.tx.send(ClientMsg::Auth(request)).await?;
        match self.expect().await? {
            ServerMsg::Ready {
                stdin_window,
                output_window,
                ..
            } => {
                self.stdin_window = stdin_window;
                self.output_window = output_window;
                Ok(())
            }
            _ => Err(ClientError::Protocol("expected ready".into())),
        }
    }

    async fn handshake(&mut self, auth: &ClientAuth, site: &Site) -> Result<(), ClientError> {
        let ServerMsg::Hello {
            version,
            auth: method,
            nonce,
            methods,
            host_key,
            ..
        } = self.expect().await?
        else {
            return Err(ClientError::Protocol("expected hello".into()));
        };
        if version != VERSION {
            return Err(ClientError::Protocol(format!(
                "server speaks version {version}"
            )));
        }
        let offers = |m: &str| method == m || methods.iter().any(|x| x == m);
        let request = AuthRequest {
            version: VERSION,
            window: auth.window,
            output_window: auth.output_window,
            ..AuthRequest::default()
        };
        // A relay hop: the ticket is the whole proof (the host that issued
        // it checks the file's hash, whoever brings it).
        if let Some(ticket) = &auth.ticket {
            let request = AuthRequest {
                ticket: Some(ticket.clone()),
                ..request
            };
            return self.unproved_login(request).await;
        }
        if method == "none" {
            if !auth.allow_unauthenticated {
                return Err(ClientError::AuthFailed(
                    "the server runs without authentication; accept it explicitly (--no-auth)"
                        .into(),
                ));
            }
            return self.unproved_login(request).await;
        }
        if !offers("hmac-sha256") && !offers("publickey") {
            return Err(ClientError::Protocol(format!(
                "unknown auth method {method:?}"
            )));
        }
        let server_nonce = nonce
            .filter(|n| auth::is_nonce(n))
            .ok_or_else(|| ClientError::Protocol("hello without a valid nonce".into()))?;
        let client_nonce = auth::nonce().map_err(|e| ClientError::Io(std::io::Error::other(e)))?;
        let (ready, check) = match (&auth.key, &auth.token) {
            (Some(key), _) if offers("publickey") => {
                let host = HostKey::from_hello(host_key.as_deref(), auth, site)?;
                let transcript = |role| {
                    auth::key_transcript(
                        role,
                        &server_nonce,
                        &client_nonce,
                        &host.fingerprint,
                        &key.fingerprint(),
                        site.channel.as_ref(),
                    )
                };
                let signature = key
                    .sign(&transcript(Role::Client))
                    .and_then(|s| {
                        s.to_pem(ssh_key::LineEnding::LF)
                            .map_err(|e| anyhow::anyhow!("{e}"))
                    })
                    .map_err(|e| ClientError::AuthFailed(format!("{e:#}")))?;
                self.tx
                    .send(ClientMsg::Auth(AuthRequest {
                        nonce: Some(client_nonce.clone()),
                        method: Some("publickey".into()),
                        key: Some(key.presented()),
                        signature: Some(signature),
                        ..request
                    }))
                    .await?;
                let ready = self.expect().await?;
                // Proves the server holds the host key the client checked
                // (known_hosts) or took (TLS): nothing is sent to an
                // impostor.
                let ok = matches!(&ready, ServerMsg::Ready { signature: Some(sig), .. }
                    if host.verifies(sig, &transcript(Role::Server)));
                if !ok {
                    return Err(ClientError::AuthFailed(
                        "the server did not prove it holds its host key (impostor?)".into(),
                    ));
                }
                (ready, Some(host))
            }
            (_, Some(token)) if offers("hmac-sha256") => {
                if auth.key.is_some() {
                    refuse_downgrade(auth, site)?;
                }
                let mac = token.client_mac(&server_nonce, &client_nonce);
                self.tx
                    .send(ClientMsg::Auth(AuthRequest {
                        nonce: Some(client_nonce.clone()),
                        mac: Some(mac),
                        ..request
                    }))
                    .await?;
                let ready = self.expect().await?;
                // Proves the server knows the token too: nothing is sent
                // to an impostor that grabbed the port first.
                let ok = matches!(&ready, ServerMsg::Ready { mac: Some(m), .. }
                    if token.verify_server(&server_nonce, &client_nonce, m));
                if !ok {
                    return Err(ClientError::AuthFailed(
                        "the server's MAC is wrong: it does not know the token (impostor?)".into(),
                    ));
                }
                (ready, None)
            }
            (Some(_), None) if offers("hmac-sha256") => {
                return Err(ClientError::AuthFailed(
                    "the server does not take keys, only the shared token (a key given with -i \
                     is never traded for the token; leave -i out to use the token)"
                        .into(),
                ));
            }
            (_, _) if offers("hmac-sha256") => {
                return Err(ClientError::AuthFailed(
                    "the server requires a token".into(),
                ));
            }
            (_, _) => {
                return Err(ClientError::AuthFailed(
                    "the server accepts keys only: give -i FILE (switchboard keygen makes one; \
                     its .pub line goes in the server's authorized_keys)"
                        .into(),
                ));
            }
        };
        if let ServerMsg::Ready {
            stdin_window,
            output_window,
            identity,
            ..
        } = ready
        {
            self.stdin_window = stdin_window;
            self.output_window = output_window;
            self.identity = identity;
        }
        if let Some(host) = check {
            self.first_use = host.commit().map(Box::new);
        }
        Ok(())
    }

    /// The sending half, for requests made a step at a time (transfers).
    pub fn sender(&mut self) -> &mut ExecSender {
        &mut self.tx
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut ExecReceiver {
        &mut self.rx
    }

    /// Who the server says this client is (its key's name, a principal,
    /// `token:…`), for servers that say.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// A certificate this connection trusted on first use, and whether it
    /// was recorded in known_hosts, for the caller to tell the user.
    pub fn first_use(&self) -> Option<&crate::tls::FirstUse> {
        self.first_use.as_deref()
    }

    /// Each job's stdin window, when the client asked for windows and the
    /// server keeps them (PROTOCOL.md §3.6); `None`: stdin is paced by TCP
    /// alone.
    pub fn stdin_window(&self) -> Option<u64> {
        self.stdin_window
    }

    /// The output window the server keeps to for each job, when the
    /// client gave one and the server knows windows.
    pub fn output_window(&self) -> Option<u64> {
        self.output_window
    }

    /// A fresh job id for this connection.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The halves, for streaming callers.
    pub fn split(self) -> (ExecSender, ExecReceiver) {
        (self.tx, self.rx)
    }

    /// Sends a ping and waits for the pong.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.tx.send(ClientMsg::Ping).await?;
        loop {
            match self.rx.recv().await? {
                Some(ServerMsg::Pong) => return Ok(()),
                Some(_) => continue,
                None => return Err(ClientError::Closed { got: 0, want: 0 }),
            }
        }
    }

    /// Runs a shell command line and collects its output.
    pub async fn run(&mut self, cmd: &str) -> Result<Output, ClientError> {
        let id = self.next_id();
        self.run_request(ExecRequest::shell(id, cmd)).await
    }

    /// Runs one request (its id must not be running) and collects its
    /// output. Frames of other jobs are ignored; use [`split`](Self::split)
    /// to run several at once.
    pub async fn run_request(&mut self, req: ExecRequest) -> Result<Output, ClientError> {
        let id = req.id;
        self.tx.send(ClientMsg::Exec(req)).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.rx.job_event(id).await? {
                JobEvent::Started { .. }
                | JobEvent::Window { .. }
                | JobEvent::Transfer(_)
                | JobEvent::Attached(_)
                | JobEvent::Jobs { .. } => {}
                JobEvent::Stdout(data, _) => stdout.extend_from_slice(&data),
                JobEvent::Stderr(data, _) => stderr.extend_from_slice(&data),
                JobEvent::Exit { status, .. } => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        status,
                    });
                }
                JobEvent::Failed(f) => return Err(f.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_protocol() {
        assert_eq!(exit_code(&ExitStatus::Code(7)), 7);
        assert_eq!(exit_code(&ExitStatus::Code(255)), 255);
        let sig = |n: &str, t| ExitStatus::Signal {
            name: n.into(),
            timed_out: t,
        };
        assert_eq!(exit_code(&sig("KILL", false)), 137);
        assert_eq!(exit_code(&sig("INT", false)), 130);
        assert_eq!(exit_code(&sig("KILL", true)), 124);
    }
}
