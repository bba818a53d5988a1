//! File transfer (PROTOCOL.md §3.8): `put`, `get` and `list`, each run by a
//! thread of its own that has become the job's user, so every path is
//! resolved, and every file made, with that user's rights, as a job of
//! theirs would (and beneath `files_root` when one is set, with
//! `openat2(RESOLVE_BENEATH)`: no `..` nor symbolic link leads out).
//!
//! ```text
//! session ── put ──> thread (as the user) ── resolve, .NAME.sb-part, flock ─> accepted
//!         ── data ─> (put window)   ──────── pwrite + SHA-256 ─> window back
//!         ── done ─> ─────────────────────── compare, fsync, rename, fsync dir ─> stored
//!         ── get ──> thread ── open, file ─> read ─> (output window) ─> data ... sent
//!         ── list ─> thread ── walk, no link followed ─> entries ... listed
//! ```
//!
//! The thread takes the user's file credentials with raw system calls,
//! which change that thread only (glibc's wrappers would change every
//! thread of the server): filesystem uid and gid, groups, and no
//! effective capability, so every file check is the user's. Its other
//! uids stay the server's, or the user could signal it (and with it the
//! whole server). It ends with its transfer. Pseudo file systems (/proc,
//! /sys) are refused: a thread sees its own process's /proc entries
//! whoever it is.
//!
//! A `put` cut off (the connection lost) keeps what arrived in
//! `.NAME.sb-part` beside the destination, for `--resume`; one that fails
//! or is refused removes it. The final name is only ever replaced, by a
//! rename, with a complete file whose SHA-256 both sides agree on.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::job::OutputWindow;
use super::process::RunAs;
use crate::proto::transfer::{
    Accepted, DoneRequest, ENTRIES_CHUNK, Entry, EntryKind, Existing, FileMeta, GET_CHUNK,
    GetRequest, ListRequest, Listed, MAX_LIST_DEPTH, MAX_LIST_ENTRIES, PutRequest, RELAY_HEARTBEAT,
    Relayed, Sent, Stored, hash_prefix, hex, partial_name,
};
use crate::proto::{ErrorCode, ServerMsg};

/// What the policy lets a connection's transfers do
/// ([`super::policy::Policy::check_files`]).
#[derive(Debug, Clone)]
pub struct FilesApproved {
    /// The user they run as; `None`: the server's own.
    pub run_as: Option<RunAs>,
    /// Every path must lie beneath one of these; empty: anywhere the
    /// user may go.
    pub roots: Vec<PathBuf>,
    /// Where relative paths start without roots: the user's home.
    pub home: String,
}

/// A transfer request.
#[derive(Debug)]
pub enum Request {
    Put(PutRequest),
    Get(GetRequest),
    List(ListRequest),
}

impl Request {
    pub fn id(&self) -> u64 {
        match self {
            Request::Put(r) => r.id,
            Request::Get(r) => r.id,
            Request::List(r) => r.id,
        }
    }

    /// For the audit trail and the log.
    pub fn direction(&self) -> &'static str {
        match self {
            Request::Put(_) => "put",
            Request::Get(_) => "get",
            Request::List(_) => "list",
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Request::Put(r) => &r.path,
            Request::Get(r) => &r.path,
            Request::List(r) => &r.path,
        }
    }
}

/// What the session passes on to a `put`'s thread.
#[derive(Debug)]
pub enum PutInput {
    Data { offset: u64, data: Bytes },
    Done(DoneRequest),
    Cancel,
}

/// What a session keeps of a running transfer.
pub struct Handle {
    /// A `put`'s input (bounded by its window, which the session holds
    /// the client to).
    pub input: Option<std::sync::mpsc::Sender<PutInput>>,
    /// What a `put`'s data holds against its window.
    pub charged: Arc<AtomicU64>,
    /// A `put`'s window (`accepted` tells the client).
    pub put_window: u64,
    /// A `get`'s output window.
    pub window: Option<Arc<OutputWindow>>,
    pub cancel: CancellationToken,
}

/// How a transfer ended, for the session to forward (last, after it has
/// forgotten the id, so the client may reuse it at once).
#[derive(Debug)]
pub struct Finished {
    pub id: u64,
    /// `None`: the connection is gone; nothing to say.
    pub last: Option<ServerMsg>,
}

/// The transfer's audit record.
#[derive(Debug, Default)]
pub struct Record {
    pub direction: &'static str,
    pub path: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    /// `ok`, `skipped`, `interrupted`, or an error code.
    pub outcome: String,
    pub message: Option<String>,
}

/// Where a transfer's frames go, and who asked (for its audit record,
/// written by the transfer's thread, which outlives a connection cut
/// off).
#[derive(Clone)]
pub struct Out {
    pub tx: mpsc::Sender<ServerMsg>,
    pub finished: mpsc::UnboundedSender<Finished>,
    pub rt: tokio::runtime::Handle,
    pub who: Arc<crate::identity::Identity>,
    pub peer: std::net::SocketAddr,
}

