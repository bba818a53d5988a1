//! Job processes against the operating system (security review, issue #10):
//! the working directory entered as the job's user, orphans reaped, no
//! stray descriptors inherited, and nothing outliving a server that dies.
//! Real binary, real processes, loopback sockets only; every process a test
//! starts is stopped by its PID or its process group's id.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TempUser;
use common::{ServeProcess, runtime, spawn_serve, spawn_serve_under};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use switchboard::client::{ClientError, ExecReceiver, ExecSender};
use switchboard::endpoint::Transport;
use switchboard::proto::{ClientMsg, ErrorCode, ExecRequest, ExitStatus, ServerMsg};

const T: Duration = Duration::from_secs(10);
/// Keeps the default echo and time ports free: these tests need exec only.
const QUIET: [&str; 4] = ["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"];

/// `/proc/PID/stat` as (state, ppid, pgid); None once the process is gone.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Every process whose parent is `parent`, with its state.
fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((state, ppid, _)) = proc_stat(pid)
            && ppid == parent
        {
            out.push((pid, state));
        }
    }
    out
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Finding 4: the job's working directory is entered with the job's own
/// credentials, so a directory the run-as user cannot reach is refused
/// (before, the server entered it as root and the job read what was there).
#[test]
fn cwd_is_entered_as_the_run_as_user() {
    let Some(user) = TempUser::for_run_as() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    chmod(tmp.path(), 0o755);
    let secret = tmp.path().join("secret");
    let inner = secret.join("inner");
    std::fs::create_dir_all(&inner).expect("mkdir");
    std::fs::write(inner.join("data.txt"), "top secret\n").expect("write");
    chmod(&secret, 0o700);
    chmod(&inner, 0o755);
    chmod(&inner.join("data.txt"), 0o644);

    let srv = spawn_serve(&[&QUIET[..], &["--run-as", &user.name]].concat());
    runtime().block_on(async {
        let mut c = srv.exec_client().await;
        let inner_s = inner.to_str().expect("utf-8 path").to_string();
        let mut req = ExecRequest::shell(c.next_id(), "cat data.txt");
        req.cwd = Some(inner_s.clone());
        match c.run_request(req).await {
            Err(ClientError::Job {
                code: ErrorCode::SpawnFailed,
                message,
                exit_status: Some(1),
            }) => {
                assert!(message.contains(&inner_s), "names the cwd: {message}");
                assert!(message.contains("ermission denied"), "{message}");
            }
            other => panic!("expected spawn_failed, got {other:?}"),
        }
        // A directory the user may enter still works.
        let mut req = ExecRequest::shell(c.next_id(), "pwd");
        req.cwd = Some(tmp.path().to_str().expect("utf-8 path").to_string());
        let out = c.run_request(req).await.expect("run in a reachable cwd");
        assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            tmp.path().to_str().unwrap_or_default()
        );
    });
    drop(srv);
}

/// A job's terminal (`exec -t`) is its user's, as sshd leaves it: owner the
/// run-as user, group tty, mode 0620; and the job holds only its three
/// descriptors of it, never the server's master.
#[test]
fn a_terminal_belongs_to_the_run_as_user_and_the_job_holds_only_the_slave() {
    let Some(user) = TempUser::for_run_as() else {
        return;
    };
    let srv = spawn_serve(&[&QUIET[..], &["--run-as", &user.name]].concat());
    runtime().block_on(async {
        let mut c = srv.exec_client().await;
        let mut req = ExecRequest::shell(
            c.next_id(),
            "stat -c '%U %G %a' \"$(tty)\"; ls -l /proc/$$/fd | grep -c ptmx",
        );
        req.pty = Some(Default::default());
        let out = c.run_request(req).await.expect("job");
        assert_eq!(
            out.status,
            ExitStatus::Code(1),
            "grep found no ptmx: {out:?}"
        );
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        let tty_group = if Command::new("getent")
            .args(["group", "tty"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            "tty 620"
        } else {
            "600"
        };
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("{} ", user.name)) && first.ends_with(tty_group),
            "{text:?}"
        );
        assert_eq!(text.lines().nth(1), Some("0"), "{text:?}");
    });
    drop(srv);
}

