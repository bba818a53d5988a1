//! Exec over TLS 1.3: the self-signed certificate and its fingerprint,
//! pinning, trust on first use (and its loud failure on a change), CA
//! trust, the TLS handshake deadline, and the refusal of plaintext exec on
//! non-loopback addresses.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, spawn_serve};
use switchboard::endpoint::Transport;

fn exec(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("exec")
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const BASE: [&str; 4] = ["--echo", "tcp://127.0.0.1:0", "--time", "127.0.0.1:0"];

#[test]
fn self_signed_certificate_pinning_and_trust_on_first_use() {
    let srv = spawn_serve(
        &[
            &BASE[..],
            &["--exec", "tls://127.0.0.1:0", "--tls-self-signed"],
            &["--metrics", "127.0.0.1:0"],
        ]
        .concat(),
    );
    // The banner says how to rotate a self-signed certificate.
    assert!(
        srv.banner
            .iter()
            .any(|l| l.contains("to rotate it, remove it")),
        "{:?}",
        srv.banner
    );
    let fp = srv
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("tls   fingerprint sha256:"))
        .expect("fingerprint in the banner")
        .to_string();
    assert_eq!(fp.len(), 64);
    let addr = format!("tls://{}", srv.addr("exec", Transport::Tls));
    // The client shares the server's HOME, so it finds the token.
    let home = srv.home.path();
    let known = home.join(".config/switchboard/known_hosts");

    let o = exec(home, &[&addr, "--", "echo first"]);
    assert_eq!(text(&o.stdout), "first\n", "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("recorded in known_hosts"));
    assert!(std::fs::read_to_string(&known).unwrap().contains(&fp));
    let o = exec(home, &[&addr, "--", "echo second"]);
    assert_eq!(text(&o.stdout), "second\n");
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));

    // The metrics count them as exec over TLS.
    let page = {
        use std::io::{Read, Write};
        let mut m = std::net::TcpStream::connect(srv.addr("metrics", Transport::Tcp)).unwrap();
        m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        m.read_to_string(&mut page).unwrap();
        page
    };
    let value = |name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {page}"))
    };
    let tls = "{service=\"exec\",transport=\"tls\"}";
    assert_eq!(value(&format!("switchboard_connections_total{tls}")), 2);
    assert_eq!(value(&format!("switchboard_bytes_sent_total{tls}")), 13);
    let tcp = "{service=\"exec\",transport=\"tcp\"}";
    assert_eq!(value(&format!("switchboard_connections_total{tcp}")), 0);

    // Pinning, with the fingerprint pasted the way people paste it.
    let colons: String = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let o = exec(
        home,
        &[
            "--tls-fingerprint",
            &format!("sha256:{colons}"),
            &addr,
            "--",
            "echo pinned",
        ],
    );
    assert_eq!(text(&o.stdout), "pinned\n", "{}", text(&o.stderr));
    let o = exec(
        home,
        &[
            "--tls-fingerprint",
            &"ab".repeat(32),
            &addr,
            "--",
            "echo no",
        ],
    );
    assert_eq!(o.status.code(), Some(255));
    assert!(o.stdout.is_empty());
    assert!(
        text(&o.stderr).contains("not the pinned"),
        "{}",
        text(&o.stderr)
    );

    // A changed certificate fails loudly, and runs nothing.
    let k = std::fs::read_to_string(&known).unwrap();
    std::fs::write(&known, k.replace(&fp, &"0".repeat(64))).unwrap();
    let o = exec(home, &[&addr, "--", "echo no"]);
    assert_eq!(o.status.code(), Some(255));
    assert!(o.stdout.is_empty());
    assert!(
        text(&o.stderr).contains("HAS CHANGED"),
        "{}",
        text(&o.stderr)
    );

    // A plaintext client on the TLS port gets nowhere, and the server lives.
    let o = exec(
        home,
        &[
            "--connect-timeout",
            "1s",
            &srv.addr("exec", Transport::Tls),
            "--",
            "echo no",
        ],
    );
    assert_eq!(o.status.code(), Some(255));
    let o = exec(home, &["--tls-fingerprint", &fp, &addr, "--", "echo still"]);
    assert_eq!(text(&o.stdout), "still\n");
}

#[test]
fn ca_signed_certificates_are_checked_against_the_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let make_ca = || {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, issuer) = make_ca();
    let (other_ca, _) = make_ca();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(p("other-ca.pem"), other_ca.pem()).unwrap();
    std::fs::write(p("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(p("key.pem"), leaf_key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        p("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (cert, key) = (p("cert.pem"), p("key.pem"));
    let srv = spawn_serve(
        &[
            &BASE[..],
            &[
                "--exec",
                "tls://127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let addr = format!("tls://{}", srv.addr("exec", Transport::Tls));
    let home = srv.home.path();
    let o = exec(
        home,
        &[
            "--tls-ca",
            p("ca.pem").to_str().unwrap(),
            &addr,
            "--",
            "echo via ca",
        ],
    );
    assert_eq!(text(&o.stdout), "via ca\n", "{}", text(&o.stderr));
    let o = exec(
        home,
        &[
            "--tls-ca",
            p("other-ca.pem").to_str().unwrap(),
            &addr,
            "--",
            "echo no",
        ],
    );
    assert_eq!(o.status.code(), Some(255));
    assert!(text(&o.stderr).contains("TLS"), "{}", text(&o.stderr));
}

#[test]
fn the_tls_handshake_has_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(&cfg, "[exec]\nhandshake_timeout = \"300ms\"\n").unwrap();
    let srv = spawn_serve(
        &[
            &BASE[..],
            &[
                "--exec",
                "tls://127.0.0.1:0",
                "--tls-self-signed",
                "--config",
                cfg.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let mut s = TcpStream::connect(srv.addr("exec", Transport::Tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    // Say nothing: the server closes without waiting for the 10 s read timeout.
    let start = std::time::Instant::now();
    let r = s.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "closed by the deadline, not by us"
    );
}

#[test]
fn plaintext_exec_off_loopback_needs_an_explicit_opt_in() {
    let o = Command::new(bin())
        .args([
            "serve",
            "--echo",
            "tcp://127.0.0.1:0",
            "--time",
            "127.0.0.1:0",
            "--exec",
            "tcp://0.0.0.0:0",
            "--allow-root",
        ])
        .env("HOME", tempfile::tempdir().unwrap().path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--allow-plaintext"),
        "{}",
        text(&o.stderr)
    );
    // With the opt-in it starts (bound on all addresses; no traffic is sent).
    let srv = spawn_serve(
        &[
            &BASE[..],
            &["--exec", "tcp://0.0.0.0:0", "--allow-plaintext"],
        ]
        .concat(),
    );
    assert!(
        srv.endpoints
            .iter()
            .any(|(s, e)| s == "exec" && e.host == "0.0.0.0")
    );
}
