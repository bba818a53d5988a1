//! The audit trail as operators read it: a file of JSON lines, written
//! whatever the log level, with typed fields and server-wide job numbers,
//! reopened on SIGHUP after logrotate moved it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{runtime, spawn_serve_env};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchboard::client::{ClientAuth, ClientError, ExecClient, JobEvent};
use switchboard::endpoint::Transport;
use switchboard::proto::auth::Token;
use switchboard::proto::{ClientMsg, Command, ExecRequest};

const T: Duration = Duration::from_secs(10);

/// Every record in the file, each line parsed on its own.
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Waits until the file holds `n` records of kind `audit`.
fn wait_for(path: &Path, audit: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let found: Vec<Value> = records(path)
            .into_iter()
            .filter(|r| r["audit"] == audit)
            .collect();
        if found.len() >= n || start.elapsed() > T {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_trail_is_typed_json_numbered_across_connections_and_survives_quiet_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = dir.path().join("audit.log");
    let srv = spawn_serve_env(
        &[
            "-q",
            "--echo",
            "none",
            "--time",
            "none",
            "--exec-legacy",
            "127.0.0.1:0",
            "--forbid-env",
            "--audit-log",
            trail.to_str().expect("path"),
        ],
        &[("RUST_LOG", "off")],
    );
    assert_eq!(
        std::fs::metadata(&trail)
            .expect("created at start")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let addr = srv.addr("exec", Transport::Tcp);
    let mut jobs_told = Vec::new();
    runtime().block_on(async {
        // Two connections, ids 1 and 2 on each: the job numbers still
        // tell the four apart.
        for _ in 0..2 {
            let (mut tx, mut rx) = srv.exec_client().await.split();
            let mut timed = ExecRequest::shell(2, "sleep 5");
            timed.timeout_ms = Some(100);
            let mut on_tty = ExecRequest::shell(1, "exit 3");
            on_tty.pty = Some(Default::default());
            for req in [on_tty, timed] {
                tx.send(ClientMsg::Exec(req)).await.expect("send");
            }
            let mut ended = 0;
            while ended < 2 {
                match rx.event().await.expect("event").expect("open") {
                    (_, JobEvent::Started { job, .. }) => jobs_told.push(job.expect("job")),
                    (_, JobEvent::Exit { .. }) => ended += 1,
                    _ => {}
                }
            }
        }
        // Refused by the policy, and a failed login.
        let mut c = srv.exec_client().await;
        let mut req = ExecRequest::shell(9, "env");
        req.env.insert("SECRET_NAME".into(), "hunter2".into());
        assert!(matches!(
            c.run_request(req).await,
            Err(ClientError::Job { .. })
        ));
        let wrong = ClientAuth::token(Token::new("not the token").expect("token"));
        assert!(ExecClient::connect(&addr, &wrong, T).await.is_err());
    });
    // A legacy job.
    {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(srv.addr("exec-legacy", Transport::Tcp)).expect("connect");
        s.write_all(b"echo legacy").expect("send");
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("reply");
    }

    let ended = wait_for(&trail, "job_ended", 5);
    assert_eq!(ended.len(), 5, "{:?}", records(&trail));
    let started = wait_for(&trail, "job_started", 5);
    let mut numbers: Vec<u64> = started
        .iter()
        .map(|r| r["job"].as_u64().expect("job"))
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 5, "a number per job: {started:?}");
    jobs_told.sort_unstable();
    assert!(
        jobs_told.iter().all(|j| numbers.contains(j)),
        "{jobs_told:?} {numbers:?}"
    );

    let native: Vec<&Value> = ended.iter().filter(|r| r["via"] == "native").collect();
    let exit3 = native.iter().find(|r| r["exit_code"] == 3).expect("exit 3");
    assert_eq!(exit3["argv"], json!(["/bin/sh", "-c", "exit 3"]));
    assert_eq!(
        (exit3["shell"].as_bool(), exit3["tty"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(exit3["timed_out"], false);
    assert!(exit3["who"].as_str().expect("who").starts_with("token:"));
    assert!(
        exit3["peer"]
            .as_str()
            .expect("peer")
            .starts_with("127.0.0.1:")
    );
    let timed = native
        .iter()
        .find(|r| r["timed_out"] == true)
        .expect("timed out");
    assert_eq!(timed["signal"], "TERM", "{timed}");
    assert!(timed.get("exit_code").is_none(), "{timed}");
    assert!(timed["duration_ms"].as_u64().expect("ms") >= 100);
    for r in &ended {
        for field in ["stdout_bytes", "stderr_bytes", "pid", "id"] {
            assert!(r[field].is_u64(), "{field} in {r}");
        }
        assert!(r["ts"].as_str().expect("ts").ends_with('Z'), "{r}");
    }
    let legacy = ended.iter().find(|r| r["via"] == "legacy").expect("legacy");
    assert_eq!(
        (legacy["who"].as_str(), legacy["exit_code"].as_i64()),
        (Some("none"), Some(0))
    );

    let refused = wait_for(&trail, "refused", 1);
    assert_eq!(refused[0]["code"], "forbidden", "{refused:?}");
    assert_eq!(refused[0]["env"], json!(["SECRET_NAME"]));
    let failed = wait_for(&trail, "login_failed", 1);
    assert_eq!(failed[0]["message"], "the token was not accepted");
    assert!(
        !std::fs::read_to_string(&trail)
            .expect("trail")
            .contains("hunter2")
    );
    // -q and RUST_LOG=off silenced the log, not the trail.
    assert!(!srv.log().contains("job_"), "{}", srv.log());
}

#[test]
fn sighup_reopens_the_trail_after_logrotate_moved_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let srv = spawn_serve_env(
        &[
            "--echo",
            "none",
            "--time",
            "none",
            "--audit-log",
            trail.to_str().expect("path"),
        ],
        &[],
    );
    let run = |cmd: &'static str| {
        runtime().block_on(async {
            let mut c = srv.exec_client().await;
            let req = ExecRequest {
                command: Command::Argv(vec!["echo".into(), cmd.into()]),
                ..ExecRequest::shell(c.next_id(), "")
            };
            c.run_request(req).await.expect("job");
        })
    };
    run("before");
    assert_eq!(wait_for(&trail, "job_ended", 1).len(), 1);
    std::fs::rename(&trail, &rotated).expect("rotate");
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_log("configuration reloaded", 1), "{}", srv.log());
    run("after");
    let after = wait_for(&trail, "job_ended", 1);
    assert_eq!(after.len(), 1, "{}", srv.log());
    assert_eq!(after[0]["argv"][1], "after");
    let old = records(&rotated);
    assert!(old.iter().all(|r| r["argv"][1] == "before"), "{old:?}");
}

#[test]
fn check_config_refuses_a_trail_that_cannot_be_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = dir.path().join("no/such/dir/audit.log");
    let o = common::client(
        &[
            "serve",
            "--check-config",
            "--exec",
            "none",
            "--audit-log",
            nowhere.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("audit log"),
        "{}",
        common::stderr(&o)
    );
    assert!(!nowhere.exists());
}

/// The trail is often in a directory others can write to: a link planted
/// there, a FIFO, a file others may write or read, or another user's file
/// is refused, by --check-config and at start alike, never followed,
/// appended to or waited on.
#[test]
fn a_trail_that_is_a_link_a_fifo_or_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched\n").expect("write");
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let fifo = dir.path().join("fifo.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let open = dir.path().join("open.log");
    std::fs::write(&open, "").expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cases = vec![
        (link, "audit log"),
        (fifo, "cannot open the audit log"),
        (open, "chmod 640"),
    ];
    if nix::unistd::Uid::effective().is_root() {
        let foreign = dir.path().join("foreign.log");
        std::fs::write(&foreign, "").expect("write");
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        cases.push((foreign, "belongs to uid 65534"));
    } else {
        eprintln!("SKIPPED the other user's file: not root");
    }
    for (path, says) in cases {
        let p = path.to_str().expect("path");
        for args in [
            &[
                "serve",
                "--check-config",
                "--exec",
                "none",
                "--audit-log",
                p,
            ][..],
            &[
                "serve",
                "--echo",
                "127.0.0.1:0",
                "--time",
                "none",
                "--exec",
                "none",
                "--audit-log",
                p,
            ],
        ] {
            let start = Instant::now();
            let o = common::client(args, None);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{p} {args:?}: {}",
                common::stderr(&o)
            );
            assert!(
                common::stderr(&o).contains(says),
                "{p}: {}",
                common::stderr(&o)
            );
            assert!(start.elapsed() < T, "{p}: the open waited");
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    // A group-readable file of our own is fine (logrotate's 0640).
    let ok = dir.path().join("ok.log");
    std::fs::write(&ok, "").expect("write");
    std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let o = common::client(
        &[
            "serve",
            "--check-config",
            "--exec",
            "none",
            "--audit-log",
            ok.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
}
