//! fd hygiene under a flood (checklist R-ROB-07, R-VRING-14): SET_VRING_CALL replaced a
//! thousand times must not leave the replaced eventfds open in the back-end.

use crate::rules::id;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_mock_frontend::Ack;

use super::{Builtin, BuiltinMeta, clean_session, needs_process, settle};
use crate::engine::{Ctx, StepError};
use crate::scenario::{Action, Level, Step};
use crate::target::Instance;

/// Many SET_VRING_CALL replacements; the fd count must stay flat.
#[derive(Debug)]
pub struct CallFdFlood;

/// Replacements sent.
const FLOOD: usize = 1000;
/// Growth tolerated.
const SLACK: usize = 8;

/// What [`CallFdFlood`] declares.
const CALL_FD_FLOOD_META: BuiltinMeta = BuiltinMeta {
    id: "robustness/call-fd-flood",
    title: "1000 SET_VRING_CALL replacements leave no fd behind",
    rules: &[id::R_ROB_07, id::R_VRING_14],
    level: Level::Rob,
    description: "Spawn mode only. Queue 0 set up, then 1000 SET_VRING_CALL messages each with a fresh \
eventfd (our copy closed at once); the back-end must close each replaced fd: /proc/<pid>/fd may \
not grow by more than a small slack, and the session must still answer.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for CallFdFlood {
    fn meta(&self) -> &'static BuiltinMeta {
        &CALL_FD_FLOOD_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        needs_process(ctx)?;
        clean_session(ctx, true)?;
        std::thread::sleep(Duration::from_millis(50));
        let Some(fds0) = ctx.target().fd_count() else {
            return Err(StepError::NotApplicable("/proc/<pid> vanished".into()));
        };
        let mut sent = 0;
        while sent < FLOOD && Instant::now() < ctx.deadline() {
            let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| StepError::Harness(format!("cannot create an eventfd: {e}")))?;
            let r = ctx.session_mut()?.set_vring_call(0, Some(fd.as_fd()));
            match r {
                Ok(Ack::Ok | Ack::NotRequested) => sent += 1,
                Ok(Ack::Failed(v)) => {
                    return Err(ctx.fail(
                        id::R_VRING_14,
                        &format!("SET_VRING_CALL replacement {} was refused", sent + 1),
                        "a new call fd replaces the previous one (ack 0)",
                        format!("ack {v}"),
                    ));
                }
                Err(e) => return Err(ctx.session_error(id::R_ROB_07, e)),
            }
        }
        if sent < FLOOD {
            ctx.note(format!(
                "the scenario deadline allowed {sent} of {FLOOD} replacements"
            ));
        }
        ctx.step(&Step::of(Action::Probe(Default::default())))?;
        let within = Duration::from_millis(500);
        let fds = settle(ctx, Instance::fd_count, fds0 + SLACK, within).unwrap_or(fds0);
        ctx.note(format!(
            "after {sent} SET_VRING_CALL replacements: fds {fds0} -> {fds}"
        ));
        if fds > fds0 + SLACK {
            return Err(ctx.fail(
                id::R_ROB_07,
                &format!("open fds grew from {fds0} to {fds} over {sent} SET_VRING_CALL replacements: replaced call fds are kept"),
                "each replaced call fd is closed (count stable)",
                format!("/proc/<pid>/fd: {fds0} entries before, {fds} after"),
            ));
        }
        Ok(())
    }
}
