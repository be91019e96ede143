//! Reporters: consumers of the engine's event stream ([`RunEvent`]), each independent of the
//! others; they render the engine's verdicts and never decide one. The human view
//! ([`Human`]: progress lines, a live bar on a terminal, the recap), the JSON report
//! ([`JsonReporter`], versioned schema) and JUnit XML ([`JunitReporter`]).

mod human;
mod json;
mod junit;
mod label;
pub mod recap;

pub use human::{Human, details};
pub use json::{JSON_SCHEMA_VERSION, JsonReporter, json};
pub use junit::{JunitReporter, junit};

use crate::engine::RunEvent;
pub use crate::engine::Totals;

/// A consumer of the engine's events. Adding a format is adding a reporter: nothing upstream
/// changes.
pub trait Reporter {
    /// One event of the run, as it happens (see [`crate::engine::RunEvent`] for their order).
    /// An error is output that could not be written; the run goes on and the caller reports
    /// it at the end.
    fn on_event(&mut self, e: &RunEvent<'_>) -> std::io::Result<()>;
}

#[cfg(test)]
mod tests;
