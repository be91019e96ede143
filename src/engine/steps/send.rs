//! Free-form steps: any request with a body (`send`) and raw bytes (`raw`), and the checks
//! a reply to them gets (its value, size, flags, fds, config bytes).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use vhu_mock_frontend::{Ack, Session, SessionError};
use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::{Body, ConfigHeader};
use vhu_protocol::{FrontendReq, Header, Message, RawMessage};

use super::body::build_body;
use super::extra_fds::make_fds;
use super::{Ctx, StepError, StepResult};
use crate::scenario::Expect;
use crate::scenario::model::{BodyQueue, RawArgs, SendArgs, Step};

impl Ctx<'_> {
    pub(super) fn send(&mut self, step: &Step, a: &SendArgs) -> StepResult {
        let req = a.request.0;
        let mut body = build_body(req, a, self.offer.device)?;
        if a.queue == Some(BodyQueue::PastEnd) {
            // The first index past the rings GET_QUEUE_NUM's answer stands for, under the
            // device's reading (or every reading, when the type is unknown) (R-MQ-04).
            let idx = self.index_past_end(&body)?;
            self.mark(crate::rules::id::R_VRING_17);
            self.mark(crate::rules::id::R_MQ_04);
            match &mut body {
                Body::VringState(v) => v.index = idx,
                Body::VringAddr(a) => a.index = idx,
                Body::U64(v) => *v = (*v & !0xff) | u64::from(idx),
                _ => {}
            }
        }
        let extra = make_fds(a.fds.unwrap_or(0), a.fd_kind.unwrap_or_default())?;
        let fds: Vec<BorrowedFd<'_>> = extra.sent.iter().map(AsFd::as_fd).collect();
        let r = self.session()?.request(req, &body, &fds, a.need_reply);
        drop(fds);
        drop(extra.sent);
        let default = if req.reply_kind() == ReplyKind::Always {
            Expect::Reply
        } else {
            Expect::Ok
        };
        let expect = step.expect.unwrap_or(default);
        match (expect, r) {
            (Expect::Reply, Ok(Some(m))) => {
                if let Body::Config(h, _) = &body {
                    self.check_config_reply(a, h, &m)?;
                }
                if req == FrontendReq::GetShmemConfig {
                    // The session validated its count and sizes on the way in.
                    self.mark(crate::rules::id::R_SHM_02);
                    self.mark(crate::rules::id::R_SHM_03);
                }
                self.check_value(step, a, &m)?;
            }
            (Expect::Reply, Ok(None)) => return Err(StepError::Harness("expect = \"reply\" on a request sent without NEED_REPLY that has no reply of its own".into())),
            (Expect::NoReply, Ok(None)) => {
                self.mark(self.rule_of(step));
                match self.no_reply(a.window_ms)? {
                    Ok(()) => {}
                    // Closing is not "a message arrived": judged as a close during the step.
                    Err(e @ SessionError::Closed { .. }) => {
                        return Err(self.session_failed(step, e));
                    }
                    Err(e) => {
                        return Err(self.finding(step, "a message arrived although no reply was due", "no reply at all without NEED_REPLY", e.to_string()));
                    }
                }
            }
            (_, Ok(m)) => {
                let ack = m.as_ref().map_or(Ack::NotRequested, |m| match m.u64() {
                    Some(0) => Ack::Ok,
                    Some(v) => Ack::Failed(v),
                    None => Ack::Failed(u64::MAX),
                });
                if let Some(m) = &m {
                    self.check_value(step, a, m)?;
                }
                self.judge_ack(step, Ok(ack), expect)?;
            }
            (_, Err(e)) => self.judge_ack(step, Err(e), expect)?,
        }
        if let Some(read_end) = extra.pipe_read {
            self.check_fd_closed(step, &read_end, Some(req as u32))?;
        }
        Ok(())
    }

    /// R-CFG-01: a GET_CONFIG reply has exactly the 12-byte header and the size asked, with
    /// the offset echoed. The error form (an empty payload, or a header whose size is 0:
    /// R-CFG-02, both readings accepted) is never a departure here: a back-end's config space
    /// may be smaller than the virtio layout (fields later features add), which the spec allows.
    fn check_config_reply(
        &mut self,
        a: &SendArgs,
        asked: &ConfigHeader,
        m: &Message,
    ) -> StepResult {
        use crate::rules::id;
        if a.reply_size.is_some() {
            return Ok(());
        }
        self.mark(id::R_CFG_01);
        let want = 12 + asked.size as usize;
        let echoed = m.payload.get(..4) == Some(&asked.offset.to_ne_bytes()[..]);
        if m.payload.len() == want && echoed {
            return Ok(());
        }
        let error_form = m.payload.is_empty()
            || (m.payload.len() >= 12 && m.payload.get(4..8) == Some(&[0u8; 4][..]));
        if error_form {
            self.notes.push(format!(
                "step {}: GET_CONFIG of {} bytes at offset {} answered with the error form ({} payload bytes): the config space is smaller, or the range refused",
                self.step_no,
                asked.size,
                asked.offset,
                m.payload.len()
            ));
            return Ok(());
        }
        Err(self.fail(
            id::R_CFG_01,
            &format!(
                "GET_CONFIG of {} bytes at offset {} answered {} payload bytes{}",
                asked.size,
                asked.offset,
                m.payload.len(),
                if echoed { "" } else { ", offset not echoed" }
            ),
            &format!("{want} payload bytes (12-byte header + the size asked), the offset echoed; or the error form"),
            format!("header {:?}, payload {:02x?}", m.header, m.payload),
        ))
    }

    /// The reply checks a `send` step gives (value, size, flags, fds, config bytes).
    pub(super) fn check_value(&mut self, step: &Step, a: &SendArgs, m: &Message) -> StepResult {
        self.mark(self.rule_of(step));
        let mut problems = Vec::new();
        if let Some(hex) = a
            .config_hex
            .as_ref()
            .filter(|_| m.header.request == FrontendReq::GetConfig as u32)
        {
            let want = &hex.0;
            let got = m.payload.get(12..).unwrap_or_default();
            if got != want.as_slice() {
                problems.push(format!("config bytes {got:02x?}, wanted {want:02x?}"));
            }
        }
        if let Some(size) = a.reply_size.filter(|&s| s as usize != m.payload.len()) {
            problems.push(format!(
                "reply payload is {} bytes, wanted {size}",
                m.payload.len()
            ));
        }
        if let Some(n) = a.reply_fds.filter(|&n| n != m.fds.len()) {
            problems.push(format!("reply carries {} fds, wanted {n}", m.fds.len()));
        }
        if let Some(flags) = a.reply_flags.filter(|&f| f != m.header.flags) {
            problems.push(format!(
                "reply flags are {:#x}, wanted exactly {flags:#x}",
                m.header.flags
            ));
        }
        let v = m.u64();
        if let Some(want) = a.value.filter(|&w| v != Some(w)) {
            problems.push(format!("reply value {v:?}, wanted {want:#x}"));
        }
        if let Some(mask) = a.value_mask.filter(|&k| v.is_none_or(|v| v & k != k)) {
            problems.push(format!("reply value {v:?} lacks bits {mask:#x}"));
        }
        if a.offered == Some(true) {
            let offer = self.session.as_ref().and_then(Session::offered_features);
            if offer.is_some() && v != offer {
                problems.push(format!(
                    "reply value {v:#x?}, but the first GET_FEATURES offered {offer:#x?}"
                ));
            }
        }
        if a.error_code == Some(true) && v.is_none_or(|v| v & 0xff == 0) {
            problems.push(format!(
                "reply value {v:#x?}: bits 0-7 (the error code) are 0, a success"
            ));
        }
        if a.nonzero == Some(true) && v.is_none_or(|v| v == 0) {
            problems.push(format!("reply value {v:?}, wanted non-zero"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(self.finding(
            step,
            &problems.join("; "),
            "the reply the rule describes",
            format!("header {:?}, payload {:02x?}", m.header, m.payload),
        ))
    }
    pub(super) fn raw(&mut self, step: &Step, a: &RawArgs) -> StepResult {
        let body = a.payload_hex.clone().unwrap_or_default().0;
        let header = Header {
            request: a.request.0,
            flags: a.flags.unwrap_or(1),
            size: a.header_size.unwrap_or(body.len() as u32),
        };
        let extra = make_fds(a.fds.unwrap_or(0), a.fd_kind.unwrap_or_default())?;
        let fds: Vec<BorrowedFd<'_>> = extra.sent.iter().map(AsFd::as_fd).collect();
        let r = self
            .session()?
            .send_raw(&RawMessage::new(header, body), &fds);
        drop(fds);
        drop(extra.sent);
        if let Err(e) = r {
            return self.judge_ack(step, Err(e), step.expect.unwrap_or(Expect::Alive));
        }
        match step.expect.unwrap_or(Expect::Alive) {
            Expect::NoReply => {
                self.mark(self.rule_of(step));
                let r = self.no_reply(a.window_ms)?;
                r.map_err(|e| self.session_failed(step, e))
            }
            Expect::Alive => {
                if a.window_ms.is_none() {
                    // Answered at once: GET_FEATURES comes back, whatever came before it.
                    let t = self.opts.step_timeout;
                    if self.session()?.round_trip(t).is_ok() {
                        self.mark(self.rule_of(step));
                        return Ok(());
                    }
                } else {
                    let window = Duration::from_millis(a.window_ms.unwrap_or_default());
                    let _ = self.session()?.recv_any(window);
                }
                self.alive(step)
            }
            expect => {
                let t = self.opts.step_timeout;
                let r = self.session()?.recv_any(t);
                let ack = r.map(|m| match m.u64() {
                    Some(0) => Ack::Ok,
                    Some(v) => Ack::Failed(v),
                    None => Ack::Failed(u64::MAX),
                });
                self.judge_ack(step, ack, expect)
            }
        }
    }
}
