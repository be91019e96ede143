//! The scenario file format (TOML): metadata tying a scenario to the checklist's rules, the
//! features it needs, and steps with expectations. README "Writing a scenario" documents it.

use serde::{Deserialize, Serialize};

use crate::device::DeviceType;
use crate::rules::RuleId;

/// How much a failed check of this scenario weighs (checklist legend).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Informative: recorded, never a failure.
    Info,
    /// Robustness rule the spec is silent on: a warning (a failure under `--strict`).
    Rob,
    /// SHOULD: a warning (a failure under `--strict`).
    Should,
    /// MUST: a failure.
    #[default]
    Must,
}

/// Features a scenario needs; it is skipped when the back-end does not offer them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Virtio feature names (`PROTOCOL_FEATURES`, `EVENT_IDX`, ...) or `bit:N`.
    #[serde(default)]
    pub virtio: Vec<String>,
    /// Protocol feature names (`REPLY_ACK`, `CONFIGURE_MEM_SLOTS`, ...) or `bit:N`.
    #[serde(default)]
    pub protocol: Vec<String>,
}

/// A scenario as written in a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Stable id, path-like (`memory/add-rem-region`).
    pub id: String,
    /// One line saying what is checked.
    pub title: String,
    /// Checklist rule ids (`R-MEM-08`); an id the checklist lacks is refused at load.
    pub rules: Vec<RuleId>,
    /// Weight of a failed check.
    #[serde(default)]
    pub level: Level,
    /// Needed features.
    #[serde(default)]
    pub requires: Requires,
    /// The device type the scenario is written for (its requests or config layout): skipped
    /// for other types, and when the type is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceType>,
    /// The one device type the scenario is not for (a message only that type may accept, such
    /// as GPU_SET_SOCKET for gpu): skipped for it, and when the type is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_device: Option<DeviceType>,
    /// Needs a fresh back-end process (crash risk).
    #[serde(default)]
    pub fresh_process: bool,
    /// Deadline for the whole scenario, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Longer explanation.
    #[serde(default)]
    pub description: String,
    /// The steps.
    #[serde(rename = "step", default)]
    pub steps: Vec<Step>,
}

