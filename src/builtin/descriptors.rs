//! Descriptor-level abuse on an enabled ring (checklist R-ROB-08; spec/known-bugs.md: the
//! descriptor loops and out-of-range indices behind DPDK's CVE-2020-10726 family). Each
//! scenario writes one malformed chain into ring 0 of a working session and kicks. The
//! back-end may refuse it any way the spec allows (stop the ring, signal its err eventfd,
//! close the connection, exit with a status); it must not die by a signal (R-CRASH-01), hang,
//! write guest memory outside the device-writable buffers and the used ring (R-DEV-01), or
//! stop serving a new, valid session.
//!
//! The chains are the fuzzer's [`ChainCase`]s, written by the fuzzer's own code, on the ring the
//! driver makes requests on (blk and rng ring 0; net, fs and vsock ring 1: transmitq, the first
//! request queue, tx). After them a new session must work: for blk the fuzz oracle's write and
//! read-back; for the other devices a whole control-plane session (negotiation, memory table,
//! ring set up), since their data paths need their own drivers.

use std::time::Duration;

use vhu_protocol::virtio::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

use super::{Builtin, BuiltinMeta};
use crate::device::DeviceType;
use crate::engine::{Ctx, StepError, chain};
use crate::fuzz::case::{Addr, ChainCase, Desc, Len, RING_SIZE};
use crate::fuzz::{exec, oracle};
use crate::rules::id;
use crate::scenario::{Action, Level, Step};
use crate::target::ProcessState;

/// One kind of malformed chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abuse {
    /// Two descriptors whose `next` fields point at each other.
    NextLoop,
    /// A `next` past the ring's size.
    NextOutOfRange,
    /// An avail ring entry naming a head past the ring's size.
    HeadOutOfRange,
    /// Zero-length buffers.
    ZeroLength,
    /// An indirect table whose length is not a multiple of 16.
    IndirectOddLength,
    /// An indirect descriptor inside an indirect table.
    NestedIndirect,
    /// A buffer at an address no region covers.
    OutsideMemory,
    /// A device-writable buffer that runs past the end of the last region.
    PastEndOfMemory,
}

/// The scenario for one [`Abuse`].
#[derive(Debug)]
pub struct Descriptors(pub Abuse);

