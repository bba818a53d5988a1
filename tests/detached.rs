//! Detached jobs (PROTOCOL.md §3.10, issue 18 item 4) over real sockets
//! and real processes: a job that outlives its connection, its output
//! kept in a bounded buffer, re-attached to by its owner only, stopped,
//! expired, and stopped when its owner is no longer accepted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    client_in, exec_config, exec_status, key_auth, new_key, public, start, stderr, stdout,
    write_private,
};
use switchboard::client::{ClientAuth, ExecClient, JobEvent, JobFailure};
use switchboard::endpoint::Transport;
use switchboard::identity::AuthMode;
use switchboard::proto::jobs::{AttachRequest, JobInfo, JobState, KillRequest};
use switchboard::proto::{ClientMsg, ErrorCode, ExecRequest, ExitStatus};

const T: Duration = Duration::from_secs(10);

fn token_auth(dir: &Path) -> ClientAuth {
    ClientAuth::token(switchboard::secrets::read_token(&dir.join("token")).unwrap())
}

async fn connect(addr: &str, auth: &ClientAuth) -> ExecClient {
    ExecClient::connect(addr, auth, T).await.expect("connect")
}

/// Starts `cmd` detached under request `id`: its ID and pid.
async fn detach(c: &mut ExecClient, id: u64, req: ExecRequest) -> (String, u32) {
    let req = ExecRequest {
        id,
        detach: true,
        ..req
    };
    c.sender().send(ClientMsg::Exec(req)).await.unwrap();
    match c.receiver().job_event(id).await.unwrap() {
        JobEvent::Started {
            detached: Some(d),
            pid,
            ..
        } => (d, pid),
        other => panic!("not detached: {other:?}"),
    }
}

/// The caller's detached jobs.
async fn jobs(c: &mut ExecClient, id: u64) -> Vec<JobInfo> {
    c.sender().send(ClientMsg::Jobs { id }).await.unwrap();
    c.receiver().jobs_answer(id).await.unwrap().expect("jobs")
}

/// Attaches request `id` to job `detached`.
async fn attach(c: &mut ExecClient, id: u64, detached: &str) -> Result<JobInfo, JobFailure> {
    let req = AttachRequest {
        id,
        detached: detached.into(),
        timestamps: false,
    };
    c.sender().send(ClientMsg::Attach(req)).await.unwrap();
    match c.receiver().job_event(id).await.unwrap() {
        JobEvent::Attached(info) => Ok(info),
        JobEvent::Failed(f) => Err(f),
        other => panic!("not attached: {other:?}"),
    }
}

async fn kill(c: &mut ExecClient, id: u64, detached: &str) -> Result<Vec<JobInfo>, JobFailure> {
    let req = KillRequest {
        id,
        detached: detached.into(),
    };
    c.sender().send(ClientMsg::Kill(req)).await.unwrap();
    c.receiver().jobs_answer(id).await.unwrap()
}

/// What an attachment gets until `until` holds of its stdout (or its
/// end): stdout, stderr, and its end if it came.
struct Followed {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    end: Option<Result<(ExitStatus, u64), JobFailure>>,
    /// The exit's `reason`.
    reason: Option<String>,
}

