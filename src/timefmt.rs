//! The time service's pure core: a `strftime` format in, a reply out.
//!
//! chrono's `DelayedFormat` panics through `to_string()` when a format is
//! invalid (chrono issues #956 and #1139: `%Q`, a trailing `%`, `%#z`), so the
//! format is first checked by our own scanner against the specifier list of
//! PROTOCOL.md §2 (so that the error can say *what* and *where*), then the
//! checked string is parsed by chrono's `StrftimeItems` (any `Item::Error` is
//! refused, belt and braces) and written item by item into a writer that
//! refuses to grow past the reply cap. Nothing here panics on any input and
//! nothing allocates more than the cap, however much the format would expand.
//!
//! The work per request is bounded as well as the reply: a format longer
//! than [`MAX_REQUEST`] is refused before it is looked at, and formatting
//! stops at the first item that would pass the cap (chrono's `Display`
//! for a format builds the whole result first, which for 32,753 `%c` was
//! ~800 KB and ~19 ms of CPU before the cap refused it).
//!
//! ```text
//! spec  = "%" [flag] conv
//! flag  = "-" | "_" | "0"         (numeric conversions only)
//! conv  = a A b B c d e H I j m M p S U w W x X y Y z Z %
//!         C D F g G h k l n P r R s t T u V
//! ```

use std::fmt;

use chrono::format::{Fixed, Item, StrftimeItems};
use chrono::{DateTime, TimeZone};

/// The format used for an empty request (the tutorial server's default).
pub const DEFAULT_FORMAT: &str = "%Y-%m-%d %X";

/// Default reply cap: the tutorial client's `recv(1024)` buffer.
pub const DEFAULT_REPLY_CAP: usize = 1024;

/// The largest payload a UDP datagram over IPv4 can carry; the cap may not exceed it.
pub const MAX_REPLY_CAP: usize = 65_507;

/// The longest format accepted, in bytes: no `strftime` format people use
/// comes near it, and it bounds the CPU a request can cost (with the
/// early stop, a few microseconds: docs/BENCHMARKS.md).
pub const MAX_REQUEST: usize = 1024;

/// The smallest cap accepted, so that every error message fits in a reply.
pub const MIN_REPLY_CAP: usize = 64;

/// Conversions that print a number and so accept a padding flag.
const NUMERIC: &[u8] = b"CdegGHIjklmMsSuUVwWyY";
/// Conversions that print text or a composite and take no flag.
const OTHER: &[u8] = b"aAbBcDFhnpPrRtTxXzZ%";

/// What is wrong with a time request. `at` is the 0-based byte offset of
/// the `%` that starts the offending specifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("format longer than {max} bytes")]
    RequestTooLong { max: usize },
    #[error("format is not valid UTF-8 (bad byte at byte {at})")]
    NotUtf8 { at: usize },
    #[error("unknown specifier {spec} at byte {at}")]
    Unknown { spec: String, at: usize },
    #[error("incomplete specifier {spec} at end of format (byte {at})")]
    Incomplete { spec: String, at: usize },
    #[error("unsupported flag '{flag}' in {spec} at byte {at}")]
    UnsupportedFlag { flag: char, spec: String, at: usize },
    #[error("field widths are not supported: {spec} at byte {at}")]
    Width { spec: String, at: usize },
    #[error("format rejected by the formatter")]
    Rejected,
    #[error("result longer than {cap} bytes")]
    TooLong { cap: usize },
}

/// Checks `format` against PROTOCOL.md §2's specifier list. Allocates
/// only to describe an error.
pub fn validate(format: &str) -> Result<(), FormatError> {
    let bytes = format.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let at = i;
        let mut j = i + 1;
        let flag = match bytes.get(j) {
            Some(&f @ (b'-' | b'_' | b'0' | b'^' | b'#')) => {
                j += 1;
                Some(f as char)
            }
            _ => None,
        };
        // `format` is a &str and `at`/`j` sit just after ASCII bytes, so
        // these slices are on char boundaries; `get` keeps that unprovable
        // fact from becoming a panic.
        let spec_so_far = || format.get(at..j).unwrap_or("%").to_string();
        let Some(conv) = format.get(j..).and_then(|rest| rest.chars().next()) else {
            return Err(FormatError::Incomplete {
                spec: spec_so_far(),
                at,
            });
        };
        if conv.is_ascii_digit() {
            let end = j + bytes
                .iter()
                .skip(j)
                .take_while(|b| b.is_ascii_digit())
                .count();
            let digits = format.get(at..end).unwrap_or("%");
            let spec = match format.get(end..).and_then(|rest| rest.chars().next()) {
                Some(c) => format!("{digits}{c}"),
                None => digits.to_string(),
            };
            return Err(FormatError::Width { spec, at });
        }
        let spec = || format!("{}{conv}", spec_so_far());
        let numeric = conv.is_ascii() && NUMERIC.contains(&(conv as u8));
        let other = conv.is_ascii() && OTHER.contains(&(conv as u8));
        if !numeric && !other {
            return Err(FormatError::Unknown { spec: spec(), at });
        }
        if let Some(flag) = flag
            && (!numeric || flag == '^' || flag == '#')
        {
            return Err(FormatError::UnsupportedFlag {
                flag,
                spec: spec(),
                at,
            });
        }
        i = j + conv.len_utf8();
    }
    Ok(())
}

