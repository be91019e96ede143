//! The judging back-end: a strict, minimal vhost-user back-end inside the harness, written on
//! `vhu-protocol` alone (it shares no code with the reference back-end, `mock-backend`). It
//! answers a front-end with a chosen offer, maps its memory, and for blk serves split-ring
//! requests (reads return zeros, GET_ID an id, flush and writes succeed) so a real front-end's
//! firmware gets going; for the other devices it keeps the control plane and discards kicks.
//! It can misbehave on purpose (refuse the memory table, close after N messages), and hands
//! every message it sees to the [`Judge`] first.
//!
//! Its offer, departures and state live here; serving a connection and dispatching its requests
//! is `connection`, with one handler per family of requests (`features`, `memory_table`,
//! `vrings`, `config`, `state`, `channel`), and the data path, channel probes and handed-out
//! resources in `datapath`, `probe` and `resources`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, Header, Message, ProtocolFeatures, VirtioFeatures};

use crate::device::DeviceType;

use super::judge::Judge;

mod channel;
mod config;
mod connection;
mod datapath;
mod features;
mod memory_table;
mod probe;
mod resources;
mod state;
mod vrings;

use super::memory::GuestMap;
use datapath::IotlbEntry;
use probe::Probe;

/// What the judging back-end offers.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The device type it plays.
    pub device: DeviceType,
    /// GET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES.
    pub protocol: u64,
    /// GET_QUEUE_NUM (in the device's reading: queue pairs for net).
    pub queue_num: u64,
    /// GET_MAX_MEM_SLOTS.
    pub max_mem_slots: u64,
    /// The config space GET_CONFIG reads.
    pub config: Vec<u8>,
    /// The shared memory regions GET_SHMEM_CONFIG declares (index = shmid); empty: none.
    pub shmem: Vec<u64>,
}

/// The capacity the blk config space announces, in 512-byte sectors (1 MiB).
pub const BLK_CAPACITY: u64 = 2048;
/// What GET_ID answers (20 bytes, NUL-padded).
pub const BLK_ID: &[u8] = b"vhu-conform-judge";

impl Profile {
    /// A sane offer for `device`: VERSION_1, bit 30, and the protocol features a front-end
    /// uses at start-up (MQ, REPLY_ACK, BACKEND_REQ, CONFIGURE_MEM_SLOTS, CONFIG where the
    /// device has a config space QEMU reads).
    pub fn for_device(device: DeviceType) -> Self {
        let base = VirtioFeatures::VERSION_1.bits() | VirtioFeatures::PROTOCOL_FEATURES.bits();
        let proto = ProtocolFeatures::MQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let (features, protocol, queue_num, config) = match device {
            DeviceType::Block => {
                let mut cfg = vec![0u8; 60];
                cfg[..8].copy_from_slice(&BLK_CAPACITY.to_le_bytes());
                // seg_max (offset 12): SeaBIOS and Linux read it with F_SEG_MAX.
                cfg[12..16].copy_from_slice(&126u32.to_le_bytes());
                cfg[20..24].copy_from_slice(&512u32.to_le_bytes());
                cfg[34..36].copy_from_slice(&1u16.to_le_bytes());
                (
                    base | blk::F_SEG_MAX | blk::F_BLK_SIZE | blk::F_FLUSH,
                    proto | ProtocolFeatures::CONFIG,
                    1,
                    cfg,
                )
            }
            DeviceType::Vsock => (
                base,
                proto | ProtocolFeatures::CONFIG,
                // rx, tx, event.
                3,
                3u64.to_le_bytes().to_vec(),
            ),
            // MRG_RXBUF (15): the header size QEMU assumes with VERSION_1 either way.
            DeviceType::Net => (base | 1 << 15, proto, 1, Vec::new()),
            // hiprio and one request queue.
            DeviceType::Fs => (base, proto, 2, Vec::new()),
            _ => (base, proto, 1, Vec::new()),
        };
        Self {
            device,
            features,
            protocol: protocol.bits(),
            queue_num,
            max_mem_slots: 32,
            config,
            shmem: Vec::new(),
        }
    }
}

