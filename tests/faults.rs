//! Faults a production host sees, over real processes: a log that cannot
//! be written (full disk, closed pipe, a reader that stopped reading), a
//! full disk at first start, a known_hosts that cannot be updated, a
//! lossy path for the UDP clients.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use switchboard::endpoint::Transport;

/// Every service on port 0, exec included, and debug logging: a line or
/// more per connection and request, so an unwritable log is hit hard.
const VERBOSE: [&str; 7] = [
    "-v",
    "--echo",
    "127.0.0.1:0",
    "--time",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
];

/// `switchboard_log_lines_dropped_total` as the server reports it.
fn dropped_lines(srv: &ServeProcess) -> u64 {
    let addr = srv.addr("metrics", Transport::Tcp);
    let mut s = std::net::TcpStream::connect(&addr).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("switchboard_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines counter in {page}"))
}

/// 40 echo clients at once, 20 requests each, every reply checked; jobs
/// on one connection; two reloads; what the server must still do with a
/// log it cannot write.
fn serve_through(srv: &ServeProcess) {
    let echo = srv.addr("echo", Transport::Tcp);
    let rt = runtime();
    rt.block_on(async {
        let clients: Vec<_> = (0..40)
            .map(|i| {
                let echo = echo.clone();
                tokio::spawn(async move {
                    let mut c = switchboard::client::EchoClient::connect_tcp(
                        &echo,
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("echo connect");
                    for j in 0..20 {
                        let got = c.request(format!("c{i} r{j}").as_bytes()).await;
                        assert_eq!(got.expect("echo reply"), format!("C{i} R{j}").as_bytes());
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.expect("echo client");
        }
        let mut exec = srv.exec_client().await;
        for i in 0..3 {
            let out = exec.run(&format!("echo job{i}")).await.expect("job");
            assert_eq!(out.stdout, format!("job{i}\n").as_bytes());
        }
    });
    for _ in 0..2 {
        srv.signal(Signal::SIGHUP);
    }
    // Reloading still works: the connection after it is served, and so is
    // a job (the reload task did not die on a log line).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        srv.run_job(&srv.addr("exec", Transport::Tcp), "echo after-reload"),
        b"after-reload\n"
    );
}

/// SIGTERM still ends the server, promptly and cleanly.
fn stops_on_sigterm(srv: &mut ServeProcess) {
    srv.signal(Signal::SIGTERM);
    let status = srv
        .wait_exit(Duration::from_secs(15))
        .expect("the server ignored SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_server_whose_stderr_is_a_full_disk_serves_and_stops() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut srv = spawn_serve_stderr(&VERBOSE, Stdio::from(full));
    serve_through(&srv);
    assert!(dropped_lines(&srv) > 100, "every debug line was lost");
    stops_on_sigterm(&mut srv);
}

#[test]
fn a_server_whose_stderr_pipe_was_closed_serves_and_stops() {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut srv = spawn_serve_stderr(&VERBOSE, Stdio::from(write));
    drop(read);
    serve_through(&srv);
    assert!(dropped_lines(&srv) > 100);
    stops_on_sigterm(&mut srv);
}

#[test]
fn a_log_reader_that_stops_reading_blocks_nothing_and_hears_of_the_loss() {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut srv = spawn_serve_stderr(&VERBOSE, Stdio::from(write));
    // Nobody reads: the pipe's 64 KiB fill up, then the queue; -v logs
    // three lines per connection, so 2,000 connections overflow both.
    serve_through(&srv);
    let echo = srv.addr("echo", Transport::Tcp);
    for i in 0..2000 {
        let mut s = std::net::TcpStream::connect(&echo).expect("echo");
        s.write_all(b"x\n").unwrap();
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&reply, b"X\n");
    }
    assert!(dropped_lines(&srv) > 0);
    // Reading again: the first lines out are the backlog, and the loss is
    // said before the lines after it.
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::fs::File::from(read).read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    stops_on_sigterm(&mut srv);
    let text = reader.join().unwrap();
    assert!(
        text.contains("log line(s) lost (the log writer fell behind)"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
}

#[test]
fn a_log_on_a_disk_that_fills_and_frees_reports_what_was_lost() {
    let Some(disk) = SmallTmpfs::mount("1m", "a_log_on_a_disk_that_fills_and_frees") else {
        return;
    };
    let log_path = disk.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut srv = spawn_serve_stderr(&VERBOSE, Stdio::from(log));
    let filler = disk.fill();
    serve_through(&srv);
    let lost = dropped_lines(&srv);
    assert!(lost > 0);
    std::fs::remove_file(filler).unwrap();
    // The next line written says how many went missing, and why.
    srv.run_job(&srv.addr("exec", Transport::Tcp), "true");
    let reported = wait_until_sync(Duration::from_secs(10), || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("log line(s) lost (the log could not be written: No space left on device")
    });
    assert!(reported, "no loss notice after space came back");
    stops_on_sigterm(&mut srv);
}

/// Polls `cond` every 20 ms for at most `limit`.
fn wait_until_sync(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `switchboard serve ARGS` with HOME at `home`: its exit status and
/// stderr when it fails to start (it is stopped by PID if it starts).
fn start_in(home: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(bin())
        .arg("serve")
        .args(args)
        .args([
            "--allow-root",
            "--echo",
            "127.0.0.1:0",
            "--time",
            "127.0.0.1:0",
        ])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut banner = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    // Until "ready" or the end: a started server is then stopped.
    while out.read(&mut byte).unwrap_or(0) == 1 {
        banner.push(byte[0] as char);
        if banner.contains("ready") {
            break;
        }
    }
    if banner.contains("ready") {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
    }
    let status = exit_within(&mut child, Duration::from_secs(15)).expect("serve did not exit");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = (!banner.contains("ready")).then(|| status.code().unwrap_or(-1));
    (code, err)
}

/// Names in `dir`, recursively, with their sizes.
fn tree(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(tree(&e.path()));
        } else {
            out.push((e.path().display().to_string(), m.len()));
        }
    }
    out
}

#[test]
fn a_first_start_on_a_full_disk_leaves_no_torn_file_and_the_next_start_works() {
    let Some(disk) = SmallTmpfs::mount("256k", "a_first_start_on_a_full_disk") else {
        return;
    };
    let home = disk.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let filler = disk.fill();
    let tls = ["--exec", "tls://127.0.0.1:0", "--tls-self-signed"];
    let (failed, err) = start_in(&home, &tls);
    assert_eq!(failed, Some(1), "{err}");
    let token = home.join(".config/switchboard/token");
    assert!(
        err.contains(&*token.to_string_lossy()),
        "the error names the file: {err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        tree(&home).is_empty(),
        "nothing half-written is left: {:?}",
        tree(&home)
    );

    std::fs::remove_file(&filler).unwrap();
    let (failed, err) = start_in(&home, &tls);
    assert_eq!(failed, None, "the start after space came back: {err}");
    let files = tree(&home);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|(_, size)| *size > 0), "{files:?}");
}

#[test]
fn a_full_disk_between_the_token_and_the_certificate_leaves_no_torn_certificate() {
    let Some(disk) = SmallTmpfs::mount("256k", "a_full_disk_between_the_token_and_the_certificate")
    else {
        return;
    };
    let home = disk.path().join("home");
    // The token is there; the disk fills before the self-signed pair.
    let (failed, err) = start_in(&home, &[]);
    assert_eq!(failed, None, "{err}");
    let filler = disk.fill();
    let tls = ["--exec", "tls://127.0.0.1:0", "--tls-self-signed"];
    let (failed, err) = start_in(&home, &tls);
    assert_eq!(failed, Some(1), "{err}");
    assert!(
        err.contains("tls-key.pem"),
        "the error names the file: {err}"
    );
    let files = tree(&home);
    assert_eq!(files.len(), 1, "only the token: {files:?}");
    std::fs::remove_file(&filler).unwrap();
    let (failed, err) = start_in(&home, &tls);
    assert_eq!(failed, None, "{err}");
}

#[test]
fn a_torn_token_of_an_older_version_is_replaced_at_start() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/switchboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "").unwrap();
    let (failed, err) = start_in(home.path(), &[]);
    assert_eq!(failed, None, "{err}");
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    assert_eq!(token.trim().len(), 64, "{token:?}");
}

