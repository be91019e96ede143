//! `--keep-process`: in spawn mode a worker keeps its back-end process from one scenario to the
//! next while the process stays healthy, for back-ends whose start-up dominates a run (DPDK
//! testpmd takes about a second per process, its scenarios a tenth of that).
//!
//! What is given up is the fresh process per scenario: a scenario may meet what an earlier one
//! left behind, as with `--backend`. So a process is kept only after a scenario that passed,
//! warned or was skipped and while it still runs; scenarios marked `fresh_process` always get a
//! new one; a crash as the scenario ends fails that scenario (R-CRASH-01) as in fresh mode; and a back-end that exits when its front-end leaves (a policy R-ROB-09 allows)
//! turns keeping off for the worker, since every scenario would meet an exiting process.

use std::time::Duration;

use crate::scenario::Scenario;
use crate::target::{Death, Instance, ProcessState, TargetSpec};

use super::run::{Plan, run_repeated};
use super::{Outcome, ScenarioResult};

/// How long the first kept process is watched after its first scenario: whether the back-end
/// exits when its front-end leaves shows within this (a back-end that does exits at once).
const FIRST_WATCH: Duration = Duration::from_millis(300);

/// One worker's kept process.
#[derive(Debug)]
pub(super) struct Kept {
    /// Whether keeping is on (`--keep-process`, and the back-end serves after a disconnect).
    on: bool,
    /// Whether a process was watched after a scenario yet (the first gets [`FIRST_WATCH`]).
    watched: bool,
    inst: Option<Instance>,
}

impl Kept {
    pub(super) fn new(on: bool) -> Self {
        Self {
            on,
            watched: false,
            inst: None,
        }
    }

    /// Runs `s` as [`run_repeated`] does, on the kept process where it may.
    pub(super) fn run(&mut self, s: &Scenario, plan: &Plan<'_>) -> ScenarioResult {
        let spec = plan.target;
        if !self.on || s.spec.fresh_process || !matches!(spec, TargetSpec::Spawn(_)) {
            return run_repeated(s, plan, None);
        }
        let inst = match self.inst.take().map(|mut i| (i.state(), i)) {
            Some((ProcessState::Running, i)) => Some(i),
            _ => Instance::start(spec, plan.options.connect_timeout).ok(),
        };
        // A process that cannot start: the fresh path reports why, as it would without keeping.
        let Some(mut inst) = inst else {
            return run_repeated(s, plan, None);
        };
        let r = run_repeated(s, plan, Some(&mut inst));
        if matches!(r.outcome, Outcome::Skip { .. }) && r.transcript.is_empty() {
            // Skipped before it connected: the process saw nothing.
            self.inst = Some(inst);
            return r;
        }
        // run_scenario watched the teardown for a crash; the first time, watch longer to learn
        // whether the back-end exits when its front-end leaves.
        let st = if self.watched {
            inst.state()
        } else {
            self.watched = true;
            inst.wait_exit(FIRST_WATCH)
        };
        match st.death() {
            None if matches!(
                r.outcome,
                Outcome::Pass | Outcome::Warn | Outcome::Skip { .. }
            ) =>
            {
                self.inst = Some(inst);
            }
            // A crash is already the scenario's finding (run_scenario watches the teardown).
            None | Some(Death::Crash { .. }) => {}
            Some(Death::Exit(_)) => {
                // Exits when the front-end leaves (or after a refusal): nothing to keep.
                self.on = false;
            }
            // Killed by another signal (SIGKILL, SIGTERM): not the back-end's doing.
            Some(Death::Killed(_)) => {}
        }
        r
    }
}
