//! The rings (spec "Ring states", checklist 4.3 and 4.4): each queue is started or stopped and
//! enabled or disabled. A ring starts on SET_VRING_KICK or the in-band VRING_KICK (R-RING-03),
//! which also processes buffers already available (R-RING-04); GET_VRING_BASE stops it, drops its
//! kick and call fds and returns the next avail index (R-VRING-08..10, R-RING-11); SET_VRING_ENABLE
//! or SET_FEATURES without bit 30 enables it (R-RING-09/10). Only a started, enabled ring is
//! processed. The event loop polls the main socket and the kick eventfds; rings in polling mode
//! (kick bit 8) are looked at on every tick.

use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_protocol::wire::payload::{
    Body, VRING_F_LOG, VRING_IDX_MASK, VRING_NOFD_MASK, VringAddr, VringState,
};
use vhu_protocol::{BackendReq, FrontendReq, ProtocolFeatures, VirtioFeatures};

use crate::channel::{Shmem, ShmemCtx};
use crate::device::{DataFaults, DeviceHost, Ring, ShmemReq, SplitRing};
use crate::faults::Fault;
use crate::inflight::InflightArea;
use crate::packed::PackedRing;
use crate::session::{Outcome, Session};

/// Tick of the event loop: the polling interval of bit-8 rings.
const TICK_MS: u8 = 20;

/// One queue's setup and state.
#[derive(Debug, Default)]
pub struct Queue {
    size: u16,
    /// The base set or saved: a split next avail index, or a packed base word.
    base: u32,
    addr: Option<VringAddr>,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    err: Option<OwnedFd>,
    /// SET_VRING_CALL / ERR had bit 8 with INBAND_NOTIFICATIONS: notify on the channel.
    inband_call: bool,
    inband_err: bool,
    /// SET_VRING_KICK had bit 8: poll the ring (no kick fd).
    polling: bool,
    /// Enabled (SET_VRING_ENABLE 1, or SET_FEATURES without bit 30).
    pub enabled: bool,
    /// Started: the translated ring and where it stands.
    ring: Option<Ring>,
    /// Heads in flight in the inflight area when the ring started, to complete first.
    resubmit: Vec<u16>,
}

impl Queue {
    /// Whether the ring is started.
    pub fn started(&self) -> bool {
        self.ring.is_some()
    }

    /// The base to save: where the ring stands, or the base it was given.
    pub fn saved_base(&self) -> u32 {
        self.ring.map_or(self.base, |r| r.base())
    }

    /// Sets the base a stopped ring restarts from (device state load).
    pub fn set_base(&mut self, base: u32) {
        self.base = base;
    }
}

