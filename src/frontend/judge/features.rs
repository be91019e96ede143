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

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use vhu_protocol::wire::payload::{Body, DeviceStateParams, VringAddr, VringState};
    use vhu_protocol::{FrontendReq, Header, Message, ProtocolFeatures};

    use crate::device::DeviceType;
    use crate::frontend::backend::Profile;
    use crate::frontend::judge::{InflightGiven, Judge, file_id};
    use crate::rules::RuleId;
    use crate::scenario::Level;

    fn msg(req: FrontendReq, body: Body, fds: Vec<OwnedFd>) -> Message {
        let payload = body.encode();
        Message {
            header: Header::request(req as u32, payload.len() as u32, false),
            payload,
            fds,
        }
    }

    fn eventfd() -> OwnedFd {
        nix::sys::eventfd::EventFd::new().expect("eventfd").into()
    }

    fn memfd() -> OwnedFd {
        nix::sys::memfd::memfd_create(c"judge-test", nix::sys::memfd::MFdFlags::empty())
            .expect("memfd")
    }

    /// A judge whose profile offers `extra` and that saw SET_PROTOCOL_FEATURES with it and
    /// REPLY_ACK, and SET_OWNER.
    fn judge(extra: ProtocolFeatures) -> Judge {
        let mut p = Profile::for_device(DeviceType::Block);
        p.protocol |= extra.bits();
        let acked = (ProtocolFeatures::REPLY_ACK | extra).bits();
        let mut j = Judge::new(p, Level::Must);
        j.new_connection();
        j.observe(&msg(
            FrontendReq::SetProtocolFeatures,
            Body::U64(acked),
            vec![],
        ));
        j.observe(&msg(FrontendReq::SetOwner, Body::Empty, vec![]));
        j
    }

    fn start_ring(j: &mut Judge) {
        let state = |num| Body::VringState(VringState { index: 0, num });
        j.observe(&msg(FrontendReq::SetVringNum, state(64), vec![]));
        j.observe(&msg(FrontendReq::SetVringBase, state(0), vec![]));
        let addr = VringAddr {
            index: 0,
            ..VringAddr::default()
        };
        j.observe(&msg(
            FrontendReq::SetVringAddr,
            Body::VringAddr(addr),
            vec![],
        ));
        j.observe(&msg(
            FrontendReq::SetVringKick,
            Body::U64(0),
            vec![eventfd()],
        ));
    }

    fn cites(j: &Judge, rule: &str) -> bool {
        j.findings().iter().any(|f| f.rule.as_str() == rule)
    }

    fn checked(j: &Judge, rule: &str) -> bool {
        j.checked().iter().any(|r: &RuleId| r.as_str() == rule)
    }

    #[test]
    fn postcopy_messages_in_order_pass_and_listen_before_advise_fails() {
        let mut j = judge(ProtocolFeatures::PAGEFAULT);
        for req in [
            FrontendReq::PostcopyAdvise,
            FrontendReq::PostcopyListen,
            FrontendReq::PostcopyEnd,
        ] {
            j.observe(&msg(req, Body::Empty, vec![]));
        }
        assert!(checked(&j, "R-PC-01") && !cites(&j, "R-PC-01"));
        let mut j = judge(ProtocolFeatures::PAGEFAULT);
        j.observe(&msg(FrontendReq::PostcopyListen, Body::Empty, vec![]));
        assert!(cites(&j, "R-PC-01"), "{:?}", j.findings());
    }

    #[test]
    fn postcopy_with_configure_mem_slots_negotiated_fails() {
        let mut j = judge(ProtocolFeatures::PAGEFAULT | ProtocolFeatures::CONFIGURE_MEM_SLOTS);
        j.observe(&msg(FrontendReq::PostcopyAdvise, Body::Empty, vec![]));
        assert!(cites(&j, "R-PC-01"));
    }

    #[test]
    fn a_state_transfer_while_a_ring_runs_fails_and_after_its_stop_passes() {
        let params = || {
            Body::DeviceState(DeviceStateParams {
                direction: 0,
                phase: 0,
            })
        };
        let mut j = judge(ProtocolFeatures::DEVICE_STATE);
        start_ring(&mut j);
        j.observe(&msg(
            FrontendReq::SetDeviceStateFd,
            params(),
            vec![eventfd()],
        ));
        assert!(cites(&j, "R-MIG-03"));
        let mut j = judge(ProtocolFeatures::DEVICE_STATE);
        start_ring(&mut j);
        let stop = Body::VringState(VringState { index: 0, num: 0 });
        j.observe(&msg(FrontendReq::GetVringBase, stop, vec![]));
        j.observe(&msg(
            FrontendReq::SetDeviceStateFd,
            params(),
            vec![eventfd()],
        ));
        assert!(checked(&j, "R-MIG-03") && !cites(&j, "R-MIG-03"));
    }

    #[test]
    fn a_ring_stopped_without_a_kick_warns_and_a_kicked_one_passes() {
        let stop = || Body::VringState(VringState { index: 0, num: 0 });
        let mut j = judge(ProtocolFeatures::empty());
        start_ring(&mut j);
        j.observe(&msg(FrontendReq::GetVringBase, stop(), vec![]));
        let f = j.findings();
        let f = f
            .iter()
            .find(|f| f.rule.as_str() == "R-RING-05")
            .expect("R-RING-05");
        assert_eq!(f.level, Level::Should);
        let mut j = judge(ProtocolFeatures::empty());
        start_ring(&mut j);
        j.kicked(0);
        j.observe(&msg(FrontendReq::GetVringBase, stop(), vec![]));
        assert!(checked(&j, "R-RING-05") && !cites(&j, "R-RING-05"));
    }

    #[test]
    fn gpa_addresses_need_user_addresses_equal_to_guest_addresses() {
        let region = |user| vhu_protocol::wire::payload::MemRegion {
            guest_addr: 0x10_0000,
            size: 0x10_0000,
            user_addr: user,
            mmap_offset: 0,
        };
        let mut j = judge(ProtocolFeatures::GPA_ADDRESSES);
        let table = Body::MemTable(vec![region(0x10_0000)]);
        j.observe(&msg(FrontendReq::SetMemTable, table, vec![memfd()]));
        assert!(checked(&j, "R-MEM-18") && !cites(&j, "R-MEM-18"));
        let table = Body::MemTable(vec![region(0x7f00_0010_0000)]);
        j.observe(&msg(FrontendReq::SetMemTable, table, vec![memfd()]));
        assert!(cites(&j, "R-MEM-18"));
    }

    #[test]
    fn the_inflight_buffer_on_a_reconnect_must_be_the_same_file() {
        let given_fd = memfd();
        let desc = vhu_protocol::wire::payload::InflightDesc {
            mmap_size: 4096,
            mmap_offset: 0,
            num_queues: 1,
            queue_size: 64,
            padding: 0,
        };
        let given = InflightGiven {
            desc,
            file: file_id(&given_fd).expect("fstat"),
        };
        let reconnect = |fd: OwnedFd| {
            let mut j = judge(ProtocolFeatures::INFLIGHT_SHMFD);
            j.inflight_given(given);
            start_ring(&mut j);
            j.connection_ended(false, true);
            j.new_connection();
            let acked = (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::INFLIGHT_SHMFD).bits();
            j.observe(&msg(
                FrontendReq::SetProtocolFeatures,
                Body::U64(acked),
                vec![],
            ));
            j.observe(&msg(FrontendReq::SetOwner, Body::Empty, vec![]));
            j.observe(&msg(
                FrontendReq::SetInflightFd,
                Body::Inflight(desc),
                vec![fd],
            ));
            start_ring(&mut j);
            j
        };
        let same = given_fd.try_clone().expect("dup");
        let j = reconnect(same);
        assert!(checked(&j, "R-INFL-03") && !cites(&j, "R-INFL-03"));
        let j = reconnect(memfd());
        assert!(
            cites(&j, "R-INFL-03"),
            "another file is not the same buffer"
        );
    }
}
