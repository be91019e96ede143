//! Feature negotiation as the front-end drives it: what it may ack (R-FE-01, R-NEG-04/13,
//! R-INB-01) and the requests gated on what was acked (R-NEG-04/09/14, R-RST-02, R-MIG-01,
//! R-PC-01, R-SHM-01, R-IOTLB-01).

use vhu_protocol::{FrontendReq, Message, ProtocolFeatures, VirtioFeatures};

use crate::rules::id;
use crate::scenario::Level;

use super::Judge;

impl Judge {
    /// SET_FEATURES acks only offered bits (R-FE-01); what it acks is kept.
    pub(super) fn set_features(&mut self, m: &Message, f: u64) {
        let extra = f & !self.profile.features;
        self.check(
            id::R_FE_01,
            extra == 0,
            m,
            || format!("SET_FEATURES {f:#x} sets {extra:#x}, which GET_FEATURES did not offer"),
            "only offered feature bits",
        );
        self.acked_features = Some(f);
        self.negotiated = true;
    }

    /// SET_PROTOCOL_FEATURES acks only offered bits (R-NEG-04), and the bits that need
    /// others come with them (R-NEG-13, R-INB-01); what it acks is kept.
    pub(super) fn set_protocol_features(&mut self, m: &Message, p: u64) {
        let extra = p & !self.profile.protocol;
        self.check(
            id::R_NEG_04,
            extra == 0,
            m,
            || format!("SET_PROTOCOL_FEATURES {p:#x} sets {extra:#x}, which was not offered"),
            "only offered protocol bits",
        );
        let has = |f: ProtocolFeatures| p & f.bits() != 0;
        if has(ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN) {
            self.check(
                id::R_NEG_13,
                has(ProtocolFeatures::GET_VRING_BASE_INFLIGHT)
                    && has(ProtocolFeatures::INFLIGHT_SHMFD),
                m,
                || "GET_VRING_BASE_SKIP_DRAIN (23) without 20 and 12".into(),
                "bit 23 only together with 20 and 12",
            );
        }
        if has(ProtocolFeatures::INBAND_NOTIFICATIONS) {
            self.check(
                id::R_INB_01,
                has(ProtocolFeatures::BACKEND_REQ) && has(ProtocolFeatures::REPLY_ACK),
                m,
                || "INBAND_NOTIFICATIONS (14) without BACKEND_REQ and REPLY_ACK".into(),
                "bit 14 only with bits 5 and 3 (\"It is also considered an error\")",
            );
        }
        self.acked_protocol = Some(p);
    }

    /// A request comes only once what gates it is negotiated, and memory and ring requests
    /// only after SET_OWNER.
    pub(super) fn gates(&mut self, req: FrontendReq, m: &Message) {
        use FrontendReq::*;
        let bit30_offered = self.profile.features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if matches!(req, GetProtocolFeatures | SetProtocolFeatures) {
            self.check(
                id::R_NEG_04,
                bit30_offered,
                m,
                || {
                    format!(
                        "{} although GET_FEATURES did not offer bit 30",
                        req.spec_name()
                    )
                },
                "GET/SET_PROTOCOL_FEATURES only if bit 30 was offered",
            );
        }
        if let Some(gate) = req.protocol_gate() {
            let rule = match req {
                GetQueueNum => id::R_NEG_14,
                ResetDevice => id::R_RST_02,
                SetDeviceStateFd | CheckDeviceState => id::R_MIG_01,
                PostcopyAdvise | PostcopyListen | PostcopyEnd => id::R_PC_01,
                // SHMEM is bit 22 (R-SHM-01): a front-end that acked bit 21 (GPA_ADDRESSES,
                // the bit rust-vmm up to 0.16 used for it) is caught here.
                GetShmemConfig => id::R_SHM_01,
                // The checklist's gate table (section 2) and R-NEG-14 cover every other gate.
                _ => id::R_NEG_14,
            };
            let ok = self.has_protocol(gate);
            let acked = self
                .acked_protocol
                .map_or("none".into(), |p| format!("{p:#x}"));
            self.check(
                rule,
                ok,
                m,
                || {
                    format!(
                        "{} before protocol feature {gate:?} was negotiated (acked: {acked})",
                        req.spec_name(),
                    )
                },
                "a gated request only once SET_PROTOCOL_FEATURES acked its feature",
            );
        }
        if req == SetVringEnable {
            let ok = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
            // SHOULD twice over: the spec says "should be sent only when
            // VHOST_USER_F_PROTOCOL_FEATURES has been negotiated", and "negotiated" is
            // ambiguous: a virtio feature is negotiated by SET_FEATURES, but a front-end may
            // read it as offered and protocol features set (QEMU's net start-up does).
            // The gate table gives SET_VRING_ENABLE's gate as "F_30 negotiated": R-NEG-14.
            self.check_capped(
                id::R_NEG_14,
                Level::Should,
                ok,
                m,
                || "SET_VRING_ENABLE before SET_FEATURES acked bit 30 (VHOST_USER_F_PROTOCOL_FEATURES)".into(),
                "SET_VRING_ENABLE only once VHOST_USER_F_PROTOCOL_FEATURES is negotiated (SET_FEATURES with bit 30)",
            );
        }
        if req == IotlbMsg {
            let ok = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::ACCESS_PLATFORM.bits() != 0);
            self.check(
                id::R_IOTLB_01,
                ok,
                m,
                || "IOTLB_MSG without VIRTIO_F_IOMMU_PLATFORM negotiated".into(),
                "IOTLB_MSG only with bit 33",
            );
        }
        if matches!(
            req,
            SetMemTable
                | AddMemReg
                | SetVringNum
                | SetVringAddr
                | SetVringBase
                | SetVringKick
                | SetVringCall
                | SetVringErr
        ) {
            let owner = self.owner;
            self.check(
                id::R_NEG_09,
                owner,
                m,
                || format!("{} before SET_OWNER on this connection", req.spec_name()),
                "SET_OWNER on every new connection, before memory and rings",
            );
        }
    }
}
