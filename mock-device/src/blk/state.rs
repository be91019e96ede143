//! Saving and restoring the device (disk and config space) for vhost-user device state
//! transfer (checklist 4.x, SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE): a versioned blob with a
//! magic and a checksum, so a truncated or corrupt transfer is refused instead of loaded.
//!
//! Layout (little endian): magic `VHUMBLK\0` · u32 version · u32 config length · u64 disk
//! length · config bytes · disk bytes · u64 FNV-1a checksum of everything before it.

use super::BlkDevice;
use super::config::{BlkConfig, CONFIG_SIZE};

/// The first 8 bytes of a saved state.
const MAGIC: [u8; 8] = *b"VHUMBLK\0";
/// The format version written.
const VERSION: u32 = 1;
/// Bytes before the config: magic, version, config length, disk length.
const PREFIX: usize = 8 + 4 + 4 + 8;
/// Bytes of the trailing checksum.
const CHECKSUM: usize = 8;

/// Why a saved state was refused (the device is left unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
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

impl BlkDevice {
    /// Disk and config state, versioned with a magic and a checksum.
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREFIX + CONFIG_SIZE + self.disk.len() + CHECKSUM);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(CONFIG_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&(self.disk.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.config.bytes);
        out.extend_from_slice(&self.disk);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Restores a [`BlkDevice::save`] blob; a truncated, extended or corrupt one is refused
    /// and leaves the device unchanged.
    pub fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
        let disk_len = check_prefix(state)?;
        let body = state.len() - CHECKSUM;
        if fnv1a(&state[..body]) != u64_at(state, body) {
            return Err(StateError::BadChecksum);
        }
        let mut config = [0u8; CONFIG_SIZE];
        config.copy_from_slice(&state[PREFIX..PREFIX + CONFIG_SIZE]);
        self.config = BlkConfig { bytes: config };
        self.disk = state[PREFIX + CONFIG_SIZE..PREFIX + CONFIG_SIZE + disk_len].to_vec();
        Ok(())
    }
}

/// Checks magic, version and lengths; returns the disk length.
fn check_prefix(state: &[u8]) -> Result<usize, StateError> {
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
    let disk_len = u64_at(state, 16);
    let expected = disk_len.saturating_add((PREFIX + CONFIG_SIZE + CHECKSUM) as u64);
    if expected != actual {
        return Err(StateError::WrongLength { expected, actual });
    }
    Ok(disk_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_restores_disk_and_config() {
        let mut a = BlkDevice::new(4096, 2);
        a.disk_mut()[100] = 7;
        a.write_config(32, &[0], 0).unwrap();
        let blob = a.save();
        let mut b = BlkDevice::new(512, 1);
        b.load(&blob).unwrap();
        assert_eq!(b.disk(), a.disk());
        assert_eq!(b.config(), a.config());
    }

    #[test]
    fn damaged_state_is_refused_and_changes_nothing() {
        let a = BlkDevice::new(4096, 1);
        let blob = a.save();
        let mut b = BlkDevice::new(1024, 1);
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
        flipped[PREFIX + CONFIG_SIZE + 5] ^= 1;
        assert_eq!(b.load(&flipped), Err(StateError::BadChecksum));
        let mut magic = blob.clone();
        magic[0] = b'X';
        assert_eq!(b.load(&magic), Err(StateError::BadMagic));
        let mut version = blob;
        version[8] = 9;
        assert_eq!(b.load(&version), Err(StateError::BadVersion(9)));
        assert_eq!(b.disk().len(), 1024);
        assert_eq!(b.disk()[0], 9);
    }
}
