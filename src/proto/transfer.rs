//! File transfer frames (PROTOCOL.md §3.8): `put`, `get` and `list`, in
//! the same framing and id space as jobs, paced by the windows of §3.6.
//!
//! ```text
//! put:  C put {id, path, name, kind, length, mode, ...}
//!       S accepted {id, path, offset, sha256?, existing?, window}
//!       C data {id, offset, size} + bytes ...    (the put's window)
//!       C done {id, sha256, skip?}
//!       S stored {id, path, bytes, sha256, skipped?}    or error {id, ...}
//! get:  C get {id, path, offset?, sha256?}
//!       S file {id, path, length, mode, mtime, offset}
//!       S data {id, offset, size} + bytes ...    (output window)
//!       S sent {id, bytes, sha256}                      or error {id, ...}
//! list: C list {id, path}
//!       S entries {id, size} + JSON array of entries ...
//!       S listed {id, count}
//! ```
//!
//! Headers are plain serde structs: each frame's fields are exactly the
//! struct's, its `type` set by [`ClientMsg::to_frame`] and
//! [`ServerMsg`]'s encoder.
//!
//! [`ClientMsg::to_frame`]: super::ClientMsg::to_frame
//! [`ServerMsg`]: super::ServerMsg

use serde::{Deserialize, Serialize};

/// What a transferred entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// `put`: the client is about to send an entry (a file's bytes follow in
/// `data` frames once `accepted`; a directory or symbolic link is made at
/// once and answered by `stored`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub id: u64,
    /// The destination as the user gave it (without `base`), or the
    /// entry's path relative to `base`.
    pub path: String,
    /// A directory made by an earlier `put` of the same transfer (its
    /// `stored.path`): `path` is then relative to it, and nothing in it
    /// is followed (no `..`, no symbolic link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The source's own name, for a destination that is an existing
    /// directory (it goes inside, under this name). Without `base` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: EntryKind,
    /// A file's size in bytes (`length` on the wire: a header's `size`
    /// is its frame's body, §3.1).
    #[serde(default, rename = "length")]
    pub size: u64,
    /// Permission bits (`0o777` at most are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time, Unix seconds (kept with `preserve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// A symbolic link's target, as it is (never resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// One of several sources: the destination must be a directory.
    #[serde(default, skip_serializing_if = "is_false")]
    pub many: bool,
    /// Continue from what an interrupted `put` of this file left.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resume: bool,
    /// Keep `mode` exactly and `mtime` (else mode minus the server's umask).
    #[serde(default, skip_serializing_if = "is_false")]
    pub preserve: bool,
    /// (§3.9) hosts this one passes the file on to, in order, as it
    /// arrives: the first it can reach, which passes it on to the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay: Vec<Hop>,
}

/// (§3.9) A host of a relay chain: the address the host before it
/// connects to, and the ticket that host issued for the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub addr: String,
    pub ticket: String,
}

/// (§3.9) `expect`: a file will come from another host of a relay chain,
/// which logs in with the ticket this answers with. Everything about the
/// file is fixed here, by the client; the other host only brings the
/// bytes, which must hash to `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectRequest {
    #[serde(flatten)]
    pub put: PutRequest,
    pub sha256: String,
}

/// How often a relay host that has all of a file, and waits for the hosts
/// after it, tells the host before it that it is alive (`window` giving
/// back 0): a long chain is then told from a hung host.
pub const RELAY_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a relay hop may go without a sign of life (taking data,
/// giving window back, a heartbeat, its answer) while it has something to
/// do before it is passed over.
pub const RELAY_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Hosts one relay chain holds at most (each host holds the tickets of
/// those after it, to go round any that fail).
pub const MAX_RELAY_HOPS: usize = 256;

/// How one host after this one in a relay chain fared, as far as this
/// one knows (unverified: each host reports to the client itself too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    pub addr: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `get`: send a file. With `offset` and `sha256` (the SHA-256 of the
/// client's first `offset` bytes, hex), the server starts there if its
/// file's first `offset` bytes hash the same, else at 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    pub id: u64,
    pub path: String,
    /// As for `put`: `path` is relative to this directory, nothing
    /// followed (entries of a `list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `list`: what is at `path`, recursively (a file lists itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    pub id: u64,
    pub path: String,
}

/// `done`: the end of a `put`'s data; `sha256` of the whole file.
/// `skip`: send nothing, the destination is already this content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRequest {
    pub id: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip: bool,
}

