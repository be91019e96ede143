//! The memory table and its regions: SET_MEM_TABLE, ADD_MEM_REG / REM_MEM_REG and
//! SET_LOG_BASE's log description.

use core::mem::size_of;

use super::body::read;
use crate::wire::validate::{Violation, check_add};

/// SET_MEM_TABLE has room for this many regions (checklist 1.3).
pub const MAX_MEM_TABLE_REGIONS: usize = 8;

wire_struct!(
    /// One guest memory region, as SET_MEM_TABLE and ADD/REM_MEM_REG describe it.
    MemRegion {
        /// Guest physical address.
        guest_addr: u64,
        /// Size in bytes.
        size: u64,
        /// Front-end user (virtual) address.
        user_addr: u64,
        /// Offset into the fd where the region starts.
        mmap_offset: u64,
    }
);
wire_struct!(
    /// The 8-byte prefix of SET_MEM_TABLE; `nregions` regions follow.
    MemTableHeader {
        /// Number of regions that follow.
        nregions: u32,
        /// C struct padding, 0.
        padding: u32,
    }
);
wire_struct!(
    /// ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region.
    SingleMemRegion {
        /// Padding before the region, 0.
        padding: u64,
        /// The region added or removed.
        region: MemRegion,
    }
);
wire_struct!(
    /// SET_LOG_BASE: the log area in the attached fd.
    LogDesc {
        /// Log size in bytes.
        size: u64,
        /// Offset into the fd where the log starts.
        offset: u64,
    }
);

pub(super) fn decode_mem_table(bytes: &[u8]) -> Result<Vec<MemRegion>, Violation> {
    let header_len = size_of::<MemTableHeader>();
    let (header, rest) = bytes
        .split_at_checked(header_len)
        .ok_or(Violation::SizeMismatch {
            expected: header_len,
            actual: bytes.len(),
        })?;
    let header: MemTableHeader = read(header)?;
    let n = header.nregions as usize;
    if n > MAX_MEM_TABLE_REGIONS {
        return Err(Violation::OutOfRange {
            field: "nregions",
            value: n as u64,
            max: MAX_MEM_TABLE_REGIONS as u64,
        });
    }
    let expected = header_len + n * size_of::<MemRegion>();
    if bytes.len() != expected {
        return Err(Violation::SizeMismatch {
            expected,
            actual: bytes.len(),
        });
    }
    // Copied region by region: `rest` need not be 8-byte aligned (a payload read at offset 12
    // of a buffer holding the header is not), and a zero-copy view of it would fail there.
    rest.chunks_exact(size_of::<MemRegion>())
        .map(read::<MemRegion>)
        .collect()
}

impl MemRegion {
    /// A region has a size, and none of its ranges wraps around 2^64.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.size == 0 {
            return Err(Violation::ZeroSize {
                field: "region size",
            });
        }
        check_add("region guest_addr + size", self.guest_addr, self.size)?;
        check_add("region user_addr + size", self.user_addr, self.size)?;
        check_add("region mmap_offset + size", self.mmap_offset, self.size).map(drop)
    }

    /// Whether `[addr, addr + len)` lies inside the region's guest range.
    pub fn contains_guest(&self, addr: u64, len: u64) -> bool {
        contains(self.guest_addr, self.size, addr, len)
    }

    /// Whether `[addr, addr + len)` lies inside the region's user range.
    pub fn contains_user(&self, addr: u64, len: u64) -> bool {
        contains(self.user_addr, self.size, addr, len)
    }
}

fn contains(base: u64, size: u64, addr: u64, len: u64) -> bool {
    addr >= base
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= base.saturating_add(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::{Body, BodyKind};

    #[test]
    fn a_mem_table_decodes_whole_from_an_unaligned_slice() {
        let regions: Vec<MemRegion> = (0..3u64)
            .map(|i| MemRegion {
                guest_addr: i << 21,
                size: 1 << 20,
                user_addr: 0x7f00_0000_0000 + (i << 21),
                mmap_offset: i,
            })
            .collect();
        let body = Body::MemTable(regions);
        // After a 12-byte header, as on the wire: the regions start at offset 20.
        let mut buf = vec![0u8; 12];
        buf.extend_from_slice(&body.encode());
        assert_eq!(Body::decode(BodyKind::MemTable, &buf[12..]), Ok(body));
    }

    #[test]
    fn overflowing_region_arithmetic_is_a_violation() {
        let r = MemRegion {
            guest_addr: u64::MAX - 10,
            size: 4096,
            user_addr: 0,
            mmap_offset: 0,
        };
        assert!(matches!(r.validate(), Err(Violation::Overflow { .. })));
        let zero = MemRegion { size: 0, ..r };
        assert_eq!(
            zero.validate(),
            Err(Violation::ZeroSize {
                field: "region size"
            })
        );
    }

    #[test]
    fn mem_table_with_nine_regions_or_a_lying_count_is_rejected() {
        let mut bytes = Body::MemTable(vec![MemRegion::default(); 2]).encode();
        bytes[0] = 3;
        assert!(matches!(
            Body::decode(BodyKind::MemTable, &bytes),
            Err(Violation::SizeMismatch {
                expected: 104,
                actual: 72
            })
        ));
        bytes[0] = 9;
        assert!(matches!(
            Body::decode(BodyKind::MemTable, &bytes),
            Err(Violation::OutOfRange { .. })
        ));
    }
}
