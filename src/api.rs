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
use crate::engine::{self, Offer, Repeat, RunOptions, ScenarioResult, Totals};
pub use crate::engine::{RunEvent, RunSummary};
pub use crate::exit_code::{ExitPolicy, RunExit};
use crate::expect::{Entry, Expectations};
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
    /// Only this share of the selected scenarios (`--partition`), taken before the shuffle.
    pub partition: Option<Partition>,
    /// How many scenarios run at once in spawn mode (default [`engine::default_jobs`]); a
    /// connect or listen target (one running back-end) always runs them one at a time.
    pub jobs: usize,
    /// Which finished runs fail (`--strict-expectations`).
    pub exit_policy: ExitPolicy,
}

/// How a [`Partition`] shares the scenarios out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// Every N-th selected scenario, starting at the K-th.
    Count,
    /// The scenarios whose id hashes (FNV-1a, stable across runs and machines) to K modulo N.
    Hash,
}

/// Shard K of N of the selected scenarios (`--partition count:K/N`, `hash:K/N`, or `K/N` for
/// count), so a CI matrix of N jobs runs every scenario exactly once.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Count or hash.
    pub kind: PartitionKind,
    /// K, from 1 to `total`.
    pub shard: u64,
    /// N, at least 1.
    pub total: u64,
}

impl Partition {
    /// Parses `count:K/N`, `hash:K/N` or `K/N` (count); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, rest) = match text.split_once(':') {
            Some(("count", rest)) => (PartitionKind::Count, rest),
            Some(("hash", rest)) => (PartitionKind::Hash, rest),
            Some((other, _)) => {
                return Err(format!(
                    "unknown partition kind {other:?}: expected count:K/N, hash:K/N or K/N"
                ));
            }
            None => (PartitionKind::Count, text),
        };
        let bad =
            || format!("expected K/N, count:K/N or hash:K/N (such as count:1/3), got {text:?}");
        let (k, n) = rest.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            return Err("N, the number of shards, must be at least 1".into());
        }
        if k == 0 || k > n {
            return Err(format!(
                "shard {k} of {n}: K must be from 1 to N (shards are counted from 1)"
            ));
        }
        Ok(Self {
            kind,
            shard: k,
            total: n,
        })
    }

    /// Whether the scenario `id`, at `index` (from 0) among the selected, is in this shard.
    pub fn contains(&self, index: usize, id: &str) -> bool {
        let key = match self.kind {
            PartitionKind::Count => index as u64,
            PartitionKind::Hash => fnv1a(id.as_bytes()),
        };
        key % self.total == self.shard - 1
    }

    /// The scenarios of this shard, in their order.
    pub fn apply(&self, scenarios: Vec<Scenario>) -> Vec<Scenario> {
        scenarios
            .into_iter()
            .enumerate()
            .filter(|(i, s)| self.contains(*i, &s.spec.id))
            .map(|(_, s)| s)
            .collect()
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            PartitionKind::Count => "count",
            PartitionKind::Hash => "hash",
        };
        write!(f, "{kind}:{}/{}", self.shard, self.total)
    }
}

impl std::str::FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// 64-bit FNV-1a: a hash that never changes between versions, runs or machines.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
    /// The partition holds none of the selected scenarios.
    #[error("partition {partition} holds none of the {selected} selected scenarios")]
    EmptyPartition {
        /// The partition.
        partition: Partition,
        /// How many the filters selected.
        selected: usize,
    },
    /// The back-end could not be started or reached at all.
    #[error("cannot reach the back-end: {0}")]
    Unreachable(String),
}

impl SuiteError {
    /// The process exit code for a run that could not be made (README "Exit codes"): nothing
    /// selected is [`crate::exit_code::NOTHING_RAN`], an unreachable back-end
    /// [`crate::exit_code::SETUP`], a wrong scenario file [`crate::exit_code::USAGE`].
    pub fn exit_code(&self) -> u8 {
        use crate::exit_code::{NOTHING_RAN, SETUP, USAGE};
        match self {
            Self::Scenarios(_) => USAGE,
            Self::NothingSelected(_) | Self::EmptyPartition { .. } => NOTHING_RAN,
            Self::Unreachable(_) => SETUP,
        }
    }
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
    /// How the run ends under the suite's [`ExitPolicy`]; `exit.code()` is the process exit
    /// code the command line returns for it.
    pub exit: RunExit,
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
            partition: None,
            jobs: engine::default_jobs(),
            exit_policy: ExitPolicy::default(),
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

    /// Runs up to `jobs` scenarios at once (spawn mode only; 1 is one after the other).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// Runs only shard `partition` of the selected scenarios.
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the device type (`--device`).
    pub fn device(mut self, device: DeviceType) -> Self {
        self.device = Some((device, DeviceSource::Option));
        self
    }

    /// An unexpected pass, a scenario that ran against an expected skip, or a stale
    /// expectation fails the run (`--strict-expectations`).
    pub fn strict_expectations(mut self, on: bool) -> Self {
        self.exit_policy.strict_expectations = on;
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
        if let Some(p) = self.partition {
            let count = selected.len();
            selected = p.apply(selected);
            if selected.is_empty() {
                return Err(SuiteError::EmptyPartition {
                    partition: p,
                    selected: count,
                });
            }
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
        let plan = engine::Plan {
            scenarios: &selected,
            loaded: &all,
            target: &self.target,
            offer: &offer,
            options: &self.options,
            repeat: self.repeat,
            jobs: self.jobs,
            expectations: &self.expectations,
            policy: self.exit_policy,
        };
        let (results, summary) = engine::run(&plan, emit);
        Ok(SuiteReport {
            offer,
            results,
            rules: summary.rules,
            stale: summary.stale,
            preflight_warning,
            exit: summary.exit,
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

    /// The process exit code of this run (README "Exit codes"), as the command line returns it.
    pub fn exit_code(&self) -> u8 {
        self.exit.code()
    }

    /// The results that failed or errored (expected failures aside).
    pub fn failures(&self) -> impl Iterator<Item = &ScenarioResult> {
        self.results
            .iter()
            .filter(|r| crate::exit_code::counts_against(r))
    }

    /// The human recap with every failure's details, for an assertion message.
    pub fn summary(&self) -> String {
        let mut text = crate::report::recap::Recap::of(&self.results).render(&self.totals(), false);
        for r in self.failures() {
            text.push_str(&format!("\n{}\n{}", r.id, crate::report::details(r, true)));
        }
        text
    }
}
