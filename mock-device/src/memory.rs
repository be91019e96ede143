//! Guest memory as the device sees it (virtio 1.2 section 2.7 and 2.8 place rings and buffers in
//! guest physical memory). The device only ever reads and writes whole ranges through
//! [`GuestMemory`]; the back-end implements it over its mmapped regions, and tests over
//! [`VecMemory`].
//!
//! Memory ordering: the driver is another process sharing this memory. The ring code reads the
//! avail index, packed descriptor flags and event suppression fields with one 2- or 4-byte
//! [`GuestMemory::read`] each and orders them with `std::sync::atomic::fence`, so an
//! implementation over shared memory MUST copy with volatile semantics (for example
//! `std::ptr::read_volatile`/`write_volatile` byte by byte, or `copy_nonoverlapping` on
//! naturally aligned 2-, 4- and 8-byte fields), never cache, and never tear a naturally
//! aligned 2-byte access.

use std::cell::RefCell;

/// Largest chunk [`GuestMemory::check_range`] reads at once by default.
const CHECK_CHUNK: usize = 4096;

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

/// Guest memory as the device sees it; the back-end implements it over its mmapped regions.
///
/// Both methods act on the whole range or fail without a partial effect the caller relies on.
/// Implementations over memory shared with the driver must copy with volatile semantics (see the
/// module documentation). Every write the device makes goes through [`GuestMemory::write`], so
/// an implementation can log dirty pages there (R-LOG-04).
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at `gpa`: the whole range or an error.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `data` at `gpa`: the whole range or an error.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    /// Checks that `len` bytes at `gpa` are mapped, without side effects. The default reads the
    /// range in chunks; implementations with a region table should answer from it.
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        end_of(gpa, len)?;
        let mut scratch = [0u8; CHECK_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHECK_CHUNK as u64) as usize;
            self.read(gpa + done, &mut scratch[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The exclusive end of `len` bytes at `gpa`, or [`MemError::Overflow`].
pub fn end_of(gpa: u64, len: u64) -> Result<u64, MemError> {
    gpa.checked_add(len).ok_or(MemError::Overflow { gpa, len })
}

/// Reads a little-endian `u16` (one 2-byte access).
pub(crate) fn read_u16(mem: &dyn GuestMemory, gpa: u64) -> Result<u16, MemError> {
    let mut b = [0u8; 2];
    mem.read(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

/// Writes a little-endian `u16` (one 2-byte access).
pub(crate) fn write_u16(mem: &dyn GuestMemory, gpa: u64, v: u16) -> Result<(), MemError> {
    mem.write(gpa, &v.to_le_bytes())
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

/// One region of a [`VecMemory`].
#[derive(Debug)]
struct Region {
    gpa: u64,
    bytes: RefCell<Vec<u8>>,
}

impl Region {
    /// The offset of `[gpa, gpa + len)` inside this region if it lies wholly inside.
    fn offset_of(&self, gpa: u64, len: usize) -> Option<usize> {
        let off = gpa.checked_sub(self.gpa)?;
        let off = usize::try_from(off).ok()?;
        let end = off.checked_add(len)?;
        (end <= self.bytes.borrow().len()).then_some(off)
    }
}

/// Guest memory made of plain heap regions, for tests and tools. Not shared with another
/// process, so ordinary copies are enough. An access must lie inside one region.
#[derive(Debug, Default)]
pub struct VecMemory {
    regions: Vec<Region>,
}

impl VecMemory {
    /// Memory with no regions: every access is unmapped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Memory with one zeroed region of `len` bytes at `gpa`.
    pub fn with_region(gpa: u64, len: usize) -> Self {
        let mut m = Self::new();
        m.add_region(gpa, len);
        m
    }

    /// Adds a zeroed region of `len` bytes at `gpa` (regions should not overlap).
    pub fn add_region(&mut self, gpa: u64, len: usize) {
        self.regions.push(Region {
            gpa,
            bytes: RefCell::new(vec![0; len]),
        });
    }

    /// The region holding the whole range and the offset in it.
    fn locate(&self, gpa: u64, len: usize) -> Result<(&Region, usize), MemError> {
        end_of(gpa, len as u64)?;
        self.regions
            .iter()
            .find_map(|r| r.offset_of(gpa, len).map(|off| (r, off)))
            .ok_or(MemError::Unmapped {
                gpa,
                len: len as u64,
            })
    }
}

impl GuestMemory for VecMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let (r, off) = self.locate(gpa, buf.len())?;
        buf.copy_from_slice(&r.bytes.borrow()[off..off + buf.len()]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let (r, off) = self.locate(gpa, data.len())?;
        r.bytes.borrow_mut()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        let unmapped = MemError::Unmapped { gpa, len };
        let len = usize::try_from(len).map_err(|_| unmapped.clone())?;
        self.locate(gpa, len).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_across_region_end_is_unmapped() {
        let m = VecMemory::with_region(0x1000, 16);
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
    fn default_check_range_reads_every_chunk() {
        struct Only(VecMemory);
        impl GuestMemory for Only {
            fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
                self.0.read(gpa, buf)
            }
            fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
                self.0.write(gpa, data)
            }
        }
        let m = Only(VecMemory::with_region(0, 10_000));
        assert!(m.check_range(0, 10_000).is_ok());
        assert!(m.check_range(1, 10_000).is_err());
        assert!(m.check_range(u64::MAX, 2).is_err());
    }
}
