//! Request codes of both directions (spec "Front-end message types" and "Back-end message
//! types"), with what the wire format itself says about each: its reply kind, its payload size
//! and how many fds it carries. Negotiation policy lives in the engine, not here.

use super::features::ProtocolFeatures;
use super::payload::BodyKind;
use super::validate::WireError;

/// A front-end request code (front-end → back-end on the main socket).
///
/// Names are the spec's names in CamelCase; each keeps the spec name as a doc alias.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, enumn::N)]
#[repr(u32)]
pub enum FrontendReq {
    /// Read the virtio features the back-end offers.
    #[doc(alias = "VHOST_USER_GET_FEATURES")]
    GetFeatures = 1,
    /// Acknowledge the virtio features the front-end uses.
    #[doc(alias = "VHOST_USER_SET_FEATURES")]
    SetFeatures = 2,
    /// Claim the back-end for this session.
    #[doc(alias = "VHOST_USER_SET_OWNER")]
    SetOwner = 3,
    /// Deprecated: release ownership.
    #[doc(alias = "VHOST_USER_RESET_OWNER")]
    ResetOwner = 4,
    /// Set the whole guest memory table (up to 8 regions, one fd each).
    #[doc(alias = "VHOST_USER_SET_MEM_TABLE")]
    SetMemTable = 5,
    /// Set the dirty log area (shared memory fd).
    #[doc(alias = "VHOST_USER_SET_LOG_BASE")]
    SetLogBase = 6,
    /// Set the eventfd signalled after log writes.
    #[doc(alias = "VHOST_USER_SET_LOG_FD")]
    SetLogFd = 7,
    /// Set a ring's size.
    #[doc(alias = "VHOST_USER_SET_VRING_NUM")]
    SetVringNum = 8,
    /// Set a ring's descriptor, used and avail addresses.
    #[doc(alias = "VHOST_USER_SET_VRING_ADDR")]
    SetVringAddr = 9,
    /// Set the next avail index a ring processes.
    #[doc(alias = "VHOST_USER_SET_VRING_BASE")]
    SetVringBase = 10,
    /// Stop a ring and read its next avail index.
    #[doc(alias = "VHOST_USER_GET_VRING_BASE")]
    GetVringBase = 11,
    /// Set a ring's kick eventfd; starts the ring.
    #[doc(alias = "VHOST_USER_SET_VRING_KICK")]
    SetVringKick = 12,
    /// Set a ring's call eventfd.
    #[doc(alias = "VHOST_USER_SET_VRING_CALL")]
    SetVringCall = 13,
    /// Set a ring's error eventfd.
    #[doc(alias = "VHOST_USER_SET_VRING_ERR")]
    SetVringErr = 14,
    /// Read the protocol features the back-end offers.
    #[doc(alias = "VHOST_USER_GET_PROTOCOL_FEATURES")]
    GetProtocolFeatures = 15,
    /// Acknowledge the protocol features the front-end uses.
    #[doc(alias = "VHOST_USER_SET_PROTOCOL_FEATURES")]
    SetProtocolFeatures = 16,
    /// Read the maximum number of queues.
    #[doc(alias = "VHOST_USER_GET_QUEUE_NUM")]
    GetQueueNum = 17,
    /// Enable or disable a ring.
    #[doc(alias = "VHOST_USER_SET_VRING_ENABLE")]
    SetVringEnable = 18,
    /// Ask a net back-end to broadcast a RARP for a MAC.
    #[doc(alias = "VHOST_USER_SEND_RARP")]
    SendRarp = 19,
    /// Set a net back-end's MTU.
    #[doc(alias = "VHOST_USER_NET_SET_MTU")]
    NetSetMtu = 20,
    /// Hand over the back-end request channel socket.
    #[doc(alias = "VHOST_USER_SET_BACKEND_REQ_FD")]
    #[doc(alias = "VHOST_USER_SET_SLAVE_REQ_FD")]
    SetBackendReqFd = 21,
    /// An IOTLB update or invalidation.
    #[doc(alias = "VHOST_USER_IOTLB_MSG")]
    IotlbMsg = 22,
    /// Set a legacy ring's endianness.
    #[doc(alias = "VHOST_USER_SET_VRING_ENDIAN")]
    SetVringEndian = 23,
    /// Read part of the device config space.
    #[doc(alias = "VHOST_USER_GET_CONFIG")]
    GetConfig = 24,
    /// Write part of the device config space.
    #[doc(alias = "VHOST_USER_SET_CONFIG")]
    SetConfig = 25,
    /// Create a crypto session.
    #[doc(alias = "VHOST_USER_CREATE_CRYPTO_SESSION")]
    CreateCryptoSession = 26,
    /// Close a crypto session.
    #[doc(alias = "VHOST_USER_CLOSE_CRYPTO_SESSION")]
    CloseCryptoSession = 27,
    /// Ask for a userfaultfd (postcopy).
    #[doc(alias = "VHOST_USER_POSTCOPY_ADVISE")]
    PostcopyAdvise = 28,
    /// Register guest memory with the userfaultfd (postcopy).
    #[doc(alias = "VHOST_USER_POSTCOPY_LISTEN")]
    PostcopyListen = 29,
    /// End postcopy.
    #[doc(alias = "VHOST_USER_POSTCOPY_END")]
    PostcopyEnd = 30,
    /// Ask for the inflight tracking area.
    #[doc(alias = "VHOST_USER_GET_INFLIGHT_FD")]
    GetInflightFd = 31,
    /// Hand back an inflight tracking area.
    #[doc(alias = "VHOST_USER_SET_INFLIGHT_FD")]
    SetInflightFd = 32,
    /// Hand over the vhost-user-gpu socket.
    #[doc(alias = "VHOST_USER_GPU_SET_SOCKET")]
    GpuSetSocket = 33,
    /// Reset the device.
    #[doc(alias = "VHOST_USER_RESET_DEVICE")]
    ResetDevice = 34,
    /// In-band kick.
    #[doc(alias = "VHOST_USER_VRING_KICK")]
    VringKick = 35,
    /// Read the maximum number of memory slots.
    #[doc(alias = "VHOST_USER_GET_MAX_MEM_SLOTS")]
    GetMaxMemSlots = 36,
    /// Add one memory region.
    #[doc(alias = "VHOST_USER_ADD_MEM_REG")]
    AddMemReg = 37,
    /// Remove one memory region.
    #[doc(alias = "VHOST_USER_REM_MEM_REG")]
    RemMemReg = 38,
    /// Set the virtio device status byte.
    #[doc(alias = "VHOST_USER_SET_STATUS")]
    SetStatus = 39,
    /// Read the virtio device status byte.
    #[doc(alias = "VHOST_USER_GET_STATUS")]
    GetStatus = 40,
    /// Look up a shared object by UUID.
    #[doc(alias = "VHOST_USER_GET_SHARED_OBJECT")]
    GetSharedObject = 41,
    /// Start a device state transfer over a pipe.
    #[doc(alias = "VHOST_USER_SET_DEVICE_STATE_FD")]
    SetDeviceStateFd = 42,
    /// Ask whether the device state transfer succeeded.
    #[doc(alias = "VHOST_USER_CHECK_DEVICE_STATE")]
    CheckDeviceState = 43,
    /// Read the shared memory region sizes.
    #[doc(alias = "VHOST_USER_GET_SHMEM_CONFIG")]
    GetShmemConfig = 44,
    /// Stop a ring without draining in-flight requests.
    #[doc(alias = "VHOST_USER_GET_VRING_BASE_SKIP_DRAIN")]
    GetVringBaseSkipDrain = 45,
}

