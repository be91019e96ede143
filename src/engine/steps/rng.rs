//! virtio-rng data-path steps (virtio 1.2 section 5.4): entropy requests of given sizes, one by
//! one or all in flight at once, judged on what every device owes (chains.rs: R-DEV-01..03),
//! then on the device's own rules: at least one random byte per request (R-RNG-01) and bytes
//! that do not look stuck (R-RNG-02, a SHOULD heuristic).

use std::collections::BTreeMap;
use std::time::Duration;

use vhu_mock_frontend::WaitError;
use vhu_mock_frontend::exchange::{Exchanged, Submitted};
use vhu_mock_frontend::rng;

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::Expect;
use crate::scenario::model::{Queues, RngReadArgs, Step};

/// Bytes compared by the randomness heuristic (R-RNG-02).
const SAMPLE: usize = 4096;

/// What rng steps keep between steps.
#[derive(Debug, Default)]
pub(super) struct RngState {
    /// Requests an `rng_read` with `expect = "no_reply"` left pending, by queue.
    pending: BTreeMap<u16, Vec<Submitted>>,
    /// The first [`SAMPLE`] bytes of the last request that returned that many.
    last_sample: Option<Vec<u8>>,
}

impl Ctx<'_> {
    pub(super) fn rng_read(&mut self, step: &Step, a: &RngReadArgs) -> StepResult {
        self.sync_unacked(step)?;
        let sizes = a.sizes.clone().unwrap_or_else(|| vec![64]);
        let segments = a.segments.unwrap_or(1);
        let indirect = a.indirect == Some(true);
        for idx in self.queue_indices(a.queue) {
            if self.rng.pending.contains_key(&idx) {
                // Their completions would be used elements this request does not know.
                return Err(StepError::Harness(format!(
                    "queue {idx} still has requests an rng_read with expect = \"no_reply\" left pending: add rng_complete first"
                )));
            }
            let old_call = self.maybe_swap_call(step, a.new_call == Some(true), idx)?;
            let specs: Vec<_> = sizes
                .iter()
                .map(|&s| rng::entropy_chain(s, segments, indirect))
                .collect();
            if step.expect == Some(Expect::NoReply) {
                let window = Duration::from_millis(a.window_ms.unwrap_or(300));
                self.rng_must_wait(step, idx, &specs, window)?;
                continue;
            }
            let batching = Batching::from_at_once(a.at_once);
            let Completions { done, .. } =
                self.exchange_chains(step, idx, &specs, batching, |n| {
                    format!("{n} entropy request(s)")
                })?;
            for d in &done {
                self.judge_entropy(idx, d)?;
            }
            self.mark_datapath(step, idx);
            self.check_old_call(idx, old_call)?;
        }
        Ok(())
    }

    /// Forgets the pending requests of a ring set up again.
    pub(super) fn rng_ring_replaced(&mut self, idx: u16) {
        self.rng.pending.remove(&idx);
    }

    fn rng_lost(&mut self, step: &Step, idx: u16, n: usize, e: WaitError) -> StepError {
        self.not_completed(step, idx, &format!("{n} entropy request(s)"), e)
    }

    /// Submits requests the back-end must not complete (ring disabled or stopped); they stay
    /// pending for a later `rng_complete`.
    fn rng_must_wait(
        &mut self,
        step: &Step,
        idx: u16,
        specs: &[vhu_mock_frontend::exchange::ChainSpec],
        window: Duration,
    ) -> StepResult {
        let mut pending = self.submit_chains(idx, specs)?;
        self.mark(self.rule_of(step));
        match self.wait_chains(idx, &mut pending, 1, window)? {
            Err(WaitError::Timeout { got: 0, .. }) => {
                self.rng.pending.entry(idx).or_default().extend(pending);
                Ok(())
            }
            Err(WaitError::Memory(e)) => Err(StepError::Harness(crate::engine::chain(&e))),
            other => {
                let (summary, expected) = self.completed_anyway(idx, "an entropy request");
                Err(self.finding(step, &summary, expected, format!("{other:?}")))
            }
        }
    }

    pub(super) fn rng_complete(&mut self, step: &Step, queue: Option<Queues>) -> StepResult {
        for idx in self.queue_indices(queue) {
            let mut pending = self.rng.pending.remove(&idx).ok_or_else(|| {
                StepError::Harness(format!(
                    "no pending entropy request on queue {idx}: use rng_read with expect = \"no_reply\" first"
                ))
            })?;
            let n = pending.len();
            let done = match self.wait_chains(idx, &mut pending, n, self.opts.step_timeout)? {
                Ok(d) => d,
                Err(e) => return Err(self.rng_lost(step, idx, n, e)),
            };
            for d in &done {
                self.judge_entropy(idx, d)?;
            }
            self.mark_datapath(step, idx);
        }
        Ok(())
    }

    /// R-DEV-01..03, then R-RNG-01 (1 <= used <= size; the upper bound is R-DEV-02's) and
    /// R-RNG-02 on requests that returned at least [`SAMPLE`] bytes.
    fn judge_entropy(&mut self, idx: u16, d: &Exchanged) -> StepResult {
        let what = format!("an entropy request of {} bytes", d.writable_len);
        self.judge_common(idx, &what, d)?;
        self.mark(id::R_RNG_01);
        if d.used_len == 0 {
            return Err(self.fail(
                id::R_RNG_01,
                &format!("{what} on queue {idx} was used with length 0: no random byte"),
                "one or more random bytes: 1 <= used length <= the buffer's size (virtio 1.2 5.4.6.1)",
                format!("{d:?}"),
            ));
        }
        let bytes = rng::entropy(d);
        if bytes.len() < SAMPLE {
            return Ok(());
        }
        self.mark(id::R_RNG_02);
        let sample = bytes[..SAMPLE].to_vec();
        let stuck = sample.iter().all(|&b| b == sample[0]);
        let repeated = self.rng.last_sample.as_ref() == Some(&sample);
        self.rng.last_sample = Some(sample.clone());
        if stuck || repeated {
            let why = if stuck {
                format!("all {SAMPLE} bytes are {:#04x}", sample[0])
            } else {
                format!("the first {SAMPLE} bytes equal the previous request's")
            };
            return Err(self.fail(
                id::R_RNG_02,
                &format!("{what} on queue {idx}: the bytes do not look random: {why}"),
                "4 KiB neither one repeated value nor a copy of the previous request's bytes",
                format!("first bytes {:02x?}", &sample[..16]),
            ));
        }
        Ok(())
    }
}
