//! Secrets on disk and in the environment: where the exec token lives,
//! how the client and the server find it, and how a secret file (the
//! token, a TLS private key) is read and created. Files are read as ssh
//! reads a private key: refused when group or others have any access.
//!
//! ```text
//! client: $SWITCHBOARD_TOKEN | --token-file | ~/.config/switchboard/token
//! server: $SWITCHBOARD_TOKEN | --token-file | ~/.config/switchboard/token,
//!         created 0600 (directory 0700) with 32 random bytes when missing
//! ```

use std::path::{Path, PathBuf};

use std::io;

use crate::proto::auth::Token;

/// Environment variable that overrides the token file.
pub const TOKEN_ENV: &str = "SWITCHBOARD_TOKEN";

/// The largest secret, certificate or configuration file read: 1 MiB, far
/// above any real one, so a huge file fails instead of filling memory.
pub const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// What is wrong with a secret (or a file read like one). Each says what
/// to do about it in one line.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {} is not a regular file", path.display())]
    NotRegular { what: &'static str, path: PathBuf },
    #[error(
        "{what} {p} belongs to uid {uid}, not to this user (uid {me}) or root; run: chown {me} {p}",
        p = path.display()
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        uid: u32,
        me: u32,
    },
    #[error(
        "{what} {p} is accessible by group or others (mode {mode:04o}); run: chmod 600 {p}",
        p = path.display()
    )]
    Mode {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {p} is writable by group or others (mode {mode:04o}); run: chmod go-w {p}",
        p = path.display()
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {} is larger than {MAX_SECRET_FILE} bytes", path.display())]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{from} is not UTF-8")]
    NotUtf8 { from: String },
    #[error("{from}: the token is empty")]
    EmptyToken { from: String },
    /// The server's token file does not exist (and was not to be created).
    #[error("token file {} does not exist (only a start creates one)", .0.display())]
    NoTokenFile(PathBuf),
    #[error("no config directory for the default token file; use --token-file")]
    NoConfigDir,
    #[error("cannot create {}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}

/// A token from text, or why it is none (`from` names where it came from).
fn token(text: &str, from: impl std::fmt::Display) -> Result<Token, SecretError> {
    Token::new(text).map_err(|_| SecretError::EmptyToken {
        from: from.to_string(),
    })
}

/// Reads a token file, refusing one that group or others may read or
/// write (see [`read_private`]).
pub fn read_token(path: &Path) -> Result<Token, SecretError> {
    let bytes = read_private(path, "token file")?;
    let from = || format!("token file {}", path.display());
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8 { from: from() })?;
    token(&text, from())
}

/// What the token file at `path` holds now, by its SHA-256, read whatever
/// its mode (only compared, never used to authenticate); `None` if it
/// cannot be read or holds no token. Bounded like every secret file.
pub fn token_file_digest(path: &Path) -> Option<[u8; 32]> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO put there must not hang the reload.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE).read_to_string(&mut text).ok()?;
    Token::new(&text).ok().map(|t| t.digest())
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

impl TokenSource {
    /// Whether only root can read or replace this token: a file (not a
    /// link) owned by root that group and others cannot read, in a
    /// directory owned by root that no one else may write to (or a sticky
    /// one, as /tmp). An environment variable is not (a service unit's
    /// `Environment=` is readable by every user).
    pub fn is_roots_alone(&self) -> bool {
        match self {
            TokenSource::Env => false,
            TokenSource::File(p) => is_roots_alone(p),
        }
    }
}

/// Whether only root can read or replace the file at `path`, as OpenSSH's
/// StrictModes judges a key: the file (not a link) owned by root and closed
/// to group and others; its directory owned by root and writable by no one
/// else (not even sticky: anyone may create the free name in /tmp); every
/// directory above owned by root and writable by no one else unless sticky
/// (as /tmp, where others cannot rename root's entries). None is a link.
/// Anyone who could write to one of them could put a file of theirs at
/// `path` between the server's reading it and judging it.
pub fn is_roots_alone(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = std::path::absolute(path) else {
        return false;
    };
    let file = std::fs::symlink_metadata(&path)
        .is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o077 == 0);
    file && path.ancestors().skip(1).enumerate().all(|(i, dir)| {
        std::fs::symlink_metadata(dir).is_ok_and(|m| {
            let sticky_ok = i > 0 && m.mode() & 0o1000 != 0;
            m.is_dir() && m.uid() == 0 && (m.mode() & 0o022 == 0 || sticky_ok)
        })
    })
}

