//! The step interpreter: performs each step of a scenario through the mock front-end and judges
//! what the back-end did against the step's expectation. A departure becomes a [`Finding`] that
//! cites the step's rule; only a local failure (memfd, pipe) is a harness error.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use vhu_mock_frontend::blk;
use vhu_mock_frontend::transcript::{Direction, Entry, render};
use vhu_mock_frontend::{DriverQueue, GuestMemory, Session, SessionError, SessionOptions};
use vhu_protocol::Connection;
use vhu_protocol::wire::ReplyKind;

mod datapath;
mod liveness;
mod send;
mod setup;
mod shmem;
mod state;

use super::{Finding, RunOptions, chain, describe_exit};
use crate::scenario::model::Step;
use crate::scenario::{Action, Level, Scenario};
use crate::target::{Instance, ProcessState};

/// Guest memory size of the named layouts.
const LAYOUT_BYTES: u64 = 16 << 20;

/// Why a step (or a built-in scenario) stopped the scenario early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// A finding was recorded; the scenario cannot go on meaningfully.
    Finding,
    /// The harness could not judge (a local failure, never the back-end's fault).
    Harness(String),
    /// The scenario does not apply to this target (e.g. a hygiene check without a process to
    /// inspect); the scenario is skipped with this reason.
    NotApplicable(String),
}

type StepResult = Result<(), StepError>;

