//! The scenario file format (TOML): metadata tying a scenario to the checklist's rules, the
//! features it needs, and steps: a typed action each (its own arguments, refused when they are
//! not its own) with a shared expectation. README "Writing a scenario" documents it.

use serde::{Deserialize, Serialize};

use crate::device::DeviceType;
use crate::rules::RuleId;
pub use crate::scenario::gpu::{GpuDisplayInfoArgs, GpuResourceArgs};
pub use crate::scenario::sound::{SoundPcmArgs, SoundQueryArgs, SoundTxArgs, SoundUnknownArgs};

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
    /// Wait.
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
    "fs_init" => FsInit(FsChainArgs),
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
    "gpu_display_info" => GpuDisplayInfo(GpuDisplayInfoArgs),
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

/// The rings a step acts on: one index, or every ring set up.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Queues {
    /// One ring.
    Index(u16),
    /// Every ring of the session (`"all"`): those GET_QUEUE_NUM stands for, or those set up.
    All,
}

impl Serialize for Queues {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Index(i) => s.serialize_u16(*i),
            Self::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Queues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrWord::deserialize(d)? {
            NumOrWord::Num(n) => u16::try_from(n)
                .map(Self::Index)
                .map_err(|_| serde::de::Error::custom(format!("`queue` = {n}: past 65535"))),
            NumOrWord::Word(w) if w == "all" => Ok(Self::All),
            NumOrWord::Word(w) => Err(serde::de::Error::custom(format!(
                "`queue` = {w:?}: a ring index or \"all\""
            ))),
        }
    }
}

/// A number or a word, as written (for the fields that take either).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum NumOrWord {
    Num(u64),
    Word(String),
}

/// A feature name (`VERSION_1`, `REPLY_ACK`) or `bit:N`, checked against the virtio (`V =
/// true`) or protocol table at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName<const VIRTIO: bool>(String);

/// A virtio feature name.
pub type VirtioFeature = FeatureName<true>;
/// A protocol feature name.
pub type ProtocolFeature = FeatureName<false>;

impl<const VIRTIO: bool> FeatureName<VIRTIO> {
    /// The feature's bit mask.
    pub fn bits(&self) -> u64 {
        let lookup = if VIRTIO {
            crate::features::virtio_bit
        } else {
            crate::features::protocol_bit
        };
        lookup(&self.0).unwrap_or(0)
    }

    /// The name as written.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl<const VIRTIO: bool> Serialize for FeatureName<VIRTIO> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de, const VIRTIO: bool> Deserialize<'de> for FeatureName<VIRTIO> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let known = if VIRTIO {
            crate::features::virtio_bit(&name)
        } else {
            crate::features::protocol_bit(&name)
        };
        let kind = if VIRTIO { "virtio" } else { "protocol" };
        match known {
            Some(_) => Ok(Self(name)),
            None => Err(serde::de::Error::custom(format!(
                "unknown {kind} feature name {name:?}"
            ))),
        }
    }
}

/// Which features a `negotiate` step asks for: every one offered, or those named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Features<const VIRTIO: bool> {
    /// `"all"`: every feature offered (the default).
    All,
    /// Exactly the features named.
    Only(Vec<FeatureName<VIRTIO>>),
}

impl<const VIRTIO: bool> Serialize for Features<VIRTIO> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => s.serialize_str("all"),
            Self::Only(v) => v.serialize(s),
        }
    }
}

impl<'de, const VIRTIO: bool> Deserialize<'de> for Features<VIRTIO> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Word(String),
            List(Vec<String>),
        }
        let names = match Written::deserialize(d)? {
            Written::Word(w) if w == "all" => return Ok(Self::All),
            Written::Word(w) => vec![w],
            Written::List(v) => v,
        };
        names
            .into_iter()
            .map(|n| FeatureName::deserialize(toml::Value::String(n)))
            .collect::<Result<_, _>>()
            .map(Self::Only)
            .map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// Bytes written as hex digits (whitespace between them allowed): `"0100 0000"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }
}

