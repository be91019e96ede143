//! The oracle: what must hold after every case, whatever was sent. The process is alive, a fresh
//! connection completes a whole session and a blk write and read-back with intact canaries, guest
//! memory outside device-writable buffers is unchanged, and no fd or guest mapping is left behind.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vhu_mock_frontend::blk::{blk_read, blk_write};
use vhu_mock_frontend::{
    DriverQueue, GuestMemory, Negotiated, RingLayout, Session, SessionError, Wanted,
};
use vhu_protocol::{FrontendReq, VirtioFeatures};

use crate::target::{Death, Instance};

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
    crate::engine::session::open(stream, timeout)
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

/// Guest memory reused from one session to the next by one worker. Creating, mapping and
/// tearing down two memfds per session was a large part of a case's system time. A reused
/// memory has every page of its memfds dropped (`fallocate` PUNCH_HOLE), so it reads as zeros
/// and only the pages a session touches are allocated again: a session sees exactly what a new
/// memory holds (zeros, the allocation cursor at the start, the default layout).
#[derive(Debug, Default)]
pub struct GuestPool {
    spare: Vec<GuestMemory>,
    /// The allocation cursor of a new memory, to rewind a reused one to.
    origin: Option<(usize, u64)>,
}

/// What a case can hold at once: its own memory (kept for the comparison of a chain case) and
/// the fresh session's.
const POOL_SPARES: usize = 2;

impl GuestPool {
    /// A zeroed guest memory in the default layout: a spare one, or a new one.
    pub fn take(&mut self) -> Result<GuestMemory, vhu_mock_frontend::MemoryError> {
        while let Some(mut mem) = self.spare.pop() {
            if let (Some(origin), Ok(())) = (self.origin, drop_pages(&mem)) {
                mem.release(origin);
                return Ok(mem);
            }
        }
        let mem = GuestMemory::new(&crate::engine::session::default_layout())?;
        self.origin.get_or_insert(mem.mark());
        Ok(mem)
    }

    /// Gives `mem` back for a later [`take`](Self::take).
    pub fn give(&mut self, mem: GuestMemory) {
        if self.spare.len() < POOL_SPARES {
            self.spare.push(mem);
        }
    }
}

