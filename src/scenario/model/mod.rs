//! The scenario file format (TOML): metadata tying a scenario to the checklist's rules, the
//! features it needs, and steps: a typed action each (its own arguments, refused when they are
//! not its own) with a shared expectation. README "Writing a scenario" documents it.
//!
//! [`Step`], [`Action`] and the expectation every action shares are here; each family's argument
//! structs are in a file of their own (the session's: `negotiate`, `memory`, `vring`, `message`,
//! `control`, `shmem`, `iotlb`; each device's: `blk`, `net`, `rng`, `fs`, `vsock`, `console`,
//! `input`, `scmi`, `gpio`, `i2c`, `sound`, `gpu`), with the typed values they share (`values`).

use serde::{Deserialize, Serialize};

use crate::device::DeviceType;
use crate::rules::RuleId;

mod blk;
mod console;
mod control;
mod fs;
mod gpio;
mod gpu;
mod i2c;
mod input;
mod iotlb;
mod memory;
mod message;
mod negotiate;
mod net;
mod rng;
mod scmi;
mod shmem;
mod sound;
mod values;
mod vring;
mod vsock;

pub use blk::{BlkCmdArgs, BlkIoArgs};
pub use console::{ConsoleControlArgs, ConsoleReadyArgs, ConsoleWriteArgs};
pub use control::{LoadStateArgs, SleepArgs};
pub use fs::{FsFileArgs, FsGetattrArgs, FsLookupArgs, FsNameArgs, FsReadArgs, FsUnknownArgs};
pub use gpio::{GpioMessage, GpioRequestArgs, GpioStatus};
pub use gpu::{GpuResourceArgs, GpuResourceCommand};
pub use i2c::I2cTransferArgs;
pub use input::{InputConfigArgs, InputPostArgs, InputStatusArgs};
pub use iotlb::{IotlbArgs, IotlbOp};
pub use memory::{AddMemRegArgs, Layout, MemoryArgs, Region, RemMemRegArgs, Tweak, Via};
pub use message::{BodyQueue, FdKind, RawArgs, RawRequest, Request, RequestName, SendArgs};
pub use negotiate::{FeatureName, Features, NegotiateArgs, ProtocolFeature, VirtioFeature};
pub use net::{NetCtrlArgs, NetQueueArgs, NetRxArgs, NetRxPostArgs, NetTxArgs};
pub use rng::RngReadArgs;
pub use scmi::{ScmiCommandArgs, ScmiStatus};
pub use shmem::{ShmemMapArgs, ShmemRange};
pub use sound::{
    PcmCommand, SoundItem, SoundPcmArgs, SoundQueryArgs, SoundTxArgs, SoundUnknownArgs,
};
pub use values::{Hex, Queues};
pub use vring::{EnableArgs, GetVringBaseArgs, QueueArgs, Ring, VringArgs, VringNum};
pub use vsock::{
    PortArgs, VsockConnectArgs, VsockHostConnectArgs, VsockListenArgs, VsockRecvArgs,
    VsockSendArgs, VsockUnknownTypeArgs,
};

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
    /// Features the back-end must offer, or the scenario is skipped.
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
    /// What the scenario checks and why, at more length than `title`.
    #[serde(default)]
    pub description: String,
    /// The steps, in order (`[[step]]` tables).
    #[serde(rename = "step", default)]
    pub steps: Vec<Step>,
}

/// One step of a scenario file: what it does (`do` and that action's arguments) and what it
/// expects (the keys every action shares). A key the action does not take is refused at load.
#[derive(Clone, Debug)]
pub struct Step {
    /// The action and its arguments.
    pub action: Action,
    /// What the back-end must do; each action has its default (a reply where the request
    /// always has one, else an ack of 0 if any).
    pub expect: Option<Expect>,
    /// The rule a failed expectation cites (default: the scenario's first rule).
    pub rule: Option<RuleId>,
    /// How many times the step runs in a row (default once), each time judged alone.
    pub repeat: Option<u32>,
}

/// The keys every action takes, beside `do` and the action's own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shared {
    #[serde(skip_serializing_if = "Option::is_none")]
    expect: Option<Expect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<RuleId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat: Option<u32>,
}