/// Finding 7: children that `setsid` away from their job and exit are
/// re-parented to the server (a child subreaper) and must be reaped.
#[test]
fn orphans_that_left_their_group_are_reaped() {
    if Command::new("setsid").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setsid(1) not found");
        return;
    }
    let srv = spawn_serve(&QUIET);
    let server = srv.pid();
    runtime().block_on(async {
        let mut c = srv.exec_client().await;
        // The orphans hold the job's stdout, so the exit frame (sent once
        // stdout reaches EOF) comes after every one of them has exited.
        let out = c
            .run("for i in $(seq 20); do (setsid sh -c 'exit 0' &); done")
            .await
            .expect("job");
        assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    });
    let zombies = || {
        children_of(server)
            .into_iter()
            .filter(|(_, s)| *s == 'Z')
            .count()
    };
    assert!(
        poll(T, || zombies() == 0),
        "{} zombie children of the server left",
        zombies()
    );
    // The main processes' exit codes still reach the client: the reaper,
    // woken by each orphan's end, does not take them from tokio.
    runtime().block_on(async {
        let mut c = srv.exec_client().await;
        for code in 0..100 {
            let out = c
                .run(&format!("(setsid sh -c 'exit 0' &); exit {code}"))
                .await
                .expect("job");
            assert_eq!(out.status, ExitStatus::Code(code), "{out:?}");
        }
    });
    assert!(poll(T, || zombies() == 0), "{} zombies left", zombies());
}

/// Finding 11: a job gets exactly descriptors 0, 1 and 2, even when the
/// server inherited others without close-on-exec.
#[test]
fn jobs_do_not_inherit_stray_descriptors() {
    // The shell opens descriptor 7 without close-on-exec, then becomes the
    // server (same PID).
    let srv = spawn_serve_under(
        &["sh", "-c", "exec 7</dev/null; exec \"$@\"", "sh"],
        &QUIET,
        &[],
    );
    assert!(
        Path::new(&format!("/proc/{}/fd/7", srv.pid())).exists(),
        "the server did not inherit descriptor 7"
    );
    runtime().block_on(async {
        let mut c = srv.exec_client().await;
        // `ls` run directly (a shell keeps descriptors of its own, e.g.
        // dash's 10); ls's own handle on the directory it lists is left out.
        let req = ExecRequest {
            command: switchboard::proto::Command::Argv(
                ["ls", "-l", "/proc/self/fd/"].map(String::from).to_vec(),
            ),
            ..ExecRequest::shell(c.next_id(), "")
        };
        let out = c.run_request(req).await.expect("job");
        assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let fds: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_once(" -> "))
            .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
            .filter_map(|(left, _)| left.split_whitespace().last())
            .collect();
        assert_eq!(fds, ["0", "1", "2"], "{listing}");
        // A program that cannot be run still fails to spawn (the exec-error
        // pipe is not closed by the cleanup).
        let req = ExecRequest {
            command: switchboard::proto::Command::Argv(vec!["/no/such/program".into()]),
            ..ExecRequest::shell(c.next_id(), "")
        };
        match c.run_request(req).await {
            Err(ClientError::Job {
                code: ErrorCode::SpawnFailed,
                ..
            }) => {}
            other => panic!("expected spawn_failed, got {other:?}"),
        }
    });
}

