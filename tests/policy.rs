//! Findings of the security review (issue #10), each shown closed over real
//! loopback sockets and real processes: the allow-list and the environment
//! (3), legacy-mode audit records (8), the metrics connection cap (6), and
//! the modes of token files and TLS keys (10).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::{bin, exec_config, spawn_serve, start};
use switchboard::ServerConfig;
use switchboard::client::{ClientAuth, ClientError, ExecClient, Output};
use switchboard::endpoint::Transport;
use switchboard::proto::{Command, ErrorCode, ExecRequest, ExitStatus};

const T: Duration = Duration::from_secs(10);
/// Echo and time on port 0, so that binaries started here never collide.
const QUIET: [&str; 4] = ["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"];

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An executable script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    chmod(&p, 0o755);
    p
}

fn argv(id: u64, words: &[&str], env: &[(&str, &str)]) -> ExecRequest {
    let mut r = ExecRequest::shell(id, "");
    r.command = Command::Argv(words.iter().map(|w| w.to_string()).collect());
    for (k, v) in env {
        r.env.insert(k.to_string(), v.to_string());
    }
    r
}

fn is_forbidden(r: &Result<Output, ClientError>) -> bool {
    matches!(
        r,
        Err(ClientError::Job {
            code: ErrorCode::Forbidden,
            ..
        })
    )
}

/// An in-process exec server configured by `f`, and a client of it.
async fn policy_server(
    f: impl FnOnce(&mut ServerConfig),
) -> (common::TestServer, ExecClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    f(&mut cfg);
    let srv = start(cfg).await;
    let token = switchboard::secrets::read_token(&dir.path().join("token")).unwrap();
    let c = ExecClient::connect(&srv.exec.to_string(), &ClientAuth::token(token), T)
        .await
        .unwrap();
    (srv, c, dir)
}

// ---- 3. The allow-list and the environment -------------------------------

/// An allowed bash script cannot be made to run other code through
/// `BASH_ENV` or an exported function (`BASH_FUNC_echo%%`).
#[tokio::test]
async fn an_allowed_bash_script_cannot_be_hijacked_through_bash_env_or_functions() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("hijacked");
    let allowed = script(work.path(), "report", "#!/bin/bash\necho report\n");
    let evil = script(
        work.path(),
        "evil",
        // A shell builtin: works whatever PATH the job has.
        &format!(": > {}\n", marker.display()),
    );
    let allowed_s = allowed.to_str().unwrap().to_string();
    let (srv, mut c, _dir) = policy_server(|cfg| {
        cfg.exec.allowed_programs = vec![allowed_s.clone()];
    })
    .await;
    let ok = c.run_request(argv(1, &[&allowed_s], &[])).await.unwrap();
    assert_eq!(ok.stdout, b"report\n");

    let bash_env = [("BASH_ENV", evil.to_str().unwrap())];
    let r = c.run_request(argv(2, &[&allowed_s], &bash_env)).await;
    assert!(
        is_forbidden(&r),
        "BASH_ENV: {r:?}, ran: {}",
        marker.exists()
    );
    let func = format!("() {{ : > {}; }}", marker.display());
    let r = c
        .run_request(argv(3, &[&allowed_s], &[("BASH_FUNC_echo%%", &func)]))
        .await;
    assert!(
        is_forbidden(&r),
        "BASH_FUNC_echo%%: {r:?}, ran: {}",
        marker.exists()
    );
    assert!(!marker.exists(), "other code ran under the allow-list");
    assert_eq!(srv.stats.exec.forbidden.get(), 2);
}

#[tokio::test]
async fn an_allow_list_refuses_ld_preload() {
    let (srv, mut c, _dir) = policy_server(|cfg| {
        cfg.exec.allowed_programs = vec!["true".into()];
    })
    .await;
    let r = c
        .run_request(argv(1, &["true"], &[("LD_PRELOAD", "/tmp/x.so")]))
        .await;
    assert!(is_forbidden(&r), "{r:?}");
    assert_eq!(srv.stats.exec.jobs_started.get(), 0);
}

