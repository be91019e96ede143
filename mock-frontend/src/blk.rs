//! virtio-blk requests through a driver queue (virtio 1.2 section 5.2): each request's buffers
//! are surrounded by canary bytes, so a device that writes outside its writable buffers is caught,
//! and the used length is compared with what the device had to write.

use std::time::Duration;

use vhu_protocol::virtio::{BlkReqHeader, blk};
use zerocopy::IntoBytes;

use crate::exchange::{Guarded, guarded, guards_intact};
use crate::memory::GuestMemory;
use crate::vring::{Buffer, DriverQueue, WaitError};

/// What one request came back with.
#[derive(Clone, Debug)]
pub struct BlkOutcome {
    /// The status byte the device wrote.
    pub status: u8,
    /// The used length the device reported.
    pub used_len: u32,
    /// The used length a correct device reports (bytes it had to write).
    pub expected_used_len: u32,
    /// Data read (for reads and GET_ID).
    pub data: Vec<u8>,
    /// Whether every canary byte around the buffers is intact.
    pub canary_intact: bool,
    /// Whether a driver-readable buffer was changed by the device.
    pub readonly_intact: bool,
    /// Whether the call eventfd was signalled for the completion.
    pub notified: bool,
    /// The device-writable ranges (guest address, length): where the device had to write.
    pub written: Vec<(u64, u64)>,
}

/// A request made available to the device and not yet completed. Complete pending requests in
/// the order they were submitted: completing one gives back the guest memory of every request
/// submitted after it.
#[derive(Debug)]
pub struct Pending {
    mark: (usize, u64),
    areas: Vec<Guarded>,
    header: Vec<u8>,
    data_out: Option<Vec<u8>>,
    data_in: Option<(u64, u32)>,
    status_gpa: u64,
    calls_before: u64,
    head: u16,
}

impl Pending {
    /// The chain's head descriptor (split) or buffer id (packed).
    pub fn head(&self) -> u16 {
        self.head
    }
}

/// What one request asks of the device: header type and sector, the data it carries to the
/// device, and how many bytes it expects back (before the status byte).
#[derive(Clone, Copy, Debug)]
pub struct BlkReq<'a> {
    /// `VIRTIO_BLK_T_*`.
    pub kind: u32,
    /// Start sector.
    pub sector: u64,
    /// Data for the device (a write).
    pub data_out: Option<&'a [u8]>,
    /// Bytes the device writes back (a read, GET_ID).
    pub data_in_len: u32,
    /// Descriptors the data is split over (0 or 1: one), to exercise long chains.
    pub segments: u32,
    /// Put the whole chain in an indirect table (VIRTIO_F_INDIRECT_DESC).
    pub indirect: bool,
    /// Made available without a kick: the device finds it only when it looks (a kick for a
    /// later request, a ring start, polling).
    pub unkicked: bool,
}

/// Sends one request and waits for it: header, optional data out, optional data in, status.
pub fn blk_request(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    req: BlkReq<'_>,
    timeout: Duration,
) -> Result<BlkOutcome, WaitError> {
    let pending = blk_submit(q, mem, req)?;
    blk_complete(q, mem, pending, timeout)
}

/// Builds one request in guest memory, makes it available and kicks (unless `unkicked`); does
/// not wait.
pub fn blk_submit(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    req: BlkReq<'_>,
) -> Result<Pending, WaitError> {
    let mark = mem.mark();
    let r = build(q, mem, req, mark);
    if r.is_err() {
        mem.release(mark);
    }
    r
}