/// A back-end request code (back-end → front-end on the back-end request channel).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, enumn::N)]
#[repr(u32)]
pub enum BackendReq {
    /// IOTLB miss or access failure.
    #[doc(alias = "VHOST_USER_BACKEND_IOTLB_MSG")]
    IotlbMsg = 1,
    /// The device config space changed.
    #[doc(alias = "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG")]
    ConfigChangeMsg = 2,
    /// Map (or unmap) a host notifier area for a queue.
    #[doc(alias = "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG")]
    VringHostNotifierMsg = 3,
    /// In-band call.
    #[doc(alias = "VHOST_USER_BACKEND_VRING_CALL")]
    VringCall = 4,
    /// In-band error notification.
    #[doc(alias = "VHOST_USER_BACKEND_VRING_ERR")]
    VringErr = 5,
    /// Export a shared object.
    #[doc(alias = "VHOST_USER_BACKEND_SHARED_OBJECT_ADD")]
    SharedObjectAdd = 6,
    /// Withdraw a shared object.
    #[doc(alias = "VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE")]
    SharedObjectRemove = 7,
    /// Look up a shared object.
    #[doc(alias = "VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP")]
    SharedObjectLookup = 8,
    /// Map an fd into a shared memory region.
    #[doc(alias = "VHOST_USER_BACKEND_SHMEM_MAP")]
    ShmemMap = 9,
    /// Unmap a range of a shared memory region.
    #[doc(alias = "VHOST_USER_BACKEND_SHMEM_UNMAP")]
    ShmemUnmap = 10,
    /// crosvm private code: virtio-fs DAX map (old draft).
    CrosvmFsMap = 1002,
    /// crosvm private code: virtio-fs DAX unmap (old draft).
    CrosvmFsUnmap = 1003,
    /// crosvm private code: virtio-fs DAX sync (old draft).
    CrosvmFsSync = 1004,
    /// crosvm private code: virtio-fs DAX I/O (old draft).
    CrosvmFsIo = 1005,
    /// crosvm private code: GPU map.
    CrosvmGpuMap = 1006,
    /// crosvm private code: external map.
    CrosvmExternalMap = 1007,
}

