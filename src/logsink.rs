//! Where log lines go: a bounded queue drained by one writer thread, so
//! that a log that cannot be written costs dropped lines, never a panic
//! or a blocked task.
//!
//! A daemon's stderr can be a file on a full disk, a pipe whose reader
//! died (EPIPE) or a pipe whose reader stopped reading (writes block).
//! Writing from the logging task itself would, respectively, fail (and
//! tracing-subscriber's default reaction is `eprintln!`, which panics the
//! connection, signal or reload task that happened to log), fail again,
//! and block that task for as long as the reader sleeps. So tasks only
//! format a line and hand it over with a non-blocking `try_send`; the
//! writer thread alone touches the descriptor. A full queue or a failed
//! write drops the line and counts it ([`dropped`], exported as
//! `switchboard_log_lines_dropped_total`); the first line written after a
//! loss is preceded by one saying how many were lost and why, as nginx
//! and HAProxy do.
//!
//! ```text
//!  task ─ format ─> Line (Vec<u8>) ─ try_send ─> [queue: QUEUE_LINES] ─> writer thread ─> fd 2
//!                                     full: drop, count      batches, WRITE_PAUSE apart; error: drop, count
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines the queue holds before new ones are dropped: a burst of this many
/// survives a writer that is briefly slow (at most QUEUE_LINES × MAX_LINE
/// of memory, in practice a few hundred KiB).
pub const QUEUE_LINES: usize = 4096;

/// The longest line kept; the rest is cut and marked, so one huge field
/// cannot hold megabytes in the queue.
pub const MAX_LINE: usize = 16 * 1024;

static SINK: OnceLock<&'static Sink> = OnceLock::new();

/// Log lines the process has lost since it started (queue full or write
/// failed).
pub fn dropped() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

/// A log queue and its counters: the process has one for stderr, and one
/// for an audit file ([`crate::auditlog`]).
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Vec<u8>>,
    /// The line that reports a loss: `lost` lines, why, and whether a
    /// failed write may have left part of a line behind.
    notice: fn(lost: u64, why: &str, torn: bool) -> Vec<u8>,
    dropped: AtomicU64,
    /// Lines queued and not yet written (or dropped), for [`flush`].
    pending: Mutex<usize>,
    drained: Condvar,
}

/// The process's sink, its writer thread started on stderr at the first
/// call. If the thread cannot be started, lines go nowhere and are
/// counted as dropped, which is still better than a panic.
pub fn stderr() -> &'static Sink {
    SINK.get_or_init(|| {
        // Stderr's `write_all` returns errors; only the print macros
        // panic on them.
        Sink::start(QUEUE_LINES, std::io::stderr())
    })
}

/// The loss notice of a text log.
fn text_notice(lost: u64, why: &str, torn: bool) -> Vec<u8> {
    let newline = if torn { "\n" } else { "" };
    format!("{newline}switchboard: {lost} log line(s) lost ({why})\n").into_bytes()
}

impl Sink {
    /// A sink of `capacity` lines whose writer thread writes to `out`.
    /// Leaked on purpose: it lives as long as the process's logging.
    pub fn start(capacity: usize, out: impl Write + Send + 'static) -> &'static Sink {
        Sink::start_with(capacity, out, text_notice)
    }

    /// [`start`](Self::start), with the line that reports a loss made by
    /// `notice` (a JSON record in a JSON stream).
    pub fn start_with(
        capacity: usize,
        out: impl Write + Send + 'static,
        notice: fn(u64, &str, bool) -> Vec<u8>,
    ) -> &'static Sink {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let sink: &'static Sink = Box::leak(Box::new(Sink {
            tx,
            notice,
            dropped: AtomicU64::new(0),
            pending: Mutex::new(0),
            drained: Condvar::new(),
        }));
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || drain(rx, capacity, out, sink));
        if started.is_err() {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sink
    }

    /// Lines this sink has lost.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Waits until every queued line has been written or dropped, or `limit`
/// passes: called before the process exits, so the last lines (why it
/// stopped) are not lost in the queue.
pub fn flush(limit: Duration) {
    if let Some(sink) = SINK.get() {
        sink.flush(limit);
    }
}

impl Sink {
    /// Waits until every queued line has been written or dropped, or
    /// `limit` passes.
    pub fn flush(&self, limit: Duration) {
        let sink = self;
        let deadline = Instant::now() + limit;
        let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
        while *pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = match sink.drained.wait_timeout(pending, left) {
                Ok((p, _)) => p,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Queues one whole line (its newline included), or drops and counts
    /// it when the queue is full. Never blocks.
    pub fn send(&self, line: Vec<u8>) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.done();
            }
        }
    }

    fn done(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.drained.notify_all();
        }
    }
}

/// Writes queued lines to `out` until every sender is gone. A failed write
/// drops its line; the next successful one is preceded by a notice of the
/// loss (queue overflows included).
fn drain(rx: Receiver<Vec<u8>>, capacity: usize, mut out: impl Write, sink: &Sink) {
    // Dropped lines already reported, and the last write error seen.
    let mut reported = 0u64;
    let mut last_error: Option<std::io::Error> = None;
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        // Lines that come while a batch is written, and in the pause after
        // it, wait in the queue without waking this thread: under load
        // (two audit records per job) the writer wakes every WRITE_PAUSE,
        // not for every line. A pause that brought nothing ends the batch.
        batch.push(first);
        loop {
            // At most a queue's worth: loggers that keep pace with this
            // loop would otherwise grow a batch past the queue's bound.
            batch.extend(rx.try_iter().take(capacity.max(1)));
            if batch.is_empty() {
                break;
            }
            for line in batch.drain(..) {
                write_line(&mut out, sink, &line, &mut reported, &mut last_error);
            }
            std::thread::sleep(WRITE_PAUSE);
        }
    }
}

