//! The `switchboard` binary end to end: `serve` (banner, config file,
//! signals, memory under a client that never reads) and the `echo`/`time`
//! clients in their one-shot, pipe and REPL modes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, spawn_serve};
use nix::sys::signal::Signal;
use switchboard::endpoint::Transport;

/// Runs the client binary with `args` and `input` on stdin, with HOME in a
/// temporary directory so no history lands in the real one.
fn client(args: &[&str], input: Option<&[u8]>) -> Output {
    let home = tempfile::tempdir().unwrap();
    client_in(home.path(), args, input)
}

/// Runs the client binary with HOME (and the XDG directories) at `home`.
fn client_in(home: &std::path::Path, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn serve_all() -> common::ServeProcess {
    spawn_serve(&["--echo", "127.0.0.1:0", "--time", "127.0.0.1:0"])
}

#[test]
fn banner_lists_every_endpoint_with_its_real_port() {
    let srv = serve_all();
    assert!(
        srv.banner[0].starts_with("switchboard "),
        "{:?}",
        srv.banner
    );
    assert_eq!(srv.endpoints.len(), 4, "{:?}", srv.banner);
    // The token was created in the (temporary) config directory, private.
    let token = srv.token_file();
    assert!(
        srv.banner
            .iter()
            .any(|l| l.contains("token created") && l.contains(token.to_str().unwrap()))
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for (_, e) in &srv.endpoints {
        assert_ne!(e.port, 0, "{e}");
    }
    assert!(srv.banner.iter().any(|l| l.contains("mode=upper")));
}

#[test]
fn one_shot_clients() {
    let srv = serve_all();
    let tcp = srv.addr("echo", Transport::Tcp);
    let udp = format!("udp://{}", srv.addr("echo", Transport::Udp));
    let time = srv.addr("time", Transport::Udp);

    let o = client(&["echo", &tcp, "linhaifeng", "nb"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "LINHAIFENG NB\n");

    let o = client(&["echo", &udp, "héllo"], None);
    assert_eq!(stdout(&o), "HéLLO\n");
    let o = client(
        &["echo", "--udp", &srv.addr("echo", Transport::Udp), "x"],
        None,
    );
    assert_eq!(stdout(&o), "X\n");

    let o = client(&["time", &time, "%Y", "%%"], None);
    assert!(o.status.success());
    let t = stdout(&o);
    assert!(t.len() == 7 && t.ends_with(" %\n"), "{t:?}");

    let o = client(&["time", &time, "%Q"], None);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "switchboard: server: unknown specifier %Q at byte 0\n"
    );
}

#[test]
fn pipe_mode_sends_one_request_per_line() {
    let srv = serve_all();
    let tcp = srv.addr("echo", Transport::Tcp);
    let udp = srv.addr("echo", Transport::Udp);
    let time = srv.addr("time", Transport::Udp);

    let o = client(&["echo", &tcp], Some("one\ntwo 二\n\nlast".as_bytes()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ONE\nTWO 二\n\nLAST");

    // A large pipe streams through with every byte intact.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let o = client(&["echo", &tcp], Some(&big));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, big.to_ascii_uppercase());

    let o = client(&["echo", "--udp", &udp], Some(b"alpha\nbeta\r\n"));
    assert_eq!(stdout(&o), "ALPHA\nBETA\n");

    let o = client(&["time", &time], Some(b"%Y\n%Q\n%%\n"));
    assert!(
        !o.status.success(),
        "a failed line makes the exit status non-zero"
    );
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[1], "%");
    assert!(stderr(&o).contains("unknown specifier %Q at byte 0"));
}

#[test]
fn refused_and_silent_servers_give_one_clear_line() {
    // A port where connections are refused.
    let (_held, port) = common::refusing_port();
    let addr = format!("127.0.0.1:{port}");
    let o = client(&["echo", &addr, "hello"], None);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("switchboard: cannot connect to {addr}: ")),
        "{err}"
    );

    // A UDP socket that never answers: the client times out.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let o = client(&["time", "--timeout", "300ms", &addr, "%Y"], None);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        format!("switchboard: no reply from udp://{addr} within 300ms\n")
    );
}

