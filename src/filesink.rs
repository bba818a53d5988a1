//! A received file (a `put` on the server, a `get` on the client): its
//! temporary file taken only if this side made it ([`open_part`]), and
//! written past the page cache with `O_DIRECT` ([`FileSink`]).
//!
//! A copy is fsynced before it takes its name (PROTOCOL.md §3.8). Written
//! through the page cache, a 1 GiB file costs a copy into a gigabyte of
//! fresh cache pages (on a VM whose host reclaims free memory, first
//! touches of them cost seconds: `dd` of 1 GiB took 0.2 to 7.2 s here,
//! `O_DIRECT` 0.54 to 0.59 s), and then waits for the whole gigabyte at the
//! fsync. Direct writes of aligned blocks go to the disk while the next
//! bytes cross the network, and the fsync finds little left to do.
//!
//! ```text
//!  data ─> hash ─> [aligned buffer, BUF bytes] ─ full ─> pwrite O_DIRECT at an aligned offset
//!  finish: whole blocks direct, then O_DIRECT off and the tail (< ALIGN) through the cache
//! ```
//!
//! Where direct I/O cannot be had (a filesystem that refuses the flag, an
//! offset to start from that is not aligned until its first block is
//! written, a device with a larger block) the same bytes go through the
//! cache: never a failure of its own.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{Mode, SFlag};

/// Why a transfer's temporary file could not be had.
#[derive(Debug)]
pub enum PartError {
    /// Something that is not a regular file holds the name.
    InWay,
    /// Made by someone else since this side looked (another transfer).
    Busy,
    Os(Errno),
}

/// Opens (read-write, mode 0600 if made) the temporary file `name` in
/// `dir`, where a copy is written before it takes its final name, on
/// either side (a put on the server, a get on the client). What an
/// interrupted copy of this user left (a regular file with one link,
/// owned by this process's filesystem uid) is taken as it is, for
/// `--resume`; anything else there (a hard link to a file elsewhere, a
/// file another user placed in a shared directory) is removed and a new
/// one made, so a copy never writes into, or ends as, a file it did not
/// make. Links are never followed.
pub fn open_part(dir: &impl AsFd, name: &str) -> Result<File, PartError> {
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let mode = Mode::from_bits_truncate(0o600);
    // SAFETY: a plain system call; -1 changes nothing and returns the
    // thread's filesystem uid.
    let me = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
    match nix::fcntl::openat(dir, name, flags, mode) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(&fd).map_err(PartError::Os)?;
            let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
            if !regular {
                return Err(PartError::InWay);
            }
            if st.st_nlink == 1 && st.st_uid == me {
                return Ok(File::from(fd));
            }
            nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(PartError::Os)?;
        }
        Err(Errno::ENOENT) => {}
        Err(Errno::EISDIR | Errno::ELOOP | Errno::ENXIO) => return Err(PartError::InWay),
        Err(e) => return Err(PartError::Os(e)),
    }
    let fd = nix::fcntl::openat(dir, name, flags | OFlag::O_CREAT | OFlag::O_EXCL, mode).map_err(
        |e| match e {
            Errno::EEXIST => PartError::Busy,
            e => PartError::Os(e),
        },
    )?;
    Ok(File::from(fd))
}

/// Alignment of buffer, offset and length for direct writes: a page, and
/// every common logical block size.
const ALIGN: usize = 4096;
/// Bytes gathered per direct write (one per transfer in flight).
pub const BUF: usize = 1024 * 1024;

/// A file being written front to back from `at`, directly where it can be.
pub struct FileSink {
    file: File,
    /// `BUF + ALIGN` bytes; the aligned `BUF` of them start at `start`.
    mem: Vec<u8>,
    start: usize,
    /// Bytes gathered in the aligned buffer.
    len: usize,
    /// File offset of the buffer's first byte.
    pos: u64,
    direct: bool,
}

impl FileSink {
    /// A sink writing `file` (a handle of its own: `O_DIRECT` is set and
    /// cleared on its open file description) from offset `at`; direct
    /// only when `direct` is asked for.
    pub fn new(file: File, at: u64, direct: bool) -> FileSink {
        let mem = if direct {
            vec![0u8; BUF + ALIGN]
        } else {
            Vec::new()
        };
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        let mut sink = FileSink {
            file,
            mem,
            start,
            len: 0,
            pos: at,
            direct: false,
        };
        if direct && at.is_multiple_of(ALIGN as u64) {
            sink.direct = sink.set_direct(true);
            if !sink.direct {
                sink.mem = Vec::new();
            }
        }
        sink
    }

