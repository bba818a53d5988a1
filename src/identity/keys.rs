//! The client's key, as ssh finds one, and `switchboard keygen`.
//!
//! ```text
//! -i FILE                       that key (its private half, or its .pub
//!                               with the private key in the agent)
//! else ~/.config/switchboard/id_ed25519, else ~/.ssh/id_ed25519
//! else the first Ed25519 key the agent holds ($SSH_AUTH_SOCK)
//!
//! FILE-cert.pub beside the key: presented instead of the bare key
//! a key the agent holds is signed with by the agent; an encrypted key
//! file asks for its passphrase (the terminal, or $SSH_ASKPASS) when
//! first used, so a server that wants the token never makes you type it
//! ```
//!
//! Files are OpenSSH's own formats, read and written by RustCrypto's
//! `ssh-key`; the agent is spoken to by `ssh-agent-client-rs`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use ssh_key::{Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::proto::auth::KEY_NAMESPACE;

/// The hash inside every signature this side makes (ssh-keygen -Y's).
const SIG_HASH: HashAlg = HashAlg::Sha512;
/// How long the agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest passphrase read.
const MAX_PASSPHRASE: u64 = 1024;

/// A fresh Ed25519 key with `comment`.
pub fn generate(comment: &str) -> anyhow::Result<PrivateKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    Ok(key)
}

/// Writes `stored` (the key, encrypted or not) to `path` (0600, never
/// over an existing file: `Ok(false)` then) and the public half of `key`
/// to `path.pub` (0644). The public half comes from the unencrypted key:
/// an encrypted one keeps its comment inside the encryption.
pub fn write_pair(stored: &PrivateKey, key: &PrivateKey, path: &Path) -> anyhow::Result<bool> {
    let text = stored
        .to_openssh(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
    if !crate::files::create_new(path, text.as_bytes(), 0o600)? {
        return Ok(false);
    }
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
    crate::files::replace(&pub_path(path), format!("{public}\n").as_bytes(), 0o644)?;
    Ok(true)
}

fn pub_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn cert_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-cert.pub");
    PathBuf::from(p)
}

/// `switchboard keygen`: a new pair at `path`, encrypted when
/// `passphrase` is not empty. Refuses to replace an existing key.
pub fn keygen(path: &Path, comment: &str, passphrase: &str) -> anyhow::Result<PrivateKey> {
    // The public half too: replacing someone's .pub would leave it
    // naming a key it is not the half of.
    for p in [path.to_path_buf(), pub_path(path)] {
        if p.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; remove it first, or give another -f",
                p.display()
            );
        }
    }
    // The comment ends the .pub line and becomes a name in
    // authorized_keys: a newline would add a line of its own.
    if !super::plain_text(comment) {
        bail!("the comment {comment:?} has control or invisible characters");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::ensure_dir(dir, 0o700)?;
    }
    let key = generate(comment)?;
    let stored = if passphrase.is_empty() {
        key.clone()
    } else {
        key.encrypt(&mut ssh_key::rand_core::OsRng, passphrase)
            .map_err(|e| anyhow::anyhow!("cannot encrypt the key: {e}"))?
    };
    if !write_pair(&stored, &key, path)? {
        bail!("{} already exists", path.display());
    }
    Ok(key)
}

/// The default key files, in the order they are tried.
pub fn default_key_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = directories::ProjectDirs::from("", "", "switchboard") {
        v.push(d.config_dir().join("id_ed25519"));
    }
    if let Some(b) = directories::BaseDirs::new() {
        v.push(b.home_dir().join(".ssh").join("id_ed25519"));
    }
    v
}

/// Where the signature comes from.
enum Signer {
    /// The agent at this socket holds the private key.
    Agent(PathBuf),
    /// A key file, decrypted on first use.
    File {
        path: PathBuf,
        key: Box<Mutex<PrivateKey>>,
    },
}

/// The key a client authenticates with.
pub struct ClientKey {
    public: PublicKey,
    certificate: Option<Certificate>,
    signer: Signer,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({})", self.describe())
    }
}

