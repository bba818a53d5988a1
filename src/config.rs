//! Server configuration: endpoints and every limit, each with its default.
//!
//! Precedence: built-in defaults, then the TOML file (`--config`), then
//! command-line flags. Every setting's default is stated once, on its field
//! and in the `Default` impl beside it; `contrib/switchboard.toml` lists
//! them all as a file (a test keeps it equal to `ServerConfig::default()`),
//! and `serve --help` takes its defaults from `Default` too.
//!
//! ```text
//! [echo]  listen, mode, connection limits, idle timeout, buffer
//! [time]  listen, utc, reply_cap
//! [udp]   rate limit, burst, tracked sources, SO_RCVBUF (echo and time)
//! [exec]  listen, legacy_listen, auth and token, TLS, limits and deadlines,
//!         handshake slots (max_startups), the command policy, run_as
//! [server] shutdown_grace, metrics, per-source network blocks
//! ```
//!
//! Which settings a SIGHUP applies and which wait for a restart is
//! [`ServerConfig::restart_settings`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use crate::endpoint::{Endpoint, Transport};
use crate::exposure::Service;
use crate::timefmt;

/// Default TCP/UDP echo port: the tutorial's.
pub const DEFAULT_ECHO_PORT: u16 = 9000;
/// Default UDP time port.
pub const DEFAULT_TIME_PORT: u16 = 9001;

/// Echo's reply transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EchoMode {
    /// ASCII a-z to A-Z, every other byte unchanged (Python's `bytes.upper()`).
    #[default]
    Upper,
    /// Bytes back unchanged (RFC 862).
    Plain,
}

impl EchoMode {
    /// Applies the mode to `buf` in place; the length never changes.
    pub fn apply(self, buf: &mut [u8]) {
        if self == EchoMode::Upper {
            buf.make_ascii_uppercase();
        }
    }

    pub const ALL: [EchoMode; 2] = [EchoMode::Upper, EchoMode::Plain];

    pub fn name(self) -> &'static str {
        match self {
            EchoMode::Upper => "upper",
            EchoMode::Plain => "plain",
        }
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            EchoMode::Upper => {
                "ASCII a-z to A-Z, every other byte unchanged (Python's `bytes.upper()`)"
            }
            EchoMode::Plain => "Bytes back unchanged (RFC 862)",
        }
    }
}

/// OpenSSH's `MaxStartups start:rate:full` for connections that have not
/// authenticated yet. Default: `16:30:64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startups {
    /// Below this many, every connection is admitted.
    pub start: usize,
    /// Percent dropped at `start`, rising linearly to 100 at `full`.
    pub rate: u32,
    /// At this many, no connection is admitted (but see eviction).
    pub full: usize,
}

impl Default for Startups {
    fn default() -> Self {
        Startups {
            start: 16,
            rate: 30,
            full: 64,
        }
    }
}

impl fmt::Display for Startups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.rate, self.full)
    }
}

impl FromStr for Startups {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected START:RATE:FULL (e.g. 16:30:64) or one number");
        let parts: Vec<&str> = s.split(':').collect();
        let num = |p: &str| p.trim().parse::<usize>().map_err(|_| bad());
        let st = match parts[..] {
            [full] => {
                let full = num(full)?;
                Startups {
                    start: full,
                    rate: 100,
                    full,
                }
            }
            [start, rate, full] => Startups {
                start: num(start)?,
                rate: u32::try_from(num(rate)?).map_err(|_| bad())?,
                full: num(full)?,
            },
            _ => return Err(bad()),
        };
        if st.full == 0 || st.start > st.full || st.rate > 100 {
            return Err(format!(
                "{s:?}: need 1 <= FULL, START <= FULL and RATE <= 100"
            ));
        }
        Ok(st)
    }
}

/// How addresses are grouped into sources: prefix lengths (OpenSSH's
/// `PerSourceNetBlockSize`). Default: /32 for IPv4, /64 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetBlocks {
    pub v4: u8,
    pub v6: u8,
}

impl Default for NetBlocks {
    fn default() -> Self {
        NetBlocks { v4: 32, v6: 64 }
    }
}

impl NetBlocks {
    /// The source `ip` belongs to: its network block, as an address.
    pub fn block(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.v4.min(32)))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub echo: EchoConfig,
    pub time: TimeConfig,
    pub udp: UdpConfig,
    pub exec: ExecConfig,
    pub server: ProcessConfig,
}

