//! Exit codes of `vhu-conform`, documented in the README, and the policy that picks one for a
//! finished run ([`ExitPolicy`]). The library decides; the command line only hands the code to
//! the process.

use serde::Serialize;

use crate::engine::{Outcome, ScenarioResult, Totals};
use crate::expect::{Entry, Verdict};

/// Every applicable scenario passed (warnings allowed unless `--strict`).
pub const ALL_PASSED: u8 = 0;
/// At least one scenario failed: the back-end departs from the spec.
pub const FAILURES: u8 = 1;
/// The command line or a scenario file is wrong.
pub const USAGE: u8 = 2;
/// The back-end could not be reached or started: it was never judged.
pub const SETUP: u8 = 3;
/// No scenario was selected, or none could run (all skipped).
pub const NOTHING_RAN: u8 = 4;
/// The harness could not judge some scenario (a harness error, not the back-end's fault).
pub const HARNESS_ERROR: u8 = 5;

/// Which finished runs fail. `--strict` is not here: it acts on the verdicts themselves
/// (a warning becomes a failure in the engine, and the reports say `fail`), so the policy sees
/// its failures as any other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitPolicy {
    /// `--strict-expectations`: an unexpected pass, a scenario that ran against an expected
    /// skip, or an expectation that matches no scenario fails a run that would pass.
    pub strict_expectations: bool,
}

/// How a finished run ends, in the order the policy weighs them: a failure outranks a harness
/// error, which outranks a run where nothing ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "exit", rename_all = "snake_case")]
pub enum RunExit {
    /// Every scenario that ran passed (or failed as expected).
    Passed,
    /// Scenarios failed (expected failures aside).
    Failed {
        /// Scenarios that failed, expected failures aside.
        failed: usize,
    },
    /// Some scenario could not be judged, and none failed.
    HarnessError {
        /// How many could not be judged.
        errors: usize,
    },
    /// Every selected scenario was skipped.
    NothingRan,
    /// `--strict-expectations`, and the expectations file no longer describes the back-end.
    ExpectationsMissed {
        /// Passes where a failure was expected.
        xpass: usize,
        /// Scenarios that ran where a skip was expected.
        ran: usize,
        /// Entries that match no scenario.
        stale: usize,
    },
}

impl RunExit {
    /// The process exit code (README "Exit codes").
    pub fn code(&self) -> u8 {
        match self {
            Self::Passed => ALL_PASSED,
            Self::Failed { .. } | Self::ExpectationsMissed { .. } => FAILURES,
            Self::HarnessError { .. } => HARNESS_ERROR,
            Self::NothingRan => NOTHING_RAN,
        }
    }
}

impl std::fmt::Display for RunExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passed => write!(f, "every applicable scenario passed"),
            Self::Failed { failed } => write!(f, "{failed} scenarios failed"),
            Self::HarnessError { errors } => {
                write!(f, "{errors} scenarios could not be judged (harness errors)")
            }
            Self::NothingRan => write!(f, "no scenario ran: every one was skipped"),
            Self::ExpectationsMissed { xpass, ran, stale } => write!(
                f,
                "--strict-expectations: {xpass} unexpected passes, {ran} ran against an expected skip, {stale} stale entries"
            ),
        }
    }
}

impl ExitPolicy {
    /// How a run with these results and stale expectation entries ends.
    pub fn judge(&self, results: &[ScenarioResult], stale: &[Entry]) -> RunExit {
        let t = Totals::of(results);
        if t.fail > 0 {
            return RunExit::Failed { failed: t.fail };
        }
        if t.error > 0 {
            return RunExit::HarnessError { errors: t.error };
        }
        if t.pass + t.warn + t.xfail == 0 {
            return RunExit::NothingRan;
        }
        let ran = results
            .iter()
            .filter(|r| {
                r.expectation
                    .as_ref()
                    .is_some_and(|a| a.verdict == Verdict::Ran)
            })
            .count();
        if self.strict_expectations && (t.xpass > 0 || ran > 0 || !stale.is_empty()) {
            return RunExit::ExpectationsMissed {
                xpass: t.xpass,
                ran,
                stale: stale.len(),
            };
        }
        RunExit::Passed
    }
}

