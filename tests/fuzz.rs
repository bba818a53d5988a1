//! Fuzz harnesses on stable Rust (see fuzz/README.md): the committed seed
//! corpus, mutated by proptest, through the frame decoder + message parser
//! and through the time service's strftime path.

use std::path::Path;

use bytes::BytesMut;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use switchboard::proto::{ClientMsg, FrameCodec, ServerMsg};
use switchboard::timefmt;
use tokio_util::codec::Decoder;

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(s, i)| Mutation::Splice(s, i)),
    ]
}

fn mutate(seeds: &[Vec<u8>], pick: usize, muts: &[Mutation]) -> Vec<u8> {
    let mut data = seeds[pick % seeds.len()].clone();
    for m in muts {
        let n = data.len().max(1);
        match m {
            Mutation::Flip(i, x) => {
                if let Some(b) = data.get_mut(i % n) {
                    *b ^= x;
                }
            }
            Mutation::Truncate(i) => data.truncate(i % n),
            Mutation::Insert(i, bytes) => {
                let at = (i % n).min(data.len());
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Splice(s, i) => {
                let other = &seeds[s % seeds.len()];
                let at = (i % n).min(data.len());
                data.truncate(at);
                data.extend_from_slice(other);
            }
        }
    }
    data
}

/// Decodes everything in `data`, split at `step` bytes per read, parsing
/// each frame both ways. Never panics; never reserves past the limits.
fn decode_all(data: &[u8], step: usize) {
    let mut codec = FrameCodec::new(4096, 64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = ClientMsg::parse(frame.clone());
                    let _ = ServerMsg::parse(frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            buf.capacity() <= 64 * 1024 + 4096 + 8192,
            "reserved {}",
            buf.capacity()
        );
    }
    let _ = codec.decode_eof(&mut buf);
}

fn format_all(payload: &[u8], cap: usize) {
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 7, 1, 0).single().unwrap();
    let reply = timefmt::respond(payload, &now, cap);
    assert!(reply.len() <= cap);
    assert!(std::str::from_utf8(&reply).is_ok());
}

#[test]
fn every_seed_never_panics_as_is() {
    let frames = corpus("frames");
    assert!(frames.len() >= 20);
    for seed in &frames {
        for step in [1, 3, 4096] {
            decode_all(seed, step);
        }
    }
    let formats = corpus("timefmt");
    assert!(formats.len() >= 10);
    for seed in &formats {
        format_all(seed, timefmt::DEFAULT_REPLY_CAP);
        format_all(seed, timefmt::MIN_REPLY_CAP);
    }
}

proptest! {
    #[test]
    fn mutated_frame_seeds_never_panic(pick in any::<usize>(), muts in proptest::collection::vec(mutation(), 0..6), step in 1usize..300) {
        let seeds = corpus("frames");
        decode_all(&mutate(&seeds, pick, &muts), step);
    }

    #[test]
    fn mutated_time_formats_never_panic(pick in any::<usize>(), muts in proptest::collection::vec(mutation(), 0..6), cap in 64usize..2048) {
        let seeds = corpus("timefmt");
        format_all(&mutate(&seeds, pick, &muts), cap);
    }
}
