//! The liveness probe (checklist section 4, "liveness probe" and "data-path probe"): after a
//! step whose message the back-end may reject, a GET_FEATURES round trip (on this connection,
//! or a new one if it was closed) shows the back-end still serves, and where rings run a
//! virtio-blk GET_ID shows the data path still works. A crash or hang is tied to the message.

use vhu_mock_frontend::blk::{self, BlkReq};

use super::{Ctx, StepResult};
use crate::scenario::Expect;
use crate::scenario::model::Step;

impl Ctx<'_> {
    /// Probes after `step` if the back-end may have rejected what it sent.
    pub(super) fn liveness(&mut self, step: &Step) -> StepResult {
        let may_reject = matches!(
            step.expect,
            Some(Expect::AckFail | Expect::Rejected | Expect::Closed | Expect::NoReply)
        ) && !step.action.is_blk_request();
        if !may_reject {
            return Ok(());
        }
        let trigger = self.last_sent();
        let had_session = self.session.is_some();
        self.alive(step)?;
        // The data path only where this connection's rings run and the scenario drives blk.
        let uses_blk = (self.scenario.spec.steps.iter()).any(|s| s.action.is_blk_request());
        let Some(&idx) = self.queues.keys().find(|i| !self.idle.contains(i)) else {
            return Ok(());
        };
        if !had_session || !uses_blk || !self.pending.is_empty() {
            return Ok(());
        }
        let (Some(mut q), Some(mut mem)) = (self.queues.remove(&idx), self.mem.take()) else {
            return Ok(());
        };
        let r = blk::blk_request(&mut q, &mut mem, BlkReq::get_id(), self.opts.step_timeout);
        self.queues.insert(idx, q);
        self.mem = Some(mem);
        match r {
            Ok(o) if o.status == vhu_protocol::virtio::blk::S_OK => Ok(()),
            other => Err(self.finding(
                step,
                &format!("the data path stopped working on queue {idx} after {trigger}"),
                "a rejected message leaves running rings working: a GET_ID request completes",
                format!("{other:?}"),
            )),
        }
    }
}
