//! The front-end departures the mock front-end can take, one per rule it breaks, and which of
//! them need the faulty back-end channel.

use clap::ValueEnum;

/// A front-end departure, each breaking the rule named.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FeFault {
    /// SET_FEATURES with a bit the back-end did not offer (R-FE-01).
    SetUnofferedFeature,
    /// SET_MEM_TABLE with two regions and one fd (R-FE-02).
    RegionWithoutFd,
    /// SET_VRING_KICK for ring 0 before its SET_VRING_ADDR (R-VRING-01).
    KickBeforeAddr,
    /// ADD_MEM_REG until one region more than GET_MAX_MEM_SLOTS answered (R-FE-04).
    ExceedMemSlots,
    /// REPLY_ACK left out of SET_PROTOCOL_FEATURES, then a request with NEED_REPLY (R-WIRE-06).
    NeedReplyWithoutReplyAck,
    /// A request with the REPLY flag set (R-WIRE-06).
    ReplyFlagOnRequest,
    /// A request with version 2 (R-WIRE-03).
    BadVersion,
    /// SET_VRING_NUM with a 4-byte payload (R-FE-02).
    ShortPayload,
    /// Memory and rings without SET_OWNER (R-NEG-09).
    NoSetOwner,
    /// MQ left out of SET_PROTOCOL_FEATURES, then GET_QUEUE_NUM (R-NEG-14).
    QueueNumWithoutMq,
    /// SET_VRING_NUM for the ring past the last (R-MQ-02).
    RingIndexPastEnd,
    /// Ring 0 started with its descriptor table outside the memory table (R-FE-05).
    RingOutsideMemory,
    /// SET_MEM_TABLE with two regions that overlap in guest space (R-MEM-04).
    OverlappingRegions,
    /// Goes on and starts ring 0 after the back-end refused the memory table (R-FE-06).
    IgnoreMemTableNack,
    /// Dies by SIGABRT when the back-end closes the connection (R-FE-07).
    AbortOnDisconnect,
    /// Hangs up when MQ is not offered (R-NEG-17).
    RequireMq,
    /// SET_VRING_ADDR with VHOST_VRING_F_LOG while VHOST_F_LOG_ALL is not set (R-LOG-01).
    VringLogWithoutLogAll,
    /// Serves the back-end channel but never replies, NEED_REPLY or not (R-ACK-08).
    ChannelNoAck,
    /// Replies on the back-end channel without the REPLY flag (R-WIRE-16).
    ChannelReplyWithoutReplyFlag,
    /// Acks an unknown back-end request code with 0, success (R-BCH-08).
    ChannelAcksUnknownCode,
    /// Serves the back-end channel only when no main-socket reply is awaited: a single
    /// thread that blocks on the main socket (R-BCH-07).
    ChannelOnlyWhenIdle,
    /// No kick after SET_VRING_KICK (and, as net, no request that would kick) (R-RING-05).
    NoInitialKick,
    /// GPA_ADDRESSES negotiated, but the regions keep user addresses apart from guest
    /// addresses (R-MEM-18).
    GpaWithUserAddresses,
    /// SET_DEVICE_STATE_FD while ring 0 still runs (R-MIG-03).
    StateWithRingRunning,
    /// POSTCOPY_LISTEN before POSTCOPY_ADVISE (R-PC-01).
    ListenBeforeAdvise,
    /// VRING_KICK without NEED_REPLY although REPLY_ACK is negotiated (R-INB-05).
    InbandKickWithoutNeedReply,
    /// Acks every IOTLB miss with 0 without sending the update (R-IOTLB-04).
    MissAckWithoutUpdate,
    /// On the reconnect, a fresh inflight buffer (GET_INFLIGHT_FD again) instead of the one
    /// the rings ran with (R-INFL-03).
    InflightFreshOnReconnect,
    /// Never acks SHMEM_MAP (R-SHM-06).
    ShmemNoAck,
    /// Acks a SHMEM_MAP that overlaps a mapping (R-SHM-07).
    ShmemAcceptsOverlap,
    /// Acks a SHMEM_MAP with unknown flag bits or length 0 (R-SHM-14).
    ShmemAcceptsBadFlags,
    /// Acks a SHMEM_UNMAP of any range that touches a mapping (R-SHM-08).
    ShmemUnmapAnyRange,
    /// After the memory table is refused, neither goes on nor leaves: the whole front-end
    /// stops, its channel too (a hang, R-ACK-08).
    HangAfterNack,
}

impl FeFault {
    pub(super) fn own_channel(self) -> bool {
        matches!(
            self,
            Self::ChannelNoAck
                | Self::ChannelReplyWithoutReplyFlag
                | Self::ChannelAcksUnknownCode
                | Self::ChannelOnlyWhenIdle
                | Self::MissAckWithoutUpdate
                | Self::ShmemNoAck
                | Self::ShmemAcceptsOverlap
                | Self::ShmemAcceptsBadFlags
                | Self::ShmemUnmapAnyRange
                | Self::HangAfterNack
        )
    }
}
