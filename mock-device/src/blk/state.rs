//! Saving and restoring the device (disk and config space) for vhost-user device state
//! transfer (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, R-MIG-02..11): a versioned blob with a
//! magic and a checksum, so a truncated or corrupt transfer is refused instead of loaded. The
//! disk is sparse: only 4 KiB blocks holding a non-zero byte are written. Why: a RAM disk is
//! mostly zeros, and front-ends wait a bounded time for a transfer of the default 64 MiB disk.
//! The caller may carry a section of its own (the back-end's ring bases) inside the checksum.
//!
//! Layout (little endian): magic `VHUMBLK\0` · u32 version · u32 config length · u64 disk
//! length · u32 caller section length · u32 block count · config bytes · caller section ·
//! blocks (u32 block index · 4096 bytes, zero-padded past the disk's end) · u64 FNV-1a checksum
//! of everything before it.

use super::BlkDevice;
use super::config::{BlkConfig, CONFIG_SIZE};
use super::touched::BLOCK;

/// The first 8 bytes of a saved state.
const MAGIC: [u8; 8] = *b"VHUMBLK\0";
/// The format version written.
const VERSION: u32 = 2;
/// Bytes before the config: magic, version, config length, disk length, section length,
/// block count.
const PREFIX: usize = 8 + 4 + 4 + 8 + 4 + 4;
/// Bytes of the trailing checksum.
const CHECKSUM: usize = 8;
/// Bytes of one block record: index and data.
const RECORD: usize = 4 + BLOCK;

/// A block of zeroes, what an unwritten block holds.
static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

/// Why a saved state was refused (the device is left unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A block index lies past the end of the disk.
    #[error("device state block {0} lies outside the disk")]
    BadBlock(u32),
    /// The checksum does not match the contents.
    #[error("device state checksum mismatch")]
    BadChecksum,
    /// The config length is not the device's.
    #[error("device state config of {0} bytes, expected {CONFIG_SIZE}")]
    BadConfigLen(u32),
    /// Not a saved device state.
    #[error("device state has a wrong magic")]
    BadMagic,
    /// A format this device does not read.
    #[error("device state version {0} is not supported")]
    BadVersion(u32),
    /// The state is of a disk of another size.
    #[error("device state of a {saved}-byte disk, this disk has {ours}")]
    DiskSizeMismatch {
        /// Disk bytes in the state.
        saved: u64,
        /// Disk bytes of this device.
        ours: u64,
    },
    /// The state is shorter or longer than its header says.
    #[error("device state of {actual} bytes, expected {expected}")]
    WrongLength {
        /// Bytes the header implies.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
}

/// 64-bit FNV-1a.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// What the prefix of a state announces.
struct Prefix {
    disk_len: u64,
    section_len: usize,
    blocks: usize,
}