    /// Whether writes currently bypass the cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Appends `data` at the end of what was written.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.direct {
            // Up to the next block boundary through the cache, then
            // direct (a resumed file starts mid-block).
            let edge = self.pos.next_multiple_of(ALIGN as u64) - self.pos;
            let cached = if self.mem.is_empty() {
                data.len()
            } else {
                data.len().min(usize::try_from(edge).unwrap_or(0))
            };
            let (now, rest) = data.split_at(cached);
            self.file.write_all_at(now, self.pos)?;
            self.pos += now.len() as u64;
            data = rest;
            if data.is_empty() {
                return Ok(());
            }
            self.direct = self.set_direct(true);
            if !self.direct {
                self.mem = Vec::new();
                return self.write(data);
            }
        }
        while !data.is_empty() {
            let room = BUF - self.len;
            let n = room.min(data.len());
            let (now, rest) = data.split_at(n);
            let at = self.start + self.len;
            self.mem
                .get_mut(at..at + n)
                .ok_or_else(overrun)?
                .copy_from_slice(now);
            self.len += n;
            data = rest;
            if self.len == BUF {
                self.write_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes what is gathered and turns direct I/O off, so the file is
    /// whole on disk (short of the fsync the caller does) and its handle
    /// reads as any other.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.direct {
            self.write_blocks()?;
            self.direct = false;
            self.set_direct(false);
            self.write_cached_tail()?;
        }
        Ok(())
    }

    /// Drops what is gathered and goes on writing at `at` (a client that
    /// starts over from 0).
    pub fn restart(&mut self, at: u64) {
        self.len = 0;
        self.pos = at;
    }

    /// Writes what is gathered (less than a block, or all of it once
    /// direct I/O is off) through the cache.
    fn write_cached_tail(&mut self) -> io::Result<()> {
        let tail = self
            .mem
            .get(self.start..self.start + self.len)
            .ok_or_else(overrun)?;
        self.file.write_all_at(tail, self.pos)?;
        self.pos += tail.len() as u64;
        self.len = 0;
        Ok(())
    }

    /// Writes the gathered whole blocks directly and keeps the rest.
    fn write_blocks(&mut self) -> io::Result<()> {
        let whole = self.len - self.len % ALIGN;
        if whole == 0 {
            return Ok(());
        }
        let block = self
            .mem
            .get(self.start..self.start + whole)
            .ok_or_else(overrun)?;
        match self.file.write_all_at(block, self.pos) {
            Ok(()) => {}
            // A device whose blocks are larger than ALIGN: through the
            // cache from now on.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.set_direct(false);
                self.direct = false;
                self.file.write_all_at(block, self.pos)?;
            }
            Err(e) => return Err(e),
        }
        self.pos += whole as u64;
        self.mem
            .copy_within(self.start + whole..self.start + self.len, self.start);
        self.len -= whole;
        if !self.direct {
            self.write_cached_tail()?;
            self.mem = Vec::new();
        }
        Ok(())
    }

    /// Sets or clears `O_DIRECT`; whether it took.
    fn set_direct(&self, on: bool) -> bool {
        let Ok(bits) = fcntl(&self.file, FcntlArg::F_GETFL) else {
            return false;
        };
        let mut flags = OFlag::from_bits_truncate(bits);
        flags.set(OFlag::O_DIRECT, on);
        fcntl(&self.file, FcntlArg::F_SETFL(flags)).is_ok()
    }
}

/// The buffer's bounds broken: a bug, said as an error rather than bytes
/// silently lost.
fn overrun() -> io::Error {
    io::Error::other("internal error: file sink buffer overrun")
}

impl Drop for FileSink {
    /// An interrupted copy keeps every byte that arrived (for `--resume`).
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn bytes(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + seed) as u8).collect()
    }

    /// Writes of every awkward size, from an aligned and an unaligned
    /// start, direct or not, leave exactly the bytes written.
    #[test]
    fn the_file_holds_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        for (k, (start, direct)) in [(0, true), (5, true), (4096, true), (0, false), (9, false)]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("f{k}"));
            let mut want = bytes(start, 7);
            std::fs::write(&path, &want).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut sink = FileSink::new(file, start as u64, direct);
            for (i, n) in [1, 4095, 4096, 3, BUF, BUF - 1, 70_000, 1]
                .into_iter()
                .enumerate()
            {
                let chunk = bytes(n, i);
                sink.write(&chunk).unwrap();
                want.extend_from_slice(&chunk);
            }
            sink.finish().unwrap();
            drop(sink);
            let mut got = Vec::new();
            File::open(&path).unwrap().read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), want.len(), "case {k}");
            assert!(got == want, "case {k}: content differs");
        }
    }

    /// Dropped half-way (a connection lost), what was handed over is on
    /// disk: a resume starts from all of it.
    #[test]
    fn a_dropped_sink_keeps_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut sink = FileSink::new(file, 0, true);
        let data = bytes(BUF + 12_345, 3);
        sink.write(&data).unwrap();
        drop(sink);
        assert!(std::fs::read(&path).unwrap() == data);
    }

    /// After a restart at 0 the old bytes past the new end are the
    /// caller's to cut; the new ones are written from 0.
    #[test]
    fn a_restart_writes_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut sink = FileSink::new(file, 0, true);
        sink.write(&bytes(10_000, 1)).unwrap();
        sink.restart(0);
        let data = bytes(5_000, 2);
        sink.write(&data).unwrap();
        sink.finish().unwrap();
        drop(sink);
        assert!(std::fs::read(&path).unwrap() == data);
    }
}
