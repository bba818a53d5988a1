//! The client side of file transfer (PROTOCOL.md §3.8), on an
//! [`ExecClient`]: one file, directory or link at a time, each verified
//! end to end by SHA-256, written to `.NAME.sb-part` and renamed over the
//! final name only when complete and matching, so nothing partial is ever
//! seen under it. Used by the CLI's `put` and `get` and the tests.
//!
//! ```text
//! put_file:  put ─> accepted ─> [skip | resume check] ─> data... (put window) ─> done ─> stored
//! get_file:  get {offset?, sha256?} ─> file ─> data... (window given back) ─> sent ─> rename
//! list:      list ─> entries... ─> listed
//! ```

use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::ClientError;
use super::exec::{ExecClient, JobEvent, TransferEvent};
use crate::proto::message::{OUTPUT_FRAME_COST, STDIN_FRAME_COST};
use crate::proto::transfer::{
    DATA_CHUNK, DoneRequest, Entry, EntryKind, ExpectRequest, GetRequest, ListRequest, PutRequest,
    Stored, hash_prefix, hex, partial_name,
};
use crate::proto::{ClientMsg, ErrorCode};

/// Told how many bytes of a file are across so far, and its size (for a
/// progress bar).
pub type Progress<'a> = dyn Fn(u64, u64) + Send + Sync + 'a;

/// How a file came down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub path: PathBuf,
    pub bytes: u64,
    /// Bytes that crossed the network (less than `bytes` when resumed).
    pub received: u64,
    pub sha256: String,
    pub resumed_from: u64,
}

/// What a `put` of a file sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub stored: Stored,
    /// Bytes of data sent (0 when skipped; less than the size when resumed).
    pub sent: u64,
}

fn local(e: io::Error, what: &Path) -> ClientError {
    ClientError::Local(io::Error::new(e.kind(), format!("{}: {e}", what.display())))
}

impl ExecClient {
    /// The next event of transfer `id`; the server's error for it (or for
    /// the connection) as `Err`.
    async fn transfer_event(&mut self, id: u64) -> Result<JobEvent, ClientError> {
        match self.receiver().job_event(id).await? {
            // A server from before §3.8 knows no `put`, `get` or `list`.
            JobEvent::Failed(f) if f.code == ErrorCode::UnknownType => {
                Err(ClientError::Protocol(format!(
                    "the server does not support file transfer ({}): upgrade it",
                    f.message
                )))
            }
            JobEvent::Failed(f) => Err(f.into()),
            ev => Ok(ev),
        }
    }

    /// Sends one entry (a directory, a link, or with `source` a file's
    /// content) as `req` says, and returns what the server stored.
    /// `progress` hears how many of the file's bytes the server has
    /// (resumed ones included), as they go.
    pub async fn put_entry(
        &mut self,
        req: PutRequest,
        source: Option<&Path>,
        progress: Option<&Progress<'_>>,
    ) -> Result<Put, ClientError> {
        if req.kind != EntryKind::File {
            let id = self.next_id();
            self.sender()
                .send(ClientMsg::Put(PutRequest { id, ..req }))
                .await?;
            return match self.transfer_event(id).await? {
                JobEvent::Transfer(TransferEvent::Stored(stored)) => Ok(Put { stored, sent: 0 }),
                other => Err(ClientError::Protocol(format!("put: unexpected {other:?}"))),
            };
        }
        let path =
            source.ok_or_else(|| ClientError::Protocol("a file put needs a source".into()))?;
        let file = std::fs::File::open(path).map_err(|e| local(e, path))?;
        self.put_from(req, file, path, None, progress).await
    }

