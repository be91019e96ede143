//! The device IOTLB (spec "IOMMU support", checklist 4.18). With VIRTIO_F_ACCESS_PLATFORM
//! negotiated, ring addresses (SET_VRING_ADDR) and descriptor addresses are I/O virtual
//! addresses (R-IOTLB-03): they go through the entries the front-end sends with IOTLB_MSG
//! (update: iova, size, user address, perm; invalidate: iova, size) to front-end user addresses,
//! and those through the memory table's user addresses; the region guest addresses are not used
//! (R-MEM-19). IOTLB_MSG is always answered with a u64, 0 on success (R-IOTLB-02); an update
//! whose user range the memory table does not cover is refused (R-IOTLB-05).
//!
//! An access no entry allows is a miss: the ring stops where it stands (the chain is not taken),
//! BACKEND_IOTLB_MSG type 1 (iova, perm) goes to the front-end on the back-end channel, without
//! NEED_REPLY (the spec lets the back-end choose; waiting for the ack here would block this
//! single-threaded session on the channel while the front-end answers on the main socket), and
//! the ring is tried again after the next update, or the next kick.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use vhu_mock_device::memory::end_of;
use vhu_mock_device::{GuestMemory, MemError, Queue, RingConfig};
use vhu_protocol::wire::payload::{Body, IotlbMsg};
use vhu_protocol::{BackendReq, VirtioFeatures};

use crate::faults::Fault;
use crate::memory::Memory;
use crate::session::{Outcome, Session};

/// `perm`: read-only.
pub const PERM_RO: u8 = 1;
/// `perm`: write-only.
pub const PERM_WO: u8 = 2;
/// `type`: a miss (back-end to front-end).
pub const TYPE_MISS: u8 = 1;
/// `type`: an update (front-end to back-end).
pub const TYPE_UPDATE: u8 = 2;
/// `type`: an invalidation (front-end to back-end).
pub const TYPE_INVALIDATE: u8 = 3;

/// One translation: `size` bytes from `iova` are the front-end's user addresses from `uaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// First I/O virtual address.
    pub iova: u64,
    /// Bytes mapped.
    pub size: u64,
    /// The front-end user address of `iova`.
    pub uaddr: u64,
    /// Which accesses the entry allows (bit 0 read, bit 1 write).
    pub perm: u8,
}

impl Entry {
    fn end(&self) -> u64 {
        self.iova.saturating_add(self.size)
    }
}

/// The entries the front-end sent, and the misses already reported since the last change.
#[derive(Debug, Default)]
pub struct Iotlb {
    entries: Vec<Entry>,
    /// I/O virtual addresses whose miss went out since the last update or invalidation: a ring
    /// retried on every tick does not flood the channel with the same miss.
    reported: Vec<u64>,
}

impl Iotlb {
    /// Adds an entry; the parts of older entries it overlaps are dropped first.
    pub fn update(&mut self, e: Entry) {
        self.invalidate(e.iova, e.size);
        self.entries.push(e);
        self.reported.clear();
    }

    /// Removes `[iova, iova + size)` from every entry, cutting the entries it overlaps.
    pub fn invalidate(&mut self, iova: u64, size: u64) {
        let end = iova.saturating_add(size);
        let mut kept = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            if e.end() <= iova || e.iova >= end {
                kept.push(e);
                continue;
            }
            if e.iova < iova {
                kept.push(Entry {
                    size: iova - e.iova,
                    ..e
                });
            }
            if e.end() > end {
                let cut = end - e.iova;
                kept.push(Entry {
                    iova: end,
                    size: e.end() - end,
                    uaddr: e.uaddr + cut,
                    perm: e.perm,
                });
            }
        }
        self.entries = kept;
        self.reported.clear();
    }

    /// The user address of `iova` and how many bytes from there the same entry maps, if an
    /// entry maps it with every permission of `perm`.
    pub fn translate(&self, iova: u64, perm: u8) -> Option<(u64, u64)> {
        self.entries
            .iter()
            .find(|e| iova >= e.iova && iova < e.end() && e.perm & perm == perm)
            .map(|e| (e.uaddr + (iova - e.iova), e.end() - iova))
    }

    /// Notes that the miss of `iova` is reported; false if it already was since the last
    /// change of the entries.
    fn first_report(&mut self, iova: u64) -> bool {
        if self.reported.contains(&iova) {
            return false;
        }
        self.reported.push(iova);
        true
    }
}

