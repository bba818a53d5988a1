//! TLS for exec (`tls://` endpoints): TLS 1.3 only, rustls with ring.
//!
//! The server uses a certificate the operator gives (`--tls-cert`,
//! `--tls-key`) or one it creates once and keeps (`--tls-self-signed`),
//! and prints the certificate's SHA-256 fingerprint. A client trusts the
//! server in one of three ways, as ssh and curl users expect:
//!
//! ```text
//! --tls-ca FILE          the certificate chains to this CA, name checked
//! --tls-fingerprint FP   the certificate's SHA-256 is exactly FP (pinning)
//! (neither)              trust on first use: the fingerprint is recorded in
//!                        known_hosts; a later mismatch fails loudly
//! ```
//!
//! Pinning and trust-on-first-use still check the handshake signature, so
//! the peer must hold the certificate's private key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::ExecConfig;
use crate::proto::auth::hex;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 of a certificate (DER), as lower-case hex.
pub fn fingerprint(cert: &[u8]) -> String {
    hex(&Sha256::digest(cert))
}

/// Normalizes a fingerprint as people paste it: `sha256:` prefix, colons,
/// upper case all accepted.
pub fn normalize_fingerprint(s: &str) -> String {
    s.trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A server identity: the rustls config and the certificate's fingerprint.
pub struct ServerIdentity {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: String,
}

/// Loads a PEM certificate chain and private key.
pub fn server_identity(cert: &Path, key: &Path) -> anyhow::Result<ServerIdentity> {
    let pem = crate::secrets::read_regular(cert, "TLS certificate")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad certificate PEM in {}", cert.display()))?;
    let first = chain
        .first()
        .with_context(|| format!("no certificate in {}", cert.display()))?;
    let fingerprint = fingerprint(first);
    // Like ssh with a private key: one that others may read is refused.
    let pem = crate::secrets::read_private(key, "TLS private key")?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not go together")?;
    Ok(ServerIdentity {
        config: Arc::new(config),
        fingerprint,
    })
}

/// How long a self-signed certificate is valid for from the day it is
/// made: ten years, since it is trusted by its pinned fingerprint, which
/// rotating would change for every client. (Rotate by removing the pair
/// and restarting.)
pub const SELF_SIGNED_DAYS: i64 = 3650;

/// The kept self-signed certificate and key in `dir` (`tls-cert.pem`,
/// `tls-key.pem`), created when missing for `names`, with the common name
/// `cn` (the host's name), valid from yesterday (clocks disagree) for
/// [`SELF_SIGNED_DAYS`]. Returns their paths and whether they were just
/// created.
pub fn self_signed(
    dir: &Path,
    cn: &str,
    names: &[String],
) -> anyhow::Result<(PathBuf, PathBuf, bool)> {
    let cert_path = dir.join("tls-cert.pem");
    let key_path = dir.join("tls-key.pem");
    let present = |p: &Path| p.metadata().is_ok_and(|m| m.len() > 0);
    if present(&cert_path) && present(&key_path) {
        return Ok((cert_path, key_path, false));
    }
    // Missing, or torn by an older version's in-place write (0 bytes): a
    // new pair, each file replaced whole, the key first so that the
    // certificate never names a key that is not there.
    let key = rcgen::KeyPair::generate().context("cannot create a key")?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).context("cannot create a certificate")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let day = |d: chrono::NaiveDate| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let today = chrono::Utc::now().date_naive();
    params.not_before = day(today - chrono::Days::new(1));
    params.not_after = day(today + chrono::Days::new(SELF_SIGNED_DAYS as u64));
    let cert = params
        .self_signed(&key)
        .context("cannot create a certificate")?;
    crate::files::ensure_dir(dir, 0o700)?;
    crate::files::replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    crate::files::replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path, true))
}

/// How a client decides to trust a server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates chaining to the CA(s) in this PEM file.
    Ca(PathBuf),
    /// Exactly this certificate (SHA-256 fingerprint).
    Fingerprint(String),
    /// Trust on first use, remembered in this known-hosts file.
    KnownHosts(PathBuf),
}

