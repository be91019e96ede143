//! Payload counts that lie, mid-session (checklist R-WIRE-12): the counts/* scenario files send
//! each lying message as the first of a fresh process; here it comes after a normal setup, with
//! memory mapped and queue 0 running, where a back-end that half-executes it (drops its old
//! memory table, resizes its config space) breaks what was working.

use super::{BuiltinMeta, Needs};
use crate::device::DeviceType;
use crate::engine::{Ctx, StepError};
use crate::rules::id;
use crate::scenario::model::{FdKind, Hex, RawArgs, RawRequest, RequestName};
use crate::scenario::{Action, Expect, Level, Step};

/// A message whose count field says more than its payload holds.
#[derive(Copy, Clone, Debug)]
pub enum Lie {
    /// SET_MEM_TABLE: nregions 8, one region and one memfd.
    MemTableRegions,
    /// GET_CONFIG: size 256, the 12-byte header alone.
    GetConfigSize,
    /// SET_CONFIG: size 256, 4 data bytes.
    SetConfigSize,
    /// GET_INFLIGHT_FD: 65535 queues of 65535 entries.
    InflightCounts,
}

/// The lie sent after setup, then the session (and for blk the running ring) still works.
#[derive(Debug)]
pub struct MidSession(pub Lie);

impl Lie {
    /// The raw message: request, flags, payload, memfds, what must come of it.
    fn message(self) -> (&'static str, u32, &'static str, usize, Expect) {
        match self {
            Self::MemTableRegions => (
                "SET_MEM_TABLE",
                0x9,
                "08000000 00000000  0000000000000000 0000100000000000 00000000007f0000 0000000000000000",
                1,
                Expect::Rejected,
            ),
            Self::GetConfigSize => (
                "GET_CONFIG",
                0x1,
                "00000000 00010000 00000000",
                0,
                Expect::Alive,
            ),
            Self::SetConfigSize => (
                "SET_CONFIG",
                0x9,
                "00000000 00010000 00000000 00000000",
                0,
                Expect::Rejected,
            ),
            Self::InflightCounts => (
                "GET_INFLIGHT_FD",
                0x1,
                "0000000000000000 0000000000000000 ffff ffff",
                0,
                Expect::Alive,
            ),
        }
    }
}

/// What every [`MidSession`] scenario declares; each variant adds its id and title.
const MID_SESSION: BuiltinMeta = BuiltinMeta {
    rules: &[id::R_WIRE_12],
    level: Level::Rob,
    fresh_process: true,
    description: "Negotiation, the default memory table and queue 0 set up and running, then one message \
whose count field says more than its payload holds (the counts/* scenario files send the same \
message to a fresh process). A message that must be refused is acked non-zero or the connection \
closed; any answer or a refusal is allowed for the others. A closed connection ends the scenario \
(a refusal the spec allows; a death by a signal is a crash). On an open connection GET_FEATURES \
must be answered, and for blk a GET_ID on the running ring must complete: the lie did not \
replace the memory table or break the ring.",
    ..BuiltinMeta::DEFAULT
};

impl Lie {
    const MEM_TABLE_REGIONS: BuiltinMeta = BuiltinMeta {
        id: "counts/mid-session-mem-table-nregions",
        title: "SET_MEM_TABLE whose nregions says 8 for one region, sent while a ring runs, is refused and the old table keeps working",
        requires: Needs::protocol(&["REPLY_ACK"]),
        ..MID_SESSION
    };
    const GET_CONFIG_SIZE: BuiltinMeta = BuiltinMeta {
        id: "counts/mid-session-get-config-size",
        title: "GET_CONFIG whose size says 256 with its header alone, sent while a ring runs, leaves the session working",
        requires: Needs::protocol(&["CONFIG"]),
        ..MID_SESSION
    };
    const SET_CONFIG_SIZE: BuiltinMeta = BuiltinMeta {
        id: "counts/mid-session-set-config-size",
        title: "SET_CONFIG whose size says 256 with 4 data bytes, sent while a ring runs, is refused and the session keeps working",
        requires: Needs::protocol(&["CONFIG", "REPLY_ACK"]),
        ..MID_SESSION
    };
    const INFLIGHT_COUNTS: BuiltinMeta = BuiltinMeta {
        id: "counts/mid-session-inflight-counts",
        title: "GET_INFLIGHT_FD for 65535 queues of 65535 entries, sent while a ring runs, leaves the session working",
        requires: Needs::protocol(&["INFLIGHT_SHMFD"]),
        ..MID_SESSION
    };
}

impl crate::builtin::Builtin for MidSession {
    fn meta(&self) -> &'static BuiltinMeta {
        match self.0 {
            Lie::MemTableRegions => &Lie::MEM_TABLE_REGIONS,
            Lie::GetConfigSize => &Lie::GET_CONFIG_SIZE,
            Lie::SetConfigSize => &Lie::SET_CONFIG_SIZE,
            Lie::InflightCounts => &Lie::INFLIGHT_COUNTS,
        }
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        super::clean_session(ctx, true)?;
        let (request, flags, payload, fds, expect) = self.0.message();
        let code = RequestName::Name(request.into()).resolve();
        let lie = RawArgs {
            request: RawRequest(code.map_err(StepError::Harness)? as u32),
            flags: Some(flags),
            header_size: None,
            payload_hex: Some(payload.parse::<Hex>().map_err(StepError::Harness)?),
            fds: Some(fds),
            fd_kind: Some(FdKind::Memfd),
            window_ms: None,
        };
        ctx.step(&Step::of(Action::Raw(lie)).expecting(expect))?;
        if !ctx.has_queue(0) {
            // The back-end closed the connection (a refusal) and a new one answered.
            ctx.note("the back-end closed the connection after the message (a refusal)".into());
            return Ok(());
        }
        match ctx.session_mut()?.get_features() {
            Ok(_) => {}
            Err(vhu_mock_frontend::SessionError::Closed { .. }) => {
                ctx.note("the back-end closed the connection after the message (a refusal)".into());
                return Ok(());
            }
            Err(e) => return Err(ctx.session_error(id::R_WIRE_12, e)),
        }
        if ctx.device() == Some(DeviceType::Block) {
            let get_id = Step::of(Action::BlkGetId(Default::default())).citing(id::R_WIRE_12);
            ctx.step(&get_id)?;
        } else {
            ctx.note("the running ring's data path is checked for blk only".into());
        }
        Ok(())
    }
}
