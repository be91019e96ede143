//! The virtio-blk configuration space (virtio 1.2 section 5.2.4, `struct virtio_blk_config`)
//! and the vhost-user SET_CONFIG flags rule (checklist R-CFG-03: flags 0 is a guest write of
//! writable fields only, flags 1 a live-migration restore of any field).

use vhu_protocol::virtio::blk;

/// Bytes of config space the device exposes: up to and including `write_zeroes_may_unmap` and
/// its padding (virtio 1.2 without the secure-erase fields).
pub const CONFIG_SIZE: usize = 60;
/// Offset of `size_max` (u32).
const CFG_SIZE_MAX: usize = 8;
/// Offset of `seg_max` (u32).
const CFG_SEG_MAX: usize = 12;
/// Largest number of data segments per request the device advertises. Why: the usual value for
/// a 128-entry queue (header and status take two descriptors).
pub const SEG_MAX: u32 = 126;
/// SET_CONFIG flags value: ordinary guest write.
pub const FLAGS_GUEST_WRITE: u32 = 0;
/// SET_CONFIG flags value: live-migration restore.
pub const FLAGS_MIGRATION: u32 = 1;

/// Why a config write was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The flags value is neither 0 nor 1.
    #[error("unknown config flags {0:#x}")]
    BadFlags(u32),
    /// A value not allowed for the field (writeback other than 0 or 1).
    #[error("value {value} not allowed at config offset {offset}")]
    BadValue {
        /// Field offset.
        offset: u32,
        /// The byte written.
        value: u8,
    },
    /// A guest write (flags 0) touching a read-only field.
    #[error("config range at {offset} of {len} bytes is not guest-writable")]
    NotWritable {
        /// Where the write starts in the config space.
        offset: u32,
        /// Bytes written.
        len: usize,
    },
    /// The range leaves the config space.
    #[error("config range at {offset} of {len} bytes is beyond the {CONFIG_SIZE}-byte space")]
    OutOfRange {
        /// Where the access starts in the config space.
        offset: u32,
        /// Bytes asked for.
        len: usize,
    },
}

/// The raw config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlkConfig {
    pub(crate) bytes: [u8; CONFIG_SIZE],
}

impl BlkConfig {
    /// The config of a disk of `capacity_bytes` with `num_queues` queues, writeback on.
    pub(crate) fn new(capacity_bytes: u64, num_queues: u16) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
        };
        c.put(
            blk::CFG_CAPACITY as usize,
            &(capacity_bytes / blk::SECTOR_SIZE).to_le_bytes(),
        );
        c.put(CFG_SIZE_MAX, &0u32.to_le_bytes());
        c.put(CFG_SEG_MAX, &SEG_MAX.to_le_bytes());
        c.put(
            blk::CFG_BLK_SIZE as usize,
            &(blk::SECTOR_SIZE as u32).to_le_bytes(),
        );
        c.put(blk::CFG_WCE as usize, &[1]);
        c.put(blk::CFG_NUM_QUEUES as usize, &num_queues.to_le_bytes());
        c
    }

    fn put(&mut self, at: usize, v: &[u8]) {
        self.bytes[at..at + v.len()].copy_from_slice(v);
    }

    /// `capacity` in sectors.
    pub(crate) fn capacity_sectors(&self) -> u64 {
        let at = blk::CFG_CAPACITY as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(b)
    }

    /// `writeback`: 1 write-back cache, 0 write-through.
    pub(crate) fn writeback(&self) -> bool {
        self.bytes[blk::CFG_WCE as usize] != 0
    }

    /// Checks the range against the space.
    fn range(offset: u32, len: usize) -> Result<usize, ConfigError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= CONFIG_SIZE => Ok(start),
            _ => Err(ConfigError::OutOfRange { offset, len }),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub(crate) fn read(&self, offset: u32, len: usize) -> Result<Vec<u8>, ConfigError> {
        let start = Self::range(offset, len)?;
        Ok(self.bytes[start..start + len].to_vec())
    }

    /// Applies a SET_CONFIG write under the flags rule.
    pub(crate) fn write(
        &mut self,
        offset: u32,
        data: &[u8],
        flags: u32,
    ) -> Result<(), ConfigError> {
        let start = Self::range(offset, data.len())?;
        match flags {
            FLAGS_GUEST_WRITE => self.guest_write(offset, data),
            FLAGS_MIGRATION => {
                self.put(start, data);
                Ok(())
            }
            other => Err(ConfigError::BadFlags(other)),
        }
    }

    /// Only the one-byte `writeback` field is guest-writable (VIRTIO_BLK_F_CONFIG_WCE).
    fn guest_write(&mut self, offset: u32, data: &[u8]) -> Result<(), ConfigError> {
        if offset != blk::CFG_WCE || data.len() != 1 {
            return Err(ConfigError::NotWritable {
                offset,
                len: data.len(),
            });
        }
        if data[0] > 1 {
            return Err(ConfigError::BadValue {
                offset,
                value: data[0],
            });
        }
        self.put(offset as usize, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_fields_at_virtio_offsets() {
        let c = BlkConfig::new(1 << 20, 4);
        assert_eq!(c.capacity_sectors(), 2048);
        assert_eq!(&c.bytes[12..16], &SEG_MAX.to_le_bytes());
        assert_eq!(&c.bytes[20..24], &512u32.to_le_bytes());
        assert_eq!(c.bytes[32], 1);
        assert_eq!(&c.bytes[34..36], &4u16.to_le_bytes());
    }

    #[test]
    fn guest_write_changes_only_writeback() {
        let mut c = BlkConfig::new(1 << 20, 1);
        assert!(c.write(32, &[0], FLAGS_GUEST_WRITE).is_ok());
        assert!(!c.writeback());
        assert_eq!(
            c.write(0, &[1; 8], FLAGS_GUEST_WRITE),
            Err(ConfigError::NotWritable { offset: 0, len: 8 })
        );
        assert!(matches!(
            c.write(32, &[7], 0),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(c.write(0, &[0], 2), Err(ConfigError::BadFlags(2))));
        assert!(matches!(
            c.write(59, &[0, 0], 1),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            c.write(u32::MAX, &[0], 1),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert_eq!(c.capacity_sectors(), 2048);
    }

    #[test]
    fn migration_write_changes_any_field() {
        let mut c = BlkConfig::new(1 << 20, 1);
        c.write(0, &7u64.to_le_bytes(), FLAGS_MIGRATION).unwrap();
        assert_eq!(c.capacity_sectors(), 7);
    }
}
