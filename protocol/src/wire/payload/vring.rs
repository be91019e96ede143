//! Vring payloads: state (size, base, enable), addresses, the KICK/CALL/ERR fd word and the
//! host notifier area.

use crate::wire::validate::{Violation, check_add, check_align, check_reserved};

/// Bits 0-7 of a KICK/CALL/ERR payload: the vring index.
pub const VRING_IDX_MASK: u64 = 0xff;
/// Bit 8 of a KICK/CALL/ERR payload (and of a vring area's u64): no fd is attached.
pub const VRING_NOFD_MASK: u64 = 1 << 8;
/// `VHOST_VRING_F_LOG`, the only defined bit of [`VringAddr::flags`].
pub const VRING_F_LOG: u32 = 1;

wire_struct!(
    /// A vring state: index and a number (size, base, enable flag, endianness).
    VringState {
        /// The vring index.
        index: u32,
        /// The request's number: ring size, base index, enable flag or endianness.
        num: u32,
    }
);
wire_struct!(
    /// SET_VRING_ADDR: note the order desc, used, avail.
    VringAddr {
        /// The vring index.
        index: u32,
        /// Bit 0: `VHOST_VRING_F_LOG`.
        flags: u32,
        /// Descriptor table user address.
        desc: u64,
        /// Used ring user address.
        used: u64,
        /// Avail ring user address.
        avail: u64,
        /// Guest address of the used ring, for logging.
        log: u64,
    }
);

wire_struct!(
    /// VRING_HOST_NOTIFIER_MSG's area.
    VringArea {
        /// Bits 0-7 vring index, bit 8 no fd.
        u64_: u64,
        /// Size of the mapping of the notifier area.
        size: u64,
        /// Offset of the notifier area in the attached fd.
        offset: u64,
    }
);

impl VringAddr {
    /// Reserved flag bits, and the alignments every ring layout satisfies (descriptor table 16,
    /// used/device area 4, avail/driver area 2).
    pub fn validate(&self) -> Result<(), Violation> {
        check_reserved("vring address flags", self.flags.into(), VRING_F_LOG.into())?;
        check_align("descriptor table address", self.desc, 16)?;
        check_align("used ring address", self.used, 4)?;
        check_align("avail ring address", self.avail, 2)
    }
}

impl VringArea {
    /// Only bits 0-8 of the index word are defined, and the range does not wrap.
    pub fn validate(&self) -> Result<(), Violation> {
        check_reserved(
            "vring area index word",
            self.u64_,
            VRING_IDX_MASK | VRING_NOFD_MASK,
        )?;
        check_add("vring area offset + size", self.offset, self.size).map(drop)
    }
}

/// Builds the u64 of SET_VRING_KICK/CALL/ERR: the index, and bit 8 when no fd is attached.
pub fn vring_fd_word(index: u8, no_fd: bool) -> u64 {
    u64::from(index) | if no_fd { VRING_NOFD_MASK } else { 0 }
}

/// Checks the u64 of SET_VRING_KICK/CALL/ERR: only bits 0-8 are defined.
pub fn validate_vring_fd_word(word: u64) -> Result<(), Violation> {
    check_reserved(
        "vring fd index word",
        word,
        VRING_IDX_MASK | VRING_NOFD_MASK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_ring_and_reserved_flags_are_reported() {
        let a = VringAddr {
            desc: 0x1008,
            ..Default::default()
        };
        assert!(matches!(
            a.validate(),
            Err(Violation::Misaligned { align: 16, .. })
        ));
        let a = VringAddr {
            flags: 2,
            ..Default::default()
        };
        assert!(matches!(
            a.validate(),
            Err(Violation::ReservedBits { bits: 2, .. })
        ));
        assert!(validate_vring_fd_word(vring_fd_word(3, true)).is_ok());
        assert!(validate_vring_fd_word(1 << 9).is_err());
    }
}