#[test]
fn servers_started_together_on_a_fresh_home_share_one_token() {
    let shared = tempfile::tempdir().unwrap();
    let token = shared.path().join("token");
    let token_arg = token.to_string_lossy().into_owned();
    let args = [
        "--token-file",
        token_arg.as_str(),
        "--echo",
        "127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
    ];
    let servers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| spawn_serve(&args))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = servers
        .iter()
        .filter(|srv| srv.banner.iter().any(|l| l.contains("token created")))
        .count();
    assert_eq!(
        created, 1,
        "one server created the token, the others read it"
    );
    for srv in &servers {
        let out = runtime().block_on(async {
            let t = switchboard::secrets::read_token(&token).unwrap();
            let mut c = switchboard::client::ExecClient::connect(
                &srv.addr("exec", Transport::Tcp),
                &switchboard::client::ClientAuth::token(t),
                Duration::from_secs(10),
            )
            .await
            .expect("every server accepts the one token");
            c.run("echo ok").await.unwrap().stdout
        });
        assert_eq!(out, b"ok\n");
    }
}

/// A TLS exec server with a self-signed certificate: its `tls://` address
/// and token text.
fn tls_server() -> (ServeProcess, String, String) {
    let srv = spawn_serve(&[
        "--echo",
        "127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--exec",
        "tls://127.0.0.1:0",
        "--tls-self-signed",
    ]);
    let addr = format!("tls://{}", srv.addr("exec", Transport::Tls));
    let token = std::fs::read_to_string(srv.token_file()).unwrap();
    (srv, addr, token.trim().to_string())
}

