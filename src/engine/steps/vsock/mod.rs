//! virtio-vsock data-path steps: the driver side of stream connections to the host of a hybrid
//! vsock back-end (a guest connection to host port P reaches the Unix socket `<uds>_P`, where
//! the harness listens and echoes), judged on the ring (R-DEV-01..03), every received header
//! (R-VSOCK-02), the connection's replies (R-VSOCK-01, -03, -04, -05), the config (R-VSOCK-06)
//! and the credit the driver gave (R-VSOCK-07). Every wait has a deadline; a packet nobody
//! expected is taken into account or noted, never waited on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhu_mock_frontend::vsock::{self as drv, Conn, HostBehaviour, HostListener, Packet, RxPool};
use vhu_protocol::ProtocolFeatures;
use vhu_protocol::virtio::vsock::{self, Hdr, op_name};

use super::fs::brief;
use super::{Ctx, StepError, StepResult};
use crate::rules::{RuleId, id};
use crate::scenario::Action;
use crate::scenario::model::Step;

mod stream;

/// Receive buffers kept posted (each one chain of [`RX_BUF`] bytes).
const RX_BUFFERS: usize = 16;
/// Bytes of each receive buffer, header included (Linux's default).
const RX_BUF: u32 = 4096;
/// Largest RW payload the driver sends in one packet.
const TX_CHUNK: usize = 4096;
/// The first guest port the driver connects from.
const FIRST_LOCAL_PORT: u32 = 49152;
/// The receive space the driver announces by default.
const DEFAULT_BUF_ALLOC: u32 = 64 << 10;
/// A socket type vsock does not define (STREAM is 1, SEQPACKET 2).
const UNKNOWN_TYPE: u16 = 0x7fff;

/// The vsock driver of the current vhost-user session.
#[derive(Debug, Default)]
pub struct VsockState {
    guest_cid: Option<u64>,
    rx: Option<RxPool>,
    /// Connections by host port.
    conns: BTreeMap<u32, Conn>,
    /// Host ports whose connection was accepted (RESPONSE).
    established: BTreeSet<u32>,
    /// RW payload received and not yet checked, by host port.
    inbox: BTreeMap<u32, Vec<u8>>,
    /// Host-side listeners by port (they outlive a session: they are host state).
    listeners: BTreeMap<u32, (HostListener, Vec<u8>)>,
    next_port: u32,
    /// The last packet sent, rendered (a finding's `sent`).
    last: Option<String>,
    /// Guest ports a host-initiated connection is awaited on.
    awaiting: BTreeSet<u32>,
}

impl VsockState {
    /// A new vhost-user session: no rings, no connections.
    pub fn new_session(&mut self) {
        self.rx = None;
        self.conns.clear();
        self.established.clear();
        self.inbox.clear();
    }

    fn local_port(&mut self) -> u32 {
        self.next_port += 1;
        FIRST_LOCAL_PORT + self.next_port
    }
}

/// `n` payload bytes that differ along the stream (so a lost or repeated chunk shows).
fn stream_bytes(n: u32, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i % 253) as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn show(h: &Hdr) -> String {
    let (sc, dc, sp, dp, len, ty, op, fl, ba, fc) = (
        h.src_cid,
        h.dst_cid,
        h.src_port,
        h.dst_port,
        h.len,
        h.type_,
        h.op,
        h.flags,
        h.buf_alloc,
        h.fwd_cnt,
    );
    format!(
        "{} (op {op}) src {sc}:{sp} dst {dc}:{dp} len {len} type {ty} flags {fl:#x} buf_alloc {ba} fwd_cnt {fc}",
        op_name(op)
    )
}

/// The port a vsock step names (0 for `vsock_config`).
fn port_of(step: &Step) -> u32 {
    match &step.action {
        Action::VsockListen(a) => a.port,
        Action::VsockConnect(a) => a.port,
        Action::VsockSend(a) => a.port,
        Action::VsockRecv(a) => a.port,
        Action::VsockHostConnect(a) => a.port,
        Action::VsockUnknownType(a) => a.port,
        Action::VsockCreditRequest(a) | Action::VsockShutdown(a) | Action::VsockNoConnection(a) => {
            a.port
        }
        _ => 0,
    }
}

