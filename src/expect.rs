//! Expectations (`--expect FILE`): a back-end project records the departures it knows about,
//! each with its reason, so its CI gates on new ones only. An expected failure does not fail the
//! run; a scenario that now passes against an expected failure is an "xpass" (reported, and a
//! failure under `--strict-expectations`); an entry that matches no scenario is "stale".
//!
//! ```toml
//! [[expect]]
//! scenario = "memory/rem-wrong-*"      # an id or a glob
//! outcome = "fail"                     # fail | skip
//! reason = "REM_MEM_REG matches regions by guest address only (upstream issue 1234)"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::{Outcome, ScenarioResult};
use crate::scenario::{Scenario, glob_match};

/// What an entry expects of the scenarios it matches.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// The scenario fails (or warns): a known departure.
    Fail,
    /// The scenario is skipped (a feature the back-end does not offer).
    Skip,
}

/// One entry of the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Scenario id or glob.
    pub scenario: String,
    /// The expected outcome.
    pub outcome: Expected,
    /// Why (required: an expectation without a reason hides a finding).
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    expect: Vec<Entry>,
}

/// The expectations of a run.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// Entries in file order; the first that matches a scenario applies.
    pub entries: Vec<Entry>,
}

/// What is wrong with an expectations file.
#[derive(Debug, Error)]
pub enum ExpectError {
    /// It cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error the system reported.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or fields.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with the line).
        message: String,
    },
    /// An entry without a reason.
    #[error("{path}: the entry for {scenario:?} has an empty reason; say why it is expected")]
    NoReason {
        /// The file.
        path: PathBuf,
        /// The entry's scenario.
        scenario: String,
    },
}

/// How a result relates to its expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It failed as expected: the run is not failed by it.
    Xfail,
    /// It passed although a failure was expected.
    Xpass,
    /// It was skipped as expected.
    Skipped,
    /// It ran although a skip was expected.
    Ran,
}

/// The expectation a result met or missed, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// What the entry expected.
    pub expected: Expected,
    /// Its reason.
    pub reason: String,
    /// What happened.
    pub verdict: Verdict,
}

impl Expectations {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ExpectError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExpectError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            ExpectError::Syntax {
                path: path.to_path_buf(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        if let Some(e) = file.expect.iter().find(|e| e.reason.trim().is_empty()) {
            return Err(ExpectError::NoReason {
                path: path.to_path_buf(),
                scenario: e.scenario.clone(),
            });
        }
        Ok(Self {
            entries: file.expect,
        })
    }

    fn entry_for(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| glob_match(&e.scenario, id))
    }

    /// Entries that match none of the loaded scenarios.
    pub fn stale(&self, all: &[Scenario]) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|e| !all.iter().any(|s| glob_match(&e.scenario, &s.spec.id)))
            .cloned()
            .collect()
    }

    /// Marks each result with the expectation it met or missed.
    pub fn apply(&self, results: &mut [ScenarioResult]) {
        for r in results {
            let Some(e) = self.entry_for(&r.id) else {
                continue;
            };
            let failed = matches!(r.outcome, Outcome::Fail | Outcome::Warn);
            let verdict = match (e.outcome, &r.outcome) {
                (_, Outcome::Error { .. }) => continue,
                (Expected::Fail, _) if failed => Verdict::Xfail,
                (Expected::Fail, Outcome::Skip { .. }) => continue,
                (Expected::Fail, _) => Verdict::Xpass,
                (Expected::Skip, Outcome::Skip { .. }) => Verdict::Skipped,
                (Expected::Skip, _) => Verdict::Ran,
            };
            r.expectation = Some(Applied {
                expected: e.outcome,
                reason: e.reason.clone(),
                verdict,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, outcome: Outcome) -> ScenarioResult {
        ScenarioResult {
            id: id.into(),
            title: String::new(),
            rules: vec![],
            level: crate::scenario::Level::Must,
            source: String::new(),
            outcome,
            findings: vec![],
            notes: vec![],
            checked_rules: vec![],
            duration_ms: 0,
            transcript: vec![],
            expectation: None,
        }
    }

    fn load(text: &str) -> Result<Expectations, ExpectError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("expect.toml");
        std::fs::write(&p, text).unwrap();
        Expectations::load(&p)
    }

    #[test]
    fn expected_failures_passes_and_skips_are_told_apart() {
        let x = load(
            "[[expect]]\nscenario = \"memory/rem-*\"\noutcome = \"fail\"\nreason = \"known\"\n\
             [[expect]]\nscenario = \"shmem/*\"\noutcome = \"skip\"\nreason = \"no SHMEM\"\n",
        )
        .unwrap();
        let mut rs = vec![
            result("memory/rem-wrong-size", Outcome::Fail),
            result("memory/rem-unknown-region", Outcome::Pass),
            result("shmem/get-config", Outcome::Pass),
            result("blk/flush", Outcome::Fail),
        ];
        x.apply(&mut rs);
        let v: Vec<_> = rs
            .iter()
            .map(|r| r.expectation.as_ref().map(|a| a.verdict.clone()))
            .collect();
        assert_eq!(
            v,
            [
                Some(Verdict::Xfail),
                Some(Verdict::Xpass),
                Some(Verdict::Ran),
                None
            ]
        );
    }

    #[test]
    fn an_entry_without_a_reason_or_with_a_typo_is_refused_with_its_place() {
        let e = load("[[expect]]\nscenario = \"a/b\"\noutcome = \"fail\"\nreason = \" \"\n")
            .unwrap_err();
        assert!(e.to_string().contains("empty reason"), "{e}");
        let e = load("[[expect]]\nscenario = \"a/b\"\noutcome = \"flaky\"\nreason = \"x\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }
}
