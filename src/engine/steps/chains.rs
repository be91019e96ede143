//! Pieces the device data-path steps (net, rng) share on top of `vhu_mock_frontend::exchange`:
//! taking a ring and the guest memory out of the context for one exchange, the checks every
//! device's completion gets (R-DEV-01: only writable buffers written; R-DEV-02: used length
//! within them; R-DEV-03: completed, naming its chain, and signalled), a completion that never
//! came, and a call eventfd swapped under a running ring (R-RING-15).

use std::time::Duration;

use nix::sys::eventfd::EventFd;
use vhu_mock_frontend::exchange::{self, ChainSpec, Exchanged, Submitted};
use vhu_mock_frontend::{DriverQueue, GuestMemory, WaitError};

use super::{Ctx, StepError, StepResult};
use crate::engine::{chain, describe_exit};
use crate::rules::{RuleId, id};
use crate::scenario::model::Step;
use crate::target::ProcessState;

/// Whether a step's chains go to the ring in one batch (one kick) or one at a time, each
/// waited for before the next is made available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Batching {
    AtOnce,
    OneAtATime,
}

impl Batching {
    /// A step's `at_once` field: one batch when set, one chain at a time otherwise.
    pub(super) fn from_at_once(at_once: Option<bool>) -> Self {
        if at_once == Some(true) {
            Self::AtOnce
        } else {
            Self::OneAtATime
        }
    }
}

/// What [`Ctx::exchange_chains`] brought back: the ids the chains were made available under,
/// in that order, and their completions.
#[derive(Debug, Default)]
pub(super) struct Completions {
    pub ids: Vec<u16>,
    pub done: Vec<Exchanged>,
}

impl Completions {
    /// For each chain used (in used order), its place among those made available: ascending
    /// when the device used them in the order they were made available.
    fn used_order(&self) -> Vec<usize> {
        self.done
            .iter()
            .filter_map(|d| self.ids.iter().position(|&i| i == d.id))
            .collect()
    }
}

