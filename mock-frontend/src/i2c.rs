//! virtio-i2c driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.19): a request is one chain, the device-readable `virtio_i2c_out_hdr`
//! (le16 addr, le16 padding, le32 flags), the optional `buf` (device-readable for a write,
//! device-writable for a read) and the device-writable `virtio_i2c_in_hdr` (u8 status). Facts
//! only: the engine judges the status.

use crate::exchange::{ChainSpec, Exchanged};

/// The request queue.
pub const REQUESTQ: u16 = 0;
/// VIRTIO_I2C_F_ZERO_LENGTH_REQUEST, which every device must offer.
pub const F_ZERO_LENGTH_REQUEST: u64 = 1 << 0;
/// VIRTIO_I2C_FLAGS_FAIL_NEXT: the request is not the last of its group.
pub const FLAGS_FAIL_NEXT: u32 = 1 << 0;
/// VIRTIO_I2C_FLAGS_M_RD: a read request.
pub const FLAGS_M_RD: u32 = 1 << 1;
/// VIRTIO_I2C_MSG_OK.
pub const MSG_OK: u8 = 0;
/// VIRTIO_I2C_MSG_ERR.
pub const MSG_ERR: u8 = 1;

/// What a request does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Read this many bytes.
    Read(u32),
    /// Write these bytes.
    Write(Vec<u8>),
    /// No buffer (an SMBus "Quick" command).
    ZeroLength,
}

/// The out header of a request to the 7-bit address `addr` (virtio 1.2 5.19.6: the address
/// is in bits 7:1).
pub fn out_hdr(addr: u8, flags: u32) -> Vec<u8> {
    let mut h = (u16::from(addr & 0x7f) << 1).to_le_bytes().to_vec();
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&flags.to_le_bytes());
    h
}

/// The chain of one request; `fail_next` marks it as not the last of its group.
pub fn request_chain(addr: u8, t: &Transfer, fail_next: bool, indirect: bool) -> ChainSpec {
    let group = if fail_next { FLAGS_FAIL_NEXT } else { 0 };
    let (readable, writable) = match t {
        Transfer::Read(n) => (vec![out_hdr(addr, group | FLAGS_M_RD)], vec![*n, 1]),
        Transfer::Write(data) => (vec![out_hdr(addr, group), data.clone()], vec![1]),
        Transfer::ZeroLength => (vec![out_hdr(addr, group)], vec![1]),
    };
    ChainSpec {
        readable,
        writable,
        indirect,
    }
}

/// The status byte the device left in the in header (the last writable byte).
pub fn status(done: &Exchanged) -> Option<u8> {
    done.written.last().and_then(|b| b.last()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_lay_out_as_the_spec_says() {
        assert_eq!(out_hdr(0x50, FLAGS_M_RD), vec![0xa0, 0, 0, 0, 2, 0, 0, 0]);
        let r = request_chain(0x20, &Transfer::Read(4), true, false);
        assert_eq!(r.readable, vec![vec![0x40, 0, 0, 0, 3, 0, 0, 0]]);
        assert_eq!(r.writable, vec![4, 1]);
        let w = request_chain(0x20, &Transfer::Write(vec![1, 2]), false, false);
        assert_eq!(w.readable.len(), 2);
        assert_eq!(w.writable, vec![1]);
        let z = request_chain(0x20, &Transfer::ZeroLength, false, true);
        assert_eq!(
            (z.readable.len(), z.writable.clone(), z.indirect),
            (1, vec![1], true)
        );
    }
}
