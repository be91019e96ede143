//! The guest memory the front-end shares: each region's fd mapped here, translation of guest and
//! user addresses, and bounds-checked volatile copies (spec "Memory access", checklist 4.5;
//! R-MEM-01, R-MEM-03). Also the dirty log of SET_LOG_BASE: with LOG_ALL every guest write is
//! logged (checklist 4.17, R-LOG-02..07).

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use vhu_mock_device::GuestMemory;
use vhu_mock_device::memory::{MemError, end_of};
use vhu_protocol::wire::payload::MemRegion;

/// A shared read-write mapping of `len` bytes of an fd from offset 0. Dropping it unmaps it and
/// closes the fd.
#[derive(Debug)]
pub struct Mapping {
    map: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned by this struct and accessed only through bounds-checked copies.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd`.
    pub fn new(fd: OwnedFd, len: u64) -> Result<Self, String> {
        let len = usize::try_from(len).map_err(|_| "mapping too large")?;
        let nz = NonZeroUsize::new(len).ok_or("empty mapping")?;
        // SAFETY: a new shared mapping of an fd we own; the kernel picks the address. Mapping from
        // 0 keeps the offset page-alignment rule out of the way; bounds are checked on access.
        let map = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| format!("mmap failed: {e}"))?;
        Ok(Self {
            map: map.cast(),
            len,
            _fd: fd,
        })
    }

    /// Copies `buf.len()` bytes out from `offset`; false if the range leaves the mapping.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(p) = self.ptr(offset, buf.len() as u64) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `p` addresses buf.len() mapped bytes; volatile because the front-end may
            // access the shared area concurrently.
            *b = unsafe { std::ptr::read_volatile(p.add(i)) };
        }
        true
    }

    /// Copies `data` in at `offset`; false if the range leaves the mapping.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> bool {
        let Some(p) = self.ptr(offset, data.len() as u64) else {
            return false;
        };
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read_at`.
            unsafe { std::ptr::write_volatile(p.add(i), *b) };
        }
        true
    }

    /// A pointer to `len` bytes at `offset`, if they lie inside the mapping.
    fn ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        (end <= self.len as u64).then(|| {
            // SAFETY: offset + len <= the mapping's length, checked just above.
            unsafe { self.map.as_ptr().add(offset as usize) }
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is no longer used.
        let _ = unsafe { munmap(self.map.cast(), self.len) };
    }
}

/// One mapped region. Dropping it unmaps it and closes its fd (R-MEM-11).
#[derive(Debug)]
pub struct Region {
    /// The region as the front-end described it.
    pub desc: MemRegion,
    map: Mapping,
}

impl Region {
    /// Maps `desc.size` bytes of `fd` at `desc.mmap_offset`.
    pub fn map(desc: MemRegion, fd: OwnedFd) -> Result<Self, String> {
        desc.validate().map_err(|v| v.to_string())?;
        let len = desc
            .mmap_offset
            .checked_add(desc.size)
            .ok_or("region offset + size overflows")?;
        Ok(Self {
            desc,
            map: Mapping::new(fd, len)?,
        })
    }

