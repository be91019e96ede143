//! The device side of a packed virtqueue (virtio 1.2 section 2.8): available descriptors are
//! recognised by their AVAIL/USED bits against the driver's wrap counter, a chain is consumed
//! slot by slot (its buffer id in the last descriptor, or one indirect table), and one used
//! descriptor per chain is written back. Notifications follow the driver's event suppression
//! structure (2.8.10), with EVENT_IDX's descriptor-specific mode. The GET/SET_VRING_BASE word is
//! the checklist's packed base (1.5): avail index and wrap counter, used index and wrap counter.

use std::sync::atomic::{Ordering, fence};

use vhu_protocol::virtio::{
    PackedDesc, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::device::{Blk, DataFaults, Host, Segment};
use crate::memory::Memory;

/// Driver event suppression: notify on every used buffer.
const EVENT_ENABLE: u16 = 0;
/// Driver event suppression: never notify.
const EVENT_DISABLE: u16 = 1;

/// Where a started packed ring lives (guest addresses) and where it stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PackedRing {
    /// Queue size.
    pub size: u16,
    /// Descriptor ring.
    pub desc: u64,
    /// Driver event suppression area (SET_VRING_ADDR's avail field).
    pub driver: u64,
    /// Device event suppression area (SET_VRING_ADDR's used field).
    pub device: u64,
    /// Next descriptor slot to look at.
    pub next_avail: u16,
    /// The driver's wrap counter the device expects.
    pub avail_wrap: bool,
    /// Next slot to write a used descriptor at.
    pub next_used: u16,
    /// The device's wrap counter.
    pub used_wrap: bool,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
}

impl PackedRing {
    /// The packed base word (checklist 1.5).
    pub fn base(&self) -> u32 {
        u32::from(self.next_avail & 0x7fff)
            | u32::from(self.avail_wrap) << 15
            | u32::from(self.next_used & 0x7fff) << 16
            | u32::from(self.used_wrap) << 31
    }

    /// Sets the position from a packed base word. A word with the used half 0 (DPDK's reading:
    /// only the avail half is sent) puts the used position at the avail position.
    pub fn set_base(&mut self, base: u32) {
        let base = if base >> 16 == 0 {
            base | base << 16
        } else {
            base
        };
        self.next_avail = (base & 0x7fff) as u16;
        self.avail_wrap = base & (1 << 15) != 0;
        self.next_used = ((base >> 16) & 0x7fff) as u16;
        self.used_wrap = base & (1 << 31) != 0;
    }

    fn read_desc(&self, mem: &Memory, table: u64, i: u16) -> Result<PackedDesc, String> {
        let mut raw = [0u8; 16];
        mem.read(table + 16 * u64::from(i), &mut raw)?;
        Ok(PackedDesc::read_from_bytes(&raw).expect("16 bytes"))
    }

    fn is_avail(&self, d: &PackedDesc) -> bool {
        let avail = d.flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = d.flags & VIRTQ_DESC_F_USED != 0;
        avail == self.avail_wrap && used != self.avail_wrap
    }