/// A failure, as the client hears it.
#[derive(Debug)]
pub struct Fail {
    pub code: ErrorCode,
    pub message: String,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }

    /// The client's `cancel`, recorded as the transfer's outcome.
    fn cancelled(record: &mut Record) -> Fail {
        record.outcome = "cancelled".into();
        Fail::new(ErrorCode::BadRequest, "cancelled")
    }

    /// A system call's failure on `what`, by its errno.
    fn os(e: Errno, what: &str) -> Fail {
        let code = match e {
            Errno::ENOENT => ErrorCode::NotFound,
            Errno::EACCES | Errno::EPERM | Errno::EROFS => ErrorCode::PermissionDenied,
            Errno::ENOTDIR => ErrorCode::NotADirectory,
            Errno::EISDIR => ErrorCode::IsADirectory,
            Errno::EEXIST | Errno::ENOTEMPTY => ErrorCode::Exists,
            Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG => ErrorCode::NoSpace,
            // openat2: RESOLVE_BENEATH refused a way out; RESOLVE_NO_SYMLINKS
            // met a link.
            Errno::EXDEV => {
                return Fail::new(
                    ErrorCode::Forbidden,
                    format!("{what}: outside the directories transfers may use"),
                );
            }
            Errno::ELOOP => {
                return Fail::new(
                    ErrorCode::Forbidden,
                    format!("{what}: a symbolic link in the way (not followed here)"),
                );
            }
            _ => ErrorCode::IoError,
        };
        Fail::new(code, format!("{what}: {}", e.desc()))
    }

    fn io(e: &io::Error, what: &str) -> Fail {
        Fail::os(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)), what)
    }
}