/// Kills a process group by its id when dropped, so a failed test leaks
/// nothing.
struct GroupGuard(Pid);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// Finding 12: `kill -9` of the server kills every process of its jobs
/// (through the keeper), and the keeper then exits.
#[test]
fn jobs_die_with_a_server_that_is_killed() {
    let mut srv = spawn_serve(&QUIET);
    let server = srv.pid();
    let rt = runtime();
    let (pgid, client) = started_job(&srv, &rt, "sleep 314 & sleep 315");
    let _guard = GroupGuard(pgid);
    // Both sleeps are running (so the group has a background member).
    let sleeps = || {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|&p| proc_stat(p).is_some_and(|(_, _, g)| g == pgid.as_raw()))
                    .filter(|&p| cmdline(p).starts_with("sleep 31"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(poll(T, || sleeps() == 2), "the job's sleeps did not start");
    let keeper = children_of(server)
        .into_iter()
        .map(|(p, _)| p)
        .find(|&p| cmdline(p).contains("__keeper"));

    srv.signal(Signal::SIGKILL);
    assert!(srv.wait_exit(T).is_some(), "the server did not die");
    drop(client);
    let group_gone = poll(Duration::from_secs(15), || {
        killpg(pgid, None) == Err(Errno::ESRCH)
    });
    assert!(group_gone, "the job's group outlived the server");
    let keeper = keeper.expect("no keeper process among the server's children");
    // Gone, or a zombie waiting for whatever adopted it.
    assert!(
        poll(T, || proc_stat(keeper).is_none_or(|(s, _, _)| s == 'Z')),
        "the keeper outlived the server"
    );
}

/// The group id of the first process whose command line starts with
/// `prefix`, within `limit`.
fn group_of(prefix: &str, limit: Duration) -> Option<Pid> {
    let mut found = None;
    poll(limit, || {
        found = std::fs::read_dir("/proc").ok().and_then(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|&p| cmdline(p).starts_with(prefix))
                .and_then(|p| proc_stat(p).map(|(_, _, g)| Pid::from_raw(g)))
        });
        found.is_some()
    });
    found
}

/// Finding 12, tutorial-compatible mode: its jobs are held by the keeper
/// too (they are spawned by the same code).
#[test]
fn legacy_jobs_die_with_a_server_that_is_killed() {
    use std::io::Write;
    let mut srv = spawn_serve(
        &[
            &QUIET[..],
            &["--exec-legacy", "tcp://127.0.0.1:0"],
            &["--exec", "tcp://127.0.0.1:0"],
        ]
        .concat(),
    );
    let mut conn =
        std::net::TcpStream::connect(srv.addr("exec-legacy", Transport::Tcp)).expect("connect");
    // Unique arguments, so that the group found is this job's.
    let tag = 400 + std::process::id() % 500;
    conn.write_all(format!("sleep {tag}.1 & sleep {tag}.2").as_bytes())
        .expect("send");
    let pgid = group_of(&format!("sleep {tag}.2"), T).expect("the legacy job did not start");
    let _guard = GroupGuard(pgid);
    srv.signal(Signal::SIGKILL);
    assert!(srv.wait_exit(T).is_some(), "the server did not die");
    drop(conn);
    assert!(
        poll(Duration::from_secs(15), || killpg(pgid, None)
            == Err(Errno::ESRCH)),
        "the legacy job's group outlived the server"
    );
}

/// Processes running `sleep ARG` (argv[0] as resolved), by pid.
fn sleeps_with(arg: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| cmdline(p).trim_end().ends_with(&format!("sleep {arg}")))
                .collect()
        })
        .unwrap_or_default()
}

