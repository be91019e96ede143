//! virtio-console data-path steps (virtio 1.2 section 5.3): the config space (R-CONSOLE-04),
//! the MULTIPORT handshake on the control queues (DEVICE_READY answered by DEVICE_ADD,
//! R-CONSOLE-01; every control message well formed, R-CONSOLE-02), port data consumed on a
//! transmitq and, where the port's host side is a TCP address, read back there (R-CONSOLE-03),
//! and a control message the device does not act on (R-CONSOLE-05). Every chain gets the checks
//! every device owes (R-DEV-01..03); a used length on a driver-readable chain is recorded once
//! per step and the step goes on, so one departure does not hide the others.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vhu_mock_frontend::WaitError;
use vhu_mock_frontend::console::{self as con, Control};
use vhu_mock_frontend::exchange::{ChainSpec, Exchanged, Submitted};
use vhu_protocol::ProtocolFeatures;

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::model::{ConsoleControlArgs, ConsoleReadyArgs, ConsoleWriteArgs, Step};

/// Control receive buffers kept posted.
const CTRL_BUFFERS: usize = 8;
/// How long the device gets to send its control messages after DEVICE_READY (default).
const READY_WINDOW: Duration = Duration::from_millis(1000);
/// Quiet time that ends the wait for more control messages once the expected one came.
const QUIET: Duration = Duration::from_millis(150);
/// How long the host side of a port gets to deliver the bytes written.
const TCP_WINDOW: Duration = Duration::from_millis(2000);
/// An event the spec does not define (`console_control`'s default).
const UNKNOWN_EVENT: u16 = 0x7f;

/// The console driver of the current vhost-user session.
#[derive(Debug, Default)]
pub(super) struct ConsoleState {
    /// Control receive buffers posted and not yet used.
    ctrl_rx: Vec<Submitted>,
    /// Ports the device added (DEVICE_ADD).
    ports: BTreeSet<u32>,
    /// Ports the device made consoles (CONSOLE_PORT) and the driver opened.
    opened: BTreeSet<u32>,
    /// max_nr_ports as read from the config space.
    max_nr_ports: Option<u32>,
    /// Chains written so far (seeds each chain's bytes).
    written: u32,
    /// The host side of port 0, once connected.
    tcp: Option<TcpStream>,
    /// The last chain sent, rendered (a finding's `sent`).
    last: Option<String>,
    /// Queues whose chains broke R-DEV-01..03 once already (reported once per session).
    reported: BTreeSet<u16>,
}

/// `n` bytes of printable text that differ chain to chain (so a lost or repeated chain shows,
/// and a back-end that treats port data as text is not thrown).
fn port_bytes(n: u32, seed: u32) -> Vec<u8> {
    (0..n).map(|i| b'a' + ((i + seed * 7) % 26) as u8).collect()
}

/// `n` bytes of every value in turn, starting past ASCII (not valid UTF-8).
fn binary_bytes(n: u32, seed: u32) -> Vec<u8> {
    (0..n).map(|i| (i + 0x80 + seed) as u8).collect()
}