impl std::str::FromStr for Hex {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        let bad = || format!("{text:?} is not an even number of hex digits");
        if digits.len() % 2 != 0 {
            return Err(bad());
        }
        digits
            .chunks(2)
            .map(|p| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A front-end request a `send` step builds, by spec name (with or without `VHOST_USER_`),
/// CamelCase name or code; one vhu-conform does not know is refused at load.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Request(pub vhu_protocol::FrontendReq);

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.spec_name().trim_start_matches("VHOST_USER_"))
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = RequestName::deserialize(d)?;
        name.resolve().map(Self).map_err(serde::de::Error::custom)
    }
}

/// The request code of a `raw` step: any number (codes no spec defines included), or a name
/// (which must be known).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawRequest(pub u32);

impl Serialize for RawRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RequestName::deserialize(d)? {
            RequestName::Code(c) => Ok(Self(c)),
            name => name
                .resolve()
                .map(|r| Self(r as u32))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A request named by spec name, CamelCase name or code, as written.
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

/// `negotiate`: which features to take.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegotiateArgs {
    /// Virtio features: `"all"` offered (default) or the names to take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Features<true>>,
    /// Protocol features: `"all"` offered (default) or the names to take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Features<false>>,
    /// Protocol features to leave out of what is taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_protocol: Vec<ProtocolFeature>,
}

/// The guest memory layouts a `memory` step can build.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Two regions with a hole between them.
    #[default]
    Default,
    /// One region.
    Single,
}

/// How a `memory` step announces its regions.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// SET_MEM_TABLE.
    #[default]
    Table,
    /// One ADD_MEM_REG per region (CONFIGURE_MEM_SLOTS).
    AddMemReg,
}

/// One region of an explicit `memory` layout.
#[derive(Copy, Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
    /// User address announced to the back-end.
    pub user_addr: u64,
    /// Offset of the region in its memfd.
    pub mmap_offset: u64,
}

impl From<Region> for vhu_mock_frontend::RegionSpec {
    fn from(r: Region) -> Self {
        Self {
            guest_addr: r.guest_addr,
            size: r.size,
            user_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
        }
    }
}

/// `memory`: the layout and how it is announced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryArgs {
    /// A named layout (ignored when `regions` is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Explicit regions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<Region>>,
    /// SET_MEM_TABLE (default) or ADD_MEM_REG per region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// Send the current table again (same memfds and addresses) instead of a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resend: Option<bool>,
}

/// `add_mem_reg`: which region of the current layout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemRegArgs {
    /// The region's index in the layout.
    pub region: usize,
}

/// `rem_mem_reg`: which region, and fields changed in the message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemMemRegArgs {
    /// The region's index in the layout.
    pub region: usize,
    /// Fields of the region description replaced before sending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tweak: Option<Tweak>,
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

/// The virtqueue layouts.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ring {
    /// Split virtqueue.
    #[default]
    Split,
    /// Packed virtqueue (negotiate RING_PACKED: list it in `requires`).
    Packed,
}

/// `vring`: how a ring is set up.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VringArgs {
    /// The ring, or `"all"` (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// Entries in the ring (SET_VRING_NUM; default the run's ring size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u64>,
    /// The starting base (SET_VRING_BASE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<u16>,
    /// Send SET_VRING_ENABLE(1) when bit 30 is negotiated (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// Inject a kick after SET_VRING_KICK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kick: Option<bool>,
    /// Split (default) or packed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring: Option<Ring>,
    /// Give a call eventfd (default); false sends SET_VRING_CALL with bit 8 (polling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_fd: Option<bool>,
    /// Give a kick eventfd (default); false sends SET_VRING_KICK with bit 8: the back-end must
    /// poll the ring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kick_fd: Option<bool>,
    /// Send the setup messages before KICK in reverse order (ERR, CALL, ADDR, BASE, NUM): the
    /// spec fixes no order (R-VRING-15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse_setup: Option<bool>,
}

