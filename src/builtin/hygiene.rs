//! Back-end process hygiene in spawn mode: what a message should release is looked up by inode
//! in `/proc/<pid>/maps` and `/proc/<pid>/fd` of the back-end (a region's memfd is identified
//! exactly, not by counts), and a message repeated a thousand times must not grow the process.

use crate::rules::id;
use std::time::{Duration, Instant};

use super::{Builtin, BuiltinMeta, Needs, clean_session, needs_process, settle};
use crate::engine::{Ctx, StepError};
use crate::scenario::model::{AddMemRegArgs, MemoryArgs, RemMemRegArgs, Via};
use crate::scenario::{Action, Step};
use crate::target::Instance;

/// How long a back-end may take to unmap and close after it acked.
const RELEASE_WITHIN: Duration = Duration::from_millis(1000);

/// Waits until the back-end neither maps nor holds the memfd with inode `ino`; returns what
/// it still had at the deadline.
pub(super) fn released(ctx: &mut Ctx<'_>, ino: u64) -> Option<(usize, usize)> {
    let deadline = Instant::now() + RELEASE_WITHIN;
    loop {
        let maps = ctx.target().maps_of_inode(ino)?;
        let fds = ctx.target().fds_of_inode(ino)?;
        if (maps == 0 && fds == 0) || Instant::now() >= deadline {
            return Some((maps, fds));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// REM_MEM_REG unmaps the region and closes its fd (R-MEM-11), checked by inode.
#[derive(Debug)]
pub struct RemMemRegReleases;

/// What [`RemMemRegReleases`] declares.
const REM_MEM_REG_RELEASES_META: BuiltinMeta = BuiltinMeta {
    id: "hygiene/rem-mem-reg-releases",
    title: "After REM_MEM_REG the back-end neither maps the region's memfd nor holds its fd",
    rules: &[id::R_MEM_11],
    requires: Needs::protocol(&["CONFIGURE_MEM_SLOTS", "REPLY_ACK"]),
    description: "Spawn mode only. Two regions are added with ADD_MEM_REG; the second one's memfd is found \
by inode in /proc/<pid>/maps and /proc/<pid>/fd. After REM_MEM_REG of that region is acked, the \
back-end must have unmapped it and closed the fd within a second.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for RemMemRegReleases {
    fn meta(&self) -> &'static BuiltinMeta {
        &REM_MEM_REG_RELEASES_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        needs_process(ctx)?;
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        ctx.step(&add_mem_reg_layout())?;
        let Some(&ino) = ctx.region_inodes().get(1) else {
            return Err(StepError::Harness("the layout has no second region".into()));
        };
        let held = ctx.target().maps_of_inode(ino).unwrap_or(0)
            + ctx.target().fds_of_inode(ino).unwrap_or(0);
        if held == 0 {
            ctx.note("the back-end neither maps nor holds the added region's memfd (it may copy or map lazily): nothing to release".into());
        }
        ctx.step(&remove_second())?;
        match released(ctx, ino) {
            Some((0, 0)) | None => Ok(()),
            Some((maps, fds)) => Err(ctx.fail(
                id::R_MEM_11,
                "the removed region is still mapped or its fd still open",
                "no mapping of the region's memfd and no fd on it once REM_MEM_REG is acked",
                format!("{RELEASE_WITHIN:?} after the ack: {maps} mappings and {fds} fds of memfd inode {ino}"),
            )),
        }
    }
}

/// A disconnect releases the session's guest memory (R-ROB-09).
#[derive(Debug)]
pub struct DisconnectReleases;

/// What [`DisconnectReleases`] declares.
const DISCONNECT_RELEASES_META: BuiltinMeta = BuiltinMeta {
    id: "hygiene/disconnect-releases-memory",
    title: "After the front-end disconnects, the back-end drops the session's guest memory",
    rules: &[id::R_ROB_09],
    level: crate::scenario::Level::Rob,
    device: Some(crate::device::DeviceType::Block),
    description: "Spawn mode only. A full session (memory table, queue 0 running, one request), then the \
front-end closes the connection. The back-end must unmap every region's memfd and close its fds \
(looked up by inode) and then serve a new session: memory of a gone front-end pinned in a \
long-running back-end is a leak per reconnect.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for DisconnectReleases {
    fn meta(&self) -> &'static BuiltinMeta {
        &DISCONNECT_RELEASES_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        needs_process(ctx)?;
        clean_session(ctx, true)?;
        ctx.step(&Step::of(Action::BlkGetId(Default::default())))?;
        let inodes = ctx.region_inodes();
        ctx.step(&Step::of(Action::Disconnect(Default::default())))?;
        let mut kept = Vec::new();
        for ino in inodes {
            if let Some((maps, fds)) = released(ctx, ino).filter(|&(m, f)| m + f > 0) {
                kept.push(format!("inode {ino}: {maps} mappings, {fds} fds"));
            }
        }
        if !kept.is_empty() {
            return Err(ctx.fail(
                id::R_ROB_09,
                "guest memory of a disconnected front-end stays mapped or open",
                "every region unmapped and its fd closed once the connection is gone",
                format!(
                    "{RELEASE_WITHIN:?} after the disconnect: {}",
                    kept.join("; ")
                ),
            ));
        }
        ctx.step(&Step::of(Action::Reconnect(Default::default())))?;
        clean_session(ctx, true)?;
        ctx.step(&Step::of(Action::BlkGetId(Default::default())))
    }
}

/// ADD_MEM_REG / REM_MEM_REG a thousand times: no growth (R-MEM-11).
#[derive(Debug)]
pub struct AddRemRepeated;

/// Add/remove cycles.
const CYCLES: usize = 1000;
/// Growth tolerated (allocator arenas, lazily opened files).
const SLACK: usize = 8;

/// What [`AddRemRepeated`] declares.
const ADD_REM_REPEATED_META: BuiltinMeta = BuiltinMeta {
    id: "hygiene/add-rem-repeated",
    title: "1,000 ADD_MEM_REG / REM_MEM_REG cycles do not grow the back-end's fds or mappings",
    rules: &[id::R_MEM_11],
    requires: Needs::protocol(&["CONFIGURE_MEM_SLOTS", "REPLY_ACK"]),
    description: "Spawn mode only. The second region of the default layout is added and removed 1,000 \
times; /proc/<pid>/fd and /proc/<pid>/maps may not grow by more than a small slack.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for AddRemRepeated {
    fn meta(&self) -> &'static BuiltinMeta {
        &ADD_REM_REPEATED_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        needs_process(ctx)?;
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        ctx.step(&add_mem_reg_layout())?;
        std::thread::sleep(Duration::from_millis(50));
        let (Some(maps0), Some(fds0)) = (ctx.target().map_count(), ctx.target().fd_count()) else {
            return Err(StepError::NotApplicable("/proc/<pid> vanished".into()));
        };
        let rem = remove_second();
        let again = Step::of(Action::AddMemReg(AddMemRegArgs { region: 1 }));
        for _ in 0..CYCLES {
            ctx.step(&rem)?;
            ctx.step(&again)?;
        }
        ctx.step(&Step::of(Action::Probe(Default::default())))?;
        let within = Duration::from_millis(500);
        let maps = settle(ctx, Instance::map_count, maps0 + SLACK, within).unwrap_or(maps0);
        let fds = settle(ctx, Instance::fd_count, fds0 + SLACK, within).unwrap_or(fds0);
        ctx.note(format!(
            "after {CYCLES} REM/ADD cycles: mappings {maps0} -> {maps}, fds {fds0} -> {fds}"
        ));
        if maps > maps0 + SLACK || fds > fds0 + SLACK {
            return Err(ctx.fail(
                id::R_MEM_11,
                &format!(
                    "{CYCLES} REM/ADD cycles grew mappings {maps0} -> {maps}, fds {fds0} -> {fds}"
                ),
                "a removed region is unmapped and its fd closed (counts stable)",
                format!("/proc/<pid>: maps {maps0} -> {maps}, fds {fds0} -> {fds}"),
            ));
        }
        Ok(())
    }
}

