//! The judge of what a front-end does with a feature the judging back-end offers on purpose:
//! the injected kick (R-RING-05), the inflight buffer on a reconnect (R-INFL-03), GPA addresses
//! (R-MEM-18), a device state transfer (R-MIG-03), the postcopy order (R-PC-01), and the IOTLB
//! updates a miss is answered with (R-IOTLB-04, judged in `channel`).

use vhu_protocol::wire::payload::{InflightDesc, MemRegion};
use vhu_protocol::{FrontendReq, Message, ProtocolFeatures};

use crate::rules::id;
use crate::scenario::Level;

use super::{InflightGiven, Judge, Postcopy, file_id};

impl Judge {
    /// The kick eventfd of ring `index` was signalled (R-RING-05).
    pub fn kicked(&mut self, index: u32) {
        if let Some(r) = self.rings.get_mut(&index) {
            r.kicked = true;
        }
    }

    /// R-RING-05 for ring `index`, which started with a kick fd and now stops or is left: was
    /// it kicked meanwhile? A SHOULD of the checklist for back-ends written to the old "start
    /// on the first kick" text: the newest spec starts a ring on SET_VRING_KICK itself.
    pub(super) fn judge_kicked(&mut self, index: u32) {
        let Some(r) = self.rings.get(&index).cloned() else {
            return;
        };
        if !(r.started && r.kick_fd) {
            return;
        }
        self.check_raw(
            id::R_RING_05,
            Level::Should,
            r.kicked,
            || format!("SET_VRING_KICK for ring {index} with a kick eventfd"),
            || format!("ring {index} was never kicked between SET_VRING_KICK and its stop (or the session's end)"),
            "one kick after SET_VRING_KICK, for back-ends that start a ring on its first kick",
        );
        if let Some(r) = self.rings.get_mut(&index) {
            r.kick_fd = false;
        }
    }

    /// The judging back-end answered GET_INFLIGHT_FD with this buffer.
    pub fn inflight_given(&mut self, given: InflightGiven) {
        self.inflight = Some(given);
    }

    /// SET_INFLIGHT_FD on a connection after one whose rings ran with a buffer: it must be
    /// that buffer, description and file (R-INFL-03).
    pub(super) fn inflight_back(&mut self, m: &Message, desc: InflightDesc) {
        let Some(due) = self.inflight_due else {
            return;
        };
        let file = m.fds.first().and_then(file_id);
        let same_desc = desc.mmap_size == due.desc.mmap_size
            && desc.mmap_offset == due.desc.mmap_offset
            && desc.num_queues == due.desc.num_queues
            && desc.queue_size == due.desc.queue_size;
        let same = same_desc && file == Some(due.file);
        self.check(
            id::R_INFL_03,
            same,
            m,
            || {
                if same_desc {
                    "SET_INFLIGHT_FD on the reconnect carries another file than the buffer the rings ran with".into()
                } else {
                    format!(
                        "SET_INFLIGHT_FD on the reconnect describes {desc:?}, the buffer the rings ran with was {:?}",
                        due.desc
                    )
                }
            },
            "SET_INFLIGHT_FD with the buffer GET_INFLIGHT_FD gave (same description, same file) before the rings start again",
        );
        self.inflight_returned = same;
    }

    /// The first ring start on a reconnect after rings ran with an inflight buffer: the buffer
    /// must have come back first (R-INFL-03: "before rings start").
    pub(super) fn inflight_before_start(&mut self, m: &Message, index: u32) {
        if self.inflight_due.is_none() || self.ring_ran {
            return;
        }
        let back = self.inflight_returned;
        self.check(
            id::R_INFL_03,
            back,
            m,
            || format!("ring {index} starts on a reconnect before SET_INFLIGHT_FD gave the inflight buffer back"),
            "SET_INFLIGHT_FD with the earlier buffer before the rings start",
        );
    }

    /// The number of IOTLB updates seen so far: a miss sent now is answered by those after it.
    pub fn iotlb_mark(&self) -> usize {
        self.iotlb_updates.len()
    }

    /// With GPA_ADDRESSES negotiated "the user address field ... equals the guest physical
    /// address" of every region (R-MEM-18); ring addresses are then guest addresses too, which
    /// the ring-inside-memory check (R-FE-05) judges through them.
    pub(super) fn gpa_regions(&mut self, req: FrontendReq, m: &Message, regions: Vec<MemRegion>) {
        if !self.has_protocol(ProtocolFeatures::GPA_ADDRESSES) {
            return;
        }
        let bad = regions
            .iter()
            .find(|r| r.user_addr != r.guest_addr)
            .copied();
        self.check(
            id::R_MEM_18,
            bad.is_none(),
            m,
            || {
                let r = bad.unwrap_or_default();
                format!(
                    "{} region at guest {:#x} with user address {:#x} while GPA_ADDRESSES (21) is negotiated",
                    req.spec_name(),
                    r.guest_addr,
                    r.user_addr
                )
            },
            "user address = guest physical address in every region once GPA_ADDRESSES is negotiated",
        );
    }

    /// SET_DEVICE_STATE_FD's phase 0 means "stopped": every ring stopped with GET_VRING_BASE
    /// before (R-MIG-03).
    pub(super) fn state_transfer(&mut self, m: &Message) {
        let running: Vec<String> = self
            .rings
            .iter()
            .filter(|(_, r)| r.started)
            .map(|(i, _)| i.to_string())
            .collect();
        self.check(
            id::R_MIG_03,
            running.is_empty(),
            m,
            || {
                format!(
                    "SET_DEVICE_STATE_FD while ring {} still runs (no GET_VRING_BASE since its SET_VRING_KICK)",
                    running.join(", ")
                )
            },
            "every ring stopped (GET_VRING_BASE) before a transfer in the stopped phase",
        );
    }

    /// POSTCOPY_LISTEN only after ADVISE, END only after LISTEN, none of them with
    /// CONFIGURE_MEM_SLOTS negotiated (R-PC-01; the PAGEFAULT gate is judged in `gates`).
    pub(super) fn postcopy_order(&mut self, req: FrontendReq, m: &Message) {
        use FrontendReq::*;
        let slots = self.has_protocol(ProtocolFeatures::CONFIGURE_MEM_SLOTS);
        self.check(
            id::R_PC_01,
            !slots,
            m,
            || {
                format!(
                    "{} while CONFIGURE_MEM_SLOTS (15) is negotiated",
                    req.spec_name()
                )
            },
            "no postcopy message once CONFIGURE_MEM_SLOTS is negotiated",
        );
        let (ok, want, next) = match req {
            PostcopyAdvise => (true, "", Postcopy::Advised),
            PostcopyListen => (
                self.postcopy == Postcopy::Advised,
                "POSTCOPY_ADVISE",
                Postcopy::Listening,
            ),
            _ => (
                self.postcopy == Postcopy::Listening,
                "POSTCOPY_LISTEN",
                Postcopy::Before,
            ),
        };
        self.check(
            id::R_PC_01,
            ok,
            m,
            || format!("{} before {want}", req.spec_name()),
            "POSTCOPY_LISTEN only after POSTCOPY_ADVISE, POSTCOPY_END only after POSTCOPY_LISTEN",
        );
        self.postcopy = next;
    }
}