    /// Sends `file` (named `path` in messages) as the file `req` says.
    /// With `growing`, the file is still being written, up to the size
    /// that says (a relay host passing on what it receives, §3.9): each
    /// chunk is read once it is there, and neither a skip nor a resume is
    /// tried.
    pub async fn put_from(
        &mut self,
        mut req: PutRequest,
        file: std::fs::File,
        path: &Path,
        growing: Option<tokio::sync::watch::Receiver<u64>>,
        progress: Option<&Progress<'_>>,
    ) -> Result<Put, ClientError> {
        let id = self.next_id();
        req.id = id;
        self.sender().send(ClientMsg::Put(req.clone())).await?;
        let accepted = match self.transfer_event(id).await? {
            JobEvent::Transfer(TransferEvent::Accepted(a)) => a,
            other => return Err(ClientError::Protocol(format!("put: unexpected {other:?}"))),
        };
        // The destination holds this content already: nothing to send.
        if let Some(e) = &accepted.existing
            && e.size == req.size
            && growing.is_none()
        {
            let mine = hex(&hash_prefix(&file, req.size)
                .map_err(|e| local(e, path))?
                .finalize());
            if mine == e.sha256 {
                self.sender()
                    .send(ClientMsg::Done(DoneRequest {
                        id,
                        sha256: mine,
                        skip: true,
                    }))
                    .await?;
                return self.stored(id, 0, None).await;
            }
        }
        // Go on from what an interrupted put left, if it is our prefix.
        let mut hasher = Sha256::new();
        let mut at = 0;
        if accepted.offset > 0
            && growing.is_none()
            && accepted.offset <= req.size
            && let Some(theirs) = &accepted.sha256
            && let Ok(h) = hash_prefix(&file, accepted.offset)
            && &hex(&h.clone().finalize()) == theirs
        {
            hasher = h;
            at = accepted.offset;
        }
        // The put's own window; a server from before it holds the data
        // to the stdin window.
        let window = accepted.window.or(self.stdin_window()).unwrap_or(0);
        let mut credit = window;
        let mut sent = 0;
        // The file is read and hashed on a thread of its own, a few
        // chunks ahead, while this task sends: the hash and the reads
        // overlap the network instead of waiting for it.
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
        let reader_file = file.try_clone().map_err(|e| local(e, path))?;
        let (start, size) = (at, req.size);
        let rt = tokio::runtime::Handle::current();
        let reader = tokio::task::spawn_blocking(move || {
            let mut growing = growing;
            let mut at = start;
            while at < size {
                let want =
                    usize::try_from((size - at).min(DATA_CHUNK as u64)).unwrap_or(DATA_CHUNK);
                if let Some(g) = &mut growing {
                    let end = at + want as u64;
                    if rt.block_on(g.wait_for(|&n| n >= end)).is_err() {
                        let stopped = io::Error::other("the file stopped arriving here");
                        let _ = chunks_tx.blocking_send(Err(stopped));
                        break;
                    }
                }
                let mut buf = bytes::BytesMut::zeroed(want);
                let chunk = match reader_file.read_at(&mut buf, at) {
                    Ok(0) => Err(io::Error::other("the file shrank while it was sent")),
                    Ok(n) => {
                        buf.truncate(n);
                        hasher.update(&buf);
                        Ok(buf.freeze())
                    }
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                at += chunk.as_ref().map_or(0, |b| b.len() as u64);
                if chunks_tx.blocking_send(chunk).is_err() || failed {
                    break;
                }
            }
            hasher
        });
        while at < req.size {
            let chunk = match chunks.recv().await {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    self.cancel(id).await;
                    return Err(local(e, path));
                }
                None => return Err(ClientError::Io(io::Error::other("the reader stopped"))),
            };
            let n = chunk.len();
            let cost = n as u64 + STDIN_FRAME_COST;
            while credit < cost {
                self.sender().flush().await?;
                match self.transfer_event(id).await? {
                    JobEvent::Window { stdin } => credit += stdin,
                    other => {
                        return Err(ClientError::Protocol(format!("put: unexpected {other:?}")));
                    }
                }
            }
            credit -= cost;
            self.sender()
                .feed(ClientMsg::Data {
                    id,
                    offset: at,
                    data: chunk,
                })
                .await?;
            at += n as u64;
            sent += n as u64;
            if let Some(p) = progress {
                p(at, req.size);
            }
        }
        let hasher = reader
            .await
            .map_err(|e| ClientError::Io(io::Error::other(e.to_string())))?;
        let sha256 = hex(&hasher.finalize());
        self.sender()
            .send(ClientMsg::Done(DoneRequest {
                id,
                sha256: sha256.clone(),
                skip: false,
            }))
            .await?;
        let put = self
            .stored(id, sent, progress.map(|p| (p, req.size)))
            .await?;
        if put.stored.sha256.as_deref() != Some(sha256.as_str()) {
            return Err(ClientError::Job {
                code: ErrorCode::HashMismatch,
                message: format!(
                    "the server stored {:?}, this side sent {sha256}",
                    put.stored.sha256
                ),
                exit_status: None,
            });
        }
        Ok(put)
    }

    /// Tells the server to stop a transfer this side gave up on (its
    /// thread would otherwise wait on the window until the connection
    /// closes); the answer, `bad_request` "cancelled", is not awaited.
    async fn cancel(&mut self, id: u64) {
        let _ = self.sender().send(ClientMsg::Cancel { id }).await;
    }

