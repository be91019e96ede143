//! GET_CONFIG / SET_CONFIG: a header, then the config bytes.

use core::mem::size_of;

use super::body::{Body, read};
use crate::wire::validate::Violation;

wire_struct!(
    /// The 12-byte prefix of GET/SET_CONFIG; `size` config bytes follow.
    ConfigHeader {
        /// Offset into the device config space.
        offset: u32,
        /// Number of config bytes.
        size: u32,
        /// 0 = guest write of writable fields, 1 = live-migration restore.
        flags: u32,
    }
);

impl ConfigHeader {
    /// The declared size matches the bytes, the range does not wrap, flags are 0 or 1.
    pub fn validate(&self, data_len: usize) -> Result<(), Violation> {
        if self.size as usize != data_len {
            return Err(Violation::CountMismatch {
                field: "config size",
                declared: self.size.into(),
                actual: data_len as u64,
            });
        }
        if self.offset.checked_add(self.size).is_none() {
            return Err(Violation::Overflow {
                field: "config offset + size",
                base: self.offset.into(),
                len: self.size.into(),
            });
        }
        if self.flags > 1 {
            return Err(Violation::OutOfRange {
                field: "config flags",
                value: self.flags.into(),
                max: 1,
            });
        }
        Ok(())
    }
}

pub(super) fn decode_config(bytes: &[u8]) -> Result<Body, Violation> {
    let header_len = size_of::<ConfigHeader>();
    let (header, data) = bytes
        .split_at_checked(header_len)
        .ok_or(Violation::SizeMismatch {
            expected: header_len,
            actual: bytes.len(),
        })?;
    Ok(Body::Config(read(header)?, data.to_vec()))
}
