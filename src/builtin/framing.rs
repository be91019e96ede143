//! Stream framing (checklist R-WIRE-07): vhost-user runs over a stream socket, so a message may
//! reach the back-end split over several reads or coalesced with the next one. Each scenario
//! sends the same two messages, SET_VRING_NUM (with NEED_REPLY when REPLY_ACK is negotiated)
//! and GET_FEATURES, cut differently; a back-end that frames by `read` calls instead of by the
//! header's size misses a reply, answers garbage or closes.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_protocol::wire::HEADER_SIZE;
use vhu_protocol::{FrontendReq, Header, RawMessage};

use super::{Builtin, BuiltinMeta, clean_session};
use crate::engine::{Ctx, StepError};
use crate::rules::id;
use crate::scenario::Level;

/// How the byte stream of the two messages is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Each header in one write, its payload in the next.
    HeaderApart,
    /// Both messages in one write.
    Coalesced,
    /// One byte per write.
    ByteByByte,
    /// SET_VRING_CALL with its eventfd riding on the first byte, the rest in a later write.
    FdOnFirstByte,
}

/// One framing scenario.
#[derive(Debug)]
pub struct Framing(pub Cut);

/// Pause between pieces: long enough that the back-end's read returns what arrived so far.
const PAUSE: Duration = Duration::from_millis(5);

/// What every [`Framing`] scenario declares; each variant adds its id and title.
const FRAMING: BuiltinMeta = BuiltinMeta {
    rules: &[id::R_WIRE_07],
    // A warning: the spec puts the protocol on a stream socket, where a message may arrive in
    // pieces, but says nothing of how messages are written, and QEMU writes each message with
    // one `sendmsg`, so a back-end that reads a header with one `recvmsg` works with it.
    level: Level::Should,
    description: "Graded as a warning: the protocol runs on a stream socket, which may deliver a message in \
pieces, but the spec does not say so, and QEMU writes each message whole with one sendmsg. \
After a clean negotiation and memory table, SET_VRING_NUM(0, queue size) (NEED_REPLY \
with REPLY_ACK) and GET_FEATURES are written as one byte stream cut as the title says, 5 ms \
between pieces. Wanted: the ack 0 (when asked for) and the GET_FEATURES reply carrying the \
features the back-end offered, as if each message had been sent whole. The fd variant sends \
SET_VRING_CALL instead of SET_VRING_NUM with its eventfd on the first byte (the fds travel with \
the header's first byte, as the spec's newer text says).",
    ..BuiltinMeta::DEFAULT
};

impl Cut {
    const HEADER_APART: BuiltinMeta = BuiltinMeta {
        id: "wire/header-and-payload-apart",
        title: "A message whose header and payload arrive in separate writes is read whole",
        ..FRAMING
    };
    const COALESCED: BuiltinMeta = BuiltinMeta {
        id: "wire/two-messages-in-one-write",
        title: "Two messages arriving in one write are both answered",
        ..FRAMING
    };
    const BYTE_BY_BYTE: BuiltinMeta = BuiltinMeta {
        id: "wire/one-byte-per-write",
        title: "Messages arriving one byte per write are read whole",
        ..FRAMING
    };
    const FD_ON_FIRST_BYTE: BuiltinMeta = BuiltinMeta {
        id: "wire/fd-with-first-byte",
        title: "SET_VRING_CALL whose eventfd travels with the first header byte, the rest later, is accepted",
        ..FRAMING
    };
}

impl Builtin for Framing {
    fn meta(&self) -> &'static BuiltinMeta {
        match self.0 {
            Cut::HeaderApart => &Cut::HEADER_APART,
            Cut::Coalesced => &Cut::COALESCED,
            Cut::ByteByByte => &Cut::BYTE_BY_BYTE,
            Cut::FdOnFirstByte => &Cut::FD_ON_FIRST_BYTE,
        }
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        clean_session(ctx, false)?;
        let num = ctx.queue_size();
        let s = ctx.session_mut()?;
        let offered = s.get_features();
        let offered = offered.map_err(|e| ctx.session_error(id::R_WIRE_07, e))?;
        let s = ctx.session_mut()?;
        let ack = s.reply_ack();
        let call = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| StepError::Harness(format!("cannot create an eventfd: {e}")))?;
        let (first_req, first_body) = if self.0 == Cut::FdOnFirstByte {
            (FrontendReq::SetVringCall, 0u64.to_ne_bytes().to_vec())
        } else {
            let mut b = 0u32.to_ne_bytes().to_vec();
            b.extend_from_slice(&u32::from(num).to_ne_bytes());
            (FrontendReq::SetVringNum, b)
        };
        let first = RawMessage::new(
            Header::request(first_req as u32, first_body.len() as u32, ack),
            first_body,
        );
        let second = RawMessage::new(
            Header::request(FrontendReq::GetFeatures as u32, 0, false),
            vec![],
        );
        let first_len = first.to_bytes().len();
        let total = first_len + second.to_bytes().len();
        let cuts: Vec<usize> = match self.0 {
            Cut::HeaderApart => vec![HEADER_SIZE, first_len, first_len + HEADER_SIZE],
            Cut::Coalesced => vec![],
            Cut::ByteByByte => (1..total).collect(),
            Cut::FdOnFirstByte => vec![1, first_len],
        };
        let fds: Vec<BorrowedFd<'_>> = if self.0 == Cut::FdOnFirstByte {
            vec![call.as_fd()]
        } else {
            vec![]
        };
        let r = ctx
            .session_mut()?
            .send_stream(&[first, second], &cuts, &fds, PAUSE);
        r.map_err(|e| ctx.session_error(id::R_WIRE_07, e))?;
        ctx.mark(id::R_WIRE_07);
        let timeout = ctx.step_timeout();
        let what = first_req.spec_name();
        if ack {
            let m = ctx.session_mut()?.recv_any(timeout);
            let m = m.map_err(|e| ctx.session_error(id::R_WIRE_07, e))?;
            let h = m.header;
            if h.request != first_req as u32 || m.u64() != Some(0) {
                return Err(ctx.fail(
                    id::R_WIRE_07,
                    &format!("{what} sent in pieces was not acked 0"),
                    "the ack of the message, 0, as if it had been sent in one write",
                    format!("request {} with payload {:?}", h.request, m.u64()),
                ));
            }
        }
        let m = ctx.session_mut()?.recv_any(timeout);
        let m = m.map_err(|e| ctx.session_error(id::R_WIRE_07, e))?;
        let h = m.header;
        if h.request != FrontendReq::GetFeatures as u32 || m.u64() != Some(offered) {
            return Err(ctx.fail(
                id::R_WIRE_07,
                &format!("GET_FEATURES after {what}, sent in pieces, was not answered right"),
                &format!("the GET_FEATURES reply, {offered:#x}, as when sent in one write"),
                format!("request {} with payload {:?}", h.request, m.u64()),
            ));
        }
        Ok(())
    }
}