/// What a step does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Appendix A negotiation.
    Negotiate,
    /// Create guest memory and announce it.
    Memory,
    /// ADD_MEM_REG of one region of the current layout.
    AddMemReg,
    /// REM_MEM_REG of one region, optionally with fields changed.
    RemMemReg,
    /// Set up a queue (NUM, BASE, ADDR, CALL, ERR, KICK, ENABLE).
    Vring,
    /// SET_VRING_ENABLE.
    Enable,
    /// virtio-blk write.
    BlkWrite,
    /// virtio-blk read, checked against a pattern.
    BlkRead,
    /// virtio-blk flush.
    BlkFlush,
    /// virtio-blk GET_ID.
    BlkGetId,
    /// Wait for the request a blk step left pending (`expect = "no_reply"`) to complete now.
    BlkComplete,
    /// Save the device state (SET_DEVICE_STATE_FD direction 0, CHECK_DEVICE_STATE).
    SaveState,
    /// Load the saved device state (direction 1, CHECK_DEVICE_STATE).
    LoadState,
    /// Continue with a fresh back-end process (spawn mode).
    NewProcess,
    /// GET_VRING_BASE, checked.
    GetVringBase,
    /// Ask the back-end, with vhu-conform's SHMEM device request, to map a memfd into a shared
    /// memory region; its SHMEM_MAP is checked against GET_SHMEM_CONFIG.
    ShmemMap,
    /// Ask the back-end to unmap what `shmem_map` mapped; its SHMEM_UNMAP is checked.
    ShmemUnmap,
    /// Replace a running queue's call eventfd (SET_VRING_CALL); later completions must be
    /// signalled on the new one and never on the old one.
    SwapCall,
    /// Any front-end request with a body.
    Send,
    /// Raw header and payload bytes, unvalidated.
    Raw,
    /// Liveness probe: a GET_FEATURES round trip.
    Probe,
    /// Close the connection.
    Disconnect,
    /// Open a new connection to the same back-end.
    Reconnect,
    /// Wait.
    Sleep,
    // net and rng steps
    /// virtio-net: transmit frames on a TX ring (default queue 1); the chains must be used with
    /// length 0, and the frames are remembered for `net_rx`.
    NetTx,
    /// virtio-net: post receive buffers on an RX ring (default queue 0); they stay posted.
    NetRxPost,
    /// virtio-net: wait for the frames sent to come back on the posted RX buffers (a forwarding
    /// back-end) and check header, num_buffers and bytes; skipped when none comes back.
    NetRx,
    /// virtio-net: a control-queue command (`class`, `command`, data in `payload_hex`).
    NetCtrl,
    /// virtio-net: GET_CONFIG of mac, status, max_virtqueue_pairs and mtu, checked.
    NetConfig,
    /// virtio-net: wait for the TX chains a `net_tx` with `expect = "no_reply"` left pending.
    NetComplete,
    /// virtio-rng: entropy requests of the sizes in `sizes`.
    RngRead,
    /// virtio-rng: wait for the requests an `rng_read` with `expect = "no_reply"` left pending.
    RngComplete,
    // fs and vsock steps
    /// fs: create a file in the shared directory (host side): `name`, `file_bytes`, `pattern`.
    FsFile,
    /// fs: FUSE_INIT on a request queue (the session's first FUSE request).
    FsInit,
    /// fs: FUSE_GETATTR of the root, or of `name` (looked up before).
    FsGetattr,
    /// fs: FUSE_LOOKUP of `name` in the root (`missing = true`: it must not exist).
    FsLookup,
    /// fs: FUSE_OPEN of `name` (looked up before), read-only.
    FsOpen,
    /// fs: FUSE_READ of the open `name`: `read_offset`, `read_size`.
    FsRead,
    /// fs: FUSE_RELEASE of the open `name`.
    FsRelease,
    /// fs: FUSE_FORGET of `name` on the hiprio queue (no reply).
    FsForget,
    /// fs: a request with an opcode FUSE does not define (`opcode`): -ENOSYS.
    FsUnknown,
    /// fs: the config space (tag, num_request_queues), with the CONFIG protocol feature.
    FsConfig,
    /// vsock: the config space's guest_cid, with the CONFIG protocol feature.
    VsockConfig,
    /// vsock: a host-side listener at `<vsock uds>_<port>` that echoes (and first writes
    /// `bytes` bytes when given).
    VsockListen,
    /// vsock: REQUEST to host `port`: RESPONSE when a `vsock_listen` step listens there, RST
    /// otherwise; `buf_alloc` is the receive space the driver announces.
    VsockConnect,
    /// vsock: RW of `bytes` bytes on the connection to `port`; the host listener must read them
    /// and its echo must come back intact.
    VsockSend,
    /// vsock: receive `bytes` bytes the host listener wrote, granting credit as they arrive;
    /// the device must never exceed the credit.
    VsockRecv,
    /// vsock: CREDIT_REQUEST on the connection to `port`: CREDIT_UPDATE.
    VsockCreditRequest,
    /// vsock: SHUTDOWN (both directions) of the connection to `port`: RST.
    VsockShutdown,
    /// vsock: REQUEST of an unknown socket type (`socket_type`) to `port`: RST.
    VsockUnknownType,
    /// vsock: RW for a connection that does not exist, to `port`: RST.
    VsockNoConnection,
    /// vsock: the host side asks the hybrid back-end to connect to guest `port` (`CONNECT
    /// <port>`); the device's REQUEST is checked and accepted; the host side then echoes (and
    /// first writes `bytes` bytes when given). Later steps name the connection by `port`.
    VsockHostConnect,
    // IOTLB (VIRTIO_F_ACCESS_PLATFORM)
    /// IOTLB: what `op` says (updates, invalidations, holding misses, checking them).
    Iotlb,
}

