//! The adversarial suite: hostile or broken clients against a real server.
//! Each case checks that the server stays up, serves a fresh client
//! afterwards, and leaks nothing it can be held to (file descriptors,
//! processes, connection slots).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ServeProcess, exec_config, spawn_serve, start, wait_until};
use nix::sys::signal::Signal;
use serde_json::json;
use switchboard::client::{ClientAuth, ClientError, EchoClient, ExecClient};
use switchboard::endpoint::Transport;
use switchboard::proto::auth::Token;
use switchboard::proto::{Command, ErrorCode, ExecRequest, ExitStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(10);

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connects from a chosen loopback source address.
async fn connect_from(src: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{src}:0").parse().unwrap())?;
    s.connect(to).await
}

/// True if the server closed `s` (EOF or reset) within `limit`.
async fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn serve() -> ServeProcess {
    spawn_serve(&["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"])
}

#[tokio::test]
async fn garbage_on_the_exec_port_is_refused_and_nothing_leaks() {
    let srv = serve();
    let addr: SocketAddr = srv.addr("exec", Transport::Tcp).parse().unwrap();
    // Warm up so lazily opened descriptors are counted in the baseline.
    srv.exec_client().await.run("true").await.unwrap();
    // The baseline once the warm-up's descriptors have settled.
    let mut fds_before = fd_count(srv.pid());
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = fd_count(srv.pid());
        if now == fds_before {
            break;
        }
        fds_before = now;
    }
    let rss_before = srv.rss_kib();

    let hostile: Vec<Vec<u8>> = vec![
        // A TLS 1.2/1.3 ClientHello's first bytes.
        vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        // EOF mid-length, mid-header, mid-body.
        vec![0, 0],
        [&20u32.to_be_bytes()[..], br#"{"type":"#].concat(),
        [
            &40u32.to_be_bytes()[..],
            br#"{"type":"auth","version":1,"size":100}"#,
            b"abc",
        ]
        .concat(),
        // Oversize and zero header lengths.
        u32::MAX.to_be_bytes().to_vec(),
        0u32.to_be_bytes().to_vec(),
        // Deep nesting, duplicate keys, wrong types, not an object.
        {
            let h = format!(
                "{{\"type\":\"auth\",\"x\":{}{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            );
            [&(h.len() as u32).to_be_bytes()[..], h.as_bytes()].concat()
        },
        [
            &32u32.to_be_bytes()[..],
            br#"{"type":"auth","type":"auth",1:}"#,
        ]
        .concat(),
        [&14u32.to_be_bytes()[..], br#"{"type":12345}"#].concat(),
        [&7u32.to_be_bytes()[..], b"[1,2,3]"].concat(),
        vec![0xff; 4096],
    ];
    for bytes in &hostile {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        assert!(
            closed_by_server(&mut s, T).await,
            "server kept {bytes:?} open"
        );
    }
    // Still serving, and back to its baseline of descriptors.
    assert_eq!(
        srv.exec_client()
            .await
            .run("echo alive")
            .await
            .unwrap()
            .stdout,
        b"alive\n"
    );
    let mut fds_after = fd_count(srv.pid());
    for _ in 0..100 {
        if fds_after <= fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds_after = fd_count(srv.pid());
    }
    assert!(fds_after <= fds_before, "fds {fds_before} -> {fds_after}");
    let rss_after = srv.rss_kib();
    assert!(
        rss_after < rss_before + 4096,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
}

#[tokio::test]
async fn a_udp_flood_from_one_source_does_not_starve_another() {
    let srv = spawn_serve(&["--echo", "udp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let echo: SocketAddr = srv.addr("echo", Transport::Udp).parse().unwrap();
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    victim.connect(echo).await.unwrap();
    let flood = async {
        let payload = [b'f'; 512];
        for _ in 0..50_000 {
            let _ = flooder.send_to(&payload, echo).await;
        }
    };
    let ask = async {
        let mut answered = 0;
        let mut buf = [0u8; 64];
        for i in 0..20 {
            let msg = format!("victim {i}");
            // UDP: a datagram the kernel dropped under the flood is retried,
            // as any UDP client does.
            for _try in 0..3 {
                victim.send(msg.as_bytes()).await.unwrap();
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), victim.recv(&mut buf)).await
                    && buf[..n] == *msg.to_uppercase().as_bytes()
                {
                    answered += 1;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        answered
    };
    let ((), answered) = tokio::join!(flood, ask);
    // The flooder's rate limit keeps the victim's share.
    assert!(
        answered >= 18,
        "the other source got {answered} of 20 answers"
    );
}

#[tokio::test]
async fn many_unauthenticated_connections_from_one_source_do_not_lock_out_another() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(exec_config(dir.path())).await;
    let mut held = Vec::new();
    for _ in 0..500 {
        if let Ok(s) = connect_from("127.0.0.2", srv.exec).await {
            held.push(s);
        }
    }
    // Most were closed at once (per-source limit 32, handshakes 8 per source).
    let stats = srv.stats.clone();
    assert!(
        wait_until(T, || stats.exec_tcp.rejected_source.get()
            + stats.exec.rejected_handshake.get()
            >= 400)
        .await,
        "rejected: {} per source, {} handshake",
        stats.exec_tcp.rejected_source.get(),
        stats.exec.rejected_handshake.get()
    );
    // A real client from another source gets in while they are held.
    let token = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();
    let mut c = ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(token), T)
        .await
        .unwrap();
    assert_eq!(c.run("echo in").await.unwrap().stdout, b"in\n");
    drop(held);
    // Slots come back when they go.
    assert!(
        wait_until(T, || stats.exec_tcp.open.get() == 1).await,
        "open: {}",
        stats.exec_tcp.open.get()
    );
}

#[tokio::test]
async fn failed_authentications_earn_the_source_a_penalty() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.auth_penalty = Duration::from_millis(500);
    let srv = start(cfg).await;
    let good = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();
    let bad = Token::new("guess").unwrap();
    for _ in 0..3 {
        let r =
            ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(bad.clone()), T).await;
        assert!(matches!(r, Err(ClientError::AuthFailed(_))));
    }
    // Now even the right token is turned away from this source, at once...
    let r = ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(good.clone()), T).await;
    assert!(r.is_err(), "penalty not applied");
    // ...while another source is unaffected.
    let mut s = connect_from("127.0.0.4", srv.exec).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    // After the penalty the source may try again.
    let mut again = None;
    for _ in 0..100 {
        match ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(good.clone()), T).await
        {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut c = again.expect("the penalty ended within 5 s");
    c.ping().await.unwrap();
}

#[tokio::test]
async fn a_frame_dribbled_slowly_is_closed_and_idle_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.frame_timeout = Duration::from_millis(600);
    cfg.exec.idle_timeout = Duration::from_millis(800);
    let srv = start(cfg).await;
    let token = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();

    // Slowloris: one byte every 100 ms of a ping frame that never ends.
    let mut s = common::raw::authed(srv.exec, &token).await;
    let frame =
        br#"{"type":"ping","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    s.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in frame.iter().take(frame.len() - 1) {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let closed = closed || closed_by_server(&mut s, T).await;
    assert!(
        closed,
        "a frame dribbled for {:?} was not cut off",
        started.elapsed()
    );

    // Idle: nothing sent and no job running.
    let mut s = common::raw::authed(srv.exec, &token).await;
    assert!(closed_by_server(&mut s, T).await, "idle session kept open");

    // A running job keeps a quiet session open past the idle timeout.
    let mut c = ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(token), T)
        .await
        .unwrap();
    assert_eq!(
        c.run("sleep 1.5; echo done").await.unwrap().stdout,
        b"done\n"
    );
}

#[tokio::test]
async fn a_client_that_vanishes_with_rst_mid_stream_loses_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(exec_config(dir.path())).await;
    let token = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();
    let mut s = common::raw::authed(srv.exec, &token).await;
    common::raw::send(&mut s, json!({"type":"exec","id":1,"cmd":"yes"}), b"").await;
    let (started, _) = common::raw::recv(&mut s).await.unwrap();
    let pid = started["pid"].as_u64().unwrap();
    for _ in 0..10 {
        common::raw::recv(&mut s).await.unwrap();
    }
    // Vanish with a reset, not a clean close.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let mut gone = false;
    for _ in 0..250 {
        if std::fs::metadata(format!("/proc/{pid}")).is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "job {pid} outlived its connection");
    let mut c = ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(token), T)
        .await
        .unwrap();
    assert_eq!(c.run("echo ok").await.unwrap().stdout, b"ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_echo_connections_then_churn() {
    let _ = switchboard::sys::raise_fd_limit();
    let mut cfg = common::loopback_config();
    // All from 127.0.0.1: lift the per-source limit (it has its own test).
    cfg.echo.max_connections_per_source = 0;
    let srv = start(cfg).await;
    let mut held = Vec::with_capacity(5000);
    for _ in 0..5000 {
        held.push(TcpStream::connect(srv.echo_tcp).await.unwrap());
    }
    let stats = srv.stats.clone();
    assert!(
        wait_until(T, || stats.echo_tcp.open.get() == 5000).await,
        "open {}",
        stats.echo_tcp.open.get()
    );
    let mut c = EchoClient::connect_tcp(&srv.echo_tcp.to_string(), T)
        .await
        .unwrap();
    assert_eq!(c.request(b"busy but fine").await.unwrap(), b"BUSY BUT FINE");
    drop(c);
    drop(held);
    assert!(
        wait_until(T, || stats.echo_tcp.open.get() == 0).await,
        "open {}",
        stats.echo_tcp.open.get()
    );

    // Churn: connect, one round trip, close.
    for i in 0..2000 {
        let mut c = EchoClient::connect_tcp(&srv.echo_tcp.to_string(), T)
            .await
            .unwrap();
        let msg = format!("churn {i}");
        assert_eq!(
            c.request(msg.as_bytes()).await.unwrap(),
            msg.to_uppercase().as_bytes()
        );
    }
    assert!(wait_until(T, || stats.echo_tcp.open.get() == 0).await);
    assert_eq!(stats.echo_tcp.accepted.get(), 5000 + 1 + 2000);
}