/// A request's PATH neither passes by default nor, when accepted, chooses
/// which file an allowed bare name runs; without an allow-list either.
#[tokio::test]
async fn a_requests_path_does_not_choose_the_program() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("fake-true-ran");
    script(
        work.path(),
        "true",
        &format!("#!/bin/sh\n: > {}\nexit 42\n", marker.display()),
    );
    let path = [("PATH", work.path().to_str().unwrap())];

    // Allow-list, nothing accepted: the PATH itself is refused.
    let (_srv, mut c, _dir) = policy_server(|cfg| {
        cfg.exec.allowed_programs = vec!["true".into()];
    })
    .await;
    let r = c.run_request(argv(1, &["true"], &path)).await;
    assert!(is_forbidden(&r), "{r:?}, fake ran: {}", marker.exists());

    // Allow-list accepting PATH: the job gets it, the real `true` runs.
    let (_srv, mut c, _dir) = policy_server(|cfg| {
        cfg.exec.allowed_programs = vec!["true".into()];
        cfg.exec.accept_env = vec!["PATH".into()];
    })
    .await;
    let out = c.run_request(argv(1, &["true"], &path)).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));

    // No allow-list: the same lookup in the server's PATH.
    let (_srv, mut c, _dir) = policy_server(|_| {}).await;
    let out = c.run_request(argv(1, &["true"], &path)).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert!(!marker.exists(), "the request's PATH chose the program");
}

#[tokio::test]
async fn accept_env_lets_named_variables_through() {
    let (_srv, mut c, _dir) = policy_server(|cfg| {
        cfg.exec.allowed_programs = vec!["printenv".into()];
        cfg.exec.accept_env = vec!["SB_*".into(), "LANG".into()];
    })
    .await;
    let out = c
        .run_request(argv(
            1,
            &["printenv", "SB_GREETING", "LANG"],
            &[("SB_GREETING", "hello"), ("LANG", "C")],
        ))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hello\nC\n");
    let r = c
        .run_request(argv(2, &["printenv"], &[("SB_OK", "1"), ("LANGUAGE", "x")]))
        .await;
    assert!(is_forbidden(&r), "{r:?}");
}

/// The same through the binary's flags: `--allow-program`, `--accept-env`.
#[test]
fn the_accept_env_flag_reaches_the_policy() {
    let mut args = QUIET.to_vec();
    args.extend(["--allow-program", "printenv", "--accept-env", "SB_*"]);
    let srv = spawn_serve(&args);
    common::runtime().block_on(async {
        let mut c = srv.exec_client().await;
        let out = c
            .run_request(argv(1, &["printenv", "SB_X"], &[("SB_X", "y")]))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"y\n");
        let r = c
            .run_request(argv(2, &["printenv"], &[("LD_PRELOAD", "x")]))
            .await;
        assert!(is_forbidden(&r), "{r:?}");
    });
}

#[test]
fn allow_list_entries_are_bare_names_or_absolute_paths() {
    for bad in ["./x", "bin/x", ""] {
        let toml = format!("[exec]\nallowed_programs = [{bad:?}]\n");
        assert!(ServerConfig::from_toml(&toml).is_err(), "{bad:?} accepted");
    }
    for good in ["uptime", "/usr/bin/df"] {
        let toml = format!("[exec]\nallowed_programs = [{good:?}]\n");
        assert!(ServerConfig::from_toml(&toml).is_ok(), "{good:?} refused");
    }
    assert!(ServerConfig::from_toml("[exec]\naccept_env = [\"A=B\"]\n").is_err());
    let o = Process::new(bin())
        .args(["serve", "--check-config", "--allow-program", "./x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bare name or an absolute path"), "{err}");
}

// ---- 8. Legacy mode: escaped, audited -------------------------------------

/// One legacy command: the reply's bytes.
fn legacy_request(addr: &str, command: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(command).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let n = usize::try_from(i32::from_le_bytes(len)).unwrap();
    let mut reply = vec![0u8; n];
    s.read_exact(&mut reply).unwrap();
    reply
}

#[test]
fn legacy_commands_are_audited_once_and_cannot_forge_log_lines() {
    let mut args = QUIET.to_vec();
    args.extend(["--exec-legacy", "127.0.0.1:0"]);
    let srv = spawn_serve(&args);
    let addr = srv.addr("exec-legacy", Transport::Tcp);
    // The second line is what an attacker would like the log to show; to
    // the shell it is just a command that is not found.
    let forged = "FORGED 2026-01-01T00:00:00Z INFO switchboard::audit: job who=admin";
    let reply = legacy_request(&addr, format!("echo hi\n{forged}\n").as_bytes());
    assert!(
        reply.starts_with(b"hi\n"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // Bounded wait for the records, which are written after the reply.
    let ended = srv.wait_audit(1, |r| r["audit"] == "job_ended");
    let log = srv.log();
    assert_eq!(ended.len(), 1, "{log}");
    let record = &ended[0];
    assert_eq!(record["via"], "legacy", "{record}");
    assert_eq!(
        record["argv"],
        serde_json::json!(["/bin/sh", "-c", format!("echo hi\n{forged}\n")]),
        "{record}"
    );
    // One start and one end: every JSON line of the log is a whole record.
    assert_eq!(srv.audit().len(), 2, "{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "forged line in the log:\n{log}"
        );
    }
}

// ---- 6. The metrics listener is capped ------------------------------------

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One scrape: the status line, or None if the server closed at once.
fn scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .map(String::from)
}

