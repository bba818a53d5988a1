//! The tutorial's own Python clients (tests/interop/) against the real
//! `switchboard serve` binary.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::spawn_serve;
use switchboard::endpoint::Transport;

/// Runs `script PORT` with `input` on stdin; returns its stdout.
fn run_python(script: &str, port: u16, input: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let mut child = match Command::new("python3")
        .arg(&path)
        .arg(port.to_string())
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run python3 ({e}): python3 is required (it is on every machine of this project; .ci/run checks for it)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn port(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn tutorial_clients_get_correct_answers() {
    let srv = spawn_serve(&[
        "--echo",
        "127.0.0.1:0",
        "--time",
        "udp://127.0.0.1:0",
        "--utc",
    ]);
    let echo_tcp = port(&srv.addr("echo", Transport::Tcp));
    let echo_udp = port(&srv.addr("echo", Transport::Udp));
    let time_udp = port(&srv.addr("time", Transport::Udp));

    let out = run_python("tcp_oneshot.py", echo_tcp, "");
    assert_eq!(out, "LINHAIFENG NB\n");

    let out = run_python(
        "tcp_loop.py",
        echo_tcp,
        "hello\n\nlinhaifeng nb\n你好 world\n",
    );
    assert_eq!(
        out,
        "输入:HELLO\n输入:输入:LINHAIFENG NB\n输入:你好 WORLD\n输入:"
    );

    let out = run_python("udp_client.py", echo_udp, "hello udp\n  \nlinhaifeng nb\n");
    let want_addr = format!("('127.0.0.1', {echo_udp})");
    assert_eq!(
        out,
        format!(">>: HELLO UDP {want_addr}\n>>: >>: LINHAIFENG NB {want_addr}\n>>: ")
    );

    let out = run_python("time_client.py", time_udp, "%Y\n\n%Q\n%Z\n");
    let prompt = "请输入时间格式(例%Y %m %d)>>: ";
    let lines: Vec<&str> = out.split(prompt).filter(|s| !s.is_empty()).collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    let year = lines[0].trim_end();
    assert!(
        year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit()),
        "{year:?}"
    );
    assert_eq!(
        lines[1].trim_end().len(),
        "2026-01-01 00:00:00".len(),
        "default format"
    );
    assert_eq!(lines[2], "error: unknown specifier %Q at byte 0\n");
    assert_eq!(lines[3], "UTC\n");
}

#[test]
fn tutorial_exec_client_gets_complete_outputs_over_legacy_mode() {
    let srv = spawn_serve(&[
        "--echo",
        "tcp://127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--exec-legacy",
        "127.0.0.1:0",
    ]);
    let legacy = port(&srv.addr("exec-legacy", Transport::Tcp));
    let input = "seq 1 5000\n\necho out; echo err >&2\ntrue\nls /no/such/dir\nquit\n";
    let out = run_python("exec_client.py", legacy, input);
    let seq: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    let replies: Vec<&str> = out.split(">>: ").filter(|s| !s.is_empty()).collect();
    assert_eq!(replies.len(), 4, "{out}");
    assert_eq!(replies[0], format!("<class 'int'> {}\n{seq}\n", seq.len()));
    assert_eq!(replies[1], "<class 'int'> 8\nout\nerr\n\n");
    assert_eq!(replies[2], "<class 'int'> 0\n\n");
    assert!(
        replies[3].contains("No such file or directory"),
        "{}",
        replies[3]
    );
}

#[test]
fn an_independent_python_client_speaks_the_native_protocol() {
    let srv = spawn_serve(&["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"]);
    let exec = port(&srv.addr("exec", Transport::Tcp));
    let token = srv.token_file();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/native_client.py");
    let run = |cmd: &str| {
        Command::new("python3")
            .arg(&path)
            .arg(exec.to_string())
            .arg(&token)
            .arg(cmd)
            .output()
    };
    let o = run("cat; echo out; echo err >&2; exit 44").expect(
        "python3 is required (it is on every machine of this project; .ci/run checks for it)",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from python stdin\nout\n"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert_eq!(o.status.code(), Some(44));
    let o = run("kill -TERM $$").unwrap();
    assert_eq!(o.status.code(), Some(143));
}