/// `switchboard exec ADDR --known-hosts FILE -- CMD` with the token in the
/// environment and HOME at `home`; a client that hangs (on a lock, say) is
/// killed and fails the test.
fn exec_tofu(
    home: &std::path::Path,
    known: &std::path::Path,
    addr: &str,
    token: &str,
) -> std::process::Output {
    let mut child = std::process::Command::new(bin())
        .args(["exec", addr, "--known-hosts"])
        .arg(known)
        .args(["--", "echo hi"])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("SWITCHBOARD_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if exit_within(&mut child, Duration::from_secs(20)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the client hung (known_hosts {})", known.display());
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_host_key_that_cannot_be_recorded_is_a_warning_not_a_silent_success() {
    let Some(disk) = SmallTmpfs::mount("256k", "a_host_key_that_cannot_be_recorded") else {
        return;
    };
    let (_srv, addr, token) = tls_server();
    let known = disk.path().join("known_hosts");
    // An existing file with one good line: a failed update must keep it.
    let other = format!("127.0.0.1:1 {}\n", "ab".repeat(32));
    std::fs::write(&known, &other).unwrap();
    disk.fill();
    let o = exec_tofu(disk.path(), &known, &addr, &token);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.stdout, b"hi\n", "{err}");
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("trusted for this connection only"),
        "{err}"
    );
    assert!(
        err.contains(&*known.to_string_lossy()),
        "names the file: {err}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), other, "untouched");
}

#[test]
fn a_torn_known_hosts_line_is_reported_by_number_and_never_joined() {
    let (_srv, addr, token) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let known = home.path().join("known_hosts");
    // What an append cut by a full disk left behind.
    std::fs::write(
        &known,
        format!("# hosts\n127.0.0.1:1 {}\n127.0.", "cd".repeat(32)),
    )
    .unwrap();
    let before = std::fs::read(&known).unwrap();
    let o = exec_tofu(home.path(), &known, &addr, &token);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "nothing ran: {err}");
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(std::fs::read(&known).unwrap(), before);
}

#[test]
fn clients_recording_hosts_at_once_lose_none() {
    let servers: Vec<_> = (0..3).map(|_| tls_server()).collect();
    let home = tempfile::tempdir().unwrap();
    let known = home.path().join("known_hosts");
    std::thread::scope(|s| {
        for (_, addr, token) in &servers {
            for _ in 0..3 {
                let (home, known) = (home.path(), &known);
                s.spawn(move || {
                    let o = exec_tofu(home, known, addr, token);
                    assert_eq!(o.stdout, b"hi\n", "{}", String::from_utf8_lossy(&o.stderr));
                });
            }
        }
    });
    let text = std::fs::read_to_string(&known).unwrap();
    let mut keys: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
    keys.sort();
    let mut want: Vec<String> = servers
        .iter()
        .map(|(_, a, _)| a.trim_start_matches("tls://").to_string())
        .collect();
    want.sort();
    assert_eq!(keys, want, "one line per server: {text}");
}