/// Default native exec port: the tutorial's final server's.
pub const DEFAULT_EXEC_PORT: u16 = 8080;

/// The largest `exec.max_processes`: the kernel's PID_MAX_LIMIT on 64-bit
/// systems, above which `pids.max` refuses a number (it takes `max`).
pub const MAX_PROCESSES_LIMIT: u64 = 4_194_304;

/// `exec.max_unauthenticated_per_source`'s default, also how many
/// handshakes the bundled load generator has in progress at once, so that
/// its default run never trips the server's default.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE: usize = 8;

/// Remote execution (PROTOCOL.md §3-4).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// Native protocol endpoints. Default: `tcp://127.0.0.1:8080`.
    #[serde(deserialize_with = "de_tcp_listen")]
    pub listen: Vec<Endpoint>,
    /// Tutorial-compatible endpoints, loopback only. Default: none.
    #[serde(deserialize_with = "de_tcp_listen")]
    pub legacy_listen: Vec<Endpoint>,
    /// Run without authentication (loopback endpoints only). Default: false.
    pub no_auth: bool,
    /// The shared token's file. Default: `switchboard/token` in the user's
    /// config directory, created (0600, random) if missing.
    pub token_file: Option<PathBuf>,
    /// How clients authenticate: `token` (the shared token), `key`
    /// (Ed25519 keys in `authorized_keys`, certificates of
    /// `trusted_user_ca`) or `either`. Default: `token`.
    pub auth: crate::identity::AuthMode,
    /// The server's Ed25519 host key, which proves it to key clients.
    /// Default: `host_key` beside the token file, created (0600) if missing.
    pub host_key: Option<PathBuf>,
    /// Keys that may log in, with their options (`exec.auth` `key` or
    /// `either`). Default: `authorized_keys` beside the token file.
    pub authorized_keys: Option<PathBuf>,
    /// CA public keys whose user certificates are accepted. Default: none.
    pub trusted_user_ca: Option<PathBuf>,
    /// With `trusted_user_ca`: the principals admitted, one per line with
    /// options. Default: `authorized_principals` beside the token file.
    pub authorized_principals: Option<PathBuf>,
    /// Public keys refused whatever else says (users' or CAs'). Default: none.
    pub revoked_keys: Option<PathBuf>,
    /// Simultaneous exec connections, native and legacy each (legacy
    /// connections never authenticate, so they cannot take native ones).
    /// Default: 256.
    pub max_connections: usize,
    /// Simultaneous exec connections from one source address. Default: 32.
    pub max_connections_per_source: usize,
    /// Connections still in their handshake (the TLS one included), all
    /// sources, as OpenSSH's `MaxStartups START:RATE:FULL`: below START all
    /// are admitted, from START on RATE% are dropped at random, rising to
    /// 100% at FULL; at the limit the source holding the most, if it holds
    /// more than the newcomer's, loses its oldest. Default: `16:30:64`.
    #[serde(deserialize_with = "de_from_str")]
    pub max_startups: Startups,
    /// While at least START handshakes are in progress, a source whose
    /// connection is refused, dropped, taken over, or leaves its handshake
    /// without authenticating is refused for this long (OpenSSH's
    /// PerSourcePenalties `noauth`), so no source can churn slots fast. 0
    /// turns it off. Default: 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub unauthenticated_penalty: Duration,
    /// Connections still in their handshake from one source (network
    /// block, see `server.source_netblock_v4`). Default: 8.
    pub max_unauthenticated_per_source: usize,
    /// After 3 failed authentications from a source, its connections are
    /// refused for this long, doubling with each further failure. 0 turns
    /// the penalty off. Default: 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub auth_penalty: Duration,
    /// The longest penalty. Default: 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub auth_penalty_max: Duration,
    /// Close an authenticated connection with no job running and nothing
    /// received for this long. Default: 600 s.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A frame whose first byte has arrived must be complete within this
    /// long (a slowloris guard). Default: 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub frame_timeout: Duration,
    /// Running jobs per connection. Default: 64.
    pub max_jobs_per_connection: usize,
    /// Running jobs over all connections. Default: 512.
    pub max_jobs: usize,
    /// File transfers (put, get, list) running over all connections,
    /// apart from jobs (which they cannot crowd out); each also counts
    /// against its connection's `max_jobs_per_connection`. Default: 32.
    pub max_transfers: usize,
    /// Processes and threads one job may have at once; 0 = no limit. A
    /// cgroup per job where the server has a pids cgroup, else
    /// RLIMIT_NPROC, which counts all processes of the job's user and does
    /// not bind root. Default: 0.
    pub max_processes: u64,
    /// Time a client has to complete the handshake. Default: 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a job's group is killed. Default: 2 s.
    #[serde(deserialize_with = "de_duration")]
    pub kill_grace: Duration,
    /// How long after the main process exits the server waits for pipes
    /// still held by background processes. Default: 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub drain_grace: Duration,
    /// Timeout for jobs that set none; zero means none. Default: none.
    #[serde(deserialize_with = "de_duration")]
    pub job_timeout: Duration,
    /// Output one job may send, stdout and stderr together, in bytes;
    /// past it the rest is read and dropped (the job runs on) and the
    /// job's `exit` says how much. A request may ask for less
    /// (`max_output`), never more. 0 = no limit. Default: 0.
    pub max_output: u64,
    /// Detached jobs (`exec --detach`, PROTOCOL.md §3.10) one identity
    /// may have kept, running or ended and not yet expired; 0 refuses
    /// `detach`. They count against `max_jobs` and the identity's
    /// `max-jobs=` while they run. Default: 16.
    pub max_detached: usize,
    /// Detached jobs kept over all identities. Default: 64.
    pub max_detached_total: usize,
    /// Output a detached job keeps for `attach`, in bytes: past it the
    /// oldest is dropped, and counted. Memory for detached jobs is bounded
    /// by this times `max_detached_total` (64 MiB with the defaults).
    /// Default: 1 MiB (65,536 to 268,435,456).
    pub detached_buffer: u64,
    /// How long a detached job that has ended is kept (its status and
    /// output) before it is forgotten. Default: 1 h.
    #[serde(deserialize_with = "de_duration")]
    pub detached_ttl: Duration,
    /// Largest frame header accepted. Default: 65,536 bytes.
    pub max_header: usize,
    /// Largest frame body accepted. Default: 1 MiB.
    pub max_body: usize,
    /// Per-job stdin window for clients that ask for windows (PROTOCOL.md
    /// §3.6): the stdin bytes (each frame's size plus 64) a job may have
    /// received and not yet taken, at most. Memory for stdin is bounded
    /// by this times exec.max_jobs. Default: 256 KiB (131,072 to
    /// 16,777,216).
    pub stdin_window: u64,
    /// Window of one `put`'s data (PROTOCOL.md §3.8): the bytes (each
    /// frame's size plus 64) the server holds for it, at most, until its
    /// thread has written them. Larger than a job's stdin window because
    /// a copy's speed is this window over the time a give-back takes to
    /// come round; bounded by this times exec.max_transfers (128 MiB with
    /// the defaults). Default: 4 MiB (131,072 to 67,108,864).
    pub transfer_window: u64,
    /// Legacy mode: output kept per command. Default: 64 MiB.
    pub legacy_output_cap: usize,
    /// Refuse shell jobs (`cmd`); only `argv`. Default: false.
    pub argv_only: bool,
    /// If not empty, the only programs (`argv[0]`, compared as written)
    /// jobs may run; implies `argv_only`. Default: empty (any).
    pub allowed_programs: Vec<String>,
    /// Allow requests to set `env`. Default: true.
    pub allow_env: bool,
    /// Names a request's `env` may set, OpenSSH `AcceptEnv`-style (`*` and
    /// `?` wildcards). With `allowed_programs`, only these are accepted
    /// (empty: none), since `LD_PRELOAD`, `BASH_ENV` and the like would run
    /// other code than the allowed program; without an allow-list, a
    /// non-empty list restricts every request and an empty one leaves it to
    /// `allow_env`. Default: empty.
    pub accept_env: Vec<String>,
    /// Allow requests to set `cwd`. Default: true.
    pub allow_cwd: bool,
    /// Allow jobs on a pseudo-terminal (`pty`, `exec -t`), as OpenSSH's
    /// `PermitTTY`. Default: true.
    pub allow_pty: bool,
    /// Run jobs as this user (the server must be root). Default: none.
    pub run_as: Option<String>,
    /// File transfers (`put`, `get`) may read and write only beneath
    /// these directories (absolute paths). Default: none, which leaves
    /// transfers free where exec is (as the job user, anywhere), and off
    /// where exec is restricted (`argv_only`, `allowed_programs`, a key's
    /// `programs=`).
    pub files_root: Vec<PathBuf>,
    /// Allow jobs to run as root when the server is root and `run_as` is
    /// not set. Default: false (such jobs get `forbidden`).
    pub allow_root: bool,
    /// PEM certificate chain for `tls://` endpoints. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls://` endpoints. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Create (once, then keep) a self-signed certificate in the config
    /// directory for `tls://` endpoints. Default: false.
    pub tls_self_signed: bool,
    /// Allow plaintext `tcp://` exec on non-loopback addresses. Default: false.
    pub allow_plaintext: bool,
}

