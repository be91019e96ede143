//! What the back-end sent wrong on the channel ([`ChannelViolation`]) and why the front-end
//! refused or did not carry out a request ([`Refusal`]).

use thiserror::Error;
use vhu_protocol::{BackendReq, Violation};

use super::MAX_RECORDS;
use crate::shmem::{MAX_SHMEM_TOTAL, ShmemRefusal};

/// What the back-end sent wrong on the channel. The texts say what happened and name no rule:
/// the engine maps each kind to the rule it breaks (one table, `src/engine/violations.rs` of
/// vhu-conform).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChannelViolation {
    /// A request whose header flags are invalid (version, reserved bits) or say REPLY.
    #[error("back-end request {code} has flags {flags:#x}")]
    BadFlags {
        /// The request code.
        code: u32,
        /// The header flags it carried.
        flags: u32,
    },
    /// A request code no spec or vendor defines.
    #[error("unknown back-end request code {code}")]
    UnknownCode {
        /// The request code.
        code: u32,
    },
    /// A request with more or fewer fds than its code takes.
    #[error("{} carries {got} fds, expected {min}..={max}", req.spec_name())]
    WrongFdCount {
        /// The request.
        req: BackendReq,
        /// The fds attached.
        got: usize,
        /// The fewest its code takes.
        min: usize,
        /// The most its code takes.
        max: usize,
    },
    /// A payload that breaks its layout (the validator's violation).
    #[error("{}: {violation}", req.spec_name())]
    BadPayload {
        /// The request.
        req: BackendReq,
        /// What is wrong with the payload.
        violation: Violation,
    },
    /// A SHMEM_MAP or SHMEM_UNMAP the shared memory regions refuse as a rule violation.
    #[error("{}: {error}", req.spec_name())]
    Shmem {
        /// The request.
        req: BackendReq,
        /// Why it was refused.
        error: ShmemRefusal,
    },
    /// A message that could not be received (bad framing, too many fds, an oversized payload):
    /// the connection's error, rendered.
    #[error("back-end channel: {0}")]
    Receive(String),
    /// More than [`MAX_RECORDS`] requests: later ones are served but not recorded.
    #[error(
        "back-end channel: more than {MAX_RECORDS} requests; later ones are served but not recorded"
    )]
    TooManyRequests,
    /// The regions GET_SHMEM_CONFIG declared could not be reserved (together more than
    /// [`MAX_SHMEM_TOTAL`] bytes, or the address space is exhausted).
    #[error(
        "harness: cannot reserve shared memory regions of {total:#x} bytes in all (at most \
         {MAX_SHMEM_TOTAL:#x}): {error}"
    )]
    ShmemReserve {
        /// The sizes declared, added (saturating).
        total: u64,
        /// Why the reservation failed.
        error: nix::Error,
    },
}

/// Why the front-end refused (acked non-zero) or did not carry out a back-end request.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The request broke a rule (it is also in [`BackendChannel::violations`](super::BackendChannel::violations)).
    #[error("{0}")]
    Violation(ChannelViolation),
    /// Refused because [`BackendChannel::refuse_next`](super::BackendChannel::refuse_next) asked for it.
    #[error("refused on purpose (refuse_next)")]
    OnPurpose,
    /// A valid SHMEM request this front-end cannot carry out (misaligned offsets, a failed
    /// mmap): a refusal the spec allows, no violation.
    #[error("{}: {error}", req.spec_name())]
    Unsupported {
        /// The request.
        req: BackendReq,
        /// Why it could not be done.
        error: ShmemRefusal,
    },
    /// A request this front-end cannot act on although it breaks no rule the harness checks
    /// (an IOTLB type only front-ends send, a miss no mapping covers: an invalid miss).
    #[error("{0}")]
    Invalid(String),
    /// A local resource failed (not the back-end's fault).
    #[error("{0}")]
    Local(String),
}

impl Refusal {
    /// The violation, when the back-end broke a rule.
    pub fn violation(&self) -> Option<&ChannelViolation> {
        match self {
            Self::Violation(v) => Some(v),
            _ => None,
        }
    }
}
