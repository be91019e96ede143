//! The run: case `i` of a seed is drawn by proptest from its own ChaCha RNG (seeded from the
//! run's seed and `i`), so the cases and their order depend on the seed alone, whichever worker
//! runs them. `jobs` workers take the cases in order, each against its own back-end process
//! (spawn mode), kept from case to case while the oracle finds it healthy and replaced after
//! any failure. The failures reported are the first `max_failures` by case number, whatever
//! the number of workers: once they are known, every case before them is still run and no case
//! after them. Each is then shrunk with proptest's shrinker (a fresh process after every failing
//! step), confirmed on a fresh process and saved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::FuzzError;
use super::case::{Case, Stage};
use super::exec::{self, Limits, Warm};
use super::oracle::{self, Failure};
use super::progress::Progress;
use super::save::{self, Reproducer};
use super::strategy::{self, Selection};
use crate::target::{Instance, ProcessState, TargetError, TargetSpec};

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
    pub out: std::path::PathBuf,
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
    /// Workers running cases at once, each with its own back-end process (spawn mode only:
    /// one back-end behind `--backend` serves one front-end at a time, so it gets one worker).
    pub jobs: usize,
    /// Every case on a new process instead of one kept while it is healthy.
    pub fresh_process: bool,
}

impl RunConfig {
    /// The workers this run really uses.
    pub fn workers(&self) -> usize {
        match self.target {
            TargetSpec::Spawn(_) => self.jobs.max(1),
            TargetSpec::Connect(_) | TargetSpec::Listen(_) => 1,
        }
    }
}

/// One failure found, shrunk and saved.
#[derive(Clone, Debug)]
pub struct Found {
    /// The minimal case with its failure, and the number of the case that found it.
    pub reproducer: Reproducer,
    /// Whether the minimal case failed again on a fresh process.
    pub reproduced: bool,
    /// The saved file.
    pub path: std::path::PathBuf,
}

/// What a run found.
#[derive(Debug)]
pub struct Summary {
    /// Cases judged: every case up to the last failure reported (shrink steps not counted).
    pub cases: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Failures, in case order.
    pub found: Vec<Found>,
    /// Workers used.
    pub workers: usize,
}

/// A back-end process started in the background, to take over when the current one must go.
type Standby = JoinHandle<Result<Instance, TargetError>>;

/// The back-end of one worker: started on demand, kept from case to case, replaced after it
/// died or failed a case (spawn mode). With a standby, a replacement is started in the
/// background as soon as a process is taken into use, so a respawn rarely waits for a process
/// to start.
pub struct Target {
    spec: TargetSpec,
    connect_timeout: Duration,
    inst: Option<Instance>,
    /// Whether a standby process is kept ([`Target::with_standby`]).
    keep_standby: bool,
    standby: Option<Standby>,
    /// Processes being ended in the background (an Instance's drop waits for its process to
    /// go, polling every 10 ms: the worker does not wait with it).
    retiring: Vec<JoinHandle<()>>,
    /// Whether the current process has served a connection.
    used: bool,
    warm: Warm,
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
            keep_standby: false,
            standby: None,
            retiring: vec![],
            used: false,
            warm: Warm::default(),
            queues: None,
        }
    }

    /// Keeps a second process started in the background (spawn mode), to take over at once
    /// when the current one must go: for a run's workers, which replace their process after
    /// every failure and for every [`Stage::NewProcess`] case.
    pub fn with_standby(mut self) -> Self {
        self.keep_standby = true;
        self
    }

    fn spawned(&self) -> bool {
        matches!(self.spec, TargetSpec::Spawn(_))
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
            self.retire();
            let started = match self.standby.take().map(JoinHandle::join) {
                Some(Ok(Ok(inst))) => Ok(inst),
                // A standby that failed to start is retried in the foreground, so the error
                // reported is the one of a start just attempted.
                _ => Instance::start(&self.spec, self.connect_timeout),
            };
            let inst = started.map_err(|e| FuzzError::Setup(crate::engine::chain(&e)))?;
            self.inst = Some(inst);
            self.used = false;
            self.warm.new_process();
            if self.keep_standby && self.spawned() {
                let (spec, timeout) = (self.spec.clone(), self.connect_timeout);
                self.standby = Some(std::thread::spawn(move || Instance::start(&spec, timeout)));
            }
        }
        self.inst
            .as_mut()
            .ok_or_else(|| FuzzError::Harness("no instance".into()))
    }

    /// Spawn mode: the next case gets a fresh process (after a failure, so leaks and broken
    /// state do not carry over into the next case or shrink step).
    pub fn reset(&mut self) {
        if self.spawned() {
            self.retire();
        }
    }

    /// Ends the current process, if any, on a thread of its own.
    fn retire(&mut self) {
        self.retiring.retain(|t| !t.is_finished());
        if let Some(inst) = self.inst.take() {
            self.retiring.push(std::thread::spawn(move || drop(inst)));
        }
    }

    /// Checks that a clean session with a data-path request works before any case, so a
    /// back-end that never works is a setup error, not a fuzz finding.
    pub fn warm_up(&mut self, limits: Limits) -> Result<(), FuzzError> {
        let (inst, warm) = self.in_use()?;
        let queues =
            oracle::fresh_session_in(inst, &mut warm.pool, limits.timeout, 0xa5).map_err(|f| {
                FuzzError::Setup(format!(
                    "the back-end fails a clean session before any fuzz case: {f}"
                ))
            })?;
        self.queues = queues;
        Ok(())
    }

    /// The current instance (started if there is none), marked as having served, and the
    /// state its sessions reuse.
    fn in_use(&mut self) -> Result<(&mut Instance, &mut Warm), FuzzError> {
        self.get()?;
        self.used = true;
        let Self { inst, warm, .. } = self;
        let inst = inst
            .as_mut()
            .ok_or_else(|| FuzzError::Harness("no instance".into()))?;
        Ok((inst, warm))
    }

    /// Runs one case on the current instance, or a fresh one if the case needs a process that
    /// served nothing ([`Stage::NewProcess`]) or the last one ended.
    pub fn run(
        &mut self,
        case: &Case,
        limits: Limits,
        pattern: u8,
    ) -> Result<Option<Failure>, FuzzError> {
        if case.stage == Stage::NewProcess && self.used {
            self.reset();
        }
        let (inst, warm) = self.in_use()?;
        exec::run_case_warm(inst, warm, case, limits, pattern)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Every process is gone when the target is: the standby's with its Instance, the
        // retiring ones with their threads.
        if let Some(standby) = self.standby.take() {
            let _ = standby.join();
        }
        for t in self.retiring.drain(..) {
            let _ = t.join();
        }
    }
}