/// The exec TLS certificate, for the banner.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// SHA-256 of the certificate, lower-case hex.
    pub fingerprint: String,
    pub cert: std::path::PathBuf,
    /// The self-signed certificate's key, when it is the self-signed one.
    pub self_signed_key: Option<std::path::PathBuf>,
    /// The self-signed certificate was created by this start.
    pub created: bool,
}

/// The server side of exec's TLS: the operator's certificate, or the
/// self-signed one created once and kept beside the token file (named for
/// localhost, the loopback addresses, the host name and every `tls://`
/// listen host).
pub fn load_server(x: &ExecConfig) -> anyhow::Result<(Arc<rustls::ServerConfig>, TlsInfo)> {
    let (cert, key, created) = match (&x.tls_cert, &x.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let dir = match &x.token_file {
                Some(t) => t
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default(),
                None => crate::secrets::default_token_path()
                    .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
                    .context("no config directory for the self-signed certificate")?,
            };
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty());
            if let Some(h) = &host {
                names.push(h.clone());
            }
            for e in x
                .listen
                .iter()
                .filter(|e| e.transport == crate::endpoint::Transport::Tls)
            {
                if !names.contains(&e.host) && e.host != "0.0.0.0" && e.host != "::" {
                    names.push(e.host.clone());
                }
            }
            self_signed(&dir, host.as_deref().unwrap_or("localhost"), &names)?
        }
    };
    let id = server_identity(&cert, &key)?;
    Ok((
        id.config,
        TlsInfo {
            fingerprint: id.fingerprint,
            self_signed_key: x.tls_cert.is_none().then(|| key.clone()),
            cert,
            created,
        },
    ))
}

impl Trust {
    /// The trust a client's options name: a CA file, a pinned fingerprint,
    /// or (neither given) trust on first use in `known_hosts`, by default
    /// the user's file.
    pub fn choose(
        ca: Option<&Path>,
        fingerprint: Option<&str>,
        known_hosts: Option<&Path>,
    ) -> anyhow::Result<Trust> {
        Ok(match (ca, fingerprint) {
            (Some(_), Some(_)) => bail!("--tls-ca and --tls-fingerprint exclude each other"),
            (Some(ca), None) => Trust::Ca(ca.to_path_buf()),
            (None, Some(fp)) => {
                check_fingerprint(fp)?;
                Trust::Fingerprint(fp.to_string())
            }
            (None, None) => Trust::KnownHosts(match known_hosts {
                Some(p) => p.to_path_buf(),
                None => default_known_hosts()
                    .context("no config directory for known_hosts; use --known-hosts")?,
            }),
        })
    }
}

/// The default known-hosts file: `switchboard/known_hosts` in the user's
/// config directory.
pub fn default_known_hosts() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "switchboard")
        .map(|d| d.config_dir().join("known_hosts"))
}

/// A client TLS setup for one server, and what to do once it has proved
/// itself (record a first-seen fingerprint).
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    tofu: Option<Arc<Pinning>>,
}

impl ClientTls {
    /// `host` names the server (certificate name for CA trust); `key` is
    /// its `HOST:PORT`, the known-hosts key.
    pub fn new(trust: &Trust, host: &str, key: &str) -> anyhow::Result<ClientTls> {
        let server_name = ServerName::try_from(host.to_string())
            .with_context(|| format!("bad server name {host:?}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3")?;
        let (config, tofu) = match trust {
            Trust::Ca(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = crate::secrets::read_regular(path, "CA file")?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(cert.context("bad CA PEM")?)
                        .context("bad CA certificate")?;
                }
                (
                    builder.with_root_certificates(roots).with_no_client_auth(),
                    None,
                )
            }
            Trust::Fingerprint(fp) => {
                let pin = Arc::new(Pinning {
                    mode: PinMode::Fixed(normalize_fingerprint(fp)),
                    seen: Mutex::new(None),
                });
                let config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(pin)
                    .with_no_client_auth();
                (config, None)
            }
            Trust::KnownHosts(path) => {
                let pin = Arc::new(Pinning {
                    mode: PinMode::KnownHosts {
                        path: path.clone(),
                        key: key.to_string(),
                    },
                    seen: Mutex::new(None),
                });
                let config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(pin.clone())
                    .with_no_client_auth();
                (config, Some(pin))
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            tofu,
        })
    }