/// Formats `now` with `format`, refusing results longer than `cap` bytes.
/// `zone` is what `%Z` prints; None leaves it to chrono (`UTC` for
/// `Utc`, the offset for a zone chrono cannot name).
pub fn format_time<Tz>(
    now: &DateTime<Tz>,
    format: &str,
    zone: Option<&str>,
    cap: usize,
) -> Result<String, FormatError>
where
    Tz: TimeZone,
    Tz::Offset: fmt::Display,
{
    let mut out = CappedString::new(cap);
    format_into(now, format, zone, &mut out)?;
    Ok(out.buf)
}

fn format_into<Tz>(
    now: &DateTime<Tz>,
    format: &str,
    zone: Option<&str>,
    out: &mut CappedString,
) -> Result<(), FormatError>
where
    Tz: TimeZone,
    Tz::Offset: fmt::Display,
{
    validate(format)?;
    let items = StrftimeItems::new(format).map(|item| match (item, zone) {
        (Item::Fixed(Fixed::TimezoneName), Some(zone)) => Item::Literal(zone),
        (item, _) => item,
    });
    // `write_to`, not `Display`: it writes item by item and stops at the
    // first write the cap refuses.
    match now.format_with_items(items).write_to(out) {
        Ok(()) => Ok(()),
        Err(_) if out.overflowed => Err(FormatError::TooLong { cap: out.cap }),
        Err(_) => Err(FormatError::Rejected),
    }
}

/// Every error reply starts with this.
pub const ERROR_PREFIX: &str = "error: ";

/// The service function: a request datagram in, the formatted time out.
/// An empty payload means [`DEFAULT_FORMAT`]; `zone` is as for [`format_time`].
pub fn answer<Tz>(
    payload: &[u8],
    now: &DateTime<Tz>,
    zone: Option<&str>,
    cap: usize,
) -> Result<String, FormatError>
where
    Tz: TimeZone,
    Tz::Offset: fmt::Display,
{
    if payload.len() > MAX_REQUEST {
        return Err(FormatError::RequestTooLong { max: MAX_REQUEST });
    }
    match std::str::from_utf8(payload) {
        Err(e) => Err(FormatError::NotUtf8 {
            at: e.valid_up_to(),
        }),
        Ok("") => format_time(now, DEFAULT_FORMAT, zone, cap),
        Ok(format) => format_time(now, format, zone, cap),
    }
}

/// The datagram for an error: `error: ` and the reason, cut to `cap` bytes
/// on a char boundary.
pub fn error_reply(e: &FormatError, cap: usize) -> Vec<u8> {
    let mut msg = format!("{ERROR_PREFIX}{e}");
    truncate_at_char(&mut msg, cap);
    msg.into_bytes()
}

