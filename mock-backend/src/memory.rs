//! The guest memory the front-end shares: its regions as rust-vmm's `GuestMemoryMmap` (each
//! region fd mapped at its `mmap_offset`, at its guest address), with thin layers on top that
//! vm-memory does not have: the user addresses of the regions (vring addresses and IOTLB
//! translations are front-end user addresses; spec "Memory access", checklist 4.5; R-MEM-01,
//! R-MEM-03) and the dirty log of SET_LOG_BASE: with LOG_ALL every guest write is logged
//! (checklist 4.17, R-LOG-02..07).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use vhu_mock_device::GuestMemory;
use vhu_mock_device::memory::{MemError, end_of};
use vhu_mock_device::vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
    VolatileMemory,
};
use vhu_protocol::wire::payload::MemRegion;

/// A shared read-write mapping of `len` bytes of an fd from offset 0 (a vm-memory
/// `MmapRegion`). Dropping it unmaps it and closes the fd.
#[derive(Debug)]
pub struct Mapping {
    map: MmapRegion,
}

impl Mapping {
    /// Maps the first `len` bytes of `fd`.
    pub fn new(fd: OwnedFd, len: u64) -> Result<Self, String> {
        let len = usize::try_from(len).map_err(|_| "mapping too large")?;
        if len == 0 {
            return Err("empty mapping".into());
        }
        let map = MmapRegion::from_file(FileOffset::new(File::from(fd), 0), len)
            .map_err(|e| format!("mmap failed: {e}"))?;
        Ok(Self { map })
    }

    /// The offset of `len` bytes at `offset`, if they lie inside the mapping.
    fn offset(&self, offset: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(offset).ok()?;
        (off.checked_add(len)? <= self.map.len()).then_some(off)
    }

    /// Copies `buf.len()` bytes out from `offset`; false if the range leaves the mapping.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        // Scoped here: vm-memory's `Bytes` would clash with the device view's read and write.
        use vhu_mock_device::vm_memory::Bytes as _;
        self.offset(offset, buf.len())
            .is_some_and(|off| self.map.as_volatile_slice().read_slice(buf, off).is_ok())
    }

    /// Copies `data` in at `offset`; false (and nothing written) if the range leaves the
    /// mapping.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> bool {
        use vhu_mock_device::vm_memory::Bytes as _;
        self.offset(offset, data.len())
            .is_some_and(|off| self.map.as_volatile_slice().write_slice(data, off).is_ok())
    }

    /// ORs `bits` into the byte at `offset` atomically; false if it leaves the mapping.
    fn fetch_or(&self, offset: u64, bits: u8) -> bool {
        let Some(off) = self.offset(offset, 1) else {
            return false;
        };
        match self.map.get_atomic_ref::<AtomicU8>(off) {
            Ok(byte) => {
                byte.fetch_or(bits, Ordering::SeqCst);
                true
            }
            Err(_) => false,
        }
    }
}

/// One mapped region. Dropping it (and the memory table built over it) unmaps it and closes
/// its fd (R-MEM-11).
#[derive(Debug)]
pub struct Region {
    /// The region as the front-end described it.
    pub desc: MemRegion,
    map: Arc<GuestRegionMmap>,
}

impl Region {
    /// Maps `desc.size` bytes of `fd` at `desc.mmap_offset`, at guest address `desc.guest_addr`.
    pub fn map(desc: MemRegion, fd: OwnedFd) -> Result<Self, String> {
        desc.validate().map_err(|v| v.to_string())?;
        let size = usize::try_from(desc.size).map_err(|_| "region too large")?;
        let file = FileOffset::new(File::from(fd), desc.mmap_offset);
        let mmap = MmapRegion::from_file(file, size).map_err(|e| format!("mmap failed: {e}"))?;
        let map = GuestRegionMmap::new(mmap, GuestAddress(desc.guest_addr))
            .ok_or("region guest_addr + size overflows")?;
        Ok(Self {
            desc,
            map: Arc::new(map),
        })
    }

    /// The offset of `[ua, ua + len)` in this region, if it lies inside its user range.
    fn ua_offset(&self, ua: u64, len: u64) -> Option<u64> {
        let off = ua.checked_sub(self.desc.user_addr)?;
        (off.checked_add(len)? <= self.desc.size).then_some(off)
    }

    /// Whether this region overlaps `r` in guest or user address space (R-MEM-10).
    pub fn overlaps(&self, r: &MemRegion) -> bool {
        let d = &self.desc;
        let gpa = r.guest_addr < d.guest_addr.saturating_add(d.size)
            && d.guest_addr < r.guest_addr.saturating_add(r.size);
        let ua = r.user_addr < d.user_addr.saturating_add(d.size)
            && d.user_addr < r.user_addr.saturating_add(r.size);
        gpa || ua
    }
}

