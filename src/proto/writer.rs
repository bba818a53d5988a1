//! The write half of a `switchboard/1` connection: frames queued, then
//! written with vectored writes.
//!
//! tokio-util's `FramedWrite` copies every frame, body included, into one
//! buffer before the socket copies it again. Output and file data travel
//! in bodies of up to 256 KiB, so that copy is a large share of a stream's
//! cost. Here the lengths and headers go into a small buffer and a large
//! body stays the `Bytes` it came in, written in place by `writev`:
//!
//! ```text
//! segments:  [len|hdr|len|hdr|small body|len|hdr] [large body] [len|hdr] ...
//!             '------------- copied -------------' '- as is --' '-------'
//! ```
//!
//! A TLS stream takes one segment per write (it copies into records
//! anyway); plain TCP takes up to [`MAX_IOV`] per `writev`.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, FrameCodec, FrameError};

/// Bodies of at least this many bytes are written in place; smaller ones
/// are copied next to their header (an iovec per tiny body costs more).
const IN_PLACE: usize = 8 * 1024;
/// Segments per `writev` (Linux takes 1,024; a few dozen cover the queue).
const MAX_IOV: usize = 64;
/// [`FrameWriter::feed`] writes out once this much is queued, as
/// `FramedWrite`'s backpressure boundary does, so a caller feeding a long
/// stream does not grow the queue without bound.
const HIGH_WATER: usize = 1024 * 1024;

/// Frames queued for one connection's write half, written vectored.
pub struct FrameWriter<W> {
    io: W,
    codec: FrameCodec,
    /// Sealed segments, in order.
    segs: VecDeque<Bytes>,
    /// Headers (and small bodies) not yet sealed into a segment.
    head: BytesMut,
    /// Bytes in `segs` and `head`.
    queued: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer refusing to send what `codec`'s limits refuse to receive.
    pub fn new(io: W, codec: FrameCodec) -> Self {
        FrameWriter {
            io,
            codec,
            segs: VecDeque::new(),
            head: BytesMut::new(),
            queued: 0,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues a frame without writing it (no I/O).
    pub fn push(&mut self, frame: Frame) -> Result<(), FrameError> {
        let before = self.head.len();
        self.codec
            .encode_head(frame.header, frame.body.len(), &mut self.head)?;
        self.queued += self.head.len() - before + frame.body.len();
        if frame.body.len() < IN_PLACE {
            self.head.put_slice(&frame.body);
        } else {
            self.seal();
            self.segs.push_back(frame.body);
        }
        Ok(())
    }

    /// Queues a frame, writing out first what is queued past the high
    /// water mark.
    pub async fn feed(&mut self, frame: Frame) -> Result<(), FrameError> {
        self.push(frame)?;
        if self.queued >= HIGH_WATER {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Queues a frame and flushes everything queued.
    pub async fn send(&mut self, frame: Frame) -> Result<(), FrameError> {
        self.push(frame)?;
        self.flush().await
    }

    /// Writes everything queued and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.write_out().await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Flushes, then shuts the write direction down (a FIN; TLS: its
    /// close_notify first).
    pub async fn close(&mut self) -> Result<(), FrameError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    fn seal(&mut self) {
        if !self.head.is_empty() {
            self.segs.push_back(self.head.split().freeze());
        }
    }

    async fn write_out(&mut self) -> Result<(), FrameError> {
        self.seal();
        while !self.segs.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                for (slot, seg) in slices.iter_mut().zip(&self.segs) {
                    *slot = IoSlice::new(seg);
                    k += 1;
                }
                self.io
                    .write_vectored(slices.get(..k).unwrap_or_default())
                    .await?
            };
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.advance(n);
        }
        Ok(())
    }

    /// Drops `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued = self.queued.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.segs.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::{Value, json};
    use tokio_util::codec::FramedRead;

    fn frame(kind: &str, body: Vec<u8>) -> Frame {
        let Value::Object(header) = json!({"type": kind}) else {
            unreachable!()
        };
        Frame {
            header,
            body: Bytes::from(body),
        }
    }

    /// Frames of every size class, through a pipe that takes a few bytes
    /// per write (so every partial-write path is taken), decode as sent.
    #[tokio::test]
    async fn frames_survive_short_writes() {
        let (a, b) = tokio::io::duplex(7);
        let mut w = FrameWriter::new(a, FrameCodec::default());
        let sizes = [0, 1, IN_PLACE - 1, IN_PLACE, 100_000, 3, 300_000];
        let sent: Vec<Frame> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                frame(
                    &format!("t{i}"),
                    (0..n).map(|j| (j * 7 + i) as u8).collect(),
                )
            })
            .collect();
        let reader = tokio::spawn(async move {
            FramedRead::new(b, FrameCodec::default())
                .map(|f| f.map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
                .await
        });
        for f in sent.clone() {
            w.feed(f).await.unwrap();
        }
        w.close().await.unwrap();
        assert_eq!(w.queued(), 0);
        let got: Vec<Frame> = reader
            .await
            .unwrap()
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(g.kind(), s.kind());
            assert_eq!(g.body, s.body);
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_before_a_byte_is_queued() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = FrameWriter::new(a, FrameCodec::new(1024, 10));
        assert!(w.push(frame("x", vec![0; 11])).is_err());
        assert_eq!(w.queued(), 0);
    }
}
