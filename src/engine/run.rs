//! The run loop: every selected scenario once (or `--repeat` times), one after the other or up
//! to `-j` at once in spawn mode, expectations applied to each result, and the event stream
//! ([`RunEvent`]) in the suite's order whatever `-j` is.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::keep::Kept;
use super::{Offer, Outcome, RunEvent, RunOptions, RunSummary, ScenarioResult};
use super::{run_scenario, skip_reason};
use crate::exit_code::ExitPolicy;
use crate::expect::Expectations;
use crate::scenario::Scenario;
use crate::target::{Instance, TargetSpec};

/// How many times each scenario runs (`--repeat`, `--until-failure`), for flaky back-ends.
#[derive(Copy, Clone, Debug)]
pub struct Repeat {
    /// Runs per scenario (at least 1).
    pub times: u32,
    /// Stop repeating a scenario at its first failure.
    pub until_failure: bool,
}

impl Default for Repeat {
    fn default() -> Self {
        Self {
            times: 1,
            until_failure: false,
        }
    }
}

/// Everything a run needs: what to run, against what, and how to judge the whole.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    /// The selected scenarios, in the order they are reported.
    pub scenarios: &'a [Scenario],
    /// Every scenario loaded (selected or not): rule coverage says `not run` for the rules
    /// only unselected ones cite, and an expectation is stale only when it matches none.
    pub loaded: &'a [Scenario],
    /// How the back-end is reached.
    pub target: &'a TargetSpec,
    /// What preflight learnt of the back-end.
    pub offer: &'a Offer,
    /// Timeouts and strictness.
    pub options: &'a RunOptions,
    /// Repetitions per scenario.
    pub repeat: Repeat,
    /// Scenarios at once in spawn mode (one running back-end always takes them one by one).
    pub jobs: usize,
    /// `--expect` entries, applied to each result before it is reported.
    pub expectations: &'a Expectations,
    /// Which finished runs fail.
    pub policy: ExitPolicy,
}

/// How many scenarios run at once by default: the number of CPUs, at least 2.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// How many scenarios run at once against the bundled reference back-end by default: four per
/// CPU. Its scenarios spend over 90 % of their time in "nothing may happen" windows and its
/// processes sleep while they wait (0.6 s of CPU for a 10 s serial suite), so the CPUs are idle
/// at one per CPU; a back-end of unknown weight (DPDK busy-polls a core) keeps one per CPU.
pub fn bundled_default_jobs() -> usize {
    4 * default_jobs()
}

