//! virtio-net data-path steps (virtio 1.2 section 5.1.6): frames transmitted on a TX ring
//! (used with length 0, R-NET-01), receive buffers posted on an RX ring, the frames a
//! forwarding back-end (DPDK testpmd's loop) sends back checked for header (R-NET-02/03/04)
//! and bytes and order (R-NET-05), control commands (R-NET-06) and the config fields
//! (R-NET-07). Every completion first gets the checks every device owes (chains.rs).
//!
//! A back-end that does not forward is not at fault: when nothing comes back the RX step
//! skips the scenario, saying so.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use vhu_mock_frontend::WaitError;
use vhu_mock_frontend::exchange::{Exchanged, Submitted};
use vhu_mock_frontend::net::{self as netdrv, RxFrame};
use vhu_protocol::FrontendReq;
use vhu_protocol::virtio::net as vnet;
use vhu_protocol::wire::payload::Body;

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::rules::id;
use crate::scenario::Expect;
use crate::scenario::model::{NetCtrlArgs, NetRxArgs, NetRxPostArgs, NetTxArgs, Step};

/// What net steps keep between steps.
#[derive(Debug, Default)]
pub(super) struct NetState {
    /// Receive buffers posted and not used yet, by RX queue, in the order posted.
    rx: BTreeMap<u16, Vec<Submitted>>,
    /// Frames transmitted and not yet seen back, by TX queue, in the order sent.
    sent: BTreeMap<u16, VecDeque<Vec<u8>>>,
    /// TX chains a `net_tx` with `expect = "no_reply"` left pending, by queue, with their frames.
    tx_pending: BTreeMap<u16, (Vec<Submitted>, Vec<Vec<u8>>)>,
    /// The next frame's sequence number.
    seq: u32,
}