/// A back-end that listens keeps serving after its front-end leaves (R-ROB-09): the one place a
/// back-end that exits on disconnect (as virtiofsd does, a policy the spec allows) is reported;
/// every other scenario runs on a fresh process, and those that need a reconnect are skipped.
#[derive(Debug)]
pub struct ServesAfterDisconnect;

/// What [`ServesAfterDisconnect`] declares.
const SERVES_AFTER_DISCONNECT_META: BuiltinMeta = BuiltinMeta {
    id: "session/serves-after-disconnect",
    title: "After the front-end leaves, the back-end accepts and serves a new front-end",
    rules: &[id::R_ROB_09],
    level: crate::scenario::Level::Rob,
    description: "A negotiated session, then the front-end closes the connection and connects again: the \
back-end must answer GET_FEATURES on the new connection. A back-end that exits instead (status \
0 or not) warns here once; the spec does not forbid it, and vhu-conform runs every other \
scenario on a fresh process (spawn mode).",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for ServesAfterDisconnect {
    fn meta(&self) -> &'static BuiltinMeta {
        &SERVES_AFTER_DISCONNECT_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        ctx.step(&Step::of(Action::Disconnect(Default::default())))?;
        ctx.mark(id::R_ROB_09);
        let st = ctx
            .target()
            .wait_exit(std::time::Duration::from_millis(300));
        if let Some(crate::target::Death::Exit(code)) = st.death() {
            ctx.expect_exit();
            return Err(ctx.fail(
                id::R_ROB_09,
                &format!(
                    "the back-end exits when its front-end leaves (status {code}); other scenarios \
                     that reconnect to the same process are skipped"
                ),
                "the socket accepts a new front-end session that works",
                format!("back-end process {st}"),
            ));
        }
        ctx.step(&Step::of(Action::Reconnect(Default::default())))?;
        ctx.step(&Step::of(Action::Probe(Default::default())))
    }
}

/// The default layout announced region by region (ADD_MEM_REG).
fn add_mem_reg_layout() -> Step {
    Step::of(Action::Memory(MemoryArgs {
        via: Some(Via::AddMemReg),
        ..MemoryArgs::default()
    }))
}

/// REM_MEM_REG of the layout's second region.
fn remove_second() -> Step {
    Step::of(Action::RemMemReg(RemMemRegArgs {
        region: 1,
        tweak: None,
    }))
}
