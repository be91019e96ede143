//! Named fault modes: each of [`ALL`] breaks one rule on purpose, so every check of the harness
//! is shown to catch what it claims to catch; each of [`VARIATIONS`] is a legal variation that
//! real back-ends show (the spec allows it), against which the harness must report no failure.
//! `--list-faults` prints both, the rule each fault breaks and the variations marked `legal`.
//!
//! The enum is here; the fault list ([`ALL`]) in `list.rs`, the legal variations in
//! `variations.rs`, names and parsing in `names.rs`, the active set and the device each fault
//! needs in `set.rs`, each device's share of the set in `groups.rs`, and the payload check of
//! `crash-on-lying-count` in `lies.rs`.

mod groups;
mod lies;
mod list;
mod names;
mod set;
mod variations;

pub use lies::count_lies;
pub use list::ALL;
pub use names::{listing, name, parse};
pub use set::{Faults, device};
pub use variations::VARIATIONS;

/// A deliberate departure from the reference behaviour: a broken rule, or a legal variation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Replies carry the request code + 1.
    WrongReplyCode,
    /// Replies echo NEED_REPLY (flags 0xD).
    ReplyFlagsNeedReply,
    /// Replies carry version 2.
    BadReplyVersion,
    /// NEED_REPLY is ignored: no ack.
    NoAck,
    /// Ack-only messages are acked even without NEED_REPLY.
    UnrequestedAck,
    /// SET_VRING_NUM is acked 1 although valid.
    NackValid,
    /// GET_QUEUE_NUM is never answered.
    NoReplyGetQueueNum,
    /// REM_MEM_REG matches guest address and size only (ignores the user address) and acks 0
    /// for regions that do not exist.
    LaxRemMemReg,
    /// GET_VRING_BASE returns the base SET_VRING_BASE gave, not the index reached.
    StaleVringBase,
    /// Used lengths are one more than the bytes written.
    WrongUsedLen,
    /// Reads write 16 bytes past the end of the last writable data buffer.
    WritePastDescriptor,
    /// fds on messages that take none are kept open.
    LeakFds,
    /// The process exits when the front-end disconnects.
    ExitOnDisconnect,
    /// An unknown request code aborts the process.
    CrashOnUnknownCode,
    /// SET_MEM_TABLE is never answered (the session hangs).
    HangSetMemTable,
    /// GET_CONFIG answers 4 bytes more than asked.
    ConfigWrongSize,
    /// GET_MAX_MEM_SLOTS answers 0.
    MaxMemSlotsZero,
    /// A ring index past the last queue aborts the process.
    CrashOnBadIndex,
    /// SET_FEATURES accepts bits that were not offered.
    AcceptUnofferedFeatures,
    /// SET_VRING_KICK/CALL/ERR accept bit 8 and the fd count disagreeing.
    IgnoreNoFdFlag,
    /// Started rings are processed even while disabled.
    IgnoreVringEnable,
    /// GET_VRING_BASE does not stop the ring.
    ProcessAfterStop,
    /// Completions are never signalled on the call eventfd.
    NoCall,
    /// Saved device state carries a wrong checksum, so it does not load.
    BadDeviceState,
    /// GET_SHMEM_CONFIG's nregions does not count the non-zero sizes.
    ShmemConfigCount,
    /// GET_FEATURES is never answered.
    NoReplyGetFeatures,
    /// REM_MEM_REG acks 0 but keeps the mapping and its fd.
    IgnoreRemMemReg,
    /// SET_VRING_ENABLE(1) starts a stopped ring (polled) without SET_VRING_KICK.
    ProcessBeforeKick,
    /// The SHMEM map device request maps one region size past the requested offset.
    ShmemOutOfRange,
    /// LOG_ALL is accepted but nothing is ever logged.
    NoDirtyLog,
    /// A second SET_LOG_BASE keeps the first log mapped.
    KeepOldLog,
    /// A reconnect with SET_INFLIGHT_FD forgets the requests recorded in flight.
    NoInflightResubmit,
    /// SHMEM_MAP is sent even when SHMEM was not negotiated.
    ShmemUnnegotiated,
    /// SHMEM_MAP is sent without NEED_REPLY although REPLY_ACK is negotiated.
    ShmemNoNeedReply,
    /// A SHMEM_MAP the front-end refuses aborts the process.
    CrashOnShmemRefusal,
    /// VRING_KICK messages are acked but do not make the ring look at new buffers.
    IgnoreVringKickMsg,
    /// Without a call fd, completions are not signalled in-band either.
    NoInbandCall,
    /// A vring message whose index is past the last queue kills the process with SIGSEGV.
    SegfaultOnBadIndex,
    /// net: received frames get the 10-byte legacy header, not virtio_net_hdr_v1.
    NetRxLegacyHeader,
    /// net: received headers carry num_buffers 0.
    NetNumBuffers0,
    /// net: transmit chains are used with the frame's length instead of 0.
    NetTxUsedLen,
    /// net: control chains are used with length 0 and no ack byte written.
    NetCtrlNoAck,
    /// net: received headers carry DATA_VALID although GUEST_CSUM was not negotiated.
    NetRxCsumFlag,
    /// rng: the used length is 16 bytes more than the writable buffers hold.
    RngUsedLenPastBuffer,
    /// rng: requests are used with length 0 and nothing written.
    RngZeroLen,
    /// rng: every byte written is 0x00.
    RngConstant,
    /// scmi: the response header carries the command's token + 1.
    ScmiTokenNotEchoed,
    /// scmi: an error status is followed by four zero bytes.
    ScmiErrorPadded,
    /// scmi: a protocol that is not implemented answers SUCCESS.
    ScmiUnknownProtocolSuccess,
    /// gpio: only the status byte of a response is written.
    GpioValueUnset,
    /// gpio: a line past the last one is answered OK.
    GpioPastEndOk,
    /// gpio: the names block's last name has no terminator.
    GpioNamesUnterminated,
    /// i2c: the status byte is 2, neither OK nor ERR.
    I2cBadStatus,
    /// i2c: VIRTIO_I2C_F_ZERO_LENGTH_REQUEST is not offered.
    I2cNoZeroLength,
    /// console: DEVICE_READY is not answered with DEVICE_ADD.
    ConsoleNoDeviceAdd,
    /// console: control messages are written 6 bytes long.
    ConsoleShortControl,
    /// console: transmitq chains are used with the bytes read as used length.
    ConsoleTxUsedLen,
    /// console: the config's max_nr_ports is 0.
    ConsoleMaxPortsZero,
    /// input: ID_DEVIDS answers size 16.
    InputDevidsSize,
    /// input: a select the spec does not define answers size 128.
    InputUnknownSelectSize,
    /// input: eventq buffers are used at once with length 0.
    InputEmptyEvents,
    /// sound: an information request past the announced items is answered OK.
    SoundBadStartOk,
    /// sound: control requests are used with length 0, no status written.
    SoundNoStatus,
    /// sound: PCM_INFO records carry a non-zero padding byte.
    SoundPcmPadding,
    /// sound: a control request of an undefined code is answered OK.
    SoundUnknownOk,
    /// gpu: GET_DISPLAY_INFO is answered OK_NODATA.
    GpuDisplayInfoNodata,
    /// gpu: the config space says 0 scanouts.
    GpuZeroScanouts,
    /// gpu: GET_EDID on the gpu socket without the EDID protocol feature set.
    GpuEdidUnnegotiated,
    /// fs: replies carry the request's unique + 1.
    FsUniqueNotEchoed,
    /// fs: the out header's len is 8 more than the bytes written.
    FsLenMismatch,
    /// fs: errors are answered as positive errnos (ENOENT as +2).
    FsPositiveErrno,
    /// fs: FORGET gets a reply: a used length of 16 even with no writable buffer.
    FsForgetReply,
    /// vsock: a REQUEST to a port nobody listens on gets no answer.
    VsockNoRst,
    /// vsock: rx packets carry dst_cid 0.
    VsockBadDstCid,
    /// vsock: host data is sent whatever the guest's credit.
    VsockCreditOverrun,
    /// A second SET_BACKEND_REQ_FD leaves the first channel socket open.
    KeepOldBackendChannel,
    /// A message whose bytes come in more than one read is not reassembled: the connection is
    /// closed.
    FrameByRead,
    /// SET_VRING_BASE or SET_VRING_ADDR before SET_VRING_NUM is refused.
    RequireNumFirst,
    /// SET_VRING_ENDIAN accepts any value.
    EndianAnyValue,
    /// ADD_MEM_REG accepts regions past GET_MAX_MEM_SLOTS.
    AcceptPastMaxSlots,
    /// GET_SHMEM_CONFIG reports a region size that is not a page multiple.
    ShmemSizeUnaligned,
    /// SET_CONFIG with flags 0 is acked but not stored.
    ConfigWriteInvisible,
    /// A ring started with buffers already available waits for a kick.
    WaitForKickAfterStart,
    /// ADD_MEM_REG and REM_MEM_REG are served without CONFIGURE_MEM_SLOTS negotiated.
    MemSlotsUnnegotiated,
    /// INBAND_NOTIFICATIONS without BACKEND_REQ and REPLY_ACK is accepted.
    InbandWithoutChannel,
    /// A socket path that cannot be bound is reported, and the process keeps running.
    KeepRunningWithoutSocket,
    /// With XEN_MMAP negotiated, memory regions are still read as 32 bytes.
    XenRegionsIgnored,
    /// With XEN_MMAP negotiated, the region flags are not checked: every region is mapped as
    /// plain shared memory.
    XenFlagsUnchecked,
    /// GPU_SET_SOCKET is accepted (acked 0), with or without its socket fd.
    AcceptGpuSocket,
    /// CLOSE_CRYPTO_SESSION is accepted without CRYPTO_SESSION negotiated.
    AcceptCryptoSession,
    /// GET_VRING_BASE_SKIP_DRAIN takes every available request and drops it: neither used nor
    /// recorded in flight.
    SkipDrainDrops,
    /// A SET_MEM_TABLE refused for its payload (a lying nregions) first unmaps the table in
    /// use.
    MemTableDroppedOnRefusal,
    // IOTLB (VIRTIO_F_ACCESS_PLATFORM, checklist 4.18)
    /// IOTLB_MSG is answered only when it carries NEED_REPLY, as an ack-only message.
    IotlbAckOnly,
    /// Ring and descriptor addresses are used as without ACCESS_PLATFORM (user and guest
    /// addresses), the IOTLB ignored.
    IotlbIgnored,
    /// Rings go through the IOTLB, but the buffers descriptors point at through the region
    /// guest addresses.
    IotlbGuestAddr,
    /// An access the IOTLB does not map is never reported: the ring just waits.
    IotlbNoMiss,
    /// IOTLB updates whose user range lies outside the memory table are accepted.
    IotlbAcceptOutside,
    /// IOTLB invalidations are answered 0 but the entries are kept.
    IotlbStale,
    /// A count inside a payload is trusted ([`count_lies`]): the process aborts, as a back-end
    /// reading past its buffer or mapping past a file would die.
    CrashOnLyingCount,
    /// Legal: after refusing a message (nacked if asked), the process exits with status 1.
    ExitAfterRefusal,
    /// Legal: after refusing a message (nacked if asked), that connection is closed.
    CloseAfterRefusal,
    /// Legal: the largest ring SET_VRING_NUM accepts is 64.
    MaxRing64,
    /// Legal: REPLY_ACK (and INBAND_NOTIFICATIONS, which needs it) are not offered.
    NoReplyAck,
    /// Legal: the device config space is 8 bytes long.
    Config8,
    /// Legal: VIRTIO_F_ACCESS_PLATFORM is not offered (no IOMMU support).
    NoAccessPlatform,
}