/// The state of one scenario's run: the session, guest memory, queues and findings. The step
/// interpreter and built-in scenarios ([`crate::builtin`]) drive it through the same helpers.
pub struct Ctx<'a> {
    scenario: &'a Scenario,
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
    findings: Vec<Finding>,
    notes: Vec<String>,
    archive: Vec<Entry>,
    step_no: usize,
    /// The back-end is ended on purpose by the scenario.
    exit_expected: bool,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        scenario: &'a Scenario,
        inst: &'a mut Instance,
        spec: &'a crate::target::TargetSpec,
        opts: &'a RunOptions,
        deadline: Instant,
    ) -> Self {
        Self {
            scenario,
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
            findings: vec![],
            notes: vec![],
            archive: vec![],
            step_no: 0,
            exit_expected: false,
        }
    }

    /// Runs the scenario (its file steps, or its built-in body); `Err` is a harness error or
    /// a scenario that does not apply.
    pub(super) fn run_all(&mut self) -> Result<(), StepError> {
        if let Some(b) = self.scenario.builtin {
            let r = b.run(self);
            self.check_process();
            return match r {
                Ok(()) | Err(StepError::Finding) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let steps = self.scenario.spec.steps.clone();
        for (i, step) in steps.iter().enumerate() {
            self.step_no = i + 1;
            if Instant::now() >= self.deadline {
                self.finding(
                    step,
                    "scenario deadline passed before this step: the back-end is too slow or hangs",
                    "every step within the deadline",
                    "time ran out".into(),
                );
                break;
            }
            match self.step_inner(step).and_then(|()| self.liveness(step)) {
                Ok(()) => {}
                Err(StepError::Finding) => break,
                Err(StepError::Harness(why)) => {
                    return Err(StepError::Harness(format!(
                        "step {} ({:?}): {why}",
                        i + 1,
                        step.action
                    )));
                }
                Err(e @ StepError::NotApplicable(_)) => return Err(e),
            }
        }
        self.check_process();
        Ok(())
    }

    /// Findings, notes and the whole transcript.
    pub(super) fn finish(mut self) -> (Vec<Finding>, Vec<String>, Vec<Entry>) {
        self.archive_session();
        (self.findings, self.notes, self.archive)
    }

    /// Records a finding citing `rule` at the scenario's level; returns [`StepError::Finding`]
    /// so a built-in scenario can `return Err(ctx.fail(..))`.
    pub fn fail(
        &mut self,
        rule: &str,
        summary: &str,
        expected: &str,
        received: String,
    ) -> StepError {
        self.finding_with(rule.to_string(), summary, expected, received);
        StepError::Finding
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
    pub fn session_error(&mut self, rule: &str, e: SessionError) -> StepError {
        let mut step = Step::new(Action::Probe);
        step.rule = Some(rule.to_string());
        self.session_failed(&step, e)
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

    /// The per-step timeout of this run.
    pub fn step_timeout(&self) -> Duration {
        self.opts.step_timeout
    }

    fn archive_session(&mut self) {
        self.queues.clear();
        self.pending.clear();
        self.idle.clear();
        if let Some(s) = self.session.take() {
            let base = self.archive.len() as u64;
            self.archive
                .extend(s.transcript().entries.into_iter().map(|mut e| {
                    e.seq += base;
                    e
                }));
        }
    }

    fn check_process(&mut self) {
        if self.exit_expected {
            return;
        }
        let st = self.inst().state();
        if matches!(st, ProcessState::Exited(_) | ProcessState::Signaled(_))
            && !self
                .findings
                .iter()
                .any(|f| f.summary.contains("process") || f.received.contains("process"))
        {
            let tail = self.inst().stderr_tail(400);
            let rule = self.scenario.spec.rules[0].clone();
            let sent = self.last_sent();
            self.findings.push(Finding {
                level: self.level_for(&rule),
                rule,
                summary: format!("{} during the scenario", describe_exit(&st, &tail)),
                sent,
                received: "process gone".into(),
                expected: "the back-end keeps running".into(),
            });
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
        self.last_sent_where(|e| e.code == code)
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

    fn rule_of(&self, step: &Step) -> String {
        step.rule
            .clone()
            .unwrap_or_else(|| self.scenario.spec.rules[0].clone())
    }

    /// A finding weighs what its scenario says, but never more than the rule it cites: a
    /// SHOULD rule warns even in a MUST scenario (issue: SHOULD-level rules report as warnings).
    fn level_for(&self, rule: &str) -> Level {
        let cap = match crate::rules::find(rule).map(|r| r.level.as_str()) {
            Some("SHOULD" | "MAY") => Level::Should,
            Some("ROB") => Level::Rob,
            Some("INFO") => Level::Info,
            _ => Level::Must,
        };
        self.scenario.spec.level.min(cap)
    }

    fn finding(&mut self, step: &Step, summary: &str, expected: &str, received: String) {
        let rule = self.rule_of(step);
        self.finding_with(rule, summary, expected, received);
    }

    fn finding_with(&mut self, rule: String, summary: &str, expected: &str, received: String) {
        let sent = self.last_sent();
        self.findings.push(Finding {
            level: self.level_for(&rule),
            rule,
            summary: format!("step {}: {summary}", self.step_no),
            sent,
            received,
            expected: expected.into(),
        });
    }

    /// Turns a session error into a finding (back-end fault) or a harness error.
    fn session_failed(&mut self, step: &Step, e: SessionError) -> StepError {
        if !e.is_backend_fault() {
            return StepError::Harness(chain(&e));
        }
        let rule = step
            .rule
            .clone()
            .unwrap_or_else(|| wire_rule(&e).map_or_else(|| self.rule_of(step), str::to_string));
        let received = self.describe_failure(&e);
        let expected = match &e {
            SessionError::Timeout { .. } => "a reply within the step timeout",
            SessionError::Nack { .. } => "an ack of 0 for a valid request",
            SessionError::Closed { .. } => "the connection stays open",
            _ => "a well-formed reply to the request",
        };
        self.finding_with(rule, &e.to_string(), expected, received);
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
        let sopts = SessionOptions {
            reply_timeout: self.opts.step_timeout,
            auto_need_reply: true,
        };
        Session::new(Connection::new(stream, Some(self.opts.step_timeout)), sopts)
    }

    /// A finding if the back-end process has died (spawn mode); returns whether it had.
    fn died(&mut self, step: &Step, summary: &str, expected: &str) -> bool {
        let st = self.inst().wait_exit(Duration::from_millis(200));
        if !matches!(st, ProcessState::Exited(_) | ProcessState::Signaled(_)) {
            return false;
        }
        let tail = self.inst().stderr_tail(400);
        self.finding(step, summary, expected, describe_exit(&st, &tail));
        true
    }

    fn session(&mut self) -> Result<&mut Session, StepError> {
        if self.session.is_none() {
            let stream = self
                .inst()
                .connect()
                .map_err(|e| StepError::Harness(chain(&e)))?;
            self.session = Some(self.new_session(stream));
        }
        Ok(self.session.as_mut().expect("just set"))
    }

    /// Performs one step and judges it, exactly as a scenario file's step.
    pub fn step(&mut self, step: &Step) -> StepResult {
        self.step_no += 1;
        self.step_inner(step)
    }

    fn step_inner(&mut self, step: &Step) -> StepResult {
        match step.action {
            Action::Negotiate => self.negotiate(step),
            Action::Memory => self.memory(step),
            Action::AddMemReg => self.add_mem_reg(step),
            Action::RemMemReg => self.rem_mem_reg(step),
            Action::Vring => self.vring(step),
            Action::Enable => self.enable(step),
            Action::BlkWrite | Action::BlkRead | Action::BlkFlush | Action::BlkGetId => {
                self.blk(step)
            }
            Action::BlkComplete => self.blk_complete(step),
            Action::SaveState => self.save_state(step),
            Action::LoadState => self.load_state(step),
            Action::NewProcess => self.new_process(),
            Action::GetVringBase => self.get_vring_base(step),
            Action::ShmemMap | Action::ShmemUnmap => self.shmem_request(step),
            Action::SwapCall => self.swap_call(step),
            Action::Send => self.send(step),
            Action::Raw => self.raw(step),
            Action::Probe => self.probe(step),
            Action::Disconnect => {
                self.archive_session();
                self.mem = None;
                Ok(())
            }
            Action::Reconnect => self.reconnect(step),
            Action::Sleep => {
                let left = self.deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(Duration::from_millis(step.ms.unwrap_or(0)).min(left));
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
                self.session = Some(self.new_session(stream));
                Ok(())
            }
            Err(e) => {
                let st = self.inst().state();
                let received = format!(
                    "{}; {}",
                    chain(&e),
                    describe_exit(&st, &self.inst().stderr_tail(400))
                );
                self.finding(
                    step,
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
fn wire_rule(e: &SessionError) -> Option<&'static str> {
    match e {
        SessionError::BadReply { reason, .. } if reason.contains("unrequested ack") => {
            Some("R-ACK-03")
        }
        SessionError::BadReply { reason, .. } if reason.contains("version") => Some("R-WIRE-03"),
        SessionError::BadReply { reason, .. } if reason.contains("shmem nregions") => {
            Some("R-SHM-02")
        }
        SessionError::BadReply { reason, .. } if reason.contains("REPLY flag") => Some("R-WIRE-02"),
        SessionError::BadReply { reason, .. } if reason.contains("code") => Some("R-WIRE-05"),
        SessionError::BadReply { reason, .. } if reason.contains("an ack") => Some("R-ACK-01"),
        SessionError::BadReply { .. } => Some("R-WIRE-01"),
        SessionError::UnexpectedMessage { .. } => Some("R-ACK-09"),
        SessionError::Nack { .. } => Some("R-ACK-01"),
        SessionError::Timeout { during, .. } if during.reply_kind() == ReplyKind::AckOnly => {
            Some("R-ACK-01")
        }
        _ => None,
    }
}
