//! When a ring starts (checklist R-RING-01, R-RING-03, R-RING-04): a ring configured but not
//! given SET_VRING_KICK is stopped, so a request on it waits; SET_VRING_KICK starts it, and
//! buffers made available before then are processed without a further kick. virtio-blk GET_ID
//! requests are the probe.

use std::time::Duration;

use vhu_mock_frontend::blk::{self, BlkReq};
use vhu_mock_frontend::{DriverQueue, GuestMemory, RingLayout};
use vhu_protocol::{FrontendReq, VirtioFeatures};

use super::{Builtin, BuiltinMeta, default_memory};
use crate::device::DeviceType;
use crate::engine::{Ctx, StepError, chain};
use crate::rules::id;
use crate::scenario::{Action, Level, Step};

/// How long a request on a ring that is not started must stay unprocessed.
const STOPPED_WINDOW: Duration = Duration::from_millis(300);

/// Which start-up rule is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A configured ring without SET_VRING_KICK processes nothing; SET_VRING_KICK starts it.
    NotStartedBeforeKick,
    /// Buffers available when SET_VRING_KICK arrives are processed without a kick.
    AvailableBeforeStart,
}

/// One ring start-up scenario.
#[derive(Debug)]
pub struct RingStart(pub Probe);

impl Probe {
    const NOT_STARTED_BEFORE_KICK: BuiltinMeta = BuiltinMeta {
        id: "vring/not-started-before-kick",
        title: "A ring set up and enabled but not given SET_VRING_KICK processes no request; SET_VRING_KICK starts it",
        rules: &[id::R_RING_01, id::R_RING_03, id::R_RING_08],
        device: Some(DeviceType::Block),
        description: "Queue 0 gets SET_VRING_NUM, BASE, ADDR, CALL, ERR and SET_VRING_ENABLE(1) but no \
SET_VRING_KICK (the enable, sent while the ring is stopped, must hold once it starts: R-RING-08). A GET_ID request is made available and kicked on the eventfd the back-end does \
not have yet: a new ring is stopped (R-RING-01), so nothing may be used within 300 ms. Then \
SET_VRING_KICK with that eventfd (its kick pending) starts the ring and the request completes \
(R-RING-03).",
        ..BuiltinMeta::DEFAULT
    };
    const AVAILABLE_BEFORE_START: BuiltinMeta = BuiltinMeta {
        id: "vring/available-before-start",
        title: "A request made available before SET_VRING_KICK is processed once the ring starts, without a kick",
        rules: &[id::R_RING_04],
        level: Level::Should,
        device: Some(DeviceType::Block),
        description: "As for vring/not-started-before-kick, but the kick is taken back from the eventfd \
before SET_VRING_KICK: the ring starts with a request available and no kick pending. The \
back-end should look at the ring when it starts (R-RING-04), so the request completes.",
        ..BuiltinMeta::DEFAULT
    };
}

impl Builtin for RingStart {
    fn meta(&self) -> &'static BuiltinMeta {
        match self.0 {
            Probe::NotStartedBeforeKick => &Probe::NOT_STARTED_BEFORE_KICK,
            Probe::AvailableBeforeStart => &Probe::AVAILABLE_BEFORE_START,
        }
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        let features = ctx.session_mut()?.acked_features().unwrap_or(0);
        let mut mem = default_memory(ctx)?;
        let event_idx = features & VirtioFeatures::EVENT_IDX.bits() != 0;
        let mut q = DriverQueue::new(&mut mem, 0, ctx.queue_size(), RingLayout::Split, event_idx)
            .map_err(|e| StepError::Harness(chain(&e)))?;
        q.inject_kick = false;
        let s = ctx.session_mut()?;
        let r = q.configure(s, &mem, 0).and_then(|()| {
            let bit30 = features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
            if bit30 {
                s.checked(FrontendReq::SetVringEnable, |s| s.set_vring_enable(0, true))
            } else {
                Ok(())
            }
        });
        r.map_err(|e| ctx.setup_error(id::R_VRING_01, e))?;
        let pending = blk::blk_submit(&mut q, &mut mem, BlkReq::get_id())
            .map_err(|e| StepError::Harness(chain(&e)))?;
        let result = self.judge(ctx, &mut q, &mut mem, &pending);
        blk::blk_release(&mut mem, pending);
        if result.is_ok() && features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            // SET_VRING_ENABLE(1) came while the ring was stopped, and held once it started.
            ctx.mark(id::R_RING_08);
        }
        result
    }
}