/// [`answer`] as the reply datagram, errors included (`%Z` left to chrono).
pub fn respond<Tz>(payload: &[u8], now: &DateTime<Tz>, cap: usize) -> Vec<u8>
where
    Tz: TimeZone,
    Tz::Offset: fmt::Display,
{
    match answer(payload, now, None, cap) {
        Ok(s) => s.into_bytes(),
        Err(e) => error_reply(&e, cap),
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// A `fmt::Write` sink that fails instead of growing past `cap` bytes.
struct CappedString {
    buf: String,
    cap: usize,
    overflowed: bool,
    /// Writes offered, refused ones included: how the tests see the early stop.
    writes: usize,
}

impl CappedString {
    fn new(cap: usize) -> Self {
        CappedString {
            buf: String::new(),
            cap,
            overflowed: false,
            writes: 0,
        }
    }
}

impl fmt::Write for CappedString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.writes += 1;
        if self.buf.len().saturating_add(s.len()) > self.cap {
            self.overflowed = true;
            return Err(fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at() -> DateTime<Utc> {
        // 2001-02-03 04:05:06 UTC, a Saturday.
        Utc.with_ymd_and_hms(2001, 2, 3, 4, 5, 6).single().unwrap()
    }

    fn reply(payload: &[u8]) -> String {
        String::from_utf8(respond(payload, &at(), DEFAULT_REPLY_CAP)).unwrap()
    }

    #[test]
    fn formats_like_c_strftime() {
        assert_eq!(reply(b""), "2001-02-03 04:05:06");
        assert_eq!(reply(b"%Y %m %d"), "2001 02 03");
        assert_eq!(reply(b"%c"), "Sat Feb  3 04:05:06 2001");
        assert_eq!(
            reply(b"%x|%X|%D|%F|%T|%R|%r"),
            "02/03/01|04:05:06|02/03/01|2001-02-03|04:05:06|04:05|04:05:06 AM"
        );
        assert_eq!(reply(b"%a %A %b %B %h"), "Sat Saturday Feb February Feb");
        assert_eq!(reply(b"%e|%k|%l|%-d|%_m|%0e"), " 3| 4| 4|3| 2|03");
        assert_eq!(
            reply(b"%j %U %W %w %u %V %G %g %C %y"),
            "034 04 05 6 6 05 2001 01 20 01"
        );
        assert_eq!(reply(b"%p %P %z %Z %s"), "AM am +0000 UTC 981173106");
        assert_eq!(reply(b"100%% %n%t."), "100% \n\t.");
        assert_eq!(reply("时间 %H".as_bytes()), "时间 04");
    }

    #[test]
    fn bad_formats_get_error_replies() {
        let cases: &[(&[u8], &str)] = &[
            (b"%Q", "error: unknown specifier %Q at byte 0"),
            (
                b"ab %",
                "error: incomplete specifier % at end of format (byte 3)",
            ),
            (
                b"%-",
                "error: incomplete specifier %- at end of format (byte 0)",
            ),
            (b"x%#z", "error: unsupported flag '#' in %#z at byte 1"),
            (b"%^a", "error: unsupported flag '^' in %^a at byte 0"),
            (b"%-a", "error: unsupported flag '-' in %-a at byte 0"),
            (
                b"%10Y",
                "error: field widths are not supported: %10Y at byte 0",
            ),
            (b"%f", "error: unknown specifier %f at byte 0"),
            (b"%.3f", "error: unknown specifier %. at byte 0"),
            (b"%:z", "error: unknown specifier %: at byte 0"),
            (b"%+", "error: unknown specifier %+ at byte 0"),
            (b"%Ec", "error: unknown specifier %E at byte 0"),
            ("é%é".as_bytes(), "error: unknown specifier %é at byte 2"),
            (
                b"ok\xff",
                "error: format is not valid UTF-8 (bad byte at byte 2)",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                reply(input),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn replies_respect_the_cap() {
        let long = "%c".repeat(100);
        assert_eq!(
            reply(long.as_bytes()),
            "error: result longer than 1024 bytes"
        );
        let exact = "x".repeat(1024);
        assert_eq!(reply(exact.as_bytes()), exact);
        let r = respond(b"%c", &at(), MIN_REPLY_CAP);
        assert_eq!(r, b"Sat Feb  3 04:05:06 2001");
        let r = respond("%c".repeat(3).as_bytes(), &at(), MIN_REPLY_CAP);
        assert_eq!(r, b"error: result longer than 64 bytes");
    }

    #[test]
    fn requests_longer_than_the_limit_are_refused_unread() {
        let longest = "%%".repeat(MAX_REQUEST / 2);
        assert_eq!(reply(longest.as_bytes()), "%".repeat(MAX_REQUEST / 2));
        // Refused before validation: the bad byte and the bad specifier
        // past the limit are never looked at.
        let mut over = "x".repeat(MAX_REQUEST).into_bytes();
        over.extend_from_slice(b"\xff%Q");
        assert_eq!(reply(&over), "error: format longer than 1024 bytes");
        // The old worst case (a full datagram of %c) costs one comparison.
        let worst = "%c".repeat(32_753);
        let r = respond(worst.as_bytes(), &at(), MAX_REPLY_CAP);
        assert_eq!(r, b"error: format longer than 1024 bytes");
    }

    #[test]
    fn formatting_stops_at_the_first_item_past_the_cap() {
        // 512 `%c` expand to 12 KiB; with a 64-byte cap formatting ends
        // inside the third date, so the writer sees a few pieces of three
        // dates, not of 512.
        let format = "%c".repeat(MAX_REQUEST / 2);
        let mut full = CappedString::new(MAX_REPLY_CAP);
        assert_eq!(format_into(&at(), &format, None, &mut full), Ok(()));
        let mut out = CappedString::new(MIN_REPLY_CAP);
        let r = format_into(&at(), &format, None, &mut out);
        assert_eq!(r, Err(FormatError::TooLong { cap: MIN_REPLY_CAP }));
        assert!(
            out.writes * 100 < full.writes,
            "{} writes offered of {}",
            out.writes,
            full.writes
        );
        assert!(out.buf.len() <= MIN_REPLY_CAP);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_exceeds_cap(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200), cap in MIN_REPLY_CAP..2048usize) {
            let r = respond(&payload, &at(), cap);
            proptest::prop_assert!(r.len() <= cap);
            proptest::prop_assert!(std::str::from_utf8(&r).is_ok());
        }

        #[test]
        fn percent_heavy_formats_never_panic(s in "(%[-_0^#]?[a-zA-Z%:.+0-9#é]?|[a-z ]){0,40}") {
            let r = respond(s.as_bytes(), &at(), DEFAULT_REPLY_CAP);
            proptest::prop_assert!(r.len() <= DEFAULT_REPLY_CAP);
        }
    }
}
