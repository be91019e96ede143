//! The mock front-end's session: one connection driven from negotiation to the stopped ring,
//! with the fault's departure at its place, and the reconnect that gives the inflight buffer
//! back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use vhu_mock_frontend::blk::{BlkReq, blk_request};
use vhu_mock_frontend::inflight::InflightBuffer;
use vhu_mock_frontend::memory::RegionSpec;
use vhu_mock_frontend::{
    Ack, DriverQueue, GuestMemory, RingLayout, Session, SessionError, SessionOptions, Wanted,
};
use vhu_protocol::wire::payload::{Body, VringAddr, VringState};
use vhu_protocol::{FrontendReq, ProtocolFeatures, VirtioFeatures};

use crate::device::DeviceType;

use super::channel::{ChannelShared, channel_settles, faulty_channel};
use super::state::{postcopy, save_state};
use super::{FeFault, MockArgs, gave_up, raw};

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
pub(super) fn session(a: &MockArgs, device: DeviceType) -> Result<(), SessionError> {
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