/// The dirty log of SET_LOG_BASE (checklist 4.17): bit `p` of byte `p / 8` is page `p`
/// (GPA / 4096) written.
#[derive(Debug)]
pub struct DirtyLog {
    map: Mapping,
    offset: u64,
    size: u64,
}

/// Page size of the dirty log.
const LOG_PAGE: u64 = 4096;

impl DirtyLog {
    /// Maps `size` bytes of `fd` from `offset`.
    pub fn new(fd: OwnedFd, size: u64, offset: u64) -> Result<Self, String> {
        let len = offset
            .checked_add(size)
            .ok_or("log offset + size overflows")?;
        Ok(Self {
            map: Mapping::new(fd, len)?,
            offset,
            size,
        })
    }

    /// Marks the pages of `[gpa, gpa + len)` with atomic ORs (R-LOG-03). Pages past the log's
    /// end are not marked: a log too small never makes us write outside it (R-LOG-06).
    fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        for page in gpa / LOG_PAGE..=last.min(self.size.saturating_mul(8).saturating_sub(1)) {
            if !self.map.fetch_or(self.offset + page / 8, 1 << (page % 8)) {
                return;
            }
        }
    }
}

/// The memory table: the regions as the front-end described them, the same regions as one
/// vm-memory `GuestMemoryMmap` (rebuilt whenever the regions change), and the dirty log.
#[derive(Debug, Default)]
pub struct Memory {
    regions: Vec<Region>,
    guest: GuestMemoryMmap,
    /// The dirty log, when one is set.
    pub log: Option<DirtyLog>,
    /// VHOST_F_LOG_ALL negotiated: every write is logged (R-LOG-04).
    pub logging: bool,
}

impl Memory {
    /// The regions, in the order they were added.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The same log settings over a new set of regions (SET_MEM_TABLE replaces the regions).
    pub fn replace_regions(&mut self, regions: Vec<Region>) {
        self.regions = regions;
        self.rebuild();
    }

    /// Adds a region (ADD_MEM_REG); the caller checked it overlaps none (R-MEM-10).
    pub fn add_region(&mut self, region: Region) {
        self.regions.push(region);
        self.rebuild();
    }

    /// Removes the region at `index` (REM_MEM_REG); it is unmapped once no access holds it.
    pub fn remove_region(&mut self, index: usize) {
        self.regions.remove(index);
        self.rebuild();
    }

    /// Rebuilds the vm-memory table from the regions. Their guest ranges never overlap (the
    /// session refuses overlapping regions, R-MEM-04, R-MEM-10), so vm-memory accepts them.
    fn rebuild(&mut self) {
        let mut maps: Vec<_> = self.regions.iter().map(|r| Arc::clone(&r.map)).collect();
        maps.sort_by_key(|m| m.start_addr());
        self.guest = if maps.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(maps).expect("non-overlapping guest ranges")
        };
    }

    fn logged(&self, gpa: u64, len: u64) {
        if let Some(log) = self.log.as_ref().filter(|_| self.logging) {
            log.mark(gpa, len);
        }
    }

    /// Translates a front-end user address to a guest address (ring addresses, R-VRING-03).
    pub fn ua_to_gpa(&self, ua: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| ua >= r.desc.user_addr && ua - r.desc.user_addr < r.desc.size)
            .map(|r| ua - r.desc.user_addr + r.desc.guest_addr)
    }

    /// The guest address of `[ua, ua + len)`, which must lie inside one region's user range.
    fn ua_range(&self, ua: u64, len: u64) -> Result<u64, MemError> {
        self.regions
            .iter()
            .find_map(|r| r.ua_offset(ua, len).map(|off| r.desc.guest_addr + off))
            .ok_or(MemError::Unmapped { gpa: ua, len })
    }

    /// Whether every byte of `[ua, ua + len)` lies in some region's user range (the ranges of
    /// adjacent regions may together cover it): what an IOTLB update may map (R-IOTLB-05).
    pub fn covers_ua(&self, ua: u64, len: u64) -> bool {
        let Some(end) = ua.checked_add(len) else {
            return false;
        };
        let mut at = ua;
        while at < end {
            let Some(r) = self
                .regions
                .iter()
                .find(|r| at >= r.desc.user_addr && at - r.desc.user_addr < r.desc.size)
            else {
                return false;
            };
            at = r.desc.user_addr.saturating_add(r.desc.size);
        }
        true
    }

    /// Reads at a front-end user address (the IOTLB's translations, R-IOTLB-03): the whole range
    /// inside one region or an error naming the user address.
    pub fn read_ua(&self, ua: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        let gpa = self.ua_range(ua, len)?;
        self.guest
            .read(gpa, buf)
            .map_err(|_| MemError::Unmapped { gpa: ua, len })
    }

    /// Writes at a front-end user address, logging the pages at the region's guest address
    /// when LOG_ALL is on (the dirty log is kept in guest pages, R-LOG-04).
    pub fn write_ua(&self, ua: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        let gpa = self.ua_range(ua, len)?;
        self.guest
            .write(gpa, data)
            .map_err(|_| MemError::Unmapped { gpa: ua, len })?;
        self.logged(gpa, len);
        Ok(())
    }

    /// Whether `[ua, ua + len)` lies inside one region's user range.
    pub fn check_ua(&self, ua: u64, len: u64) -> Result<(), MemError> {
        end_of(ua, len)?;
        self.ua_range(ua, len).map(drop)
    }
}

