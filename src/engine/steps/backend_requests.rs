//! What the back-end sent on its channel, judged per request code once the session ends
//! (checklist R-BCH-01..06): each request travels on the channel the front-end gave, only with
//! the protocol feature that introduces it, with the payload its section fixes. Framing, flags
//! and fd counts are judged as they arrive (`ChannelViolation`, R-BCH-02, R-WIRE-16).

use vhu_mock_frontend::channel::BackendRecord;
use vhu_protocol::{BackendReq, ProtocolFeatures};

use super::Ctx;
use crate::rules::{RuleId, id};

/// The feature a request needs, the rule that says so, and the payload size it must have.
fn contract(code: u32) -> Option<(ProtocolFeatures, RuleId, Option<usize>)> {
    use BackendReq::*;
    let req = BackendReq::n(code)?;
    Some(match req {
        ConfigChangeMsg => (ProtocolFeatures::CONFIG, id::R_BCH_03, Some(0)),
        VringHostNotifierMsg => (ProtocolFeatures::HOST_NOTIFIER, id::R_BCH_04, Some(24)),
        VringCall | VringErr => (
            ProtocolFeatures::INBAND_NOTIFICATIONS,
            id::R_BCH_05,
            Some(8),
        ),
        SharedObjectAdd | SharedObjectRemove | SharedObjectLookup => {
            (ProtocolFeatures::SHARED_OBJECT, id::R_BCH_06, Some(16))
        }
        _ => return None,
    })
}

impl Ctx<'_> {
    /// Judges every recorded back-end request against its code's contract.
    pub(super) fn judge_backend_requests(&mut self, records: &[BackendRecord]) {
        if records.is_empty() {
            return;
        }
        // The requests came on the channel SET_BACKEND_REQ_FD gave, framed as checked.
        self.mark(id::R_BCH_01);
        self.mark(id::R_BCH_02);
        let mut seen = std::collections::BTreeSet::new();
        let shmem = [BackendReq::ShmemMap as u32, BackendReq::ShmemUnmap as u32];
        if let Some(r) = records.iter().find(|r| shmem.contains(&r.code)) {
            self.judge_shmem_bit(r);
        }
        for r in records {
            let Some((feature, rule, size)) = contract(r.code) else {
                continue;
            };
            self.mark(rule);
            let name = BackendReq::n(r.code).map_or("?", BackendReq::spec_name);
            let mut problems = Vec::new();
            if self.protocol & feature.bits() == 0 {
                problems.push(format!(
                    "sent without protocol feature {feature:?} negotiated"
                ));
            }
            if let Some(n) = size.filter(|&n| n != r.payload.len()) {
                problems.push(format!("payload of {} bytes, not {n}", r.payload.len()));
            }
            if rule == id::R_BCH_05 && r.payload.len() == 8 && r.payload[4..8] != [0, 0, 0, 0] {
                problems.push("vring state num is not 0".into());
            }
            if problems.is_empty() || !seen.insert((r.code, problems.clone())) {
                continue;
            }
            self.report(
                rule,
                &format!("{name} on the back-end channel: {}", problems.join("; ")),
                "each back-end request only with its protocol feature and with its payload layout",
                format!(
                    "{name} flags {:#x}, payload {:02x?}, {} fds",
                    r.flags, r.payload, r.fds
                ),
            );
        }
    }

    /// SHMEM is protocol bit 22 (R-SHM-01); rust-vmm up to 0.16 used 21, GPA_ADDRESSES in the
    /// spec, so a SHMEM request after bit 21 alone is that confusion.
    fn judge_shmem_bit(&mut self, r: &BackendRecord) {
        let gpa = ProtocolFeatures::GPA_ADDRESSES.bits();
        if self.protocol & ProtocolFeatures::SHMEM.bits() != 0 {
            self.mark(id::R_SHM_01);
        } else if self.protocol & gpa != 0 {
            self.report(
                id::R_SHM_01,
                "a SHMEM request after protocol bit 21 (GPA_ADDRESSES) was negotiated, not bit 22 (SHMEM): the pre-standard numbering of rust-vmm 0.16 and earlier",
                "SHMEM requests only with protocol bit 22 negotiated",
                format!("request {} with protocol features {:#x}", r.code, self.protocol),
            );
        }
    }
}
