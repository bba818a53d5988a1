//! The frame codec of `switchboard/1` (PROTOCOL.md §3.1), pure: it turns
//! bytes into frames and frames into bytes and never touches a socket.
//!
//! ```text
//! +------------------+--------------------------+---------------------+
//! | H: u32, big-end. | header: H bytes           | body: S bytes       |
//! |                  | UTF-8 JSON object         | S = header["size"]  |
//! +------------------+--------------------------+---------------------+
//! ```
//!
//! Like tokio-util's `length_delimited`, decoding is a two-state machine:
//! `Head` waits for the 4-byte length and the header (H is checked before a
//! byte of the header is reserved), `Body` waits for S bytes (S is checked,
//! from the parsed header, before the body is reserved). A broken limit or
//! a malformed header is an error; the caller answers `protocol` and closes.

use std::collections::HashSet;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest header: 64 KiB.
pub const DEFAULT_MAX_HEADER: usize = 65_536;
/// Default largest body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Recommended chunk for streams split into frames.
pub const CHUNK: usize = 64 * 1024;
/// JSON nesting deeper than this is refused.
pub const MAX_DEPTH: usize = 128;

/// A decoded header: a JSON object.
pub type Header = Map<String, Value>;

/// One frame: a JSON object header (with a string `type`) and a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Map<String, Value>,
    pub body: Bytes,
}

impl Frame {
    /// The header's `type`. Decoded frames always have one.
    pub fn kind(&self) -> &str {
        self.header
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("header length {0} outside 1..={1}")]
    HeaderLength(usize, usize),
    #[error("body size {0} over the limit of {1}")]
    BodySize(u64, usize),
    #[error("header is not a UTF-8 JSON object: {0}")]
    BadHeader(String),
    #[error("header has no string \"type\"")]
    NoType,
    #[error("header \"size\" is not a non-negative integer")]
    BadSize,
    #[error("frame too large to send: {0}")]
    TooLarge(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy)]
enum State {
    Head,
    Body(usize),
}

/// Decoder and encoder of frames with the receiver limits of §3.1.
#[derive(Debug)]
pub struct FrameCodec {
    max_header: usize,
    max_body: usize,
    state: State,
    pending: Option<Map<String, Value>>,
    decoded: u64,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_HEADER, DEFAULT_MAX_BODY)
    }
}

impl FrameCodec {
    /// A codec refusing headers over `max_header` bytes and bodies over
    /// `max_body` bytes (defaults: 65,536 and 1 MiB).
    pub fn new(max_header: usize, max_body: usize) -> Self {
        FrameCodec {
            max_header,
            max_body,
            state: State::Head,
            pending: None,
            decoded: 0,
        }
    }

    /// Frames decoded so far: lets a caller tell a frame that stays
    /// incomplete from a stream of frames that keep completing.
    pub fn frames_decoded(&self) -> u64 {
        self.decoded
    }

    fn decode_head(&mut self, src: &mut BytesMut) -> Result<Option<(Header, usize)>, FrameError> {
        let Some(len_bytes) = src.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(len_bytes);
        let h = u32::from_be_bytes(len) as usize;
        if h == 0 || h > self.max_header {
            return Err(FrameError::HeaderLength(h, self.max_header));
        }
        if src.len() < 4 + h {
            // Reserve only what the checked length needs.
            src.reserve(4 + h - src.len());
            return Ok(None);
        }
        src.advance(4);
        let raw = src.split_to(h);
        let header = parse_header(&raw)?;
        let size = match header.get("size") {
            None => 0,
            Some(v) => v.as_u64().ok_or(FrameError::BadSize)?,
        };
        if size > self.max_body as u64 {
            return Err(FrameError::BodySize(size, self.max_body));
        }
        Ok(Some((header, size as usize)))
    }
}

/// Parses and checks a header: UTF-8, a JSON object without duplicate keys
/// at any depth, nesting at most [`MAX_DEPTH`], a string `type`.
pub fn parse_header(raw: &[u8]) -> Result<Map<String, Value>, FrameError> {
    let text = std::str::from_utf8(raw).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de
        .deserialize_any(CheckedValue { depth: 0 })
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(FrameError::BadHeader("not an object".into()));
    };
    if !map.get("type").is_some_and(Value::is_string) {
        return Err(FrameError::NoType);
    }
    Ok(map)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            match self.state {
                State::Head => match self.decode_head(src)? {
                    None => return Ok(None),
                    Some((header, size)) => {
                        self.pending = Some(header);
                        self.state = State::Body(size);
                    }
                },
                State::Body(size) => {
                    if src.len() < size {
                        src.reserve(size - src.len());
                        return Ok(None);
                    }
                    let body = src.split_to(size).freeze();
                    self.state = State::Head;
                    self.decoded += 1;
                    let header = self.pending.take().unwrap_or_default();
                    return Ok(Some(Frame { header, body }));
                }
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(frame.body.len());
        self.encode_head(frame.header, frame.body.len(), dst)?;
        dst.put_slice(&frame.body);
        Ok(())
    }
}

