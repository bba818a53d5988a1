//! The exposure rules on every path that puts a socket in service (start,
//! `--check-config`, socket activation, SIGHUP reload), the limits a reload
//! changes, the handshake slots under a flood of silent connections, and
//! the end of the story a client gets when the server shuts down.
//!
//! A "non-loopback" endpoint is bound to 0.0.0.0 and reached through
//! 127.0.0.1: no traffic leaves the machine.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{activated_command, bin, connect_from, exit_within, spawn_serve};
use nix::sys::signal::Signal;
use switchboard::client::{ClientAuth, ExecClient};
use switchboard::endpoint::Transport;

const BASE: [&str; 4] = ["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `auth` field of the server's hello, read raw.
fn hello_auth(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut head = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut head).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&head).unwrap();
    v["auth"].as_str().unwrap().to_string()
}

/// Every frame the server sends until it closes (10 s at most per frame).
fn until_closed(
    rt: &tokio::runtime::Runtime,
    rx: &mut switchboard::client::ExecReceiver,
) -> Vec<switchboard::proto::ServerMsg> {
    rt.block_on(async {
        let mut got = Vec::new();
        while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            got.push(m);
        }
        got
    })
}

/// The server's certificate fingerprint, from its banner.
fn fingerprint(srv: &common::ServeProcess) -> String {
    srv.banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("tls   fingerprint sha256:"))
        .unwrap_or("")
        .to_string()
}