    /// Waits for a put's `stored`, taking the windows still coming back
    /// (each told to `progress` as a sign of life: a relay host sends them
    /// while the hosts after it work, §3.9).
    async fn stored(
        &mut self,
        id: u64,
        sent: u64,
        progress: Option<(&Progress<'_>, u64)>,
    ) -> Result<Put, ClientError> {
        loop {
            match self.transfer_event(id).await? {
                JobEvent::Window { .. } => {
                    if let Some((p, size)) = progress {
                        p(size, size);
                    }
                }
                JobEvent::Transfer(TransferEvent::Stored(stored)) => {
                    return Ok(Put { stored, sent });
                }
                other => return Err(ClientError::Protocol(format!("put: unexpected {other:?}"))),
            }
        }
    }

    /// Fetches the server's file `path` (relative to `base` when given)
    /// into `dest`, through `dest`'s partial file (continued when
    /// `resume` and it is a prefix of the server's file). `preserve`
    /// keeps the mode and modification time; otherwise the mode is the
    /// server's masked by this process's umask. `dest` is never replaced
    /// but by the complete, verified file.
    pub async fn get_file(
        &mut self,
        path: &str,
        base: Option<&str>,
        dest: &Path,
        resume: bool,
        preserve: bool,
        progress: Option<&Progress<'_>>,
    ) -> Result<Got, ClientError> {
        let id = self.next_id();
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            ClientError::Local(io::Error::other(format!(
                "{}: not a file name",
                dest.display()
            )))
        })?;
        let part = partial_name(name);
        let tmp = dir.join(&part);
        // What an earlier get of this user left is resumed from; anything
        // else there is replaced (found by attack: a file another user
        // planted in a shared directory became the "verified" copy, still
        // theirs). The same rule as the server's (filesink::open_part).
        let dir_fd = std::fs::File::open(&dir).map_err(|e| local(e, &dir))?;
        let file = crate::filesink::open_part(&dir_fd, &part).map_err(|e| {
            let why = match e {
                crate::filesink::PartError::InWay => {
                    io::Error::other("in the way (not a file); remove it")
                }
                crate::filesink::PartError::Busy => {
                    io::Error::other("made by another copy at the same time")
                }
                crate::filesink::PartError::Os(e) => io::Error::from(e),
            };
            local(why, &tmp)
        })?;
        let remove = || {
            let _ = std::fs::remove_file(&tmp);
        };
        let have = if resume {
            file.metadata().map_err(|e| local(e, &tmp))?.len()
        } else {
            0
        };
        let mut hasher = Sha256::new();
        let mut prefix = None;
        if have > 0
            && let Ok(h) = hash_prefix(&file, have)
        {
            prefix = Some(hex(&h.clone().finalize()));
            hasher = h;
        }
        self.sender()
            .send(ClientMsg::Get(GetRequest {
                id,
                path: path.to_string(),
                base: base.map(str::to_string),
                offset: prefix.as_ref().map(|_| have),
                sha256: prefix,
            }))
            .await?;
        let meta = match self.transfer_event(id).await {
            Ok(JobEvent::Transfer(TransferEvent::File(m))) => m,
            Ok(other) => return Err(ClientError::Protocol(format!("get: unexpected {other:?}"))),
            Err(e) => {
                if have == 0 {
                    remove();
                }
                return Err(e);
            }
        };
        let mut at = meta.offset;
        if at == 0 {
            hasher = Sha256::new();
            file.set_len(0).map_err(|e| local(e, &tmp))?;
        }
        let resumed_from = at;
        // What arrives is written and hashed on a thread of its own, a few
        // chunks behind, while this task takes the next frames: the disk
        // and the hash overlap the network. The window goes back only for
        // what that thread has been handed, so a slow disk still slows
        // the server.
        let (chunks, mut chunks_rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let writer_file = file.try_clone().map_err(|e| local(e, &tmp))?;
        let writer = tokio::task::spawn_blocking(move || -> io::Result<(Sha256, u64)> {
            let mut at = resumed_from;
            // Past the page cache where it can be (src/filesink.rs).
            let mut sink = crate::filesink::FileSink::new(writer_file, at, true);
            while let Some(data) = chunks_rx.blocking_recv() {
                sink.write(&data)?;
                hasher.update(&data);
                at += data.len() as u64;
            }
            sink.finish()?;
            Ok((hasher, at))
        });
        let written = |w: Result<io::Result<(Sha256, u64)>, tokio::task::JoinError>| {
            w.map_err(|e| ClientError::Io(io::Error::other(e.to_string())))?
                .map_err(|e| local(e, &tmp))
        };
        // The window given back a quarter at a time (the server keeps
        // sending on the rest), not a frame for every frame.
        let mut owed = 0u64;
        let batch = self.output_window().unwrap_or(0) / 4;
        loop {
            match self.transfer_event(id).await? {
                JobEvent::Transfer(TransferEvent::Data { offset, data }) => {
                    if offset != at {
                        remove();
                        self.cancel(id).await;
                        return Err(ClientError::Protocol(format!(
                            "get: data at {offset}, expected {at}"
                        )));
                    }
                    let n = data.len() as u64;
                    if chunks.send(data).await.is_err() {
                        // The writer stopped (a full disk): its error says
                        // why; nothing is kept, and the server stops.
                        drop(chunks);
                        let failed = written(writer.await).err();
                        remove();
                        self.cancel(id).await;
                        return Err(failed.unwrap_or_else(|| {
                            ClientError::Io(io::Error::other("the writer stopped"))
                        }));
                    }
                    at += n;
                    if let Some(p) = progress {
                        p(at, meta.size);
                    }
                    owed += n + OUTPUT_FRAME_COST;
                    if owed >= batch {
                        let output = std::mem::take(&mut owed);
                        self.sender().send(ClientMsg::Window { id, output }).await?;
                    }
                }
                JobEvent::Transfer(TransferEvent::Sent(sent)) => {
                    drop(chunks);
                    // A write that failed at the end (a full disk found by
                    // the last blocks) keeps nothing either.
                    let (hasher, at) = written(writer.await).inspect_err(|_| remove())?;
                    let sha256 = hex(&hasher.finalize());
                    if sent.sha256 != sha256 || at != meta.size {
                        remove();
                        return Err(ClientError::Job {
                            code: ErrorCode::HashMismatch,
                            message: format!(
                                "{}: received {at} bytes hashing to {sha256}; the server sent {} \
                                 hashing to {}; nothing kept",
                                dest.display(),
                                sent.bytes,
                                sent.sha256
                            ),
                            exit_status: None,
                        });
                    }
                    let mode = if preserve {
                        meta.mode & 0o777
                    } else {
                        meta.mode & 0o777 & !crate::sys::umask()
                    };
                    commit(&file, &tmp, dest, mode, preserve.then_some(meta.mtime))
                        .inspect_err(|_| remove())?;
                    return Ok(Got {
                        path: dest.to_path_buf(),
                        bytes: at,
                        received: at - resumed_from,
                        sha256,
                        resumed_from,
                    });
                }
                other => return Err(ClientError::Protocol(format!("get: unexpected {other:?}"))),
            }
        }
    }