/// Guest memory as a device behind the IOMMU sees it: addresses are IOVAs, translated through
/// the IOTLB to user addresses and through the memory table's user addresses to the mappings.
/// The first access no entry allows is remembered as the miss to report. Ring index loads and
/// stores are the trait's default (a copy through the translation and a fence): an index may
/// straddle two IOTLB entries.
#[derive(Debug)]
pub struct IommuView<'a> {
    mem: &'a Memory,
    iotlb: &'a Iotlb,
    miss: Cell<Option<(u64, u8)>>,
    /// Fault `iotlb-guest-addr`: accesses outside these ring areas (the buffers and indirect
    /// tables descriptors point at) go through the region guest addresses instead.
    guest_addr_outside: Option<Vec<(u64, u64)>>,
}

impl<'a> IommuView<'a> {
    /// The view of `mem` through `iotlb`.
    pub fn new(
        mem: &'a Memory,
        iotlb: &'a Iotlb,
        guest_addr_outside: Option<Vec<(u64, u64)>>,
    ) -> Self {
        Self {
            mem,
            iotlb,
            miss: Cell::new(None),
            guest_addr_outside,
        }
    }

    /// The first access that missed: its IOVA and the permission it needed.
    pub fn miss(&self) -> Option<(u64, u8)> {
        self.miss.get()
    }

    /// Whether the fault sends this access through the region guest addresses.
    fn by_guest_addr(&self, iova: u64, len: u64) -> bool {
        self.guest_addr_outside.as_ref().is_some_and(|areas| {
            !areas
                .iter()
                .any(|&(a, l)| iova >= a && iova.saturating_add(len) <= a.saturating_add(l))
        })
    }

    /// Applies `access` to each piece of `[iova, iova + len)` one entry maps with `need`:
    /// `(user address, offset into the range, length)`. A piece no entry maps is a miss,
    /// remembered with the permission `report`.
    fn each_piece(
        &self,
        (iova, len): (u64, u64),
        need: u8,
        report: u8,
        mut access: impl FnMut(u64, usize, usize) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        end_of(iova, len)?;
        let mut done = 0u64;
        while done < len {
            let at = iova + done;
            let Some((ua, avail)) = self.iotlb.translate(at, need) else {
                if self.miss.get().is_none() {
                    self.miss.set(Some((at, report)));
                }
                return Err(MemError::Unmapped { gpa: iova, len });
            };
            let n = avail.min(len - done);
            access(ua, done as usize, n as usize)?;
            done += n;
        }
        Ok(())
    }
}

impl GuestMemory for IommuView<'_> {
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        if self.by_guest_addr(iova, len) {
            return self.mem.read(iova, buf);
        }
        self.each_piece((iova, len), PERM_RO, PERM_RO, |ua, off, n| {
            self.mem.read_ua(ua, &mut buf[off..off + n])
        })
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        if self.by_guest_addr(iova, len) {
            return self.mem.write(iova, data);
        }
        self.each_piece((iova, len), PERM_WO, PERM_WO, |ua, off, n| {
            self.mem.write_ua(ua, &data[off..off + n])
        })
    }

    fn check_range(&self, iova: u64, len: u64) -> Result<(), MemError> {
        if self.by_guest_addr(iova, len) {
            return self.mem.check_range(iova, len);
        }
        // Validation does not say how the range will be used: any entry will do here (the
        // access itself checks the permission), and a miss asks for reading.
        self.each_piece((iova, len), 0, PERM_RO, |ua, _, n| {
            self.mem.check_ua(ua, n as u64)
        })
    }
}

/// How the device reaches guest memory in a session: guest addresses straight through the
/// memory table, or I/O virtual addresses through the IOTLB.
#[derive(Debug)]
pub enum Dma<'a> {
    /// Guest physical addresses (no IOMMU).
    Direct(&'a Memory),
    /// I/O virtual addresses (VIRTIO_F_ACCESS_PLATFORM).
    Iommu(IommuView<'a>),
}

impl Dma<'_> {
    /// The miss an access ran into, if any.
    pub fn miss(&self) -> Option<(u64, u8)> {
        match self {
            Self::Direct(_) => None,
            Self::Iommu(v) => v.miss(),
        }
    }
}