impl ClientKey {
    /// The key to use: `explicit` (`-i`), else a default file, else the
    /// agent's first Ed25519 key; `None` when there is none at all.
    pub fn find(explicit: Option<&Path>) -> anyhow::Result<Option<ClientKey>> {
        let agent = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if let Some(path) = explicit {
            return ClientKey::from_file(path, agent.as_deref()).map(Some);
        }
        for path in default_key_files() {
            if path.symlink_metadata().is_ok() {
                return ClientKey::from_file(&path, agent.as_deref()).map(Some);
            }
        }
        let Some(sock) = agent else {
            return Ok(None);
        };
        let held = agent_keys(&sock).unwrap_or_default();
        Ok(held.into_iter().next().map(|public| ClientKey {
            public,
            certificate: None,
            signer: Signer::Agent(sock),
        }))
    }

    fn from_file(path: &Path, agent: Option<&Path>) -> anyhow::Result<ClientKey> {
        let bytes = crate::secrets::read_private(path, "private key").or_else(|e| {
            // A public key file (`-i key.pub`, its private half in the
            // agent) needs no secrecy.
            match crate::secrets::read_regular(path, "key file") {
                Ok(b) if b.starts_with(b"ssh-") => Ok(b),
                _ => Err(e),
            }
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let (public, file_key) = match PrivateKey::from_openssh(text.as_bytes()) {
            Ok(k) => (k.public_key().clone(), Some(k)),
            Err(e) => match PublicKey::from_openssh(text.trim()) {
                Ok(p) => (p, None),
                Err(_) => bail!("{}: not an OpenSSH key ({e})", path.display()),
            },
        };
        if public.algorithm() != Algorithm::Ed25519 {
            bail!(
                "{}: a {} key; switchboard uses Ed25519 keys (switchboard keygen makes one)",
                path.display(),
                public.algorithm()
            );
        }
        let in_agent = agent.filter(|sock| {
            agent_keys(sock)
                .is_ok_and(|held| held.iter().any(|k| k.key_data() == public.key_data()))
        });
        let signer = match (in_agent, file_key) {
            (Some(sock), _) => Signer::Agent(sock.to_path_buf()),
            (None, Some(key)) => Signer::File {
                path: path.to_path_buf(),
                key: Box::new(Mutex::new(key)),
            },
            (None, None) => bail!(
                "{}: a public key, and no agent holds its private half",
                path.display()
            ),
        };
        let certificate = certificate_for(path, &public)?;
        Ok(ClientKey {
            public,
            certificate,
            signer,
        })
    }

    /// What the `auth` frame presents: the certificate's line if there is
    /// one, else the public key's.
    pub fn presented(&self) -> String {
        let line = match &self.certificate {
            Some(c) => c.to_openssh().ok(),
            None => self.public.to_openssh().ok(),
        };
        line.unwrap_or_default()
    }

    /// The key's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint(HashAlg::Sha256).to_string()
    }

    /// For messages: the fingerprint and where the key is.
    pub fn describe(&self) -> String {
        let from = match &self.signer {
            Signer::Agent(_) => "in the agent".to_string(),
            Signer::File { path, .. } => path.display().to_string(),
        };
        let cert = if self.certificate.is_some() {
            " with its certificate"
        } else {
            ""
        };
        format!("{} ({from}{cert})", self.fingerprint())
    }

    /// Signs `msg` in switchboard's namespace. A key file that is
    /// encrypted is decrypted now, once: this may ask for its passphrase,
    /// blocking the caller until it is typed.
    pub fn sign(&self, msg: &[u8]) -> anyhow::Result<SshSig> {
        match &self.signer {
            Signer::Agent(sock) => {
                let data = SshSig::signed_data(KEY_NAMESPACE, SIG_HASH, msg)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let stream = agent_stream(sock)?;
                let mut agent = ssh_agent_client_rs::Client::with_read_write(Box::new(stream));
                let sig = agent
                    .sign(self.public.clone(), &data)
                    .map_err(|e| anyhow::anyhow!("the agent did not sign: {e}"))?;
                SshSig::new(self.public.key_data().clone(), KEY_NAMESPACE, SIG_HASH, sig)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
            Signer::File { path, key } => {
                let mut key = key.lock().unwrap_or_else(|e| e.into_inner());
                if key.is_encrypted() {
                    let pass = passphrase(&format!("Enter passphrase for {}: ", path.display()))?;
                    *key = key
                        .decrypt(pass.as_bytes())
                        .map_err(|_| anyhow::anyhow!("wrong passphrase for {}", path.display()))?;
                }
                key.sign(KEY_NAMESPACE, SIG_HASH, msg)
                    .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))
            }
        }
    }
}