#[tokio::test]
async fn exec_connection_churn_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(exec_config(dir.path())).await;
    let token = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();
    for i in 0..100 {
        let mut c =
            ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(token.clone()), T)
                .await
                .unwrap();
        if i % 10 == 0 {
            assert_eq!(c.run("true").await.unwrap().status, ExitStatus::Code(0));
        }
    }
    let stats = srv.stats.clone();
    assert!(
        wait_until(T, || stats.exec_tcp.open.get() == 0).await,
        "open {}",
        stats.exec_tcp.open.get()
    );
}

#[tokio::test]
async fn the_command_policy_answers_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.allowed_programs = vec!["echo".into()];
    cfg.exec.allow_cwd = false;
    let srv = start(cfg).await;
    let token = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();
    let mut c = ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(token), T)
        .await
        .unwrap();
    let forbidden = |r: Result<switchboard::client::Output, ClientError>| {
        matches!(
            r,
            Err(ClientError::Job {
                code: ErrorCode::Forbidden,
                ..
            })
        )
    };
    assert!(
        forbidden(c.run("echo shell").await),
        "shell refused under an allow-list"
    );
    let mut r = ExecRequest::shell(2, "");
    r.command = Command::Argv(vec!["cat".into(), "/etc/passwd".into()]);
    assert!(forbidden(c.run_request(r).await));
    let mut r = ExecRequest::shell(3, "");
    r.command = Command::Argv(vec!["echo".into(), "allowed".into()]);
    r.cwd = Some("/tmp".into());
    assert!(forbidden(c.run_request(r.clone()).await));
    r.cwd = None;
    assert_eq!(c.run_request(r).await.unwrap().stdout, b"allowed\n");
    assert_eq!(srv.stats.exec.forbidden.get(), 3);
    assert_eq!(srv.stats.exec.jobs_started.get(), 1);
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn a_root_server_refuses_root_jobs_unless_told_and_runs_as_another_user() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = |srv: &common::ServeProcess, addr: &str, auth: ClientAuth| {
        let r = rt.block_on(async {
            let mut c = ExecClient::connect(addr, &auth, Duration::from_secs(10))
                .await
                .expect("connect");
            c.run("id -u").await
        });
        match r {
            Err(ClientError::Job {
                code: ErrorCode::Forbidden,
                message,
                ..
            }) => assert!(message.contains("root"), "{message}"),
            other => panic!("{other:?}; banner {:?}", srv.banner),
        }
    };
    let token = |srv: &common::ServeProcess| {
        ClientAuth::token(switchboard::secrets::read_token(&srv.token_file()).expect("token"))
    };
    let no_allow = [("SB_TEST_NO_ALLOW_ROOT", "1")];

    // Issue #15 item 5: loopback only, authenticated, a token file only
    // root reads: whoever starts a job is root already, so jobs run as root
    // without being told, and the banner says so.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchboard.toml");
    std::fs::write(&cfg, "[exec]\nno_auth = false\n").unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let args = ["--echo", "none", "--time", "none", "--config", cfg.as_str()];
    let srv = common::spawn_serve_env(&args, &no_allow);
    assert!(
        srv.banner.iter().any(|l| l == "  exec  jobs run as root"),
        "{:?}",
        srv.banner
    );
    // The server's HOME here is a temporary directory: the job's is root's own.
    let out = rt.block_on(async {
        srv.exec_client()
            .await
            .run("id -u; echo $USER $LOGNAME $HOME")
            .await
            .unwrap()
    });
    let root = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0))
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("0\nroot root {}\n", root.dir.display())
    );
    // A reload that drops authentication drops root jobs with it.
    std::fs::write(&cfg, "[exec]\nno_auth = true\n").unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reloaded", 1), "{}", srv.log());
    let addr = srv.addr("exec", Transport::Tcp);
    refused(&srv, &addr, ClientAuth::none());
    // A connection that got in then, without the token, keeps none of
    // root's rights when a reload turns authentication back on: it is
    // judged by what it proved, not by the configuration of the day (and
    // since identities, closed at the reload: it proved nothing).
    let unauthenticated = rt.block_on(ExecClient::connect(
        &addr,
        &ClientAuth::none(),
        Duration::from_secs(10),
    ));
    let mut unauthenticated = unauthenticated.expect("connect");
    std::fs::write(&cfg, "[exec]\nno_auth = false\n").unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reloaded", 2), "{}", srv.log());
    match rt.block_on(unauthenticated.run("id -u")) {
        Err(ClientError::Job {
            code: ErrorCode::Forbidden | ErrorCode::AuthFailed,
            ..
        }) => {}
        Err(e) if !matches!(e, ClientError::Job { .. }) => {}
        other => panic!("an unauthenticated connection ran a root job: {other:?}"),
    }
    let out = rt.block_on(async { srv.exec_client().await.run("id -u").await.unwrap() });
    assert_eq!(out.stdout, b"0\n", "a connection with the token does");
    // A token rotated by a reload (it leaked) shuts out the connections
    // that proved the old one; the new one works.
    let mut old = rt.block_on(srv.exec_client());
    let rotated = "ab".repeat(32);
    std::fs::write(srv.token_file(), format!("{rotated}\n")).unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reloaded", 3), "{}", srv.log());
    let r = rt.block_on(old.run("id -u"));
    assert!(r.is_err(), "a root job with a rotated token: {r:?}");
    let out = rt.block_on(async { srv.exec_client().await.run("id -u").await.unwrap() });
    assert_eq!(out.stdout, b"0\n", "the new token does");
    // A token opened to the group since: root jobs stop at once, with no
    // reload (which would refuse the file and keep the old decision).
    let mut c = rt.block_on(srv.exec_client());
    let file = srv.token_file();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let r = rt.block_on(c.run("id -u"));
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(
        matches!(
            r,
            Err(ClientError::Job {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "a root job with a group-readable token: {r:?}"
    );
    // Closed again, the file was still exposed for a while: no root job,
    // not even on a fresh connection, until a reload reads it again.
    let forbidden = |r: &Result<switchboard::client::Output, ClientError>| {
        matches!(
            r,
            Err(ClientError::Job {
                code: ErrorCode::Forbidden,
                ..
            })
        )
    };
    let r = rt.block_on(async { srv.exec_client().await.run("id -u").await });
    assert!(
        forbidden(&r),
        "a root job after the token was exposed: {r:?}"
    );
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reloaded", 4), "{}", srv.log());
    let out = rt.block_on(async { srv.exec_client().await.run("id -u").await.unwrap() });
    assert_eq!(out.stdout, b"0\n", "after a reload");
    // A new token written but the reload failing (a typo): the old token
    // stays in force, and no longer matches the file; no root job with it.
    let mut old = rt.block_on(srv.exec_client());
    std::fs::write(srv.token_file(), format!("{}\n", "cd".repeat(32))).unwrap();
    std::fs::write(&cfg, "[exec\n").unwrap();
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("reload failed", 1), "{}", srv.log());
    let r = rt.block_on(old.run("id -u"));
    assert!(forbidden(&r), "a root job after a failed reload: {r:?}");
    drop(srv);

    // Anything else still needs --run-as or --allow-root: a tutorial
    // endpoint (no authentication) beside it, or exec off loopback.
    let srv = common::spawn_serve_env(
        &[
            "--echo",
            "none",
            "--time",
            "none",
            "--exec-legacy",
            "tcp://127.0.0.1:0",
        ],
        &no_allow,
    );
    assert!(
        srv.banner
            .iter()
            .any(|l| l.starts_with("  exec  jobs refused")),
        "{:?}",
        srv.banner
    );
    refused(&srv, &srv.addr("exec", Transport::Tcp), token(&srv));
    let srv = common::spawn_serve_env(
        &[
            "--echo",
            "none",
            "--time",
            "none",
            "--exec",
            "tcp://0.0.0.0:0",
            "--allow-plaintext",
        ],
        &no_allow,
    );
    let port = srv
        .addr("exec", Transport::Tcp)
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    refused(&srv, &format!("127.0.0.1:{port}"), token(&srv));

    let args = ["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"];
    let Some(user) = ["nobody", "daemon"]
        .into_iter()
        .find(|u| nix::unistd::User::from_name(u).ok().flatten().is_some())
    else {
        eprintln!("skipped: no unprivileged user to run as");
        return;
    };
    let uid = nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let srv = common::spawn_serve_env(&[&args[..], &["--run-as", user]].concat(), &[]);
    rt.block_on(async {
        let out = srv
            .exec_client()
            .await
            .run("id -u; echo $USER")
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{uid}\n{user}\n")
        );
    });
    // The audit trail names the job (written by its own thread: wait).
    let ran = srv.wait_audit(1, |r| {
        r["audit"] == "job_ended" && r["argv"][2] == "id -u; echo $USER"
    });
    assert_eq!(ran.len(), 1, "{}", srv.log());
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: prlimit not found");
        return;
    }
    // 64 descriptors in all, soft and hard: the server cannot raise it.
    let srv = common::spawn_serve_under(
        &["prlimit", "--nofile=64:64"],
        &["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"],
        &[],
    );
    let addr: SocketAddr = srv.addr("echo", Transport::Tcp).parse().unwrap();
    // More clients than the server has descriptors: the kernel queues them
    // in the backlog while accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(
        srv.wait_log("accept failed", 1),
        "no back-off logged: {}",
        srv.log()
    );
    drop(held);
    // Descriptors come back; the server serves again (it did not exit).
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(mut c) = EchoClient::connect_tcp(&addr.to_string(), Duration::from_secs(2)).await
            && let Ok(r) = c.request(b"recovered").await
        {
            assert_eq!(r, b"RECOVERED");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the server did not recover");
}
