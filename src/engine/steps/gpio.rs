//! virtio-gpio steps (virtio 1.2 section 5.18): the config space (R-GPIO-04) and requestq
//! messages, judged on what every device owes (chains.rs: R-DEV-01..03), then on the GPIO
//! rules: a status byte and every response field written (R-GPIO-01), values in range
//! (R-GPIO-02), the names block (R-GPIO-03), ERR past the last line (R-GPIO-05), a line reading
//! back what was set (R-GPIO-06, a SHOULD), and answers in order for one line (R-GPIO-07).

use vhu_mock_frontend::exchange::{Exchanged, WRITABLE_FILL};
use vhu_mock_frontend::gpio::{self, Config};
use vhu_protocol::wire::ProtocolFeatures;

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::rules::{RuleId, id};
use crate::scenario::model::{GpioMessage, GpioRequestArgs, GpioStatus, Step};

/// The most copies of a message one step makes available at once.
const MAX_COUNT: u32 = 256;
/// The largest names block the harness asks for. Why: gpio_names_size comes from the
/// back-end, and guest memory is finite.
const MAX_NAMES: u32 = 1 << 20;
/// A message type the spec does not define.
const UNKNOWN_TYPE: u16 = 0x7f;

/// What gpio steps keep between steps.
#[derive(Debug, Default)]
pub(super) struct GpioState {
    /// The config space, once read.
    config: Option<Config>,
}

