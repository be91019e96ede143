//! The faulty front-end's back-end channel: a server of it that breaks the rule its fault names,
//! what it shares with the session, its SHMEM bookkeeping, and the wait for its requests to
//! settle.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhu_mock_frontend::{Session, SessionError};
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{BackendReq, Connection, FrontendReq, Header, Message};

use super::FeFault;

/// What the faulty channel shares with the session: `idle` once the main session awaits
/// nothing more, `hung` once the front-end stopped ([`FeFault::HangAfterNack`]), the SHMEM
/// region sizes GET_SHMEM_CONFIG gave, and how many requests came.
#[derive(Clone, Default)]
pub(super) struct ChannelShared {
    pub(super) idle: Arc<AtomicBool>,
    pub(super) hung: Arc<AtomicBool>,
    pub(super) shmem: Arc<Mutex<Vec<u64>>>,
    pub(super) seen: Arc<AtomicUsize>,
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
pub(super) fn faulty_channel(
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

/// Waits until the back-end channel has seen a request and then nothing for 300 ms (at most
/// 3 s): the SHMEM scenario's requests come while a ring runs.
pub(super) fn channel_settles(count: &dyn Fn() -> usize) {
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
