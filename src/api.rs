//! Running the suite from Rust: a back-end project can gate its own `cargo test` on
//! vhu-conform with one call, and gets the results as values. The `vhu-conform` command line
//! is built on the same [`Suite`].
//!
//! ```no_run
//! use vhu_conform::api::Suite;
//!
//! let report = Suite::spawn("target/debug/my-backend --socket-path {socket}")
//!     .only("memory/*")
//!     .run()
//!     .expect("the back-end could be reached");
//! assert!(report.passed(), "{}", report.summary());
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::device::{DeviceSource, DeviceType};
use crate::engine::{self, Offer, Repeat, RunEvent, RunOptions, ScenarioResult};
use crate::expect::{Entry, Expectations};
use crate::report::Totals;
use crate::rules::RuleCoverage;
use crate::scenario::{self, Scenario, ScenarioLoadError};
use crate::target::TargetSpec;

/// A run to make: the back-end, which scenarios, and how.
#[derive(Clone, Debug)]
pub struct Suite {
    /// How the back-end is reached.
    pub target: TargetSpec,
    /// Scenario id globs or areas; empty runs everything.
    pub filters: Vec<String>,
    /// Directories of extra scenario files.
    pub scenario_dirs: Vec<PathBuf>,
    /// Timeouts and strictness.
    pub options: RunOptions,
    /// Repetitions per scenario.
    pub repeat: Repeat,
    /// The back-end's device type and who said so, when known; without it, a spawned
    /// program's `--print-capabilities` is asked.
    pub device: Option<(DeviceType, DeviceSource)>,
    /// Known failures and skips.
    pub expectations: Expectations,
    /// Shuffle the order with this seed.
    pub shuffle: Option<u64>,
}