/// The payload bytes a vsock step moves (`bytes`), where it takes them.
fn bytes_of(step: &Step) -> Option<u32> {
    match &step.action {
        Action::VsockListen(a) => a.bytes,
        Action::VsockSend(a) => Some(a.bytes),
        Action::VsockRecv(a) => Some(a.bytes),
        Action::VsockHostConnect(a) => a.bytes,
        _ => None,
    }
}

/// The receive space a connecting step announces (`buf_alloc`).
fn buf_alloc_of(step: &Step) -> Option<u32> {
    match &step.action {
        Action::VsockConnect(a) => a.buf_alloc,
        Action::VsockHostConnect(a) => a.buf_alloc,
        _ => None,
    }
}

/// The seed of the bytes a `vsock_send` writes (`pattern`).
fn pattern_of(step: &Step) -> Option<u8> {
    match &step.action {
        Action::VsockSend(a) => a.pattern,
        _ => None,
    }
}

/// The socket type a `vsock_unknown_type` step asks for.
fn socket_type_of(step: &Step) -> Option<u16> {
    match &step.action {
        Action::VsockUnknownType(a) => a.socket_type,
        _ => None,
    }
}

/// Whether the receive buffers put the header in its own descriptor (`rx_split`).
fn rx_split_of(step: &Step) -> bool {
    matches!(&step.action, Action::VsockConnect(a) if a.rx_split == Some(true))
}