/// A server killed while it is still spawning jobs: every job already
/// forked is known to the keeper (the child registers itself before it
/// runs the program), so none survives.
#[test]
fn jobs_being_spawned_when_the_server_is_killed_die_too() {
    let arg = format!("{}.77", 600 + std::process::id() % 300);
    let mut running_at_kill = 0;
    for round in 0..5u64 {
        let mut srv = spawn_serve(&QUIET);
        let rt = runtime();
        let client = rt.block_on(async {
            let c = srv.exec_client().await;
            let (mut tx, rx) = c.split();
            for id in 0..20 {
                let mut req = ExecRequest::shell(id, "");
                req.command = switchboard::proto::Command::Argv(vec!["sleep".into(), arg.clone()]);
                tx.send(ClientMsg::Exec(req)).await.expect("send");
            }
            (tx, rx)
        });
        // Kill it somewhere in the middle of the spawning.
        std::thread::sleep(Duration::from_millis(1 + round * 3));
        running_at_kill += sleeps_with(&arg).len();
        srv.signal(Signal::SIGKILL);
        assert!(srv.wait_exit(T).is_some(), "the server did not die");
        drop(client);
        let gone = poll(Duration::from_secs(15), || sleeps_with(&arg).is_empty());
        let left = sleeps_with(&arg);
        for pid in &left {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        assert!(gone, "round {round}: jobs outlived the server: {left:?}");
    }
    // Else the test would prove nothing.
    assert!(
        running_at_kill > 0,
        "no job was running when the server was killed"
    );
}

/// A legacy job ends with its connection, closed or reset, and is audited;
/// the server goes on serving.
#[test]
fn legacy_jobs_die_with_their_connection() {
    use std::io::Write;
    let srv = spawn_serve(
        &[
            &QUIET[..],
            &["--exec-legacy", "tcp://127.0.0.1:0"],
            &["--exec", "tcp://127.0.0.1:0"],
        ]
        .concat(),
    );
    let addr = srv.addr("exec-legacy", Transport::Tcp);
    let tag = 500 + std::process::id() % 400;
    // Closed; reset; closed after sending the next command early (which
    // must neither hide the close nor run).
    for (i, (reset, early)) in [(false, false), (true, false), (false, true)]
        .into_iter()
        .enumerate()
    {
        let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
        conn.write_all(format!("sleep {tag}.{i}1 & sleep {tag}.{i}2").as_bytes())
            .expect("send");
        let pgid = group_of(&format!("sleep {tag}.{i}2"), T).expect("the job did not start");
        let _guard = GroupGuard(pgid);
        if early {
            conn.write_all(format!("sleep {tag}.{i}9").as_bytes())
                .expect("send");
            std::thread::sleep(Duration::from_millis(100));
        }
        if reset {
            // SO_LINGER 0: the close sends RST.
            socket2::SockRef::from(&conn)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
        }
        drop(conn);
        assert!(
            poll(T, || killpg(pgid, None) == Err(Errno::ESRCH)),
            "reset={reset} early={early}: the job outlived its connection"
        );
        assert!(
            group_of(&format!("sleep {tag}.{i}9"), Duration::from_millis(300)).is_none(),
            "a command sent by a client that then left was run"
        );
    }
    let ended = srv.wait_audit(3, |r| r["audit"] == "job_ended" && r["via"] == "legacy");
    assert_eq!(ended.len(), 3, "three audit records: {}", srv.log());
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    conn.write_all(b"echo still here").expect("send");
    let mut reply = Vec::new();
    use std::io::Read;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).expect("reply length");
    reply.resize(i32::from_le_bytes(len) as usize, 0);
    conn.read_exact(&mut reply).expect("reply");
    assert_eq!(reply, b"still here\n");
}

/// Finding 7, the second hole: a job process cannot move itself into the
/// server's process group (where the group kill would miss it), because
/// every job runs in a session of its own.
#[test]
fn a_job_cannot_join_the_servers_process_group() {
    let srv = spawn_serve(&QUIET);
    let (_, _, server_pgid) = proc_stat(srv.pid()).expect("server stat");
    runtime().block_on(async {
        let mut c = srv.exec_client().await;
        let script = "import os, sys\n\
                      try:\n    os.setpgid(0, int(sys.argv[1])); print('joined')\n\
                      except OSError as e:\n    print('refused', e.errno)";
        let req = ExecRequest {
            command: switchboard::proto::Command::Argv(vec![
                "python3".into(),
                "-c".into(),
                script.into(),
                server_pgid.to_string(),
            ]),
            ..ExecRequest::shell(c.next_id(), "")
        };
        let out = c.run_request(req).await.expect("job");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("refused {}\n", libc::EPERM),
            "{out:?}"
        );
    });
}

/// Starts the shell line `cmd` on `srv` and returns its group once it has
/// started, with the connection kept open.
fn started_job(
    srv: &ServeProcess,
    rt: &tokio::runtime::Runtime,
    cmd: &str,
) -> (Pid, (ExecSender, ExecReceiver)) {
    rt.block_on(async {
        let c = srv.exec_client().await;
        let (mut tx, mut rx) = c.split();
        let req = ExecRequest::shell(1, cmd);
        tx.send(ClientMsg::Exec(req)).await.expect("send");
        let pid = loop {
            match tokio::time::timeout(T, rx.recv()).await {
                Ok(Ok(Some(ServerMsg::Started { pid, .. }))) => break pid,
                Ok(Ok(Some(_))) => continue,
                other => panic!("no started frame: {other:?}"),
            }
        };
        (Pid::from_raw(pid as i32), (tx, rx))
    })
}

