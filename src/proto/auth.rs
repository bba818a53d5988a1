//! The `switchboard/1` handshake's cryptography (PROTOCOL.md §3.2) and the
//! shared token.
//!
//! ```text
//! S: hello  nonce = hex(32 random bytes)
//! C: auth   nonce = hex(32 random bytes)
//!           mac   = hex(HMAC-SHA256(token, "switchboard/1 client " + server_nonce + " " + client_nonce))
//! S: ready  mac   = hex(HMAC-SHA256(token, "switchboard/1 server " + server_nonce + " " + client_nonce))
//! ```
//!
//! Each side proves it knows the token without sending it, each nonce keeps
//! an old exchange from being replayed, and the two labels keep one side's
//! MAC from being reflected back as the other's.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable that overrides the token file.
pub const TOKEN_ENV: &str = "SWITCHBOARD_TOKEN";

/// A shared secret. Its `Debug` never prints it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from text: surrounding whitespace trimmed, never empty.
    pub fn new(text: &str) -> anyhow::Result<Token> {
        let t = text.trim();
        if t.is_empty() {
            bail!("the token is empty");
        }
        Ok(Token(t.to_string()))
    }

    /// A fresh random token: 32 random bytes as 64 hex characters.
    pub fn generate() -> anyhow::Result<Token> {
        Ok(Token(hex(&random_bytes::<32>()?)))
    }

    /// Reads a token file, refusing one that group or others may read or
    /// write (see [`read_private`]).
    pub fn read(path: &Path) -> anyhow::Result<Token> {
        let bytes = read_private(path, "token file")?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("token file {} is not UTF-8", path.display()))?;
        Token::new(&text).with_context(|| format!("token file {}", path.display()))
    }

    fn mac(&self, label: &str, server_nonce: &str, client_nonce: &str) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(self.0.as_bytes())
            .unwrap_or_else(|_| unreachable!());
        m.update(format!("switchboard/1 {label} {server_nonce} {client_nonce}").as_bytes());
        m
    }

    /// A public name for the token: the first 8 hex digits of its SHA-256
    /// (for logs; reveals nothing usable about the token).
    pub fn id(&self) -> String {
        use sha2::Digest;
        let digest = Sha256::digest(self.0.as_bytes());
        hex(digest.get(..4).unwrap_or_default())
    }

    /// The MAC the client sends.
    pub fn client_mac(&self, server_nonce: &str, client_nonce: &str) -> String {
        hex(&self
            .mac("client", server_nonce, client_nonce)
            .finalize()
            .into_bytes())
    }

    /// The MAC the server sends.
    pub fn server_mac(&self, server_nonce: &str, client_nonce: &str) -> String {
        hex(&self
            .mac("server", server_nonce, client_nonce)
            .finalize()
            .into_bytes())
    }

    /// Checks a client's MAC in constant time.
    pub fn verify_client(&self, server_nonce: &str, client_nonce: &str, mac_hex: &str) -> bool {
        self.verify("client", server_nonce, client_nonce, mac_hex)
    }

    /// Checks a server's MAC in constant time.
    pub fn verify_server(&self, server_nonce: &str, client_nonce: &str, mac_hex: &str) -> bool {
        self.verify("server", server_nonce, client_nonce, mac_hex)
    }

    fn verify(&self, label: &str, server_nonce: &str, client_nonce: &str, mac_hex: &str) -> bool {
        let Some(mac) = unhex(mac_hex) else {
            return false;
        };
        self.mac(label, server_nonce, client_nonce)
            .verify_slice(&mac)
            .is_ok()
    }
}

/// A fresh nonce: 32 random bytes as 64 lower-case hex characters.
pub fn nonce() -> anyhow::Result<String> {
    Ok(hex(&random_bytes::<32>()?))
}

/// Whether `s` is a well-formed nonce (64 lower-case hex characters).
pub fn is_nonce(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(*p.first()?)? << 4 | digit(*p.get(1)?)?))
        .collect()
}

/// The default token file: `token` in the user's config directory
/// (`$XDG_CONFIG_HOME/switchboard/token`, usually `~/.config/switchboard/token`).
pub fn default_token_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "switchboard").map(|d| d.config_dir().join("token"))
}

/// Where a token came from, for messages.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Env,
    File(PathBuf),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Env => write!(f, "${TOKEN_ENV}"),
            TokenSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The client's token: `SWITCHBOARD_TOKEN`, else `--token-file`, else the