/// Why a run could not be made (a back-end that misbehaves is never this: it is a finding).
#[derive(Debug, Error)]
pub enum SuiteError {
    /// A scenario file is wrong.
    #[error(transparent)]
    Scenarios(#[from] ScenarioLoadError),
    /// The filters select nothing.
    #[error("no scenario matches {0:?}")]
    NothingSelected(Vec<String>),
    /// The back-end could not be started or reached at all.
    #[error("cannot reach the back-end: {0}")]
    Unreachable(String),
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct SuiteReport {
    /// What the back-end offered.
    pub offer: Offer,
    /// One result per selected scenario.
    pub results: Vec<ScenarioResult>,
    /// Every rule of the checklist and where it stands.
    pub rules: Vec<RuleCoverage>,
    /// Expectations that matched no scenario.
    pub stale: Vec<Entry>,
    /// The back-end answered its first GET_FEATURES badly: why (the run went on with the
    /// scenarios that need no feature).
    pub preflight_warning: Option<String>,
}

impl Suite {
    /// A suite against `target` with default options, every scenario.
    pub fn new(target: TargetSpec) -> Self {
        Self {
            target,
            filters: vec![],
            scenario_dirs: vec![],
            options: RunOptions::default(),
            repeat: Repeat::default(),
            device: None,
            expectations: Expectations::default(),
            shuffle: None,
        }
    }

    /// Starts a fresh back-end per scenario with `command` (`{socket}` is replaced by the path
    /// it must listen on).
    pub fn spawn(command: impl Into<String>) -> Self {
        Self::new(TargetSpec::Spawn(command.into()))
    }

    /// Connects to a back-end listening on `socket`.
    pub fn backend(socket: impl Into<PathBuf>) -> Self {
        Self::new(TargetSpec::Connect(socket.into()))
    }

    /// Adds a filter (an id glob such as `memory/*`, or an area such as `vring`).
    pub fn only(mut self, filter: impl Into<String>) -> Self {
        self.filters.push(filter.into());
        self
    }

    /// Adds a directory of scenario files.
    pub fn scenarios_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scenario_dirs.push(dir.into());
        self
    }

    /// Sets the per-reply timeout.
    pub fn step_timeout(mut self, t: Duration) -> Self {
        self.options.step_timeout = t;
        self
    }

    /// Sets the device type (`--device`).
    pub fn device(mut self, device: DeviceType) -> Self {
        self.device = Some((device, DeviceSource::Option));
        self
    }

    /// Reads an expectations file (`--expect`).
    pub fn expect_file(mut self, path: &Path) -> Result<Self, crate::expect::ExpectError> {
        self.expectations = Expectations::load(path)?;
        Ok(self)
    }

    /// The scenarios this suite would run, in order, and those it loads.
    pub fn plan(&self) -> Result<(Vec<Scenario>, Vec<Scenario>), SuiteError> {
        let all = scenario::load_all(&self.scenario_dirs)?;
        let mut selected = scenario::select(all.clone(), &self.filters);
        if selected.is_empty() {
            return Err(SuiteError::NothingSelected(self.filters.clone()));
        }
        if let Some(seed) = self.shuffle {
            crate::seed::shuffle(&mut selected, seed);
        }
        Ok((selected, all))
    }

    /// Runs and returns the report.
    pub fn run(&self) -> Result<SuiteReport, SuiteError> {
        self.run_with(&mut |_| {})
    }

    /// Runs, passing every event (for progress output) to `emit`.
    pub fn run_with(&self, emit: &mut dyn FnMut(RunEvent<'_>)) -> Result<SuiteReport, SuiteError> {
        let (selected, all) = self.plan()?;
        let (mut offer, preflight_warning) = match engine::preflight(&self.target, &self.options) {
            Ok(o) => (o, None),
            Err(engine::PreflightError::Unreachable(why)) => {
                return Err(SuiteError::Unreachable(why));
            }
            // The back-end is there but its offer is unreadable: run what needs no feature, so
            // the scenarios show the departure with its rule.
            Err(engine::PreflightError::Misbehaved(why)) => (Offer::default(), Some(why)),
        };
        let device = engine::device_type(self.device, &self.target);
        offer.device = device.map(|d| d.0);
        offer.device_source = device.map(|d| d.1);
        // Expectations are applied to each result before it is reported, so the live line
        // says XFAIL where the recap does.
        let expectations = &self.expectations;
        let mut judged = |e: RunEvent<'_>| match e {
            RunEvent::Finished(r) => {
                let mut r = r.clone();
                expectations.apply(std::slice::from_mut(&mut r));
                emit(RunEvent::Finished(&r));
            }
            other => emit(other),
        };
        let mut results = engine::run_suite_repeated(
            &selected,
            &self.target,
            &offer,
            &self.options,
            self.repeat,
            &mut judged,
        );
        self.expectations.apply(&mut results);
        let stale = self.expectations.stale(&all);
        let rules = crate::rules::coverage(&all, Some(&results));
        Ok(SuiteReport {
            offer,
            results,
            rules,
            stale,
            preflight_warning,
        })
    }
}

impl SuiteReport {
    /// Counts per outcome.
    pub fn totals(&self) -> Totals {
        Totals::of(&self.results)
    }

    /// No failure (expected ones aside) and no harness error.
    pub fn passed(&self) -> bool {
        let t = self.totals();
        t.fail == 0 && t.error == 0
    }

    /// The results that failed or errored (expected failures aside).
    pub fn failures(&self) -> impl Iterator<Item = &ScenarioResult> {
        self.results.iter().filter(|r| {
            let expected = r
                .expectation
                .as_ref()
                .is_some_and(|a| a.verdict == crate::expect::Verdict::Xfail);
            !expected
                && matches!(
                    r.outcome,
                    engine::Outcome::Fail | engine::Outcome::Error { .. }
                )
        })
    }

    /// The human recap with every failure's details, for an assertion message.
    pub fn summary(&self) -> String {
        let mut out = Vec::new();
        let mut h = crate::report::Human::new(&mut out, false);
        h.recap(&self.results);
        let mut text = String::from_utf8_lossy(&out).into_owned();
        for r in self.failures() {
            text.push_str(&format!("\n{}\n{}", r.id, crate::report::details(r, true)));
        }
        text
    }
}
