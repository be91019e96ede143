//! Shared memory: the back-end's SHMEM_MAP / SHMEM_UNMAP and GET_SHMEM_CONFIG's reply.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::wire::validate::{Violation, check_add, check_reserved};

/// Number of shared memory ids in GET_SHMEM_CONFIG.
pub const MAX_SHMEM_REGIONS: usize = 256;

wire_struct!(
    /// SHMEM_MAP / SHMEM_UNMAP: a range of the attached fd mapped into (or out of) a shared
    /// memory region.
    ShmemMapMsg {
        /// Shared memory region id.
        shmid: u8,
        /// C struct padding, 0.
        padding: [u8; 7],
        /// Offset of the range in the attached fd.
        fd_offset: u64,
        /// Offset into the shared memory region.
        shm_offset: u64,
        /// Length of the range in bytes.
        len: u64,
        /// Bit 0: writable.
        flags: u64,
    }
);

/// GET_SHMEM_CONFIG's reply: a count and 256 sizes indexed by shmid (2056 bytes).
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ShmemConfig {
    /// Number of entries with a non-zero size.
    pub nregions: u32,
    /// C struct padding, 0.
    pub padding: u32,
    /// Region sizes, index = shmid; 0 = unused id.
    pub sizes: [u64; MAX_SHMEM_REGIONS],
}

impl Default for ShmemConfig {
    fn default() -> Self {
        Self {
            nregions: 0,
            padding: 0,
            sizes: [0; MAX_SHMEM_REGIONS],
        }
    }
}

impl ShmemMapMsg {
    /// Bit 0 is the only flag, the length is non-zero and no range wraps.
    pub fn validate(&self) -> Result<(), Violation> {
        check_reserved("shmem flags", self.flags, 1)?;
        if self.len == 0 {
            return Err(Violation::ZeroSize { field: "shmem len" });
        }
        check_add("shmem shm_offset + len", self.shm_offset, self.len)?;
        check_add("shmem fd_offset + len", self.fd_offset, self.len).map(drop)
    }
}

impl ShmemConfig {
    /// `nregions` counts the non-zero sizes.
    pub fn validate(&self) -> Result<(), Violation> {
        let actual = self.sizes.iter().filter(|&&s| s != 0).count() as u64;
        if u64::from(self.nregions) != actual {
            return Err(Violation::CountMismatch {
                field: "shmem nregions",
                declared: self.nregions.into(),
                actual,
            });
        }
        Ok(())
    }
}
