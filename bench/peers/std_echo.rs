//! Blocking std peers: a thread-per-connection TCP upper-case echo and a
//! single-threaded UDP echo loop (recv_from, upper-case, send_to).
//! Usage: std_echo tcp|udp 127.0.0.1:PORT
use std::io::{Read, Write};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "tcp".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:19002".into());
    if kind == "udp" {
        let sock = std::net::UdpSocket::bind(&addr)?;
        println!("ready {}", sock.local_addr()?);
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = sock.recv_from(&mut buf)?;
            buf[..n].make_ascii_uppercase();
            let _ = sock.send_to(&buf[..n], peer);
        }
    }
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("ready {}", listener.local_addr()?);
    for s in listener.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf[..n].make_ascii_uppercase();
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}
