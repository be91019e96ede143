//! The vhost-user wire protocol, written independently for the vhu-conform harness.
//!
//! Two layers, dependencies pointing down:
//! - [`wire`]: message codes, the 12-byte header, payload layouts, feature bits and syntax-only
//!   validation (spec "Message types" and "Message specification"). No I/O.
//! - [`conn`]: a framed Unix stream connection that carries messages with file descriptors
//!   (SCM_RIGHTS), bounds what it accepts and times out. No policy.
//!
//! The crate shares no code with any other vhost-user implementation on purpose: a harness that
//! shares code with the thing it tests cannot see their shared bugs. It can also send malformed
//! messages on purpose ([`conn::Connection::send_raw`]).

pub mod conn;
pub mod virtio;
pub mod wire;

pub use conn::{ConnError, Connection, Message, RawMessage};
pub use wire::{
    BackendReq, FrontendReq, Header, HeaderFlags, ProtocolFeatures, Violation, VirtioFeatures,
    WireError,
};