/// The names of [`Shared`]'s keys.
const SHARED_KEYS: [&str; 3] = ["expect", "rule", "repeat"];

impl Step {
    /// A step doing `action`, expecting the action's default.
    pub fn of(action: Action) -> Self {
        Self {
            action,
            expect: None,
            rule: None,
            repeat: None,
        }
    }

    /// The same step citing `rule`.
    pub fn citing(mut self, rule: RuleId) -> Self {
        self.rule = Some(rule);
        self
    }

    /// The same step expecting `expect`.
    pub fn expecting(mut self, expect: Expect) -> Self {
        self.expect = Some(expect);
        self
    }

    /// How many times it runs (`repeat`, at least once).
    pub fn times(&self) -> u32 {
        self.repeat.unwrap_or(1).max(1)
    }
}

// serde refuses `deny_unknown_fields` next to `flatten`: the step's table is split in two by
// hand, the shared keys and the rest, and each part is read by a struct that refuses what it
// does not know (the action's arguments, picked by `do`).
impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let mut shared = toml::Table::new();
        for key in SHARED_KEYS {
            if let Some(v) = table.remove(key) {
                shared.insert(key.into(), v);
            }
        }
        let shared: Shared = toml::Value::Table(shared)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        if shared.repeat == Some(0) {
            return Err(D::Error::custom("`repeat` is 0: a step runs at least once"));
        }
        let what = match table.get("do") {
            Some(toml::Value::String(name)) => format!(" (in a `{name}` step)"),
            _ => String::new(),
        };
        let action: Action = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(format!("{}{what}", e.message())))?;
        Ok(Self {
            action,
            expect: shared.expect,
            rule: shared.rule,
            repeat: shared.repeat,
        })
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut table = toml::Table::try_from(&self.action).map_err(S::Error::custom)?;
        let shared = Shared {
            expect: self.expect,
            rule: self.rule,
            repeat: self.repeat,
        };
        table.extend(toml::Table::try_from(&shared).map_err(S::Error::custom)?);
        table.serialize(s)
    }
}

/// Declares [`Action`] (one variant per `do`, each with its argument struct) and its names.
macro_rules! actions {
    ($($(#[doc = $doc:literal])* $name:literal => $variant:ident($args:ty),)*) => {
        /// What a step does (`do`), with the arguments that action takes.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(tag = "do")]
        pub enum Action {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant($args),)*
        }

        impl Action {
            /// The action's name in a scenario file (`blk_read`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)*
                }
            }
        }
    };
}

