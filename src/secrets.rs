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

use anyhow::{Context, bail};

use crate::proto::auth::Token;

/// Environment variable that overrides the token file.
pub const TOKEN_ENV: &str = "SWITCHBOARD_TOKEN";

/// Reads a token file, refusing one that group or others may read or
/// write (see [`read_private`]).
pub fn read_token(path: &Path) -> anyhow::Result<Token> {
    let bytes = read_private(path, "token file")?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("token file {} is not UTF-8", path.display()))?;
    Token::new(&text).with_context(|| format!("token file {}", path.display()))
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
) -> anyhow::Result<(Token, TokenSource, bool)> {
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
    // Anything there, a dangling link included, is read (and refused if it
    // is not a good token file); only a free name is created.
    if path.symlink_metadata().is_ok() {
        return Ok((read_token(&path)?, TokenSource::File(path), false));
    }
    if !create {
        return Err(NoTokenFile(path).into());
    }
    let token = Token::generate()?;
    write_private(&path, &format!("{}\n", token.expose()))?;
    Ok((token, TokenSource::File(path), true))
}

/// The server's token file does not exist (and was not to be created).
#[derive(Debug, thiserror::Error)]
#[error("token file {} does not exist (only a start creates one)", .0.display())]
pub struct NoTokenFile(pub PathBuf);

/// What a start would find of the server's token without creating it: an
/// existing file must pass [`read_token`]; a missing one is fine (a start
/// creates it). For `--check-config`.
pub fn check_server_token(token_file: Option<&Path>) -> anyhow::Result<()> {
    match server_token(token_file, false) {
        Err(e) if e.downcast_ref::<NoTokenFile>().is_some() => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The largest secret, certificate or configuration file read: 1 MiB, far
/// above any real one, so a huge file fails instead of filling memory.
pub const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// Reads a secret file (`what`: "token file", "TLS private key"), as ssh
/// reads a private key: refused when its mode gives group or others any
/// access. Readable by others, the secret is no longer one; writable by
/// others, it is whatever they chose (for a token, they then know it). The
/// mode is checked on the opened file, so a rename in between cannot swap
/// in another one.
pub fn read_private(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
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
pub fn read_regular(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    read_checked(path, what, |_| Ok(()))
}

fn read_checked(
    path: &Path,
    what: &str,
    check: impl FnOnce(&std::fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so a FIFO (or a device) fails the checks below instead
    // of hanging the open until a writer appears.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    check(&meta)?;
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

/// A secret file must belong to the user reading it (or to root), as ssh
/// requires of private keys: whoever owns it can change its mode, and then
/// read or replace the secret.
pub fn check_private_owner(path: &Path, what: &str, uid: u32) -> anyhow::Result<()> {
    let me = nix::unistd::Uid::effective().as_raw();
    if uid != me && uid != 0 {
        bail!(
            "{what} {p} belongs to uid {uid}, not to this user (uid {me}) or root; run: chown {me} {p}",
            p = path.display(),
        );
    }
    Ok(())
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