#[test]
fn config_file_says_what_flags_say() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        "[echo]\nlisten = [\"tcp://127.0.0.1:0\"]\nmode = \"plain\"\n[time]\nlisten = [\"127.0.0.1:0\"]\nutc = true\n",
    )
    .unwrap();
    let srv = spawn_serve(&["--config", path.to_str().unwrap()]);
    assert_eq!(srv.endpoints.len(), 3, "echo, time, exec: {:?}", srv.banner);
    let o = client(&["echo", &srv.addr("echo", Transport::Tcp), "Plain"], None);
    assert_eq!(stdout(&o), "Plain\n");
    let o = client(&["time", &srv.addr("time", Transport::Udp), "%Z"], None);
    assert_eq!(stdout(&o), "UTC\n");

    // Flags override the file.
    let srv = spawn_serve(&["--config", path.to_str().unwrap(), "--echo-mode", "upper"]);
    let o = client(&["echo", &srv.addr("echo", Transport::Tcp), "Plain"], None);
    assert_eq!(stdout(&o), "PLAIN\n");

    // A bad file is one clear error and a failure status.
    std::fs::write(&path, "[echo]\nmax_connections = 0\n").unwrap();
    let o = Command::new(bin())
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("max_connections"), "{}", stderr(&o));
}

#[test]
fn sigterm_closes_connections_and_exits_zero() {
    let mut srv = spawn_serve(&[
        "--echo",
        "tcp://127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--shutdown-grace",
        "2s",
    ]);
    let mut conn = TcpStream::connect(srv.addr("echo", Transport::Tcp)).unwrap();
    conn.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"BEFORE");

    srv.signal(Signal::SIGTERM);
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("server exited");
    assert!(status.success(), "{status:?}");
    // The connection was closed by the server, not left open.
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let r = conn.read_to_end(&mut rest);
    assert!(matches!(r, Ok(0) | Err(_)) && rest.is_empty(), "{r:?}");
}