#[test]
fn a_second_sigterm_or_a_short_grace_still_kills_every_job() {
    // A second signal exits at once; a shutdown grace shorter than the
    // kill grace ends the server before its sessions have killed their
    // jobs. Either way the keeper finishes the job.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[exec]\nkill_grace = \"3s\"\n").expect("config");
    let cfg = cfg.to_str().expect("utf-8 path");
    for second_signal in [true, false] {
        let grace = if second_signal { "5s" } else { "1s" };
        let args = [&QUIET[..], &["--config", cfg, "--shutdown-grace", grace]].concat();
        let mut srv = spawn_serve(&args);
        let rt = runtime();
        let (pgid, client) = started_job(&srv, &rt, "trap '' TERM; sleep 316");
        let _guard = GroupGuard(pgid);
        srv.signal(Signal::SIGTERM);
        if second_signal {
            std::thread::sleep(Duration::from_millis(300));
            srv.signal(Signal::SIGTERM);
        }
        assert!(srv.wait_exit(T).is_some(), "the server did not exit");
        drop(client);
        assert!(
            poll(Duration::from_secs(15), || killpg(pgid, None)
                == Err(Errno::ESRCH)),
            "second signal {second_signal}: the job outlived the server"
        );
    }
}

/// Forks children that sleep until the limit stops it; prints how many
/// it got and the errno, then kills and reaps them.
const FORKER: &str = r#"
import os, time
pids = []
try:
    for _ in range(100):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        pids.append(pid)
    print("forked", len(pids))
except OSError as e:
    print("fork failed after", len(pids), e.errno)
for p in pids:
    os.kill(p, 9)
for p in pids:
    os.waitpid(p, 0)
"#;

fn forker(id: u64) -> ExecRequest {
    let mut req = ExecRequest::shell(id, "");
    req.command = switchboard::proto::Command::Argv(
        ["/usr/bin/python3", "-c", FORKER]
            .map(String::from)
            .to_vec(),
    );
    req
}

/// A config file setting `exec.max_processes`, in `dir`.
fn max_processes_config(dir: &Path, n: u64) -> String {
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, format!("[exec]\nmax_processes = {n}\n")).expect("config");
    path.to_string_lossy().into_owned()
}

/// The directory of job cgroups the server logged, or None (said loudly)
/// when it has no pids cgroup to write.
fn job_cgroups(srv: &ServeProcess, test: &str) -> Option<std::path::PathBuf> {
    assert!(srv.wait_log("cgroup", 1), "{}", srv.log());
    let log = srv.log();
    let dir = log
        .lines()
        .find(|l| l.contains("job cgroups"))
        .and_then(|l| l.split("dir=").nth(1))
        .and_then(|d| d.split_whitespace().next())
        .map(std::path::PathBuf::from);
    if dir.is_none() {
        eprintln!("SKIPPED {test}: the server has no writable pids cgroup");
    }
    dir
}

/// Issue #17 finding 8: a root job (which RLIMIT_NPROC does not bind) is
/// held to `exec.max_processes` tasks by its cgroup.
#[test]
fn max_processes_holds_a_root_job_through_its_cgroup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = max_processes_config(tmp.path(), 10);
    let srv = spawn_serve(&[&QUIET[..], &["--config", &cfg]].concat());
    let Some(base) = job_cgroups(&srv, "max_processes_holds_a_root_job") else {
        return;
    };
    let out = runtime().block_on(async {
        let mut c = srv.exec_client().await;
        c.run_request(forker(1)).await.expect("job")
    });
    // Python is one task; nine children make ten.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fork failed after 9 11\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The job is over: its cgroup goes.
    let prefix = format!("sb-{}.", srv.pid());
    let gone = poll(T, || {
        std::fs::read_dir(&base).is_ok_and(|d| {
            !d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        })
    });
    assert!(gone, "job cgroups left in {}", base.display());
}

