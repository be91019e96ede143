//! The one table from what the mock front-end saw the back-end do wrong (typed kinds that name
//! no rule) to the checklist rule each breaks. The engine cites rules only through it when a
//! reply, a back-end channel request or a SHMEM request is malformed.

use vhu_mock_frontend::ReplyViolation;
use vhu_mock_frontend::channel::{ChannelViolation, Refusal};
use vhu_mock_frontend::shmem::ShmemRefusal;
use vhu_protocol::Violation;

use crate::rules::{RuleId, id};

/// The rule a malformed reply on the main socket breaks.
pub(crate) fn reply_rule(v: &ReplyViolation) -> RuleId {
    use ReplyViolation::*;
    match v {
        UnrequestedAck { .. } => id::R_ACK_03,
        BadVersion { .. } | BadPayload(Violation::BadVersion { .. }) => id::R_WIRE_03,
        ShmemConfigCount { .. } => id::R_SHM_02,
        ShmemSizeUnaligned { .. } => id::R_SHM_03,
        NoReplyFlag { .. } => id::R_WIRE_02,
        WrongCode { .. } => id::R_WIRE_05,
        WrongSize { ack: true, .. } => id::R_ACK_01,
        WrongSize { ack: false, .. }
        | OversizedPayload { .. }
        | TooManyFds { .. }
        | BadPayload(_)
        | NotVringState
        | NotInflightDesc(_)
        | InflightFds { .. }
        | UnusableInflight(_) => id::R_WIRE_01,
    }
}

/// The rule a request on the back-end channel breaks.
pub(crate) fn channel_rule(v: &ChannelViolation) -> RuleId {
    use ChannelViolation::*;
    match v {
        UnknownCode { .. } => id::R_BCH_08,
        WrongFdCount { .. } | BadPayload { .. } => id::R_BCH_02,
        Shmem { error, .. } => shmem_rule(error).unwrap_or(id::R_WIRE_16),
        BadFlags { .. } | Receive(_) | TooManyRequests | ShmemReserve { .. } => id::R_WIRE_16,
    }
}

/// The rule a refused SHMEM_MAP or SHMEM_UNMAP breaks; `None` for what this front-end cannot do
/// although the request is valid (misaligned offsets, a failed mmap).
pub(crate) fn shmem_rule(e: &ShmemRefusal) -> Option<RuleId> {
    use ShmemRefusal::*;
    match e {
        BadFlags { .. } | ZeroLength => Some(id::R_SHM_14),
        OutOfRange { .. } | UnknownShmid { .. } => Some(id::R_SHM_05),
        Overlap { .. } => Some(id::R_SHM_07),
        NoSuchMapping { .. } => Some(id::R_SHM_08),
        Misaligned { .. } | Map(_) => None,
    }
}

/// The rule a back-end request the front-end refused breaks; `None` when it broke none (refused
/// on purpose, or not something this front-end can do).
pub(crate) fn refusal_rule(r: &Refusal) -> Option<RuleId> {
    r.violation().map(channel_rule)
}

#[cfg(test)]
mod tests {
    use vhu_protocol::BackendReq;

    use super::*;

    #[test]
    fn replies_cite_the_rules_they_break() {
        let cases = [
            (ReplyViolation::UnrequestedAck { code: 2 }, id::R_ACK_03),
            (ReplyViolation::BadVersion { flags: 6 }, id::R_WIRE_03),
            (
                ReplyViolation::ShmemConfigCount {
                    declared: 2,
                    actual: 1,
                },
                id::R_SHM_02,
            ),
            (ReplyViolation::NoReplyFlag { flags: 1 }, id::R_WIRE_02),
            (ReplyViolation::WrongCode { got: 2, want: 1 }, id::R_WIRE_05),
            (
                ReplyViolation::WrongSize {
                    got: 4,
                    want: 8,
                    ack: true,
                },
                id::R_ACK_01,
            ),
            (
                ReplyViolation::WrongSize {
                    got: 4,
                    want: 8,
                    ack: false,
                },
                id::R_WIRE_01,
            ),
            (
                ReplyViolation::BadPayload(Violation::ZeroSize { field: "x" }),
                id::R_WIRE_01,
            ),
            (ReplyViolation::NotVringState, id::R_WIRE_01),
        ];
        for (v, rule) in cases {
            assert_eq!(reply_rule(&v), rule, "{v}");
            assert!(!v.to_string().contains("R-"), "{v}");
        }
    }

    #[test]
    fn channel_requests_cite_the_rules_they_break() {
        let req = BackendReq::ShmemMap;
        let shmem = |error| ChannelViolation::Shmem { req, error };
        let cases = [
            (
                ChannelViolation::BadFlags { code: 9, flags: 5 },
                id::R_WIRE_16,
            ),
            (ChannelViolation::UnknownCode { code: 999 }, id::R_BCH_08),
            (
                ChannelViolation::WrongFdCount {
                    req,
                    got: 0,
                    min: 1,
                    max: 1,
                },
                id::R_BCH_02,
            ),
            (
                ChannelViolation::BadPayload {
                    req,
                    violation: Violation::ZeroSize { field: "shmem len" },
                },
                id::R_BCH_02,
            ),
            (shmem(ShmemRefusal::BadFlags { flags: 2 }), id::R_SHM_14),
            (shmem(ShmemRefusal::ZeroLength), id::R_SHM_14),
            (shmem(ShmemRefusal::UnknownShmid { shmid: 3 }), id::R_SHM_05),
            (
                shmem(ShmemRefusal::OutOfRange {
                    shmid: 0,
                    offset: 0,
                    len: 2,
                    size: 1,
                }),
                id::R_SHM_05,
            ),
            (
                shmem(ShmemRefusal::Overlap {
                    shmid: 0,
                    offset: 0,
                    len: 1,
                }),
                id::R_SHM_07,
            ),
            (
                shmem(ShmemRefusal::NoSuchMapping {
                    shmid: 0,
                    offset: 0,
                    len: 1,
                }),
                id::R_SHM_08,
            ),
            (ChannelViolation::TooManyRequests, id::R_WIRE_16),
        ];
        for (v, rule) in cases {
            assert_eq!(channel_rule(&v), rule, "{v}");
            assert_eq!(refusal_rule(&Refusal::Violation(v.clone())), Some(rule));
            assert!(!v.to_string().contains("R-"), "{v}");
        }
        let unsupported = Refusal::Unsupported {
            req,
            error: ShmemRefusal::Misaligned {
                shm_offset: 1,
                fd_offset: 0,
            },
        };
        assert_eq!(refusal_rule(&unsupported), None);
        assert_eq!(refusal_rule(&Refusal::OnPurpose), None);
    }
}