#[test]
fn server_memory_stays_flat_while_a_client_floods_without_reading() {
    let srv = spawn_serve(&["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let addr = srv.addr("echo", Transport::Tcp);
    // Warm up: one ordinary exchange so the baseline includes a used connection path.
    let o = client(&["echo", &addr, "warm"], None);
    assert_eq!(stdout(&o), "WARM\n");
    let before = srv.rss_kib();

    let mut floods = Vec::new();
    for _ in 0..4 {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        floods.push(s);
    }
    let chunk = vec![b'z'; 256 * 1024];
    let start = Instant::now();
    let mut written = 0usize;
    'outer: while start.elapsed() < Duration::from_secs(4) {
        for s in floods.iter_mut() {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break 'outer, // blocked for 500 ms: back-pressure
            }
        }
    }
    let after = srv.rss_kib();
    eprintln!("flooded {written} bytes; server RSS {before} KiB -> {after} KiB");
    assert!(
        written < 4 * 64 * 1024 * 1024,
        "the server kept accepting: {written} bytes"
    );
    // Four connections may each hold one 64 KiB buffer; allow generous slack.
    assert!(
        after < before + 8 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
}

/// Runs `switchboard ARGS` on a pseudo-terminal (Python's pty module):
/// waits for `prompt`, types each line (waiting for the prompt again after
/// each), and returns (exit status, everything the terminal showed).
/// rustyline asks the terminal for the cursor position (ESC [6n); the
/// script answers like a terminal would. Every wait is bounded, and the
/// child is killed by its PID if it has not exited at the end.
fn on_a_terminal(
    home: &std::path::Path,
    args: &[&str],
    prompt: &str,
    lines: &[&str],
) -> (i32, String) {
    let script = r#"
import json, os, pty, signal, sys, time, select
args = json.loads(sys.argv[1]); prompt = sys.argv[2].encode(); lines = json.loads(sys.argv[3])
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
out = b""
answered = 0
def read_until(marker, limit=10.0, count=1):
    global out, answered
    end = time.time() + limit
    while out.count(marker) < count and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                return
        while out.count(b"\x1b[6n") > answered:
            os.write(fd, b"\x1b[1;1R")
            answered += 1
read_until(prompt)
for i, line in enumerate(lines):
    os.write(fd, line.encode() + b"\r")
    read_until(prompt, count=i + 2)
read_until(b"\xff", 3.0)
end = time.time() + 10
status = None
while time.time() < end:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st
        break
    time.sleep(0.05)
if status is None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.stdout.write(out.decode("utf-8", "replace"))
    sys.exit("the REPL did not exit")
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut argv = vec![bin().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(serde_json::to_string(&argv).unwrap())
        .arg(prompt)
        .arg(serde_json::to_string(lines).unwrap())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .output()
        .expect(
            "python3 is required (it is on every machine of this project; .ci/run checks for it)",
        );
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

#[test]
fn echo_repl_on_a_terminal() {
    let srv = serve_all();
    let tcp = srv.addr("echo", Transport::Tcp);
    let home = tempfile::tempdir().unwrap();
    let (code, out) = on_a_terminal(
        home.path(),
        &["echo", &tcp],
        "echo> ",
        &["hello repl", "", "quit"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HELLO REPL"), "{out}");
    // History was kept in the temporary HOME, not the real one.
    assert!(
        home.path().join("switchboard/history-echo").exists(),
        "{out}"
    );
}

#[test]
fn exec_repl_runs_each_line_and_shows_failures() {
    let srv = serve_all();
    let addr = srv.addr("exec", Transport::Tcp);
    let (code, out) = on_a_terminal(
        srv.home.path(),
        &["exec", &addr],
        "exec> ",
        &["echo linhaifeng nb | tr a-z A-Z", "exit 3", "exit"],
    );
    assert!(out.contains("LINHAIFENG NB"), "{out}");
    assert!(out.contains("[exit 3]"), "{out}");
    assert_eq!(code, 3, "the last command's status: {out}");
}

#[test]
fn ctrl_c_interrupts_the_remote_job() {
    let srv = spawn_serve(&["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let addr = srv.addr("exec", Transport::Tcp);
    let home = srv.home.path();
    let mut child = Command::new(bin())
        .args(["exec", &addr, "--", "echo started; exec sleep 30"])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the job's first output, then press "Ctrl-C" (SIGINT by PID).
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the client did not end after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The job died of SIGINT: 128 + 2.
    assert_eq!(status.code(), Some(130));
}

#[test]
fn bench_smoke_checks_every_reply() {
    let srv = serve_all();
    let tcp = srv.addr("echo", Transport::Tcp);
    let pid = srv.pid().to_string();
    let o = client(
        &[
            "bench",
            "echo",
            &tcp,
            "--conns",
            "8",
            "--requests",
            "400",
            "--duration",
            "20s",
            "--server-pid",
            &pid,
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["requests"], 400);
    assert_eq!(r["errors"], 0);
    assert!(r["server_rss_kib_before"].as_u64().unwrap() > 0);

    // Every other mode, bounded in count and time.
    let exec = srv.addr("exec", Transport::Tcp);
    let home = srv.home.path();
    for args in [
        vec![
            "stream",
            tcp.as_str(),
            "--bytes",
            "4000000",
            "--duration",
            "10s",
        ],
        vec![
            "connect",
            tcp.as_str(),
            "--conns",
            "2",
            "--requests",
            "50",
            "--duration",
            "10s",
        ],
        vec![
            "idle",
            tcp.as_str(),
            "--conns",
            "20",
            "--duration",
            "100ms",
            "--server-pid",
            pid.as_str(),
        ],
        vec![
            "exec",
            exec.as_str(),
            "--conns",
            "1",
            "--inflight",
            "4",
            "--requests",
            "20",
            "--duration",
            "10s",
        ],
        vec![
            "exec-connect",
            exec.as_str(),
            "--conns",
            "1",
            "--requests",
            "5",
            "--duration",
            "10s",
        ],
        vec!["exec-stream", exec.as_str(), "--bytes", "3000000"],
    ] {
        let mut argv = vec!["bench"];
        argv.extend(args.iter().copied());
        argv.push("--json");
        let o = client_in(home, &argv, None);
        assert!(o.status.success(), "{argv:?}: {}{}", stdout(&o), stderr(&o));
        let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(r["errors"], 0, "{argv:?}: {r}");
    }

    let time = srv.addr("time", Transport::Udp);
    let o = client(
        &[
            "bench",
            "udp-time",
            &time,
            "--conns",
            "2",
            "--requests",
            "100",
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["requests"], 100);
}

fn exec_status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn exec_client_behaves_like_ssh() {
    let srv = spawn_serve(&["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let addr = srv.addr("exec", Transport::Tcp);
    // The client finds the token where the server created it (same HOME).
    let home = srv.home.path();
    let o = client_in(home, &["exec", &addr, "--", "sh", "-c", "exit 7"], None);
    assert_eq!(exec_status(&o), 7, "{}", stderr(&o));
    let o = client_in(home, &["exec", &addr, "--", "echo out; echo err >&2"], None);
    assert_eq!(
        (stdout(&o).as_str(), stderr(&o).as_str()),
        ("out\n", "err\n")
    );
    assert_eq!(exec_status(&o), 0);

    // Local stdin is forwarded, EOF included.
    let data = vec![b'x'; 1_000_000];
    let o = client_in(home, &["exec", &addr, "--", "wc -c"], Some(&data));
    assert_eq!(stdout(&o).trim(), "1000000");
    // Both directions at once: a job that echoes its input back.
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let o = client_in(home, &["exec", &addr, "--", "cat"], Some(&data));
    assert!(
        o.stdout == data,
        "cat returned {} of {} bytes",
        o.stdout.len(),
        data.len()
    );
    let o = client_in(
        home,
        &["exec", &addr, "--timeout", "200ms", "--", "sleep 30"],
        None,
    );
    assert_eq!(exec_status(&o), 124);
    let o = client_in(home, &["exec", &addr, "--", "kill -TERM $$"], None);
    assert_eq!(exec_status(&o), 128 + 15);
    let o = client_in(
        home,
        &[
            "exec",
            &addr,
            "--argv",
            "--env",
            "A=1 2",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A; pwd",
        ],
        None,
    );
    assert_eq!(stdout(&o), "1 2\n/tmp\n");

    // --encoding decodes the tutorial's Windows output (GBK) for display.
    let o = client_in(
        home,
        &[
            "exec",
            &addr,
            "--encoding",
            "gbk",
            "--",
            "printf '\\304\\343\\272\\303\\n'",
        ],
        None,
    );
    assert_eq!(stdout(&o), "你好\n");
    let o = client_in(home, &["exec", &addr, "--", "printf '\\304\\343'"], None);
    assert_eq!(o.stdout, [0xc4, 0xe3], "bytes pass untouched by default");

    // Lines from a pipe are commands; the status is the last failure's.
    let o = client_in(home, &["exec", &addr], Some(b"echo a\nexit 3\necho b\n"));
    assert_eq!((stdout(&o).as_str(), exec_status(&o)), ("a\nb\n", 3));

    // Wrong token, refused connection: 255 and one line.
    let bad = home.join("bad-token");
    std::fs::write(&bad, "wrong").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = client_in(
        home,
        &[
            "exec",
            &addr,
            "--token-file",
            bad.to_str().unwrap(),
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(exec_status(&o), 255);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let (_held, port) = common::refusing_port();
    let o = client_in(
        home,
        &["exec", &format!("127.0.0.1:{port}"), "--", "true"],
        None,
    );
    assert_eq!(exec_status(&o), 255);
}

#[test]
fn jobs_get_a_clean_environment_without_the_servers_secrets() {
    let srv = common::spawn_serve_env(
        &["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"],
        &[
            ("SWITCHBOARD_TOKEN", "tok-secret-123"),
            ("MY_SERVER_SECRET", "s3cr3t"),
        ],
    );
    let addr = srv.addr("exec", Transport::Tcp);
    let home = tempfile::tempdir().unwrap();
    let tok = home.path().join("t");
    std::fs::write(&tok, "tok-secret-123\n").unwrap();
    std::fs::set_permissions(&tok, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = client_in(
        home.path(),
        &[
            "exec",
            &addr,
            "--token-file",
            tok.to_str().unwrap(),
            "--",
            "env; grep -E '^Sig(Blk|Ign)' /proc/self/status",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let env = stdout(&o);
    assert!(
        !env.contains("tok-secret-123") && !env.contains("MY_SERVER_SECRET"),
        "{env}"
    );
    assert!(env.contains("PATH="), "{env}");
    // Nothing blocked, nothing ignored: default dispositions.
    assert!(env.contains("SigBlk:\t0000000000000000"), "{env}");
    assert!(env.contains("SigIgn:\t0000000000000000"), "{env}");
}

#[test]
fn server_memory_stays_flat_while_an_exec_client_refuses_to_read() {
    use switchboard::client::{ClientAuth, ExecClient};
    use switchboard::proto::{ClientMsg, ExecRequest};
    let srv = spawn_serve(&["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let addr = srv.addr("exec", Transport::Tcp);
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let auth = ClientAuth::token(token);
        let c = ExecClient::connect(&addr, &auth, Duration::from_secs(5))
            .await
            .unwrap();
        let (mut tx, mut rx) = c.split();
        let req = ExecRequest::shell(1, "yes linhaifeng");
        tx.send(ClientMsg::Exec(req)).await.unwrap();
        // Read a little, so the flood is under way, then stop reading.
        for _ in 0..50 {
            rx.recv().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = srv.rss_kib();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = srv.rss_kib();
        eprintln!("server RSS while the client does not read: {before} KiB -> {after} KiB");
        assert!(
            after < before + 4 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        // Another client is still served meanwhile.
        let mut other = ExecClient::connect(&addr, &auth, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(other.run("echo fine").await.unwrap().stdout, b"fine\n");
        drop((tx, rx));
    });
}

#[test]
fn sigterm_kills_and_reaps_running_jobs_and_exits_within_the_grace() {
    use switchboard::client::{ClientAuth, ExecClient};
    use switchboard::proto::{ClientMsg, ExecRequest, ServerMsg};
    let mut srv = spawn_serve(&[
        "--echo",
        "tcp://127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--shutdown-grace",
        "5s",
    ]);
    let addr = srv.addr("exec", Transport::Tcp);
    let token = switchboard::secrets::read_token(&srv.token_file()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pids: Vec<u32> = rt.block_on(async {
        let c = ExecClient::connect(&addr, &ClientAuth::token(token), Duration::from_secs(5))
            .await
            .unwrap();
        let (mut tx, mut rx) = c.split();
        let mut pids = Vec::new();
        for id in 0..3 {
            let req = ExecRequest::shell(id, "sleep 300 & trap '' TERM; sleep 300");
            tx.send(ClientMsg::Exec(req)).await.unwrap();
            if let Some(ServerMsg::Started { pid, .. }) = rx.recv().await.unwrap() {
                pids.push(pid);
            }
        }
        std::mem::forget((tx, rx)); // keep the connection open through the shutdown
        pids
    });
    assert_eq!(pids.len(), 3);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    srv.signal(Signal::SIGTERM);
    let status = srv
        .wait_exit(Duration::from_secs(15))
        .expect("server exited");
    assert!(status.success(), "{status:?}");
    eprintln!("server exited {:?} after SIGTERM", started.elapsed());
    for pid in pids {
        // Killed with their groups, and reaped (no zombie left behind).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok();
        assert!(!alive, "job {pid} survived the server");
    }
}

fn scrape(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn metrics_change_as_load_arrives() {
    let srv = spawn_serve(&[
        "--echo",
        "127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let m = srv.addr("metrics", Transport::Tcp);
    let before = scrape(&m, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200 OK\r\n"), "{before}");
    assert!(before.contains("# TYPE switchboard_connections_total counter"));
    assert_eq!(
        metric(&before, "switchboard_connections_total{service=\"echo\"}"),
        0
    );
    assert_eq!(metric(&before, "switchboard_job_duration_seconds_count"), 0);

    let echo = srv.addr("echo", Transport::Tcp);
    for _ in 0..3 {
        assert_eq!(stdout(&client(&["echo", &echo, "hi"], None)), "HI\n");
    }
    let udp = srv.addr("echo", Transport::Udp);
    client(&["echo", "--udp", &udp, "x"], None);
    let o = client_in(
        srv.home.path(),
        &[
            "exec",
            &srv.addr("exec", Transport::Tcp),
            "--",
            "echo job; exit 2",
        ],
        None,
    );
    assert_eq!(exec_status(&o), 2);

    let after = scrape(&m, "/metrics");
    assert_eq!(
        metric(&after, "switchboard_connections_total{service=\"echo\"}"),
        3
    );
    assert_eq!(
        metric(
            &after,
            "switchboard_bytes_received_total{service=\"echo\",transport=\"tcp\"}"
        ),
        6
    );
    assert_eq!(
        metric(&after, "switchboard_udp_replies_total{service=\"echo\"}"),
        1
    );
    assert_eq!(
        metric(&after, "switchboard_jobs_total{outcome=\"exit_nonzero\"}"),
        1
    );
    assert_eq!(metric(&after, "switchboard_job_duration_seconds_count"), 1);
    assert_eq!(
        metric(
            &after,
            "switchboard_job_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &after,
            "switchboard_bytes_sent_total{service=\"exec\",transport=\"tcp\"}"
        ),
        4
    );
    assert!(scrape(&m, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn completions_man_page_version_and_json_logs() {
    for shell in ["bash", "zsh", "fish"] {
        let o = client(&["completions", shell], None);
        assert!(o.status.success());
        let text = stdout(&o);
        assert!(
            text.contains("switchboard") && text.contains("exec") && text.contains("--hosts"),
            "{shell}"
        );
    }
    let o = client(&["man"], None);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with(".ie") && stdout(&o).contains(".TH switchboard 1"));
    let o = client(&["--version"], None);
    assert_eq!(
        stdout(&o),
        format!("switchboard {}\n", env!("CARGO_PKG_VERSION"))
    );
    // Every subcommand's --help has examples.
    for sub in [
        "serve",
        "echo",
        "time",
        "exec",
        "bench",
        "completions",
        "man",
    ] {
        let o = client(&[sub, "--help"], None);
        assert!(
            stdout(&o).contains("Examples:"),
            "{sub} --help has no examples"
        );
    }

    let srv = spawn_serve(&[
        "--log-format",
        "json",
        "--echo",
        "tcp://127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
    ]);
    let o = client(&["echo", &srv.addr("echo", Transport::Tcp), "x"], None);
    assert!(o.status.success());
    let log = srv.log();
    assert!(!log.is_empty());
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
