//! The device side of a split virtqueue (virtio 1.2 section 2.7): descriptor table, available
//! ring (flags, idx, ring[size], used_event) and used ring (flags, idx, ring[size], avail_event),
//! indirect tables (2.7.5.3) and notification suppression with and without EVENT_IDX (2.7.7,
//! 2.7.10).

use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};

use vhu_protocol::virtio::{
    SplitDesc, UsedElem, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};
use zerocopy::IntoBytes;

use crate::chain::{Chain, ChainBuilder, RingError, indirect_entries};
use crate::memory::{GuestMemory, read_obj};
use crate::queue::RingConfig;

/// Where a descriptor is read from: the ring's table or an indirect table.
#[derive(Clone, Copy)]
struct Table {
    gpa: u64,
    entries: u32,
    indirect: bool,
}

/// Device-side state of a split ring.
#[derive(Debug)]
pub(crate) struct SplitRing {
    cfg: RingConfig,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// Used idx at the last notification decision; `None` right after creation, when the
    /// driver's `used_event` cannot be trusted yet (the device then notifies once).
    signalled_used: Option<Wrapping<u16>>,
    /// Whether push_used ran since the last notification decision.
    pushed: bool,
    /// Whether `next_used` was read from the used ring yet (R-VRING-06: the used index comes
    /// from memory, not from the vring base).
    used_synced: bool,
}

impl SplitRing {
    /// A ring whose next avail index is `base` (SET_VRING_BASE, bits 0-15); the used index is
    /// read from the used ring on first use.
    pub(crate) fn new(cfg: RingConfig, base: u32) -> Result<Self, RingError> {
        if !cfg.size.is_power_of_two() {
            return Err(RingError::InvalidConfig(
                "split queue size not a power of two",
            ));
        }
        if base > u32::from(u16::MAX) {
            return Err(RingError::InvalidConfig("split vring base above 16 bits"));
        }
        Ok(Self {
            cfg,
            next_avail: Wrapping(base as u16),
            next_used: Wrapping(base as u16),
            signalled_used: None,
            pushed: false,
            used_synced: false,
        })
    }

    /// GET_VRING_BASE: the next avail index the device would process.
    pub(crate) fn base(&self) -> u32 {
        u32::from(self.next_avail.0)
    }

    fn avail_idx(&self, mem: &dyn GuestMemory) -> Result<u16, RingError> {
        // Acquire pairs with the driver's release before it stored avail idx: ring entries and
        // descriptors it published are visible after this.
        mem.load_u16(self.cfg.driver + 2, Ordering::Acquire)
            .map_err(RingError::mem("avail ring"))
    }

    /// Reads the used idx from the ring once, before the first use of the ring.
    fn ensure_used_synced(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        if !self.used_synced {
            self.sync_used_idx(mem)?;
        }
        Ok(())
    }

    /// The used idx the next push_used publishes (the base until the ring is first used).
    pub(crate) fn used_idx(&self) -> u16 {
        self.next_used.0
    }

    /// Adopts the used idx found in the used ring (reconnect: the ring may be ahead of base).
    pub(crate) fn sync_used_idx(&mut self, mem: &dyn GuestMemory) -> Result<u16, RingError> {
        let idx = mem
            .load_u16(self.cfg.device + 2, Ordering::Relaxed)
            .map_err(RingError::mem("used ring"))?;
        self.next_used = Wrapping(idx);
        self.signalled_used = None;
        self.used_synced = true;
        Ok(idx)
    }

    /// The chain whose head is descriptor `head`, without touching the avail ring (inflight
    /// resubmission).
    pub(crate) fn chain_at(&self, mem: &dyn GuestMemory, head: u16) -> Result<Chain, RingError> {
        self.walk(mem, head)
    }

    /// Whether the driver has published an entry the device has not taken.
    pub(crate) fn has_available(&self, mem: &dyn GuestMemory) -> Result<bool, RingError> {
        Ok(self.avail_idx(mem)? != self.next_avail.0)
    }

