//! Runs one case against a back-end: reach the stage with a valid session, send the malformed
//! input, watch the connection, then ask the oracle. Returns the first failed check, or a
//! harness error when the harness itself could not do its part.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use vhu_mock_frontend::{GuestMemory, MemoryError, Session, SessionError};
use vhu_protocol::virtio::{SplitDesc, VIRTQ_DESC_F_WRITE};
use vhu_protocol::{FrontendReq, Header, HeaderFlags, RawMessage};
use zerocopy::IntoBytes;

use super::FuzzError;
use super::case::{Addr, Case, ChainCase, Desc, FdKind, Input, Len, MessageCase, RING_SIZE, Stage};
use super::oracle::{self, Failure, FailureKind, Snapshot, Usage};
use crate::target::Instance;

/// Timeouts of a case.
#[derive(Copy, Clone, Debug)]
pub struct Limits {
    /// Each reply, each data-path completion: past it, a hang.
    pub timeout: Duration,
    /// How long a back-end may take to give back fds and mappings after a close.
    pub settle: Duration,
}

/// What a worker keeps from one case to the next on the same back-end process: guest memory
/// to reuse, and the process's usage after the last case (the next case's baseline).
#[derive(Debug, Default)]
pub struct Warm {
    /// Guest memory for the sessions of a case.
    pub pool: oracle::GuestPool,
    usage: Option<Usage>,
}

impl Warm {
    /// The process changed (started again): its usage must be measured anew.
    pub fn new_process(&mut self) {
        self.usage = None;
    }
}

/// Runs `case` and checks everything the oracle checks; `pattern` is the data byte of the
/// fresh session's blk write.
pub fn run_case(
    inst: &mut Instance,
    case: &Case,
    limits: Limits,
    pattern: u8,
) -> Result<Option<Failure>, FuzzError> {
    run_case_warm(inst, &mut Warm::default(), case, limits, pattern)
}

/// As [`run_case`], reusing what `warm` keeps from the last case on this process; a failed
/// case leaves no baseline (the process is to be replaced).
pub fn run_case_warm(
    inst: &mut Instance,
    warm: &mut Warm,
    case: &Case,
    limits: Limits,
    pattern: u8,
) -> Result<Option<Failure>, FuzzError> {
    let before = warm.usage.take().or_else(|| oracle::usage(inst));
    let (outcome, kept) = match send_case(inst, &mut warm.pool, case, limits.timeout) {
        Ok(r) => r,
        Err(Outcome::Failed(f)) => (Err(f), None),
        Err(Outcome::Harness(e)) => return Err(e),
    };
    let judged = judge(inst, &mut warm.pool, outcome, kept, limits, pattern);
    if let Some(f) = judged {
        return Ok(Some(f));
    }
    let Some(before) = before else {
        return Ok(None);
    };
    match oracle::settled(inst, before, limits.settle) {
        Ok(now) => {
            warm.usage = now;
            Ok(None)
        }
        Err(f) => Ok(Some(f)),
    }
}

/// Everything but the leak check, in the oracle's order; a chain case's memory goes back to
/// the pool once compared.
fn judge(
    inst: &mut Instance,
    pool: &mut oracle::GuestPool,
    outcome: Result<(), Failure>,
    kept: Kept,
    limits: Limits,
    pattern: u8,
) -> Option<Failure> {
    if let Some(f) = oracle::crashed(inst, Duration::ZERO) {
        return Some(f);
    }
    if let Err(f) = outcome {
        return Some(oracle::crashed(inst, Duration::from_millis(200)).unwrap_or(f));
    }
    if let Err(f) = oracle::fresh_session_in(inst, pool, limits.timeout, pattern) {
        return Some(oracle::crashed(inst, Duration::from_millis(300)).unwrap_or(f));
    }
    if let Some(f) = oracle::crashed(inst, Duration::ZERO) {
        return Some(f);
    }
    let (mem, snap) = kept?;
    let corrupted = snap.corrupted(&mem);
    pool.give(mem);
    corrupted
}

enum Outcome {
    Failed(Failure),
    Harness(FuzzError),
}

impl Outcome {
    /// A session error: the back-end's fault during setup, or the harness's.
    fn setup(stage: Stage, e: SessionError) -> Self {
        if e.is_backend_fault() {
            Self::Failed(Failure::new(
                FailureKind::Setup,
                format!(
                    "a valid session could not reach the {stage:?} stage: {}",
                    crate::engine::chain(&e)
                ),
            ))
        } else {
            Self::Harness(FuzzError::Harness(crate::engine::chain(&e)))
        }
    }
}