/// Where the front-end stops writing before it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutoff {
    /// After the 12 header bytes, before the payload it announces.
    AfterHeader,
    /// Half way through the payload.
    MidPayload,
}

/// The front-end closes the connection in the middle of a message (R-WIRE-15).
#[derive(Debug)]
pub struct ClosedMidMessage(pub Cutoff);

/// What both [`ClosedMidMessage`] scenarios declare; each variant adds its id and title.
const CLOSED_MID_MESSAGE: BuiltinMeta = BuiltinMeta {
    rules: &[id::R_WIRE_15],
    level: Level::Rob,
    fresh_process: true,
    description: "After negotiation, SET_VRING_NUM's header announcing 8 payload bytes is sent with none \
(or 4) of them, and the connection is closed. The back-end must clean up: accept a new \
connection that is then served (a GET_FEATURES round trip), or, as spawn mode allows, exit with \
a status. A death by a signal is a crash.",
    ..BuiltinMeta::DEFAULT
};

impl Cutoff {
    const AFTER_HEADER: BuiltinMeta = BuiltinMeta {
        id: "wire/closed-after-header",
        title: "The front-end closing after a header whose payload never comes leaves the back-end serving or exiting cleanly",
        ..CLOSED_MID_MESSAGE
    };
    const MID_PAYLOAD: BuiltinMeta = BuiltinMeta {
        id: "wire/closed-mid-payload",
        title: "The front-end closing half way through a payload leaves the back-end serving or exiting cleanly",
        ..CLOSED_MID_MESSAGE
    };
}

impl Builtin for ClosedMidMessage {
    fn meta(&self) -> &'static BuiltinMeta {
        match self.0 {
            Cutoff::AfterHeader => &Cutoff::AFTER_HEADER,
            Cutoff::MidPayload => &Cutoff::MID_PAYLOAD,
        }
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        use crate::scenario::{Action, Step};
        ctx.step(&Step::of(Action::Negotiate(Default::default())))?;
        let body: Vec<u8> = match self.0 {
            Cutoff::AfterHeader => vec![],
            Cutoff::MidPayload => 0u32.to_ne_bytes().to_vec(),
        };
        let partial = RawMessage::new(
            Header::request(FrontendReq::SetVringNum as u32, 8, false),
            body,
        );
        let r = ctx.session_mut()?.send_stream(&[partial], &[], &[], PAUSE);
        r.map_err(|e| ctx.session_error(id::R_WIRE_15, e))?;
        std::thread::sleep(Duration::from_millis(20));
        ctx.step(&Step::of(Action::Disconnect(Default::default())))?;
        ctx.mark(id::R_WIRE_15);
        let again = Step::of(Action::Reconnect(Default::default())).citing(id::R_WIRE_15);
        match ctx.step(&again) {
            Ok(()) => {}
            Err(StepError::NotApplicable(_)) => {
                // Exiting once its front-end left is what spawn mode allows.
                let st = ctx.target().state();
                ctx.note(format!(
                    "the back-end ended cleanly ({st}) after the front-end left mid-message"
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let r = ctx.session_mut()?.get_features();
        match r {
            Ok(_) => Ok(()),
            // A back-end that exits once its front-end left may still accept the connection
            // while it shuts down.
            Err(e) => match ctx.target().wait_exit(Duration::from_millis(300)) {
                st @ crate::target::ProcessState::Exited(_) => {
                    ctx.note(format!(
                        "the back-end ended cleanly ({st}) after the front-end left mid-message"
                    ));
                    Ok(())
                }
                _ => Err(ctx.session_error(id::R_WIRE_15, e)),
            },
        }
    }
}
