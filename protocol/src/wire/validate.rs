//! Why a message is malformed: syntax-only reasons (sizes, reserved bits, address arithmetic,
//! alignment). Rules that depend on negotiation belong to the engine and cite a rule id there.

use thiserror::Error;

/// A syntax violation: what is wrong with a header or payload, and where.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Violation {
    /// An address is not aligned as the layout requires.
    #[error("{field} {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The field.
        field: &'static str,
        /// Its value.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
    /// The header's version bits are not 1 (R-WIRE-03).
    #[error("header version is {version}, not 1")]
    BadVersion {
        /// The version found.
        version: u32,
    },
    /// A declared count disagrees with what is there.
    #[error("{field} declares {declared} but {actual} are present")]
    CountMismatch {
        /// The field.
        field: &'static str,
        /// The declared count.
        declared: u64,
        /// The count found.
        actual: u64,
    },
    /// A value is outside what the layout defines.
    #[error("{field} is {value}, outside 0..={max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest value defined.
        max: u64,
    },
    /// Address or size arithmetic overflows 64 bits.
    #[error("{field} overflows: {base:#x} + {len:#x}")]
    Overflow {
        /// The fields added.
        field: &'static str,
        /// Where the range starts.
        base: u64,
        /// Bytes of the range.
        len: u64,
    },
    /// Reserved bits of a payload field are set.
    #[error("reserved bits {bits:#x} of {field} are set")]
    ReservedBits {
        /// The field.
        field: &'static str,
        /// The reserved bits set.
        bits: u64,
    },
    /// Reserved header flag bits (4-31) are set (R-WIRE-14).
    #[error("reserved header flag bits {bits:#x} are set")]
    ReservedFlags {
        /// The reserved bits set.
        bits: u32,
    },
    /// The payload is not the size its layout has.
    #[error("payload is {actual} bytes, the layout needs {expected}")]
    SizeMismatch {
        /// The size the layout needs.
        expected: usize,
        /// The size found.
        actual: usize,
    },
    /// A size field is zero where zero is meaningless.
    #[error("{field} is zero")]
    ZeroSize {
        /// The field.
        field: &'static str,
    },
}

/// Errors of the wire layer: a code nobody defined, or a payload that breaks its layout.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    /// The payload breaks its layout.
    #[error("malformed payload")]
    Invalid(#[from] Violation),
    /// A back-end request code that no spec or vendor defines.
    #[error("unknown back-end request code {0}")]
    UnknownBackendCode(u32),
    /// A front-end request code that no spec defines.
    #[error("unknown front-end request code {0}")]
    UnknownFrontendCode(u32),
}

/// Checks `base + len` for overflow.
pub(crate) fn check_add(field: &'static str, base: u64, len: u64) -> Result<u64, Violation> {
    base.checked_add(len)
        .ok_or(Violation::Overflow { field, base, len })
}

/// Checks that no bit of `value` outside `allowed` is set.
pub(crate) fn check_reserved(
    field: &'static str,
    value: u64,
    allowed: u64,
) -> Result<(), Violation> {
    match value & !allowed {
        0 => Ok(()),
        bits => Err(Violation::ReservedBits { field, bits }),
    }
}

/// Checks alignment.
pub(crate) fn check_align(field: &'static str, addr: u64, align: u64) -> Result<(), Violation> {
    if addr % align == 0 {
        Ok(())
    } else {
        Err(Violation::Misaligned { field, addr, align })
    }
}
