//! Fan-out: one command on 50 servers on loopback, 5 of them down and 3
//! refusing the command; the binary reports exactly those and exits non-zero.

mod common;

use std::collections::BTreeSet;

use common::{bin, exec_config, start};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_servers_with_five_down_and_three_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    let mut hosts = Vec::new();
    let mut refusing = BTreeSet::new();
    for i in 0..45 {
        let mut cfg = exec_config(dir.path());
        if i % 15 == 7 {
            // These three refuse shell commands: a per-host failure.
            cfg.exec.argv_only = true;
        }
        let srv = start(cfg).await;
        let host = srv.exec.to_string();
        if i % 15 == 7 {
            refusing.insert(host.clone());
        }
        hosts.push(host);
        servers.push(srv);
    }
    let mut down = BTreeSet::new();
    let mut held = Vec::new();
    for _ in 0..5 {
        // Bound and not listening, for the whole test: refused.
        let (socket, port) = common::refusing_port();
        held.push(socket);
        let host = format!("127.0.0.1:{port}");
        down.insert(host.clone());
        hosts.push(host);
    }
    let token = dir.path().join("token");
    let run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args([
            "exec",
            "--hosts",
            &hosts.join(","),
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args(extra)
        .args(["--", "echo linhaifeng nb"]);
        cmd.output()
    };

    let o = run(&["--json", "--fanout", "16"]).await.unwrap();
    assert_eq!(o.status.code(), Some(1));
    let records: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 50);
    let with = |kind: &str| -> BTreeSet<String> {
        records
            .iter()
            .filter(|r| r["failure"] == kind)
            .map(|r| r["host"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(with("connect"), down, "exactly the five down hosts");
    assert_eq!(with("refused"), refusing);
    let ok: Vec<&Value> = records.iter().filter(|r| r["exit_code"] == 0).collect();
    assert_eq!(ok.len(), 42);
    assert!(
        ok.iter()
            .all(|r| r["stdout"] == "linhaifeng nb\n" && r["stdout_bytes"] == 14)
    );

    // pdsh style: every line prefixed with its host; the summary names the failures.
    let o = run(&[]).await.unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 42);
    for h in hosts
        .iter()
        .filter(|h| !down.contains(*h) && !refusing.contains(*h))
    {
        assert!(
            out.contains(&format!("{h}: linhaifeng nb\n")),
            "{h} missing"
        );
    }
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("50 hosts, 42 ok, 8 failed"), "{err}");
    for h in &down {
        assert!(err.contains(&format!("{h}: connect")), "{err}");
    }

    // clush -b style: one group for the 42 identical outputs.
    let o = run(&["--gather"]).await.unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.matches("----------------\n").count(), 2, "{out}");
    assert!(
        out.contains("(exit 0)\n----------------\nlinhaifeng nb\n"),
        "{out}"
    );

    // --max-rc: the largest status (255 for an unreachable host).
    assert_eq!(run(&["--max-rc"]).await.unwrap().status.code(), Some(255));
    drop(servers);
}

/// `--exclude` leaves hosts out in the host-list syntax, and `--gather`
/// names the hosts of a group in folded ranges, as ClusterShell does
/// (issue #15, item 9). One server on 0.0.0.0, reached as 127.0.0.1-3.
#[test]
fn exclude_and_folded_ranges() {
    let srv = common::spawn_serve(&[
        "--echo",
        "none",
        "--time",
        "none",
        "--exec",
        "tcp://0.0.0.0:0",
        "--allow-plaintext",
    ]);
    let port = srv
        .addr("exec", switchboard::endpoint::Transport::Tcp)
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap();
    let o = common::client_in(
        srv.home.path(),
        &[
            "exec",
            "--hosts",
            &format!("127.0.0.[1-4]:{port}"),
            "--exclude",
            &format!("127.0.0.4:{port}"),
            "--gather",
            "--",
            "echo hi",
        ],
        None,
    );
    let out = common::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", common::stderr(&o));
    assert!(
        out.contains(&format!("127.0.0.[1-3]:{port} (exit 0)\n")),
        "{out}"
    );
    assert!(
        common::stderr(&o).contains("3 hosts, 3 ok"),
        "{}",
        common::stderr(&o)
    );
}
