//! virtio-input steps (virtio 1.2 section 5.8): config queries written with SET_CONFIG
//! (select, subsel) and read back with GET_CONFIG (R-INPUT-01, R-INPUT-02), eventq buffers
//! posted and watched (R-INPUT-03), and a statusq event consumed (R-INPUT-04). Every chain gets
//! the checks every device owes (R-DEV-01..03).

use std::time::Duration;

use vhu_mock_frontend::WaitError;
use vhu_mock_frontend::exchange::Submitted;
use vhu_mock_frontend::input::{self as inp, Answer, Event};
use vhu_protocol::ProtocolFeatures;

use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::model::{InputConfigArgs, InputPostArgs, InputStatusArgs, Step};

/// How long posted event buffers are watched by default.
const POST_WINDOW: Duration = Duration::from_millis(300);
/// LED_CAPSL, `input_status`'s default code.
const LED_CAPSL: u16 = 1;

/// The input driver of the current vhost-user session.
#[derive(Debug, Default)]
pub(super) struct InputState {
    /// Event buffers posted and not yet used.
    posted: Vec<Submitted>,
}

/// What the union of an answer to `select` may hold: the sizes allowed (`None`: any up to 128).
fn sizes_for(select: u8) -> Option<&'static [u8]> {
    match select {
        inp::CFG_ID_DEVIDS => Some(&[0, inp::DEVIDS_SIZE]),
        inp::CFG_ABS_INFO => Some(&[0, inp::ABSINFO_SIZE]),
        _ => None,
    }
}