actions! {
    /// Appendix A negotiation.
    "negotiate" => Negotiate(NegotiateArgs),
    /// Create guest memory and announce it.
    "memory" => Memory(MemoryArgs),
    /// ADD_MEM_REG of one region of the current layout.
    "add_mem_reg" => AddMemReg(AddMemRegArgs),
    /// REM_MEM_REG of one region, optionally with fields changed.
    "rem_mem_reg" => RemMemReg(RemMemRegArgs),
    /// Set up a queue (NUM, BASE, ADDR, CALL, ERR, KICK, ENABLE).
    "vring" => Vring(VringArgs),
    /// SET_VRING_ENABLE.
    "enable" => Enable(EnableArgs),
    /// virtio-blk write.
    "blk_write" => BlkWrite(BlkIoArgs),
    /// virtio-blk read, checked against a pattern.
    "blk_read" => BlkRead(BlkIoArgs),
    /// virtio-blk flush.
    "blk_flush" => BlkFlush(BlkCmdArgs),
    /// virtio-blk GET_ID.
    "blk_get_id" => BlkGetId(BlkCmdArgs),
    /// Wait for the request a blk step left pending (`expect = "no_reply"`) to complete now.
    "blk_complete" => BlkComplete(QueueArgs),
    /// Save the device state (SET_DEVICE_STATE_FD direction 0, CHECK_DEVICE_STATE).
    "save_state" => SaveState(NoArgs),
    /// Load the saved device state (direction 1, CHECK_DEVICE_STATE).
    "load_state" => LoadState(LoadStateArgs),
    /// Continue with a fresh back-end process (spawn mode).
    "new_process" => NewProcess(NoArgs),
    /// GET_VRING_BASE, checked.
    "get_vring_base" => GetVringBase(GetVringBaseArgs),
    /// Ask the back-end, with vhu-conform's SHMEM device request, to map a memfd into a shared
    /// memory region; its SHMEM_MAP is checked against GET_SHMEM_CONFIG.
    "shmem_map" => ShmemMap(ShmemMapArgs),
    /// Ask the back-end to unmap what `shmem_map` mapped; its SHMEM_UNMAP is checked.
    "shmem_unmap" => ShmemUnmap(ShmemRange),
    /// Replace a running queue's call eventfd (SET_VRING_CALL); later completions must be
    /// signalled on the new one and never on the old one.
    "swap_call" => SwapCall(QueueArgs),
    /// Any front-end request with a body.
    "send" => Send(SendArgs),
    /// Raw header and payload bytes, unvalidated.
    "raw" => Raw(RawArgs),
    /// Liveness probe: a GET_FEATURES round trip.
    "probe" => Probe(NoArgs),
    /// Close the connection.
    "disconnect" => Disconnect(NoArgs),
    /// Open a new connection to the same back-end.
    "reconnect" => Reconnect(NoArgs),
    /// Wait `ms` milliseconds.
    "sleep" => Sleep(SleepArgs),
    /// virtio-net: transmit frames on a TX ring (default queue 1); the chains must be used with
    /// length 0, and the frames are remembered for `net_rx`.
    "net_tx" => NetTx(NetTxArgs),
    /// virtio-net: post receive buffers on an RX ring (default queue 0); they stay posted.
    "net_rx_post" => NetRxPost(NetRxPostArgs),
    /// virtio-net: wait for the frames sent to come back on the posted RX buffers (a forwarding
    /// back-end) and check header, num_buffers and bytes; skipped when none comes back.
    "net_rx" => NetRx(NetRxArgs),
    /// virtio-net: a control-queue command (`class`, `command`, data in `payload_hex`).
    "net_ctrl" => NetCtrl(NetCtrlArgs),
    /// virtio-net: GET_CONFIG of mac, status, max_virtqueue_pairs and mtu, checked.
    "net_config" => NetConfig(NoArgs),
    /// virtio-net: wait for the TX chains a `net_tx` with `expect = "no_reply"` left pending.
    "net_complete" => NetComplete(NetQueueArgs),
    /// virtio-rng: entropy requests of the sizes in `sizes`.
    "rng_read" => RngRead(RngReadArgs),
    /// virtio-rng: wait for the requests an `rng_read` with `expect = "no_reply"` left pending.
    "rng_complete" => RngComplete(QueueArgs),
    /// fs: create a file in the shared directory (host side): `name`, `file_bytes`, `pattern`.
    "fs_file" => FsFile(FsFileArgs),
    /// fs: FUSE_INIT on a request queue (the session's first FUSE request).
    "fs_init" => FsInit(ChainArgs),
    /// fs: FUSE_GETATTR of the root, or of `name` (looked up before).
    "fs_getattr" => FsGetattr(FsGetattrArgs),
    /// fs: FUSE_LOOKUP of `name` in the root (`missing = true`: it must not exist).
    "fs_lookup" => FsLookup(FsLookupArgs),
    /// fs: FUSE_OPEN of `name` (looked up before), read-only.
    "fs_open" => FsOpen(FsNameArgs),
    /// fs: FUSE_READ of the open `name`: `read_offset`, `read_size`.
    "fs_read" => FsRead(FsReadArgs),
    /// fs: FUSE_RELEASE of the open `name`.
    "fs_release" => FsRelease(FsNameArgs),
    /// fs: FUSE_FORGET of `name` on the hiprio queue (no reply).
    "fs_forget" => FsForget(FsNameArgs),
    /// fs: a request with an opcode FUSE does not define (`opcode`): -ENOSYS.
    "fs_unknown" => FsUnknown(FsUnknownArgs),
    /// fs: the config space (tag, num_request_queues), with the CONFIG protocol feature.
    "fs_config" => FsConfig(NoArgs),
    /// vsock: the config space's guest_cid, with the CONFIG protocol feature.
    "vsock_config" => VsockConfig(NoArgs),
    /// vsock: a host-side listener at `<vsock uds>_<port>` that echoes (and first writes
    /// `bytes` bytes when given).
    "vsock_listen" => VsockListen(VsockListenArgs),
    /// vsock: REQUEST to host `port`: RESPONSE when a `vsock_listen` step listens there, RST
    /// otherwise; `buf_alloc` is the receive space the driver announces.
    "vsock_connect" => VsockConnect(VsockConnectArgs),
    /// vsock: RW of `bytes` bytes on the connection to `port`; the host listener must read them
    /// and its echo must come back intact.
    "vsock_send" => VsockSend(VsockSendArgs),
    /// vsock: receive `bytes` bytes the host listener wrote, granting credit as they arrive;
    /// the device must never exceed the credit.
    "vsock_recv" => VsockRecv(VsockRecvArgs),
    /// vsock: CREDIT_REQUEST on the connection to `port`: CREDIT_UPDATE.
    "vsock_credit_request" => VsockCreditRequest(PortArgs),
    /// vsock: SHUTDOWN (both directions) of the connection to `port`: RST.
    "vsock_shutdown" => VsockShutdown(PortArgs),
    /// vsock: REQUEST of an unknown socket type (`socket_type`) to `port`: RST.
    "vsock_unknown_type" => VsockUnknownType(VsockUnknownTypeArgs),
    /// vsock: RW for a connection that does not exist, to `port`: RST.
    "vsock_no_connection" => VsockNoConnection(PortArgs),
    /// vsock: the host side asks the hybrid back-end to connect to guest `port` (`CONNECT
    /// <port>`); the device's REQUEST is checked and accepted; the host side then echoes (and
    /// first writes `bytes` bytes when given). Later steps name the connection by `port`.
    "vsock_host_connect" => VsockHostConnect(VsockHostConnectArgs),
    /// IOTLB: what `op` says (updates, invalidations, holding misses, checking them).
    "iotlb" => Iotlb(IotlbArgs),
    /// scmi: SCMI commands on the cmdq (`protocol`, `message`, parameters in `params_hex`),
    /// the response's header, status and return values checked.
    "scmi_command" => ScmiCommand(ScmiCommandArgs),
    /// gpio: GET_CONFIG of virtio_gpio_config (ngpio, padding, gpio_names_size), checked and
    /// kept for later gpio steps.
    "gpio_config" => GpioConfig(NoArgs),
    /// gpio: a requestq message (`request`, `gpio`, `value`), the response's status and value
    /// checked.
    "gpio_request" => GpioRequest(GpioRequestArgs),
    /// i2c: a request on the requestq (a read of `read_len` bytes, a write of `write_hex`, both
    /// as a write-read group, or a zero-length request), its status byte checked.
    "i2c_transfer" => I2cTransfer(I2cTransferArgs),
    /// console: GET_CONFIG of cols, rows, max_nr_ports and emerg_wr, checked against the
    /// queues GET_QUEUE_NUM reports (with MULTIPORT).
    "console_config" => ConsoleConfig(NoArgs),
    /// console (MULTIPORT): control receive buffers posted, DEVICE_READY sent: DEVICE_ADD must
    /// come back; each port added gets PORT_READY, and a console port PORT_OPEN.
    "console_ready" => ConsoleReady(ConsoleReadyArgs),
    /// console: data written on a port's transmitq (`port`, `bytes`, `count` chains): every
    /// chain must be consumed (and, with --console-tcp, reach the host side intact).
    "console_write" => ConsoleWrite(ConsoleWriteArgs),
    /// console (MULTIPORT): one control message of the driver's (`event`, `id`, `value`) on the
    /// control transmitq: it must be consumed and the device must keep serving.
    "console_control" => ConsoleControl(ConsoleControlArgs),
    /// input: SET_CONFIG of `select` and `subsel`, then GET_CONFIG of the whole config space:
    /// size and the union checked for that query.
    "input_config" => InputConfig(InputConfigArgs),
    /// input: eventq buffers posted; any used must carry a whole 8-byte event, and with no
    /// input none is used within `window_ms`.
    "input_post" => InputPost(InputPostArgs),
    /// input: one event (`ev_type`, `code`, `value`) on the statusq: it must be consumed.
    "input_status" => InputStatus(InputStatusArgs),
    /// sound: the config space (jacks, streams, chmaps), with the CONFIG protocol feature.
    "sound_config" => SoundConfig(NoArgs),
    /// sound: JACK_INFO, PCM_INFO or CHMAP_INFO on the control queue, answers checked.
    "sound_query" => SoundQuery(SoundQueryArgs),
    /// sound: a PCM command (`set_params`, `prepare`, `start`, `stop`, `release`).
    "sound_pcm" => SoundPcm(SoundPcmArgs),
    /// sound: PCM frames for an output stream on the tx queue, each message's status checked.
    "sound_tx" => SoundTx(SoundTxArgs),
    /// sound: a control request of an undefined code (`code`): an error status, not a hang.
    "sound_unknown" => SoundUnknown(SoundUnknownArgs),
    /// gpu: GPU_SET_SOCKET with one end of a socket pair; the harness serves the vhost-user-gpu
    /// protocol on the other.
    "gpu_set_socket" => GpuSetSocket(NoArgs),
    /// gpu: the config space's num_scanouts, with the CONFIG protocol feature.
    "gpu_config" => GpuConfig(NoArgs),
    /// gpu: GET_DISPLAY_INFO on the control queue, then what the back-end sent on the gpu socket.
    "gpu_display_info" => GpuDisplayInfo(ChainArgs),
    /// gpu: RESOURCE_CREATE_2D or RESOURCE_UNREF of `resource_id`: OK_NODATA.
    "gpu_resource" => GpuResource(GpuResourceArgs),
}