/// Starts `req` on a thread of its own as the approved user. `put_window`
/// is a `put`'s data window (`exec.transfer_window`); `output_window`
/// paces a `get`'s or `list`'s frames; `expected` is the SHA-256 a put
/// brought with a relay ticket must have.
pub fn start(
    req: Request,
    approved: FilesApproved,
    put_window: u64,
    output_window: u64,
    expected: Option<String>,
    out: Out,
    cancel: CancellationToken,
) -> io::Result<Handle> {
    let id = req.id();
    let charged = Arc::new(AtomicU64::new(0));
    let (input, rx) = match &req {
        Request::Put(_) => {
            // Unbounded as a channel, bounded by the window: the session
            // refuses data beyond it before it gets here.
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let window = match &req {
        Request::Get(_) => Some(Arc::new(OutputWindow::new(output_window))),
        _ => None,
    };
    let t = Task {
        id,
        put_window,
        out: out.clone(),
        charged: charged.clone(),
        window: window.clone(),
        get_chunk: get_chunk(output_window),
        expected,
        cancel: cancel.clone(),
    };
    std::thread::Builder::new()
        .name(format!("transfer-{id}"))
        .spawn(move || {
            let direction = req.direction();
            let path = req.path().to_string();
            let mut record = Record {
                direction,
                path,
                ..Record::default()
            };
            let result = become_user(approved.run_as.as_ref())
                .map_err(|e| Fail::io(&e, "cannot take the job user's credentials"))
                .and_then(|()| Fs::open(&approved))
                .and_then(|fs| match req {
                    Request::Put(r) => t.put(&fs, r, rx, &mut record),
                    Request::Get(r) => t.get(&fs, r, &mut record),
                    Request::List(r) => t.list(&fs, r, &mut record),
                });
            let last = match result {
                Ok(last) => last,
                Err(f) => {
                    // A cancel says so itself; other failures by their code.
                    if record.outcome.is_empty() {
                        record.outcome = f.code.as_str().to_string();
                    }
                    record.message = Some(f.message.clone());
                    Some(ServerMsg::error(Some(id), f.code, f.message))
                }
            };
            if last.is_none() && record.outcome.is_empty() {
                record.outcome = "interrupted".into();
            }
            tracing::info!(
                peer = %t.out.peer, id, direction, outcome = %record.outcome,
                path = %record.path, bytes = record.bytes, "transfer ended"
            );
            let who = super::audit::Who {
                via: super::audit::Via::Native,
                peer: t.out.peer,
                who: &t.out.who,
                id,
            };
            super::audit::transfer(&who, &record);
            let _ = t.out.finished.send(Finished { id, last });
        })?;
    Ok(Handle {
        input,
        charged,
        put_window,
        window,
        cancel,
    })
}

/// How long a relayed put waits for the connection it took over to let go
/// of the file.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A `get`'s frames: [`GET_CHUNK`], or a quarter of a small output window,
/// so that several are in flight (the window holds whole frames only).
fn get_chunk(output_window: u64) -> usize {
    usize::try_from(output_window / 4)
        .unwrap_or(GET_CHUNK)
        .min(GET_CHUNK)
}

/// Makes this thread's file access the user's: the filesystem uid and gid
/// and the supplementary groups, which every file check uses, then no
/// effective capability (so no override of those checks). Its real,
/// effective and saved uids stay the server's: a thread whose uids were
/// the user's could be stopped, killed or given limits by that user
/// (signals and prlimit are judged on those uids, and act on the whole
/// server). Raw system calls: glibc's wrappers would change every thread.
/// Nothing to do for the server's own user.
fn become_user(user: Option<&RunAs>) -> io::Result<()> {
    let Some(u) = user else { return Ok(()) };
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    let me = nix::unistd::geteuid();
    if me.as_raw() == uid || !me.is_root() {
        return Ok(());
    }
    let groups: Vec<libc::gid_t> = u.groups.iter().map(|g| g.as_raw()).collect();
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: plain system calls on this thread with valid arguments
    // (capget/capset take a version-3 header and two data structs).
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // setfsuid/setfsgid say nothing of failure: read them back (-1
        // changes nothing and returns the current value).
        if libc::syscall(libc::SYS_setfsuid, u32::MAX) != i64::from(uid)
            || libc::syscall(libc::SYS_setfsgid, u32::MAX) != i64::from(gid)
        {
            return Err(io::Error::other("setfsuid/setfsgid did not take"));
        }
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for d in &mut data {
            d.effective = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Path resolution as the user: beneath the roots, else from `/` or the
/// user's home.
struct Fs {
    roots: Vec<(PathBuf, OwnedFd)>,
    home: Option<OwnedFd>,
    umask: u32,
}

/// `O_PATH` directory descriptors for walking; regular opens add theirs.
const DIR: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

impl Fs {
    fn open(a: &FilesApproved) -> Result<Fs, Fail> {
        let mut roots = Vec::new();
        for r in &a.roots {
            let fd = nix::fcntl::open(r.as_path(), DIR, Mode::empty())
                .map_err(|e| Fail::os(e, &r.display().to_string()))?;
            roots.push((r.clone(), fd));
        }
        let home = nix::fcntl::open(a.home.as_str(), DIR, Mode::empty()).ok();
        Ok(Fs {
            roots,
            home,
            umask: crate::sys::umask(),
        })
    }

    /// Opens a path as the user gave it (`..` and links followed as the
    /// kernel follows them, but never out of a root).
    fn open_path(&self, path: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Fail> {
        let fail = |e| Fail::os(e, path);
        if path.is_empty() || path.contains('\0') {
            return Err(Fail::new(ErrorCode::BadRequest, "an empty or NUL path"));
        }
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).mode(mode);
        if self.roots.is_empty() {
            let magic = ResolveFlag::RESOLVE_NO_MAGICLINKS;
            return match (path.starts_with('/'), &self.home) {
                (true, _) => nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how.resolve(magic))
                    .map_err(fail)
                    .and_then(|fd| real_fs(fd, path)),
                (false, Some(home)) => nix::fcntl::openat2(home, path, how.resolve(magic))
                    .map_err(fail)
                    .and_then(|fd| real_fs(fd, path)),
                // Never the server's own working directory.
                (false, None) => Err(Fail::new(
                    ErrorCode::NotFound,
                    format!("{path}: a relative path, and the user has no home to start from"),
                )),
            };
        }
        let beneath = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        let (root, rest) = self.root_of(path)?;
        let rest = if rest.is_empty() { "." } else { rest };
        nix::fcntl::openat2(root, rest, how.resolve(beneath))
            .map_err(fail)
            .and_then(|fd| real_fs(fd, path))
    }

    /// The root a path lies in, and the rest of it: an absolute path names
    /// its root; a relative one starts at the first.
    fn root_of<'p>(&self, path: &'p str) -> Result<(&OwnedFd, &'p str), Fail> {
        if !path.starts_with('/') {
            let (_, fd) = self
                .roots
                .first()
                .ok_or_else(|| Fail::new(ErrorCode::Forbidden, "no roots"))?;
            return Ok((fd, path));
        }
        for (root, fd) in &self.roots {
            let r = root.as_os_str().as_bytes();
            let r = r.strip_suffix(b"/").unwrap_or(r);
            if let Some(rest) = path.as_bytes().strip_prefix(r)
                && (rest.is_empty() || rest.starts_with(b"/"))
            {
                let rest = std::str::from_utf8(rest)
                    .unwrap_or_default()
                    .trim_start_matches('/');
                return Ok((fd, rest));
            }
        }
        Err(Fail::new(
            ErrorCode::Forbidden,
            format!("{path}: outside the directories transfers may use"),
        ))
    }

    /// Opens `rel` beneath the directory `base`, following nothing: the
    /// entries of a tree this transfer made or listed.
    fn open_in(base: &OwnedFd, rel: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Fail> {
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        nix::fcntl::openat2(base, rel, how)
            .map_err(|e| Fail::os(e, rel))
            .and_then(|fd| real_fs(fd, rel))
    }
}

/// Whether `fd` lies on a pseudo file system (/proc, /sys and their
/// kind): never a transfer's, since a thread of the server may read its
/// own process's entries there whoever it is acting for.
fn pseudo_fs(fd: &OwnedFd) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs fills the struct it is given for a valid descriptor.
    let ok = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } == 0;
    if !ok {
        return true;
    }
    // SAFETY: fstatfs succeeded, so the struct is initialised.
    let t = unsafe { st.assume_init() }.f_type;
    [
        libc::PROC_SUPER_MAGIC,
        libc::SYSFS_MAGIC,
        libc::DEBUGFS_MAGIC,
        libc::SECURITYFS_MAGIC,
        libc::TRACEFS_MAGIC,
        libc::CGROUP2_SUPER_MAGIC,
        libc::CGROUP_SUPER_MAGIC,
        libc::BPF_FS_MAGIC,
    ]
    .contains(&t)
}

/// `fd`, unless it is on a pseudo file system.
fn real_fs(fd: OwnedFd, what: &str) -> Result<OwnedFd, Fail> {
    if pseudo_fs(&fd) {
        return Err(Fail::new(
            ErrorCode::Forbidden,
            format!("{what}: /proc, /sys and their kind are not for transfers"),
        ));
    }
    Ok(fd)
}

/// A path's last component, checked to be a name (not empty, `.` or
/// `..`), and what comes before it.
fn split_last(path: &str) -> Result<(&str, &str), Fail> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", n)) => ("/", n),
        Some((p, n)) => (p, n),
        None => (".", trimmed),
    };
    check_name(name)?;
    Ok((parent, name))
}

fn check_name(name: &str) -> Result<(), Fail> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(())
}

/// A relative path of a tree's entry: names only, no `.`, `..` or empty
/// components, no leading `/`.
fn check_relative(rel: &str) -> Result<(), Fail> {
    if rel.starts_with('/') {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("{rel:?}: an entry's path must be relative"),
        ));
    }
    rel.split('/').try_for_each(check_name)
}

fn stat_at(dir: &OwnedFd, name: &str) -> Result<Option<FileStat>, Fail> {
    match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Fail::os(e, name)),
    }
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// A directory opened for `*at` calls, readable (for fsync) where the
/// user may read it.
fn dir_fd(fd: OwnedFd) -> OwnedFd {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH);
    nix::fcntl::openat2(&fd, ".", how).unwrap_or(fd)
}

