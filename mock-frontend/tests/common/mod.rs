//! A back-end's view of guest memory for the in-test devices: each region's memfd mapped again,
//! separately from the front-end's mapping, addressed by user or guest address.

#![allow(dead_code)]

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use vhu_protocol::wire::payload::MemRegion;

/// One region as the back-end sees it: its table entry and where it mapped the fd.
pub struct Mapped {
    region: MemRegion,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory owned by this struct, only reached through volatile
// copies inside its bounds; which thread does them does not matter.
unsafe impl Send for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map_region` with this length and is not used after.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

pub fn map_region(region: MemRegion, fd: impl AsFd) -> Mapped {
    let len = (region.mmap_offset + region.size) as usize;
    // SAFETY: a fresh shared mapping of the fd the front-end sent, at an address the kernel picks.
    let base = unsafe {
        mmap(
            None,
            NonZeroUsize::new(len).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .expect("the back-end maps the region's memfd");
    Mapped {
        region,
        base: base.cast(),
        len,
    }
}

/// The back-end's view of guest memory, addressed by user or guest address.
pub struct BackendMemory(pub Vec<Mapped>);

impl BackendMemory {
    pub fn ptr(&self, addr: u64, len: u64, by_user: bool) -> *mut u8 {
        let m = self
            .0
            .iter()
            .find(|m| {
                let start = if by_user {
                    m.region.user_addr
                } else {
                    m.region.guest_addr
                };
                addr >= start && addr + len <= start + m.region.size
            })
            .unwrap_or_else(|| panic!("address {addr:#x} (user: {by_user}) is in no region"));
        let start = if by_user {
            m.region.user_addr
        } else {
            m.region.guest_addr
        };
        let off = m.region.mmap_offset + addr - start;
        // SAFETY: off + len lies inside the mapping (checked by the find above).
        unsafe { m.base.as_ptr().add(off as usize) }
    }

    pub fn read(&self, addr: u64, buf: &mut [u8], by_user: bool) {
        let p = self.ptr(addr, buf.len() as u64, by_user);
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the mapping; volatile because the other process writes it.
            *b = unsafe { p.add(i).read_volatile() };
        }
    }

    pub fn write(&self, addr: u64, data: &[u8], by_user: bool) {
        let p = self.ptr(addr, data.len() as u64, by_user);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { p.add(i).write_volatile(*b) };
        }
    }

    pub fn u16_at(&self, ua: u64) -> u16 {
        let mut b = [0u8; 2];
        self.read(ua, &mut b, true);
        u16::from_le_bytes(b)
    }
}