/// The token file that lets a root server run root jobs, as it was when
/// the server read it: the rule holds only while the file is still root's
/// alone and still that file, unchanged (the same inode, the same change
/// time). Any write, chmod or replacement since, a failed reload's
/// included, means the token in force may no longer be what the file
/// holds, or was exposed meanwhile: root jobs stop until a reload reads it
/// again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootToken {
    path: PathBuf,
    stamp: (u64, u64, i64, i64),
}

impl RootToken {
    /// `path` as it is now, if it is root's alone.
    pub fn now(path: &Path) -> Option<RootToken> {
        let stamp = file_stamp(path)?;
        is_roots_alone(path).then(|| RootToken {
            path: path.to_path_buf(),
            stamp,
        })
    }

    /// Whether the file is still root's alone and unchanged.
    pub fn holds(&self) -> bool {
        is_roots_alone(&self.path) && file_stamp(&self.path) == Some(self.stamp)
    }
}

/// Device, inode and change time (seconds, nanoseconds) of `path` itself.
fn file_stamp(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Env => write!(f, "${TOKEN_ENV}"),
            TokenSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The token in the environment, when it applies (no `--token-file`).
fn env_token(token_file: Option<&Path>) -> Option<Result<Token, SecretError>> {
    let t = std::env::var(TOKEN_ENV).ok()?;
    token_file.is_none().then(|| token(&t, TOKEN_ENV))
}

/// The token file's path: `--token-file`, else the default.
fn token_path(token_file: Option<&Path>) -> Result<PathBuf, SecretError> {
    match token_file {
        Some(p) => Ok(p.to_path_buf()),
        None => default_token_path().ok_or(SecretError::NoConfigDir),
    }
}

/// The client's token: `SWITCHBOARD_TOKEN`, else `--token-file`, else the
/// default file.
pub fn client_token(token_file: Option<&Path>) -> Result<(Token, TokenSource), SecretError> {
    if let Some(t) = env_token(token_file) {
        return Ok((t?, TokenSource::Env));
    }
    let path = token_path(token_file)?;
    Ok((read_token(&path)?, TokenSource::File(path)))
}

/// The server's token: `SWITCHBOARD_TOKEN`, else `--token-file` or the
/// default file, created (mode 0600, random) when it does not exist and
/// `create` says so (at start; a reload never creates one, since a fresh
/// random token would lock every client out). Returns the token, where it
/// is, and whether it was just created.
pub fn server_token(
    token_file: Option<&Path>,
    create: bool,
) -> Result<(Token, TokenSource, bool), SecretError> {
    if let Some(t) = env_token(token_file) {
        return Ok((t?, TokenSource::Env, false));
    }
    let path = token_path(token_file)?;
    // Anything there, a dangling link included, is read (and refused if it
    // is not a good token file); only a free name is created. An empty
    // file is a torn write of an older version (it authenticates no one):
    // a start replaces it rather than refusing every start after it.
    let torn = || {
        path.symlink_metadata()
            .is_ok_and(|m| m.is_file() && m.len() == 0)
    };
    if path.symlink_metadata().is_ok() && !(create && torn()) {
        return Ok((read_token(&path)?, TokenSource::File(path), false));
    }
    if !create {
        return Err(SecretError::NoTokenFile(path));
    }
    let token = Token::generate().map_err(|e| SecretError::Create {
        path: path.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    let text = format!("{}\n", token.expose());
    if let Some(dir) = path.parent() {
        crate::files::ensure_dir(dir, 0o700)?;
    }
    let created = if torn() {
        crate::files::replace(&path, text.as_bytes(), 0o600)?;
        true
    } else {
        crate::files::create_new(&path, text.as_bytes(), 0o600)?
    };
    if !created {
        // Another server starting at the same moment won: use its token.
        return Ok((read_token(&path)?, TokenSource::File(path), false));
    }
    Ok((token, TokenSource::File(path), true))
}

/// What a start would find of the server's token without creating it: an
/// existing file must pass [`read_token`]; a missing one is fine (a start
/// creates it). For `--check-config`.
pub fn check_server_token(token_file: Option<&Path>) -> Result<(), SecretError> {
    match server_token(token_file, false) {
        Err(SecretError::NoTokenFile(_)) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Reads a secret file (`what`: "token file", "TLS private key"), as ssh
/// reads a private key: refused unless it is a regular file owned by this
/// user (or root) that group and others have no access to. Readable by
/// others, the secret is no longer one; writable by others, it is whatever
/// they chose (for a token, they then know it). The checks are made on the
/// opened file, so a rename in between cannot swap in another one.
pub fn read_private(path: &Path, what: &'static str) -> Result<Vec<u8>, SecretError> {
    read_checked(path, what, |meta| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        check_private_owner(path, what, meta.uid())?;
        check_private_mode(path, what, meta.permissions().mode())
    })
}

/// Reads a file the server or client must not block on or be flooded by
/// (configuration, certificates, known hosts): a regular file of at most
/// [`MAX_SECRET_FILE`] bytes, opened non-blocking, so a FIFO or a device
/// named there fails at once instead of hanging a start or a reload.
pub fn read_regular(path: &Path, what: &'static str) -> Result<Vec<u8>, SecretError> {
    read_checked(path, what, |_| Ok(()))
}

/// Reads a file that says who may log in (`authorized_keys`, the CA
/// keys, principals, revocations), as sshd's StrictModes reads one: a
/// regular file owned by this user or root that group and others cannot
/// write. Whoever could write it could let themselves in.
pub fn read_trusted(path: &Path, what: &'static str) -> Result<Vec<u8>, SecretError> {
    read_checked(path, what, |meta| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        check_private_owner(path, what, meta.uid())?;
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(SecretError::Writable {
                what,
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        Ok(())
    })
}

fn read_checked(
    path: &Path,
    what: &'static str,
    check: impl FnOnce(&std::fs::Metadata) -> Result<(), SecretError>,
) -> Result<Vec<u8>, SecretError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |source| SecretError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking, so a FIFO (or a device) fails the checks below instead
    // of hanging the open until a writer appears.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let meta = f.metadata().map_err(failed)?;
    if !meta.is_file() {
        return Err(SecretError::NotRegular {
            what,
            path: path.to_path_buf(),
        });
    }
    check(&meta)?;
    let mut bytes = Vec::new();
    f.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// A secret file must belong to the user reading it (or to root), as ssh
/// requires of private keys: whoever owns it can change its mode, and then
/// read or replace the secret.
pub fn check_private_owner(path: &Path, what: &'static str, uid: u32) -> Result<(), SecretError> {
    let me = nix::unistd::Uid::effective().as_raw();
    if uid != me && uid != 0 {
        return Err(SecretError::Owner {
            what,
            path: path.to_path_buf(),
            uid,
            me,
        });
    }
    Ok(())
}

/// The mode rule of [`read_private`], with its one-line fix.
pub fn check_private_mode(path: &Path, what: &'static str, mode: u32) -> Result<(), SecretError> {
    if mode & 0o077 != 0 {
        return Err(SecretError::Mode {
            what,
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_open_to_group_or_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = format!("{:#}", read_token(&path).unwrap_err());
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(server_token(Some(&path), true).is_err());
            assert!(client_token(Some(&path)).is_err());
        }
        for mode in [0o600, 0o400, 0o700] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(read_token(&path).is_ok(), "{mode:o}");
        }
    }

    #[test]
    fn server_creates_a_private_token_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let (t1, _, created) = server_token(Some(&path), true).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (t2, _, created) = server_token(Some(&path), true).unwrap();
        assert!(!created);
        assert_eq!(t1.client_mac("a", "b"), t2.client_mac("a", "b"));
        let (t3, _) = client_token(Some(&path)).unwrap();
        assert_eq!(t1.client_mac("a", "b"), t3.client_mac("a", "b"));
    }
}
