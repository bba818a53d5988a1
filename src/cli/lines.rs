//! A job's output stream cut into whole lines for prefixing (`HOST: `,
//! `--timestamps`), each line with the server's time of the frame it began
//! in; and the server's clock against this one (`--timestamps`).
//!
//! ```text
//! frames:  [ts1 "a\nb"] [ts2 "c\n"] [ts3 "d"] (end)
//! lines:   (ts1, "a\n") (ts1, "bc\n") (ts3, "d")
//! ```
//!
//! A line longer than [`MAX_LINE`] is given in pieces of that size, so a
//! job that never prints a newline cannot grow the client's memory.

use std::time::SystemTime;

use crate::proto::message::Stamp;

/// The longest piece of a line held back waiting for its end.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// One stream's partial line, and when it began.
#[derive(Debug, Default)]
pub(super) struct Lines {
    partial: Vec<u8>,
    began: Option<Stamp>,
    /// The last piece given was cut from a longer line.
    cut: bool,
}

/// A whole line (its `\n` included, or none at the stream's end), or a
/// [`MAX_LINE`] piece of a longer one.
pub(super) struct Piece<'a> {
    /// The server's time of the frame the piece began in.
    pub ts: Option<Stamp>,
    pub bytes: &'a [u8],
    /// Whether the piece begins a line (not the rest of a cut one).
    pub starts_line: bool,
}

impl Lines {
    /// Feeds a chunk the server read at `ts`; `piece` gets each whole line
    /// or piece of one. `last`: the stream ended, and a partial line is
    /// given too. A long line is cut before a UTF-8 character, not inside
    /// one.
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        ts: Option<Stamp>,
        last: bool,
        mut piece: impl FnMut(Piece<'_>),
    ) {
        let mut rest = data;
        while !rest.is_empty() {
            if self.partial.is_empty() {
                self.began = ts;
            }
            let room = MAX_LINE - self.partial.len();
            let (upto, whole) = match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => (nl + 1, true),
                None if rest.len() >= room => (char_boundary(rest, room), true),
                None => (rest.len(), false),
            };
            let (head, tail) = rest.split_at(upto);
            rest = tail;
            if !whole {
                self.partial.extend_from_slice(head);
                continue;
            }
            self.partial.extend_from_slice(head);
            let starts_line = !self.cut;
            self.cut = !head.ends_with(b"\n");
            piece(Piece {
                ts: self.began,
                bytes: &self.partial,
                starts_line,
            });
            self.partial.clear();
        }
        if last && !self.partial.is_empty() {
            piece(Piece {
                ts: self.began,
                bytes: &self.partial,
                starts_line: !self.cut,
            });
            self.partial.clear();
            self.cut = false;
        }
    }
}

/// Where to cut `bytes` at about `at`: before the UTF-8 character that
/// `at` would split (up to 3 bytes back), else at `at`.
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    let continuation = |i: usize| bytes.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| i > 0 && !continuation(i))
        .unwrap_or(at)
}

/// A stream cut into lines on its raw bytes, so that a line keeps the
/// stamp of the frame its first byte came in even when a character is
/// split across frames; each piece then decoded from `--encoding`, when
/// there is one.
#[derive(Default)]
pub(super) struct StampedText {
    lines: Lines,
    decoder: Option<encoding_rs::Decoder>,
}

impl StampedText {
    pub(super) fn new(encoding: Option<&'static encoding_rs::Encoding>) -> StampedText {
        StampedText {
            lines: Lines::default(),
            decoder: encoding.map(|e| e.new_decoder()),
        }
    }

    /// [`Lines::feed`], with each piece decoded; at `last`, what the
    /// decoder still held comes as a piece of its own.
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        ts: Option<Stamp>,
        last: bool,
        mut piece: impl FnMut(Piece<'_>),
    ) {
        let decoder = &mut self.decoder;
        self.lines.feed(data, ts, last, |p| match decoder.as_mut() {
            None => piece(p),
            Some(d) => {
                let text = decode(d, p.bytes, false);
                piece(Piece {
                    bytes: text.as_bytes(),
                    ..p
                });
            }
        });
        if let (true, Some(d)) = (last, decoder.as_mut()) {
            let rest = decode(d, b"", true);
            if !rest.is_empty() {
                piece(Piece {
                    ts,
                    bytes: rest.as_bytes(),
                    starts_line: false,
                });
            }
        }
    }
}

