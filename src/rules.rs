//! The checklist's numbered rules (`spec/rules.toml`, embedded) and each rule's coverage: by
//! which scenarios it is checked, and, after a run, whether those checks passed, failed, or
//! were skipped and why. `vhu-conform --rules` prints the table.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::engine::{Outcome, ScenarioResult};
use crate::scenario::{Level, Scenario};

const RULES_TOML: &str = include_str!("../spec/rules.toml");

/// A rule of the checklist, by id (`R-MEM-11`): a typed value, only ever one that
/// `spec/rules.toml` has. Code cites rules through the constants of [`id`]; scenario files'
/// ids are checked when they load.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(u16);

/// The constants, one per rule (`id::R_MEM_11`), generated from `spec/rules.toml`.
pub mod id {
    use super::RuleId;
    include!(concat!(env!("OUT_DIR"), "/rule_ids.rs"));
}

impl RuleId {
    /// The rule with this id, if the checklist has it.
    pub fn parse(s: &str) -> Option<Self> {
        id::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self(i as u16))
    }

    /// `R-MEM-11`.
    pub fn as_str(self) -> &'static str {
        id::NAMES[self.0 as usize]
    }

    /// The rule's entry: side, level, text.
    pub fn rule(self) -> &'static Rule {
        &all()[self.0 as usize]
    }

    /// How much the spec says the rule weighs.
    pub fn level(self) -> RuleLevel {
        self.rule().level
    }
}

impl std::fmt::Debug for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown rule id {s:?} (spec/rules.toml lists the checklist's rules, R-WIRE-01 ...)"
            ))
        })
    }
}

impl PartialEq<&str> for RuleId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A rule's weight in the spec (the checklist's legend).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuleLevel {
    /// Informative.
    Info,
    /// Permitted behaviour.
    May,
    /// A robustness rule the spec is silent on.
    Rob,
    /// Recommended.
    Should,
    /// Required.
    Must,
}

impl RuleLevel {
    /// The checklist's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::May => "MAY",
            Self::Rob => "ROB",
            Self::Should => "SHOULD",
            Self::Must => "MUST",
        }
    }

    /// The most a finding citing a rule of this level can weigh.
    pub fn finding_cap(self) -> Level {
        match self {
            Self::Must => Level::Must,
            Self::Should | Self::May => Level::Should,
            Self::Rob => Level::Rob,
            Self::Info => Level::Info,
        }
    }
}

/// Whose duty a rule is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Side {
    /// The back-end's.
    #[serde(rename = "BE")]
    Backend,
    /// The front-end's.
    #[serde(rename = "FE")]
    Frontend,
    /// Both sides'.
    #[serde(rename = "both")]
    Both,
    /// The back-end program's (command line conventions).
    #[serde(rename = "BE program")]
    BackendProgram,
    /// The spec's own (informative).
    #[serde(rename = "spec")]
    Spec,
}

impl Side {
    /// The checklist's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backend => "BE",
            Self::Frontend => "FE",
            Self::Both => "both",
            Self::BackendProgram => "BE program",
            Self::Spec => "spec",
        }
    }
}

/// One rule of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// `R-MEM-11`.
    pub id: RuleId,
    /// Whose duty it is.
    pub side: Side,
    /// Its weight.
    pub level: RuleLevel,
    /// Its first line.
    pub text: String,
    /// Why no check through the socket can observe it, where that is so (`untestable` in
    /// spec/rules.toml): such a rule is reported with its reason, not as missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untestable: Option<String>,
}

impl Rule {
    /// Whether a back-end can be checked against it (front-end duties and informative notes
    /// are the harness's own business).
    pub fn is_backend_check(&self) -> bool {
        matches!(self.side, Side::Backend | Side::Both | Side::BackendProgram)
            && !matches!(self.level, RuleLevel::Info | RuleLevel::May)
    }
}

#[derive(Deserialize)]
struct RuleEntry {
    id: String,
    side: Side,
    level: RuleLevel,
    text: String,
    #[serde(default)]
    untestable: Option<String>,
}