/// 32 seed bytes for proptest's ChaCha RNG from a u64 (splitmix64).
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

/// The RNG key of case `index` of `seed`: half from each, so a case does not depend on which
/// cases were drawn before it (nor on which worker draws it).
fn case_key(seed: u64, index: u64) -> Vec<u8> {
    let mut key = seed_bytes(seed);
    key.truncate(16);
    key.extend_from_slice(&seed_bytes(index)[..16]);
    key
}

/// Case `index` of `seed` as a value tree (the value, and how it shrinks).
pub fn draw(
    strategy: &proptest::strategy::BoxedStrategy<Case>,
    seed: u64,
    index: u64,
) -> Result<Box<dyn ValueTree<Value = Case>>, FuzzError> {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &case_key(seed, index));
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    strategy
        .new_tree(&mut runner)
        .map(|t| Box::new(t) as Box<dyn ValueTree<Value = Case>>)
        .map_err(|e| FuzzError::Harness(format!("cannot draw case {index}: {e}")))
}

/// A failing case as the scan saw it.
#[derive(Clone, Debug)]
struct Hit {
    index: u64,
    case: Case,
    failure: Failure,
}

/// What the workers share during the scan.
struct Shared {
    /// The next case number to take.
    next: AtomicU64,
    /// Cases from this number on are not needed (the failures to report are known).
    limit: AtomicU64,
    /// The first failures by case number, at most `max_failures`.
    hits: Mutex<Vec<Hit>>,
    max_failures: usize,
    error: Mutex<Option<FuzzError>>,
    progress: Mutex<Progress>,
    queues: Mutex<Option<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn failed(&self, hit: Hit) {
        if hit.index >= self.limit.load(Ordering::SeqCst) {
            // Past the failures already chosen: a run with fewer workers never gets here.
            return;
        }
        eprintln!("fuzz: case {} failed ({})", hit.index, hit.failure);
        let mut hits = lock(&self.hits);
        hits.push(hit);
        hits.sort_by_key(|h| h.index);
        hits.truncate(self.max_failures);
        if hits.len() == self.max_failures {
            let last = hits[hits.len() - 1].index;
            self.limit.fetch_min(last + 1, Ordering::SeqCst);
        }
        lock(&self.progress).failures = hits.len() as u64;
    }

    fn abort(&self, e: FuzzError) {
        lock(&self.error).get_or_insert(e);
        self.limit.store(0, Ordering::SeqCst);
    }
}

/// One worker of the scan: its own strategy, back-end and guest memory.
fn scan(cfg: &RunConfig, shared: &Shared, worker: usize) {
    let strategy = strategy::case(&cfg.selection);
    let mut target = Target::new(cfg.target.clone(), cfg.connect_timeout).with_standby();
    if let Err(e) = target.warm_up(cfg.limits) {
        return shared.abort(e);
    }
    if let Some(q) = target.queues {
        lock(&shared.queues).get_or_insert(q);
    }
    // The blk pattern only has to differ from one case to the next on a process.
    let mut pattern = (worker as u8).wrapping_mul(97);
    loop {
        let index = shared.next.fetch_add(1, Ordering::SeqCst);
        if index >= shared.limit.load(Ordering::SeqCst) {
            return;
        }
        let case = match draw(&strategy, cfg.seed, index) {
            Ok(tree) => tree.current(),
            Err(e) => return shared.abort(e),
        };
        lock(&shared.progress).tick();
        pattern = pattern.wrapping_add(1);
        if cfg.fresh_process {
            target.reset();
        }
        match target.run(&case, cfg.limits, pattern) {
            Ok(None) => {}
            Ok(Some(failure)) => {
                target.reset();
                shared.failed(Hit {
                    index,
                    case,
                    failure,
                });
            }
            Err(e) => return shared.abort(e),
        }
    }
}