/// What an `iotlb` step does. Behind the IOMMU (VIRTIO_F_ACCESS_PLATFORM negotiated, then a
/// `memory` step) every region is mapped at an IOVA of the harness's choosing, and the
/// back-end's misses are answered from those mappings while requests are waited for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IotlbOp {
    /// An IOTLB_MSG update for every mapping; each must be answered 0 (R-IOTLB-02).
    Map,
    /// An IOTLB_MSG invalidation of every mapping; each must be answered 0 (R-IOTLB-02), and
    /// requests after it must not complete from the old entries.
    Unmap,
    /// An update whose user range no region holds: it must be refused (R-IOTLB-05).
    Outside,
    /// Misses wait unanswered (and unacked) from now on.
    Hold,
    /// Held misses are answered, and later ones as they come.
    Release,
    /// A miss (BACKEND_IOTLB_MSG type 1) must have come since the last `map`, `unmap`, `hold`
    /// or `release` began (the start of the session without one), for
    /// an address the IOMMU maps (R-IOTLB-03), within `window_ms` (default: the step timeout).
    ExpectMiss,
    /// Nothing was written where the memory table's guest addresses would put the IOVAs
    /// (R-MEM-19), and every update sent for a miss was answered 0 (R-IOTLB-02).
    Check,
}

/// What a step expects of the back-end.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The request succeeded; an ack, if any, is 0.
    #[default]
    Ok,
    /// An ack of 0 (when REPLY_ACK is negotiated; otherwise as `ok`).
    AckOk,
    /// A non-zero ack, or the connection closed.
    AckFail,
    /// A reply.
    Reply,
    /// Nothing arrives within the window.
    NoReply,
    /// The back-end closes the connection.
    Closed,
    /// A non-zero ack or a closed connection, and the process survives.
    Rejected,
    /// Anything but a crash or a hang: the next probe answers.
    Alive,
}

/// A number or the word `all` / `reached`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumOrWord {
    /// A plain number (a queue index, a value).
    Num(u64),
    /// A word such as `all`, `past_end` or `reached`.
    Word(String),
}

/// A request named by spec name, CamelCase name or code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestName {
    /// A code.
    Code(u32),
    /// A name.
    Name(String),
}

impl RequestName {
    /// The front-end request: by code, spec name (with or without `VHOST_USER_`) or CamelCase
    /// name (`SET_VRING_NUM`, `VHOST_USER_SET_VRING_NUM`, `SetVringNum`).
    pub fn resolve(&self) -> Result<vhu_protocol::FrontendReq, String> {
        use vhu_protocol::FrontendReq;
        match self {
            Self::Code(c) => FrontendReq::from_code(*c).map_err(|e| e.to_string()),
            Self::Name(n) => {
                let up = n.trim_start_matches("VHOST_USER_").to_ascii_uppercase();
                FrontendReq::all()
                    .find(|r| {
                        r.spec_name().trim_start_matches("VHOST_USER_") == up
                            || format!("{r:?}").eq_ignore_ascii_case(n)
                    })
                    .ok_or_else(|| format!("unknown request name {n:?}"))
            }
        }
    }
}

/// Field overrides for REM_MEM_REG.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tweak {
    /// Guest address.
    pub guest_addr: Option<u64>,
    /// Size.
    pub size: Option<u64>,
    /// User address.
    pub user_addr: Option<u64>,
    /// Mmap offset.
    pub mmap_offset: Option<u64>,
}