/// `enable`: SET_VRING_ENABLE of a ring.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// Enable (true) or disable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
}

/// The steps that name only a ring (`blk_complete`, `swap_call`, ...).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
}

/// `blk_write`, `blk_read`: a data request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkIoArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// Start sector (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sector: Option<u64>,
    /// Number of 512-byte sectors (default 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sectors: Option<u32>,
    /// The data byte written, or expected back (default 0x5a).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u8>,
    /// Descriptors the data is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Kick with a VRING_KICK message (in-band notifications) after making it available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inband_kick: Option<bool>,
    /// With `expect = "no_reply"`: how long the request must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `blk_flush`, `blk_get_id`: a request without data of its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkCmdArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Kick with a VRING_KICK message (in-band notifications) after making it available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inband_kick: Option<bool>,
    /// With `expect = "no_reply"`: how long the request must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

impl From<&BlkCmdArgs> for BlkIoArgs {
    fn from(a: &BlkCmdArgs) -> Self {
        Self {
            queue: a.queue,
            indirect: a.indirect,
            inband_kick: a.inband_kick,
            window_ms: a.window_ms,
            ..Self::default()
        }
    }
}

/// `load_state`: the state saved before, whole or cut short.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStateArgs {
    /// Load only the first bytes of the saved state (a truncated stream must be refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate_to: Option<u64>,
}

/// What GET_VRING_BASE must answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VringNum {
    /// Exactly this index.
    Value(u64),
    /// `"reached"`: the index the driver made available so far.
    Reached,
}

impl Serialize for VringNum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => s.serialize_u64(*v),
            Self::Reached => s.serialize_str("reached"),
        }
    }
}

impl<'de> Deserialize<'de> for VringNum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrWord::deserialize(d)? {
            NumOrWord::Num(n) => Ok(Self::Value(n)),
            NumOrWord::Word(w) if w == "reached" => Ok(Self::Reached),
            NumOrWord::Word(w) => Err(serde::de::Error::custom(format!(
                "`num` = {w:?}: a number or \"reached\""
            ))),
        }
    }
}

/// `get_vring_base`: the ring and what it must answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetVringBaseArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// The index the reply must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num: Option<VringNum>,
}

/// The range of a shared memory region a `shmem_unmap` (or `shmem_map`) step names.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShmemRange {
    /// The shared memory region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shmid: Option<u8>,
    /// Offset into the region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// The range ends where the region ends (`offset` = size - `len`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_end: Option<bool>,
}

/// `shmem_map`: the range, and whether the front-end refuses the request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShmemMapArgs {
    /// The shared memory region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shmid: Option<u8>,
    /// Offset into the region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// The range ends where the region ends (`offset` = size - `len`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_end: Option<bool>,
    /// The front-end refuses the back-end's SHMEM_MAP (a non-zero ack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refuse: Option<bool>,
}

impl From<&ShmemMapArgs> for ShmemRange {
    fn from(a: &ShmemMapArgs) -> Self {
        Self {
            shmid: a.shmid,
            offset: a.offset,
            len: a.len,
            at_end: a.at_end,
        }
    }
}

/// The kinds of extra fd a `send` or `raw` step can attach.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// An eventfd.
    #[default]
    Eventfd,
    /// A 2 MiB memfd.
    Memfd,
    /// The write end of a pipe; the back-end must close it (its read end then sees EOF).
    Pipe,
    /// One end of a Unix socket pair; the back-end must close it.
    Socket,
}

/// Which ring index a `send` body names in place of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyQueue {
    /// The first index past the rings GET_QUEUE_NUM's answer stands for.
    PastEnd,
}

