//! Guest memory as the device sees it (virtio 1.2 section 2.7 and 2.8 place rings and buffers in
//! guest physical memory). The device only ever reads and writes whole ranges through
//! [`GuestMemory`], an address-space view: the back-end's translates first (user addresses, the
//! IOTLB) and logs dirty pages, and every view ends in rust-vmm's `vm_memory::GuestMemoryMmap`,
//! which implements it here (tests use one over anonymous memory, [`anonymous`]).
//!
//! Memory ordering: the driver is another process sharing this memory. Ring indices and packed
//! descriptor flags are 2-byte [`GuestMemory::load_u16`] / [`GuestMemory::store_u16`] with an
//! ordering (vm-memory's atomic `load`/`store`); the event suppression fields keep explicit
//! `SeqCst` fences, which no single load or store can express. Copies are volatile (vm-memory's
//! `VolatileSlice`), never cached.

use std::sync::atomic::{Ordering, fence};

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};
use zerocopy::IntoBytes;

/// Why a guest memory access failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The range wraps around the 64-bit address space.
    #[error("range at {gpa:#x} of {len} bytes overflows the address space")]
    Overflow {
        /// Start address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Part of the range is not backed by any region.
    #[error("range at {gpa:#x} of {len} bytes is not mapped")]
    Unmapped {
        /// Start address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// Guest memory as the device sees it: an address space over `vm_memory` regions.
///
/// Every method acts on the whole range or fails without a partial effect the caller relies on.
/// Every write the device makes goes through [`GuestMemory::write`] or
/// [`GuestMemory::store_u16`], so a view can log dirty pages there (R-LOG-04).
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at `gpa`: the whole range or an error.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `data` at `gpa`: the whole range or an error.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    /// Checks that `len` bytes at `gpa` are mapped, without side effects.
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError>;

    /// Loads the little-endian `u16` at `gpa` with `order` (ring indices, packed flags). The
    /// default is one [`GuestMemory::read`] followed by a fence of that order; the buffer is a
    /// `u16`, so vm-memory's volatile copy of an aligned index is one 2-byte access, never torn.
    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemError> {
        let mut v = 0u16;
        self.read(gpa, v.as_mut_bytes())?;
        acquire_fence(order);
        Ok(u16::from_le(v))
    }

    /// Stores `v` little-endian at `gpa` with `order`. The default is a fence of that order
    /// followed by one [`GuestMemory::write`] (from a `u16`, as in [`GuestMemory::load_u16`]).
    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemError> {
        release_fence(order);
        self.write(gpa, v.to_le().as_bytes())
    }
}

/// The fence an acquire-or-stronger load stands for when it is done as a plain copy.
fn acquire_fence(order: Ordering) {
    if order != Ordering::Relaxed && order != Ordering::Release {
        fence(Ordering::Acquire);
    }
}

/// The fence a release-or-stronger store stands for when it is done as a plain copy.
fn release_fence(order: Ordering) {
    if order != Ordering::Relaxed && order != Ordering::Acquire {
        fence(Ordering::Release);
    }
}

/// The exclusive end of `len` bytes at `gpa`, or [`MemError::Overflow`].
pub fn end_of(gpa: u64, len: u64) -> Result<u64, MemError> {
    gpa.checked_add(len).ok_or(MemError::Overflow { gpa, len })
}

/// Guest memory of one zeroed anonymous region of `len` bytes at `gpa`, for tests and tools.
///
/// # Panics
///
/// If the range wraps or cannot be mapped.
pub fn anonymous(gpa: u64, len: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(gpa), len)]).expect("anonymous guest memory")
}

/// The region holding the whole of `[gpa, gpa + len)` and the offset in it. An access never
/// spans two regions, even adjacent ones (R-MEM-03: each buffer is translated within its
/// region); an empty range may sit at a region's end.
fn locate(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: u64,
) -> Result<(&GuestRegionMmap, MemoryRegionAddress), MemError> {
    end_of(gpa, len)?;
    let unmapped = MemError::Unmapped { gpa, len };
    let region = mem.find_region(GuestAddress(gpa)).or_else(|| {
        let before = gpa.checked_sub(1).filter(|_| len == 0)?;
        mem.find_region(GuestAddress(before))
    });
    let region = region.ok_or(unmapped.clone())?;
    let off = gpa - region.start_addr().raw_value();
    if off + len > region.len() {
        return Err(unmapped);
    }
    Ok((region, MemoryRegionAddress(off)))
}

/// The region guest addresses, straight through `vm-memory` (bounds-checked, volatile copies).
impl GuestMemory for GuestMemoryMmap {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        let (region, at) = locate(self, gpa, len)?;
        region
            .read_slice(buf, at)
            .map_err(|_| MemError::Unmapped { gpa, len })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        let (region, at) = locate(self, gpa, len)?;
        region
            .write_slice(data, at)
            .map_err(|_| MemError::Unmapped { gpa, len })
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        locate(self, gpa, len).map(drop)
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemError> {
        let (region, at) = locate(self, gpa, 2)?;
        match region.load::<u16>(at, order) {
            Ok(v) => Ok(u16::from_le(v)),
            // Misaligned in host memory: no atomic access, a copy and a fence instead.
            Err(_) => {
                let mut b = [0u8; 2];
                GuestMemory::read(self, gpa, &mut b)?;
                acquire_fence(order);
                Ok(u16::from_le_bytes(b))
            }
        }
    }

    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemError> {
        let (region, at) = locate(self, gpa, 2)?;
        if region.store(v.to_le(), at, order).is_ok() {
            return Ok(());
        }
        // Misaligned in host memory: a fence and a copy instead.
        release_fence(order);
        GuestMemory::write(self, gpa, &v.to_le_bytes())
    }
}

/// Reads a zerocopy layout from guest memory.
pub(crate) fn read_obj<T>(mem: &dyn GuestMemory, gpa: u64) -> Result<T, MemError>
where
    T: zerocopy::FromBytes + zerocopy::IntoBytes,
{
    let mut v = T::new_zeroed();
    mem.read(gpa, v.as_mut_bytes())?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::{GuestMemory, MemError, anonymous};

    #[test]
    fn access_across_region_end_is_unmapped() {
        let m = anonymous(0x1000, 16);
        let mut b = [0u8; 8];
        assert!(m.read(0x1008, &mut b).is_ok());
        assert!(matches!(
            m.read(0x1009, &mut b),
            Err(MemError::Unmapped { .. })
        ));
        assert!(matches!(
            m.write(u64::MAX - 2, &b),
            Err(MemError::Overflow { .. })
        ));
    }

    #[test]
    fn an_access_never_spans_two_adjacent_regions() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        assert!(m.check_range(0xff8, 8).is_ok());
        assert!(m.check_range(0xffc, 8).is_err());
        assert!(
            m.check_range(0x2000, 0).is_ok(),
            "an empty range may end a region"
        );
        assert!(m.check_range(0x2001, 0).is_err());
        assert!(m.check_range(u64::MAX, 2).is_err());
    }

    #[test]
    fn u16_loads_and_stores_are_little_endian_aligned_or_not() {
        let m = anonymous(0, 0x100);
        m.store_u16(0x10, 0x1234, Ordering::Release).unwrap();
        m.store_u16(0x21, 0xabcd, Ordering::Release).unwrap();
        let mut b = [0u8; 2];
        m.read(0x10, &mut b).unwrap();
        assert_eq!(b, [0x34, 0x12]);
        assert_eq!(m.load_u16(0x21, Ordering::Acquire), Ok(0xabcd));
        assert!(m.load_u16(0xff, Ordering::Acquire).is_err());
    }
}