impl Ctx<'_> {
    /// A device's in-order rule (`rule`: GPIO messages for one line, I2C requests made
    /// available together): the chains of `c` were used in the order they were made available.
    /// `summary` says what was out of order, `expected` what the rule wants.
    pub(super) fn judge_in_order(
        &mut self,
        rule: RuleId,
        c: &Completions,
        summary: impl FnOnce() -> String,
        expected: &str,
    ) -> StepResult {
        if c.ids.len() < 2 {
            return Ok(());
        }
        self.mark(rule);
        let order = c.used_order();
        if order.windows(2).any(|w| w[0] > w[1]) {
            let ids = &c.ids;
            return Err(self.fail(
                rule,
                &summary(),
                expected,
                format!("submitted {ids:?}, used in the order of submissions {order:?}"),
            ));
        }
        Ok(())
    }

    /// Runs `f` with ring `idx` and the guest memory taken out of the context, putting both back
    /// whatever `f` returns.
    pub(super) fn with_ring<T>(
        &mut self,
        idx: u16,
        f: impl FnOnce(&mut Self, &mut DriverQueue, &mut GuestMemory) -> T,
    ) -> Result<T, StepError> {
        let mut q = self.queues.remove(&idx).ok_or_else(|| {
            StepError::Harness(format!("queue {idx} is not set up: add a `vring` step"))
        })?;
        let Some(mut mem) = self.mem.take() else {
            self.queues.insert(idx, q);
            return Err(StepError::Harness("no memory".into()));
        };
        let r = f(self, &mut q, &mut mem);
        self.mem = Some(mem);
        self.queues.insert(idx, q);
        Ok(r)
    }

    /// Makes `specs` available on ring `idx` in one batch (one kick).
    pub(super) fn submit_chains(
        &mut self,
        idx: u16,
        specs: &[ChainSpec],
    ) -> Result<Vec<Submitted>, StepError> {
        self.with_ring(idx, |_, q, mem| exchange::submit_batch(q, mem, specs))?
            .map_err(|e| StepError::Harness(format!("cannot build the chains: {}", chain(&e))))
    }

    /// Makes `specs` available on ring `idx` as `batching` says, waits up to the step timeout
    /// for each batch, then gives back the guest memory the chains took. A batch not completed
    /// is `step`'s finding ([`not_completed`](Self::not_completed)), naming `lost(n)` for its
    /// `n` chains.
    pub(super) fn exchange_chains(
        &mut self,
        step: &Step,
        idx: u16,
        specs: &[ChainSpec],
        batching: Batching,
        lost: impl Fn(usize) -> String,
    ) -> Result<Completions, StepError> {
        let mark = self.mem.as_ref().map(|m| m.mark());
        let batches: Vec<&[ChainSpec]> = match batching {
            Batching::AtOnce => vec![specs],
            Batching::OneAtATime => specs.chunks(1).collect(),
        };
        let mut out = Completions::default();
        for batch in batches {
            let mut pending = self.submit_chains(idx, batch)?;
            out.ids.extend(pending.iter().map(|p| p.id));
            let n = pending.len();
            match self.wait_chains(idx, &mut pending, n, self.opts.step_timeout)? {
                Ok(d) => out.done.extend(d),
                Err(e) => return Err(self.not_completed(step, idx, &lost(n), e)),
            }
        }
        if let (Some(m), Some(mark)) = (self.mem.as_mut(), mark) {
            m.release(mark);
        }
        Ok(out)
    }

    /// Waits up to `timeout` for `count` of `pending` on ring `idx` to be used.
    pub(super) fn wait_chains(
        &mut self,
        idx: u16,
        pending: &mut Vec<Submitted>,
        count: usize,
        timeout: Duration,
    ) -> Result<Result<Vec<Exchanged>, WaitError>, StepError> {
        self.with_ring(idx, |_, q, mem| {
            exchange::wait(q, mem, pending, count, timeout)
        })
    }

    /// The checks every device's completion gets: the device wrote only into the writable
    /// buffers (R-DEV-01), its used length is within them (R-DEV-02), and the completion was
    /// signalled where the ring has a call fd (R-DEV-03). `what` names the request.
    pub(super) fn judge_common(&mut self, idx: u16, what: &str, done: &Exchanged) -> StepResult {
        self.mark(id::R_DEV_01);
        self.mark(id::R_DEV_02);
        self.mark(id::R_DEV_03);
        if let Some(problem) = done.common_problem() {
            let rule = if done.canary_intact && done.readonly_intact {
                id::R_DEV_02
            } else {
                id::R_DEV_01
            };
            return Err(self.fail(
                rule,
                &format!("{what} on queue {idx}: {problem}"),
                "only the device-writable buffers written, the used length at most their size",
                format!("{done:?}"),
            ));
        }
        let polled = self.queues.get(&idx).is_some_and(|q| !q.call_fd);
        if !done.notified && !polled {
            return Err(self.fail(
                id::R_DEV_03,
                &format!("{what} on queue {idx}: the completion was not signalled on the call eventfd"),
                "a used buffer is signalled on the ring's call eventfd (the driver did not suppress it)",
                format!("{done:?}"),
            ));
        }
        Ok(())
    }

    /// A wait that did not bring every completion: a used entry naming no pending chain, or a
    /// timeout (with the process's fate when it died). Cites `step.rule`, else R-DEV-03.
    pub(super) fn not_completed(
        &mut self,
        step: &Step,
        idx: u16,
        what: &str,
        e: WaitError,
    ) -> StepError {
        if let WaitError::Memory(m) = &e {
            return StepError::Harness(chain(m));
        }
        let mut received = e.to_string();
        let st = self.inst().state();
        if matches!(st, ProcessState::Exited(_) | ProcessState::Signaled(_)) {
            received = format!(
                "{received}; {}",
                describe_exit(&st, &self.inst().stderr_tail(400))
            );
        }
        self.fail(
            step.rule.unwrap_or(id::R_DEV_03),
            &format!("{what} on queue {idx} was not completed"),
            "every available chain of a started, enabled ring is used, naming its head or buffer id",
            received,
        )
    }

    /// When `new_call` is set: replaces ring `idx`'s call eventfd (SET_VRING_CALL while it
    /// runs) and returns the old one, drained once the swap was handled, for
    /// [`check_old_call`](Self::check_old_call).
    pub(super) fn maybe_swap_call(
        &mut self,
        step: &Step,
        new_call: bool,
        idx: u16,
    ) -> Result<Option<EventFd>, StepError> {
        if !new_call {
            return Ok(None);
        }
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
        self.mark(id::R_WIRE_08);
        // Once the swap is known handled (its ack, or a round trip without REPLY_ACK), what
        // the old eventfd holds was signalled before it: drained, so only later calls count.
        self.sync_unacked(step)?;
        let _ = old.read();
        Ok(Some(old))
    }

    /// R-RING-15: after a call fd swap, no completion may be signalled on the old eventfd.
    pub(super) fn check_old_call(&mut self, idx: u16, old: Option<EventFd>) -> StepResult {
        let Some(old) = old else { return Ok(()) };
        self.mark(id::R_RING_15);
        if old.read().is_ok() {
            return Err(self.fail(
                id::R_RING_15,
                &format!("queue {idx}: a completion was signalled on the replaced call fd"),
                "after SET_VRING_CALL, calls go to the new eventfd only",
                "the old eventfd was written".into(),
            ));
        }
        Ok(())
    }

    /// A `vring` step set ring `idx` up again (new ring memory): what net and rng steps kept
    /// on the old ring (posted receive buffers, pending requests) is gone with it.
    pub(super) fn ring_replaced(&mut self, idx: u16) {
        self.net_ring_replaced(idx);
        self.rng_ring_replaced(idx);
        self.console_ring_replaced(idx);
        self.input_ring_replaced(idx);
    }
}
