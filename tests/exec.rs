//! Remote execution (PROTOCOL.md §3) over real sockets and real processes:
//! through the typed client and through raw frames written by hand.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{exec_config, start};
use serde_json::json;
use switchboard::client::{ClientAuth, ClientError, ExecClient};
use switchboard::proto::auth::Token;
use switchboard::proto::{ClientMsg, Command, ErrorCode, ExecRequest, ExitStatus, ServerMsg};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

struct Fixture {
    srv: common::TestServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with(|_| {}).await
    }

    async fn with(f: impl FnOnce(&mut switchboard::ServerConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = exec_config(dir.path());
        f(&mut cfg);
        let srv = start(cfg).await;
        Fixture { srv, dir }
    }

    fn token(&self) -> Token {
        switchboard::secrets::read_token(&self.dir.path().join("token")).unwrap()
    }

    async fn client(&self) -> ExecClient {
        ExecClient::connect(
            &self.srv.exec.to_string(),
            &ClientAuth::token(self.token()),
            T,
        )
        .await
        .unwrap()
    }
}

fn req(id: u64, cmd: &str) -> ExecRequest {
    ExecRequest::shell(id, cmd)
}

fn signal(name: &str, timed_out: bool) -> ExitStatus {
    ExitStatus::Signal {
        name: name.into(),
        timed_out,
    }
}