/// default file.
pub fn client_token(token_file: Option<&Path>) -> anyhow::Result<(Token, TokenSource)> {
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && token_file.is_none()
    {
        return Ok((Token::new(&t).context(TOKEN_ENV)?, TokenSource::Env));
    }
    let path = match token_file {
        Some(p) => p.to_path_buf(),
        None => default_token_path()
            .context("no config directory for the default token file; use --token-file")?,
    };
    Ok((Token::read(&path)?, TokenSource::File(path)))
}

/// The server's token: `SWITCHBOARD_TOKEN`, else `--token-file` or the
/// default file, created (mode 0600, random) when it does not exist.
/// Returns the token, where it is, and whether it was just created.
pub fn server_token(token_file: Option<&Path>) -> anyhow::Result<(Token, TokenSource, bool)> {
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && token_file.is_none()
    {
        return Ok((Token::new(&t).context(TOKEN_ENV)?, TokenSource::Env, false));
    }
    let path = match token_file {
        Some(p) => p.to_path_buf(),
        None => default_token_path()
            .context("no config directory for the default token file; use --token-file")?,
    };
    if path.exists() {
        return Ok((Token::read(&path)?, TokenSource::File(path), false));
    }
    let token = Token::generate()?;
    write_private(&path, &format!("{}\n", token.0))?;
    Ok((token, TokenSource::File(path), true))
}

/// The largest token file or TLS key read: 1 MiB, far above any real one,
/// so a path naming a device or a huge file fails instead of filling memory.
pub const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// Reads a secret file (`what`: "token file", "TLS private key"), as ssh
/// reads a private key: refused when its mode gives group or others any
/// access. Readable by others, the secret is no longer one; writable by
/// others, it is whatever they chose (for a token, they then know it). The
/// mode is checked on the opened file, so a rename in between cannot swap
/// in another one.
pub fn read_private(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mode = f
        .metadata()
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .permissions()
        .mode();
    check_private_mode(path, what, mode)?;
    let mut bytes = Vec::new();
    f.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        bail!(
            "{what} {} is larger than {MAX_SECRET_FILE} bytes",
            path.display()
        );
    }
    Ok(bytes)
}

/// The mode rule of [`read_private`], with its one-line fix.
pub fn check_private_mode(path: &Path, what: &str, mode: u32) -> anyhow::Result<()> {
    if mode & 0o077 != 0 {
        bail!(
            "{what} {p} is accessible by group or others (mode {m:04o}); run: chmod 600 {p}",
            p = path.display(),
            m = mode & 0o7777,
        );
    }
    Ok(())
}

/// Creates `path` with mode 0600 (never replacing an existing file).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create token file {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_match_the_protocol_text() {
        // Computed independently: python3 -c "import hmac,hashlib;
        // print(hmac.new(b'secret', b'switchboard/1 client aa bb', hashlib.sha256).hexdigest())"
        let t = Token::new(" secret\n").unwrap();
        assert_eq!(
            t.client_mac("aa", "bb"),
            "aee6587d076108c6468de3fdf57784c13e9eedbd06d0544cde1954c2fbcc79bc"
        );
        assert!(t.verify_client("aa", "bb", &t.client_mac("aa", "bb")));
        assert!(!t.verify_client("aa", "bb", &t.server_mac("aa", "bb")));
        assert!(!t.verify_client("aa", "bb", "zz"));
        assert!(!t.verify_client("aa", "bb", ""));
        assert!(t.verify_server("aa", "bb", &t.server_mac("aa", "bb")));
    }

    #[test]
    fn nonces_are_fresh_hex() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert!(is_nonce(&a) && is_nonce(&b));
        assert_ne!(a, b);
        assert!(!is_nonce("ABCD"));
    }

    #[test]
    fn token_files_open_to_group_or_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = format!("{:#}", Token::read(&path).unwrap_err());
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(server_token(Some(&path)).is_err());
            assert!(client_token(Some(&path)).is_err());
        }
        for mode in [0o600, 0o400, 0o700] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(Token::read(&path).is_ok(), "{mode:o}");
        }
    }

    #[test]
    fn server_creates_a_private_token_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let (t1, _, created) = server_token(Some(&path)).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (t2, _, created) = server_token(Some(&path)).unwrap();
        assert!(!created);
        assert_eq!(t1.client_mac("a", "b"), t2.client_mac("a", "b"));
        let (t3, _) = client_token(Some(&path)).unwrap();
        assert_eq!(t1.client_mac("a", "b"), t3.client_mac("a", "b"));
    }
}
