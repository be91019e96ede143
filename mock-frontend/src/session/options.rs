//! How a session behaves, and what an ack-only request comes back with.

use std::time::Duration;

/// How the session behaves.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// How long to wait for each reply.
    pub reply_timeout: Duration,
    /// Set NEED_REPLY on ack-only requests once REPLY_ACK is negotiated (as QEMU does).
    pub auto_need_reply: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            reply_timeout: Duration::from_secs(2),
            auto_need_reply: true,
        }
    }
}

/// The outcome of an ack-only request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// No ack was asked for.
    NotRequested,
    /// Acked 0: success.
    Ok,
    /// Acked non-zero: the back-end reports failure.
    Failed(u64),
}
