//! Progress on stderr while a run goes: cases done, cases per second, failures found, and the
//! shrinking of a failure. At most one line per interval, so a long run stays readable in a log.

use std::io::Write;
use std::time::{Duration, Instant};

/// Counters of a run and when they were last printed.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    last: Instant,
    every: Duration,
    total: u64,
    /// Cases generated and run (not counting shrink steps).
    pub cases: u64,
    /// Shrink steps of the failure being minimised.
    pub shrink_steps: u64,
    /// Failures found.
    pub failures: u64,
    /// Whether a failure is being shrunk.
    pub shrinking: bool,
}

impl Progress {
    /// A run of `total` cases, printing at most every `every`.
    pub fn new(total: u64, every: Duration) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            every,
            total,
            cases: 0,
            shrink_steps: 0,
            failures: 0,
            shrinking: false,
        }
    }

    /// Counts one case (or one shrink step) and prints if the interval has passed.
    pub fn tick(&mut self) {
        if self.shrinking {
            self.shrink_steps += 1;
        } else {
            self.cases += 1;
        }
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            self.print();
        }
    }

    /// Cases per second so far.
    pub fn rate(&self) -> f64 {
        self.cases as f64 / self.start.elapsed().as_secs_f64().max(1e-3)
    }

    /// The progress line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "fuzz: {}/{} cases, {:.1} cases/s, {} failure{} found",
            self.cases,
            self.total,
            self.rate(),
            self.failures,
            if self.failures == 1 { "" } else { "s" }
        );
        if self.shrinking {
            s.push_str(&format!(", shrinking ({} steps)", self.shrink_steps));
        }
        s
    }

    /// Prints the line now.
    pub fn print(&self) {
        let _ = writeln!(std::io::stderr(), "{}", self.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_cases_and_shrink_steps_apart() {
        let mut p = Progress::new(10, Duration::from_secs(3600));
        p.tick();
        p.tick();
        p.failures = 1;
        p.shrinking = true;
        p.tick();
        let line = p.line();
        assert!(line.starts_with("fuzz: 2/10 cases, "), "{line}");
        assert!(
            line.ends_with("1 failure found, shrinking (1 steps)"),
            "{line}"
        );
    }
}