    /// Takes the next available chain.
    pub(crate) fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, RingError> {
        self.ensure_used_synced(mem)?;
        let avail_idx = self.avail_idx(mem)?;
        let pending = (Wrapping(avail_idx) - self.next_avail).0;
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.cfg.size {
            return Err(RingError::AvailIndexJump {
                avail_idx,
                next_avail: self.next_avail.0,
                size: self.cfg.size,
            });
        }
        let slot = u64::from(self.next_avail.0 % self.cfg.size);
        let head = mem
            .load_u16(self.cfg.driver + 4 + 2 * slot, Ordering::Relaxed)
            .map_err(RingError::mem("avail ring"))?;
        let chain = self.walk(mem, head)?;
        self.next_avail += 1;
        Ok(Some(chain))
    }

    /// Walks the chain starting at `head`, following `next` and one indirect table.
    fn walk(&self, mem: &dyn GuestMemory, head: u16) -> Result<Chain, RingError> {
        let ring = Table {
            gpa: self.cfg.desc,
            entries: u32::from(self.cfg.size),
            indirect: false,
        };
        let mut builder = ChainBuilder::new(mem);
        let mut index = head;
        let mut walked = 0u32;
        loop {
            let d = read_desc(mem, ring, index, self.cfg.size)?;
            walked += 1;
            if walked > ring.entries {
                return Err(RingError::ChainTooLong {
                    limit: ring.entries,
                });
            }
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                self.check_indirect(&d, walked)?;
                walk_indirect(mem, &d, &mut builder)?;
                break;
            }
            builder.push(d.addr, d.len, d.flags & VIRTQ_DESC_F_WRITE != 0)?;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            index = d.next;
        }
        Ok(builder.finish(head, head, walked as u16))
    }

    /// An INDIRECT descriptor must be the whole chain and the feature negotiated.
    fn check_indirect(&self, d: &SplitDesc, walked: u32) -> Result<(), RingError> {
        if !self.cfg.indirect {
            return Err(RingError::IndirectNotNegotiated);
        }
        if d.flags & VIRTQ_DESC_F_NEXT != 0 || walked != 1 {
            return Err(RingError::IndirectChained);
        }
        Ok(())
    }

    /// Publishes a used element, then the used idx.
    pub(crate) fn push_used(
        &mut self,
        mem: &dyn GuestMemory,
        chain: &Chain,
        len: u32,
    ) -> Result<(), RingError> {
        self.ensure_used_synced(mem)?;
        let slot = u64::from(self.next_used.0 % self.cfg.size);
        let elem = UsedElem {
            id: u32::from(chain.head),
            len,
        };
        mem.write(self.cfg.device + 4 + 8 * slot, elem.as_bytes())
            .map_err(RingError::mem("used ring"))?;
        self.next_used += 1;
        self.pushed = true;
        // Release: the element must be visible before the index that publishes it.
        mem.store_u16(self.cfg.device + 2, self.next_used.0, Ordering::Release)
            .map_err(RingError::mem("used ring"))
    }

    /// Publishes several used elements with one used idx store, so the driver sees all of
    /// them or none (a net packet spread over several receive chains, 5.1.6.4).
    pub(crate) fn push_used_batch(
        &mut self,
        mem: &dyn GuestMemory,
        done: &[(Chain, u32)],
    ) -> Result<(), RingError> {
        self.ensure_used_synced(mem)?;
        for (k, (chain, len)) in done.iter().enumerate() {
            let slot = u64::from((self.next_used + Wrapping(k as u16)).0 % self.cfg.size);
            let elem = UsedElem {
                id: u32::from(chain.head),
                len: *len,
            };
            mem.write(self.cfg.device + 4 + 8 * slot, elem.as_bytes())
                .map_err(RingError::mem("used ring"))?;
        }
        self.next_used += Wrapping(done.len() as u16);
        self.pushed = true;
        // Release: every element must be visible before the index that publishes them.
        mem.store_u16(self.cfg.device + 2, self.next_used.0, Ordering::Release)
            .map_err(RingError::mem("used ring"))
    }

    /// Whether the driver wants an interrupt for what was published since the last call.
    pub(crate) fn should_notify(&mut self, mem: &dyn GuestMemory) -> Result<bool, RingError> {
        // Orders the used idx store before the load of flags / used_event (virtio 2.7.10).
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        if !std::mem::take(&mut self.pushed) {
            return Ok(false);
        }
        if !self.cfg.event_idx {
            let flags = mem
                .load_u16(self.cfg.driver, Ordering::Relaxed)
                .map_err(RingError::mem("avail ring"))?;
            return Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0);
        }
        let used_event = mem
            .load_u16(
                self.cfg.driver + 4 + 2 * u64::from(self.cfg.size),
                Ordering::Relaxed,
            )
            .map_err(RingError::mem("avail ring used_event"))?;
        Ok(old.is_none_or(|old| need_event(used_event, new.0, old.0)))
    }

    /// Asks the driver to kick for the next buffer: avail_event (EVENT_IDX) or used flags.
    pub(crate) fn enable_notifications(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        if self.cfg.event_idx {
            let at = self.cfg.device + 4 + 8 * u64::from(self.cfg.size);
            mem.store_u16(at, self.next_avail.0, Ordering::Relaxed)
                .map_err(RingError::mem("used ring avail_event"))?;
        } else {
            mem.store_u16(self.cfg.device, 0, Ordering::Relaxed)
                .map_err(RingError::mem("used ring"))?;
        }
        // The driver must see the request before the device re-reads avail idx.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Tells the driver not to kick (used flags NO_NOTIFY; a no-op with EVENT_IDX).
    pub(crate) fn disable_notifications(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        if self.cfg.event_idx {
            return Ok(());
        }
        mem.store_u16(self.cfg.device, VIRTQ_USED_F_NO_NOTIFY, Ordering::Relaxed)
            .map_err(RingError::mem("used ring"))
    }
}