/// Through 5% loss each way (a proxy that drops the same datagrams on
/// every run), the UDP clients' default retries answer every request; sent
/// once each, as before `--retries`, about one in ten is lost.
#[tokio::test]
async fn udp_clients_retry_through_a_lossy_path() {
    use switchboard::client::DEFAULT_UDP_RETRIES;
    use switchboard::{EchoClient, TimeClient};
    let srv = start(loopback_config()).await;
    for (service, target) in [("echo", srv.echo_udp), ("time", srv.time_udp)] {
        for retries in [DEFAULT_UDP_RETRIES, 0] {
            let proxy = LossyUdpProxy::with_loss(target, 5);
            let addr = proxy.addr.to_string();
            // Retrying: 100 ms, 200 ms, then 400 ms; once: 200 ms.
            let timeout = Duration::from_millis(if retries > 0 { 700 } else { 200 });
            let mut failed = 0;
            if service == "echo" {
                let mut c = EchoClient::connect_udp(&addr, timeout)
                    .await
                    .unwrap()
                    .with_retries(retries);
                for i in 0..100 {
                    match c.request(format!("ping {i}").as_bytes()).await {
                        Ok(r) => assert_eq!(r, format!("PING {i}").as_bytes()),
                        Err(_) => failed += 1,
                    }
                }
            } else {
                let c = TimeClient::connect(&addr, timeout)
                    .await
                    .unwrap()
                    .with_retries(retries);
                for _ in 0..100 {
                    match c.query("%Y").await {
                        Ok(r) => assert_eq!(r.len(), 4, "{r}"),
                        Err(_) => failed += 1,
                    }
                }
            }
            let dropped = proxy.dropped.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "{service}, retries {retries}: {failed} of 100 failed, {dropped} datagrams dropped"
            );
            assert!(
                dropped >= 5,
                "{service}: the path was not lossy ({dropped} dropped)"
            );
            if retries > 0 {
                assert_eq!(failed, 0, "{service}: {failed} of 100 lost despite retries");
            } else {
                assert!(failed > 0, "{service}: sent once, nothing was lost?");
            }
        }
    }
    srv.stop().await;
}

