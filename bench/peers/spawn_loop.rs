//! Exec's floor: spawn `sh -c CMD` and wait, in a loop, locally, with
//! stdout and stderr piped and read as a job's are. Prints spawns/s.
//! Usage: spawn_loop SECONDS [CMD]
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let cmd = args.next().unwrap_or_else(|| "true".into());
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let mut child = Command::new("/bin/sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut sink = Vec::new();
        let _ = child.stdout.take().map(|mut o| o.read_to_end(&mut sink));
        let _ = child.stderr.take().map(|mut e| e.read_to_end(&mut sink));
        child.wait().expect("wait");
        n += 1;
    }
    println!(
        "{{\"spawns_per_sec\":{:.1}}}",
        n as f64 / start.elapsed().as_secs_f64()
    );
}
