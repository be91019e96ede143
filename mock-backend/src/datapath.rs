//! The data path of a session: a started, enabled ring is drained by vhu-mock-device
//! (`process_queue_with`), with the back-end's own work around each chain: the SHMEM vendor
//! request (R-SHM-05), inflight tracking of split rings (R-INFL-04) and resubmission
//! (R-INFL-05). Then the driver is signalled on the call eventfd, or in band on the back-end
//! channel (R-INB-04). A malformed ring stops its queue and is reported on the err eventfd.
//!
//! A device other than blk (`--device net|rng|...`) is served through its
//! `vhu_mock_device::VirtioDevice`: a device-to-driver queue (net receiveq) is drained only
//! while the device has data for it, so after serving any queue the queues that are ready are
//! run again, a bounded number of rounds.

use vhu_mock_device::{
    BlkDevice, Chain, ChainHandler, DataPathFaults, GuestMemory, Queue, QueueRun, RingError,
    VirtioDevice, process_queue_with,
};
use vhu_protocol::{BackendReq, ProtocolFeatures};

use crate::channel::{ShmemCtx, ShmemHook};
use crate::devices::Device;
use crate::faults::Fault;
use crate::inflight::{self, InflightArea};
use crate::session::Session;

/// The back-end's work on each chain of one queue.
pub(crate) struct Chains<'a> {
    queue: usize,
    dev: &'a mut BlkDevice,
    faults: DataPathFaults,
    shmem: ShmemHook<'a>,
    /// The inflight area, for split rings only (packed rings are not tracked).
    inflight: Option<&'a mut InflightArea>,
}

impl ChainHandler for Chains<'_> {
    fn serve(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let done = self
            .dev
            .process_with(mem, chain, &self.faults, &mut self.shmem);
        // Recorded before the used element is published, so a crash in between is recognised
        // when the ring restarts (libvhost-user's last_batch_head).
        if let Some(a) = self.inflight.as_mut() {
            a.completing(self.queue, chain.head);
        }
        done.used_len
    }

    fn taken(&mut self, _q: &Queue, chain: &Chain) {
        if let Some(a) = self.inflight.as_mut() {
            a.taken(self.queue, chain.head);
        }
    }

    fn published(&mut self, q: &Queue, chain: &Chain) {
        if let Some(a) = self.inflight.as_mut() {
            a.completed(self.queue, chain.head, q.used_idx());
        }
    }
}

/// Rounds of re-running ready queues after one was served. Why bounded: a device whose queues
/// keep feeding each other (net tx looped back to rx) must not starve the main socket; what is
/// left waits for the next kick or tick.
const READY_ROUNDS: usize = 8;

/// A non-blk device's work on each chain of one queue.
struct DeviceChains<'a> {
    queue: u16,
    dev: &'a mut dyn VirtioDevice,
}

impl ChainHandler for DeviceChains<'_> {
    fn serve(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        self.dev.serve(self.queue, mem, chain)
    }

    fn ready(&self) -> bool {
        self.dev.ready(self.queue)
    }

    fn gathers(&self) -> bool {
        self.dev.gathers(self.queue)
    }

    fn offer(&mut self, mem: &dyn GuestMemory, chain: Chain) -> Vec<(Chain, u32)> {
        self.dev.offer(self.queue, mem, chain)
    }

    fn flush(&mut self, mem: &dyn GuestMemory) -> Vec<(Chain, u32)> {
        self.dev.flush(self.queue, mem)
    }
}

/// A disabled queue the device discards: every chain used with length 0, nothing done.
struct Discard;

impl ChainHandler for Discard {
    fn serve(&mut self, _mem: &dyn GuestMemory, _chain: &Chain) -> u32 {
        0
    }
}