/// `FILE-cert.pub` beside a key, if it is there and certifies that key.
fn certificate_for(path: &Path, public: &PublicKey) -> anyhow::Result<Option<Certificate>> {
    let cpath = cert_path(path);
    let Ok(bytes) = crate::secrets::read_regular(&cpath, "certificate") else {
        return Ok(None);
    };
    let cert = Certificate::from_openssh(String::from_utf8_lossy(&bytes).trim()).map_err(|e| {
        match e {
            // OpenSSH writes "forever" as 2^64-1, past what ssh-key 0.6
            // reads.
            ssh_key::Error::Time => anyhow::anyhow!(
                "{}: a certificate valid forever, which switchboard cannot read; \
                 have it signed with an end (ssh-keygen -s CA -V +52w ...)",
                cpath.display()
            ),
            e => anyhow::anyhow!("{}: not a certificate ({e})", cpath.display()),
        }
    })?;
    if cert.public_key() != public.key_data() {
        bail!(
            "{} certifies another key than {}",
            cpath.display(),
            path.display()
        );
    }
    Ok(Some(cert))
}

fn agent_stream(sock: &Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot reach the agent at {}", sock.display()))?;
    s.set_read_timeout(Some(AGENT_TIMEOUT))?;
    s.set_write_timeout(Some(AGENT_TIMEOUT))?;
    Ok(s)
}

/// The Ed25519 keys the agent holds.
fn agent_keys(sock: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let mut agent = ssh_agent_client_rs::Client::with_read_write(Box::new(agent_stream(sock)?));
    let ids = agent
        .list_all_identities()
        .map_err(|e| anyhow::anyhow!("the agent: {e}"))?;
    Ok(ids
        .into_iter()
        .filter_map(|i| match i {
            ssh_agent_client_rs::Identity::PublicKey(k) => Some(k.into_owned()),
            ssh_agent_client_rs::Identity::Certificate(_) => None,
        })
        .filter(|k| k.algorithm() == Algorithm::Ed25519)
        .collect())
}

/// Asks for a passphrase as ssh does: `$SSH_ASKPASS` when
/// `SSH_ASKPASS_REQUIRE=force`, else the terminal (`/dev/tty`, echo off),
/// else `$SSH_ASKPASS` if set.
pub fn passphrase(prompt: &str) -> anyhow::Result<String> {
    let askpass = std::env::var_os("SSH_ASKPASS").filter(|a| !a.is_empty());
    let require = std::env::var("SSH_ASKPASS_REQUIRE").unwrap_or_default();
    if let (Some(a), "force") = (&askpass, require.as_str()) {
        return run_askpass(a, prompt);
    }
    match read_tty(prompt) {
        Ok(p) => Ok(p),
        Err(e) => match askpass {
            Some(a) if require != "never" => run_askpass(&a, prompt),
            _ => Err(e.context(
                "a passphrase is needed and there is no terminal to ask it on \
                 (add the key to ssh-agent, or set SSH_ASKPASS)",
            )),
        },
    }
}

fn run_askpass(program: &std::ffi::OsStr, prompt: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .arg(prompt)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run SSH_ASKPASS {}", program.to_string_lossy()))?;
    if !out.status.success() {
        bail!("SSH_ASKPASS gave no passphrase ({})", out.status);
    }
    let text = String::from_utf8(out.stdout).context("the passphrase is not UTF-8")?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a line from the controlling terminal with echo off.
fn read_tty(prompt: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal")?;
    let saved = tcgetattr(&tty).context("not a terminal")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tty.write_all(prompt.as_bytes())?;
    tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet)?;
    let mut line = Vec::new();
    let read = (&tty).take(MAX_PASSPHRASE).read_until_newline(&mut line);
    let _ = tcsetattr(&tty, SetArg::TCSAFLUSH, &saved);
    read?;
    let text = String::from_utf8(line).context("the passphrase is not UTF-8")?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

trait ReadLine {
    fn read_until_newline(self, buf: &mut Vec<u8>) -> std::io::Result<()>;
}

impl<R: Read> ReadLine for R {
    /// Byte by byte: a terminal hands over a line at a time anyway, and
    /// nothing past the newline may be taken from it.
    fn read_until_newline(mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let mut b = [0u8; 1];
        loop {
            match self.read(&mut b)? {
                0 => return Ok(()),
                _ if b == *b"\n" => return Ok(()),
                _ => buf.extend_from_slice(&b),
            }
        }
    }
}
