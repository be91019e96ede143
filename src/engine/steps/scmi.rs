//! virtio-scmi data-path steps (virtio 1.2 section 5.17): SCMI commands on the cmdq, one by one
//! or a burst at once, judged on what every device owes (chains.rs: R-DEV-01..03), then on the
//! SCMI transport's rules: the response echoes the command's header and starts with a status
//! (R-SCMI-01), an error status comes alone (R-SCMI-02), the BASE protocol answers (R-SCMI-03),
//! what is not implemented is NOT_SUPPORTED (R-SCMI-04), and a burst is served whole (R-SCMI-05).

use vhu_mock_frontend::exchange::Exchanged;
use vhu_mock_frontend::scmi::{self, Header, Response};

use super::{Ctx, StepResult};
use crate::rules::{RuleId, id};
use crate::scenario::model::{ScmiCommandArgs, ScmiStatus, Step};

/// Device-writable bytes of a response when the scenario does not say.
const DEFAULT_RESPONSE: u32 = 128;
/// The most commands one step makes available at once.
const MAX_COUNT: u32 = 256;

impl Ctx<'_> {
    pub(super) fn scmi_command(&mut self, step: &Step, a: &ScmiCommandArgs) -> StepResult {
        self.sync_unacked(step)?;
        let idx = a.queue.unwrap_or(scmi::CMDQ);
        let count = a.count.unwrap_or(1).clamp(1, MAX_COUNT);
        let protocol = a.protocol.unwrap_or(scmi::BASE_PROTOCOL);
        let params = a.params_hex.clone().unwrap_or_default().0;
        let size = a.response_size.unwrap_or(DEFAULT_RESPONSE);
        // Tokens differ per command (and per step), so an echo from another command shows.
        let first_token = (self.step_no as u16).wrapping_mul(37);
        let headers: Vec<Header> = (0..count as u16)
            .map(|i| Header::command(protocol, a.message, first_token.wrapping_add(i)))
            .collect();
        let specs: Vec<_> = headers
            .iter()
            .map(|&h| {
                scmi::command_chain(
                    h,
                    &params,
                    size,
                    a.split == Some(true),
                    a.indirect == Some(true),
                )
            })
            .collect();
        let mark = self.mem.as_ref().map(|m| m.mark());
        let mut pending = self.submit_chains(idx, &specs)?;
        let ids: Vec<u16> = pending.iter().map(|p| p.id).collect();
        let n = pending.len();
        let done = match self.wait_chains(idx, &mut pending, n, self.opts.step_timeout)? {
            Ok(d) => d,
            Err(e) => {
                let rule = match (a.split == Some(true), n > 1) {
                    (true, _) => id::R_SCMI_06,
                    (false, true) => id::R_SCMI_05,
                    (false, false) => id::R_DEV_03,
                };
                let step = Step {
                    rule: Some(step.rule.unwrap_or(rule)),
                    ..step.clone()
                };
                return Err(self.not_completed(&step, idx, &format!("{n} SCMI command(s)"), e));
            }
        };
        if let (Some(m), Some(mark)) = (self.mem.as_mut(), mark) {
            m.release(mark);
        }
        if n > 1 {
            self.mark(id::R_SCMI_05);
        }
        if a.split == Some(true) {
            self.mark(id::R_SCMI_06);
        }
        for d in &done {
            let Some(pos) = ids.iter().position(|&i| i == d.id) else {
                continue;
            };
            self.judge_scmi(step, idx, headers[pos], a, d)?;
        }
        self.mark_datapath(step, idx);
        Ok(())
    }

    /// R-DEV-01..03, then the SCMI checks of one response to the command `sent`.
    fn judge_scmi(
        &mut self,
        step: &Step,
        idx: u16,
        sent: Header,
        a: &ScmiCommandArgs,
        d: &Exchanged,
    ) -> StepResult {
        let what = format!(
            "SCMI command protocol {:#04x} message {:#04x} token {}",
            sent.protocol_id, sent.message_id, sent.token
        );
        self.judge_common(idx, &what, d)?;
        self.mark(id::R_SCMI_01);
        let Some(r) = scmi::response(d) else {
            return Err(self.fail(
                id::R_SCMI_01,
                &format!(
                    "{what} on queue {idx}: the response holds {} bytes",
                    d.used_len
                ),
                "a virtio_scmi_response: the le32 header and the int32 status at least (8 bytes)",
                format!("{d:?}"),
            ));
        };
        if r.header() != sent {
            return Err(self.fail(
                id::R_SCMI_01,
                &format!(
                    "{what} on queue {idx}: the response header {:#010x} is not the command's {:#010x}",
                    r.raw_header,
                    sent.encode()
                ),
                "the command's header echoed: same message id, type, protocol id and token (SCMI 4.1.1)",
                format!("{:?}", r.header()),
            ));
        }
        self.mark(id::R_SCMI_02);
        if r.status != scmi::SUCCESS && !r.values.is_empty() {
            return Err(self.fail(
                id::R_SCMI_02,
                &format!(
                    "{what} on queue {idx}: status {} ({}) is followed by {} more bytes",
                    r.status,
                    scmi::status_name(r.status),
                    r.values.len()
                ),
                "with a status other than SUCCESS, ret_values is the status alone (used length 8)",
                format!("used length {}", d.used_len),
            ));
        }
        self.judge_scmi_status(step, idx, &what, a, &r)
    }

    /// The status the step expects, and with SUCCESS the size of the return values.
    fn judge_scmi_status(
        &mut self,
        step: &Step,
        idx: u16,
        what: &str,
        a: &ScmiCommandArgs,
        r: &Response,
    ) -> StepResult {
        let Some(want) = a.status else {
            return Ok(());
        };
        let (ok, wanted, default_rule) = match want {
            ScmiStatus::Success => (r.status == scmi::SUCCESS, "SUCCESS (0)", id::R_SCMI_03),
            ScmiStatus::NotSupported => (
                r.status == scmi::NOT_SUPPORTED,
                "NOT_SUPPORTED (-1)",
                id::R_SCMI_04,
            ),
            ScmiStatus::NotFound => (r.status == scmi::NOT_FOUND, "NOT_FOUND (-4)", id::R_SCMI_04),
            ScmiStatus::Error => (
                r.status != scmi::SUCCESS,
                "a status other than SUCCESS",
                id::R_SCMI_04,
            ),
        };
        let rule: RuleId = step.rule.unwrap_or(default_rule);
        self.mark(rule);
        if !ok {
            return Err(self.fail(
                rule,
                &format!(
                    "{what} on queue {idx} was answered with status {} ({})",
                    r.status,
                    scmi::status_name(r.status)
                ),
                &format!("the status {wanted}"),
                format!("{r:?}"),
            ));
        }
        match a.values_len {
            Some(n) if r.status == scmi::SUCCESS && r.values.len() != n as usize => Err(self.fail(
                rule,
                &format!(
                    "{what} on queue {idx}: SUCCESS with {} bytes of return values",
                    r.values.len()
                ),
                &format!(
                    "the {n} bytes of return values SCMI defines for the command after the status"
                ),
                format!("{r:?}"),
            )),
            _ => Ok(()),
        }
    }
}