/// With a job cgroup, a process that left the job's group with setsid is
/// still the job's, and is killed when the job is over.
#[test]
fn a_process_that_left_the_group_dies_with_the_job_cgroup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = max_processes_config(tmp.path(), 64);
    let srv = spawn_serve(&[&QUIET[..], &["--config", &cfg]].concat());
    if job_cgroups(&srv, "a_process_that_left_the_group_dies").is_none() {
        return;
    }
    let out = srv.run_job(
        &srv.addr("exec", Transport::Tcp),
        "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!",
    );
    let pid: i32 = String::from_utf8_lossy(&out).trim().parse().expect("pid");
    let (_, _, pgid) = proc_stat(pid).unwrap_or((' ', 0, pid));
    let died = poll(T, || {
        proc_stat(pid).is_none_or(|(state, _, _)| state == 'Z')
    });
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if !died {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(
        died,
        "pid {pid} (group {pgid}) outlived its job: {} in {cgroup}; server log: {}",
        cmdline(pid),
        srv.log()
    );
}

/// Stop 26's attack round: with a job cgroup, a process that left the
/// job's group with setsid dies with a server killed by SIGKILL too (the
/// keeper empties the dead server's job cgroups), not at the next start.
#[test]
fn a_process_that_left_the_group_dies_with_a_killed_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = max_processes_config(tmp.path(), 64);
    let mut srv = spawn_serve(&[&QUIET[..], &["--config", &cfg]].concat());
    let Some(base) = job_cgroups(
        &srv,
        "a_process_that_left_the_group_dies_with_a_killed_server",
    ) else {
        return;
    };
    let rt = runtime();
    let (pgid, client) = started_job(
        &srv,
        &rt,
        "setsid sleep 4271 </dev/null >/dev/null 2>&1 & sleep 4272",
    );
    let _guard = GroupGuard(pgid);
    let mut escaped = None;
    assert!(
        poll(T, || {
            escaped = std::fs::read_dir("/proc").ok().and_then(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .find(|&p| cmdline(p).starts_with("sleep 4271"))
            });
            escaped.is_some()
        }),
        "the escaping sleep did not start"
    );
    let escaped = escaped.unwrap_or(0);
    let cleanup = |p: i32| {
        let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
    };
    if proc_stat(escaped).is_some_and(|(_, _, g)| g == pgid.as_raw()) {
        cleanup(escaped);
        panic!("setsid did not leave the job's group");
    }
    srv.signal(Signal::SIGKILL);
    assert!(srv.wait_exit(T).is_some(), "the server did not die");
    drop(client);
    let died = poll(Duration::from_secs(15), || {
        proc_stat(escaped).is_none_or(|(state, _, _)| state == 'Z')
    });
    if !died {
        cleanup(escaped);
    }
    assert!(
        died,
        "pid {escaped} (left the job's group) outlived the killed server"
    );
    let prefix = format!("sb-{}.", srv.pid());
    let removed = poll(T, || {
        std::fs::read_dir(&base).is_ok_and(|d| {
            !d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        })
    });
    assert!(
        removed,
        "the dead server's job cgroups stayed in {}",
        base.display()
    );
}

