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

mod ack;
mod backend_requests;
mod body;
mod chains;
mod connection;
mod console;
mod datapath;
mod extra_fds;
mod findings;
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

/// How long the end of a scenario waits for the back-end to close the connection the
/// front-end left (most close it within a millisecond; one that keeps it costs this).
const LEAVE_WITHIN: Duration = Duration::from_millis(250);

/// Why a step (or a built-in scenario) stopped the scenario early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A check failed: its finding, which stops the scenario (the interpreter records it).
    #[error("{}: {}", .0.rule, .0.summary)]
    Finding(Box<Finding>),
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

impl StepError {
    /// The finding names `sent` as the message its check is about (rather than the last one
    /// sent, e.g. a probe sent since).
    #[must_use]
    pub fn about(mut self, sent: String) -> Self {
        if let StepError::Finding(f) = &mut self {
            f.sent = sent;
        }
        self
    }
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
            let mut r = b.run(self);
            if let Err(StepError::Finding(f)) = r {
                self.push(*f);
                r = Ok(());
            } else if r.is_ok() {
                // A built-in's body is its check: having run to the end, it checked its rules.
                for &rule in b.meta().rules {
                    self.mark(rule);
                }
            }
            self.check_process();
            return match r {
                Ok(()) => Ok(()),
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
                let e = self.finding(
                    step,
                    "scenario deadline passed before this step: the back-end is too slow or hangs",
                    "every step within the deadline",
                    "time ran out".into(),
                );
                self.record(e);
                return Ok(false);
            }
            match self.step_inner(step).and_then(|()| self.liveness(step)) {
                Ok(()) => {}
                Err(StepError::Finding(f)) => {
                    self.push(*f);
                    return Ok(false);
                }
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
        if let Some(s) = self.archive_session() {
            // Leave as a front-end does and let the back-end handle it: a teardown that
            // crashes has then crashed by the engine's short watch, however loaded the machine.
            s.leave(LEAVE_WITHIN);
        }
        let checked = self.checked.into_iter().collect();
        (self.findings, self.notes, self.archive, checked)
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
}