    /// (§3.9) Tells the server a file will come from another host of a
    /// relay chain, as `req` says (its `relay`: the hosts after this one)
    /// hashing to `sha256`; returns the transfer's id and the ticket that
    /// host logs in with. The server's verdict on the file comes later,
    /// as `stored` or `error` with that id ([`Self::expected`]).
    pub async fn expect_file(
        &mut self,
        req: PutRequest,
        sha256: &str,
    ) -> Result<(u64, String), ClientError> {
        let id = self.next_id();
        self.sender()
            .send(ClientMsg::Expect(ExpectRequest {
                put: PutRequest { id, ..req },
                sha256: sha256.to_string(),
            }))
            .await?;
        match self.transfer_event(id).await? {
            JobEvent::Transfer(TransferEvent::Ticket(t)) => Ok((id, t)),
            other => Err(ClientError::Protocol(format!(
                "expect: unexpected {other:?}"
            ))),
        }
    }

    /// The verdict on an expected file (see [`Self::expect_file`]).
    pub async fn expected(&mut self, id: u64) -> Result<Stored, ClientError> {
        match self.transfer_event(id).await? {
            JobEvent::Transfer(TransferEvent::Stored(s)) => Ok(s),
            other => Err(ClientError::Protocol(format!(
                "expect: unexpected {other:?}"
            ))),
        }
    }

    /// What the server's `path` holds, recursively (a file: itself, as
    /// the entry `""`), and how many entries it left out.
    pub async fn list(&mut self, path: &str) -> Result<(Vec<Entry>, u64), ClientError> {
        let id = self.next_id();
        self.sender()
            .send(ClientMsg::List(ListRequest {
                id,
                path: path.to_string(),
            }))
            .await?;
        let mut all = Vec::new();
        loop {
            match self.transfer_event(id).await? {
                JobEvent::Transfer(TransferEvent::Entries(entries)) => all.extend(entries),
                JobEvent::Transfer(TransferEvent::Listed(l)) => return Ok((all, l.skipped)),
                other => return Err(ClientError::Protocol(format!("list: unexpected {other:?}"))),
            }
        }
    }
}

/// The verified file takes its final name: mode, times, fsync, a rename
/// that never replaces a directory, fsync of the directory.
fn commit(
    file: &std::fs::File,
    tmp: &Path,
    dest: &Path,
    mode: u32,
    mtime: Option<i64>,
) -> Result<(), ClientError> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| local(e, dest))?;
    if let Some(m) = mtime {
        let t =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(m).unwrap_or(0));
        file.set_modified(t).map_err(|e| local(e, dest))?;
    }
    file.sync_all().map_err(|e| local(e, dest))?;
    if dest.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(ClientError::Job {
            code: ErrorCode::IsADirectory,
            message: format!("{}: a file never replaces a directory", dest.display()),
            exit_status: None,
        });
    }
    std::fs::rename(tmp, dest).map_err(|e| local(e, dest))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