/// A chosen departure of the judging back-end, to see what the front-end does about it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// None: a normal back-end.
    None,
    /// Acks SET_MEM_TABLE and ADD_MEM_REG with 1 (failure) when NEED_REPLY asks.
    NackMemTable,
    /// Closes the connection after answering this many messages (the first connection only).
    CloseAfter(usize),
    /// Once the front-end gave a back-end channel and REPLY_ACK is negotiated, sends it
    /// requests with NEED_REPLY (CONFIG_CHANGE_MSG where CONFIG is negotiated, then an unknown
    /// code) at a moment it waits for nothing, serving the main socket while the acks come
    /// (R-ACK-08, R-WIRE-16, R-BCH-08).
    ChannelProbe,
    /// On the first request after SET_BACKEND_REQ_FD that the front-end awaits a reply to,
    /// sends a NEED_REPLY channel request first and blocks on its ack before answering, as a
    /// simple single-threaded back-end does (R-BCH-07).
    ChannelBlock,
    /// Closes the first connection right after the first SET_VRING_KICK: the rings ran, and a
    /// front-end that reconnects must give the inflight buffer back (R-INFL-03).
    CloseAfterKick,
    /// With SHMEM negotiated and a ring running, sends SHMEM_MAP/UNMAP requests the spec has
    /// succeed or fail (R-SHM-06/07/08/14), one at a time, each with NEED_REPLY.
    ShmemProbe,
}

/// The size of the one shared memory region the SHMEM scenario declares (shmid 0).
pub const SHMEM_REGION: u64 = 0x1_0000;
/// How long the main socket is silent before [`JudgingBackend::idle_probe`] asks the
/// front-end whether it still serves its channel. Long against a front-end's own pace (a few
/// ms between setup messages), short against the scenario's time.
pub const IDLE_BEFORE_PROBE: Duration = Duration::from_millis(1000);
/// At most this many IOTLB misses per connection: a front-end that never sends the update
/// is judged on the first and not asked forever.
const MAX_MISSES: usize = 16;

/// A code no back-end request has (the spec's run 1..=10 and crosvm's 1002..): R-BCH-08.
pub const UNKNOWN_BACKEND_REQ: u32 = 99;
/// How long the judging back-end waits for a channel ack. Shorter than the 2 s a front-end
/// typically waits for a main-socket reply, so a front-end that cannot serve the channel while
/// it waits does not give up on the main socket first.
pub const CHANNEL_ACK_WAIT: Duration = Duration::from_millis(1500);

/// One message as the judging back-end saw or sent it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Microseconds since the run started.
    pub at_us: u64,
    /// From the front-end (true) or to it.
    pub from_frontend: bool,
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
    /// fds attached.
    pub fds: usize,
    /// On the back-end channel (else the main socket).
    pub on_channel: bool,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The front-end closed it.
    FrontendClosed,
    /// The judging back-end closed it on purpose ([`Misbehave::CloseAfter`]).
    WeClosed,
    /// The front-end sent something unreadable (framing, too many fds): closed.
    Unreadable(String),
    /// The run's time ran out, or the front-end process is gone.
    Stopped,
    /// The front-end hung: silent on the main socket and no answer on its channel; the
    /// judging back-end hung up.
    Hung,
}

#[derive(Debug, Default)]
struct Ring {
    num: u16,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    used_idx: u16,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    started: bool,
    enabled: bool,
    /// Polling was asked (bit 8 on KICK): look at the ring on every turn.
    poll: bool,
}

