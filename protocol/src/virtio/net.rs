//! virtio-net layouts (virtio 1.2 section 5.1, Linux `include/uapi/linux/virtio_net.h`): the
//! header in front of every frame, the control queue's command classes and acks, the config
//! space offsets and the device feature bits the harness negotiates by choice.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct virtio_net_hdr_v1` (12 bytes with VERSION_1 or MRG_RXBUF, virtio 1.2 5.1.6),
/// native (little) endian like the rest of the ring.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy for each segment.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Descriptor chains the received frame occupies (MRG_RXBUF); 1 otherwise on receive, and
    /// unused (0) on transmit.
    pub num_buffers: u16,
}

/// Bytes of [`NetHdr`].
pub const HDR_LEN: usize = 12;
/// Header flag: the checksum is partial and must be completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag: the checksum was validated (`VIRTIO_NET_HDR_F_DATA_VALID`).
pub const HDR_F_DATA_VALID: u8 = 2;
/// Header flag: the RSC fields are valid (`VIRTIO_NET_HDR_F_RSC_INFO`).
pub const HDR_F_RSC_INFO: u8 = 4;
/// No segmentation offload (`VIRTIO_NET_HDR_GSO_NONE`).
pub const GSO_NONE: u8 = 0;

/// Feature bit 0: the device handles partial checksums on transmit.
pub const F_CSUM: u64 = 1 << 0;
/// Feature bit 1: the driver handles partial checksums on receive.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// Feature bit 3: the config `mtu` is valid.
pub const F_MTU: u64 = 1 << 3;
/// Feature bit 5: the config `mac` is valid.
pub const F_MAC: u64 = 1 << 5;
/// Feature bits 7 to 10: the driver can receive TSO4, TSO6, ECN and UFO frames.
pub const F_GUEST_GSO: u64 = 0xf << 7;
/// Feature bit 15: receive buffers may be merged (`num_buffers` counts them).
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Feature bit 16: the config `status` is valid.
pub const F_STATUS: u64 = 1 << 16;
/// Feature bit 17: a control queue exists.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// Feature bit 18: RX-mode commands on the control queue.
pub const F_CTRL_RX: u64 = 1 << 18;
/// Feature bit 22: several queue pairs (`max_virtqueue_pairs` valid, the control queue last).
pub const F_MQ: u64 = 1 << 22;
/// Feature bit 54: the driver can receive USO frames.
pub const F_GUEST_USO: u64 = 1 << 54;

/// Control class: receive filtering (`VIRTIO_NET_CTRL_RX`).
pub const CTRL_RX: u8 = 0;
/// Control command of [`CTRL_RX`]: promiscuous mode on/off (one byte).
pub const CTRL_RX_PROMISC: u8 = 0;
/// Control command of [`CTRL_RX`]: all-multicast on/off (one byte).
pub const CTRL_RX_ALLMULTI: u8 = 1;
/// Control ack: done.
pub const OK: u8 = 0;
/// Control ack: failed or not supported.
pub const ERR: u8 = 1;

/// Config offset of `mac` (6 bytes).
pub const CFG_MAC: u32 = 0;
/// Config offset of `status` (u16).
pub const CFG_STATUS: u32 = 6;
/// Config offset of `max_virtqueue_pairs` (u16).
pub const CFG_MAX_VIRTQUEUE_PAIRS: u32 = 8;
/// Config offset of `mtu` (u16).
pub const CFG_MTU: u32 = 10;
/// Bytes of config space up to and including `mtu`.
pub const CFG_SIZE: u32 = 12;

/// Smallest MTU a device may report (virtio 1.2 5.1.4.1: "at least 68").
pub const MTU_MIN: u16 = 68;
/// Largest `max_virtqueue_pairs` (virtio 1.2 5.1.4: 1 to 0x8000).
pub const MAX_QUEUE_PAIRS: u16 = 0x8000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_twelve_bytes() {
        assert_eq!(size_of::<NetHdr>(), HDR_LEN);
        let h = NetHdr {
            num_buffers: 3,
            ..NetHdr::default()
        };
        assert_eq!(&h.as_bytes()[10..], &[3, 0]);
    }
}