async fn follow(c: &mut ExecClient, id: u64, until: impl Fn(&[u8]) -> bool) -> Followed {
    let mut f = Followed {
        stdout: Vec::new(),
        stderr: Vec::new(),
        end: None,
        reason: None,
    };
    tokio::time::timeout(T, async {
        while !until(&f.stdout) {
            match c.receiver().job_event(id).await.unwrap() {
                JobEvent::Stdout(d, _) => f.stdout.extend_from_slice(&d),
                JobEvent::Stderr(d, _) => f.stderr.extend_from_slice(&d),
                JobEvent::Exit {
                    status,
                    dropped,
                    reason,
                } => {
                    f.end = Some(Ok((status, dropped)));
                    f.reason = reason;
                    return;
                }
                JobEvent::Failed(e) => {
                    f.end = Some(Err(e));
                    return;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the attachment got what it waited for in time");
    f
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Waits until `cond` holds of the caller's jobs (polled), or panics.
async fn wait_jobs(c: &mut ExecClient, what: &str, cond: impl Fn(&[JobInfo]) -> bool) {
    let start = std::time::Instant::now();
    let mut n = 1000;
    loop {
        n += 1;
        let j = jobs(c, n).await;
        if cond(&j) {
            return;
        }
        assert!(start.elapsed() < T, "{what}: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first test: detach, disconnect, re-attach, and see the
/// whole buffered output, then live output, then the exit.
#[tokio::test]
async fn detach_disconnect_reattach_gets_the_buffer_then_live_output() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(exec_config(dir.path())).await;
    let addr = srv.exec.to_string();
    let auth = token_auth(dir.path());
    let go = dir.path().join("go");
    let cmd = format!(
        "echo one; echo two >&2; while [ ! -e {} ]; do sleep 0.02; done; echo three; exit 7",
        go.display()
    );
    let mut c = connect(&addr, &auth).await;
    let (id, pid) = detach(&mut c, 1, ExecRequest::shell(0, &cmd)).await;
    assert_eq!(id.len(), 32, "{id}");
    // Nothing more comes for request 1: it is free again at once.
    let (id2, pid2) = detach(&mut c, 1, ExecRequest::shell(0, "sleep 30")).await;
    assert_ne!(id, id2);
    drop(c);
    // The connection is gone; the jobs are not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(pid) && alive(pid2),
        "a detached job died with its connection"
    );

    let mut c = connect(&addr, &auth).await;
    wait_jobs(&mut c, "one's output kept", |j| {
        j.iter().any(|j| j.detached == id && j.buffered == 8)
    })
    .await;
    let listed = jobs(&mut c, 2).await;
    assert_eq!(
        listed
            .iter()
            .map(|j| j.detached.as_str())
            .collect::<Vec<_>>(),
        [id.as_str(), id2.as_str()],
        "oldest first"
    );
    let info = attach(&mut c, 3, &id[..8]).await.expect("attach by prefix");
    assert_eq!(
        (info.state, info.pid, info.lost),
        (JobState::Running, pid, 0)
    );
    let f = follow(&mut c, 3, |out| out == b"one\n").await;
    assert_eq!(f.stdout, b"one\n");
    std::fs::write(&go, "").unwrap();
    let f = follow(&mut c, 3, |_| false).await;
    assert_eq!(f.stdout, b"three\n", "live output after the buffer");
    assert!(
        matches!(f.end, Some(Ok((ExitStatus::Code(7), 0)))),
        "{:?}",
        f.end.map(|e| e.map(|x| x.0))
    );

    // Ended, it stays listed with its status until forgotten.
    let j = jobs(&mut c, 4).await;
    let one = j.iter().find(|j| j.detached == id).expect("listed");
    assert_eq!(
        (one.state, one.code, one.attached),
        (JobState::Exited, Some(7), false)
    );
    // A second attach replays it whole, with its end.
    attach(&mut c, 5, &id).await.expect("attach again");
    let f = follow(&mut c, 5, |_| false).await;
    assert_eq!(
        (f.stdout.as_slice(), f.stderr.as_slice()),
        (&b"one\nthree\n"[..], &b"two\n"[..])
    );
    assert!(matches!(f.end, Some(Ok((ExitStatus::Code(7), 0)))));
    // Killing a running one stops it (TERM) and says so.
    let killed = kill(&mut c, 6, &id2).await.expect("kill");
    assert_eq!(killed.len(), 1);
    assert_eq!(killed[0].signal.as_deref(), Some("TERM"));
    assert_eq!(killed[0].reason.as_deref(), Some("killed (jobs --kill)"));
    assert!(!alive(pid2));
    // Killing an ended one forgets it.
    let forgotten = kill(&mut c, 7, &id).await.expect("forget");
    assert!(forgotten[0].forgotten);
    let left = jobs(&mut c, 8).await;
    assert_eq!(left.len(), 1, "{left:?}");
    srv.stop().await;
}

/// A detached job's output past its buffer: the oldest is dropped, and
/// counted, and what is kept is exactly the end of what it wrote.
#[tokio::test]
async fn a_detached_jobs_buffer_drops_the_oldest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.detached_buffer = 65_536;
    let srv = start(cfg).await;
    let mut c = connect(&srv.exec.to_string(), &token_auth(dir.path())).await;
    let (id, _) = detach(&mut c, 1, ExecRequest::shell(0, "seq 1 100000")).await;
    let all: Vec<u8> = (1..=100_000)
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect();
    wait_jobs(&mut c, "seq ended", |j| {
        j.iter().all(|j| j.state == JobState::Exited)
    })
    .await;
    let info = attach(&mut c, 2, &id).await.unwrap();
    assert!(info.lost > 0 && info.buffered <= 65_536, "{info:?}");
    assert_eq!(info.lost + info.buffered, all.len() as u64);
    let f = follow(&mut c, 2, |_| false).await;
    assert_eq!(f.stdout.len() as u64, info.buffered);
    assert!(
        all.ends_with(&f.stdout),
        "the buffer is not the end of the output"
    );
    assert!(matches!(f.end, Some(Ok((ExitStatus::Code(0), 0)))));
    srv.stop().await;
}

/// An ended job is forgotten after `exec.detached_ttl`; a running one is
/// not, however long it runs.
#[tokio::test]
async fn ended_jobs_expire_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.detached_ttl = Duration::from_secs(1);
    let srv = start(cfg).await;
    let mut c = connect(&srv.exec.to_string(), &token_auth(dir.path())).await;
    let (short, _) = detach(&mut c, 1, ExecRequest::shell(0, "true")).await;
    let (long, pid) = detach(&mut c, 2, ExecRequest::shell(0, "sleep 30")).await;
    wait_jobs(&mut c, "true ended", |j| {
        j.iter()
            .any(|j| j.detached == short && j.state == JobState::Exited)
    })
    .await;
    wait_jobs(&mut c, "true expired", |j| {
        j.iter().all(|j| j.detached != short)
    })
    .await;
    let gone = attach(&mut c, 3, &short).await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::NoSuchJob);
    // The running one is still there, past several TTLs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let j = jobs(&mut c, 4).await;
    assert!(j.iter().any(|j| j.detached == long) && alive(pid), "{j:?}");
    // The server's shutdown stops detached jobs too; a client attached
    // to one gets its exit, with the reason.
    attach(&mut c, 5, &long).await.unwrap();
    let (_, f) = tokio::join!(srv.stop(), follow(&mut c, 5, |_| false));
    assert!(
        matches!(&f.end, Some(Ok((ExitStatus::Signal { name, .. }, 0))) if name == "TERM"),
        "{:?}",
        f.end
    );
    assert_eq!(f.reason.as_deref(), Some("server shutting down"));
    assert!(
        common::wait_until(T, || !alive(pid)).await,
        "a detached job outlived the server"
    );
}

/// Limits: `exec.max_detached` per identity counts running and ended
/// jobs until forgotten; 0 turns detaching off.
#[tokio::test]
async fn max_detached_bounds_what_one_identity_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(dir.path());
    cfg.exec.max_detached = 2;
    let srv = start(cfg).await;
    let mut c = connect(&srv.exec.to_string(), &token_auth(dir.path())).await;
    let (a, _) = detach(&mut c, 1, ExecRequest::shell(0, "true")).await;
    detach(&mut c, 2, ExecRequest::shell(0, "sleep 30")).await;
    let third = ExecRequest {
        detach: true,
        ..ExecRequest::shell(3, "true")
    };
    let refused = c.run_request(third.clone()).await.unwrap_err();
    assert!(
        matches!(&refused, switchboard::client::ClientError::Job { code: ErrorCode::Busy, message, .. } if message.contains("max_detached")),
        "{refused:?}"
    );
    wait_jobs(&mut c, "true ended", |j| {
        j.iter()
            .any(|j| j.detached == a && j.state == JobState::Exited)
    })
    .await;
    kill(&mut c, 4, &a).await.unwrap();
    detach(&mut c, 5, ExecRequest::shell(0, "true")).await;
    srv.stop().await;

    let mut cfg = exec_config(dir.path());
    cfg.exec.max_detached = 0;
    let srv = start(cfg).await;
    let mut c = connect(&srv.exec.to_string(), &token_auth(dir.path())).await;
    let off = c.run_request(third).await.unwrap_err();
    assert!(
        matches!(
            &off,
            switchboard::client::ClientError::Job {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{off:?}"
    );
    srv.stop().await;
}

/// A new attachment takes the job over: the one before is told, and
/// stdin, signals and output follow the new one. Its `eof` ends the
/// job's stdin; leaving does not.
#[tokio::test]
async fn attaching_takes_over_and_carries_stdin_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(exec_config(dir.path())).await;
    let addr = srv.exec.to_string();
    let auth = ClientAuth {
        window: true,
        output_window: Some(1 << 20),
        ..token_auth(dir.path())
    };
    let mut a = connect(&addr, &auth).await;
    let req = ExecRequest {
        stdin: true,
        ..ExecRequest::shell(0, "while read -r l; do echo \"got $l\"; done; echo eof")
    };
    let (id, pid) = detach(&mut a, 1, req).await;
    let info = attach(&mut a, 2, &id).await.unwrap();
    assert!(info.stdin);
    a.sender().stdin(2, b"first\n").await.unwrap();
    let f = follow(&mut a, 2, |o| o.ends_with(b"got first\n")).await;
    assert_eq!(f.stdout, b"got first\n");

    // Another connection attaches: the first is told, and is done.
    let mut b = connect(&addr, &auth).await;
    attach(&mut b, 9, &id).await.unwrap();
    let f = follow(&mut a, 2, |_| false).await;
    match f.end {
        Some(Err(e)) => assert_eq!(e.code, ErrorCode::Detached),
        other => panic!("the first attachment was not ended: {other:?}"),
    }
    let f = follow(&mut b, 9, |o| o.ends_with(b"got first\n")).await;
    assert_eq!(f.stdout, b"got first\n", "the replay");
    // Leaving does not close the job's stdin.
    drop(b);
    let mut b = connect(&addr, &auth).await;
    attach(&mut b, 1, &id).await.unwrap();
    follow(&mut b, 1, |o| o.ends_with(b"got first\n")).await;
    b.sender().stdin(1, b"second\n").await.unwrap();
    follow(&mut b, 1, |o| o.ends_with(b"got second\n")).await;
    b.sender().send(ClientMsg::Eof { id: 1 }).await.unwrap();
    let f = follow(&mut b, 1, |_| false).await;
    assert!(
        f.stdout.ends_with(b"eof\n"),
        "{:?}",
        String::from_utf8_lossy(&f.stdout)
    );
    assert!(
        matches!(f.end, Some(Ok((ExitStatus::Code(0), 0)))),
        "{:?}",
        f.end
    );
    let all = jobs(&mut b, 2).await;
    assert!(all.iter().all(|j| !j.stdin), "{all:?}");
    assert!(!alive(pid));
    // Signals go to the job's group.
    let trap = "trap 'echo term; exit 5' TERM; echo ready; while :; do sleep 0.05; done";
    let (id, _) = detach(&mut b, 3, ExecRequest::shell(0, trap)).await;
    attach(&mut b, 4, &id).await.unwrap();
    follow(&mut b, 4, |o| o == b"ready\n").await;
    let term = ClientMsg::Signal {
        id: 4,
        signal: "TERM".into(),
    };
    b.sender().send(term).await.unwrap();
    let f = follow(&mut b, 4, |_| false).await;
    assert_eq!(f.stdout, b"term\n");
    assert!(
        matches!(f.end, Some(Ok((ExitStatus::Code(5), 0)))),
        "{:?}",
        f.end
    );
    srv.stop().await;
}

/// With identities, each sees only its own jobs: someone else's is not
/// listed, and attaching to it or killing it is answered as for a job
/// that does not exist, whole ID or prefix.
#[tokio::test]
async fn someone_elses_jobs_are_not_listed_attached_or_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (new_key(dir.path(), "alice"), new_key(dir.path(), "bob"));
    let mut cfg = exec_config(dir.path());
    cfg.exec.auth = AuthMode::Key;
    let ak = dir.path().join("authorized_keys");
    write_private(&ak, &format!("{}\n{}\n", public(&alice), public(&bob)));
    cfg.exec.authorized_keys = Some(ak);
    cfg.exec.host_key = Some(dir.path().join("host_key"));
    let srv = start(cfg).await;
    let addr = srv.exec.to_string();
    let mut a = connect(&addr, &key_auth(&alice)).await;
    let (id, pid) = detach(&mut a, 1, ExecRequest::shell(0, "sleep 30")).await;
    let mut b = connect(&addr, &key_auth(&bob)).await;
    assert!(jobs(&mut b, 1).await.is_empty());
    let made_up = "0123456789abcdef0123456789abcdef";
    for (n, target) in [id.as_str(), &id[..4], made_up].into_iter().enumerate() {
        let n = n as u64 * 2 + 2;
        let e = attach(&mut b, n, target).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchJob, "{target}");
        assert_eq!(e.message, format!("no detached job {target}"));
        let e = kill(&mut b, n + 1, target).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchJob);
    }
    assert!(alive(pid));
    assert_eq!(jobs(&mut a, 2).await.len(), 1);
    kill(&mut a, 3, &id).await.unwrap();
    assert!(!alive(pid));
    srv.stop().await;
}

/// At a reload, a detached job whose owner is no longer accepted is
/// stopped and forgotten: a revoked key's, and in token mode, the old
/// token's once it is rotated (a job is its token's: the new token does
/// not see it).
#[test]
fn a_reload_stops_the_jobs_of_owners_no_longer_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (jo, kim) = (new_key(dir.path(), "jo"), new_key(dir.path(), "kim"));
    let ak = dir.path().join("ak");
    write_private(&ak, &format!("{}\n{}\n", public(&jo), public(&kim)));
    let srv = common::spawn_key_server(&ak, &[]);
    let addr = srv.addr("exec", Transport::Tcp);
    let rt = common::runtime();
    rt.block_on(async {
        let mut j = connect(&addr, &key_auth(&jo)).await;
        let (_, jo_pid) = detach(&mut j, 1, ExecRequest::shell(0, "sleep 60")).await;
        drop(j);
        let mut k = connect(&addr, &key_auth(&kim)).await;
        let (_, kim_pid) = detach(&mut k, 1, ExecRequest::shell(0, "sleep 60")).await;
        write_private(&ak, &format!("{}\n", public(&kim)));
        srv.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(
            common::wait_until(T, || !alive(jo_pid)).await,
            "a removed key's detached job still runs"
        );
        assert!(alive(kim_pid), "kim's job was stopped too");
        // The trail says why it ended, and that it was forgotten; and kim
        // probing for it leaves a record too.
        let ended = srv.wait_audit(1, |r| {
            r["audit"] == "job_ended" && r["reason"] == "its owner is no longer accepted"
        });
        assert_eq!(ended.len(), 1, "{:?}", srv.audit());
        let jo_id = ended[0]["detached"].as_str().unwrap().to_string();
        let forgot = srv.wait_audit(1, |r| {
            r["audit"] == "detached" && r["action"] == "forget" && r["detached"] == jo_id.as_str()
        });
        assert_eq!(forgot.len(), 1, "{:?}", srv.audit());
        let probe = attach(&mut k, 2, &jo_id).await.unwrap_err();
        assert_eq!(probe.code, ErrorCode::NoSuchJob);
        let probed = srv.wait_audit(1, |r| {
            r["audit"] == "detached" && r["action"] == "attach" && r["code"] == "no_such_job"
        });
        assert_eq!(probed.len(), 1, "{:?}", srv.audit());
        // A max-jobs= a reload adds counts the detached job already
        // running (found by attack: it did not).
        write_private(&ak, &format!("max-jobs=1 {}\n", public(&kim)));
        srv.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(srv.wait_log("configuration reloaded", 2), "{}", srv.log());
        let busy = k.run("true").await.unwrap_err();
        assert!(
            matches!(&busy, switchboard::client::ClientError::Job { code: ErrorCode::Busy, message, .. } if message.contains("max-jobs")),
            "{busy:?}"
        );
    });
    drop(srv);

    let srv = common::spawn_serve(&["--echo", "none", "--time", "none"]);
    let addr = srv.addr("exec", Transport::Tcp);
    let token = srv.token_file();
    rt.block_on(async {
        let mut c = connect(&addr, &token_auth(token.parent().unwrap())).await;
        let (_, pid) = detach(&mut c, 1, ExecRequest::shell(0, "sleep 60")).await;
        drop(c);
        let new = "a-rotated-token-0123456789abcdef0123456789abcdef";
        write_private(&token, new);
        srv.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(
            common::wait_until(T, || !alive(pid)).await,
            "the old token's detached job still runs"
        );
        let new = switchboard::proto::auth::Token::new(new).unwrap();
        let mut c = connect(&addr, &ClientAuth::token(new)).await;
        assert!(jobs(&mut c, 1).await.is_empty());
    });
}

