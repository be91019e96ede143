//! Draining a queue: pop every available chain, hand it to a [`ChainHandler`], publish its used
//! element, then decide on notification (virtio 1.2 sections 2.7.7, 2.7.10 and 2.8.10).

use crate::blk::{BlkDevice, DataPathFaults};
use crate::chain::{Chain, RingError};
use crate::memory::GuestMemory;
use crate::queue::Queue;

/// What [`process_queue`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains completed and published.
    pub completed: usize,
    /// Whether the driver wants an interrupt now.
    pub notify: bool,
}

/// The device work [`process_queue_with`] does on each chain. A back-end implements it to wrap
/// [`BlkDevice::process`] with its own bookkeeping (inflight tracking, vendor requests).
pub trait ChainHandler {
    /// Serves `chain` and returns the used length to publish.
    fn serve(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32;
    /// Whether to take another chain now. A device-to-driver queue (net receiveq) holds the
    /// driver's buffers until the device has data for them.
    fn ready(&self) -> bool {
        true
    }
    /// Whether chains are handed over with [`ChainHandler::offer`] instead of served one by
    /// one: the handler may keep them and complete several at once (net receiveq with
    /// MRG_RXBUF spreads a packet over several chains).
    fn gathers(&self) -> bool {
        false
    }
    /// Hands over a chain taken from the ring (with [`ChainHandler::gathers`]); the chains
    /// completed now, this one or others kept before, published together.
    fn offer(&mut self, mem: &dyn GuestMemory, chain: Chain) -> Vec<(Chain, u32)> {
        let len = self.serve(mem, &chain);
        vec![(chain, len)]
    }
    /// Chains kept by [`ChainHandler::offer`] that can be completed now (new data arrived
    /// since); asked before new chains are taken.
    fn flush(&mut self, _mem: &dyn GuestMemory) -> Vec<(Chain, u32)> {
        Vec::new()
    }
    /// `chain` was just taken from the avail ring, before [`ChainHandler::serve`].
    fn taken(&mut self, _q: &Queue, _chain: &Chain) {}
    /// `chain`'s used element is published; [`Queue::used_idx`] is the used idx after it.
    fn published(&mut self, _q: &Queue, _chain: &Chain) {}
}

/// The plain virtio-blk device as a [`ChainHandler`].
struct Blk<'a> {
    dev: &'a mut BlkDevice,
    faults: &'a DataPathFaults,
}

impl ChainHandler for Blk<'_> {
    fn serve(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        self.dev.process(mem, chain, self.faults).used_len
    }
}

/// Pops, processes and publishes every available chain with `dev`, then decides on
/// notification; see [`process_queue_with`].
pub fn process_queue(
    q: &mut Queue,
    dev: &mut BlkDevice,
    mem: &dyn GuestMemory,
    faults: &DataPathFaults,
) -> Result<QueueRun, RingError> {
    process_queue_with(q, mem, &mut Blk { dev, faults })
}

/// Pops every available chain, lets `handler` serve it and publishes it, then decides on
/// notification. With EVENT_IDX it re-arms the driver's kick (avail_event / device event) and
/// re-checks the ring to close the race with a buffer published meanwhile.
///
/// The decision covers everything published since the previous one, including chains the
/// caller published itself with [`Queue::push_used`] (inflight resubmission).
///
/// On `Err` the queue is stopped; used elements published before the error stay published,
/// so the caller should signal the call fd (a spurious interrupt is harmless) besides
/// reporting the error.
pub fn process_queue_with(
    q: &mut Queue,
    mem: &dyn GuestMemory,
    handler: &mut dyn ChainHandler,
) -> Result<QueueRun, RingError> {
    let mut completed = 0;
    if handler.gathers() {
        let done = handler.flush(mem);
        if !done.is_empty() {
            q.push_used_batch(mem, &done)?;
            completed += done.len();
        }
    }
    loop {
        while handler.ready() {
            let Some(chain) = q.pop(mem)? else {
                break;
            };
            handler.taken(q, &chain);
            if handler.gathers() {
                let done = handler.offer(mem, chain);
                if !done.is_empty() {
                    q.push_used_batch(mem, &done)?;
                    completed += done.len();
                }
                continue;
            }
            let len = handler.serve(mem, &chain);
            q.push_used(mem, &chain, len)?;
            handler.published(q, &chain);
            completed += 1;
        }
        if !q.config().event_idx {
            break;
        }
        q.enable_notifications(mem)?;
        if !handler.ready() || !q.has_available(mem)? {
            break;
        }
    }
    let notify = q.should_notify(mem)?;
    Ok(QueueRun { completed, notify })
}