/// `--encoding`: a chunk of a stream in UTF-8; a character split between
/// chunks waits in the decoder for the next (`last`: none is coming).
pub(super) fn decode(d: &mut encoding_rs::Decoder, data: &[u8], last: bool) -> String {
    let mut s = String::with_capacity(
        d.max_utf8_buffer_length(data.len())
            .unwrap_or(data.len().saturating_mul(3)),
    );
    let _ = d.decode_to_string(data, &mut s, last);
    s
}

/// The server's clock against this one, from a stamped frame answering a
/// request: the stamp against the midpoint of the round trip, within half
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClockOffset {
    /// Server minus client, in microseconds.
    pub offset_us: i64,
    /// How far off the estimate may be (half the round trip).
    pub within_us: i64,
}

impl ClockOffset {
    pub(super) fn measure(sent: SystemTime, server: Stamp, received: SystemTime) -> ClockOffset {
        let us = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        };
        let (a, b) = (us(sent), us(received));
        // Saturating: the stamp is the server's to choose, and a local
        // clock can be anywhere.
        let half = b.saturating_sub(a) / 2;
        ClockOffset {
            offset_us: server.0.saturating_sub(a.saturating_add(half)),
            within_us: half.max(0),
        }
    }

    /// `server clock +1.234 ms from this client's (within 0.250 ms)`.
    pub(super) fn describe(self) -> String {
        format!(
            "server clock {:+.3} ms from this client's (within {:.3} ms)",
            self.offset_us as f64 / 1000.0,
            self.within_us as f64 / 1000.0
        )
    }
}

/// `TS ` for a stamped line, nothing for one without.
pub(super) fn prefix(ts: Option<Stamp>) -> String {
    ts.map(|t| format!("{} ", t.rfc3339())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunks: &[(&[u8], i64)]) -> Vec<(Option<i64>, Vec<u8>, bool)> {
        let mut l = Lines::default();
        let mut got = Vec::new();
        for (i, (data, ts)) in chunks.iter().enumerate() {
            l.feed(data, Some(Stamp(*ts)), i + 1 == chunks.len(), |p| {
                got.push((p.ts.map(|t| t.0), p.bytes.to_vec(), p.starts_line))
            });
        }
        got
    }

    #[test]
    fn a_line_keeps_the_stamp_it_began_with() {
        let got = cut(&[(b"a\nb", 1), (b"c\n", 2), (b"", 3), (b"d", 4), (b"", 5)]);
        assert_eq!(
            got,
            [
                (Some(1), b"a\n".to_vec(), true),
                (Some(1), b"bc\n".to_vec(), true),
                (Some(4), b"d".to_vec(), true)
            ]
        );
    }

    #[test]
    fn a_line_without_end_is_cut_at_max_line() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let got = cut(&[(&long, 1), (b"\n", 2), (b"y\n", 3)]);
        let shape: Vec<(usize, bool)> = got.iter().map(|(_, l, s)| (l.len(), *s)).collect();
        assert_eq!(
            shape,
            [(MAX_LINE, true), (MAX_LINE, false), (11, false), (2, true)]
        );
        assert!(got.iter().take(3).all(|(t, _, _)| *t == Some(1)));
    }

    #[test]
    fn a_cut_falls_between_characters() {
        // 65,535 ASCII bytes, then a 2-byte character across the limit.
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.extend_from_slice("é\n".as_bytes());
        let got = cut(&[(&line, 1)]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.len(), MAX_LINE - 1);
        assert_eq!(got[1].1, "é\n".as_bytes());
        assert!(std::str::from_utf8(&got[0].1).is_ok());
    }

    #[test]
    fn the_offset_is_taken_against_the_midpoint() {
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_000_000);
        let t1 = t0 + std::time::Duration::from_micros(400);
        let c = ClockOffset::measure(t0, Stamp(1_000_000 + 200 + 1_500), t1);
        assert_eq!(
            c,
            ClockOffset {
                offset_us: 1_500,
                within_us: 200
            }
        );
        assert_eq!(
            c.describe(),
            "server clock +1.500 ms from this client's (within 0.200 ms)"
        );
    }
}