/// `send`: a request built from its body's fields, and what its reply must hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// The request.
    pub request: Request,
    /// The body's fields (the payload struct's field names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<toml::Table>,
    /// `"past_end"` puts the first ring index past GET_QUEUE_NUM's count in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<BodyQueue>,
    /// Force NEED_REPLY on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_reply: Option<bool>,
    /// Extra fds to attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<usize>,
    /// Their kind (default eventfd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_kind: Option<FdKind>,
    /// With `expect = "no_reply"`: listen this long (ms) instead of a GET_FEATURES round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The reply's u64 must equal this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// These bits must be set in the reply's u64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_mask: Option<u64>,
    /// The reply's u64 must be non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonzero: Option<bool>,
    /// Bits 0-7 of the reply's u64 (an error code, as SET_DEVICE_STATE_FD's) must be non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<bool>,
    /// The reply's u64 must equal what the session's first GET_FEATURES offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered: Option<bool>,
    /// The reply's payload size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_size: Option<u32>,
    /// SET_CONFIG: the config bytes written (default zeros). GET_CONFIG: the config bytes the
    /// reply must carry after its 12-byte header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hex: Option<Hex>,
    /// The reply's flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_flags: Option<u32>,
    /// The number of fds the reply carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_fds: Option<usize>,
}

impl SendArgs {
    /// A `send` of `request` with its default body and checks.
    pub fn new(request: vhu_protocol::FrontendReq) -> Self {
        Self {
            request: Request(request),
            body: None,
            queue: None,
            need_reply: None,
            fds: None,
            fd_kind: None,
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
        }
    }
}

/// `raw`: a header and payload as given, unvalidated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgs {
    /// The header's request code (a name or any number).
    pub request: RawRequest,
    /// The header's flags (default 1: version 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// The header's size field (default: the payload's length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_size: Option<u32>,
    /// The payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<Hex>,
    /// Extra fds to attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<usize>,
    /// Their kind (default eventfd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_kind: Option<FdKind>,
    /// With `expect = "alive"`: read what comes for this long (ms) before the liveness probe;
    /// with `expect = "no_reply"`: listen this long instead of a round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `sleep`: how long.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// Milliseconds.
    pub ms: u64,
}

/// `net_tx`: frames to transmit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetTxArgs {
    /// The TX ring (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// Frames to send (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    /// Bytes of each Ethernet frame (default 64; at least 22).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_len: Option<u32>,
    /// Descriptors each chain is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Replace the ring's call eventfd first; the completion must be signalled on the new one
    /// only (R-RING-15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_call: Option<bool>,
    /// With `expect = "no_reply"`: how long the chains must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `net_rx_post`: receive buffers to post.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRxPostArgs {
    /// The RX ring (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// Buffers to post (default 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers: Option<u32>,
    /// Bytes of each buffer (default 1526, the header and a full frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_size: Option<u32>,
    /// Descriptors each buffer is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The buffers go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `net_rx`: the frames sent must come back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRxArgs {
    /// The RX ring (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// How long to wait, in ms (default 2000; with `expect = "no_reply"` 500).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `net_ctrl`: a control-queue command.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetCtrlArgs {
    /// The control ring (default: the one after the data rings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// The command class (`VIRTIO_NET_CTRL_RX` = 0).
    pub class: u8,
    /// The command within its class.
    pub command: u8,
    /// The command's data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<Hex>,
    /// The ack byte the device must answer (0 OK, 1 ERR); either when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<u8>,
    /// How long to wait for the answer, in ms (default 1000; none: the scenario is skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `net_complete`: the TX ring whose pending chains must complete now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetQueueArgs {
    /// The TX ring (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
}

/// `rng_read`: entropy requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngReadArgs {
    /// The ring (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// The size of each request, in order (default `[64]`); none may be 0.
    #[serde(
        default,
        deserialize_with = "nonzero_sizes",
        skip_serializing_if = "Option::is_none"
    )]
    pub sizes: Option<Vec<u32>>,
    /// Submit every request at once (one kick) before waiting, instead of one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_once: Option<bool>,
    /// Descriptors each buffer is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The buffers go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Replace the ring's call eventfd first (R-RING-15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_call: Option<bool>,
    /// With `expect = "no_reply"`: how long the requests must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// Entropy request sizes: not empty, none 0 (each request needs a writable byte).