fn memory_error(e: MemoryError) -> Outcome {
    Outcome::Harness(FuzzError::Harness(crate::engine::chain(&e)))
}

/// Guest memory to compare after the oracle, for chain cases.
type Kept = Option<(GuestMemory, Snapshot)>;

/// Connects, reaches the stage, sends the input and watches the connection. The connection is
/// closed on return; a message case's memory is back in `pool`.
fn send_case(
    inst: &mut Instance,
    pool: &mut oracle::GuestPool,
    case: &Case,
    timeout: Duration,
) -> Result<(Result<(), Failure>, Kept), Outcome> {
    let stream = inst.connect().map_err(|e| {
        Outcome::Failed(Failure::new(
            FailureKind::Unusable,
            format!("cannot connect: {}", crate::engine::chain(&e)),
        ))
    })?;
    let mut s = oracle::session(stream, timeout);
    let mut ready = reach(&mut s, pool, case.stage).map_err(|e| Outcome::setup(case.stage, e))?;
    match &case.input {
        Input::Message(m) => {
            let framed = m.framed();
            let sent = send_message(&mut s, m);
            let watched = match &sent {
                Ok((true, ours)) if framed => {
                    watch(&mut s, timeout).and_then(|()| stray_fds_closed(inst, m, ours))
                }
                // A message that lies about its size leaves the stream out of step: nothing can
                // be expected on this connection, only that closing it is handled (R-WIRE-15).
                _ => Ok(()),
            };
            drop(s);
            if let Some(mem) = ready.mem.take() {
                pool.give(mem);
            }
            sent.map_err(Outcome::Harness)?;
            Ok((watched, None))
        }
        Input::Chain(c) => {
            let Some((mut mem, q)) = ready.take() else {
                let why = "a chain case needs the rings stage".into();
                return Err(Outcome::Harness(FuzzError::Harness(why)));
            };
            let snap = match write_chains(&mut mem, &q, c) {
                Ok(snap) => snap,
                Err(e) => {
                    pool.give(mem);
                    return Err(memory_error(e));
                }
            };
            // The kick goes out before the probe: a back-end that serves kicks and messages
            // in one loop has walked the chains by the time it answers the probe. One that
            // walks them on another thread may answer first; every check that judges the
            // walk (the process alive, a fresh session, the memory comparison) comes after
            // the fresh session, many round trips later. (A fixed 10 ms pause here was a
            // fifth of the run's time.)
            q.kick();
            let watched = watch(&mut s, timeout);
            drop(s);
            Ok((watched, Some((mem, snap))))
        }
    }
}

/// What the stage leaves behind: for [`Stage::Memory`] the memory, for [`Stage::Rings`] ring 0.
struct Reached {
    mem: Option<GuestMemory>,
    queue: Option<vhu_mock_frontend::DriverQueue>,
}

impl Reached {
    fn take(&mut self) -> Option<(GuestMemory, vhu_mock_frontend::DriverQueue)> {
        Some((self.mem.take()?, self.queue.take()?))
    }
}

fn reach(
    s: &mut Session,
    pool: &mut oracle::GuestPool,
    stage: Stage,
) -> Result<Reached, SessionError> {
    let mut r = Reached {
        mem: None,
        queue: None,
    };
    if stage <= Stage::Fresh {
        return Ok(r);
    }
    let features = oracle::negotiate(s)?.features;
    if stage == Stage::Negotiated {
        return Ok(r);
    }
    let mem = r.mem.insert(oracle::memory_from(s, pool)?);
    if stage == Stage::Rings {
        r.queue = Some(oracle::ring(s, mem, features, RING_SIZE)?);
    }
    Ok(r)
}

/// Sends the message with its fds; returns whether it went out (a back-end that already
/// closed the connection is not a failure here: the oracle judges what follows) and our copies
/// of the fds sent, to recognise them in the back-end's fd table.
fn send_message(s: &mut Session, m: &MessageCase) -> Result<(bool, Vec<OwnedFd>), FuzzError> {
    let header = Header {
        request: m.code,
        flags: m.flags,
        size: m.size_field(),
    };
    let owned = make_fds(m.fds, m.fd_kind)?;
    let fds: Vec<BorrowedFd<'_>> = owned.iter().map(AsFd::as_fd).collect();
    let sent = s
        .send_raw(&RawMessage::new(header, m.payload()), &fds)
        .is_ok();
    drop(fds);
    Ok((sent, owned))
}

