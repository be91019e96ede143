//! The conformance engine: runs scenarios against a target under deadlines, derives skips from
//! the back-end's offered features, and turns what the back-end did into findings that cite
//! rules. It reaches the back-end only through the mock front-end's session.

mod keep;
mod steps;
mod violations;

pub use steps::{Ctx, StepError};

use std::time::{Duration, Instant};

use serde::Serialize;
use vhu_mock_frontend::transcript::Entry;
use vhu_protocol::VirtioFeatures;

use crate::device::{DeviceSource, DeviceType};
use crate::features::{describe_missing, protocol_bit, virtio_bit};
use crate::rules::RuleId;
use crate::scenario::{Level, Scenario};
use crate::target::{Death, Instance, ProcessState, TargetError, TargetSpec};

mod preflight;

pub use preflight::{PreflightError, device_type, preflight};

/// Timeouts and policy of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Per reply / per data-path completion.
    pub step_timeout: Duration,
    /// Default deadline per scenario.
    pub scenario_timeout: Duration,
    /// Waiting for a spawned back-end's socket, or for a back-end to connect.
    pub connect_timeout: Duration,
    /// SHOULD/ROB findings fail instead of warn.
    pub strict: bool,
    /// The ring size to use (`--queue-size`); without it, the largest the back-end accepts at
    /// preflight, up to 256.
    pub queue_size: Option<u16>,
    /// Host-side context for fs and vsock scenarios (`--fs-dir`, `--vsock-uds`).
    pub host: crate::target::HostContext,
    /// Spawn mode: keep a healthy back-end process for the next scenario (`--keep-process`,
    /// [`keep`]) instead of a fresh one each.
    pub keep_process: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(2),
            scenario_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            strict: false,
            queue_size: None,
            host: crate::target::HostContext::default(),
            keep_process: false,
        }
    }
}

/// A departure from the spec, tied to the rule of the check that found it and to what was
/// exchanged.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The rule the failed check verifies (`R-MEM-11`).
    pub rule: RuleId,
    /// What it weighs here: the scenario's level, capped by the rule's (a crash is always
    /// MUST).
    pub level: Level,
    /// One line.
    pub summary: String,
    /// What was sent.
    pub sent: String,
    /// What came back.
    pub received: String,
    /// What the rule wanted.
    pub expected: String,
    /// Set when the back-end died by a signal (R-CRASH-01): reported as CRASH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash: Option<Crash>,
}

/// How a back-end crashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Crash {
    /// The signal number.
    pub signal: i32,
    /// Its name (`SIGSEGV`).
    pub signal_name: String,
    /// The end of the back-end's stderr.
    pub stderr_tail: String,
}

/// A scenario's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A MUST-level check failed (or any, under --strict).
    Fail,
    /// Only SHOULD or robustness checks failed.
    Warn,
    /// Not applicable to this back-end.
    Skip {
        /// Why it does not apply (a missing feature, another device type), as reported.
        reason: String,
    },
    /// The harness could not judge; not the back-end's fault.
    Error {
        /// What kept the harness from judging (a local resource, a malformed scenario).
        reason: String,
    },
}

/// Everything known about one scenario's run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// Scenario id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// The rules it cites.
    pub rules: Vec<RuleId>,
    /// Its level (the weight of its findings).
    pub level: Level,
    /// Where it came from: a scenario file's path, or `builtin:<id>`.
    pub source: String,
    /// The verdict.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Departures found.
    pub findings: Vec<Finding>,
    /// Notes (info-level observations).
    pub notes: Vec<String>,
    /// The rules whose checks ran (a cited rule is `pass` only when one of its checks ran).
    pub checked_rules: Vec<RuleId>,
    /// Wall time.
    pub duration_ms: u64,
    /// Every message exchanged.
    pub transcript: Vec<Entry>,
    /// The `--expect` entry this result met or missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectation: Option<crate::expect::Applied>,
}

/// What the back-end offered, read once per run, and what the run knows of the device.
#[derive(Clone, Debug, Serialize)]
pub struct Offer {
    /// GET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES (0 without bit 30).
    pub protocol: u64,
    /// The device type, when known: device-specific scenarios are skipped without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceType>,
    /// Where the device type came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_source: Option<DeviceSource>,
    /// The ring size scenarios use (`--queue-size`, or the largest the back-end accepted).
    pub queue_size: u16,
    /// How long the back-end took to answer its first message after a connection, at
    /// preflight (a slow starter gets that much more for its first reply in each scenario).
    #[serde(skip)]
    pub first_reply: Duration,
}

