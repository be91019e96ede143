//! The oracle: what must hold after every case, whatever was sent. The process is alive, a fresh
//! connection completes a whole session and a blk write and read-back with intact canaries, guest
//! memory outside device-writable buffers is unchanged, and no fd or guest mapping is left behind.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vhu_mock_frontend::blk::{blk_read, blk_write};
use vhu_mock_frontend::{
    DriverQueue, GuestMemory, Negotiated, RingLayout, Session, SessionError, SessionOptions, Wanted,
};
use vhu_protocol::{Connection, FrontendReq, VirtioFeatures};

use crate::target::{Death, Instance};

/// Bytes of guest memory per session: two regions with a hole (the default layout).
pub const GUEST_BYTES: u64 = 2 << 20;

/// What went wrong, in the order the oracle checks it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The process was killed by a signal (or a wrapper reported one as 128 + N).
    Crash,
    /// The process exited with a status: its own choice, not a crash; the socket it served
    /// no longer accepts the next front-end (R-ROB-09, a robustness rule).
    Exit,
    /// Neither an answer nor a close within the timeout.
    Hang,
    /// A valid session could not reach the case's stage.
    Setup,
    /// A fresh connection could not complete a session.
    Unusable,
    /// The blk write and read-back failed or returned wrong data.
    DataPath,
    /// Guest memory outside device-writable buffers changed.
    Corruption,
    /// The process kept fds after the connections closed.
    FdLeak,
    /// The process kept guest memory mapped after the connections closed.
    MapLeak,
}

/// A failed check: what kind, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The check that failed.
    pub kind: FailureKind,
    /// What was seen, on one line.
    pub detail: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// A session on a new connection with every wait bounded by `timeout`.
pub fn session(stream: UnixStream, timeout: Duration) -> Session {
    let opts = SessionOptions {
        reply_timeout: timeout,
        auto_need_reply: true,
    };
    Session::new(Connection::new(stream, Some(timeout)), opts)
}

/// A crash, if the process has ended (spawn mode); waits up to `grace` for a dying process.
/// An exit with a status is [`FailureKind::Exit`], a death by a signal [`FailureKind::Crash`].
pub fn crashed(inst: &mut Instance, grace: Duration) -> Option<Failure> {
    let st = inst.wait_exit(grace);
    let death = st.death()?;
    let tail = inst.stderr_tail(300);
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {tail}")
    };
    Some(match death {
        Death::Exit(_) => Failure::new(
            FailureKind::Exit,
            format!(
                "the back-end {st} (not a crash, but its socket serves no next front-end){tail}"
            ),
        ),
        Death::Crash { .. } | Death::Killed(_) => {
            Failure::new(FailureKind::Crash, format!("the back-end {st}{tail}"))
        }
    })
}

/// Negotiates everything the harness drives.
pub fn negotiate(s: &mut Session) -> Result<Negotiated, SessionError> {
    s.negotiate(&Wanted::all())
}

/// Creates the default guest memory layout and announces it with SET_MEM_TABLE.
pub fn memory(s: &mut Session) -> Result<GuestMemory, SessionError> {
    memory_from(s, &mut GuestPool::default())
}

/// As [`memory`], with guest memory from `pool` (zeroed, as new).
pub fn memory_from(s: &mut Session, pool: &mut GuestPool) -> Result<GuestMemory, SessionError> {
    let mem = pool.take()?;
    match s.checked(FrontendReq::SetMemTable, |s| s.set_mem_table(&mem)) {
        Ok(()) => Ok(mem),
        Err(e) => {
            pool.give(mem);
            Err(e)
        }
    }
}

/// Guest memory reused from one session to the next by one worker. Creating the memfds and
/// faulting in fresh pages was most of a case's system time (the kernel allocates and clears
/// every page of a new memfd on first touch); a reused memory is zeroed with its pages already
/// resident, so a session sees exactly what a new memory holds: zeros, the allocation cursor at
/// the start, the same default layout.
#[derive(Debug, Default)]
pub struct GuestPool {
    spare: Vec<GuestMemory>,
    /// The allocation cursor of a new memory, to rewind a reused one to.
    origin: Option<(usize, u64)>,
}

/// What a case can hold at once: its own memory (kept for the comparison of a chain case) and
/// the fresh session's.
const POOL_SPARES: usize = 2;

