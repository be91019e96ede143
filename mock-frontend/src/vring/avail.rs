//! Making buffers available: descriptors written (direct chains, indirect tables), split avail
//! ring entries or packed descriptor flags, and the index or flags published in order.

use super::*;

impl DriverQueue {
    pub(super) fn write_desc(
        &self,
        mem: &GuestMemory,
        table: u64,
        i: u16,
        d: &SplitDesc,
    ) -> Result<(), MemoryError> {
        mem.write(table + 16 * u64::from(i), d.as_bytes())
    }

    /// Adds a direct chain; returns its head (split) or buffer id (packed). Not visible to the
    /// device until [`publish`](Self::publish). Descriptors carry the addresses the device
    /// knows the buffers by (IOVAs behind the IOMMU).
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[Buffer]) -> Result<u16, MemoryError> {
        if self.layout == RingLayout::Packed {
            let descs: Vec<(u64, u32, u16)> = bufs
                .iter()
                .map(|b| (mem.device_addr(b.gpa), b.len, write_flag(b)))
                .collect();
            return self.packed_place(mem, &descs);
        }
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(MemoryError::OutOfSpace {
                len: bufs.len() as u64,
            });
        }
        let ids = self.free.split_off(self.free.len() - bufs.len());
        let ids: Vec<u16> = ids.into_iter().rev().collect();
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let flags = write_flag(b) | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = if last { 0 } else { ids[k + 1] };
            self.write_desc(
                mem,
                self.desc,
                ids[k],
                &SplitDesc {
                    addr: mem.device_addr(b.gpa),
                    len: b.len,
                    flags,
                    next,
                },
            )?;
        }
        self.make_available(mem, ids)
    }

    /// Adds a chain as one indirect descriptor whose table lives in guest memory.
    pub fn add_indirect(
        &mut self,
        mem: &mut GuestMemory,
        bufs: &[Buffer],
    ) -> Result<u16, MemoryError> {
        let n = bufs.len() as u16;
        if n == 0 {
            return Err(MemoryError::OutOfSpace { len: 0 });
        }
        let table = mem.alloc(16 * u64::from(n), 16)?;
        for (k, b) in bufs.iter().enumerate() {
            let k = k as u16;
            let entry = match self.layout {
                // Packed indirect tables are sequential: no NEXT, no id (virtio 2.8.19).
                RingLayout::Packed => PackedDesc {
                    addr: mem.device_addr(b.gpa),
                    len: b.len,
                    id: 0,
                    flags: write_flag(b),
                }
                .as_bytes()
                .to_vec(),
                RingLayout::Split => {
                    let last = k + 1 == n;
                    SplitDesc {
                        addr: mem.device_addr(b.gpa),
                        len: b.len,
                        flags: write_flag(b) | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                        next: if last { 0 } else { k + 1 },
                    }
                    .as_bytes()
                    .to_vec()
                }
            };
            mem.write(table + 16 * u64::from(k), &entry)?;
        }
        let len = 16 * u32::from(n);
        let table_addr = mem.device_addr(table);
        if self.layout == RingLayout::Packed {
            return self.packed_place(mem, &[(table_addr, len, VIRTQ_DESC_F_INDIRECT)]);
        }
        let head = self.free.pop().ok_or(MemoryError::OutOfSpace { len: 1 })?;
        self.write_desc(
            mem,
            self.desc,
            head,
            &SplitDesc {
                addr: table_addr,
                len,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )?;
        self.make_available(mem, vec![head])
    }

    pub(super) fn make_available(
        &mut self,
        mem: &GuestMemory,
        ids: Vec<u16>,
    ) -> Result<u16, MemoryError> {
        let head = ids[0];
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_u16(slot, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight[usize::from(head)] = Some(ids);
        Ok(head)
    }

    /// The avail/used flag bits that mark a packed descriptor available in the current lap.
    pub(super) fn avail_bits(&self) -> u16 {
        if self.avail_wrap {
            VIRTQ_DESC_F_AVAIL
        } else {
            VIRTQ_DESC_F_USED
        }
    }

    /// Packed: writes `(addr, len, flags)` descriptors into consecutive slots under one buffer
    /// id. Every descriptor but the head gets its flags now; the head's flags are written by
    /// [`publish`](Self::publish), after a release fence, so the chain appears at once.
    pub(super) fn packed_place(
        &mut self,
        mem: &GuestMemory,
        descs: &[(u64, u32, u16)],
    ) -> Result<u16, MemoryError> {
        let n = descs.len() as u16;
        if n == 0 || n > self.size - self.slots_used || self.free.is_empty() {
            return Err(MemoryError::OutOfSpace { len: n.into() });
        }
        let id = self.free.pop().ok_or(MemoryError::OutOfSpace { len: 1 })?;
        let mut slots = Vec::with_capacity(descs.len());
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = k + 1 == descs.len();
            let flags = flags | if last { 0 } else { VIRTQ_DESC_F_NEXT } | self.avail_bits();
            let slot = self.next_avail;
            let at = self.desc + 16 * u64::from(slot);
            let d = PackedDesc {
                addr,
                len,
                id,
                flags,
            };
            if k == 0 {
                // The head's flags stay as they are (not available) until publish.
                mem.write(at, &d.as_bytes()[..14])?;
                self.unpublished.push((slot, flags));
            } else {
                mem.write(at, d.as_bytes())?;
            }
            slots.push(slot);
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
        }
        self.slots_used += n;
        self.in_flight[usize::from(id)] = Some(slots);
        Ok(id)
    }

    /// Makes every added chain visible: split, the avail index after a release fence; packed,
    /// each chain's head flags after a release fence.
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<(), MemoryError> {
        if self.layout == RingLayout::Packed {
            fence(Ordering::Release);
            for (slot, flags) in std::mem::take(&mut self.unpublished) {
                mem.write_u16(self.desc + 16 * u64::from(slot) + 14, flags)?;
            }
            return Ok(());
        }
        if self.event_idx {
            // used_event: ask for a call as soon as the next buffer is used.
            mem.write_u16(self.avail + 4 + 2 * u64::from(self.size), self.last_used)?;
        }
        fence(Ordering::Release);
        mem.write_u16(self.avail + 2, self.next_avail)
    }
}

fn write_flag(b: &Buffer) -> u16 {
    if b.writable { VIRTQ_DESC_F_WRITE } else { 0 }
}
