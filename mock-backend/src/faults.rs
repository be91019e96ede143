//! Named fault modes: each of [`ALL`] breaks one rule on purpose, so every check of the harness
//! is shown to catch what it claims to catch; each of [`VARIATIONS`] is a legal variation that
//! real back-ends show (the spec allows it), against which the harness must report no failure.
//! `--list-faults` prints both, the rule each fault breaks and the variations marked `legal`.

use crate::cli::DeviceKind;

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

/// Every fault: name, the rule it breaks, what it does.
pub const ALL: &[(Fault, &str, &str, &str)] = &[
    (
        Fault::WrongReplyCode,
        "wrong-reply-code",
        "R-WIRE-05",
        "replies carry the request code + 1",
    ),
    (
        Fault::ReplyFlagsNeedReply,
        "reply-flags-need-reply",
        "R-WIRE-04",
        "replies echo NEED_REPLY (flags 0xd)",
    ),
    (
        Fault::BadReplyVersion,
        "bad-reply-version",
        "R-WIRE-03",
        "replies carry version 2",
    ),
    (
        Fault::NoAck,
        "no-ack",
        "R-ACK-01",
        "NEED_REPLY is ignored: no ack",
    ),
    (
        Fault::UnrequestedAck,
        "unrequested-ack",
        "R-ACK-03",
        "ack-only messages are acked without NEED_REPLY",
    ),
    (
        Fault::NackValid,
        "nack-valid",
        "R-ACK-01",
        "a valid SET_VRING_NUM is acked 1",
    ),
    (
        Fault::NoReplyGetQueueNum,
        "no-reply-get-queue-num",
        "R-MQ-01",
        "GET_QUEUE_NUM is never answered",
    ),
    (
        Fault::LaxRemMemReg,
        "lax-rem-mem-reg",
        "R-MEM-11",
        "REM_MEM_REG ignores the user address and acks 0 for unknown regions",
    ),
    (
        Fault::StaleVringBase,
        "stale-vring-base",
        "R-VRING-08",
        "GET_VRING_BASE returns the initial base",
    ),
    (
        Fault::WrongUsedLen,
        "wrong-used-len",
        "R-RING-07",
        "used lengths are one too large",
    ),
    (
        Fault::WritePastDescriptor,
        "write-past-descriptor",
        "R-RING-07",
        "reads write 16 bytes past the last writable buffer",
    ),
    (
        Fault::LeakFds,
        "leak-fds",
        "R-WIRE-09",
        "fds on messages that take none are kept",
    ),
    (
        Fault::ExitOnDisconnect,
        "exit-on-disconnect",
        "R-ROB-09",
        "the process exits when the front-end disconnects",
    ),
    (
        Fault::CrashOnUnknownCode,
        "crash-on-unknown-code",
        "R-ROB-01",
        "an unknown request code aborts the process",
    ),
    (
        Fault::HangSetMemTable,
        "hang-set-mem-table",
        "R-ACK-01",
        "SET_MEM_TABLE is never answered",
    ),
    (
        Fault::ConfigWrongSize,
        "config-wrong-size",
        "R-CFG-01",
        "GET_CONFIG answers 4 bytes more than asked",
    ),
    (
        Fault::MaxMemSlotsZero,
        "max-mem-slots-zero",
        "R-MEM-07",
        "GET_MAX_MEM_SLOTS answers 0",
    ),
    (
        Fault::CrashOnBadIndex,
        "crash-on-bad-index",
        "R-VRING-17",
        "a ring index past the last queue aborts the process",
    ),
    (
        Fault::AcceptUnofferedFeatures,
        "accept-unoffered-features",
        "R-NEG-06",
        "SET_FEATURES accepts bits that were not offered",
    ),
    (
        Fault::IgnoreNoFdFlag,
        "ignore-no-fd-flag",
        "R-VRING-11",
        "KICK/CALL/ERR accept bit 8 disagreeing with the fds",
    ),
    (
        Fault::IgnoreVringEnable,
        "ignore-vring-enable",
        "R-RING-10",
        "started rings are processed while disabled",
    ),
    (
        Fault::ProcessAfterStop,
        "process-after-stop",
        "R-RING-11",
        "GET_VRING_BASE replies but the ring keeps running",
    ),
    (
        Fault::NoCall,
        "no-call",
        "R-RING-07",
        "completions are never signalled on the call eventfd",
    ),
    (
        Fault::BadDeviceState,
        "bad-device-state",
        "R-MIG-11",
        "saved device state does not load into another process",
    ),
    (
        Fault::ShmemConfigCount,
        "shmem-config-count",
        "R-SHM-02",
        "GET_SHMEM_CONFIG's nregions is one more than the regions declared",
    ),
    (
        Fault::NoReplyGetFeatures,
        "no-reply-get-features",
        "R-NEG-01",
        "GET_FEATURES is never answered",
    ),
    (
        Fault::IgnoreRemMemReg,
        "ignore-rem-mem-reg",
        "R-MEM-11",
        "REM_MEM_REG acks 0 but keeps the mapping and its fd",
    ),
    (
        Fault::ProcessBeforeKick,
        "process-before-kick",
        "R-RING-02",
        "SET_VRING_ENABLE(1) starts a stopped ring (polled) without SET_VRING_KICK",
    ),
    (
        Fault::ShmemOutOfRange,
        "shmem-out-of-range",
        "R-SHM-05",
        "the SHMEM map device request maps outside the declared region",
    ),
    (
        Fault::NoDirtyLog,
        "no-dirty-log",
        "R-LOG-04",
        "LOG_ALL is accepted but guest writes are never logged",
    ),
    (
        Fault::KeepOldLog,
        "keep-old-log",
        "R-LOG-07",
        "a second SET_LOG_BASE keeps the first log mapped and open",
    ),
    (
        Fault::NoInflightResubmit,
        "no-inflight-resubmit",
        "R-INFL-05",
        "requests recorded in flight are never resubmitted after a reconnect",
    ),
    (
        Fault::ShmemUnnegotiated,
        "shmem-unnegotiated",
        "R-SHM-10",
        "SHMEM_MAP is sent although SHMEM was not negotiated",
    ),
    (
        Fault::ShmemNoNeedReply,
        "shmem-no-need-reply",
        "R-SHM-11",
        "SHMEM_MAP is sent without NEED_REPLY although REPLY_ACK is negotiated",
    ),
    (
        Fault::CrashOnShmemRefusal,
        "crash-on-shmem-refusal",
        "R-SHM-12",
        "a SHMEM_MAP the front-end refuses aborts the process",
    ),
    (
        Fault::IgnoreVringKickMsg,
        "ignore-vring-kick-msg",
        "R-INB-02",
        "VRING_KICK messages are acked but never process the ring",
    ),
    (
        Fault::NoInbandCall,
        "no-inband-call",
        "R-INB-04",
        "without a call fd, completions are never signalled with BACKEND_VRING_CALL",
    ),
    (
        Fault::SegfaultOnBadIndex,
        "segfault-on-bad-index",
        "R-CRASH-01",
        "a vring message with a ring index past the last queue kills the process with SIGSEGV",
    ),
    (
        Fault::NetRxLegacyHeader,
        "net-rx-legacy-header",
        "R-NET-02",
        "--device net: received frames get the 10-byte legacy header, not virtio_net_hdr_v1",
    ),
    (
        Fault::NetNumBuffers0,
        "net-num-buffers-0",
        "R-NET-03",
        "--device net: received headers carry num_buffers 0",
    ),
    (
        Fault::NetTxUsedLen,
        "net-tx-used-len",
        "R-NET-01",
        "--device net: transmit chains are used with the frame's length instead of 0",
    ),
    (
        Fault::NetCtrlNoAck,
        "net-ctrl-no-ack",
        "R-NET-06",
        "--device net: control commands are used with length 0, no ack byte written",
    ),
    (
        Fault::NetRxCsumFlag,
        "net-rx-csum-flag",
        "R-NET-04",
        "--device net: received headers carry DATA_VALID without GUEST_CSUM negotiated",
    ),
    (
        Fault::RngUsedLenPastBuffer,
        "rng-used-len-past-buffer",
        "R-DEV-02",
        "--device rng: the used length is the writable buffers' size + 16",
    ),
    (
        Fault::RngZeroLen,
        "rng-zero-len",
        "R-RNG-01",
        "--device rng: requests are used with length 0, nothing written",
    ),
    (
        Fault::RngConstant,
        "rng-constant",
        "R-RNG-02",
        "--device rng: every random byte is 0x00",
    ),
    (
        Fault::ScmiTokenNotEchoed,
        "scmi-token-not-echoed",
        "R-SCMI-01",
        "--device scmi: the response header carries the command's token + 1",
    ),
    (
        Fault::ScmiErrorPadded,
        "scmi-error-padded",
        "R-SCMI-02",
        "--device scmi: an error status is followed by four zero bytes of return values",
    ),
    (
        Fault::ScmiUnknownProtocolSuccess,
        "scmi-unknown-protocol-success",
        "R-SCMI-04",
        "--device scmi: a command of a protocol not implemented is answered SUCCESS",
    ),
    (
        Fault::GpioValueUnset,
        "gpio-value-unset",
        "R-GPIO-01",
        "--device gpio: only the status byte of a response is written, not its value",
    ),
    (
        Fault::GpioPastEndOk,
        "gpio-past-end-ok",
        "R-GPIO-05",
        "--device gpio: a request for a line past ngpio is answered OK",
    ),
    (
        Fault::GpioNamesUnterminated,
        "gpio-names-unterminated",
        "R-GPIO-03",
        "--device gpio: the last line name of GET_LINE_NAMES has no terminator",
    ),
    (
        Fault::I2cBadStatus,
        "i2c-bad-status",
        "R-I2C-01",
        "--device i2c: the status byte is 2, neither VIRTIO_I2C_MSG_OK nor _ERR",
    ),
    (
        Fault::I2cNoZeroLength,
        "i2c-no-zero-length",
        "R-I2C-02",
        "--device i2c: VIRTIO_I2C_F_ZERO_LENGTH_REQUEST (bit 0) is not offered",
    ),
    (
        Fault::ConsoleNoDeviceAdd,
        "console-no-device-add",
        "R-CONSOLE-01",
        "--device console: DEVICE_READY is consumed but no DEVICE_ADD follows",
    ),
    (
        Fault::ConsoleShortControl,
        "console-short-control",
        "R-CONSOLE-02",
        "--device console: control messages are written 6 bytes long, the value left out",
    ),
    (
        Fault::ConsoleTxUsedLen,
        "console-tx-used-len",
        "R-DEV-02",
        "--device console: transmitq chains are used with the bytes read as used length",
    ),
    (
        Fault::ConsoleMaxPortsZero,
        "console-max-ports-zero",
        "R-CONSOLE-04",
        "--device console: the config's max_nr_ports is 0 although MULTIPORT is offered",
    ),
    (
        Fault::InputDevidsSize,
        "input-devids-size",
        "R-INPUT-01",
        "--device input: ID_DEVIDS answers size 16, not the 8 bytes of virtio_input_devids",
    ),
    (
        Fault::InputUnknownSelectSize,
        "input-unknown-select-size",
        "R-INPUT-02",
        "--device input: a select the spec does not define answers size 128",
    ),
    (
        Fault::InputEmptyEvents,
        "input-empty-events",
        "R-INPUT-03",
        "--device input: posted eventq buffers are used at once with length 0, nothing written",
    ),
    (
        Fault::SoundBadStartOk,
        "sound-bad-start-ok",
        "R-SND-03",
        "--device sound: JACK/PCM/CHMAP_INFO past the announced items answered OK with zeroed records",
    ),
    (
        Fault::SoundNoStatus,
        "sound-no-status",
        "R-SND-01",
        "--device sound: control requests are used with length 0, no status code written",
    ),
    (
        Fault::SoundPcmPadding,
        "sound-pcm-padding",
        "R-SND-04",
        "--device sound: PCM_INFO records carry a padding byte of 0xff",
    ),
    (
        Fault::SoundUnknownOk,
        "sound-unknown-ok",
        "R-SND-07",
        "--device sound: a control request of an undefined code is answered OK",
    ),
    (
        Fault::GpuDisplayInfoNodata,
        "gpu-display-info-nodata",
        "R-GPU-01",
        "--device gpu: GET_DISPLAY_INFO answered OK_NODATA, a bare 24-byte header",
    ),
    (
        Fault::GpuZeroScanouts,
        "gpu-zero-scanouts",
        "R-GPU-02",
        "--device gpu: the config space's num_scanouts is 0",
    ),
    (
        Fault::GpuEdidUnnegotiated,
        "gpu-edid-unnegotiated",
        "R-GPU-03",
        "--device gpu: GET_EDID sent on the gpu socket without SET_PROTOCOL_FEATURES of F_EDID",
    ),
    (
        Fault::FsUniqueNotEchoed,
        "fs-unique-not-echoed",
        "R-FS-01",
        "--device fs: replies carry the request's unique + 1",
    ),
    (
        Fault::FsLenMismatch,
        "fs-len-mismatch",
        "R-FS-01",
        "--device fs: the out header's len is 8 more than the bytes written (the used length)",
    ),
    (
        Fault::FsPositiveErrno,
        "fs-positive-errno",
        "R-FS-03",
        "--device fs: errors are answered as positive errnos (ENOENT as +2)",
    ),
    (
        Fault::FsForgetReply,
        "fs-forget-reply",
        "R-FS-06",
        "--device fs: FORGET gets a 16-byte reply, used length 16 even with no writable buffer",
    ),
    (
        Fault::VsockNoRst,
        "vsock-no-rst",
        "R-VSOCK-01",
        "--device vsock: a REQUEST to a port nobody listens on gets no answer",
    ),
    (
        Fault::VsockBadDstCid,
        "vsock-bad-dst-cid",
        "R-VSOCK-02",
        "--device vsock: every rx packet carries dst_cid 0",
    ),
    (
        Fault::VsockCreditOverrun,
        "vsock-credit-overrun",
        "R-VSOCK-07",
        "--device vsock: host data is sent to the guest whatever its credit",
    ),
    (
        Fault::KeepOldBackendChannel,
        "keep-old-backend-channel",
        "R-BCH-10",
        "a second SET_BACKEND_REQ_FD leaves the first channel socket open",
    ),
    (
        Fault::FrameByRead,
        "frame-by-read",
        "R-WIRE-07",
        "a message split over several reads closes the connection",
    ),
    (
        Fault::RequireNumFirst,
        "require-num-first",
        "R-VRING-15",
        "SET_VRING_BASE or SET_VRING_ADDR before SET_VRING_NUM is refused",
    ),
    (
        Fault::EndianAnyValue,
        "endian-any-value",
        "R-VRING-18",
        "SET_VRING_ENDIAN accepts any value",
    ),
    (
        Fault::AcceptPastMaxSlots,
        "accept-past-max-slots",
        "R-MEM-10",
        "ADD_MEM_REG accepts regions past GET_MAX_MEM_SLOTS",
    ),
    (
        Fault::ShmemSizeUnaligned,
        "shmem-size-unaligned",
        "R-SHM-03",
        "GET_SHMEM_CONFIG reports each size one byte larger (not a page multiple)",
    ),
    (
        Fault::ConfigWriteInvisible,
        "config-write-invisible",
        "R-CFG-04",
        "SET_CONFIG with flags 0 is acked but not stored",
    ),
    (
        Fault::WaitForKickAfterStart,
        "wait-for-kick-after-start",
        "R-RING-04",
        "a ring started with buffers available waits for a kick",
    ),
    (
        Fault::MemSlotsUnnegotiated,
        "mem-slots-unnegotiated",
        "R-NEG-11",
        "ADD/REM_MEM_REG are served without CONFIGURE_MEM_SLOTS negotiated",
    ),
    (
        Fault::InbandWithoutChannel,
        "inband-without-channel",
        "R-NEG-12",
        "INBAND_NOTIFICATIONS without BACKEND_REQ and REPLY_ACK is accepted",
    ),
    (
        Fault::KeepRunningWithoutSocket,
        "keep-running-without-socket",
        "R-PROG-08",
        "a socket path that cannot be bound is reported and the process keeps running",
    ),
    (
        Fault::XenRegionsIgnored,
        "xen-regions-ignored",
        "R-MEM-17",
        "with XEN_MMAP negotiated, memory regions are still read as 32 bytes",
    ),
    (
        Fault::XenFlagsUnchecked,
        "xen-flags-unchecked",
        "R-MISC-06",
        "with XEN_MMAP negotiated, region flags are not checked (mapped as plain memory)",
    ),
    (
        Fault::AcceptGpuSocket,
        "accept-gpu-socket",
        "R-MISC-03",
        "GPU_SET_SOCKET is acked 0, with or without its socket fd",
    ),
    (
        Fault::AcceptCryptoSession,
        "accept-crypto-session",
        "R-MISC-05",
        "CLOSE_CRYPTO_SESSION is acked 0 without CRYPTO_SESSION negotiated",
    ),
    (
        Fault::SkipDrainDrops,
        "skip-drain-drops",
        "R-INFL-07",
        "GET_VRING_BASE_SKIP_DRAIN takes the available requests and drops them (not used, not in flight)",
    ),
    (
        Fault::MemTableDroppedOnRefusal,
        "mem-table-dropped-on-refusal",
        "R-WIRE-12",
        "a SET_MEM_TABLE refused for a lying nregions first unmaps the table in use",
    ),
    // IOTLB (VIRTIO_F_ACCESS_PLATFORM): caught by the iotlb/* scenarios.
    (
        Fault::IotlbAckOnly,
        "iotlb-ack-only",
        "R-IOTLB-02",
        "IOTLB_MSG is answered only when it carries NEED_REPLY",
    ),
    (
        Fault::IotlbIgnored,
        "iotlb-ignored",
        "R-IOTLB-03",
        "ring and descriptor addresses are taken as user and guest addresses, the IOTLB ignored",
    ),
    (
        Fault::IotlbGuestAddr,
        "iotlb-guest-addr",
        "R-MEM-19",
        "buffers are reached through the region guest addresses, not the IOTLB",
    ),
    (
        Fault::IotlbNoMiss,
        "iotlb-no-miss",
        "R-IOTLB-03",
        "an access the IOTLB does not map is never reported as a miss; the ring waits",
    ),
    (
        Fault::IotlbAcceptOutside,
        "iotlb-accept-outside",
        "R-IOTLB-05",
        "IOTLB updates whose user range is outside the memory table are accepted",
    ),
    (
        Fault::IotlbStale,
        "iotlb-stale",
        "R-IOTLB-03",
        "IOTLB invalidations are answered 0 but the entries are kept",
    ),
    (
        Fault::CrashOnLyingCount,
        "crash-on-lying-count",
        "R-CRASH-01",
        "a payload count past what the payload holds or the protocol allows (SET_MEM_TABLE \
         nregions, GET/SET_CONFIG size, inflight counts and area, GET_SHMEM_CONFIG nregions) \
         aborts the process",
    ),
];

