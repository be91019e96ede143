//! The JUnit XML report (through `quick-junit`): one test case per scenario, a test suite per
//! area, written when the run finishes.

use std::io::Write;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{Reporter, details};
use crate::engine::{Outcome, RunEvent, ScenarioResult};
use crate::expect::Verdict;

/// Writes the JUnit XML report to `out` when the run finishes; each result becomes its test
/// case as it comes.
pub struct JunitReporter<W: Write> {
    out: W,
    suites: Vec<TestSuite>,
}

impl<W: Write> JunitReporter<W> {
    /// Writes the report to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            suites: Vec::new(),
        }
    }

    /// Files the result's test case under its area (`memory/...` under `memory`).
    fn add(&mut self, r: &ScenarioResult) {
        let area = r.id.split('/').next().unwrap_or("scenarios").to_string();
        let mut case = TestCase::new(r.id.clone(), status(r));
        case.set_classname(format!("vhu-conform.{area}"));
        case.set_time(std::time::Duration::from_millis(r.duration_ms));
        if matches!(r.outcome, Outcome::Warn) {
            // Warnings pass in JUnit terms; their findings still travel with the case.
            case.set_system_out(details(r, true));
        }
        match self.suites.iter_mut().find(|s| s.name.as_str() == area) {
            Some(s) => {
                s.add_test_case(case);
            }
            None => {
                let mut s = TestSuite::new(area);
                s.add_test_case(case);
                self.suites.push(s);
            }
        }
    }

    fn xml(&self) -> String {
        let mut report = Report::new("vhu-conform");
        report.add_test_suites(self.suites.iter().cloned());
        report.to_string().expect("junit serializes")
    }
}

impl<W: Write> Reporter for JunitReporter<W> {
    fn on_event(&mut self, e: &RunEvent<'_>) -> std::io::Result<()> {
        if let Some(r) = e.result() {
            self.add(r);
        }
        if let RunEvent::RunFinished(_) = e {
            let xml = self.xml();
            self.out.write_all(xml.as_bytes())?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// The test case's status: an expected failure is skipped with its reason, a warning passes.
fn status(r: &ScenarioResult) -> TestCaseStatus {
    let xfail = r
        .expectation
        .as_ref()
        .filter(|a| a.verdict == Verdict::Xfail);
    match &r.outcome {
        // An expected failure is reported as skipped with its reason, so CI stays green on it
        // and the reason stays visible.
        Outcome::Fail | Outcome::Warn if xfail.is_some() => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(format!(
                "expected failure: {}",
                xfail.map_or("", |a| a.reason.as_str())
            ));
            s.set_description(details(r, true));
            s
        }
        Outcome::Pass | Outcome::Warn => TestCaseStatus::success(),
        Outcome::Skip { reason } => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(reason.clone());
            s
        }
        Outcome::Fail | Outcome::Error { .. } => failure(r),
    }
}

/// A failure (or harness error): the crash or first finding as the message, the details as
/// the description.
fn failure(r: &ScenarioResult) -> TestCaseStatus {
    let kind = if matches!(r.outcome, Outcome::Fail) {
        NonSuccessKind::Failure
    } else {
        NonSuccessKind::Error
    };
    let mut s = TestCaseStatus::non_success(kind);
    if r.findings.iter().any(|f| f.crash.is_some()) {
        s.set_type("crash");
    }
    let first = r
        .findings
        .iter()
        .find(|f| f.crash.is_some())
        .or(r.findings.first());
    let msg = match (first, &r.outcome) {
        (Some(f), _) => format!("{} {}", f.rule, f.summary),
        (None, Outcome::Error { reason }) => {
            format!("harness error (not the back-end's fault): {reason}")
        }
        (None, other) => format!("{other:?}"),
    };
    s.set_message(msg);
    s.set_description(details(r, true));
    s
}

/// The JUnit XML report of these results.
pub fn junit(results: &[ScenarioResult]) -> String {
    let mut j = JunitReporter::new(std::io::sink());
    for r in results {
        j.add(r);
    }
    j.xml()
}
