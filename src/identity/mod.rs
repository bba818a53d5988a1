//! Who a connection is. Every way to authenticate (the shared token, a key
//! in `authorized_keys`, a certificate from a trusted CA) sits behind one
//! value, [`Credentials`], built by one function, [`Credentials::load`],
//! for a start, a SIGHUP reload and `--check-config` alike; and a key or
//! certificate is judged by one function, [`KeyAuth::admit`], at the
//! handshake and again at every request and every reload, so a key that
//! was removed, revoked or has expired since stops working on connections
//! already up.
//!
//! ```text
//! exec.auth    token   the shared token's HMAC (PROTOCOL.md §3.2)
//!              key     Ed25519 keys and user certificates (§3.7)
//!              either  both offered; the client picks
//!
//! key      ─ authorized_keys line with that key ─ options ─ Identity(comment)
//! cert     ─ signed by a trusted_user_ca key, in its validity interval,
//!            a user certificate, source-address honoured
//!          ─ first of its principals in authorized_principals ─ options
//!          ─ Identity(principal)
//! revoked_keys lists keys (a user's or a CA's) refused whatever else says
//! ```
//!
//! [`authorized`] reads the two files and their options; [`keys`] is the
//! client's side (key files, passphrases, the agent) and `keygen`.

pub mod authorized;
pub mod keys;

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;
use ssh_key::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey, certificate::CertType};

use crate::config::ExecConfig;
use crate::proto::auth::Token;
use crate::secrets::TokenSource;
pub use authorized::Restrictions;

/// `exec.auth`: how clients may authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The shared token (the simple, single-user mode).
    #[default]
    Token,
    /// Keys and certificates only.
    Key,
    /// Either; a client with a key uses it.
    Either,
}

impl AuthMode {
    pub const ALL: [AuthMode; 3] = [AuthMode::Token, AuthMode::Key, AuthMode::Either];

    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::Key => "key",
            AuthMode::Either => "either",
        }
    }

    fn token(self) -> bool {
        self != AuthMode::Key
    }

    fn keys(self) -> bool {
        self != AuthMode::Token
    }
}

impl std::str::FromStr for AuthMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<AuthMode> {
        AuthMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .with_context(|| format!("exec.auth must be token, key or either, not {s:?}"))
    }
}

/// What a connection proved.
#[derive(Debug, Clone)]
pub enum Proof {
    /// No authentication (`--no-auth`, loopback only; the legacy protocol).
    None,
    /// The shared token, by its SHA-256.
    Token([u8; 32]),
    /// A key listed in `authorized_keys`.
    Key(PublicKey),
    /// A user certificate, and the principal it was admitted by.
    Cert(Box<Certificate>, String),
}

/// Who a connection is: a name (a key's comment, a certificate's
/// principal, `token:…`, `none`) and what proved it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: Cow<'static, str>,
    pub proof: Proof,
}

impl Identity {
    /// Nobody in particular: no authentication.
    pub const NONE: Identity = Identity {
        name: Cow::Borrowed("none"),
        proof: Proof::None,
    };

    pub fn token(token: &Token) -> Identity {
        Identity {
            name: Cow::Owned(format!("token:{}", token.id())),
            proof: Proof::Token(token.digest()),
        }
    }

    /// How it authenticated: `none`, `token`, `key` or `cert`.
    pub fn method(&self) -> &'static str {
        match self.proof {
            Proof::None => "none",
            Proof::Token(_) => "token",
            Proof::Key(_) => "key",
            Proof::Cert(..) => "cert",
        }
    }

    /// The key's SHA-256 fingerprint (a certificate's key's), if a key.
    pub fn fingerprint(&self) -> Option<String> {
        match &self.proof {
            Proof::Key(k) => Some(k.fingerprint(HashAlg::Sha256).to_string()),
            Proof::Cert(c, _) => Some(c.public_key().fingerprint(HashAlg::Sha256).to_string()),
            _ => None,
        }
    }

    /// The fields audit records carry about it.
    pub fn audit_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let mut f = serde_json::Map::new();
        f.insert("who".into(), json!(self.name));
        f.insert("auth".into(), json!(self.method()));
        if let Some(fp) = self.fingerprint() {
            f.insert("key".into(), json!(fp));
        }
        if let Proof::Cert(c, _) = &self.proof {
            f.insert("cert_id".into(), json!(c.key_id()));
            f.insert("cert_serial".into(), json!(c.serial()));
            let ca = c.signature_key().fingerprint(HashAlg::Sha256).to_string();
            f.insert("ca".into(), json!(ca));
        }
        f
    }
}

