//! virtio-vsock packet layout (virtio 1.2 section 5.10; Linux
//! `include/uapi/linux/virtio_vsock.h`): every packet on the rx and tx queues is a 44-byte
//! [`Hdr`] followed by `len` payload bytes. Layouts and constants only.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The host's well-known CID.
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0 and 1 are reserved, 2 is the host).
pub const MIN_GUEST_CID: u64 = 3;

/// Receive queue (device to driver).
pub const RX_QUEUE: u16 = 0;
/// Transmit queue (driver to device).
pub const TX_QUEUE: u16 = 1;
/// Event queue.
pub const EVENT_QUEUE: u16 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_TYPE_SEQPACKET` (with VIRTIO_VSOCK_F_SEQPACKET only).
pub const TYPE_SEQPACKET: u16 = 2;

/// `VIRTIO_VSOCK_OP_INVALID`.
pub const OP_INVALID: u16 = 0;
/// `VIRTIO_VSOCK_OP_REQUEST`: connect.
pub const OP_REQUEST: u16 = 1;
/// `VIRTIO_VSOCK_OP_RESPONSE`: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// `VIRTIO_VSOCK_OP_RST`: connection refused or reset.
pub const OP_RST: u16 = 3;
/// `VIRTIO_VSOCK_OP_SHUTDOWN`: no more sending and/or receiving (`flags`).
pub const OP_SHUTDOWN: u16 = 4;
/// `VIRTIO_VSOCK_OP_RW`: payload.
pub const OP_RW: u16 = 5;
/// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`: the sender's buf_alloc and fwd_cnt.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`: asks for a CREDIT_UPDATE.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Bytes of [`Hdr`].
pub const HDR_SIZE: usize = 44;

/// The name of an op, for reports.
pub fn op_name(op: u16) -> &'static str {
    match op {
        OP_INVALID => "INVALID",
        OP_REQUEST => "REQUEST",
        OP_RESPONSE => "RESPONSE",
        OP_RST => "RST",
        OP_SHUTDOWN => "SHUTDOWN",
        OP_RW => "RW",
        OP_CREDIT_UPDATE => "CREDIT_UPDATE",
        OP_CREDIT_REQUEST => "CREDIT_REQUEST",
        _ => "unknown op",
    }
}

/// `struct virtio_vsock_hdr` (44 bytes, packed, little-endian).
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
    /// Payload bytes after the header.
    pub len: u32,
    /// `TYPE_*`.
    pub type_: u16,
    /// `OP_*`.
    pub op: u16,
    /// Op-specific flags (SHUTDOWN's).
    pub flags: u32,
    /// The sender's receive buffer space for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer (free-running).
    pub fwd_cnt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_44_bytes_little_endian() {
        assert_eq!(size_of::<Hdr>(), HDR_SIZE);
        let h = Hdr {
            src_cid: 3,
            op: OP_RW,
            ..Hdr::default()
        };
        let b = h.as_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
    }
}