fn build(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    req: BlkReq<'_>,
    mark: (usize, u64),
) -> Result<Pending, WaitError> {
    let BlkReq {
        kind,
        sector,
        data_out,
        data_in_len,
        segments,
        indirect,
        unkicked,
    } = req;
    let header = BlkReqHeader {
        kind,
        reserved: 0,
        sector,
    };
    let hdr = guarded(mem, 16)?;
    mem.write(hdr.gpa, header.as_bytes())?;
    let mut bufs = vec![Buffer {
        gpa: hdr.gpa,
        len: 16,
        writable: false,
    }];
    let mut areas = vec![hdr];
    if let Some(d) = data_out {
        let g = guarded(mem, d.len() as u64)?;
        mem.write(g.gpa, d)?;
        bufs.push(Buffer {
            gpa: g.gpa,
            len: d.len() as u32,
            writable: false,
        });
        areas.push(g);
    }
    let mut data_in = None;
    if data_in_len > 0 {
        let g = guarded(mem, data_in_len.into())?;
        mem.fill(g.gpa, data_in_len.into(), 0)?;
        bufs.push(Buffer {
            gpa: g.gpa,
            len: data_in_len,
            writable: true,
        });
        data_in = Some((g.gpa, data_in_len));
        areas.push(g);
    }
    let status = guarded(mem, 1)?;
    mem.write(status.gpa, &[0xff])?;
    bufs.push(Buffer {
        gpa: status.gpa,
        len: 1,
        writable: true,
    });
    let status_gpa = status.gpa;
    areas.push(status);
    let calls_before = q.calls;
    let bufs = split_data(&bufs, segments);
    let head = if indirect {
        q.add_indirect(mem, &bufs)?
    } else {
        q.add_chain(mem, &bufs)?
    };
    q.publish(mem)?;
    if !unkicked {
        q.kick();
    }
    Ok(Pending {
        calls_before,
        mark,
        areas,
        header: header.as_bytes().to_vec(),
        data_out: data_out.map(<[u8]>::to_vec),
        data_in,
        status_gpa,
        head,
    })
}

/// Waits for a submitted request and checks what the device did. On a timeout the request stays
/// pending in the ring and its memory stays allocated, so it can be completed later.
pub fn blk_complete(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    pending: Pending,
    timeout: Duration,
) -> Result<BlkOutcome, WaitError> {
    let used = q.wait_used(mem, 1, timeout)?;
    let notified = q.await_call(pending.calls_before);
    let outcome = outcome_of(mem, &pending, used[0].len, notified);
    mem.release(pending.mark);
    outcome
}

