//! The back-end channel's lifetime (checklist R-BCH-09, R-BCH-10): a second SET_BACKEND_REQ_FD
//! replaces the first, so the back-end closes the socket it was given before; and the front-end
//! closing its end must not bring the back-end down.

use std::time::{Duration, Instant};

use vhu_mock_frontend::Ack;

use super::{Builtin, BuiltinMeta, Needs, clean_session};
use crate::engine::{Ctx, StepError};
use crate::rules::id;
use crate::scenario::{Action, Level, Step};

/// How long the back-end may take to close a replaced channel.
const CLOSE_WITHIN: Duration = Duration::from_millis(500);

/// A second SET_BACKEND_REQ_FD: the first socket is closed by the back-end.
#[derive(Debug)]
pub struct ReplacedChannelClosed;

/// What [`ReplacedChannelClosed`] declares.
const REPLACED_CHANNEL_CLOSED_META: BuiltinMeta = BuiltinMeta {
    id: "channel/replaced-channel-closed",
    title: "A second SET_BACKEND_REQ_FD replaces the first: the back-end closes the old socket and acks the new one",
    rules: &[id::R_BCH_10, id::R_ACK_05],
    requires: Needs::protocol(&["BACKEND_REQ"]),
    description: "After a clean negotiation (which sends SET_BACKEND_REQ_FD), a second SET_BACKEND_REQ_FD \
with a new socket. The back-end must use the new one only, so it closes the old: our end of the \
first socketpair must see EOF within 500 ms. With REPLY_ACK the second SET_BACKEND_REQ_FD is \
acked 0 (R-ACK-05: the spec says it is answered whenever REPLY_ACK is negotiated).",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for ReplacedChannelClosed {
    fn meta(&self) -> &'static BuiltinMeta {
        &REPLACED_CHANNEL_CLOSED_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        clean_session(ctx, false)?;
        let s = ctx.session_mut()?;
        let reply_ack = s.reply_ack();
        let Some(old) = s.take_channel() else {
            return Err(StepError::NotApplicable(
                "the negotiation set up no back-end channel".into(),
            ));
        };
        let r = ctx.session_mut()?.set_backend_req_fd();
        match r {
            Ok(Ack::Ok) => {}
            Ok(Ack::NotRequested) => {}
            Ok(Ack::Failed(v)) => {
                return Err(ctx.fail(
                    id::R_ACK_05,
                    "the second SET_BACKEND_REQ_FD was refused",
                    "ack 0: a new back-end channel replaces the old one",
                    format!("ack {v}"),
                ));
            }
            Err(e) => return Err(ctx.session_error(id::R_BCH_10, e)),
        }
        if reply_ack {
            ctx.mark(id::R_ACK_05);
        }
        // Nothing is awaited but the close: the wait ends at EOF or the deadline.
        old.wait_for(Instant::now() + CLOSE_WITHIN, |_| false);
        ctx.mark(id::R_BCH_10);
        if !old.peer_closed() {
            return Err(ctx.fail(
                id::R_BCH_10,
                "the replaced back-end channel socket is still open in the back-end",
                "the old socket closed (EOF on our end) once SET_BACKEND_REQ_FD gave a new one",
                format!("no EOF on the first channel within {CLOSE_WITHIN:?}"),
            ));
        }
        ctx.step(&Step::of(Action::Probe(Default::default())))
    }
}

/// The front-end closes the back-end channel: the back-end keeps serving.
#[derive(Debug)]
pub struct FrontendClosesChannel;

/// What [`FrontendClosesChannel`] declares.
const FRONTEND_CLOSES_CHANNEL_META: BuiltinMeta = BuiltinMeta {
    id: "channel/front-end-closes-channel",
    title: "The front-end closing the back-end channel does not bring the back-end down",
    rules: &[id::R_BCH_09],
    level: Level::Rob,
    requires: Needs::protocol(&["BACKEND_REQ"]),
    description: "After a clean negotiation with the back-end channel and queue 0 set up, our end of the \
channel is closed; the back-end must still answer on the main socket (a GET_FEATURES round \
trip) and not die. A back-end that needs the channel may report errors; it must not crash.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for FrontendClosesChannel {
    fn meta(&self) -> &'static BuiltinMeta {
        &FRONTEND_CLOSES_CHANNEL_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        clean_session(ctx, true)?;
        let Some(ch) = ctx.session_mut()?.take_channel() else {
            return Err(StepError::NotApplicable(
                "the negotiation set up no back-end channel".into(),
            ));
        };
        drop(ch);
        ctx.mark(id::R_BCH_09);
        std::thread::sleep(Duration::from_millis(50));
        let probe = Step::of(Action::Probe(Default::default())).citing(id::R_BCH_09);
        ctx.step(&probe)
    }
}
