//! The conformance engine: runs scenarios against a target under deadlines, derives skips from
//! the back-end's offered features, and turns what the back-end did into findings that cite
//! rules. It reaches the back-end only through the mock front-end's session.

mod events;
mod keep;
mod run;
pub(crate) mod session;
mod steps;
mod violations;

pub use events::{RunEvent, RunSummary, Totals};
pub use run::{Plan, Repeat, bundled_default_jobs, default_jobs, run, run_suite};

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
    /// Spawn mode: keep a healthy back-end process for the next scenario (`--keep-process`;
    /// the README says what is given up) instead of a fresh one each.
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule the failed check verifies (`R-MEM-11`).
    pub rule: RuleId,
    /// What it weighs here: the scenario's level, capped by the rule's (a crash is always
    /// MUST).
    pub level: Level,
    /// One line: the step and what went wrong (`step 3: the back-end acked 0 ...`).
    pub summary: String,
    /// The message the failed check is about, as the transcript shows it.
    pub sent: String,
    /// What the back-end answered: a reply, an ack, a closed connection, nothing in time.
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
    /// The scenario's id (`memory/rem-wrong-size`).
    pub id: String,
    /// Its one-line title, as `--list` shows it.
    pub title: String,
    /// The rules it cites.
    pub rules: Vec<RuleId>,
    /// Its level (the weight of its findings).
    pub level: Level,
    /// Where it came from: a scenario file's path, or `builtin:<id>`.
    pub source: String,
    /// The verdict as the checks gave it; what an `--expect` entry makes of it is in
    /// `expectation`.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Every departure the checks found, in order, each citing its check's rule.
    pub findings: Vec<Finding>,
    /// Observations that are not departures (a refusal the spec allows, the runs of a
    /// `--repeat`).
    pub notes: Vec<String>,
    /// The rules whose checks ran (a cited rule is `pass` only when one of its checks ran).
    pub checked_rules: Vec<RuleId>,
    /// Wall time of the run reported (under `--repeat`, the first that failed, else the
    /// last), in milliseconds.
    pub duration_ms: u64,
    /// Every message of the session, on both channels, in order.
    pub transcript: Vec<Entry>,
    /// The `--expect` entry this result met or missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectation: Option<crate::expect::Applied>,
}

/// What the back-end offered, read once per run, and what the run knows of the device.
#[derive(Clone, Debug, Serialize)]
pub struct Offer {
    /// The virtio feature bits GET_FEATURES returned.
    pub features: u64,
    /// The protocol feature bits GET_PROTOCOL_FEATURES returned (0 without virtio bit 30).
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

/// The finding of a back-end that died by a signal (R-CRASH-01, MUST whatever the scenario's
/// level): `summary` says when ("step 3: ... , after SET_VRING_NUM"), `how` is filled in before
/// it; `None` for a death that is not a crash.
pub(crate) fn crash_finding(
    death: &Death,
    tail: String,
    when: impl FnOnce(&str) -> String,
    sent: String,
) -> Option<Finding> {
    let Death::Crash { signal, via_status } = *death else {
        return None;
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
    Some(Finding {
        rule: crate::rules::id::R_CRASH_01,
        level: Level::Must,
        summary: when(&how),
        sent,
        received: if tail.is_empty() {
            how.clone()
        } else {
            format!("{how}; stderr: {tail}")
        },
        expected: "the back-end never dies by a signal, whatever the front-end sends".into(),
        crash: Some(Crash {
            signal,
            signal_name: name,
            stderr_tail: tail,
        }),
    })
}

/// A death by a signal after the scenario's last connection closed: a crash, as a step would
/// have recorded it.
pub(crate) fn crashed_at_end(r: &mut ScenarioResult, death: &Death, tail: &str) {
    let Some(finding) = crash_finding(
        death,
        tail.to_string(),
        |how| {
            format!(
                "CRASH: the back-end process died, {how}, when the scenario's last connection closed"
            )
        },
        "the front-end closed its connection at the end of the scenario".into(),
    ) else {
        return;
    };
    r.findings.push(finding);
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

/// Describes the process state for a finding.
pub(crate) fn describe_exit(state: &ProcessState, stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        format!("back-end process {state}")
    } else {
        format!("back-end process {state}; stderr: {stderr_tail}")
    }
}
