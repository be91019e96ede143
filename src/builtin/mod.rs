//! Built-in scenarios: procedures too involved for the file format (a data path over several
//! requests, `/proc/<pid>` hygiene sampling), written in Rust against the same step helpers
//! ([`Ctx::step`]) the file interpreter uses. They carry the same metadata as a scenario file
//! (checklist section 4 rule ids, level, required features) and are listed, filtered, run and
//! reported exactly like file scenarios.

mod blk;
mod channel;
mod counts;
mod descriptors;
mod framing;
mod hygiene;
mod inflight;
mod log;
mod memory;
pub(crate) mod program;
mod ring_state;
mod robustness;
mod suspended;

use crate::device::DeviceType;
use crate::engine::{Ctx, StepError};
use crate::rules::{RuleId, id};
use crate::scenario::model::{Requires, ScenarioFile};
use crate::scenario::{Level, Scenario};

/// What a built-in scenario declares about itself, as a scenario file's header would: a
/// const per type (per variant for a type that is a family of scenarios), so the metadata is
/// data to read, not code to run.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinMeta {
    /// Stable, path-like id (`robustness/call-fd-flood`).
    pub id: &'static str,
    /// One line saying what is checked.
    pub title: &'static str,
    /// Checklist rule ids; every finding cites one of them.
    pub rules: &'static [RuleId],
    /// Weight of a failed check.
    pub level: Level,
    /// Features the back-end must offer, by name, else the scenario is skipped.
    pub requires: Needs,
    /// The device type it is written for (it sends that device's requests), if any.
    pub device: Option<DeviceType>,
    /// Needs its own back-end process (crash risk).
    pub fresh_process: bool,
    /// Longer explanation, shown by `--list -v`.
    pub description: &'static str,
}

/// Feature names a built-in needs ([`BuiltinMeta::requires`]), as in a scenario file's
/// `[requires]`.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    /// Virtio feature names (`LOG_ALL`).
    pub virtio: &'static [&'static str],
    /// Protocol feature names (`REPLY_ACK`).
    pub protocol: &'static [&'static str],
}

impl Needs {
    /// No feature.
    pub const NONE: Self = Self {
        virtio: &[],
        protocol: &[],
    };

    /// These protocol features only.
    pub const fn protocol(names: &'static [&'static str]) -> Self {
        Self {
            virtio: &[],
            protocol: names,
        }
    }
}

impl BuiltinMeta {
    /// What a built-in declares unless it says otherwise: MUST, no feature, any device, the
    /// process of the run's target; the base of each const (`..BuiltinMeta::DEFAULT`).
    pub const DEFAULT: Self = Self {
        id: "",
        title: "",
        rules: &[],
        level: Level::Must,
        requires: Needs::NONE,
        device: None,
        fresh_process: false,
        description: "",
    };
}

/// A scenario written in Rust: its metadata, and the procedure.
pub trait Builtin: Sync + std::fmt::Debug {
    /// What it declares ([`BuiltinMeta`]).
    fn meta(&self) -> &'static BuiltinMeta;
    /// The procedure. A check that fails returns its finding (`Err(ctx.fail(..))`) and stops
    /// the scenario; one that lets it go on records it (`ctx.record`, `ctx.report`).
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError>;
}

/// Every built-in scenario.
pub fn all() -> &'static [&'static dyn Builtin] {
    &[
        &blk::ScatteredPatterns,
        &channel::ReplacedChannelClosed,
        &channel::FrontendClosesChannel,
        &counts::MidSession(counts::Lie::MemTableRegions),
        &counts::MidSession(counts::Lie::GetConfigSize),
        &counts::MidSession(counts::Lie::SetConfigSize),
        &counts::MidSession(counts::Lie::InflightCounts),
        &descriptors::Descriptors(descriptors::Abuse::NextLoop),
        &descriptors::Descriptors(descriptors::Abuse::NextOutOfRange),
        &descriptors::Descriptors(descriptors::Abuse::HeadOutOfRange),
        &descriptors::Descriptors(descriptors::Abuse::ZeroLength),
        &descriptors::Descriptors(descriptors::Abuse::IndirectOddLength),
        &descriptors::Descriptors(descriptors::Abuse::NestedIndirect),
        &descriptors::Descriptors(descriptors::Abuse::OutsideMemory),
        &descriptors::Descriptors(descriptors::Abuse::PastEndOfMemory),
        &framing::Framing(framing::Cut::HeaderApart),
        &framing::Framing(framing::Cut::Coalesced),
        &framing::Framing(framing::Cut::ByteByByte),
        &framing::Framing(framing::Cut::FdOnFirstByte),
        &framing::ClosedMidMessage(framing::Cutoff::AfterHeader),
        &framing::ClosedMidMessage(framing::Cutoff::MidPayload),
        &hygiene::AddRemRepeated,
        &hygiene::DisconnectReleases,
        &hygiene::RemMemRegReleases,
        &hygiene::ServesAfterDisconnect,
        &inflight::Bookkeeping,
        &inflight::ResubmitAfterReconnect,
        &inflight::SkipDrainKeepsTaken,
        &log::LogBlkRead,
        &log::LogReplaceUnmaps,
        &log::LogTooSmall,
        &memory::TableReplaceUnmaps,
        &memory::AddPastMaxSlots,
        &program::PrintCapabilities,
        &program::InheritedFd,
        &program::SocketPathAndFd,
        &program::Sigterm,
        &program::SocketPathQuietStdio,
        &program::UnusableSocketPath,
        &robustness::CallFdFlood,
        &suspended::Suspended(suspended::When::Stopped),
        &suspended::Suspended(suspended::When::AfterSave),
        &ring_state::RingStart(ring_state::Probe::NotStartedBeforeKick),
        &ring_state::RingStart(ring_state::Probe::AvailableBeforeStart),
        &ring_state::BaseAfterInflight,
    ]
}