/// Waits up to `timeout` for a submitted request: `None` if it did not complete, in which case
/// it stays pending (in the ring, its memory allocated). Release it with [`blk_release`] once
/// completed.
pub fn blk_wait(
    q: &mut DriverQueue,
    mem: &GuestMemory,
    pending: &Pending,
    timeout: Duration,
) -> Result<Option<BlkOutcome>, WaitError> {
    match q.wait_used(mem, 1, timeout) {
        Ok(used) => {
            let notified = q.await_call(pending.calls_before);
            outcome_of(mem, pending, used[0].len, notified).map(Some)
        }
        Err(WaitError::Timeout { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives back the guest memory of a completed request (and of every later one).
pub fn blk_release(mem: &mut GuestMemory, pending: Pending) {
    mem.release(pending.mark);
}

fn outcome_of(
    mem: &GuestMemory,
    p: &Pending,
    used_len: u32,
    notified: bool,
) -> Result<BlkOutcome, WaitError> {
    let mut status_byte = [0u8];
    mem.read(p.status_gpa, &mut status_byte)?;
    let (data, expected) = match p.data_in {
        Some((gpa, len)) => {
            let mut d = vec![0u8; len as usize];
            mem.read(gpa, &mut d)?;
            (d, len + 1)
        }
        None => (vec![], 1),
    };
    let readonly_intact = readonly_unchanged(mem, &p.areas[0], &p.header)
        && p.data_out
            .as_deref()
            .is_none_or(|d| readonly_unchanged(mem, &p.areas[1], d));
    Ok(BlkOutcome {
        status: status_byte[0],
        used_len,
        expected_used_len: expected,
        data,
        canary_intact: p.areas.iter().all(|g| guards_intact(mem, g)),
        readonly_intact,
        notified,
        written: p
            .data_in
            .iter()
            .map(|&(gpa, len)| (gpa, u64::from(len)))
            .chain([(p.status_gpa, 1)])
            .collect(),
    })
}

fn readonly_unchanged(mem: &GuestMemory, g: &Guarded, expected: &[u8]) -> bool {
    let mut now = vec![0u8; g.len as usize];
    mem.read(g.gpa, &mut now).is_ok() && now == expected
}

/// The chain with its data buffers (all but the header and the status byte) each cut into
/// `segments` contiguous descriptors.
fn split_data(bufs: &[Buffer], segments: u32) -> Vec<Buffer> {
    let n = segments.max(1);
    let last = bufs.len().saturating_sub(1);
    let mut out = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        if i == 0 || i == last || n == 1 || b.len < n {
            out.push(*b);
            continue;
        }
        let piece = b.len / n;
        for k in 0..n {
            let start = k * piece;
            let len = if k == n - 1 { b.len - start } else { piece };
            out.push(Buffer {
                gpa: b.gpa + u64::from(start),
                len,
                writable: b.writable,
            });
        }
    }
    out
}

impl<'a> BlkReq<'a> {
    /// The same request with its data cut into `n` descriptors.
    pub fn in_segments(mut self, n: u32) -> Self {
        self.segments = n;
        self
    }

    /// The same request made available without a kick.
    pub fn unkicked(mut self) -> Self {
        self.unkicked = true;
        self
    }

    /// The same request through an indirect descriptor table.
    pub fn through_indirect(mut self) -> Self {
        self.indirect = true;
        self
    }

    /// Write `data` (a multiple of 512 bytes) at `sector`.
    pub fn write(sector: u64, data: &'a [u8]) -> Self {
        Self {
            kind: blk::T_OUT,
            sector,
            data_out: Some(data),
            data_in_len: 0,
            segments: 1,
            indirect: false,
            unkicked: false,
        }
    }

    /// Read `len` bytes at `sector`.
    pub fn read(sector: u64, len: u32) -> Self {
        Self {
            kind: blk::T_IN,
            sector,
            data_out: None,
            data_in_len: len,
            segments: 1,
            indirect: false,
            unkicked: false,
        }
    }

    /// Flush the write cache.
    pub fn flush() -> Self {
        Self {
            kind: blk::T_FLUSH,
            sector: 0,
            data_out: None,
            data_in_len: 0,
            segments: 1,
            indirect: false,
            unkicked: false,
        }
    }

    /// Read the 20-byte device id.
    pub fn get_id() -> Self {
        Self {
            kind: blk::T_GET_ID,
            sector: 0,
            data_out: None,
            data_in_len: blk::ID_BYTES,
            segments: 1,
            indirect: false,
            unkicked: false,
        }
    }
}

/// Writes `data` (a multiple of 512 bytes) at `sector`.
pub fn blk_write(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    sector: u64,
    data: &[u8],
    timeout: Duration,
) -> Result<BlkOutcome, WaitError> {
    blk_request(q, mem, BlkReq::write(sector, data), timeout)
}

/// Reads `len` bytes at `sector`.
pub fn blk_read(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    sector: u64,
    len: u32,
    timeout: Duration,
) -> Result<BlkOutcome, WaitError> {
    blk_request(q, mem, BlkReq::read(sector, len), timeout)
}

/// Flushes the write cache.
pub fn blk_flush(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    timeout: Duration,
) -> Result<BlkOutcome, WaitError> {
    blk_request(q, mem, BlkReq::flush(), timeout)
}

/// Reads the 20-byte device id.
pub fn blk_get_id(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    timeout: Duration,
) -> Result<BlkOutcome, WaitError> {
    blk_request(q, mem, BlkReq::get_id(), timeout)
}
