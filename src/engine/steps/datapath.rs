//! Data-path steps: virtio-blk requests through the driver queues, judged on status, used
//! length, canaries, notifications and data (checklist 4.3, R-RING-07), and call fd swaps.

use crate::rules::id;
use std::time::{Duration, Instant};

use vhu_mock_frontend::blk::{self, BlkOutcome};
use vhu_mock_frontend::{Ack, DriverQueue, GuestMemory, WaitError};
use vhu_protocol::wire::payload::{Body, VringState};
use vhu_protocol::{FrontendReq, Message};

use super::{Ctx, StepError, StepResult};
use crate::engine::{chain, describe_exit};
use crate::scenario::model::{BlkIoArgs, Queues, Step};
use crate::scenario::{Action, Expect};
use crate::target::ProcessState;

impl Ctx<'_> {
    /// Without REPLY_ACK nothing says when an ack-only message (a new call fd, RESET_DEVICE)
    /// took effect: a GET_FEATURES round trip first, since messages are handled in order.
    pub(super) fn sync_unacked(&mut self, step: &Step) -> StepResult {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if s.reply_ack() {
            return Ok(());
        }
        let r = s.get_features();
        r.map(drop).map_err(|e| self.session_failed(step, e))
    }

    /// A virtio-blk request (the step's action says which) on each ring `a.queue` names.
    pub(super) fn blk(&mut self, step: &Step, a: &BlkIoArgs) -> StepResult {
        self.sync_unacked(step)?;
        for idx in self.queue_indices(a.queue) {
            let mut q = self.queues.remove(&idx).ok_or_else(|| {
                StepError::Harness(format!("queue {idx} is not set up: add a `vring` step"))
            })?;
            let mut mem = self
                .mem
                .take()
                .ok_or_else(|| StepError::Harness("no memory".into()))?;
            let sector = a.sector.unwrap_or(0);
            let len = a.sectors.unwrap_or(8) * 512;
            let pattern = a.pattern.unwrap_or(0x5a);
            let data = vec![pattern; len as usize];
            let is_read = matches!(step.action, Action::BlkRead(_));
            let mut req = match step.action {
                Action::BlkWrite(_) => blk::BlkReq::write(sector, &data),
                Action::BlkRead(_) => blk::BlkReq::read(sector, len),
                Action::BlkFlush(_) => blk::BlkReq::flush(),
                _ => blk::BlkReq::get_id(),
            }
            .in_segments(a.segments.unwrap_or(1));
            if a.indirect == Some(true) {
                req = req.through_indirect();
            }
            let inband = a.inband_kick == Some(true);
            let calls_before = self.inband_calls(idx);
            let r = if step.expect == Some(Expect::NoReply) {
                let window = Duration::from_millis(a.window_ms.unwrap_or(300));
                self.blk_must_wait(step, idx, &mut q, &mut mem, req, window)
            } else {
                self.blk_now(step, idx, &mut q, &mut mem, req, inband)
            };
            self.mem = Some(mem);
            self.queues.insert(idx, q);
            if let Some(r) = r? {
                let want = (is_read && a.pattern.is_some()).then_some(pattern);
                self.judge_blk(step, idx, r, want, inband)?;
                self.check_inband_call(step, idx, calls_before)?;
            }
        }
        Ok(())
    }

    /// Submits, kicks (with a VRING_KICK message when `inband_kick`, R-INB-02) and waits.
    fn blk_now(
        &mut self,
        step: &Step,
        idx: u16,
        q: &mut DriverQueue,
        mem: &mut GuestMemory,
        req: blk::BlkReq<'_>,
        inband_kick: bool,
    ) -> Result<Option<Result<BlkOutcome, WaitError>>, StepError> {
        let pending = match blk::blk_submit(q, mem, req) {
            Ok(p) => p,
            Err(e) => return Ok(Some(Err(e))),
        };
        if inband_kick {
            let kick = Body::VringState(VringState {
                index: idx.into(),
                num: 0,
            });
            let r = self
                .session()?
                .request(FrontendReq::VringKick, &kick, &[], None);
            let ack = r.map(|m| match m.as_ref().and_then(Message::u64) {
                None => Ack::NotRequested,
                Some(0) => Ack::Ok,
                Some(v) => Ack::Failed(v),
            });
            if let Err(e) = self.judge_ack(step, ack, Expect::Ok) {
                blk::blk_release(mem, pending);
                return Err(e);
            }
        }
        Ok(Some(blk::blk_complete(
            q,
            mem,
            pending,
            self.opts.step_timeout,
        )))
    }

    /// BACKEND_VRING_CALL requests for ring `idx` received on the back-end channel so far.
    fn inband_calls(&self, idx: u16) -> usize {
        inband_calls_in(&self.channel_records(), idx)
    }

    /// R-INB-04: a ring without a call fd, with in-band notifications negotiated, is signalled
    /// with BACKEND_VRING_CALL on the back-end channel.
    fn check_inband_call(&mut self, step: &Step, idx: u16, before: usize) -> StepResult {
        let inband =
            self.protocol & vhu_protocol::ProtocolFeatures::INBAND_NOTIFICATIONS.bits() != 0;
        let no_call_fd = self.queues.get(&idx).is_some_and(|q| !q.call_fd);
        if !(inband && no_call_fd) {
            return Ok(());
        }
        self.mark(id::R_INB_04);
        let deadline = Instant::now() + Duration::from_millis(300);
        let records = self.wait_channel(deadline, |r| inband_calls_in(r, idx) > before);
        if inband_calls_in(&records, idx) > before {
            return Ok(());
        }
        Err(self.fail(
            id::R_INB_04,
            &format!("queue {idx} completed a request without BACKEND_VRING_CALL"),
            "without a call fd and with in-band notifications, BACKEND_VRING_CALL (num 0) on the back-end channel",
            format!("no BACKEND_VRING_CALL for the ring within 300 ms of step {}'s completion", step.action.name()),
        ))
    }

    /// Submits a request that the back-end must not complete (ring disabled or stopped); it
    /// stays pending for a later `blk_complete`.
    pub(super) fn blk_must_wait(
        &mut self,
        step: &Step,
        idx: u16,
        q: &mut DriverQueue,
        mem: &mut GuestMemory,
        req: blk::BlkReq<'_>,
        window: Duration,
    ) -> Result<Option<Result<BlkOutcome, WaitError>>, StepError> {
        let pending = blk::blk_submit(q, mem, req).map_err(|e| StepError::Harness(chain(&e)))?;
        match blk::blk_wait(q, mem, &pending, window) {
            Ok(None) => {
                self.pending.insert(idx, pending);
                self.mark(self.rule_of(step));
                Ok(None)
            }
            Ok(Some(o)) => {
                blk::blk_release(mem, pending);
                self.mark(self.rule_of(step));
                let (summary, expected) = self.completed_anyway(idx, step.action.name());
                Err(self.finding(step, &summary, expected, format!("{o:?}")))
            }
            Err(e) => Err(StepError::Harness(chain(&e))),
        }
    }

    pub(super) fn blk_complete(&mut self, step: &Step, queue: Option<Queues>) -> StepResult {
        for idx in self.queue_indices(queue) {
            let pending = self.pending.remove(&idx).ok_or_else(|| StepError::Harness(format!("no pending request on queue {idx}: use a blk step with expect = \"no_reply\" first")))?;
            let mut q = self
                .queues
                .remove(&idx)
                .ok_or_else(|| StepError::Harness(format!("queue {idx} is not set up")))?;
            let mut mem = self
                .mem
                .take()
                .ok_or_else(|| StepError::Harness("no memory".into()))?;
            let r = blk::blk_wait(&mut q, &mem, &pending, self.opts.step_timeout);
            blk::blk_release(&mut mem, pending);
            self.mem = Some(mem);
            self.queues.insert(idx, q);
            let r = match r {
                Ok(Some(o)) => Ok(o),
                Ok(None) => Err(WaitError::Timeout {
                    got: 0,
                    wanted: 1,
                    waited: self.opts.step_timeout,
                }),
                Err(e) => Err(e),
            };
            self.judge_blk(step, idx, r, None, false)?;
        }
        Ok(())
    }

    pub(super) fn judge_blk(
        &mut self,
        step: &Step,
        idx: u16,
        r: Result<BlkOutcome, WaitError>,
        read_pattern: Option<u8>,
        inband: bool,
    ) -> StepResult {
        let what = format!("{} on queue {idx}", step.action.name());
        let o = match r {
            Ok(o) => o,
            Err(WaitError::Memory(e)) => return Err(StepError::Harness(chain(&e))),
            Err(e) => {
                let mut received = e.to_string();
                let st = self.inst().state();
                if matches!(st, ProcessState::Exited(_) | ProcessState::Signaled(_)) {
                    received = format!(
                        "{received}; {}",
                        describe_exit(&st, &self.inst().stderr_tail(400))
                    );
                }
                // Announced by a VRING_KICK message, the request not completing is that
                // message not processing the ring (R-INB-02).
                return Err(self.fail(
                    step.rule
                        .unwrap_or(if inband { id::R_INB_02 } else { id::R_RING_07 }),
                    &format!("{what} was not completed"),
                    "the request completes (used ring entry and a call)",
                    received,
                ));
            }
        };
        let mut problems = Vec::new();
        if o.status != vhu_protocol::virtio::blk::S_OK {
            problems.push(format!("status {} (not OK)", o.status));
        }
        if o.used_len != o.expected_used_len {
            problems.push(format!(
                "used length {} but {} bytes were device-writable and written",
                o.used_len, o.expected_used_len
            ));
        }
        if !o.canary_intact {
            problems.push(
                "guest memory next to the buffers changed (write outside a device-writable buffer)"
                    .into(),
            );
        }
        let polled = self.queues.get(&idx).is_some_and(|q| !q.call_fd);
        if !o.notified && !polled {
            problems.push("the completion was not signalled on the call eventfd".into());
        }
        if !o.readonly_intact {
            problems.push("a driver-readable buffer was written".into());
        }
        if let Some(pattern) = read_pattern.filter(|&p| o.data.iter().any(|&b| b != p)) {
            let at = o.data.iter().position(|&b| b != pattern).unwrap_or(0);
            problems.push(format!("data read differs from what was written at byte {at}: {:#04x}, wanted {pattern:#04x}", o.data[at]));
        }
        self.mark_datapath(step, idx);
        if problems.is_empty() {
            return Ok(());
        }
        let rule = step.rule.unwrap_or(id::R_RING_07);
        Err(self.fail(rule, &format!("{what}: {}", problems.join("; ")), "status OK, used length = bytes written, only writable buffers touched, the data written", format!("{o:?}")))
    }

    /// The rules a completed request checks: the ring was read where SET_VRING_ADDR put it
    /// (R-VRING-03) from the base SET_VRING_BASE gave (R-VRING-06, packed R-VRING-07),
    /// through the memory table's translation (R-MEM-03), started by SET_VRING_KICK
    /// (R-RING-03) and processed normally (R-RING-07); on a ring past 0, independently of the
    /// others (R-MQ-03); polled where no call or kick fd was given (R-VRING-13, R-VRING-12).
    pub(super) fn mark_datapath(&mut self, step: &Step, idx: u16) {
        let mut rules = vec![id::R_RING_07, id::R_VRING_03, id::R_MEM_03, id::R_RING_03];
        if let Some(q) = self.queues.get(&idx) {
            rules.push(match q.layout() {
                vhu_mock_frontend::RingLayout::Packed => id::R_VRING_07,
                vhu_mock_frontend::RingLayout::Split => id::R_VRING_06,
            });
            if !q.call_fd {
                rules.push(id::R_VRING_13);
            }
            if !q.kick_fd {
                rules.push(id::R_VRING_12);
            }
        }
        if idx > 0 {
            rules.push(id::R_MQ_03);
        }
        rules.extend(step.rule);
        for r in rules {
            self.mark(r);
        }
    }

    /// Replaces the call fd of running queues, then checks a completion is signalled on the
    /// new fd and not on the old one (R-RING-15).
    pub(super) fn swap_call(&mut self, step: &Step, queue: Option<Queues>) -> StepResult {
        for idx in self.queue_indices(queue) {
            let mut q = self.queues.remove(&idx).ok_or_else(|| {
                StepError::Harness(format!("queue {idx} is not set up: add a `vring` step"))
            })?;
            let r = match self.session() {
                Ok(s) => q.replace_call(s),
                Err(e) => {
                    self.queues.insert(idx, q);
                    return Err(e);
                }
            };
            self.queues.insert(idx, q);
            let old = r.map_err(|e| self.session_failed(step, e))?;
            let queue = Some(Queues::Index(idx));
            let read = Step::of(Action::BlkGetId(Default::default())).citing(self.rule_of(step));
            self.blk(
                &read,
                &BlkIoArgs {
                    queue,
                    ..BlkIoArgs::default()
                },
            )?;
            self.mark(id::R_RING_15);
            self.mark(id::R_WIRE_08);
            if old.read().is_ok() {
                return Err(self.finding(
                    step,
                    &format!("queue {idx}: a completion was signalled on the replaced call fd"),
                    "after SET_VRING_CALL, calls go to the new eventfd only",
                    "the old eventfd was written".into(),
                ));
            }
        }
        Ok(())
    }
}

/// How many BACKEND_VRING_CALL requests for ring `idx` are among `records`.
fn inband_calls_in(records: &[vhu_mock_frontend::channel::BackendRecord], idx: u16) -> usize {
    records
        .iter()
        .filter(|r| {
            r.code == vhu_protocol::BackendReq::VringCall as u32
                && r.payload.get(..4) == Some(&u32::from(idx).to_ne_bytes()[..])
        })
        .count()
}