fn nonzero_sizes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    let v = Vec::<u32>::deserialize(d)?;
    if v.is_empty() || v.contains(&0) {
        return Err(serde::de::Error::custom(
            "`sizes` is empty or holds 0: each entropy request needs a writable byte",
        ));
    }
    Ok(Some(v))
}

/// `fs_file`: a file in the shared directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsFileArgs {
    /// Its name in the shared directory's root.
    pub name: String,
    /// Its size (default 4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u32>,
    /// Every byte this value (default: a position-dependent sequence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u8>,
}

/// `fs_init`: the chain's shape.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsChainArgs {
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_getattr`: of the root, or of a file looked up before.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsGetattrArgs {
    /// The file (default: the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_lookup`: a name in the root.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsLookupArgs {
    /// The name.
    pub name: String,
    /// It must not exist (-ENOENT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<bool>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_open`, `fs_release`, `fs_forget`: a file named before.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsNameArgs {
    /// The file.
    pub name: String,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_read`: bytes of an open file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsReadArgs {
    /// The file (opened before).
    pub name: String,
    /// Offset in the file (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_offset: Option<u64>,
    /// Bytes asked for (default 4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_size: Option<u32>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_unknown`: the opcode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsUnknownArgs {
    /// An opcode FUSE does not define (default 9999).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opcode: Option<u32>,
}

/// The vsock steps that name only a connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortArgs {
    /// The host port.
    pub port: u32,
}

/// `vsock_listen`: a host-side listener.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockListenArgs {
    /// The host port.
    pub port: u32,
    /// Bytes the listener writes first, before echoing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
}

/// `vsock_connect`: a connection from the guest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConnectArgs {
    /// The host port.
    pub port: u32,
    /// The receive space the driver announces (default 65536).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buf_alloc: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// RX buffers with the header in its own 44-byte descriptor (default one buffer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_split: Option<bool>,
}

/// `vsock_send`: bytes on a connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSendArgs {
    /// The host port.
    pub port: u32,
    /// Payload bytes.
    pub bytes: u32,
    /// Seed of the byte sequence (default 0x11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u8>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `vsock_recv`: bytes the host listener wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockRecvArgs {
    /// The host port.
    pub port: u32,
    /// Payload bytes.
    pub bytes: u32,
}

/// `vsock_unknown_type`: a REQUEST of a socket type vsock does not define.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockUnknownTypeArgs {
    /// The host port.
    pub port: u32,
    /// The header's type (default 0x7fff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<u16>,
}

/// `vsock_host_connect`: a connection from the host side.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockHostConnectArgs {
    /// The guest port.
    pub port: u32,
    /// Bytes the host side writes first, before echoing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    /// The receive space the driver announces (default 65536).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buf_alloc: Option<u32>,
}

/// `console_ready`: the MULTIPORT handshake.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleReadyArgs {
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// How long to wait for the device's control messages, in ms (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `console_write`: port data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleWriteArgs {
    /// The port (default 0; its transmitq is queue 1, or 2(port + 1) + 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Bytes of each chain (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    /// Chains written (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Every byte value 0 to 255 in turn instead of lowercase text (a port carries bytes; no
    /// encoding is implied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<bool>,
    /// Submit every chain at once (one kick) before waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_once: Option<bool>,
    /// Descriptors each chain is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `console_control`: a control message of the driver's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleControlArgs {
    /// The event (default 0x7f, one the spec does not define).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<u16>,
    /// The port (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// The value (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u16>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `input_config`: one config query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfigArgs {
    /// `VIRTIO_INPUT_CFG_*` (ID_NAME 1, ID_SERIAL 2, ID_DEVIDS 3, PROP_BITS 0x10, EV_BITS
    /// 0x11, ABS_INFO 0x12; another value: a query without information, size 0).
    pub select: u8,
    /// The sub-selector (EV_BITS: the event type; default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsel: Option<u8>,
}

