//! The checklist's numbered rules (`spec/rules.toml`, embedded) and each rule's coverage: by
//! which scenarios it is checked, and, after a run, whether those checks passed, failed, or
//! were skipped and why. `vhu-conform --rules` prints the table.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::engine::{Outcome, ScenarioResult};
use crate::scenario::{Level, Scenario};

const RULES_TOML: &str = include_str!("../spec/rules.toml");

/// One rule of the checklist.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rule {
    /// `R-MEM-11`.
    pub id: String,
    /// Whose duty it is: `BE`, `FE`, `both`, `BE program`, `spec`.
    pub side: String,
    /// `MUST`, `SHOULD`, `MAY`, `ROB`, `INFO`.
    pub level: String,
    /// Its first line.
    pub text: String,
}

impl Rule {
    /// Whether a back-end can be checked against it (front-end duties and informative notes
    /// are the harness's own business).
    pub fn is_backend_check(&self) -> bool {
        matches!(self.side.as_str(), "BE" | "both" | "BE program")
            && !matches!(self.level.as_str(), "INFO" | "MAY")
    }
}

#[derive(Deserialize)]
struct RulesFile {
    rule: Vec<Rule>,
}

/// Every rule, in checklist order.
pub fn all() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        toml::from_str::<RulesFile>(RULES_TOML)
            .expect("spec/rules.toml is valid (checked by a test)")
            .rule
    })
}

/// The rule with this id.
pub fn find(id: &str) -> Option<&'static Rule> {
    all().iter().find(|r| r.id == id)
}

/// Where a rule stands after a run (or, without one, whether anything checks it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// A finding cites it at MUST level (or any level under --strict).
    CheckedFail,
    /// Only SHOULD/robustness findings cite it.
    CheckedWarn,
    /// Scenarios citing it ran and none found a departure.
    CheckedPass,
    /// Every scenario citing it was skipped.
    Skipped {
        /// The skip reasons, deduplicated.
        why: Vec<String>,
    },
    /// Scenarios citing it could not be judged (harness errors).
    Error,
    /// Scenarios cite it, but none was selected or run.
    NotRun,
    /// No scenario checks it yet.
    NoScenario,
    /// A front-end duty or an informative note: not a back-end check.
    NotBackend,
}

impl Status {
    /// A short label for the table.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CheckedFail => "FAIL",
            Self::CheckedWarn => "WARN",
            Self::CheckedPass => "pass",
            Self::Skipped { .. } => "skipped",
            Self::Error => "error",
            Self::NotRun => "not run",
            Self::NoScenario => "no scenario yet",
            Self::NotBackend => "n/a (front-end or info)",
        }
    }
}

/// One row of the coverage table.
#[derive(Clone, Debug, Serialize)]
pub struct RuleCoverage {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Where it stands.
    #[serde(flatten)]
    pub status: Status,
    /// The scenarios citing it.
    pub scenarios: Vec<String>,
}

/// The rules a scenario cites: its own list and its steps' `rule` fields.
pub fn cited_by(s: &Scenario) -> Vec<String> {
    let mut ids: Vec<String> = s.spec.rules.clone();
    ids.extend(s.spec.steps.iter().filter_map(|st| st.rule.clone()));
    ids.sort();
    ids.dedup();
    ids
}

/// The coverage of every rule by `scenarios` (all that are loaded) and, when given, by the
/// results of a run.
pub fn coverage(scenarios: &[Scenario], results: Option<&[ScenarioResult]>) -> Vec<RuleCoverage> {
    let mut by_rule: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in scenarios {
        for id in cited_by(s) {
            by_rule.entry(id).or_default().push(s.spec.id.clone());
        }
    }
    all()
        .iter()
        .map(|rule| {
            let cited = by_rule.get(&rule.id).cloned().unwrap_or_default();
            let status = status_of(rule, &cited, results);
            RuleCoverage {
                rule: rule.clone(),
                status,
                scenarios: cited,
            }
        })
        .collect()
}

fn status_of(rule: &Rule, cited: &[String], results: Option<&[ScenarioResult]>) -> Status {
    let findings: Vec<Level> = results
        .into_iter()
        .flatten()
        .flat_map(|r| r.findings.iter())
        .filter(|f| f.rule == rule.id)
        .map(|f| f.level)
        .collect();
    let failed_scenario = results.into_iter().flatten().any(|r| {
        matches!(r.outcome, Outcome::Fail) && r.findings.iter().any(|f| f.rule == rule.id)
    });
    if failed_scenario || findings.contains(&Level::Must) {
        return Status::CheckedFail;
    }
    if !findings.is_empty() {
        return Status::CheckedWarn;
    }
    if cited.is_empty() {
        return if rule.is_backend_check() {
            Status::NoScenario
        } else {
            Status::NotBackend
        };
    }
    let Some(results) = results else {
        return Status::NotRun;
    };
    let ran: Vec<&ScenarioResult> = results.iter().filter(|r| cited.contains(&r.id)).collect();
    if ran
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Pass | Outcome::Warn | Outcome::Fail))
    {
        return Status::CheckedPass;
    }
    if ran
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Error { .. }))
    {
        return Status::Error;
    }
    let mut why: Vec<String> = ran
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Skip { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    why.sort();
    why.dedup();
    if why.is_empty() {
        Status::NotRun
    } else {
        Status::Skipped { why }
    }
}

/// Counts per status label, in a stable order.
pub fn summary(rows: &[RuleCoverage]) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for r in rows {
        let l = r.status.label();
        match counts.iter_mut().find(|(k, _)| *k == l) {
            Some((_, n)) => *n += 1,
            None => counts.push((l, 1)),
        }
    }
    counts
}

/// The table, one line per rule, for a terminal.
pub fn render(rows: &[RuleCoverage]) -> String {
    let mut out = String::new();
    for r in rows {
        let mut line = format!(
            "{:<12} {:<6} {:<6} {:<24}",
            r.rule.id,
            r.rule.side.replace("BE program", "prog"),
            r.rule.level,
            r.status.label()
        );
        match &r.status {
            Status::Skipped { why } => line.push_str(&why.join("; ")),
            _ if !r.scenarios.is_empty() => line.push_str(&r.scenarios.join(", ")),
            _ => line.push_str(&r.rule.text),
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let counts = summary(rows)
        .iter()
        .map(|(l, n)| format!("{n} {l}"))
        .collect::<Vec<_>>()
        .join(", ");
    out.push_str(&format!("{} rules: {counts}\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_rules_parse_and_ids_are_unique() {
        let rules = all();
        assert!(rules.len() > 200, "{}", rules.len());
        let mut ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate rule ids");
        assert!(find("R-MEM-11").is_some_and(Rule::is_backend_check));
        assert!(find("R-SHM-09").is_some_and(|r| !r.is_backend_check()));
    }

    #[test]
    fn every_scenario_cites_only_rules_of_the_checklist() {
        let all = crate::scenario::load_all(&[]).unwrap();
        for s in &all {
            for id in cited_by(s) {
                assert!(find(&id).is_some(), "{} cites unknown rule {id}", s.spec.id);
            }
        }
    }
}
