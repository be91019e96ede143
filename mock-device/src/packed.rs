//! The device side of a packed virtqueue (virtio 1.2 section 2.8): one descriptor ring with
//! avail/used flag bits compared against wrap counters (2.8.1), chains through consecutive
//! slots (2.8.6), indirect tables (2.8.19), one used descriptor per chain written in ring order
//! (2.8.7), and the driver/device event suppression structures (2.8.10, 2.8.14).

use std::sync::atomic::{Ordering, fence};

use vhu_protocol::virtio::{
    PackedDesc, PackedEvent, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE,
};
use zerocopy::IntoBytes;

use crate::chain::{Chain, ChainBuilder, RingError, indirect_entries};
use crate::memory::{GuestMemory, read_obj};
use crate::queue::RingConfig;

/// Event suppression flags (virtio 2.8.10).
const EVENT_FLAGS_ENABLE: u16 = 0;
const EVENT_FLAGS_DISABLE: u16 = 1;
const EVENT_FLAGS_DESC: u16 = 2;
/// Bit 15 of a packed index word: the wrap counter.
const WRAP_BIT: u16 = 1 << 15;

/// A ring position: slot index and wrap counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    idx: u16,
    wrap: bool,
}

impl Pos {
    /// Decodes a 16-bit word: bits 0-14 index, bit 15 wrap counter.
    fn from_word(w: u16) -> Self {
        Self {
            idx: w & !WRAP_BIT,
            wrap: w & WRAP_BIT != 0,
        }
    }

    fn word(self) -> u16 {
        self.idx | if self.wrap { WRAP_BIT } else { 0 }
    }

    /// Moves `n` slots forward in a ring of `size`, flipping the wrap counter on each pass.
    fn advance(&mut self, n: u16, size: u16) {
        let next = u32::from(self.idx) + u32::from(n);
        if next >= u32::from(size) {
            self.wrap = !self.wrap;
        }
        self.idx = (next % u32::from(size)) as u16;
    }

    /// A linear position modulo `2 * size` (wrap counter 1 on the first pass).
    fn linear(self, size: u16) -> u32 {
        u32::from(self.idx) + if self.wrap { 0 } else { u32::from(size) }
    }
}

/// Device-side state of a packed ring.
#[derive(Debug)]
pub(crate) struct PackedRing {
    cfg: RingConfig,
    avail: Pos,
    used: Pos,
    /// Used position at the last notification decision; `None` until the first one.
    signalled_used: Option<Pos>,
    /// Whether push_used ran since the last notification decision.
    pushed: bool,
}

impl PackedRing {
    /// A ring positioned by a packed SET_VRING_BASE word.
    pub(crate) fn new(cfg: RingConfig, base: u32) -> Result<Self, RingError> {
        let avail = Pos::from_word(base as u16);
        let used = Pos::from_word((base >> 16) as u16);
        if avail.idx >= cfg.size || used.idx >= cfg.size {
            return Err(RingError::InvalidConfig(
                "packed vring base index beyond the queue size",
            ));
        }
        Ok(Self {
            cfg,
            avail,
            used,
            signalled_used: None,
            pushed: false,
        })
    }

    /// GET_VRING_BASE: avail position in bits 0-15, used position in bits 16-31.
    pub(crate) fn base(&self) -> u32 {
        u32::from(self.avail.word()) | u32::from(self.used.word()) << 16
    }

    /// The used position word (bits 0-14 index, bit 15 wrap counter).
    pub(crate) fn used_idx(&self) -> u16 {
        self.used.word()
    }

    fn slot(&self, idx: u16) -> u64 {
        self.cfg.desc + 16 * u64::from(idx)
    }

    /// Whether the descriptor at the avail position is available (virtio 2.8.1).
    pub(crate) fn has_available(&self, mem: &dyn GuestMemory) -> Result<bool, RingError> {
        // Acquire pairs with the driver's release before it set the first descriptor's flags.
        let flags = mem
            .load_u16(self.slot(self.avail.idx) + 14, Ordering::Acquire)
            .map_err(RingError::mem("descriptor ring"))?;
        let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = flags & VIRTQ_DESC_F_USED != 0;
        Ok(avail == self.avail.wrap && used != self.avail.wrap)
    }