/// `input_post`: eventq buffers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPostArgs {
    /// Buffers posted (default 8), each one 8-byte event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers: Option<u32>,
    /// The buffers go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// How long to watch them, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `input_status`: an event on the statusq.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputStatusArgs {
    /// The event type (default EV_LED, 0x11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ev_type: Option<u16>,
    /// The code (default LED_CAPSL, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The value (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `iotlb`: what it does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IotlbArgs {
    /// The operation.
    pub op: IotlbOp,
    /// Force NEED_REPLY on the IOTLB messages on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_reply: Option<bool>,
    /// `expect_miss`: how long to wait for the miss, in ms (default: the step timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
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

/// The SCMI status a `scmi_command` expects (SCMI 4.1.4).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScmiStatus {
    /// SUCCESS (0).
    Success,
    /// NOT_SUPPORTED (-1).
    NotSupported,
    /// NOT_FOUND (-4).
    NotFound,
    /// Any status but SUCCESS.
    Error,
}

/// `scmi_command`: SCMI commands on the cmdq.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScmiCommandArgs {
    /// The cmdq (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// The SCMI protocol id (default 0x10, BASE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    /// The message id within the protocol.
    pub message: u8,
    /// The command's parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_hex: Option<Hex>,
    /// Device-writable bytes for the response (default 128; at least 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_size: Option<u32>,
    /// The status the response must carry (default: any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ScmiStatus>,
    /// With SUCCESS: the bytes of return values after the status (default: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values_len: Option<u32>,
    /// Commands made available at once (one kick), each with its own token (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The header and the parameters in two descriptors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<bool>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// The message of a `gpio_request` (virtio 1.2 5.18.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpioMessage {
    /// VIRTIO_GPIO_MSG_GET_LINE_NAMES.
    GetLineNames,
    /// VIRTIO_GPIO_MSG_GET_DIRECTION.
    GetDirection,
    /// VIRTIO_GPIO_MSG_SET_DIRECTION (`value`: 0 none, 1 output, 2 input).
    SetDirection,
    /// VIRTIO_GPIO_MSG_GET_VALUE.
    GetValue,
    /// VIRTIO_GPIO_MSG_SET_VALUE (`value`: 0 low, 1 high).
    SetValue,
    /// A message type the spec does not define (0x7f).
    Unknown,
}

/// The status a `gpio_request` or an `i2c_transfer` expects (both devices answer OK 0 / ERR 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpioStatus {
    /// VIRTIO_GPIO_STATUS_OK.
    Ok,
    /// VIRTIO_GPIO_STATUS_ERR.
    Err,
}

/// `gpio_request`: requestq messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioRequestArgs {
    /// The message.
    pub request: GpioMessage,
    /// The line (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpio: Option<u16>,
    /// Send it for every line, 0 to ngpio - 1, one after the other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_lines: Option<bool>,
    /// The line is ngpio, one past the last: the device must answer ERR (R-GPIO-05).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub past_end: Option<bool>,
    /// The request's value field (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// The status the response must carry (default: OK or ERR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<GpioStatus>,
    /// With OK: the value the response must carry (R-GPIO-06, a SHOULD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub want_value: Option<u8>,
    /// Copies made available at once (one kick), answered in order for the same line
    /// (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `i2c_transfer`: requests on the I2C requestq.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I2cTransferArgs {
    /// The 7-bit address of the controlled device (default 0x20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<u8>,
    /// Bytes to read (default 1 when nothing else is asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_len: Option<u32>,
    /// Bytes to write; with `read_len`, a write-read group (FAIL_NEXT on the write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_hex: Option<Hex>,
    /// A request without a buffer (the SMBus "Quick" command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_length: Option<bool>,
    /// The status every request of the step must get (`ok` or `err`; default: either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<GpioStatus>,
    /// Copies of the request (or group) made available at once, answered in order (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
