//! switchboard: the classic socket-tutorial services (upper-case echo over
//! TCP and UDP, a UDP time service, remote command execution with a framed
//! protocol) done the way a production daemon would do them, and the typed
//! clients that talk to them.
//!
//! Module map (one line each; `server` and `cli` have their own maps):
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | [`config::ServerConfig`]: every setting and its default, TOML, validation, which settings need a restart |
//! | [`exposure`] | the one set of rules for which service may listen where (transports, loopback-only, plaintext and unauthenticated exec) |
//! | [`endpoint`] | `tcp://` `udp://` `tls://` addresses: parsing and resolution |
//! | [`activation`] | systemd socket activation (LISTEN_FDS) and readiness (sd_notify) |
//! | [`server`] | [`server::Server`]: binds, runs each service, reloads, shuts down; `server::exec` runs jobs |
//! | [`proto`] | the exec protocol `switchboard/1`: frame codec, messages, the HMAC handshake's cryptography |
//! | [`secrets`] | the token's lookup and creation, secret files read as ssh reads keys |
//! | [`identity`] | who a connection is: token, keys (`authorized_keys` and its options), user certificates, revocations; the client's key, the agent, `keygen` |
//! | [`files`] | files the program writes for itself (token, self-signed pair, known_hosts): whole or not at all, every error naming the file |
//! | [`filesink`] | received files: the part file taken only if this side made it, written past the page cache (`O_DIRECT`) where it can be |
//! | [`tls`] | TLS 1.3: server identity, self-signed certificates, CA / pinned / trust-on-first-use clients |
//! | [`net`] | plain-or-TLS connections split into reader and writer halves |
//! | [`timefmt`] | pure `strftime` validation and formatting for the time service |
//! | [`client`] | one typed client per service ([`EchoClient`], [`TimeClient`], [`ExecClient`]), shared by the CLI, tests and bench |
//! | [`hosts`] | pdsh-style host lists for fan-out (`node[01-20]:8080`, `@file`) |
//! | [`rollout`] | canary and rolling fan-out: waves of hosts, and the `--max-fail` gate |
//! | [`logsink`] | the log's writer: a bounded queue and one thread, so an unwritable log drops lines instead of panicking or blocking |
//! | [`auditlog`] | the audit trail: JSON records of jobs, refusals and failed logins, apart from the log and its level |
//! | [`bench`](mod@bench) | the load generator behind `switchboard bench` |
//! | [`cli`] | command-line arguments and the client UX (one-shot, REPL, pipe, fan-out) |
//! | [`sys`] | process-wide OS settings (descriptor limit, signal dispositions, close-on-exec) |
//!
//! How the parts meet:
//!
//! ```text
//!  flags + TOML ─> config ─> exposure::check ─┬─ Server::bind / from_activation ─> run
//!                  (SIGHUP: server::reload ───┘   (same check on the bound sockets))
//!
//!  socket ─> listener (limits, per-source, MaxStartups) ─> service task
//!    echo/time:  bytes ─> pure function (upper-case, timefmt) ─> bytes
//!    exec:       bytes ─> proto::frame ─> proto::message ─> session
//!                  session ─ admit (policy) ─> job::spec ─> process::spawn
//!                  process pipes ─> job (frames, back-pressure) ─> session ─> socket
//!                  keeper / reaper: nothing a job starts outlives it
//!
//!  client (CLI, fan-out, bench, tests) ─> proto ─> socket
//! ```

pub mod activation;
pub mod auditlog;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod endpoint;
pub mod exposure;
pub mod files;
pub mod filesink;
pub mod hosts;
pub mod identity;
pub mod logsink;
pub mod net;
pub mod proto;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod sys;
pub mod timefmt;
pub mod tls;

pub use client::{EchoClient, ExecClient, TimeClient};
pub use config::ServerConfig;
pub use endpoint::{Endpoint, Transport};
pub use server::Server;

/// The version string the server reports in its banner.
pub const VERSION: &str = concat!("switchboard ", env!("CARGO_PKG_VERSION"));
