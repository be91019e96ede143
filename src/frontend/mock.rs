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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vhu_mock_frontend::blk::{BlkReq, blk_request};
use vhu_mock_frontend::memory::RegionSpec;
use vhu_mock_frontend::{
    Ack, DriverQueue, GuestMemory, RingLayout, Session, SessionError, SessionOptions, Wanted,
};
use vhu_protocol::wire::payload::{Body, VringAddr};
use vhu_protocol::{
    BackendReq, Connection, FrontendReq, Header, ProtocolFeatures, RawMessage, VirtioFeatures,
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
}

impl FeFault {
    fn own_channel(self) -> bool {
        matches!(
            self,
            Self::ChannelNoAck
                | Self::ChannelReplyWithoutReplyFlag
                | Self::ChannelAcksUnknownCode
                | Self::ChannelOnlyWhenIdle
        )
    }
}

/// A faulty server of the back-end channel (the honest one is the mock-frontend crate's
/// `BackendChannel`): it breaks the one rule its fault names. `idle` is set once the main
/// session awaits nothing more ([`FeFault::ChannelOnlyWhenIdle`] waits for it).
fn faulty_channel(
    s: &mut Session,
    fault: FeFault,
    idle: Arc<AtomicBool>,
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
            loop {
                let m = match conn.recv_unchecked() {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => {
                        if idle.load(Ordering::Relaxed) && fault != FeFault::ChannelOnlyWhenIdle {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                if !m.header.need_reply() || fault == FeFault::ChannelNoAck {
                    continue;
                }
                let known = BackendReq::from_code(m.header.request).is_ok();
                let value: u64 = match fault {
                    FeFault::ChannelAcksUnknownCode => 0,
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

fn session(a: &MockArgs, device: DeviceType) -> Result<(), SessionError> {
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
    let idle = Arc::new(AtomicBool::new(false));
    let mut channel = None;
    if offered & bit30 != 0 {
        let pf = s.get_protocol_features()?;
        let mut proto = pf & Wanted::all().protocol;
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
                Some(f) => channel = Some(faulty_channel(&mut s, f, idle.clone())?),
                None => {
                    s.set_backend_req_fd()?;
                }
            }
        }
        if has(ProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            slots = Some(s.get_max_mem_slots()?);
        }
    }
    if !is(FeFault::NoSetOwner) {
        s.set_owner()?;
    }
    let mut features = offered & (Wanted::all().features | bit30);
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
    let layout = if slots.is_some_and(|n| n < 2) {
        GuestMemory::single_layout(2 << 20)
    } else {
        GuestMemory::default_layout(2 << 20)
    };
    let mut mem = GuestMemory::new(&layout)?;
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
    q.setup(&mut s, &mem, 0)?;
    if features & bit30 != 0 {
        s.set_vring_enable(0, true)?;
    }
    if device == DeviceType::Block {
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
    s.get_vring_base(0)?;
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
