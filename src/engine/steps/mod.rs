//! The step interpreter: performs each step of a scenario through the mock front-end and judges
//! what the back-end did against the step's expectation. A departure becomes a [`Finding`] that
//! cites the step's rule; only a local failure (memfd, pipe) is a harness error.

use crate::rules::id;
use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use vhu_mock_frontend::blk;
use vhu_mock_frontend::transcript::{Direction, Entry, render};
use vhu_mock_frontend::{DriverQueue, GuestMemory, Session, SessionError};
use vhu_protocol::wire::ReplyKind;

mod backend_requests;
mod chains;
mod console;
mod datapath;
mod fs;
mod gpio;
mod gpu;
mod i2c;
mod input;
mod iotlb;
mod liveness;
mod net;
mod rng;
mod scmi;
mod send;
mod setup;
mod shmem;
mod sound;
mod state;
#[cfg(test)]
mod tests;
mod vsock;

use super::{Finding, Offer, RunOptions, chain, describe_exit};
use crate::rules::RuleId;
use crate::scenario::model::{NoArgs, Step};
use crate::scenario::{Action, Level, Scenario};
use crate::target::{Death, Instance, ProcessState};

/// Why a step (or a built-in scenario) stopped the scenario early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A finding was recorded; the scenario cannot go on meaningfully.
    #[error("a finding was recorded")]
    Finding,
    /// The harness could not judge (a local failure, never the back-end's fault).
    #[error("the harness could not judge: {0}")]
    Harness(String),
    /// The scenario does not apply to this target (e.g. a hygiene check without a process to
    /// inspect, or a setup step the back-end refused); the scenario is skipped with this reason.
    #[error("not applicable: {0}")]
    NotApplicable(String),
    /// The back-end went away in a way the spec allows (it exited after refusing a message):
    /// the scenario ends with what its checks found so far, and a note saying so.
    #[error("the back-end went away: {0}")]
    Ended(String),
}

type StepResult = Result<(), StepError>;

