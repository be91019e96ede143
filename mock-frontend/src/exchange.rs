//! Device-neutral requests through a driver queue: a chain of driver-readable buffers (their
//! bytes) and device-writable buffers (their sizes), every buffer surrounded by canary bytes,
//! made available and waited for by its id (virtio 1.2 sections 2.7.13 and 2.8.21). What the
//! device did is returned as an [`Exchanged`] for the caller (a device driver) to judge:
//! the used length, what it wrote, whether it wrote outside its buffers or into readable ones,
//! and whether it signalled.
//!
//! blk, net, fs, vsock and rng requests are built on this one path. Buffers come from the guest
//! memory's stack allocator: take [`GuestMemory::mark`] before submitting and
//! [`GuestMemory::release`] it once every request allocated after it is used.

use std::time::Duration;

use crate::memory::GuestMemory;
use crate::vring::{Buffer, DriverQueue, WaitError};

/// Bytes of canary on each side of every buffer.
pub(crate) const GUARD: u64 = 64;
/// The canary byte.
pub(crate) const CANARY: u8 = 0xc5;
/// What device-writable buffers hold before the device writes (so an untouched buffer is told
/// from one the device filled with zeros).
pub const WRITABLE_FILL: u8 = 0xa7;

/// A buffer with canaries on both sides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Guarded {
    pub(crate) gpa: u64,
    pub(crate) len: u64,
}

/// Allocates `len` bytes with [`GUARD`] canary bytes before and after.
pub(crate) fn guarded(mem: &mut GuestMemory, len: u64) -> Result<Guarded, WaitError> {
    let base = mem.alloc(len + 2 * GUARD, 16)?;
    mem.fill(base, len + 2 * GUARD, CANARY)?;
    Ok(Guarded {
        gpa: base + GUARD,
        len,
    })
}

/// Whether the canaries around `g` are intact.
pub(crate) fn guards_intact(mem: &GuestMemory, g: &Guarded) -> bool {
    let mut before = vec![0u8; GUARD as usize];
    let mut after = vec![0u8; GUARD as usize];
    mem.read(g.gpa - GUARD, &mut before).is_ok()
        && mem.read(g.gpa + g.len, &mut after).is_ok()
        && before.iter().chain(&after).all(|&b| b == CANARY)
}

/// One request: driver-readable buffers first, then device-writable ones (virtio 2.7.4.2).
#[derive(Clone, Debug, Default)]
pub struct ChainSpec {
    /// The driver-readable buffers, each one descriptor.
    pub readable: Vec<Vec<u8>>,
    /// The sizes of the device-writable buffers, each one descriptor.
    pub writable: Vec<u32>,
    /// Put the whole chain in an indirect table (VIRTIO_F_INDIRECT_DESC).
    pub indirect: bool,
}

impl ChainSpec {
    /// A chain of readable buffers only (a transmitted frame, a vsock packet).
    pub fn readable(bufs: Vec<Vec<u8>>) -> Self {
        Self {
            readable: bufs,
            ..Self::default()
        }
    }

    /// A chain of writable buffers only (a receive buffer, an entropy request).
    pub fn writable(sizes: Vec<u32>) -> Self {
        Self {
            writable: sizes,
            ..Self::default()
        }
    }

    /// `size` device-writable bytes over `segments` descriptors (at least one, at most one a
    /// byte), the first taking the remainder.
    pub fn writable_split(size: u32, segments: u32, indirect: bool) -> Self {
        let segments = segments.clamp(1, size.max(1));
        let mut sizes = vec![size / segments; segments as usize];
        sizes[0] += size % segments;
        Self {
            writable: sizes,
            indirect,
            ..Self::default()
        }
    }

    /// Total bytes of device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&l| u64::from(l)).sum()
    }
}

/// A request made available and not yet used.
#[derive(Debug)]
pub struct Submitted {
    /// The chain's head descriptor (split) or buffer id (packed): what the used element names.
    pub id: u16,
    readable: Vec<(Guarded, Vec<u8>)>,
    writable: Vec<Guarded>,
    calls_before: u64,
}

/// What the device did with one request.
#[derive(Clone, Debug)]
pub struct Exchanged {
    /// The id the used element named.
    pub id: u16,
    /// The used length the device reported.
    pub used_len: u32,
    /// Each device-writable buffer's bytes after completion, in chain order.
    pub written: Vec<Vec<u8>>,
    /// Total bytes of device-writable buffers.
    pub writable_len: u64,
    /// Whether every canary byte around every buffer is intact.
    pub canary_intact: bool,
    /// Whether every driver-readable buffer is as the driver wrote it.
    pub readonly_intact: bool,
    /// Whether the call eventfd was signalled since the request was submitted.
    pub notified: bool,
}

impl Exchanged {
    /// The device-writable bytes concatenated, cut at the used length (what the device says it
    /// wrote).
    pub fn reply(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.written.concat();
        all.truncate(self.used_len as usize);
        all
    }

