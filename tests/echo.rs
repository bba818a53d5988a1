//! The echo service (PROTOCOL.md §1) over real loopback sockets, through the
//! typed client and through raw sockets.

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use common::{loopback_config, start, wait_until};
use switchboard::EchoClient;
use switchboard::config::EchoMode;
use switchboard::endpoint::{Endpoint, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(5);

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

/// Bytes 0..=255 repeated, then a pseudo-random tail: every byte value,
/// including UTF-8 lead and continuation bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|i| {
            if i < 4096 {
                i as u8
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

#[tokio::test]
async fn tutorial_message_over_tcp_client_and_raw_socket() {
    let srv = start(loopback_config()).await;
    let addr = srv.echo_tcp.to_string();

    let mut c = EchoClient::connect_tcp(&addr, T).await.unwrap();
    assert_eq!(c.request(b"linhaifeng nb").await.unwrap(), b"LINHAIFENG NB");
    assert_eq!(
        c.request(b"again, same connection").await.unwrap(),
        b"AGAIN, SAME CONNECTION"
    );
    assert!(c.finish().await.unwrap().is_empty());

    // Raw: write, half-close, read to EOF (the server half-closes after echoing).
    let mut s = TcpStream::connect(srv.echo_tcp).await.unwrap();
    s.write_all(b"linhaifeng nb").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"LINHAIFENG NB");
    srv.stop().await;
}

#[tokio::test]
async fn only_ascii_letters_change_and_utf8_passes_through() {
    let srv = start(loopback_config()).await;
    let mut c = EchoClient::connect_tcp(&srv.echo_tcp.to_string(), T)
        .await
        .unwrap();
    let text = "héllo wörld, 你好 linhaifeng ß ǆ".as_bytes();
    let reply = c.request(text).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&reply).unwrap(),
        "HéLLO WöRLD, 你好 LINHAIFENG ß ǆ"
    );
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(c.request(&all).await.unwrap(), upper(&all));
    srv.stop().await;
}

#[tokio::test]
async fn sixteen_mib_in_odd_chunks_with_half_close_comes_back_intact() {
    let srv = start(loopback_config()).await;
    let data = pattern(16 * 1024 * 1024);
    let expected = upper(&data);
    let stream = TcpStream::connect(srv.echo_tcp).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let sizes = [1usize, 7, 4093, 65_537, 13, 100_003, 2, 8191, 31_337];
        let mut off = 0;
        let mut i = 0;
        while off < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - off);
            wr.write_all(&data[off..off + n]).await.unwrap();
            off += n;
            i += 1;
        }
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(expected.len());
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut got))
        .await
        .expect("echo finished")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "first differing byte");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_are_served_at_once() {
    const N: usize = 1000;
    let srv = start(loopback_config()).await;
    let addr = srv.echo_tcp.to_string();
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(EchoClient::connect_tcp(&addr, T).await.unwrap());
    }
    // All N are open on the server at the same time.
    let stats = srv.stats.clone();
    assert!(
        wait_until(T, || stats.echo_tcp.open.get() == N as u64).await,
        "open connections: {}",
        stats.echo_tcp.open.get()
    );
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for round in 0..3 {
                    let msg = format!("client {i} round {round} linhaifeng nb");
                    let reply = c.request(msg.as_bytes()).await.unwrap();
                    assert_eq!(reply, msg.to_uppercase().as_bytes());
                }
                c.finish().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(srv.stats.echo_tcp.accepted.get(), N as u64);
    assert_eq!(srv.stats.echo_tcp.rejected.get(), 0);
    srv.stop().await;
}

