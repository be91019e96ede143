//! IOTLB steps (spec "IOMMU support", checklist 4.18 and R-MEM-19). With VIRTIO_F_ACCESS_PLATFORM
//! negotiated, the `memory` step puts guest memory behind the harness's IOMMU: each region is
//! mapped at an IOVA chosen so that a back-end ignoring the IOMMU fails visibly (region 0's IOVAs
//! are region 1's guest range, and no IOVA is a user address), descriptors and ring addresses
//! carry IOVAs, and the back-end channel answers misses from those mappings (R-IOTLB-04, the
//! front-end's side). The `iotlb` step sends updates and invalidations and judges their u64
//! replies (R-IOTLB-02), sends an update outside memory (R-IOTLB-05), holds and releases misses,
//! and checks that misses came (R-IOTLB-03) and that nothing was reached through the region
//! guest addresses (R-MEM-19).

use std::time::{Duration, Instant};

use vhu_mock_frontend::iommu::{Mapping, MissAnswer, PERM_RW, TYPE_ACCESS_FAIL, TYPE_MISS};
use vhu_mock_frontend::{Ack, SessionError};
use vhu_protocol::wire::payload::IotlbMsg;
use vhu_protocol::{BackendReq, VirtioFeatures};
use zerocopy::FromBytes;

use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::model::{IotlbArgs, IotlbOp, Step};

/// The region nothing is allocated in behind the IOMMU: region 0's IOVAs are its guest range,
/// so a device that takes an IOVA for a guest address writes here.
const DECOY_REGION: usize = 1;

/// Where the harness stands in an IOMMU scenario.
#[derive(Debug, Default)]
pub(super) struct IotlbState {
    /// Back-end channel requests received before the last `map`, `unmap`, `hold` or `release`
    /// began: `expect_miss` looks at those after.
    since: usize,
    /// The mappings were invalidated (`unmap`) and not mapped again.
    pub(super) invalidated: bool,
    /// The miss answers already judged (R-IOTLB-02).
    judged: usize,
}

