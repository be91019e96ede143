//! Session and ring setup steps: negotiation, memory tables, ADD/REM_MEM_REG, vring setup,
//! SET_VRING_ENABLE and GET_VRING_BASE (checklist 4.2 to 4.5).

use crate::rules::id;
use vhu_mock_frontend::{Ack, DriverQueue, GuestMemory, RegionSpec, RingLayout, Wanted};
use vhu_protocol::{FrontendReq, VirtioFeatures};

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::features::{protocol_bit, virtio_bit};

use crate::scenario::Expect;
use crate::scenario::model::{
    AddMemRegArgs, EnableArgs, Features, GetVringBaseArgs, Layout, MemoryArgs, NegotiateArgs,
    Queues, RemMemRegArgs, Ring, Step, Via, VringArgs, VringNum,
};

impl Ctx<'_> {
    pub(super) fn negotiate(&mut self, step: &Step, a: &NegotiateArgs) -> StepResult {
        let mut wanted = Wanted::all();
        // What the scenario requires is negotiated too (RING_PACKED, INFLIGHT_SHMFD, ...).
        let req = &self.scenario.spec.requires;
        wanted.features |= req
            .virtio
            .iter()
            .filter_map(|n| virtio_bit(n))
            .fold(0, |a, b| a | b);
        wanted.protocol |= req
            .protocol
            .iter()
            .filter_map(|n| protocol_bit(n))
            .fold(0, |a, b| a | b);
        if let Some(sel) = &a.features {
            wanted.features = select_bits(sel, wanted.features);
        }
        if let Some(sel) = &a.protocol {
            wanted.protocol = select_bits(sel, wanted.protocol);
        }
        for name in &a.exclude_protocol {
            wanted.protocol &= !name.bits();
        }
        let r = self.session()?.negotiate(&wanted);
        match r {
            Ok(n) => {
                use crate::rules::id;
                // What a negotiation in QEMU's order checks on its way (Appendix A).
                self.mark(id::R_NEG_01);
                if n.features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                    self.mark(id::R_NEG_07);
                    self.mark(id::R_ROB_10);
                }
                if n.protocol & vhu_protocol::ProtocolFeatures::REPLY_ACK.bits() != 0 {
                    // SET_OWNER was acked before SET_FEATURES acked bit 30.
                    self.mark(id::R_NEG_03);
                }
                if n.queue_num.is_some() {
                    self.mark(id::R_MQ_01);
                }
                self.features = n.features;
                self.protocol = n.protocol;
                self.queue_num_reported = n.queue_num;
                // Rings, by the device's reading of the answer (net: queue pairs and a control
                // ring, so its TX ring 1 and control ring exist even without MQ).
                let reported = n.queue_num.unwrap_or(1);
                let rings = self.offer.device.map_or(reported, |d| d.rings(reported));
                self.queue_num = rings.clamp(1, 64);
                Ok(())
            }
            Err(e) => Err(self.session_failed(step, e)),
        }
    }

    pub(super) fn memory(&mut self, step: &Step, a: &MemoryArgs) -> StepResult {
        if a.resend == Some(true) {
            // The same table again (same memfds, same addresses): running rings stay valid.
            let mem = self.mem.take().ok_or_else(|| {
                StepError::Harness("`resend` needs an earlier `memory` step".into())
            })?;
            let r = self.session().map(|s| s.set_mem_table(&mem));
            self.mem = Some(mem);
            return self.judge_ack(step, r?, Expect::Ok);
        }
        let specs: Vec<RegionSpec> = match (&a.regions, a.layout.unwrap_or_default()) {
            (Some(r), _) => r.iter().copied().map(RegionSpec::from).collect(),
            (None, Layout::Single) => crate::engine::session::single_layout(),
            (None, Layout::Default) => crate::engine::session::default_layout(),
        };
        let mem = GuestMemory::new(&specs).map_err(|e| StepError::Harness(chain(&e)))?;
        self.queues.clear();
        let via_add = a.via == Some(Via::AddMemReg);
        let session = self.session()?;
        let r = if via_add {
            let mut last = Ok(Ack::NotRequested);
            for region in mem.regions() {
                last = session.add_mem_reg(region);
                if !matches!(last, Ok(Ack::Ok | Ack::NotRequested)) {
                    break;
                }
            }
            last
        } else {
            session.set_mem_table(&mem)
        };
        self.mem = Some(mem);
        self.judge_ack(step, r, Expect::Ok)?;
        // With ACCESS_PLATFORM the device addresses this memory by IOVA (R-IOTLB-03).
        self.iommu_memory()?;
        self.mark(if via_add {
            crate::rules::id::R_MEM_08
        } else {
            crate::rules::id::R_MEM_01
        });
        Ok(())
    }

    pub(super) fn region(
        &self,
        i: usize,
    ) -> Result<vhu_protocol::wire::payload::MemRegion, StepError> {
        let mem = self.mem.as_ref().ok_or_else(|| {
            StepError::Harness("no memory layout yet: add a `memory` step first".into())
        })?;
        mem.regions()
            .get(i)
            .map(|r| r.mem_region())
            .ok_or_else(|| StepError::Harness(format!("the layout has no region {i}")))
    }

    pub(super) fn add_mem_reg(&mut self, step: &Step, a: &AddMemRegArgs) -> StepResult {
        self.region(a.region)?;
        let i = a.region;
        let mem = self.mem.take().expect("checked");
        let r = self.session()?.add_mem_reg(&mem.regions()[i]);
        self.mem = Some(mem);
        self.judge_ack(step, r, Expect::Ok)
    }

    pub(super) fn rem_mem_reg(&mut self, step: &Step, a: &RemMemRegArgs) -> StepResult {
        let mut region = self.region(a.region)?;
        if let Some(t) = a.tweak {
            region.guest_addr = t.guest_addr.unwrap_or(region.guest_addr);
            region.size = t.size.unwrap_or(region.size);
            region.user_addr = t.user_addr.unwrap_or(region.user_addr);
            region.mmap_offset = t.mmap_offset.unwrap_or(region.mmap_offset);
        }
        let r = self.session()?.rem_mem_reg(region);
        self.judge_ack(step, r, Expect::Ok)
    }

    /// The first ring index past the last ring, for a `queue = "past_end"` body; not
    /// applicable when it cannot be written in the body (an 8-bit index in u64 bodies).
    pub(super) fn index_past_end(
        &self,
        body: &vhu_protocol::wire::payload::Body,
    ) -> Result<u32, StepError> {
        let n = self.queue_num_reported.unwrap_or(self.queue_num);
        let idx = crate::device::first_index_past_end(self.offer.device, n);
        let limit = match body {
            vhu_protocol::wire::payload::Body::U64(_) => 0xff,
            _ => u64::from(u32::MAX),
        };
        if idx > limit {
            return Err(StepError::NotApplicable(format!(
                "the first ring index past the last ({idx}, from GET_QUEUE_NUM = {n}) does not fit this message's index field"
            )));
        }
        Ok(idx as u32)
    }

    /// The rings a step's `queue` names: one, every ring GET_QUEUE_NUM stands for, or 0.
    pub(super) fn queue_indices(&self, queue: Option<Queues>) -> Vec<u16> {
        match queue {
            Some(Queues::All) => (0..self.queue_num as u16).collect(),
            Some(Queues::Index(n)) => vec![n],
            None => vec![0],
        }
    }

    pub(super) fn vring(&mut self, step: &Step, a: &VringArgs) -> StepResult {
        // The ring size a scenario asks for, but never more than the back-end accepts
        // (`--queue-size`, or the largest it acked at preflight).
        let asked = a
            .ring_size
            .map_or(128, |s| s.min(u64::from(u16::MAX)) as u16);
        let size = asked.min(self.offer.queue_size).max(1);
        if size < asked && a.ring_size.is_some() {
            self.notes.push(format!(
                "step {}: ring size {asked} lowered to {size}, the largest the back-end accepts",
                self.step_no
            ));
        }
        let event_idx = self.features & VirtioFeatures::EVENT_IDX.bits() != 0;
        let bit30 = self.features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        for idx in self.queue_indices(a.queue) {
            if u64::from(idx) >= self.queue_num {
                // Configuring more queues than reported is a front-end error (R-MQ-02).
                return Err(StepError::NotApplicable(format!(
                    "the scenario needs queue {idx}; the back-end reports {} (GET_QUEUE_NUM)",
                    self.queue_num
                )));
            }
            let mut mem = self.mem.take().ok_or_else(|| {
                StepError::Harness("no memory yet: add a `memory` step before `vring`".into())
            })?;
            let layout = match a.ring.unwrap_or_default() {
                Ring::Split => RingLayout::Split,
                Ring::Packed => RingLayout::Packed,
            };
            let q = DriverQueue::new(&mut mem, idx, size, layout, event_idx);
            let mut q = match q {
                Ok(q) => q,
                Err(e) => {
                    self.mem = Some(mem);
                    return Err(StepError::Harness(chain(&e)));
                }
            };
            q.inject_kick = a.kick.unwrap_or(true);
            q.call_fd = a.call_fd.unwrap_or(true);
            q.reverse_setup = a.reverse_setup.unwrap_or(false);
            q.kick_fd = a.kick_fd.unwrap_or(true);
            let base = a.base.unwrap_or_else(|| q.initial_base());
            let session = self.session()?;
            let mut r = q.setup(session, &mem, base);
            if r.is_ok() && bit30 && a.enable.unwrap_or(true) {
                r = session.checked(FrontendReq::SetVringEnable, |s| {
                    s.set_vring_enable(idx.into(), true)
                });
            }
            self.mem = Some(mem);
            if let Err(e) = r {
                return Err(self.session_failed(step, e));
            }
            self.queues.insert(idx, q);
            self.idle.remove(&idx);
            self.ring_replaced(idx);
            self.mark(crate::rules::id::R_VRING_01);
        }
        Ok(())
    }

    pub(super) fn enable(&mut self, step: &Step, a: &EnableArgs) -> StepResult {
        for idx in self.queue_indices(a.queue) {
            let on = a.on.unwrap_or(true);
            if on {
                self.idle.remove(&idx);
            } else {
                self.idle.insert(idx);
            }
            let r = self.session()?.set_vring_enable(idx.into(), on);
            self.judge_ack(step, r, Expect::Ok)?;
        }
        Ok(())
    }

    pub(super) fn get_vring_base(&mut self, step: &Step, a: &GetVringBaseArgs) -> StepResult {
        let idx = self.queue_indices(a.queue)[0];
        self.idle.insert(idx);
        let r = self.session()?.get_vring_base(idx.into());
        let state = r.map_err(|e| self.session_failed(step, e))?;
        let want = match a.num {
            Some(VringNum::Value(n)) => Some(n as u32),
            // Split: the next avail index. Packed: avail index and wrap (bits 0-15) and used
            // index and wrap (bits 16-31) (R-VRING-07).
            Some(VringNum::Reached) => self.queues.get(&idx).map(|q| {
                let avail = u32::from(q.avail_idx());
                match (q.layout(), self.mem.as_ref()) {
                    (RingLayout::Packed, Some(mem)) => avail | u32::from(q.used_idx(mem)) << 16,
                    _ => avail,
                }
            }),
            None => None,
        };
        if state.index != u32::from(idx) {
            return Err(self.fail(
                id::R_VRING_08,
                &format!(
                    "GET_VRING_BASE reply names ring {}, asked {idx}",
                    state.index
                ),
                "the reply's index equals the requested ring",
                format!("{state:?}"),
            ));
        }
        self.mark(crate::rules::id::R_VRING_08);
        if want.is_some() {
            self.mark(crate::rules::id::R_RING_11);
            self.mark(self.rule_of(step));
        }
        if let Some(w) = want.filter(|&w| w != state.num) {
            return Err(self.finding(
                step,
                &format!(
                    "GET_VRING_BASE returned {}, the ring reached {w}",
                    state.num
                ),
                &format!("num = {w}, the next avail index the back-end would process"),
                format!("{state:?}"),
            ));
        }
        Ok(())
    }
}

/// The bits a `negotiate` step takes: `all` (every one offered and required), or exactly those
/// it names.
fn select_bits<const VIRTIO: bool>(sel: &Features<VIRTIO>, all: u64) -> u64 {
    match sel {
        Features::All => all,
        Features::Only(names) => names.iter().fold(0, |a, n| a | n.bits()),
    }
}