/// The part file `tmp` in `dir` (`filesink::open_part`, the rule both
/// sides keep), its failures said for `shown`.
fn open_partial(dir: &OwnedFd, tmp: &str, shown: &str) -> Result<std::fs::File, Fail> {
    use crate::filesink::PartError;
    crate::filesink::open_part(dir, tmp).map_err(|e| match e {
        PartError::InWay => Fail::new(
            ErrorCode::Exists,
            format!("{shown}: {tmp} is in the way (not a file); remove it"),
        ),
        PartError::Busy => Fail::new(
            ErrorCode::Exists,
            format!("{shown}: another transfer is writing it"),
        ),
        PartError::Os(e) => Fail::os(e, shown),
    })
}

/// Whether `name` in `dir` is the very file `file` (same device and inode,
/// not followed if a link).
fn is_same(dir: &OwnedFd, name: &str, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(mine) = file.metadata() else {
        return false;
    };
    matches!(stat_at(dir, name), Ok(Some(st))
        if st.st_dev == mine.dev() && st.st_ino == mine.ino())
}

struct Task {
    id: u64,
    put_window: u64,
    out: Out,
    charged: Arc<AtomicU64>,
    window: Option<Arc<OutputWindow>>,
    /// Bytes a `get`'s `data` frame carries at most.
    get_chunk: usize,
    /// (§3.9) the SHA-256 a relayed put must have, as its `expect` said.
    expected: Option<String>,
    cancel: CancellationToken,
}

/// Where a `put` lands: the directory, the final name in it, and the path
/// to tell the client.
struct Target {
    dir: OwnedFd,
    name: String,
    shown: String,
}

impl Task {
    /// Sends a frame as it comes (a window given back, `accepted`); false
    /// once the connection is gone.
    fn send(&self, msg: ServerMsg) -> bool {
        self.out.tx.blocking_send(msg).is_ok()
    }

    /// Gives back what a put's data took of its window; false once the
    /// connection is gone.
    fn give_back(&self, owed: &mut u64) -> bool {
        let k = std::mem::take(owed);
        self.charged.fetch_sub(k, Ordering::AcqRel);
        self.send(ServerMsg::Window {
            id: self.id,
            stdin: k,
        })
    }

    /// Sends a `get`'s frame once its cost fits in the window; false once
    /// the connection is gone or the transfer was cancelled.
    fn send_paced(&self, msg: ServerMsg, bytes: usize) -> bool {
        let cost = bytes as u64 + crate::proto::message::OUTPUT_FRAME_COST;
        let Some(w) = &self.window else {
            return self.send(msg);
        };
        let took = self.out.rt.block_on(async {
            tokio::select! {
                r = w.take(cost) => r.is_ok(),
                () = self.cancel.cancelled() => false,
            }
        });
        took && self.send(msg)
    }

    /// Where a `put` goes, by the destination rules: an existing directory
    /// receives the entry inside it under its own name; a path ending in
    /// `/` must be one; several sources need one; otherwise the path is
    /// the entry's new name. With `base`: exactly `base/path`.
    fn target(&self, fs: &Fs, r: &PutRequest) -> Result<Target, Fail> {
        if let Some(base) = &r.base {
            check_relative(&r.path)?;
            let base_fd = fs.open_path(base, DIR, Mode::empty())?;
            let (parent, name) = split_last(&r.path)?;
            let parent = if parent == "." { "" } else { parent };
            let dir = Fs::open_in(&base_fd, parent, DIR, Mode::empty())?;
            return Ok(Target {
                dir: dir_fd(dir),
                name: name.to_string(),
                shown: format!("{}/{}", base.trim_end_matches('/'), r.path),
            });
        }
        let dest = r.path.as_str();
        match fs.open_path(dest, DIR, Mode::empty()) {
            Ok(dir) => {
                let name = r.name.as_deref().unwrap_or_default();
                check_name(name)?;
                let shown = format!("{}/{name}", dest.trim_end_matches('/'));
                Ok(Target {
                    dir: dir_fd(dir),
                    name: name.to_string(),
                    shown,
                })
            }
            Err(f) if f.code == ErrorCode::NotFound || f.code == ErrorCode::NotADirectory => {
                if dest.ends_with('/') {
                    return Err(Fail::new(
                        ErrorCode::NotADirectory,
                        format!("{dest}: not an existing directory"),
                    ));
                }
                if r.many {
                    return Err(Fail::new(
                        ErrorCode::NotADirectory,
                        format!("{dest}: several sources need an existing directory"),
                    ));
                }
                let (parent, name) = split_last(dest)?;
                let dir = fs.open_path(parent, DIR, Mode::empty())?;
                Ok(Target {
                    dir: dir_fd(dir),
                    name: name.to_string(),
                    shown: dest.to_string(),
                })
            }
            Err(f) => Err(f),
        }
    }

