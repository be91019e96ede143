//! The session's error type: why a request did not complete, and what is wrong with a reply.

use std::time::Duration;

use thiserror::Error;
use vhu_protocol::{FrontendReq, Message, Violation};

use crate::memory::MemoryError;

/// What is wrong with a reply. The texts say what happened and name no rule: the engine maps
/// each kind to the rule it breaks (one table, `src/engine/violations.rs` of vhu-conform).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplyViolation {
    /// A reply to an ack-only request that was sent without NEED_REPLY.
    #[error("an unrequested ack of request {code} that was sent without NEED_REPLY")]
    UnrequestedAck {
        /// The request code the ack carries.
        code: u32,
    },
    /// A reply carrying another request's code.
    #[error("reply carries request code {got}, not {want}")]
    WrongCode {
        /// The request code the reply carries.
        got: u32,
        /// The code of the request being answered.
        want: u32,
    },
    /// A message without the REPLY flag where a reply was due.
    #[error("message without the REPLY flag (flags {flags:#x})")]
    NoReplyFlag {
        /// The header flags of the message received.
        flags: u32,
    },
    /// Header version bits other than 1.
    #[error("version {} in flags {flags:#x}, not 1", flags & 3)]
    BadVersion {
        /// The header flags, whose bits 0-1 are the version.
        flags: u32,
    },
    /// A payload of the wrong size for an ack (`ack`) or a fixed-size reply.
    #[error("payload is {got} bytes, {} must be {want}", if *ack { "an ack" } else { "this reply" })]
    WrongSize {
        /// The payload size received.
        got: usize,
        /// The size the reply must have (8 for an ack).
        want: usize,
        /// Whether the reply is an ack (of an ack-only request).
        ack: bool,
    },
    /// A header announcing more payload than any message may carry.
    #[error("reply announces {size} payload bytes (bound {max})")]
    OversizedPayload {
        /// The payload size the header announces.
        size: u32,
        /// The connection's payload bound.
        max: u32,
    },
    /// More fds than any message may carry.
    #[error("reply carries {got} fds")]
    TooManyFds {
        /// The number of fds that came with the reply.
        got: usize,
    },
    /// GET_SHMEM_CONFIG's `nregions` does not count the non-zero sizes.
    #[error("reply payload: shmem nregions declares {declared} but {actual} are present")]
    ShmemConfigCount {
        /// The `nregions` the reply declares.
        declared: u64,
        /// How many of its sizes are non-zero.
        actual: u64,
    },
    /// A GET_SHMEM_CONFIG region size that is not a multiple of the page size.
    #[error("reply payload: shmem region {index} size {size:#x} is not a multiple of {page:#x}")]
    ShmemSizeUnaligned {
        /// The shmid of the region.
        index: usize,
        /// The size the reply gives it.
        size: u64,
        /// The host page size.
        page: u64,
    },
    /// A payload that breaks its layout (counts, reserved bits...): the validator's violation.
    #[error("reply payload: {0}")]
    BadPayload(Violation),
    /// GET_VRING_BASE's reply is not a vring state.
    #[error("not a vring state")]
    NotVringState,
    /// GET_INFLIGHT_FD's reply is not an inflight description.
    #[error("not an inflight description: {0}")]
    NotInflightDesc(String),
    /// GET_INFLIGHT_FD's reply carries other than one fd.
    #[error("{got} fds with the inflight area, not 1")]
    InflightFds {
        /// The number of fds that came with the reply.
        got: usize,
    },
    /// GET_INFLIGHT_FD's area is unusable (zero, wrapping, too large or small, past the fd).
    #[error("unusable inflight area: {0}")]
    UnusableInflight(String),
}

/// Why a request did not complete.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The back-end's reply breaks the wire rules (wrong code, flags, version or size).
    #[error("bad reply to {}: {reason}", during.spec_name())]
    BadReply {
        /// The request being answered.
        during: FrontendReq,
        /// What is wrong with the reply.
        reason: ReplyViolation,
        /// The reply as received.
        message: Box<Message>,
    },
    /// The back-end closed the connection.
    #[error("back-end closed the connection during {}", during.map_or("the session", FrontendReq::spec_name))]
    Closed {
        /// The request in flight, if any.
        during: Option<FrontendReq>,
    },
    /// A local resource failed: not the back-end's fault.
    #[error("{what}")]
    Local {
        /// What the harness was doing (the error's whole message).
        what: String,
        /// The I/O error the system reported.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory failed: not the back-end's fault.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// The back-end acked a request with a non-zero value.
    #[error("back-end acked {} with {value} (failure)", during.spec_name())]
    Nack {
        /// The request that was refused.
        during: FrontendReq,
        /// The non-zero value of the ack.
        value: u64,
    },
    /// No reply within the timeout.
    #[error("no reply to {} within {waited:?}", during.spec_name())]
    Timeout {
        /// The request whose reply is missing.
        during: FrontendReq,
        /// How long the reply was waited for.
        waited: Duration,
    },
    /// The back-end stopped reading: a message could not be sent whole, its socket buffer
    /// staying full for the whole timeout.
    #[error("the back-end does not read: {sent} of {total} bytes of {} sent, no progress for {waited:?}", during.map_or("a message", FrontendReq::spec_name))]
    Stalled {
        /// The request being sent, if known.
        during: Option<FrontendReq>,
        /// How long no byte could be sent.
        waited: Duration,
        /// Bytes of the message that did go out.
        sent: usize,
        /// Bytes of the whole message.
        total: usize,
    },
    /// A message arrived that nobody asked for.
    #[error("unexpected message from the back-end: code {} flags {:#x}", message.header.request, message.header.flags)]
    UnexpectedMessage {
        /// The message, as received.
        message: Box<Message>,
    },
}

impl SessionError {
    /// Whether the back-end caused it (a finding), as opposed to the harness (an error).
    pub fn is_backend_fault(&self) -> bool {
        !matches!(self, Self::Local { .. } | Self::Memory(_))
    }

    /// The request in flight when it happened.
    pub fn during(&self) -> Option<FrontendReq> {
        match self {
            Self::BadReply { during, .. }
            | Self::Nack { during, .. }
            | Self::Timeout { during, .. } => Some(*during),
            Self::Closed { during } | Self::Stalled { during, .. } => *during,
            _ => None,
        }
    }
}
