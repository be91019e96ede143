//! The rings (spec "Ring states", checklist 4.3 and 4.4): each queue is started or stopped and
//! enabled or disabled. A ring starts on SET_VRING_KICK or the in-band VRING_KICK (R-RING-03),
//! which also processes buffers already available (R-RING-04); GET_VRING_BASE stops it, drops its
//! kick and call fds and returns the next avail index (R-VRING-08..10, R-RING-11); SET_VRING_ENABLE
//! or SET_FEATURES without bit 30 enables it (R-RING-09/10). Only a started, enabled ring is
//! processed. The event loop polls the main socket and the kick eventfds; rings in polling mode
//! (kick bit 8) are looked at on every tick. A started ring is a `vhu_mock_device::Queue` at the
//! translated guest addresses; `datapath` drains it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_mock_device::{Queue, RingConfig};
use vhu_protocol::wire::payload::{
    Body, VRING_F_LOG, VRING_IDX_MASK, VRING_NOFD_MASK, VringAddr, VringState,
};
use vhu_protocol::{FrontendReq, ProtocolFeatures, VirtioFeatures};

use crate::devices::Device;
use crate::faults::Fault;
use crate::session::{Outcome, Session};

/// Tick of the event loop: the polling interval of bit-8 rings.
const TICK_MS: u8 = 20;

/// One ring's setup and state as the front-end drives it.
#[derive(Debug, Default)]
pub struct Vring {
    size: u16,
    /// The base set or saved: a split next avail index, or a packed base word.
    base: u32,
    addr: Option<VringAddr>,
    kick: Option<OwnedFd>,
    /// The call eventfd.
    pub(crate) call: Option<OwnedFd>,
    /// The err eventfd.
    pub(crate) err: Option<OwnedFd>,
    /// SET_VRING_CALL had bit 8 with INBAND_NOTIFICATIONS: notify on the channel.
    pub(crate) inband_call: bool,
    /// SET_VRING_ERR had bit 8 with INBAND_NOTIFICATIONS.
    pub(crate) inband_err: bool,
    /// SET_VRING_KICK had bit 8: poll the ring (no kick fd).
    polling: bool,
    /// Enabled (SET_VRING_ENABLE 1, or SET_FEATURES without bit 30).
    pub enabled: bool,
    /// Started: the device side of the ring (vhu-mock-device) at the translated addresses.
    pub(crate) queue: Option<Queue>,
    /// Heads in flight in the inflight area when the ring started, to complete first.
    pub(crate) resubmit: Vec<u16>,
    /// The last run stopped at an IOTLB miss: run again after the next update.
    pub(crate) iotlb_wait: bool,
}

impl Vring {
    /// Whether the ring is started.
    pub fn started(&self) -> bool {
        self.queue.is_some()
    }