/// The judging back-end of one run (possibly several connections).
#[derive(Debug)]
pub struct JudgingBackend {
    profile: Profile,
    misbehave: Misbehave,
    /// The judge every message goes through.
    pub judge: Judge,
    /// Every message both ways.
    pub records: Vec<Recorded>,
    /// blk requests completed.
    pub served: usize,
    /// Connections accepted.
    pub connections: usize,
    mem: GuestMap,
    rings: BTreeMap<u32, Ring>,
    acked_features: u64,
    acked_protocol: u64,
    backend_channel: Option<Connection>,
    /// Channel requests still to send.
    probes: Vec<Probe>,
    /// A channel request sent and not yet acked, and when it went.
    pending: Option<(Probe, Instant)>,
    /// The channel is usable for probes: a message after SET_BACKEND_REQ_FD was answered.
    channel_armed: bool,
    /// [`Misbehave::ChannelBlock`] has blocked once.
    blocked_once: bool,
    start: Instant,
    /// Ask an idle front-end once per connection whether it still serves its channel: no
    /// answer is a hang (R-ACK-08).
    pub idle_probe: bool,
    /// When the front-end last sent on the main socket.
    last_main: Instant,
    /// The liveness probe went on this connection.
    liveness_sent: bool,
    /// The first SHMEM map was acked 0: the probes that need it are due.
    shmem_mapped: bool,
    /// The IOTLB entries of this connection.
    iotlb: Vec<IotlbEntry>,
    /// The first address a translation missed since the last look (IOMMU mode).
    miss: Cell<Option<(u64, u8)>>,
    /// Misses sent on this connection.
    misses: usize,
    /// Inflight buffers handed out, kept open so no later memfd can take their inode.
    inflight_fds: Vec<OwnedFd>,
    /// What happened that is no finding but a reader wants to know (a liveness probe that
    /// was answered, an ADVISE without a userfaultfd).
    pub notes: Vec<String>,
}

impl JudgingBackend {
    /// A judging back-end with this offer and departure, judged by `judge`.
    pub fn new(profile: Profile, misbehave: Misbehave, judge: Judge) -> Self {
        Self {
            profile,
            misbehave,
            judge,
            records: Vec::new(),
            served: 0,
            connections: 0,
            mem: GuestMap::default(),
            rings: BTreeMap::new(),
            acked_features: 0,
            acked_protocol: 0,
            backend_channel: None,
            probes: Vec::new(),
            pending: None,
            channel_armed: false,
            blocked_once: false,
            start: Instant::now(),
            idle_probe: false,
            last_main: Instant::now(),
            liveness_sent: false,
            shmem_mapped: false,
            iotlb: Vec::new(),
            miss: Cell::new(None),
            misses: 0,
            inflight_fds: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn record(&mut self, from_frontend: bool, header: Header, payload: &[u8], fds: usize) {
        self.records.push(Recorded {
            at_us: self.start.elapsed().as_micros() as u64,
            from_frontend,
            header,
            payload: payload.to_vec(),
            fds,
            on_channel: false,
        });
    }

    fn record_channel(&mut self, from_frontend: bool, header: Header, payload: &[u8], fds: usize) {
        self.record(from_frontend, header, payload, fds);
        if let Some(r) = self.records.last_mut() {
            r.on_channel = true;
        }
    }

    fn reply_ack_acked(&self) -> bool {
        self.acked_protocol & ProtocolFeatures::REPLY_ACK.bits() != 0
    }

    fn reply(&mut self, conn: &Connection, code: u32, body: &Body) {
        let payload = body.encode();
        let header = Header::reply(code, payload.len() as u32);
        self.record(false, header, &payload, 0);
        // A front-end that is gone shows on the next receive.
        let _ = conn.send(header, &payload, &[]);
    }

    fn ack(&mut self, conn: &Connection, msg: &Message, req: FrontendReq, value: u64) {
        let asked = msg.header.need_reply()
            && self.acked_protocol & ProtocolFeatures::REPLY_ACK.bits() != 0;
        self.judge.answered(req, asked.then_some(value));
        if asked {
            self.reply(conn, msg.header.request, &Body::U64(value));
        }
    }

    /// Whether the front-end gave a back-end channel on the current connection. Outside the
    /// channel scenarios nothing is sent on it; it is only kept open (closing it could make a
    /// front-end tear the session down).
    pub fn has_channel(&self) -> bool {
        self.backend_channel.is_some()
    }

    /// How long the run has lasted.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