impl BlkDevice {
    /// Config, the caller's `section` and the non-zero disk blocks, versioned with a magic and
    /// a checksum.
    pub fn save(&self, section: &[u8]) -> Vec<u8> {
        let len = self.disk.len();
        let written: Vec<(usize, &[u8])> = (self.touched.blocks())
            .take_while(|&i| i * BLOCK < len)
            .map(|i| (i, &self.disk[i * BLOCK..((i + 1) * BLOCK).min(len)]))
            // A slice comparison is one memcmp even in a debug build.
            .filter(|(_, b)| *b != &ZERO_BLOCK[..b.len()])
            .collect();
        let mut out = Vec::with_capacity(
            PREFIX + CONFIG_SIZE + section.len() + written.len() * RECORD + CHECKSUM,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(CONFIG_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&(self.disk.len() as u64).to_le_bytes());
        out.extend_from_slice(&(section.len() as u32).to_le_bytes());
        out.extend_from_slice(&(written.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.config.bytes);
        out.extend_from_slice(section);
        for (i, b) in written {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(b);
            out.resize(out.len() + BLOCK - b.len(), 0);
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Restores a [`BlkDevice::save`] blob into a device with a disk of the same size and
    /// returns the caller's section; a truncated, extended or corrupt blob is refused and
    /// leaves the device unchanged.
    pub fn load(&mut self, state: &[u8]) -> Result<Vec<u8>, StateError> {
        let p = check_prefix(state)?;
        let body = state.len() - CHECKSUM;
        if fnv1a(&state[..body]) != u64_at(state, body) {
            return Err(StateError::BadChecksum);
        }
        let ours = self.disk.len() as u64;
        if p.disk_len != ours {
            let saved = p.disk_len;
            return Err(StateError::DiskSizeMismatch { saved, ours });
        }
        let section_at = PREFIX + CONFIG_SIZE;
        let records = state[section_at + p.section_len..body].chunks(RECORD);
        if let Some(bad) = records
            .clone()
            .map(|r| u32_at(r, 0))
            .find(|&i| (i as usize).saturating_mul(BLOCK) >= self.disk.len())
        {
            return Err(StateError::BadBlock(bad));
        }
        let mut config = [0u8; CONFIG_SIZE];
        config.copy_from_slice(&state[PREFIX..section_at]);
        self.config = BlkConfig { bytes: config };
        let len = self.disk.len();
        for i in self.touched.blocks().take_while(|&i| i * BLOCK < len) {
            self.disk[i * BLOCK..((i + 1) * BLOCK).min(len)].fill(0);
        }
        self.touched.clear();
        for r in records {
            let start = u32_at(r, 0) as usize * BLOCK;
            let end = (start + BLOCK).min(len);
            self.disk[start..end].copy_from_slice(&r[4..4 + end - start]);
            self.touched.mark(start..end);
        }
        Ok(state[section_at..section_at + p.section_len].to_vec())
    }
}

/// Checks magic, version and lengths.
fn check_prefix(state: &[u8]) -> Result<Prefix, StateError> {
    let actual = state.len() as u64;
    if state.len() < PREFIX + CHECKSUM {
        let expected = (PREFIX + CHECKSUM) as u64;
        return Err(StateError::WrongLength { expected, actual });
    }
    if state[..8] != MAGIC {
        return Err(StateError::BadMagic);
    }
    let version = u32_at(state, 8);
    if version != VERSION {
        return Err(StateError::BadVersion(version));
    }
    let config_len = u32_at(state, 12);
    if config_len as usize != CONFIG_SIZE {
        return Err(StateError::BadConfigLen(config_len));
    }
    let p = Prefix {
        disk_len: u64_at(state, 16),
        section_len: u32_at(state, 24) as usize,
        blocks: u32_at(state, 28) as usize,
    };
    let expected =
        (PREFIX + CONFIG_SIZE + CHECKSUM + p.section_len) as u64 + p.blocks as u64 * RECORD as u64;
    if expected != actual {
        return Err(StateError::WrongLength { expected, actual });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_zeroes_the_blocks_written_since_and_a_save_holds_only_written_blocks() {
        let mut a = BlkDevice::new(1 << 20, 1);
        let mut b = BlkDevice::new(1 << 20, 1);
        // As a T_OUT does: the bytes, then their blocks marked.
        b.disk[3 * BLOCK] = 5;
        b.touched.mark(3 * BLOCK..3 * BLOCK + 1);
        a.disk[7 * BLOCK + 1] = 8;
        a.touched.mark(7 * BLOCK + 1..7 * BLOCK + 2);
        let saved = a.save(&[]);
        assert_eq!(saved.len(), PREFIX + CONFIG_SIZE + RECORD + CHECKSUM);
        b.load(&saved).unwrap();
        assert_eq!(b.disk(), a.disk());
        assert_eq!(b.touched.blocks().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn save_then_load_restores_disk_config_and_the_section() {
        let mut a = BlkDevice::new(3 * 4096 + 512, 2);
        a.disk_mut()[100] = 7;
        a.disk_mut()[3 * 4096 + 511] = 9;
        a.write_config(32, &[0], 0).unwrap();
        let blob = a.save(b"bases");
        let mut b = BlkDevice::new(3 * 4096 + 512, 1);
        b.disk_mut()[5000] = 1;
        assert_eq!(b.load(&blob).unwrap(), b"bases");
        assert_eq!(b.disk(), a.disk());
        assert_eq!(b.config(), a.config());
    }

    #[test]
    fn only_non_zero_blocks_are_saved() {
        let mut a = BlkDevice::new(64 << 20, 1);
        assert_eq!(a.save(&[]).len(), PREFIX + CONFIG_SIZE + CHECKSUM);
        a.disk_mut()[10 << 20] = 1;
        assert_eq!(a.save(&[]).len(), PREFIX + CONFIG_SIZE + RECORD + CHECKSUM);
    }

    #[test]
    fn damaged_state_is_refused_and_changes_nothing() {
        let mut a = BlkDevice::new(4096, 1);
        a.disk_mut()[5] = 1;
        let blob = a.save(&[1, 2]);
        let mut b = BlkDevice::new(4096, 1);
        b.disk_mut()[0] = 9;
        for cut in [0, 10, PREFIX, blob.len() - 1] {
            assert!(matches!(
                b.load(&blob[..cut]),
                Err(StateError::WrongLength { .. })
            ));
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(b.load(&longer).is_err());
        let mut flipped = blob.clone();
        flipped[PREFIX + CONFIG_SIZE + 2 + 4 + 5] ^= 1;
        assert_eq!(b.load(&flipped), Err(StateError::BadChecksum));
        let mut magic = blob.clone();
        magic[0] = b'X';
        assert_eq!(b.load(&magic), Err(StateError::BadMagic));
        let mut version = blob.clone();
        version[8] = 9;
        assert_eq!(b.load(&version), Err(StateError::BadVersion(9)));
        let mut small = BlkDevice::new(1024, 1);
        assert!(matches!(
            small.load(&blob),
            Err(StateError::DiskSizeMismatch { .. })
        ));
        assert_eq!(b.disk()[0], 9);
        assert_eq!(b.disk()[5], 0);
    }

    #[test]
    fn a_block_past_the_disk_is_refused() {
        let mut a = BlkDevice::new(8192, 1);
        a.disk_mut()[4096] = 1;
        let mut blob = a.save(&[]);
        let at = PREFIX + CONFIG_SIZE;
        blob[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
        let body = blob.len() - CHECKSUM;
        let sum = fnv1a(&blob[..body]);
        blob[body..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(a.load(&blob), Err(StateError::BadBlock(2)));
    }
}