/// Job cgroups are named by the server's pid *and* start time: those of a
/// server that is gone are cleaned at the next start even when its pid now
/// belongs to another process, or to the new server itself (pid 1 of a
/// restarted container). What is left in them is killed.
#[test]
fn job_cgroups_of_a_gone_server_are_cleaned_though_its_pid_lives_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = max_processes_config(tmp.path(), 64);
    let first = spawn_serve(&[&QUIET[..], &["--config", &cfg]].concat());
    let Some(base) = job_cgroups(&first, "job_cgroups_of_a_gone_server") else {
        return;
    };
    // A leftover escapee, in a cgroup named after a live pid with another
    // start time (the pid was reused), and an empty one named after the
    // running server's pid (an earlier server had it).
    let mut escapee = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("sleep");
    let reused = base.join(format!("sb-{}.1-job-0", escapee.id()));
    let same_pid = base.join(format!("sb-{}.1-job-7", first.pid()));
    for dir in [&reused, &same_pid] {
        std::fs::create_dir(dir).expect("cgroup");
    }
    std::fs::write(reused.join("cgroup.procs"), escapee.id().to_string()).expect("join");
    let second = spawn_serve(&[&QUIET[..], &["--config", &cfg]].concat());
    assert!(job_cgroups(&second, "job_cgroups_of_a_gone_server").is_some());
    // A job's reaping sweeps what the start could not remove yet.
    second.run_job(&second.addr("exec", Transport::Tcp), "true");
    let cleaned = poll(T, || !reused.exists() && !same_pid.exists());
    let killed = poll(T, || escapee.try_wait().is_ok_and(|s| s.is_some()));
    let _ = escapee.kill();
    let _ = escapee.wait();
    for dir in [&reused, &same_pid] {
        let _ = std::fs::remove_dir(dir);
    }
    assert!(
        killed,
        "the escapee in a stale job cgroup survived the start"
    );
    assert!(cleaned, "stale job cgroups left in {}", base.display());
}

/// Without a cgroup (a server in this test process never looks for one),
/// a run-as user is held by RLIMIT_NPROC.
#[test]
fn max_processes_holds_a_run_as_user_through_rlimit_nproc() {
    let Some(user) = TempUser::for_run_as() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = runtime().block_on(async {
        let mut cfg = common::exec_config(tmp.path());
        cfg.exec.run_as = Some(user.name.clone());
        cfg.exec.max_processes = 10;
        let srv = common::start(cfg).await;
        let token = switchboard::secrets::read_token(&tmp.path().join("token")).expect("token");
        let mut c = switchboard::client::ExecClient::connect(
            &srv.exec.to_string(),
            &switchboard::client::ClientAuth::token(token),
            T,
        )
        .await
        .expect("connect");
        let out = c.run_request(forker(1)).await.expect("job");
        srv.stop().await;
        out
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fork failed after 9 11\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server whose runtime is dropped under it (an embedded server, a test
/// that never stops its server) leaves no job behind: neither one still
/// running nor a finished job's background process.
#[test]
fn jobs_die_with_a_runtime_dropped_under_their_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (running, lingering) = rt.block_on(async {
        let srv = common::start(common::exec_config(tmp.path())).await;
        let token = switchboard::secrets::read_token(&tmp.path().join("token")).expect("token");
        let auth = switchboard::client::ClientAuth::token(token);
        let addr = srv.exec.to_string();
        let connect = || switchboard::client::ExecClient::connect(&addr, &auth, T);
        // A finished job whose background process holds no pipe.
        let mut c = connect().await.expect("connect");
        let out = c
            .run("sleep 60 </dev/null >/dev/null 2>&1 & echo $!")
            .await
            .expect("job");
        let lingering: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // A job still running when the runtime goes.
        let (mut tx, mut rx) = connect().await.expect("connect").split();
        tx.send(ClientMsg::Exec(ExecRequest::shell(
            1,
            "echo $$; exec sleep 60",
        )))
        .await
        .unwrap();
        let running = loop {
            match rx.recv().await.unwrap() {
                Some(ServerMsg::Stdout { data, .. }) => {
                    break String::from_utf8_lossy(&data)
                        .trim()
                        .parse::<i32>()
                        .unwrap();
                }
                Some(_) => continue,
                None => panic!("closed before the job's output"),
            }
        };
        // Nothing is stopped or closed: the runtime goes with all of it.
        drop((c, tx, rx, srv));
        (running, lingering)
    });
    drop(rt);
    let survivors: Vec<String> = [("running job", running), ("background process", lingering)]
        .into_iter()
        .filter(|&(_, pid)| {
            !poll(T, || {
                proc_stat(pid).is_none_or(|(state, _, _)| state == 'Z')
            })
        })
        .map(|(what, pid)| {
            let line = format!("the {what} (pid {pid}: {})", cmdline(pid));
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            line
        })
        .collect();
    assert!(survivors.is_empty(), "outlived their server: {survivors:?}");
}
