//! The rings as the front-end sets them up and runs them: indices below the ring count
//! (R-MQ-02), logging only with LOG_ALL (R-LOG-01), GET_VRING_BASE's request (R-VRING-08), a
//! ring fully described and inside the table when it starts (R-VRING-01, R-FE-05/06), and
//! in-band kicks that ask for a reply (R-INB-05).

use vhu_protocol::wire::payload::{VRING_NOFD_MASK, VringAddr, VringState};
use vhu_protocol::{FrontendReq, Message, ProtocolFeatures, VirtioFeatures};

use crate::rules::id;
use crate::scenario::Level;

use super::Judge;

impl Judge {
    /// A ring index below the number of rings the back-end has (R-MQ-02).
    pub(super) fn ring_index(&mut self, req: FrontendReq, m: &Message, index: u32) {
        let bound = self.profile.device.rings(self.profile.queue_num);
        self.check(
            id::R_MQ_02,
            u64::from(index) < bound,
            m,
            || {
                format!(
                    "{} for ring {index}; the back-end has {bound}",
                    req.spec_name()
                )
            },
            "ring indices below the number of rings GET_QUEUE_NUM reported",
        );
    }

    /// SET_VRING_ADDR: the addresses are kept for the ring's start.
    pub(super) fn set_vring_addr(&mut self, req: FrontendReq, m: &Message, a: VringAddr) {
        self.ring_index(req, m, a.index);
        // Ring logging is switched on by VHOST_VRING_F_LOG only together with
        // VHOST_F_LOG_ALL in the features (R-LOG-01).
        if a.flags & 1 != 0 {
            let log_all = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::LOG_ALL.bits() != 0);
            self.check(
                id::R_LOG_01,
                log_all,
                m,
                || format!("SET_VRING_ADDR for ring {} with VHOST_VRING_F_LOG while VHOST_F_LOG_ALL (bit 26) is not set", a.index),
                "VHOST_VRING_F_LOG only while SET_FEATURES has VHOST_F_LOG_ALL",
            );
        }
        self.rings.entry(a.index).or_default().addr = Some(a);
    }

    /// GET_VRING_BASE (or its SKIP_DRAIN form) stops the ring.
    pub(super) fn get_vring_base(&mut self, req: FrontendReq, m: &Message, s: VringState) {
        self.ring_index(req, m, s.index);
        self.judge_kicked(s.index);
        if let Some(r) = self.rings.get_mut(&s.index) {
            r.started = false;
        }
        self.check(
            id::R_VRING_08,
            s.num == 0,
            m,
            || format!("GET_VRING_BASE with num {}", s.num),
            "num 0 in GET_VRING_BASE's request",
        );
    }

    /// SET_VRING_KICK starts the ring.
    pub(super) fn set_vring_kick(&mut self, req: FrontendReq, m: &Message, w: u64) {
        let index = (w & 0xff) as u32;
        self.ring_index(req, m, index);
        self.inflight_before_start(m, index);
        self.ring_start(m, index);
        let r = self.rings.entry(index).or_default();
        r.started = true;
        r.kick_fd = w & VRING_NOFD_MASK == 0 && !m.fds.is_empty();
        r.kicked = false;
        self.ring_ran = true;
    }

    /// VRING_KICK, an in-band kick.
    pub(super) fn vring_kick(&mut self, m: &Message) {
        // "The front-end is expected to ask for a reply" (spec VHOST_USER_VRING_KICK):
        // the kick then completes synchronously, as a simulation needs.
        let asked = m.header.need_reply() || !self.has_protocol(ProtocolFeatures::REPLY_ACK);
        self.check_capped(
            id::R_INB_05,
            Level::Should,
            asked,
            m,
            || "VRING_KICK without NEED_REPLY while REPLY_ACK is negotiated".into(),
            "NEED_REPLY on every VRING_KICK",
        );
    }

    /// SET_VRING_KICK starts the ring: it must be fully described and inside the memory table.
    pub(super) fn ring_start(&mut self, m: &Message, index: u32) {
        let seen = self.rings.get(&index).cloned().unwrap_or_default();
        let missing: Vec<&str> = [
            ("SET_VRING_NUM", seen.num.is_none()),
            ("SET_VRING_BASE", !seen.base),
            ("SET_VRING_ADDR", seen.addr.is_none()),
        ]
        .into_iter()
        .filter_map(|(n, miss)| miss.then_some(n))
        .collect();
        self.check(
            id::R_VRING_01,
            missing.is_empty(),
            m,
            || {
                format!(
                    "SET_VRING_KICK for ring {index} before {}",
                    missing.join(", ")
                )
            },
            "SET_VRING_NUM, SET_VRING_BASE and SET_VRING_ADDR before the ring starts",
        );
        if let (Some(num), Some(a)) = (seen.num, seen.addr) {
            let iommu = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::ACCESS_PLATFORM.bits() != 0);
            // With an IOMMU ring addresses are IOVAs the table cannot judge (R-IOTLB).
            if !iommu {
                let n = u64::from(num);
                let parts = [
                    ("descriptor table", a.desc, 16 * n),
                    ("avail ring", a.avail, 6 + 2 * n),
                    ("used ring", a.used, 6 + 8 * n),
                ];
                let outside: Vec<String> = parts
                    .iter()
                    .filter(|(_, addr, len)| {
                        !self.table.iter().any(|r| r.contains_user(*addr, *len))
                    })
                    .map(|(what, addr, len)| format!("{what} {addr:#x}+{len:#x}"))
                    .collect();
                self.check(
                    id::R_FE_05,
                    outside.is_empty(),
                    m,
                    || {
                        format!(
                            "ring {index} starts with {} outside the memory table",
                            outside.join(", ")
                        )
                    },
                    "ring areas inside the regions of the memory table (by user address)",
                );
            }
        }
        let refused = self.table_refused;
        self.check(
            id::R_FE_06,
            !refused,
            m,
            || format!("ring {index} starts on a memory table the back-end refused"),
            "no ring started on a refused memory table",
        );
    }
}