    /// The base to save: where the ring stands, or the base it was given.
    pub fn saved_base(&self) -> u32 {
        self.queue.as_ref().map_or(self.base, Queue::base)
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
            if kick_queues.is_empty() && self.only_the_socket_to_watch() {
                // A blocking read (bounded by the socket's I/O timeout) instead of a poll and a
                // read: one system call less per message while no ring runs.
                if !self.handle_one() {
                    return;
                }
                self.retry_after_iotlb();
                continue;
            }
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
            if ready[1 + kick_queues.len()..].iter().any(|&r| r) {
                // Device input besides the rings (vsock host sockets): take it, then fill the
                // driver's buffers waiting for it.
                if let Device::Virtio(d) = &mut *self.dev {
                    d.on_input();
                }
                self.run_ready_queues();
            }
            if ready[0] && !self.handle_one() {
                return;
            }
            self.retry_after_iotlb();
        }
    }

    /// Whether nothing but the main socket needs watching: no polled ring, no device input,
    /// and no fault mode that looks at what is buffered before reading.
    fn only_the_socket_to_watch(&self) -> bool {
        let inputs = match &*self.dev {
            Device::Virtio(d) => !d.input_fds().is_empty(),
            Device::Blk(_) => false,
        };
        !inputs && !self.queues.iter().any(|q| q.polling) && !self.has(Fault::FrameByRead)
    }

    /// Polls the socket, the kick fds of `queues` and the device's input fds for one tick;
    /// which are readable, in that order.
    fn wait(&self, queues: &[usize]) -> Option<Vec<bool>> {
        let mut fds = vec![PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
        for &i in queues {
            let kick = self.queues[i].kick.as_ref()?;
            fds.push(PollFd::new(kick.as_fd(), PollFlags::POLLIN));
        }
        let inputs = match &*self.dev {
            Device::Virtio(d) => d.input_fds(),
            Device::Blk(_) => Vec::new(),
        };
        for fd in inputs {
            // SAFETY: the device owns these fds and keeps them open while it is borrowed,
            // which `&self` guarantees until this poll returns.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        poll(&mut fds, PollTimeout::from(TICK_MS)).ok()?;
        Some(
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect(),
        )
    }

    /// The queue `index` names; a bad index aborts under `crash-on-bad-index` and kills the
    /// process with SIGSEGV under `segfault-on-bad-index`.
    fn queue(&mut self, index: u32) -> Option<&mut Vring> {
        if index as usize >= self.queues.len() {
            if self.has(Fault::SegfaultOnBadIndex) {
                segfault();
            }
            if self.has(Fault::CrashOnBadIndex) {
                std::process::abort();
            }
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

    /// SET_VRING_ENDIAN (CROSS_ENDIAN, R-VRING-18): 0 little, 1 big, before the ring starts.
    /// The rings are served little-endian whatever was asked (virtio 1.x rings always are).
    pub(crate) fn set_vring_endian(&mut self, s: VringState) -> Outcome {
        let any = self.has(Fault::EndianAnyValue);
        let ok = self.negotiated(ProtocolFeatures::CROSS_ENDIAN) && (s.num <= 1 || any);
        match self.queue(s.index) {
            Some(q) if ok && !q.started() => Outcome::Done,
            _ => Outcome::Failed,
        }
    }

    /// SET_VRING_BASE (checklist 1.5): a split base has bits 16-31 clear; a packed base is the
    /// whole word.
    pub(crate) fn set_vring_base(&mut self, s: VringState) -> Outcome {
        let ok = self.packed() || s.num >> 16 == 0;
        let num_first = self.has(Fault::RequireNumFirst);
        match self.queue(s.index) {
            Some(q) if num_first && q.size == 0 => Outcome::Failed,
            Some(q) if ok => {
                q.base = s.num;
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    /// SET_VRING_ADDR (R-VRING-03/05): user addresses inside the memory table; the only flag is
    /// VHOST_VRING_F_LOG (used-ring writes are logged at their guest address, which is the log
    /// address front-ends give). With ACCESS_PLATFORM they are IOVAs (R-IOTLB-03), which the
    /// IOTLB may not map yet: their accesses report a miss then.
    pub(crate) fn set_vring_addr(&mut self, a: VringAddr) -> Outcome {
        let covered = self.iommu()
            || [a.desc, a.avail, a.used]
                .iter()
                .all(|&ua| self.mem.ua_to_gpa(ua).is_some());
        let num_first = self.has(Fault::RequireNumFirst);
        match self.queue(a.index) {
            Some(q) if num_first && q.size == 0 => Outcome::Failed,
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
            q.queue = None;
            q.base = num;
            q.kick = None;
            q.call = None;
            q.polling = false;
        }
        if !keep_running {
            self.dev.stop(s.index as u16);
        }
        if !keep_running && !self.queues.iter().any(Vring::started) {
            // Every ring stopped: the device drops pending output (net's rx backlog).
            self.dev.reset();
        }
        Outcome::Reply(Body::VringState(VringState {
            index: s.index,
            num,
        }))
    }

    /// GET_VRING_BASE_SKIP_DRAIN (R-INFL-07): stops the ring at once, without waiting for
    /// requests in flight, which stay recorded in the inflight area. This back-end completes
    /// each request before it takes the next one, so none is in flight here and the ring
    /// stops as with GET_VRING_BASE.
    pub(crate) fn get_vring_base_skip_drain(&mut self, s: VringState) -> Outcome {
        if self.has(Fault::SkipDrainDrops) {
            // The fault takes what is available and forgets it: neither used nor in flight.
            let mem = &self.mem;
            if let Some(q) = self
                .queues
                .get_mut(s.index as usize)
                .and_then(|q| q.queue.as_mut())
            {
                while let Ok(Some(_)) = q.pop(mem) {}
            }
        }
        self.get_vring_base(s)
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
        if self.has(Fault::IgnoreVringKickMsg) {
            return Outcome::Done;
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

    /// R-RING-03: the ring starts where it stands (or at its base); buffers already available
    /// are processed without waiting for a kick (R-RING-04).
    fn start_ring(&mut self, i: usize) -> Outcome {
        let Some(cfg) = self.ring_config(i) else {
            return Outcome::Failed;
        };
        let v = &self.queues[i];
        let base = v
            .queue
            .as_ref()
            .map_or(vring_base(cfg, v.base), Queue::base);
        let Ok(mut queue) = Queue::try_new(cfg, base) else {
            return Outcome::Failed;
        };
        // R-VRING-06: the used index is read from the ring in memory.
        let view = Self::dma_view(&self.mem, &self.iotlb, self.iommu(), None);
        let synced = queue.sync_used_idx(&view);
        let miss = view.miss();
        let used_idx = match (synced, miss) {
            (Ok(u), _) => u,
            (Err(_), Some(miss)) => {
                // The used ring is not in the IOTLB yet: the ring starts and waits for it.
                self.queues[i].queue = Some(queue);
                self.on_iotlb_miss(i, miss, false);
                return Outcome::Done;
            }
            (Err(_), None) => return Outcome::Failed,
        };
        if let Some(area) = self.inflight.as_mut().filter(|_| !cfg.packed) {
            self.queues[i].resubmit = area.start(i, used_idx);
        }
        self.queues[i].queue = Some(queue);
        if !self.has(Fault::WaitForKickAfterStart) {
            // R-RING-04: buffers already available are looked at without a kick.
            self.run_queue(i);
        }
        Outcome::Done
    }

    fn packed(&self) -> bool {
        self.features & VirtioFeatures::RING_PACKED.bits() != 0
    }

    /// The ring's guest addresses (IOVAs with ACCESS_PLATFORM) and negotiated ring features,
    /// if its addresses translate.
    fn ring_config(&self, i: usize) -> Option<RingConfig> {
        let q = &self.queues[i];
        let a = q.addr?;
        let has = |f: VirtioFeatures| self.features & f.bits() != 0;
        // With ACCESS_PLATFORM the addresses stay IOVAs: the IOTLB translates every access.
        let iommu = self.iommu();
        let at = |ua: u64| {
            if iommu {
                Some(ua)
            } else {
                self.mem.ua_to_gpa(ua)
            }
        };
        Some(RingConfig {
            size: q.size,
            desc: at(a.desc)?,
            driver: at(a.avail)?,
            device: at(a.used)?,
            packed: self.packed(),
            event_idx: has(VirtioFeatures::EVENT_IDX),
            indirect: has(VirtioFeatures::INDIRECT_DESC),
        })
    }

    /// After a memory table change, started rings are translated again and keep their
    /// position (R-MEM-05). A ring whose addresses no longer translate is left as it is: its
    /// accesses fail until its memory comes back.
    pub(crate) fn retranslate(&mut self) {
        for i in 0..self.queues.len() {
            let Some(cfg) = self.ring_config(i) else {
                continue;
            };
            if let Some(q) = self.queues[i].queue.as_mut().filter(|q| q.config() != cfg) {
                *q = Queue::new(cfg, q.base());
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

/// Dies by SIGSEGV, as a C back-end indexing its ring array with the front-end's index does
/// (fault `segfault-on-bad-index`): the default action restored (the Rust runtime handles
/// SIGSEGV to report stack overflows), no core dump, the signal raised.
fn segfault() -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process with valid arguments; restoring SIG_DFL and
    // raising the signal is what the fault is for.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        // A core_pattern pipe ignores RLIMIT_CORE 0; not dumpable is never dumped.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    // Not reached: SIGSEGV's default action ends the process. Should it be blocked, die anyway.
    std::process::abort()
}

/// The base a stopped ring starts from. A packed word whose used half is 0 (DPDK sends only
/// the avail half) puts the used position at the avail position.
fn vring_base(cfg: RingConfig, base: u32) -> u32 {
    if cfg.packed && base >> 16 == 0 {
        base | base << 16
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_avail_only_packed_base_puts_used_at_avail() {
        let cfg = RingConfig {
            size: 256,
            desc: 0,
            driver: 0,
            device: 0,
            packed: true,
            event_idx: false,
            indirect: false,
        };
        assert_eq!(vring_base(cfg, 0x8000), 0x8000_8000);
        assert_eq!(vring_base(cfg, 0x0005_0103), 0x0005_0103);
        let split = RingConfig {
            packed: false,
            ..cfg
        };
        assert_eq!(vring_base(split, 7), 7);
    }
}