fn d(addr: Addr, len: Len, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

impl Abuse {
    /// The chain: a blk read (header in buffer 0) where a device that accepts it moves data.
    fn case(self) -> ChainCase {
        let (next, write, indirect) =
            (VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT);
        let header = d(Addr::Buffer(0), Len::Value(16), next, 1);
        let mut c = ChainCase {
            table: vec![],
            indirect: vec![],
            nested: vec![],
            heads: vec![0],
        };
        match self {
            Self::NextLoop => {
                c.table = vec![header, d(Addr::Buffer(1), Len::Exact, next | write, 0)];
            }
            Self::NextOutOfRange => {
                c.table = vec![d(Addr::Buffer(0), Len::Value(16), next, 200)];
            }
            Self::HeadOutOfRange => {
                c.table = vec![header, d(Addr::Buffer(1), Len::Exact, write, 0)];
                c.heads = vec![100];
            }
            Self::ZeroLength => {
                c.table = vec![
                    d(Addr::Buffer(0), Len::Value(0), next, 1),
                    d(Addr::Buffer(1), Len::Value(0), next | write, 2),
                    d(Addr::Buffer(2), Len::Value(0), write, 0),
                ];
            }
            Self::IndirectOddLength => {
                c.table = vec![d(Addr::Indirect, Len::Value(24), indirect, 0)];
                c.indirect = vec![
                    d(Addr::Buffer(0), Len::Value(16), next, 1),
                    d(Addr::Buffer(1), Len::Exact, write, 0),
                ];
            }
            Self::NestedIndirect => {
                c.table = vec![d(Addr::Indirect, Len::Exact, indirect, 0)];
                c.indirect = vec![d(Addr::Nested, Len::Exact, indirect, 0)];
                c.nested = vec![
                    d(Addr::Buffer(0), Len::Value(16), next, 1),
                    d(Addr::Buffer(1), Len::Exact, write, 0),
                ];
            }
            Self::OutsideMemory => {
                c.table = vec![
                    header,
                    d(Addr::Raw(0x7f00_0000_0000), Len::Value(4096), write, 0),
                ];
            }
            Self::PastEndOfMemory => {
                c.table = vec![header, d(Addr::PastEnd, Len::Value(4096), write, 0)];
            }
        }
        c
    }
}

/// What every [`Descriptors`] scenario declares; each variant adds its id and title.
const DESCRIPTORS: BuiltinMeta = BuiltinMeta {
    rules: &[id::R_ROB_08, id::R_DEV_01],
    level: Level::Rob,
    fresh_process: true,
    description: "For a known device type. A working session (negotiation, the default memory, the ring \
the driver makes requests on, 64 entries, enabled: ring 0 for blk and rng, 1 for net, fs and \
vsock) gets the malformed chain in its descriptor table and avail ring, and a kick. Then: a \
GET_FEATURES round trip on that connection (a close is a refusal the spec allows), guest memory \
compared with a snapshot (only device-writable buffers and the used ring may change: R-DEV-01, \
MUST), and, after disconnecting, a new session that must work unless the process ended with a \
status: for blk a write and read-back, for the others negotiation, memory table and ring setup. \
A death by a signal is a crash (R-CRASH-01).",
    ..BuiltinMeta::DEFAULT
};

impl Abuse {
    const NEXT_LOOP: BuiltinMeta = BuiltinMeta {
        id: "descriptors/next-loop",
        title: "A chain whose next fields loop (0 -> 1 -> 0) neither hangs nor crashes the back-end",
        ..DESCRIPTORS
    };
    const NEXT_OUT_OF_RANGE: BuiltinMeta = BuiltinMeta {
        id: "descriptors/next-out-of-range",
        title: "A descriptor whose next is past the ring size is refused without a crash",
        ..DESCRIPTORS
    };
    const HEAD_OUT_OF_RANGE: BuiltinMeta = BuiltinMeta {
        id: "descriptors/head-out-of-range",
        title: "An avail entry naming a head past the ring size is refused without a crash",
        ..DESCRIPTORS
    };
    const ZERO_LENGTH: BuiltinMeta = BuiltinMeta {
        id: "descriptors/zero-length",
        title: "A blk read chain of zero-length buffers is handled without a crash or a write outside them",
        ..DESCRIPTORS
    };
    const INDIRECT_ODD_LENGTH: BuiltinMeta = BuiltinMeta {
        id: "descriptors/indirect-odd-length",
        title: "An indirect table of 24 bytes (not a multiple of 16) is refused without a crash",
        ..DESCRIPTORS
    };
    const NESTED_INDIRECT: BuiltinMeta = BuiltinMeta {
        id: "descriptors/nested-indirect",
        title: "An indirect descriptor inside an indirect table is refused without a crash",
        ..DESCRIPTORS
    };
    const OUTSIDE_MEMORY: BuiltinMeta = BuiltinMeta {
        id: "descriptors/outside-memory",
        title: "A buffer at a guest address no region covers is refused without a crash",
        ..DESCRIPTORS
    };
    const PAST_END_OF_MEMORY: BuiltinMeta = BuiltinMeta {
        id: "descriptors/past-end-of-memory",
        title: "A writable buffer running past the end of guest memory is refused without a write beyond it",
        ..DESCRIPTORS
    };
}

impl Builtin for Descriptors {
    fn meta(&self) -> &'static BuiltinMeta {
        match self.0 {
            Abuse::NextLoop => &Abuse::NEXT_LOOP,
            Abuse::NextOutOfRange => &Abuse::NEXT_OUT_OF_RANGE,
            Abuse::HeadOutOfRange => &Abuse::HEAD_OUT_OF_RANGE,
            Abuse::ZeroLength => &Abuse::ZERO_LENGTH,
            Abuse::IndirectOddLength => &Abuse::INDIRECT_ODD_LENGTH,
            Abuse::NestedIndirect => &Abuse::NESTED_INDIRECT,
            Abuse::OutsideMemory => &Abuse::OUTSIDE_MEMORY,
            Abuse::PastEndOfMemory => &Abuse::PAST_END_OF_MEMORY,
        }
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let Some(device) = ctx.device() else {
            return Err(StepError::NotApplicable(
                "device type unknown: pass --device TYPE (the ring to abuse is the one the device's driver makes requests on)".into(),
            ));
        };
        let index = request_ring(device);
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        let features = ctx.session_mut()?.acked_features().unwrap_or(0);
        let timeout = ctx.step_timeout();
        let s = ctx.session_mut()?;
        let r = oracle::memory(s).and_then(|mut mem| {
            let size = RING_SIZE.min(128);
            ring_at(s, &mut mem, features, index, size).map(|q| (mem, q))
        });
        let (mut mem, q) = r.map_err(|e| ctx.setup_error(id::R_VRING_01, e))?;
        let snap = exec::write_chains(&mut mem, &q, &self.0.case())
            .map_err(|e| StepError::Harness(chain(&e)))?;
        q.kick();
        std::thread::sleep(Duration::from_millis(50));
        ctx.mark(id::R_ROB_08);
        // The connection: answered, or closed (a refusal).
        let probe = ctx.session_mut()?.get_features();
        match probe {
            Ok(_) => {}
            Err(vhu_mock_frontend::SessionError::Closed { .. }) => {
                ctx.note("the back-end closed the connection after the chain (a refusal)".into());
            }
            Err(e) => return Err(ctx.session_error(id::R_ROB_08, e)),
        }
        ctx.mark(id::R_DEV_01);
        if let Some(f) = snap.corrupted(&mem) {
            return Err(ctx.fail(
                id::R_DEV_01,
                "after the malformed chain, guest memory changed outside every device-writable buffer",
                "no write outside the device-writable buffers of a chain and the used ring",
                f.detail,
            ));
        }
        ctx.step(&Step::of(Action::Disconnect(Default::default())))?;
        // No wait for an exit here: a process still running is tried at once, and one that
        // is on its way out fails the new session and is told apart below.
        let st = ctx.target().state();
        if ended(ctx, st, "after the malformed chain") {
            return Ok(());
        }
        let fresh = if device == DeviceType::Block {
            oracle::fresh_session(ctx.target(), timeout, 0x3c).map(drop)
        } else {
            control_session(ctx.target(), timeout)
        };
        if let Err(f) = fresh {
            let st = ctx.target().wait_exit(Duration::from_millis(100));
            if ended(ctx, st, "after its front-end left") {
                return Ok(());
            }
            return Err(ctx.fail(
                id::R_ROB_08,
                "after the malformed chain, a new session no longer works",
                "a new connection completes a session (for blk, with a write and read-back)",
                f.detail,
            ));
        }
        Ok(())
    }
}