/// Whether a request has a reply of its own (spec "explicit reply" set, checklist section 2).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// The back-end always replies, whatever the NEED_REPLY flag says.
    Always,
    /// The back-end replies (a u64 ack) only if REPLY_ACK is negotiated and NEED_REPLY is set.
    AckOnly,
}

impl FrontendReq {
    /// Decodes a code, or says which code is unknown.
    pub fn from_code(code: u32) -> Result<Self, WireError> {
        Self::n(code).ok_or(WireError::UnknownFrontendCode(code))
    }

    /// The spec's name of this request, e.g. `VHOST_USER_SET_MEM_TABLE`.
    pub fn spec_name(self) -> &'static str {
        FRONTEND_NAMES[self as usize - 1]
    }

    /// Whether the back-end answers this request on its own (checklist section 2, "Reply").
    /// SET_MEM_TABLE and ADD_MEM_REG only reply always in postcopy-listen mode, which the caller
    /// must account for.
    pub fn reply_kind(self) -> ReplyKind {
        use FrontendReq::*;
        match self {
            GetFeatures
            | GetVringBase
            | GetProtocolFeatures
            | GetQueueNum
            | IotlbMsg
            | GetConfig
            | CreateCryptoSession
            | PostcopyAdvise
            | PostcopyEnd
            | GetInflightFd
            | GetMaxMemSlots
            | GetStatus
            | GetSharedObject
            | SetDeviceStateFd
            | CheckDeviceState
            | GetShmemConfig
            | GetVringBaseSkipDrain => ReplyKind::Always,
            SetLogBase => ReplyKind::Always,
            _ => ReplyKind::AckOnly,
        }
    }

    /// The payload layout of this request.
    pub fn request_body(self) -> BodyKind {
        use FrontendReq::*;
        match self {
            GetFeatures | SetOwner | ResetOwner | SetLogFd | GetProtocolFeatures | GetQueueNum
            | SetBackendReqFd | PostcopyAdvise | PostcopyListen | PostcopyEnd | GpuSetSocket
            | ResetDevice | GetMaxMemSlots | GetStatus | CheckDeviceState | GetShmemConfig => {
                BodyKind::Empty
            }
            SetFeatures | SetProtocolFeatures | SetVringKick | SetVringCall | SetVringErr
            | SendRarp | NetSetMtu | CloseCryptoSession | SetStatus => BodyKind::U64,
            SetVringNum
            | SetVringBase
            | GetVringBase
            | SetVringEnable
            | SetVringEndian
            | VringKick
            | GetVringBaseSkipDrain => BodyKind::VringState,
            SetVringAddr => BodyKind::VringAddr,
            SetMemTable => BodyKind::MemTable,
            SetLogBase => BodyKind::Log,
            IotlbMsg => BodyKind::Iotlb,
            GetConfig | SetConfig => BodyKind::Config,
            CreateCryptoSession => BodyKind::Opaque,
            GetInflightFd | SetInflightFd => BodyKind::Inflight,
            AddMemReg | RemMemReg => BodyKind::SingleRegion,
            GetSharedObject => BodyKind::SharedObject,
            SetDeviceStateFd => BodyKind::DeviceState,
        }
    }

    /// The payload layout of this request's reply: its own reply for the explicit-reply set,
    /// a u64 ack otherwise. SET_LOG_BASE and GET_SHARED_OBJECT replies have no agreed size
    /// (checklist A17, A30), POSTCOPY_ADVISE's is empty.
    pub fn reply_body(self) -> BodyKind {
        use FrontendReq::*;
        match self {
            GetVringBase | GetVringBaseSkipDrain => BodyKind::VringState,
            GetConfig => BodyKind::Config,
            GetInflightFd => BodyKind::Inflight,
            GetShmemConfig => BodyKind::ShmemConfig,
            PostcopyAdvise => BodyKind::Empty,
            SetLogBase | GetSharedObject | CreateCryptoSession => BodyKind::Opaque,
            _ => BodyKind::U64,
        }
    }

    /// The payload size this request must have, where the layout fixes it.
    pub fn request_size(self) -> Option<usize> {
        self.request_body().fixed_size()
    }

    /// How many fds the request carries: `(min, max)`. KICK/CALL/ERR carry 0 or 1 depending on
    /// bit 8 of their payload (checklist 1.4); REM_MEM_REG should carry none but may carry one.
    pub fn fd_range(self) -> (usize, usize) {
        use FrontendReq::*;
        match self {
            SetMemTable => (0, super::payload::MAX_MEM_TABLE_REGIONS),
            SetVringKick | SetVringCall | SetVringErr | RemMemReg => (0, 1),
            SetLogBase | SetLogFd | SetBackendReqFd | SetInflightFd | SetDeviceStateFd
            | GpuSetSocket | AddMemReg => (1, 1),
            _ => (0, 0),
        }
    }

    /// The protocol feature that must be negotiated before this request may be sent
    /// (checklist section 2, "Gate"). Virtio-bit gates (IOTLB, RARP's bit 30) are the engine's.
    pub fn protocol_gate(self) -> Option<ProtocolFeatures> {
        use FrontendReq::*;
        Some(match self {
            GetQueueNum => ProtocolFeatures::MQ,
            SetLogBase => ProtocolFeatures::LOG_SHMFD,
            SendRarp => ProtocolFeatures::RARP,
            NetSetMtu => ProtocolFeatures::MTU,
            SetBackendReqFd => ProtocolFeatures::BACKEND_REQ,
            SetVringEndian => ProtocolFeatures::CROSS_ENDIAN,
            GetConfig | SetConfig => ProtocolFeatures::CONFIG,
            CreateCryptoSession | CloseCryptoSession => ProtocolFeatures::CRYPTO_SESSION,
            PostcopyAdvise | PostcopyListen | PostcopyEnd => ProtocolFeatures::PAGEFAULT,
            GetInflightFd | SetInflightFd => ProtocolFeatures::INFLIGHT_SHMFD,
            ResetDevice => ProtocolFeatures::RESET_DEVICE,
            VringKick => ProtocolFeatures::INBAND_NOTIFICATIONS,
            GetMaxMemSlots | AddMemReg | RemMemReg => ProtocolFeatures::CONFIGURE_MEM_SLOTS,
            SetStatus | GetStatus => ProtocolFeatures::STATUS,
            GetSharedObject => ProtocolFeatures::SHARED_OBJECT,
            SetDeviceStateFd | CheckDeviceState => ProtocolFeatures::DEVICE_STATE,
            GetShmemConfig => ProtocolFeatures::SHMEM,
            GetVringBaseSkipDrain => ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN,
            _ => return None,
        })
    }

    /// Every front-end request, in code order.
    pub fn all() -> impl Iterator<Item = Self> {
        (1..=45).filter_map(Self::n)
    }
}