impl GuestMemory for Dma<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self {
            Self::Direct(m) => m.read(addr, buf),
            Self::Iommu(v) => v.read(addr, buf),
        }
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        match self {
            Self::Direct(m) => m.write(addr, data),
            Self::Iommu(v) => v.write(addr, data),
        }
    }

    fn check_range(&self, addr: u64, len: u64) -> Result<(), MemError> {
        match self {
            Self::Direct(m) => m.check_range(addr, len),
            Self::Iommu(v) => v.check_range(addr, len),
        }
    }

    fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16, MemError> {
        match self {
            Self::Direct(m) => m.load_u16(addr, order),
            Self::Iommu(v) => v.load_u16(addr, order),
        }
    }

    fn store_u16(&self, addr: u64, v: u16, order: Ordering) -> Result<(), MemError> {
        match self {
            Self::Direct(m) => m.store_u16(addr, v, order),
            Self::Iommu(view) => view.store_u16(addr, v, order),
        }
    }
}

/// The areas of a ring's three parts (desc, driver, device) in its own addresses.
fn ring_areas(cfg: RingConfig) -> [(u64, u64); 3] {
    let n = u64::from(cfg.size);
    if cfg.packed {
        [(cfg.desc, 16 * n), (cfg.driver, 4), (cfg.device, 4)]
    } else {
        [
            (cfg.desc, 16 * n),
            (cfg.driver, 6 + 2 * n),
            (cfg.device, 6 + 8 * n),
        ]
    }
}

