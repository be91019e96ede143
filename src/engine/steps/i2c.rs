//! virtio-i2c steps (virtio 1.2 section 5.19): reads, writes, write-read groups and
//! zero-length requests on the requestq, judged on what every device owes (chains.rs:
//! R-DEV-01..03: a write's buffer is never changed), then on the I2C rules: a status byte
//! OK or ERR (R-I2C-01), ZERO_LENGTH_REQUEST offered (R-I2C-02), requests made available
//! together answered in order (R-I2C-03).

use vhu_mock_frontend::exchange::Exchanged;
use vhu_mock_frontend::i2c::{self, Transfer};

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::model::{GpioStatus, I2cTransferArgs, Step};

/// The address a step talks to when the scenario does not say.
const DEFAULT_ADDR: u8 = 0x20;
/// The most requests one step makes available at once.
const MAX_REQUESTS: usize = 256;

impl Ctx<'_> {
    pub(super) fn i2c_transfer(&mut self, step: &Step, a: &I2cTransferArgs) -> StepResult {
        self.sync_unacked(step)?;
        self.i2c_zero_length_offered()?;
        let idx = i2c::REQUESTQ;
        let addr = a.addr.unwrap_or(DEFAULT_ADDR);
        let group = i2c_group(a);
        let count = a.count.unwrap_or(1).max(1) as usize;
        let indirect = a.indirect == Some(true);
        let mut specs = Vec::new();
        for _ in 0..count.min(MAX_REQUESTS / group.len()) {
            for (i, t) in group.iter().enumerate() {
                let fail_next = i + 1 < group.len();
                specs.push(i2c::request_chain(addr, t, fail_next, indirect));
            }
        }
        let completions = self.exchange_chains(step, idx, &specs, Batching::AtOnce, |n| {
            format!("{n} I2C request(s) to address {addr:#04x}")
        })?;
        let what = format!("I2C request(s) {group:?} to address {addr:#04x}");
        // R-I2C-03: requests made available together are used in the order made available.
        let n = completions.ids.len();
        self.judge_in_order(
            id::R_I2C_03,
            &completions,
            || format!("{n} {what} on queue {idx} were completed out of order"),
            "requests received at a time processed in order (virtio 1.2 5.19.6.2)",
        )?;
        let Completions { done, .. } = completions;
        // In used order, which is the order made available (checked above). After an ERR in
        // a group, the rest of the group is failed whatever its status byte says (5.19.6.1):
        // only judged for what every device owes.
        let mut group_failed = false;
        for (i, d) in done.iter().enumerate() {
            if i % group.len() == 0 {
                group_failed = false;
            }
            if group_failed {
                self.judge_common(idx, &what, d)?;
                continue;
            }
            group_failed = self.judge_i2c(step, idx, &what, a, d)? == i2c::MSG_ERR;
        }
        self.mark_datapath(step, idx);
        Ok(())
    }

    /// R-I2C-02: the device offered VIRTIO_I2C_F_ZERO_LENGTH_REQUEST.
    fn i2c_zero_length_offered(&mut self) -> StepResult {
        self.mark(id::R_I2C_02);
        if self.offer.features & i2c::F_ZERO_LENGTH_REQUEST == 0 {
            return Err(self.fail(
                id::R_I2C_02,
                "the device does not offer VIRTIO_I2C_F_ZERO_LENGTH_REQUEST (bit 0)",
                "feature bit 0 offered: every virtio-i2c device must (virtio 1.2 5.19.6.2)",
                format!("GET_FEATURES {:#x}", self.offer.features),
            ));
        }
        Ok(())
    }

    /// R-DEV-01..03, then the status byte (R-I2C-01) and the status the step expects; the
    /// status.
    fn judge_i2c(
        &mut self,
        step: &Step,
        idx: u16,
        what: &str,
        a: &I2cTransferArgs,
        d: &Exchanged,
    ) -> Result<u8, StepError> {
        self.judge_common(idx, what, d)?;
        self.mark(id::R_I2C_01);
        let status = i2c::status(d);
        let Some(s) = status.filter(|&s| s == i2c::MSG_OK || s == i2c::MSG_ERR) else {
            return Err(self.fail(
                id::R_I2C_01,
                &format!("{what} on queue {idx}: the in header's status byte is {status:02x?}"),
                "VIRTIO_I2C_MSG_OK (0) or VIRTIO_I2C_MSG_ERR (1) written in the last device-writable byte",
                format!("{d:?}"),
            ));
        };
        let Some(want) = a.status else {
            return Ok(s);
        };
        let rule = step.rule.unwrap_or(id::R_I2C_01);
        let wanted = if want == GpioStatus::Ok {
            i2c::MSG_OK
        } else {
            i2c::MSG_ERR
        };
        self.mark(rule);
        if s != wanted {
            return Err(self.fail(
                rule,
                &format!("{what} on queue {idx} was answered with status {s}"),
                &format!("the status {wanted}"),
                format!("{d:?}"),
            ));
        }
        Ok(s)
    }
}

/// The requests of one group, in order: the write then the read of a write-read, else the one
/// request asked for (a one-byte read by default).
fn i2c_group(a: &I2cTransferArgs) -> Vec<Transfer> {
    if a.zero_length == Some(true) {
        return vec![Transfer::ZeroLength];
    }
    let write = a.write_hex.as_ref().map(|h| Transfer::Write(h.0.clone()));
    let read = a.read_len.map(|n| Transfer::Read(n.max(1)));
    match (write, read) {
        (Some(w), Some(r)) => vec![w, r],
        (Some(w), None) => vec![w],
        (None, Some(r)) => vec![r],
        (None, None) => vec![Transfer::Read(1)],
    }
}
