//! The run: proptest generates cases from a seeded ChaCha RNG and, on a failure, shrinks it with
//! its own shrinker; each case runs against the back-end (a fresh process after every failure in
//! spawn mode); the minimal case is confirmed on a fresh process and saved.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use super::FuzzError;
use super::case::Case;
use super::exec::{self, Limits};
use super::oracle::{self, Failure};
use super::progress::Progress;
use super::save::{self, Reproducer};
use super::strategy::{self, Selection};
use crate::target::{Instance, ProcessState, TargetSpec};

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The back-end.
    pub target: TargetSpec,
    /// Cases to generate.
    pub cases: u32,
    /// The seed: the same seed generates the same cases.
    pub seed: u64,
    /// Which inputs.
    pub selection: Selection,
    /// Where reproducers go.
    pub out: PathBuf,
    /// Case timeouts.
    pub limits: Limits,
    /// Waiting for a spawned back-end's socket.
    pub connect_timeout: Duration,
    /// Stop after this many failures.
    pub max_failures: usize,
    /// Shrink steps allowed per failure.
    pub max_shrink_iters: u32,
    /// Interval between progress lines.
    pub progress_every: Duration,
}

/// One failure found, shrunk and saved.
#[derive(Clone, Debug)]
pub struct Found {
    /// The minimal case with its failure.
    pub reproducer: Reproducer,
    /// Whether the minimal case failed again on a fresh process.
    pub reproduced: bool,
    /// The saved file.
    pub path: PathBuf,
}

/// What a run found.
#[derive(Debug)]
pub struct Summary {
    /// Cases run (shrink steps not counted).
    pub cases: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Failures, in the order found.
    pub found: Vec<Found>,
}

/// The back-end of a run: started on demand, restarted after it died (spawn mode).
pub struct Target {
    spec: TargetSpec,
    connect_timeout: Duration,
    inst: Option<Instance>,
    /// GET_QUEUE_NUM's answer in the warm-up session, to tell out-of-range ring indices.
    pub queues: Option<u64>,
}

impl Target {
    /// Nothing started yet.
    pub fn new(spec: TargetSpec, connect_timeout: Duration) -> Self {
        Self {
            spec,
            connect_timeout,
            inst: None,
            queues: None,
        }
    }

    /// The instance, started (again) if it is missing or its process ended.
    pub fn get(&mut self) -> Result<&mut Instance, FuzzError> {
        let dead = self.inst.as_mut().is_none_or(|i| {
            matches!(
                i.state(),
                ProcessState::Exited(_) | ProcessState::Signaled(_)
            )
        });
        if dead {
            self.inst = None;
            let inst = Instance::start(&self.spec, self.connect_timeout)
                .map_err(|e| FuzzError::Setup(crate::engine::chain(&e)))?;
            self.inst = Some(inst);
        }
        self.inst
            .as_mut()
            .ok_or_else(|| FuzzError::Harness("no instance".into()))
    }

    /// Spawn mode: the next case gets a fresh process (after a failure, so leaks and broken
    /// state do not carry over into the next shrink step).
    pub fn reset(&mut self) {
        if matches!(self.spec, TargetSpec::Spawn(_)) {
            self.inst = None;
        }
    }

    /// Checks that a clean session with a data-path request works before any case, so a
    /// back-end that never works is a setup error, not a fuzz finding.
    pub fn warm_up(&mut self, limits: Limits) -> Result<(), FuzzError> {
        let inst = self.get()?;
        self.queues = oracle::fresh_session(inst, limits.timeout, 0xa5).map_err(|f| {
            FuzzError::Setup(format!(
                "the back-end fails a clean session before any fuzz case: {f}"
            ))
        })?;
        Ok(())
    }

    /// Runs one case on the current (or a fresh) instance.
    pub fn run(
        &mut self,
        case: &Case,
        limits: Limits,
        pattern: u8,
    ) -> Result<Option<Failure>, FuzzError> {
        exec::run_case(self.get()?, case, limits, pattern)
    }
}

struct State {
    target: Target,
    limits: Limits,
    progress: Progress,
    last: Option<(Case, Failure)>,
    harness: Option<FuzzError>,
    pattern: u8,
}

