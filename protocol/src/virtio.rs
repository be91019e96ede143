//! Virtio layouts that vhost-user messages point at: split and packed ring elements and the
//! virtio-blk request format (virtio 1.2 sections 2.7, 2.8 and 5.2). Layouts only: the driver
//! logic (mock front-end) and the device logic (mock back-end) are written separately, so a bug
//! in one is not mirrored in the other.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod fs;
pub mod gpu;
pub mod net;
pub mod sound;
pub mod vsock;

/// Descriptor flag: the buffer continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Packed ring: the avail flag bit of a descriptor.
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Packed ring: the used flag bit of a descriptor.
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;
/// Split avail ring flag: the driver does not want interrupts.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Split used ring flag: the device does not want notifications.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Largest queue size virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// A split-ring descriptor (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SplitDesc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor index when `F_NEXT` is set.
    pub next: u16,
}

/// A split-ring used element (8 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub id: u32,
    /// Bytes written into device-writable buffers.
    pub len: u32,
}

/// A packed-ring descriptor (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PackedDesc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length of the buffer (used length when written back by the device).
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// `VIRTQ_DESC_F_*`, including the avail and used bits.
    pub flags: u16,
}

/// Packed-ring event suppression structure (4 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PackedEvent {
    /// Descriptor ring offset and wrap counter (bit 15).
    pub off_wrap: u16,
    /// 0 enable, 1 disable, 2 descriptor-specific.
    pub flags: u16,
}

/// Byte sizes of the split ring's three areas for a queue of `size` entries (virtio 2.7):
/// descriptor table, avail ring (with used_event), used ring (with avail_event).
pub fn split_ring_sizes(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// The virtio-blk request header (16 bytes) that starts every request.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BlkReqHeader {
    /// `VIRTIO_BLK_T_*`.
    pub kind: u32,
    /// Reserved (ioprio).
    pub reserved: u32,
    /// Start sector (512 bytes).
    pub sector: u64,
}

/// The body of vhu-conform's SHMEM device requests ([`blk::T_VHU_SHMEM_MAP`]): 24 bytes,
/// native endian like the rest of the ring.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VhuShmemBody {
    /// The shared memory region (GET_SHMEM_CONFIG index).
    pub shmid: u8,
    /// Padding, zero.
    pub padding: [u8; 7],
    /// Offset into the region.
    pub shm_offset: u64,
    /// Length of the range.
    pub len: u64,
}

/// virtio-blk request types and status values, and the device feature bits.
pub mod blk {
    /// Read.
    pub const T_IN: u32 = 0;
    /// Write.
    pub const T_OUT: u32 = 1;
    /// Flush.
    pub const T_FLUSH: u32 = 4;
    /// Get the device id string (20 bytes).
    pub const T_GET_ID: u32 = 8;
    /// Status: done.
    pub const S_OK: u8 = 0;
    /// Status: I/O error.
    pub const S_IOERR: u8 = 1;
    /// Status: unsupported request.
    pub const S_UNSUPP: u8 = 2;
    /// Sector size of the request interface.
    pub const SECTOR_SIZE: u64 = 512;
    /// Length of the GET_ID answer.
    pub const ID_BYTES: u32 = 20;
    /// Feature bit 1: size_max is valid.
    pub const F_SIZE_MAX: u64 = 1 << 1;
    /// Feature bit 2: seg_max is valid.
    pub const F_SEG_MAX: u64 = 1 << 2;
    /// Feature bit 5: read-only device.
    pub const F_RO: u64 = 1 << 5;
    /// Feature bit 6: blk_size is valid.
    pub const F_BLK_SIZE: u64 = 1 << 6;
    /// Feature bit 9: flush supported.
    pub const F_FLUSH: u64 = 1 << 9;
    /// Feature bit 11: writeback cache mode is configurable (`wce` field).
    pub const F_CONFIG_WCE: u64 = 1 << 11;
    /// Feature bit 12: multiple queues (`num_queues` field).
    pub const F_MQ: u64 = 1 << 12;
    /// Config offset of `capacity` (u64, sectors).
    pub const CFG_CAPACITY: u32 = 0;
    /// Config offset of `blk_size` (u32).
    pub const CFG_BLK_SIZE: u32 = 20;
    /// Config offset of `num_queues` (u16).
    pub const CFG_NUM_QUEUES: u32 = 34;
    /// Config offset of `writeback` / `wce` (u8).
    pub const CFG_WCE: u32 = 32;
    /// Size of the config space read by the harness (up to and including `num_queues`).
    pub const CFG_SIZE: u32 = 36;

    /// vhu-conform's own request type (not virtio's): asks a back-end to map a memfd into one
    /// of its shared memory regions with SHMEM_MAP. Its one driver-readable body is
    /// [`VhuShmemBody`](super::VhuShmemBody). The bundled mock back-end implements it; a back-end
    /// that does not answers `S_UNSUPP`, and SHMEM_MAP scenarios are skipped for it.
    pub const T_VHU_SHMEM_MAP: u32 = 0x8000_0001;
    /// vhu-conform's request type asking for SHMEM_UNMAP of a range mapped with
    /// [`T_VHU_SHMEM_MAP`]; same body.
    pub const T_VHU_SHMEM_UNMAP: u32 = 0x8000_0002;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_layouts_have_virtio_sizes() {
        assert_eq!(size_of::<SplitDesc>(), 16);
        assert_eq!(size_of::<UsedElem>(), 8);
        assert_eq!(size_of::<PackedDesc>(), 16);
        assert_eq!(size_of::<PackedEvent>(), 4);
        assert_eq!(size_of::<BlkReqHeader>(), 16);
        assert_eq!(split_ring_sizes(256), (4096, 518, 2054));
    }
}