impl ExecConfig {
    /// What the exposure rules need to know of these settings.
    pub fn exposure(&self) -> crate::exposure::Rules {
        crate::exposure::Rules {
            no_auth: self.no_auth,
            allow_plaintext: self.allow_plaintext,
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            listen: vec![Endpoint::new(
                Transport::Tcp,
                "127.0.0.1",
                DEFAULT_EXEC_PORT,
            )],
            legacy_listen: Vec::new(),
            no_auth: false,
            token_file: None,
            auth: crate::identity::AuthMode::Token,
            host_key: None,
            authorized_keys: None,
            trusted_user_ca: None,
            authorized_principals: None,
            revoked_keys: None,
            max_connections: 256,
            max_connections_per_source: 32,
            max_startups: Startups::default(),
            unauthenticated_penalty: Duration::from_secs(1),
            max_unauthenticated_per_source: DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE,
            auth_penalty: Duration::from_secs(1),
            auth_penalty_max: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(30),
            max_jobs_per_connection: 64,
            max_jobs: 512,
            max_transfers: 32,
            max_processes: 0,
            handshake_timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
            drain_grace: Duration::from_secs(1),
            job_timeout: Duration::ZERO,
            max_output: 0,
            max_detached: 16,
            max_detached_total: 64,
            detached_buffer: 1 << 20,
            detached_ttl: Duration::from_secs(3600),
            max_header: crate::proto::frame::DEFAULT_MAX_HEADER,
            max_body: crate::proto::frame::DEFAULT_MAX_BODY,
            stdin_window: 256 * 1024,
            transfer_window: 4 << 20,
            legacy_output_cap: 64 * 1024 * 1024,
            argv_only: false,
            allowed_programs: Vec::new(),
            allow_env: true,
            accept_env: Vec::new(),
            allow_cwd: true,
            allow_pty: true,
            files_root: Vec::new(),
            run_as: None,
            allow_root: false,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            allow_plaintext: false,
        }
    }
}