#[test]
fn silent_metrics_connections_are_capped_and_a_scrape_still_answers() {
    let mut args = QUIET.to_vec();
    args.extend(["--metrics", "127.0.0.1:0"]);
    let srv = spawn_serve(&args);
    let metrics = srv.addr("metrics", Transport::Tcp);
    let exec = srv.addr("exec", Transport::Tcp);
    let pid = srv.child.id();
    let baseline = open_fds(pid);
    assert!(baseline > 0);

    let mut silent = Vec::new();
    for _ in 0..600 {
        silent.push(std::net::TcpStream::connect(&metrics).unwrap());
    }
    // The server takes them off the backlog quickly; watch its descriptors
    // for a while: the most it ever holds stays near the cap.
    let cap = switchboard::server::metrics::MAX_CONNECTIONS;
    let mut most = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        most = most.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        most <= baseline + cap + 16,
        "the server held {most} descriptors (baseline {baseline}, cap {cap})"
    );

    // Exec is unaffected while they are held.
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = common::runtime();
    let out = rt.block_on(async {
        let mut c = ExecClient::connect(&exec, &ClientAuth::token(token), T)
            .await
            .unwrap();
        c.run("echo alive").await.unwrap()
    });
    assert_eq!(out.stdout, b"alive\n");

    // A scrape answers once the silent ones reach their deadline (bounded).
    let mut answered = None;
    for _ in 0..100 {
        answered = scrape(&metrics);
        if answered.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(answered.as_deref(), Some("HTTP/1.1 200 OK"));
    drop(silent);
    assert!(open_fds(pid) <= baseline + cap + 16);
}

// ---- 10. Token files and TLS keys must be private -------------------------

/// Runs the binary with HOME in `home`; waits at most `limit` for it to
/// exit, else kills it by its PID. Returns (exited, status ok, stderr).
fn run_bounded(home: &Path, args: &[&str], limit: Duration) -> (bool, bool, String) {
    let err_path = home.join(format!("stderr-{}", std::process::id()));
    let err = std::fs::File::create(&err_path).unwrap();
    let mut child = Process::new(bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut status = None;
    while start.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        // Still running past the limit (a server that started): stop it.
        let _ = child.kill();
    }
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (
        status.is_some(),
        status.is_some_and(|s| s.success()),
        stderr,
    )
}

#[test]
fn a_token_file_others_can_read_is_refused_by_server_and_client() {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, "shared-secret\n").unwrap();
    chmod(&token, 0o644);
    let tok = token.to_str().unwrap();
    let mut serve = vec!["serve"];
    serve.extend(QUIET);
    serve.extend([
        "--exec",
        "tcp://127.0.0.1:0",
        "--allow-root",
        "--token-file",
        tok,
    ]);
    let (exited, ok, err) = run_bounded(home.path(), &serve, T);
    assert!(exited && !ok, "the server started with a 0644 token: {err}");
    assert!(err.contains(&format!("chmod 600 {tok}")), "{err}");
    // One line says what is wrong and how to fix it.
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("token file")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].starts_with("switchboard: "), "{err}");

    // 0600: the server starts; a client with the same file at 0644 is refused.
    chmod(&token, 0o600);
    let mut args = QUIET.to_vec();
    args.extend(["--token-file", tok]);
    let srv = spawn_serve(&args);
    let addr = srv.addr("exec", Transport::Tcp);
    let client_tok = home.path().join("client-token");
    std::fs::write(&client_tok, "shared-secret\n").unwrap();
    chmod(&client_tok, 0o644);
    let ct = client_tok.to_str().unwrap();
    let exec = ["exec", addr.as_str(), "--token-file", ct, "--", "true"];
    let (exited, ok, err) = run_bounded(home.path(), &exec, T);
    assert!(exited && !ok, "the client used a 0644 token: {err}");
    assert!(err.contains(&format!("chmod 600 {ct}")), "{err}");
    chmod(&client_tok, 0o600);
    let (exited, ok, err) = run_bounded(home.path(), &exec, T);
    assert!(exited && ok, "{err}");
}