    fn advance_avail(&mut self) {
        self.next_avail += 1;
        if self.next_avail >= self.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    /// Takes the next available chain: its buffer id, slots used, and buffers (Err(id, slots)
    /// when the chain is malformed and must complete with nothing written).
    fn pop(&mut self, mem: &Memory) -> Result<Option<Chain>, String> {
        let first = self.read_desc(mem, self.desc, self.next_avail)?;
        if !self.is_avail(&first) {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let mut segs = Vec::new();
        let mut d = first;
        let mut slots = 0u16;
        let mut bad = false;
        loop {
            slots += 1;
            self.advance_avail();
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                bad |= !segs.is_empty() || self.indirect(mem, &d, &mut segs).is_err();
            } else {
                segs.push(segment(&d));
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if slots >= self.size {
                bad = true;
                break;
            }
            d = self.read_desc(mem, self.desc, self.next_avail)?;
        }
        Ok(Some(Chain {
            id: d.id,
            slots,
            segs: (!bad).then_some(segs),
        }))
    }

    fn indirect(
        &self,
        mem: &Memory,
        d: &PackedDesc,
        segs: &mut Vec<Segment>,
    ) -> Result<(), String> {
        if d.len == 0 || d.len % 16 != 0 || d.len / 16 > u32::from(self.size) {
            return Err("bad indirect table length".into());
        }
        for i in 0..(d.len / 16) as u16 {
            let e = self.read_desc(mem, d.addr, i)?;
            if e.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err("nested indirect table".into());
            }
            segs.push(segment(&e));
        }
        Ok(())
    }

    /// Writes the used descriptor of a chain: id and length first, then the flags.
    fn push_used(&mut self, mem: &Memory, c: &Chain, len: u32) -> Result<(), String> {
        let at = self.desc + 16 * u64::from(self.next_used);
        let wrap = if self.used_wrap {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        let flags = wrap | if len > 0 { VIRTQ_DESC_F_WRITE } else { 0 };
        let d = PackedDesc {
            addr: 0,
            len,
            id: c.id,
            flags: 0,
        };
        mem.write(at + 8, &d.as_bytes()[8..14])?;
        fence(Ordering::Release);
        mem.write_u16(at + 14, flags)?;
        self.next_used += c.slots;
        if self.next_used >= self.size {
            self.next_used -= self.size;
            self.used_wrap = !self.used_wrap;
        }
        Ok(())
    }

    /// Whether the driver wants a notification for the used slots written since `old`
    /// (QEMU's virtqueue_packed_should_notify).
    fn should_notify(&self, mem: &Memory, old: u16) -> Result<bool, String> {
        let off_wrap = mem.read_u16(self.driver)?;
        let flags = mem.read_u16(self.driver + 2)?;
        match flags {
            EVENT_ENABLE => return Ok(true),
            EVENT_DISABLE => return Ok(false),
            _ if !self.event_idx => return Ok(true),
            _ => {}
        }
        let mut off = off_wrap & 0x7fff;
        if (off_wrap >> 15 != 0) != self.used_wrap {
            off = off.wrapping_sub(self.size);
        }
        let new = self.next_used;
        Ok(new.wrapping_sub(off).wrapping_sub(1) < new.wrapping_sub(old))
    }
}

/// A chain taken from the ring.
struct Chain {
    id: u16,
    slots: u16,
    segs: Option<Vec<Segment>>,
}

fn segment(d: &PackedDesc) -> Segment {
    Segment {
        gpa: d.addr,
        len: d.len,
        writable: d.flags & VIRTQ_DESC_F_WRITE != 0,
    }
}

/// Processes every available chain; returns whether the driver wants a notification.
pub fn process(
    dev: &mut Blk,
    mem: &Memory,
    ring: &mut PackedRing,
    faults: DataFaults,
    host: Host<'_>,
) -> Result<bool, String> {
    let old = ring.next_used;
    let mut done = 0;
    while let Some(chain) = ring.pop(mem)? {
        let len = match &chain.segs {
            Some(segs) => dev.execute(mem, segs, faults, &mut *host),
            None => 0,
        };
        ring.push_used(mem, &chain, len + u32::from(faults.wrong_used_len))?;
        done += 1;
    }
    if done == 0 {
        return Ok(false);
    }
    ring.should_notify(mem, old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_word_round_trips_both_indexes_and_wrap_counters() {
        let mut r = PackedRing {
            size: 256,
            desc: 0,
            driver: 0,
            device: 0,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            event_idx: false,
        };
        assert_eq!(r.base(), 0x8000_8000);
        r.set_base(0x0005_0103);
        assert_eq!(
            (r.next_avail, r.avail_wrap, r.next_used, r.used_wrap),
            (0x103, false, 5, false)
        );
        assert_eq!(r.base(), 0x0005_0103);
        r.set_base(0x8000);
        assert_eq!(
            r.base(),
            0x8000_8000,
            "an avail-only word puts used at avail"
        );
    }
}