/// The echo service (PROTOCOL.md §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoConfig {
    /// Default: `tcp://127.0.0.1:9000` and `udp://127.0.0.1:9000`.
    #[serde(deserialize_with = "de_echo_listen")]
    pub listen: Vec<Endpoint>,
    /// Default: `upper`.
    pub mode: EchoMode,
    /// Simultaneous TCP connections, all endpoints together. Default: 10,000.
    pub max_connections: usize,
    /// Simultaneous TCP connections from one source address; 0 = no
    /// per-source limit. Default: 4,096.
    pub max_connections_per_source: usize,
    /// Close a connection after this long with nothing received, or with a
    /// reply that the client does not read. Default: 300 s.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Bytes read per step on an active TCP connection; also the most the
    /// server holds for one client. Idle connections hold none. Default: 64 KiB.
    pub buffer_size: usize,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            listen: vec![
                Endpoint::new(Transport::Tcp, "127.0.0.1", DEFAULT_ECHO_PORT),
                Endpoint::new(Transport::Udp, "127.0.0.1", DEFAULT_ECHO_PORT),
            ],
            mode: EchoMode::Upper,
            max_connections: 10_000,
            max_connections_per_source: 4096,
            idle_timeout: Duration::from_secs(300),
            buffer_size: 64 * 1024,
        }
    }
}

/// The time service (PROTOCOL.md §2).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// Default: `udp://127.0.0.1:9001`.
    #[serde(deserialize_with = "de_time_listen")]
    pub listen: Vec<Endpoint>,
    /// Answer in UTC instead of the server's local time. Default: false.
    pub utc: bool,
    /// Longest reply in bytes. Default: 1,024; at most 65,507.
    pub reply_cap: usize,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            listen: vec![Endpoint::new(
                Transport::Udp,
                "127.0.0.1",
                DEFAULT_TIME_PORT,
            )],
            utc: false,
            reply_cap: timefmt::DEFAULT_REPLY_CAP,
        }
    }
}