/// Whether the back-end process has ended: by a status (allowed, noted `when`) or by a signal
/// (the engine reports the crash).
fn ended(ctx: &mut Ctx<'_>, st: ProcessState, when: &str) -> bool {
    match st {
        ProcessState::Exited(_) => {
            ctx.note(format!("the back-end ended ({st}) {when}: allowed"));
            true
        }
        ProcessState::Signaled(_) => true,
        ProcessState::Running | ProcessState::Unknown => false,
    }
}

/// The ring a device's driver makes requests on (virtio 1.2 section 5): what a malformed chain
/// is offered on.
fn request_ring(device: DeviceType) -> u16 {
    match device {
        DeviceType::Net | DeviceType::Fs | DeviceType::Vsock => 1,
        _ => 0,
    }
}

/// Ring `index` of `size` entries set up and, with bit 30, enabled.
fn ring_at(
    s: &mut vhu_mock_frontend::Session,
    mem: &mut vhu_mock_frontend::GuestMemory,
    features: u64,
    index: u16,
    size: u16,
) -> Result<vhu_mock_frontend::DriverQueue, vhu_mock_frontend::SessionError> {
    use vhu_mock_frontend::{DriverQueue, RingLayout};
    use vhu_protocol::{FrontendReq, VirtioFeatures};
    let event_idx = features & VirtioFeatures::EVENT_IDX.bits() != 0;
    let mut q = DriverQueue::new(mem, index, size, RingLayout::Split, event_idx)?;
    q.setup(s, mem, 0)?;
    if features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        s.checked(FrontendReq::SetVringEnable, |s| {
            s.set_vring_enable(index.into(), true)
        })?;
    }
    Ok(q)
}

/// A whole control-plane session on a new connection: negotiation, memory table, ring 0 set
/// up, a GET_FEATURES round trip.
fn control_session(
    inst: &mut crate::target::Instance,
    timeout: Duration,
) -> Result<(), crate::fuzz::oracle::Failure> {
    use crate::fuzz::oracle::{Failure, FailureKind};
    let unusable = |what: &str, e: &dyn std::error::Error| {
        Failure::new(
            FailureKind::Unusable,
            format!("a fresh connection {what}: {}", chain(e)),
        )
    };
    let stream = inst.connect().map_err(|e| unusable("cannot be made", &e))?;
    let mut s = oracle::session(stream, timeout);
    let n = oracle::negotiate(&mut s).map_err(|e| unusable("fails to negotiate", &e))?;
    let mut mem = oracle::memory(&mut s).map_err(|e| unusable("fails SET_MEM_TABLE", &e))?;
    ring_at(&mut s, &mut mem, n.features, 0, RING_SIZE)
        .map_err(|e| unusable("fails to set up ring 0", &e))?;
    s.get_features()
        .map(drop)
        .map_err(|e| unusable("does not answer GET_FEATURES", &e))
}