/// The state of one scenario's run: the session, guest memory, queues and findings. The step
/// interpreter and built-in scenarios ([`crate::builtin`]) drive it through the same helpers.
pub struct Ctx<'a> {
    scenario: &'a Scenario,
    offer: &'a Offer,
    inst: &'a mut Instance,
    /// A fresh back-end process started by a `new_process` step (spawn mode).
    fresh: Option<Instance>,
    spec: &'a crate::target::TargetSpec,
    /// Device state captured by `save_state`.
    saved_state: Option<Vec<u8>>,
    opts: &'a RunOptions,
    deadline: Instant,
    session: Option<Session>,
    mem: Option<GuestMemory>,
    queues: BTreeMap<u16, DriverQueue>,
    /// Requests that must not have completed yet (blk steps with `expect = "no_reply"`).
    pending: BTreeMap<u16, blk::Pending>,
    /// Queues stopped (GET_VRING_BASE) or disabled since their `vring` step.
    idle: std::collections::BTreeSet<u16>,
    features: u64,
    protocol: u64,
    queue_num: u64,
    /// GET_QUEUE_NUM's answer as given (not clamped), when MQ was negotiated.
    queue_num_reported: Option<u64>,
    findings: Vec<Finding>,
    /// The rules whose checks ran.
    checked: std::collections::BTreeSet<RuleId>,
    notes: Vec<String>,
    archive: Vec<Entry>,
    step_no: usize,
    /// The back-end is ended on purpose by the scenario.
    exit_expected: bool,
    /// A new connection followed the front-end leaving (`reconnect`): a back-end that exits
    /// once its front-end left may have accepted it while shutting down.
    reconnected: bool,
    /// The next session is the first on a freshly started process: its first reply gets the
    /// start-up allowance measured at preflight.
    fresh_start: bool,
    /// The current session's reply timeout is extended until its first reply.
    first_reply_pending: bool,
    /// net steps: posted receive buffers, frames awaited back, pending transmits.
    net: net::NetState,
    /// rng steps: pending requests and the last sample.
    rng: rng::RngState,
    /// fs and vsock: the FUSE session and the vsock driver of the current session.
    fs: fs::FsState,
    vsock: vsock::VsockState,
    /// IOTLB steps: what was invalidated, which misses were looked at.
    iotlb: iotlb::IotlbState,
    /// gpio steps: the config space read.
    gpio: gpio::GpioState,
    /// console steps: control buffers posted, ports added, the port's host side.
    console: console::ConsoleState,
    /// input steps: event buffers posted.
    input: input::InputState,
    /// sound steps: the config space and stream infos of the session.
    sound: sound::SoundState,
    /// gpu steps: the vhost-user-gpu socket's server and the config of the session.
    gpu: gpu::GpuState,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        scenario: &'a Scenario,
        offer: &'a Offer,
        inst: &'a mut Instance,
        spec: &'a crate::target::TargetSpec,
        opts: &'a RunOptions,
        deadline: Instant,
    ) -> Self {
        let fresh_start = inst.is_spawned();
        Self {
            scenario,
            offer,
            inst,
            fresh: None,
            spec,
            saved_state: None,
            opts,
            deadline,
            session: None,
            mem: None,
            queues: BTreeMap::new(),
            pending: BTreeMap::new(),
            idle: std::collections::BTreeSet::new(),
            features: 0,
            protocol: 0,
            queue_num: 1,
            queue_num_reported: None,
            findings: vec![],
            checked: std::collections::BTreeSet::new(),
            notes: vec![],
            archive: vec![],
            step_no: 0,
            exit_expected: false,
            reconnected: false,
            fresh_start,
            first_reply_pending: false,
            net: net::NetState::default(),
            rng: rng::RngState::default(),
            fs: fs::FsState::default(),
            vsock: vsock::VsockState::default(),
            iotlb: iotlb::IotlbState::default(),
            gpio: gpio::GpioState::default(),
            console: console::ConsoleState::default(),
            input: input::InputState::default(),
            sound: sound::SoundState::default(),
            gpu: gpu::GpuState::default(),
        }
    }

    /// Runs the scenario (its file steps, or its built-in body); `Err` is a harness error or
    /// a scenario that does not apply.
    pub(super) fn run_all(&mut self) -> Result<(), StepError> {
        if let Some(b) = self.scenario.builtin {
            let r = b.run(self);
            if r.is_ok() {
                // A built-in's body is its check: having run to the end, it checked its rules.
                for &rule in b.meta().rules {
                    self.mark(rule);
                }
            }
            self.check_process();
            return match r {
                Ok(()) | Err(StepError::Finding) => Ok(()),
                Err(StepError::Ended(note)) => {
                    self.notes.push(note);
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        let steps = self.scenario.spec.steps.clone();
        for (i, step) in steps.iter().enumerate() {
            self.step_no = i + 1;
            let left = steps.len() - (i + 1);
            match self.run_file_step(step, left) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(e),
            }
        }
        self.check_process();
        Ok(())
    }

    /// Runs one step of the file (`repeat` times, each judged alone, then its liveness probe);
    /// `Ok(false)` when the scenario ends there, `left` steps after it not run.
    fn run_file_step(&mut self, step: &Step, left: usize) -> Result<bool, StepError> {
        for _ in 0..step.times() {
            if Instant::now() >= self.deadline {
                self.finding(
                    step,
                    "scenario deadline passed before this step: the back-end is too slow or hangs",
                    "every step within the deadline",
                    "time ran out".into(),
                );
                return Ok(false);
            }
            match self.step_inner(step).and_then(|()| self.liveness(step)) {
                Ok(()) => {}
                Err(StepError::Finding) => return Ok(false),
                Err(StepError::Ended(note)) => {
                    self.notes.push(if left > 0 {
                        format!("{note}; the {left} step(s) after it did not run")
                    } else {
                        note
                    });
                    return Ok(false);
                }
                Err(StepError::Harness(why)) => {
                    return Err(StepError::Harness(format!(
                        "step {} ({}): {why}",
                        self.step_no,
                        step.action.name()
                    )));
                }
                Err(e @ StepError::NotApplicable(_)) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Findings, notes, the whole transcript and the rules whose checks ran.
    pub(super) fn finish(mut self) -> (Vec<Finding>, Vec<String>, Vec<Entry>, Vec<RuleId>) {
        self.report_guest_addr_write();
        self.report_channel_violations();
        self.archive_session();
        let checked = self.checked.into_iter().collect();
        (self.findings, self.notes, self.archive, checked)
    }

    /// Records a finding of the check of `rule` that failed, at the scenario's level capped by
    /// the rule's; returns [`StepError::Finding`] so a check can `return Err(ctx.fail(..))`.
    /// This is the one way a finding is made.
    pub fn fail(
        &mut self,
        rule: RuleId,
        summary: &str,
        expected: &str,
        received: String,
    ) -> StepError {
        // Behind the IOMMU, a write where only an IOVA taken for a guest address leads
        // explains whatever failed: the device did not translate through the IOTLB (R-MEM-19).
        if let Some(write) = self.guest_addr_write().filter(|_| rule != id::R_MEM_19) {
            if self.findings.iter().any(|f| f.rule == id::R_MEM_19) {
                return StepError::Finding;
            }
            return self.fail(
                id::R_MEM_19,
                &format!("{summary}: the device reached guest memory through the region guest addresses"),
                "with ACCESS_PLATFORM every ring and buffer access goes through the IOTLB; the region guest addresses are unused",
                format!("{received}; {write}"),
            );
        }
        let sent = self.last_sent();
        let finding = Finding {
            level: self.level_for(rule),
            rule,
            summary: format!("step {}: {summary}", self.step_no),
            sent,
            received,
            expected: expected.into(),
            crash: None,
        };
        self.push(finding);
        StepError::Finding
    }

    /// Behind the IOMMU, a write into the decoy region no check reported yet (R-MEM-19).
    fn report_guest_addr_write(&mut self) {
        if self.findings.iter().any(|f| f.rule == id::R_MEM_19) {
            return;
        }
        if let Some(write) = self.guest_addr_write() {
            self.fail(
                id::R_MEM_19,
                "with ACCESS_PLATFORM, the device reached guest memory through the region guest addresses",
                "every ring and buffer access through the IOTLB; the region guest addresses unused",
                write,
            );
        }
    }

    /// Findings for what the back-end sent wrong on the back-end channel (framing, flags,
    /// codes, fd counts: R-WIRE-16, R-BCH-*), seen by the channel's server during the session.
    fn report_channel_violations(&mut self) {
        let Some(ch) = self.session.as_ref().and_then(|s| s.channel()) else {
            return;
        };
        let records = ch.requests();
        let violations = ch.violations();
        self.judge_backend_requests(&records);
        let mut seen = std::collections::BTreeSet::new();
        for v in violations {
            let text = v.to_string();
            if !seen.insert(text.clone()) {
                continue;
            }
            self.fail(
                super::violations::channel_rule(&v),
                &format!("on the back-end channel: {text}"),
                "back-end requests framed, flagged and sized as the spec says, with the fds their code takes",
                text,
            );
        }
        self.mark(id::R_WIRE_16);
    }

    /// Records that a check of `rule` ran (a rule is `pass` only when one did and none failed).
    pub fn mark(&mut self, rule: RuleId) {
        self.checked.insert(rule);
    }

    fn push(&mut self, f: Finding) {
        self.checked.insert(f.rule);
        self.findings.push(f);
    }

    /// Records an informative note (never a finding).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The session, connecting first when there is none.
    pub fn session_mut(&mut self) -> Result<&mut Session, StepError> {
        self.session()
    }

    /// Turns a session error into a finding citing `rule` (a back-end fault) or a harness error.
    pub fn session_error(&mut self, rule: RuleId, e: SessionError) -> StepError {
        let step = Step::of(Action::Probe(NoArgs {})).citing(rule);
        self.session_failed(&step, e)
    }

    /// A session error during a built-in's setup: a refusal (nack or close) makes the
    /// scenario not applicable, as for a file's setup step; anything else is `session_error`.
    pub fn setup_error(&mut self, rule: RuleId, e: SessionError) -> StepError {
        if matches!(e, SessionError::Nack { .. } | SessionError::Closed { .. }) {
            let step = Step::of(Action::Vring(Default::default()));
            return self.refused_setup(&step, e.to_string());
        }
        self.session_error(rule, e)
    }

    /// The ring size built-ins use: 128, or less where the back-end accepts less.
    pub fn queue_size(&self) -> u16 {
        128.min(self.offer.queue_size)
    }

    /// The target instance: process state, stderr, `/proc/<pid>` sampling.
    pub fn target(&mut self) -> &mut Instance {
        self.inst
    }

    /// The inodes of the current guest memory's memfds, region by region (to find them in
    /// the back-end's `/proc/<pid>/maps` and `/proc/<pid>/fd`).
    pub fn region_inodes(&self) -> Vec<u64> {
        self.mem
            .iter()
            .flat_map(|m| m.regions())
            .filter_map(|r| nix::sys::stat::fstat(r.fd()).ok().map(|st| st.st_ino))
            .collect()
    }

    /// The spawn command template (`{socket}` not yet replaced), in spawn mode.
    pub fn spawn_command(&self) -> Option<&str> {
        match self.spec {
            crate::target::TargetSpec::Spawn(cmd) => Some(cmd),
            _ => None,
        }
    }

    /// The scenario ends the back-end on purpose (SIGTERM): its exit is not a finding.
    pub fn expect_exit(&mut self) {
        self.exit_expected = true;
    }

    /// The scenario's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The device type of the back-end, when known (`--device`, `--backend-json`,
    /// `--print-capabilities`).
    pub fn device(&self) -> Option<crate::device::DeviceType> {
        self.offer.device
    }

    /// Whether ring `index` is set up on the current connection (a step that reconnected
    /// leaves none).
    pub fn has_queue(&self, index: u16) -> bool {
        self.queues.contains_key(&index)
    }

    /// The per-step timeout of this run.
    pub fn step_timeout(&self) -> Duration {
        self.opts.step_timeout
    }

    fn archive_session(&mut self) {
        self.queues.clear();
        self.pending.clear();
        self.idle.clear();
        self.net = net::NetState::default();
        self.rng = rng::RngState::default();
        self.fs.new_session();
        self.vsock.new_session();
        self.iotlb = iotlb::IotlbState::default();
        self.console = console::ConsoleState::default();
        self.input = input::InputState::default();
        self.sound = sound::SoundState::default();
        self.gpu = gpu::GpuState::default();
        if let Some(s) = self.session.take() {
            if s.received() > 0 {
                // Every reply the session took passed its framing checks.
                for rule in [
                    id::R_WIRE_01,
                    id::R_WIRE_02,
                    id::R_WIRE_03,
                    id::R_WIRE_05,
                    id::R_ACK_09,
                ] {
                    self.mark(rule);
                }
            }
            let base = self.archive.len() as u64;
            self.archive
                .extend(s.transcript().entries.into_iter().map(|mut e| {
                    e.seq += base;
                    e
                }));
        }
    }

    /// At the end of a scenario: a crash is a finding (R-CRASH-01) even when no step noticed it;
    /// an exit with a status (after the front-end left, or a policy) is only noted.
    fn check_process(&mut self) {
        if self.inst().is_spawned() {
            // The process was watched throughout: a crash could not have gone unseen.
            self.mark(id::R_CRASH_01);
        }
        let st = self.inst().state();
        let Some(death) = st.death() else { return };
        if death.is_crash() {
            if !self.findings.iter().any(|f| f.crash.is_some()) {
                let sent = self.last_sent();
                self.crash_finding(&death, "during the scenario", sent);
            }
            return;
        }
        if self.exit_expected {
            return;
        }
        let reported = self.findings.iter().any(|f| f.received.contains("process"))
            || self.notes.iter().any(|n| n.contains("process"));
        if !reported {
            let tail = self.inst().stderr_tail(400);
            self.notes
                .push(format!("{} during the scenario", describe_exit(&st, &tail)));
        }
    }

    /// Records the R-CRASH-01 finding for a back-end that died by a crash signal.
    fn crash_finding(&mut self, death: &Death, when: &str, sent: String) {
        let tail = self.inst().stderr_tail(600);
        let step_no = self.step_no;
        let summary =
            |how: &str| format!("step {step_no}: CRASH: the back-end process died, {how}, {when}");
        if let Some(finding) = super::crash_finding(death, tail, summary, sent) {
            self.push(finding);
        }
    }

    /// Whether the back-end process has ended, waiting up to `within` (spawn mode). A crash is
    /// recorded (R-CRASH-01, and `rule`'s check fails: the message was not refused cleanly);
    /// an exit with a status is the rejection the spec allows ("it may also close the
    /// connection") taken further: noted, and the scenario ends there.
    fn gone(&mut self, rule: RuleId, within: Duration, trigger: &str) -> Option<StepError> {
        let after = &shorten(trigger, 160);
        let st = self.inst().wait_exit(within);
        let death = st.death()?;
        let tail = self.inst().stderr_tail(400);
        match death {
            Death::Crash { .. } => {
                self.crash_finding(&death, &format!("after {after}"), trigger.to_string());
                self.fail(
                    rule,
                    "the back-end crashed instead of handling the message",
                    "the message is refused (or handled) and the back-end keeps running",
                    describe_exit(&st, &tail),
                );
                self.findings.last_mut().expect("just pushed").sent = trigger.to_string();
                Some(StepError::Finding)
            }
            Death::Exit(code) => {
                let panic = if code == 101 {
                    " (101: a Rust panic)"
                } else {
                    ""
                };
                Some(StepError::Ended(format!(
                    "step {}: the back-end process exited with status {code}{panic} after {after}: \
                     a refusal the spec allows, but the whole daemon went away (robustness){}",
                    self.step_no,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; stderr: {tail}")
                    }
                )))
            }
            Death::Killed(_) => {
                self.fail(
                    rule,
                    "the back-end process was killed by a signal",
                    "the back-end keeps running",
                    describe_exit(&st, &tail),
                );
                Some(StepError::Finding)
            }
        }
    }

    fn transcript_tail(&self, n: usize) -> Vec<Entry> {
        let mut all = self.archive.clone();
        if let Some(s) = &self.session {
            all.extend(s.transcript().entries);
        }
        all[all.len().saturating_sub(n)..].to_vec()
    }

    fn last_sent(&self) -> String {
        self.last_sent_where(|_| true)
            .unwrap_or_else(|| "nothing yet".into())
    }

    /// The last message with request `code` sent to the back-end, rendered.
    fn sent_of(&self, code: u32) -> String {
        self.last_sent_where(|e| e.code == code && e.fds > 0)
            .or_else(|| self.last_sent_where(|e| e.code == code))
            .unwrap_or_else(|| self.last_sent())
    }

    /// The last message sent to the back-end that `pick` accepts, rendered.
    fn last_sent_where(&self, pick: impl Fn(&Entry) -> bool) -> Option<String> {
        self.transcript_tail(200)
            .iter()
            .rev()
            .find(|e| e.direction == Direction::ToBackend && pick(e))
            .map(|e| render(std::slice::from_ref(e)).trim().to_string())
    }

    /// Every request received on the back-end channel so far.
    fn channel_records(&self) -> Vec<vhu_mock_frontend::channel::BackendRecord> {
        self.session
            .as_ref()
            .and_then(|s| s.channel())
            .map(|c| c.requests())
            .unwrap_or_default()
    }

    /// Waits (without polling) until `done` holds for the back-end channel's requests, the
    /// channel closes or `deadline` passes; the requests at the end.
    fn wait_channel(
        &self,
        deadline: Instant,
        done: impl Fn(&[vhu_mock_frontend::channel::BackendRecord]) -> bool,
    ) -> Vec<vhu_mock_frontend::channel::BackendRecord> {
        match self.session.as_ref().and_then(|s| s.channel()) {
            Some(c) => c.wait_for(deadline, done).0,
            None => Vec::new(),
        }
    }

    /// The rule a step's own expectation checks: its `rule`, else the scenario's first (the
    /// scenario's subject). Intrinsic checks (used lengths, wire framing, crashes) cite their own.
    fn rule_of(&self, step: &Step) -> RuleId {
        step.rule.unwrap_or(self.scenario.spec.rules[0])
    }

    /// A finding weighs what its rule says (a SHOULD rule warns even in a MUST scenario); for
    /// the rules the scenario itself cites, never more than the scenario's level either (a
    /// scenario graded `rob` probes where the spec is silent). A rule the scenario does not cite
    /// is an intrinsic check (an ack that lied, a malformed reply): it weighs the same wherever
    /// it is found.
    fn level_for(&self, rule: RuleId) -> Level {
        let cap = rule.level().finding_cap();
        let spec = &self.scenario.spec;
        let cited = spec.rules.contains(&rule) || spec.steps.iter().any(|s| s.rule == Some(rule));
        if cited { spec.level.min(cap) } else { cap }
    }

    fn finding(&mut self, step: &Step, summary: &str, expected: &str, received: String) {
        let rule = self.rule_of(step);
        self.fail(rule, summary, expected, received);
    }

    /// Whether `step` only sets the stage for the scenario's checks (no expectation or rule of
    /// its own): if the back-end refuses it, the scenario cannot be judged, which is not a
    /// departure (a back-end may refuse what it cannot do, e.g. a ring larger than it supports).
    fn is_setup(step: &Step) -> bool {
        step.expect.is_none()
            && step.rule.is_none()
            && matches!(
                step.action,
                Action::Negotiate(_)
                    | Action::Memory(_)
                    | Action::AddMemReg(_)
                    | Action::Vring(_)
                    | Action::Enable(_)
            )
    }

    /// The back-end refused (nack or close) a setup step: a crash is a finding; anything else
    /// makes the scenario not applicable, with the reason.
    fn refused_setup(&mut self, step: &Step, what: String) -> StepError {
        let after = self.last_sent();
        if let Some(e) = self.gone(self.rule_of(step), Duration::from_millis(200), &after) {
            if matches!(e, StepError::Finding) {
                return e;
            }
        }
        StepError::NotApplicable(format!(
            "the back-end refused setup step {} ({after}): {what}; the scenario's checks could not run",
            self.step_no
        ))
    }

    /// Turns a session error into a finding (back-end fault) or a harness error.
    fn session_failed(&mut self, step: &Step, e: SessionError) -> StepError {
        if !e.is_backend_fault() {
            return StepError::Harness(chain(&e));
        }
        if Self::is_setup(step)
            && matches!(e, SessionError::Nack { .. } | SessionError::Closed { .. })
        {
            return self.refused_setup(step, e.to_string());
        }
        let closed = matches!(e, SessionError::Closed { .. });
        if closed {
            let after = self.last_sent();
            match self.gone(self.rule_of(step), Duration::from_millis(200), &after) {
                Some(StepError::Finding) => return StepError::Finding,
                // The connection made after the front-end left was closed by a process that
                // was exiting: the policy R-ROB-09 allows, not this step's failure.
                Some(StepError::Ended(_)) if self.reconnected => {
                    let st = self.inst().state();
                    return StepError::NotApplicable(format!(
                        "the back-end exits when its front-end leaves ({st}), a policy the spec \
                         allows (R-ROB-09, reported by session/serves-after-disconnect); this \
                         scenario needs a reconnect to the same process"
                    ));
                }
                _ => {}
            }
        }
        // The framing rule a malformed reply breaks; a payload the step's own rule describes
        // (an explicit `rule`) cites that rule rather than the generic R-WIRE-01.
        let wire = wire_rule(&e)
            .filter(|_| !matches!(e, SessionError::Nack { .. } | SessionError::Closed { .. }));
        let rule = match wire {
            Some(w) if w != id::R_WIRE_01 => w,
            _ => step.rule.or(wire).unwrap_or_else(|| self.rule_of(step)),
        };
        let received = self.describe_failure(&e);
        let expected = match &e {
            SessionError::Timeout { .. } => "a reply within the step timeout",
            SessionError::Nack { .. } => "an ack of 0 for a valid request",
            SessionError::Closed { .. } => "the connection stays open",
            SessionError::Stalled { .. } => "the back-end reads what it is sent",
            _ => "a well-formed reply to the request",
        };
        self.fail(rule, &e.to_string(), expected, received);
        StepError::Finding
    }

    fn describe_failure(&mut self, e: &SessionError) -> String {
        let st = self.inst().wait_exit(Duration::from_millis(
            if matches!(e, SessionError::Closed { .. }) {
                200
            } else {
                0
            },
        ));
        let base = match e {
            SessionError::BadReply {
                message, reason, ..
            } => format!(
                "{reason}; header {:?}, {} payload bytes",
                message.header,
                message.payload.len()
            ),
            other => other.to_string(),
        };
        match st {
            ProcessState::Exited(_) | ProcessState::Signaled(_) => {
                let tail = self.inst().stderr_tail(400);
                format!("{base}; {}", describe_exit(&st, &tail))
            }
            _ => base,
        }
    }

    /// The back-end being judged: the fresh process if a `new_process` step started one.
    fn inst(&mut self) -> &mut Instance {
        match &mut self.fresh {
            Some(i) => i,
            None => self.inst,
        }
    }

    /// A session over a new connection, with this run's timeouts.
    fn new_session(&self, stream: std::os::unix::net::UnixStream) -> Session {
        crate::engine::session::open(stream, self.opts.step_timeout)
    }

    fn session(&mut self) -> Result<&mut Session, StepError> {
        if self.session.is_none() {
            let stream = self
                .inst()
                .connect()
                .map_err(|e| StepError::Harness(chain(&e)))?;
            let mut s = self.new_session(stream);
            if std::mem::take(&mut self.fresh_start) {
                // A slow starter's first reply (DPDK: about 1 s) must not eat the step timeout.
                let allowance = (self.offer.first_reply * 2).min(self.opts.connect_timeout);
                if allowance > self.opts.step_timeout / 4 {
                    s.set_reply_timeout(self.opts.step_timeout + allowance);
                    self.first_reply_pending = true;
                }
            }
            self.session = Some(s);
        }
        let s = self.session.as_mut().expect("just set");
        if self.first_reply_pending && s.received() > 0 {
            s.set_reply_timeout(self.opts.step_timeout);
            self.first_reply_pending = false;
        }
        Ok(s)
    }

    /// Performs one step and judges it, exactly as a scenario file's step.
    pub fn step(&mut self, step: &Step) -> StepResult {
        self.step_no += 1;
        self.step_inner(step)
    }

    /// The dispatcher: one handler per action, given the action's arguments.
    fn step_inner(&mut self, step: &Step) -> StepResult {
        match &step.action {
            Action::Negotiate(a) => self.negotiate(step, a),
            Action::Memory(a) => self.memory(step, a),
            Action::AddMemReg(a) => self.add_mem_reg(step, a),
            Action::RemMemReg(a) => self.rem_mem_reg(step, a),
            Action::Vring(a) => self.vring(step, a),
            Action::Enable(a) => self.enable(step, a),
            Action::BlkWrite(a) | Action::BlkRead(a) => self.blk(step, a),
            Action::BlkFlush(a) | Action::BlkGetId(a) => self.blk(step, &a.into()),
            Action::BlkComplete(a) => self.blk_complete(step, a.queue),
            Action::SaveState(_) => self.save_state(step),
            Action::LoadState(a) => self.load_state(step, a),
            Action::NewProcess(_) => self.new_process(),
            Action::GetVringBase(a) => self.get_vring_base(step, a),
            Action::ShmemMap(a) => self.shmem_request(step, &a.into(), a.refuse == Some(true)),
            Action::ShmemUnmap(a) => self.shmem_request(step, a, false),
            Action::SwapCall(a) => self.swap_call(step, a.queue),
            Action::Send(a) => self.send(step, a),
            Action::Raw(a) => self.raw(step, a),
            Action::Probe(_) => self.probe(step),
            Action::Disconnect(_) => {
                self.archive_session();
                self.mem = None;
                Ok(())
            }
            Action::Reconnect(_) => self.reconnect(step),
            Action::NetTx(a) => self.net_tx(step, a),
            Action::NetRxPost(a) => self.net_rx_post(a),
            Action::NetRx(a) => self.net_rx(step, a),
            Action::NetCtrl(a) => self.net_ctrl(step, a),
            Action::NetConfig(_) => self.net_config(step),
            Action::NetComplete(a) => self.net_complete(step, a.queue),
            Action::RngRead(a) => self.rng_read(step, a),
            Action::RngComplete(a) => self.rng_complete(step, a.queue),
            Action::FsFile(_)
            | Action::FsInit(_)
            | Action::FsGetattr(_)
            | Action::FsLookup(_)
            | Action::FsOpen(_)
            | Action::FsRead(_)
            | Action::FsRelease(_)
            | Action::FsForget(_)
            | Action::FsUnknown(_)
            | Action::FsConfig(_) => self.fs_step(step),
            Action::VsockConfig(_)
            | Action::VsockListen(_)
            | Action::VsockConnect(_)
            | Action::VsockSend(_)
            | Action::VsockRecv(_)
            | Action::VsockCreditRequest(_)
            | Action::VsockShutdown(_)
            | Action::VsockUnknownType(_)
            | Action::VsockNoConnection(_)
            | Action::VsockHostConnect(_) => self.vsock_step(step),
            Action::Iotlb(a) => self.iotlb_step(step, a),
            Action::ScmiCommand(a) => self.scmi_command(step, a),
            Action::GpioConfig(_) => self.gpio_config(step),
            Action::GpioRequest(a) => self.gpio_request(step, a),
            Action::I2cTransfer(a) => self.i2c_transfer(step, a),
            Action::ConsoleConfig(_) => self.console_step(|c| c.console_config(step)),
            Action::ConsoleReady(a) => self.console_step(|c| c.console_ready(step, a)),
            Action::ConsoleWrite(a) => self.console_step(|c| c.console_write(step, a)),
            Action::ConsoleControl(a) => self.console_step(|c| c.console_control(step, a)),
            Action::InputConfig(a) => self.input_config(step, a),
            Action::InputPost(a) => self.input_post(step, a),
            Action::InputStatus(a) => self.input_status(step, a),
            Action::SoundConfig(_)
            | Action::SoundQuery(_)
            | Action::SoundPcm(_)
            | Action::SoundTx(_)
            | Action::SoundUnknown(_) => self.sound_step(step),
            Action::GpuSetSocket(_)
            | Action::GpuConfig(_)
            | Action::GpuDisplayInfo(_)
            | Action::GpuResource(_) => self.gpu_step(step),
            Action::Sleep(a) => {
                let left = self.deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(Duration::from_millis(a.ms).min(left));
                Ok(())
            }
        }
    }

    fn probe(&mut self, step: &Step) -> StepResult {
        let r = self.session()?.get_features();
        r.map(drop).map_err(|e| self.session_failed(step, e))
    }

    fn reconnect(&mut self, step: &Step) -> StepResult {
        self.archive_session();
        match self.inst().connect() {
            Ok(stream) => {
                // The socket accepts a new front-end after one left.
                self.reconnected = true;
                self.mark(id::R_ROB_09);
                self.session = Some(self.new_session(stream));
                Ok(())
            }
            Err(e) => {
                match self.gone(
                    id::R_ROB_09,
                    Duration::from_millis(300),
                    "the front-end left",
                ) {
                    Some(StepError::Ended(_)) => {
                        let st = self.inst().state();
                        return Err(StepError::NotApplicable(format!(
                            "the back-end exits when its front-end leaves ({st}), a policy the spec \
                             allows (R-ROB-09, reported by session/serves-after-disconnect); this \
                             scenario needs a reconnect to the same process"
                        )));
                    }
                    Some(e) => return Err(e),
                    None => {}
                }
                let st = self.inst().state();
                let received = format!(
                    "{}; {}",
                    chain(&e),
                    describe_exit(&st, &self.inst().stderr_tail(400))
                );
                self.fail(
                    step.rule.unwrap_or(id::R_ROB_09),
                    "the back-end does not accept a new connection after a disconnect",
                    "a new front-end connection is served",
                    received,
                );
                Err(StepError::Finding)
            }
        }
    }
}

/// The wire rule a framing error breaks.
fn wire_rule(e: &SessionError) -> Option<RuleId> {
    match e {
        SessionError::BadReply { reason, .. } => Some(super::violations::reply_rule(reason)),
        SessionError::UnexpectedMessage { .. } => Some(id::R_ACK_09),
        SessionError::Nack { .. } => Some(id::R_ACK_01),
        SessionError::Timeout { during, .. } if during.reply_kind() == ReplyKind::AckOnly => {
            Some(id::R_ACK_01)
        }
        _ => None,
    }
}

/// `s` cut to `max` characters (a rendered message can carry a whole payload), marked when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{} ...", &s[..i]),
        None => s.to_string(),
    }
}