/// Settings shared by the UDP services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpConfig {
    /// Datagrams per second answered for one source IP address (token
    /// bucket); 0 turns the limit off. Default: 2,000.
    pub rate_limit: u32,
    /// Bucket size: how many datagrams a source may send in a burst. Default: 2,000.
    pub rate_burst: u32,
    /// Source addresses the limiter tracks at once; when all are busy, new
    /// sources are dropped until some go quiet. Default: 65,536.
    pub max_sources: usize,
    /// `SO_RCVBUF` asked for on each UDP socket. Default: 4 MiB.
    pub recv_buffer: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            rate_limit: 2_000,
            rate_burst: 2_000,
            max_sources: 65_536,
            recv_buffer: 4 * 1024 * 1024,
        }
    }
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    /// On SIGINT/SIGTERM, how long open connections get to finish; never
    /// less than `exec.kill_grace` + 1 s, so that a job ignoring TERM is
    /// still killed and its end reported. Default: 5 s.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Serve Prometheus metrics here (`tcp://HOST:PORT`). Default: off.
    #[serde(deserialize_with = "de_tcp_listen")]
    pub metrics: Vec<Endpoint>,
    /// Per-source limits and penalties count IPv4 addresses in blocks of
    /// this prefix length (OpenSSH's `PerSourceNetBlockSize`). Default: 32.
    pub source_netblock_v4: u8,
    /// The same for IPv6, where one host usually has a /64. Default: 64.
    pub source_netblock_v6: u8,
    /// Where the audit trail goes: a file (appended, created 0600,
    /// reopened on SIGHUP), `-` for stderr (the journal under systemd) or
    /// `none`. Apart from the log: no log level silences it. Default: `-`.
    pub audit_log: crate::auditlog::AuditTarget,
}

impl ProcessConfig {
    /// How per-source accounting groups addresses.
    pub fn netblocks(&self) -> NetBlocks {
        NetBlocks {
            v4: self.source_netblock_v4,
            v6: self.source_netblock_v6,
        }
    }
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            shutdown_grace: Duration::from_secs(5),
            metrics: Vec::new(),
            source_netblock_v4: 32,
            source_netblock_v6: 64,
            audit_log: crate::auditlog::AuditTarget::Stderr,
        }
    }
}

impl ServerConfig {
    /// Every endpoint the configuration asks for, with its service.
    pub fn listen_endpoints(&self) -> impl Iterator<Item = (Service, &Endpoint)> {
        self.echo
            .listen
            .iter()
            .map(|e| (Service::Echo, e))
            .chain(self.time.listen.iter().map(|e| (Service::Time, e)))
            .chain(self.exec.listen.iter().map(|e| (Service::Exec, e)))
            .chain(
                self.exec
                    .legacy_listen
                    .iter()
                    .map(|e| (Service::ExecLegacy, e)),
            )
            .chain(self.server.metrics.iter().map(|e| (Service::Metrics, e)))
    }