/// `crash-on-lying-count`: whether a count field of `req`'s payload says more than the payload
/// holds or the protocol allows: SET_MEM_TABLE's `nregions` past the regions sent, past 8 or
/// not the number of fds; GET/SET_CONFIG's `size` past the bytes after its header or past
/// 256; the inflight description's `num_queues` past the device's `queues` or `queue_size`
/// past 32768, or (SET_INFLIGHT_FD) its area past the end of the fd or smaller than those
/// rings need; GET_SHMEM_CONFIG's (unexpected) `nregions` past 256 or past the sizes sent.
pub fn count_lies(
    req: vhu_protocol::FrontendReq,
    payload: &[u8],
    fds: &[std::os::fd::OwnedFd],
    queues: usize,
) -> bool {
    use vhu_protocol::FrontendReq::*;
    let le = |at: usize, n: usize| {
        payload
            .get(at..at + n)
            .map(|b| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    let past = |n: u64, max: u64| n > max;
    match req {
        SetMemTable => le(0, 4).is_some_and(|n| {
            let present = (payload.len().saturating_sub(8) / 32) as u64;
            past(n, present) || past(n, 8) || n != fds.len() as u64
        }),
        GetConfig | SetConfig => le(4, 4).is_some_and(|size| {
            past(size, payload.len().saturating_sub(12) as u64) || past(size, 256)
        }),
        GetInflightFd | SetInflightFd => {
            let (Some(size), Some(offset), Some(n), Some(q)) =
                (le(0, 8), le(8, 8), le(16, 2), le(18, 2))
            else {
                return false;
            };
            let fd_len = fds
                .first()
                .and_then(|fd| nix::sys::stat::fstat(fd).ok())
                .map(|st| st.st_size as u64);
            let area_lies = req == SetInflightFd
                && fd_len.is_some_and(|len| {
                    past(size.saturating_add(offset), len) || size < n * (16 + 16 * q)
                });
            past(n, queues as u64) || past(q, 0x8000) || area_lies
        }
        GetShmemConfig => le(0, 4)
            .is_some_and(|n| past(n, 256) || past(n, (payload.len().saturating_sub(8) / 8) as u64)),
        _ => false,
    }
}

/// The only device a fault makes sense with (`None`: every device). The data-path faults of
/// blk, and those of the blk-only SHMEM, inflight and device state features, are blk's.
pub fn device(f: Fault) -> Option<DeviceKind> {
    use Fault::*;
    match f {
        WrongUsedLen | WritePastDescriptor | BadDeviceState | ShmemConfigCount
        | ShmemOutOfRange | NoInflightResubmit | ShmemUnnegotiated | ShmemNoNeedReply
        | CrashOnShmemRefusal | ShmemSizeUnaligned | ConfigWriteInvisible | SkipDrainDrops => {
            Some(DeviceKind::Blk)
        }
        NetRxLegacyHeader | NetNumBuffers0 | NetTxUsedLen | NetCtrlNoAck | NetRxCsumFlag => {
            Some(DeviceKind::Net)
        }
        RngUsedLenPastBuffer | RngZeroLen | RngConstant => Some(DeviceKind::Rng),
        ScmiTokenNotEchoed | ScmiErrorPadded | ScmiUnknownProtocolSuccess => Some(DeviceKind::Scmi),
        GpioValueUnset | GpioPastEndOk | GpioNamesUnterminated => Some(DeviceKind::Gpio),
        I2cBadStatus | I2cNoZeroLength => Some(DeviceKind::I2c),
        SoundBadStartOk | SoundNoStatus | SoundPcmPadding | SoundUnknownOk => {
            Some(DeviceKind::Sound)
        }
        GpuDisplayInfoNodata | GpuZeroScanouts | GpuEdidUnnegotiated => Some(DeviceKind::Gpu),
        FsUniqueNotEchoed | FsLenMismatch | FsPositiveErrno | FsForgetReply => Some(DeviceKind::Fs),
        VsockNoRst | VsockBadDstCid | VsockCreditOverrun => Some(DeviceKind::Vsock),
        ConsoleNoDeviceAdd | ConsoleShortControl | ConsoleTxUsedLen | ConsoleMaxPortsZero => {
            Some(DeviceKind::Console)
        }
        InputDevidsSize | InputUnknownSelectSize | InputEmptyEvents => Some(DeviceKind::Input),
        _ => None,
    }
}

/// The name of a fault (or variation).
pub fn name(f: Fault) -> &'static str {
    names().find(|n| n.0 == f).map_or("?", |n| n.1)
}

/// Legal variations of real back-ends: name, what it does. None breaks a rule, so the whole
/// suite against any of them must give no failure and no error (`exit-on-disconnect` is also in
/// [`ALL`]: R-ROB-09 is a robustness rule, worth a warning, never a failure).
pub const VARIATIONS: &[(Fault, &str, &str)] = &[
    (
        Fault::ExitAfterRefusal,
        "exit-after-refusal",
        "after refusing a message (the nack sent if NEED_REPLY asked for one) the process \
         exits with status 1",
    ),
    (
        Fault::CloseAfterRefusal,
        "close-after-refusal",
        "after refusing a message (the nack sent if NEED_REPLY asked for one) that connection \
         is closed; the next front-end is served",
    ),
    (
        Fault::ExitOnDisconnect,
        "exit-on-disconnect",
        "the process exits 0 when the front-end disconnects (warns under R-ROB-09)",
    ),
    (
        Fault::MaxRing64,
        "max-ring-64",
        "SET_VRING_NUM above 64 is refused (as --queue-size-max 64)",
    ),
    (
        Fault::NoReplyAck,
        "no-reply-ack",
        "REPLY_ACK (bit 3) and INBAND_NOTIFICATIONS, which needs it, are not offered",
    ),
    (
        Fault::NoAccessPlatform,
        "no-access-platform",
        "VIRTIO_F_ACCESS_PLATFORM (bit 33) is not offered (no IOMMU support): the iotlb/* \
         scenarios are skipped naming the bit",
    ),
    (
        Fault::Config8,
        "config-8",
        "the config space is 8 bytes: GET_CONFIG past it gets the empty error reply, \
         SET_CONFIG past it is refused",
    ),
];

/// Parses a fault name.
///
/// # Errors
/// An unknown name, with the list of known ones.
pub fn parse(name: &str) -> Result<Fault, String> {
    names().find(|f| f.1 == name).map(|f| f.0).ok_or_else(|| {
        let known: Vec<&str> = names().map(|f| f.1).collect();
        format!("unknown fault {name:?}; known: {}", known.join(", "))
    })
}

/// Every name `--fault` takes, once each (a fault of both lists is listed with its rule).
fn names() -> impl Iterator<Item = (Fault, &'static str)> {
    let variations = VARIATIONS
        .iter()
        .filter(|v| !ALL.iter().any(|f| f.0 == v.0))
        .map(|v| (v.0, v.1));
    ALL.iter().map(|f| (f.0, f.1)).chain(variations)
}

/// The `--list-faults` lines: name, the rule broken (or `legal`), what it does; the faults
/// first, then the legal variations.
pub fn listing() -> Vec<String> {
    let faults = ALL
        .iter()
        .map(|(_, name, rule, what)| format!("{name:<26} {rule:<11} {what}"));
    let legal = VARIATIONS
        .iter()
        .map(|(_, name, what)| format!("{name:<26} {:<11} {what}", "legal"));
    faults.chain(legal).collect()
}

/// The set of active faults.
#[derive(Clone, Debug, Default)]
pub struct Faults(Vec<Fault>);

impl Faults {
    /// From parsed faults.
    pub fn new(f: Vec<Fault>) -> Self {
        Self(f)
    }

    /// Whether a fault is active.
    pub fn has(&self, f: Fault) -> bool {
        self.0.contains(&f)
    }

    /// Refuses a fault made for another device than `kind`.
    ///
    /// # Errors
    /// The first such fault, with the device it needs.
    pub fn check_device(&self, kind: DeviceKind) -> Result<(), String> {
        match self
            .0
            .iter()
            .find(|&&f| device(f).is_some_and(|d| d != kind))
        {
            Some(&f) => Err(format!(
                "fault {} needs --device {}, not --device {}",
                name(f),
                device(f).map_or("?", DeviceKind::name),
                kind.name()
            )),
            None => Ok(()),
        }
    }

    /// The net device's share of the faults.
    pub fn net(&self) -> vhu_mock_device::NetFaults {
        vhu_mock_device::NetFaults {
            rx_legacy_header: self.has(Fault::NetRxLegacyHeader),
            num_buffers_0: self.has(Fault::NetNumBuffers0),
            tx_used_len: self.has(Fault::NetTxUsedLen),
            ctrl_no_ack: self.has(Fault::NetCtrlNoAck),
            rx_csum_flag: self.has(Fault::NetRxCsumFlag),
        }
    }

    /// The fs device's share of the faults.
    pub fn fs(&self) -> vhu_mock_device::FsFaults {
        vhu_mock_device::FsFaults {
            unique_not_echoed: self.has(Fault::FsUniqueNotEchoed),
            len_mismatch: self.has(Fault::FsLenMismatch),
            positive_errno: self.has(Fault::FsPositiveErrno),
            forget_reply: self.has(Fault::FsForgetReply),
        }
    }

    /// The vsock device's share of the faults.
    pub fn vsock(&self) -> vhu_mock_device::VsockFaults {
        vhu_mock_device::VsockFaults {
            no_rst: self.has(Fault::VsockNoRst),
            bad_dst_cid: self.has(Fault::VsockBadDstCid),
            credit_overrun: self.has(Fault::VsockCreditOverrun),
        }
    }

    /// The i2c device's share of the faults.
    pub fn i2c(&self) -> vhu_mock_device::I2cFaults {
        vhu_mock_device::I2cFaults {
            bad_status: self.has(Fault::I2cBadStatus),
            no_zero_length: self.has(Fault::I2cNoZeroLength),
        }
    }

    /// The gpio device's share of the faults.
    pub fn gpio(&self) -> vhu_mock_device::GpioFaults {
        vhu_mock_device::GpioFaults {
            value_unset: self.has(Fault::GpioValueUnset),
            past_end_ok: self.has(Fault::GpioPastEndOk),
            names_unterminated: self.has(Fault::GpioNamesUnterminated),
        }
    }

    /// The scmi device's share of the faults.
    pub fn scmi(&self) -> vhu_mock_device::ScmiFaults {
        vhu_mock_device::ScmiFaults {
            token_not_echoed: self.has(Fault::ScmiTokenNotEchoed),
            error_padded: self.has(Fault::ScmiErrorPadded),
            unknown_protocol_success: self.has(Fault::ScmiUnknownProtocolSuccess),
        }
    }

    /// The console device's share of the faults.
    pub fn console(&self) -> vhu_mock_device::ConsoleFaults {
        vhu_mock_device::ConsoleFaults {
            no_device_add: self.has(Fault::ConsoleNoDeviceAdd),
            short_control: self.has(Fault::ConsoleShortControl),
            tx_used_len: self.has(Fault::ConsoleTxUsedLen),
            max_ports_zero: self.has(Fault::ConsoleMaxPortsZero),
        }
    }

    /// The input device's share of the faults.
    pub fn input(&self) -> vhu_mock_device::InputFaults {
        vhu_mock_device::InputFaults {
            devids_size: self.has(Fault::InputDevidsSize),
            unknown_select_size: self.has(Fault::InputUnknownSelectSize),
            empty_events: self.has(Fault::InputEmptyEvents),
        }
    }

    /// The gpu device's share of the faults.
    pub fn gpu(&self) -> vhu_mock_device::GpuFaults {
        vhu_mock_device::GpuFaults {
            display_info_nodata: self.has(Fault::GpuDisplayInfoNodata),
            zero_scanouts: self.has(Fault::GpuZeroScanouts),
            edid_unnegotiated: self.has(Fault::GpuEdidUnnegotiated),
        }
    }

    /// The sound device's share of the faults.
    pub fn sound(&self) -> vhu_mock_device::SoundFaults {
        vhu_mock_device::SoundFaults {
            bad_start_ok: self.has(Fault::SoundBadStartOk),
            no_status: self.has(Fault::SoundNoStatus),
            pcm_padding: self.has(Fault::SoundPcmPadding),
            unknown_ok: self.has(Fault::SoundUnknownOk),
        }
    }

    /// The rng device's share of the faults.
    pub fn rng(&self) -> vhu_mock_device::RngFaults {
        vhu_mock_device::RngFaults {
            used_len_past_buffer: self.has(Fault::RngUsedLenPastBuffer),
            zero_len: self.has(Fault::RngZeroLen),
            constant: self.has(Fault::RngConstant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_has_a_unique_kebab_case_name_and_a_rule_id() {
        let mut names: Vec<&str> = ALL.iter().map(|f| f.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.len() >= 20);
        for (fault, name, rule, what) in ALL {
            assert_eq!(parse(name), Ok(*fault));
            assert!(
                // Kebab case: lowercase words, digits allowed (as in `max-ring-64`).
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.starts_with('-')
                    && !name.ends_with('-')
                    && !name.contains("--"),
                "{name}"
            );
            assert!(rule.starts_with("R-") && !what.is_empty(), "{name}");
        }
        assert!(parse("no-such-fault").is_err());
    }

    #[test]
    fn device_faults_say_their_device_and_are_refused_with_another() {
        for (fault, name, _, what) in ALL {
            if let Some(d) = device(*fault).filter(|&d| d != DeviceKind::Blk) {
                assert!(what.contains(&format!("--device {}", d.name())), "{name}");
                assert!(name.starts_with(d.name()), "{name}");
                let one = Faults::new(vec![*fault]);
                assert!(one.check_device(d).is_ok());
                let other = if d == DeviceKind::Net {
                    DeviceKind::Rng
                } else {
                    DeviceKind::Net
                };
                let e = one.check_device(other).unwrap_err();
                assert!(e.contains(name) && e.contains(d.name()), "{e}");
            }
        }
        let blk_only = Faults::new(vec![Fault::WrongUsedLen]);
        assert!(blk_only.check_device(DeviceKind::Net).is_err());
        assert!(
            Faults::new(vec![Fault::NoAck])
                .check_device(DeviceKind::Rng)
                .is_ok()
        );
    }

    #[test]
    fn variations_are_named_parsed_and_listed_as_legal() {
        let mut names: Vec<&str> = VARIATIONS.iter().map(|v| v.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIATIONS.len());
        let listing = listing();
        assert_eq!(listing.len(), ALL.len() + VARIATIONS.len());
        for (fault, name, what) in VARIATIONS {
            assert_eq!(parse(name), Ok(*fault));
            assert!(!what.is_empty(), "{name}");
            // A variation in both lists is one variant under one name.
            if let Some(f) = ALL.iter().find(|f| f.0 == *fault) {
                assert_eq!(f.1, *name);
            }
            assert!(
                listing
                    .iter()
                    .any(|l| l.split_whitespace().take(2).eq([*name, "legal"])),
                "{name} not listed as legal"
            );
        }
        assert!(ALL.iter().any(|f| f.0 == Fault::ExitOnDisconnect));
        assert!(VARIATIONS.iter().any(|f| f.0 == Fault::ExitOnDisconnect));
        assert!(
            ALL.iter()
                .all(|f| !VARIATIONS.iter().any(|v| v.0 == f.0) || f.0 == Fault::ExitOnDisconnect),
            "only exit-on-disconnect is both a broken (robustness) rule and legal"
        );
    }
}