    fn put(
        &self,
        fs: &Fs,
        r: PutRequest,
        rx: Option<std::sync::mpsc::Receiver<PutInput>>,
        record: &mut Record,
    ) -> Result<Option<ServerMsg>, Fail> {
        let t = self.target(fs, &r)?;
        record.path = t.shown.clone();
        let existing = stat_at(&t.dir, &t.name)?;
        let mode = r.mode.unwrap_or(0o644) & 0o777;
        let mode = if r.preserve { mode } else { mode & !fs.umask };
        let stored = |bytes, sha256, skipped, resumed_from, relayed| {
            Some(ServerMsg::Stored(Stored {
                id: self.id,
                path: t.shown.clone(),
                bytes,
                sha256,
                relayed,
                skipped,
                resumed_from,
            }))
        };
        match r.kind {
            EntryKind::Dir => {
                match existing.as_ref().map(kind_of) {
                    Some(SFlag::S_IFDIR) => {}
                    Some(_) => {
                        return Err(Fail::new(
                            ErrorCode::Exists,
                            format!("{}: a directory never replaces a file", t.shown),
                        ));
                    }
                    None => {
                        nix::sys::stat::mkdirat(
                            &t.dir,
                            t.name.as_str(),
                            Mode::from_bits_truncate(mode),
                        )
                        .map_err(|e| Fail::os(e, &t.shown))?;
                    }
                }
                record.outcome = "ok".into();
                Ok(stored(0, None, false, 0, Vec::new()))
            }
            EntryKind::Symlink => {
                let target = r.target.as_deref().unwrap_or_default();
                if target.is_empty() || target.contains('\0') {
                    return Err(Fail::new(ErrorCode::BadRequest, "a link needs a target"));
                }
                if existing.as_ref().map(kind_of) == Some(SFlag::S_IFDIR) {
                    return Err(Fail::new(
                        ErrorCode::IsADirectory,
                        format!("{}: a link never replaces a directory", t.shown),
                    ));
                }
                let tmp = partial_name(&t.name);
                let _ = nix::unistd::unlinkat(
                    &t.dir,
                    tmp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                nix::unistd::symlinkat(target, &t.dir, tmp.as_str())
                    .map_err(|e| Fail::os(e, &t.shown))?;
                nix::fcntl::renameat(&t.dir, tmp.as_str(), &t.dir, t.name.as_str()).map_err(
                    |e| {
                        let _ = nix::unistd::unlinkat(
                            &t.dir,
                            tmp.as_str(),
                            nix::unistd::UnlinkatFlags::NoRemoveDir,
                        );
                        Fail::os(e, &t.shown)
                    },
                )?;
                record.outcome = "ok".into();
                Ok(stored(0, None, false, 0, Vec::new()))
            }
            EntryKind::File => {
                if existing.as_ref().map(kind_of) == Some(SFlag::S_IFDIR) {
                    return Err(Fail::new(
                        ErrorCode::IsADirectory,
                        format!("{}: a file never replaces a directory", t.shown),
                    ));
                }
                let rx = rx.ok_or_else(|| Fail::new(ErrorCode::IoError, "no input"))?;
                self.put_file(&t, &r, mode, existing, rx, record)
                    .map(|done| {
                        done.map(|(bytes, sha, skipped, from, relayed)| {
                            stored(bytes, sha, skipped, from, relayed)
                        })
                        .unwrap_or(None)
                    })
            }
        }
    }

    /// A file's data: into `.NAME.sb-part`, then renamed over the name.
    /// `Ok(None)`: the connection went away (what arrived is kept).
    #[allow(clippy::type_complexity)]
    fn put_file(
        &self,
        t: &Target,
        r: &PutRequest,
        mode: u32,
        existing: Option<FileStat>,
        rx: std::sync::mpsc::Receiver<PutInput>,
        record: &mut Record,
    ) -> Result<Option<(u64, Option<String>, bool, u64, Vec<Relayed>)>, Fail> {
        let tmp = partial_name(&t.name);
        let file = open_partial(&t.dir, &tmp, &t.shown)?;
        let meta = file.metadata().map_err(|e| Fail::io(&e, &t.shown))?;
        // One transfer per destination at a time. A relayed put waits a
        // little: the connection it took the ticket over from (§3.9) is
        // being closed, and its thread lets go of the file.
        let wait = if self.expected.is_some() {
            TAKEOVER_WAIT
        } else {
            Duration::ZERO
        };
        let deadline = std::time::Instant::now() + wait;
        let mut file = file;
        let file = loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(locked) => break locked,
                Err((back, _)) if std::time::Instant::now() < deadline => {
                    file = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => {
                    return Err(Fail::new(
                        ErrorCode::Exists,
                        format!("{}: another transfer is writing it", t.shown),
                    ));
                }
            }
        };
        let remove = || {
            let _ = nix::unistd::unlinkat(
                &t.dir,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        };
        let fail = |f: Fail| {
            remove();
            f
        };
        // What an interrupted transfer left, if asked to go on from it.
        let mut offset = if r.resume { meta.len().min(r.size) } else { 0 };
        let mut hasher = Sha256::new();
        let mut prefix = None;
        if offset > 0 {
            match hash_prefix(&file, offset) {
                Ok(h) => {
                    prefix = Some(hex(&h.clone().finalize()));
                    hasher = h;
                }
                Err(_) => offset = 0,
            }
        }
        // Nothing past what is kept: a part file longer than this file
        // (another source once) is cut to the prefix offered.
        if meta.len() != offset {
            file.set_len(offset)
                .map_err(|e| fail(Fail::io(&e, &t.shown)))?;
        }
        let existing = match existing {
            // A relay host passes on what it writes: it writes it all.
            Some(st)
                if kind_of(&st) == SFlag::S_IFREG
                    && st.st_size as u64 == r.size
                    && r.relay.is_empty() =>
            {
                nix::fcntl::openat(
                    &t.dir,
                    t.name.as_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                    Mode::empty(),
                )
                .ok()
                .map(std::fs::File::from)
                .and_then(|f| hash_prefix(&f, r.size).ok())
                .map(|h| Existing {
                    size: r.size,
                    sha256: hex(&h.finalize()),
                })
            }
            _ => None,
        };
        // A relay host passes the file on as it arrives (§3.9), read back
        // from the part file as `written` says it grows; stopped if this
        // put fails, waited for if it succeeds.
        let written = tokio::sync::watch::Sender::new(offset);
        let forwarder = if r.relay.is_empty() {
            None
        } else {
            let stop = self.cancel.child_token();
            let copy = file.try_clone().map_err(|e| fail(Fail::io(&e, &t.shown)))?;
            let task = self.out.rt.spawn(crate::client::relay::forward(
                r.clone(),
                copy,
                written.subscribe(),
                r.relay.clone(),
                stop.clone(),
            ));
            Some((task, stop.drop_guard()))
        };
        let accepted = ServerMsg::Accepted(Accepted {
            id: self.id,
            path: t.shown.clone(),
            offset,
            sha256: prefix,
            existing: existing.clone(),
            window: Some(self.put_window),
        });
        if !self.send(accepted) {
            return Ok(None);
        }
        // Past the page cache, unless a relay reads the file back as it
        // grows (src/filesink.rs).
        let sink_file = file.try_clone().map_err(|e| fail(Fail::io(&e, &t.shown)))?;
        let mut sink = crate::filesink::FileSink::new(sink_file, offset, r.relay.is_empty());
        let mut resumed_from = offset;
        let mut at = offset;
        let mut first = true;
        // Window given back in batches (a quarter of it at a time, or
        // whatever is owed before this thread waits for more): one frame
        // per 64 KiB of data would cost the connection more than it moves.
        let mut owed = 0u64;
        let batch = self.put_window / 4;
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    if owed > 0 && !self.give_back(&mut owed) {
                        return Ok(None);
                    }
                    match rx.recv() {
                        Ok(m) => m,
                        // The connection is gone: keep what arrived, for --resume.
                        Err(_) => return Ok(None),
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(None),
            };
            match msg {
                PutInput::Cancel => {
                    remove();
                    return Err(Fail::cancelled(record));
                }
                PutInput::Data { offset: o, data } => {
                    let cost = data.len() as u64 + crate::proto::message::STDIN_FRAME_COST;
                    // The client may start over from 0 rather than go on.
                    if first && o == 0 && at != 0 {
                        file.set_len(0).map_err(|e| fail(Fail::io(&e, &t.shown)))?;
                        sink.restart(0);
                        hasher = Sha256::new();
                        at = 0;
                        resumed_from = 0;
                    }
                    first = false;
                    if o != at {
                        return Err(fail(Fail::new(
                            ErrorCode::BadRequest,
                            format!("data at offset {o}, expected {at}"),
                        )));
                    }
                    if at + data.len() as u64 > r.size {
                        return Err(fail(Fail::new(
                            ErrorCode::BadRequest,
                            format!("more data than the {} bytes announced", r.size),
                        )));
                    }
                    sink.write(&data)
                        .map_err(|e| fail(Fail::io(&e, &t.shown)))?;
                    hasher.update(&data);
                    at += data.len() as u64;
                    written.send_replace(at);
                    record.bytes = at;
                    owed += cost;
                    if owed >= batch && !self.give_back(&mut owed) {
                        return Ok(None);
                    }
                }
                PutInput::Done(d) => {
                    if d.skip {
                        remove();
                        return match &existing {
                            Some(e) if e.sha256 == d.sha256 => {
                                record.outcome = "skipped".into();
                                record.sha256 = Some(e.sha256.clone());
                                Ok(Some((r.size, Some(e.sha256.clone()), true, 0, Vec::new())))
                            }
                            _ => Err(Fail::new(
                                ErrorCode::HashMismatch,
                                format!("{}: not the same content; nothing skipped", t.shown),
                            )),
                        };
                    }
                    if at != r.size {
                        return Err(fail(Fail::new(
                            ErrorCode::BadRequest,
                            format!("done after {at} of {} bytes", r.size),
                        )));
                    }
                    sink.finish().map_err(|e| fail(Fail::io(&e, &t.shown)))?;
                    let sha = hex(&hasher.finalize());
                    // A relayed file must be what the client said it is,
                    // whatever the host that brought it claims.
                    let want = self.expected.as_deref().unwrap_or(&d.sha256);
                    let other = if sha == d.sha256 { want } else { &d.sha256 };
                    if sha != other {
                        return Err(fail(Fail::new(
                            ErrorCode::HashMismatch,
                            format!(
                                "{}: what arrived hashes to {sha}, not {other}; nothing kept",
                                t.shown
                            ),
                        )));
                    }
                    self.commit(t, &tmp, &file, mode, r).map_err(&fail)?;
                    record.bytes = at;
                    record.sha256 = Some(sha.clone());
                    record.outcome = "ok".into();
                    drop(written);
                    // The hops after this one, before `stored`: the client
                    // hears of the chain when it is done.
                    let relayed = match forwarder {
                        Some((task, _stop)) => match self.await_hops(task) {
                            Some(fared) => fared,
                            None => return Ok(None),
                        },
                        None => Vec::new(),
                    };
                    return Ok(Some((at, Some(sha), false, resumed_from, relayed)));
                }
            }
        }
    }