impl Action {
    /// Whether the step drives virtio-blk requests (write, read, flush, GET_ID).
    pub fn is_blk_request(&self) -> bool {
        matches!(
            self,
            Self::BlkWrite(_) | Self::BlkRead(_) | Self::BlkFlush(_) | Self::BlkGetId(_)
        )
    }

    /// Whether the step's chains go through an indirect descriptor table (`indirect`, for the
    /// actions that build chains).
    pub fn indirect(&self) -> bool {
        let i = match self {
            Self::BlkWrite(a) | Self::BlkRead(a) => a.indirect,
            Self::BlkFlush(a) | Self::BlkGetId(a) => a.indirect,
            Self::NetTx(a) => a.indirect,
            Self::NetRxPost(a) => a.indirect,
            Self::RngRead(a) => a.indirect,
            Self::FsInit(a) => a.indirect,
            Self::FsGetattr(a) => a.indirect,
            Self::FsLookup(a) => a.indirect,
            Self::FsOpen(a) | Self::FsRelease(a) | Self::FsForget(a) => a.indirect,
            Self::FsRead(a) => a.indirect,
            Self::VsockConnect(a) => a.indirect,
            Self::VsockSend(a) => a.indirect,
            Self::ScmiCommand(a) => a.indirect,
            Self::GpioRequest(a) => a.indirect,
            Self::I2cTransfer(a) => a.indirect,
            Self::ConsoleReady(a) => a.indirect,
            Self::ConsoleWrite(a) => a.indirect,
            Self::ConsoleControl(a) => a.indirect,
            Self::InputPost(a) => a.indirect,
            Self::InputStatus(a) => a.indirect,
            Self::SoundQuery(a) => a.indirect,
            Self::SoundPcm(a) => a.indirect,
            Self::SoundTx(a) => a.indirect,
            Self::GpuDisplayInfo(a) => a.indirect,
            Self::GpuResource(a) => a.indirect,
            _ => None,
        };
        i == Some(true)
    }
}

/// An action that takes no arguments (only `do` and the shared keys).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// The arguments of a step whose one argument is the shape of its chain (`fs_init`,
/// `gpu_display_info`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainArgs {
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
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
