//! The virtio-vsock packet header and its values (virtio 1.2 section 5.10.6,
//! `linux/virtio_vsock.h`): 44 bytes, packed, little-endian.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The host's CID, the only peer of the hybrid device (CIDs 0 to 2 are reserved; 2 is the host).
pub const HOST_CID: u64 = 2;
/// The socket type served: STREAM (SEQPACKET is not offered).
pub const TYPE_STREAM: u16 = 1;
/// Bytes of [`Hdr`].
pub const HDR_LEN: usize = 44;

/// `enum virtio_vsock_op`.
pub mod op {
    /// Invalid (never valid on the wire).
    pub const INVALID: u16 = 0;
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or ended.
    pub const RST: u16 = 3;
    /// The sender stops receiving and/or sending (flags).
    pub const SHUTDOWN: u16 = 4;
    /// Payload.
    pub const RW: u16 = 5;
    /// The sender's credit.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks for the receiver's credit.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct Hdr {
    /// Sender's CID.
    pub src_cid: u64,
    /// Receiver's CID.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Payload bytes that follow.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// SHUTDOWN flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_44_packed_bytes() {
        assert_eq!(size_of::<Hdr>(), HDR_LEN);
        let h = Hdr {
            len: 0x0102_0304,
            op: op::RW,
            fwd_cnt: 7,
            ..Hdr::default()
        };
        let b = h.as_bytes();
        assert_eq!(&b[24..28], &[4, 3, 2, 1]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[40..44], &[7, 0, 0, 0]);
    }
}
