//! The verdict words of the human output (`PASS`, `CRASH`, `XFAIL`...) and their colours.

use crate::engine::{Outcome, ScenarioResult};
use crate::expect::Verdict;

/// The verdict's word on a progress line: an expectation's verdict when one applies, CRASH for
/// a failure caused by a crash, else the outcome's.
pub(super) fn of(r: &ScenarioResult) -> &'static str {
    match r.expectation.as_ref().map(|a| &a.verdict) {
        Some(Verdict::Xfail) => return "XFAIL",
        Some(Verdict::Xpass) => return "XPASS",
        _ => {}
    }
    if matches!(r.outcome, Outcome::Fail) && r.findings.iter().any(|f| f.crash.is_some()) {
        "CRASH"
    } else {
        outcome(&r.outcome)
    }
}

/// The outcome's own word.
pub(super) fn outcome(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Warn => "WARN",
        Outcome::Skip { .. } => "SKIP",
        Outcome::Error { .. } => "ERROR",
    }
}

/// A verdict word padded to five columns, in its colour when `color`.
pub(super) fn paint(tag: &str, color: bool) -> String {
    if !color {
        return format!("{tag:<5}");
    }
    let style = match tag {
        "PASS" => console::Style::new().green(),
        "FAIL" | "CRASH" | "XPASS" => console::Style::new().red().bold(),
        "WARN" | "XFAIL" => console::Style::new().yellow(),
        "ERROR" | "STALE" => console::Style::new().magenta().bold(),
        _ => console::Style::new().dim(),
    };
    // Padded before painting: escape codes would break `{:<5}`.
    style
        .force_styling(true)
        .apply_to(format!("{tag:<5}"))
        .to_string()
}