impl FrameCodec {
    /// Appends a frame's length and header, for a body of `body_len` bytes
    /// that the caller sends right after it (a writer that keeps bodies
    /// out of its buffer: [`super::writer`]).
    pub fn encode_head(
        &self,
        mut header: Map<String, Value>,
        body_len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        if body_len == 0 {
            header.remove("size");
        } else {
            header.insert("size".into(), Value::from(body_len as u64));
        }
        let json = serde_json::to_vec(&header).map_err(|e| FrameError::TooLarge(e.to_string()))?;
        if json.is_empty() || json.len() > self.max_header {
            return Err(FrameError::TooLarge(format!(
                "header of {} bytes",
                json.len()
            )));
        }
        if body_len > self.max_body {
            return Err(FrameError::TooLarge(format!("body of {body_len} bytes")));
        }
        dst.reserve(4 + json.len());
        dst.put_u32(json.len() as u32);
        dst.put_slice(&json);
        Ok(())
    }
}

/// Builds a `serde_json::Value`, refusing duplicate object keys and nesting
/// deeper than [`MAX_DEPTH`] (serde_json's own recursion limit is the
/// backstop).
struct CheckedValue {
    depth: usize,
}

impl CheckedValue {
    fn nested<E: de::Error>(&self) -> Result<CheckedValue, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(CheckedValue {
            depth: self.depth + 1,
        })
    }
}

