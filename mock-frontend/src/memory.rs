//! Guest memory: one memfd per region, mapped shared in this process and handed to the back-end
//! (spec "Memory access"). The user address the front-end announces is the scenario's choice and
//! never equals the guest address (R-VRING-03): it is a label the back-end must translate, not
//! where this process maps the memfd.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use thiserror::Error;
use vhu_protocol::wire::payload::MemRegion;

/// Errors of guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// A memfd could not be created or sized.
    #[error("cannot create a memfd for guest memory")]
    Create(#[source] std::io::Error),
    /// The memfd could not be mapped.
    #[error("cannot map guest memory")]
    Map(#[source] nix::Error),
    /// No space left in guest memory for an allocation.
    #[error("guest memory has no room for {len} more bytes")]
    OutOfSpace {
        /// Bytes asked for.
        len: u64,
    },
    /// A region whose ranges wrap around 2^64 or do not fit this process.
    #[error("region {spec:?} wraps around or does not fit in memory")]
    BadRegion {
        /// The region.
        spec: RegionSpec,
    },
    /// IOVA bases that do not name one base per region.
    #[error("{bases} IOVA bases for {regions} regions")]
    IovaBases {
        /// Bases given.
        bases: usize,
        /// Regions of the memory.
        regions: usize,
    },
    /// A range is not inside one region.
    #[error("guest range {gpa:#x}+{len:#x} is not inside one region")]
    Unmapped {
        /// Guest address.
        gpa: u64,
        /// Bytes of the range.
        len: u64,
    },
}

/// Where a region lives: guest address, size, the user address announced, the offset in its fd.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionSpec {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
    /// User address announced to the back-end.
    pub user_addr: u64,
    /// Offset of the region in its memfd.
    pub mmap_offset: u64,
}

/// Offset between guest and announced user addresses in the default layouts.
pub const USER_ADDR_OFFSET: u64 = 0x7f00_0000_0000;

/// One region: its memfd and its local shared mapping.
#[derive(Debug)]
pub struct GuestRegion {
    /// Where the region lives.
    pub spec: RegionSpec,
    file: File,
    map: NonNull<u8>,
    map_len: usize,
}

// SAFETY: the mapping is shared memory owned by this struct; access goes through bounds-checked
// copies and the pointer is never handed out.
unsafe impl Send for GuestRegion {}
// SAFETY: as above; concurrent copies into shared memory are what guest memory is.
unsafe impl Sync for GuestRegion {}

impl GuestRegion {
    fn new(spec: RegionSpec) -> Result<Self, MemoryError> {
        let memfd = memfd::MemfdOptions::default()
            .close_on_exec(true)
            .create("vhu-guest-ram")
            .map_err(|e| MemoryError::Create(std::io::Error::other(e)))?;
        let bad = MemoryError::BadRegion { spec };
        let fits = |base: u64| base.checked_add(spec.size).is_some();
        if !fits(spec.guest_addr) || !fits(spec.user_addr) {
            return Err(bad);
        }
        let map_len = spec
            .mmap_offset
            .checked_add(spec.size)
            .filter(|&l| i64::try_from(l).is_ok())
            .ok_or(bad)?;
        let file = memfd.into_file();
        file.set_len(map_len).map_err(MemoryError::Create)?;
        let len = usize::try_from(map_len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or(MemoryError::OutOfSpace { len: 0 })?;
        // SAFETY: a fresh shared mapping of a memfd we own, at an address the kernel picks.
        let map = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(MemoryError::Map)?;
        Ok(Self {
            spec,
            file,
            map: map.cast(),
            map_len: len.get(),
        })
    }

    /// The memfd backing the region (the region starts at `spec.mmap_offset` in it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The region as SET_MEM_TABLE / ADD_MEM_REG describe it.
    pub fn mem_region(&self) -> MemRegion {
        MemRegion {
            guest_addr: self.spec.guest_addr,
            size: self.spec.size,
            user_addr: self.spec.user_addr,
            mmap_offset: self.spec.mmap_offset,
        }
    }

    /// Pointer to the byte at `gpa`, if `[gpa, gpa+len)` lies in this region.
    fn ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let s = &self.spec;
        let end = gpa.checked_add(len)?;
        if gpa < s.guest_addr || end > s.guest_addr + s.size {
            return None;
        }
        let off = (s.mmap_offset + gpa - s.guest_addr) as usize;
        // SAFETY: off + len <= map_len, checked above.
        Some(unsafe { self.map.as_ptr().add(off) })
    }
}

impl Drop for GuestRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is not used after drop.
        let _ = unsafe { munmap(self.map.cast(), self.map_len) };
    }
}

/// Offset of I/O virtual addresses from guest addresses where no swap is possible (see
/// [`GuestMemory::iova_bases_for`]): far from both the guest and the user addresses.
pub const IOVA_OFFSET: u64 = 0x40_0000_0000;