    /// Waits for a relay's hops, telling the host before this one it is
    /// alive every [`RELAY_HEARTBEAT`] (`window` giving back 0) meanwhile;
    /// `None` once the connection is gone.
    fn await_hops(
        &self,
        mut task: tokio::task::JoinHandle<crate::client::relay::Forwarded>,
    ) -> Option<Vec<Relayed>> {
        loop {
            let waited = self
                .out
                .rt
                .block_on(async { tokio::time::timeout(RELAY_HEARTBEAT, &mut task).await });
            match waited {
                Ok(done) => return Some(done.map(|f| f.fared).unwrap_or_default()),
                Err(_) => {
                    let alive = ServerMsg::Window {
                        id: self.id,
                        stdin: 0,
                    };
                    if !self.send(alive) {
                        return None;
                    }
                }
            }
        }
    }

    /// The complete file takes the final name: mode and times, fsync,
    /// rename, fsync of the directory.
    fn commit(
        &self,
        t: &Target,
        tmp: &str,
        file: &std::fs::File,
        mode: u32,
        r: &PutRequest,
    ) -> Result<(), Fail> {
        let io = |e: io::Error| Fail::io(&e, &t.shown);
        nix::sys::stat::fchmod(file, Mode::from_bits_truncate(mode))
            .map_err(|e| Fail::os(e, &t.shown))?;
        if r.preserve
            && let Some(m) = r.mtime
        {
            let ts = nix::sys::time::TimeSpec::new(m, 0);
            nix::sys::stat::futimens(file, &ts, &ts).map_err(|e| Fail::os(e, &t.shown))?;
        }
        file.sync_all().map_err(io)?;
        // Checked again at the last moment: a directory made there since
        // is never replaced (rename would refuse it too, as EISDIR).
        if stat_at(&t.dir, &t.name)?.as_ref().map(kind_of) == Some(SFlag::S_IFDIR) {
            return Err(Fail::new(
                ErrorCode::IsADirectory,
                format!("{}: a file never replaces a directory", t.shown),
            ));
        }
        // By name, so checked by inode on both sides: a partial file
        // swapped for another (a link, a file of other content) by someone
        // who may write the directory is not what goes in place.
        let replaced = || {
            Fail::new(
                ErrorCode::IoError,
                format!(
                    "{}: {tmp} was replaced during the transfer; nothing kept",
                    t.shown
                ),
            )
        };
        if !is_same(&t.dir, tmp, file) {
            return Err(replaced());
        }
        nix::fcntl::renameat(&t.dir, tmp, &t.dir, t.name.as_str())
            .map_err(|e| Fail::os(e, &t.shown))?;
        if !is_same(&t.dir, &t.name, file) {
            return Err(replaced());
        }
        // The rename is durable once the directory is: best effort where
        // the user may only search it (O_PATH cannot be synced).
        let _ = nix::unistd::fsync(t.dir.as_fd());
        Ok(())
    }