impl Default for Offer {
    fn default() -> Self {
        Self {
            features: 0,
            protocol: 0,
            device: None,
            device_source: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            first_reply: Duration::ZERO,
        }
    }
}

/// The ring size when nothing says otherwise (and the largest preflight tries).
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// Events the engine emits while it runs; reporters consume them.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// The run starts.
    Started {
        /// Scenarios selected.
        total: usize,
        /// What the back-end offered.
        offer: &'a Offer,
    },
    /// A scenario begins (with `-j N`, several run at once: these come in the order they
    /// start, `Finished` in the suite's order). Only live views use it.
    ScenarioStarted {
        /// The scenario's id.
        id: &'a str,
    },
    /// A scenario finished.
    Finished(&'a ScenarioResult),
}

/// The error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Why a scenario does not apply, if it does not.
pub fn skip_reason(s: &Scenario, offer: &Offer) -> Option<String> {
    let bits = |names: &[String], lookup: fn(&str) -> Option<u64>| {
        names.iter().filter_map(|n| lookup(n)).fold(0, |a, b| a | b)
    };
    let need_v = bits(&s.spec.requires.virtio, virtio_bit);
    let need_p = bits(&s.spec.requires.protocol, protocol_bit);
    let need_v = if need_p != 0 {
        need_v | VirtioFeatures::PROTOCOL_FEATURES.bits()
    } else {
        need_v
    };
    let missing_v = need_v & !offer.features;
    let missing_p = need_p & !offer.protocol;
    let mut parts = Vec::new();
    if missing_v != 0 {
        parts.push(describe_missing("virtio", missing_v));
    }
    if missing_p != 0 {
        parts.push(describe_missing("protocol", missing_p));
    }
    if let Some(need) = crate::scenario::required_device(s) {
        match offer.device {
            None => {
                return Some(format!(
                    "device type unknown: pass --device TYPE (this scenario is written for a {need} device)"
                ));
            }
            Some(d) if d != need => {
                return Some(format!(
                    "written for a {need} device; the back-end is a {d} device"
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(not) = s.spec.not_device {
        match offer.device {
            None => {
                return Some(format!(
                    "device type unknown: pass --device TYPE (this scenario is for any device but {not})"
                ));
            }
            Some(d) if d == not => {
                return Some(format!("written for every device but {not}"));
            }
            Some(_) => {}
        }
    }
    (!parts.is_empty()).then(|| format!("back-end does not offer {}", parts.join(", ")))
}

/// Runs one scenario on its own target instance (spawn mode) or the shared one.
pub fn run_scenario(
    s: &Scenario,
    spec: &TargetSpec,
    shared: Option<&mut Instance>,
    offer: &Offer,
    opts: &RunOptions,
) -> ScenarioResult {
    let start = Instant::now();
    let mut result = ScenarioResult {
        id: s.spec.id.clone(),
        title: s.spec.title.clone(),
        rules: crate::rules::cited_by(s),
        level: s.spec.level,
        source: s.source.clone(),
        outcome: Outcome::Pass,
        findings: vec![],
        notes: vec![],
        checked_rules: vec![],
        duration_ms: 0,
        transcript: vec![],
        expectation: None,
    };
    if let Some(reason) = skip_reason(s, offer) {
        result.outcome = Outcome::Skip { reason };
        return result;
    }
    let mut own;
    let inst = match shared {
        Some(i) => i,
        None => match Instance::start(spec, opts.connect_timeout) {
            Ok(i) => {
                own = i;
                &mut own
            }
            Err(e) => return errored(result, &e, start),
        },
    };
    let deadline = start
        + s.spec
            .timeout_ms
            .map_or(opts.scenario_timeout, Duration::from_millis);
    let mut ctx = steps::Ctx::new(s, offer, &mut *inst, spec, opts, deadline);
    let run = ctx.run_all();
    let (findings, notes, transcript, checked) = ctx.finish();
    result.findings = findings;
    result.notes = notes;
    result.transcript = transcript;
    result.checked_rules = checked;
    if inst.is_spawned() && !result.findings.iter().any(|f| f.crash.is_some()) {
        // The scenario's last connection has closed: a back-end whose teardown crashes dies
        // now, after every step's own check.
        let st = inst.wait_exit(TEARDOWN_WATCH);
        if let Some(death) = st.death() {
            crashed_at_end(&mut result, &death, &inst.stderr_tail(600));
        }
    }
    result.outcome = match run {
        Ok(()) => verdict(&result.findings, opts.strict),
        Err(StepError::NotApplicable(reason)) if result.findings.is_empty() => {
            Outcome::Skip { reason }
        }
        Err(StepError::Harness(reason)) => Outcome::Error { reason },
        Err(_) => verdict(&result.findings, opts.strict),
    };
    result.duration_ms = start.elapsed().as_millis() as u64;
    result
}

/// How long a spawned back-end is watched after a scenario's last connection closed, for a
/// crash in its teardown (which shows within milliseconds of the close).
const TEARDOWN_WATCH: Duration = Duration::from_millis(20);

/// A death by a signal after the scenario's last connection closed: a crash (R-CRASH-01, MUST
/// whatever the scenario's level), as a step would have recorded it.
pub(crate) fn crashed_at_end(r: &mut ScenarioResult, death: &Death, tail: &str) {
    let Death::Crash { signal, via_status } = *death else {
        return;
    };
    let name = crate::target::signal_name(signal);
    let how = if via_status {
        format!(
            "exit status {} (128 + {name}, as its wrapper reports a signal)",
            128 + signal
        )
    } else {
        format!("killed by {name}")
    };
    r.findings.push(Finding {
        rule: crate::rules::id::R_CRASH_01,
        level: Level::Must,
        summary: format!(
            "CRASH: the back-end process died, {how}, when the scenario's last connection closed"
        ),
        sent: "the front-end closed its connection at the end of the scenario".into(),
        received: if tail.is_empty() {
            how.clone()
        } else {
            format!("{how}; stderr: {tail}")
        },
        expected: "the back-end never dies by a signal, whatever the front-end sends".into(),
        crash: Some(Crash {
            signal,
            signal_name: name,
            stderr_tail: tail.to_string(),
        }),
    });
    if !r.checked_rules.contains(&crate::rules::id::R_CRASH_01) {
        r.checked_rules.push(crate::rules::id::R_CRASH_01);
    }
}

fn errored(mut r: ScenarioResult, e: &TargetError, start: Instant) -> ScenarioResult {
    r.outcome = Outcome::Error { reason: chain(e) };
    r.duration_ms = start.elapsed().as_millis() as u64;
    r
}

fn verdict(findings: &[Finding], strict: bool) -> Outcome {
    let worst = findings.iter().map(|f| f.level).max();
    match worst {
        None | Some(Level::Info) => Outcome::Pass,
        Some(Level::Must) => Outcome::Fail,
        Some(_) if strict => Outcome::Fail,
        Some(_) => Outcome::Warn,
    }
}

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

/// Runs every scenario once, one at a time, emitting events. Spawn mode: a fresh process per
/// scenario. Otherwise one target for all, and a hint when the back-end stops serving after a
/// disconnect.
pub fn run_suite(
    scenarios: &[Scenario],
    spec: &TargetSpec,
    offer: &Offer,
    opts: &RunOptions,
    emit: &mut dyn FnMut(RunEvent<'_>),
) -> Vec<ScenarioResult> {
    run_suite_repeated(scenarios, spec, offer, opts, Repeat::default(), 1, emit)
}

/// Runs `s` up to `repeat.times` times; the result is the first run that failed (or errored),
/// else the last, with a note of every run's outcome when there was more than one.
fn run_repeated(
    s: &Scenario,
    spec: &TargetSpec,
    mut shared: Option<&mut Instance>,
    offer: &Offer,
    opts: &RunOptions,
    repeat: Repeat,
) -> ScenarioResult {
    let mut outcomes = Vec::new();
    let mut kept: Option<ScenarioResult> = None;
    for _ in 0..repeat.times.max(1) {
        let r = run_scenario(s, spec, shared.as_deref_mut(), offer, opts);
        let bad = matches!(r.outcome, Outcome::Fail | Outcome::Error { .. });
        outcomes.push(match &r.outcome {
            Outcome::Skip { .. } => "skip",
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
            Outcome::Error { .. } => "error",
        });
        let skip = matches!(r.outcome, Outcome::Skip { .. });
        let keep_first_bad = kept
            .as_ref()
            .is_some_and(|k| matches!(k.outcome, Outcome::Fail | Outcome::Error { .. }));
        if !keep_first_bad {
            kept = Some(r);
        }
        if skip || (bad && repeat.until_failure) {
            break;
        }
    }
    let mut r = kept.expect("at least one run");
    if repeat.times > 1 {
        let bad = outcomes
            .iter()
            .filter(|o| matches!(**o, "fail" | "error"))
            .count();
        let flaky = if bad > 0 && bad < outcomes.len() {
            " (flaky)"
        } else {
            ""
        };
        let stopped = if outcomes.len() < repeat.times as usize {
            format!(", stopped before the {} asked", repeat.times)
        } else {
            String::new()
        };
        r.notes.push(format!(
            "{} runs: {}; {bad} failed{flaky}{stopped}",
            outcomes.len(),
            outcomes.join(", ")
        ));
    }
    r
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

/// [`run_suite`] with each scenario repeated as `repeat` says, up to `jobs` scenarios at once
/// in spawn mode (each has its own process and socket directory anyway); a target that is one
/// running back-end (connect, listen) runs them one after the other. Results and events come
/// in `scenarios`' order whatever `jobs` is: a scenario's `Finished` is emitted as soon as it
/// and every scenario before it are done.
pub fn run_suite_repeated(
    scenarios: &[Scenario],
    spec: &TargetSpec,
    offer: &Offer,
    opts: &RunOptions,
    repeat: Repeat,
    jobs: usize,
    emit: &mut dyn FnMut(RunEvent<'_>),
) -> Vec<ScenarioResult> {
    emit(RunEvent::Started {
        total: scenarios.len(),
        offer,
    });
    if matches!(spec, TargetSpec::Spawn(_)) && jobs > 1 && scenarios.len() > 1 {
        return run_parallel(scenarios, spec, offer, opts, repeat, jobs, emit);
    }
    let mut shared = match spec {
        TargetSpec::Spawn(_) => None,
        _ => Instance::start(spec, opts.connect_timeout).ok(),
    };
    let mut results = Vec::new();
    let mut kept = keep::Kept::new(opts.keep_process);
    for s in scenarios {
        emit(RunEvent::ScenarioStarted { id: &s.spec.id });
        let r = match (spec, &mut shared) {
            (TargetSpec::Spawn(_), _) => kept.run(s, spec, offer, opts, repeat),
            (_, Some(inst)) => run_repeated(s, spec, Some(inst), offer, opts, repeat),
            (_, None) => run_repeated(s, spec, None, offer, opts, repeat),
        };
        emit(RunEvent::Finished(&r));
        results.push(r);
    }
    results
}

/// Spawn mode with `jobs` worker threads taking the next scenario by index; this thread
/// buffers what they finish and emits it in order.
fn run_parallel(
    scenarios: &[Scenario],
    spec: &TargetSpec,
    offer: &Offer,
    opts: &RunOptions,
    repeat: Repeat,
    jobs: usize,
    emit: &mut dyn FnMut(RunEvent<'_>),
) -> Vec<ScenarioResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    /// What a worker tells the emitting thread.
    enum Progress {
        Started(usize),
        Done(usize, Box<ScenarioResult>),
    }
    let (tx, rx) = std::sync::mpsc::channel::<Progress>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(scenarios.len()) {
            let (tx, next) = (tx.clone(), &next);
            scope.spawn(move || {
                let mut kept = keep::Kept::new(opts.keep_process);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(s) = scenarios.get(i) else { break };
                    if tx.send(Progress::Started(i)).is_err() {
                        break;
                    }
                    let r = kept.run(s, spec, offer, opts, repeat);
                    if tx.send(Progress::Done(i, Box::new(r))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done: Vec<Option<ScenarioResult>> = scenarios.iter().map(|_| None).collect();
        let mut results = Vec::with_capacity(scenarios.len());
        // Ends when every worker has finished (or died: the scope then re-raises its panic).
        for msg in rx {
            let (i, r) = match msg {
                Progress::Started(i) => {
                    emit(RunEvent::ScenarioStarted {
                        id: &scenarios[i].spec.id,
                    });
                    continue;
                }
                Progress::Done(i, r) => (i, *r),
            };
            done[i] = Some(r);
            while let Some(r) = done.get_mut(results.len()).and_then(Option::take) {
                emit(RunEvent::Finished(&r));
                results.push(r);
            }
        }
        results
    })
}

/// Describes the process state for a finding.
pub(crate) fn describe_exit(state: &ProcessState, stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        format!("back-end process {state}")
    } else {
        format!("back-end process {state}; stderr: {stderr_tail}")
    }
}