/// The command line: `exec --detach` prints the ID, `jobs` lists it,
/// `attach` follows it to its end with its exit status, `jobs --kill`
/// stops one and forgets an ended one.
#[test]
fn the_command_line_detaches_lists_attaches_and_kills() {
    let srv = common::spawn_serve(&["--echo", "none", "--time", "none"]);
    let addr = srv.addr("exec", Transport::Tcp);
    let home = srv.home.path();
    let token = srv.token_file();
    let token = token.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.splice(1..1, ["--token-file", token]);
        client_in(home, &all, None)
    };
    let go = home.join("go");
    let cmd = format!(
        "echo started; while [ ! -e {} ]; do sleep 0.02; done; echo done; exit 3",
        go.display()
    );
    let o = run(&["exec", &addr, "--detach", "--", &cmd]);
    assert_eq!(exec_status(&o), 0, "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    let o = run(&["exec", &addr, "--detach", "--", "sleep 60"]);
    let sleeper = stdout(&o).trim().to_string();

    let o = run(&["jobs", &addr]);
    let table = stdout(&o);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&id[..12]) && table.contains("running"),
        "{table}"
    );

    std::fs::write(&go, "").unwrap();
    let o = run(&["attach", &addr, &id[..6]]);
    assert_eq!(exec_status(&o), 3, "{}", stderr(&o));
    assert_eq!(stdout(&o), "started\ndone\n");

    let o = run(&["jobs", &addr, "--kill", &sleeper[..8]]);
    assert_eq!(exec_status(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("stopped: SIGTERM"), "{}", stderr(&o));
    let o = run(&["jobs", &addr, "--json"]);
    let records: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .any(|r| r["detached"] == id.as_str() && r["code"] == 3)
    );
    assert!(
        records
            .iter()
            .any(|r| r["detached"] == sleeper.as_str() && r["signal"] == "TERM")
    );
    let o = run(&["jobs", &addr, "--kill", &id, "--kill", &sleeper]);
    assert!(
        stderr(&o).matches("forgotten").count() == 2,
        "{}",
        stderr(&o)
    );
    let o = run(&["jobs", &addr, "--kill", &id]);
    assert_eq!(exec_status(&o), 1);
    assert!(stderr(&o).contains("no detached job"), "{}", stderr(&o));
    let o = run(&["attach", &addr, "nope"]);
    assert_eq!(exec_status(&o), 255);
}