impl Ctx<'_> {
    /// Forgets what was posted on a ring set up again.
    pub(super) fn input_ring_replaced(&mut self, idx: u16) {
        if idx == inp::EVENTQ {
            self.input.posted.clear();
        }
    }

    /// SET_CONFIG of select and subsel, GET_CONFIG of the 136 bytes, the answer judged.
    pub(super) fn input_config(&mut self, step: &Step, a: &InputConfigArgs) -> StepResult {
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Err(StepError::NotApplicable(
                "the input config is queried with SET_CONFIG and GET_CONFIG, and the CONFIG protocol feature was not negotiated".into(),
            ));
        }
        let subsel = a.subsel.unwrap_or(0);
        let r = self.session()?.set_config(0, 0, &[a.select, subsel]);
        r.map_err(|e| self.session_failed(step, e))?;
        self.sync_unacked(step)?;
        let r = self.session()?.get_config(0, inp::CONFIG_SIZE);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        let known = inp::select_name(a.select).filter(|_| a.select != inp::CFG_UNSET);
        let rule = if known.is_some() {
            id::R_INPUT_01
        } else {
            id::R_INPUT_02
        };
        self.mark(rule);
        let what = format!(
            "select {:#04x} ({}) subsel {subsel}",
            a.select,
            known.unwrap_or("no information defined")
        );
        let Some(ans) = m.payload.get(12..).and_then(Answer::parse) else {
            return Err(self.fail(
                rule,
                &format!("GET_CONFIG after {what}: fewer than 136 config bytes"),
                "the whole virtio_input_config: select, subsel, size, reserved[5], the 128-byte union",
                format!("{} payload bytes", m.payload.len()),
            ));
        };
        self.judge_answer(&what, a.select, known.is_some(), &ans)
    }

    fn judge_answer(&mut self, what: &str, select: u8, known: bool, ans: &Answer) -> StepResult {
        let size = ans.size;
        if !known && size != 0 {
            return Err(self.fail(
                id::R_INPUT_02,
                &format!("{what}: size {size}, for a query the spec defines no answer to"),
                "size 0: no information is available",
                format!("{ans:?}"),
            ));
        }
        let allowed = sizes_for(select);
        if usize::from(size) > inp::UNION_SIZE || allowed.is_some_and(|s| !s.contains(&size)) {
            return Err(self.fail(
                id::R_INPUT_01,
                &format!("{what}: size {size}"),
                &match allowed {
                    Some(s) => format!("size one of {s:?} (the layout of the answer)"),
                    None => "size at most 128, the union's bytes".into(),
                },
                format!("{ans:?}"),
            ));
        }
        if matches!(select, inp::CFG_ID_NAME | inp::CFG_ID_SERIAL) && size > 0 {
            self.note(format!("step {}: {what}: {:?}", self.step_no, ans.string()));
        }
        Ok(())
    }

    /// Posts eventq buffers and watches them: with no input none may be used; any used must be
    /// one whole event (R-INPUT-03).
    pub(super) fn input_post(&mut self, step: &Step, a: &InputPostArgs) -> StepResult {
        self.sync_unacked(step)?;
        let n = a.buffers.unwrap_or(8).max(1) as usize;
        let specs = vec![inp::event_buffer(a.indirect == Some(true)); n];
        let posted = self.submit_chains(inp::EVENTQ, &specs)?;
        self.input.posted.extend(posted);
        self.mark(id::R_INPUT_03);
        let window = a.window_ms.map_or(POST_WINDOW, Duration::from_millis);
        let mut pending = std::mem::take(&mut self.input.posted);
        let r = self.wait_chains(inp::EVENTQ, &mut pending, 1, window)?;
        self.input.posted = pending;
        let done = match r {
            Ok(d) => d,
            Err(WaitError::Timeout { .. }) => return Ok(()),
            Err(WaitError::Memory(e)) => return Err(StepError::Harness(crate::engine::chain(&e))),
            Err(e) => return Err(self.not_completed(step, inp::EVENTQ, "an event buffer", e)),
        };
        for d in &done {
            self.judge_common(inp::EVENTQ, "an event buffer", d)?;
            let ev = inp::received_event(d).filter(|_| d.used_len as usize == inp::EVENT_SIZE);
            let Some(ev) = ev else {
                return Err(self.fail(
                    id::R_INPUT_03,
                    &format!("an event buffer was used with length {}", d.used_len),
                    "a used event buffer carries one 8-byte virtio_input_event",
                    format!("{d:?}"),
                ));
            };
            self.note(format!(
                "step {}: the device sent event type {:#x} code {} value {}",
                self.step_no, ev.ev_type, ev.code, ev.value
            ));
        }
        self.mark_datapath(step, inp::EVENTQ);
        Ok(())
    }

    /// An event on the statusq: consumed, used length 0 (R-INPUT-04).
    pub(super) fn input_status(&mut self, step: &Step, a: &InputStatusArgs) -> StepResult {
        self.sync_unacked(step)?;
        let ev = Event {
            ev_type: a.ev_type.unwrap_or(inp::EV_LED),
            code: a.code.unwrap_or(LED_CAPSL),
            value: a.value.unwrap_or(1),
        };
        let spec = inp::status_chain(&ev, a.indirect == Some(true));
        self.mark(id::R_INPUT_04);
        let mut pending = self.submit_chains(inp::STATUSQ, std::slice::from_ref(&spec))?;
        let what = format!(
            "a statusq event type {:#x} code {} value {}",
            ev.ev_type, ev.code, ev.value
        );
        let d = match self.wait_chains(inp::STATUSQ, &mut pending, 1, self.opts.step_timeout)? {
            Ok(mut d) => d.remove(0),
            Err(e) => return Err(self.not_completed(step, inp::STATUSQ, &what, e)),
        };
        self.judge_common(inp::STATUSQ, &what, &d)?;
        self.mark_datapath(step, inp::STATUSQ);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layout_answers_have_their_sizes() {
        assert_eq!(sizes_for(inp::CFG_ID_DEVIDS), Some(&[0, 8][..]));
        assert_eq!(sizes_for(inp::CFG_ABS_INFO), Some(&[0, 20][..]));
        assert_eq!(sizes_for(inp::CFG_ID_NAME), None);
    }
}