/// The guest's memory: regions and a bump allocator for rings and buffers.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<GuestRegion>,
    /// Allocation cursor: region index and offset into it.
    cursor: (usize, u64),
    /// Where the device finds each region through the IOMMU (VIRTIO_F_ACCESS_PLATFORM): the
    /// I/O virtual address of its first byte. `None`: the device uses guest addresses.
    iova: Option<Vec<u64>>,
}

impl GuestMemory {
    /// Creates one memfd-backed region per spec.
    pub fn new(specs: &[RegionSpec]) -> Result<Self, MemoryError> {
        let regions = specs
            .iter()
            .map(|s| GuestRegion::new(*s))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            regions,
            cursor: (0, 0),
            iova: None,
        })
    }

    /// Two regions of `total / 2` bytes with a 1 MiB hole between them; the second starts 2 MiB
    /// into its memfd; user addresses are guest addresses + [`USER_ADDR_OFFSET`].
    pub fn default_layout(total: u64) -> Vec<RegionSpec> {
        let half = total / 2;
        let second = half + 0x10_0000;
        vec![
            RegionSpec {
                guest_addr: 0,
                size: half,
                user_addr: USER_ADDR_OFFSET,
                mmap_offset: 0,
            },
            RegionSpec {
                guest_addr: second,
                size: half,
                user_addr: second + USER_ADDR_OFFSET,
                mmap_offset: 0x20_0000,
            },
        ]
    }

    /// One region of `total` bytes at guest address 0.
    pub fn single_layout(total: u64) -> Vec<RegionSpec> {
        vec![RegionSpec {
            guest_addr: 0,
            size: total,
            user_addr: USER_ADDR_OFFSET,
            mmap_offset: 0,
        }]
    }

    /// The regions.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// The regions as the wire describes them.
    pub fn mem_regions(&self) -> Vec<MemRegion> {
        self.regions.iter().map(GuestRegion::mem_region).collect()
    }

    fn ptr(&self, gpa: u64, len: u64) -> Result<*mut u8, MemoryError> {
        self.regions
            .iter()
            .find_map(|r| r.ptr(gpa, len))
            .ok_or(MemoryError::Unmapped { gpa, len })
    }

    /// Copies guest memory out.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, buf.len() as u64)?;
        // SAFETY: `p` points at `buf.len()` mapped bytes (checked by `ptr`); the back-end may
        // write concurrently, which for plain bytes only yields the old or new value.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies into guest memory.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, data.len() as u64)?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// Reads a little-endian u16 with a single volatile access (ring indices).
    pub fn read_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        let p = self.ptr(gpa, 2)?;
        if p as usize % 2 != 0 {
            return Err(MemoryError::Unmapped { gpa, len: 2 });
        }
        // SAFETY: aligned, mapped (checked above); volatile because the back-end writes it.
        Ok(u16::from_le(unsafe {
            std::ptr::read_volatile(p.cast::<u16>())
        }))
    }

    /// Writes a little-endian u16 with a single volatile access (ring indices).
    pub fn write_u16(&self, gpa: u64, value: u16) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, 2)?;
        if p as usize % 2 != 0 {
            return Err(MemoryError::Unmapped { gpa, len: 2 });
        }
        // SAFETY: as in `read_u16`.
        unsafe { std::ptr::write_volatile(p.cast::<u16>(), value.to_le()) };
        Ok(())
    }

    /// The user address the back-end knows `gpa` by.
    pub fn gpa_to_ua(&self, gpa: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| gpa >= r.spec.guest_addr && gpa < r.spec.guest_addr + r.spec.size)
            .map(|r| gpa - r.spec.guest_addr + r.spec.user_addr)
    }

    /// I/O virtual addresses for the regions of `specs`, chosen so that a device ignoring the
    /// IOMMU fails visibly: with two regions of one size each is mapped at the *other*
    /// region's guest range, so an IOVA taken for a guest address (R-MEM-19) reaches the wrong
    /// region, and none is a user address (R-IOTLB-03); otherwise guest address +
    /// [`IOVA_OFFSET`], which no region's guest or user range holds.
    pub fn iova_bases_for(specs: &[RegionSpec]) -> Vec<u64> {
        match specs {
            [a, b] if a.size == b.size => vec![b.guest_addr, a.guest_addr],
            _ => specs.iter().map(|s| s.guest_addr + IOVA_OFFSET).collect(),
        }
    }

    /// Puts the memory behind the IOMMU: region `i` is addressed by the device from IOVA
    /// `bases[i]`; descriptors and ring addresses then carry IOVAs (R-IOTLB-03).
    ///
    /// # Errors
    /// Not one base per region, or a base whose range wraps around.
    pub fn map_iova(&mut self, bases: Vec<u64>) -> Result<(), MemoryError> {
        if bases.len() != self.regions.len() {
            return Err(MemoryError::IovaBases {
                bases: bases.len(),
                regions: self.regions.len(),
            });
        }
        for (r, &b) in self.regions.iter().zip(&bases) {
            if b.checked_add(r.spec.size).is_none() {
                return Err(MemoryError::BadRegion { spec: r.spec });
            }
        }
        self.iova = Some(bases);
        Ok(())
    }

    /// Whether the device addresses this memory through the IOMMU.
    pub fn behind_iommu(&self) -> bool {
        self.iova.is_some()
    }

    /// The address the device knows `gpa` by: its IOVA behind the IOMMU, else `gpa` itself.
    pub fn device_addr(&self, gpa: u64) -> u64 {
        let Some(bases) = &self.iova else {
            return gpa;
        };
        self.regions
            .iter()
            .zip(bases)
            .find(|(r, _)| gpa >= r.spec.guest_addr && gpa - r.spec.guest_addr < r.spec.size)
            .map_or(gpa, |(r, base)| base + (gpa - r.spec.guest_addr))
    }

    /// The IOMMU's mappings: each region's IOVA range to its user addresses, read-write.
    pub fn iommu_mappings(&self) -> Vec<crate::iommu::Mapping> {
        let Some(bases) = &self.iova else {
            return Vec::new();
        };
        self.regions
            .iter()
            .zip(bases)
            .map(|(r, &iova)| crate::iommu::Mapping {
                iova,
                size: r.spec.size,
                uaddr: r.spec.user_addr,
                perm: crate::iommu::PERM_RW,
            })
            .collect()
    }

    /// The first non-zero byte of region `i` (its guest address and value), if any: a region
    /// nothing was allocated in holds only zeros unless the device wrote there.
    pub fn first_nonzero(&self, i: usize) -> Option<(u64, u8)> {
        let r = self.regions.get(i)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0;
        while at < r.spec.size {
            let n = (r.spec.size - at).min(buf.len() as u64) as usize;
            self.read(r.spec.guest_addr + at, &mut buf[..n]).ok()?;
            if let Some(k) = buf[..n].iter().position(|&b| b != 0) {
                return Some((r.spec.guest_addr + at + k as u64, buf[k]));
            }
            at += n as u64;
        }
        None
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), returning the guest address.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, MemoryError> {
        while let Some(r) = self.regions.get(self.cursor.0) {
            let start = self.cursor.1.next_multiple_of(align);
            if start + len <= r.spec.size {
                self.cursor.1 = start + len;
                return Ok(r.spec.guest_addr + start);
            }
            self.cursor = (self.cursor.0 + 1, 0);
        }
        Err(MemoryError::OutOfSpace { len })
    }

    /// The allocation cursor, to give back later allocations with [`GuestMemory::release`].
    pub fn mark(&self) -> (usize, u64) {
        self.cursor
    }

    /// Frees every allocation made since `mark`.
    pub fn release(&mut self, mark: (usize, u64)) {
        self.cursor = mark;
    }

    /// Fills a range with one byte (canaries, patterns).
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        self.write(gpa, &vec![byte; len as usize])
    }

    /// A checksum of all guest memory, to detect any write.
    pub fn checksum(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for r in &self.regions {
            let mut buf = vec![0u8; r.spec.size as usize];
            if self.read(r.spec.guest_addr, &mut buf).is_ok() {
                for b in buf {
                    h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
        h
    }
}

/// The host page size (4096 on x86-64), from `sysconf`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_has_a_hole_and_user_addresses_unlike_guest_addresses() {
        let mem = GuestMemory::new(&GuestMemory::default_layout(4 << 20)).unwrap();
        let r = mem.mem_regions();
        assert_eq!(r.len(), 2);
        assert!(
            r[1].guest_addr > r[0].guest_addr + r[0].size,
            "a hole between the regions"
        );
        assert!(r.iter().all(|r| r.user_addr != r.guest_addr));
        assert_eq!(mem.gpa_to_ua(r[1].guest_addr + 5), Some(r[1].user_addr + 5));
        // The hole is not memory.
        assert!(mem.write(r[0].size + 16, &[1]).is_err());
    }

    #[test]
    fn writes_land_in_the_memfd_at_the_mmap_offset() {
        use std::os::unix::fs::FileExt;
        let mem = GuestMemory::new(&GuestMemory::default_layout(4 << 20)).unwrap();
        let r1 = &mem.regions()[1];
        mem.write(r1.spec.guest_addr + 8, b"hello").unwrap();
        let file = File::from(r1.fd().try_clone_to_owned().unwrap());
        let mut buf = [0u8; 5];
        file.read_exact_at(&mut buf, r1.spec.mmap_offset + 8)
            .unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn allocation_spans_regions_and_release_gives_space_back() {
        let mut mem = GuestMemory::new(&GuestMemory::default_layout(1 << 20)).unwrap();
        let a = mem.alloc(0x40000, 4096).unwrap();
        let mark = mem.mark();
        let b = mem.alloc(0x40000, 4096).unwrap();
        mem.release(mark);
        assert_eq!(mem.alloc(0x40000, 4096).unwrap(), b);
        assert_eq!(a, 0);
        assert!(mem.alloc(0x80000, 4096).unwrap() >= mem.regions()[1].spec.guest_addr);
        assert!(matches!(
            mem.alloc(1 << 30, 8),
            Err(MemoryError::OutOfSpace { .. })
        ));
    }
}