/// `switchboard exec --tls-fingerprint FP tls://ADDR -- CMD` as a person
/// would run it, with the server's HOME (so its token).
fn tls_exec(srv: &common::ServeProcess, addr: &str, cmd: &str) -> std::process::Output {
    Command::new(bin())
        .args(["exec", "--tls-fingerprint", &fingerprint(srv)])
        .args([&format!("tls://{addr}"), "--", cmd])
        .env("HOME", srv.home.path())
        .env("XDG_CONFIG_HOME", srv.home.path().join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Configurations that must never be served, and a word of the reason.
const FORBIDDEN: &[(&str, &str)] = &[
    ("[exec]\nlisten = [\"tcp://0.0.0.0:0\"]\n", "in the clear"),
    (
        "[exec]\nlisten = [\"tls://0.0.0.0:0\"]\ntls_self_signed = true\nno_auth = true\n",
        "without authentication",
    ),
    (
        "[exec]\nlisten = [\"tcp://[::]:0\"]\nallow_plaintext = true\nno_auth = true\n",
        "without authentication",
    ),
    (
        "[exec]\nlisten = []\nlegacy_listen = [\"tcp://0.0.0.0:0\"]\n",
        "loopback addresses only",
    ),
    (
        "[exec]\nlisten = []\nlegacy_listen = [\"tls://127.0.0.1:0\"]\n",
        "not a transport",
    ),
    (
        "[time]\nlisten = [\"tcp://127.0.0.1:0\"]\n",
        "not a transport",
    ),
];

fn serve_output(home: &Path, args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
    let mut child = Command::new(bin())
        .arg("serve")
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused configuration exits at once; one that starts is stopped
    // by its PID and reported as not having exited.
    let status = exit_within(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

#[test]
fn check_config_and_start_refuse_every_forbidden_exposure() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    for (cfg, why) in FORBIDDEN {
        std::fs::write(&file, cfg).unwrap();
        let f = file.to_str().unwrap();
        let (st, err) = serve_output(dir.path(), &["--check-config", "--config", f]);
        assert!(
            st.is_some_and(|s| !s.success()),
            "--check-config passed {cfg}"
        );
        assert!(err.contains(why), "{cfg}: {err}");
        let (st, err) = serve_output(dir.path(), &[&BASE[..], &["--config", f]].concat());
        assert!(st.is_some_and(|s| !s.success()), "serve started with {cfg}");
        assert!(err.contains(why), "{cfg}: {err}");
    }
    // What is allowed off loopback passes the check.
    std::fs::write(
        &file,
        "[exec]\nlisten = [\"tls://0.0.0.0:0\"]\ntls_self_signed = true\n",
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join(".config"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn reload_cannot_turn_on_unauthenticated_or_plaintext_exec_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let base = "[exec]\nallow_plaintext = true\n";
    std::fs::write(&cfg, base).unwrap();
    let srv = spawn_serve(
        &[
            &BASE[..],
            &[
                "--exec",
                "tcp://0.0.0.0:0",
                "--config",
                cfg.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let port = srv
        .addr("exec", Transport::Tcp)
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(hello_auth(&addr), "hmac-sha256");

    // no_auth on a socket bound to 0.0.0.0: refused, nothing changes.
    std::fs::write(&cfg, format!("{base}no_auth = true\n")).unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reload failed", 1), "{}", srv.log());
    assert!(
        srv.log().contains("without authentication"),
        "{}",
        srv.log()
    );
    assert_eq!(hello_auth(&addr), "hmac-sha256");

    // Taking allow_plaintext away while plaintext is served off loopback.
    std::fs::write(&cfg, "[exec]\nmax_jobs = 9\n").unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reload failed", 2), "{}", srv.log());
    assert!(srv.log().contains("in the clear"), "{}", srv.log());

    // A harmless change still applies, and clients still need the token.
    std::fs::write(&cfg, format!("{base}max_jobs = 9\n")).unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("configuration reloaded", 1), "{}", srv.log());
    assert_eq!(hello_auth(&addr), "hmac-sha256");
    assert_eq!(srv.run_job(&addr, "echo ok"), b"ok\n");
}

#[test]
fn reload_refuses_whatever_a_start_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let here = "[exec]\nlisten = [\"tcp://127.0.0.1:0\"]\n";
    std::fs::write(&cfg, here).unwrap();
    let srv =
        common::spawn_serve_exact(&[&BASE[..], &["--config", cfg.to_str().unwrap()]].concat());
    let addr = srv.addr("exec", Transport::Tcp);
    // Each is refused by --check-config and at start; a reload must not
    // take it either, even where the sockets being served would allow it.
    let missing = dir.path().join("no-such-token");
    let refused = [
        "[exec]\nlisten = [\"tcp://0.0.0.0:0\"]\nno_auth = true\n".to_string(),
        "[exec]\nlegacy_listen = [\"tcp://0.0.0.0:0\"]\n".to_string(),
        "[exec]\nlisten = [\"tcp://0.0.0.0:0\"]\n".to_string(),
        format!("{here}token_file = {:?}\n", missing.to_str().unwrap()),
    ];
    for (i, text) in refused.iter().enumerate() {
        std::fs::write(&cfg, text).unwrap();
        srv.signal(Signal::SIGHUP);
        assert!(
            srv.wait_log("reload failed", i + 1),
            "{text}: {}",
            srv.log()
        );
    }
    assert!(
        !srv.log().contains("configuration reloaded"),
        "{}",
        srv.log()
    );
    assert!(!missing.exists(), "a reload created a token file");
    // The running configuration is intact: the old token still works.
    assert_eq!(srv.run_job(&addr, "echo same"), b"same\n");
    assert_eq!(hello_auth(&addr), "hmac-sha256");
}

#[test]
fn reload_of_a_tls_endpoint_off_loopback_refuses_no_auth() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[exec]\n").unwrap();
    let srv = spawn_serve(
        &[
            &BASE[..],
            &[
                "--exec",
                "tls://0.0.0.0:0",
                "--tls-self-signed",
                "--config",
                cfg.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    std::fs::write(&cfg, "[exec]\nno_auth = true\n").unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reload failed", 1), "{}", srv.log());
    assert!(
        !srv.log().contains("configuration reloaded"),
        "{}",
        srv.log()
    );
    // The endpoint still demands the token: a client with it gets in.
    let port = srv
        .addr("exec", Transport::Tls)
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let o = tls_exec(
        &srv,
        &format!("127.0.0.1:{port}"),
        "echo still authenticated",
    );
    assert_eq!(
        text(&o.stdout),
        "still authenticated\n",
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn socket_activation_applies_the_exposure_rules() {
    let dir = tempfile::tempdir().unwrap();
    let any = TcpListener::bind("0.0.0.0:0").unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("exec", &[], "in the clear"),
        ("exec-legacy", &[], "loopback addresses only"),
        (
            "exec",
            &["--allow-plaintext", "--no-auth"],
            "without authentication",
        ),
        (
            "exec-tls",
            &["--tls-self-signed", "--no-auth"],
            "without authentication",
        ),
    ];
    for (name, args, why) in cases {
        let mut child = activated_command(&[any.as_raw_fd()], name, args, dir.path())
            .spawn()
            .unwrap();
        let st = exit_within(&mut child, Duration::from_secs(10));
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            st.is_some_and(|s| !s.success()),
            "{name} {args:?} was served"
        );
        assert!(err.contains(why), "{name} {args:?}: {err}");
    }
    // With --allow-plaintext the same socket is served (and then stopped).
    let mut child = activated_command(
        &[any.as_raw_fd()],
        "exec",
        &["--allow-plaintext", "--allow-root"],
        dir.path(),
    )
    .spawn()
    .unwrap();
    let mut banner = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 512];
    while !banner.contains("ready") {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => banner.push_str(&text(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(banner.contains("ready"), "{banner}");
}

#[test]
fn reload_resizes_limits_with_connections_open_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[exec]\nmax_connections = 8\n").unwrap();
    let srv = spawn_serve(&[&BASE[..], &["--config", cfg.to_str().unwrap()]].concat());
    let addr = srv.addr("exec", Transport::Tcp);
    let echo = srv.addr("echo", Transport::Tcp);
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = common::runtime();
    let connect = || {
        rt.block_on(ExecClient::connect(
            &addr,
            &ClientAuth::token(token.clone()),
            Duration::from_secs(5),
        ))
    };
    let mut open: Vec<_> = (0..4).map(|_| connect().unwrap()).collect();

    std::fs::write(
        &cfg,
        "[echo]\nmax_connections_per_source = 1\n[exec]\nmax_connections = 2\n\
         [udp]\nrate_burst = 10\n[server]\nshutdown_grace = \"1s\"\n",
    )
    .unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("configuration reloaded", 1), "{}", srv.log());
    let log = srv.log();
    assert!(
        log.contains("udp.rate_burst changed: takes effect at the next restart"),
        "{log}"
    );
    for live in ["max_connections", "shutdown_grace", "per_source"] {
        assert!(
            !log.lines()
                .any(|l| l.contains("changed:") && l.contains(live)),
            "{live} is applied live, yet named as needing a restart: {log}"
        );
    }
    // The four stay up; a fifth is turned away while more than two are open.
    for c in &mut open {
        rt.block_on(c.ping()).unwrap();
    }
    assert!(connect().is_err(), "over the shrunk limit");
    open.truncate(1);
    std::thread::sleep(Duration::from_millis(200)); // the server sees the closes
    let _second = connect().expect("one of two slots free");
    assert!(connect().is_err(), "at the shrunk limit");

    // Echo's per-source limit, applied live: a second connection from
    // 127.0.0.1 is closed at once.
    let mut first = TcpStream::connect(&echo).unwrap();
    first.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).unwrap();
    let mut second = TcpStream::connect(&echo).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = second.write_all(b"b");
    assert!(matches!(second.read(&mut b), Ok(0) | Err(_)), "not refused");
}

/// Silent connections from `sources` loopback addresses (127.0.0.2 ...),
/// each keeping up to `each` open: a thread reconnects whatever the server
/// closes, as an attacker would, until dropped (bounded: 20 s, 20,000
/// connections).
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Flood {
    fn start(to: SocketAddr, sources: u8, each: usize) -> Flood {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held: Vec<(u8, TcpStream)> = Vec::new();
            let (start, mut made) = (Instant::now(), 0usize);
            while !flag.load(Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(20)
                && made < 20_000
            {
                // Forget what the server closed (EOF on a non-blocking peek).
                held.retain(|(_, c)| {
                    let mut b = [0u8; 1];
                    c.set_nonblocking(true).is_ok()
                        && matches!(c.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                for s in 2..2 + sources {
                    // One attempt per source per round: what was refused
                    // is seen closed on the next round.
                    if held.iter().filter(|(h, _)| *h == s).count() < each && made < 20_000 {
                        made += 1;
                        if let Ok(c) = connect_from(&format!("127.0.0.{s}"), to) {
                            held.push((s, c));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            made
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let made = t.join().unwrap_or(0);
            eprintln!("flood made {made} connections");
        }
    }
}

#[test]
fn a_silent_flood_from_a_few_sources_does_not_lock_out_a_client() {
    let srv = spawn_serve(&BASE);
    let addr: SocketAddr = srv.addr("exec", Transport::Tcp).parse().unwrap();
    // 8 sources x 8: every handshake slot, refilled as they are freed.
    let flood = Flood::start(addr, 8, 8);
    std::thread::sleep(Duration::from_millis(500));
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = common::runtime();
    let started = Instant::now();
    let mut c = rt
        .block_on(ExecClient::connect(
            &addr.to_string(),
            &ClientAuth::token(token),
            Duration::from_secs(5),
        ))
        .expect("a client from another source gets in during the flood");
    assert_eq!(rt.block_on(c.run("echo in")).unwrap().stdout, b"in\n");
    eprintln!("got in after {:?}", started.elapsed());
    drop(flood);
}

#[test]
fn silent_tls_connections_count_as_unauthenticated_and_cannot_lock_out_a_client() {
    let srv = spawn_serve(
        &[
            &BASE[..],
            &["--exec", "tls://127.0.0.1:0", "--tls-self-signed"],
        ]
        .concat(),
    );
    let addr: SocketAddr = srv.addr("exec", Transport::Tls).parse().unwrap();
    // 10 sources x 32: enough to fill max_connections (256) if TLS
    // handshakes were not held to the handshake slots.
    let flood = Flood::start(addr, 10, 32);
    std::thread::sleep(Duration::from_millis(500));
    let o = tls_exec(&srv, &addr.to_string(), "echo through the flood");
    assert_eq!(
        text(&o.stdout),
        "through the flood\n",
        "{}",
        text(&o.stderr)
    );
    drop(flood);
}

/// Tries a real client (from 127.0.0.1, outside every flood's sources)
/// until it runs a command, for at most 15 s; how long it took.
fn client_gets_in(srv: &common::ServeProcess, tls: bool) -> Option<Duration> {
    let (scheme, transport) = if tls {
        ("tls", Transport::Tls)
    } else {
        ("tcp", Transport::Tcp)
    };
    let addr = format!("{scheme}://{}", srv.addr("exec", transport));
    let fp = fingerprint(srv);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let mut cmd = Command::new(bin());
        cmd.arg("exec");
        if tls {
            cmd.args(["--tls-fingerprint", &fp]);
        }
        let o = cmd
            .args(["--connect-timeout", "3s", &addr, "--", "echo in"])
            .env("HOME", srv.home.path())
            .env("XDG_CONFIG_HOME", srv.home.path().join(".config"))
            .env_remove("SWITCHBOARD_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if o.stdout == b"in\n" {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn a_flood_spread_over_many_sources_does_not_lock_out_a_client() {
    for tls in [false, true] {
        let srv = if tls {
            spawn_serve(
                &[
                    &BASE[..],
                    &["--exec", "tls://127.0.0.1:0", "--tls-self-signed"],
                ]
                .concat(),
            )
        } else {
            spawn_serve(&BASE)
        };
        let transport = if tls { Transport::Tls } else { Transport::Tcp };
        let addr: SocketAddr = srv.addr("exec", transport).parse().unwrap();
        // 100 sources, one silent connection each, reconnected as soon as
        // the server closes it: no source ever holds more than another.
        let flood = Flood::start(addr, 100, 1);
        std::thread::sleep(Duration::from_millis(1000));
        let took = client_gets_in(&srv, tls);
        drop(flood);
        let took = took.unwrap_or_else(|| panic!("tls={tls}: locked out; {}", srv.log()));
        eprintln!("tls={tls}: got in after {took:?}");
    }
}

#[test]
fn idle_legacy_connections_cannot_take_the_native_endpoints_connections() {
    let srv = spawn_serve(&[&BASE[..], &["--exec-legacy", "tcp://127.0.0.1:0"]].concat());
    let legacy: SocketAddr = srv.addr("exec-legacy", Transport::Tcp).parse().unwrap();
    // 10 sources x 32: more than exec.max_connections (256) in all.
    let flood = Flood::start(legacy, 10, 32);
    std::thread::sleep(Duration::from_millis(1000));
    let took = client_gets_in(&srv, false);
    drop(flood);
    assert!(took.is_some(), "native exec locked out: {}", srv.log());
}

#[test]
fn sigterm_gives_running_jobs_their_exit_and_the_reason() {
    use switchboard::proto::{ClientMsg, ErrorCode, ExecRequest, ExitStatus, ServerMsg};
    let mut srv = spawn_serve(&BASE);
    let addr = srv.addr("exec", Transport::Tcp);
    let token_file = srv.token_file();
    // The command-line client, as a person would run it.
    let mut cli = Command::new(bin())
        .args(["exec", "--token-file"])
        .arg(&token_file)
        .args([&addr, "--", "sleep 31"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = common::runtime();
    let (mut tx, mut rx) = rt
        .block_on(ExecClient::connect(
            &addr,
            &ClientAuth::token(switchboard::secrets::read_token(&token_file).unwrap()),
            Duration::from_secs(5),
        ))
        .unwrap()
        .split();
    rt.block_on(tx.send(ClientMsg::Exec(ExecRequest::shell(7, "sleep 30"))))
        .unwrap();
    assert!(matches!(
        rt.block_on(rx.recv()).unwrap(),
        Some(ServerMsg::Started { id: 7, .. })
    ));
    assert!(srv.wait_log("job started", 2), "{}", srv.log());

    srv.signal(Signal::SIGTERM);
    let frames = until_closed(&rt, &mut rx);
    assert_eq!(
        frames,
        vec![
            ServerMsg::Exit {
                id: 7,
                status: ExitStatus::Signal {
                    name: "TERM".into(),
                    timed_out: false
                },
                reason: Some("server shutting down".into()),
                dropped: 0,
            },
            ServerMsg::error(None, ErrorCode::ShuttingDown, "server shutting down"),
        ]
    );
    let st = exit_within(&mut cli, Duration::from_secs(10)).expect("the client ends");
    let mut err = String::new();
    cli.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(st.code(), Some(128 + 15), "{err}");
    assert!(err.contains("server shutting down"), "{err}");
    assert!(srv.wait_exit(Duration::from_secs(15)).is_some());
}

#[test]
fn a_short_shutdown_grace_still_reports_jobs_that_ignore_term() {
    use switchboard::proto::{ClientMsg, ErrorCode, ExecRequest, ServerMsg};
    let mut srv = spawn_serve(&[&BASE[..], &["--shutdown-grace", "300ms"]].concat());
    let addr = srv.addr("exec", Transport::Tcp);
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = common::runtime();
    let (mut tx, mut rx) = rt
        .block_on(ExecClient::connect(
            &addr,
            &ClientAuth::token(token),
            Duration::from_secs(5),
        ))
        .unwrap()
        .split();
    for (id, cmd) in [
        (1, "sleep 30"),
        (2, "trap '' TERM; sleep 31"),
        (3, "trap '' TERM; sleep 32"),
    ] {
        rt.block_on(tx.send(ClientMsg::Exec(ExecRequest::shell(id, cmd))))
            .unwrap();
        assert!(matches!(
            rt.block_on(rx.recv()).unwrap(),
            Some(ServerMsg::Started { .. })
        ));
    }
    // The shells have set their traps once their sleeps run.
    std::thread::sleep(Duration::from_millis(300));
    srv.signal(Signal::SIGTERM);
    let frames = until_closed(&rt, &mut rx);
    let exits: Vec<_> = frames
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Exit { id, reason, .. } => Some((*id, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 3, "{frames:?}");
    assert!(
        exits
            .iter()
            .all(|(_, r)| r.as_deref() == Some("server shutting down")),
        "{frames:?}"
    );
    assert_eq!(
        frames.last(),
        Some(&ServerMsg::error(
            None,
            ErrorCode::ShuttingDown,
            "server shutting down"
        ))
    );
    assert!(srv.wait_exit(Duration::from_secs(15)).is_some());
}

/// `exec -- yes | slow reader`, the server stopped meanwhile: the client
/// still says the job's end and why, with the job's status (found by
/// attack: a window grant sent as the server closed failed, and the
/// client gave up with "broken pipe" before reading the exit waiting for
/// it; the server also closed with the client's grants unread, which
/// resets a connection). Three rounds.
#[test]
fn a_flooded_client_still_gets_its_exit_at_shutdown() {
    use std::io::Read as _;
    for round in 0..3 {
        let mut srv = spawn_serve(&BASE);
        let addr = srv.addr("exec", Transport::Tcp);
        let mut cli = Command::new(bin())
            .args(["exec", "-n", "--token-file"])
            .arg(srv.token_file())
            .args([&addr, "--", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = cli.stdout.take().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let (mut got, mut signalled) = (0usize, false);
        let start = std::time::Instant::now();
        // Bounded: the client ends once the server has stopped.
        while start.elapsed() < Duration::from_secs(30) {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if got > 8 << 20 && !signalled {
                srv.signal(Signal::SIGTERM);
                signalled = true;
            }
            // Slower than the job from then on: frames wait in the
            // client's socket as the server closes.
            if signalled {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let st = exit_within(&mut cli, Duration::from_secs(10)).expect("the client ends");
        let mut err = String::new();
        cli.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(
            err.contains("job ended: server shutting down"),
            "round {round}: {err}"
        );
        // TERM, or PIPE when the server stopped reading the job's pipe
        // first: the job's own status either way.
        assert!(
            [Some(128 + 15), Some(128 + 13)].contains(&st.code()),
            "round {round}: {st:?} {err}"
        );
        assert!(srv.wait_exit(Duration::from_secs(15)).is_some());
    }
}