impl Ctx<'_> {
    pub(super) fn gpio_config(&mut self, step: &Step) -> StepResult {
        let c = self.gpio_read_config(step)?;
        self.mark(id::R_GPIO_04);
        if c.padding != [0, 0] {
            return Err(self.fail(
                id::R_GPIO_04,
                &format!("the config space's padding is {:02x?}", c.padding),
                "padding[2] zero (virtio 1.2 5.18.4)",
                format!("{c:?}"),
            ));
        }
        if c.ngpio == 0 {
            self.note(format!(
                "step {}: the config says ngpio 0: no line",
                self.step_no
            ));
        }
        Ok(())
    }

    /// The config space, read once per session (GET_CONFIG needs the CONFIG protocol feature:
    /// without it the scenario does not apply).
    fn gpio_read_config(&mut self, step: &Step) -> Result<Config, StepError> {
        if let Some(c) = self.gpio.config {
            return Ok(c);
        }
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Err(StepError::NotApplicable(
                "the gpio config space (ngpio) needs the CONFIG protocol feature, not negotiated"
                    .into(),
            ));
        }
        let r = self.session()?.get_config(0, gpio::CONFIG_SIZE);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        let c = m.payload.get(12..).and_then(Config::parse);
        let Some(c) = c else {
            return Err(self.fail(
                id::R_GPIO_04,
                "GET_CONFIG of the 8-byte virtio_gpio_config failed",
                "ngpio, padding and gpio_names_size",
                format!("{} payload bytes", m.payload.len()),
            ));
        };
        self.gpio.config = Some(c);
        Ok(c)
    }

    pub(super) fn gpio_request(&mut self, step: &Step, a: &GpioRequestArgs) -> StepResult {
        self.sync_unacked(step)?;
        let needs_config = a.all_lines == Some(true)
            || a.past_end == Some(true)
            || a.request == GpioMessage::GetLineNames;
        let config = if needs_config {
            Some(self.gpio_read_config(step)?)
        } else {
            self.gpio.config
        };
        let lines: Vec<u16> = match (a.all_lines, a.past_end, config) {
            (_, Some(true), Some(c)) => vec![c.ngpio],
            (Some(true), _, Some(c)) => (0..c.ngpio).collect(),
            _ => vec![a.gpio.unwrap_or(0)],
        };
        for line in lines {
            self.gpio_line(step, a, line, config)?;
        }
        self.mark_datapath(step, gpio::REQUESTQ);
        Ok(())
    }

    /// `a.count` copies of the message for `line`, at once, answered in order.
    fn gpio_line(
        &mut self,
        step: &Step,
        a: &GpioRequestArgs,
        line: u16,
        config: Option<Config>,
    ) -> StepResult {
        let idx = gpio::REQUESTQ;
        let (kind, value_len) = match a.request {
            GpioMessage::GetLineNames => {
                let size = config.map_or(0, |c| c.gpio_names_size);
                if size == 0 {
                    return Err(StepError::NotApplicable(
                        "gpio_names_size is 0: the device has no line names (virtio 1.2 5.18.4)"
                            .into(),
                    ));
                }
                (gpio::GET_LINE_NAMES, size.min(MAX_NAMES))
            }
            GpioMessage::GetDirection => (gpio::GET_DIRECTION, 1),
            GpioMessage::SetDirection => (gpio::SET_DIRECTION, 1),
            GpioMessage::GetValue => (gpio::GET_VALUE, 1),
            GpioMessage::SetValue => (gpio::SET_VALUE, 1),
            GpioMessage::Unknown => (UNKNOWN_TYPE, 1),
        };
        // GET_LINE_NAMES names no line: gpio and value are 0 (5.18.6.1).
        let (line, value) = match a.request {
            GpioMessage::GetLineNames => (0, 0),
            _ => (line, a.value.unwrap_or(0)),
        };
        let count = a.count.unwrap_or(1).clamp(1, MAX_COUNT);
        let spec = gpio::request_chain(kind, line, value, value_len, a.indirect == Some(true));
        let specs = vec![spec; count as usize];
        let completions = self.exchange_chains(step, idx, &specs, Batching::AtOnce, |n| {
            format!("{n} GPIO message(s) type {kind:#x} for line {line}")
        })?;
        let what = format!("GPIO message type {kind:#x} for line {line}");
        // R-GPIO-07: messages for one line are answered in the order they were made available.
        self.judge_in_order(
            id::R_GPIO_07,
            &completions,
            || format!("{count} copies of the {what} on queue {idx} were answered out of order"),
            "messages for the same line processed sequentially and answered in the order received (virtio 1.2 5.18.6.1)",
        )?;
        let Completions { done, .. } = completions;
        for d in &done {
            self.judge_gpio(step, idx, &what, a, config, d)?;
        }
        Ok(())
    }

    /// R-DEV-01..03, then the GPIO checks of one response.
    fn judge_gpio(
        &mut self,
        step: &Step,
        idx: u16,
        what: &str,
        a: &GpioRequestArgs,
        config: Option<Config>,
        d: &Exchanged,
    ) -> StepResult {
        self.judge_common(idx, what, d)?;
        self.mark(id::R_GPIO_01);
        let r = gpio::response(d).unwrap_or(gpio::Response {
            status: WRITABLE_FILL,
            value: vec![],
        });
        let unwritten = r.status == WRITABLE_FILL
            || (a.request != GpioMessage::GetLineNames && r.value.first() == Some(&WRITABLE_FILL));
        if unwritten || (r.status != gpio::STATUS_OK && r.status != gpio::STATUS_ERR) {
            return Err(self.fail(
                id::R_GPIO_01,
                &format!(
                    "{what} on queue {idx}: response status {:#04x}, value {:02x?}{}",
                    r.status,
                    &r.value[..r.value.len().min(4)],
                    if unwritten { " (left as the driver filled it)" } else { "" }
                ),
                "every field of virtio_gpio_response written; status VIRTIO_GPIO_STATUS_OK (0) or _ERR (1)",
                format!("{d:?}"),
            ));
        }
        let want = match (a.past_end, a.status) {
            (Some(true), _) => Some((GpioStatus::Err, id::R_GPIO_05)),
            (_, Some(s)) => Some((s, step.rule.unwrap_or(id::R_GPIO_01))),
            _ => None,
        };
        if let Some((s, rule)) = want {
            self.mark(rule);
            let wanted = if s == GpioStatus::Ok {
                gpio::STATUS_OK
            } else {
                gpio::STATUS_ERR
            };
            if r.status != wanted {
                return Err(self.fail(
                    rule,
                    &format!(
                        "{what} on queue {idx} was answered with status {}",
                        r.status
                    ),
                    &format!(
                        "the status {wanted} ({})",
                        if wanted == 0 { "OK" } else { "ERR" }
                    ),
                    format!("{r:?}"),
                ));
            }
        }
        if r.status == gpio::STATUS_OK {
            return self.judge_gpio_value(idx, what, a, config, &r);
        }
        Ok(())
    }

    /// With OK: the value is one the message defines (R-GPIO-02), the names block holds one
    /// unique name per line (R-GPIO-03), and `want_value` (R-GPIO-06).
    fn judge_gpio_value(
        &mut self,
        idx: u16,
        what: &str,
        a: &GpioRequestArgs,
        config: Option<Config>,
        r: &gpio::Response,
    ) -> StepResult {
        let v = r.value.first().copied().unwrap_or(0);
        let (ok, allowed) = match a.request {
            GpioMessage::GetLineNames => return self.judge_gpio_names(idx, what, config, r),
            GpioMessage::GetDirection => (v <= 2, "0 (none), 1 (output) or 2 (input)"),
            GpioMessage::GetValue => (v <= 1, "0 (low) or 1 (high)"),
            GpioMessage::SetDirection | GpioMessage::SetValue | GpioMessage::Unknown => {
                (v == 0, "0")
            }
        };
        self.mark(id::R_GPIO_02);
        if !ok {
            return Err(self.fail(
                id::R_GPIO_02,
                &format!("{what} on queue {idx}: OK with value {v}"),
                &format!("the value {allowed} (virtio 1.2 5.18.6)"),
                format!("{r:?}"),
            ));
        }
        if let Some(w) = a.want_value {
            self.mark(id::R_GPIO_06);
            if v != w {
                return Err(self.fail(
                    id::R_GPIO_06,
                    &format!("{what} on queue {idx}: OK with value {v}, not the {w} set before"),
                    &format!("the value {w}"),
                    format!("{r:?}"),
                ));
            }
        }
        Ok(())
    }

    fn judge_gpio_names(
        &mut self,
        idx: u16,
        what: &str,
        config: Option<Config>,
        r: &gpio::Response,
    ) -> StepResult {
        self.mark(id::R_GPIO_03);
        let ngpio = config.map_or(0, |c| usize::from(c.ngpio));
        let problem = match gpio::names(&r.value) {
            Err(e) => Some(e),
            Ok(names) if names.len() != ngpio => {
                Some(format!("{} names for {ngpio} lines", names.len()))
            }
            Ok(names) => {
                let mut named: Vec<&String> = names.iter().filter(|n| !n.is_empty()).collect();
                named.sort();
                let dup = named
                    .windows(2)
                    .find(|w| w[0] == w[1])
                    .map(|w| w[0].clone());
                dup.map(|d| format!("the name {d:?} is given to two lines"))
            }
        };
        let rule: RuleId = id::R_GPIO_03;
        match problem {
            Some(p) => Err(self.fail(
                rule,
                &format!("{what} on queue {idx}: the names block: {p}"),
                "gpio_names_size bytes: one zero-terminated 7-bit ASCII string per line, unique names",
                format!("{:?}", String::from_utf8_lossy(&r.value)),
            )),
            None => Ok(()),
        }
    }
}