/// Sends a GET_FEATURES probe and reads until its reply, a close, or the timeout. Replies to
/// the fuzzed message come first and may be anything (an error ack is fine).
fn watch(s: &mut Session, timeout: Duration) -> Result<(), Failure> {
    let probe = Header {
        request: FrontendReq::GetFeatures as u32,
        flags: HeaderFlags::V1.bits(),
        size: 0,
    };
    match s.send_raw(&RawMessage::new(probe, vec![]), &[]) {
        Ok(()) => {}
        // A back-end that stopped reading its socket hangs as surely as one that stopped writing.
        Err(SessionError::Stalled { .. }) => {
            return Err(Failure::new(
                FailureKind::Hang,
                format!(
                    "the back-end stopped reading its socket: a GET_FEATURES probe could not be sent within {timeout:?}"
                ),
            ));
        }
        Err(_) => return Ok(()),
    }
    let deadline = Instant::now() + timeout;
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.recv_any(left.max(Duration::from_millis(1))) {
            Ok(m) if is_probe_reply(&m.header) => return Ok(()),
            Ok(_) => {}
            Err(SessionError::Timeout { .. }) => {
                return Err(Failure::new(
                    FailureKind::Hang,
                    format!(
                        "the connection neither answered a GET_FEATURES probe nor closed within {timeout:?}"
                    ),
                ));
            }
            // Closed, or a reply so malformed the stream is out of step: either way the
            // connection is done, and the fresh session says whether the back-end is.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// fds sent with a message that takes none must be closed, not kept (R-WIRE-09): once the
/// probe is answered the message was handled, so any of them still in the back-end's fd table
/// (the same open file as ours, by kcmp(2)) was kept. GET_INFLIGHT_FD is left out: it answers
/// with an fd of its own.
fn stray_fds_closed(inst: &Instance, m: &MessageCase, ours: &[OwnedFd]) -> Result<(), Failure> {
    let takes_none = FrontendReq::from_code(m.code).map_or(true, |r| {
        r.fd_range().1 == 0 && r != FrontendReq::GetInflightFd
    });
    let Some(pid) = inst.pid() else {
        return Ok(());
    };
    if ours.is_empty() || !takes_none {
        return Ok(());
    }
    let kept = held_by(pid, ours);
    if kept.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        FailureKind::FdLeak,
        format!(
            "{} of the {} fds sent with a message that takes none were kept after it was handled (fds {kept:?} of /proc/{pid}/fd)",
            kept.len(),
            ours.len()
        ),
    ))
}

/// The fds of process `pid` that are the same open file as one of `ours` (kcmp KCMP_FILE).
fn held_by(pid: u32, ours: &[OwnedFd]) -> Vec<i32> {
    use std::os::fd::AsRawFd;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return vec![];
    };
    let me = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&theirs| {
            ours.iter().any(|o| {
                // SAFETY: kcmp only compares two fd table entries; no memory is passed.
                let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, me, 0, theirs, o.as_raw_fd()) };
                r == 0
            })
        })
        .collect()
}

fn is_probe_reply(h: &Header) -> bool {
    h.request == FrontendReq::GetFeatures as u32 && h.flags & HeaderFlags::REPLY.bits() != 0
}

/// The size of each memfd sent with a fuzzed message.
pub const MEMFD_BYTES: u64 = 64 << 10;

/// Opens `n` fds of `kind`; our ends of pipes and socket pairs are closed at once, so a
/// back-end reading them sees EOF instead of blocking.
pub fn make_fds(n: usize, kind: FdKind) -> Result<Vec<OwnedFd>, FuzzError> {
    let local = |what: &str, e: &dyn std::fmt::Display| {
        FuzzError::Harness(format!("cannot create {what}: {e}"))
    };
    (0..n)
        .map(|_| -> Result<OwnedFd, FuzzError> {
            Ok(match kind {
                FdKind::Eventfd => {
                    nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
                        .map_err(|e| local("an eventfd", &e))?
                        .into()
                }
                FdKind::Memfd => {
                    let m = memfd::MemfdOptions::default()
                        .create("vhu-fuzz-fd")
                        .map_err(|e| local("a memfd", &e))?;
                    let f = m.into_file();
                    f.set_len(MEMFD_BYTES).map_err(|e| local("a memfd", &e))?;
                    f.into()
                }
                FdKind::Pipe => {
                    let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(|e| local("a pipe", &e))?;
                    r
                }
                FdKind::Socket => {
                    let (a, _b) = std::os::unix::net::UnixStream::pair()
                        .map_err(|e| local("a socket pair", &e))?;
                    a.into()
                }
                FdKind::Null => std::fs::File::open("/dev/null")
                    .map_err(|e| local("/dev/null", &e))?
                    .into(),
            })
        })
        .collect()
}