/// virtio 2.7.10 `vring_need_event`: whether `event` lies in `[old, new)`.
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Reads descriptor `index` of `table`, checking the index against the table.
fn read_desc(
    mem: &dyn GuestMemory,
    table: Table,
    index: u16,
    size: u16,
) -> Result<SplitDesc, RingError> {
    if u32::from(index) >= table.entries {
        return Err(if table.indirect {
            RingError::IndirectNextOutOfTable {
                next: index,
                entries: table.entries,
            }
        } else {
            RingError::DescIndexOutOfRange { index, size }
        });
    }
    let area = if table.indirect {
        "indirect table"
    } else {
        "descriptor table"
    };
    read_obj(mem, table.gpa + 16 * u64::from(index)).map_err(RingError::mem(area))
}

/// Flattens the indirect table `d` points at into `builder` (virtio 2.7.5.3.2: the WRITE flag
/// of `d` itself is ignored).
fn walk_indirect(
    mem: &dyn GuestMemory,
    d: &SplitDesc,
    builder: &mut ChainBuilder<'_>,
) -> Result<(), RingError> {
    let entries = indirect_entries(d.len)?;
    let table = Table {
        gpa: d.addr,
        entries,
        indirect: true,
    };
    mem.check_range(d.addr, u64::from(d.len))
        .map_err(|source| RingError::BadBuffer {
            gpa: d.addr,
            len: d.len,
            source,
        })?;
    let mut index = 0u16;
    for walked in 1.. {
        let e = read_desc(mem, table, index, 0)?;
        if walked > entries {
            return Err(RingError::ChainTooLong { limit: entries });
        }
        if e.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(RingError::NestedIndirect);
        }
        builder.push(e.addr, e.len, e.flags & VIRTQ_DESC_F_WRITE != 0)?;
        if e.flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        index = e.next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_virtio_formula_across_wrap() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(65535, 2, 65534));
        assert!(!need_event(10, 5, 0));
        assert!(need_event(4, 5, 0));
    }
}