    /// Reads a TOML file; fields it leaves out keep their defaults.
    /// Reads a configuration file as the key files are read (the server
    /// user's or root's, writable by no one else): it says who may log in
    /// (`no_auth`, `auth`, the key files) and what jobs may do.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = crate::secrets::read_trusted(path, "config")?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("config {} is not UTF-8", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("bad config {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: ServerConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that types alone cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.echo.max_connections == 0 {
            bail!("echo.max_connections must be at least 1");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.echo.buffer_size) {
            bail!("echo.buffer_size must be between 1024 and 16777216");
        }
        if self.echo.idle_timeout.is_zero() {
            bail!("echo.idle_timeout must be above 0");
        }
        if !(timefmt::MIN_REPLY_CAP..=timefmt::MAX_REPLY_CAP).contains(&self.time.reply_cap) {
            bail!(
                "time.reply_cap must be between {} and {}",
                timefmt::MIN_REPLY_CAP,
                timefmt::MAX_REPLY_CAP
            );
        }
        if self.udp.rate_limit > 0 && self.udp.rate_burst == 0 {
            bail!("udp.rate_burst must be at least 1 when udp.rate_limit is on");
        }
        if self.udp.max_sources == 0 {
            bail!("udp.max_sources must be at least 1");
        }
        if self.exec.no_auth && self.exec.auth != crate::identity::AuthMode::Token {
            bail!(
                "exec.no_auth contradicts exec.auth = \"{}\": say which (no_auth turns every login off)",
                self.exec.auth.name()
            );
        }
        let x = &self.exec;
        if x.max_connections == 0
            || x.max_jobs_per_connection == 0
            || x.max_jobs == 0
            || x.max_transfers == 0
        {
            bail!(
                "exec.max_connections, max_jobs_per_connection, max_jobs and max_transfers must \
                 be at least 1"
            );
        }
        if !(128 * 1024..=16 * 1024 * 1024).contains(&x.stdin_window) {
            bail!("exec.stdin_window must be between 131072 and 16777216");
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&x.detached_buffer) {
            bail!("exec.detached_buffer must be between 65536 and 268435456");
        }
        if x.detached_ttl.is_zero() {
            bail!("exec.detached_ttl must be above 0");
        }
        if !(128 * 1024..=64 * 1024 * 1024).contains(&x.transfer_window) {
            bail!("exec.transfer_window must be between 131072 and 67108864");
        }
        if !(256..=16 * 1024 * 1024).contains(&x.max_header) {
            bail!("exec.max_header must be between 256 and 16777216");
        }
        if !(64 * 1024..=64 * 1024 * 1024).contains(&x.max_body) {
            bail!("exec.max_body must be between 65536 and 67108864");
        }
        if x.handshake_timeout.is_zero() || x.idle_timeout.is_zero() || x.frame_timeout.is_zero() {
            bail!("exec.handshake_timeout, idle_timeout and frame_timeout must be above 0");
        }
        // A relative program path would resolve against the client's cwd.
        if let Some(p) = x
            .allowed_programs
            .iter()
            .find(|p| p.is_empty() || p.contains('\0') || (p.contains('/') && !p.starts_with('/')))
        {
            bail!("exec.allowed_programs: {p:?} must be a bare name or an absolute path");
        }
        if let Some(n) = x
            .accept_env
            .iter()
            .find(|n| n.is_empty() || n.contains(['=', '\0']))
        {
            bail!("exec.accept_env: {n:?} is not a variable name pattern");
        }
        if let Some(r) = self.exec.files_root.iter().find(|r| !r.is_absolute()) {
            bail!("exec.files_root: {} must be an absolute path", r.display());
        }
        let tls = x.listen.iter().any(|e| e.transport == Transport::Tls);
        if tls && !x.tls_self_signed && (x.tls_cert.is_none() || x.tls_key.is_none()) {
            bail!("tls:// exec endpoints need --tls-cert and --tls-key, or --tls-self-signed");
        }
        for (service, e) in self.listen_endpoints() {
            crate::exposure::transport_allowed(service, e.transport)
                .with_context(|| format!("{service}: {e}"))?;
            // Listeners are IPv6-only, so an IPv4-mapped address cannot be
            // bound: say so here, where --check-config sees it too.
            if let Ok(v6) = e.host.parse::<Ipv6Addr>()
                && let Some(v4) = v6.to_ipv4_mapped()
            {
                bail!("{service}: {e} is an IPv4-mapped address; listen on {v4} instead");
            }
        }
        if x.max_unauthenticated_per_source == 0 {
            bail!("exec.max_unauthenticated_per_source must be at least 1");
        }
        if x.max_processes > MAX_PROCESSES_LIMIT {
            bail!(
                "exec.max_processes must be at most {MAX_PROCESSES_LIMIT} (the kernel's most \
                 processes), or 0 for no limit"
            );
        }
        if self.server.source_netblock_v4 > 32 || self.server.source_netblock_v6 > 128 {
            bail!(
                "server.source_netblock_v4 must be at most 32 and source_netblock_v6 at most 128"
            );
        }
        Ok(())
    }
}

