//! The exec stream's floor: a child's pipe relayed to a TCP connection by
//! a minimal blocking relay, in the shape a job's output takes (64 KiB
//! reads from the pipe, each written after a small header with one
//! `writev`), read on the far side by another thread. Like a job's
//! output it crosses a pipe and a socket, with three parties (producer,
//! relay, reader) on the same cores, where iperf3 has two.
//! Prints `{"mb_per_sec": ...}` (10^6 bytes per second).
//! Usage: pipe_relay BYTES
use std::io::{IoSlice, Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let bytes: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n as u64,
            }
        }
    });
    let mut sock = std::net::TcpStream::connect(addr)?;
    let _ = sock.set_nodelay(true);
    let start = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
    // A header of the size a stdout frame's has.
    let header = [b'h'; 40];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut segs = [IoSlice::new(&header), IoSlice::new(&buf[..n])];
        let mut segs = &mut segs[..];
        while !segs.is_empty() {
            let w = sock.write_vectored(segs)?;
            IoSlice::advance_slices(&mut segs, w);
        }
    }
    child.wait()?;
    drop(sock);
    let got = reader.join().map_err(|_| std::io::ErrorKind::Other)??;
    let secs = start.elapsed().as_secs_f64();
    println!("{{\"mb_per_sec\":{:.1}}}", got as f64 / secs / 1e6);
    Ok(())
}