/// Whether a result counts against the run: a failure or harness error no expectation excuses.
pub(crate) fn counts_against(r: &ScenarioResult) -> bool {
    let expected = r
        .expectation
        .as_ref()
        .is_some_and(|a| a.verdict == Verdict::Xfail);
    !expected && matches!(r.outcome, Outcome::Fail | Outcome::Error { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::{Applied, Expected};
    use crate::scenario::Level;

    fn result(outcome: Outcome, verdict: Option<Verdict>) -> ScenarioResult {
        ScenarioResult {
            id: "a/b".into(),
            title: String::new(),
            rules: vec![],
            level: Level::Must,
            source: String::new(),
            outcome,
            findings: vec![],
            notes: vec![],
            checked_rules: vec![],
            duration_ms: 0,
            transcript: vec![],
            expectation: verdict.map(|verdict| Applied {
                expected: Expected::Fail,
                reason: "known".into(),
                verdict,
            }),
        }
    }

    fn skip() -> Outcome {
        Outcome::Skip {
            reason: "no feature".into(),
        }
    }

    fn error() -> Outcome {
        Outcome::Error {
            reason: "no memfd".into(),
        }
    }

    #[test]
    fn a_failure_outranks_a_harness_error_which_outranks_nothing_running() {
        let p = ExitPolicy::default();
        let code = |rs: &[ScenarioResult]| p.judge(rs, &[]).code();
        assert_eq!(
            code(&[result(Outcome::Fail, None), result(error(), None)]),
            FAILURES
        );
        assert_eq!(
            code(&[result(Outcome::Pass, None), result(error(), None)]),
            HARNESS_ERROR
        );
        assert_eq!(code(&[result(skip(), None)]), NOTHING_RAN);
        assert_eq!(
            code(&[result(Outcome::Warn, None), result(skip(), None)]),
            ALL_PASSED
        );
    }

    #[test]
    fn an_expected_failure_passes_and_only_strict_expectations_fail_an_unexpected_pass() {
        let xfail = [result(Outcome::Fail, Some(Verdict::Xfail))];
        assert_eq!(ExitPolicy::default().judge(&xfail, &[]), RunExit::Passed);
        let xpass = [result(Outcome::Pass, Some(Verdict::Xpass))];
        let strict = ExitPolicy {
            strict_expectations: true,
        };
        assert_eq!(ExitPolicy::default().judge(&xpass, &[]), RunExit::Passed);
        assert_eq!(
            strict.judge(&xpass, &[]),
            RunExit::ExpectationsMissed {
                xpass: 1,
                ran: 0,
                stale: 0
            }
        );
        let ran = [result(Outcome::Pass, Some(Verdict::Ran))];
        assert_eq!(strict.judge(&ran, &[]).code(), FAILURES);
    }

    #[test]
    fn a_stale_entry_fails_only_under_strict_expectations_and_never_hides_a_failure() {
        let stale = [Entry {
            scenario: "gone/*".into(),
            outcome: Expected::Skip,
            reason: "old".into(),
        }];
        let strict = ExitPolicy {
            strict_expectations: true,
        };
        let pass = [result(Outcome::Pass, None)];
        assert_eq!(
            ExitPolicy::default().judge(&pass, &stale).code(),
            ALL_PASSED
        );
        assert_eq!(strict.judge(&pass, &stale).code(), FAILURES);
        let fail = [result(Outcome::Fail, None)];
        assert_eq!(
            strict.judge(&fail, &stale),
            RunExit::Failed { failed: 1 },
            "the failure is what the run reports"
        );
    }
}
