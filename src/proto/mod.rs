//! The native remote-execution protocol `switchboard/1` (PROTOCOL.md §3):
//! [`frame`] is the pure codec, [`message`] the typed frames, [`auth`] the
//! HMAC handshake's cryptography and the shared token, [`writer`] the
//! vectored write half.

pub mod auth;
pub mod frame;
pub mod jobs;
pub mod message;
pub mod transfer;
pub mod writer;

pub use frame::{Frame, FrameCodec, FrameError};
pub use message::{
    AuthRequest, ClientMsg, Command, ErrorCode, ExecRequest, ExitStatus, OutputOptions, ParseError,
    PtyRequest, ServerMsg,
};
pub use writer::FrameWriter;

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;
