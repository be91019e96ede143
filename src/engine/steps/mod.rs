//! The step interpreter: performs each step of a scenario through the mock front-end and judges
//! what the back-end did against the step's expectation. A departure becomes a [`Finding`] that
//! cites the step's rule; only a local failure (memfd, pipe) is a harness error.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_mock_frontend::blk::{self, BlkOutcome};
use vhu_mock_frontend::transcript::{Direction, Entry, render};
use vhu_mock_frontend::{
    Ack, DriverQueue, GuestMemory, RegionSpec, RingLayout, Session, SessionError, SessionOptions,
    WaitError, Wanted,
};
use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::{Body, BodyKind, ConfigHeader};
use vhu_protocol::{Connection, FrontendReq, Header, Message, RawMessage, VirtioFeatures};

mod liveness;
mod shmem;
mod state;

use super::{Finding, RunOptions, chain, describe_exit};
use crate::features::{protocol_bit, virtio_bit};
use crate::scenario::model::{NumOrWord, NumOrWordList, RequestName, Step};
use crate::scenario::{Action, Expect, Level, Scenario};
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
        use std::os::unix::fs::MetadataExt;
        self.mem
            .iter()
            .flat_map(|m| m.regions())
            .filter_map(|r| {
                let fd = r.fd().try_clone_to_owned().ok()?;
                std::fs::File::from(fd).metadata().ok().map(|m| m.ino())
            })
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
        let tail = self.transcript_tail(40);
        tail.iter()
            .rev()
            .find(|e| e.direction == Direction::ToBackend)
            .map(|e| render(std::slice::from_ref(e)).trim().to_string())
            .unwrap_or_else(|| "nothing yet".into())
    }

    /// The last message with request `code` sent to the back-end, rendered.
    fn sent_of(&self, code: u32) -> String {
        let tail = self.transcript_tail(200);
        tail.iter()
            .rev()
            .find(|e| e.direction == Direction::ToBackend && e.code == code)
            .map(|e| render(std::slice::from_ref(e)).trim().to_string())
            .unwrap_or_else(|| self.last_sent())
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

    fn negotiate(&mut self, step: &Step) -> StepResult {
        let mut wanted = Wanted::all();
        // What the scenario requires is negotiated too (RING_PACKED, INFLIGHT_SHMFD, ...).
        let req = &self.scenario.spec.requires;
        wanted.features |= req
            .virtio
            .iter()
            .filter_map(|n| virtio_bit(n))
            .fold(0, |a, b| a | b);
        wanted.protocol |= req
            .protocol
            .iter()
            .filter_map(|n| protocol_bit(n))
            .fold(0, |a, b| a | b);
        if let Some(sel) = &step.features {
            wanted.features = select_bits(sel, virtio_bit, wanted.features);
        }
        if let Some(sel) = &step.protocol {
            wanted.protocol = select_bits(sel, protocol_bit, wanted.protocol);
        }
        for name in step.exclude_protocol.iter().flatten() {
            wanted.protocol &= !protocol_bit(name).unwrap_or(0);
        }
        let r = self.session()?.negotiate(&wanted);
        match r {
            Ok(n) => {
                self.features = n.features;
                self.protocol = n.protocol;
                self.queue_num = n.queue_num.unwrap_or(1).clamp(1, 64);
                Ok(())
            }
            Err(e) => Err(self.session_failed(step, e)),
        }
    }

    fn memory(&mut self, step: &Step) -> StepResult {
        if step.resend == Some(true) {
            // The same table again (same memfds, same addresses): running rings stay valid.
            let mem = self.mem.take().ok_or_else(|| {
                StepError::Harness("`resend` needs an earlier `memory` step".into())
            })?;
            let r = self.session().map(|s| s.set_mem_table(&mem));
            self.mem = Some(mem);
            return self.judge_ack(step, r?, Expect::Ok);
        }
        let specs: Vec<RegionSpec> = match (&step.regions, step.layout.as_deref()) {
            (Some(r), _) => r.clone(),
            (None, Some("single")) => GuestMemory::single_layout(LAYOUT_BYTES),
            (None, Some("default") | None) => GuestMemory::default_layout(LAYOUT_BYTES),
            (None, Some(other)) => {
                return Err(StepError::Harness(format!(
                    "unknown memory layout {other:?} (default, single)"
                )));
            }
        };
        let mem = GuestMemory::new(&specs).map_err(|e| StepError::Harness(chain(&e)))?;
        self.queues.clear();
        let via_add = step.via.as_deref() == Some("add_mem_reg");
        let session = self.session()?;
        let r = if via_add {
            let mut last = Ok(Ack::NotRequested);
            for region in mem.regions() {
                last = session.add_mem_reg(region);
                if !matches!(last, Ok(Ack::Ok | Ack::NotRequested)) {
                    break;
                }
            }
            last
        } else {
            session.set_mem_table(&mem)
        };
        self.mem = Some(mem);
        self.judge_ack(step, r, Expect::Ok)
    }

    fn region(&self, step: &Step) -> Result<vhu_protocol::wire::payload::MemRegion, StepError> {
        let mem = self.mem.as_ref().ok_or_else(|| {
            StepError::Harness("no memory layout yet: add a `memory` step first".into())
        })?;
        let i = step.region.unwrap_or(0);
        mem.regions()
            .get(i)
            .map(|r| r.mem_region())
            .ok_or_else(|| StepError::Harness(format!("the layout has no region {i}")))
    }

    fn add_mem_reg(&mut self, step: &Step) -> StepResult {
        self.region(step)?;
        let i = step.region.unwrap_or(0);
        let mem = self.mem.take().expect("checked");
        let r = self.session()?.add_mem_reg(&mem.regions()[i]);
        self.mem = Some(mem);
        self.judge_ack(step, r, Expect::Ok)
    }

    fn rem_mem_reg(&mut self, step: &Step) -> StepResult {
        let mut region = self.region(step)?;
        if let Some(t) = step.tweak {
            region.guest_addr = t.guest_addr.unwrap_or(region.guest_addr);
            region.size = t.size.unwrap_or(region.size);
            region.user_addr = t.user_addr.unwrap_or(region.user_addr);
            region.mmap_offset = t.mmap_offset.unwrap_or(region.mmap_offset);
        }
        let r = self.session()?.rem_mem_reg(region);
        self.judge_ack(step, r, Expect::Ok)
    }

    fn queue_indices(&self, step: &Step) -> Vec<u16> {
        match &step.queue {
            Some(NumOrWord::Word(w)) if w == "all" => (0..self.queue_num as u16).collect(),
            Some(NumOrWord::Num(n)) => vec![*n as u16],
            _ => vec![0],
        }
    }

    fn vring(&mut self, step: &Step) -> StepResult {
        let size = step.size.unwrap_or(128) as u16;
        let event_idx = self.features & VirtioFeatures::EVENT_IDX.bits() != 0;
        let bit30 = self.features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        for idx in self.queue_indices(step) {
            if u64::from(idx) >= self.queue_num {
                // Configuring more queues than reported is a front-end error (R-MQ-02).
                return Err(StepError::NotApplicable(format!(
                    "the scenario needs queue {idx}; the back-end reports {} (GET_QUEUE_NUM)",
                    self.queue_num
                )));
            }
            let mut mem = self.mem.take().ok_or_else(|| {
                StepError::Harness("no memory yet: add a `memory` step before `vring`".into())
            })?;
            let layout = match step.ring.as_deref() {
                None | Some("split") => RingLayout::Split,
                Some("packed") => RingLayout::Packed,
                Some(other) => {
                    self.mem = Some(mem);
                    return Err(StepError::Harness(format!(
                        "unknown ring {other:?} (split, packed)"
                    )));
                }
            };
            let q = DriverQueue::new(&mut mem, idx, size, layout, event_idx);
            let mut q = match q {
                Ok(q) => q,
                Err(e) => {
                    self.mem = Some(mem);
                    return Err(StepError::Harness(chain(&e)));
                }
            };
            q.inject_kick = step.kick.unwrap_or(true);
            q.call_fd = step.call_fd.unwrap_or(true);
            q.kick_fd = step.kick_fd.unwrap_or(true);
            let base = step.base.unwrap_or_else(|| q.initial_base());
            let session = self.session()?;
            let mut r = q.setup(session, &mem, base);
            if r.is_ok() && bit30 && step.enable.unwrap_or(true) {
                r = session.checked(FrontendReq::SetVringEnable, |s| {
                    s.set_vring_enable(idx.into(), true)
                });
            }
            self.mem = Some(mem);
            if let Err(e) = r {
                return Err(self.session_failed(step, e));
            }
            self.queues.insert(idx, q);
            self.idle.remove(&idx);
        }
        Ok(())
    }

    fn enable(&mut self, step: &Step) -> StepResult {
        for idx in self.queue_indices(step) {
            let on = step.on.unwrap_or(true);
            if on {
                self.idle.remove(&idx);
            } else {
                self.idle.insert(idx);
            }
            let r = self.session()?.set_vring_enable(idx.into(), on);
            self.judge_ack(step, r, Expect::Ok)?;
        }
        Ok(())
    }

    fn blk(&mut self, step: &Step) -> StepResult {
        for idx in self.queue_indices(step) {
            let mut q = self.queues.remove(&idx).ok_or_else(|| {
                StepError::Harness(format!("queue {idx} is not set up: add a `vring` step"))
            })?;
            let mut mem = self
                .mem
                .take()
                .ok_or_else(|| StepError::Harness("no memory".into()))?;
            let sector = step.sector.unwrap_or(0);
            let len = step.sectors.unwrap_or(8) * 512;
            let pattern = step.pattern.unwrap_or(0x5a);
            let data = vec![pattern; len as usize];
            let mut req = match step.action {
                Action::BlkWrite => blk::BlkReq::write(sector, &data),
                Action::BlkRead => blk::BlkReq::read(sector, len),
                Action::BlkFlush => blk::BlkReq::flush(),
                _ => blk::BlkReq::get_id(),
            }
            .in_segments(step.segments.unwrap_or(1));
            if step.indirect == Some(true) {
                req = req.through_indirect();
            }
            let r = if step.expect == Some(Expect::NoReply) {
                self.blk_must_wait(step, idx, &mut q, &mut mem, req)
            } else {
                Ok(Some(blk::blk_request(
                    &mut q,
                    &mut mem,
                    req,
                    self.opts.step_timeout,
                )))
            };
            self.mem = Some(mem);
            self.queues.insert(idx, q);
            if let Some(r) = r? {
                self.judge_blk(step, idx, r, pattern)?;
            }
        }
        Ok(())
    }

    /// Submits a request that the back-end must not complete (ring disabled or stopped); it
    /// stays pending for a later `blk_complete`.
    fn blk_must_wait(
        &mut self,
        step: &Step,
        idx: u16,
        q: &mut DriverQueue,
        mem: &mut GuestMemory,
        req: blk::BlkReq<'_>,
    ) -> Result<Option<Result<BlkOutcome, WaitError>>, StepError> {
        let pending = blk::blk_submit(q, mem, req).map_err(|e| StepError::Harness(chain(&e)))?;
        let window = Duration::from_millis(step.window_ms.unwrap_or(300));
        match blk::blk_wait(q, mem, &pending, window) {
            Ok(None) => {
                self.pending.insert(idx, pending);
                Ok(None)
            }
            Ok(Some(o)) => {
                blk::blk_release(mem, pending);
                self.finding(
                    step,
                    &format!(
                        "{:?} on queue {idx} was processed although the ring must not be",
                        step.action
                    ),
                    "no used buffer and no call while the ring is stopped or disabled",
                    format!("{o:?}"),
                );
                Err(StepError::Finding)
            }
            Err(e) => Err(StepError::Harness(chain(&e))),
        }
    }

    fn blk_complete(&mut self, step: &Step) -> StepResult {
        for idx in self.queue_indices(step) {
            let pending = self.pending.remove(&idx).ok_or_else(|| StepError::Harness(format!("no pending request on queue {idx}: use a blk step with expect = \"no_reply\" first")))?;
            let mut q = self
                .queues
                .remove(&idx)
                .ok_or_else(|| StepError::Harness(format!("queue {idx} is not set up")))?;
            let mut mem = self
                .mem
                .take()
                .ok_or_else(|| StepError::Harness("no memory".into()))?;
            let r = blk::blk_wait(&mut q, &mem, &pending, self.opts.step_timeout);
            blk::blk_release(&mut mem, pending);
            self.mem = Some(mem);
            self.queues.insert(idx, q);
            let r = match r {
                Ok(Some(o)) => Ok(o),
                Ok(None) => Err(WaitError::Timeout {
                    got: 0,
                    wanted: 1,
                    waited: self.opts.step_timeout,
                }),
                Err(e) => Err(e),
            };
            self.judge_blk(step, idx, r, 0)?;
        }
        Ok(())
    }

    fn judge_blk(
        &mut self,
        step: &Step,
        idx: u16,
        r: Result<BlkOutcome, WaitError>,
        pattern: u8,
    ) -> StepResult {
        let what = format!("{:?} on queue {idx}", step.action);
        let o = match r {
            Ok(o) => o,
            Err(WaitError::Memory(e)) => return Err(StepError::Harness(chain(&e))),
            Err(e) => {
                let mut received = e.to_string();
                let st = self.inst().state();
                if matches!(st, ProcessState::Exited(_) | ProcessState::Signaled(_)) {
                    received = format!(
                        "{received}; {}",
                        describe_exit(&st, &self.inst().stderr_tail(400))
                    );
                }
                self.finding(
                    step,
                    &format!("{what} was not completed"),
                    "the request completes (used ring entry and a call)",
                    received,
                );
                return Err(StepError::Finding);
            }
        };
        let mut problems = Vec::new();
        if o.status != vhu_protocol::virtio::blk::S_OK {
            problems.push(format!("status {} (not OK)", o.status));
        }
        if o.used_len != o.expected_used_len {
            problems.push(format!(
                "used length {} but {} bytes were device-writable and written",
                o.used_len, o.expected_used_len
            ));
        }
        if !o.canary_intact {
            problems.push(
                "guest memory next to the buffers changed (write outside a device-writable buffer)"
                    .into(),
            );
        }
        let polled = self.queues.get(&idx).is_some_and(|q| !q.call_fd);
        if !o.notified && !polled {
            problems.push("the completion was not signalled on the call eventfd".into());
        }
        if !o.readonly_intact {
            problems.push("a driver-readable buffer was written".into());
        }
        if step.action == Action::BlkRead
            && step.pattern.is_some()
            && o.data.iter().any(|&b| b != pattern)
        {
            let at = o.data.iter().position(|&b| b != pattern).unwrap_or(0);
            problems.push(format!("data read differs from what was written at byte {at}: {:#04x}, wanted {pattern:#04x}", o.data[at]));
        }
        if problems.is_empty() {
            return Ok(());
        }
        self.finding(step, &format!("{what}: {}", problems.join("; ")), "status OK, used length = bytes written, only writable buffers touched, the data written", format!("{o:?}"));
        Err(StepError::Finding)
    }

    /// Replaces the call fd of running queues, then checks a completion is signalled on the
    /// new fd and not on the old one (R-RING-15).
    fn swap_call(&mut self, step: &Step) -> StepResult {
        for idx in self.queue_indices(step) {
            let mut q = self.queues.remove(&idx).ok_or_else(|| {
                StepError::Harness(format!("queue {idx} is not set up: add a `vring` step"))
            })?;
            let r = match self.session() {
                Ok(s) => q.replace_call(s),
                Err(e) => {
                    self.queues.insert(idx, q);
                    return Err(e);
                }
            };
            self.queues.insert(idx, q);
            let old = r.map_err(|e| self.session_failed(step, e))?;
            let mut read = Step::new(Action::BlkGetId);
            read.queue = Some(NumOrWord::Num(idx.into()));
            read.rule = Some(self.rule_of(step));
            self.blk(&read)?;
            if old.read().is_ok() {
                self.finding(
                    step,
                    &format!("queue {idx}: a completion was signalled on the replaced call fd"),
                    "after SET_VRING_CALL, calls go to the new eventfd only",
                    "the old eventfd was written".into(),
                );
                return Err(StepError::Finding);
            }
        }
        Ok(())
    }

    fn get_vring_base(&mut self, step: &Step) -> StepResult {
        let idx = self.queue_indices(step)[0];
        self.idle.insert(idx);
        let r = self.session()?.get_vring_base(idx.into());
        let state = r.map_err(|e| self.session_failed(step, e))?;
        let want = match &step.num {
            Some(NumOrWord::Num(n)) => Some(*n as u32),
            // Split: the next avail index. Packed: avail index and wrap (bits 0-15) and used
            // index and wrap (bits 16-31) (R-VRING-07).
            Some(NumOrWord::Word(w)) if w == "reached" => self.queues.get(&idx).map(|q| {
                let avail = u32::from(q.avail_idx());
                match (q.layout(), self.mem.as_ref()) {
                    (RingLayout::Packed, Some(mem)) => avail | u32::from(q.used_idx(mem)) << 16,
                    _ => avail,
                }
            }),
            _ => None,
        };
        if state.index != u32::from(idx) {
            self.finding_with(
                "R-VRING-08".into(),
                &format!(
                    "GET_VRING_BASE reply names ring {}, asked {idx}",
                    state.index
                ),
                "the reply's index equals the requested ring",
                format!("{state:?}"),
            );
            return Err(StepError::Finding);
        }
        if let Some(w) = want.filter(|&w| w != state.num) {
            self.finding(
                step,
                &format!(
                    "GET_VRING_BASE returned {}, the ring reached {w}",
                    state.num
                ),
                &format!("num = {w}, the next avail index the back-end would process"),
                format!("{state:?}"),
            );
            return Err(StepError::Finding);
        }
        Ok(())
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

    fn send(&mut self, step: &Step) -> StepResult {
        let req = resolve_request(step.request.as_ref())?;
        let mut body = build_body(req, step)?;
        if step.queue == Some(NumOrWord::Word("past_end".into())) {
            // The first index past the queues GET_QUEUE_NUM reported (R-MQ-04).
            let idx = self.queue_num as u32;
            match &mut body {
                Body::VringState(v) => v.index = idx,
                Body::VringAddr(a) => a.index = idx,
                Body::U64(v) => *v = (*v & !0xff) | u64::from(idx),
                _ => {}
            }
        }
        let extra = make_fds(step)?;
        let fds: Vec<BorrowedFd<'_>> = extra.sent.iter().map(AsFd::as_fd).collect();
        let r = self.session()?.request(req, &body, &fds, step.need_reply);
        drop(fds);
        drop(extra.sent);
        let default = if req.reply_kind() == ReplyKind::Always {
            Expect::Reply
        } else {
            Expect::Ok
        };
        let expect = step.expect.unwrap_or(default);
        match (expect, r) {
            (Expect::Reply, Ok(Some(m))) => self.check_value(step, &m)?,
            (Expect::Reply, Ok(None)) => return Err(StepError::Harness("expect = \"reply\" on a request sent without NEED_REPLY that has no reply of its own".into())),
            (Expect::NoReply, Ok(None)) => {
                let window = Duration::from_millis(step.window_ms.unwrap_or(300));
                let r = self.session()?.expect_silence(window);
                if let Err(e) = r {
                    self.finding(step, "a message arrived although no reply was due", "no reply at all without NEED_REPLY", e.to_string());
                    return Err(StepError::Finding);
                }
            }
            (_, Ok(m)) => {
                let ack = m.as_ref().map_or(Ack::NotRequested, |m| match m.u64() {
                    Some(0) => Ack::Ok,
                    Some(v) => Ack::Failed(v),
                    None => Ack::Failed(u64::MAX),
                });
                if let Some(m) = &m {
                    self.check_value(step, m)?;
                }
                self.judge_ack(step, Ok(ack), expect)?;
            }
            (_, Err(e)) => self.judge_ack(step, Err(e), expect)?,
        }
        if let Some(read_end) = extra.pipe_read {
            self.check_fd_closed(step, &read_end, Some(req as u32))?;
        }
        Ok(())
    }

    fn check_value(&mut self, step: &Step, m: &Message) -> StepResult {
        let mut problems = Vec::new();
        if let Some(size) = step.reply_size.filter(|&s| s as usize != m.payload.len()) {
            problems.push(format!(
                "reply payload is {} bytes, wanted {size}",
                m.payload.len()
            ));
        }
        if let Some(n) = step.reply_fds.filter(|&n| n != m.fds.len()) {
            problems.push(format!("reply carries {} fds, wanted {n}", m.fds.len()));
        }
        if let Some(flags) = step.reply_flags.filter(|&f| f != m.header.flags) {
            problems.push(format!(
                "reply flags are {:#x}, wanted exactly {flags:#x}",
                m.header.flags
            ));
        }
        let v = m.u64();
        if let Some(want) = step.value.filter(|&w| v != Some(w)) {
            problems.push(format!("reply value {v:?}, wanted {want:#x}"));
        }
        if let Some(mask) = step.value_mask.filter(|&k| v.is_none_or(|v| v & k != k)) {
            problems.push(format!("reply value {v:?} lacks bits {mask:#x}"));
        }
        if step.offered == Some(true) {
            let offer = self.session.as_ref().and_then(Session::offered_features);
            if offer.is_some() && v != offer {
                problems.push(format!(
                    "reply value {v:#x?}, but the first GET_FEATURES offered {offer:#x?}"
                ));
            }
        }
        if step.nonzero == Some(true) && v.is_none_or(|v| v == 0) {
            problems.push(format!("reply value {v:?}, wanted non-zero"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        self.finding(
            step,
            &problems.join("; "),
            "the reply the rule describes",
            format!("header {:?}, payload {:02x?}", m.header, m.payload),
        );
        Err(StepError::Finding)
    }

    fn check_fd_closed(
        &mut self,
        step: &Step,
        read_end: &OwnedFd,
        code: Option<u32>,
    ) -> StepResult {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let deadline = Instant::now() + self.opts.step_timeout;
        loop {
            let mut pfd = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut pfd, PollTimeout::from(50u8));
            let hup = pfd[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
            if hup {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.finding(
                    step,
                    "the back-end kept the fd it was sent (never closed: a leak)",
                    "the fd is closed (EOF on our pipe's read end)",
                    format!("no EOF within {:?}", self.opts.step_timeout),
                );
                // Name the message that carried the fd, not a probe sent since.
                if let (Some(code), Some(f)) = (code, self.findings.len().checked_sub(1)) {
                    self.findings[f].sent = self.sent_of(code);
                }
                return Err(StepError::Finding);
            }
        }
    }

    fn raw(&mut self, step: &Step) -> StepResult {
        let code = match step.request.as_ref() {
            Some(RequestName::Code(c)) => *c,
            other => resolve_request(other)? as u32,
        };
        let body = parse_hex(step.payload_hex.as_deref().unwrap_or(""))?;
        let header = Header {
            request: code,
            flags: step.flags.unwrap_or(1),
            size: step.size.map_or(body.len() as u32, |s| s as u32),
        };
        let extra = make_fds(step)?;
        let fds: Vec<BorrowedFd<'_>> = extra.sent.iter().map(AsFd::as_fd).collect();
        let r = self
            .session()?
            .send_raw(&RawMessage::new(header, body), &fds);
        drop(fds);
        drop(extra.sent);
        if let Err(e) = r {
            return self.judge_ack(step, Err(e), step.expect.unwrap_or(Expect::Alive));
        }
        match step.expect.unwrap_or(Expect::Alive) {
            Expect::NoReply => {
                let r = self
                    .session()?
                    .expect_silence(Duration::from_millis(step.window_ms.unwrap_or(300)));
                r.map_err(|e| self.session_failed(step, e))
            }
            Expect::Alive => {
                let _ = self
                    .session()?
                    .recv_any(Duration::from_millis(step.window_ms.unwrap_or(300)));
                self.alive(step)
            }
            expect => {
                let t = self.opts.step_timeout;
                let r = self.session()?.recv_any(t);
                let ack = r.map(|m| match m.u64() {
                    Some(0) => Ack::Ok,
                    Some(v) => Ack::Failed(v),
                    None => Ack::Failed(u64::MAX),
                });
                self.judge_ack(step, ack, expect)
            }
        }
    }

    /// The back-end still serves: on this connection if it is open, else on a new one.
    fn alive(&mut self, step: &Step) -> StepResult {
        // A finding names the message before the probe, not the probe itself.
        let trigger = self.last_sent();
        let r = self.alive_probe(step);
        if r.is_err()
            && let Some(f) = self.findings.last_mut()
        {
            f.sent = trigger;
        }
        r
    }

    fn alive_probe(&mut self, step: &Step) -> StepResult {
        if self.session()?.get_features().is_ok() {
            return Ok(());
        }
        self.archive_session();
        if self.died(
            step,
            "the back-end process died",
            "the back-end rejects or ignores the message and keeps running",
        ) {
            return Err(StepError::Finding);
        }
        let probe = match self.inst().connect() {
            Ok(stream) => {
                let mut s = self.new_session(stream);
                let r = s.get_features();
                self.session = Some(s);
                r.map(drop).map_err(|e| e.to_string())
            }
            Err(e) => Err(chain(&e)),
        };
        probe.map_err(|why| {
            self.finding(
                step,
                "the back-end no longer answers (liveness probe failed)",
                "a GET_FEATURES round trip answers after the message",
                why,
            );
            StepError::Finding
        })
    }

    /// Judges an ack-only outcome against the expectation.
    fn judge_ack(
        &mut self,
        step: &Step,
        r: Result<Ack, SessionError>,
        default: Expect,
    ) -> StepResult {
        let expect = step.expect.unwrap_or(default);
        let wants_failure = matches!(expect, Expect::AckFail | Expect::Rejected | Expect::Closed);
        match r {
            Ok(Ack::Ok) if wants_failure => {
                self.finding(
                    step,
                    "the back-end acked 0 (success) where the rule requires a failure",
                    "a non-zero ack, or the connection closed",
                    "ack 0".into(),
                );
                Err(StepError::Finding)
            }
            Ok(Ack::Failed(v)) if !wants_failure && expect != Expect::Alive => {
                self.finding(
                    step,
                    &format!("the back-end acked {v} (failure) for a valid request"),
                    "an ack of 0",
                    format!("ack {v}"),
                );
                Err(StepError::Finding)
            }
            Ok(Ack::NotRequested) if wants_failure => {
                self.notes.push(format!("step {}: no ack could be asked for (REPLY_ACK not negotiated); rejection not observable", self.step_no));
                Ok(())
            }
            Ok(_) if expect == Expect::Alive => self.alive(step),
            Ok(_) if expect == Expect::Closed => {
                self.finding(
                    step,
                    "the connection stayed open",
                    "the back-end closes the connection",
                    "an ack".into(),
                );
                Err(StepError::Finding)
            }
            Ok(_) => Ok(()),
            Err(SessionError::Closed { .. }) if wants_failure || expect == Expect::Alive => {
                let died = self.inst().is_spawned()
                    && self.died(
                        step,
                        "the back-end process died instead of rejecting the message",
                        "a non-zero ack or a closed connection, the process alive",
                    );
                if died {
                    return Err(StepError::Finding);
                }
                self.archive_session();
                if expect == Expect::Alive {
                    self.alive(step)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(self.session_failed(step, e)),
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

fn select_bits(sel: &NumOrWordList, lookup: fn(&str) -> Option<u64>, all: u64) -> u64 {
    match sel {
        NumOrWordList::Word(w) if w == "all" => all,
        NumOrWordList::Word(w) => lookup(w).unwrap_or(0),
        NumOrWordList::List(l) => l.iter().filter_map(|n| lookup(n)).fold(0, |a, b| a | b),
    }
}

/// A request by code, spec name (with or without `VHOST_USER_`) or CamelCase name.
fn resolve_request(name: Option<&RequestName>) -> Result<FrontendReq, StepError> {
    name.ok_or_else(|| StepError::Harness("step needs `request`".into()))?
        .resolve()
        .map_err(StepError::Harness)
}

/// The typed body of a `send` step, from its `body` table (the payload struct's field names).
fn build_body(req: FrontendReq, step: &Step) -> Result<Body, StepError> {
    let table = step.body.clone().unwrap_or_default();
    let bad = |e: toml::de::Error| StepError::Harness(format!("body of {}: {e}", req.spec_name()));
    let v = toml::Value::Table(table);
    Ok(match req.request_body() {
        BodyKind::Empty => Body::Empty,
        BodyKind::U64 => Body::U64(
            v.try_into::<vhu_protocol::wire::payload::U64>()
                .map_err(bad)?
                .value,
        ),
        BodyKind::VringState => Body::VringState(v.try_into().map_err(bad)?),
        BodyKind::VringAddr => Body::VringAddr(v.try_into().map_err(bad)?),
        BodyKind::SingleRegion => Body::SingleRegion(v.try_into().map_err(bad)?),
        BodyKind::Log => Body::Log(v.try_into().map_err(bad)?),
        BodyKind::Inflight => Body::Inflight(v.try_into().map_err(bad)?),
        BodyKind::DeviceState => Body::DeviceState(v.try_into().map_err(bad)?),
        BodyKind::SharedObject => Body::SharedObject(v.try_into().map_err(bad)?),
        BodyKind::Iotlb => Body::Iotlb(v.try_into().map_err(bad)?),
        BodyKind::Config => {
            let h: ConfigHeader = v.try_into().map_err(bad)?;
            Body::Config(h, vec![0; h.size as usize])
        }
        BodyKind::MemTable => Body::MemTable(vec![]),
        other => {
            return Err(StepError::Harness(format!(
                "a `send` body of kind {other:?} is not supported; use a `raw` step"
            )));
        }
    })
}

struct ExtraFds {
    sent: Vec<OwnedFd>,
    pipe_read: Option<OwnedFd>,
}

fn make_fds(step: &Step) -> Result<ExtraFds, StepError> {
    let n = step.fds.unwrap_or(0);
    let mut out = ExtraFds {
        sent: vec![],
        pipe_read: None,
    };
    let local = |what: &str, e: &dyn std::fmt::Display| {
        StepError::Harness(format!("cannot create {what}: {e}"))
    };
    for _ in 0..n {
        match step.fd_kind.as_deref().unwrap_or("eventfd") {
            "pipe" => {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| local("a pipe", &e))?;
                out.pipe_read.get_or_insert(r);
                out.sent.push(w);
            }
            "memfd" => {
                let m = memfd::MemfdOptions::default()
                    .create("vhu-extra")
                    .map_err(|e| local("a memfd", &e))?;
                out.sent.push(m.into_file().into());
            }
            _ => {
                let e = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| local("an eventfd", &e))?;
                out.sent.push(e.into());
            }
        }
    }
    Ok(out)
}

fn parse_hex(s: &str) -> Result<Vec<u8>, StepError> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        return Err(StepError::Harness(
            "payload_hex has an odd number of digits".into(),
        ));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|e| StepError::Harness(format!("payload_hex: {e}")))
        })
        .collect()
}