/// Zeros written a chunk at a time, so zeroing needs no allocation.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl GuestPool {
    /// A zeroed guest memory in the default layout: a spare one, or a new one.
    pub fn take(&mut self) -> Result<GuestMemory, vhu_mock_frontend::MemoryError> {
        let Some(mut mem) = self.spare.pop() else {
            let mem = GuestMemory::new(&GuestMemory::default_layout(GUEST_BYTES))?;
            self.origin.get_or_insert(mem.mark());
            return Ok(mem);
        };
        if let Some(origin) = self.origin {
            mem.release(origin);
        }
        let ranges: Vec<(u64, u64)> = mem
            .regions()
            .iter()
            .map(|r| (r.spec.guest_addr, r.spec.size))
            .collect();
        for (gpa, size) in ranges {
            let mut done = 0;
            while done < size {
                let n = (size - done).min(ZEROS.len() as u64);
                mem.write(gpa + done, &ZEROS[..n as usize])?;
                done += n;
            }
        }
        Ok(mem)
    }

    /// Gives `mem` back for a later [`take`](Self::take).
    pub fn give(&mut self, mem: GuestMemory) {
        if self.spare.len() < POOL_SPARES {
            self.spare.push(mem);
        }
    }
}

/// Sets up ring 0 of `size` entries and enables it when bit 30 was negotiated.
pub fn ring(
    s: &mut Session,
    mem: &mut GuestMemory,
    features: u64,
    size: u16,
) -> Result<DriverQueue, SessionError> {
    let event_idx = features & VirtioFeatures::EVENT_IDX.bits() != 0;
    let mut q = DriverQueue::new(mem, 0, size, RingLayout::Split, event_idx)?;
    q.setup(s, mem, 0)?;
    if features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        s.checked(FrontendReq::SetVringEnable, |s| s.set_vring_enable(0, true))?;
    }
    Ok(q)
}

/// The whole valid session on a new connection, ending with one blk write of 4 KiB of `pattern`
/// at sector 0 and its read-back: status, used length, canaries and data all checked. Returns
/// GET_QUEUE_NUM's answer, when MQ was negotiated.
pub fn fresh_session(
    inst: &mut Instance,
    timeout: Duration,
    pattern: u8,
) -> Result<Option<u64>, Failure> {
    fresh_session_in(inst, &mut GuestPool::default(), timeout, pattern)
}

/// As [`fresh_session`], with guest memory from `pool` (given back after).
pub fn fresh_session_in(
    inst: &mut Instance,
    pool: &mut GuestPool,
    timeout: Duration,
    pattern: u8,
) -> Result<Option<u64>, Failure> {
    let mut mem = None;
    let r = data_session(inst, pool, &mut mem, timeout, pattern);
    if let Some(m) = mem {
        pool.give(m);
    }
    r
}

fn data_session(
    inst: &mut Instance,
    pool: &mut GuestPool,
    kept: &mut Option<GuestMemory>,
    timeout: Duration,
    pattern: u8,
) -> Result<Option<u64>, Failure> {
    let unusable = |what: &str, e: &dyn std::error::Error| {
        Failure::new(
            FailureKind::Unusable,
            format!("a fresh connection {what}: {}", crate::engine::chain(e)),
        )
    };
    let stream = inst.connect().map_err(|e| unusable("cannot be made", &e))?;
    let mut s = session(stream, timeout);
    let n = negotiate(&mut s).map_err(|e| unusable("fails to negotiate", &e))?;
    let mem =
        kept.insert(memory_from(&mut s, pool).map_err(|e| unusable("fails SET_MEM_TABLE", &e))?);
    let mut q =
        ring(&mut s, mem, n.features, 128).map_err(|e| unusable("fails to set up ring 0", &e))?;
    let data = vec![pattern; 4096];
    let path = |what: &str, e: &dyn std::error::Error| {
        Failure::new(
            FailureKind::DataPath,
            format!("{what} on a fresh connection: {}", crate::engine::chain(e)),
        )
    };
    let w = blk_write(&mut q, mem, 0, &data, timeout)
        .map_err(|e| path("the blk write did not complete", &e))?;
    let r = blk_read(&mut q, mem, 0, 4096, timeout)
        .map_err(|e| path("the blk read did not complete", &e))?;
    let mut wrong = vec![];
    if w.status != 0 || r.status != 0 {
        wrong.push(format!("status {} (write) {} (read)", w.status, r.status));
    }
    if !(w.canary_intact && r.canary_intact && w.readonly_intact && r.readonly_intact) {
        wrong.push("bytes outside the device-writable buffers changed".into());
    }
    if r.data != data {
        wrong.push("the data read back is not the data written".into());
    }
    if wrong.is_empty() {
        Ok(n.queue_num)
    } else {
        Err(Failure::new(
            FailureKind::DataPath,
            format!("blk write and read-back: {}", wrong.join("; ")),
        ))
    }
}