impl State {
    fn test(&mut self, case: Case) -> Result<(), TestCaseError> {
        if self.harness.is_some() {
            return Ok(());
        }
        self.progress.tick();
        self.pattern = self.pattern.wrapping_add(1);
        match self.target.run(&case, self.limits, self.pattern) {
            Ok(None) => Ok(()),
            Ok(Some(f)) => {
                if !self.progress.shrinking {
                    self.progress.failures += 1;
                    self.progress.shrinking = true;
                    self.progress.shrink_steps = 0;
                    eprintln!("fuzz: case {} failed ({f}); shrinking", self.progress.cases);
                }
                self.target.reset();
                let msg = f.to_string();
                self.last = Some((case, f));
                Err(TestCaseError::fail(msg))
            }
            Err(e) => {
                self.harness = Some(e);
                Ok(())
            }
        }
    }
}

/// 32 seed bytes from a u64 (splitmix64), for proptest's ChaCha RNG.
fn seed_bytes(seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..4)
        .flat_map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}

/// Runs the whole fuzz session.
pub fn run(cfg: &RunConfig) -> Result<Summary, FuzzError> {
    let start = Instant::now();
    let mut target = Target::new(cfg.target.clone(), cfg.connect_timeout);
    target.warm_up(cfg.limits)?;
    let state = RefCell::new(State {
        target,
        limits: cfg.limits,
        progress: Progress::new(u64::from(cfg.cases), cfg.progress_every),
        last: None,
        harness: None,
        pattern: 0,
    });
    let strategy = strategy::case(&cfg.selection);
    let mut found = vec![];
    let mut round = 0u64;
    loop {
        let left = u64::from(cfg.cases).saturating_sub(state.borrow().progress.cases);
        if left == 0 || found.len() >= cfg.max_failures {
            break;
        }
        let config = Config {
            cases: left as u32,
            max_shrink_iters: cfg.max_shrink_iters,
            max_shrink_time: 120_000,
            failure_persistence: None,
            ..Config::default()
        };
        // Each round after a failure continues from a seed derived from the run's, so the
        // whole run repeats from `--seed`.
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(cfg.seed ^ round));
        round += 1;
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&strategy, |case| state.borrow_mut().test(case));
        let mut st = state.borrow_mut();
        if let Some(e) = st.harness.take() {
            return Err(e);
        }
        match result {
            Ok(()) => break,
            Err(TestError::Abort(why)) => return Err(FuzzError::Harness(why.to_string())),
            Err(TestError::Fail(_, minimal)) => {
                st.progress.shrinking = false;
                st.progress.print();
                let f = finish(&mut st, cfg, minimal, found.len() + 1)?;
                found.push(f);
            }
        }
    }
    let st = state.into_inner();
    st.progress.print();
    Ok(Summary {
        cases: st.progress.cases,
        elapsed: start.elapsed(),
        found,
    })
}

/// The minimal case's failure (from the last failing run, or by running it again), confirmed
/// on a fresh process, saved.
fn finish(st: &mut State, cfg: &RunConfig, minimal: Case, n: usize) -> Result<Found, FuzzError> {
    let seen = st
        .last
        .take()
        .filter(|(c, _)| *c == minimal)
        .map(|(_, f)| f);
    st.target.reset();
    let again = st.target.run(&minimal, cfg.limits, 0x3c)?;
    st.target.reset();
    let reproduced = again.is_some();
    let failure = seen.or(again).unwrap_or_else(|| {
        Failure::new(
            oracle::FailureKind::Unusable,
            "failed during the run, not when run alone",
        )
    });
    let (spawn, backend) = match &cfg.target {
        TargetSpec::Spawn(c) => (Some(c.clone()), None),
        TargetSpec::Connect(p) | TargetSpec::Listen(p) => (None, Some(p.clone())),
    };
    let reproducer = Reproducer {
        seed: cfg.seed,
        spawn,
        backend,
        rule: save::rule_for(&minimal, &failure, st.target.queues).into(),
        failure,
        case: minimal,
    };
    let path = save::save(&cfg.out, n, &reproducer)?;
    Ok(Found {
        reproducer,
        reproduced,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_expand_to_distinct_32_byte_keys() {
        assert_eq!(seed_bytes(1).len(), 32);
        assert_ne!(seed_bytes(1), seed_bytes(2));
        assert_eq!(seed_bytes(7), seed_bytes(7));
    }
}