impl BackendReq {
    /// Decodes a code, or says which code is unknown.
    pub fn from_code(code: u32) -> Result<Self, WireError> {
        Self::n(code).ok_or(WireError::UnknownBackendCode(code))
    }

    /// The spec's name (or the vendor's) of this request.
    pub fn spec_name(self) -> &'static str {
        use BackendReq::*;
        match self {
            IotlbMsg => "VHOST_USER_BACKEND_IOTLB_MSG",
            ConfigChangeMsg => "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG",
            VringHostNotifierMsg => "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG",
            VringCall => "VHOST_USER_BACKEND_VRING_CALL",
            VringErr => "VHOST_USER_BACKEND_VRING_ERR",
            SharedObjectAdd => "VHOST_USER_BACKEND_SHARED_OBJECT_ADD",
            SharedObjectRemove => "VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE",
            SharedObjectLookup => "VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP",
            ShmemMap => "VHOST_USER_BACKEND_SHMEM_MAP",
            ShmemUnmap => "VHOST_USER_BACKEND_SHMEM_UNMAP",
            CrosvmFsMap => "CROSVM_BACKEND_FS_MAP",
            CrosvmFsUnmap => "CROSVM_BACKEND_FS_UNMAP",
            CrosvmFsSync => "CROSVM_BACKEND_FS_SYNC",
            CrosvmFsIo => "CROSVM_BACKEND_FS_IO",
            CrosvmGpuMap => "CROSVM_BACKEND_GPU_MAP",
            CrosvmExternalMap => "CROSVM_BACKEND_EXTERNAL_MAP",
        }
    }

    /// The payload layout of this request (`Opaque` for the vendor codes, whose layouts are
    /// crosvm's own).
    pub fn request_body(self) -> BodyKind {
        use BackendReq::*;
        match self {
            IotlbMsg => BodyKind::Iotlb,
            ConfigChangeMsg => BodyKind::Empty,
            VringHostNotifierMsg => BodyKind::VringArea,
            VringCall | VringErr => BodyKind::VringState,
            SharedObjectAdd | SharedObjectRemove | SharedObjectLookup => BodyKind::SharedObject,
            ShmemMap | ShmemUnmap => BodyKind::ShmemMap,
            _ => BodyKind::Opaque,
        }
    }

    /// How many fds the request carries: `(min, max)` (checklist 1.4).
    pub fn fd_range(self) -> (usize, usize) {
        match self {
            Self::ShmemMap => (1, 1),
            Self::VringHostNotifierMsg => (0, 1),
            _ => (0, 0),
        }
    }

    /// Every back-end request code, the vendor codes included.
    pub fn all() -> impl Iterator<Item = Self> {
        (1..=10).chain(1002..=1007).filter_map(Self::n)
    }
}

