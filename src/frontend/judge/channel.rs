//! The judge of what the front-end answers on the back-end channel (spec "Back-end
//! communication", roles swapped): framing (R-WIRE-16), acks (R-ACK-08, R-BCH-08), the
//! deadlock probe (R-BCH-07), a hang (the liveness probe), IOTLB misses (R-IOTLB-04) and
//! SHMEM_MAP/UNMAP (R-SHM-06/07/08/14).

use vhu_protocol::{BackendReq, FrontendReq, Message};

use crate::rules::{RuleId, id};
use crate::scenario::Level;

use super::super::backend::CHANNEL_ACK_WAIT;
use super::Judge;

fn req_name(code: u32) -> String {
    BackendReq::from_code(code).map_or_else(
        |_| format!("unknown back-end request {code}"),
        |r| format!("{r:?}"),
    )
}

fn channel_sent(code: u32) -> String {
    format!(
        "{} flags 0x9 (NEED_REPLY) size 0, on the back-end channel",
        req_name(code)
    )
}

impl Judge {
    /// Judges the framing of a reply on the back-end channel to request `code` (R-WIRE-16:
    /// "the same framing and flag rules apply", roles swapped): version 1, REPLY set, no
    /// NEED_REPLY, the request's code, a u64 payload, no fds. Returns the u64 when well formed.
    pub(super) fn channel_framing(&mut self, code: u32, m: &Message) -> Option<u64> {
        let flags = m.header.flags();
        let problems: Vec<String> = [
            (flags.version() != 1, format!("version {}", flags.version())),
            (!m.header.is_reply(), "no REPLY flag (bit 2)".into()),
            (m.header.need_reply(), "NEED_REPLY set on a reply".into()),
            (
                m.header.request != code,
                format!("code {} for request {code}", m.header.request),
            ),
            (
                m.header.size != 8 || m.payload.len() != 8,
                format!("size {} (a u64 reply has 8)", m.header.size),
            ),
            (!m.fds.is_empty(), format!("{} fds", m.fds.len())),
        ]
        .into_iter()
        .filter_map(|(bad, what)| bad.then_some(what))
        .collect();
        let sent = channel_sent(code);
        self.check_raw(
            id::R_WIRE_16,
            Level::Must,
            problems.is_empty(),
            || sent,
            || {
                format!(
                    "the front-end's reply on the back-end channel is malformed: {}",
                    problems.join(", ")
                )
            },
            "a reply with version 1, the REPLY flag, the request's code and a u64 payload",
        );
        if problems.is_empty() { m.u64() } else { None }
    }

    /// The front-end's answer on the back-end channel to a NEED_REPLY request the judging
    /// back-end sent while serving the main socket: `None` when none came (`timed_out`: within
    /// the wait; else the channel closed). A known request must get a u64 ack (R-ACK-08); an
    /// unknown code a non-zero one (R-BCH-08, SHOULD).
    pub fn channel_reply(&mut self, code: u32, reply: Option<&Message>, timed_out: bool) {
        let unknown = BackendReq::from_code(code).is_err();
        let (rule, cap) = if unknown {
            (id::R_BCH_08, Level::Should)
        } else {
            (id::R_ACK_08, Level::Must)
        };
        let Some(m) = reply else {
            let why = if timed_out {
                format!("no reply within {} ms", CHANNEL_ACK_WAIT.as_millis())
            } else {
                "the channel closed (or could not be written) before a reply".into()
            };
            self.check_raw(
                rule,
                cap,
                false,
                || channel_sent(code),
                || format!("{} with NEED_REPLY on the back-end channel: {why}", req_name(code)),
                "a u64 reply (0 success, non-zero failure) to every NEED_REPLY request once REPLY_ACK is negotiated",
            );
            return;
        };
        let Some(v) = self.channel_framing(code, m) else {
            return;
        };
        if unknown {
            self.check_raw(
                rule,
                cap,
                v != 0,
                || channel_sent(code),
                || format!("the unknown back-end request {code} was acked {v} (success)"),
                "a non-zero ack to a request code the front-end does not know",
            );
        } else {
            self.check_raw(rule, cap, true, || channel_sent(code), String::new, "");
        }
    }

    /// The liveness probe of an idle front-end was answered, or not within the wait
    /// (`timed_out`; a channel that closed instead means the front-end is leaving, no hang).
    /// What the judge calls a hang: the main socket silent for
    /// [`IDLE_BEFORE_PROBE`](super::super::backend::IDLE_BEFORE_PROBE) and then a NEED_REPLY request
    /// on the back-end channel, which the front-end must ack (R-ACK-08; an unknown code only
    /// should be, R-BCH-08), unanswered for [`CHANNEL_ACK_WAIT`]. A front-end that is only
    /// idle answers it; one that gave no channel cannot be told from an idle one.
    pub fn liveness(&mut self, code: u32, reply: Option<&Message>, timed_out: bool) {
        if reply.is_none() && !timed_out {
            return;
        }
        if reply.is_some() {
            return self.channel_reply(code, reply, false);
        }
        let unknown = BackendReq::from_code(code).is_err();
        let (rule, cap) = if unknown {
            (id::R_BCH_08, Level::Should)
        } else {
            (id::R_ACK_08, Level::Must)
        };
        self.check_raw(
            rule,
            cap,
            false,
            || channel_sent(code),
            || {
                format!(
                    "the front-end hangs: silent on the main socket for {} ms, then no reply on its back-end channel within {} ms",
                    super::super::backend::IDLE_BEFORE_PROBE.as_millis(),
                    CHANNEL_ACK_WAIT.as_millis()
                )
            },
            "an idle front-end still acks a NEED_REPLY request on its back-end channel",
        );
    }

