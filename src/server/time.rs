//! The UDP time service (PROTOCOL.md §2): a `strftime` format in, the
//! server's current time out. The formatting itself is [`crate::timefmt`];
//! this file only picks the clock and the zone name.

use chrono::{Local, Utc};

use crate::timefmt;

/// Writes the reply to `payload` at the current time (local or UTC) into
/// `reply`; returns true when it is an error reply.
pub fn reply_now(payload: &[u8], utc: bool, cap: usize, reply: &mut Vec<u8>) -> bool {
    let answer = if utc {
        timefmt::answer(payload, &Utc::now(), None, cap)
    } else {
        let now = Local::now();
        // Only ask the C library for the zone name when %Z is used.
        let zone = if payload.windows(2).any(|w| w == b"%Z") {
            crate::sys::local_zone_abbreviation(now.timestamp())
        } else {
            None
        };
        timefmt::answer(payload, &now, zone.as_deref(), cap)
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
    fn local_zone_name_is_the_c_librarys() {
        let mut reply = Vec::new();
        assert!(!reply_now(b"%Z", false, 1024, &mut reply));
        let name = String::from_utf8(reply).unwrap();
        let want = crate::sys::local_zone_abbreviation(Local::now().timestamp()).unwrap();
        assert_eq!(name, want);
        assert!(!name.contains(':'), "a zone name, not an offset: {name}");
    }
}