#[tokio::test]
async fn runs_commands_with_output_and_exit_codes() {
    let fx = Fixture::new().await;
    let mut c = fx.client().await;
    let out = c
        .run("echo linhaifeng nb; echo oops >&2; exit 3")
        .await
        .unwrap();
    assert_eq!(out.stdout, b"linhaifeng nb\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.status, ExitStatus::Code(3));
    for code in [0, 1, 44, 255] {
        let out = c.run(&format!("exit {code}")).await.unwrap();
        assert_eq!(out.status, ExitStatus::Code(code));
    }
    assert_eq!(
        c.run("kill -KILL $$").await.unwrap().status,
        signal("KILL", false)
    );
    assert_eq!(
        c.run("kill -TERM $$").await.unwrap().status,
        signal("TERM", false)
    );
    assert_eq!(
        c.run("kill -SEGV $$").await.unwrap().status,
        signal("SEGV", false)
    );
    // A missing command is the shell's 127, not a spawn failure.
    assert_eq!(
        c.run("no-such-command-xyz 2>/dev/null")
            .await
            .unwrap()
            .status,
        ExitStatus::Code(127)
    );
    c.ping().await.unwrap();
}

#[tokio::test]
async fn argv_env_cwd_and_spawn_failures() {
    let fx = Fixture::new().await;
    let mut c = fx.client().await;
    let mut r = req(1, "");
    r.command = Command::Argv(vec![
        "printf".into(),
        "%s|%s".into(),
        "a b".into(),
        "$HOME".into(),
    ]);
    assert_eq!(c.run_request(r).await.unwrap().stdout, b"a b|$HOME");

    let mut r = req(2, "echo \"$FOO\"; pwd; echo \"${SECRET:-unset}\"");
    r.env.insert("FOO".into(), "bar baz".into());
    r.cwd = Some("/tmp".into());
    assert_eq!(
        c.run_request(r).await.unwrap().stdout,
        b"bar baz\n/tmp\nunset\n"
    );

    let mut r = req(3, "");
    r.command = Command::Argv(vec!["/no/such/program".into()]);
    // Each spawn failure carries the status a shell would give.
    match c.run_request(r).await {
        Err(ClientError::Job {
            code: ErrorCode::SpawnFailed,
            message,
            exit_status: Some(127),
        }) => {
            assert!(message.contains("/no/such/program"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let mut r = req(4, "pwd");
    r.cwd = Some("/no/such/dir".into());
    match c.run_request(r).await {
        Err(ClientError::Job {
            code: ErrorCode::SpawnFailed,
            message,
            exit_status: Some(1),
        }) => {
            assert!(
                message.contains("/no/such/dir") && message.contains("No such file"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let not_executable = fx.dir.path().join("data.txt");
    std::fs::write(&not_executable, "x").unwrap();
    let mut r = req(6, "");
    r.command = Command::Argv(vec![not_executable.to_string_lossy().into_owned()]);
    assert!(
        matches!(
            c.run_request(r).await,
            Err(ClientError::Job {
                code: ErrorCode::SpawnFailed,
                exit_status: Some(126),
                ..
            })
        ),
        "a file that is not executable"
    );
    let mut r = req(5, "true");
    r.env.insert("A=B".into(), "x".into());
    assert!(matches!(
        c.run_request(r).await,
        Err(ClientError::Job {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
    // The connection is still good.
    assert_eq!(c.run("echo ok").await.unwrap().stdout, b"ok\n");
}

#[tokio::test]
async fn a_hundred_megabytes_of_output_arrive_intact() {
    let fx = Fixture::new().await;
    let mut c = fx.client().await;
    const N: usize = 100_000_000;
    let out = c
        .run(&format!("yes linhaifeng | head -c {N}"))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout.len(), N);
    let pattern = b"linhaifeng\n";
    assert!(
        out.stdout
            .chunks(pattern.len())
            .all(|c| pattern.starts_with(c)),
        "corrupted output"
    );
}

#[tokio::test]
async fn stdin_streams_through_cat_in_64k_frames() {
    let fx = Fixture::new().await;
    let (mut tx, mut rx) = fx.client().await.split();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut r = req(1, "cat");
    r.stdin = true;
    tx.send(ClientMsg::Exec(r)).await.unwrap();
    let feed = {
        let data = data.clone();
        async move {
            tx.stdin(1, &data).await.unwrap();
            tx.send(ClientMsg::Eof { id: 1 }).await.unwrap();
            tx
        }
    };
    let collect = async {
        let mut got = Vec::new();
        loop {
            match rx.recv().await.unwrap().unwrap() {
                ServerMsg::Started { .. } => {}
                ServerMsg::Stdout { data, .. } => got.extend_from_slice(&data),
                ServerMsg::Exit { status, .. } => return (got, status),
                other => panic!("{other:?}"),
            }
        }
    };
    let (_tx, (got, status)) = tokio::time::timeout(T, async { tokio::join!(feed, collect) })
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stdin came back altered");
}

#[tokio::test]
async fn sixty_four_concurrent_jobs_on_one_connection_and_busy_beyond() {
    let fx = Fixture::new().await;
    let (mut tx, mut rx) = fx.client().await.split();
    // Each job waits for its stdin to close, so all 64 are still running
    // when the 65th arrives, however slow the machine.
    for id in 0..64u64 {
        let mut r = req(id, &format!("read _; echo job {id}; echo e{id} >&2"));
        r.stdin = true;
        tx.send(ClientMsg::Exec(r)).await.unwrap();
    }
    tx.send(ClientMsg::Exec(req(64, "echo too many")))
        .await
        .unwrap();
    tx.send(ClientMsg::Exec(req(3, "echo dup"))).await.unwrap();
    let mut out: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut exits = HashMap::new();
    let mut errors = Vec::new();
    let mut started = 0;
    let mut released = false;
    while exits.len() < 64 {
        if !released && errors.len() == 2 {
            for id in 0..64u64 {
                tx.send(ClientMsg::Eof { id }).await.unwrap();
            }
            released = true;
        }
        match tokio::time::timeout(T, rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            ServerMsg::Started { .. } => started += 1,
            ServerMsg::Stdout { id, data, .. } => {
                out.entry(id).or_default().extend_from_slice(&data)
            }
            ServerMsg::Stderr { .. } => {}
            ServerMsg::Exit { id, status, .. } => {
                assert!(out.contains_key(&id), "exit {id} before its output");
                exits.insert(id, status);
            }
            ServerMsg::Error { id, code, .. } => errors.push((id, code)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(started, 64);
    for id in 0..64u64 {
        assert_eq!(out[&id], format!("job {id}\n").as_bytes());
        assert_eq!(exits[&id], ExitStatus::Code(0));
    }
    assert!(errors.contains(&(Some(64), ErrorCode::Busy)), "{errors:?}");
    assert!(
        errors.contains(&(Some(3), ErrorCode::DuplicateId)),
        "{errors:?}"
    );
    // Finished ids can be reused at once.
    tx.send(ClientMsg::Exec(req(3, "echo again")))
        .await
        .unwrap();
    loop {
        if let ServerMsg::Exit { id: 3, status, .. } = rx.recv().await.unwrap().unwrap() {
            assert_eq!(status, ExitStatus::Code(0));
            break;
        }
    }
}

#[tokio::test]
async fn timeouts_and_signals_end_jobs() {
    let fx = Fixture::new().await;
    let mut c = fx.client().await;
    let mut r = req(1, "echo before; sleep 30");
    r.timeout_ms = Some(300);
    let out = tokio::time::timeout(T, c.run_request(r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"before\n", "output before the timeout is kept");
    assert_eq!(out.status, signal("TERM", true));

    // A job that ignores TERM gets KILL after the grace.
    let fx = Fixture::with(|c| c.exec.kill_grace = Duration::from_millis(300)).await;
    let mut c = fx.client().await;
    let mut r = req(1, "trap '' TERM; sleep 30");
    r.timeout_ms = Some(200);
    let out = tokio::time::timeout(T, c.run_request(r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status, signal("KILL", true));

    let (mut tx, mut rx) = c.split();
    // `exec`: no shell in between (a shell that has just forked can race a
    // signal); wait until the job really is `sleep` before signalling it.
    tx.send(ClientMsg::Exec(req(2, "exec sleep 30")))
        .await
        .unwrap();
    let ServerMsg::Started { id: 2, pid, .. } = rx.recv().await.unwrap().unwrap() else {
        panic!("expected started");
    };
    for _ in 0..500 {
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(ClientMsg::Signal {
        id: 2,
        signal: "INT".into(),
    })
    .await
    .unwrap();
    match tokio::time::timeout(T, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        ServerMsg::Exit { id: 2, status, .. } => assert_eq!(status, signal("INT", false)),
        other => panic!("{other:?}"),
    }
    tx.send(ClientMsg::Signal {
        id: 2,
        signal: "INT".into(),
    })
    .await
    .unwrap();
    assert!(matches!(
        rx.recv().await.unwrap().unwrap(),
        ServerMsg::Error {
            id: Some(2),
            code: ErrorCode::NoSuchJob,
            ..
        }
    ));
}

#[tokio::test]
async fn background_holder_of_the_pipe_does_not_delay_exit_forever() {
    let fx = Fixture::new().await;
    let mut c = fx.client().await;
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(T, c.run("echo hi; (sleep 60 &); exit 3"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.stdout, b"hi\n");
    eprintln!("exit after {:?} (drain grace 1 s)", started.elapsed());
}

#[tokio::test]
async fn lots_of_stderr_before_stdout_does_not_deadlock() {
    let fx = Fixture::new().await;
    let mut c = fx.client().await;
    let out = tokio::time::timeout(T, c.run("head -c 300000 /dev/zero >&2; echo done"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stderr.len(), 300_000);
    assert_eq!(out.stdout, b"done\n");
}

/// Processes whose process group is `pgid`, with their state letter.
fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push((pid, f[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

async fn wait_group_gone(pgid: u32) -> Vec<(u32, char)> {
    for _ in 0..500 {
        let left = group_members(pgid);
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group_members(pgid)
}

#[tokio::test]
async fn disconnect_kills_and_reaps_the_whole_group_grandchildren_included() {
    let fx = Fixture::new().await;
    let (mut tx, mut rx) = fx.client().await.split();
    tx.send(ClientMsg::Exec(req(
        1,
        "sleep 300 & sleep 300 & for i in $(seq 50); do sleep 300 & done; wait",
    )))
    .await
    .unwrap();
    let ServerMsg::Started { pid, .. } = rx.recv().await.unwrap().unwrap() else {
        panic!()
    };
    // Wait until the background sleepers exist.
    for _ in 0..200 {
        if group_members(pid).len() >= 53 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(group_members(pid).len() >= 53, "{:?}", group_members(pid));
    drop(tx);
    drop(rx);
    let left = wait_group_gone(pid).await;
    assert!(
        left.is_empty(),
        "left in group {pid} (zombies are 'Z'): {left:?}"
    );

    // A job that has exited but left a background process: killed on
    // disconnect too.
    let mut c = fx.client().await;
    let out = c.run("sleep 300 >/dev/null 2>&1 & echo $!").await.unwrap();
    let bg: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap();
    let pgid: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(group_members(pgid).len(), 1, "the sleeper outlived its job");
    c.ping().await.unwrap();
    drop(c);
    let left = wait_group_gone(pgid).await;
    assert!(left.is_empty(), "{left:?}");
}

// ---- raw frames, written by hand from PROTOCOL.md ----

async fn raw_authed(fx: &Fixture) -> TcpStream {
    common::raw::authed(fx.srv.exec, &fx.token()).await
}

#[tokio::test]
async fn wrong_mac_and_frames_before_auth_run_nothing() {
    let fx = Fixture::new().await;
    let marker = fx.dir.path().join("ran");
    let touch = format!("touch {}", marker.display());

    // An exec before auth.
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    common::raw::recv(&mut s).await.unwrap();
    common::raw::send(&mut s, json!({"type":"exec","id":1,"cmd":touch}), b"").await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("auth_failed"))
    );
    assert!(
        common::raw::recv(&mut s).await.is_none(),
        "closed after auth_failed"
    );

    // A wrong MAC, then an exec anyway.
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    let (hello, _) = common::raw::recv(&mut s).await.unwrap();
    let sn = hello["nonce"].as_str().unwrap();
    let wrong = Token::new("not the token")
        .unwrap()
        .client_mac(sn, &"cd".repeat(32));
    common::raw::send(
        &mut s,
        json!({"type":"auth","version":1,"nonce":"cd".repeat(32),"mac":wrong}),
        b"",
    )
    .await;
    common::raw::send(&mut s, json!({"type":"exec","id":1,"cmd":touch}), b"").await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(e["code"], "auth_failed");
    assert!(common::raw::recv(&mut s).await.is_none());

    // Version 2.
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    common::raw::recv(&mut s).await.unwrap();
    common::raw::send(&mut s, json!({"type":"auth","version":2}), b"").await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(e["code"], "protocol");

    // The typed client reports a wrong token clearly.
    let bad = ExecClient::connect(
        &fx.srv.exec.to_string(),
        &ClientAuth::token(Token::new("nope").unwrap()),
        T,
    )
    .await;
    assert!(
        matches!(bad, Err(ClientError::AuthFailed(_))),
        "{:?}",
        bad.err()
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists(), "a command ran without authentication");
    assert_eq!(fx.srv.stats.exec.jobs_started.get(), 0);
    assert!(fx.srv.stats.exec.auth_failures.get() >= 3);
}

#[tokio::test]
async fn raw_frames_errors_keep_or_close_the_connection_as_specified() {
    let fx = Fixture::new().await;
    let mut s = raw_authed(&fx).await;
    common::raw::send(&mut s, json!({"type":"launch","id":9}), b"").await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(e["code"], "unknown_type");
    common::raw::send(&mut s, json!({"type":"exec","id":"x","cmd":"true"}), b"").await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(e["code"], "bad_request");
    common::raw::send(&mut s, json!({"type":"eof","id":77}), b"").await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("no_such_job"), Some(77))
    );
    common::raw::send(&mut s, json!({"type":"ping","future_field":[1,2]}), b"").await;
    assert_eq!(common::raw::recv(&mut s).await.unwrap().0["type"], "pong");

    // A job through raw frames: started, stdout, exit.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":5,"argv":["sh","-c","printf hi; exit 44"]}),
        b"",
    )
    .await;
    let (st, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(
        (st["type"].as_str(), st["id"].as_u64()),
        (Some("started"), Some(5))
    );
    assert!(st["pid"].as_u64().unwrap() > 1);
    let (o, body) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(
        (o["type"].as_str(), body.as_slice()),
        (Some("stdout"), &b"hi"[..])
    );
    let (x, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(x, json!({"type":"exit","id":5,"code":44}));

    // Duplicate keys are a protocol error: error frame, then close.
    let h = br#"{"type":"ping","type":"ping"}"#;
    s.write_all(&(h.len() as u32).to_be_bytes()).await.unwrap();
    s.write_all(h).await.unwrap();
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(e["code"], "protocol");
    assert!(common::raw::recv(&mut s).await.is_none());

    // An oversize header length is refused before anything is read.
    let mut s = raw_authed(&fx).await;
    s.write_all(&(70_000u32).to_be_bytes()).await.unwrap();
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(e["code"], "protocol");
    assert!(common::raw::recv(&mut s).await.is_none());
}

#[tokio::test]
async fn unauthenticated_mode_on_loopback_and_clients_refuse_it_by_default() {
    let fx = Fixture::with(|c| c.exec.no_auth = true).await;
    let addr = fx.srv.exec.to_string();
    let strict = ClientAuth::token(Token::new("whatever").unwrap());
    assert!(matches!(
        ExecClient::connect(&addr, &strict, T).await,
        Err(ClientError::AuthFailed(_))
    ));
    let mut c = ExecClient::connect(&addr, &ClientAuth::none(), T)
        .await
        .unwrap();
    assert_eq!(c.run("echo open").await.unwrap().stdout, b"open\n");

    // Refused on a non-loopback address (binding is not even tried).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.no_auth = true;
    cfg.exec.listen = vec![switchboard::Endpoint::new(
        switchboard::Transport::Tcp,
        "0.0.0.0",
        0,
    )];
    let err = switchboard::Server::bind(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test]
async fn handshake_deadline_closes_silent_clients() {
    let fx = Fixture::with(|c| c.exec.handshake_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    let (hello, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(hello["type"], "hello");
    // Say nothing: the server closes.
    assert!(common::raw::recv(&mut s).await.is_none());
}

#[tokio::test]
async fn the_global_job_limit_spans_connections() {
    let fx = Fixture::with(|c| c.exec.max_jobs = 2).await;
    let (mut tx1, mut rx1) = fx.client().await.split();
    for id in 0..2 {
        tx1.send(ClientMsg::Exec(req(id, "sleep 30")))
            .await
            .unwrap();
        assert!(matches!(
            rx1.recv().await.unwrap().unwrap(),
            ServerMsg::Started { .. }
        ));
    }
    let mut c2 = fx.client().await;
    match c2.run("echo hi").await {
        Err(ClientError::Job {
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Ending one job on the first connection frees a slot for the second.
    tx1.send(ClientMsg::Signal {
        id: 0,
        signal: "KILL".into(),
    })
    .await
    .unwrap();
    loop {
        if let ServerMsg::Exit { id: 0, .. } = rx1.recv().await.unwrap().unwrap() {
            break;
        }
    }
    assert_eq!(c2.run("echo hi").await.unwrap().stdout, b"hi\n");
}

/// Frames of job `id` until its exit: (stdout bytes, whether any stderr
/// came, the exit frame).
async fn until_exit(s: &mut TcpStream, id: u64) -> (Vec<u8>, bool, serde_json::Value) {
    let (mut out, mut stderr) = (Vec::new(), false);
    loop {
        let (h, body) = common::raw::recv(s).await.expect("a frame");
        if h["id"].as_u64() != Some(id) {
            continue;
        }
        match h["type"].as_str() {
            Some("stdout") => out.extend_from_slice(&body),
            Some("stderr") => stderr = true,
            Some("started") => {}
            _ => return (out, stderr, h),
        }
    }
}

#[tokio::test]
async fn pty_jobs_by_raw_frames_size_type_merged_output_resize_and_eof() {
    let fx = Fixture::new().await;
    let mut s = raw_authed(&fx).await;

    // Sized and typed as asked; stderr is the terminal too; every byte
    // written before the exit arrives before it.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":1,"cmd":"stty size; echo \"$TERM\"; echo err >&2; seq 1 20000",
               "pty":{"rows":12,"cols":34,"term":"vt100"}}),
        b"",
    )
    .await;
    let (out, stderr, exit) = until_exit(&mut s, 1).await;
    assert_eq!(exit, json!({"type":"exit","id":1,"code":0}));
    assert!(!stderr, "a terminal has no separate stderr");
    let text = String::from_utf8(out).unwrap();
    let want: String = (1..=20000).map(|i| format!("{i}\r\n")).collect();
    assert_eq!(text, format!("12 34\r\nvt100\r\nerr\r\n{want}"));

    // A resize reaches the job as SIGWINCH.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":2,"cmd":"trap 'stty size; exit 0' WINCH; echo R; while :; do sleep 0.05; done",
               "pty":{"rows":24,"cols":80}}),
        b"",
    )
    .await;
    let (st, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(st["type"], "started");
    let (o, body) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(
        (o["type"].as_str(), body.as_slice()),
        (Some("stdout"), &b"R\r\n"[..])
    );
    common::raw::send(
        &mut s,
        json!({"type":"resize","id":2,"rows":7,"cols":9}),
        b"",
    )
    .await;
    let (out, _, exit) = until_exit(&mut s, 2).await;
    assert_eq!(
        (out.as_slice(), exit["code"].as_i64()),
        (&b"7 9\r\n"[..], Some(0))
    );

    // Input is typed; eof is the terminal's end-of-file character.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":3,"cmd":"cat; echo done","pty":{}}),
        b"",
    )
    .await;
    common::raw::send(&mut s, json!({"type":"stdin","id":3,"size":4}), b"abc\n").await;
    common::raw::send(&mut s, json!({"type":"eof","id":3}), b"").await;
    let (out, _, exit) = until_exit(&mut s, 3).await;
    assert_eq!(exit["code"], 0, "{exit}");
    // Echoed by the terminal, then written by cat.
    assert_eq!(String::from_utf8_lossy(&out), "abc\r\nabc\r\ndone\r\n");

    // resize without a terminal, and a terminal type that is not a name.
    common::raw::send(&mut s, json!({"type":"exec","id":4,"cmd":"sleep 5"}), b"").await;
    assert_eq!(
        common::raw::recv(&mut s).await.unwrap().0["type"],
        "started"
    );
    common::raw::send(
        &mut s,
        json!({"type":"resize","id":4,"rows":1,"cols":1}),
        b"",
    )
    .await;
    let (e, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("bad_request"), Some(4))
    );
    assert!(
        e["message"].as_str().unwrap().contains("no terminal"),
        "{e}"
    );
    common::raw::send(&mut s, json!({"type":"signal","id":4,"signal":"KILL"}), b"").await;
    let (_, _, exit) = until_exit(&mut s, 4).await;
    assert_eq!(exit["signal"], "KILL");
    for term in ["../../etc/x", "a b", "x\u{1b}[2J"] {
        common::raw::send(
            &mut s,
            json!({"type":"exec","id":5,"cmd":"true","pty":{"term":term}}),
            b"",
        )
        .await;
        let (e, _) = common::raw::recv(&mut s).await.unwrap();
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64()),
            (Some("bad_request"), Some(5)),
            "{term}"
        );
    }
}

#[tokio::test]
async fn a_pty_job_that_never_reads_its_input_does_not_hold_the_connection_past_its_end() {
    let fx = Fixture::new().await;
    let s = raw_authed(&fx).await;
    let (mut rd, mut wr) = s.into_split();
    let frame = common::raw::frame;
    // Then far more input than the terminal's buffers hold: the server's
    // writer blocks on the terminal, and the job's end must release it.
    // Whole lines, which a canonical terminal keeps (4 KiB of them) and
    // then refuses: the writer waits on the terminal until the job ends.
    let job = json!({"type":"exec","id":1,"cmd":"sleep 1","pty":{}});
    let mut bytes = frame(job, b"");
    let chunk = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(1024);
    for _ in 0..32 {
        bytes.extend(frame(
            json!({"type":"stdin","id":1,"size":chunk.len()}),
            &chunk,
        ));
    }
    // And the end of input, which types ^D into the full terminal.
    bytes.extend(frame(json!({"type":"eof","id":1}), b""));
    bytes.extend(frame(json!({"type":"ping"}), b""));
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.unwrap();
        wr
    });
    let mut rd = tokio::io::BufReader::new(&mut rd);
    let (mut seen_exit, mut seen_pong) = (false, false);
    let both = tokio::time::timeout(T, async {
        loop {
            let mut len = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut rd, &mut len)
                .await
                .unwrap();
            let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
            tokio::io::AsyncReadExt::read_exact(&mut rd, &mut h)
                .await
                .unwrap();
            let h: serde_json::Value = serde_json::from_slice(&h).unwrap();
            let mut body = vec![0u8; h["size"].as_u64().unwrap_or(0) as usize];
            tokio::io::AsyncReadExt::read_exact(&mut rd, &mut body)
                .await
                .unwrap();
            match h["type"].as_str() {
                Some("exit") => seen_exit = true,
                Some("pong") => seen_pong = true,
                _ => {}
            }
            if seen_exit && seen_pong {
                return;
            }
        }
    })
    .await;
    assert!(
        both.is_ok(),
        "the connection stayed stuck after the job ended (exit {seen_exit}, pong {seen_pong})"
    );
    tokio::time::timeout(T, writer).await.unwrap().unwrap();
    // Nothing of the job is left in the server: its terminal's master is
    // closed (a hung-up terminal once kept a writer spinning on it).
    assert!(
        common::wait_until(T, || ptmx_fds() == 0).await,
        "{} terminal masters left open",
        ptmx_fds()
    );
}

/// Descriptors of this process (the in-process server's) on /dev/ptmx.
fn ptmx_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.ends_with("ptmx")))
                .count()
        })
        .unwrap_or(0)
}

/// A client that sends a job more input than it reads, then leaves: the
/// reading of its connection waits on the job, yet its FIN (or reset)
/// must still be seen, and its job killed. On a terminal that echoes into
/// output nobody reads (`cat`), and on pipes, silent (`sleep`); left by a
/// close and by a reset.
#[tokio::test]
async fn a_client_that_floods_a_job_without_reading_and_leaves_takes_the_job_with_it() {
    let fx = Fixture::new().await;
    // (request, 64 KiB frames of input, leave by a reset). A clean close
    // is seen only once every byte before the FIN has reached the server
    // (640 KiB here: more than the job's pipe and queue take, less than
    // the socket buffers hold); a FIN stuck behind more unsent input than
    // that waits for per-job flow control (PROTOCOL.md §3.3).
    let cases = [
        (
            json!({"type":"exec","id":1,"cmd":"cat","pty":{}}),
            64,
            false,
        ),
        (
            json!({"type":"exec","id":1,"cmd":"sleep 60","pty":{}}),
            10,
            false,
        ),
        (
            json!({"type":"exec","id":1,"cmd":"sleep 60","pty":{}}),
            64,
            true,
        ),
        (
            json!({"type":"exec","id":1,"cmd":"sleep 60","stdin":true}),
            10,
            false,
        ),
        (
            json!({"type":"exec","id":1,"cmd":"echo hi; sleep 60","stdin":true}),
            64,
            true,
        ),
    ];
    for (exec, frames, reset) in cases {
        let mut s = raw_authed(&fx).await;
        common::raw::send(&mut s, exec.clone(), b"").await;
        let (started, _) = common::raw::recv(&mut s).await.unwrap();
        let pid = started["pid"].as_i64().unwrap() as i32;
        let line =
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(1024);
        let frame = common::raw::frame(json!({"type":"stdin","id":1,"size":line.len()}), &line);
        // Bounded: the flood stops when the server stops reading.
        let flood = async {
            for _ in 0..frames {
                if s.write_all(&frame).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flood).await;
        if reset {
            // SO_LINGER 0: the close sends a reset.
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(s);
        let gone = common::wait_until(T, || {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        })
        .await;
        assert!(
            gone,
            "{exec} ({frames} frames, reset {reset}): job {pid} outlived its connection"
        );
    }
    assert!(
        common::wait_until(T, || ptmx_fds() == 0).await,
        "{} masters left",
        ptmx_fds()
    );
}

#[tokio::test]
async fn a_server_that_forbids_terminals_says_so() {
    let fx = Fixture::with(|c| c.exec.allow_pty = false).await;
    let mut c = fx.client().await;
    let mut req = req(c.next_id(), "tty");
    req.pty = Some(Default::default());
    match c.run_request(req).await {
        Err(ClientError::Job {
            code: ErrorCode::Forbidden,
            message,
            ..
        }) => assert!(message.contains("exec.allow_pty"), "{message}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // Without one, the same command runs (and has no terminal).
    let out = c.run("tty").await.unwrap();
    assert_eq!(out.stdout, b"not a tty\n");
}

/// Authenticates asking for stdin windows; returns the window.
async fn windowed(fx: &Fixture) -> (TcpStream, u64) {
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    let (hello, _) = common::raw::recv(&mut s).await.unwrap();
    let sn = hello["nonce"].as_str().unwrap().to_string();
    let cn = "ab".repeat(32);
    let mac = fx.token().client_mac(&sn, &cn);
    common::raw::send(
        &mut s,
        json!({"type":"auth","version":1,"nonce":cn,"mac":mac,"window":true}),
        b"",
    )
    .await;
    let (ready, _) = common::raw::recv(&mut s).await.unwrap();
    assert_eq!(ready["type"], "ready", "{ready}");
    let window = ready["window"]["stdin"].as_u64().expect("a stdin window");
    (s, window)
}

/// Issue 13's case: a job that never reads its input is sent all its
/// window holds; another job still starts and answers at once, the first
/// still gets its signal, a job that reads gives its window back, and
/// input beyond the window is refused.
#[tokio::test]
async fn stdin_windows_keep_other_jobs_and_signals_moving() {
    let fx = Fixture::new().await;
    let (mut s, window) = windowed(&fx).await;
    assert_eq!(window, 256 * 1024);
    // Frames that cost 64 KiB each (their bytes plus 64): four fill it.
    let body = vec![b'x'; 65_536 - 64];
    let stdin =
        |id: u64| common::raw::frame(json!({"type":"stdin","id":id,"size":body.len()}), &body);
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":1,"cmd":"sleep 30","stdin":true}),
        b"",
    )
    .await;
    for _ in 0..4 {
        s.write_all(&stdin(1)).await.unwrap();
    }
    common::raw::send(&mut s, json!({"type":"exec","id":2,"cmd":"echo hi"}), b"").await;
    common::raw::send(&mut s, json!({"type":"signal","id":1,"signal":"INT"}), b"").await;
    let (mut out2, mut exits) = (Vec::new(), HashMap::new());
    while exits.len() < 2 {
        let (h, body) = common::raw::recv(&mut s)
            .await
            .expect("a frame within 10 s");
        match (h["type"].as_str(), h["id"].as_u64()) {
            (Some("stdout"), Some(2)) => out2.extend_from_slice(&body),
            (Some("exit"), Some(id)) => {
                exits.insert(id, h);
            }
            (Some("error"), _) => panic!("{h}"),
            _ => {}
        }
    }
    assert_eq!(out2, b"hi\n");
    assert_eq!(exits[&2]["code"], 0);
    assert_eq!(exits[&1]["signal"], "INT", "{}", exits[&1]);

    // A job that reads gives its window back, frame by frame.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":3,"cmd":"wc -c","stdin":true}),
        b"",
    )
    .await;
    let (mut sent, mut granted) = (0u64, 0u64);
    for _ in 0..8 {
        // Never more than the window outstanding: wait for room first.
        while sent - granted + 65_536 > window {
            let (h, _) = common::raw::recv(&mut s).await.unwrap();
            if h["type"] == "window" {
                assert_eq!(h["id"], 3);
                granted += h["stdin"].as_u64().unwrap();
            }
        }
        s.write_all(&stdin(3)).await.unwrap();
        sent += 65_536;
    }
    common::raw::send(&mut s, json!({"type":"eof","id":3}), b"").await;
    let mut out3 = Vec::new();
    loop {
        let (h, body) = common::raw::recv(&mut s).await.unwrap();
        match h["type"].as_str() {
            Some("window") => granted += h["stdin"].as_u64().unwrap(),
            Some("stdout") => out3.extend_from_slice(&body),
            Some("exit") => break,
            _ => {}
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&out3).trim(),
        (8 * body.len()).to_string()
    );
    assert_eq!(granted, sent, "the whole window came back");

    // A job that ends with input still held gives all of it back, after
    // its exit if need be (the id may be used again at once): here its
    // stdin stays open in a background process that does not read it, so
    // a write is still blocked when the job ends.
    let holder = "exec 3<&0; sleep 3 <&3 & exit 0";
    for round in 0..3 {
        common::raw::send(
            &mut s,
            json!({"type":"exec","id":5,"cmd":holder,"stdin":true}),
            b"",
        )
        .await;
        for _ in 0..4 {
            s.write_all(&stdin(5)).await.unwrap();
        }
        let (mut back, mut exited) = (0, false);
        while !(exited && back == window) {
            let (h, _) = common::raw::recv(&mut s)
                .await
                .unwrap_or_else(|| panic!("round {round}: {back} of {window} back"));
            match h["type"].as_str() {
                Some("window") => back += h["stdin"].as_u64().unwrap(),
                Some("exit") => exited = true,
                _ => {}
            }
        }
        assert_eq!(back, window, "round {round}");
    }

    // Empty frames cost nothing and get nothing back.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":6,"cmd":"cat","stdin":true}),
        b"",
    )
    .await;
    for _ in 0..5000 {
        common::raw::send(&mut s, json!({"type":"stdin","id":6,"size":0}), b"").await;
    }
    common::raw::send(&mut s, json!({"type":"eof","id":6}), b"").await;
    loop {
        let (h, _) = common::raw::recv(&mut s).await.unwrap();
        assert_ne!(h["type"], "window", "{h}");
        assert_ne!(h["type"], "error", "{h}");
        if h["type"] == "exit" {
            break;
        }
    }

    // Beyond the window: a protocol error, and the connection closes (the
    // job with it). The window counts what the server holds: the job's
    // pipe takes the first 64 KiB, so twice the window surely overflows.
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":4,"cmd":"sleep 30","stdin":true}),
        b"",
    )
    .await;
    for _ in 0..8 {
        if s.write_all(&stdin(4)).await.is_err() {
            break;
        }
    }
    let mut refused = None;
    while let Some((h, _)) = common::raw::recv(&mut s).await {
        if h["type"] == "error" {
            refused = Some(h);
        }
    }
    let refused = refused.expect("an error before the close");
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("protocol"), Some(4))
    );
}

/// Authenticates giving an output window; returns the server's answer.
async fn with_output_window(fx: &Fixture, s: &mut TcpStream, window: u64) -> serde_json::Value {
    let (hello, _) = common::raw::recv(s).await.unwrap();
    let sn = hello["nonce"].as_str().unwrap().to_string();
    let cn = "ab".repeat(32);
    let mac = fx.token().client_mac(&sn, &cn);
    let auth = json!({"type":"auth","version":1,"nonce":cn,"mac":mac,"output_window":window});
    common::raw::send(s, auth, b"").await;
    common::raw::recv(s).await.unwrap().0
}

/// Output windows: a job whose output the client does not take stops at
/// its window while another job's output still flows; given back, the
/// rest comes, all of it; more given back than was sent is refused, and
/// so is a window too small for a frame.
#[tokio::test]
async fn output_windows_pace_one_job_without_holding_up_another() {
    let fx = Fixture::new().await;
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    let ready = with_output_window(&fx, &mut s, 131_072).await;
    assert_eq!(ready["window"]["output"], 131_072, "{ready}");
    common::raw::send(
        &mut s,
        json!({"type":"exec","id":1,"cmd":"head -c 2000000 /dev/zero"}),
        b"",
    )
    .await;
    // Nothing given back: the job's output stops at its window.
    // Read until the output has started and then stayed quiet a while.
    let (mut held, mut total) = (0u64, 0u64);
    loop {
        let quiet = if held == 0 {
            T
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(quiet, common::raw::recv(&mut s)).await {
            Ok(Some((h, body))) if h["type"] == "stdout" => {
                held += body.len() as u64 + 64;
                total += body.len() as u64;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        held > 0 && held <= 131_072,
        "{held} of cost sent and not given back"
    );
    // Another job's output still comes.
    common::raw::send(&mut s, json!({"type":"exec","id":2,"cmd":"echo hi"}), b"").await;
    let (mut hi, mut exit2) = (Vec::new(), None);
    while exit2.is_none() {
        let (h, body) = common::raw::recv(&mut s).await.unwrap();
        match (h["type"].as_str(), h["id"].as_u64()) {
            (Some("stdout"), Some(2)) => hi.extend_from_slice(&body),
            (Some("exit"), Some(2)) => exit2 = Some(h),
            (Some("exit"), Some(1)) => panic!("job 1 ended without its output taken"),
            _ => {}
        }
    }
    assert_eq!(hi, b"hi\n");
    // Given back as taken, the rest comes: 2,000,000 bytes in all.
    common::raw::send(&mut s, json!({"type":"window","id":1,"output":held}), b"").await;
    let mut end = None;
    while end.is_none() {
        let (h, body) = common::raw::recv(&mut s).await.unwrap();
        match (h["type"].as_str(), h["id"].as_u64()) {
            (Some("stdout"), Some(1)) => {
                total += body.len() as u64;
                let back = json!({"type":"window","id":1,"output":body.len() + 64});
                common::raw::send(&mut s, back, b"").await;
            }
            (Some("exit"), Some(1)) => end = Some(h),
            (Some("error"), _) => panic!("{h}"),
            _ => {}
        }
    }
    assert_eq!(end.unwrap()["code"], 0);
    assert_eq!(total, 2_000_000);
    // More given back than was sent: a protocol error, and the close.
    common::raw::send(&mut s, json!({"type":"exec","id":3,"cmd":"sleep 5"}), b"").await;
    common::raw::send(&mut s, json!({"type":"window","id":3,"output":1}), b"").await;
    let mut refused = None;
    while let Some((h, _)) = common::raw::recv(&mut s).await {
        if h["type"] == "error" {
            refused = Some(h);
        }
    }
    assert_eq!(refused.expect("an error")["code"], "protocol");
    // A window that cannot hold a frame is refused at the handshake.
    let mut s = TcpStream::connect(fx.srv.exec).await.unwrap();
    let refused = with_output_window(&fx, &mut s, 1_000).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("protocol"))
    );
}

/// Sends `r` and gathers the job's frames: (stdout and stderr bytes
/// received, exit status, reason, dropped).
async fn run_capped(c: ExecClient, r: ExecRequest) -> (usize, ExitStatus, Option<String>, u64) {
    let (mut tx, mut rx) = c.split();
    let id = r.id;
    tx.send(ClientMsg::Exec(r)).await.unwrap();
    let mut got = 0;
    tokio::time::timeout(T, async {
        loop {
            match rx.recv().await.unwrap().unwrap() {
                ServerMsg::Started { .. } => {}
                ServerMsg::Stdout { data, .. } | ServerMsg::Stderr { data, .. } => {
                    got += data.len()
                }
                ServerMsg::Exit {
                    id: i,
                    status,
                    reason,
                    dropped,
                } => {
                    assert_eq!(i, id);
                    return (got, status, reason, dropped);
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap()
}

/// Past its `max_output` a job's output is dropped and counted, stdout and
/// stderr together, and the job runs on to its end (the line it writes to
/// a file after the flood is there).
#[tokio::test]
async fn a_job_past_max_output_runs_on_and_its_exit_counts_the_rest() {
    let fx = Fixture::new().await;
    let marker = fx.dir.path().join("finished");
    let mut r = req(
        1,
        &format!(
            "head -c 6000000 /dev/zero; head -c 4485760 /dev/zero >&2; echo done > {}",
            marker.display()
        ),
    );
    r.output.max_output = Some(1 << 20);
    let (got, status, reason, dropped) = run_capped(fx.client().await, r).await;
    assert_eq!(got, 1 << 20, "exactly max_output was sent");
    assert_eq!(dropped, 10_485_760 - (1 << 20));
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(reason, None);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done\n");

    // Output of exactly max_output: nothing dropped.
    let mut r = req(2, "head -c 1000 /dev/zero");
    r.output.max_output = Some(1000);
    let (got, _, _, dropped) = run_capped(fx.client().await, r).await;
    assert_eq!((got, dropped), (1000, 0));
}

/// With `max_output_kill` the job is stopped once it passes the cap: an
/// endless `yes` ends by SIGTERM, and the exit says why.
#[tokio::test]
async fn max_output_kill_stops_the_job() {
    let fx = Fixture::new().await;
    let mut r = req(1, "yes");
    r.output.max_output = Some(65_536);
    r.output.max_output_kill = true;
    let (got, status, reason, dropped) = run_capped(fx.client().await, r).await;
    assert_eq!(got, 65_536);
    assert!(dropped > 0);
    assert_eq!(status, signal("TERM", false));
    assert_eq!(reason.as_deref(), Some("output past max_output"));
}

/// The server's `exec.max_output` is the most any request gets: one asking
/// nothing or more gets it, one asking less gets what it asked.
#[tokio::test]
async fn the_servers_max_output_bounds_every_request() {
    let fx = Fixture::with(|c| c.exec.max_output = 100_000).await;
    for (id, asked, sent) in [
        (1, None, 100_000),
        (2, Some(50_000), 50_000),
        (3, Some(1 << 30), 100_000),
    ] {
        let mut r = req(id, "head -c 300000 /dev/zero");
        r.output.max_output = asked;
        let (got, status, _, dropped) = run_capped(fx.client().await, r).await;
        assert_eq!(
            (got, dropped),
            (sent, 300_000 - sent as u64),
            "asked {asked:?}"
        );
        assert_eq!(status, ExitStatus::Code(0));
    }
}
