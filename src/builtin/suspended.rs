//! A suspended device (checklist R-RING-12, R-MIG-12): once every ring is stopped with
//! GET_VRING_BASE, the back-end writes nothing into guest memory, signals nothing and sends
//! nothing on its channel, yet answers every front-end message; the same holds during and after
//! a device state transfer. virtio-blk GET_ID requests are the probe.

use std::time::Duration;

use vhu_mock_frontend::blk::{self, BlkReq};

use super::{Builtin, BuiltinMeta, Needs, default_memory, start_queue};
use crate::device::DeviceType;
use crate::engine::{Ctx, StepError, chain};
use crate::fuzz::oracle::Snapshot;
use crate::rules::id;
use crate::scenario::{Action, Step};

/// How long the suspended device is watched.
const WATCH: Duration = Duration::from_millis(300);

/// With or without a state transfer while suspended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Rings stopped, nothing else.
    Stopped,
    /// Rings stopped, then the state saved (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE).
    AfterSave,
}

/// One suspended-device scenario.
#[derive(Debug)]
pub struct Suspended(pub When);

/// What both [`Suspended`] scenarios declare; each variant adds its id, title, rules and
/// features.
const SUSPENDED: BuiltinMeta = BuiltinMeta {
    device: Some(DeviceType::Block),
    description: "Queue 0 (the only ring set up) runs one GET_ID request, then GET_VRING_BASE stops it: \
the device is suspended. (With the save variant, SET_DEVICE_STATE_FD saves its state then.) A \
GET_ID request is made available and kicked; for 300 ms guest memory must not change at all, the \
call eventfd must stay silent and no back-end request may arrive on the channel. GET_FEATURES \
and GET_PROTOCOL_FEATURES are still answered.",
    ..BuiltinMeta::DEFAULT
};

impl When {
    const STOPPED: BuiltinMeta = BuiltinMeta {
        id: "vring/suspended-device-is-quiet",
        title: "With every ring stopped, a kicked request is not processed: no guest-memory write, no call, no channel message, and messages are still answered",
        rules: &[id::R_RING_12],
        ..SUSPENDED
    };
    const AFTER_SAVE: BuiltinMeta = BuiltinMeta {
        id: "migration/suspended-after-save-is-quiet",
        title: "After the device state is saved (rings stopped), a kicked request is not processed: no guest-memory write, no call, no channel message",
        rules: &[id::R_MIG_12, id::R_RING_12],
        requires: Needs::protocol(&["DEVICE_STATE"]),
        ..SUSPENDED
    };
}

impl Builtin for Suspended {
    fn meta(&self) -> &'static BuiltinMeta {
        match self.0 {
            When::Stopped => &When::STOPPED,
            When::AfterSave => &When::AFTER_SAVE,
        }
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let rule = match self.0 {
            When::Stopped => id::R_RING_12,
            When::AfterSave => id::R_MIG_12,
        };
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        let features = ctx.session_mut()?.acked_features().unwrap_or(0);
        let mut mem = default_memory(ctx)?;
        let mut q = start_queue(ctx, &mut mem, features, id::R_VRING_01, |_| {})?;
        let timeout = ctx.step_timeout();
        if let Err(e) = blk::blk_request(&mut q, &mut mem, BlkReq::get_id(), timeout) {
            return Err(StepError::NotApplicable(format!(
                "the running ring does not complete a GET_ID request ({}), so a suspended one cannot be told from a broken one",
                chain(&e)
            )));
        }
        let r = ctx.session_mut()?.get_vring_base(0);
        r.map_err(|e| ctx.session_error(id::R_RING_12, e))?;
        if self.0 == When::AfterSave {
            let save = Step::of(Action::SaveState(Default::default())).citing(id::R_MIG_12);
            ctx.step(&save)?;
        }
        let channel_before = ctx.session_mut()?.channel().map(|c| c.requests().len());
        let pending = blk::blk_submit(&mut q, &mut mem, BlkReq::get_id())
            .map_err(|e| StepError::Harness(chain(&e)))?;
        let calls_before = q.calls;
        let snap = Snapshot::take(&mem, vec![]);
        let used = blk::blk_wait(&mut q, &mem, &pending, WATCH);
        let used = used.map_err(|e| StepError::Harness(chain(&e)))?;
        let written = snap.corrupted(&mem);
        let called = q.calls_now() > calls_before;
        blk::blk_release(&mut mem, pending);
        let channel_after = ctx.session_mut()?.channel().map(|c| c.requests().len());
        ctx.mark(rule);
        ctx.mark(id::R_RING_12);
        let mut problems = Vec::new();
        if let Some(o) = used {
            problems.push(format!("the request was processed ({o:?})"));
        }
        if let Some(f) = written {
            problems.push(f.detail);
        }
        if called {
            problems.push("the call eventfd was signalled".into());
        }
        if let (Some(b), Some(a)) = (channel_before, channel_after)
            && a > b
        {
            problems.push(format!(
                "{} back-end requests arrived on the channel",
                a - b
            ));
        }
        if !problems.is_empty() {
            return Err(ctx.fail(
                rule,
                &format!("the suspended device was not quiet: {}", problems.join("; ")),
                "with every ring stopped: no guest-memory write, no notification, no back-end request",
                format!("within {WATCH:?} of a kick on stopped queue 0"),
            ));
        }
        let probe = Step::of(Action::Probe(Default::default())).citing(id::R_RING_12);
        ctx.step(&probe)?;
        let r = ctx.session_mut()?.get_protocol_features();
        r.map(drop).map_err(|e| ctx.session_error(id::R_RING_12, e))
    }
}