/// One step; which fields apply depends on `do`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The action.
    #[serde(rename = "do")]
    pub action: Action,
    /// negotiate: virtio features ("all" or names).
    pub features: Option<NumOrWordList>,
    /// negotiate: protocol features ("all" or names).
    pub protocol: Option<NumOrWordList>,
    /// negotiate: protocol features to leave out.
    pub exclude_protocol: Option<Vec<String>>,
    /// memory: "default" or "single".
    pub layout: Option<String>,
    /// memory: explicit regions.
    pub regions: Option<Vec<vhu_mock_frontend::RegionSpec>>,
    /// memory: "table" (SET_MEM_TABLE) or "add_mem_reg".
    pub via: Option<String>,
    /// memory: send the current table again (same memfds and addresses) instead of a new one.
    pub resend: Option<bool>,
    /// add/rem_mem_reg: region index.
    pub region: Option<usize>,
    /// rem_mem_reg: field overrides.
    pub tweak: Option<Tweak>,
    /// vring and blk steps: queue index or "all"; send: "past_end" puts the first index past
    /// GET_QUEUE_NUM's count in the body.
    pub queue: Option<NumOrWord>,
    /// vring: queue size; raw: the header's size field.
    pub size: Option<u64>,
    /// vring: starting base.
    pub base: Option<u16>,
    /// vring: send SET_VRING_ENABLE(1) when bit 30 is negotiated.
    pub enable: Option<bool>,
    /// vring: inject a kick after SET_VRING_KICK.
    pub kick: Option<bool>,
    /// vring: "split" (default) or "packed" (negotiate RING_PACKED: list it in `requires`).
    pub ring: Option<String>,
    /// vring: give a call eventfd (default); false sends SET_VRING_CALL with bit 8 (polling).
    pub call_fd: Option<bool>,
    /// vring: give a kick eventfd (default); false sends SET_VRING_KICK with bit 8: the
    /// back-end must poll the ring.
    pub kick_fd: Option<bool>,
    /// vring: send the setup messages before KICK in reverse order (ERR, CALL, ADDR, BASE,
    /// NUM): the spec fixes no order (R-VRING-15).
    pub reverse_setup: Option<bool>,
    /// blk: descriptors the data is split over.
    pub segments: Option<u32>,
    /// blk: the chain goes in an indirect descriptor table.
    pub indirect: Option<bool>,
    /// blk: kick with a VRING_KICK message (in-band notifications) after making it available.
    pub inband_kick: Option<bool>,
    /// enable: on or off.
    pub on: Option<bool>,
    /// blk: start sector.
    pub sector: Option<u64>,
    /// blk: number of 512-byte sectors.
    pub sectors: Option<u32>,
    /// blk: data byte written / expected.
    pub pattern: Option<u8>,
    /// get_vring_base: expected num, or "reached".
    pub num: Option<NumOrWord>,
    /// send/raw: the request.
    pub request: Option<RequestName>,
    /// send: the body's fields.
    pub body: Option<toml::Table>,
    /// send/raw: payload bytes in hex; net_ctrl: the command's data.
    pub payload_hex: Option<String>,
    /// send: force NEED_REPLY on or off.
    pub need_reply: Option<bool>,
    /// send/raw: number of extra fds to attach.
    pub fds: Option<usize>,
    /// send/raw: kind of fd attached ("eventfd", "memfd" of 2 MiB, "pipe", "socket": one end
    /// of a Unix socket pair).
    pub fd_kind: Option<String>,
    /// raw: the header's flags.
    pub flags: Option<u32>,
    /// sleep: milliseconds.
    pub ms: Option<u64>,
    /// What the back-end must do.
    pub expect: Option<Expect>,
    /// The rule a failed expectation cites (default: the scenario's first rule).
    pub rule: Option<RuleId>,
    /// no_reply: how long to listen, in milliseconds.
    pub window_ms: Option<u64>,
    /// The reply's u64 value must equal this.
    pub value: Option<u64>,
    /// These bits must be set in the reply's u64.
    pub value_mask: Option<u64>,
    /// The reply's u64 must be non-zero.
    pub nonzero: Option<bool>,
    /// Bits 0-7 of the reply's u64 (an error code, as SET_DEVICE_STATE_FD's) must be non-zero.
    pub error_code: Option<bool>,
    /// The reply's u64 must equal what the session's first GET_FEATURES offered.
    pub offered: Option<bool>,
    /// The reply's payload size.
    pub reply_size: Option<u32>,
    /// send SET_CONFIG: the config bytes written (hex; default zeros). send GET_CONFIG: the
    /// config bytes the reply must carry after its 12-byte header.
    pub config_hex: Option<String>,
    /// The reply's flags.
    pub reply_flags: Option<u32>,
    /// The number of fds the reply carries.
    pub reply_fds: Option<usize>,
    /// The attached pipe fd must be closed by the back-end (fd-closure probe).
    pub fd_closed: Option<bool>,
    /// shmem_map/unmap: the shared memory region.
    pub shmid: Option<u8>,
    /// shmem_map/unmap: offset into the region.
    pub offset: Option<u64>,
    /// shmem_map/unmap: length of the range.
    pub len: Option<u64>,
    /// shmem_map/unmap: the range ends where the region ends (`offset` = size - `len`).
    pub at_end: Option<bool>,
    /// shmem_map: the front-end refuses the back-end's request (a non-zero ack).
    pub refuse: Option<bool>,
    // net and rng steps
    /// net_tx: frames to send (default 1).
    pub frames: Option<u32>,
    /// net_tx: bytes of each Ethernet frame (default 64; at least 22).
    pub frame_len: Option<u32>,
    /// net_rx_post: receive buffers to post (default 8).
    pub buffers: Option<u32>,
    /// net_rx_post: bytes of each receive buffer (default 1526, the header and a full frame).
    pub buffer_size: Option<u32>,
    /// rng_read: the size of each entropy request, in order (default `[64]`).
    pub sizes: Option<Vec<u32>>,
    /// rng_read: submit every request at once (one kick) before waiting, instead of one by one.
    pub at_once: Option<bool>,
    /// net_tx, rng_read: replace the ring's call eventfd first; the completion must be
    /// signalled on the new one only (R-RING-15).
    pub new_call: Option<bool>,
    /// net_ctrl: the command class (`VIRTIO_NET_CTRL_RX` = 0).
    pub class: Option<u8>,
    /// net_ctrl: the command within its class.
    pub command: Option<u8>,
    /// net_ctrl: the ack byte the device must answer (0 OK, 1 ERR); any of the two if unset.
    pub ack: Option<u8>,
    // fs and vsock steps
    /// fs steps: the file's name in the shared directory's root.
    pub name: Option<String>,
    /// fs_file: the file's size (bytes `pattern`, or a position-dependent sequence).
    pub file_bytes: Option<u32>,
    /// fs_lookup: the name must not exist (-ENOENT).
    pub missing: Option<bool>,
    /// fs_read: offset in the file.
    pub read_offset: Option<u64>,
    /// fs_read: bytes asked for.
    pub read_size: Option<u32>,
    /// fs_unknown: the opcode.
    pub opcode: Option<u32>,
    /// vsock steps: the host port.
    pub port: Option<u32>,
    /// vsock_connect: the receive space the driver announces (default 65536).
    pub buf_alloc: Option<u32>,
    /// vsock_send / vsock_recv / vsock_listen: payload bytes.
    pub bytes: Option<u32>,
    /// vsock_unknown_type: the header's type (default 0x7fff).
    pub socket_type: Option<u16>,
    /// vsock: rx buffers with the header in its own 44-byte descriptor (default one buffer).
    pub rx_split: Option<bool>,
    /// iotlb: what the step does.
    pub op: Option<IotlbOp>,
}