/// What a client presented: a public key or a certificate, whose private
/// key it has already proved to hold.
#[derive(Debug, Clone)]
pub enum Presented {
    Key(PublicKey),
    Cert(Box<Certificate>),
}

impl Presented {
    /// Parses the `key` field of an `auth` frame: an OpenSSH public key
    /// line or certificate line. Ed25519 only.
    pub fn parse(line: &str) -> Option<Presented> {
        let first = line.split_whitespace().next()?;
        let p = if first == Algorithm::Ed25519.to_certificate_type() {
            Presented::Cert(Box::new(Certificate::from_openssh(line).ok()?))
        } else {
            Presented::Key(PublicKey::from_openssh(line).ok()?)
        };
        strong_ed25519(p.key_data()).then_some(p)
    }

    /// The key that signs: the key itself, or the certificate's.
    pub fn key_data(&self) -> &ssh_key::public::KeyData {
        match self {
            Presented::Key(k) => k.key_data(),
            Presented::Cert(c) => c.public_key(),
        }
    }
}

/// Why a key was not admitted, for the server's log, audit trail and
/// metrics only (the client is told the same thing whatever the reason),
/// and whose it is, when the server's files name it.
#[derive(Debug, Clone)]
pub struct Denied {
    pub why: Cow<'static, str>,
    pub name: Option<String>,
}

impl Denied {
    fn new(why: impl Into<Cow<'static, str>>) -> Denied {
        Denied {
            why: why.into(),
            name: None,
        }
    }