#[derive(Deserialize)]
struct RulesFile {
    rule: Vec<RuleEntry>,
}

/// Every rule, in checklist order.
pub fn all() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let file = toml::from_str::<RulesFile>(RULES_TOML)
            .expect("spec/rules.toml is valid (checked by a test)");
        file.rule
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                // build.rs numbered the ids in this same order.
                debug_assert_eq!(id::NAMES[i], e.id);
                Rule {
                    id: RuleId(i as u16),
                    side: e.side,
                    level: e.level,
                    text: e.text,
                    untestable: e.untestable,
                }
            })
            .collect()
    })
}

/// The rule with this id.
pub fn find(id: &str) -> Option<&'static Rule> {
    RuleId::parse(id).map(RuleId::rule)
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
    /// Scenarios citing it ran, but what it judges never happened (a back-end request it
    /// checks was never sent): neither kept nor broken.
    NotObserved,
    /// No scenario checks it yet.
    NoScenario,
    /// Nothing seen through the socket can show it kept or broken (the reason is the rule's
    /// `untestable`).
    Untestable,
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
            Self::NotObserved => "not observed",
            Self::NoScenario => "no scenario yet",
            Self::Untestable => "untestable",
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

/// The rules a scenario cites: its own list and its steps' `rule` fields, and R-CRASH-01,
/// which every scenario checks (a crash fails any of them).
pub fn cited_by(s: &Scenario) -> Vec<RuleId> {
    let mut ids: Vec<RuleId> = s.spec.rules.clone();
    ids.extend(s.spec.steps.iter().filter_map(|st| st.rule));
    ids.push(id::R_CRASH_01);
    ids.sort();
    ids.dedup();
    ids
}

/// The coverage of every rule by `scenarios` (all that are loaded) and, when given, by the
/// results of a run.
pub fn coverage(scenarios: &[Scenario], results: Option<&[ScenarioResult]>) -> Vec<RuleCoverage> {
    let mut by_rule: BTreeMap<RuleId, Vec<String>> = BTreeMap::new();
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
    if !rule.is_backend_check() {
        return Status::NotBackend;
    }
    if cited.is_empty() {
        return if rule.untestable.is_some() {
            Status::Untestable
        } else {
            Status::NoScenario
        };
    }
    let Some(results) = results else {
        return Status::NotRun;
    };
    let ran: Vec<&ScenarioResult> = results.iter().filter(|r| cited.contains(&r.id)).collect();
    // Pass only where a check that could have cited the rule ran (and none did).
    if ran.iter().any(|r| {
        matches!(r.outcome, Outcome::Pass | Outcome::Warn | Outcome::Fail)
            && r.checked_rules.contains(&rule.id)
    }) {
        return Status::CheckedPass;
    }
    if ran
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Error { .. }))
    {
        return Status::Error;
    }
    if ran
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Pass | Outcome::Warn | Outcome::Fail))
    {
        return Status::NotObserved;
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
        let side = match r.rule.side {
            Side::BackendProgram => "prog",
            other => other.as_str(),
        };
        let mut line = format!(
            "{:<12} {:<6} {:<6} {:<24}",
            r.rule.id.as_str(),
            side,
            r.rule.level.as_str(),
            r.status.label()
        );
        match &r.status {
            Status::Skipped { why } => line.push_str(&why.join("; ")),
            Status::Untestable => {
                line.push_str(&format!(
                    "why: {}",
                    r.rule.untestable.as_deref().unwrap_or("")
                ));
            }
            _ if r.scenarios.len() > 6 => line.push_str(&format!(
                "{} and {} more",
                r.scenarios[..5].join(", "),
                r.scenarios.len() - 5
            )),
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
        for (i, r) in rules.iter().enumerate() {
            assert_eq!(
                r.id.as_str(),
                id::NAMES[i],
                "build.rs numbered the ids in file order"
            );
        }
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
                assert!(
                    find(id.as_str()).is_some(),
                    "{} cites unknown rule {id}",
                    s.spec.id
                );
            }
        }
    }
}