    fn get(&self, fs: &Fs, r: GetRequest, record: &mut Record) -> Result<Option<ServerMsg>, Fail> {
        // O_NONBLOCK: a FIFO must not hang the open; cleared for a file.
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
        let (fd, shown) = match &r.base {
            Some(base) => {
                check_relative(&r.path)?;
                let b = fs.open_path(base, DIR, Mode::empty())?;
                let fd = Fs::open_in(&b, &r.path, flags | OFlag::O_NOFOLLOW, Mode::empty())?;
                (fd, format!("{}/{}", base.trim_end_matches('/'), r.path))
            }
            None => (fs.open_path(&r.path, flags, Mode::empty())?, r.path.clone()),
        };
        record.path = shown.clone();
        let st = nix::sys::stat::fstat(&fd).map_err(|e| Fail::os(e, &shown))?;
        match kind_of(&st) {
            SFlag::S_IFREG => {}
            SFlag::S_IFDIR => {
                return Err(Fail::new(
                    ErrorCode::IsADirectory,
                    format!("{shown}: a directory (-r copies directories)"),
                ));
            }
            _ => {
                return Err(Fail::new(
                    ErrorCode::BadRequest,
                    format!("{shown}: not a regular file"),
                ));
            }
        }
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        let file = std::fs::File::from(fd);
        let size = st.st_size as u64;
        // Resumed where the client's partial copy agrees with this file.
        let mut hasher = Sha256::new();
        let mut offset = 0;
        if let (Some(o), Some(want)) = (r.offset, &r.sha256)
            && o > 0
            && o <= size
            && let Ok(h) = hash_prefix(&file, o)
            && &hex(&h.clone().finalize()) == want
        {
            hasher = h;
            offset = o;
        }
        let meta = ServerMsg::File(FileMeta {
            id: self.id,
            path: shown.clone(),
            size,
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
            offset,
        });
        if !self.send(meta) {
            return Ok(None);
        }
        let mut at = offset;
        while at < size {
            let want =
                usize::try_from((size - at).min(self.get_chunk as u64)).unwrap_or(self.get_chunk);
            // Read into the frame's own buffer: the writer sends it as is.
            let mut chunk = BytesMut::zeroed(want);
            let n = file
                .read_at(&mut chunk, at)
                .map_err(|e| Fail::io(&e, &shown))?;
            if n == 0 {
                return Err(Fail::new(
                    ErrorCode::IoError,
                    format!("{shown}: the file shrank while it was sent"),
                ));
            }
            chunk.truncate(n);
            hasher.update(&chunk);
            let data = ServerMsg::Data {
                id: self.id,
                offset: at,
                data: chunk.freeze(),
            };
            if !self.send_paced(data, n) {
                return if self.cancel.is_cancelled() {
                    Err(Fail::cancelled(record))
                } else {
                    Ok(None)
                };
            }
            at += n as u64;
            // What the audit says of a get cut off half-way.
            record.bytes = at;
        }
        let sha = hex(&hasher.finalize());
        record.bytes = size;
        record.sha256 = Some(sha.clone());
        record.outcome = "ok".into();
        Ok(Some(ServerMsg::Sent(Sent {
            id: self.id,
            bytes: size,
            sha256: sha,
        })))
    }

