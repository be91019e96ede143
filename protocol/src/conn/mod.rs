//! A framed vhost-user connection over a Unix stream socket (checklist 1.1, 1.4).
//!
//! It sends a message with its fds attached to the `sendmsg` that carries the first header byte,
//! reads whole messages across partial reads, bounds the payload size and fd count before
//! allocating, closes fds it did not expect, and bounds every wait by a deadline. It applies no
//! protocol policy: it reports what arrived.
//!
//! The error type is in `error.rs`, the messages in `message.rs`, the sending half in
//! `send.rs` and the receiving half (whole messages, payload reads, waits) in `recv.rs`.

mod error;
mod message;
mod recv;
mod send;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub use error::ConnError;
pub use message::{Message, RawMessage};

/// Default payload bound. The largest payload the spec defines is GET_SHMEM_CONFIG's 2056
/// bytes; rust-vmm and crosvm cap at 4096 too (checklist 1.3).
pub const DEFAULT_MAX_PAYLOAD: u32 = 4096;
/// Default fd bound: SET_MEM_TABLE and the back-end channel carry at most 8 (checklist 1.3).
pub const DEFAULT_MAX_FDS: usize = 8;

/// A framed connection. Every receive waits at most `timeout` (None: forever), and so does a
/// send whose peer stops reading (no progress for `timeout`: [`ConnError::SendTimeout`]).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    timeout: Option<Duration>,
    max_payload: u32,
    max_fds: usize,
    /// Whether SO_RCVTIMEO holds `timeout`, so a blocking read is bounded by it.
    rcvtimeo_set: bool,
}

impl Connection {
    /// Wraps a connected stream with the default bounds and the given receive timeout.
    pub fn new(stream: UnixStream, timeout: Option<Duration>) -> Self {
        let mut conn = Self {
            stream,
            timeout,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_fds: DEFAULT_MAX_FDS,
            rcvtimeo_set: false,
        };
        conn.apply_timeout();
        conn
    }

    /// A connected pair, for tests.
    pub fn pair(timeout: Option<Duration>) -> std::io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a, timeout), Self::new(b, timeout)))
    }

    /// Sets the receive timeout (None: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        if timeout != self.timeout {
            self.timeout = timeout;
            self.apply_timeout();
        }
    }

    /// Whether the first read of a message may block in `recvmsg` itself, bounded by the
    /// socket's receive timeout (SO_RCVTIMEO, kept equal to `timeout`): saves a `poll` per
    /// message. Timeouts below a millisecond take the `poll` path, whose bound is exact.
    fn blocking_first_read(&self) -> bool {
        self.rcvtimeo_set && self.timeout.is_none_or(|t| t >= Duration::from_millis(1))
    }

    /// Sets SO_RCVTIMEO to the receive timeout (none: forever). If that fails, every read
    /// polls first, as the bound then rests on `poll` alone.
    fn apply_timeout(&mut self) {
        let t = self.timeout.filter(|t| !t.is_zero());
        self.rcvtimeo_set = self.stream.set_read_timeout(t).is_ok();
    }

    /// The receive timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the payload bound checked before any payload is read.
    pub fn set_max_payload(&mut self, max: u32) {
        self.max_payload = max;
    }

    /// Sets how many fds one message may carry.
    pub fn set_max_fds(&mut self, max: usize) {
        self.max_fds = max;
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Consumes the connection, returning the stream.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
