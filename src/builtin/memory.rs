//! Memory-table hygiene (checklist R-MEM-05, R-WIRE-09): a table that replaces another unmaps
//! the regions it drops and does not keep their fds, measured on `/proc/<pid>/maps` and
//! `/proc/<pid>/fd` of a spawned back-end.

use crate::rules::id;
use std::time::Duration;

use super::{Builtin, BuiltinMeta, Needs, clean_session, needs_process, settle};
use crate::engine::{Ctx, StepError};
use crate::scenario::{Action, Step};
use crate::target::Instance;

/// SET_MEM_TABLE replaced many times; mappings and fds must not pile up.
#[derive(Debug)]
pub struct TableReplaceUnmaps;

/// Replacement tables sent (two regions each).
const REPLACEMENTS: usize = 20;
/// Growth tolerated (allocator arenas, lazily opened files).
const SLACK: usize = 8;

/// What [`TableReplaceUnmaps`] declares.
const TABLE_REPLACE_UNMAPS_META: BuiltinMeta = BuiltinMeta {
    id: "memory/table-replace-unmaps",
    title: "SET_MEM_TABLE replacing the table unmaps the old regions and closes their fds",
    rules: &[id::R_MEM_05, id::R_WIRE_09],
    description: "Spawn mode only. After a first two-region table, 20 more tables with fresh memfds replace \
it; the back-end's mapping count (/proc/<pid>/maps) and fd count (/proc/<pid>/fd) may not grow \
by more than a small slack: one leaked mapping or fd per table is a failure.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for TableReplaceUnmaps {
    fn meta(&self) -> &'static BuiltinMeta {
        &TABLE_REPLACE_UNMAPS_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        needs_process(ctx)?;
        clean_session(ctx, false)?;
        std::thread::sleep(Duration::from_millis(50));
        let (Some(maps0), Some(fds0)) = (ctx.target().map_count(), ctx.target().fd_count()) else {
            return Err(StepError::NotApplicable("/proc/<pid> vanished".into()));
        };
        for _ in 0..REPLACEMENTS {
            ctx.step(&Step::of(Action::Memory(Default::default())))?;
        }
        ctx.step(&Step::of(Action::Probe(Default::default())))?;
        let within = Duration::from_millis(500);
        let maps = settle(ctx, Instance::map_count, maps0 + SLACK, within).unwrap_or(maps0);
        let fds = settle(ctx, Instance::fd_count, fds0 + SLACK, within).unwrap_or(fds0);
        ctx.note(format!(
            "after {REPLACEMENTS} replacement tables: mappings {maps0} -> {maps}, fds {fds0} -> {fds}"
        ));
        if maps > maps0 + SLACK {
            return Err(ctx.fail(
                id::R_MEM_05,
                &format!("mappings grew from {maps0} to {maps} over {REPLACEMENTS} replacement tables: replaced regions stay mapped"),
                "regions absent from the new table are unmapped (count stable)",
                format!("/proc/<pid>/maps: {maps0} lines before, {maps} after"),
            ));
        }
        if fds > fds0 + SLACK {
            return Err(ctx.fail(
                id::R_WIRE_09,
                &format!("open fds grew from {fds0} to {fds} over {REPLACEMENTS} replacement tables: region fds are kept"),
                "fds of replaced regions are closed (count stable)",
                format!("/proc/<pid>/fd: {fds0} entries before, {fds} after"),
            ));
        }
        Ok(())
    }
}

/// ADD_MEM_REG up to GET_MAX_MEM_SLOTS regions is accepted, one more is refused (R-MEM-10).
#[derive(Debug)]
pub struct AddPastMaxSlots;

/// Slot counts above this are not exercised (each region is a memfd on both sides).
const MAX_SLOTS_EXERCISED: u64 = 4096;
/// Each region's size and the guest-address stride between them.
const SLOT_REGION: u64 = 0x1_0000;

/// What [`AddPastMaxSlots`] declares.
const ADD_PAST_MAX_SLOTS_META: BuiltinMeta = BuiltinMeta {
    id: "memory/add-past-max-slots",
    title: "ADD_MEM_REG fills every slot GET_MAX_MEM_SLOTS reports, and one region more is refused",
    rules: &[id::R_MEM_10],
    level: crate::scenario::Level::Should,
    requires: Needs::protocol(&["CONFIGURE_MEM_SLOTS", "REPLY_ACK"]),
    fresh_process: true,
    description: "After negotiation (no SET_MEM_TABLE), GET_MAX_MEM_SLOTS gives N; N regions of 64 KiB, \
each its own memfd, are added with ADD_MEM_REG and must each be acked 0 (the back-end said it \
has room for them); region N+1 must be refused (non-zero ack or the connection closed) and the \
back-end must survive. N above 4096 is not exercised.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for AddPastMaxSlots {
    fn meta(&self) -> &'static BuiltinMeta {
        &ADD_PAST_MAX_SLOTS_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        let r = ctx.session_mut()?.get_max_mem_slots();
        let max = r.map_err(|e| ctx.session_error(id::R_MEM_10, e))?;
        if max == 0 || max > MAX_SLOTS_EXERCISED {
            return Err(StepError::NotApplicable(format!(
                "GET_MAX_MEM_SLOTS reports {max}: only 1 to {MAX_SLOTS_EXERCISED} are exercised"
            )));
        }
        let specs: Vec<vhu_mock_frontend::RegionSpec> = (0..=max)
            .map(|i| vhu_mock_frontend::RegionSpec {
                guest_addr: i * SLOT_REGION,
                size: SLOT_REGION,
                user_addr: 0x7f00_0000_0000 + i * SLOT_REGION,
                mmap_offset: 0,
            })
            .collect();
        let mem = vhu_mock_frontend::GuestMemory::new(&specs)
            .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
        let (fits, extra) = mem.regions().split_at(max as usize);
        for (i, region) in fits.iter().enumerate() {
            let r = ctx.session_mut()?.add_mem_reg(region);
            match r {
                Ok(vhu_mock_frontend::Ack::Ok | vhu_mock_frontend::Ack::NotRequested) => {}
                Ok(vhu_mock_frontend::Ack::Failed(v)) => {
                    return Err(ctx.fail(
                        id::R_MEM_10,
                        &format!(
                            "ADD_MEM_REG of region {} of the {max} slots reported was refused",
                            i + 1
                        ),
                        "every region up to GET_MAX_MEM_SLOTS accepted (ack 0)",
                        format!("ack {v}"),
                    ));
                }
                Err(e) => return Err(ctx.session_error(id::R_MEM_10, e)),
            }
        }
        ctx.note(format!("{max} regions added, one per slot reported"));
        ctx.mark(id::R_MEM_10);
        let r = ctx.session_mut()?.add_mem_reg(&extra[0]);
        match r {
            Ok(vhu_mock_frontend::Ack::Ok) => Err(ctx.fail(
                id::R_MEM_10,
                &format!("ADD_MEM_REG of region {} was accepted although GET_MAX_MEM_SLOTS reported {max}", max + 1),
                "the region past the slot count refused (non-zero ack or the connection closed)",
                "ack 0".into(),
            )),
            Ok(_) => Ok(()),
            Err(vhu_mock_frontend::SessionError::Closed { .. }) => {
                let probe = Step::of(Action::Probe(Default::default())).citing(id::R_MEM_10);
                ctx.step(&probe)
            }
            Err(e) => Err(ctx.session_error(id::R_MEM_10, e)),
        }
    }
}