impl RingStart {
    fn judge(
        &self,
        ctx: &mut Ctx<'_>,
        q: &mut DriverQueue,
        mem: &mut GuestMemory,
        pending: &blk::Pending,
    ) -> Result<(), StepError> {
        let harness = |e: vhu_mock_frontend::WaitError| StepError::Harness(chain(&e));
        match self.0 {
            Probe::NotStartedBeforeKick => {
                let early = blk::blk_wait(q, mem, pending, STOPPED_WINDOW).map_err(harness)?;
                ctx.mark(id::R_RING_01);
                if let Some(o) = early {
                    return Err(ctx.fail(
                        id::R_RING_01,
                        "a request on a ring that never got SET_VRING_KICK was processed",
                        "a new ring is stopped: nothing used until SET_VRING_KICK starts it",
                        format!("used within {STOPPED_WINDOW:?}: {o:?}"),
                    ));
                }
            }
            Probe::AvailableBeforeStart => q.clear_kicks(),
        }
        let s = ctx.session_mut()?;
        let r = q.start(s);
        r.map_err(|e| ctx.setup_error(id::R_VRING_01, e))?;
        let rule = match self.0 {
            Probe::NotStartedBeforeKick => id::R_RING_03,
            Probe::AvailableBeforeStart => id::R_RING_04,
        };
        let done = blk::blk_wait(q, mem, pending, ctx.step_timeout()).map_err(harness)?;
        ctx.mark(rule);
        if done.is_none() {
            let why = match self.0 {
                Probe::NotStartedBeforeKick => {
                    "the request stayed unprocessed although SET_VRING_KICK started the ring with a kick pending on its eventfd"
                }
                Probe::AvailableBeforeStart => {
                    "the request made available before SET_VRING_KICK stayed unprocessed once the ring started (no kick after it)"
                }
            };
            return Err(ctx.fail(
                rule,
                why,
                "the ring processed from the moment SET_VRING_KICK starts it",
                format!("nothing used within {:?}", ctx.step_timeout()),
            ));
        }
        Ok(())
    }
}

/// GET_VRING_BASE answers only once the requests the back-end took are completed
/// (R-VRING-09): the base it returns is reached by the used index.
#[derive(Debug)]
pub struct BaseAfterInflight;

/// Requests in flight when GET_VRING_BASE is sent.
const IN_FLIGHT: usize = 16;

/// What [`BaseAfterInflight`] declares.
const BASE_AFTER_INFLIGHT_META: BuiltinMeta = BuiltinMeta {
    id: "vring/get-base-drains-in-flight",
    title: "GET_VRING_BASE sent right after 16 requests replies only once every request it took is used",
    rules: &[id::R_VRING_09],
    device: Some(DeviceType::Block),
    description: "Queue 0 running; 16 GET_ID requests are made available (one kick each) and \
GET_VRING_BASE follows at once. Its reply's num is the next avail index the back-end would take: \
the spec (GET_VRING_BASE without SKIP_DRAIN) has every in-flight request completed before the \
reply, so the used index in guest memory, read as soon as the reply arrives, must equal it.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for BaseAfterInflight {
    fn meta(&self) -> &'static BuiltinMeta {
        &BASE_AFTER_INFLIGHT_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        let features = ctx.session_mut()?.acked_features().unwrap_or(0);
        let mut mem = default_memory(ctx)?;
        let mut q = super::start_queue(ctx, &mut mem, features, id::R_VRING_01, |_| {})?;
        let mark = mem.mark();
        for _ in 0..IN_FLIGHT.min(usize::from(ctx.queue_size() / 3)) {
            blk::blk_submit(&mut q, &mut mem, BlkReq::get_id())
                .map_err(|e| StepError::Harness(chain(&e)))?;
        }
        let r = ctx.session_mut()?.get_vring_base(0);
        let used = q.used_idx(&mem);
        let state = r.map_err(|e| ctx.session_error(id::R_VRING_09, e))?;
        mem.release(mark);
        ctx.mark(id::R_VRING_09);
        let base = state.num as u16;
        if used != base {
            return Err(ctx.fail(
                id::R_VRING_09,
                "GET_VRING_BASE replied before the requests it had taken were completed",
                "the used index equal to the returned base when the reply arrives",
                format!("base {base}, used index {used} when the reply arrived"),
            ));
        }
        ctx.note(format!("GET_VRING_BASE returned {base}; used index {used}"));
        Ok(())
    }
}