/// The device's view of guest memory: the region guest addresses through vm-memory. Every
/// write marks its pages in the dirty log when LOG_ALL is negotiated (R-LOG-04), used-ring
/// writes included, each right after it is made (so a used element is logged before the used
/// index that publishes it is stored).
impl GuestMemory for Memory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.guest.read(gpa, buf)
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.guest.write(gpa, data)?;
        self.logged(gpa, data.len() as u64);
        Ok(())
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        self.guest.check_range(gpa, len)
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemError> {
        self.guest.load_u16(gpa, order)
    }

    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemError> {
        self.guest.store_u16(gpa, v, order)?;
        self.logged(gpa, 2);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> OwnedFd {
        let m = memfd::MemfdOptions::default().create("t").unwrap();
        m.as_file().set_len(len).unwrap();
        OwnedFd::from(m.into_file())
    }

    fn region(gpa: u64, size: u64, ua: u64, off: u64) -> Region {
        let desc = MemRegion {
            guest_addr: gpa,
            size,
            user_addr: ua,
            mmap_offset: off,
        };
        Region::map(desc, memfd(size + off)).unwrap()
    }

    fn memory(regions: Vec<Region>) -> Memory {
        let mut mem = Memory::default();
        mem.replace_regions(regions);
        mem
    }

    #[test]
    fn accesses_past_a_region_end_are_refused() {
        let mem = memory(vec![region(0x10000, 0x1000, 0x7000_0000, 0x1000)]);
        let mut b = [0u8; 16];
        assert!(mem.read(0x10000 + 0x1000 - 8, &mut b).is_err());
        assert!(mem.check_range(0x10000, 0x1001).is_err());
        assert!(mem.check_range(0x10000, 0x1000).is_ok());
        assert!(mem.write(0xfff8, &[1; 16]).is_err());
        assert!(mem.write(0x10ff0, &[7; 16]).is_ok());
        mem.read(0x10ff0, &mut b).unwrap();
        assert_eq!(b, [7; 16]);
        mem.write(0x10002, &[1, 2]).unwrap();
        let mut two = [0u8; 2];
        mem.read(0x10002, &mut two).unwrap();
        assert_eq!(two, [1, 2], "an aligned 2-byte access keeps byte order");
    }

    #[test]
    fn a_region_is_mapped_at_its_mmap_offset() {
        let fd = memfd(0x3000);
        let file = File::from(fd.try_clone().unwrap());
        let desc = MemRegion {
            guest_addr: 0,
            size: 0x1000,
            user_addr: 0x7000_0000,
            mmap_offset: 0x2000,
        };
        let mem = memory(vec![Region::map(desc, fd).unwrap()]);
        mem.write(0x10, &[9; 4]).unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, 0x2010).unwrap();
        assert_eq!(b, [9; 4]);
    }

    #[test]
    fn user_addresses_translate_through_the_region_table() {
        let mem = memory(vec![region(0x10000, 0x1000, 0x7000_0000, 0)]);
        assert_eq!(mem.ua_to_gpa(0x7000_0010), Some(0x10010));
        assert_eq!(mem.ua_to_gpa(0x7000_1000), None);
        mem.write_ua(0x7000_0020, &[5; 2]).unwrap();
        assert_eq!(mem.load_u16(0x10020, Ordering::Acquire), Ok(0x0505));
        assert!(mem.check_ua(0x7000_0ff0, 0x11).is_err());
    }

    #[test]
    fn writes_mark_their_pages_in_the_log_and_never_past_its_end() {
        let mut mem = memory(vec![region(0, 0x10_0000, 0x7000_0000, 0)]);
        mem.log = Some(DirtyLog::new(memfd(8), 2, 6).unwrap());
        mem.logging = true;
        mem.write(0x3ffe, &[1; 4]).unwrap(); // pages 3 and 4
        mem.store_u16(0xf000, 1, Ordering::Release).unwrap(); // page 15
        mem.write(0x20000, &[1]).unwrap(); // page 32: past a 2-byte log
        let log = mem.log.as_ref().unwrap();
        let mut b = [0u8; 8];
        assert!(log.map.read_at(0, &mut b));
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0b1_1000, 0b1000_0000]);
        mem.logging = false;
        mem.write(0, &[1]).unwrap();
        assert!(log.map.read_at(0, &mut b));
        assert_eq!(b[6] & 1, 0, "not logged without LOG_ALL");
    }
}
