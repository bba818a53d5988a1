//! Files the program writes for itself (the token, the self-signed key and
//! certificate, known_hosts): each is there whole or not at all.
//!
//! A file written in place is torn by a full disk or a crash: a 0-byte
//! token or certificate that every later start then refuses, which
//! `Restart=on-failure` turns into a restart loop. So every write goes to
//! a temporary file beside the target, is flushed to disk, and only then
//! takes the final name: [`create_new`] by link(2), which fails if the name
//! is taken (two servers starting at once on a fresh home agree on one
//! token), [`replace`] by rename(2). A temporary file left by a crash has a
//! name no reader looks at (`.NAME.PID.N.tmp`); a failed write removes its
//! own. Every error names the file.
//!
//! ```text
//!  .token.4242.0.tmp  ── write, fsync ──> link/rename ──> token   (then fsync the directory)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file that could not be written, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    fn new<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |source| FileError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Creates `dir` and its missing parents with `mode` (existing ones are
/// left as they are).
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(FileError::new("create directory", dir))
}

/// Writes `data` to `path` with `mode` unless `path` exists. Returns
/// whether it was written; `false` leaves what is there untouched (the
/// caller reads it).
pub fn create_new(path: &Path, data: &[u8], mode: u32) -> Result<bool, FileError> {
    let temp = write_temp(path, data, mode)?;
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_dir(path);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(FileError::new("create", path)(e)),
    }
}

/// Writes `data` to `path` with `mode`, replacing what is there in one step.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    let temp = write_temp(path, data, mode)?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(FileError::new("replace", path)(e));
    }
    sync_dir(path);
    Ok(())
}

/// Runs `f` holding an exclusive lock on `PATH.lock` (created if needed):
/// read-modify-replace cycles of one file by several processes (clients
/// recording hosts at once) then never lose each other's changes.
pub fn with_lock<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, FileError> {
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(FileError::new("open", &lock_path))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map(|held| {
            let out = f();
            drop(held);
            out
        })
        .map_err(|(_, e)| FileError::new("lock", &lock_path)(io::Error::from(e)))
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// A new temporary file beside `path` holding `data`, on disk.
fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, FileError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = path.with_file_name(name);
    let write = || -> io::Result<()> {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        FileError::new("write", path)(e)
    })?;
    Ok(temp)
}

/// Makes the new name itself durable. Best effort: the file is complete
/// either way, and some file systems refuse fsync on a directory.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn create_new_writes_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(create_new(&path, b"first\n", 0o600).unwrap());
        assert!(!create_new(&path, b"second\n", 0o600).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(names(dir.path()), ["token"], "no temporary file is left");
    }

    #[test]
    fn replace_swaps_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "old").unwrap();
        replace(&path, b"new\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        assert_eq!(names(dir.path()), ["known_hosts"]);
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("token");
        let e = create_new(&missing, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        // A directory where the file should be: the link fails, the
        // temporary file goes.
        let taken = dir.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        replace(&taken, b"x", 0o600).unwrap_err();
        assert_eq!(names(dir.path()), ["taken"]);
    }

    #[test]
    fn racing_creators_agree_on_one_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || create_new(path, format!("{i}\n").as_bytes(), 0o600).unwrap())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(winners, 1);
        assert_eq!(names(dir.path()), ["token"]);
    }
}