/// Runs the plan, emitting its events; returns the results in the suite's order and the
/// summary that [`RunEvent::RunFinished`] carried.
pub fn run(
    plan: &Plan<'_>,
    emit: &mut dyn FnMut(RunEvent<'_>),
) -> (Vec<ScenarioResult>, RunSummary) {
    emit(RunEvent::RunStarted {
        total: plan.scenarios.len(),
        offer: plan.offer,
    });
    let mut results = Vec::with_capacity(plan.scenarios.len());
    execute(plan, &mut |p| match p {
        Progress::Started(index) => emit(RunEvent::ScenarioStarted {
            index,
            id: &plan.scenarios[index].spec.id,
        }),
        Progress::Done(index, mut r) => {
            plan.expectations.apply(std::slice::from_mut(&mut *r));
            emit(RunEvent::scenario_done(index, &r));
            results.push(*r);
        }
    });
    let stale = plan.expectations.stale(plan.loaded);
    let rules = crate::rules::coverage(plan.loaded, Some(&results));
    let summary = RunSummary::new(&results, rules, stale, plan.policy);
    emit(RunEvent::RunFinished(&summary));
    (results, summary)
}

/// Runs every scenario once, one at a time, without expectations, emitting events; for
/// callers that want the results alone. Spawn mode: a fresh process per scenario; otherwise
/// one target for all.
pub fn run_suite(
    scenarios: &[Scenario],
    target: &TargetSpec,
    offer: &Offer,
    options: &RunOptions,
    emit: &mut dyn FnMut(RunEvent<'_>),
) -> Vec<ScenarioResult> {
    let plan = Plan {
        scenarios,
        loaded: scenarios,
        target,
        offer,
        options,
        repeat: Repeat::default(),
        jobs: 1,
        expectations: &Expectations::default(),
        policy: ExitPolicy::default(),
    };
    run(&plan, emit).0
}

/// What the scenario runners tell [`run`]: `Done` comes in the suite's order.
enum Progress {
    /// The scenario at this index starts (it was not skipped up front).
    Started(usize),
    /// The scenario at this index is done.
    Done(usize, Box<ScenarioResult>),
}

/// Whether a scenario will start at all: one that does not apply is skipped before it starts.
fn starts(s: &Scenario, offer: &Offer) -> bool {
    skip_reason(s, offer).is_none()
}

fn execute(plan: &Plan<'_>, on: &mut dyn FnMut(Progress)) {
    if matches!(plan.target, TargetSpec::Spawn(_)) && plan.jobs > 1 && plan.scenarios.len() > 1 {
        parallel(plan, on);
    } else {
        serial(plan, on);
    }
}

/// One after the other: spawn mode starts a process per scenario, a connect or listen target
/// is reached once and shared.
fn serial(plan: &Plan<'_>, on: &mut dyn FnMut(Progress)) {
    let mut shared = match plan.target {
        TargetSpec::Spawn(_) => None,
        _ => Instance::start(plan.target, plan.options.connect_timeout).ok(),
    };
    let mut kept = Kept::new(plan.options.keep_process);
    for (i, s) in plan.scenarios.iter().enumerate() {
        if starts(s, plan.offer) {
            on(Progress::Started(i));
        }
        let r = match shared.as_mut() {
            Some(inst) => run_repeated(s, plan, Some(inst)),
            None => kept.run(s, plan),
        };
        on(Progress::Done(i, Box::new(r)));
    }
}

/// Spawn mode with `jobs` worker threads taking the next scenario by index; this thread
/// buffers what they finish and passes it on in order.
fn parallel(plan: &Plan<'_>, on: &mut dyn FnMut(Progress)) {
    let scenarios = plan.scenarios;
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Progress>();
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.min(scenarios.len()) {
            let (tx, next) = (tx.clone(), &next);
            scope.spawn(move || {
                let mut kept = Kept::new(plan.options.keep_process);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(s) = scenarios.get(i) else { break };
                    if starts(s, plan.offer) && tx.send(Progress::Started(i)).is_err() {
                        break;
                    }
                    let r = kept.run(s, plan);
                    if tx.send(Progress::Done(i, Box::new(r))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done: Vec<Option<Box<ScenarioResult>>> = scenarios.iter().map(|_| None).collect();
        let mut released = 0;
        // Ends when every worker has finished (or died: the scope then re-raises its panic).
        for msg in rx {
            match msg {
                Progress::Started(i) => on(Progress::Started(i)),
                Progress::Done(i, r) => done[i] = Some(r),
            }
            while let Some(r) = done.get_mut(released).and_then(Option::take) {
                on(Progress::Done(released, r));
                released += 1;
            }
        }
    });
}

/// Runs `s` up to `repeat.times` times; the result is the first run that failed (or errored),
/// else the last, with a note of every run's outcome when there was more than one.
pub(super) fn run_repeated(
    s: &Scenario,
    plan: &Plan<'_>,
    mut shared: Option<&mut Instance>,
) -> ScenarioResult {
    let repeat = plan.repeat;
    let mut outcomes = Vec::new();
    let mut kept: Option<ScenarioResult> = None;
    for _ in 0..repeat.times.max(1) {
        let r = run_scenario(
            s,
            plan.target,
            shared.as_deref_mut(),
            plan.offer,
            plan.options,
        );
        let bad = is_bad(&r.outcome);
        outcomes.push(word(&r.outcome));
        let skip = matches!(r.outcome, Outcome::Skip { .. });
        if !kept.as_ref().is_some_and(|k| is_bad(&k.outcome)) {
            kept = Some(r);
        }
        if skip || (bad && repeat.until_failure) {
            break;
        }
    }
    let mut r = kept.expect("at least one run");
    if repeat.times > 1 {
        r.notes.push(repeat_note(&outcomes, repeat.times));
    }
    r
}

fn is_bad(o: &Outcome) -> bool {
    matches!(o, Outcome::Fail | Outcome::Error { .. })
}

fn word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Skip { .. } => "skip",
        Outcome::Pass => "pass",
        Outcome::Warn => "warn",
        Outcome::Fail => "fail",
        Outcome::Error { .. } => "error",
    }
}

/// `3 runs: pass, fail, pass; 1 failed (flaky)`.
fn repeat_note(outcomes: &[&str], asked: u32) -> String {
    let bad = outcomes
        .iter()
        .filter(|o| matches!(**o, "fail" | "error"))
        .count();
    let flaky = if bad > 0 && bad < outcomes.len() {
        " (flaky)"
    } else {
        ""
    };
    let stopped = if outcomes.len() < asked as usize {
        format!(", stopped before the {asked} asked")
    } else {
        String::new()
    };
    format!(
        "{} runs: {}; {bad} failed{flaky}{stopped}",
        outcomes.len(),
        outcomes.join(", ")
    )
}
