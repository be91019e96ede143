//! virtio-scmi data-path steps (virtio 1.2 section 5.17): SCMI commands on the cmdq, one by one
//! or a burst at once, judged on what every device owes (chains.rs: R-DEV-01..03), then on the
//! SCMI transport's rules: the response echoes the command's header and starts with a status
//! (R-SCMI-01), an error status comes alone (R-SCMI-02), the BASE protocol answers (R-SCMI-03),
//! what is not implemented is NOT_SUPPORTED (R-SCMI-04), and a burst is served whole (R-SCMI-05).

use vhu_mock_frontend::exchange::Exchanged;
use vhu_mock_frontend::scmi::{self, Header, Response};

use super::chains::{Batching, Completions};
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
        let rule = match (a.split == Some(true), specs.len() > 1) {
            (true, _) => id::R_SCMI_06,
            (false, true) => id::R_SCMI_05,
            (false, false) => id::R_DEV_03,
        };
        let citing = step.clone().citing(step.rule.unwrap_or(rule));
        let Completions { ids, done } =
            self.exchange_chains(&citing, idx, &specs, Batching::AtOnce, |n| {
                format!("{n} SCMI command(s)")
            })?;
        if specs.len() > 1 {
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
        let header = r.header();
        let shape = (header.protocol_id == scmi::BASE_PROTOCOL && r.status == scmi::SUCCESS)
            .then(|| base_shape_problem(header.message_id, &r.values))
            .flatten();
        if let Some(problem) = shape {
            self.mark(id::R_SCMI_03);
            return Err(self.fail(
                id::R_SCMI_03,
                &format!("{what} on queue {idx}: SUCCESS, but {problem}"),
                "the return values SCMI defines for the BASE command (SCMI 4.2.2)",
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

/// What is wrong with the return values (after the status) of a successful BASE command whose
/// layout SCMI fixes (4.2.2.1 to 4.2.2.7), if anything; `None` for the other messages.
fn base_shape_problem(message: u8, values: &[u8]) -> Option<String> {
    let want = match message {
        scmi::PROTOCOL_VERSION | scmi::PROTOCOL_ATTRIBUTES | scmi::PROTOCOL_MESSAGE_ATTRIBUTES => 4,
        // BASE_DISCOVER_IMPLEMENTATION_VERSION: a uint32.
        0x5 => 4,
        scmi::BASE_DISCOVER_VENDOR | 0x4 => {
            // A NUL-terminated ASCII string of up to 16 bytes.
            let nul = values.iter().position(|&b| b == 0);
            if values.len() == 16 && !nul.is_some_and(|n| values[..n].is_ascii()) {
                return Some(format!(
                    "the vendor string {values:02x?} is not NUL-terminated ASCII"
                ));
            }
            16
        }
        scmi::BASE_DISCOVER_LIST_PROTOCOLS => {
            // num_protocols, then that many protocol ids packed four to a uint32.
            let n = values
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            4 + 4 * (n as usize).div_ceil(4)
        }
        _ => return None,
    };
    (values.len() != want).then(|| {
        format!(
            "{} bytes of return values after the status, not the {want} the command defines",
            values.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::base_shape_problem;

    #[test]
    fn base_return_values_are_measured_against_scmi() {
        assert_eq!(base_shape_problem(0x0, &[0, 0, 2, 0]), None);
        assert!(base_shape_problem(0x1, &[0; 8]).is_some());
        let mut vendor = b"rust-vmm".to_vec();
        vendor.resize(16, 0);
        assert_eq!(base_shape_problem(0x3, &vendor), None);
        assert!(base_shape_problem(0x3, &[b'a'; 16]).is_some());
        // Five protocols: the count, then two words of ids.
        let mut list = 5u32.to_le_bytes().to_vec();
        list.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0, 0, 0]);
        assert_eq!(base_shape_problem(0x6, &list), None);
        assert!(base_shape_problem(0x6, &list[..8]).is_some());
        assert_eq!(base_shape_problem(0x9, &[]), None);
    }
}
