//! The conventions of a daemon: socket activation with sockets passed in
//! by LISTEN_FDS (as systemd does), readiness and stopping notifications on
//! NOTIFY_SOCKET, and --check-config.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin;

#[test]
fn socket_activation_serves_passed_sockets_and_notifies_readiness() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let time = UdpSocket::bind("127.0.0.1:0").unwrap();
    let exec = TcpListener::bind("127.0.0.1:0").unwrap();
    let (echo_addr, time_addr, exec_addr) = (
        echo.local_addr().unwrap(),
        time.local_addr().unwrap(),
        exec.local_addr().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let fds = [echo.as_raw_fd(), time.as_raw_fd(), exec.as_raw_fd()];

    let mut cmd = common::activated_command(&fds, "echo:time:exec", &["--allow-root"], dir.path());
    cmd.env("NOTIFY_SOCKET", &notify_path).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let banner = read_banner(stdout);
    let text = banner.join("\n");
    assert!(text.contains(&format!("tcp://{echo_addr}")), "{text}");
    assert!(text.contains(&format!("udp://{time_addr}")), "{text}");
    assert!(text.contains(&format!("tcp://{exec_addr}")), "{text}");

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(msg, format!("READY=1\nMAINPID={}", child.0.id()));

    // The passed sockets are served.
    let mut s = TcpStream::connect(echo_addr).unwrap();
    s.write_all(b"activated").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "ACTIVATED");
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    u.send_to(b"%%", time_addr).unwrap();
    let n = u.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"%");
    let o = Command::new(bin())
        .args(["exec", &exec_addr.to_string(), "--", "echo via activation"])
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join(".config"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "via activation\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.0.wait().unwrap();
    assert!(status.success());
}

#[test]
fn check_config_accepts_good_and_rejects_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[echo]\nmode = \"plain\"\n[exec]\nmax_jobs = 10\n").unwrap();
    let o = Command::new(bin())
        .args([
            "serve",
            "--check-config",
            "--config",
            good.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "configuration OK\n");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[exec]\nmax_jobs = 0\n").unwrap();
    let o = Command::new(bin())
        .args(["serve", "--check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("max_jobs"), "{err}");
    let o = Command::new(bin())
        .args(["serve", "--check-config", "--run-as", "no-such-user-xyz"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn sighup_reloads_token_and_limits_without_dropping_connections() {
    use switchboard::client::{ClientAuth, ClientError, ExecClient};
    use switchboard::endpoint::Transport;
    use switchboard::proto::auth::Token;
    use switchboard::proto::{Command as Cmd, ErrorCode, ExecRequest};

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchboard.toml");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let base = format!("[exec]\ntoken_file = {:?}\n", token_file.to_str().unwrap());
    std::fs::write(&cfg, &base).unwrap();
    let srv = common::spawn_serve(&[
        "--echo",
        "tcp://127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let addr = srv.addr("exec", Transport::Tcp);
    let t = Duration::from_secs(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = |s: &str| ClientAuth::token(Token::new(s).unwrap());
    let mut held = rt
        .block_on(ExecClient::connect(&addr, &auth("first-token"), t))
        .unwrap();
    assert_eq!(
        rt.block_on(held.run("echo before")).unwrap().stdout,
        b"before\n"
    );

    // Forbid shell commands, then SIGHUP.
    std::fs::write(&cfg, format!("{base}argv_only = true\n")).unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("configuration reloaded", 1), "{}", srv.log());

    // The connection made before is still up; new requests meet the new policy.
    rt.block_on(held.ping()).unwrap();
    match rt.block_on(held.run("echo shell")) {
        Err(ClientError::Job {
            code: ErrorCode::Forbidden,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let mut argv = ExecRequest::shell(held.next_id(), "");
    argv.command = Cmd::Argv(vec!["echo".into(), "argv".into()]);
    assert_eq!(
        rt.block_on(held.run_request(argv.clone())).unwrap().stdout,
        b"argv\n"
    );

    // Rotate the token (it leaked): whoever proved the old one is shut
    // out, connected or not.
    std::fs::write(&token_file, "second-token\n").unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("configuration reloaded", 2), "{}", srv.log());
    let r = rt.block_on(held.run_request(argv.clone()));
    assert!(r.is_err(), "the old token's connection ran a job: {r:?}");
    // The log is written by its own thread: the line may follow the
    // client's error by a moment (it flaked in CI read at once).
    assert!(srv.wait_log("the token was replaced", 1), "{}", srv.log());
    assert!(
        rt.block_on(ExecClient::connect(&addr, &auth("first-token"), t))
            .is_err()
    );
    let mut fresh = rt
        .block_on(ExecClient::connect(&addr, &auth("second-token"), t))
        .unwrap();
    assert_eq!(
        rt.block_on(fresh.run_request(argv.clone())).unwrap().stdout,
        b"argv\n"
    );

    // A broken file is refused and the running configuration kept.
    std::fs::write(&cfg, "[exec]\nmax_jobs = 0\n").unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("reload failed", 1), "{}", srv.log());
    rt.block_on(fresh.ping()).unwrap();

    // A token rotated into a file the reload refuses (0644, as `mv` of a
    // file written under umask 022 leaves it): the old token does not
    // stay in force; no token does, until a reload succeeds.
    std::fs::write(&cfg, &base).unwrap();
    let new_file = dir.path().join("token.new");
    std::fs::write(&new_file, "third-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&new_file, PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&new_file, &token_file).unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("reload failed", 2), "{}", srv.log());
    assert!(srv.log().contains("token logins are off"), "{}", srv.log());
    let r = rt.block_on(fresh.run_request(argv.clone()));
    assert!(
        r.is_err(),
        "the replaced token's connection ran a job: {r:?}"
    );
    for tok in ["second-token", "third-token"] {
        assert!(
            rt.block_on(ExecClient::connect(&addr, &auth(tok), t))
                .is_err(),
            "{tok} got in"
        );
    }
    std::fs::set_permissions(&token_file, PermissionsExt::from_mode(0o600)).unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("configuration reloaded", 3), "{}", srv.log());
    let mut third = rt
        .block_on(ExecClient::connect(&addr, &auth("third-token"), t))
        .unwrap();
    assert_eq!(
        rt.block_on(third.run_request(argv)).unwrap().stdout,
        b"argv\n"
    );
}

/// A configured metrics endpoint is served under socket activation too,
/// when systemd passes no socket for it (it was once silently dropped).
#[test]
fn socket_activation_serves_configured_metrics_that_no_socket_was_passed_for() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::activated_command(
        &[echo.as_raw_fd()],
        "echo",
        &["--metrics", "127.0.0.1:0"],
        dir.path(),
    );
    let mut child = cmd.stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = read_banner(stdout);
    let metrics = banner
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("metrics"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|e| e.strip_prefix("tcp://"))
        .map(String::from);
    let scraped = metrics.as_ref().map(|addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        let _ = s.read_to_string(&mut page);
        page
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        metrics.is_some(),
        "no metrics line in the banner: {banner:?}"
    );
    let page = scraped.unwrap_or_default();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("switchboard_connections_open"), "{page}");
}

/// The banner's lines, through the one that says `ready`.
fn read_banner(stdout: impl Read) -> Vec<String> {
    let mut banner = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("ready");
        banner.push(line);
        if done {
            break;
        }
    }
    banner
}