    fn ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.desc.size {
            return None;
        }
        self.map.ptr(self.desc.mmap_offset + offset, len)
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
            let Some(p) = self.map.ptr(self.offset + page / 8, 1) else {
                return;
            };
            // SAFETY: `p` is one mapped byte; AtomicU8 has the alignment and size of u8, and
            // every access to the shared log is atomic on our side.
            let byte = unsafe { std::sync::atomic::AtomicU8::from_ptr(p) };
            byte.fetch_or(1 << (page % 8), std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The memory table.
#[derive(Debug, Default)]
pub struct Memory {
    /// The regions.
    pub regions: Vec<Region>,
    /// The dirty log, when one is set.
    pub log: Option<DirtyLog>,
    /// VHOST_F_LOG_ALL negotiated: every write is logged (R-LOG-04).
    pub logging: bool,
}

impl Memory {
    /// The same log settings over a new set of regions (SET_MEM_TABLE replaces the regions).
    pub fn replace_regions(&mut self, regions: Vec<Region>) {
        self.regions = regions;
    }

    fn logged(&self, gpa: u64, len: u64) {
        if let Some(log) = self.log.as_ref().filter(|_| self.logging) {
            log.mark(gpa, len);
        }
    }

    fn find_gpa(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        self.regions
            .iter()
            .find_map(|r| r.ptr(gpa.checked_sub(r.desc.guest_addr)?, len))
    }

    /// A pointer to the whole range, or why not.
    fn range(&self, gpa: u64, len: usize) -> Result<*mut u8, MemError> {
        let len = len as u64;
        end_of(gpa, len)?;
        self.find_gpa(gpa, len)
            .ok_or(MemError::Unmapped { gpa, len })
    }

    /// Translates a front-end user address to a guest address (ring addresses, R-VRING-03).
    pub fn ua_to_gpa(&self, ua: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| ua >= r.desc.user_addr && ua - r.desc.user_addr < r.desc.size)
            .map(|r| ua - r.desc.user_addr + r.desc.guest_addr)
    }

    /// The region holding `[ua, ua + len)` by its user address, and the offset in it.
    fn find_ua(&self, ua: u64, len: u64) -> Option<(&Region, u64)> {
        self.regions.iter().find_map(|r| {
            let off = ua.checked_sub(r.desc.user_addr)?;
            r.ptr(off, len).map(|_| (r, off))
        })
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
        let (r, off) = self
            .find_ua(ua, len)
            .ok_or(MemError::Unmapped { gpa: ua, len })?;
        let p = r.ptr(off, len).ok_or(MemError::Unmapped { gpa: ua, len })?;
        copy_out(p, buf);
        Ok(())
    }

    /// Writes at a front-end user address, logging the pages at the region's guest address
    /// when LOG_ALL is on (the dirty log is kept in guest pages, R-LOG-04).
    pub fn write_ua(&self, ua: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        let (r, off) = self
            .find_ua(ua, len)
            .ok_or(MemError::Unmapped { gpa: ua, len })?;
        let p = r.ptr(off, len).ok_or(MemError::Unmapped { gpa: ua, len })?;
        copy_in(p, data);
        self.logged(r.desc.guest_addr.wrapping_add(off), len);
        Ok(())
    }

    /// Whether `[ua, ua + len)` lies inside one region's user range.
    pub fn check_ua(&self, ua: u64, len: u64) -> Result<(), MemError> {
        end_of(ua, len)?;
        self.find_ua(ua, len)
            .map(drop)
            .ok_or(MemError::Unmapped { gpa: ua, len })
    }
}

/// Copies `buf.len()` mapped bytes at `p` out, with volatile reads; an aligned 2-byte access is
/// one access (ring indices and packed flags are read that way).
fn copy_out(p: *mut u8, buf: &mut [u8]) {
    if let ([lo, hi], true) = (&mut *buf, p as usize % 2 == 0) {
        // SAFETY: the caller found `p` to address 2 mapped bytes; aligned for u16 (checked).
        let v = unsafe { std::ptr::read_volatile(p.cast::<u16>()) };
        [*lo, *hi] = v.to_ne_bytes();
        return;
    }
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: the caller found `p` to address buf.len() mapped bytes.
        *b = unsafe { std::ptr::read_volatile(p.add(i)) };
    }
}

/// Copies `data` into the mapped bytes at `p`, with volatile writes (an aligned 2-byte write
/// is one access).
fn copy_in(p: *mut u8, data: &[u8]) {
    if let (&[lo, hi], true) = (data, p as usize % 2 == 0) {
        // SAFETY: the caller found `p` to address 2 mapped bytes; aligned for u16 (checked).
        unsafe { std::ptr::write_volatile(p.cast::<u16>(), u16::from_ne_bytes([lo, hi])) };
        return;
    }
    for (i, b) in data.iter().enumerate() {
        // SAFETY: the caller found `p` to address data.len() mapped bytes.
        unsafe { std::ptr::write_volatile(p.add(i), *b) };
    }
}

/// The device's view of guest memory. Copies are volatile because the driver (another process)
/// accesses the same pages concurrently; an aligned 2-byte access is one access, as the ring
/// code reads avail idx and packed flags that way. Every write marks its pages in the dirty log
/// when LOG_ALL is negotiated (R-LOG-04), used-ring writes included.
impl GuestMemory for Memory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let p = self.range(gpa, buf.len())?;
        copy_out(p, buf);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let p = self.range(gpa, data.len())?;
        copy_in(p, data);
        self.logged(gpa, data.len() as u64);
        Ok(())
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        end_of(gpa, len)?;
        self.find_gpa(gpa, len)
            .map(|_| ())
            .ok_or(MemError::Unmapped { gpa, len })
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

    #[test]
    fn accesses_past_a_region_end_are_refused() {
        let mem = Memory {
            regions: vec![region(0x10000, 0x1000, 0x7000_0000, 0x1000)],
            ..Default::default()
        };
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
    fn user_addresses_translate_through_the_region_table() {
        let mem = Memory {
            regions: vec![region(0x10000, 0x1000, 0x7000_0000, 0)],
            ..Default::default()
        };
        assert_eq!(mem.ua_to_gpa(0x7000_0010), Some(0x10010));
        assert_eq!(mem.ua_to_gpa(0x7000_1000), None);
    }

    #[test]
    fn writes_mark_their_pages_in_the_log_and_never_past_its_end() {
        let mut mem = Memory {
            regions: vec![region(0, 0x10_0000, 0x7000_0000, 0)],
            log: Some(DirtyLog::new(memfd(8), 2, 6).unwrap()),
            logging: true,
        };
        mem.write(0x3ffe, &[1; 4]).unwrap(); // pages 3 and 4
        mem.write(0xf000, &[1, 0]).unwrap(); // page 15
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
