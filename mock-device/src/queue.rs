//! One virtqueue as the device drives it, split (virtio 1.2 section 2.7) or packed (2.8), with
//! the position encoding of vhost-user SET/GET_VRING_BASE (checklist 1.5, "vring state").
//!
//! Any error stops the queue (virtio 2.1: the device sets DEVICE_NEEDS_RESET rather than guess),
//! so a caller that loops on [`Queue::pop`] cannot spin on the same malformed chain. The
//! position is left where the faulty chain starts.

use vhu_protocol::virtio::MAX_QUEUE_SIZE;

use crate::chain::{Chain, RingError};
use crate::memory::GuestMemory;
use crate::packed::PackedRing;
use crate::split::SplitRing;

/// Where a ring lives (guest physical addresses) and how it is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Queue size (SET_VRING_NUM).
    pub size: u16,
    /// Descriptor table (split) or descriptor ring (packed).
    pub desc: u64,
    /// Avail ring (split) or driver event suppression structure (packed).
    pub driver: u64,
    /// Used ring (split) or device event suppression structure (packed).
    pub device: u64,
    /// VIRTIO_F_RING_PACKED negotiated.
    pub packed: bool,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
}

#[derive(Debug)]
enum Ring {
    Split(SplitRing),
    Packed(PackedRing),
}

/// A virtqueue, device side.
#[derive(Debug)]
pub struct Queue {
    cfg: RingConfig,
    base: u32,
    ring: Result<Ring, RingError>,
}

impl Queue {
    /// A queue at `base`, the SET_VRING_BASE value: split: bits 0-15 next avail index (the used
    /// index is read from the used ring on first use, R-VRING-06); packed:
    /// bits 0-14 next avail idx, bit 15 avail wrap counter, bits 16-30 used idx, bit 31 used
    /// wrap counter. An invalid configuration gives a queue whose every operation fails with
    /// the reason; [`Queue::try_new`] reports it at once.
    pub fn new(cfg: RingConfig, base: u32) -> Self {
        let ring = build(cfg, base);
        Self { cfg, base, ring }
    }

    /// Like [`Queue::new`] but refuses an invalid size (0, above 32768, or not a power of two
    /// for a split ring) or a packed base whose indices are not below the size.
    pub fn try_new(cfg: RingConfig, base: u32) -> Result<Self, RingError> {
        let q = Self::new(cfg, base);
        match &q.ring {
            Err(e) => Err(e.clone()),
            Ok(_) => Ok(q),
        }
    }

    /// The configuration the queue was built with.
    pub fn config(&self) -> RingConfig {
        self.cfg
    }

    /// The GET_VRING_BASE value in the SET_VRING_BASE encoding (split: the next avail index the
    /// device would process). A queue with an invalid configuration answers its initial base.
    pub fn base(&self) -> u32 {
        match &self.ring {
            Ok(Ring::Split(r)) => r.base(),
            Ok(Ring::Packed(r)) => r.base(),
            Err(_) => self.base,
        }
    }

    /// Split: the used idx the next [`Queue::push_used`] publishes (read from the used ring on
    /// first use; the vring base before that). Packed: the used position
    /// (bits 0-14 index, bit 15 wrap counter). Inflight tracking records it (R-INFL-04).
    pub fn used_idx(&self) -> u16 {
        match &self.ring {
            Ok(Ring::Split(r)) => r.used_idx(),
            Ok(Ring::Packed(r)) => r.used_idx(),
            Err(_) => (self.base >> 16) as u16,
        }
    }