/// Where the case's buffers and tables are.
struct Places {
    buffers: [u64; 4],
    indirect: u64,
    nested: u64,
    hole: u64,
    past_end: u64,
}

const BUF: u64 = 4096;

fn ua_to_gpa(mem: &GuestMemory, ua: u64) -> u64 {
    mem.regions()
        .iter()
        .find(|r| ua >= r.spec.user_addr && ua - r.spec.user_addr < r.spec.size)
        .map_or(ua, |r| ua - r.spec.user_addr + r.spec.guest_addr)
}

/// Writes the case's tables, buffers and avail entries into ring 0 and publishes them; returns
/// the snapshot to compare after the oracle.
pub(crate) fn write_chains(
    mem: &mut GuestMemory,
    q: &vhu_mock_frontend::DriverQueue,
    c: &ChainCase,
) -> Result<Snapshot, MemoryError> {
    let addrs = q.vring_addr(mem);
    let (desc, avail, used) = (
        ua_to_gpa(mem, addrs.desc),
        ua_to_gpa(mem, addrs.avail),
        ua_to_gpa(mem, addrs.used),
    );
    let places = places(mem)?;
    fill_buffers(mem, &places)?;
    let mut writable = vec![(used, 4 + 8 * u64::from(RING_SIZE) + 2)];
    for (table, entries) in [
        (desc, &c.table),
        (places.indirect, &c.indirect),
        (places.nested, &c.nested),
    ] {
        for (i, d) in entries.iter().enumerate() {
            let sd = resolve(d, c, &places);
            if sd.flags & VIRTQ_DESC_F_WRITE != 0 {
                writable.push((sd.addr, u64::from(sd.len)));
            }
            mem.write(table + 16 * i as u64, sd.as_bytes())?;
        }
    }
    for (k, &head) in c.heads.iter().enumerate() {
        mem.write_u16(avail + 4 + 2 * k as u64, head)?;
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    mem.write_u16(avail + 2, c.heads.len() as u16)?;
    Ok(Snapshot::take(mem, writable))
}

fn places(mem: &mut GuestMemory) -> Result<Places, MemoryError> {
    let mut buffers = [0; 4];
    for b in &mut buffers {
        *b = mem.alloc(BUF, 16)?;
    }
    let indirect = mem.alloc(16 * 8, 16)?;
    let nested = mem.alloc(16 * 8, 16)?;
    let regions = mem.regions();
    let first = &regions[0].spec;
    let last = &regions[regions.len() - 1].spec;
    Ok(Places {
        buffers,
        indirect,
        nested,
        hole: first.guest_addr + first.size,
        past_end: last.guest_addr + last.size - 8,
    })
}

/// Buffer 0 holds a blk read header, buffer 3 a blk write header, so a device that accepts a
/// chain goes on to move data; 1 and 2 hold a plain pattern.
fn fill_buffers(mem: &GuestMemory, p: &Places) -> Result<(), MemoryError> {
    for (k, &b) in p.buffers.iter().enumerate() {
        mem.fill(b, BUF, 0x11 * (k as u8 + 1))?;
    }
    let header = |kind: u32, sector: u64| {
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sector.to_le_bytes());
        h
    };
    mem.write(p.buffers[0], &header(0, 0))?;
    mem.write(p.buffers[3], &header(1, 8))
}

fn resolve(d: &Desc, c: &ChainCase, p: &Places) -> SplitDesc {
    let (addr, exact) = match d.addr {
        Addr::Buffer(k) => (p.buffers[usize::from(k % 4)], BUF as u32),
        Addr::Indirect => (p.indirect, 16 * c.indirect.len() as u32),
        Addr::Nested => (p.nested, 16 * c.nested.len() as u32),
        Addr::Hole => (p.hole, BUF as u32),
        Addr::PastEnd => (p.past_end, BUF as u32),
        Addr::Raw(a) => (a, BUF as u32),
    };
    SplitDesc {
        addr,
        len: match d.len {
            Len::Exact => exact,
            Len::Value(v) => v,
        },
        flags: d.flags,
        next: d.next,
    }
}