impl Step {
    /// A step doing `action` with every optional field unset (for built-in scenarios).
    pub fn new(action: Action) -> Self {
        Self {
            action,
            features: None,
            protocol: None,
            exclude_protocol: None,
            layout: None,
            regions: None,
            via: None,
            resend: None,
            region: None,
            tweak: None,
            queue: None,
            size: None,
            base: None,
            enable: None,
            kick: None,
            ring: None,
            call_fd: None,
            reverse_setup: None,
            kick_fd: None,
            segments: None,
            indirect: None,
            inband_kick: None,
            on: None,
            sector: None,
            sectors: None,
            pattern: None,
            num: None,
            request: None,
            body: None,
            payload_hex: None,
            need_reply: None,
            fds: None,
            fd_kind: None,
            flags: None,
            ms: None,
            expect: None,
            rule: None,
            window_ms: None,
            value: None,
            value_mask: None,
            nonzero: None,
            error_code: None,
            offered: None,
            reply_size: None,
            config_hex: None,
            reply_flags: None,
            reply_fds: None,
            fd_closed: None,
            shmid: None,
            offset: None,
            len: None,
            at_end: None,
            refuse: None,
            frames: None,
            frame_len: None,
            buffers: None,
            buffer_size: None,
            sizes: None,
            at_once: None,
            new_call: None,
            class: None,
            command: None,
            ack: None,
            name: None,
            file_bytes: None,
            missing: None,
            read_offset: None,
            read_size: None,
            opcode: None,
            port: None,
            buf_alloc: None,
            bytes: None,
            socket_type: None,
            rx_split: None,
            op: None,
        }
    }
}

/// `"all"` or a list of names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumOrWordList {
    /// A single word (`"all"`).
    Word(String),
    /// Names.
    List(Vec<String>),
}