    /// Split: adopts the used idx the used ring holds now (R-VRING-06: the used index comes
    /// from memory; the queue also does this by itself before its first pop or push). Returns
    /// it. Packed: the used position lives in the base word; returns [`Queue::used_idx`].
    pub fn sync_used_idx(&mut self, mem: &dyn GuestMemory) -> Result<u16, RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.sync_used_idx(mem),
            Ring::Packed(r) => Ok(r.used_idx()),
        };
        self.stop_on_error(r)
    }

    /// Split: the chain whose head is descriptor `head`, validated like [`Queue::pop`] but
    /// without taking anything from the avail ring, to resubmit a request recorded in flight
    /// (R-INFL-05). An invalid chain is an `Err` that does not stop the queue. Packed: refused
    /// (`InvalidConfig`), since packed inflight tracking is not supported.
    pub fn chain_at(&self, mem: &dyn GuestMemory, head: u16) -> Result<Chain, RingError> {
        match &self.ring {
            Ok(Ring::Split(r)) => r.chain_at(mem, head),
            Ok(Ring::Packed(_)) => Err(RingError::InvalidConfig(
                "resubmission by head needs a split ring",
            )),
            Err(e) => Err(RingError::Broken(Box::new(e.clone()))),
        }
    }

    /// The error that stopped the queue, if any.
    pub fn error(&self) -> Option<&RingError> {
        self.ring.as_ref().err()
    }

    /// Next available descriptor chain, or `None` if the driver has published nothing new.
    /// Every descriptor is validated (index, loops, indirect tables, order, address ranges);
    /// an invalid one gives `Err` and stops the queue.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.pop(mem),
            Ring::Packed(r) => r.pop(mem),
        };
        self.stop_on_error(r)
    }

    /// Whether the driver has published a chain the device has not taken (no validation).
    pub fn has_available(&mut self, mem: &dyn GuestMemory) -> Result<bool, RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.has_available(mem),
            Ring::Packed(r) => r.has_available(mem),
        };
        self.stop_on_error(r)
    }

    /// Publishes a used element for `chain` with `len` bytes written (split: used ring entry,
    /// release fence, used idx; packed: id and len, release fence, used/avail flags per the used
    /// wrap counter).
    pub fn push_used(
        &mut self,
        mem: &dyn GuestMemory,
        chain: &Chain,
        len: u32,
    ) -> Result<(), RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.push_used(mem, chain, len),
            Ring::Packed(r) => r.push_used(mem, chain, len),
        };
        self.stop_on_error(r)
    }

    /// Publishes used elements for several chains at once: the driver sees all of them or none
    /// (split: one used idx store; packed: the first chain's flags last).
    pub fn push_used_batch(
        &mut self,
        mem: &dyn GuestMemory,
        done: &[(Chain, u32)],
    ) -> Result<(), RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.push_used_batch(mem, done),
            Ring::Packed(r) => r.push_used_batch(mem, done),
        };
        self.stop_on_error(r)
    }

    /// Whether the driver wants an interrupt for the used elements published since the last
    /// call (split: NO_INTERRUPT or used_event; packed: driver event suppression). Nothing
    /// published since the last call gives `false`; the first call on a new queue with
    /// EVENT_IDX gives `true` for anything published, since used_event may predate the queue.
    pub fn should_notify(&mut self, mem: &dyn GuestMemory) -> Result<bool, RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.should_notify(mem),
            Ring::Packed(r) => r.should_notify(mem),
        };
        self.stop_on_error(r)
    }

    /// Asks the driver to kick on the next buffer: with EVENT_IDX writes avail_event (split) or
    /// the device event suppression with the next avail position (packed); without, clears
    /// NO_NOTIFY (split) or enables (packed). Re-check [`Queue::has_available`] afterwards.
    pub fn enable_notifications(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.enable_notifications(mem),
            Ring::Packed(r) => r.enable_notifications(mem),
        };
        self.stop_on_error(r)
    }

    /// Asks the driver not to kick (split: NO_NOTIFY, a no-op with EVENT_IDX; packed: disable).
    pub fn disable_notifications(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        let r = match self.ring()? {
            Ring::Split(r) => r.disable_notifications(mem),
            Ring::Packed(r) => r.disable_notifications(mem),
        };
        self.stop_on_error(r)
    }

    fn ring(&mut self) -> Result<&mut Ring, RingError> {
        self.ring
            .as_mut()
            .map_err(|e| RingError::Broken(Box::new(e.clone())))
    }

    /// Stops the queue on an error, keeping its position for [`Queue::base`].
    fn stop_on_error<T>(&mut self, r: Result<T, RingError>) -> Result<T, RingError> {
        if let Err(e) = &r {
            self.base = self.base();
            self.ring = Err(e.clone());
        }
        r
    }
}

/// Checks the configuration and builds the ring state.
fn build(cfg: RingConfig, base: u32) -> Result<Ring, RingError> {
    if cfg.size == 0 || cfg.size > MAX_QUEUE_SIZE {
        return Err(RingError::InvalidConfig("queue size 0 or above 32768"));
    }
    if cfg.packed {
        PackedRing::new(cfg, base).map(Ring::Packed)
    } else {
        SplitRing::new(cfg, base).map(Ring::Split)
    }
}
