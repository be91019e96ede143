//! Feature bits: the protocol features of GET/SET_PROTOCOL_FEATURES (checklist 5.2, bits 0 to
//! 23, QEMU's numbering) and the virtio/vhost bits of GET/SET_FEATURES that the protocol itself
//! gives meaning to (checklist 5.1). Device-specific virtio bits pass through untouched
//! (`from_bits_retain`).

use bitflags::bitflags;

bitflags! {
    /// Protocol feature bits (GET/SET_PROTOCOL_FEATURES), as numbered by QEMU's current spec.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ProtocolFeatures: u64 {
        /// Bit 0: multiple queues (GET_QUEUE_NUM).
        const MQ = 1 << 0;
        /// Bit 1: dirty log in shared memory (SET_LOG_BASE with an fd).
        const LOG_SHMFD = 1 << 1;
        /// Bit 2: SEND_RARP.
        const RARP = 1 << 2;
        /// Bit 3: acks on request (NEED_REPLY).
        const REPLY_ACK = 1 << 3;
        /// Bit 4: NET_SET_MTU (also called NET_MTU).
        const MTU = 1 << 4;
        /// Bit 5: the back-end request channel (formerly SLAVE_REQ).
        const BACKEND_REQ = 1 << 5;
        /// Bit 6: SET_VRING_ENDIAN.
        const CROSS_ENDIAN = 1 << 6;
        /// Bit 7: crypto sessions.
        const CRYPTO_SESSION = 1 << 7;
        /// Bit 8: postcopy (userfaultfd).
        const PAGEFAULT = 1 << 8;
        /// Bit 9: GET/SET_CONFIG and CONFIG_CHANGE_MSG.
        const CONFIG = 1 << 9;
        /// Bit 10: fds on back-end requests (formerly SLAVE_SEND_FD).
        const BACKEND_SEND_FD = 1 << 10;
        /// Bit 11: host notifiers.
        const HOST_NOTIFIER = 1 << 11;
        /// Bit 12: inflight I/O tracking (GET/SET_INFLIGHT_FD).
        const INFLIGHT_SHMFD = 1 << 12;
        /// Bit 13: RESET_DEVICE.
        const RESET_DEVICE = 1 << 13;
        /// Bit 14: in-band notifications (VRING_KICK, BACKEND_VRING_CALL/ERR).
        const INBAND_NOTIFICATIONS = 1 << 14;
        /// Bit 15: GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG.
        const CONFIGURE_MEM_SLOTS = 1 << 15;
        /// Bit 16: SET/GET_STATUS.
        const STATUS = 1 << 16;
        /// Bit 17: Xen memory regions (40-byte regions).
        const XEN_MMAP = 1 << 17;
        /// Bit 18: shared objects.
        const SHARED_OBJECT = 1 << 18;
        /// Bit 19: device state transfer (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE).
        const DEVICE_STATE = 1 << 19;
        /// Bit 20: GET_VRING_BASE returns inflight information.
        const GET_VRING_BASE_INFLIGHT = 1 << 20;
        /// Bit 21: addresses are guest physical addresses. rust-vmm's `vhost` up to 0.16 used
        /// this bit for SHMEM (checklist 5.2 "bit 21/22 clash").
        const GPA_ADDRESSES = 1 << 21;
        /// Bit 22: shared memory regions (GET_SHMEM_CONFIG, SHMEM_MAP/UNMAP).
        const SHMEM = 1 << 22;
        /// Bit 23: GET_VRING_BASE_SKIP_DRAIN.
        const GET_VRING_BASE_SKIP_DRAIN = 1 << 23;
    }
}

bitflags! {
    /// The virtio and vhost feature bits (GET/SET_FEATURES) the protocol gives meaning to.
    /// Device bits (0 to 23) are kept as they are: build with `from_bits_retain`.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VirtioFeatures: u64 {
        /// Bit 24: VIRTIO_F_NOTIFY_ON_EMPTY.
        const NOTIFY_ON_EMPTY = 1 << 24;
        /// Bit 26: VHOST_F_LOG_ALL, dirty logging on.
        const LOG_ALL = 1 << 26;
        /// Bit 28: VIRTIO_RING_F_INDIRECT_DESC.
        const INDIRECT_DESC = 1 << 28;
        /// Bit 29: VIRTIO_RING_F_EVENT_IDX.
        const EVENT_IDX = 1 << 29;
        /// Bit 30: VHOST_USER_F_PROTOCOL_FEATURES (vhost-user's reuse of a legacy bit).
        const PROTOCOL_FEATURES = 1 << 30;
        /// Bit 32: VIRTIO_F_VERSION_1.
        const VERSION_1 = 1 << 32;
        /// Bit 33: VIRTIO_F_ACCESS_PLATFORM (formerly IOMMU_PLATFORM).
        const ACCESS_PLATFORM = 1 << 33;
        /// Bit 34: VIRTIO_F_RING_PACKED.
        const RING_PACKED = 1 << 34;
        /// Bit 35: VIRTIO_F_IN_ORDER.
        const IN_ORDER = 1 << 35;
    }
}

impl ProtocolFeatures {
    /// The name of one bit, for reports ("bit 9 CONFIG").
    pub fn bit_name(bit: u32) -> Option<&'static str> {
        Self::from_bits(1u64.checked_shl(bit)?)
            .and_then(|f| f.iter_names().next())
            .map(|(name, _)| name)
    }
}

impl VirtioFeatures {
    /// The name of one bit the protocol gives meaning to, for reports.
    pub fn bit_name(bit: u32) -> Option<&'static str> {
        Self::from_bits(1u64.checked_shl(bit)?)
            .and_then(|f| f.iter_names().next())
            .map(|(name, _)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_bits_follow_qemu_numbering() {
        assert_eq!(ProtocolFeatures::all().bits(), (1 << 24) - 1);
        assert_eq!(ProtocolFeatures::SHMEM.bits(), 0x40_0000);
        assert_eq!(ProtocolFeatures::bit_name(15), Some("CONFIGURE_MEM_SLOTS"));
        assert_eq!(ProtocolFeatures::bit_name(24), None);
        // qemu-storage-daemon's offered set (shared/targets/README.md) decodes to named bits only.
        let qsd = ProtocolFeatures::from_bits(0x8f2b).unwrap();
        assert!(qsd.contains(ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIGURE_MEM_SLOTS));
    }

    #[test]
    fn device_bits_survive_in_virtio_features() {
        let f = VirtioFeatures::from_bits_retain(0x1_7500_7e46);
        assert!(f.contains(VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1));
        assert_eq!(f.bits(), 0x1_7500_7e46);
        assert_eq!(VirtioFeatures::bit_name(30), Some("PROTOCOL_FEATURES"));
    }
}
