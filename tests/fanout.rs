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

/// `n` exec servers sharing `dir`'s token; those at `refusing` take argv
/// jobs only, so a shell command fails there (`refused`). Every job that
/// runs appends a line to `dir/ran`.
async fn fleet(
    dir: &std::path::Path,
    n: usize,
    refusing: &[usize],
) -> (Vec<common::TestServer>, Vec<String>) {
    let mut servers = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..n {
        let mut cfg = exec_config(dir);
        cfg.exec.argv_only = refusing.contains(&i);
        let srv = start(cfg).await;
        hosts.push(srv.exec.to_string());
        servers.push(srv);
    }
    (servers, hosts)
}

/// Runs `exec --hosts` of the fleet's command with `extra` flags.
async fn roll(dir: &std::path::Path, hosts: &[String], extra: &[&str]) -> std::process::Output {
    let ran = dir.join("ran");
    tokio::process::Command::new(bin())
        .args(["exec", "--hosts", &hosts.join(",")])
        .args(["--token-file", dir.join("token").to_str().unwrap()])
        .args(extra)
        .args(["--", &format!("echo x >> {}", ran.display())])
        .output()
        .await
        .unwrap()
}

fn records(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Jobs that ran, as the jobs themselves counted them.
fn jobs_ran(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("ran"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A canary that fails stops the rest: no job runs on any other host, each
/// is reported skipped with why; a canary that succeeds lets the rest run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 6, &[0]).await;

    let o = roll(dir.path(), &hosts, &["--canary", "1", "--json"]).await;
    assert_eq!(o.status.code(), Some(1));
    let r = records(&o);
    assert_eq!(r.len(), 6);
    assert_eq!(r[0]["failure"], "refused", "{}", r[0]);
    assert_eq!(
        (r[0]["canary"].clone(), r[0]["wave"].clone()),
        (true.into(), 1.into())
    );
    for rec in &r[1..] {
        assert_eq!(rec["failure"], "skipped", "{rec}");
        assert_eq!(rec["skipped"], "the canary failed");
        assert_eq!(rec["wave"], 2);
        assert!(rec.get("canary").is_none(), "{rec}");
    }
    assert_eq!(
        jobs_ran(dir.path()),
        0,
        "no host past the canary ran the job"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wave 1 of 2 (canary): 1 host"), "{err}");

    // Named canaries (any of the list) that succeed: everyone else runs,
    // the refusing host fails on its own.
    let o = roll(dir.path(), &hosts, &["--canary-hosts", &hosts[3], "--json"]).await;
    assert_eq!(o.status.code(), Some(1));
    let r = records(&o);
    assert_eq!(r[3]["canary"], true);
    assert_eq!(r[3]["exit_code"], 0);
    assert_eq!(r[0]["failure"], "refused");
    assert!(r.iter().all(|rec| rec["failure"] != "skipped"), "{r:?}");
    assert_eq!(jobs_ran(dir.path()), 5);

    // A canary host not in --hosts is refused before anything runs.
    let o = roll(dir.path(), &hosts, &["--canary-hosts", "127.0.0.1:1"]).await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("is not one of the hosts (--hosts, less --exclude)")
    );
    assert_eq!(jobs_ran(dir.path()), 5);
}

/// Waves of 3 over 10 hosts, 2 of them failing (one in the first wave,
/// one in the second), with `--max-fail 1`: the second failure closes the
/// gate, the waves after it are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_stop_once_more_than_max_fail_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 10, &[1, 4]).await;

    let o = roll(
        dir.path(),
        &hosts,
        &["--batch", "3", "--max-fail", "1", "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let r = records(&o);
    let waves: Vec<u64> = r.iter().map(|x| x["wave"].as_u64().unwrap()).collect();
    assert_eq!(waves, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
    let failures: Vec<&str> = r
        .iter()
        .map(|x| x["failure"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        failures,
        [
            "ok", "refused", "ok", "ok", "refused", "ok", "skipped", "skipped", "skipped",
            "skipped"
        ]
    );
    assert!(
        r[6..]
            .iter()
            .all(|x| x["skipped"] == "--max-fail 1 reached")
    );
    assert_eq!(jobs_ran(dir.path()), 4);

    // The same as text: the summary counts and folds the skipped hosts.
    let o = roll(dir.path(), &hosts, &["--batch", "30%", "--max-fail", "10%"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("10 hosts, 4 ok, 2 failed, 4 skipped"), "{err}");
    assert!(err.contains("skipped (--max-fail 10% reached): "), "{err}");
    assert!(err.contains("wave 2 of 4: 3 hosts\n"), "{err}");
    assert!(
        !err.contains("wave 3"),
        "skipped waves are not started: {err}"
    );
    assert_eq!(jobs_ran(dir.path()), 8);

    // Without a limit every wave runs.
    let o = roll(dir.path(), &hosts, &["--batch", "4", "--json"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        records(&o)
            .iter()
            .filter(|x| x["failure"] == "skipped")
            .count(),
        0
    );
    assert_eq!(jobs_ran(dir.path()), 16);
}

/// `--stop-on-fail` within one wave: hosts still waiting for a slot of
/// `--fanout` when the first failure comes are not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_on_fail_skips_hosts_not_yet_started() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 5, &[2]).await;
    let o = roll(
        dir.path(),
        &hosts,
        &["--stop-on-fail", "--fanout", "1", "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let r = records(&o);
    let failures: Vec<&str> = r
        .iter()
        .map(|x| x["failure"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(failures, ["ok", "ok", "refused", "skipped", "skipped"]);
    assert_eq!(r[3]["skipped"], "--max-fail 0 reached");
    assert_eq!(jobs_ran(dir.path()), 2);
}

/// `--max-output` caps each job at its server: a fan-out of a job printing
/// 10 MiB receives and keeps 1 MiB per host, and each record says how much
/// was dropped; one host's client says so on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_output_caps_each_host_and_says_what_was_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 3, &[]).await;
    let token = dir.path().join("token");
    let exec = |extra: &[&str], cmd: &str| {
        tokio::process::Command::new(bin())
            .arg("exec")
            .args(["--token-file", token.to_str().unwrap()])
            .args(extra)
            .args(["--", cmd])
            .output()
    };
    let ten_mib = "head -c 10485760 /dev/zero | tr '\\0' x";
    let o = exec(
        &["--hosts", &hosts.join(","), "--max-output", "1M", "--json"],
        ten_mib,
    )
    .await
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = records(&o);
    assert_eq!(r.len(), 3);
    for rec in &r {
        assert_eq!(rec["exit_code"], 0);
        assert_eq!(rec["stdout_bytes"], 1 << 20, "{}", rec["host"]);
        assert_eq!(rec["dropped_bytes"], 10_485_760 - (1 << 20));
        assert_eq!(rec["truncated"], true);
        assert_eq!(rec["stdout"].as_str().unwrap().len(), 1 << 20);
    }

    // --gather without --max-output keeps (and asks for) 1 MiB per host.
    let o = exec(&["--hosts", &hosts.join(","), "--gather"], ten_mib)
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let kept: Vec<usize> = out
        .lines()
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b == b'x'))
        .map(str::len)
        .collect();
    assert_eq!(kept, [1 << 20], "one group, 1 MiB kept");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("output truncated (max_output) on 3 hosts: "),
        "{err}"
    );

    // One host: the client reports the drop; the job's status is its own.
    let o = exec(
        &[&hosts[0], "--max-output", "64K"],
        "head -c 1048576 /dev/zero; exit 3",
    )
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(o.stdout.len(), 65_536);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("output truncated: 983040 bytes past the job's max_output dropped"),
        "{err}"
    );
}

/// The RFC 3339 time at the head of a `--timestamps` line, in microseconds.
fn stamp_of(line: &str) -> i64 {
    let (ts, _) = line.split_once(' ').unwrap();
    switchboard::proto::message::Stamp::parse(ts)
        .unwrap_or_else(|| panic!("{line:?}"))
        .0
}

/// `--timestamps`: each line carries the server's time of it, increasing
/// per host (the job sleeps between lines); the clock offset is said once
/// per host, and in `--json` records with the lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_increase_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 2, &[]).await;
    let token = dir.path().join("token");
    let job = "for i in 1 2 3 4 5; do echo line$i; sleep 0.02; done; printf tail >&2";
    let exec = |extra: &[&str]| {
        tokio::process::Command::new(bin())
            .arg("exec")
            .args(["--token-file", token.to_str().unwrap(), "--timestamps"])
            .args(extra)
            .args(["--", job])
            .output()
    };
    let o = exec(&["--hosts", &hosts.join(",")]).await.unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8(o.stdout).unwrap();
    let err = String::from_utf8(o.stderr).unwrap();
    for h in &hosts {
        let mine: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(&format!(" {h}: ")))
            .collect();
        let texts: Vec<&str> = mine
            .iter()
            .map(|l| l.rsplit_once(": ").unwrap().1)
            .collect();
        assert_eq!(
            texts,
            ["line1", "line2", "line3", "line4", "line5"],
            "{out}"
        );
        let ts: Vec<i64> = mine.iter().map(|l| stamp_of(l)).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        assert_eq!(
            err.matches(&format!("switchboard: {h}: server clock "))
                .count(),
            1,
            "{err}"
        );
        assert!(
            err.lines().any(|l| l.ends_with(&format!(" {h}: tail"))),
            "{err}"
        );
    }

    let o = exec(&["--hosts", &hosts.join(","), "--json"])
        .await
        .unwrap();
    for rec in records(&o) {
        let lines = rec["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 6, "{rec}");
        let ts: Vec<i64> = lines
            .iter()
            .map(|l| stamp_of(&format!("{} x", l["ts"].as_str().unwrap())))
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{rec}");
        assert_eq!(lines[0]["text"], "line1\n");
        assert_eq!(
            (lines[5]["stream"].clone(), lines[5]["text"].clone()),
            ("stderr".into(), "tail".into())
        );
        // One clock on one machine: the offset is within its own bound.
        let (off, within) = (
            rec["clock_offset_us"].as_i64().unwrap(),
            rec["clock_within_us"].as_i64().unwrap(),
        );
        assert!(off.abs() <= within + 1, "{off} {within}");
    }

    // One host: the same prefix, and the clock said once.
    let o = exec(&[&hosts[0]]).await.unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 5);
    assert!(
        out.lines()
            .all(|l| l.ends_with(&format!("line{}", l.chars().last().unwrap())))
    );
    let ts: Vec<i64> = out.lines().map(stamp_of).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{out}");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.matches("server clock").count(), 1, "{err}");
    assert!(err.lines().any(|l| l.ends_with(" tail")), "{err}");

    // A line longer than the pieces lines are cut in keeps one stamp, at
    // its start, when one host's output is not interleaved with others'.
    let o = tokio::process::Command::new(bin())
        .args([
            "exec",
            &hosts[0],
            "--timestamps",
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args(["--", "head -c 70000 /dev/zero | tr '\\0' a; echo"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1);
    let (ts, line) = out.trim_end().split_once(' ').unwrap();
    stamp_of(&format!("{ts} x"));
    assert_eq!(line, "a".repeat(70_000));

    // Empty lines cost their records too: a keep of 64 KiB holds about
    // 500 of them, not 64 Ki.
    let o = tokio::process::Command::new(bin())
        .args([
            "exec",
            "--hosts",
            &hosts[0],
            "--json",
            "--timestamps",
            "--max-output",
            "64K",
        ])
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--", "yes '' | head -c 1000000"])
        .output()
        .await
        .unwrap();
    let r = records(&o);
    let n = r[0]["lines"].as_array().unwrap().len();
    assert!(n > 400 && n * (1 + 128) <= 65_536, "{n} lines kept");
    assert_eq!(r[0]["truncated"], true);
}

/// A `--fanout` past the open-file limit is brought within it (hosts wait
/// their turn) instead of hosts failing with "too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_past_the_fd_limit_waits_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 40, &[]).await;
    let o = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 32 && exec {} exec --hosts {} --token-file {} --fanout 1000 --json -- true",
            bin(),
            hosts.join(","),
            dir.path().join("token").display()
        ))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--fanout 1000 would pass the open-file limit (32): 1 at a time"),
        "{err}"
    );
    let r = records(&o);
    assert_eq!(r.len(), 40);
    assert!(r.iter().all(|x| x["exit_code"] == 0), "{r:?}");
}

/// `put --hosts --json` has a record for every host: those not reached and
/// those not started (`skipped`) too, each with its wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_to_many_records_every_host_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, mut hosts) = fleet(dir.path(), 3, &[]).await;
    let (_held, port) = common::refusing_port();
    hosts.insert(0, format!("127.0.0.1:{port}"));
    let src = dir.path().join("f.txt");
    std::fs::write(&src, "hello\n").unwrap();
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let o = tokio::process::Command::new(bin())
        .args([
            "put",
            "--hosts",
            &hosts.join(","),
            "--json",
            "--stop-on-fail",
            "--fanout",
            "1",
        ])
        .args(["--token-file", dir.path().join("token").to_str().unwrap()])
        .arg(&src)
        .arg(format!("{}/", dest.display()))
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let r = records(&o);
    assert_eq!(r.len(), 4, "{r:?}");
    let by_host = |h: &str| r.iter().find(|x| x["host"] == h).unwrap().clone();
    let down = by_host(&hosts[0]);
    assert_eq!(
        (
            down["error"].clone(),
            down["ok"].clone(),
            down["wave"].clone()
        ),
        ("connect".into(), false.into(), 1.into())
    );
    for h in &hosts[1..] {
        let rec = by_host(h);
        assert_eq!(rec["error"], "skipped", "{rec}");
        assert_eq!(rec["skipped"], "--max-fail 0 reached");
    }
    assert!(
        !dest.join("f.txt").exists(),
        "no host after the failure copied"
    );
}

/// `--encoding` decodes every host's output (the tutorial's GBK problem),
/// streamed, gathered and in JSON; a character split between frames too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_applies_to_every_host() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, hosts) = fleet(dir.path(), 2, &[]).await;
    let token = dir.path().join("token");
    // 中 in GBK, its two bytes in two writes a moment apart.
    let job = r"printf '\326'; sleep 0.05; printf '\320\n'";
    for mode in [None, Some("--gather"), Some("--json")] {
        let o = tokio::process::Command::new(bin())
            .args(["exec", "--hosts", &hosts.join(","), "--encoding", "gbk"])
            .args(["--token-file", token.to_str().unwrap()])
            .args(mode)
            .args(["--", job])
            .output()
            .await
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{mode:?}");
        let out = String::from_utf8(o.stdout).unwrap();
        match mode {
            None => {
                for h in &hosts {
                    assert!(out.contains(&format!("{h}: 中\n")), "{out}");
                }
            }
            Some("--gather") => assert!(out.contains("(exit 0)\n----------------\n中\n"), "{out}"),
            _ => assert!(
                records(&std::process::Output {
                    stdout: out.into_bytes(),
                    ..o
                })
                .iter()
                .all(|r| r["stdout"] == "中\n")
            ),
        }
    }

    // With --timestamps a line keeps the frame its first byte came in,
    // even when its first character is completed by a later one: the
    // second line, begun 0.3 s later, is stamped 0.3 s later.
    let job = r"printf '\326'; sleep 0.3; printf '\320\nx\n'";
    for hosts_flag in [false, true] {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("exec");
        if hosts_flag {
            cmd.args(["--hosts", &hosts[0]]);
        } else {
            cmd.arg(&hosts[0]);
        }
        let o = cmd
            .args(["--encoding", "gbk", "--timestamps"])
            .args(["--token-file", token.to_str().unwrap(), "--", job])
            .output()
            .await
            .unwrap();
        let out = String::from_utf8(o.stdout).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with("中") && lines[1].ends_with('x'), "{out}");
        let gap = stamp_of(lines[1]) - stamp_of(lines[0]);
        assert!(gap >= 100_000, "stamps {gap} us apart: {out}");
    }
}

/// `get --hosts` makes DEST/<host>/ for each host, and takes it away
/// again for a host that gave nothing (its get refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_from_many_leaves_no_empty_host_directory() {
    let dir = tempfile::tempdir().unwrap();
    // Host 0 takes argv jobs only: transfers are forbidden there.
    let (_servers, hosts) = fleet(dir.path(), 2, &[0]).await;
    let src = dir.path().join("src.txt");
    std::fs::write(&src, "hello\n").unwrap();
    let got = dir.path().join("got");
    std::fs::create_dir(&got).unwrap();
    let o = tokio::process::Command::new(bin())
        .args(["get", "--hosts", &hosts.join(",")])
        .args(["--token-file", dir.path().join("token").to_str().unwrap()])
        .arg(&src)
        .arg(&got)
        .output()
        .await
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !got.join(&hosts[0]).exists(),
        "the refused host's directory is gone"
    );
    assert_eq!(
        std::fs::read_to_string(got.join(&hosts[1]).join("src.txt")).unwrap(),
        "hello\n"
    );
}