/// Runs the whole fuzz session.
pub fn run(cfg: &RunConfig) -> Result<Summary, FuzzError> {
    let start = Instant::now();
    let workers = cfg.workers();
    let shared = Shared {
        next: AtomicU64::new(0),
        limit: AtomicU64::new(u64::from(cfg.cases)),
        hits: Mutex::new(vec![]),
        max_failures: cfg.max_failures.max(1),
        error: Mutex::new(None),
        progress: Mutex::new(Progress::new(u64::from(cfg.cases), cfg.progress_every)),
        queues: Mutex::new(None),
    };
    std::thread::scope(|s| {
        for w in 0..workers {
            let shared = &shared;
            s.spawn(move || scan(cfg, shared, w));
        }
    });
    if let Some(e) = lock(&shared.error).take() {
        return Err(e);
    }
    let judged = shared.limit.load(Ordering::SeqCst);
    let hits = std::mem::take(&mut *lock(&shared.hits));
    let queues = *lock(&shared.queues);
    let mut progress = shared
        .progress
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let strategy = strategy::case(&cfg.selection);
    let mut found = vec![];
    for hit in hits {
        progress.print();
        eprintln!("fuzz: shrinking case {}", hit.index);
        let (minimal, seen) = shrink(cfg, &strategy, &hit, &mut progress)?;
        found.push(finish(cfg, &hit, minimal, seen, queues, found.len() + 1)?);
    }
    progress.cases = judged;
    progress.print();
    Ok(Summary {
        cases: judged,
        elapsed: start.elapsed(),
        found,
        workers,
    })
}

/// proptest's shrinking loop (`TestRunner::shrink`): simplify while the case fails,
/// complicate when it passes, up to `max_shrink_iters` steps or two minutes. Every failing
/// step is followed by a fresh process; a passing step keeps it. Returns the last failing case
/// with its failure.
fn shrink(
    cfg: &RunConfig,
    strategy: &proptest::strategy::BoxedStrategy<Case>,
    hit: &Hit,
    progress: &mut Progress,
) -> Result<(Case, Failure), FuzzError> {
    let mut tree = draw(strategy, cfg.seed, hit.index)?;
    let mut minimal = (hit.case.clone(), hit.failure.clone());
    let mut target = Target::new(cfg.target.clone(), cfg.connect_timeout).with_standby();
    let started = Instant::now();
    progress.shrinking = true;
    progress.shrink_steps = 0;
    let mut steps = 0;
    let mut pattern = 0x80u8;
    let mut more = tree.simplify();
    while more && steps < cfg.max_shrink_iters && started.elapsed() < Duration::from_secs(120) {
        steps += 1;
        progress.tick();
        pattern = pattern.wrapping_add(1);
        let case = tree.current();
        if cfg.fresh_process {
            target.reset();
        }
        match target.run(&case, cfg.limits, pattern)? {
            Some(f) => {
                target.reset();
                minimal = (case, f);
                more = tree.simplify();
            }
            None => more = tree.complicate(),
        }
    }
    progress.shrinking = false;
    Ok(minimal)
}

/// The minimal case confirmed on a fresh process, saved.
fn finish(
    cfg: &RunConfig,
    hit: &Hit,
    minimal: Case,
    seen: Failure,
    queues: Option<u64>,
    n: usize,
) -> Result<Found, FuzzError> {
    let mut target = Target::new(cfg.target.clone(), cfg.connect_timeout);
    let reproduced = target.run(&minimal, cfg.limits, 0x3c)?.is_some();
    let (spawn, backend) = match &cfg.target {
        TargetSpec::Spawn(c) => (Some(c.clone()), None),
        TargetSpec::Connect(p) | TargetSpec::Listen(p) => (None, Some(p.clone())),
    };
    let reproducer = Reproducer {
        seed: cfg.seed,
        case_number: Some(hit.index),
        spawn,
        backend,
        rule: save::rule_for(&minimal, &seen, queues).as_str().into(),
        failure: seen,
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
        assert_eq!(case_key(7, 3).len(), 32);
        assert_ne!(case_key(7, 3), case_key(7, 4));
        assert_ne!(case_key(7, 3), case_key(8, 3));
    }

    #[test]
    fn case_n_of_a_seed_is_the_same_whatever_was_drawn_before() {
        let strategy = strategy::case(&Selection::all());
        let a: Vec<Case> = (0..40)
            .map(|i| draw(&strategy, 9, i).unwrap().current())
            .collect();
        let b = draw(&strategy, 9, 33).unwrap().current();
        assert_eq!(a[33], b);
        assert!(a.windows(2).any(|w| w[0] != w[1]));
        assert_ne!(draw(&strategy, 10, 33).unwrap().current(), b);
    }
}
