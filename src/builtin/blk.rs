//! virtio-blk data path over several requests (checklist R-RING-07, R-MEM-03): distinct
//! patterns at scattered sectors and sizes, each read back.

use super::{Builtin, BuiltinMeta, clean_session};
use crate::device::DeviceType;
use crate::engine::{Ctx, StepError};
use crate::rules::id;
use crate::scenario::model::{BlkIoArgs, Queues};
use crate::scenario::{Action, Step};

/// Writes distinct patterns to non-overlapping extents, then reads every extent back.
#[derive(Debug)]
pub struct ScatteredPatterns;

/// (first sector, sectors, pattern): non-overlapping extents of different sizes.
const EXTENTS: [(u64, u32, u8); 4] = [
    (0, 1, 0x11),
    (7, 3, 0x2c),
    (1000, 8, 0xd3),
    (4096, 32, 0x6e),
];

/// The args of a request on queue 0 over one extent.
fn extent((sector, sectors, pattern): (u64, u32, u8)) -> BlkIoArgs {
    BlkIoArgs {
        queue: Some(Queues::Index(0)),
        sector: Some(sector),
        sectors: Some(sectors),
        pattern: Some(pattern),
        ..BlkIoArgs::default()
    }
}

/// What [`ScatteredPatterns`] declares.
const SCATTERED_PATTERNS_META: BuiltinMeta = BuiltinMeta {
    id: "blk/scattered-patterns",
    title: "virtio-blk: several writes of different sizes and patterns each read back intact",
    rules: &[id::R_RING_07, id::R_MEM_03],
    device: Some(DeviceType::Block),
    description: "Four writes (1, 3, 8 and 32 sectors, distinct patterns) at scattered sectors on queue 0, \
then four reads of the same extents: each must return its own pattern, with the used length and \
canaries checked on every request; a mix-up between extents or requests shows as a wrong pattern.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for ScatteredPatterns {
    fn meta(&self) -> &'static BuiltinMeta {
        &SCATTERED_PATTERNS_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        clean_session(ctx, true)?;
        for e in EXTENTS {
            ctx.step(&Step::of(Action::BlkWrite(extent(e))).citing(id::R_RING_07))?;
        }
        for e in EXTENTS.iter().rev() {
            ctx.step(&Step::of(Action::BlkRead(extent(*e))).citing(id::R_RING_07))?;
        }
        Ok(())
    }
}
