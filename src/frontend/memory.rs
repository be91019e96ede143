//! The judging back-end's view of guest memory: the regions a front-end handed over, mapped
//! from their fds, translated by guest or user address (spec "Memory regions description").

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

use vhu_protocol::wire::payload::MemRegion;

use super::FrontendError;

/// One mapped region: its description and where it sits in this process.
#[derive(Debug)]
struct Mapped {
    region: MemRegion,
    /// The start of the whole mapping (from offset 0 of the fd).
    base: NonNull<u8>,
    /// Bytes mapped: `mmap_offset + size`.
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing in it is tied to the
// thread that made it.
unsafe impl Send for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned and nothing borrows the mapping
        // past its owner.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The front-end's memory table as mapped here. Accesses are bounds-checked copies, so a lying
/// front-end (a descriptor past its region) gets an error, not a fault in the harness.
#[derive(Debug, Default)]
pub struct GuestMap {
    regions: Vec<Mapped>,
}

impl GuestMap {
    /// Maps `region` from `fd`. A region that cannot be mapped (a bad fd, a size the kernel
    /// refuses) is an error the caller answers with a refusal.
    pub fn add(&mut self, region: MemRegion, fd: &OwnedFd) -> Result<(), FrontendError> {
        let len = region
            .mmap_offset
            .checked_add(region.size)
            .filter(|&l| l > 0 && l <= isize::MAX as u64)
            .ok_or(FrontendError::Map {
                region,
                why: "size or offset out of range".into(),
            })? as usize;
        // SAFETY: a fresh shared mapping of an fd the front-end passed; the kernel checks the
        // fd and the range, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FrontendError::Map {
                region,
                why: std::io::Error::last_os_error().to_string(),
            });
        }
        let base = NonNull::new(ptr.cast()).ok_or(FrontendError::Map {
            region,
            why: "mmap returned null".into(),
        })?;
        self.regions.push(Mapped { region, base, len });
        Ok(())
    }

    /// Drops the region that matches `region` by guest address, user address and size (spec:
    /// "identified by its guest address, user address and size").
    pub fn remove(&mut self, region: &MemRegion) -> bool {
        let before = self.regions.len();
        self.regions.retain(|m| {
            !(m.region.guest_addr == region.guest_addr
                && m.region.user_addr == region.user_addr
                && m.region.size == region.size)
        });
        self.regions.len() != before
    }

    /// Unmaps every region (a new SET_MEM_TABLE replaces the whole table).
    pub fn clear(&mut self) {
        self.regions.clear();
    }

    fn locate(&self, addr: u64, len: u64, by_user: bool) -> Option<*mut u8> {
        self.regions.iter().find_map(|m| {
            let start = if by_user {
                m.region.user_addr
            } else {
                m.region.guest_addr
            };
            let off = addr.checked_sub(start)?;
            if off.checked_add(len)? > m.region.size {
                return None;
            }
            let at = m.region.mmap_offset + off;
            // SAFETY: `at + len <= mmap_offset + size == self.len`: inside the mapping.
            Some(unsafe { m.base.as_ptr().add(at as usize) })
        })
    }

    /// Whether `[addr, addr + len)` lies inside one region by user address.
    pub fn covers_user(&self, addr: u64, len: u64) -> bool {
        self.locate(addr, len, true).is_some()
    }

    /// The guest address of a user address, when a region covers it.
    pub fn user_to_guest(&self, ua: u64) -> Option<u64> {
        self.regions.iter().find_map(|m| {
            let off = ua.checked_sub(m.region.user_addr)?;
            (off < m.region.size).then(|| m.region.guest_addr + off)
        })
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let p = self.locate(gpa, buf.len() as u64, false)?;
        // SAFETY: `locate` checked the range; the front-end may write the memory at the same
        // time, which a byte copy tolerates (the bytes may be stale, never out of bounds).
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        let p = self.locate(gpa, data.len() as u64, false)?;
        // SAFETY: as in `read`; the region is mapped writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Some(())
    }

    /// Reads a little-endian u16 at `gpa` (ring indices are read whole, never torn).
    pub fn read_u16(&self, gpa: u64) -> Option<u16> {
        let p = self.locate(gpa, 2, false)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: `locate` checked the two bytes; unaligned-safe read.
        Some(u16::from_le(unsafe { p.cast::<u16>().read_unaligned() }))
    }

    /// Writes a little-endian u16 at `gpa`, after every earlier write (the used index is
    /// published after the used element: virtio 2.7.8).
    pub fn write_u16(&self, gpa: u64, v: u16) -> Option<()> {
        let p = self.locate(gpa, 2, false)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: `locate` checked the two bytes.
        unsafe { p.cast::<u16>().write_unaligned(v.to_le()) };
        Some(())
    }
}