/// The scenario a built-in stands for: its metadata as a scenario file without steps.
pub fn to_scenario(b: &'static dyn Builtin) -> Scenario {
    let m = b.meta();
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    Scenario {
        spec: ScenarioFile {
            id: m.id.to_string(),
            title: m.title.to_string(),
            rules: m.rules.to_vec(),
            level: m.level,
            device: m.device,
            not_device: None,
            requires: Requires {
                virtio: names(m.requires.virtio),
                protocol: names(m.requires.protocol),
            },
            fresh_process: m.fresh_process,
            timeout_ms: None,
            description: m.description.to_string(),
            steps: vec![],
        },
        source: format!("builtin:{}", m.id),
        builtin: Some(b),
    }
}

/// The usual opening: negotiation, the default two-region memory layout, and (when `queue` is
/// set) queue 0 set up and enabled.
fn clean_session(ctx: &mut Ctx<'_>, queue: bool) -> Result<(), StepError> {
    use crate::scenario::{Action, Step};
    ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
    ctx.step(&Step::of(Action::Memory(Default::default())))?;
    if queue {
        ctx.step(&Step::of(Action::Vring(Default::default())))?;
    }
    Ok(())
}

/// The default two-region memory, announced with SET_MEM_TABLE.
fn default_memory(ctx: &mut Ctx<'_>) -> Result<vhu_mock_frontend::GuestMemory, StepError> {
    use vhu_mock_frontend::GuestMemory;
    let mem = GuestMemory::new(&crate::engine::session::default_layout())
        .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
    let r = ctx.session_mut()?.set_mem_table(&mem);
    r.map_err(|e| ctx.setup_error(id::R_MEM_01, e))?;
    Ok(mem)
}

/// Queue 0 (split, 128) in `mem`, set up and enabled, with `configure` applied to it first
/// (logging, fds...); a refused setup cites `rule`. For built-ins that drive the ring themselves.
fn start_queue(
    ctx: &mut Ctx<'_>,
    mem: &mut vhu_mock_frontend::GuestMemory,
    features: u64,
    rule: crate::rules::RuleId,
    configure: impl FnOnce(&mut vhu_mock_frontend::DriverQueue),
) -> Result<vhu_mock_frontend::DriverQueue, StepError> {
    use vhu_mock_frontend::{DriverQueue, RingLayout};
    use vhu_protocol::{FrontendReq, VirtioFeatures};
    let event_idx = features & VirtioFeatures::EVENT_IDX.bits() != 0;
    let mut q = DriverQueue::new(mem, 0, ctx.queue_size(), RingLayout::Split, event_idx)
        .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
    configure(&mut q);
    let s = ctx.session_mut()?;
    let r = q
        .setup(s, mem, 0)
        .and_then(|()| s.checked(FrontendReq::SetVringEnable, |s| s.set_vring_enable(0, true)));
    r.map_err(|e| ctx.setup_error(rule, e))?;
    Ok(q)
}

/// Samples a `/proc/<pid>` count until it settles at or below `bound`, for up to `within`
/// (a back-end may close or unmap asynchronously); returns the last sample.
fn settle(
    ctx: &mut Ctx<'_>,
    sample: fn(&crate::target::Instance) -> Option<usize>,
    bound: usize,
    within: std::time::Duration,
) -> Option<usize> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = sample(ctx.target())?;
        if n <= bound || std::time::Instant::now() >= deadline {
            return Some(n);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The reason a hygiene scenario does not apply outside spawn mode.
fn needs_process(ctx: &mut Ctx<'_>) -> Result<(), StepError> {
    let t = ctx.target();
    if t.is_spawned() && t.fd_count().is_some() && t.map_count().is_some() {
        Ok(())
    } else {
        Err(StepError::NotApplicable(
            "needs a spawned back-end (--spawn) whose /proc/<pid> can be sampled".into(),
        ))
    }
}
