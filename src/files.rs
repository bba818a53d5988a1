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
use std::time::{Duration, Instant};

/// A file that could not be written, and why. The OS error is part of the
/// message and deliberately not a `source`, so that a printed error chain
/// (`{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {cause}", path.display())]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    pub cause: io::Error,
}

impl FileError {
    fn new<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |cause| FileError {
            op,
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// How long [`with_lock`] waits for another process to release the lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

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
///
/// The lock file is opened without following a symlink and without
/// blocking, and must be a regular file, so a FIFO or a planted link there
/// is an error rather than a hang or a file created elsewhere; a lock held
/// longer than [`LOCK_WAIT`] (a stopped process) is an error too.
pub fn with_lock<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, FileError> {
    use nix::fcntl::{Flock, FlockArg};
    let lock_path = sibling(path, ".lock");
    let failed = FileError::new("lock", &lock_path);
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&lock_path)
        .map_err(FileError::new("open", &lock_path))?;
    if !lock.metadata().is_ok_and(|m| m.is_file()) {
        return Err(failed(io::Error::other("not a regular file")));
    }
    let deadline = Instant::now() + LOCK_WAIT;
    let mut lock = lock;
    loop {
        match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                let out = f();
                drop(held);
                return Ok(out);
            }
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                lock = back;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(failed(io::Error::other(format!(
                    "held by another process for {LOCK_WAIT:?}"
                ))));
            }
            Err((_, e)) => return Err(failed(io::Error::from(e))),
        }
    }
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// A new temporary file beside `path` holding `data`, on disk. A name
/// already taken (left by a crash of a process with our pid, or planted)
/// is skipped, never opened or removed.
fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, FileError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().unwrap_or_default());
        name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = path.with_file_name(name);
        let mut f: File = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(FileError::new("write", path)(e)),
        };
        return match f.write_all(data).and_then(|()| f.sync_all()) {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(FileError::new("write", path)(e))
            }
        };
    }
    Err(FileError::new("write", path)(last.unwrap_or_else(|| {
        io::Error::other("no free temporary name")
    })))
}

/// Temporary names tried before giving up: each taken one was left by a
/// crash or planted, so a few are plenty.
const TEMP_TRIES: usize = 64;

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

    #[test]
    fn temporary_names_already_taken_are_skipped_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        // What a crash of a process with this pid, or a hostile user, left
        // at the names this process would pick first (every test runs in a
        // process of its own under nextest, so the counter starts at 0).
        let mut planted = Vec::new();
        for n in 0..16 {
            let name = dir
                .path()
                .join(format!(".token.{}.{n}.tmp", std::process::id()));
            if n % 2 == 0 {
                std::fs::write(&name, "planted").unwrap();
            } else {
                std::fs::create_dir(&name).unwrap();
            }
            planted.push(name);
        }
        assert!(create_new(&path, b"mine\n", 0o600).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"mine\n");
        for (n, name) in planted.iter().enumerate() {
            if n % 2 == 0 {
                assert_eq!(std::fs::read(name).unwrap(), b"planted");
            } else {
                assert!(name.is_dir());
            }
        }
        assert_eq!(names(dir.path()).len(), 17, "only the token was added");
    }

    #[test]
    fn errors_say_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let e = create_new(&dir.path().join("no/such/token"), b"x", 0o600).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    }
}