    /// After the server has also passed the token handshake: records a
    /// first-seen fingerprint in known_hosts. `None` when nothing was new.
    pub fn commit(&self) -> Option<FirstUse> {
        let pin = self.tofu.as_ref()?;
        let PinMode::KnownHosts { path, key } = &pin.mode else {
            return None;
        };
        let seen = pin.seen.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((fingerprint, true)) = seen else {
            return None;
        };
        let recorded = record_known_host(path, key, &fingerprint).map_err(|e| format!("{e:#}"));
        Some(FirstUse {
            fingerprint: format!("sha256:{fingerprint}"),
            recorded,
            kind: "certificate",
        })
    }
}

/// A server trusted on first use: its fingerprint, and whether it could
/// be recorded (if not, the next connection will trust on first use again,
/// which the user must be told, as ssh says "Failed to add the host").
#[derive(Debug, Clone)]
pub struct FirstUse {
    pub fingerprint: String,
    pub recorded: Result<(), String>,
    /// What was trusted: `certificate` (TLS) or `host key` (plain TCP).
    pub kind: &'static str,
}

/// Adds `key fingerprint` to the known-hosts file: under a lock, the file
/// read again (another client may have recorded it meanwhile) and replaced
/// whole, so a full disk leaves the old file, never half a line.
pub(crate) fn record_known_host(path: &Path, key: &str, fp: &str) -> anyhow::Result<()> {
    // A known_hosts that is a link (dotfile managers) is updated where it
    // points: replacing the link itself with a file would detach it.
    let resolved;
    let path = match path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => {
            resolved = std::fs::canonicalize(path)
                .with_context(|| format!("cannot resolve the link {}", path.display()))?;
            resolved.as_path()
        }
        _ => path,
    };
    if let Some(dir) = path.parent() {
        crate::files::ensure_dir(dir, 0o700)?;
    }
    crate::files::with_lock(path, || {
        let (text, mode) = match std::fs::metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                let bytes = crate::secrets::read_regular(path, "known_hosts")?;
                (String::from_utf8(bytes)?, m.permissions().mode() & 0o777)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o644),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        match known_hosts_lookup(path, &text, key)? {
            Some(known) if known == fp => return Ok(()),
            Some(known) => anyhow::bail!(
                "{} now has {known} for {key} (recorded by another client meanwhile)",
                path.display()
            ),
            None => {}
        }
        let mut text = text;
        // A last line without its newline (a hand edit) must not be
        // joined with the new one.
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{key} {fp}\n"));
        // Never write what the next read would refuse.
        if text.len() as u64 > crate::secrets::MAX_SECRET_FILE {
            anyhow::bail!(
                "{} would pass {} bytes, the most that is read; remove old entries",
                path.display(),
                crate::secrets::MAX_SECRET_FILE
            );
        }
        crate::files::replace(path, text.as_bytes(), mode)?;
        Ok(())
    })?
}

#[derive(Debug)]
enum PinMode {
    Fixed(String),
    KnownHosts { path: PathBuf, key: String },
}

/// Verifies a server certificate by its fingerprint rather than a CA.
#[derive(Debug)]
struct Pinning {
    mode: PinMode,
    /// The fingerprint seen, and whether it was not yet known.
    seen: Mutex<Option<(String, bool)>>,
}