impl<'de> de::DeserializeSeed<'de> for CheckedValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CheckedValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.nested()?)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let v = map.next_value_seed(self.nested()?)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(header: Value, body: &[u8]) -> Frame {
        let Value::Object(header) = header else {
            panic!()
        };
        Frame {
            header,
            body: Bytes::copy_from_slice(body),
        }
    }

    fn encode(f: Frame) -> BytesMut {
        let mut out = BytesMut::new();
        FrameCodec::default().encode(f, &mut out).unwrap();
        out
    }

    fn raw(header: &str, body: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(body);
        v
    }

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn one_frame_split_over_many_reads() {
        let bytes = encode(frame(json!({"type":"stdout","id":1}), b"hello world"));
        for step in [1, 2, 3, 5, 7] {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                buf.extend_from_slice(chunk);
                got.extend(decode_all(&mut codec, &mut buf).unwrap());
            }
            assert_eq!(got.len(), 1, "step {step}");
            assert_eq!(got[0].kind(), "stdout");
            assert_eq!(&got[0].body[..], b"hello world");
            assert_eq!(got[0].header["size"], 11);
        }
    }

    #[test]
    fn many_frames_in_one_read() {
        let mut buf = BytesMut::new();
        for i in 0..50u64 {
            buf.extend_from_slice(&encode(frame(
                json!({"type":"stdin","id":i}),
                format!("{i}").as_bytes(),
            )));
            buf.extend_from_slice(&encode(frame(json!({"type":"ping"}), b"")));
        }
        let frames = decode_all(&mut FrameCodec::default(), &mut buf).unwrap();
        assert_eq!(frames.len(), 100);
        assert_eq!(&frames[98].body[..], b"49");
        assert_eq!(frames[99].kind(), "ping");
        assert!(buf.is_empty());
    }

    #[test]
    fn limits_are_checked_before_reserving() {
        let mut codec = FrameCodec::new(100, 10);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::HeaderLength(_, 100))
        ));
        assert!(buf.capacity() < 1024, "nothing reserved for a huge length");

        let mut buf = BytesMut::from(&0u32.to_be_bytes()[..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(FrameError::HeaderLength(0, _))
        ));

        let mut buf = BytesMut::from(&raw(r#"{"type":"stdin","size":11}"#, b"")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::BodySize(11, 10))
        ));

        let mut buf = BytesMut::from(&raw(r#"{"type":"stdin","size":10}"#, b"0123456789")[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().body.len(), 10);
    }

    #[test]
    fn eof_mid_frame_leaves_an_incomplete_frame() {
        let bytes = encode(frame(json!({"type":"stdout","id":1}), b"body"));
        // Mid-length, mid-header, mid-body: never a frame.
        for cut in [2, 8, bytes.len() - 1] {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut {cut}");
            // decode_eof reports the leftover bytes as an error.
            assert!(codec.decode_eof(&mut buf).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn malformed_headers_are_errors() {
        let deep = format!(
            "{{\"type\":\"x\",\"a\":{}1{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        for h in [
            "not json",
            "[1,2]",
            "\"type\"",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"a","type":"b"}"#,
            r#"{"type":"a","x":{"k":1,"k":2}}"#,
            r#"{"type":"a","size":-1}"#,
            r#"{"type":"a","size":1.5}"#,
            r#"{"type":"a","size":"3"}"#,
            r#"{"type":"a"} trailing"#,
            deep.as_str(),
        ] {
            let mut buf = BytesMut::from(&raw(h, b"")[..]);
            assert!(
                FrameCodec::default().decode(&mut buf).is_err(),
                "{h} should be refused"
            );
        }
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0xff, 0xfe][..]);
        assert!(FrameCodec::default().decode(&mut buf).is_err());
        // Unknown fields are fine.
        let mut buf = BytesMut::from(&raw(r#"{"type":"ping","future":{"x":[1]}}"#, b"")[..]);
        assert_eq!(
            FrameCodec::default()
                .decode(&mut buf)
                .unwrap()
                .unwrap()
                .kind(),
            "ping"
        );
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #[test]
        fn round_trip(id in 0u64..1_000_000, body in proptest::collection::vec(proptest::num::u8::ANY, 0..3000), split in 1usize..64) {
            let f = frame(json!({"type":"stdout","id":id,"extra":"é"}), &body);
            let bytes = encode(f.clone());
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                buf.extend_from_slice(chunk);
                got.extend(decode_all(&mut codec, &mut buf).unwrap());
            }
            proptest::prop_assert_eq!(got.len(), 1);
            proptest::prop_assert_eq!(&got[0].body[..], &body[..]);
            proptest::prop_assert_eq!(&got[0].header["id"], &json!(id));
        }

        /// Structure-aware fuzzing on stable: frames with plausible headers
        /// (known and unknown types, fields of every JSON type), bodies,
        /// random byte flips and random read boundaries. Decoding and
        /// message parsing must never panic, and a stream that decodes
        /// cleanly must yield exactly the frames that were sent.
        #[test]
        fn mutated_frame_streams_never_panic(
            frames in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["auth", "exec", "stdin", "eof", "signal", "ping", "hello", "ready", "started", "stdout", "stderr", "exit", "error", "pong", "bogus"]),
                    proptest::collection::vec(
                        (
                            proptest::sample::select(vec!["id", "cmd", "argv", "env", "cwd", "stdin", "timeout_ms", "signal", "version", "nonce", "mac", "code", "pid", "auth", "x"]),
                            proptest::prop_oneof![
                                proptest::num::i64::ANY.prop_map(Value::from),
                                proptest::num::u64::ANY.prop_map(Value::from),
                                ".{0,8}".prop_map(Value::from),
                                proptest::bool::ANY.prop_map(Value::from),
                                proptest::collection::vec(".{0,4}", 0..3).prop_map(|v| json!(v)),
                                proptest::collection::btree_map(".{0,4}", ".{0,4}", 0..3).prop_map(|m| json!(m)),
                                proptest::strategy::Just(Value::Null),
                            ],
                        ),
                        0..6,
                    ),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                ),
                1..6,
            ),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            splits in proptest::collection::vec(1usize..200, 1..10),
        ) {
            let mut bytes = BytesMut::new();
            let mut sent = Vec::new();
            for (kind, fields, body) in &frames {
                let mut h = Map::new();
                for (k, v) in fields {
                    h.insert((*k).to_string(), v.clone());
                }
                h.insert("type".into(), Value::from(*kind));
                let f = Frame { header: h, body: Bytes::copy_from_slice(body) };
                FrameCodec::new(DEFAULT_MAX_HEADER, DEFAULT_MAX_BODY).encode(f.clone(), &mut bytes).unwrap();
                sent.push(f);
            }
            let clean = flips.is_empty();
            for (at, x) in &flips {
                let n = bytes.len();
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= x | 1;
                }
            }
            let mut codec = FrameCodec::new(4096, 4096);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            let mut i = 0;
            'feed: while !rest.is_empty() {
                let n = splits[i % splits.len()].min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => {
                            let _ = crate::proto::message::ClientMsg::parse(f.clone());
                            let _ = crate::proto::message::ServerMsg::parse(f.clone());
                            got.push(f);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
            if clean {
                proptest::prop_assert_eq!(got.len(), sent.len());
                for (g, s) in got.iter().zip(&sent) {
                    proptest::prop_assert_eq!(&g.body, &s.body);
                    proptest::prop_assert_eq!(g.kind(), s.kind());
                }
            }
        }

        /// The fuzz harness on stable: arbitrary bytes never panic, never
        /// make the decoder reserve past its limits.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut codec = FrameCodec::new(256, 256);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                let _ = crate::proto::message::ClientMsg::parse(f);
            }
            proptest::prop_assert!(buf.capacity() <= 4096);
        }
    }
}