/// What the destination holds already, when it is a file of the size
/// being sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Existing {
    pub size: u64,
    pub sha256: String,
}

/// `accepted`: a file `put` may send its data, from `offset` (0, or what
/// an interrupted transfer left, whose SHA-256 is `sha256`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: u64,
    /// The final path on the server.
    pub path: String,
    #[serde(default)]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<Existing>,
    /// The window of this put's data, in place of the stdin window (a
    /// server from before it sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
}

/// `stored`: a `put` is complete under `path`: `bytes` long, hashing to
/// `sha256` (for a file), or made (a directory, a link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub id: u64,
    pub path: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// (§3.9) how the hosts after this one in a relay chain fared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relayed: Vec<Relayed>,
    /// The destination already held this content; nothing was written.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skipped: bool,
    /// Where the data started (an interrupted transfer continued).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed_from: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `file`: what a `get` sends, before its `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: u64,
    pub path: String,
    /// The file's size (`length`: a header's `size` is its body's, §3.1).
    #[serde(rename = "length")]
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// Where the data starts (a resumed `get`), else 0.
    #[serde(default)]
    pub offset: u64,
}

/// `sent`: a `get`'s data is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub id: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// One entry of a `list`, its path relative to the listed path (`""` for
/// the listed path itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `listed`: the end of a `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: u64,
    pub count: u64,
    /// Entries left out: special files (FIFOs, sockets, devices), names
    /// that are not UTF-8, directories the user may not read (and what
    /// they hold), pseudo file systems mounted inside.
    #[serde(default)]
    pub skipped: u64,
}

/// Most entries one `list` answers; a tree larger is an error, not a
/// client's memory used up.
pub const MAX_LIST_ENTRIES: u64 = 1_000_000;

/// Levels of directories one `list` descends (a descriptor is held for
/// each while it walks).
pub const MAX_LIST_DEPTH: usize = 128;

/// Bytes of entries one `entries` frame carries at most (its body).
pub const ENTRIES_CHUNK: usize = 256 * 1024;

/// Bytes of file data one `data` frame of a `put` carries at most: 64 KiB,
/// the least `exec.max_body` a server may have.
pub const DATA_CHUNK: usize = 64 * 1024;

/// Bytes of file data one `data` frame of a `get` carries at most, and at
/// most a quarter of the client's output window: larger frames than a
/// put's (a client's frame limit is 1 MiB), as each costs the server a
/// wake-up of its writer.
pub const GET_CHUNK: usize = 256 * 1024;

/// The partial file beside `name` (both sides use it): one per
/// destination, so that an interrupted transfer can be continued;
/// `.sb-part-` and a hash of the name when `.NAME.sb-part` would be too
/// long for a file name.
pub fn partial_name(name: &str) -> String {
    use sha2::Digest;
    let n = format!(".{name}.sb-part");
    if n.len() <= 255 {
        return n;
    }
    let h = sha2::Sha256::digest(name.as_bytes());
    format!(".sb-part-{}", hex(h.get(..16).unwrap_or_default()))
}

/// SHA-256 of a file's first `len` bytes (what a resumed transfer
/// compares), read a MiB at a time.
pub fn hash_prefix(file: &std::fs::File, len: u64) -> std::io::Result<sha2::Sha256> {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = file.read_at(buf.get_mut(..want).unwrap_or_default(), at)?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        h.update(buf.get(..n).unwrap_or_default());
        at += n as u64;
    }
    Ok(h)
}

/// The hex SHA-256 of `bytes`, as transfers write hashes.
pub fn hex(digest: &[u8]) -> String {
    super::auth::hex(digest)
}