/// The fingerprint recorded for `key` in a known-hosts file; `None` when
/// the file or the key is not there. A file that cannot be read, or has a
/// line that is not `HOST:PORT FINGERPRINT`, is an error: trusting afresh
/// because a file was unreadable would defeat the pinning.
pub fn known_fingerprint(path: &Path, key: &str) -> anyhow::Result<Option<String>> {
    let bytes = match crate::secrets::read_regular(path, "known_hosts") {
        Ok(b) => b,
        Err(crate::secrets::SecretError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
    known_hosts_lookup(path, &text, key)
}

/// Finds `key` in known-hosts `text`, checking every line: blank lines and
/// `#` comments are skipped; anything else must be `KEY FINGERPRINT`.
fn known_hosts_lookup(path: &Path, text: &str, key: &str) -> anyhow::Result<Option<String>> {
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(' ')
            .map(|(k, fp)| (k, normalize_fingerprint(fp.trim())))
            .filter(|(k, fp)| !k.is_empty() && check_fingerprint(fp).is_ok());
        let Some((k, fp)) = parsed else {
            anyhow::bail!(
                "{} line {}: not `HOST:PORT SHA256-FINGERPRINT`; fix or remove the line",
                path.display(),
                n + 1
            );
        };
        if k == key && found.is_none() {
            found = Some(fp);
        }
    }
    Ok(found)
}

impl ServerCertVerifier for Pinning {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        let (want, key) = match &self.mode {
            PinMode::Fixed(want) => (Some(want.clone()), None),
            PinMode::KnownHosts { path, key } => (
                known_fingerprint(path, key)
                    .map_err(|e| rustls::Error::General(format!("{e:#}")))?,
                Some(key.clone()),
            ),
        };
        match want {
            Some(want) if want == fp => {
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((fp, false));
                Ok(ServerCertVerified::assertion())
            }
            Some(want) => Err(rustls::Error::General(match key {
                None => {
                    format!("the server's certificate fingerprint is {fp}, not the pinned {want}")
                }
                Some(key) => format!(
                    "THE SERVER'S CERTIFICATE HAS CHANGED for {key}: known_hosts has {want}, the server shows {fp}. \
                     Someone may be intercepting the connection; if the server's certificate really changed, \
                     remove the line for {key} from known_hosts."
                ),
            })),
            None => {
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((fp, true));
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Refuses nonsense early: a fingerprint must be 64 hex digits.
pub fn check_fingerprint(fp: &str) -> anyhow::Result<()> {
    let n = normalize_fingerprint(fp);
    if n.len() != 64 || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{fp:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalize() {
        assert_eq!(normalize_fingerprint("sha256:AB:cd:01"), "abcd01");
        assert!(check_fingerprint(&"ab".repeat(32)).is_ok());
        assert!(check_fingerprint("abc").is_err());
    }

    #[test]
    fn self_signed_is_created_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (c, k, created) =
            self_signed(dir.path(), "web01.example", &["localhost".into()]).unwrap();
        assert!(created);
        // Named for the host, valid from yesterday for ten years, as
        // openssl reads it (where it is installed).
        match std::process::Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-subject",
                "-startdate",
                "-enddate",
                "-in",
            ])
            .arg(&c)
            .output()
        {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                assert!(
                    text.contains("CN = web01.example") || text.contains("CN=web01.example"),
                    "{text}"
                );
                let year = |prefix: &str| -> i32 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(prefix))
                        .and_then(|d| d.split_whitespace().nth(3))
                        .and_then(|y| y.parse().ok())
                        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                };
                use chrono::Datelike;
                let now = chrono::Utc::now().year();
                assert!((now - 1..=now).contains(&year("notBefore=")), "{text}");
                assert!((now + 9..=now + 10).contains(&year("notAfter=")), "{text}");
            }
            other => eprintln!("SKIPPED the certificate's fields: no openssl ({other:?})"),
        }
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let id1 = server_identity(&c, &k).unwrap();
        // A key others may read is refused, with the fix in the message.
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = format!("{:#}", server_identity(&c, &k).err().unwrap());
        assert!(e.contains(&format!("chmod 600 {}", k.display())), "{e}");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, _, created) = self_signed(dir.path(), "other", &["localhost".into()]).unwrap();
        assert!(!created);
        assert_eq!(
            server_identity(&c, &k).unwrap().fingerprint,
            id1.fingerprint
        );
    }
}