/// `exec --hosts --detach`: a job detached on every host, its ID said per
/// host (`host: ID` lines, or each JSON record's `detached`), each
/// attachable there. One server on 0.0.0.0, reached as 127.0.0.1-2.
#[test]
fn fan_out_detaches_on_every_host() {
    let srv = common::spawn_serve(&[
        "--echo",
        "none",
        "--time",
        "none",
        "--exec",
        "tcp://0.0.0.0:0",
        "--allow-plaintext",
    ]);
    let port = srv
        .addr("exec", Transport::Tcp)
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap();
    let hosts = format!("127.0.0.[1-2]:{port}");
    let o = client_in(
        srv.home.path(),
        &["exec", "--hosts", &hosts, "--detach", "--", "echo from $$"],
        None,
    );
    assert_eq!(exec_status(&o), 0, "{}", stderr(&o));
    let lines: Vec<(String, String)> = stdout(&o)
        .lines()
        .map(|l| {
            let (h, id) = l.split_once(": ").expect("host: ID");
            (h.to_string(), id.to_string())
        })
        .collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&o));
    let o = client_in(
        srv.home.path(),
        &[
            "exec", "--hosts", &hosts, "--detach", "--json", "--", "true",
        ],
        None,
    );
    let records: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r["detached"].as_str().is_some_and(|d| d.len() == 32))
    );
    for (host, id) in lines {
        let o = client_in(srv.home.path(), &["attach", &host, &id], None);
        assert_eq!(exec_status(&o), 0, "{}", stderr(&o));
        assert!(stdout(&o).starts_with("from "), "{}", stdout(&o));
    }
}

