//! `switchboard echo` and `switchboard time`: the typed clients behind the
//! one-shot / REPL / pipe rule.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tokio::runtime::Runtime;

use super::input::{Mode, Repl, split_target, stdin_lines};
use super::{EchoArgs, TimeArgs};
use crate::client::{ClientError, EchoClient, TimeClient};
use crate::config::{DEFAULT_ECHO_PORT, DEFAULT_TIME_PORT};
use crate::endpoint::Transport;

fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Writes a reply and a newline to stdout, bytes untouched.
fn print_reply(reply: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(reply)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// One line for a failed request; errors that do not name the server get
/// its address.
fn report(addr: &str, e: &ClientError) {
    match e {
        ClientError::Io(_) | ClientError::Closed { .. } => say!("switchboard: {addr}: {e}"),
        _ => say!("switchboard: {e}"),
    }
}

pub fn echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let target = split_target(args.args, DEFAULT_ECHO_PORT)?
        .speaking("echo", &[Transport::Tcp, Transport::Udp])?;
    let udp = match target.transport {
        Some(Transport::Udp) => true,
        Some(Transport::Tcp) if args.udp => bail!("--udp conflicts with a tcp:// address"),
        _ => args.udp,
    };
    if args.retries.is_some() && !udp {
        bail!("--retries is for UDP (--udp or udp://); TCP retransmits by itself");
    }
    let retries = args.retries.unwrap_or(crate::client::DEFAULT_UDP_RETRIES);
    let (addr, timeout) = (target.addr, args.timeout);
    let rt = runtime()?;
    let connect = || async {
        if udp {
            Ok(EchoClient::connect_udp(&addr, timeout)
                .await?
                .with_retries(retries))
        } else {
            EchoClient::connect_tcp(&addr, timeout).await
        }
    };
    let mut client = rt.block_on(connect())?;
    let mut failed = false;
    match Mode::pick(&target.words) {
        Mode::Once(text) => {
            let reply = rt.block_on(client.request(text.as_bytes()))?;
            if !udp {
                rt.block_on(client.finish())?;
            }
            print_reply(&reply)?;
        }
        Mode::Repl => {
            let mut repl = Repl::new(if udp { "echo-udp" } else { "echo" }, "echo> ")?;
            while let Some(line) = repl.next_line() {
                let mut result = rt.block_on(client.request(line.as_bytes()));
                // The server may have closed an idle connection: reconnect
                // once. A server that is gone is said, and the REPL stays.
                if let Err(ClientError::Closed { got: 0, .. } | ClientError::Io(_)) = &result
                    && !udp
                {
                    result = match rt.block_on(connect()) {
                        Ok(c) => {
                            client = c;
                            rt.block_on(client.request(line.as_bytes()))
                        }
                        Err(e) => Err(e),
                    };
                }
                match result {
                    Ok(reply) => print_reply(&reply)?,
                    Err(e) => report(&addr, &e),
                }
            }
        }
        Mode::Pipe if udp => {
            for line in stdin_lines() {
                match rt.block_on(client.request(&line)) {
                    Ok(reply) => print_reply(&reply)?,
                    Err(e) => {
                        report(&addr, &e);
                        failed = true;
                    }
                }
            }
        }
        Mode::Pipe => {
            // Echo keeps every byte, so streaming stdin through the
            // connection gives exactly the line-by-line replies, without a
            // round trip per line and for any input, binary included.
            rt.block_on(client.pipe(tokio::io::stdin(), tokio::io::stdout()))?;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn time(args: TimeArgs) -> anyhow::Result<ExitCode> {
    let target = split_target(args.args, DEFAULT_TIME_PORT)?.speaking("time", &[Transport::Udp])?;
    let addr = format!("udp://{}", target.addr);
    let rt = runtime()?;
    let client = rt
        .block_on(TimeClient::connect(&target.addr, args.timeout))?
        .with_retries(args.retries);
    let query = |format: &str| rt.block_on(client.query(format));
    let mut failed = false;
    match Mode::pick(&target.words) {
        Mode::Once(format) => match query(&format) {
            Ok(t) => print_reply(t.as_bytes())?,
            Err(e) => {
                report(&addr, &e);
                failed = true;
            }
        },
        Mode::Repl => {
            let mut repl = Repl::new("time", "format (e.g. %Y-%m-%d %X)> ")?;
            while let Some(line) = repl.next_line() {
                match query(line.trim()) {
                    Ok(t) => print_reply(t.as_bytes())?,
                    Err(e) => report(&addr, &e),
                }
            }
        }
        Mode::Pipe => {
            for line in stdin_lines() {
                let format = String::from_utf8_lossy(&line);
                match query(&format) {
                    Ok(t) => print_reply(t.as_bytes())?,
                    Err(e) => {
                        report(&addr, &e);
                        failed = true;
                    }
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn bench(args: super::BenchArgs) -> anyhow::Result<ExitCode> {
    use crate::bench::{Mode, Params};
    let default_port = match args.mode {
        Mode::UdpTime => DEFAULT_TIME_PORT,
        Mode::Exec | Mode::ExecStream | Mode::ExecConnect => crate::config::DEFAULT_EXEC_PORT,
        _ => DEFAULT_ECHO_PORT,
    };
    let exec_auth = match args.mode {
        Mode::Exec | Mode::ExecStream | Mode::ExecConnect if args.no_auth => {
            Some(crate::client::ClientAuth::none())
        }
        Mode::Exec | Mode::ExecStream | Mode::ExecConnect if args.identity.is_some() => {
            let key = crate::identity::keys::ClientKey::find(args.identity.as_deref())?
                .context("no key")?;
            Some(crate::client::ClientAuth::key(
                std::sync::Arc::new(key),
                None,
            ))
        }
        Mode::Exec | Mode::ExecStream | Mode::ExecConnect => {
            Some(crate::client::ClientAuth::token(
                crate::secrets::client_token(args.token_file.as_deref())?.0,
            ))
        }
        _ => None,
    };
    // The mode picks the transport; a scheme that says otherwise (or
    // tls://, which the bench does not speak) is an error, not ignored.
    let scheme = match args.mode {
        Mode::UdpEcho | Mode::UdpTime => Transport::Udp,
        _ => Transport::Tcp,
    };
    let addr = match &args.addr {
        Some(a) => {
            super::input::Target::address(a, default_port)?
                .speaking(&format!("bench {}", args.mode.name()), &[scheme])?
                .addr
        }
        None => format!("127.0.0.1:{default_port}"),
    };
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    let size = args.size.unwrap_or(if args.mode == Mode::Stream {
        64 * 1024
    } else {
        64
    });
    if matches!(args.mode, Mode::UdpEcho | Mode::UdpTime) && size > crate::client::MAX_DATAGRAM {
        bail!("--size is over the UDP maximum of 65,507 bytes");
    }
    let _ = crate::sys::raise_fd_limit();
    let params = Params {
        mode: args.mode,
        addr,
        conns: args.conns,
        size,
        duration: args.duration,
        requests: args.requests,
        timeout: args.timeout,
        server_pid: args.server_pid,
        exec_auth,
        cmd: args.cmd,
        bytes: args.bytes,
        inflight: args.inflight.max(1),
        handshakes: args.handshakes,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let report = rt.block_on(crate::bench::run(params))?;
    if args.json {
        writeln!(std::io::stdout(), "{}", serde_json::to_string(&report)?)?;
    } else if args.csv {
        write!(std::io::stdout(), "{}", report.csv())?;
    } else {
        write!(std::io::stdout(), "{report}")?;
    }
    Ok(if report.errors > 0 || report.requests == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `switchboard keygen`: a new Ed25519 pair, as ssh-keygen makes one.
pub fn keygen(args: super::KeygenArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let path = match args.file {
        Some(p) => p,
        None => crate::identity::keys::default_key_files()
            .into_iter()
            .next()
            .context("no config directory for the default key; give -f FILE")?,
    };
    let comment = args.comment.unwrap_or_else(|| {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map_or_else(|| "user".to_string(), |u| u.name);
        format!("{user}@{}", crate::identity::hostname())
    });
    let passphrase = match args.passphrase {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            use crate::identity::keys::passphrase;
            let one = passphrase("Enter passphrase (empty for no passphrase): ")?;
            let two = passphrase("Enter same passphrase again: ")?;
            if one != two {
                anyhow::bail!("the passphrases do not match");
            }
            one
        }
        None => String::new(),
    };
    let key = crate::identity::keys::keygen(&path, &comment, &passphrase)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    say!(
        "switchboard: private key {} (0600), public key {}.pub",
        path.display(),
        path.display()
    );
    say!(
        "switchboard: fingerprint {}",
        key.fingerprint(ssh_key::HashAlg::Sha256)
    );
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}
