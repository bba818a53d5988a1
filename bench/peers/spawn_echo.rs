//! Exec's floor over a socket: a blocking thread-per-connection TCP
//! server that answers each request by spawning `sh -c CMD` (piped and
//! read as `spawn_loop` does), waiting for it, then echoing the request
//! upper-cased. `switchboard bench echo --conns 1` against it measures a
//! job per round trip with no protocol, authentication or async runtime:
//! what any network job service pays on top of a local spawn (a client
//! process to wake, a socket each way), on the same cores.
//! Usage: spawn_echo 127.0.0.1:PORT [CMD]
use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn job(cmd: &str) -> std::io::Result<()> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut sink = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut sink)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut sink)?;
    }
    child.wait().map(drop)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:19112".into());
    let cmd = args.next().unwrap_or_else(|| "true".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("ready {}", listener.local_addr()?);
    for s in listener.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_nodelay(true);
        let cmd = cmd.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if job(&cmd).is_err() {
                    return;
                }
                buf[..n].make_ascii_uppercase();
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}
