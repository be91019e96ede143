//! The one place the engine, the built-ins and the fuzzer's oracle open a session and size its
//! guest memory, so every scenario drives a back-end the same way.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhu_mock_frontend::{GuestMemory, RegionSpec, Session, SessionOptions};
use vhu_protocol::Connection;

/// Guest memory of every session the harness drives, whatever the layout: big enough for 256-entry
/// rings and their buffers in either region of the default layout, small enough that a memfd per
/// scenario (or fuzz case) costs nothing (pages are touched only where rings and buffers go).
pub const GUEST_MEMORY_BYTES: u64 = 16 << 20;

/// A session on a connected stream whose every wait (a reply, a send) is bounded by `timeout`,
/// with NEED_REPLY set on ack-only requests once REPLY_ACK is negotiated.
pub fn open(stream: UnixStream, timeout: Duration) -> Session {
    let opts = SessionOptions {
        reply_timeout: timeout,
        auto_need_reply: true,
    };
    Session::new(Connection::new(stream, Some(timeout)), opts)
}

/// The default two-region layout of [`GUEST_MEMORY_BYTES`].
pub fn default_layout() -> Vec<RegionSpec> {
    GuestMemory::default_layout(GUEST_MEMORY_BYTES)
}

/// One region of [`GUEST_MEMORY_BYTES`].
pub fn single_layout() -> Vec<RegionSpec> {
    GuestMemory::single_layout(GUEST_MEMORY_BYTES)
}
