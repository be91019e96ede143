//! Memory-table hygiene (checklist R-MEM-05, R-WIRE-09): a table that replaces another unmaps
//! the regions it drops and does not keep their fds, measured on `/proc/<pid>/maps` and
//! `/proc/<pid>/fd` of a spawned back-end.

use crate::rules::id;
use std::time::Duration;

use super::{Builtin, clean_session, needs_process, settle};
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

impl Builtin for TableReplaceUnmaps {
    fn id(&self) -> &'static str {
        "memory/table-replace-unmaps"
    }
    fn title(&self) -> &'static str {
        "SET_MEM_TABLE replacing the table unmaps the old regions and closes their fds"
    }
    fn rules(&self) -> &'static [crate::rules::RuleId] {
        &[id::R_MEM_05, id::R_WIRE_09]
    }
    fn description(&self) -> &'static str {
        "Spawn mode only. After a first two-region table, 20 more tables with fresh memfds replace \
it; the back-end's mapping count (/proc/<pid>/maps) and fd count (/proc/<pid>/fd) may not grow \
by more than a small slack: one leaked mapping or fd per table is a failure."
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        needs_process(ctx)?;
        clean_session(ctx, false)?;
        std::thread::sleep(Duration::from_millis(50));
        let (Some(maps0), Some(fds0)) = (ctx.target().map_count(), ctx.target().fd_count()) else {
            return Err(StepError::NotApplicable("/proc/<pid> vanished".into()));
        };
        for _ in 0..REPLACEMENTS {
            ctx.step(&Step::new(Action::Memory))?;
        }
        ctx.step(&Step::new(Action::Probe))?;
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
