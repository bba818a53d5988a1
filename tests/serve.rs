//! `switchboard serve` as a process: its banner, the config file, signals,
//! memory under clients that never read, the jobs' environment, metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, client, client_in, exec_status, serve_all, spawn_serve, stderr, stdout};
use nix::sys::signal::Signal;
use switchboard::endpoint::Transport;

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
    let rt = common::runtime();
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
    use switchboard::proto::{ClientMsg, ExecRequest, ServerMsg};
    let mut srv = spawn_serve(&[
        "--echo",
        "tcp://127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--shutdown-grace",
        "5s",
    ]);
    let pids: Vec<u32> = common::runtime().block_on(async {
        let c = srv.exec_client().await;
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
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
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
        metric(
            &before,
            "switchboard_connections_total{service=\"echo\",transport=\"tcp\"}"
        ),
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
        metric(
            &after,
            "switchboard_connections_total{service=\"echo\",transport=\"tcp\"}"
        ),
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
    assert!(metric(&after, "process_resident_memory_bytes") > 1_000_000);
    assert!(metric(&after, "process_open_fds") > 3);
    assert_eq!(
        metric(&after, "switchboard_build_info{version=\"0.1.0\"}"),
        1
    );
}

/// What a scraper and a probe send: keep-alive, HEAD, a query string
/// (Prometheus `params`), OpenMetrics by Accept, and methods that are not
/// allowed.
#[test]
fn the_metrics_endpoint_speaks_http_as_scrapers_do() {
    let srv = spawn_serve(&[
        "--echo",
        "none",
        "--time",
        "none",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let m = srv.addr("metrics", Transport::Tcp);
    let mut s = TcpStream::connect(&m).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One response's head, and the length of the body that follows.
    let read_one = |s: &mut TcpStream| -> (String, usize) {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        (head, len)
    };
    // Two requests pipelined on one connection, then a HEAD.
    write!(
        s,
        "GET /metrics?module=x HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n"
    )
    .unwrap();
    for want in ["text/plain; version=0.0.4", "application/openmetrics-text"] {
        let (head, len) = read_one(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains(want), "{head}");
        let mut text = vec![0u8; len];
        s.read_exact(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("switchboard_jobs_running 0"), "{text}");
        if want.starts_with("application") {
            assert!(text.ends_with("# EOF\n"), "{text}");
        }
    }
    write!(s, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, len) = read_one(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK") && len > 0, "{head}");
    // HEAD sends no body: the next response follows at once.
    write!(
        s,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 405 Method Not Allowed"),
        "{rest}"
    );
    assert!(rest.contains("Allow: GET, HEAD"), "{rest}");
}

/// `none` switches a service off, so a server runs without the others'
/// default ports; a bare `HOST:0` gives echo one port for TCP and UDP;
/// every service off is refused (issue #15, item 7).
#[test]
fn services_can_be_switched_off_and_echo_gets_one_port() {
    let srv =
        common::spawn_serve_exact(&["--echo", "127.0.0.1:0", "--time", "none", "--exec", "none"]);
    let services: Vec<&str> = srv.endpoints.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(services, ["echo", "echo"], "{:?}", srv.banner);
    let (tcp, udp) = (
        srv.addr("echo", Transport::Tcp),
        srv.addr("echo", Transport::Udp),
    );
    assert_eq!(tcp, udp, "one port for both: {:?}", srv.banner);
    for addr in [format!("tcp://{tcp}"), format!("udp://{udp}")] {
        let o = client(&["echo", &addr, "same", "port"], None);
        assert_eq!(stdout(&o), "SAME PORT\n", "{addr}: {}", stderr(&o));
    }
    let home = tempfile::tempdir().unwrap();
    for (args, why) in [
        (
            &["--exec", "none", "--exec", "127.0.0.1:0"][..],
            "cannot be combined",
        ),
        (
            &["--echo", "none", "--time", "none", "--exec", "none"][..],
            "nothing to serve",
        ),
    ] {
        // Under timeout(1): a server that wrongly starts is stopped.
        let o = Command::new("timeout")
            .args(["10", bin(), "serve"])
            .args(args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} started");
        assert!(stderr(&o).contains(why), "{args:?}: {}", stderr(&o));
    }
}

/// The page as Prometheus's own tooling reads it: Python's
/// prometheus_client parses both formats (.ci/run installs it; without
/// it, and outside CI, the test says it skipped).
#[test]
fn the_metrics_page_parses_with_pythons_prometheus_client() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("SB_CI").is_none(),
            "CI must have Python's prometheus_client"
        );
        eprintln!("SKIPPED: python3 -m pip install prometheus_client to run this test");
        return;
    }
    let srv = spawn_serve(&[
        "--echo",
        "127.0.0.1:0",
        "--time",
        "none",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let m = srv.addr("metrics", Transport::Tcp);
    let echo = srv.addr("echo", Transport::Tcp);
    assert_eq!(stdout(&client(&["echo", &echo, "hi"], None)), "HI\n");
    let script = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
url = "http://" + sys.argv[1] + "/metrics"
for parse, accept in ((prom, "text/plain"), (om, "application/openmetrics-text; version=1.0.0")):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=5) as r:
        families = {f.name: f for f in parse(r.read().decode())}
    conns = families["switchboard_connections"]
    assert conns.type == "counter", conns.type
    echo = [s for s in conns.samples if s.labels == {"service": "echo", "transport": "tcp"} and s.name.endswith("_total")]
    assert echo and echo[0].value == 1, conns.samples
    assert families["switchboard_job_duration_seconds"].type == "histogram"
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    print(accept, len(families), "families")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &m])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
