//! The time service (PROTOCOL.md §2) over real loopback sockets: every bad
//! input gets its error datagram, and good formats print what Python's
//! `time.strftime` prints (the tutorial server's own implementation).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{loopback_config, start};
use switchboard::TimeClient;
use switchboard::client::ClientError;
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(5);

async fn ask(sock: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    sock.send(payload).await.unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = tokio::time::timeout(T, sock.recv(&mut buf))
        .await
        .expect("a reply, never silence")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn every_bad_input_gets_an_error_datagram_and_the_server_carries_on() {
    let srv = start(loopback_config()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(srv.time_udp).await.unwrap();
    let long = "%c".repeat(100);
    let over_limit = "x".repeat(1025);
    // The old worst case: a full datagram of %c, ~19 ms of CPU before the
    // request length was capped.
    let worst = "%c".repeat(32_753);
    let cases: Vec<(&[u8], &str)> = vec![
        (b"%Q", "error: unknown specifier %Q at byte 0"),
        (
            b"%Y %",
            "error: incomplete specifier % at end of format (byte 3)",
        ),
        (
            b"%",
            "error: incomplete specifier % at end of format (byte 0)",
        ),
        (b"%#z", "error: unsupported flag '#' in %#z at byte 0"),
        (b"%Y-%^b", "error: unsupported flag '^' in %^b at byte 3"),
        (
            b"%5d",
            "error: field widths are not supported: %5d at byte 0",
        ),
        (b"%.3f", "error: unknown specifier %. at byte 0"),
        (b"%Ex", "error: unknown specifier %E at byte 0"),
        ("%Y年%Q".as_bytes(), "error: unknown specifier %Q at byte 5"),
        (
            b"\xff\xfe%Y",
            "error: format is not valid UTF-8 (bad byte at byte 0)",
        ),
        (long.as_bytes(), "error: result longer than 1024 bytes"),
        (
            over_limit.as_bytes(),
            "error: format longer than 1024 bytes",
        ),
        (worst.as_bytes(), "error: format longer than 1024 bytes"),
    ];
    for (payload, want) in &cases {
        let got = ask(&sock, payload).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            *want,
            "payload {:?}",
            String::from_utf8_lossy(payload)
        );
        // The next good request is still answered.
        assert_eq!(ask(&sock, b"ok %%").await, b"ok %");
    }
    assert_eq!(srv.stats.time_udp.error_replies.get(), cases.len() as u64);
    srv.stop().await;
}

#[tokio::test]
async fn random_garbage_never_stops_the_service() {
    let srv = start(loopback_config()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(srv.time_udp).await.unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let alphabet = b"%%%%-_0^#EOQYmdHMSZz.:+1234567890aAbBcC\xff\xc3\xa9 ";
    for i in 0..500 {
        let len = i % 40;
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect();
        let reply = ask(&sock, &payload).await;
        assert!(reply.len() <= 1024);
        assert!(std::str::from_utf8(&reply).is_ok());
    }
    assert_eq!(ask(&sock, b"%%Y").await, b"%Y");
    srv.stop().await;
}

#[tokio::test]
async fn empty_request_means_the_default_format_and_the_client_reports_errors() {
    let srv = start(loopback_config()).await;
    let c = TimeClient::connect(&srv.time_udp.to_string(), T)
        .await
        .unwrap();
    let t = c.query("").await.unwrap();
    // %Y-%m-%d %X
    let b = t.as_bytes();
    assert_eq!(b.len(), 19, "{t}");
    assert!(
        b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        }),
        "{t}"
    );
    match c.query("%Q").await {
        Err(ClientError::Server(m)) => assert_eq!(m, "unknown specifier %Q at byte 0"),
        other => panic!("{other:?}"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn reply_cap_is_configurable() {
    let mut cfg = loopback_config();
    cfg.time.reply_cap = 64;
    let srv = start(cfg).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(srv.time_udp).await.unwrap();
    assert_eq!(ask(&sock, "%Y".repeat(16).as_bytes()).await.len(), 64);
    assert_eq!(
        ask(&sock, "%Y".repeat(17).as_bytes()).await,
        b"error: result longer than 64 bytes"
    );
    srv.stop().await;
}

/// Formats that must print exactly what C's strftime (via Python) prints.
const FORMATS: &[&str] = &[
    "%a",
    "%A",
    "%b",
    "%B",
    "%c",
    "%d",
    "%e",
    "%H",
    "%I",
    "%j",
    "%m",
    "%M",
    "%p",
    "%S",
    "%U",
    "%w",
    "%W",
    "%x",
    "%X",
    "%y",
    "%Y",
    "%z",
    "%Z",
    "%%",
    "%C",
    "%D",
    "%F",
    "%g",
    "%G",
    "%h",
    "%k",
    "%l",
    "%n",
    "%P",
    "%r",
    "%R",
    "%s",
    "%t",
    "%T",
    "%u",
    "%V",
    "%-d",
    "%_H",
    "%0e",
    "%-j",
    "%-I",
    "%_m",
    "%Y-%m-%d %X",
    "linhaifeng %Y年%m月%d日 nb",
];

fn python_strftime(formats: &[&str]) -> Vec<String> {
    let script =
        "import sys, time\nsys.stdout.write('\\0'.join(time.strftime(f) for f in sys.argv[1:]))";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(formats)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect(
            "python3 is required (it is on every machine of this project; .ci/run checks for it)",
        );
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn formats_match_python_time_strftime() {
    let mut cfg = loopback_config();
    cfg.time.utc = true;
    let srv = start(cfg).await;
    let c = TimeClient::connect(&srv.time_udp.to_string(), T)
        .await
        .unwrap();
    // Ask the server just before and just after Python: a clock tick in
    // between makes Python's answer equal one of the two.
    let mut before = Vec::new();
    for f in FORMATS {
        before.push(c.query(f).await.unwrap());
    }
    let python = python_strftime(FORMATS);
    let mut after = Vec::new();
    for f in FORMATS {
        after.push(c.query(f).await.unwrap());
    }
    for (i, f) in FORMATS.iter().enumerate() {
        assert!(
            python[i] == before[i] || python[i] == after[i],
            "{f}: python {:?}, switchboard {:?} / {:?}",
            python[i],
            before[i],
            after[i]
        );
    }
    srv.stop().await;
}

/// `TZ` values glibc reads (one of them malformed past its zone names, which
/// chrono read as UTC while the reply said `EDT`): the server's reply must
/// be what `date` prints under the same `TZ`, offset and name together.
#[test]
fn local_time_agrees_with_date_under_any_tz() {
    const FORMAT: &str = "%H:%M %z %Z";
    let mut zones = vec![
        "EST5EDT,M3.2.0,M3.2.0,M3.2.0",
        "JST-9",
        "<+0530>-5:30",
        "UTC0",
    ];
    if std::path::Path::new("/usr/share/zoneinfo/America/New_York").exists() {
        zones.push("America/New_York");
    } else {
        eprintln!("SKIP (partly): no tzdata, America/New_York not tried");
    }
    let date = |tz: &str| {
        let out = Command::new("date")
            .arg(format!("+{FORMAT}"))
            .env("TZ", tz)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    };
    for tz in zones {
        let srv = common::spawn_serve_env(&["--time", "udp://127.0.0.1:0"], &[("TZ", tz)]);
        let addr = srv.addr("time", switchboard::endpoint::Transport::Udp);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(T)).unwrap();
        sock.connect(&addr).unwrap();
        let before = date(tz);
        sock.send(FORMAT.as_bytes()).unwrap();
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).expect("a reply");
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        let after = date(tz);
        assert!(
            got == before || got == after,
            "TZ={tz}: server {got:?}, date {before:?} / {after:?}"
        );
    }
}
