//! The human recap after a run: the totals, a line for every result worth a second look
//! (failures, warnings, errors, and whatever an expectation says about), how to reproduce,
//! stale expectations and the rule coverage.

use std::fmt::Write as _;

use super::label::{self, paint};
use crate::engine::{Outcome, ScenarioResult, Totals};
use crate::expect::{Entry, Verdict};
use crate::rules::{RuleCoverage, RuleId};

/// What the recap keeps of the results as they come, in their order.
#[derive(Clone, Debug, Default)]
pub struct Recap {
    lines: Vec<Line>,
    /// The first failed scenario: the reproduction hint names it.
    first_failed: Option<String>,
}

/// One result the recap lists.
#[derive(Clone, Debug)]
struct Line {
    tag: &'static str,
    id: String,
    /// The rules its findings cite.
    rules: Vec<RuleId>,
    /// What its expectation says, with a leading space, or nothing.
    why: String,
}

impl Recap {
    /// The recap of `results`, in their order.
    pub fn of(results: &[ScenarioResult]) -> Self {
        let mut recap = Self::default();
        for r in results {
            recap.add(r);
        }
        recap
    }

    /// Takes note of one result.
    pub fn add(&mut self, r: &ScenarioResult) {
        if matches!(r.outcome, Outcome::Fail) && self.first_failed.is_none() {
            self.first_failed = Some(r.id.clone());
        }
        let verdict = r
            .expectation
            .as_ref()
            .map(|a| (&a.verdict, a.reason.as_str()));
        let (tag, why) = match (verdict, &r.outcome) {
            (Some((Verdict::Xfail, why)), _) => ("XFAIL", format!(" (expected: {why})")),
            (Some((Verdict::Xpass, why)), _) => (
                "XPASS",
                format!(" (a failure was expected: {why}; the entry can go)"),
            ),
            (Some((Verdict::Ran, why)), _) => ("RAN", format!(" (a skip was expected: {why})")),
            (_, Outcome::Fail | Outcome::Warn | Outcome::Error { .. }) => {
                (label::of(r), String::new())
            }
            _ => return,
        };
        self.lines.push(Line {
            tag,
            id: r.id.clone(),
            rules: r.findings.iter().map(|f| f.rule).collect(),
            why,
        });
    }

    /// The totals line, the listed results and the reproduction hint.
    pub fn render(&self, t: &Totals, color: bool) -> String {
        let expected = if t.xfail + t.xpass > 0 {
            format!(
                ", {} expected failures, {} unexpected passes",
                t.xfail, t.xpass
            )
        } else {
            String::new()
        };
        let mut s = format!(
            "\n{} passed, {} failed, {} warned, {} skipped, {} errors{expected}\n",
            t.pass, t.fail, t.warn, t.skip, t.error
        );
        for l in &self.lines {
            let rules: Vec<&str> = l.rules.iter().map(|r| r.as_str()).collect();
            let tag = paint(l.tag, color);
            let _ = writeln!(s, "  {tag} {} {}{}", l.id, rules.join(" "), l.why);
        }
        // Every scenario is its own reproducer, on a fresh process in spawn mode (the
        // transcript above shows what it sends).
        if let Some(id) = &self.first_failed {
            let _ = writeln!(
                s,
                "to reproduce: the same command with a scenario id as filter (`vhu-conform ... {id}`), or all failures with --json-report FILE, then --rerun-failed FILE"
            );
        }
        s
    }
}

/// A line per expectation entry that matched no scenario.
pub fn stale(entries: &[Entry], color: bool) -> String {
    let mut s = String::new();
    for e in entries {
        let _ = writeln!(
            s,
            "  {} expectation {:?} matches no scenario ({})",
            paint("STALE", color),
            e.scenario,
            e.reason
        );
    }
    s
}

/// The rule coverage: the whole table (`--rules`) or the counts per status.
pub fn rules(rows: &[RuleCoverage], table: bool) -> String {
    if table {
        return format!("\nRule coverage:\n{}\n", crate::rules::render(rows));
    }
    let counts = crate::rules::summary(rows)
        .iter()
        .map(|(l, n)| format!("{n} {l}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("rules: {counts} (--rules shows the table)\n")
}
