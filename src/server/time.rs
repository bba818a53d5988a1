//! The UDP time service (PROTOCOL.md §2): a `strftime` format in, the
//! server's current time out. The formatting itself is [`crate::timefmt`];
//! this file only picks the clock and the zone: local time is the C
//! library's (offset and name from one `localtime_r`), so the reply agrees
//! with `date` under any `TZ` and never mixes two zones.

use chrono::{DateTime, FixedOffset, Utc};

use crate::timefmt;

/// Writes the reply to `payload` at the current time (local or UTC) into
/// `reply`; returns true when it is an error reply.
pub fn reply_now(payload: &[u8], utc: bool, cap: usize, reply: &mut Vec<u8>) -> bool {
    let now = Utc::now();
    let local = (!utc)
        .then(|| crate::sys::local_zone(now.timestamp()))
        .flatten()
        .and_then(|(offset, name)| Some((FixedOffset::east_opt(offset)?, name)));
    let answer = match local {
        Some((offset, name)) => {
            let now: DateTime<FixedOffset> = now.with_timezone(&offset);
            timefmt::answer(payload, &now, Some(&name), cap)
        }
        // UTC asked for, or the C library could not say (a time_t out of
        // its range): UTC, labelled as such.
        None => timefmt::answer(payload, &now, None, cap),
    };
    match answer {
        Ok(s) => {
            reply.extend_from_slice(s.as_bytes());
            false
        }
        Err(e) => {
            reply.extend_from_slice(&timefmt::error_reply(&e, cap));
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_zone_is_the_c_librarys() {
        let mut reply = Vec::new();
        assert!(!reply_now(b"%z %Z", false, 1024, &mut reply));
        let reply = String::from_utf8(reply).unwrap();
        let (offset, name) = crate::sys::local_zone(Utc::now().timestamp()).unwrap();
        let sign = if offset < 0 { '-' } else { '+' };
        let (h, m) = (offset.abs() / 3600, offset.abs() % 3600 / 60);
        assert_eq!(reply, format!("{sign}{h:02}{m:02} {name}"));
        assert!(!name.contains(':'), "a zone name, not an offset: {name}");
    }
}
