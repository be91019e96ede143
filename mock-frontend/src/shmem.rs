//! The front-end's side of VIRTIO shared memory regions (checklist 4.12, R-SHM-05 to R-SHM-09 and
//! R-SHM-14): each region GET_SHMEM_CONFIG declares is an address range reserved in this process
//! (inaccessible until mapped); SHMEM_MAP maps the back-end's fd into it, SHMEM_UNMAP gives one
//! whole mapping back, a device reset drops them all. Reads go through the real mapping, with a
//! system call that fails instead of faulting, so a back-end that shrinks its fd cannot crash
//! the harness.

use std::ffi::c_void;
use std::io::IoSliceMut;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;
use thiserror::Error;
use vhu_protocol::wire::payload::ShmemMapMsg;

/// Bit 0 of a map's flags: the mapping is writable.
pub const MAP_RW: u64 = 1;

const PAGE: u64 = 4096;

/// Most address space all declared regions reserve together (GET_SHMEM_CONFIG's sizes come from
/// the back-end; the reservations are inaccessible and take no memory, but address space is
/// finite: 128 TiB on x86-64).
pub const MAX_SHMEM_TOTAL: u64 = 1 << 42;

/// Why a SHMEM_MAP or SHMEM_UNMAP was refused. The texts say what happened and name no rule:
/// the engine maps each variant to the rule it breaks (one table, `src/engine/violations.rs` of
/// vhu-conform).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ShmemRefusal {
    /// Flags other than bit 0.
    #[error("flags {flags:#x} set bits other than bit 0")]
    BadFlags {
        /// The request's flags field.
        flags: u64,
    },
    /// The kernel refused the mapping (a bad fd, a read-only fd mapped writable...).
    #[error("mmap failed")]
    Map(#[source] nix::Error),
    /// Offsets not on a page boundary cannot be mapped (a refusal, not a rule violation).
    #[error("offsets {shm_offset:#x}/{fd_offset:#x} are not page-aligned")]
    Misaligned {
        /// Offset in the region.
        shm_offset: u64,
        /// Offset in the fd.
        fd_offset: u64,
    },
    /// An unmap that is not exactly one existing mapping.
    #[error("range {offset:#x}+{len:#x} of region {shmid} is not exactly one mapping")]
    NoSuchMapping {
        /// The id.
        shmid: u8,
        /// Offset in the region.
        offset: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// The range leaves its region.
    #[error("range {offset:#x}+{len:#x} leaves region {shmid} of {size:#x} bytes")]
    OutOfRange {
        /// The id.
        shmid: u8,
        /// Offset in the region.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// The range overlaps an existing mapping.
    #[error("range {offset:#x}+{len:#x} of region {shmid} overlaps an existing mapping")]
    Overlap {
        /// The id.
        shmid: u8,
        /// Offset in the region.
        offset: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// The shmid names no declared region.
    #[error("shmid {shmid} names no region declared by GET_SHMEM_CONFIG")]
    UnknownShmid {
        /// The id.
        shmid: u8,
    },
    /// A zero length.
    #[error("length 0")]
    ZeroLength,
}

impl ShmemRefusal {
    /// Whether the back-end broke a rule (as opposed to asking for something this front-end
    /// cannot do, which the spec allows it to refuse).
    pub fn is_violation(&self) -> bool {
        !matches!(self, Self::Misaligned { .. } | Self::Map(_))
    }
}

/// One live mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmemMapping {
    /// Region id.
    pub shmid: u8,
    /// Offset in the region.
    pub shm_offset: u64,
    /// Bytes mapped.
    pub len: u64,
    /// Offset in the back-end's fd.
    pub fd_offset: u64,
    /// Mapped writable.
    pub writable: bool,
}

impl ShmemMapping {
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        offset < self.shm_offset + self.len && self.shm_offset < offset + len
    }
}

/// One declared region: a reserved range of this process's address space.
#[derive(Debug)]
struct Region {
    size: u64,
    base: NonNull<c_void>,
    reserved: NonZeroUsize,
    maps: Vec<(ShmemMapping, OwnedFd)>,
}

// SAFETY: the reservation is owned by this struct and only touched through `mmap`/`munmap` with
// MAP_FIXED inside it and through `process_vm_readv`, all of which are thread-agnostic.
unsafe impl Send for Region {}

impl Region {
    fn reserve(size: u64) -> nix::Result<Self> {
        let len = size
            .checked_next_multiple_of(PAGE)
            .filter(|&l| l <= MAX_SHMEM_TOTAL)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(nix::Error::ENOMEM)?;
        let reserved = NonZeroUsize::new(len).ok_or(nix::Error::EINVAL)?;
        // SAFETY: a fresh inaccessible anonymous mapping at an address the kernel picks.
        let base = unsafe {
            mmap_anonymous(
                None,
                reserved,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }?;
        Ok(Self {
            size,
            base,
            reserved,
            maps: vec![],
        })
    }

    fn addr(&self, offset: u64) -> NonZeroUsize {
        NonZeroUsize::new(self.base.as_ptr() as usize + offset as usize).expect("non-null base")
    }

    /// Puts the reservation back over `[offset, offset+len)`, dropping whatever was mapped there.
    fn reset_range(&self, offset: u64, len: u64) -> nix::Result<()> {
        let len =
            NonZeroUsize::new(len.next_multiple_of(PAGE) as usize).ok_or(nix::Error::EINVAL)?;
        // SAFETY: the range lies inside our reservation (checked when it was mapped), so
        // MAP_FIXED replaces only memory this struct owns.
        unsafe {
            mmap_anonymous(
                Some(self.addr(offset)),
                len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE | MapFlags::MAP_FIXED,
            )
        }
        .map(drop)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the reservation (and every mapping inside it) belongs to this struct.
        let _ = unsafe { munmap(self.base, self.reserved.get()) };
    }
}

/// Every declared region, by shmid.
#[derive(Debug, Default)]
pub struct ShmemSpace {
    regions: Vec<Option<Region>>,
}

impl ShmemSpace {
    /// Reserves one range per non-zero size (index = shmid); ENOMEM when together they are
    /// more than [`MAX_SHMEM_TOTAL`].
    pub fn new(sizes: &[u64]) -> nix::Result<Self> {
        let total = sizes.iter().try_fold(0u64, |t, &s| {
            t.checked_add(s.checked_next_multiple_of(PAGE)?)
        });
        if total.is_none_or(|t| t > MAX_SHMEM_TOTAL) {
            return Err(nix::Error::ENOMEM);
        }
        let regions = sizes
            .iter()
            .map(|&s| (s != 0).then(|| Region::reserve(s)).transpose())
            .collect::<nix::Result<_>>()?;
        Ok(Self { regions })
    }

    /// The declared sizes, index = shmid.
    pub fn sizes(&self) -> Vec<u64> {
        self.regions
            .iter()
            .map(|r| r.as_ref().map_or(0, |r| r.size))
            .collect()
    }

    fn region(&self, shmid: u8) -> Result<&Region, ShmemRefusal> {
        self.regions
            .get(usize::from(shmid))
            .and_then(Option::as_ref)
            .ok_or(ShmemRefusal::UnknownShmid { shmid })
    }

    fn region_mut(&mut self, shmid: u8) -> Result<&mut Region, ShmemRefusal> {
        self.regions
            .get_mut(usize::from(shmid))
            .and_then(Option::as_mut)
            .ok_or(ShmemRefusal::UnknownShmid { shmid })
    }

    /// Validates a SHMEM_MAP and maps `fd` into its region (R-SHM-05, R-SHM-06, R-SHM-07).
    pub fn map(&mut self, m: &ShmemMapMsg, fd: OwnedFd) -> Result<(), ShmemRefusal> {
        let (shmid, offset, len) = (m.shmid, m.shm_offset, m.len);
        if m.flags & !MAP_RW != 0 {
            return Err(ShmemRefusal::BadFlags { flags: m.flags });
        }
        if len == 0 {
            return Err(ShmemRefusal::ZeroLength);
        }
        let region = self.region(shmid)?;
        if offset.checked_add(len).is_none_or(|end| end > region.size) {
            let size = region.size;
            return Err(ShmemRefusal::OutOfRange {
                shmid,
                offset,
                len,
                size,
            });
        }
        if region.maps.iter().any(|(x, _)| x.overlaps(offset, len)) {
            return Err(ShmemRefusal::Overlap { shmid, offset, len });
        }
        if offset % PAGE != 0 || m.fd_offset % PAGE != 0 {
            return Err(ShmemRefusal::Misaligned {
                shm_offset: offset,
                fd_offset: m.fd_offset,
            });
        }
        let writable = m.flags & MAP_RW != 0;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        let length = NonZeroUsize::new(len as usize).ok_or(ShmemRefusal::ZeroLength)?;
        let fd_offset =
            i64::try_from(m.fd_offset).map_err(|_| ShmemRefusal::Map(nix::Error::EINVAL))?;
        // SAFETY: the range lies inside this region's reservation (checked above) and overlaps no
        // other mapping, so MAP_FIXED replaces only reserved, unused address space.
        unsafe {
            mmap(
                Some(region.addr(offset)),
                length,
                prot,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                &fd,
                fd_offset,
            )
        }
        .map_err(ShmemRefusal::Map)?;
        let mapping = ShmemMapping {
            shmid,
            shm_offset: offset,
            len,
            fd_offset: m.fd_offset,
            writable,
        };
        self.region_mut(shmid)?.maps.push((mapping, fd));
        Ok(())
    }

    /// Validates a SHMEM_UNMAP (exactly one whole mapping, R-SHM-08) and unmaps it.
    pub fn unmap(&mut self, m: &ShmemMapMsg) -> Result<(), ShmemRefusal> {
        let (shmid, offset, len) = (m.shmid, m.shm_offset, m.len);
        let region = self.region_mut(shmid)?;
        let pos = region
            .maps
            .iter()
            .position(|(x, _)| x.shm_offset == offset && x.len == len)
            .ok_or(ShmemRefusal::NoSuchMapping { shmid, offset, len })?;
        region.reset_range(offset, len).map_err(ShmemRefusal::Map)?;
        region.maps.remove(pos);
        Ok(())
    }

    /// Drops every mapping (device reset, R-SHM-09); the regions stay declared.
    pub fn clear(&mut self) {
        for region in self.regions.iter_mut().flatten() {
            let maps = std::mem::take(&mut region.maps);
            for (m, _fd) in maps {
                let _ = region.reset_range(m.shm_offset, m.len);
            }
        }
    }

    /// The live mappings.
    pub fn mappings(&self) -> Vec<ShmemMapping> {
        self.regions
            .iter()
            .flatten()
            .flat_map(|r| r.maps.iter().map(|(m, _)| m.clone()))
            .collect()
    }

    /// Reads region memory as the guest sees it, through the mapping. Fails (instead of
    /// faulting) on unmapped ranges and on pages past the end of the back-end's fd.
    pub fn read(&self, shmid: u8, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let region = self
            .region(shmid)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        if offset.saturating_add(buf.len() as u64) > region.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "range leaves the region",
            ));
        }
        let want = buf.len();
        let remote = [RemoteIoVec {
            base: region.addr(offset).get(),
            len: want,
        }];
        let got = process_vm_readv(Pid::this(), &mut [IoSliceMut::new(buf)], &remote)?;
        if got == want {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("only {got} of {want} bytes are readable"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use zerocopy::FromZeros;

    fn memfd(content: &[u8], len: u64) -> std::fs::File {
        let f = memfd::MemfdOptions::default()
            .create("shmem-test")
            .unwrap()
            .into_file();
        f.set_len(len).unwrap();
        f.write_all_at(content, 0).unwrap();
        f
    }

    fn msg(shmid: u8, fd_offset: u64, shm_offset: u64, len: u64, flags: u64) -> ShmemMapMsg {
        let mut m = ShmemMapMsg::new_zeroed();
        m.shmid = shmid;
        m.fd_offset = fd_offset;
        m.shm_offset = shm_offset;
        m.len = len;
        m.flags = flags;
        m
    }

    #[test]
    fn a_mapped_fd_is_readable_in_its_region_and_gone_after_unmap() {
        let mut space = ShmemSpace::new(&[0, 0x10000]).unwrap();
        let f = memfd(b"shared bytes", 0x2000);
        space
            .map(&msg(1, 0, 0x4000, 0x2000, MAP_RW), f.into())
            .unwrap();
        let mut buf = [0u8; 12];
        space.read(1, 0x4000, &mut buf).unwrap();
        assert_eq!(&buf, b"shared bytes");
        assert!(
            space.read(1, 0, &mut buf).is_err(),
            "unmapped space is not readable"
        );
        space.unmap(&msg(1, 0, 0x4000, 0x2000, 0)).unwrap();
        assert!(space.read(1, 0x4000, &mut buf).is_err());
        assert!(space.mappings().is_empty());
    }

    #[test]
    fn bad_maps_are_refused_with_the_rule_they_break() {
        let mut space = ShmemSpace::new(&[0x10000]).unwrap();
        let fd = || -> OwnedFd { memfd(b"", 0x10000).into() };
        space.map(&msg(0, 0, 0, 0x2000, 0), fd()).unwrap();
        let refusal = |space: &mut ShmemSpace, m| space.map(&m, fd()).unwrap_err();
        assert!(matches!(
            refusal(&mut space, msg(0, 0, 0x1000, 0x1000, 0)),
            ShmemRefusal::Overlap { .. }
        ));
        assert!(matches!(
            refusal(&mut space, msg(0, 0, 0xf000, 0x2000, 0)),
            ShmemRefusal::OutOfRange { .. }
        ));
        assert!(matches!(
            refusal(&mut space, msg(3, 0, 0, 0x1000, 0)),
            ShmemRefusal::UnknownShmid { shmid: 3 }
        ));
        assert!(matches!(
            refusal(&mut space, msg(0, 0, 0x4000, 0x1000, 2)),
            ShmemRefusal::BadFlags { flags: 2 }
        ));
        assert!(matches!(
            refusal(&mut space, msg(0, 0, 0x4000, 0, 0)),
            ShmemRefusal::ZeroLength
        ));
        let misaligned = refusal(&mut space, msg(0, 0, 0x4100, 0x1000, 0));
        assert!(!misaligned.is_violation());
        assert!(
            matches!(
                space.unmap(&msg(0, 0, 0, 0x1000, 0)),
                Err(ShmemRefusal::NoSuchMapping { .. })
            ),
            "an unmap must name a whole mapping"
        );
        assert_eq!(space.mappings().len(), 1);
        space.clear();
        assert!(space.mappings().is_empty());
        space.map(&msg(0, 0, 0, 0x2000, 0), fd()).unwrap();
    }

    #[test]
    fn a_read_past_the_end_of_a_short_fd_fails_instead_of_faulting() {
        let mut space = ShmemSpace::new(&[0x10000]).unwrap();
        let f = memfd(b"x", 0x1000);
        space.map(&msg(0, 0, 0, 0x4000, 0), f.into()).unwrap();
        let mut buf = [0u8; 16];
        space.read(0, 0, &mut buf).unwrap();
        assert_eq!(buf[0], b'x');
        assert!(space.read(0, 0x2000, &mut buf).is_err());
    }
}