/// Drops every page of `mem`'s memfds: what is read next is zeros, in every mapping of them.
fn drop_pages(mem: &GuestMemory) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for r in mem.regions() {
        let len = i64::try_from(r.spec.mmap_offset + r.spec.size).map_err(std::io::Error::other)?;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on an fd the region owns; no memory is passed.
        if unsafe { libc::fallocate(r.fd().as_raw_fd(), mode, 0, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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

/// Bytes compared at a time: a page.
const PAGE: u64 = 4096;

/// A copy of guest memory, and the ranges the device may write. Only the pages the memfds
/// hold are copied and compared (`lseek` SEEK_DATA): a page never written reads as zeros and
/// costs nothing, so a mostly empty guest memory is cheap to watch.
pub struct Snapshot {
    /// Copies of the pages holding something other than zeros, by guest address.
    pages: std::collections::BTreeMap<u64, Vec<u8>>,
    writable: Vec<(u64, u64)>,
}

/// The pages of `r` its memfd holds, as guest address and length (every page when the memfd
/// cannot say).
fn held_pages(r: &vhu_mock_frontend::GuestRegion) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let (start, end) = (r.spec.mmap_offset, r.spec.mmap_offset + r.spec.size);
    let pages = |from: u64, to: u64| {
        let first = from - from % PAGE;
        (0..)
            .map(move |k| first + k * PAGE)
            .take_while(move |&p| p < to)
            .map(move |p| {
                let (a, b) = (p.max(start), (p + PAGE).min(end));
                (a - start + r.spec.guest_addr, b - a)
            })
    };
    let fd = r.fd().as_raw_fd();
    let mut out = vec![];
    let mut off = start;
    while off < end {
        let Ok(at) = i64::try_from(off) else { break };
        // SAFETY: lseek on an fd the region owns; no memory is passed.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // Nothing is held past `off`.
            }
            return pages(start, end).collect();
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let data = data as u64;
        let hole = u64::try_from(hole).map_or(end, |h| h.min(end));
        if data >= end {
            break;
        }
        out.extend(pages(data, hole));
        off = hole.max(data + 1);
    }
    out
}

impl Snapshot {
    /// Copies the pages of every region that hold something; `writable` are `(gpa, len)`
    /// ranges the device may change.
    pub fn take(mem: &GuestMemory, writable: Vec<(u64, u64)>) -> Self {
        let mut pages = std::collections::BTreeMap::new();
        for r in mem.regions() {
            for (gpa, len) in held_pages(r) {
                let mut buf = vec![0u8; len as usize];
                if mem.read(gpa, &mut buf).is_ok() && buf.iter().any(|&b| b != 0) {
                    pages.insert(gpa, buf);
                }
            }
        }
        Self { pages, writable }
    }

    fn allowed(&self, gpa: u64) -> bool {
        self.writable.iter().any(|&(a, l)| gpa >= a && gpa - a < l)
    }

    /// The first changed byte outside the writable ranges.
    pub fn corrupted(&self, mem: &GuestMemory) -> Option<Failure> {
        let zeros = [0u8; PAGE as usize];
        let mut buf = [0u8; PAGE as usize];
        // The pages held now, and those that held something before (in case one was dropped).
        let mut check: Vec<(u64, u64)> = mem.regions().iter().flat_map(held_pages).collect();
        check.extend(self.pages.iter().map(|(&gpa, b)| (gpa, b.len() as u64)));
        check.sort_unstable();
        check.dedup();
        for (gpa, len) in check {
            let now = &mut buf[..len as usize];
            mem.read(gpa, now).ok()?;
            let old = self
                .pages
                .get(&gpa)
                .map_or(&zeros[..len as usize], Vec::as_slice);
            if old == now {
                continue;
            }
            let bad = old
                .iter()
                .zip(now.iter())
                .enumerate()
                .find(|&(i, (a, b))| a != b && !self.allowed(gpa + i as u64));
            if let Some((i, (a, b))) = bad {
                return Some(Failure::new(
                    FailureKind::Corruption,
                    format!(
                        "guest memory at {:#x} changed from {a:#04x} to {b:#04x}, outside every device-writable buffer and the used ring",
                        gpa + i as u64
                    ),
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_writes_outside_the_writable_ranges_in_held_and_untouched_pages() {
        let mem = GuestMemory::new(&crate::engine::session::default_layout()).unwrap();
        let second = mem.regions()[1].spec.guest_addr;
        mem.write(0x2000, &[7; 64]).unwrap();
        let snap = Snapshot::take(&mem, vec![(0x2010, 16)]);
        // Inside the writable range: allowed.
        mem.write(0x2010, &[9; 16]).unwrap();
        assert_eq!(snap.corrupted(&mem), None);
        // A page nobody had touched, in the second region.
        mem.write(second + 0x5003, &[1]).unwrap();
        let f = snap.corrupted(&mem).unwrap();
        assert_eq!(f.kind, FailureKind::Corruption);
        assert!(f.detail.contains(&format!("{:#x}", second + 0x5003)), "{f}");
        mem.write(second + 0x5003, &[0]).unwrap();
        assert_eq!(snap.corrupted(&mem), None);
        // A held page, changed outside the range.
        mem.write(0x2000, &[8]).unwrap();
        assert!(
            snap.corrupted(&mem)
                .unwrap()
                .detail
                .contains("0x2000 changed from 0x07 to 0x08")
        );
    }

    #[test]
    fn a_reused_memory_reads_as_new() {
        let mut pool = GuestPool::default();
        let mut mem = pool.take().unwrap();
        let first = mem.alloc(64, 16).unwrap();
        let last = &mem.regions()[1].spec;
        let end = last.guest_addr + last.size - 8;
        mem.write(first, &[0xaa; 64]).unwrap();
        mem.write(end, &[0xbb; 8]).unwrap();
        pool.give(mem);
        let mut again = pool.take().unwrap();
        assert_eq!(
            again.alloc(64, 16).unwrap(),
            first,
            "the cursor is back at the start"
        );
        let mut buf = [1u8; 64];
        again.read(first, &mut buf).unwrap();
        assert_eq!(buf, [0; 64]);
        again.read(end, &mut buf[..8]).unwrap();
        assert_eq!(buf[..8], [0; 8]);
        // Nothing is held once dropped: a snapshot of it copies nothing.
        pool.give(again);
        let again = pool.take().unwrap();
        assert!(Snapshot::take(&again, vec![]).pages.is_empty());
    }
}