const FRONTEND_NAMES: [&str; 45] = [
    "VHOST_USER_GET_FEATURES",
    "VHOST_USER_SET_FEATURES",
    "VHOST_USER_SET_OWNER",
    "VHOST_USER_RESET_OWNER",
    "VHOST_USER_SET_MEM_TABLE",
    "VHOST_USER_SET_LOG_BASE",
    "VHOST_USER_SET_LOG_FD",
    "VHOST_USER_SET_VRING_NUM",
    "VHOST_USER_SET_VRING_ADDR",
    "VHOST_USER_SET_VRING_BASE",
    "VHOST_USER_GET_VRING_BASE",
    "VHOST_USER_SET_VRING_KICK",
    "VHOST_USER_SET_VRING_CALL",
    "VHOST_USER_SET_VRING_ERR",
    "VHOST_USER_GET_PROTOCOL_FEATURES",
    "VHOST_USER_SET_PROTOCOL_FEATURES",
    "VHOST_USER_GET_QUEUE_NUM",
    "VHOST_USER_SET_VRING_ENABLE",
    "VHOST_USER_SEND_RARP",
    "VHOST_USER_NET_SET_MTU",
    "VHOST_USER_SET_BACKEND_REQ_FD",
    "VHOST_USER_IOTLB_MSG",
    "VHOST_USER_SET_VRING_ENDIAN",
    "VHOST_USER_GET_CONFIG",
    "VHOST_USER_SET_CONFIG",
    "VHOST_USER_CREATE_CRYPTO_SESSION",
    "VHOST_USER_CLOSE_CRYPTO_SESSION",
    "VHOST_USER_POSTCOPY_ADVISE",
    "VHOST_USER_POSTCOPY_LISTEN",
    "VHOST_USER_POSTCOPY_END",
    "VHOST_USER_GET_INFLIGHT_FD",
    "VHOST_USER_SET_INFLIGHT_FD",
    "VHOST_USER_GPU_SET_SOCKET",
    "VHOST_USER_RESET_DEVICE",
    "VHOST_USER_VRING_KICK",
    "VHOST_USER_GET_MAX_MEM_SLOTS",
    "VHOST_USER_ADD_MEM_REG",
    "VHOST_USER_REM_MEM_REG",
    "VHOST_USER_SET_STATUS",
    "VHOST_USER_GET_STATUS",
    "VHOST_USER_GET_SHARED_OBJECT",
    "VHOST_USER_SET_DEVICE_STATE_FD",
    "VHOST_USER_CHECK_DEVICE_STATE",
    "VHOST_USER_GET_SHMEM_CONFIG",
    "VHOST_USER_GET_VRING_BASE_SKIP_DRAIN",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frontend_code_from_1_to_45_decodes_and_names_itself() {
        for code in 1..=45u32 {
            let req = FrontendReq::from_code(code).unwrap();
            assert_eq!(req as u32, code);
            assert!(req.spec_name().starts_with("VHOST_USER_"));
        }
        assert_eq!(FrontendReq::all().count(), 45);
        assert_eq!(FrontendReq::SetDeviceStateFd as u32, 42);
        assert_eq!(
            FrontendReq::GetVringBaseSkipDrain.spec_name(),
            "VHOST_USER_GET_VRING_BASE_SKIP_DRAIN"
        );
    }

    #[test]
    fn unknown_codes_are_typed_errors_carrying_the_value() {
        assert_eq!(
            FrontendReq::from_code(0),
            Err(WireError::UnknownFrontendCode(0))
        );
        assert_eq!(
            FrontendReq::from_code(46),
            Err(WireError::UnknownFrontendCode(46))
        );
        assert_eq!(
            BackendReq::from_code(11),
            Err(WireError::UnknownBackendCode(11))
        );
        assert_eq!(BackendReq::from_code(9), Ok(BackendReq::ShmemMap));
        assert_eq!(BackendReq::from_code(10), Ok(BackendReq::ShmemUnmap));
        assert_eq!(BackendReq::all().count(), 16);
    }

    #[test]
    fn explicit_reply_set_matches_the_checklist() {
        let always: Vec<u32> = FrontendReq::all()
            .filter(|r| r.reply_kind() == ReplyKind::Always)
            .map(|r| r as u32)
            .collect();
        assert_eq!(
            always,
            [
                1, 6, 11, 15, 17, 22, 24, 26, 28, 30, 31, 36, 40, 41, 42, 43, 44, 45
            ]
        );
    }
}
