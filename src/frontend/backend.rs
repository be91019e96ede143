//! The judging back-end: a strict, minimal vhost-user back-end inside the harness, written on
//! `vhu-protocol` alone (it shares no code with the reference back-end, `mock-backend`). It
//! answers a front-end with a chosen offer, maps its memory, and for blk serves split-ring
//! requests (reads return zeros, GET_ID an id, flush and writes succeed) so a real front-end's
//! firmware gets going; for the other devices it keeps the control plane and discards kicks.
//! It can misbehave on purpose (refuse the memory table, close after N messages), and hands
//! every message it sees to the [`Judge`] first.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, ConfigHeader, ShmemConfig, VringState};
use vhu_protocol::{
    BackendReq, Connection, FrontendReq, Header, Message, ProtocolFeatures, VirtioFeatures,
};

use crate::device::DeviceType;

use super::judge::Judge;

mod datapath;
mod probe;
mod resources;

use super::memory::GuestMap;
use datapath::{IotlbEntry, drain_eventfd};
use probe::{Probe, ProbeKind, shmem_probes};
use resources::{transfer_state, userfaultfd};

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

    /// The channel request for [`Misbehave::ChannelBlock`]: a known one where its feature is
    /// negotiated (CONFIG_CHANGE_MSG needs CONFIG), else the unknown code.
    fn block_code(&self) -> u32 {
        if self.acked_protocol & ProtocolFeatures::CONFIG.bits() != 0 {
            BackendReq::ConfigChangeMsg as u32
        } else {
            UNKNOWN_BACKEND_REQ
        }
    }

    /// [`Misbehave::ChannelBlock`]: before answering `msg`, which the front-end waits on, block
    /// on a channel ack as a single-threaded back-end does.
    fn maybe_block(&mut self, msg: &Message) {
        if self.misbehave != Misbehave::ChannelBlock
            || self.blocked_once
            || !self.channel_armed
            || !self.reply_ack_acked()
        {
            return;
        }
        let Ok(req) = FrontendReq::from_code(msg.header.request) else {
            return;
        };
        let awaited = req.reply_kind() == vhu_protocol::wire::ReplyKind::Always
            || (msg.header.need_reply()
                && req.reply_kind() == vhu_protocol::wire::ReplyKind::AckOnly);
        if !awaited || req == FrontendReq::SetBackendReqFd {
            return;
        }
        self.blocked_once = true;
        let code = self.block_code();
        if !self.send_channel(code) {
            self.judge.channel_blocked(code, req, None);
            return;
        }
        let reply = self.backend_channel.as_ref().map(|ch| ch.recv_unchecked());
        match reply {
            Some(Ok(m)) => {
                self.record_channel(true, m.header, &m.payload, m.fds.len());
                self.judge.channel_blocked(code, req, Some(&m));
            }
            _ => self.judge.channel_blocked(code, req, None),
        }
    }

    fn reply(&mut self, conn: &Connection, code: u32, body: &Body) {
        let payload = body.encode();
        let header = Header::reply(code, payload.len() as u32);
        self.record(false, header, &payload, 0);
        // A front-end that is gone shows on the next receive.
        let _ = conn.send(header, &payload, &[]);
    }

    /// Serves one connection until the front-end closes it, `stop` says so, or `deadline`.
    pub fn serve(
        &mut self,
        conn: Connection,
        deadline: Instant,
        stop: &mut dyn FnMut() -> bool,
    ) -> End {
        self.connections += 1;
        self.judge.new_connection();
        self.mem.clear();
        self.rings.clear();
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.backend_channel = None;
        self.pending = None;
        self.channel_armed = false;
        self.blocked_once = false;
        self.probes = Vec::new();
        self.last_main = Instant::now();
        self.liveness_sent = false;
        self.shmem_mapped = false;
        self.iotlb.clear();
        self.misses = 0;
        let mut handled = 0usize;
        loop {
            if Instant::now() >= deadline {
                return End::Stopped;
            }
            if stop() {
                // The process is gone; what it sent before it went (and the hang-up its exit
                // caused) is still read, so an ending the front-end chose is judged as one.
                let mut pfd = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
                let readable = poll(&mut pfd, PollTimeout::ZERO).is_ok_and(|n| n > 0);
                if !readable {
                    return End::Stopped;
                }
            }
            let kicks: Vec<u32> = self
                .rings
                .iter()
                .filter(|(_, r)| r.started && r.kick.is_some())
                .map(|(i, _)| *i)
                .collect();
            self.next_probe();
            self.maybe_liveness();
            if let Some((p, at)) = &self.pending {
                if at.elapsed() >= CHANNEL_ACK_WAIT {
                    // No ack in time: judged once, and the channel is not probed again (one
                    // missing ack is one finding, not one per probe).
                    let p = p.clone();
                    self.pending = None;
                    self.probes.clear();
                    self.judge_probe(&p, None, true);
                    if matches!(p.kind, ProbeKind::Liveness) {
                        return End::Hung;
                    }
                }
            }
            let channel_fd = self
                .pending
                .as_ref()
                .and(self.backend_channel.as_ref())
                .map(|c| c.stream().as_raw_fd());
            let mut fds = vec![PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
            // SAFETY: the channel's fd lives in self.backend_channel for the whole poll.
            let channel_borrow = channel_fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
            if let Some(b) = channel_borrow {
                fds.push(PollFd::new(b, PollFlags::POLLIN));
            }
            let kick_base = fds.len();
            for i in &kicks {
                if let Some(k) = &self.rings[i].kick {
                    fds.push(PollFd::new(k.as_fd(), PollFlags::POLLIN));
                }
            }
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            // The main socket first: a front-end that sent an IOTLB update and then acked the
            // miss on its channel is seen in that order (R-IOTLB-04).
            if ready[0] {
                let msg = match conn.recv_unchecked() {
                    Ok(m) => m,
                    Err(e) if e.is_peer_gone() => return End::FrontendClosed,
                    Err(e) => return End::Unreadable(e.to_string()),
                };
                self.last_main = Instant::now();
                self.record(true, msg.header, &msg.payload, msg.fds.len());
                self.judge.observe(&msg);
                self.maybe_block(&msg);
                let after_channel = self.backend_channel.is_some()
                    && msg.header.request != FrontendReq::SetBackendReqFd as u32;
                let kick = msg.header.request == FrontendReq::SetVringKick as u32;
                self.handle(&conn, msg);
                // Probes start once a message after SET_BACKEND_REQ_FD was answered: the
                // front-end has had its ack and serves the channel by then.
                self.channel_armed |= after_channel;
                handled += 1;
                if self.connections == 1
                    && (self.misbehave == Misbehave::CloseAfter(handled)
                        || self.misbehave == Misbehave::CloseAfterKick && kick)
                {
                    return End::WeClosed;
                }
            }
            if channel_fd.is_some() && ready[1] && self.pending.is_some() {
                if let Some((p, _)) = self.pending.take() {
                    let got = self.backend_channel.as_ref().map(|c| c.recv_unchecked());
                    match got {
                        Some(Ok(m)) => {
                            self.record_channel(true, m.header, &m.payload, m.fds.len());
                            self.judge_probe(&p, Some(&m), false);
                        }
                        _ => {
                            // The channel closed: the front-end is going away, which is no
                            // hang (its main socket's end follows).
                            self.probes.clear();
                            self.judge_probe(&p, None, false);
                        }
                    }
                }
            }
            for (n, i) in kicks.iter().enumerate() {
                if ready[n + kick_base] {
                    if let Some(k) = &self.rings[i].kick {
                        drain_eventfd(k);
                    }
                    self.judge.kicked(*i);
                    self.process(*i);
                }
            }
            let polled: Vec<u32> = self
                .rings
                .iter()
                .filter(|(_, r)| r.started && r.poll)
                .map(|(i, _)| *i)
                .collect();
            for i in polled {
                self.process(i);
            }
        }
    }

    fn ack(&mut self, conn: &Connection, msg: &Message, req: FrontendReq, value: u64) {
        let asked = msg.header.need_reply()
            && self.acked_protocol & ProtocolFeatures::REPLY_ACK.bits() != 0;
        self.judge.answered(req, asked.then_some(value));
        if asked {
            self.reply(conn, msg.header.request, &Body::U64(value));
        }
    }

    fn handle(&mut self, conn: &Connection, msg: Message) {
        use FrontendReq::*;
        let Ok(req) = FrontendReq::from_code(msg.header.request) else {
            return;
        };
        let body = Body::decode(req.request_body(), &msg.payload).ok();
        let code = msg.header.request;
        let p = self.profile.clone();
        match (req, body) {
            (GetFeatures, _) => self.reply(conn, code, &Body::U64(p.features)),
            (GetProtocolFeatures, _) => self.reply(conn, code, &Body::U64(p.protocol)),
            (GetQueueNum, _) => self.reply(conn, code, &Body::U64(p.queue_num)),
            (GetMaxMemSlots, _) => self.reply(conn, code, &Body::U64(p.max_mem_slots)),
            (GetStatus, _) => self.reply(conn, code, &Body::U64(0)),
            (SetLogBase, _) => self.reply(conn, code, &Body::U64(0)),
            (GetConfig, Some(Body::Config(h, _))) => {
                let mut bytes = vec![0u8; h.size as usize];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = p.config.get(h.offset as usize + i).copied().unwrap_or(0);
                }
                self.reply(conn, code, &Body::Config(ConfigHeader { ..h }, bytes));
            }
            (GetVringBase | GetVringBaseSkipDrain, Some(Body::VringState(s))) => {
                let num = self.rings.get_mut(&s.index).map_or(0, |r| {
                    r.started = false;
                    r.kick = None;
                    r.last_avail
                });
                let state = VringState {
                    index: s.index,
                    num: u32::from(num),
                };
                self.reply(conn, code, &Body::VringState(state));
            }
            (PostcopyAdvise, _) => {
                // The userfaultfd, or no fd (the error form) where the host allows none.
                let ufd = userfaultfd();
                if ufd.is_none() {
                    self.notes.push(
                        "POSTCOPY_ADVISE answered without a userfaultfd: the host allows none"
                            .into(),
                    );
                }
                let header = Header::reply(code, 0);
                let fds: Vec<BorrowedFd<'_>> = ufd.iter().map(|f| f.as_fd()).collect();
                self.record(false, header, &[], fds.len());
                let _ = conn.send(header, &[], &fds);
            }
            (PostcopyEnd | CheckDeviceState, _) => self.reply(conn, code, &Body::U64(0)),
            (SetDeviceStateFd, Some(Body::DeviceState(d))) => {
                let fd = msg.fds.into_iter().next();
                // Success, bit 8: no fd of our own, the front-end's is used.
                let ok = fd.is_some() && d.phase == 0 && d.direction <= 1;
                self.reply(conn, code, &Body::U64(if ok { 0x100 } else { 1 }));
                if let (true, Some(fd)) = (ok, fd) {
                    transfer_state(d.direction, fd);
                }
            }
            (GetInflightFd, Some(Body::Inflight(ask))) => self.give_inflight(conn, code, ask),
            (GetShmemConfig, _) => {
                let mut c = ShmemConfig::default();
                for (i, &size) in p.shmem.iter().enumerate().take(c.sizes.len()) {
                    c.sizes[i] = size;
                }
                c.nregions = p.shmem.iter().filter(|&&n| n != 0).count() as u32;
                self.reply(conn, code, &Body::ShmemConfig(Box::new(c)));
            }
            (IotlbMsg, Some(Body::Iotlb(t))) => {
                match t.kind {
                    2 => self.iotlb.push(IotlbEntry {
                        iova: t.iova,
                        size: t.size,
                        uaddr: t.uaddr,
                        perm: t.perm,
                    }),
                    3 => self.iotlb.retain(|e| {
                        !(e.iova < t.iova.saturating_add(t.size)
                            && t.iova < e.iova.saturating_add(e.size))
                    }),
                    _ => {}
                }
                self.reply(conn, code, &Body::U64(0));
                // An update may be what a stalled ring waited for.
                let started: Vec<u32> = self.rings.keys().copied().collect();
                for i in started {
                    self.process(i);
                }
            }
            (r, _) if r.reply_kind() == vhu_protocol::wire::ReplyKind::Always => {
                // An explicit-reply request this back-end does not implement (it offered
                // nothing that gates it): the error form, an empty payload, so the front-end
                // is not left waiting.
                self.reply(conn, code, &Body::Empty);
            }
            (SetFeatures, Some(Body::U64(f))) => {
                self.acked_features = f;
                self.ack(conn, &msg, req, 0);
            }
            (SetProtocolFeatures, Some(Body::U64(f))) => {
                // Takes effect at once (R-NEG-03): its own ack is already due under it.
                self.acked_protocol = f;
                self.ack(conn, &msg, req, 0);
            }
            (SetMemTable, Some(Body::MemTable(regions))) => {
                self.mem.clear();
                let mut ok = regions.len() == msg.fds.len();
                if ok {
                    for (r, fd) in regions.iter().zip(&msg.fds) {
                        ok &= self.mem.add(*r, fd).is_ok();
                    }
                }
                let nack = self.misbehave == Misbehave::NackMemTable;
                self.ack(conn, &msg, req, u64::from(!ok || nack));
            }
            (AddMemReg, Some(Body::SingleRegion(r))) => {
                let ok = msg.fds.len() == 1 && self.mem.add(r, &msg.fds[0]).is_ok();
                let nack = self.misbehave == Misbehave::NackMemTable;
                self.ack(conn, &msg, req, u64::from(!ok || nack));
            }
            (RemMemReg, Some(Body::SingleRegion(r))) => {
                let ok = self.mem.remove(&r);
                self.ack(conn, &msg, req, u64::from(!ok));
            }
            (SetVringNum, Some(Body::VringState(s))) => {
                self.rings.entry(s.index).or_default().num = s.num as u16;
                self.ack(conn, &msg, req, 0);
            }
            (SetVringBase, Some(Body::VringState(s))) => {
                let r = self.rings.entry(s.index).or_default();
                r.last_avail = s.num as u16;
                r.used_idx = s.num as u16;
                self.ack(conn, &msg, req, 0);
            }
            (SetVringAddr, Some(Body::VringAddr(a))) if self.iommu() => {
                // IOVAs: translated through the IOTLB on every access.
                let r = self.rings.entry(a.index).or_default();
                (r.desc, r.avail, r.used) = (a.desc, a.avail, a.used);
                self.ack(conn, &msg, req, 0);
            }
            (SetVringAddr, Some(Body::VringAddr(a))) => {
                // Ring locations are user addresses: kept as guest addresses for the data
                // path.
                let g = |ua| self.mem.user_to_guest(ua);
                let (d, av, u) = (g(a.desc), g(a.avail), g(a.used));
                let r = self.rings.entry(a.index).or_default();
                let ok = d.is_some() && av.is_some() && u.is_some();
                (r.desc, r.avail, r.used) = (d.unwrap_or(0), av.unwrap_or(0), u.unwrap_or(0));
                self.ack(conn, &msg, req, u64::from(!ok));
            }
            (SetVringKick, Some(Body::U64(w))) => {
                let bit30 = self.acked_features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
                let r = self.rings.entry((w & 0xff) as u32).or_default();
                r.kick = msg.fds.into_iter().next();
                r.poll = r.kick.is_none();
                r.started = true;
                // Without bit 30 a ring starts enabled (spec "Ring states").
                r.enabled |= !bit30;
                let idx = (w & 0xff) as u32;
                self.process(idx);
                let m = Message {
                    header: msg.header,
                    payload: msg.payload,
                    fds: Vec::new(),
                };
                self.ack(conn, &m, req, 0);
            }
            (SetVringCall, Some(Body::U64(w))) => {
                let r = self.rings.entry((w & 0xff) as u32).or_default();
                r.call = msg.fds.into_iter().next();
                let m = Message {
                    header: msg.header,
                    payload: msg.payload,
                    fds: Vec::new(),
                };
                self.ack(conn, &m, req, 0);
            }
            (SetVringEnable, Some(Body::VringState(s))) => {
                self.rings.entry(s.index).or_default().enabled = s.num == 1;
                self.process(s.index);
                self.ack(conn, &msg, req, 0);
            }
            (VringKick, Some(Body::VringState(s))) => {
                self.process(s.index);
                self.ack(conn, &msg, req, 0);
            }
            (SetBackendReqFd, _) => {
                let mut fds = msg.fds;
                self.backend_channel = fds.pop().map(|fd| {
                    Connection::new(
                        std::os::unix::net::UnixStream::from(fd),
                        Some(CHANNEL_ACK_WAIT),
                    )
                });
                if self.misbehave == Misbehave::ChannelProbe {
                    self.probes = if self.acked_protocol & ProtocolFeatures::CONFIG.bits() != 0 {
                        vec![
                            Probe::plain(BackendReq::ConfigChangeMsg as u32),
                            Probe::plain(UNKNOWN_BACKEND_REQ),
                        ]
                    } else {
                        vec![Probe::plain(UNKNOWN_BACKEND_REQ)]
                    };
                }
                if self.misbehave == Misbehave::ShmemProbe {
                    self.probes = shmem_probes();
                }
                let m = Message {
                    header: msg.header,
                    payload: msg.payload,
                    fds: Vec::new(),
                };
                self.ack(conn, &m, req, 0);
            }
            (ResetDevice, _) => {
                self.rings.clear();
                self.ack(conn, &msg, req, 0);
            }
            _ => self.ack(conn, &msg, req, 0),
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