    /// The first rule-level problem every device shares: a write outside the buffers, into a
    /// readable buffer, or a used length larger than the writable bytes (virtio 2.7.8.2: "the
    /// device MUST NOT set len to a value larger than the total size of device-writable
    /// buffers"). `None` when there is none.
    pub fn common_problem(&self) -> Option<String> {
        if !self.canary_intact {
            return Some(
                "guest memory next to the buffers changed (a write outside a device-writable buffer)"
                    .into(),
            );
        }
        if !self.readonly_intact {
            return Some("a driver-readable buffer was written".into());
        }
        if u64::from(self.used_len) > self.writable_len {
            return Some(format!(
                "used length {} is larger than the {} device-writable bytes",
                self.used_len, self.writable_len
            ));
        }
        None
    }
}

/// Builds `spec` in guest memory and adds it to the ring; does not publish or kick (so several
/// requests can go in one batch: [`submit`] and [`submit_batch`] do both).
fn add(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    spec: &ChainSpec,
) -> Result<Submitted, WaitError> {
    let mut bufs = Vec::new();
    let mut readable = Vec::new();
    for data in &spec.readable {
        let g = guarded(mem, data.len() as u64)?;
        mem.write(g.gpa, data)?;
        bufs.push(Buffer {
            gpa: g.gpa,
            len: data.len() as u32,
            writable: false,
        });
        readable.push((g, data.clone()));
    }
    let mut writable = Vec::new();
    for &len in &spec.writable {
        let g = guarded(mem, len.into())?;
        mem.fill(g.gpa, len.into(), WRITABLE_FILL)?;
        bufs.push(Buffer {
            gpa: g.gpa,
            len,
            writable: true,
        });
        writable.push(g);
    }
    let calls_before = q.calls;
    let id = if spec.indirect {
        q.add_indirect(mem, &bufs)?
    } else {
        q.add_chain(mem, &bufs)?
    };
    Ok(Submitted {
        id,
        readable,
        writable,
        calls_before,
    })
}

/// Makes one request available and kicks.
///
/// # Errors
/// Guest memory or the ring is full.
pub fn submit(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    spec: &ChainSpec,
) -> Result<Submitted, WaitError> {
    Ok(submit_batch(q, mem, std::slice::from_ref(spec))?.remove(0))
}

/// Makes several requests available with one index update and one kick.
///
/// # Errors
/// Guest memory or the ring is full.
pub fn submit_batch(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    specs: &[ChainSpec],
) -> Result<Vec<Submitted>, WaitError> {
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        out.push(add(q, mem, s)?);
    }
    q.publish(mem)?;
    q.kick();
    Ok(out)
}

/// Waits up to `timeout` for `count` used elements on `q` and matches each to the request in
/// `pending` it names (removing it). Requests may complete in any order.
///
/// # Errors
/// [`WaitError::Timeout`] when fewer completed (the rest stay pending); [`WaitError::BadUsedId`]
/// when a used element names no pending request.
pub fn wait(
    q: &mut DriverQueue,
    mem: &GuestMemory,
    pending: &mut Vec<Submitted>,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Exchanged>, WaitError> {
    let used = q.wait_used(mem, count, timeout)?;
    let mut out = Vec::with_capacity(used.len());
    for u in used {
        let at = pending
            .iter()
            .position(|p| u32::from(p.id) == u.id)
            .ok_or(WaitError::BadUsedId { id: u.id })?;
        let p = pending.remove(at);
        let notified = q.await_call(p.calls_before);
        out.push(outcome(mem, &p, u.len, notified)?);
    }
    Ok(out)
}

fn outcome(
    mem: &GuestMemory,
    p: &Submitted,
    used_len: u32,
    notified: bool,
) -> Result<Exchanged, WaitError> {
    let mut written = Vec::with_capacity(p.writable.len());
    for g in &p.writable {
        let mut d = vec![0u8; g.len as usize];
        mem.read(g.gpa, &mut d)?;
        written.push(d);
    }
    let readonly_intact = p.readable.iter().all(|(g, data)| {
        let mut now = vec![0u8; g.len as usize];
        mem.read(g.gpa, &mut now).is_ok() && now == *data
    });
    let canary_intact = p
        .readable
        .iter()
        .map(|(g, _)| g)
        .chain(&p.writable)
        .all(|g| guards_intact(mem, g));
    Ok(Exchanged {
        id: p.id,
        used_len,
        writable_len: p.writable.iter().map(|g| g.len).sum(),
        written,
        canary_intact,
        readonly_intact,
        notified,
    })
}

/// Sends one request and waits for it.
///
/// # Errors
/// As [`submit`] and [`wait`].
pub fn exchange(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    spec: &ChainSpec,
    timeout: Duration,
) -> Result<Exchanged, WaitError> {
    let mut pending = vec![submit(q, mem, spec)?];
    Ok(wait(q, mem, &mut pending, 1, timeout)?.remove(0))
}