impl Session<'_> {
    /// Serves the connection until the front-end leaves or the session must close.
    pub fn serve(&mut self) {
        loop {
            let kick_queues: Vec<usize> = (0..self.queues.len())
                .filter(|&i| self.queues[i].started() && self.queues[i].kick.is_some())
                .collect();
            let Some(ready) = self.wait(&kick_queues) else {
                continue;
            };
            for (k, &i) in kick_queues.iter().enumerate() {
                if ready[k + 1] {
                    let mut buf = [0u8; 8];
                    if let Some(kick) = &self.queues[i].kick {
                        let _ = nix::unistd::read(kick, &mut buf);
                    }
                    self.run_queue(i);
                }
            }
            for i in 0..self.queues.len() {
                if self.queues[i].polling {
                    self.run_queue(i);
                }
            }
            if ready[0] && !self.handle_one() {
                return;
            }
        }
    }

    /// Polls the socket and the kick fds of `queues` for one tick; which are readable.
    fn wait(&self, queues: &[usize]) -> Option<Vec<bool>> {
        let mut fds = vec![PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
        for &i in queues {
            let kick = self.queues[i].kick.as_ref()?;
            fds.push(PollFd::new(kick.as_fd(), PollFlags::POLLIN));
        }
        poll(&mut fds, PollTimeout::from(TICK_MS)).ok()?;
        Some(
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect(),
        )
    }

    /// Processes ring `i` if it is started and enabled, then signals the driver.
    pub(crate) fn run_queue(&mut self, i: usize) {
        let faults = DataFaults {
            wrong_used_len: self.has(Fault::WrongUsedLen),
            write_past: self.has(Fault::WritePastDescriptor),
        };
        let ignore_enable = self.has(Fault::IgnoreVringEnable);
        let shmem_ok = self.negotiated(ProtocolFeatures::SHMEM | ProtocolFeatures::BACKEND_REQ);
        let ctx = ShmemCtx {
            channel: self.channel.as_ref().filter(|_| shmem_ok),
            reply_ack: self.negotiated(ProtocolFeatures::REPLY_ACK),
            send_fd: self.negotiated(ProtocolFeatures::BACKEND_SEND_FD),
            out_of_range: self.has(Fault::ShmemOutOfRange),
        };
        let q = &mut self.queues[i];
        let Some(ring) = q.ring.as_mut().filter(|_| q.enabled || ignore_enable) else {
            return;
        };
        let mut host = QueueHost {
            queue: i,
            shmem: &mut self.shmem,
            ctx,
            inflight: self.inflight.as_mut(),
            resubmit: std::mem::take(&mut q.resubmit),
        };
        let result = self.dev.process(&self.mem, ring, faults, &mut host);
        match result {
            Ok(false) => {}
            Ok(true) if self.faults.has(Fault::NoCall) => {}
            Ok(true) => self.signal(i, false),
            Err(_) => self.signal(i, true),
        }
    }

    /// Signals used buffers (or an error) on the eventfd, or in-band on the back-end channel
    /// when the ring's fd was replaced by bit 8 with INBAND_NOTIFICATIONS (R-INB-04).
    fn signal(&self, i: usize, error: bool) {
        let q = &self.queues[i];
        let (fd, inband, req) = if error {
            (&q.err, q.inband_err, BackendReq::VringErr)
        } else {
            (&q.call, q.inband_call, BackendReq::VringCall)
        };
        if let Some(fd) = fd {
            let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
        } else if let Some(ch) = self.channel.as_ref().filter(|_| inband) {
            ch.notify(req, i as u32, self.negotiated(ProtocolFeatures::REPLY_ACK));
        }
    }

    /// The queue `index` names; a bad index aborts under `crash-on-bad-index`.
    fn queue(&mut self, index: u32) -> Option<&mut Queue> {
        if index as usize >= self.queues.len() && self.has(Fault::CrashOnBadIndex) {
            std::process::abort();
        }
        self.queues.get_mut(index as usize)
    }

    /// SET_VRING_NUM (R-VRING-02, R-VRING-17): within the limit, and a power of two for a
    /// split ring.
    pub(crate) fn set_vring_num(&mut self, s: VringState) -> Outcome {
        let nack = self.has(Fault::NackValid);
        let shape = self.packed() || s.num.is_power_of_two();
        let ok = shape && (1..=self.limits.queue_size_max).contains(&s.num);
        match self.queue(s.index) {
            Some(q) if ok && !nack => {
                q.size = s.num as u16;
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    /// SET_VRING_BASE (checklist 1.5): a split base has bits 16-31 clear; a packed base is the
    /// whole word.
    pub(crate) fn set_vring_base(&mut self, s: VringState) -> Outcome {
        let ok = self.packed() || s.num >> 16 == 0;
        match self.queue(s.index) {
            Some(q) if ok => {
                q.base = s.num;
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    /// SET_VRING_ADDR (R-VRING-03/05): user addresses inside the memory table; the only flag is
    /// VHOST_VRING_F_LOG (used-ring writes are logged at their guest address, which is the log
    /// address front-ends give).
    pub(crate) fn set_vring_addr(&mut self, a: VringAddr) -> Outcome {
        let covered = [a.desc, a.avail, a.used]
            .iter()
            .all(|&ua| self.mem.ua_to_gpa(ua).is_some());
        match self.queue(a.index) {
            Some(q) if covered && a.flags & !VRING_F_LOG == 0 => {
                q.addr = Some(a);
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    /// GET_VRING_BASE: stops the ring, drops its kick and call fds (the front-end re-sends them
    /// to restart, R-RING-13) and returns the next avail index reached.
    pub(crate) fn get_vring_base(&mut self, s: VringState) -> Outcome {
        let stale = self.has(Fault::StaleVringBase);
        let keep_running = self.has(Fault::ProcessAfterStop);
        let Some(q) = self.queue(s.index) else {
            return Outcome::Failed;
        };
        let num = if stale { q.base } else { q.saved_base() };
        if !keep_running {
            q.ring = None;
            q.base = num;
            q.kick = None;
            q.call = None;
            q.polling = false;
        }
        Outcome::Reply(Body::VringState(VringState {
            index: s.index,
            num,
        }))
    }

    /// SET_VRING_KICK / CALL / ERR (R-VRING-11): bit 8 set exactly when no fd comes.
    pub(crate) fn set_vring_fd(
        &mut self,
        req: FrontendReq,
        word: u64,
        mut fds: Vec<OwnedFd>,
    ) -> Outcome {
        let index = (word & VRING_IDX_MASK) as u32;
        let no_fd = word & VRING_NOFD_MASK != 0;
        let mismatch = no_fd != fds.is_empty() && !self.has(Fault::IgnoreNoFdFlag);
        let inband = no_fd && self.negotiated(ProtocolFeatures::INBAND_NOTIFICATIONS);
        let Some(q) = self.queue(index).filter(|_| !mismatch) else {
            return Outcome::Failed;
        };
        let fd = fds.pop();
        match req {
            FrontendReq::SetVringCall => (q.call, q.inband_call) = (fd, inband),
            FrontendReq::SetVringErr => (q.err, q.inband_err) = (fd, inband),
            _ => {
                q.kick = fd;
                q.polling = no_fd && !inband;
                return self.start_ring(index as usize);
            }
        }
        Outcome::Done
    }

    /// VRING_KICK (R-INB-02/03): starts a stopped ring and processes new buffers.
    pub(crate) fn vring_kick(&mut self, s: VringState) -> Outcome {
        if !self.negotiated(ProtocolFeatures::INBAND_NOTIFICATIONS) {
            return Outcome::Failed; // R-NEG-11
        }
        match self.queue(s.index) {
            Some(q) if q.started() => {
                self.run_queue(s.index as usize);
                Outcome::Done
            }
            Some(_) => self.start_ring(s.index as usize),
            None => Outcome::Failed,
        }
    }

    /// R-RING-03: the ring starts; buffers already available are processed without waiting for
    /// a kick (R-RING-04).
    fn start_ring(&mut self, i: usize) -> Outcome {
        let Some(ring) = self.translate(i) else {
            return Outcome::Failed;
        };
        if let (Ring::Split(r), Some(area)) = (&ring, self.inflight.as_mut()) {
            self.queues[i].resubmit = area.start(i, r.next_used);
        }
        self.queues[i].ring = Some(ring);
        self.run_queue(i);
        Outcome::Done
    }

    fn packed(&self) -> bool {
        self.features & VirtioFeatures::RING_PACKED.bits() != 0
    }

    /// The ring's guest addresses and position; a started ring keeps its position (R-MEM-05).
    fn translate(&self, i: usize) -> Option<Ring> {
        let q = &self.queues[i];
        let a = q.addr?;
        if q.size == 0 {
            return None;
        }
        let event_idx = self.features & VirtioFeatures::EVENT_IDX.bits() != 0;
        let desc = self.mem.ua_to_gpa(a.desc)?;
        let avail = self.mem.ua_to_gpa(a.avail)?;
        let used = self.mem.ua_to_gpa(a.used)?;
        if self.packed() {
            let mut r = PackedRing {
                size: q.size,
                desc,
                driver: avail,
                device: used,
                next_avail: 0,
                avail_wrap: true,
                next_used: 0,
                used_wrap: true,
                event_idx,
            };
            r.set_base(q.saved_base());
            return Some(Ring::Packed(r));
        }
        // R-VRING-06: the used index is read from the ring in memory.
        let next_used = match q.ring {
            Some(Ring::Split(r)) => r.next_used,
            _ => self.mem.read_u16(used + 2).ok()?,
        };
        Some(Ring::Split(SplitRing {
            event_idx,
            size: q.size,
            desc,
            avail,
            used,
            next_avail: q.saved_base() as u16,
            next_used,
        }))
    }

    /// After a memory table change, started rings are translated again (R-MEM-05).
    pub(crate) fn retranslate(&mut self) {
        for i in 0..self.queues.len() {
            if self.queues[i].started() {
                self.queues[i].ring = self.translate(i);
            }
        }
    }

    /// SET_VRING_ENABLE (R-RING-10): num 1 enables, anything else disables.
    pub(crate) fn set_vring_enable(&mut self, s: VringState) -> Outcome {
        let early = self.has(Fault::ProcessBeforeKick);
        let Some(q) = self.queue(s.index) else {
            return Outcome::Failed;
        };
        q.enabled = s.num == 1;
        if early && q.enabled && !q.started() {
            // The fault: the ring starts, polled, without SET_VRING_KICK.
            q.polling = true;
            let _ = self.start_ring(s.index as usize);
            return Outcome::Done;
        }
        self.run_queue(s.index as usize);
        Outcome::Done
    }
}

/// The session's side of processing one queue: SHMEM requests and inflight bookkeeping.
struct QueueHost<'a> {
    queue: usize,
    shmem: &'a mut Shmem,
    ctx: ShmemCtx<'a>,
    inflight: Option<&'a mut InflightArea>,
    resubmit: Vec<u16>,
}

impl DeviceHost for QueueHost<'_> {
    fn shmem(&mut self, r: ShmemReq) -> bool {
        self.shmem.request(&self.ctx, r)
    }

    fn resubmit(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.resubmit)
    }

    fn taken(&mut self, head: u16) {
        if let Some(a) = self.inflight.as_mut() {
            a.taken(self.queue, head);
        }
    }

    fn completing(&mut self, head: u16) {
        if let Some(a) = self.inflight.as_mut() {
            a.completing(self.queue, head);
        }
    }

    fn completed(&mut self, head: u16, used_idx: u16) {
        if let Some(a) = self.inflight.as_mut() {
            a.completed(self.queue, head, used_idx);
        }
    }
}