impl Ctx<'_> {
    pub(super) fn vsock_step(&mut self, step: &Step) -> StepResult {
        let before = self.findings.len();
        self.vsock.last = None;
        let r = self.vsock_inner(step);
        let sent = self.vsock.last.clone();
        self.data_path_sent(before, sent, r)
    }

    fn vsock_inner(&mut self, step: &Step) -> StepResult {
        let port = port_of(step);
        match step.action {
            Action::VsockConfig(_) => self.read_guest_cid(step).map(drop),
            Action::VsockListen(_) => self.vsock_listen(step, port),
            Action::VsockConnect(_) => self.vsock_connect(step, port),
            Action::VsockSend(_) => self.vsock_send(step, port),
            Action::VsockRecv(_) => self.vsock_recv(step, port),
            Action::VsockCreditRequest(_) => self.vsock_credit_request(step, port),
            Action::VsockShutdown(_) => self.vsock_shutdown(step, port),
            Action::VsockHostConnect(_) => self.vsock_host_connect(step, port),
            _ => self.vsock_probe_rst(step, port),
        }
    }

    /// The host side of hybrid vsock: `--vsock-uds` (with `{socket}` replaced), else
    /// `<socket>.vsock`.
    fn vsock_uds(&mut self) -> PathBuf {
        let socket = self.inst().socket_path().display().to_string();
        match &self.opts.host.vsock_uds {
            Some(t) => PathBuf::from(t.replace("{socket}", &socket)),
            None => PathBuf::from(format!("{socket}.vsock")),
        }
    }

    /// R-VSOCK-06: GET_CONFIG of the 8-byte config space; guest_cid ≥ 3 and 32 bits.
    fn read_guest_cid(&mut self, step: &Step) -> Result<u64, StepError> {
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Err(StepError::NotApplicable(
                "the guest CID is in the config space, and the CONFIG protocol feature was not negotiated".into(),
            ));
        }
        let r = self.session()?.get_config(0, 8);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        self.mark(id::R_VSOCK_06);
        let Some(cid) = m
            .payload
            .get(12..20)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        else {
            return Err(self.fail(
                id::R_VSOCK_06,
                "GET_CONFIG of the 8-byte virtio-vsock config space failed",
                "the config space: le64 guest_cid",
                format!("{} payload bytes", m.payload.len()),
            ));
        };
        if cid < vsock::MIN_GUEST_CID || cid >= u64::from(u32::MAX) {
            return Err(self.fail(
                id::R_VSOCK_06,
                &format!("config guest_cid is {cid:#x}"),
                "a guest CID of at least 3 whose upper 32 bits are zero (0xffffffff reserved)",
                format!("guest_cid {cid:#x}"),
            ));
        }
        self.vsock.guest_cid = Some(cid);
        Ok(cid)
    }

    fn guest_cid(&mut self, step: &Step) -> Result<u64, StepError> {
        match self.vsock.guest_cid {
            Some(c) => Ok(c),
            None => self.read_guest_cid(step),
        }
    }

    /// Posts the receive buffers once per session (on queue 0, which must be set up).
    fn ensure_rx(&mut self, step: &Step) -> StepResult {
        if self.vsock.rx.is_some() {
            return Ok(());
        }
        let mut pool = RxPool::new(RX_BUF, rx_split_of(step), step.action.indirect());
        let (mut q, mut mem) = self.take_queue(vsock::RX_QUEUE)?;
        let n = RX_BUFFERS.min(usize::from(q.size / 2).max(1));
        let r = pool.post(&mut q, &mut mem, n);
        self.put_queue(vsock::RX_QUEUE, q, mem);
        r.map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
        self.vsock.rx = Some(pool);
        Ok(())
    }

    fn take_queue(
        &mut self,
        idx: u16,
    ) -> Result<
        (
            vhu_mock_frontend::DriverQueue,
            vhu_mock_frontend::GuestMemory,
        ),
        StepError,
    > {
        let q = self.queues.remove(&idx).ok_or_else(|| {
            StepError::Harness(format!(
                "queue {idx} is not set up: add a `vring` step (queue = \"all\")"
            ))
        })?;
        match self.mem.take() {
            Some(m) => Ok((q, m)),
            None => {
                self.queues.insert(idx, q);
                Err(StepError::Harness("no memory".into()))
            }
        }
    }

    fn put_queue(
        &mut self,
        idx: u16,
        q: vhu_mock_frontend::DriverQueue,
        mem: vhu_mock_frontend::GuestMemory,
    ) {
        self.queues.insert(idx, q);
        self.mem = Some(mem);
    }

    /// Sends one packet on the tx queue; its chain must be used like any other (R-DEV-*).
    fn vsock_tx(&mut self, step: &Step, pkt: &Packet) -> StepResult {
        let chain = pkt.chain(!pkt.payload.is_empty(), step.action.indirect());
        let (mut q, mut mem) = self.take_queue(vsock::TX_QUEUE)?;
        let r = drv::send(&mut q, &mut mem, &chain, self.opts.step_timeout);
        self.put_queue(vsock::TX_QUEUE, q, mem);
        let what = format!("tx packet {}", show(&pkt.hdr));
        self.vsock.last = Some(format!("{what} with {} payload bytes", pkt.payload.len()));
        match r {
            Ok(x) => self.judge_ring(step, vsock::TX_QUEUE, &what, Ok(&x)),
            Err(e) => self.judge_ring(step, vsock::TX_QUEUE, &what, Err(e)),
        }
    }

    /// Sends the connection's packet `op` (with the driver's current credit).
    fn conn_send(&mut self, step: &Step, port: u32, op: u16, flags: u32) -> StepResult {
        let pkt = self.conn(port)?.packet(op, flags, Vec::new());
        self.vsock_tx(step, &pkt)
    }

    fn conn(&mut self, port: u32) -> Result<&mut Conn, StepError> {
        self.vsock.conns.get_mut(&port).ok_or_else(|| {
            StepError::Harness(format!(
                "no connection to port {port}: add a vsock_connect step first"
            ))
        })
    }

    /// Receives one packet (waiting up to `within`), judges its ring use and header, and takes
    /// it into account: credit, RW payload into the inbox, a CREDIT_REQUEST answered.
    /// `Ok(None)`: nothing arrived.
    fn pump(&mut self, step: &Step, within: Duration) -> Result<Option<Hdr>, StepError> {
        let within = within.min(self.deadline.saturating_duration_since(Instant::now()));
        let (mut q, mut mem) = self.take_queue(vsock::RX_QUEUE)?;
        let Some(mut pool) = self.vsock.rx.take() else {
            self.put_queue(vsock::RX_QUEUE, q, mem);
            return Err(StepError::Harness("no receive buffers posted".into()));
        };
        let r = pool.recv(&mut q, &mut mem, within);
        self.vsock.rx = Some(pool);
        self.put_queue(vsock::RX_QUEUE, q, mem);
        let got = match r {
            Ok(None) => return Ok(None),
            Ok(Some(got)) => got,
            Err(e) => {
                self.judge_ring(step, vsock::RX_QUEUE, "an rx buffer", Err(e))?;
                return Ok(None);
            }
        };
        let owed = got.notification_due.then_some(got.notified_now);
        self.judge_ring_notified(step, vsock::RX_QUEUE, "an rx buffer", Ok(&got.ring), owed)?;
        self.mark(id::R_VSOCK_02);
        let Some(h) = got.hdr else {
            return Err(self.fail(
                id::R_VSOCK_02,
                "an rx buffer was used with less than a packet header",
                "a 44-byte virtio_vsock_hdr and its payload",
                brief(&got.ring),
            ));
        };
        let guest = self.vsock.guest_cid.unwrap_or(0);
        let (src, dst, len) = (h.src_cid, h.dst_cid, h.len);
        let port = self
            .vsock
            .conns
            .iter()
            .find(|(_, c)| c.owns(&h))
            .map(|(p, _)| *p);
        // A reply to a packet of an unknown type may carry that type: type is checked on
        // connections that were accepted.
        let stream = port.is_some_and(|p| self.vsock.established.contains(&p));
        let type_ok = !stream || h.type_ == vsock::TYPE_STREAM;
        if src != vsock::HOST_CID || dst != guest || len as usize != got.payload.len() || !type_ok {
            return Err(self.fail(
                id::R_VSOCK_02,
                &format!("rx packet header: {}", show(&h)),
                &format!(
                    "src_cid 2 (the host), dst_cid {guest} (the guest), type STREAM, len = used length {} - 44",
                    got.ring.used_len
                ),
                format!("{}; {}", show(&h), brief(&got.ring)),
            ));
        }
        let awaited = h.op == vsock::OP_REQUEST && self.vsock.awaiting.contains(&{ h.dst_port });
        let Some(port) = port.filter(|_| !awaited) else {
            if awaited {
                return Ok(Some(h));
            }
            self.note(format!(
                "step {}: a packet for no connection of the driver: {}",
                self.step_no,
                show(&h)
            ));
            return Ok(Some(h));
        };
        let conn = self.conn(port)?;
        conn.on_packet(&h, len);
        let over = -conn.own_credit();
        let (ba, fwd) = (conn.announced_buf_alloc, conn.announced_fwd_cnt);
        let rx_cnt = conn.rx_cnt;
        if h.op == vsock::OP_RW {
            self.mark(id::R_VSOCK_07);
            self.vsock
                .inbox
                .entry(port)
                .or_default()
                .extend_from_slice(&got.payload);
            if over > 0 {
                return Err(self.fail(
                    id::R_VSOCK_07,
                    &format!("the device sent {over} payload bytes beyond the driver's credit on the connection to port {port}"),
                    &format!("at most buf_alloc {ba} - (rx_cnt - fwd_cnt {fwd}) bytes unacknowledged"),
                    format!("{rx_cnt} bytes received in all, the last packet {}", show(&h)),
                ));
            }
        }
        if h.op == vsock::OP_CREDIT_REQUEST {
            // The driver's duty (5.10.6.3): answer with its credit.
            self.conn_send(step, port, vsock::OP_CREDIT_UPDATE, 0)?;
        }
        Ok(Some(h))
    }

    /// Receives until a packet of the connection to `port` with one of `ops` (or RST) arrives,
    /// for up to `within`.
    fn await_op(
        &mut self,
        step: &Step,
        port: u32,
        ops: &[u16],
        within: Duration,
    ) -> Result<Option<Hdr>, StepError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some(h) = self.pump(step, left)? else {
                return Ok(None);
            };
            let mine = self.vsock.conns.get(&port).is_some_and(|c| c.owns(&h));
            let op = h.op;
            if mine && (ops.contains(&op) || op == vsock::OP_RST) {
                return Ok(Some(h));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_bytes_differ_along_the_stream() {
        let b = stream_bytes(1000, 1);
        assert_ne!(&b[..252], &b[1..253]);
        assert_eq!(first_difference(&b, &b), b.len());
        assert_eq!(first_difference(b"abc", b"abd"), 2);
        assert_eq!(vsock::HDR_SIZE, 44);
    }
}