impl Session<'_> {
    /// Processes ring `i` if it is started and enabled, then signals the driver.
    pub(crate) fn run_queue(&mut self, i: usize) {
        if matches!(self.dev, Device::Virtio(_)) {
            self.drain_device_queue(i);
            self.run_ready_queues();
            return;
        }
        let faults = DataPathFaults {
            write_past_descriptor: self.has(Fault::WritePastDescriptor),
            wrong_used_len: self.has(Fault::WrongUsedLen),
            ignore_writable_flag: false,
        };
        let ignore_enable = self.has(Fault::IgnoreVringEnable);
        let forget_inflight = self.has(Fault::NoInflightResubmit);
        let (iommu, areas) = (self.iommu(), self.fault_ring_areas());
        let shmem_ok = self.negotiated(ProtocolFeatures::SHMEM | ProtocolFeatures::BACKEND_REQ);
        let shmem_ok = shmem_ok || self.has(Fault::ShmemUnnegotiated);
        let ctx = ShmemCtx {
            channel: self.channel.as_ref().filter(|_| shmem_ok),
            reply_ack: self.negotiated(ProtocolFeatures::REPLY_ACK)
                && !self.has(Fault::ShmemNoNeedReply),
            send_fd: self.negotiated(ProtocolFeatures::BACKEND_SEND_FD),
            out_of_range: self.has(Fault::ShmemOutOfRange),
            abort_on_refusal: self.has(Fault::CrashOnShmemRefusal),
        };
        let v = &mut self.queues[i];
        let Some(queue) = v.queue.as_mut().filter(|_| v.enabled || ignore_enable) else {
            return;
        };
        let packed = queue.config().packed;
        let Device::Blk(dev) = &mut *self.dev else {
            return;
        };
        let mut chains = Chains {
            queue: i,
            dev,
            faults,
            shmem: ShmemHook {
                shmem: &mut self.shmem,
                ctx,
            },
            inflight: self.inflight.as_mut().filter(|_| !packed),
        };
        let mut resubmit = std::mem::take(&mut v.resubmit);
        if forget_inflight {
            resubmit.clear();
        }
        let mem = Self::dma_view(&self.mem, &self.iotlb, iommu, areas);
        let result = inflight::resubmit(queue, &mem, &resubmit, &mut chains)
            .and_then(|()| process_queue_with(queue, &mem, &mut chains));
        match (result, mem.miss()) {
            (Err(_), Some(miss)) => self.on_iotlb_miss(i, miss, true),
            (result, _) => {
                self.signal_run(i, result);
            }
        }
    }

    /// Signals what a run of ring `i` did; the chains it completed.
    fn signal_run(&mut self, i: usize, result: Result<QueueRun, RingError>) -> usize {
        let call = !self.has(Fault::NoCall);
        match result {
            Ok(run) => {
                if run.notify && call {
                    self.signal(i, false);
                }
                run.completed
            }
            Err(RingError::Broken(_)) => 0,
            Err(_) => {
                // The queue stopped (virtio: DEVICE_NEEDS_RESET); used elements published
                // before the error stay published, so the driver is called as well.
                self.signal(i, true);
                if call {
                    self.signal(i, false);
                }
                0
            }
        }
    }

    /// Drains ring `i` of a non-blk device if it is started and enabled, and signals; the
    /// chains completed.
    fn drain_device_queue(&mut self, i: usize) -> usize {
        let ignore_enable = self.has(Fault::IgnoreVringEnable);
        let (iommu, areas) = (self.iommu(), self.fault_ring_areas());
        let Device::Virtio(dev) = &mut *self.dev else {
            return 0;
        };
        let v = &mut self.queues[i];
        let enabled = v.enabled || ignore_enable;
        let discard = !enabled && dev.discard_while_disabled(i as u16);
        let Some(queue) = v.queue.as_mut().filter(|_| enabled || discard) else {
            return 0;
        };
        let mem = Self::dma_view(&self.mem, &self.iotlb, iommu, areas);
        let result = if discard {
            process_queue_with(queue, &mem, &mut Discard)
        } else {
            let mut chains = DeviceChains {
                queue: i as u16,
                dev: dev.as_mut(),
            };
            process_queue_with(queue, &mem, &mut chains)
        };
        match (result, mem.miss()) {
            (Err(_), Some(miss)) => {
                self.on_iotlb_miss(i, miss, true);
                0
            }
            (result, _) => self.signal_run(i, result),
        }
    }

    /// Runs every ready queue of a non-blk device again until a round completes nothing (at
    /// most [`READY_ROUNDS`]): data one queue produced (a looped-back frame, a host socket's
    /// bytes) reaches the driver's buffers waiting on another.
    pub(crate) fn run_ready_queues(&mut self) {
        for _ in 0..READY_ROUNDS {
            let mut completed = 0;
            for j in 0..self.queues.len() {
                let ready = match &*self.dev {
                    Device::Virtio(d) => d.ready(j as u16),
                    Device::Blk(_) => false,
                };
                if ready {
                    completed += self.drain_device_queue(j);
                }
            }
            if completed == 0 {
                break;
            }
        }
    }

    /// Signals used buffers on the call eventfd (or in band), unless the fault `no-call`.
    pub(crate) fn signal_call(&self, i: usize) {
        if !self.has(Fault::NoCall) {
            self.signal(i, false);
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
        } else if let Some(ch) = self
            .channel
            .as_ref()
            .filter(|_| inband && !self.has(Fault::NoInbandCall))
        {
            ch.notify(req, i as u32, self.negotiated(ProtocolFeatures::REPLY_ACK));
        }
    }
}