impl ServerConfig {
    /// The settings that take effect only at a restart, each with its name
    /// and value: a reload compares these as a whole and names every one
    /// that changed. Every other setting is applied live (see
    /// `server::Reloader`). The patterns below name every field, so a new
    /// setting does not compile until it is put on one side or the other.
    /// Long by design (over 80 lines): naming every field is the point.
    pub fn restart_settings(&self) -> Vec<(&'static str, String)> {
        let ServerConfig {
            echo,
            time,
            udp,
            exec,
            server,
        } = self;
        let EchoConfig {
            listen: echo_listen,
            mode,
            max_connections: _,            // live: the limit is resized
            max_connections_per_source: _, // live: read at each accept
            idle_timeout: echo_idle,
            buffer_size,
        } = echo;
        let TimeConfig {
            listen: time_listen,
            utc,
            reply_cap,
        } = time;
        let UdpConfig {
            rate_limit,
            rate_burst,
            max_sources,
            recv_buffer,
        } = udp;
        // Exec settings are read per connection or per request from the
        // live copy, except the sockets and the certificate.
        let ExecConfig {
            listen: exec_listen,
            legacy_listen,
            no_auth: _,
            token_file: _,
            // live: read again by each reload (identity::Credentials::load)
            auth: _,
            host_key: _,
            authorized_keys: _,
            trusted_user_ca: _,
            authorized_principals: _,
            revoked_keys: _,
            max_connections: _,
            max_connections_per_source: _,
            max_startups: _,
            unauthenticated_penalty: _,
            max_unauthenticated_per_source: _,
            auth_penalty: _,
            auth_penalty_max: _,
            idle_timeout: _,
            frame_timeout: _,
            max_jobs_per_connection: _,
            max_jobs: _,
            max_transfers: _,
            max_processes: _,
            handshake_timeout: _,
            kill_grace: _,
            drain_grace: _,
            job_timeout: _,
            max_output: _,
            max_detached: _,
            max_detached_total: _,
            detached_buffer: _,
            detached_ttl: _,
            max_header: _,
            max_body: _,
            stdin_window: _,
            transfer_window: _,
            legacy_output_cap: _,
            argv_only: _,
            allowed_programs: _,
            allow_env: _,
            accept_env: _,
            allow_cwd: _,
            allow_pty: _,
            files_root: _,
            run_as: _,
            allow_root: _,
            tls_cert,
            tls_key,
            tls_self_signed,
            allow_plaintext: _, // live: judged by exposure against the bound sockets
        } = exec;
        let ProcessConfig {
            shutdown_grace: _, // live: read when shutdown starts
            metrics,
            source_netblock_v4,
            source_netblock_v6,
            audit_log,
        } = server;
        macro_rules! named {
            ($($name:literal => $v:expr),* $(,)?) => {
                vec![$(($name, format!("{:?}", $v))),*]
            };
        }
        named![
            "echo.listen" => echo_listen,
            "echo.mode" => mode,
            "echo.idle_timeout" => echo_idle,
            "echo.buffer_size" => buffer_size,
            "time.listen" => time_listen,
            "time.utc" => utc,
            "time.reply_cap" => reply_cap,
            "udp.rate_limit" => rate_limit,
            "udp.rate_burst" => rate_burst,
            "udp.max_sources" => max_sources,
            "udp.recv_buffer" => recv_buffer,
            "exec.listen" => exec_listen,
            "exec.legacy_listen" => legacy_listen,
            "exec.tls_cert" => tls_cert,
            "exec.tls_key" => tls_key,
            "exec.tls_self_signed" => tls_self_signed,
            "server.metrics" => metrics,
            "server.source_netblock_v4" => source_netblock_v4,
            "server.source_netblock_v6" => source_netblock_v6,
            "server.audit_log" => audit_log,
        ]
    }

    /// The restart-only settings that differ between `self` and `new`, by name.
    pub fn restart_changes(&self, new: &ServerConfig) -> Vec<&'static str> {
        self.restart_settings()
            .into_iter()
            .zip(new.restart_settings())
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// Parses an echo listen address: a bare `HOST:PORT` means TCP and UDP.
pub fn parse_echo_listen(s: &str) -> anyhow::Result<Vec<Endpoint>> {
    let (t, host, port) = Endpoint::parse_loose(s)?;
    Ok(match t {
        Some(t) => vec![Endpoint::new(t, host, port)],
        None => vec![
            Endpoint::new(Transport::Tcp, host.clone(), port),
            Endpoint::new(Transport::Udp, host, port),
        ],
    })
}

/// Parses a time listen address: a bare `HOST:PORT` means UDP. Whether
/// the transport suits the service is judged by [`ServerConfig::validate`]
/// (through [`crate::exposure`]).
pub fn parse_time_listen(s: &str) -> anyhow::Result<Vec<Endpoint>> {
    Ok(vec![Endpoint::parse_with_default(s, Transport::Udp)?])
}

/// Parses an exec, legacy or metrics listen address: a bare `HOST:PORT`
/// means TCP. The transport is judged by [`ServerConfig::validate`].
pub fn parse_tcp_listen(s: &str) -> anyhow::Result<Vec<Endpoint>> {
    Ok(vec![Endpoint::parse_with_default(s, Transport::Tcp)?])
}

/// Parses a duration such as `300s`, `5m`, `250ms`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    // A bare number is seconds, as `timeout(1)` and `sleep(1)` read it.
    if let Ok(secs) = s.trim().parse::<f64>()
        && let Ok(d) = Duration::try_from_secs_f64(secs)
    {
        return Ok(d);
    }
    humantime::parse_duration(s)
        .with_context(|| format!("{s:?}: expected a duration like 30s, 5m, 250ms, or seconds"))
}

