//! The run's typed event stream, the interface between the engine and every reporter (the
//! shape of nextest's runner-to-reporter events). A run emits, in this order:
//!
//! 1. [`RunEvent::RunStarted`] once, with what the back-end offered;
//! 2. per scenario, in the suite's order: [`RunEvent::ScenarioStarted`] when it starts (not for
//!    one skipped before it starts, for a feature or device it lacks), then either
//!    [`RunEvent::ScenarioSkipped`] or [`RunEvent::ScenarioFinished`], its result with its
//!    `--expect` entry already applied;
//! 3. [`RunEvent::RunFinished`] once, with the totals, rule coverage and exit status.
//!
//! Every event but `ScenarioStarted` comes in the same order whatever `-j` is: with several
//! scenarios at once a result waits until every scenario before it is done. `ScenarioStarted`
//! is for live views ("running: ..."): it comes as the scenario starts, so with `-j N` several
//! come before the first result and their place among the others depends on timing.
//!
//! Findings ride in their scenario's result rather than as events of their own: a finding
//! emitted as found would come in timing order under `-j N`, could belong to a `--repeat` run
//! whose result is not the one kept, and would reach reporters before the expectation that
//! turns its failure into an XFAIL.

use serde::Serialize;

use super::{Offer, Outcome, ScenarioResult};
use crate::exit_code::{ExitPolicy, RunExit};
use crate::expect::{Entry, Verdict};
use crate::rules::RuleCoverage;

/// One event of a run, for [`crate::report::Reporter`]s. Borrowed from the engine for the
/// time of the call; a reporter keeps what it needs by cloning.
#[derive(Clone, Copy, Debug)]
pub enum RunEvent<'a> {
    /// The run starts (after preflight).
    RunStarted {
        /// How many scenarios will be reported.
        total: usize,
        /// What the back-end offered, and the device type when known.
        offer: &'a Offer,
    },
    /// A scenario starts running (live views only; see the module's note on ordering).
    ScenarioStarted {
        /// Its place in the suite's order, from 0.
        index: usize,
        /// Its id.
        id: &'a str,
    },
    /// A scenario did not apply: a feature or device it needs, or a setup step the back-end
    /// refused.
    ScenarioSkipped {
        /// Its place in the suite's order, from 0.
        index: usize,
        /// Why (the reason in its outcome).
        reason: &'a str,
        /// Its result, with any `--expect` entry applied (an expected skip is `skipped`).
        result: &'a ScenarioResult,
    },
    /// A scenario was judged (or could not be: a harness error).
    ScenarioFinished {
        /// Its place in the suite's order, from 0.
        index: usize,
        /// Its result, with any `--expect` entry applied.
        result: &'a ScenarioResult,
    },
    /// Every scenario is done.
    RunFinished(&'a RunSummary),
}

impl<'a> RunEvent<'a> {
    /// The event that reports `result`: skipped or finished, as its outcome says.
    pub fn scenario_done(index: usize, result: &'a ScenarioResult) -> Self {
        match &result.outcome {
            Outcome::Skip { reason } => Self::ScenarioSkipped {
                index,
                reason,
                result,
            },
            _ => Self::ScenarioFinished { index, result },
        }
    }

    /// The result a `ScenarioSkipped` or `ScenarioFinished` carries.
    pub fn result(&self) -> Option<&'a ScenarioResult> {
        match self {
            Self::ScenarioSkipped { result, .. } | Self::ScenarioFinished { result, .. } => {
                Some(result)
            }
            _ => None,
        }
    }
}

/// What a whole run comes to: the payload of [`RunEvent::RunFinished`].
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Counts per outcome.
    pub totals: Totals,
    /// Every rule and where it stands after the run.
    pub rules: Vec<RuleCoverage>,
    /// `--expect` entries that matched no scenario.
    pub stale: Vec<Entry>,
    /// How the run ends under its [`crate::exit_code::ExitPolicy`].
    pub exit: RunExit,
}

impl RunSummary {
    /// The summary of a run with these results, rule coverage and stale entries, judged by
    /// `policy`.
    pub fn new(
        results: &[ScenarioResult],
        rules: Vec<RuleCoverage>,
        stale: Vec<Entry>,
        policy: ExitPolicy,
    ) -> Self {
        Self {
            totals: Totals::of(results),
            exit: policy.judge(results, &stale),
            rules,
            stale,
        }
    }
}

/// Counts per outcome.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Scenarios whose every check held (unexpected passes included).
    pub pass: usize,
    /// Scenarios with a MUST-level finding (any, under `--strict`), expected failures aside.
    pub fail: usize,
    /// Scenarios whose findings are SHOULD or robustness ones only, expected ones aside.
    pub warn: usize,
    /// Scenarios that did not apply to the back-end.
    pub skip: usize,
    /// Scenarios the harness could not judge (never the back-end's fault).
    pub error: usize,
    /// Failures (or warnings) an `--expect` entry expected: not counted in `fail` or `warn`.
    pub xfail: usize,
    /// Passes where a failure was expected (also counted in `pass`).
    pub xpass: usize,
}

impl Totals {
    /// Counts the results.
    pub fn of(results: &[ScenarioResult]) -> Self {
        let mut t = Self::default();
        for r in results {
            match r.expectation.as_ref().map(|a| &a.verdict) {
                Some(Verdict::Xfail) => {
                    t.xfail += 1;
                    continue;
                }
                Some(Verdict::Xpass) => t.xpass += 1,
                _ => {}
            }
            match r.outcome {
                Outcome::Pass => t.pass += 1,
                Outcome::Fail => t.fail += 1,
                Outcome::Warn => t.warn += 1,
                Outcome::Skip { .. } => t.skip += 1,
                Outcome::Error { .. } => t.error += 1,
            }
        }
        t
    }
}
