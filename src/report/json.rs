//! The JSON report (versioned schema): the offer, totals, every result with its whole
//! transcript, the rule coverage and stale expectations, written when the run finishes.

use std::io::Write;

use serde::Serialize;

use super::Reporter;
use crate::engine::{Offer, RunEvent, RunSummary, ScenarioResult, Totals};
use crate::expect::Entry;
use crate::rules::RuleCoverage;

/// Version of the JSON report's schema; bumped on incompatible changes.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Writes the JSON report to `out` when the run finishes.
pub struct JsonReporter<W: Write> {
    out: W,
    offer: Offer,
    results: Vec<ScenarioResult>,
}

impl<W: Write> JsonReporter<W> {
    /// Writes the report to `out` (stdout or a file).
    pub fn new(out: W) -> Self {
        Self {
            out,
            offer: Offer::default(),
            results: Vec::new(),
        }
    }
}

impl<W: Write> Reporter for JsonReporter<W> {
    fn on_event(&mut self, e: &RunEvent<'_>) -> std::io::Result<()> {
        match *e {
            RunEvent::RunStarted { offer, .. } => self.offer = offer.clone(),
            RunEvent::ScenarioStarted { .. } => {}
            RunEvent::ScenarioSkipped { result, .. }
            | RunEvent::ScenarioFinished { result, .. } => {
                self.results.push(result.clone());
            }
            RunEvent::RunFinished(summary) => {
                writeln!(self.out, "{}", json(&self.offer, &self.results, summary))?;
                self.out.flush()?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema_version: u32,
    tool: &'static str,
    version: &'static str,
    offer: &'a Offer,
    totals: Totals,
    results: &'a [ScenarioResult],
    rules: &'a [RuleCoverage],
    stale_expectations: &'a [Entry],
}

/// The JSON report of a finished run.
pub fn json(offer: &Offer, results: &[ScenarioResult], summary: &RunSummary) -> String {
    let r = JsonReport {
        schema_version: JSON_SCHEMA_VERSION,
        tool: "vhu-conform",
        version: env!("CARGO_PKG_VERSION"),
        offer,
        totals: summary.totals,
        results,
        rules: &summary.rules,
        stale_expectations: &summary.stale,
    };
    serde_json::to_string_pretty(&r).expect("results serialize")
}