    fn of(name: &str, why: impl Into<Cow<'static, str>>) -> Denied {
        Denied {
            why: why.into(),
            name: Some(name.to_string()),
        }
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Keys, certificates, revocations and the server's host key.
#[derive(Clone)]
pub struct KeyAuth {
    pub host_key: PrivateKey,
    pub host_key_path: PathBuf,
    /// The host key was created by this start.
    pub host_key_created: bool,
    authorized: Vec<authorized::KeyEntry>,
    principals: Vec<authorized::PrincipalEntry>,
    cas: Vec<ssh_key::Fingerprint>,
    revoked: Vec<ssh_key::public::KeyData>,
    /// Where each came from, for the banner.
    pub authorized_keys: PathBuf,
}

impl KeyAuth {
    /// The one judgement of a presented key or certificate, from `ip` at
    /// Unix time `now`: at the handshake, and for an identity already in,
    /// again at each request and each reload.
    pub fn admit(
        &self,
        presented: &Presented,
        ip: IpAddr,
        now: i64,
    ) -> Result<(Identity, Arc<Restrictions>), Denied> {
        let key = presented.key_data();
        let (identity, restrictions) = match presented {
            Presented::Key(k) => {
                let entry = self
                    .authorized
                    .iter()
                    .find(|e| e.key.key_data() == key)
                    .ok_or_else(|| Denied::new("the key is not in authorized_keys"))?;
                if self.revoked.contains(key) {
                    return Err(Denied::of(&entry.name, "the key is revoked (revoked_keys)"));
                }
                let id = Identity {
                    name: Cow::Owned(entry.name.clone()),
                    proof: Proof::Key(k.clone()),
                };
                (id, entry.restrictions.clone())
            }
            Presented::Cert(c) => self.admit_cert(c, ip, now)?,
        };
        if restrictions.expired(now) {
            return Err(Denied::of(&identity.name, "expiry-time has passed"));
        }
        if !restrictions.allows_source(ip) {
            return Err(Denied::of(
                &identity.name,
                format!("from= does not allow {ip}"),
            ));
        }
        Ok((identity, restrictions))
    }

    fn admit_cert(
        &self,
        c: &Certificate,
        ip: IpAddr,
        now: i64,
    ) -> Result<(Identity, Arc<Restrictions>), Denied> {
        if c.cert_type() != CertType::User {
            return Err(Denied::new("a host certificate, not a user certificate"));
        }
        let now_u = u64::try_from(now).unwrap_or(0);
        c.validate_at(now_u, &self.cas).map_err(|_| {
            Denied::new("the certificate is not signed by a trusted CA, or is not valid now")
        })?;
        // OpenSSH reads an empty list as "any principal": never here.
        let entry = c
            .valid_principals()
            .iter()
            .find_map(|p| self.principals.iter().find(|e| &e.name == p))
            .ok_or_else(|| {
                Denied::new("none of the certificate's principals is in authorized_principals")
            })?;
        let name = &entry.name;
        if self.revoked.contains(c.public_key()) {
            return Err(Denied::of(
                name,
                "the certificate's key is revoked (revoked_keys)",
            ));
        }
        if self.revoked.contains(c.signature_key()) {
            return Err(Denied::of(
                name,
                "the certificate's CA is revoked (revoked_keys)",
            ));
        }
        for (option, value) in c.critical_options().iter() {
            match option.as_str() {
                "source-address" => {
                    let ok = authorized::parse_cidrs(value)
                        .is_ok_and(|cidrs| cidrs.iter().any(|c| c.contains(ip)));
                    if !ok {
                        return Err(Denied::of(
                            name,
                            format!("certificate source-address does not allow {ip}"),
                        ));
                    }
                }
                other => {
                    return Err(Denied::of(
                        name,
                        format!("certificate critical option {other:?} is not supported"),
                    ));
                }
            }
        }
        let mut restrictions = entry.restrictions.clone();
        if !c.extensions().contains_key("permit-pty") && !restrictions.no_pty {
            let mut r = (*restrictions).clone();
            r.no_pty = true;
            restrictions = Arc::new(r);
        }
        let id = Identity {
            name: Cow::Owned(entry.name.clone()),
            proof: Proof::Cert(Box::new(c.clone()), entry.name.clone()),
        };
        Ok((id, restrictions))
    }

    /// What an identity that got in may do now, judged as at its handshake
    /// ([`admit`](Self::admit)); `Err` once it would not get in any more.
    pub fn recheck(
        &self,
        id: &Identity,
        ip: IpAddr,
        now: i64,
    ) -> Result<Arc<Restrictions>, Denied> {
        let presented = match &id.proof {
            Proof::Key(k) => Presented::Key(k.clone()),
            Proof::Cert(c, _) => Presented::Cert(c.clone()),
            _ => return Err(Denied::new("not a key")),
        };
        let (now_id, r) = self.admit(&presented, ip, now)?;
        if now_id.name != id.name {
            return Err(Denied::of(
                &id.name,
                format!("the key now belongs to {:?}", now_id.name),
            ));
        }
        Ok(r)
    }

    /// The host key's SHA-256 fingerprint (`SHA256:…`).
    pub fn host_fingerprint(&self) -> String {
        self.host_key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The host key's public half, as an OpenSSH line.
    pub fn host_public(&self) -> String {
        self.host_key.public_key().to_openssh().unwrap_or_default()
    }

    /// Nobody can log in with a key or certificate (a reload emptied or
    /// removed the listings).
    pub fn admits_nobody(&self) -> bool {
        self.authorized.is_empty() && (self.cas.is_empty() || self.principals.is_empty())
    }

    /// How many keys and principals are listed, for the banner.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.authorized.len(), self.principals.len(), self.cas.len())
    }
}

/// Everything the server authenticates clients with.
#[derive(Clone)]
pub struct Credentials {
    /// None: authentication is off (`--no-auth`) or exec is not served.
    pub mode: Option<AuthMode>,
    pub token: Option<Token>,
    pub token_source: Option<TokenSource>,
    /// The token file was created by this start.
    pub token_created: bool,
    pub keys: Option<KeyAuth>,
}

/// Why [`Credentials::load`] runs: what it may create and what it may
/// leave missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// A start: a missing token file or host key is created.
    Start,
    /// A reload: everything must exist (a fresh random token or host key
    /// would lock every client out).
    Reload,
    /// `--check-config`: what exists must be good; what a start would
    /// create may be missing.
    Check,
}

impl Credentials {
    /// No authentication.
    pub fn none() -> Credentials {
        Credentials {
            mode: None,
            token: None,
            token_source: None,
            token_created: false,
            keys: None,
        }
    }

    /// Reads (or, at a start, creates) what `cfg.auth` needs: the token,
    /// the host key, `authorized_keys`, the CA keys and their principals,
    /// the revoked keys. `serves_exec`: whether a native exec endpoint is
    /// served (else nothing is read).
    pub fn load(cfg: &ExecConfig, serves_exec: bool, how: Load) -> anyhow::Result<Credentials> {
        if !serves_exec || cfg.no_auth {
            return Ok(Credentials::none());
        }
        let mut c = Credentials {
            mode: Some(cfg.auth),
            ..Credentials::none()
        };
        if cfg.auth.token() {
            match crate::secrets::server_token(cfg.token_file.as_deref(), how == Load::Start) {
                Ok((t, source, created)) => {
                    c.token = Some(t);
                    c.token_source = Some(source);
                    c.token_created = created;
                }
                Err(crate::secrets::SecretError::NoTokenFile(_)) if how == Load::Check => {}
                Err(e) => return Err(e.into()),
            }
        }
        if cfg.auth.keys() {
            c.keys = Some(load_keys(cfg, how)?);
        }
        Ok(c)
    }