    fn list(
        &self,
        fs: &Fs,
        r: ListRequest,
        record: &mut Record,
    ) -> Result<Option<ServerMsg>, Fail> {
        let top = fs.open_path(&r.path, DIR.difference(OFlag::O_DIRECTORY), Mode::empty())?;
        let st = nix::sys::stat::fstat(&top).map_err(|e| Fail::os(e, &r.path))?;
        let mut batch = Batch {
            task: self,
            entries: Vec::new(),
            bytes: 0,
            count: 0,
            skipped: 0,
        };
        match kind_of(&st) {
            SFlag::S_IFDIR => {
                let dir = Fs::open_in(
                    &top,
                    "",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )?;
                batch.push(entry("", EntryKind::Dir, &st, None))?;
                if !walk(dir, "", 1, &mut batch)? {
                    return Ok(None);
                }
            }
            SFlag::S_IFREG => batch.push(entry("", EntryKind::File, &st, None))?,
            _ => {
                return Err(Fail::new(
                    ErrorCode::BadRequest,
                    format!("{}: not a file or directory", r.path),
                ));
            }
        }
        if !batch.flush() {
            return Ok(None);
        }
        record.outcome = "ok".into();
        record.bytes = batch.count;
        Ok(Some(ServerMsg::Listed(Listed {
            id: self.id,
            count: batch.count,
            skipped: batch.skipped,
        })))
    }
}

fn entry(path: &str, kind: EntryKind, st: &FileStat, target: Option<String>) -> Entry {
    Entry {
        path: path.to_string(),
        kind,
        size: if kind == EntryKind::File {
            st.st_size as u64
        } else {
            0
        },
        mode: st.st_mode & 0o7777,
        mtime: st.st_mtime,
        target,
    }
}

/// Entries gathered into frames of at most [`ENTRIES_CHUNK`] bytes.
struct Batch<'t> {
    task: &'t Task,
    entries: Vec<Entry>,
    bytes: usize,
    count: u64,
    skipped: u64,
}

impl Batch<'_> {
    fn push(&mut self, e: Entry) -> Result<(), Fail> {
        self.count += 1;
        if self.count > MAX_LIST_ENTRIES {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                format!("more than {MAX_LIST_ENTRIES} entries"),
            ));
        }
        self.bytes += e.path.len() + e.target.as_ref().map_or(0, String::len) + 96;
        self.entries.push(e);
        if self.bytes >= ENTRIES_CHUNK && !self.flush() {
            return Err(Fail::new(ErrorCode::BadRequest, "gone"));
        }
        Ok(())
    }

    fn flush(&mut self) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        // Not windowed: bounded by MAX_LIST_ENTRIES, and paced by the
        // connection's write queue (a client that stops reading stops it).
        let entries = std::mem::take(&mut self.entries);
        self.bytes = 0;
        self.task.send(ServerMsg::Entries {
            id: self.task.id,
            entries,
        })
    }
}

/// Lists `dir` (whose path is `rel`) depth first, parents before their
/// entries, following no link; special files and names that are not
/// UTF-8 are counted as skipped. False once the connection is gone.
fn walk(dir: OwnedFd, rel: &str, depth: usize, batch: &mut Batch<'_>) -> Result<bool, Fail> {
    // One descriptor is held per level: bounded, as the count of entries is.
    if depth > MAX_LIST_DEPTH {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("{rel}: deeper than {MAX_LIST_DEPTH} levels"),
        ));
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    {
        let mut d = nix::dir::Dir::from_fd(dir.try_clone().map_err(|e| Fail::io(&e, rel))?)
            .map_err(|e| Fail::os(e, rel))?;
        for ent in d.iter() {
            let ent = ent.map_err(|e| Fail::os(e, rel))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
    }
    names.sort();
    for raw in names {
        let Ok(name) = std::str::from_utf8(&raw) else {
            batch.skipped += 1;
            continue;
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let Some(st) = stat_at(&dir, name)? else {
            continue;
        };
        match kind_of(&st) {
            SFlag::S_IFREG => batch.push(entry(&path, EntryKind::File, &st, None))?,
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(&dir, name).map_err(|e| Fail::os(e, &path))?;
                match target.to_str() {
                    Some(t) => {
                        batch.push(entry(&path, EntryKind::Symlink, &st, Some(t.to_string())))?
                    }
                    None => batch.skipped += 1,
                }
            }
            SFlag::S_IFDIR => {
                batch.push(entry(&path, EntryKind::Dir, &st, None))?;
                let sub = match nix::fcntl::openat(
                    &dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    // One directory the user may not read leaves its
                    // entries out, counted, as rsync goes on past one.
                    Err(Errno::EACCES | Errno::EPERM) => {
                        batch.skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(Fail::os(e, &path)),
                };
                // A pseudo file system mounted inside the tree is left out.
                if pseudo_fs(&sub) {
                    batch.skipped += 1;
                    continue;
                }
                if !walk(sub, &path, depth + 1, batch)? {
                    return Ok(false);
                }
            }
            _ => batch.skipped += 1,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_relative_paths() {
        assert_eq!(split_last("a/b/c").unwrap(), ("a/b", "c"));
        assert_eq!(split_last("/c").unwrap(), ("/", "c"));
        assert_eq!(split_last("c").unwrap(), (".", "c"));
        assert_eq!(split_last("dir/").unwrap(), (".", "dir"));
        assert!(split_last("a/..").is_err());
        assert!(split_last("/").is_err());
        assert!(check_relative("a/b").is_ok());
        for bad in ["/a", "a/../b", "a//b", "./a", ""] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
        assert_eq!(partial_name("x"), ".x.sb-part");
        assert!(partial_name(&"n".repeat(255)).len() <= 255);
    }
}
