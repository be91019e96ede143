//! `vhu-conform mock-frontend --socket-path PATH --device blk [--fault NAME]`: a small front-end
//! built on the mock-frontend crate, to prove every front-end check. Honest, it does a normal
//! session (negotiate, memory table, ring 0, a few blk requests, stop the ring) and exits 0; it
//! gives up with status 1 when the back-end refuses something or goes away. Each fault mode
//! breaks exactly one front-end rule, which a front-end scenario must catch.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vhu_mock_frontend::blk::{BlkReq, blk_request};
use vhu_mock_frontend::inflight::InflightBuffer;
use vhu_mock_frontend::memory::RegionSpec;
use vhu_mock_frontend::{
    Ack, DriverQueue, GuestMemory, RingLayout, Session, SessionError, SessionOptions, Wanted,
};
use vhu_protocol::wire::payload::{Body, VringAddr, VringState};
use vhu_protocol::{
    BackendReq, Connection, FrontendReq, Header, Message, ProtocolFeatures, RawMessage,
    VirtioFeatures,
};

use crate::device::DeviceType;

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
    fn own_channel(self) -> bool {
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

/// What the faulty channel shares with the session: `idle` once the main session awaits
/// nothing more, `hung` once the front-end stopped ([`FeFault::HangAfterNack`]), the SHMEM
/// region sizes GET_SHMEM_CONFIG gave, and how many requests came.
#[derive(Clone, Default)]
struct ChannelShared {
    idle: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
    shmem: Arc<Mutex<Vec<u64>>>,
    seen: Arc<AtomicUsize>,
}

/// The faulty channel's SHMEM bookkeeping: mappings as (shmid, offset, len), refused as the
/// spec says except where the fault says otherwise.
fn shmem_answer(fault: FeFault, sizes: &[u64], maps: &mut Vec<(u8, u64, u64)>, m: &Message) -> u64 {
    let Ok(Body::ShmemMap(r)) =
        Body::decode(vhu_protocol::wire::payload::BodyKind::ShmemMap, &m.payload)
    else {
        return 1;
    };
    let size = sizes.get(usize::from(r.shmid)).copied().unwrap_or(0);
    let overlaps = |(id, o, l): &(u8, u64, u64)| {
        *id == r.shmid && *o < r.shm_offset.saturating_add(r.len) && r.shm_offset < o + l
    };
    if m.header.request == BackendReq::ShmemUnmap as u32 {
        let before = maps.len();
        if fault == FeFault::ShmemUnmapAnyRange {
            maps.retain(|x| !overlaps(x));
        } else {
            maps.retain(|&(id, o, l)| !(id == r.shmid && o == r.shm_offset && l == r.len));
        }
        return u64::from(maps.len() == before);
    }
    let bad_flags = r.flags & !1 != 0 || r.len == 0;
    let refused = size == 0
        || r.shm_offset.saturating_add(r.len) > size
        || (bad_flags && fault != FeFault::ShmemAcceptsBadFlags)
        || (maps.iter().any(overlaps) && fault != FeFault::ShmemAcceptsOverlap)
        || m.fds.len() != 1;
    if !refused {
        maps.push((r.shmid, r.shm_offset, r.len));
    }
    u64::from(refused)
}

/// A faulty server of the back-end channel (the honest one is the mock-frontend crate's
/// `BackendChannel`): it breaks the one rule its fault names. `idle` is set once the main
/// session awaits nothing more ([`FeFault::ChannelOnlyWhenIdle`] waits for it).
fn faulty_channel(
    s: &mut Session,
    fault: FeFault,
    shared: ChannelShared,
) -> Result<std::thread::JoinHandle<()>, SessionError> {
    let local = |what: &str| {
        let what = what.to_string();
        move |source| SessionError::Local { what, source }
    };
    let (ours, theirs) = UnixStream::pair().map_err(local("cannot create the channel pair"))?;
    s.request(
        FrontendReq::SetBackendReqFd,
        &Body::Empty,
        &[theirs.as_fd()],
        None,
    )?;
    drop(theirs);
    let conn = Connection::new(ours, Some(Duration::from_millis(50)));
    std::thread::Builder::new()
        .name("faulty-channel".into())
        .spawn(move || {
            let idle = shared.idle;
            let mut maps = Vec::new();
            loop {
                let m = match conn.recv_unchecked() {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => {
                        let stay =
                            matches!(fault, FeFault::ChannelOnlyWhenIdle | FeFault::HangAfterNack);
                        if idle.load(Ordering::Relaxed) && !stay {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                shared.seen.fetch_add(1, Ordering::Relaxed);
                let shmem = [BackendReq::ShmemMap as u32, BackendReq::ShmemUnmap as u32]
                    .contains(&m.header.request);
                let silent = fault == FeFault::ChannelNoAck
                    || (fault == FeFault::ShmemNoAck && shmem)
                    || shared.hung.load(Ordering::Relaxed);
                if !m.header.need_reply() || silent {
                    continue;
                }
                let known = BackendReq::from_code(m.header.request).is_ok();
                let value: u64 = match fault {
                    FeFault::ChannelAcksUnknownCode => 0,
                    _ if shmem => {
                        let sizes = shared.shmem.lock().map(|v| v.clone()).unwrap_or_default();
                        shmem_answer(fault, &sizes, &mut maps, &m)
                    }
                    _ => u64::from(!known),
                };
                let mut header = Header::reply(m.header.request, 8);
                if fault == FeFault::ChannelReplyWithoutReplyFlag {
                    header.flags = 0x1;
                }
                if fault == FeFault::ChannelOnlyWhenIdle {
                    while !idle.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                let _ = conn.send(header, &value.to_le_bytes(), &[]);
            }
        })
        .map_err(local("cannot start the channel thread"))
}

/// The mock front-end's command line.
#[derive(Debug, Parser)]
#[command(
    name = "vhu-conform mock-frontend",
    about = "A mock vhost-user front-end with fault modes"
)]
pub struct MockArgs {
    /// The back-end's socket.
    #[arg(long)]
    pub socket_path: PathBuf,
    /// The device type (blk gets requests; the others ring setup only).
    #[arg(long, default_value = "blk")]
    pub device: String,
    /// A fault mode.
    #[arg(long, value_enum)]
    pub fault: Option<FeFault>,
}

/// `vhu-conform mock-frontend ARGS`.
pub fn run_from_args(argv: Vec<OsString>) -> ExitCode {
    let rest = std::iter::once(OsString::from("vhu-conform mock-frontend"))
        .chain(argv.into_iter().skip(2));
    let a = match MockArgs::try_parse_from(rest) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let device = match DeviceType::parse(&a.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match session(&a, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if a.fault == Some(FeFault::AbortOnDisconnect) && e.is_backend_fault() {
                std::process::abort();
            }
            eprintln!("vhu-conform mock-frontend: {e}");
            ExitCode::from(1)
        }
    }
}

fn gave_up(what: &str, value: u64) -> SessionError {
    SessionError::Local {
        what: format!("the back-end refused {what} ({value}): giving up"),
        source: std::io::Error::other("refused"),
    }
}

fn raw(code: FrontendReq, flags: u32, payload: Vec<u8>) -> RawMessage {
    let header = Header {
        request: code as u32,
        flags,
        size: payload.len() as u32,
    };
    RawMessage::new(header, payload)
}

/// What outlives one connection: the inflight buffer and whether a ring ran with it, which
/// is what a reconnect gives back (R-INFL-03).
#[derive(Default)]
struct Carry {
    inflight: Option<InflightBuffer>,
    ring_ran: bool,
    reconnect: bool,
}

/// The session, and once more where the back-end hung up after a ring ran with an inflight
/// buffer: that buffer is for exactly this, so the front-end reconnects and gives it back.
fn session(a: &MockArgs, device: DeviceType) -> Result<(), SessionError> {
    let mut carry = Carry::default();
    match connection(a, device, &mut carry) {
        Err(SessionError::Closed { .. }) if carry.inflight.is_some() && carry.ring_ran => {
            carry.reconnect = true;
            connection(a, device, &mut carry)
        }
        r => r,
    }
}

/// The protocol features the mock front-end takes when offered: the mock-frontend crate's set
/// and those the front-end scenarios offer on purpose.
fn wanted_protocol() -> u64 {
    Wanted::all().protocol
        | (ProtocolFeatures::GPA_ADDRESSES
            | ProtocolFeatures::INFLIGHT_SHMFD
            | ProtocolFeatures::INBAND_NOTIFICATIONS
            | ProtocolFeatures::PAGEFAULT)
            .bits()
}

/// Drops what cannot be negotiated together: INBAND_NOTIFICATIONS needs BACKEND_REQ and
/// REPLY_ACK (R-INB-01), postcopy is not used with CONFIGURE_MEM_SLOTS (R-PC-01).
fn consistent(mut proto: u64) -> u64 {
    let has = |p: u64, f: ProtocolFeatures| p & f.bits() != 0;
    if !(has(proto, ProtocolFeatures::BACKEND_REQ) && has(proto, ProtocolFeatures::REPLY_ACK)) {
        proto &= !ProtocolFeatures::INBAND_NOTIFICATIONS.bits();
    }
    if has(proto, ProtocolFeatures::CONFIGURE_MEM_SLOTS) {
        proto &= !ProtocolFeatures::PAGEFAULT.bits();
    }
    proto
}

/// Waits until the back-end channel has seen a request and then nothing for 300 ms (at most
/// 3 s): the SHMEM scenario's requests come while a ring runs.
fn channel_settles(count: &dyn Fn() -> usize) {
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let (mut last, mut since) = (count(), std::time::Instant::now());
    while std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        let n = count();
        if n != last {
            (last, since) = (n, std::time::Instant::now());
        } else if n > 0 && since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

/// A save (direction 0) through a pipe: SET_DEVICE_STATE_FD, read to EOF (at most 2 s), then
/// CHECK_DEVICE_STATE.
fn save_state(s: &mut Session) -> Result<(), SessionError> {
    use std::io::Read;
    let local = |what: &str, e: std::io::Error| SessionError::Local {
        what: what.into(),
        source: e,
    };
    let (r, w) = nix::unistd::pipe().map_err(|e| local("cannot create a pipe", e.into()))?;
    let mut m = s.set_device_state_fd(0, w.as_fd())?;
    drop(w);
    let v = m.u64().unwrap_or(1);
    if v & 0xff != 0 {
        return Err(gave_up("SET_DEVICE_STATE_FD", v));
    }
    // Bit 8 clear: the back-end's own fd replaces the pipe.
    let read_end = if v & 0x100 == 0 && !m.fds.is_empty() {
        m.fds.remove(0)
    } else {
        r
    };
    let mut f = std::fs::File::from(read_end);
    let _ = nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < until {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(local("cannot read the device state", e)),
        }
    }
    let check = s.check_device_state()?;
    if check != 0 {
        return Err(gave_up("CHECK_DEVICE_STATE", check));
    }
    Ok(())
}

/// POSTCOPY_ADVISE, and with its userfaultfd POSTCOPY_LISTEN and POSTCOPY_END.
fn postcopy(s: &mut Session, listen_first: bool) -> Result<(), SessionError> {
    if listen_first {
        s.request(FrontendReq::PostcopyListen, &Body::Empty, &[], None)?;
    }
    let advised = s.request(FrontendReq::PostcopyAdvise, &Body::Empty, &[], None)?;
    if advised.is_some_and(|m| m.fds.len() == 1) {
        s.request(FrontendReq::PostcopyListen, &Body::Empty, &[], None)?;
        s.request(FrontendReq::PostcopyEnd, &Body::Empty, &[], None)?;
    }
    Ok(())
}

fn connection(a: &MockArgs, device: DeviceType, carry: &mut Carry) -> Result<(), SessionError> {
    let fault = a.fault;
    let is = |f: FeFault| fault == Some(f);
    let opts = SessionOptions {
        reply_timeout: Duration::from_secs(2),
        auto_need_reply: true,
    };
    let mut s = Session::connect(&a.socket_path, opts)?;
    let offered = s.get_features()?;
    let bit30 = VirtioFeatures::PROTOCOL_FEATURES.bits();
    let mut queue_num = 1;
    let mut slots = None;
    let shared = ChannelShared::default();
    let idle = shared.idle.clone();
    let mut channel = None;
    let mut proto = 0;
    if offered & bit30 != 0 {
        let pf = s.get_protocol_features()?;
        proto = consistent(pf & wanted_protocol());
        if is(FeFault::NeedReplyWithoutReplyAck) {
            proto &= !ProtocolFeatures::REPLY_ACK.bits();
        }
        if is(FeFault::QueueNumWithoutMq) {
            proto &= !ProtocolFeatures::MQ.bits();
        }
        s.set_protocol_features(proto)?;
        let has = |f: ProtocolFeatures| proto & f.bits() != 0;
        if is(FeFault::RequireMq) && !has(ProtocolFeatures::MQ) {
            return Err(gave_up("MQ (not offered)", 0));
        }
        if has(ProtocolFeatures::MQ) || is(FeFault::QueueNumWithoutMq) {
            queue_num = s.get_queue_num()?;
        }
        if has(ProtocolFeatures::BACKEND_REQ) {
            match fault.filter(|f| f.own_channel()) {
                Some(f) => channel = Some(faulty_channel(&mut s, f, shared.clone())?),
                None => {
                    s.set_backend_req_fd()?;
                }
            }
        }
        if has(ProtocolFeatures::SHMEM) {
            let m = s.get_shmem_config()?;
            if let Ok(Body::ShmemConfig(c)) = m.body(FrontendReq::GetShmemConfig.reply_body()) {
                if let Ok(mut sizes) = shared.shmem.lock() {
                    *sizes = c.sizes.to_vec();
                }
            }
        }
        if has(ProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            slots = Some(s.get_max_mem_slots()?);
        }
    }
    let has = |f: ProtocolFeatures| proto & f.bits() != 0;
    if !is(FeFault::NoSetOwner) {
        s.set_owner()?;
    }
    let mut features = offered & (Wanted::all().features | bit30);
    // The IOMMU is driven when offered: the front-end scenario about IOTLB misses offers it.
    features |= offered & VirtioFeatures::ACCESS_PLATFORM.bits();
    if is(FeFault::SetUnofferedFeature) {
        // Bit 40 is no feature any device offers.
        features |= 1 << 40;
    }
    s.set_features(features)?;
    if is(FeFault::ReplyFlagOnRequest) {
        // SET_OWNER again, flags version 1 | REPLY: a request posing as a reply.
        s.send_raw(&raw(FrontendReq::SetOwner, 0x5, vec![]), &[])?;
    }
    if is(FeFault::BadVersion) {
        s.send_raw(&raw(FrontendReq::SetOwner, 0x2, vec![]), &[])?;
    }
    // Two regions, or one where the back-end has a single slot (R-FE-04).
    let mut layout = if slots.is_some_and(|n| n < 2) {
        GuestMemory::single_layout(2 << 20)
    } else {
        GuestMemory::default_layout(2 << 20)
    };
    if has(ProtocolFeatures::GPA_ADDRESSES) && !is(FeFault::GpaWithUserAddresses) {
        // "the user address field ... equals the guest physical address" (R-MEM-18).
        for r in &mut layout {
            r.user_addr = r.guest_addr;
        }
    }
    let mut mem = GuestMemory::new(&layout)?;
    if features & VirtioFeatures::ACCESS_PLATFORM.bits() != 0 {
        let specs: Vec<RegionSpec> = mem.regions().iter().map(|r| r.spec).collect();
        mem.map_iova(GuestMemory::iova_bases_for(&specs))?;
        s.iommu().set_mappings(mem.iommu_mappings());
    }
    let ack = if is(FeFault::RegionWithoutFd) {
        let fds = [mem.regions()[0].fd()];
        s.request(
            FrontendReq::SetMemTable,
            &Body::MemTable(mem.mem_regions()),
            &fds,
            None,
        )
        .map(|r| match r.and_then(|m| m.u64()) {
            Some(0) | None => Ack::Ok,
            Some(v) => Ack::Failed(v),
        })?
    } else if is(FeFault::OverlappingRegions) {
        let mut regions = mem.mem_regions();
        // The second region moved onto the first's guest range (its user range stays apart).
        regions[1].guest_addr = regions[0].guest_addr + 0x1000;
        let fds: Vec<_> = mem.regions().iter().map(|r| r.fd()).collect();
        s.request(
            FrontendReq::SetMemTable,
            &Body::MemTable(regions),
            &fds,
            None,
        )?;
        Ack::Ok
    } else {
        s.set_mem_table(&mem)?
    };
    if let Ack::Failed(v) = ack {
        if is(FeFault::HangAfterNack) {
            // The whole front-end stops: nothing more on either socket until it is ended.
            shared.hung.store(true, Ordering::Relaxed);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if !is(FeFault::IgnoreMemTableNack) {
            return Err(gave_up("SET_MEM_TABLE", v));
        }
    }
    if is(FeFault::ExceedMemSlots) {
        let max = slots.unwrap_or(8);
        let have = mem.regions().len() as u64;
        let specs: Vec<RegionSpec> = (0..=max.saturating_sub(have))
            .map(|i| RegionSpec {
                guest_addr: 0x1000_0000 + i * 0x10_0000,
                size: 0x1_0000,
                user_addr: 0x7e00_0000_0000 + i * 0x10_0000,
                mmap_offset: 0,
            })
            .collect();
        let extra = GuestMemory::new(&specs)?;
        for r in extra.regions() {
            s.add_mem_reg(r)?;
        }
    }
    if has(ProtocolFeatures::INFLIGHT_SHMFD) {
        // One buffer for the life of the device; a reconnect gives it back (R-INFL-03).
        let fresh = carry.inflight.is_none() || is(FeFault::InflightFreshOnReconnect);
        if fresh {
            carry.inflight = Some(s.get_inflight_fd(1, 64)?);
        }
        if let Some(buf) = &carry.inflight {
            s.set_inflight_fd(buf)?;
        }
    }
    let ring_bound = device.rings(queue_num);
    if is(FeFault::RingIndexPastEnd) {
        s.set_vring_num(ring_bound as u32, 64)?;
    }
    if is(FeFault::ShortPayload) {
        s.send_raw(&raw(FrontendReq::SetVringNum, 0x1, vec![0; 4]), &[])?;
    }
    if is(FeFault::NeedReplyWithoutReplyAck) {
        // NEED_REPLY (bit 3) without REPLY_ACK: a strict back-end does not answer, so nothing
        // is waited for.
        s.send_raw(
            &raw(FrontendReq::SetVringNum, 0x9, vec![0, 0, 0, 0, 64, 0, 0, 0]),
            &[],
        )?;
    }
    if is(FeFault::KickBeforeAddr) {
        s.set_vring_num(0, 64)?;
        s.set_vring_base(0, 0)?;
        s.set_vring_kick(0, None)?;
    }
    if is(FeFault::RingOutsideMemory) {
        s.set_vring_num(0, 64)?;
        s.set_vring_base(0, 0)?;
        let a = VringAddr {
            index: 0,
            flags: 0,
            desc: 0x6000_0000_0000,
            used: 0x6000_0001_0000,
            avail: 0x6000_0002_0000,
            log: 0,
        };
        let _ = s.set_vring_addr(&a)?;
        s.set_vring_kick(0, None)?;
        // Stop it again before the real setup.
        s.get_vring_base(0)?;
    }
    if is(FeFault::VringLogWithoutLogAll) {
        // Logging asked for ring 0 although SET_FEATURES left VHOST_F_LOG_ALL out; the real
        // setup below sends the address again without the flag.
        let base = mem.mem_regions()[0].user_addr;
        let a = VringAddr {
            index: 0,
            flags: 1,
            desc: base,
            used: base + 0x2000,
            avail: base + 0x1000,
            log: 0,
        };
        let _ = s.set_vring_addr(&a)?;
    }
    let mut q = DriverQueue::new(&mut mem, 0, 64, RingLayout::Split, false)?;
    q.inject_kick = !is(FeFault::NoInitialKick);
    q.setup(&mut s, &mem, 0)?;
    carry.ring_ran = true;
    if features & bit30 != 0 {
        s.set_vring_enable(0, true)?;
    }
    if has(ProtocolFeatures::INBAND_NOTIFICATIONS) {
        let need = !is(FeFault::InbandKickWithoutNeedReply);
        s.request(
            FrontendReq::VringKick,
            &Body::VringState(VringState { index: 0, num: 0 }),
            &[],
            Some(need),
        )?;
    }
    if has(ProtocolFeatures::SHMEM) {
        let seen = shared.seen.clone();
        match s.channel() {
            Some(ch) if channel.is_none() => channel_settles(&|| ch.requests().len()),
            _ => channel_settles(&|| seen.load(Ordering::Relaxed)),
        }
    }
    if device == DeviceType::Block && !is(FeFault::NoInitialKick) {
        let t = Duration::from_secs(2);
        for req in [BlkReq::get_id(), BlkReq::read(0, 4096), BlkReq::flush()] {
            let out = blk_request(&mut q, &mut mem, req, t).map_err(|e| SessionError::Local {
                what: format!("a blk request failed: {e}"),
                source: std::io::Error::other("blk"),
            })?;
            if out.status != 0 {
                return Err(gave_up("a blk request", u64::from(out.status)));
            }
        }
    }
    let state = has(ProtocolFeatures::DEVICE_STATE);
    if state && is(FeFault::StateWithRingRunning) {
        save_state(&mut s)?;
    }
    s.get_vring_base(0)?;
    if state && !is(FeFault::StateWithRingRunning) {
        save_state(&mut s)?;
    }
    if has(ProtocolFeatures::PAGEFAULT) {
        postcopy(&mut s, is(FeFault::ListenBeforeAdvise))?;
    }
    // Give the back-end a moment to use its channel (the channel scenarios), then let a
    // faulty channel server answer what it held back.
    std::thread::sleep(Duration::from_millis(200));
    idle.store(true, Ordering::Relaxed);
    if let Some(t) = channel {
        std::thread::sleep(Duration::from_millis(100));
        drop(t);
    }
    Ok(())
}