impl Ctx<'_> {
    /// Forgets the receive buffers and pending transmits of a ring set up again.
    pub(super) fn net_ring_replaced(&mut self, idx: u16) {
        self.net.rx.remove(&idx);
        self.net.tx_pending.remove(&idx);
    }

    fn negotiated(&self, bits: u64) -> bool {
        self.features & bits != 0
    }

    pub(super) fn net_tx(&mut self, step: &Step, a: &NetTxArgs) -> StepResult {
        self.sync_unacked(step)?;
        let idx = a.queue.unwrap_or(1);
        if self.net.tx_pending.contains_key(&idx) {
            // Their completions would be used elements this transmit does not know.
            return Err(StepError::Harness(format!(
                "queue {idx} still has frames a net_tx with expect = \"no_reply\" left pending: add net_complete first"
            )));
        }
        let old_call = self.maybe_swap_call(step, a.new_call == Some(true), idx)?;
        let n = a.frames.unwrap_or(1).max(1);
        let len = a.frame_len.unwrap_or(64) as usize;
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                self.net.seq += 1;
                netdrv::frame(self.net.seq, len)
            })
            .collect();
        let segments = a.segments.unwrap_or(1);
        let indirect = a.indirect == Some(true);
        let specs: Vec<_> = frames
            .iter()
            .map(|f| netdrv::tx_chain(f, segments, indirect))
            .collect();
        if step.expect == Some(Expect::NoReply) {
            let mut pending = self.submit_chains(idx, &specs)?;
            let window = Duration::from_millis(a.window_ms.unwrap_or(300));
            self.mark(self.rule_of(step));
            return match self.wait_chains(idx, &mut pending, 1, window)? {
                Err(WaitError::Timeout { got: 0, .. }) => {
                    self.net.tx_pending.insert(idx, (pending, frames));
                    Ok(())
                }
                Err(WaitError::Memory(e)) => Err(StepError::Harness(chain(&e))),
                other => {
                    let (summary, expected) = self.completed_anyway(idx, "a transmitted frame");
                    Err(self.finding(step, &summary, expected, format!("{other:?}")))
                }
            };
        }
        let Completions { done, .. } =
            self.exchange_chains(step, idx, &specs, Batching::AtOnce, |_| {
                format!("{n} transmitted frame(s)")
            })?;
        self.judge_tx(step, idx, &done, frames[0].len())?;
        self.net.sent.entry(idx).or_default().extend(frames);
        self.check_old_call(idx, old_call)
    }

    /// R-DEV-01..03, then R-NET-01: a transmit chain has no writable byte, so its used length
    /// is 0 (a back-end reporting the frame's length breaks 2.7.8.2 as well as 5.1.6.2). On a
    /// packed ring the length of a used descriptor without VIRTQ_DESC_F_WRITE "is reserved ...
    /// and is ignored by drivers" (virtio 1.2 2.8.4): there it is noted, not judged.
    fn judge_tx(
        &mut self,
        step: &Step,
        idx: u16,
        done: &[Exchanged],
        frame_len: usize,
    ) -> StepResult {
        let packed = self
            .queues
            .get(&idx)
            .is_some_and(|q| q.layout() == vhu_mock_frontend::RingLayout::Packed);
        let mut reserved_lens = Vec::new();
        for d in done {
            let what = format!(
                "a transmitted frame ({} bytes with its header)",
                frame_len + vnet::HDR_LEN
            );
            let mut d = d.clone();
            if packed && d.writable_len == 0 {
                if d.used_len != 0 {
                    reserved_lens.push(d.used_len);
                }
                d.used_len = 0;
            } else {
                self.mark(id::R_NET_01);
            }
            if d.used_len != 0 && d.canary_intact && d.readonly_intact {
                return Err(self.fail(
                    id::R_NET_01,
                    &format!("{what} on TX queue {idx} was used with length {}", d.used_len),
                    "used length 0: a transmit chain has no device-writable bytes (virtio 1.2 2.7.8.2: \"MUST NOT set len to a value larger than the total size of device-writable buffers\")",
                    format!("{d:?}"),
                ));
            }
            self.judge_common(idx, &what, &d)?;
        }
        if !reserved_lens.is_empty() {
            self.note(format!(
                "step {}: packed TX queue {idx}: used lengths {reserved_lens:?} on descriptors without WRITE, \
                 a field the spec reserves and drivers ignore there (virtio 1.2 2.8.4): not judged",
                self.step_no
            ));
        }
        self.mark_datapath(step, idx);
        Ok(())
    }

    pub(super) fn net_complete(&mut self, step: &Step, queue: Option<u16>) -> StepResult {
        let idx = queue.unwrap_or(1);
        let (mut pending, frames) = self.net.tx_pending.remove(&idx).ok_or_else(|| {
            StepError::Harness(format!(
                "no pending frame on queue {idx}: use net_tx with expect = \"no_reply\" first"
            ))
        })?;
        let n = pending.len();
        let done = match self.wait_chains(idx, &mut pending, n, self.opts.step_timeout)? {
            Ok(d) => d,
            Err(e) => {
                return Err(self.not_completed(step, idx, &format!("{n} transmitted frame(s)"), e));
            }
        };
        self.judge_tx(step, idx, &done, frames.first().map_or(0, Vec::len))?;
        self.net.sent.entry(idx).or_default().extend(frames);
        Ok(())
    }

    pub(super) fn net_rx_post(&mut self, a: &NetRxPostArgs) -> StepResult {
        let idx = a.queue.unwrap_or(0);
        let size = a.buffer_size.unwrap_or(1526);
        let n = a.buffers.unwrap_or(8);
        let spec = netdrv::rx_chain(size, a.segments.unwrap_or(1), a.indirect == Some(true));
        let specs = vec![spec; n as usize];
        let posted = self.submit_chains(idx, &specs)?;
        self.net.rx.entry(idx).or_default().extend(posted);
        Ok(())
    }

    /// Waits for the frames sent on the TX ring of the RX ring's pair to come back, and checks
    /// each (or, with `expect = "no_reply"`, that none comes back within the window).
    pub(super) fn net_rx(&mut self, step: &Step, a: &NetRxArgs) -> StepResult {
        self.sync_unacked(step)?;
        let idx = a.queue.unwrap_or(0);
        let tx = idx + 1;
        let mut expected = self.net.sent.remove(&tx).unwrap_or_default();
        let no_reply = step.expect == Some(Expect::NoReply);
        if expected.is_empty() && !no_reply {
            return Err(StepError::Harness(format!(
                "net_rx on queue {idx}: no frame was sent on TX queue {tx}: add a net_tx step first"
            )));
        }
        if self.net.rx.get(&idx).is_none_or(|p| p.is_empty()) {
            return Err(StepError::Harness(format!(
                "net_rx on queue {idx}: no receive buffer is posted: add a net_rx_post step first"
            )));
        }
        let mut pending = self.net.rx.remove(&idx).unwrap_or_default();
        let window =
            Duration::from_millis(a.window_ms.unwrap_or(if no_reply { 500 } else { 2000 }));
        let deadline = Instant::now() + window;
        let (total, mut seen, mut foreign) = (expected.len(), 0usize, 0usize);
        // Buffers used and collected but not yet read as frames, in used-ring order.
        let mut ready = VecDeque::new();
        let result = loop {
            if expected.is_empty() && !no_reply {
                break Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if ready.is_empty() {
                if pending.is_empty() {
                    break Ok(());
                }
                // Every frame still awaited takes at least one buffer: wait for that many at
                // once (a back-end signals a batch once), then one by one for what is there
                // (once the window is over, only for what is already used).
                let want = if no_reply || left.is_zero() {
                    1
                } else {
                    expected.len().min(pending.len())
                };
                let mut got = self.wait_chains(idx, &mut pending, want, left)?;
                if want > 1 && matches!(got, Err(WaitError::Timeout { got: 1.., .. })) {
                    got = self.wait_chains(idx, &mut pending, 1, Duration::ZERO)?;
                }
                match got {
                    Ok(d) => ready.extend(d),
                    Err(WaitError::Timeout { .. }) => break Ok(()),
                    Err(e) => break Err(self.not_completed(step, idx, "a receive buffer", e)),
                }
            }
            let first = ready.pop_front().expect("not empty");
            let next = expected.front().cloned();
            match self.take_rx_frame(idx, first, next.as_deref(), &mut ready, &mut pending) {
                Ok(f) => match netdrv::frame_seq(&f.frame) {
                    None => foreign += 1,
                    Some(_) if no_reply => {
                        self.mark(self.rule_of(step));
                        break Err(self.finding(
                            step,
                            &format!("a frame came back on RX queue {idx} although the ring must not deliver it"),
                            "no frame delivered while the ring is disabled (\"without side effects\")",
                            format!("{} bytes, num_buffers {}", f.frame.len(), f.hdr.num_buffers),
                        ));
                    }
                    Some(_) => {
                        seen += 1;
                        let want = expected.pop_front().expect("not empty");
                        if let Err(e) = self.judge_frame(idx, &f, &want, &expected) {
                            break Err(e);
                        }
                    }
                },
                Err(e) => break Err(e),
            }
        };
        self.net.rx.insert(idx, pending);
        result?;
        if foreign > 0 {
            self.note(format!(
                "step {}: {foreign} frame(s) on RX queue {idx} that the harness did not send (e.g. a RARP): not judged",
                self.step_no
            ));
        }
        if no_reply {
            self.mark(self.rule_of(step));
            return Ok(());
        }
        if seen == 0 && total > 0 {
            return Err(StepError::NotApplicable(format!(
                "no frame came back on RX queue {idx} within {window:?} of {total} sent on TX queue {tx}: \
                 not a forwarding back-end (its TX checks passed), so the RX checks could not run"
            )));
        }
        self.mark(id::R_NET_05);
        if seen < total {
            return Err(self.fail(
                id::R_NET_05,
                &format!("{seen} of {total} frames sent on TX queue {tx} came back on RX queue {idx} within {window:?}"),
                "a forwarding back-end delivers every frame (enough receive buffers were posted)",
                format!("{} lost", total - seen),
            ));
        }
        self.mark_datapath(step, idx);
        Ok(())
    }

    /// Reads one received frame starting at `first`, taking the further buffers a merged frame
    /// (MRG_RXBUF) occupies, and checks its header: R-NET-02 (header present), R-NET-03
    /// (num_buffers), R-NET-04 (flags and gso_type the driver did not negotiate).
    fn take_rx_frame(
        &mut self,
        idx: u16,
        first: Exchanged,
        awaited: Option<&[u8]>,
        ready: &mut VecDeque<Exchanged>,
        pending: &mut Vec<Submitted>,
    ) -> Result<RxFrame, StepError> {
        self.judge_common(idx, "a receive buffer", &first)?;
        self.mark(id::R_NET_02);
        // The frame awaited starting 2 bytes early: the 10-byte legacy header, which VERSION_1
        // replaced with virtio_net_hdr_v1 (virtio 1.2 5.1.6).
        let bytes = first.reply();
        let prefix_of =
            |at: usize| awaited.is_some_and(|w| bytes.len() > at && w.starts_with(&bytes[at..]));
        if prefix_of(vnet::HDR_LEN - 2) && !prefix_of(vnet::HDR_LEN) {
            return Err(self.fail(
                id::R_NET_02,
                &format!(
                    "a frame on RX queue {idx} starts at byte 10: a 10-byte legacy header, not the 12-byte virtio_net_hdr_v1"
                ),
                "with VERSION_1 every received frame is written behind the 12-byte virtio_net_hdr_v1 (num_buffers included)",
                format!("used length {}, first bytes {:02x?}", first.used_len, &bytes[..bytes.len().min(24)]),
            ));
        }
        let mut f = match netdrv::parse_rx(&first) {
            Ok(f) => f,
            Err(e) => {
                return Err(self.fail(
                    id::R_NET_02,
                    &format!("a receive buffer on RX queue {idx}: {e}"),
                    "a received frame is written behind a 12-byte virtio_net_hdr_v1",
                    format!("{first:?}"),
                ));
            }
        };
        self.mark(id::R_NET_03);
        let mrg = self.negotiated(vnet::F_MRG_RXBUF);
        let nb = f.hdr.num_buffers;
        if (!mrg && nb != 1) || (mrg && nb == 0) {
            // Two bytes still holding the harness's fill were never written by the device.
            let unwritten =
                if nb == u16::from_ne_bytes([vhu_mock_frontend::exchange::WRITABLE_FILL; 2]) {
                    " (never written: still the harness's 0xa7 fill)"
                } else {
                    ""
                };
            return Err(self.fail(
                id::R_NET_03,
                &format!(
                    "a frame on RX queue {idx} has num_buffers {nb}{unwritten} (MRG_RXBUF {})",
                    if mrg { "negotiated" } else { "not negotiated" }
                ),
                if mrg {
                    "num_buffers = the number of buffers the frame was written into (at least 1)"
                } else {
                    "num_buffers 1: without MRG_RXBUF a frame uses one buffer (virtio 1.2 5.1.6.4.1)"
                },
                format!("header {:?}, used length {}", f.hdr, first.used_len),
            ));
        }
        for k in 1..nb {
            let next = match ready.pop_front() {
                Some(more) => Ok(vec![more]),
                None => self.wait_chains(idx, pending, 1, self.opts.step_timeout)?,
            };
            match next {
                Ok(mut d) => {
                    let more = d.remove(0);
                    self.judge_common(idx, "a merged receive buffer", &more)?;
                    f.extend(&more);
                }
                Err(e) => {
                    return Err(self.fail(
                        id::R_NET_03,
                        &format!("a frame on RX queue {idx} says num_buffers {nb} but only {k} buffer(s) were used"),
                        "num_buffers = the number of buffers the frame was written into",
                        e.to_string(),
                    ));
                }
            }
        }
        self.mark(id::R_NET_04);
        let csum = self.negotiated(vnet::F_GUEST_CSUM);
        let gso = self.negotiated(vnet::F_GUEST_GSO | vnet::F_GUEST_USO);
        let bad_flags = if csum {
            f.hdr.flags & !(vnet::HDR_F_NEEDS_CSUM | vnet::HDR_F_DATA_VALID) != 0
        } else {
            f.hdr.flags != 0
        };
        if bad_flags || (!gso && f.hdr.gso_type != vnet::GSO_NONE) {
            return Err(self.fail(
                id::R_NET_04,
                &format!("a frame on RX queue {idx} has header flags {:#x}, gso_type {}", f.hdr.flags, f.hdr.gso_type),
                if csum {
                    "flags within NEEDS_CSUM | DATA_VALID (GUEST_CSUM negotiated), gso_type NONE without GUEST_TSO/UFO/USO"
                } else {
                    "flags 0 without GUEST_CSUM, gso_type NONE without GUEST_TSO/UFO/USO (virtio 1.2 5.1.6.4.1)"
                },
                format!("header {:?}", f.hdr),
            ));
        }
        Ok(f)
    }

    /// R-NET-05: the frame that came back is the next one sent, byte for byte.
    fn judge_frame(
        &mut self,
        idx: u16,
        f: &RxFrame,
        want: &[u8],
        rest: &VecDeque<Vec<u8>>,
    ) -> StepResult {
        self.mark(id::R_NET_05);
        if f.frame == want {
            return Ok(());
        }
        let got_seq = netdrv::frame_seq(&f.frame);
        let why = if rest.iter().any(|r| netdrv::frame_seq(r) == got_seq) {
            format!(
                "frame {:?} came back before frame {:?}: out of order",
                got_seq,
                netdrv::frame_seq(want)
            )
        } else if f.frame.len() != want.len() {
            format!(
                "{} bytes came back for a {}-byte frame",
                f.frame.len(),
                want.len()
            )
        } else {
            let at = f
                .frame
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            format!("byte {at} is {:#04x}, sent {:#04x}", f.frame[at], want[at])
        };
        Err(self.fail(
            id::R_NET_05,
            &format!("a frame on RX queue {idx} differs from the one sent: {why}"),
            "a forwarding back-end delivers each frame byte for byte, in order",
            format!(
                "{} bytes over {} buffer(s), header {:?}",
                f.frame.len(),
                f.used_lens.len(),
                f.hdr
            ),
        ))
    }

    /// A control command on the control ring (default queue 2: the one after the first pair,
    /// as without VIRTIO_NET_F_MQ). In vhost-user the front-end commonly serves the control
    /// queue itself (QEMU does), so a back-end that leaves it alone skips the scenario.
    pub(super) fn net_ctrl(&mut self, step: &Step, a: &NetCtrlArgs) -> StepResult {
        self.sync_unacked(step)?;
        let idx = a.queue.unwrap_or(2);
        let data = a.payload_hex.clone().unwrap_or_default().0;
        let (class, command) = (a.class, a.command);
        let spec = netdrv::ctrl_chain(class, command, &data);
        let mut pending = self.submit_chains(idx, std::slice::from_ref(&spec))?;
        let window = Duration::from_millis(a.window_ms.unwrap_or(1000));
        let done = match self.wait_chains(idx, &mut pending, 1, window)? {
            Ok(mut d) => d.remove(0),
            Err(WaitError::Timeout { .. }) => {
                return Err(StepError::NotApplicable(format!(
                    "the control command (class {class}, command {command}) on queue {idx} was not answered within {window:?}: \
                     the back-end does not serve the control ring (vhost-user front-ends such as QEMU usually handle it themselves)"
                )));
            }
            Err(e) => return Err(self.not_completed(step, idx, "a control command", e)),
        };
        let what = format!("control command class {class} command {command}");
        self.judge_common(idx, &what, &done)?;
        self.mark(id::R_NET_06);
        let ack = netdrv::ctrl_ack(&done).filter(|_| done.used_len >= 1);
        let ok = match (ack, a.ack) {
            (Some(a), Some(want)) => a == want,
            (Some(a), None) => a == vnet::OK || a == vnet::ERR,
            (None, _) => false,
        };
        if !ok {
            let wanted = match a.ack {
                Some(vnet::OK) => "the ack VIRTIO_NET_OK (0)".to_string(),
                Some(vnet::ERR) => "the ack VIRTIO_NET_ERR (1)".to_string(),
                Some(v) => format!("the ack {v}"),
                None => "one ack byte, VIRTIO_NET_OK (0) or VIRTIO_NET_ERR (1)".to_string(),
            };
            return Err(self.fail(
                id::R_NET_06,
                &format!(
                    "{what} on queue {idx} was answered with {ack:?} (used length {})",
                    done.used_len
                ),
                &format!("{wanted} in the device-writable byte (virtio 1.2 5.1.6.5)"),
                format!("{done:?}"),
            ));
        }
        self.mark_datapath(step, idx);
        Ok(())
    }

    /// GET_CONFIG of the first 12 bytes; with MTU negotiated mtu >= 68, with MQ
    /// 1 <= max_virtqueue_pairs <= 0x8000 (R-NET-07). The error form (a config space the
    /// back-end does not expose) skips the scenario.
    pub(super) fn net_config(&mut self, step: &Step) -> StepResult {
        let r = self.session()?.get_config(0, vnet::CFG_SIZE);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        let data = match m.body(FrontendReq::GetConfig.reply_body()) {
            Ok(Body::Config(h, data))
                if h.size as usize == data.len() && data.len() >= vnet::CFG_SIZE as usize =>
            {
                data
            }
            other => {
                return Err(StepError::NotApplicable(format!(
                    "GET_CONFIG of {} bytes at 0 gave no config space ({other:?}): the error form, which the spec allows",
                    vnet::CFG_SIZE
                )));
            }
        };
        let u16_at = |o: u32| u16::from_le_bytes([data[o as usize], data[o as usize + 1]]);
        let (pairs, mtu) = (u16_at(vnet::CFG_MAX_VIRTQUEUE_PAIRS), u16_at(vnet::CFG_MTU));
        self.mark(id::R_NET_07);
        let mut problems = Vec::new();
        if self.negotiated(vnet::F_MTU) && mtu < vnet::MTU_MIN {
            problems.push(format!("mtu {mtu} is below 68"));
        }
        if self.negotiated(vnet::F_MQ) && !(1..=vnet::MAX_QUEUE_PAIRS).contains(&pairs) {
            problems.push(format!("max_virtqueue_pairs {pairs} is outside 1..=0x8000"));
        }
        if problems.is_empty() {
            self.note(format!(
                "step {}: config mac {:02x?}, status {:#x}, max_virtqueue_pairs {pairs}, mtu {mtu}",
                self.step_no,
                &data[..6],
                u16_at(vnet::CFG_STATUS)
            ));
            return Ok(());
        }
        Err(self.fail(
            id::R_NET_07,
            &format!("the net config space: {}", problems.join("; ")),
            "with VIRTIO_NET_F_MTU an mtu of at least 68; with VIRTIO_NET_F_MQ 1 <= max_virtqueue_pairs <= 0x8000 (virtio 1.2 5.1.4.1)",
            format!("config bytes {:02x?}", &data[..vnet::CFG_SIZE as usize]),
        ))
    }
}
