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

/// Several reporters fed the same events, as the command line has them (stdout, then the
/// report files). A reporter that cannot write does not stop the others or the run: the first
/// error is kept for the end ([`Reporters::finish`]).
#[derive(Default)]
pub struct Reporters {
    all: Vec<Box<dyn Reporter>>,
    unwritten: Option<std::io::Error>,
}

impl Reporters {
    /// Adds a reporter; each gets the events in the order added.
    pub fn push(&mut self, r: Box<dyn Reporter>) {
        self.all.push(r);
    }

    /// Passes one event to every reporter.
    pub fn emit(&mut self, e: &RunEvent<'_>) {
        for r in &mut self.all {
            if let Err(err) = r.on_event(e) {
                self.unwritten.get_or_insert(err);
            }
        }
    }

    /// The first write error any reporter had, if one had.
    pub fn finish(self) -> std::io::Result<()> {
        self.unwritten.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