impl Ctx<'_> {
    /// Whether ring and descriptor addresses are IOVAs in this session.
    pub(super) fn iommu_negotiated(&self) -> bool {
        self.features & VirtioFeatures::ACCESS_PLATFORM.bits() != 0
    }

    /// Puts the new guest memory behind the IOMMU when ACCESS_PLATFORM is negotiated.
    pub(super) fn iommu_memory(&mut self) -> StepResult {
        if !self.iommu_negotiated() {
            return Ok(());
        }
        let Some(mem) = self.mem.as_mut() else {
            return Ok(());
        };
        let specs: Vec<_> = mem.regions().iter().map(|r| r.spec).collect();
        mem.map_iova(vhu_mock_frontend::GuestMemory::iova_bases_for(&specs))
            .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
        let mappings = mem.iommu_mappings();
        self.session()?.iommu().set_mappings(mappings);
        self.iotlb = IotlbState::default();
        Ok(())
    }

    /// What the device wrote where only an IOVA taken for a guest address leads: the decoy
    /// region's first non-zero byte, while nothing was allocated there.
    pub(super) fn guest_addr_write(&self) -> Option<String> {
        let mem = self.mem.as_ref()?;
        if !mem.behind_iommu()
            || mem.regions().len() <= DECOY_REGION
            || mem.mark().0 >= DECOY_REGION
        {
            return None;
        }
        let (gpa, byte) = mem.first_nonzero(DECOY_REGION)?;
        Some(format!(
            "the device wrote {byte:#04x} at guest address {gpa:#x}, in region {DECOY_REGION}, \
             where the harness put nothing: that is where the memory table's guest addresses \
             put the IOVA {gpa:#x} (region 0's IOVAs are region {DECOY_REGION}'s guest range), \
             not where the IOTLB maps it"
        ))
    }

    /// How to say that a request a `no_reply` step left waiting on queue `idx` completed: from
    /// IOTLB entries the front-end had invalidated (R-IOTLB-03), when they were and the ring
    /// runs, else on a ring that must not be processed. The summary and what was expected.
    pub(super) fn completed_anyway(&self, idx: u16, what: &str) -> (String, &'static str) {
        if self.iotlb.invalidated && !self.idle.contains(&idx) {
            (
                format!(
                    "{what} on queue {idx} completed from IOTLB entries the front-end had invalidated"
                ),
                "after the invalidation, no completion before a miss is answered with a new update",
            )
        } else {
            (
                format!("{what} on queue {idx} was processed although the ring must not be"),
                "no used buffer and no call while the ring is stopped or disabled",
            )
        }
    }

    pub(super) fn iotlb_step(&mut self, step: &Step, a: &IotlbArgs) -> StepResult {
        if !self.iommu_negotiated() {
            return Err(StepError::Harness(
                "an `iotlb` step needs ACCESS_PLATFORM negotiated: list it in `requires`".into(),
            ));
        }
        let op = a.op;
        if matches!(
            op,
            IotlbOp::Map | IotlbOp::Unmap | IotlbOp::Hold | IotlbOp::Release
        ) {
            // `expect_miss` looks at what came from here on: a back-end that polls its rings
            // may miss while the invalidations are still being answered.
            self.iotlb.since = self.channel_records().len();
        }
        match op {
            IotlbOp::Map => self.iotlb_map(step, a.need_reply, false),
            IotlbOp::Unmap => self.iotlb_map(step, a.need_reply, true),
            IotlbOp::Outside => self.iotlb_outside(step, a.need_reply),
            IotlbOp::Hold | IotlbOp::Release => {
                self.session()?.iommu().hold(op == IotlbOp::Hold);
                Ok(())
            }
            IotlbOp::ExpectMiss => self.iotlb_expect_miss(step, a.window_ms),
            IotlbOp::Check => self.iotlb_check(),
        }
    }

    /// `map`: an update per mapping; `unmap`: an invalidation per mapping. Each is answered
    /// with a u64 whatever NEED_REPLY says, 0 on success (R-IOTLB-02).
    fn iotlb_map(&mut self, step: &Step, need_reply: Option<bool>, invalidate: bool) -> StepResult {
        let mappings = self.session()?.iommu().mappings();
        if mappings.is_empty() {
            return Err(StepError::Harness(
                "no IOMMU mappings: a `memory` step after `negotiate` creates them".into(),
            ));
        }
        let rule = step.rule.unwrap_or(id::R_IOTLB_02);
        let what = if invalidate { "invalidation" } else { "update" };
        let need_reply = self.iotlb_need_reply(need_reply);
        for m in &mappings {
            let s = self.session()?;
            let r = if invalidate {
                s.iotlb_invalidate(m, need_reply)
            } else {
                s.iotlb_update(m, need_reply)
            };
            self.mark(rule);
            match r {
                Ok(Ack::Ok | Ack::NotRequested) => {}
                Ok(Ack::Failed(v)) => {
                    return Err(self.fail(
                        rule,
                        &format!(
                            "the IOTLB {what} of a mapping inside guest memory was answered {v}"
                        ),
                        "a u64 reply of 0 (success)",
                        format!("u64 {v} for {}", describe(m)),
                    ));
                }
                Err(e) => return Err(self.iotlb_error(rule, what, need_reply, e)),
            }
        }
        self.iotlb.invalidated = invalidate;
        Ok(())
    }

    /// NEED_REPLY on IOTLB_MSG: the step's `need_reply`, else as QEMU (whenever REPLY_ACK is
    /// negotiated). The reply is due either way; `need_reply = false` checks just that.
    fn iotlb_need_reply(&self, need_reply: Option<bool>) -> bool {
        let reply_ack = self.protocol & vhu_protocol::ProtocolFeatures::REPLY_ACK.bits() != 0;
        need_reply.unwrap_or(reply_ack)
    }

    /// A session error on IOTLB_MSG: no reply at all, without NEED_REPLY, is the ack-only
    /// reading R-IOTLB-02 rules out.
    fn iotlb_error(
        &mut self,
        rule: crate::rules::RuleId,
        what: &str,
        need_reply: bool,
        e: SessionError,
    ) -> StepError {
        if let SessionError::Timeout { waited, .. } = &e {
            let how = if need_reply {
                "it was sent with NEED_REPLY"
            } else {
                "it was sent without NEED_REPLY, and the reply is due anyway: IOTLB_MSG is not \
                 an ack-only message"
            };
            return self.fail(
                rule,
                &format!("the IOTLB {what} got no reply within {waited:?} ({how})"),
                "a u64 reply (0 on success, non-zero otherwise) to every IOTLB_MSG",
                "nothing".into(),
            );
        }
        self.session_error(rule, e)
    }

    /// `outside`: an update whose user range lies past every region must be refused (a non-zero
    /// reply, or the connection closed: R-IOTLB-05, SHOULD).
    fn iotlb_outside(&mut self, step: &Step, need_reply: Option<bool>) -> StepResult {
        let rule = step.rule.unwrap_or(id::R_IOTLB_05);
        let mem = self.mem.as_ref().ok_or_else(|| {
            StepError::Harness("no memory yet: add a `memory` step before `iotlb`".into())
        })?;
        let end = mem
            .regions()
            .iter()
            .map(|r| r.spec.user_addr + r.spec.size)
            .max()
            .unwrap_or(0);
        let iova_end = mem
            .iommu_mappings()
            .iter()
            .map(|m| m.iova + m.size)
            .max()
            .unwrap_or(0);
        // A user range 1 GiB past the last region's end, at an IOVA no mapping uses.
        let m = Mapping {
            iova: iova_end.next_multiple_of(1 << 30) + (1 << 30),
            size: 0x1_0000,
            uaddr: end.next_multiple_of(1 << 30) + (1 << 30),
            perm: PERM_RW,
        };
        let need_reply = self.iotlb_need_reply(need_reply);
        let r = self.session()?.iotlb_update(&m, need_reply);
        self.mark(rule);
        match r {
            Ok(Ack::Failed(_)) | Err(SessionError::Closed { .. }) => Ok(()),
            Ok(_) => Err(self.fail(
                rule,
                "an IOTLB update whose user range lies outside every memory region was answered 0 (accepted)",
                "a non-zero reply: the update's addresses are not in the memory table",
                format!("u64 0 for {}", describe(&m)),
            )),
            Err(e) => Err(self.iotlb_error(id::R_IOTLB_02, "update", need_reply, e)),
        }
    }

    /// `expect_miss`: a miss or access failure since the last map, unmap, hold or release began, for an IOVA
    /// the IOMMU maps (R-IOTLB-03); the updates sent for misses so far answered 0.
    fn iotlb_expect_miss(&mut self, step: &Step, window_ms: Option<u64>) -> StepResult {
        let rule = step.rule.unwrap_or(id::R_IOTLB_03);
        // How long a miss may take to show is not judged: a back-end starved of CPU (one that
        // busy-polls its rings, on a loaded machine) sends it late, and late is still a miss.
        let window = window_ms.map_or(self.opts.step_timeout, Duration::from_millis);
        let deadline = Instant::now() + window;
        let mappings = self.session()?.iommu().mappings();
        let since = self.iotlb.since;
        let records = self.wait_channel(deadline, |r| !misses_in(r, since).is_empty());
        let found = misses_in(&records, since).first().copied();
        self.mark(rule);
        let Some(m) = found else {
            let what = if self.iotlb.invalidated {
                "after the IOTLB entries were invalidated, a request was made available and \
                 kicked, but no miss came on the back-end channel"
            } else {
                "requests through addresses the IOTLB did not map were made available and \
                 kicked, but no miss came on the back-end channel"
            };
            return Err(self.fail(
                rule,
                what,
                "BACKEND_IOTLB_MSG type 1 (miss: iova, perm) or 4 (access failure) for an address the IOTLB lacks",
                format!("no BACKEND_IOTLB_MSG within {window:?}"),
            ));
        };
        if !mappings.iter().any(|x| x.covers(m.iova, 0)) {
            return Err(self.fail(
                rule,
                &format!(
                    "the back-end reported a miss at iova {:#x}, which no ring or buffer uses",
                    m.iova
                ),
                "misses for the IOVAs of the rings and buffers the driver gave",
                format!("{m:?}; the IOMMU maps {}", list(&mappings)),
            ));
        }
        self.judge_miss_answers()
    }

    /// Each update sent for a miss was answered with a u64 0 (R-IOTLB-02: always answered,
    /// also when the channel's thread sends it, without NEED_REPLY).
    fn judge_miss_answers(&mut self) -> StepResult {
        // A miss being answered: its update's reply may take up to the reply timeout (and a
        // request can complete before it, the back-end having applied the update).
        let wait = self.opts.step_timeout + Duration::from_millis(100);
        let answers: Vec<MissAnswer> = self
            .session
            .as_ref()
            .map(|s| {
                s.iommu().settle(wait);
                s.iommu().answers()
            })
            .unwrap_or_default();
        let new = answers
            .get(self.iotlb.judged..)
            .unwrap_or_default()
            .to_vec();
        self.iotlb.judged = answers.len();
        for a in new {
            let Some(m) = a.update else { continue };
            self.mark(id::R_IOTLB_02);
            if a.reply != Ok(0) {
                let got = match &a.reply {
                    Ok(v) => format!("u64 {v}"),
                    Err(e) => e.clone(),
                };
                return Err(self.fail(
                    id::R_IOTLB_02,
                    &format!(
                        "the IOTLB update answering the miss at iova {:#x} was not answered 0",
                        a.miss.iova
                    ),
                    "a u64 reply of 0 to an update inside guest memory, with or without NEED_REPLY",
                    format!("{got} for {}", describe(&m)),
                ));
            }
        }
        Ok(())
    }

    /// `check`: the decoy region untouched (R-MEM-19) and the miss answers judged.
    fn iotlb_check(&mut self) -> StepResult {
        if let Some(write) = self.guest_addr_write() {
            return Err(self.fail(
                id::R_MEM_19,
                "with ACCESS_PLATFORM, the device reached guest memory through the region guest addresses",
                "every ring and buffer access through the IOTLB; the region guest addresses unused",
                write,
            ));
        }
        self.mark(id::R_MEM_19);
        self.judge_miss_answers()
    }
}

fn describe(m: &Mapping) -> String {
    format!(
        "iova {:#x} size {:#x} uaddr {:#x} perm {}",
        m.iova, m.size, m.uaddr, m.perm
    )
}

fn list(mappings: &[Mapping]) -> String {
    mappings.iter().map(describe).collect::<Vec<_>>().join(", ")
}

/// The misses and access failures among `records` from index `since` on.
fn misses_in(records: &[vhu_mock_frontend::channel::BackendRecord], since: usize) -> Vec<IotlbMsg> {
    records
        .iter()
        .skip(since)
        .filter(|r| r.code == BackendReq::IotlbMsg as u32)
        .filter_map(|r| IotlbMsg::read_from_bytes(&r.payload).ok())
        .filter(|m| matches!(m.kind, TYPE_MISS | TYPE_ACCESS_FAIL))
        .collect()
}