    /// [`Misbehave::ChannelBlock`](crate::frontend::backend::Misbehave::ChannelBlock): the judging
    /// back-end held its reply to `awaited` and blocked on channel request `code`; `reply` is
    /// what came. No reply means the front-end served neither: a deadlock (R-BCH-07).
    pub fn channel_blocked(&mut self, code: u32, awaited: FrontendReq, reply: Option<&Message>) {
        let ok = reply.is_some();
        self.check_raw(
            id::R_BCH_07,
            Level::Must,
            ok,
            || channel_sent(code),
            || {
                format!(
                    "no reply on the back-end channel within {} ms while the front-end waited for the reply to its {}: neither side can go on",
                    CHANNEL_ACK_WAIT.as_millis(),
                    awaited.spec_name()
                )
            },
            "the front-end serves the back-end channel while it waits for a main-socket reply",
        );
        if let Some(m) = reply {
            let _ = self.channel_framing(code, m);
        }
    }

    /// The front-end acked (or did not ack) an IOTLB miss for `iova` the judging back-end sent
    /// when `mark` updates had come: "On a miss the FE sends the update ... and then, if
    /// asked, acks the miss" (R-IOTLB-04). The miss was for an address the front-end itself put
    /// in a ring it started, so it is valid.
    pub fn miss_answered(&mut self, iova: u64, mark: usize, reply: Option<&Message>) {
        let code = BackendReq::IotlbMsg as u32;
        let sent = || {
            format!(
                "BACKEND_IOTLB_MSG miss for iova {iova:#x} with NEED_REPLY, on the back-end channel"
            )
        };
        let Some(m) = reply else {
            self.check_raw(
                id::R_IOTLB_04,
                Level::Must,
                false,
                sent,
                || {
                    format!(
                        "no ack to the miss within {} ms",
                        CHANNEL_ACK_WAIT.as_millis()
                    )
                },
                "the update, then the ack the miss asked for",
            );
            return;
        };
        if self.channel_framing(code, m).is_none() {
            return;
        }
        let updated = self.iotlb_updates[mark.min(self.iotlb_updates.len())..]
            .iter()
            .any(|&(a, n)| iova >= a && iova - a < n);
        self.check_raw(
            id::R_IOTLB_04,
            Level::Must,
            updated,
            sent,
            || format!("the miss for iova {iova:#x} was acked with no IOTLB_MSG update covering it before"),
            "an IOTLB_MSG update covering the missed iova on the main socket, then the ack",
        );
    }

    /// A SHMEM_MAP/UNMAP probe was answered (`None`: not in time): `want_fail` says the spec
    /// demands a refusal, `Some(false)` success, `None` either (a map may fail for lack of
    /// resources). Returns the u64 when one came well-formed.
    pub fn shmem_answered(
        &mut self,
        probe: &str,
        code: u32,
        rule: RuleId,
        want_fail: Option<bool>,
        reply: Option<&Message>,
    ) -> Option<u64> {
        let sent = || {
            format!(
                "{} {probe} with NEED_REPLY, on the back-end channel",
                req_name(code)
            )
        };
        let Some(m) = reply else {
            // The valid map's answer is R-SHM-06's own duty ("answers 0 on success, non-zero
            // otherwise"); the others' R-ACK-08's.
            let missing = if rule == id::R_SHM_06 {
                id::R_SHM_06
            } else {
                id::R_ACK_08
            };
            self.check_raw(
                missing,
                Level::Must,
                false,
                sent,
                || "no ack (within the wait, or before the channel closed)".into(),
                "a u64 ack to every SHMEM_MAP/UNMAP that asks for one",
            );
            return None;
        };
        let v = self.channel_framing(code, m)?;
        self.checked.insert(id::R_ACK_08);
        let ok = match want_fail {
            Some(true) => v != 0,
            Some(false) => v == 0,
            None => true,
        };
        // The rule's own level caps the finding (R-SHM-14 is a robustness rule: a warning).
        self.check_raw(
            rule,
            Level::Must,
            ok,
            sent,
            || format!("acked {v} ({})", if v == 0 { "success" } else { "failure" }),
            if want_fail == Some(true) {
                "a non-zero ack: the spec has this map or unmap fail"
            } else {
                "ack 0: the range is exactly the mapping made before"
            },
        );
        Some(v)
    }
}