#[tokio::test]
async fn plain_mode_echoes_unchanged() {
    let mut cfg = loopback_config();
    cfg.echo.mode = EchoMode::Plain;
    let srv = start(cfg).await;
    let mut c = EchoClient::connect_tcp(&srv.echo_tcp.to_string(), T)
        .await
        .unwrap();
    assert_eq!(c.request(b"linhaifeng nb").await.unwrap(), b"linhaifeng nb");
    let mut u = EchoClient::connect_udp(&srv.echo_udp.to_string(), T)
        .await
        .unwrap();
    assert_eq!(u.request(b"linhaifeng nb").await.unwrap(), b"linhaifeng nb");
    srv.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let mut cfg = loopback_config();
    cfg.echo.max_connections = 3;
    let srv = start(cfg).await;
    let addr = srv.echo_tcp.to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = EchoClient::connect_tcp(&addr, T).await.unwrap();
        assert_eq!(c.request(b"x").await.unwrap(), b"X");
        held.push(c);
    }
    // The fourth connects (the kernel accepts it) but is closed promptly.
    let mut extra = TcpStream::connect(srv.echo_tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(T, extra.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(r, Ok(0) | Err(_)), "got {r:?}");
    assert_eq!(srv.stats.echo_tcp.rejected.get(), 1);

    // Freeing a slot lets a new client in.
    held.pop().unwrap().finish().await.unwrap();
    let stats = srv.stats.clone();
    assert!(wait_until(T, || stats.echo_tcp.open.get() == 2).await);
    let mut c = EchoClient::connect_tcp(&addr, T).await.unwrap();
    assert_eq!(c.request(b"back in").await.unwrap(), b"BACK IN");
    srv.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let mut cfg = loopback_config();
    cfg.echo.idle_timeout = Duration::from_millis(300);
    let srv = start(cfg).await;
    let mut s = TcpStream::connect(srv.echo_tcp).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HI");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(T, s.read_to_end(&mut rest))
        .await
        .expect("closed by the server");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(srv.stats.echo_tcp.idle_closed.get(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_make_the_server_buffer() {
    let mut cfg = loopback_config();
    cfg.echo.idle_timeout = Duration::from_secs(30);
    let srv = start(cfg).await;
    let s = TcpStream::connect(srv.echo_tcp).await.unwrap();
    // Push for up to 3 s, or until writes have been stuck for 500 ms.
    let chunk = vec![b'a'; 64 * 1024];
    let mut written: usize = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(500), async {
            s.writable().await?;
            s.try_write(&chunk)
        })
        .await
        {
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => break, // stuck: back-pressure reached us
        }
    }
    // Without back-pressure loopback takes gigabytes in 3 s; with it, only
    // the kernel's socket buffers (a few MiB) plus one server buffer fill.
    assert!(
        written < 64 * 1024 * 1024,
        "server accepted {written} bytes from a client that never reads"
    );
    // Other clients are still served.
    let mut c = EchoClient::connect_tcp(&srv.echo_tcp.to_string(), T)
        .await
        .unwrap();
    assert_eq!(c.request(b"still here").await.unwrap(), b"STILL HERE");
    srv.stop().await;
}

#[tokio::test]
async fn udp_echo_datagrams_empty_and_full_size() {
    let srv = start(loopback_config()).await;
    let addr = srv.echo_udp.to_string();
    let mut c = EchoClient::connect_udp(&addr, T).await.unwrap();
    assert_eq!(c.request(b"linhaifeng nb").await.unwrap(), b"LINHAIFENG NB");
    assert_eq!(
        c.request("你好 abc".as_bytes()).await.unwrap(),
        "你好 ABC".as_bytes()
    );
    assert_eq!(c.request(b"").await.unwrap(), b"");
    let big = pattern(65_507);
    assert_eq!(c.request(&big).await.unwrap(), upper(&big));

    // Raw socket, unconnected: the reply comes from the service's address.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(b"raw", srv.echo_udp).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(T, raw.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"RAW"[..], srv.echo_udp));
    srv.stop().await;
}

/// A burst from many sources at once, so the server takes several
/// datagrams per receive and answers several per send: every reply goes
/// to the source of its own request, none lost (loopback drops nothing at
/// this volume), none crossed.
#[tokio::test]
async fn a_udp_burst_from_many_sources_is_answered_each_to_its_own() {
    let mut cfg = loopback_config();
    cfg.udp.rate_limit = 0;
    let srv = start(cfg).await;
    let mut socks = Vec::new();
    for _ in 0..64 {
        socks.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    for (i, s) in socks.iter().enumerate() {
        for k in 0..4 {
            let msg = format!("src{i}-msg{k}-{}", "x".repeat(i * 7 % 300));
            s.send_to(msg.as_bytes(), srv.echo_udp).await.unwrap();
        }
    }
    let mut buf = vec![0u8; 2048];
    for (i, s) in socks.iter().enumerate() {
        let mut got = Vec::new();
        for _ in 0..4 {
            let (n, from) = tokio::time::timeout(T, s.recv_from(&mut buf))
                .await
                .expect("every datagram answered")
                .unwrap();
            assert_eq!(from, srv.echo_udp);
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        got.sort();
        let want: Vec<String> = (0..4)
            .map(|k| format!("SRC{i}-MSG{k}-{}", "X".repeat(i * 7 % 300)))
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(srv.stats.echo_udp.replied.get(), 256);
    srv.stop().await;
}

/// Binds a UDP socket on a privileged port if we may (root); None otherwise.
fn bind_privileged() -> Option<StdUdpSocket> {
    (600..1024).find_map(|p| StdUdpSocket::bind(("127.0.0.1", p)).ok())
}

#[tokio::test]
async fn udp_from_privileged_source_ports_is_dropped() {
    let srv = start(loopback_config()).await;
    let Some(low) = bind_privileged() else {
        eprintln!("skipped: cannot bind a port below 1024 (not root)");
        return;
    };
    low.set_nonblocking(true).unwrap();
    let low = UdpSocket::from_std(low).unwrap();
    for target in [srv.echo_udp, srv.time_udp] {
        low.send_to(b"loop?", target).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_millis(400), low.recv_from(&mut buf)).await;
        assert!(r.is_err(), "a reply went to a privileged port: {r:?}");
    }
    assert_eq!(srv.stats.echo_udp.dropped_low_port.get(), 1);
    assert_eq!(srv.stats.time_udp.dropped_low_port.get(), 1);
    // Ordinary clients are unaffected.
    let mut c = EchoClient::connect_udp(&srv.echo_udp.to_string(), T)
        .await
        .unwrap();
    assert_eq!(c.request(b"ok").await.unwrap(), b"OK");
    srv.stop().await;
}

#[tokio::test]
async fn udp_rate_limit_is_per_source_address() {
    let mut cfg = loopback_config();
    cfg.udp.rate_limit = 5;
    cfg.udp.rate_burst = 5;
    let srv = start(cfg).await;
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..50 {
        flood
            .send_to(format!("{i}").as_bytes(), srv.echo_udp)
            .await
            .unwrap();
    }
    let mut replies = 0;
    let mut buf = [0u8; 64];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), flood.recv_from(&mut buf)).await
    {
        replies += 1;
    }
    // The burst, plus what refilled while the test ran (5/s; the bound
    // allows two slow seconds on a shared machine).
    assert!((5..=15).contains(&replies), "replies: {replies}");
    assert!(srv.stats.echo_udp.dropped_rate_limited.get() >= 40);
    // Another source address has its own allowance.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other.send_to(b"other", srv.echo_udp).await.unwrap();
    let (n, _) = tokio::time::timeout(T, other.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"OTHER");
    srv.stop().await;
}

#[tokio::test]
async fn ipv6_loopback_endpoints() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let mut cfg = loopback_config();
    cfg.echo.listen = vec![
        Endpoint::new(Transport::Tcp, "::1", 0),
        Endpoint::new(Transport::Udp, "::1", 0),
    ];
    let srv = start(cfg).await;
    assert!(srv.echo_tcp.is_ipv6());
    let addr: SocketAddr = srv.echo_tcp;
    let mut c = EchoClient::connect_tcp(&addr.to_string(), T).await.unwrap();
    assert_eq!(c.request(b"v6").await.unwrap(), b"V6");
    let mut u = EchoClient::connect_udp(&srv.echo_udp.to_string(), T)
        .await
        .unwrap();
    assert_eq!(u.request(b"v6 udp").await.unwrap(), b"V6 UDP");
    srv.stop().await;
}

#[tokio::test]
async fn the_per_source_limit_spares_other_sources() {
    let mut cfg = loopback_config();
    cfg.echo.max_connections_per_source = 2;
    let srv = start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = EchoClient::connect_tcp(&srv.echo_tcp.to_string(), T)
            .await
            .unwrap();
        assert_eq!(c.request(b"x").await.unwrap(), b"X");
        held.push(c);
    }
    let mut third = TcpStream::connect(srv.echo_tcp).await.unwrap();
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(T, third.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(srv.stats.echo_tcp.rejected_source.get(), 1);
    // Another source address is not affected.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock.connect(srv.echo_tcp).await.unwrap();
    other.write_all(b"other").await.unwrap();
    let mut got = [0u8; 5];
    other.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"OTHER");
    srv.stop().await;
}
