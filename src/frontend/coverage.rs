//! The front-end rule coverage: each front-end rule, the scenarios that judge it, and where it
//! stands after a run.

use crate::engine::{Finding, Outcome, ScenarioResult};
use crate::rules::{self, RuleCoverage, Status, id};
use crate::scenario::Level;

use super::judge::PASSIVE_RULES;
use super::scenarios;

/// The front-end rules and where they stand after `results` (or, without, what checks them).
pub fn coverage(results: Option<&[ScenarioResult]>) -> Vec<RuleCoverage> {
    let all = scenarios::all();
    let ids: Vec<&str> = all.iter().map(|s| s.id).collect();
    rules::all()
        .iter()
        .filter(|r| matches!(r.side, rules::Side::Frontend | rules::Side::Both))
        .map(|rule| {
            let passive = PASSIVE_RULES.contains(&rule.id) || rule.id == id::R_FE_07;
            // A passive rule is judged in every scenario; another only where one cites it.
            let scenarios: Vec<String> = if passive {
                ids.iter().map(|s| s.to_string()).collect()
            } else {
                all.iter()
                    .filter(|s| s.rules.contains(&rule.id))
                    .map(|s| s.id.to_string())
                    .collect()
            };
            let judged = !scenarios.is_empty();
            let status =
                match results {
                    _ if !judged => {
                        if rule.untestable.is_some() {
                            Status::Untestable
                        } else {
                            Status::NoScenario
                        }
                    }
                    None => Status::NotRun,
                    Some(rs) => {
                        let fs: Vec<&Finding> = rs
                            .iter()
                            .flat_map(|r| &r.findings)
                            .filter(|f| f.rule == rule.id)
                            .collect();
                        if fs.iter().any(|f| f.level == Level::Must) {
                            Status::CheckedFail
                        } else if !fs.is_empty() {
                            Status::CheckedWarn
                        } else if rs.iter().any(|r| r.checked_rules.contains(&rule.id)) {
                            Status::CheckedPass
                        } else if !rs.iter().any(|r| scenarios.contains(&r.id)) {
                            Status::NotRun
                        } else if rs.iter().filter(|r| scenarios.contains(&r.id)).any(|r| {
                            matches!(r.outcome, Outcome::Pass | Outcome::Warn | Outcome::Fail)
                        }) {
                            Status::NotObserved
                        } else {
                            Status::Error
                        }
                    }
                };
            RuleCoverage {
                rule: rule.clone(),
                status,
                scenarios,
            }
        })
        .collect()
}