    /// Takes the next available chain.
    pub(crate) fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, RingError> {
        if !self.has_available(mem)? {
            return Ok(None);
        }
        let chain = self.walk(mem)?;
        self.avail.advance(chain.descriptors, self.cfg.size);
        Ok(Some(chain))
    }

    /// Walks consecutive ring slots from the avail position while NEXT is set.
    fn walk(&self, mem: &dyn GuestMemory) -> Result<Chain, RingError> {
        let head = self.avail.idx;
        let mut builder = ChainBuilder::new(mem);
        let mut idx = head;
        let mut count = 0u16;
        loop {
            let d: PackedDesc =
                read_obj(mem, self.slot(idx)).map_err(RingError::mem("descriptor ring"))?;
            count += 1;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                self.check_indirect(&d, count)?;
                walk_indirect(mem, &d, &mut builder)?;
                return Ok(builder.finish(head, d.id, count));
            }
            builder.push(d.addr, d.len, d.flags & VIRTQ_DESC_F_WRITE != 0)?;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(builder.finish(head, d.id, count));
            }
            if count == self.cfg.size {
                return Err(RingError::ChainTooLong {
                    limit: u32::from(self.cfg.size),
                });
            }
            idx = (idx + 1) % self.cfg.size;
        }
    }

    /// An INDIRECT descriptor must be the whole chain and the feature negotiated.
    fn check_indirect(&self, d: &PackedDesc, count: u16) -> Result<(), RingError> {
        if !self.cfg.indirect {
            return Err(RingError::IndirectNotNegotiated);
        }
        if d.flags & VIRTQ_DESC_F_NEXT != 0 || count != 1 {
            return Err(RingError::IndirectChained);
        }
        Ok(())
    }

    /// Writes the used descriptor for `chain` at the used position (id and len, then flags).
    pub(crate) fn push_used(
        &mut self,
        mem: &dyn GuestMemory,
        chain: &Chain,
        len: u32,
    ) -> Result<(), RingError> {
        let at = self.slot(self.used.idx);
        let mut len_id = [0u8; 6];
        len_id[..4].copy_from_slice(&len.to_le_bytes());
        len_id[4..].copy_from_slice(&chain.id.to_le_bytes());
        mem.write(at + 8, &len_id)
            .map_err(RingError::mem("descriptor ring"))?;
        let flags = if self.used.wrap {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        // Release: id and len must be visible before the flags that hand the descriptor back.
        mem.store_u16(at + 14, flags, Ordering::Release)
            .map_err(RingError::mem("descriptor ring"))?;
        self.used.advance(chain.descriptors.max(1), self.cfg.size);
        self.pushed = true;
        Ok(())
    }

    /// Writes the used descriptors of several chains so the driver sees all of them or none:
    /// ids and lengths first, then the flags of every chain but the first, then the first's
    /// (virtio 2.8.21.1: the driver reads used descriptors in ring order).
    pub(crate) fn push_used_batch(
        &mut self,
        mem: &dyn GuestMemory,
        done: &[(Chain, u32)],
    ) -> Result<(), RingError> {
        let mut at = Vec::with_capacity(done.len());
        let mut pos = self.used;
        for (chain, len) in done {
            let slot = self.slot(pos.idx);
            let mut len_id = [0u8; 6];
            len_id[..4].copy_from_slice(&len.to_le_bytes());
            len_id[4..].copy_from_slice(&chain.id.to_le_bytes());
            mem.write(slot + 8, &len_id)
                .map_err(RingError::mem("descriptor ring"))?;
            at.push((slot, pos.wrap));
            pos.advance(chain.descriptors.max(1), self.cfg.size);
        }
        let flags = |wrap: bool| {
            if wrap {
                VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
            } else {
                0
            }
        };
        // Release on every flags store: the ids and lengths before any flags, the other flags
        // before the first's.
        for &(slot, wrap) in at.iter().skip(1).chain(at.first()) {
            mem.store_u16(slot + 14, flags(wrap), Ordering::Release)
                .map_err(RingError::mem("descriptor ring"))?;
        }
        self.used = pos;
        self.pushed |= !done.is_empty();
        Ok(())
    }

    /// Whether the driver event suppression structure asks for an interrupt for what was
    /// published since the last call.
    pub(crate) fn should_notify(&mut self, mem: &dyn GuestMemory) -> Result<bool, RingError> {
        // Orders the used flags stores before the load of the driver's event structure.
        fence(Ordering::SeqCst);
        let new = self.used;
        let old = self.signalled_used.replace(new);
        if !std::mem::take(&mut self.pushed) {
            return Ok(false);
        }
        let ev: PackedEvent =
            read_obj(mem, self.cfg.driver).map_err(RingError::mem("driver event suppression"))?;
        Ok(match ev.flags {
            EVENT_FLAGS_DISABLE => false,
            EVENT_FLAGS_DESC if self.cfg.event_idx => {
                old.is_none_or(|old| self.event_hit(Pos::from_word(ev.off_wrap), old, new))
            }
            _ => true,
        })
    }

    /// Whether the used position `event` was written in `[old, new)`.
    fn event_hit(&self, event: Pos, old: Pos, new: Pos) -> bool {
        let size = self.cfg.size;
        let modulo = 2 * u32::from(size);
        let dist = |from: Pos, to: Pos| (to.linear(size) + modulo - from.linear(size)) % modulo;
        dist(old, event) < dist(old, new)
    }

    /// Writes the device event suppression: enable, or (EVENT_IDX) the next avail position.
    pub(crate) fn enable_notifications(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        let ev = if self.cfg.event_idx {
            PackedEvent {
                off_wrap: self.avail.word(),
                flags: EVENT_FLAGS_DESC,
            }
        } else {
            PackedEvent {
                off_wrap: 0,
                flags: EVENT_FLAGS_ENABLE,
            }
        };
        self.write_device_event(mem, ev)?;
        // The driver must see the request before the device re-reads the ring.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Writes the device event suppression: disable.
    pub(crate) fn disable_notifications(&mut self, mem: &dyn GuestMemory) -> Result<(), RingError> {
        let ev = PackedEvent {
            off_wrap: 0,
            flags: EVENT_FLAGS_DISABLE,
        };
        self.write_device_event(mem, ev)
    }

    fn write_device_event(&self, mem: &dyn GuestMemory, ev: PackedEvent) -> Result<(), RingError> {
        mem.write(self.cfg.device, ev.as_bytes())
            .map_err(RingError::mem("device event suppression"))
    }
}

/// Flattens a packed indirect table: entries are used in order, NEXT is ignored (2.8.19).
fn walk_indirect(
    mem: &dyn GuestMemory,
    d: &PackedDesc,
    builder: &mut ChainBuilder<'_>,
) -> Result<(), RingError> {
    let entries = indirect_entries(d.len)?;
    mem.check_range(d.addr, u64::from(d.len))
        .map_err(|source| RingError::BadBuffer {
            gpa: d.addr,
            len: d.len,
            source,
        })?;
    for i in 0..u64::from(entries) {
        let e: PackedDesc =
            read_obj(mem, d.addr + 16 * i).map_err(RingError::mem("indirect table"))?;
        if e.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(RingError::NestedIndirect);
        }
        builder.push(e.addr, e.len, e.flags & VIRTQ_DESC_F_WRITE != 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_flips_wrap_counter_when_passing_the_end() {
        let mut p = Pos { idx: 6, wrap: true };
        p.advance(3, 8);
        assert_eq!(
            p,
            Pos {
                idx: 1,
                wrap: false
            }
        );
        p.advance(7, 8);
        assert_eq!(p, Pos { idx: 0, wrap: true });
        assert_eq!(Pos::from_word(p.word()), p);
    }
}