impl Ctx<'_> {
    /// Forgets what was posted on a ring set up again.
    pub(super) fn console_ring_replaced(&mut self, idx: u16) {
        if idx == con::CTRL_RX {
            self.console.ctrl_rx.clear();
        }
    }

    /// Runs a console step, naming the chain it sent in its findings.
    pub(super) fn console_step(&mut self, run: impl FnOnce(&mut Self) -> StepResult) -> StepResult {
        let before = self.findings.len();
        self.console.last = None;
        let r = run(self);
        let sent = self.console.last.clone();
        self.data_path_sent(before, sent, r)
    }

    fn multiport(&self) -> bool {
        self.features & con::F_MULTIPORT != 0
    }

    fn need_multiport(&self) -> StepResult {
        if self.multiport() {
            return Ok(());
        }
        Err(StepError::NotApplicable(
            "the control queues exist only with VIRTIO_CONSOLE_F_MULTIPORT (bit 1), which was not negotiated".into(),
        ))
    }

    /// The config space's 12 bytes, or `None` (with a finding recorded) when GET_CONFIG does
    /// not return them.
    fn console_config_bytes(&mut self, step: &Step) -> Result<con::Config, StepError> {
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Err(StepError::NotApplicable(
                "the console config is read with GET_CONFIG, and the CONFIG protocol feature was not negotiated".into(),
            ));
        }
        let r = self.session()?.get_config(0, con::CONFIG_SIZE);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        match m.payload.get(12..).and_then(con::Config::parse) {
            Some(c) => Ok(c),
            None => Err(self.fail(
                id::R_CONSOLE_04,
                "GET_CONFIG of the 12-byte virtio-console config space returned less",
                "the config space: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr",
                format!("{} payload bytes", m.payload.len()),
            )),
        }
    }

    /// R-CONSOLE-04: max_nr_ports and the queues it implies, with MULTIPORT.
    pub(super) fn console_config(&mut self, step: &Step) -> StepResult {
        let c = self.console_config_bytes(step)?;
        self.console.max_nr_ports = Some(c.max_nr_ports);
        self.note(format!(
            "step {}: console config cols {} rows {} max_nr_ports {} emerg_wr {}",
            self.step_no, c.cols, c.rows, c.max_nr_ports, c.emerg_wr
        ));
        if !self.multiport() {
            // Without MULTIPORT max_nr_ports is not valid: nothing to hold it to.
            return Ok(());
        }
        self.mark(id::R_CONSOLE_04);
        if c.max_nr_ports == 0 {
            return Err(self.fail(
                id::R_CONSOLE_04,
                "with MULTIPORT the config's max_nr_ports is 0",
                "max_nr_ports of at least 1 (port 0 always exists)",
                format!("{c:?}"),
            ));
        }
        let Some(n) = self.queue_num_reported else {
            return Ok(());
        };
        let want = 2 * (u64::from(c.max_nr_ports) + 1);
        if n < want {
            return Err(self.fail(
                id::R_CONSOLE_04,
                &format!(
                    "max_nr_ports {} needs {want} queues; GET_QUEUE_NUM reports {n}",
                    c.max_nr_ports
                ),
                "2 (max_nr_ports + 1) queues: port 0's pair, the control pair, a pair per further port",
                format!("{c:?}; GET_QUEUE_NUM {n}"),
            ));
        }
        Ok(())
    }

    /// Sends one chain on `idx` and waits for it; `Err(finding)` when it is not used.
    fn console_send(
        &mut self,
        step: &Step,
        idx: u16,
        spec: &ChainSpec,
        what: &str,
    ) -> Result<Exchanged, StepError> {
        self.console.last = Some(format!("{what} on queue {idx}"));
        let mut pending = self.submit_chains(idx, std::slice::from_ref(spec))?;
        match self.wait_chains(idx, &mut pending, 1, self.opts.step_timeout)? {
            Ok(mut d) => Ok(d.remove(0)),
            Err(e) => Err(self.not_completed(step, idx, what, e)),
        }
    }

    /// R-DEV-01..03 of a chain. A departure is recorded once per queue and session, and the
    /// scenario goes on: the console's own checks still run (the verdict is a FAIL all the same).
    fn console_judge(&mut self, idx: u16, what: &str, d: &Exchanged) {
        if self.console.reported.contains(&idx) {
            return;
        }
        if let Err(e) = self.judge_common(idx, what, d) {
            self.record(e);
            self.console.reported.insert(idx);
        }
    }

    /// Keeps [`CTRL_BUFFERS`] control receive buffers posted.
    fn post_ctrl_rx(&mut self, indirect: bool) -> StepResult {
        let size = self.queues.get(&con::CTRL_RX).map_or(0, |q| q.size);
        let want = CTRL_BUFFERS.min(usize::from(size / 2).max(1));
        let missing = want.saturating_sub(self.console.ctrl_rx.len());
        if missing == 0 {
            return Ok(());
        }
        let specs = vec![con::control_rx_chain(indirect); missing];
        let posted = self.submit_chains(con::CTRL_RX, &specs)?;
        self.console.ctrl_rx.extend(posted);
        Ok(())
    }

    /// Control messages the device sends within `window`: each judged as it comes (R-DEV-*,
    /// R-CONSOLE-02, and R-CONSOLE-01 for DEVICE_ADD) and its buffer posted again. Once a
    /// message of `until` came, the wait ends after [`QUIET`] without more.
    fn console_receive(
        &mut self,
        window: Duration,
        until: Option<u16>,
        indirect: bool,
    ) -> Result<Vec<Control>, StepError> {
        let end =
            Instant::now() + window.min(self.deadline.saturating_duration_since(Instant::now()));
        let mut got: Vec<Control> = Vec::new();
        let mut quiet_from: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let limit = match quiet_from {
                Some(t) => (t + QUIET).min(end),
                None => end,
            };
            if now >= limit {
                return Ok(got);
            }
            let mut pending = std::mem::take(&mut self.console.ctrl_rx);
            let r = self.wait_chains(con::CTRL_RX, &mut pending, 1, limit - now)?;
            self.console.ctrl_rx = pending;
            let done = match r {
                Ok(d) => d,
                Err(WaitError::Timeout { .. }) => return Ok(got),
                Err(WaitError::Memory(e)) => {
                    return Err(StepError::Harness(crate::engine::chain(&e)));
                }
                Err(e) => {
                    return Err(self.fail(
                        id::R_DEV_03,
                        "a used element on the control receiveq names no posted buffer",
                        "used elements name the head (split) or buffer id (packed) of an available chain",
                        e.to_string(),
                    ));
                }
            };
            for d in &done {
                let msg = self.judge_control(d)?;
                if until == Some(msg.event) && quiet_from.is_none() {
                    quiet_from = Some(Instant::now());
                }
                got.push(msg);
            }
            self.post_ctrl_rx(indirect)?;
        }
    }

    /// R-CONSOLE-02 (and R-CONSOLE-01 for DEVICE_ADD) of one control message the device wrote.
    fn judge_control(&mut self, d: &Exchanged) -> Result<Control, StepError> {
        self.console_judge(con::CTRL_RX, "a control receive buffer", d);
        self.mark(id::R_CONSOLE_02);
        let Some((msg, _rest)) = con::received_control(d) else {
            return Err(self.fail(
                id::R_CONSOLE_02,
                &format!(
                    "a control message of {} bytes on the control receiveq: not a whole virtio_console_control",
                    d.used_len
                ),
                "8 bytes or more: le32 id, le16 event, le16 value",
                format!("{d:?}"),
            ));
        };
        if !con::is_device_event(msg.event) {
            return Err(self.fail(
                id::R_CONSOLE_02,
                &format!("the device sent the control message {msg}"),
                "an event of the device-to-driver direction: DEVICE_ADD, DEVICE_REMOVE, CONSOLE_PORT, RESIZE, PORT_OPEN, PORT_NAME",
                format!("{msg}"),
            ));
        }
        if msg.event == con::DEVICE_ADD {
            self.judge_port_add(&msg)?;
        } else if !self.console.ports.contains(&msg.id) {
            return Err(self.fail(
                id::R_CONSOLE_02,
                &format!("the device sent {msg} for a port it never added"),
                "control messages name a port a DEVICE_ADD created",
                format!("{msg}; ports added: {:?}", self.console.ports),
            ));
        } else if msg.event == con::DEVICE_REMOVE {
            self.console.ports.remove(&msg.id);
        }
        Ok(msg)
    }

    /// R-CONSOLE-01: a DEVICE_ADD names a new port below max_nr_ports.
    fn judge_port_add(&mut self, msg: &Control) -> StepResult {
        self.mark(id::R_CONSOLE_01);
        let max = self.console.max_nr_ports;
        if max.is_some_and(|m| msg.id >= m) || self.console.ports.contains(&msg.id) {
            return Err(self.fail(
                id::R_CONSOLE_01,
                &format!(
                    "DEVICE_ADD of port {} (max_nr_ports {max:?}, ports added {:?})",
                    msg.id, self.console.ports
                ),
                "DEVICE_ADD names a port not added before and below max_nr_ports",
                format!("{msg}"),
            ));
        }
        self.console.ports.insert(msg.id);
        Ok(())
    }

    /// Sends the driver's control message `msg` on the control transmitq; the chain must be used.
    fn console_tell(&mut self, step: &Step, msg: Control, indirect: bool) -> StepResult {
        let what = format!("control message {msg}");
        let d = self.console_send(
            step,
            con::CTRL_TX,
            &con::control_chain(&msg, indirect),
            &what,
        )?;
        self.console_judge(con::CTRL_TX, &what, &d);
        Ok(())
    }

    /// The MULTIPORT handshake: DEVICE_READY, DEVICE_ADD back (R-CONSOLE-01), PORT_READY for
    /// each port, PORT_OPEN for each console port (the driver's duty, 5.3.6.2.1).
    pub(super) fn console_ready(&mut self, step: &Step, a: &ConsoleReadyArgs) -> StepResult {
        self.need_multiport()?;
        self.sync_unacked(step)?;
        let indirect = a.indirect == Some(true);
        if self.console.max_nr_ports.is_none()
            && self.protocol & ProtocolFeatures::CONFIG.bits() != 0
        {
            let r = self.session()?.get_config(0, con::CONFIG_SIZE);
            if let Ok(m) = r {
                self.console.max_nr_ports = m
                    .payload
                    .get(12..)
                    .and_then(con::Config::parse)
                    .map(|c| c.max_nr_ports);
            }
        }
        self.post_ctrl_rx(indirect)?;
        let ready = Control {
            id: 0,
            event: con::DEVICE_READY,
            value: 1,
        };
        self.console_tell(step, ready, indirect)?;
        let window = a.window_ms.map_or(READY_WINDOW, Duration::from_millis);
        let got = self.console_receive(window, Some(con::DEVICE_ADD), indirect)?;
        self.mark(id::R_CONSOLE_01);
        let added: Vec<u32> = got
            .iter()
            .filter(|m| m.event == con::DEVICE_ADD)
            .map(|m| m.id)
            .collect();
        if added.is_empty() {
            return Err(self.fail(
                id::R_CONSOLE_01,
                &format!(
                    "DEVICE_READY was not answered with DEVICE_ADD within {} ms",
                    window.as_millis()
                ),
                "a DEVICE_ADD on the control receiveq for each port (at least port 0)",
                format!("control messages received: {}", render(&got)),
            ));
        }
        let mut consoles = self.consoles_of(&got);
        for port in added {
            let msg = Control {
                id: port,
                event: con::PORT_READY,
                value: 1,
            };
            self.console_tell(step, msg, indirect)?;
            let more = self.console_receive(QUIET * 3, Some(con::PORT_OPEN), indirect)?;
            consoles.extend(self.consoles_of(&more));
        }
        for port in consoles {
            if self.console.opened.insert(port) {
                let open = Control {
                    id: port,
                    event: con::PORT_OPEN,
                    value: 1,
                };
                self.console_tell(step, open, indirect)?;
            }
        }
        self.mark_datapath(step, con::CTRL_TX);
        self.mark_datapath(step, con::CTRL_RX);
        Ok(())
    }

    fn consoles_of(&self, got: &[Control]) -> Vec<u32> {
        got.iter()
            .filter(|m| m.event == con::CONSOLE_PORT && m.value == 1)
            .map(|m| m.id)
            .collect()
    }

    /// Port data on a transmitq: every chain consumed (R-CONSOLE-03), and with the host side
    /// given, the bytes read there.
    pub(super) fn console_write(&mut self, step: &Step, a: &ConsoleWriteArgs) -> StepResult {
        self.sync_unacked(step)?;
        let port = a.port.unwrap_or(0);
        if port > 0 && !self.console.ports.contains(&port) {
            if !self.multiport() {
                return Err(StepError::Harness(format!(
                    "port {port} needs MULTIPORT and a console_ready step first"
                )));
            }
            // The device decides which ports exist (DEVICE_ADD): fewer is its right.
            return Err(StepError::NotApplicable(format!(
                "the device added ports {:?} (after a console_ready step), not port {port}",
                self.console.ports
            )));
        }
        let (_, tx) = con::port_queues(port);
        let n = a.count.unwrap_or(1).max(1);
        let bytes = a.bytes.unwrap_or(64).max(1);
        let segments = a.segments.unwrap_or(1);
        let indirect = a.indirect == Some(true);
        let mut sent = Vec::new();
        let specs: Vec<ChainSpec> = (0..n)
            .map(|_| {
                self.console.written += 1;
                let data = if a.binary == Some(true) {
                    binary_bytes(bytes, self.console.written)
                } else {
                    port_bytes(bytes, self.console.written)
                };
                sent.extend_from_slice(&data);
                con::data_chain(&data, segments, indirect)
            })
            .collect();
        let what = format!("{n} chain(s) of {bytes} bytes of port {port} data");
        self.console.last = Some(format!("{what} on queue {tx}"));
        self.mark(id::R_CONSOLE_03);
        // Port data never consumed breaks R-CONSOLE-03 (unless the step cites another).
        let citing = step.clone().citing(step.rule.unwrap_or(id::R_CONSOLE_03));
        let batching = Batching::from_at_once(a.at_once);
        let Completions { done, .. } =
            self.exchange_chains(&citing, tx, &specs, batching, |_| what.clone())?;
        for d in &done {
            self.console_judge(tx, "a port data chain", d);
        }
        self.mark_datapath(step, tx);
        if port == 0 {
            self.console_host_read(&sent)?;
        }
        Ok(())
    }

    /// With `--console-tcp`, the bytes written on port 0 must arrive there, in order.
    fn console_host_read(&mut self, sent: &[u8]) -> StepResult {
        let Some(addr) = self.opts.host.console_tcp.clone() else {
            return Ok(());
        };
        if self.console.tcp.is_none() {
            self.console.tcp = connect_within(&addr, TCP_WINDOW);
        }
        let Some(stream) = self.console.tcp.as_mut() else {
            self.note(format!(
                "step {}: the console's host side {addr} (--console-tcp) accepted no connection: the bytes written were not read back",
                self.step_no
            ));
            return Ok(());
        };
        let got = read_within(stream, sent.len(), TCP_WINDOW);
        if got.as_slice() == sent {
            return Ok(());
        }
        let at = got.iter().zip(sent).position(|(a, b)| a != b);
        Err(self.fail(
            id::R_CONSOLE_03,
            &format!(
                "{} bytes written on port 0; its host side {addr} read {} bytes{}",
                sent.len(),
                got.len(),
                at.map(|i| format!(", the first difference at byte {i}"))
                    .unwrap_or_default()
            ),
            "the port's bytes arrive on its host side intact and in order",
            format!("{:?}", String::from_utf8_lossy(&got[..got.len().min(80)])),
        ))
    }

    /// A control message the device does not act on: it must be consumed (R-CONSOLE-05 by
    /// default; the step's `rule` otherwise), the device serving on.
    pub(super) fn console_control(&mut self, step: &Step, a: &ConsoleControlArgs) -> StepResult {
        self.need_multiport()?;
        self.sync_unacked(step)?;
        let msg = Control {
            id: a.id.unwrap_or(0),
            event: a.event.unwrap_or(UNKNOWN_EVENT),
            value: a.value.unwrap_or(1),
        };
        let rule = self.rule_of(step);
        self.mark(rule);
        // A chain never used breaks the scenario's rule (R-CONSOLE-05), not only R-DEV-03.
        let step = &step.clone().citing(rule);
        self.console_tell(step, msg, a.indirect == Some(true))?;
        self.mark_datapath(step, con::CTRL_TX);
        Ok(())
    }
}

/// The messages, rendered.
fn render(got: &[Control]) -> String {
    if got.is_empty() {
        return "none".into();
    }
    got.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A connection to `addr`, retried until `within` passes (the back-end may listen only once
/// the port was first written).
fn connect_within(addr: &str, within: Duration) -> Option<TcpStream> {
    let end = Instant::now() + within;
    loop {
        if let Ok(s) = TcpStream::connect(addr) {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Up to `n` bytes read from `s` within `within`.
fn read_within(s: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    let end = Instant::now() + within;
    let mut got = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    while got.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_bytes_are_text_and_differ_by_seed() {
        let a = port_bytes(40, 1);
        assert!(a.iter().all(u8::is_ascii_lowercase));
        assert_ne!(a, port_bytes(40, 2));
        assert_eq!(render(&[]), "none");
    }
}
