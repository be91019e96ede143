//! The guest memory the front-end shares: each region's fd mapped here, translation of guest and
//! user addresses, and bounds-checked copies (spec "Memory access"; R-MEM-01, R-MEM-03).

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use vhu_protocol::wire::payload::MemRegion;

/// One mapped region. Dropping it unmaps it and closes its fd.
#[derive(Debug)]
pub struct Region {
    /// The region as the front-end described it.
    pub desc: MemRegion,
    map: NonNull<u8>,
    map_len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned by this struct and accessed only through bounds-checked copies.
unsafe impl Send for Region {}

impl Region {
    /// Maps `desc.size` bytes of `fd` at `desc.mmap_offset`.
    pub fn map(desc: MemRegion, fd: OwnedFd) -> Result<Self, String> {
        desc.validate().map_err(|v| v.to_string())?;
        let len = desc
            .mmap_offset
            .checked_add(desc.size)
            .ok_or("region offset + size overflows")? as usize;
        let nz = NonZeroUsize::new(len).ok_or("empty region")?;
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
            desc,
            map: map.cast(),
            map_len: len,
            _fd: fd,
        })
    }

    fn ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        (end <= self.desc.size).then(|| {
            // SAFETY: mmap_offset + end <= map_len by construction.
            unsafe {
                self.map
                    .as_ptr()
                    .add((self.desc.mmap_offset + offset) as usize)
            }
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map` with this length and is no longer used.
        let _ = unsafe { munmap(self.map.cast(), self.map_len) };
    }
}

/// The memory table.
#[derive(Debug, Default)]
pub struct Memory {
    /// The regions.
    pub regions: Vec<Region>,
}

impl Memory {
    fn find_gpa(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        self.regions
            .iter()
            .find_map(|r| r.ptr(gpa.checked_sub(r.desc.guest_addr)?, len))
    }

    /// Translates a front-end user address to a guest address (ring addresses, R-VRING-03).
    pub fn ua_to_gpa(&self, ua: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| ua >= r.desc.user_addr && ua - r.desc.user_addr < r.desc.size)
            .map(|r| ua - r.desc.user_addr + r.desc.guest_addr)
    }

    /// Copies guest memory out; the whole range must be mapped.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), String> {
        let p = self
            .find_gpa(gpa, buf.len() as u64)
            .ok_or_else(|| format!("guest range {gpa:#x}+{:#x} is not mapped", buf.len()))?;
        // SAFETY: `p` addresses buf.len() mapped bytes.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies into guest memory; the whole range must be mapped.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), String> {
        let p = self
            .find_gpa(gpa, data.len() as u64)
            .ok_or_else(|| format!("guest range {gpa:#x}+{:#x} is not mapped", data.len()))?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// Reads a ring index with one volatile access.
    pub fn read_u16(&self, gpa: u64) -> Result<u16, String> {
        let p = self
            .find_gpa(gpa, 2)
            .filter(|p| *p as usize % 2 == 0)
            .ok_or_else(|| format!("ring index at {gpa:#x} is not mapped"))?;
        // SAFETY: aligned and mapped; volatile because the driver writes it concurrently.
        Ok(u16::from_le(unsafe {
            std::ptr::read_volatile(p.cast::<u16>())
        }))
    }

    /// Writes a ring index with one volatile access.
    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<(), String> {
        let p = self
            .find_gpa(gpa, 2)
            .filter(|p| *p as usize % 2 == 0)
            .ok_or_else(|| format!("ring index at {gpa:#x} is not mapped"))?;
        // SAFETY: as in `read_u16`.
        unsafe { std::ptr::write_volatile(p.cast::<u16>(), v.to_le()) };
        Ok(())
    }
}
