//! The 12-byte message header (checklist 1.2). Its fields are public and settable so that a test
//! can build a header that lies (wrong version, reserved bits, a false size).

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::validate::Violation;

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = 12;

bitflags! {
    /// The header's flags word. Unnamed bits are kept (`from_bits_retain`) so reserved bits can be
    /// set and seen.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
    pub struct HeaderFlags: u32 {
        /// Bits 0-1: the protocol version; must equal 1.
        const VERSION_MASK = 0x3;
        /// Bit 2: this message is a reply.
        const REPLY = 1 << 2;
        /// Bit 3: the sender wants an ack (REPLY_ACK).
        const NEED_REPLY = 1 << 3;
        /// Bits 4-31: reserved, zero.
        const RESERVED_MASK = !0xf;
    }
}

/// The only protocol version there is.
pub const VERSION: u32 = 1;

impl HeaderFlags {
    /// Version 1 with no other bit set: what every well-formed request starts from.
    pub const V1: Self = Self::from_bits_retain(VERSION);

    /// The version field (bits 0-1).
    pub fn version(self) -> u32 {
        self.bits() & Self::VERSION_MASK.bits()
    }

    /// The reserved bits that are set (bits 4-31).
    pub fn reserved(self) -> u32 {
        self.bits() & Self::RESERVED_MASK.bits()
    }
}

/// The message header as laid out on the wire: request code, flags, payload size.
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Header {
    /// Request code (front-end or back-end code space, depending on the channel).
    pub request: u32,
    /// Flags word; see [`HeaderFlags`].
    pub flags: u32,
    /// Number of payload bytes that follow.
    pub size: u32,
}

impl Header {
    /// A well-formed request header: version 1, optionally NEED_REPLY.
    pub fn request(code: u32, size: u32, need_reply: bool) -> Self {
        let mut flags = HeaderFlags::V1;
        flags.set(HeaderFlags::NEED_REPLY, need_reply);
        Self {
            request: code,
            flags: flags.bits(),
            size,
        }
    }

    /// A well-formed reply header: version 1 and REPLY, nothing else (flags exactly 0x5).
    pub fn reply(code: u32, size: u32) -> Self {
        Self {
            request: code,
            flags: (HeaderFlags::V1 | HeaderFlags::REPLY).bits(),
            size,
        }
    }

    /// The flags word as bitflags.
    pub fn flags(&self) -> HeaderFlags {
        HeaderFlags::from_bits_retain(self.flags)
    }

    /// Whether the REPLY bit is set.
    pub fn is_reply(&self) -> bool {
        self.flags().contains(HeaderFlags::REPLY)
    }

    /// Whether the NEED_REPLY bit is set.
    pub fn need_reply(&self) -> bool {
        self.flags().contains(HeaderFlags::NEED_REPLY)
    }

    /// The header as its 12 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// Reads a header from its 12 wire bytes.
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Self {
        // A 12-byte array always holds a header: every bit pattern is a valid `Header`.
        Self::read_from_bytes(bytes).expect("12 bytes make a header")
    }

    /// Syntax checks that hold for every message: version 1 (R-WIRE-03) and no reserved bit
    /// (R-WIRE-14).
    pub fn validate(&self) -> Result<(), Violation> {
        let flags = self.flags();
        if flags.version() != VERSION {
            return Err(Violation::BadVersion {
                version: flags.version(),
            });
        }
        if flags.reserved() != 0 {
            return Err(Violation::ReservedFlags {
                bits: flags.reserved(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_request_flags_size() {
        let h = Header {
            request: 0x0102_0304,
            flags: 0x5,
            size: 8,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&b[4..8], &5u32.to_ne_bytes());
        assert_eq!(&b[8..12], &8u32.to_ne_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn replies_carry_exactly_0x5_and_requests_may_need_a_reply() {
        assert_eq!(Header::reply(1, 8).flags, 0x5);
        assert_eq!(Header::request(2, 8, true).flags, 0x9);
        assert!(Header::request(2, 8, true).need_reply());
    }

    #[test]
    fn a_lying_header_is_caught_with_a_reason() {
        let mut h = Header::request(1, 0, false);
        h.flags = 2;
        assert_eq!(h.validate(), Err(Violation::BadVersion { version: 2 }));
        h.flags = 1 | 0x100;
        assert_eq!(h.validate(), Err(Violation::ReservedFlags { bits: 0x100 }));
    }
}
