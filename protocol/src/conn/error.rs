//! The connection layer's error type, [`ConnError`], and how to tell a peer gone or a
//! timeout from a protocol error.

use std::time::Duration;

use nix::errno::Errno;
use thiserror::Error;

use super::Message;
use crate::wire::{Header, HeaderFlags};

/// Errors of the connection layer.
#[derive(Debug, Error)]
pub enum ConnError {
    /// The message's version bits are not 1 (R-WIRE-03). The whole message was consumed.
    #[error("message has version {}, not 1 (header {header:?})", HeaderFlags::from_bits_retain(header.flags).version())]
    BadVersion {
        /// The header received.
        header: Header,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        source: Errno,
    },
    /// The header announces more payload than allowed; the payload was not read, so the stream
    /// is out of step and should be closed.
    #[error("payload of {} bytes exceeds the bound of {max} (header {header:?})", header.size)]
    OversizedPayload {
        /// The header received.
        header: Header,
        /// The bound.
        max: u32,
    },
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer closed the connection in the middle of a message.
    #[error("peer closed the connection after {got} of {wanted} bytes of the {part}")]
    ShortRead {
        /// Header or payload.
        part: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        wanted: usize,
    },
    /// The peer stopped reading: no byte of the message could be sent for the whole timeout
    /// (its receive buffer stayed full). The stream is out of step if `sent` is not 0.
    #[error(
        "timed out after {waited:?} with {sent} of {total} bytes of a message sent (the peer does not read)"
    )]
    SendTimeout {
        /// How long it waited without progress.
        waited: Duration,
        /// Bytes of the message sent by then.
        sent: usize,
        /// Bytes of the message.
        total: usize,
    },
    /// No (complete) message arrived before the deadline.
    #[error("timed out after {waited:?} with {got} bytes of a message received")]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// Bytes of the message received by then.
        got: usize,
    },
    /// More fds arrived than allowed; all of them were closed.
    #[error("{got} fds arrived, at most {max} allowed{}", if *truncated { " (kernel truncated the rest)" } else { "" })]
    TooManyFds {
        /// fds received (before the kernel's truncation, if any).
        got: usize,
        /// The bound.
        max: usize,
        /// Whether the kernel dropped surplus fds (MSG_CTRUNC).
        truncated: bool,
        /// The header of the message they came with.
        header: Header,
    },
    /// A message arrived that is not the reply to the request sent (wrong code, or no REPLY
    /// flag). The whole message was consumed and is returned.
    #[error("expected a reply to request {expected}, got request {} with flags {:#x}", message.header.request, message.header.flags)]
    UnexpectedReply {
        /// The request code the reply should carry.
        expected: u32,
        /// What arrived instead.
        message: Box<Message>,
    },
}

impl ConnError {
    /// Whether the peer is gone (closed, reset or broken pipe), as opposed to a protocol error.
    pub fn is_peer_gone(&self) -> bool {
        match self {
            Self::PeerClosed | Self::ShortRead { .. } => true,
            Self::Io { source, .. } => {
                matches!(source, Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN)
            }
            _ => false,
        }
    }

    /// Whether the error is a timeout (of a receive, or of a send the peer does not read).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::SendTimeout { .. })
    }
}