#[test]
fn a_tls_key_others_can_read_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let (cert_path, key_path) = (home.path().join("cert.pem"), home.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    chmod(&key_path, 0o640);
    let (c, k) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let tls = [
        "--exec",
        "tls://127.0.0.1:0",
        "--tls-cert",
        c,
        "--tls-key",
        k,
    ];
    let mut serve = vec!["serve"];
    serve.extend(QUIET);
    serve.extend(tls);
    serve.push("--allow-root");
    let (exited, ok, err) = run_bounded(home.path(), &serve, T);
    assert!(exited && !ok, "the server started with a 0640 key: {err}");
    assert!(err.contains(&format!("chmod 600 {k}")), "{err}");

    chmod(&key_path, 0o600);
    let mut args = QUIET.to_vec();
    args.extend(tls);
    let srv = spawn_serve(&args);
    assert!(
        srv.banner.iter().any(|l| l.contains("tls://127.0.0.1:")),
        "{:?}",
        srv.banner
    );
}

#[test]
fn secret_files_must_be_plain_files_of_their_owner_and_check_config_reads_them() {
    let home = tempfile::tempdir().unwrap();
    let serve_with = |token: &Path, extra: &[&str]| {
        let mut args = vec!["serve"];
        args.extend(QUIET);
        args.extend([
            "--exec",
            "tcp://127.0.0.1:0",
            "--allow-root",
            "--token-file",
        ]);
        args.push(token.to_str().unwrap());
        args.extend(extra);
        run_bounded(home.path(), &args, T)
    };
    // A FIFO: refused at once, not a server hung in open() until a writer
    // comes (and then trusting whatever it wrote).
    let fifo = home.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (exited, ok, err) = serve_with(&fifo, &[]);
    assert!(exited && !ok, "FIFO token: {err}");
    assert!(err.contains("not a regular file"), "{err}");

    // Owned by someone else (even at 0600): that user could rewrite it.
    let owned = home.path().join("owned");
    std::fs::write(&owned, "shared-secret\n").unwrap();
    chmod(&owned, 0o600);
    std::os::unix::fs::chown(&owned, Some(65534), None).unwrap();
    let (exited, ok, err) = serve_with(&owned, &[]);
    assert!(exited && !ok, "foreign token: {err}");
    assert!(err.contains("belongs to uid 65534"), "{err}");

    // --check-config reads an existing token as a start would.
    let loose = home.path().join("loose");
    std::fs::write(&loose, "shared-secret\n").unwrap();
    chmod(&loose, 0o644);
    let (exited, ok, err) = serve_with(&loose, &["--check-config"]);
    assert!(exited && !ok, "--check-config passed a 0644 token: {err}");
    assert!(err.contains("chmod 600"), "{err}");
    // A missing one is fine there: a start creates it.
    let (exited, ok, err) = serve_with(&home.path().join("new"), &["--check-config"]);
    assert!(exited && ok, "{err}");
}

#[test]
fn every_refused_exec_request_leaves_an_audit_record() {
    let srv = spawn_serve(&QUIET);
    let addr: std::net::SocketAddr = srv.addr("exec", Transport::Tcp).parse().unwrap();
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = common::runtime();
    rt.block_on(async {
        let mut s = common::raw::authed(addr, &token).await;
        for frame in [
            serde_json::json!({"type":"exec","id":1,"cmd":"sleep 5","env":{"SECRET_NAME":"hunter2"}}),
            // The same id again: duplicate_id.
            serde_json::json!({"type":"exec","id":1,"cmd":"true"}),
            // Neither cmd nor argv: bad_request, before any command is known.
            serde_json::json!({"type":"exec","id":2}),
        ] {
            common::raw::send(&mut s, frame, b"").await;
        }
        let mut codes = Vec::new();
        while codes.len() < 2 {
            let (h, _) = common::raw::recv(&mut s).await.expect("a frame");
            if h["type"] == "error" {
                codes.push(h["code"].as_str().unwrap_or("").to_string());
            }
        }
        assert_eq!(codes, ["duplicate_id", "bad_request"]);
    });
    let refused = srv.wait_audit(2, |r| r["audit"] == "refused");
    let log = srv.log();
    let codes: Vec<_> = refused.iter().map(|r| r["code"].as_str()).collect();
    assert_eq!(codes, [Some("duplicate_id"), Some("bad_request")], "{log}");
    assert_eq!(refused[0]["argv"][2], "true", "{log}");
    assert_eq!(
        refused[1]["id"], 2,
        "the id is kept when it can be read: {log}"
    );
    // The job that ran: its start names its variables, never their values.
    let started = srv.wait_audit(1, |r| r["audit"] == "job_started");
    assert_eq!(
        started[0]["env"],
        serde_json::json!(["SECRET_NAME"]),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
}