/// How long the writer waits after a batch before it looks for more
/// (lines are never held longer than this). Default 5 ms.
pub const WRITE_PAUSE: Duration = Duration::from_millis(5);

/// Writes one line (after the notice of any loss); a failure drops it.
fn write_line(
    out: &mut impl Write,
    sink: &Sink,
    line: &[u8],
    reported: &mut u64,
    last_error: &mut Option<std::io::Error>,
) {
    {
        let lost = sink.dropped().saturating_sub(*reported);
        let notice = if lost == 0 {
            Ok(())
        } else {
            // A write that failed on a full disk may have written part of
            // its line: the notice starts on a line of its own.
            let (torn, why) = match &last_error {
                Some(e) => (true, format!("the log could not be written: {e}")),
                None => (false, "the log writer fell behind".to_string()),
            };
            out.write_all(&(sink.notice)(lost, &why, torn))
        };
        let written = notice
            .and_then(|()| out.write_all(line))
            .and_then(|()| out.flush());
        match written {
            Ok(()) => {
                *reported += lost;
                *last_error = None;
            }
            Err(e) => {
                sink.dropped.fetch_add(1, Ordering::Relaxed);
                *last_error = Some(e);
            }
        }
        sink.done();
    }
}

/// One log line being formatted; queued when dropped.
pub struct Line {
    buf: Vec<u8>,
    sink: &'static Sink,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let room = MAX_LINE.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(b.get(..room).unwrap_or(b));
        // Claim the whole write either way, so the formatter does not
        // treat a cut line as an I/O error.
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.buf.len() >= MAX_LINE {
            self.buf.truncate(MAX_LINE);
            self.buf.extend_from_slice(b" [cut]\n");
        }
        self.sink.send(std::mem::take(&mut self.buf));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            sink: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what reaches the "descriptor"; fails the first `fail`
    /// writes, the first of them after taking 3 bytes (a disk that fills
    /// mid-line); waits for `gate` to open before the first write.
    #[derive(Clone, Default)]
    struct Out {
        text: Arc<Mutex<Vec<u8>>>,
        fail: Arc<Mutex<usize>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Out {
        fn open_gate(&self) {
            *self.gate.0.lock().unwrap() = true;
            self.gate.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.text.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut open = self.gate.0.lock().unwrap();
            while !*open {
                open = self.gate.1.wait(open).unwrap();
            }
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                let mut text = self.text.lock().unwrap();
                if text.is_empty() {
                    text.extend_from_slice(b.get(..3).unwrap_or(b));
                }
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.text.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(sink: &'static Sink, text: &str) {
        let mut line = sink.make_writer();
        line.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn failed_writes_are_counted_and_reported_once_writing_works_again() {
        let out = Out::default();
        *out.fail.lock().unwrap() = 3;
        out.open_gate();
        let sink = Sink::start(16, out.clone());
        for i in 1..=5 {
            log(sink, &format!("line {i}\n"));
        }
        sink.flush(Duration::from_secs(10));
        assert_eq!(sink.dropped(), 3);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // The torn piece of a lost line stays on a line of its own.
        assert_eq!(lines[0], "lin", "{text}");
        assert!(
            lines[1].starts_with(
                "switchboard: 3 log line(s) lost (the log could not be written: No space left"
            ),
            "{text}"
        );
        assert_eq!(&lines[2..], ["line 4", "line 5"]);
        // Reported once: later lines come alone.
        log(sink, "line 6\n");
        sink.flush(Duration::from_secs(10));
        assert!(out.text().ends_with("line 5\nline 6\n"), "{}", out.text());
    }

    #[test]
    fn a_writer_that_blocks_never_blocks_the_logger() {
        let out = Out::default();
        let sink = Sink::start(4, out.clone());
        // The writer is stuck; this loop would hang on a blocking queue.
        for i in 0..100 {
            log(sink, &format!("line {i}\n"));
        }
        // At most the queue and the writer's batch (a queue's worth and
        // the line it woke for) survive.
        assert!(
            sink.dropped() >= 100 - (2 * 4 + 1),
            "dropped {}",
            sink.dropped()
        );
        out.open_gate();
        sink.flush(Duration::from_secs(10));
        log(sink, "after\n");
        sink.flush(Duration::from_secs(10));
        let text = out.text();
        assert!(
            text.contains("log line(s) lost (the log writer fell behind)"),
            "{text}"
        );
        assert!(text.ends_with("after\n"), "{text}");
    }

    #[test]
    fn a_huge_line_is_cut() {
        let out = Out::default();
        out.open_gate();
        let sink = Sink::start(4, out.clone());
        log(sink, &"x".repeat(10 * MAX_LINE));
        sink.flush(Duration::from_secs(10));
        let text = out.text();
        assert_eq!(text.len(), MAX_LINE + " [cut]\n".len());
        assert!(text.ends_with("x [cut]\n"));
    }
}