/// What a spawned back-end holds: open fds, and mappings of our guest memory memfds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Entries of `/proc/<pid>/fd`.
    pub fds: usize,
    /// Lines of `/proc/<pid>/maps` naming a `vhu-` memfd (guest memory and fds we sent).
    pub guest_maps: usize,
}

/// The back-end's usage, in spawn mode.
pub fn usage(inst: &Instance) -> Option<Usage> {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", inst.pid()?)).ok()?;
    Some(Usage {
        fds: inst.fd_count()?,
        guest_maps: maps.lines().filter(|l| l.contains("/memfd:vhu-")).count(),
    })
}

/// Waits up to `settle` for the usage to fall back to `before` (a back-end closes a
/// connection's resources when it notices the close, which takes a moment).
pub fn leaked(inst: &Instance, before: Usage, settle: Duration) -> Option<Failure> {
    settled(inst, before, settle).err()
}

/// As [`leaked`]; once the usage is back, what it is (the next case's baseline: nothing runs
/// between two cases of a worker, so measuring it again would find the same).
pub fn settled(inst: &Instance, before: Usage, settle: Duration) -> Result<Option<Usage>, Failure> {
    let deadline = Instant::now() + settle;
    loop {
        let Some(now) = usage(inst) else {
            return Ok(None);
        };
        if now.fds <= before.fds && now.guest_maps <= before.guest_maps {
            return Ok(Some(now));
        }
        if Instant::now() >= deadline {
            return Err(if now.fds > before.fds {
                Failure::new(
                    FailureKind::FdLeak,
                    format!(
                        "{} fds open after every connection closed, {} before the case (/proc/{}/fd)",
                        now.fds,
                        before.fds,
                        inst.pid().unwrap_or(0)
                    ),
                )
            } else {
                Failure::new(
                    FailureKind::MapLeak,
                    format!(
                        "{} guest memory mappings left after every connection closed, {} before the case (/proc/{}/maps)",
                        now.guest_maps,
                        before.guest_maps,
                        inst.pid().unwrap_or(0)
                    ),
                )
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A copy of guest memory, and the ranges the device may write.
pub struct Snapshot {
    regions: Vec<(u64, Vec<u8>)>,
    writable: Vec<(u64, u64)>,
}

impl Snapshot {
    /// Copies every region; `writable` are `(gpa, len)` ranges the device may change.
    pub fn take(mem: &GuestMemory, writable: Vec<(u64, u64)>) -> Self {
        let regions = mem
            .regions()
            .iter()
            .map(|r| {
                let mut buf = vec![0u8; r.spec.size as usize];
                let _ = mem.read(r.spec.guest_addr, &mut buf);
                (r.spec.guest_addr, buf)
            })
            .collect();
        Self { regions, writable }
    }

    fn allowed(&self, gpa: u64) -> bool {
        self.writable.iter().any(|&(a, l)| gpa >= a && gpa - a < l)
    }

    /// The first changed byte outside the writable ranges.
    pub fn corrupted(&self, mem: &GuestMemory) -> Option<Failure> {
        for (base, old) in &self.regions {
            let mut now = vec![0u8; old.len()];
            mem.read(*base, &mut now).ok()?;
            // Equal pages are skipped with one comparison each (this runs on every case).
            let bad = old
                .chunks(4096)
                .zip(now.chunks(4096))
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .find_map(|(page, (a, b))| {
                    a.iter()
                        .zip(b)
                        .enumerate()
                        .map(|(i, ab)| (page * 4096 + i, ab))
                        .find(|&(i, (a, b))| a != b && !self.allowed(base + i as u64))
                });
            if let Some((i, (a, b))) = bad {
                return Some(Failure::new(
                    FailureKind::Corruption,
                    format!(
                        "guest memory at {:#x} changed from {a:#04x} to {b:#04x}, outside every device-writable buffer and the used ring",
                        base + i as u64
                    ),
                ));
            }
        }
        None
    }
}