/// At the server's shutdown, an attachment whose output window has run
/// out (a client that stopped taking output) still gets its job's exit
/// and the reason; the output it did not get is counted in `dropped`
/// (found by attack: it waited on a window nobody would give back, and
/// the client got no exit).
#[tokio::test]
async fn a_stalled_attachment_gets_its_exit_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(exec_config(dir.path())).await;
    let auth = ClientAuth {
        window: true,
        output_window: Some(131_072),
        ..token_auth(dir.path())
    };
    let mut c = connect(&srv.exec.to_string(), &auth).await;
    let (id, pid) = detach(&mut c, 1, ExecRequest::shell(0, "yes")).await;
    attach(&mut c, 2, &id).await.unwrap();
    // Nothing given back: the window runs out and stays out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = tokio::spawn(srv.stop());
    let f = follow(&mut c, 2, |_| false).await;
    // Closed: the server reads nothing more of it, and need not wait.
    drop(c);
    stop.await.unwrap();
    let Some(Ok((status, dropped))) = f.end else {
        panic!("no exit: {:?}", f.end);
    };
    assert!(
        matches!(&status, ExitStatus::Signal { name, .. } if name == "TERM" || name == "PIPE")
            || status == ExitStatus::Code(141),
        "{status:?}"
    );
    assert_eq!(f.reason.as_deref(), Some("server shutting down"));
    assert!(
        dropped > 0 && f.stdout.len() <= 131_072,
        "{dropped} {}",
        f.stdout.len()
    );
    assert!(!alive(pid));
}
