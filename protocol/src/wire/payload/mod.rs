//! Payload layouts (checklist 1.5) and a typed [`Body`] that encodes and decodes them.
//!
//! Every struct is `#[repr(C)]` with zerocopy derives, so its bytes are its wire form. Padding is
//! spelled out as explicit fields, as C compilers lay it out (the inflight description and the
//! IOTLB message are 24 and 32 bytes in QEMU, libvhost-user, DPDK and rust-vmm alike).
//!
//! One file per message family: memory table and regions (`memory`), vring state, address, fd
//! words and areas (`vring`), config space (`config`), IOTLB (`iotlb`), inflight tracking
//! (`inflight`), device state transfer (`device_state`), shared objects (`shared_object`) and
//! shared memory (`shmem`); [`Body`] ties them together (`body`).

/// Declares a wire struct: `#[repr(C)]`, all fields public, zerocopy and serde derives.
macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq,
                 ::serde::Serialize, ::serde::Deserialize,
                 ::zerocopy::FromBytes, ::zerocopy::IntoBytes, ::zerocopy::Immutable,
                 ::zerocopy::KnownLayout)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
    };
}

mod body;
mod config;
mod device_state;
mod inflight;
mod iotlb;
mod memory;
mod shared_object;
mod shmem;
mod vring;

pub use body::{Body, BodyKind, U64};
pub use config::ConfigHeader;
pub use device_state::DeviceStateParams;
pub use inflight::InflightDesc;
pub use iotlb::IotlbMsg;
pub use memory::{LogDesc, MAX_MEM_TABLE_REGIONS, MemRegion, MemTableHeader, SingleMemRegion};
pub use shared_object::SharedObject;
pub use shmem::{MAX_SHMEM_REGIONS, ShmemConfig, ShmemMapMsg};
pub use vring::{
    VRING_F_LOG, VRING_IDX_MASK, VRING_NOFD_MASK, VringAddr, VringArea, VringState,
    validate_vring_fd_word, vring_fd_word,
};

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes_match_checklist_1_5() {
        assert_eq!(size_of::<U64>(), 8);
        assert_eq!(size_of::<VringState>(), 8);
        assert_eq!(size_of::<VringAddr>(), 40);
        assert_eq!(size_of::<MemRegion>(), 32);
        assert_eq!(size_of::<MemTableHeader>(), 8);
        assert_eq!(size_of::<SingleMemRegion>(), 40);
        assert_eq!(size_of::<LogDesc>(), 16);
        assert_eq!(size_of::<IotlbMsg>(), 32);
        assert_eq!(size_of::<ConfigHeader>(), 12);
        assert_eq!(size_of::<VringArea>(), 24);
        assert_eq!(size_of::<InflightDesc>(), 24);
        assert_eq!(size_of::<SharedObject>(), 16);
        assert_eq!(size_of::<DeviceStateParams>(), 8);
        assert_eq!(size_of::<ShmemMapMsg>(), 40);
        assert_eq!(size_of::<ShmemConfig>(), 2056);
    }

    #[test]
    fn offsets_match_checklist_1_5() {
        assert_eq!(offset_of!(VringState, num), 4);
        assert_eq!(
            [
                offset_of!(VringAddr, flags),
                offset_of!(VringAddr, desc),
                offset_of!(VringAddr, used)
            ],
            [4, 8, 16]
        );
        assert_eq!(
            [offset_of!(VringAddr, avail), offset_of!(VringAddr, log)],
            [24, 32]
        );
        assert_eq!(
            [
                offset_of!(MemRegion, size),
                offset_of!(MemRegion, user_addr),
                offset_of!(MemRegion, mmap_offset)
            ],
            [8, 16, 24]
        );
        assert_eq!(offset_of!(SingleMemRegion, region), 8);
        assert_eq!(offset_of!(LogDesc, offset), 8);
        assert_eq!(
            [
                offset_of!(IotlbMsg, size),
                offset_of!(IotlbMsg, uaddr),
                offset_of!(IotlbMsg, perm)
            ],
            [8, 16, 24]
        );
        assert_eq!(offset_of!(IotlbMsg, kind), 25);
        assert_eq!(
            [
                offset_of!(ConfigHeader, size),
                offset_of!(ConfigHeader, flags)
            ],
            [4, 8]
        );
        assert_eq!(
            [offset_of!(VringArea, size), offset_of!(VringArea, offset)],
            [8, 16]
        );
        assert_eq!(
            [
                offset_of!(InflightDesc, mmap_offset),
                offset_of!(InflightDesc, num_queues),
                offset_of!(InflightDesc, queue_size)
            ],
            [8, 16, 18]
        );
        assert_eq!(offset_of!(DeviceStateParams, phase), 4);
        assert_eq!(
            [
                offset_of!(ShmemMapMsg, fd_offset),
                offset_of!(ShmemMapMsg, shm_offset),
                offset_of!(ShmemMapMsg, len),
                offset_of!(ShmemMapMsg, flags)
            ],
            [8, 16, 24, 32]
        );
        assert_eq!(offset_of!(ShmemConfig, sizes), 8);
    }
}