impl Session<'_> {
    /// Whether ring and descriptor addresses are IOVAs: VIRTIO_F_ACCESS_PLATFORM negotiated
    /// (and the fault `iotlb-ignored` not set, which treats them as without it).
    pub(crate) fn iommu(&self) -> bool {
        self.features & VirtioFeatures::ACCESS_PLATFORM.bits() != 0
            && !self.has(Fault::IotlbIgnored)
    }

    /// The device's view of guest memory: `mem` through the IOTLB when [`Session::iommu`].
    /// Fields are passed apart so callers may hold other fields of the session mutably.
    pub(crate) fn dma_view<'m>(
        mem: &'m Memory,
        iotlb: &'m Iotlb,
        iommu: bool,
        guest_addr_outside: Option<Vec<(u64, u64)>>,
    ) -> Dma<'m> {
        if iommu {
            Dma::Iommu(IommuView::new(mem, iotlb, guest_addr_outside))
        } else {
            Dma::Direct(mem)
        }
    }

    /// What the view needs for the fault `iotlb-guest-addr`: the areas of every started ring.
    pub(crate) fn fault_ring_areas(&self) -> Option<Vec<(u64, u64)>> {
        self.has(Fault::IotlbGuestAddr).then(|| {
            self.queues
                .iter()
                .filter_map(|v| v.queue.as_ref())
                .flat_map(|q| ring_areas(q.config()))
                .collect()
        })
    }

    /// IOTLB_MSG (R-IOTLB-02): always answered with a u64, 0 on success. Without
    /// VIRTIO_F_ACCESS_PLATFORM there is no IOTLB to change: refused (R-IOTLB-01 is the
    /// front-end's duty; refusing is the back-end's way to meet a breach of it).
    pub(crate) fn iotlb_msg(&mut self, m: IotlbMsg, need_reply: bool) -> Outcome {
        if self.has(Fault::IotlbAckOnly) && !need_reply {
            // The fault: IOTLB_MSG treated as an ack-only message.
            let _ = self.apply_iotlb(m);
            return Outcome::Silent;
        }
        if self.apply_iotlb(m) {
            Outcome::Reply(Body::U64(0))
        } else {
            Outcome::Refused(Body::U64(1))
        }
    }

    fn apply_iotlb(&mut self, m: IotlbMsg) -> bool {
        if self.features & VirtioFeatures::ACCESS_PLATFORM.bits() == 0 {
            return false;
        }
        match m.kind {
            TYPE_UPDATE => self.iotlb_update(m),
            TYPE_INVALIDATE => {
                if !self.has(Fault::IotlbStale) {
                    self.iotlb.invalidate(m.iova, m.size);
                }
                true
            }
            _ => false,
        }
    }

    /// An update maps `size` bytes; its user range must lie in the memory table (R-IOTLB-05:
    /// "Addresses and size must be within vhost memory regions set via SET_MEM_TABLE").
    fn iotlb_update(&mut self, m: IotlbMsg) -> bool {
        if m.size == 0 || m.perm == 0 {
            return false;
        }
        let inside = self.mem.covers_ua(m.uaddr, m.size);
        if !inside && !self.has(Fault::IotlbAcceptOutside) {
            return false;
        }
        self.iotlb.update(Entry {
            iova: m.iova,
            size: m.size,
            uaddr: m.uaddr,
            perm: m.perm,
        });
        self.iotlb_changed = true;
        true
    }

    /// After an update: the rings a miss held up are tried again (the update is answered
    /// first, so the front-end is not kept waiting for a whole ring's work).
    pub(crate) fn retry_after_iotlb(&mut self) {
        if !std::mem::take(&mut self.iotlb_changed) {
            return;
        }
        for i in 0..self.queues.len() {
            if std::mem::take(&mut self.queues[i].iotlb_wait) {
                self.run_queue(i);
            }
        }
    }

    /// A run of ring `i` stopped at an IOTLB miss: the queue is rebuilt where it stood (the
    /// chain was not taken), the miss reported once (R-IOTLB-03), and the ring waits for an
    /// update or a kick. Whatever the run published before the miss is signalled.
    pub(crate) fn on_iotlb_miss(&mut self, i: usize, (iova, perm): (u64, u8), signal: bool) {
        let v = &mut self.queues[i];
        if let Some(q) = v.queue.as_mut() {
            *q = Queue::new(q.config(), q.base());
        }
        v.iotlb_wait = true;
        if signal {
            self.signal_call(i);
        }
        if self.has(Fault::IotlbNoMiss) || !self.iotlb.first_report(iova) {
            return;
        }
        let Some(ch) = self.channel.as_ref() else {
            return;
        };
        let miss = IotlbMsg {
            iova,
            size: 0,
            uaddr: 0,
            perm,
            kind: TYPE_MISS,
            padding: [0; 6],
        };
        // No NEED_REPLY: the answer that matters is the update on the main socket.
        let _ = ch.request(BackendReq::IotlbMsg, &Body::Iotlb(miss), &[], false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERM_RW: u8 = PERM_RO | PERM_WO;

    fn entry(iova: u64, size: u64, uaddr: u64) -> Entry {
        Entry {
            iova,
            size,
            uaddr,
            perm: PERM_RW,
        }
    }

    #[test]
    fn translation_goes_through_the_entry_that_maps_the_address() {
        let mut t = Iotlb::default();
        t.update(entry(0x1000, 0x2000, 0x7f00_0000_0000));
        assert_eq!(
            t.translate(0x1800, PERM_RO),
            Some((0x7f00_0000_0800, 0x1800))
        );
        assert_eq!(t.translate(0x3000, PERM_RO), None, "the end is exclusive");
        assert_eq!(t.translate(0xfff, PERM_WO), None);
        t.update(Entry {
            perm: PERM_RO,
            ..entry(0x8000, 0x1000, 0x5000)
        });
        assert_eq!(
            t.translate(0x8000, PERM_WO),
            None,
            "a read-only entry denies writes"
        );
        assert!(t.translate(0x8000, PERM_RO).is_some());
    }

    #[test]
    fn invalidation_cuts_the_entries_it_overlaps() {
        let mut t = Iotlb::default();
        t.update(entry(0x1000, 0x3000, 0x10_0000));
        t.invalidate(0x2000, 0x1000);
        assert!(t.translate(0x1fff, PERM_RO).is_some());
        assert_eq!(t.translate(0x2000, PERM_RO), None);
        assert_eq!(t.translate(0x2fff, PERM_RO), None);
        assert_eq!(t.translate(0x3000, PERM_RO), Some((0x10_2000, 0x1000)));
        t.invalidate(0, u64::MAX);
        assert_eq!(t.translate(0x1000, PERM_RO), None);
    }

    #[test]
    fn a_miss_is_reported_once_until_the_entries_change() {
        let mut t = Iotlb::default();
        assert!(t.first_report(0x4000));
        assert!(!t.first_report(0x4000));
        t.update(entry(0, 0x1000, 0));
        assert!(t.first_report(0x4000));
    }
}
