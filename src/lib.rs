//! switchboard: the classic socket-tutorial services (upper-case echo over
//! TCP and UDP, a UDP time service) done the way a production daemon would
//! do them, and the typed clients that talk to them.
//!
//! Module map:
//!
//! | module | what lives there |
//! |---|---|
//! | [`endpoint`] | `tcp://HOST:PORT` / `udp://HOST:PORT` addresses, parsing and resolution |
//! | [`config`] | [`config::ServerConfig`]: endpoints and every limit with its default; TOML loading; which settings need a restart |
//! | [`exposure`] | the one set of rules for which service may listen where: transports, loopback-only services, plaintext and unauthenticated exec; every start, activation, `--check-config` and reload path calls it |
//! | [`timefmt`] | pure `strftime` validation and formatting for the time service (never panics) |
//! | [`server`] | [`server::Server`]: binds endpoints, runs the services, shuts down gracefully |
//! | [`server::echo`] | TCP and UDP upper-case echo (PROTOCOL.md §1) |
//! | [`server::time`] | UDP time (PROTOCOL.md §2) |
//! | [`client`] | [`client::EchoClient`] and [`client::TimeClient`], shared by the CLI, tests and bench |
//! | [`activation`] | systemd socket activation (LISTEN_FDS) and readiness (sd_notify) |
//! | [`bench`] | the load generator behind `switchboard bench` |
//! | [`cli`] | command-line arguments and the client UX (one-shot, REPL, pipe) |
//! | [`sys`] | process-wide OS settings (file-descriptor limit) |
//! | [`hosts`] | pdsh-style host lists for fan-out (`node[01-20]:8080`, `@file`) |
//! | [`net`] | plain-or-TLS connections split into reader and writer halves |
//! | [`tls`] | TLS 1.3 for exec: server identity, self-signed certificates, CA / pinned / trust-on-first-use clients |
//! | [`proto`] | the exec protocol `switchboard/1`: frame codec, messages, HMAC handshake |
//!
//! Data flows one way: bytes from a socket, into a pure function that
//! computes the reply (upper-casing, time formatting), back to the socket.
//! Sockets live only in the per-connection / per-socket tasks of `server`.

pub mod activation;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod endpoint;
pub mod exposure;
pub mod hosts;
pub mod net;
pub mod proto;
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
