//! The data path of a session: a started, enabled ring is drained by vhu-mock-device
//! (`process_queue_with`), with the back-end's own work around each chain: the SHMEM vendor
//! request (R-SHM-05), inflight tracking of split rings (R-INFL-04) and resubmission
//! (R-INFL-05). Then the driver is signalled on the call eventfd, or in band on the back-end
//! channel (R-INB-04). A malformed ring stops its queue and is reported on the err eventfd.

use vhu_mock_device::{
    BlkDevice, Chain, ChainHandler, DataPathFaults, GuestMemory, Queue, RingError,
    process_queue_with,
};
use vhu_protocol::{BackendReq, ProtocolFeatures};

use crate::channel::{ShmemCtx, ShmemHook};
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

impl Session<'_> {
    /// Processes ring `i` if it is started and enabled, then signals the driver.
    pub(crate) fn run_queue(&mut self, i: usize) {
        let faults = DataPathFaults {
            write_past_descriptor: self.has(Fault::WritePastDescriptor),
            wrong_used_len: self.has(Fault::WrongUsedLen),
            ignore_writable_flag: false,
        };
        let ignore_enable = self.has(Fault::IgnoreVringEnable);
        let forget_inflight = self.has(Fault::NoInflightResubmit);
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
        let mut chains = Chains {
            queue: i,
            dev: &mut *self.dev,
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
        let result = inflight::resubmit(queue, &self.mem, &resubmit, &mut chains)
            .and_then(|()| process_queue_with(queue, &self.mem, &mut chains));
        let call = !self.has(Fault::NoCall);
        match result {
            Ok(run) if run.notify && call => self.signal(i, false),
            Ok(_) | Err(RingError::Broken(_)) => {}
            Err(_) => {
                // The queue stopped (virtio: DEVICE_NEEDS_RESET); used elements published
                // before the error stay published, so the driver is called as well.
                self.signal(i, true);
                if call {
                    self.signal(i, false);
                }
            }
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