/// The CLI's UDP clients retry by default, `--retries 0` sends once, and a
/// request that gets no reply says how many tries were made.
#[test]
fn udp_client_errors_say_how_many_tries_were_made() {
    let srv = spawn_serve(&["--echo", "udp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let echo: std::net::SocketAddr = srv.addr("echo", Transport::Udp).parse().unwrap();
    let time: std::net::SocketAddr = srv.addr("time", Transport::Udp).parse().unwrap();

    // Every first try lost (even datagrams toward the server).
    let proxy = LossyUdpProxy::start(echo, |up, i| up && i % 2 == 0);
    let p = proxy.addr.to_string();
    let o = client(&["echo", "--udp", "--timeout", "2s", &p, "hi"], None);
    assert_eq!(
        (exec_status(&o), stdout(&o).as_str()),
        (0, "HI\n"),
        "{}",
        stderr(&o)
    );
    assert_eq!(proxy.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
    let o = client(
        &[
            "echo",
            "--retries",
            "0",
            "--timeout",
            "300ms",
            &format!("udp://{p}"),
            "hi",
        ],
        None,
    );
    assert_ne!(exec_status(&o), 0);
    assert!(
        stderr(&o).contains(&format!("no reply from udp://{p} after 1 try in 300ms")),
        "{}",
        stderr(&o)
    );

    // Nothing gets through.
    let black_hole = LossyUdpProxy::start(time, |up, _| up);
    let p = black_hole.addr.to_string();
    let o = client(&["time", "--timeout", "300ms", &p, "%H"], None);
    assert_ne!(exec_status(&o), 0);
    assert!(
        stderr(&o).contains(&format!("no reply from udp://{p} after 3 tries in 300ms")),
        "{}",
        stderr(&o)
    );
    let o = client(&["time", "--retries", "11", &p, "%H"], None);
    assert!(stderr(&o).contains("11 is not in 0..=10"), "{}", stderr(&o));

    // TCP retransmits by itself: --retries there is a mistake, said so.
    let tcp = srv.addr("exec", Transport::Tcp);
    let o = client(
        &["echo", "--retries", "1", &format!("tcp://{tcp}"), "hi"],
        None,
    );
    assert!(
        stderr(&o).contains("--retries is for UDP"),
        "{}",
        stderr(&o)
    );
}

/// A last line without its newline (a hand edit) gets the new host on a
/// line of its own, and the file stays readable.
#[test]
fn a_known_hosts_without_a_final_newline_stays_readable() {
    let (_srv, addr, token) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let known = home.path().join("known_hosts");
    let other = format!("127.0.0.1:1 {}", "ab".repeat(32));
    std::fs::write(&known, &other).unwrap();
    for _ in 0..2 {
        let o = exec_tofu(home.path(), &known, &addr, &token);
        assert_eq!(o.stdout, b"hi\n", "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read_to_string(&known).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], other);
    assert!(lines[1].starts_with(&addr["tls://".len()..]), "{text}");
}

/// A lock file that is a FIFO, a symlink, or held by a stopped process
/// makes recording fail (a warning, the job runs), never a hang, and a
/// dangling symlink there creates nothing where it points.
#[test]
fn a_known_hosts_lock_that_cannot_be_taken_is_a_warning_not_a_hang() {
    let (_srv, addr, token) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let known = home.path().join("known_hosts");
    let lock = home.path().join("known_hosts.lock");
    let elsewhere = home.path().join("elsewhere");
    let check = |what: &str, why: &str| {
        let o = exec_tofu(home.path(), &known, &addr, &token);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.stdout, b"hi\n", "{what}: {err}");
        assert!(
            err.contains("trusted for this connection only") && err.contains(why),
            "{what}: {err}"
        );
        assert!(!known.exists(), "{what}: recorded without the lock");
    };
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    check("fifo", "known_hosts.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    check("dangling symlink", "cannot open");
    assert!(!elsewhere.exists(), "the symlink was followed");
    std::fs::remove_file(&lock).unwrap();
    // Held by another process that does not let go (this one, for the
    // client: flock locks belong to the open file).
    let file = std::fs::File::create(&lock).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    check("held", "held by another process");
    drop(held);
}

/// The client never writes a known_hosts larger than it will read (1 MiB):
/// the new host is a warning, the file stays as it was and readable.
#[test]
fn a_full_known_hosts_is_not_grown_past_what_is_read() {
    let (_srv, addr, token) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let known = home.path().join("known_hosts");
    let mut text = String::new();
    let mut port = 1u32;
    while text.len() < (1 << 20) - 40 {
        text.push_str(&format!(
            "10.0.{}.{}:{} {}\n",
            port / 250 % 250,
            port % 250,
            port % 65_000 + 1,
            "ef".repeat(32)
        ));
        port += 1;
    }
    std::fs::write(&known, &text).unwrap();
    let o = exec_tofu(home.path(), &known, &addr, &token);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.stdout, b"hi\n", "{err}");
    assert!(err.contains("remove old entries"), "{err}");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);
}

/// A known_hosts that is a symlink is updated where it points; the link
/// stays a link.
#[test]
fn a_known_hosts_symlink_is_updated_through_the_link() {
    let (_srv, addr, token) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let real = home.path().join("dotfiles-known_hosts");
    let other = format!("127.0.0.1:1 {}\n", "ab".repeat(32));
    std::fs::write(&real, &other).unwrap();
    let known = home.path().join("known_hosts");
    std::os::unix::fs::symlink(&real, &known).unwrap();
    let o = exec_tofu(home.path(), &known, &addr, &token);
    assert_eq!(o.stdout, b"hi\n", "{}", String::from_utf8_lossy(&o.stderr));
    assert!(known.symlink_metadata().unwrap().file_type().is_symlink());
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(
        text.starts_with(&other) && text.lines().count() == 2,
        "{text}"
    );
}