    /// What an identity that got in may do now, as the credentials are
    /// now (for keys, [`KeyAuth::recheck`]); `Err` once it would not get
    /// in any more: a token connection does not outlive a new token, nor
    /// token logins turned off.
    pub fn recheck(
        &self,
        id: &Identity,
        ip: IpAddr,
        now: i64,
    ) -> Result<Arc<Restrictions>, Denied> {
        let open = || Ok(Arc::new(Restrictions::NONE));
        match &id.proof {
            Proof::None if self.mode.is_none() => open(),
            Proof::None => Err(Denied::new("the server now requires authentication")),
            // A rotated token (it leaked) shuts out whoever proved the old
            // one, as a removed key does.
            Proof::Token(proved) => match &self.token {
                Some(t) if t.digest() == *proved => open(),
                Some(_) => Err(Denied::of(&id.name, "the token was replaced")),
                None => Err(Denied::of(&id.name, "token logins are off now")),
            },
            Proof::Key(_) | Proof::Cert(..) => match &self.keys {
                Some(k) => k.recheck(id, ip, now),
                None => Err(Denied::of(&id.name, "key logins are off now (exec.auth)")),
            },
        }
    }

    /// The token file whose being root's alone may allow root jobs
    /// ([`crate::exposure::root_jobs_without_asking`]): only in token
    /// mode, where holding the token is the only way in. A key in an
    /// `authorized_keys` is nobody's root password.
    pub fn root_rule_source(&self) -> Option<&TokenSource> {
        match self.mode {
            Some(AuthMode::Token) => self.token_source.as_ref(),
            _ => None,
        }
    }
}

/// Text that reads as what it is, for names that reach logs, audit
/// records and metric labels: no control characters, and none of the
/// invisible ones that reorder or hide text (bidirectional overrides,
/// zero-width characters, line and paragraph separators).
pub fn plain_text(s: &str) -> bool {
    !s.chars().any(|c| {
        c.is_control()
            || matches!(c,
                '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}')
    })
}

/// The default directory of the server's files (token, host key,
/// authorized keys): the token file's, else the user's config directory.
pub fn server_dir(cfg: &ExecConfig) -> anyhow::Result<PathBuf> {
    match &cfg.token_file {
        Some(t) => Ok(t.parent().map(Path::to_path_buf).unwrap_or_default()),
        None => crate::secrets::default_token_path()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .context("no config directory; set exec.host_key and exec.authorized_keys"),
    }
}

fn load_keys(cfg: &ExecConfig, how: Load) -> anyhow::Result<KeyAuth> {
    let dir = server_dir(cfg)?;
    let host_key_path = cfg.host_key.clone().unwrap_or_else(|| dir.join("host_key"));
    let (host_key, host_key_created) = match host_key(&host_key_path, how)? {
        Some(k) => k,
        // --check-config: a start would create it.
        None => (keys::generate("check")?, false),
    };
    let explicit = cfg.authorized_keys.is_some();
    let authorized_keys = cfg
        .authorized_keys
        .clone()
        .unwrap_or_else(|| dir.join("authorized_keys"));
    // At a reload, a listing of who may log in that was emptied or removed
    // says nobody: applied (the reloader warns), never refused, which
    // would keep the keys it no longer lists in force. A revocation list
    // that vanished is refused instead.
    let reload = how == Load::Reload;
    let authorized = match read_listing(&authorized_keys, "authorized_keys", !explicit || reload)? {
        Some(text) => authorized::parse_keys(&text, &authorized_keys)?,
        None => Vec::new(),
    };
    let (cas, principals) = match &cfg.trusted_user_ca {
        Some(path) => {
            let text = read_listing(path, "trusted_user_ca", reload)?.unwrap_or_default();
            let cas = public_keys(&text, path)?
                .iter()
                .map(|k| k.fingerprint(HashAlg::Sha256))
                .collect::<Vec<_>>();
            if cas.is_empty() && !reload {
                bail!("{} names no CA key", path.display());
            }
            let ppath = cfg
                .authorized_principals
                .clone()
                .unwrap_or_else(|| dir.join("authorized_principals"));
            let text =
                read_listing(&ppath, "authorized_principals", reload).with_context(|| {
                    "trusted_user_ca needs authorized_principals: the principals (one per line, \
                 with options) whose certificates are admitted"
                })?;
            let principals = authorized::parse_principals(&text.unwrap_or_default(), &ppath)?;
            (cas, principals)
        }
        None => (Vec::new(), Vec::new()),
    };
    let revoked = match &cfg.revoked_keys {
        Some(path) => {
            let text = read_listing(path, "revoked_keys", false)?.unwrap_or_default();
            public_keys(&text, path)?
                .into_iter()
                .map(|k| k.key_data().clone())
                .collect()
        }
        None => Vec::new(),
    };
    if cfg.auth == AuthMode::Key && authorized.is_empty() && cas.is_empty() && !reload {
        bail!(
            "exec.auth = \"key\" but {} lists no key and no trusted_user_ca is set: nobody could log in",
            authorized_keys.display()
        );
    }
    Ok(KeyAuth {
        host_key,
        host_key_path,
        host_key_created,
        authorized,
        principals,
        cas,
        revoked,
        authorized_keys,
    })
}

/// The host key at `path`; created at a start when missing. `None` only
/// for `--check-config` when it is missing.
fn host_key(path: &Path, how: Load) -> anyhow::Result<Option<(PrivateKey, bool)>> {
    let exists = path.symlink_metadata().is_ok();
    if !exists {
        match how {
            Load::Check => return Ok(None),
            Load::Reload => bail!(
                "host key {} does not exist (only a start creates one)",
                path.display()
            ),
            Load::Start => {
                if let Some(dir) = path.parent() {
                    crate::files::ensure_dir(dir, 0o700)?;
                }
                let key = keys::generate(&format!("switchboard host key {}", hostname()))?;
                if keys::write_pair(&key, &key, path)? {
                    return Ok(Some((key, true)));
                }
                // Another server starting at the same moment wrote one.
            }
        }
    }
    let bytes = crate::secrets::read_private(path, "host key")?;
    let key = PrivateKey::from_openssh(&bytes)
        .map_err(|e| anyhow::anyhow!("host key {}: {e}", path.display()))?;
    if key.is_encrypted() || !strong_ed25519(key.public_key().key_data()) {
        bail!(
            "host key {}: must be an unencrypted Ed25519 key",
            path.display()
        );
    }
    Ok(Some((key, false)))
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A file that says who may log in, read as sshd's StrictModes would have
/// it: owned by this user or root and writable by no one else (whoever
/// can write it can let themselves in). `None` when it does not exist and
/// `missing_ok` says that is fine.
fn read_listing(
    path: &Path,
    what: &'static str,
    missing_ok: bool,
) -> anyhow::Result<Option<String>> {
    match crate::secrets::read_trusted(path, what) {
        Ok(b) => {
            Ok(Some(String::from_utf8(b).with_context(|| {
                format!("{} is not UTF-8", path.display())
            })?))
        }
        Err(crate::secrets::SecretError::Read { source, .. })
            if missing_ok && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Public key lines (CA keys, revoked keys): blank lines and `#` comments
/// skipped, anything else must be an Ed25519 public key.
fn public_keys(text: &str, path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .map(|(i, l)| {
            let k = PublicKey::from_openssh(l.trim()).map_err(|e| {
                anyhow::anyhow!("{}:{}: not a public key ({e})", path.display(), i + 1)
            })?;
            if !strong_ed25519(k.key_data()) {
                bail!(
                    "{}:{}: Ed25519 keys of full order only",
                    path.display(),
                    i + 1
                );
            }
            Ok(k)
        })
        .collect()
}

/// Whether `key` is an Ed25519 key of full order. A key of small order
/// (the identity point, say) verifies signatures that nobody made: the
/// signature check this build uses (`ssh-key`'s, not `verify_strict`)
/// would let anyone who presents one in, so such keys are refused
/// wherever a key is taken (authorized_keys, CA keys, a presented key or
/// certificate, a server's host key).
pub fn strong_ed25519(key: &ssh_key::public::KeyData) -> bool {
    key.ed25519()
        .and_then(|k| ed25519_dalek::VerifyingKey::try_from(k).ok())
        .is_some_and(|k| !k.is_weak())
}

/// Unix time now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