fn de_listen<'de, D: Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> anyhow::Result<Vec<Endpoint>>,
) -> Result<Vec<Endpoint>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    let mut out = Vec::new();
    for s in raw {
        out.extend(parse(&s).map_err(serde::de::Error::custom)?);
    }
    Ok(out)
}

fn de_echo_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Endpoint>, D::Error> {
    de_listen(d, parse_echo_listen)
}

fn de_time_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Endpoint>, D::Error> {
    de_listen(d, parse_time_listen)
}

fn de_tcp_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Endpoint>, D::Error> {
    de_listen(d, parse_tcp_listen)
}

fn de_from_str<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = ServerConfig::from_toml("").unwrap();
        assert_eq!(c.echo.listen.len(), 2);
        assert_eq!(c.echo.max_connections, 10_000);
        assert_eq!(c.time.listen[0].to_string(), "udp://127.0.0.1:9001");
        assert_eq!(c.time.reply_cap, 1024);
    }

    #[test]
    fn file_overrides_and_validates() {
        let c = ServerConfig::from_toml(
            r#"
            [echo]
            listen = ["[::1]:0"]
            mode = "plain"
            idle_timeout = "1m 30s"
            [time]
            listen = ["127.0.0.1:0"]
            utc = true
            [server]
            shutdown_grace = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.echo.listen.len(), 2);
        assert_eq!(c.echo.listen[0].to_string(), "tcp://[::1]:0");
        assert_eq!(c.echo.mode, EchoMode::Plain);
        assert_eq!(c.echo.idle_timeout, Duration::from_secs(90));
        assert!(c.time.utc);
        assert_eq!(c.server.shutdown_grace, Duration::from_millis(250));

        for bad in [
            "[echo]\nmax_connections = 0",
            "[time]\nreply_cap = 70000",
            "[time]\nlisten = [\"tcp://127.0.0.1:1\"]",
            "[echo]\nlisten = [\"nope\"]",
            "[echo]\nidle_timeout = \"soon\"",
            "[echo]\nbogus = 1",
            "[exec]\nlegacy_listen = [\"tcp://[::ffff:127.0.0.1]:0\"]",
            "[exec]\nmax_processes = 4194305",
            "[exec]\ntransfer_window = 65536",
            "[exec]\ntransfer_window = 67108865",
        ] {
            assert!(
                ServerConfig::from_toml(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }
}

#[cfg(test)]
mod restart {
    use super::*;

    #[test]
    fn restart_settings_are_named_once_and_live_ones_are_not_among_them() {
        let a = ServerConfig::default();
        let names: Vec<_> = a.restart_settings().into_iter().map(|(n, _)| n).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");

        let mut live = a.clone();
        live.echo.max_connections = 1;
        live.echo.max_connections_per_source = 1;
        live.exec.max_connections = 1;
        live.exec.no_auth = true;
        live.exec.allowed_programs = vec!["x".into()];
        live.server.shutdown_grace = Duration::from_secs(1);
        assert!(a.restart_changes(&live).is_empty());

        let mut restart = a.clone();
        restart.udp.rate_burst = 1;
        restart.exec.tls_cert = Some("c.pem".into());
        restart.server.source_netblock_v6 = 48;
        assert_eq!(
            a.restart_changes(&restart),
            [
                "udp.rate_burst",
                "exec.tls_cert",
                "server.source_netblock_v6"
            ]
        );
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// contrib/switchboard.toml documents every setting with its default:
    /// it must parse, and say exactly what the defaults are.
    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/switchboard.toml");
        let from_file = ServerConfig::from_file(&path).unwrap();
        assert_eq!(
            format!("{from_file:?}"),
            format!("{:?}", ServerConfig::default())
        );
        // And it names every field: a setting missing from it would not be documented.
        let text = std::fs::read_to_string(&path).unwrap();
        let debug = format!("{:?}", ServerConfig::default());
        for field in debug
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|w| w.contains('_') && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        {
            assert!(
                text.contains(field),
                "contrib/switchboard.toml does not mention {field}"
            );
        }
    }
}
