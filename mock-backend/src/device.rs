//! The device side: a split virtqueue consumer (virtio 1.2 section 2.7; packed rings are in
//! `packed`) and a virtio-blk device on a RAM disk (section 5.2). Every descriptor is validated; a malformed chain is completed with an
//! error status when a status byte can be written, and never makes the process panic.

use std::sync::atomic::{Ordering, fence};

use vhu_protocol::virtio::{
    BlkReqHeader, SplitDesc, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VhuShmemBody, blk,
};
use zerocopy::FromBytes;

use crate::memory::Memory;
use crate::packed::PackedRing;

/// A guest buffer of a chain.
#[derive(Copy, Clone, Debug)]
pub struct Segment {
    /// Guest address.
    pub gpa: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A started ring of either layout.
#[derive(Copy, Clone, Debug)]
pub enum Ring {
    /// Split layout (virtio 2.7).
    Split(SplitRing),
    /// Packed layout (virtio 2.8).
    Packed(PackedRing),
}

impl Ring {
    /// The GET_VRING_BASE value: the next avail index (split) or the packed base word.
    pub fn base(&self) -> u32 {
        match self {
            Self::Split(r) => r.next_avail.into(),
            Self::Packed(r) => r.base(),
        }
    }
}

/// vhu-conform's request type: map a memfd into a shared memory region (see the crate docs).
pub use blk::T_VHU_SHMEM_MAP as T_SHMEM_MAP;
/// vhu-conform's request type: unmap a range mapped with [`T_SHMEM_MAP`].
pub use blk::T_VHU_SHMEM_UNMAP as T_SHMEM_UNMAP;

/// A SHMEM device request, decoded from its 24-byte body.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ShmemReq {
    /// Map (true) or unmap.
    pub map: bool,
    /// The shared memory region.
    pub shmid: u8,
    /// Offset into the region.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

impl ShmemReq {
    fn decode(map: bool, body: &[u8; 24]) -> Self {
        let b = VhuShmemBody::read_from_bytes(body).expect("24 bytes");
        Self {
            map,
            shmid: b.shmid,
            offset: b.shm_offset,
            len: b.len,
        }
    }
}

/// What the device asks of the session while it processes a ring: SHMEM requests, and the
/// inflight bookkeeping of split rings (R-INFL-04/05).
pub trait DeviceHost {
    /// Carries out a SHMEM request; true when it succeeded.
    fn shmem(&mut self, r: ShmemReq) -> bool;
    /// Heads to complete before anything new (in-flight requests of a previous connection).
    fn resubmit(&mut self) -> Vec<u16> {
        vec![]
    }
    /// A head was taken from the avail ring.
    fn taken(&mut self, _head: u16) {}
    /// A head's used element is about to be published.
    fn completing(&mut self, _head: u16) {}
    /// A head's completion is published; the used index is now `used_idx`.
    fn completed(&mut self, _head: u16, _used_idx: u16) {}
}

/// The session's side of processing.
pub type Host<'h> = &'h mut dyn DeviceHost;

/// Start of a saved device state.
const STATE_MAGIC: &[u8] = b"VHUMOCK3";

/// FNV-1a: enough to detect a truncated or damaged state stream.
/// Granularity of the disk in a saved state.
const STATE_BLOCK: usize = 4096;
static ZERO_BLOCK: [u8; STATE_BLOCK] = [0; STATE_BLOCK];

/// The first `N` bytes of `b` and the rest, or a "too short" error.
fn take<const N: usize>(b: &[u8]) -> Result<([u8; N], &[u8]), String> {
    let (head, rest) = b.split_at_checked(N).ok_or("state too short")?;
    Ok((head.try_into().expect("N bytes"), rest))
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Where a started ring lives (guest addresses) and where it stands.
#[derive(Copy, Clone, Debug)]
pub struct SplitRing {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Next avail index to process (the GET_VRING_BASE value).
    pub next_avail: u16,
    /// Next used index to write.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated: notifications follow used_event / avail_event.
    pub event_idx: bool,
}

/// Deliberate data-path faults.
#[derive(Copy, Clone, Debug, Default)]
pub struct DataFaults {
    /// Report used length + 1.
    pub wrong_used_len: bool,
    /// Write 16 bytes past the last writable data buffer.
    pub write_past: bool,
}

/// A virtio-blk device on a RAM disk.
#[derive(Debug)]
pub struct Blk {
    disk: Vec<u8>,
    /// The `writeback` config byte.
    pub wce: u8,
    /// Number of queues.
    pub num_queues: u16,
}

impl Blk {
    /// A zeroed disk of `capacity` bytes.
    pub fn new(capacity: u64, num_queues: u16) -> Self {
        Self {
            disk: vec![0; capacity as usize],
            wce: 1,
            num_queues,
        }
    }

    /// virtio_blk_config: capacity @0, seg_max @12, blk_size @20, writeback @32, num_queues @34.
    pub fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&(self.disk.len() as u64 / blk::SECTOR_SIZE).to_le_bytes());
        c[12..16].copy_from_slice(&126u32.to_le_bytes());
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        c[32] = self.wce;
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        c
    }

    /// The device's state for a transfer: magic, config, ring bases, the disk's size and its
    /// non-zero blocks (a RAM disk is mostly zeros; sending only what was written keeps a
    /// transfer of a 64 MiB disk small), checksum.
    pub fn save(&self, bases: &[u32], corrupt: bool) -> Vec<u8> {
        let mut out = STATE_MAGIC.to_vec();
        out.push(self.wce);
        out.extend_from_slice(&(bases.len() as u16).to_le_bytes());
        bases
            .iter()
            .for_each(|b| out.extend_from_slice(&b.to_le_bytes()));
        out.extend_from_slice(&(self.disk.len() as u64).to_le_bytes());
        let written: Vec<(usize, &[u8])> = self
            .disk
            .chunks(STATE_BLOCK)
            .enumerate()
            .filter(|(_, b)| *b != &ZERO_BLOCK[..b.len()])
            .collect();
        out.extend_from_slice(&(written.len() as u32).to_le_bytes());
        for (i, b) in written {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        let sum = checksum(&out) ^ u64::from(corrupt);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Loads a saved state; returns the ring bases. The state is checked whole before anything
    /// changes: a truncated or corrupt stream leaves the device as it was.
    pub fn load(&mut self, state: &[u8]) -> Result<Vec<u32>, String> {
        let (body, sum) = state
            .split_at_checked(state.len().saturating_sub(8))
            .ok_or("state too short")?;
        if sum.len() != 8 || checksum(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes"))
        {
            return Err("state checksum mismatch (truncated or corrupt)".into());
        }
        let rest = body
            .strip_prefix(STATE_MAGIC)
            .ok_or("not a vhu-mock-backend state")?;
        let (&wce, rest) = rest.split_first().ok_or("state too short")?;
        let (n, mut rest) = take::<2>(rest)?;
        let mut bases = Vec::new();
        for _ in 0..u16::from_le_bytes(n) {
            let (b, r) = take::<4>(rest)?;
            bases.push(u32::from_le_bytes(b));
            rest = r;
        }
        let (len, rest) = take::<8>(rest)?;
        if u64::from_le_bytes(len) != self.disk.len() as u64 {
            return Err("disk size in the state does not match this device".into());
        }
        let (count, mut rest) = take::<4>(rest)?;
        let mut blocks = Vec::new();
        for _ in 0..u32::from_le_bytes(count) {
            let (i, r) = take::<4>(rest)?;
            let start = u32::from_le_bytes(i) as usize * STATE_BLOCK;
            let end = (start + STATE_BLOCK).min(self.disk.len());
            let (data, r) = r
                .split_at_checked(end.saturating_sub(start))
                .filter(|_| start < end)
                .ok_or("a block of the state lies outside the disk or is cut short")?;
            blocks.push((start, data));
            rest = r;
        }
        if !rest.is_empty() {
            return Err("trailing bytes after the disk blocks".into());
        }
        self.disk.fill(0);
        for (start, data) in blocks {
            self.disk[start..start + data.len()].copy_from_slice(data);
        }
        self.wce = wce;
        Ok(bases)
    }

    /// Device feature bits: SEG_MAX, BLK_SIZE, FLUSH, CONFIG_WCE, MQ.
    pub fn features(&self) -> u64 {
        blk::F_SEG_MAX
            | blk::F_BLK_SIZE
            | blk::F_FLUSH
            | blk::F_CONFIG_WCE
            | if self.num_queues > 1 { blk::F_MQ } else { 0 }
    }

    /// Processes every newly available chain; returns whether the driver wants a notification
    /// for what completed (virtio 2.7.7: NO_INTERRUPT, or EVENT_IDX's used_event).
    pub fn process(
        &mut self,
        mem: &Memory,
        ring: &mut Ring,
        faults: DataFaults,
        host: Host<'_>,
    ) -> Result<bool, String> {
        match ring {
            Ring::Split(r) => self.process_split(mem, r, faults, host),
            Ring::Packed(r) => crate::packed::process(self, mem, r, faults, host),
        }
    }

    fn process_split(
        &mut self,
        mem: &Memory,
        ring: &mut SplitRing,
        faults: DataFaults,
        host: Host<'_>,
    ) -> Result<bool, String> {
        let old_used = ring.next_used;
        let done = self.process_available(mem, ring, faults, host)?;
        let size = u64::from(ring.size);
        if ring.event_idx {
            // avail_event: ask for a kick as soon as the driver adds anything.
            mem.write_u16(ring.used + 4 + 8 * size, ring.next_avail)?;
        }
        if done == 0 {
            return Ok(false);
        }
        if ring.event_idx {
            let used_event = mem.read_u16(ring.avail + 4 + 2 * size)?;
            // vring_need_event: notify if used_event lies in [old_used, next_used).
            return Ok(ring.next_used.wrapping_sub(used_event).wrapping_sub(1)
                < ring.next_used.wrapping_sub(old_used));
        }
        Ok(mem.read_u16(ring.avail)? & vhu_protocol::virtio::VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }

    fn process_available(
        &mut self,
        mem: &Memory,
        ring: &mut SplitRing,
        faults: DataFaults,
        host: Host<'_>,
    ) -> Result<usize, String> {
        let mut done = 0;
        for head in host.resubmit() {
            self.serve_head(mem, ring, head, faults, &mut *host)?;
            done += 1;
        }
        let avail_idx = mem.read_u16(ring.avail + 2)?;
        fence(Ordering::Acquire);
        while ring.next_avail != avail_idx {
            let slot = ring.avail + 4 + 2 * u64::from(ring.next_avail % ring.size);
            let head = mem.read_u16(slot)?;
            host.taken(head);
            ring.next_avail = ring.next_avail.wrapping_add(1);
            self.serve_head(mem, ring, head, faults, &mut *host)?;
            done += 1;
        }
        Ok(done)
    }

    /// Executes the chain at `head` and publishes its used element.
    fn serve_head(
        &mut self,
        mem: &Memory,
        ring: &mut SplitRing,
        head: u16,
        faults: DataFaults,
        host: Host<'_>,
    ) -> Result<(), String> {
        let used_len = match chain(mem, ring, head) {
            Ok(segs) => self.execute(mem, &segs, faults, &mut *host),
            Err(_) => 0,
        };
        let elem_gpa = ring.used + 4 + 8 * u64::from(ring.next_used % ring.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&(used_len + u32::from(faults.wrong_used_len)).to_le_bytes());
        mem.write(elem_gpa, &elem)?;
        host.completing(head);
        ring.next_used = ring.next_used.wrapping_add(1);
        fence(Ordering::Release);
        mem.write_u16(ring.used + 2, ring.next_used)?;
        host.completed(head, ring.next_used);
        Ok(())
    }

    /// Executes one request; returns the bytes written into writable buffers.
    pub fn execute(
        &mut self,
        mem: &Memory,
        segs: &[Segment],
        faults: DataFaults,
        host: Host<'_>,
    ) -> u32 {
        let Some((status, body)) = segs.split_last().filter(|(s, _)| s.writable && s.len >= 1)
        else {
            return 0;
        };
        let status_gpa = status.gpa + u64::from(status.len) - 1;
        let (code, written) = match body.split_first() {
            Some((h, data)) if !h.writable && h.len as usize >= size_of::<BlkReqHeader>() => {
                self.request(mem, h, data, faults, host)
            }
            _ => (blk::S_IOERR, 0),
        };
        if mem.write(status_gpa, &[code]).is_err() {
            return written;
        }
        written + 1
    }

    fn request(
        &mut self,
        mem: &Memory,
        h: &Segment,
        data: &[Segment],
        faults: DataFaults,
        host: Host<'_>,
    ) -> (u8, u32) {
        let mut raw = [0u8; 16];
        if mem.read(h.gpa, &mut raw).is_err() {
            return (blk::S_IOERR, 0);
        }
        let hdr = BlkReqHeader::read_from_bytes(&raw).expect("16 bytes");
        let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
        let start = hdr.sector.saturating_mul(blk::SECTOR_SIZE);
        let in_range = start
            .checked_add(total)
            .is_some_and(|end| end <= self.disk.len() as u64);
        match hdr.kind {
            blk::T_IN if in_range && data.iter().all(|s| s.writable) => {
                let mut off = start as usize;
                for s in data {
                    let chunk = &self.disk[off..off + s.len as usize];
                    if mem.write(s.gpa, chunk).is_err() {
                        return (blk::S_IOERR, 0);
                    }
                    off += s.len as usize;
                }
                if faults.write_past {
                    if let Some(last) = data.last() {
                        let _ = mem.write(last.gpa + u64::from(last.len), &[0xee; 16]);
                    }
                }
                (blk::S_OK, total as u32)
            }
            blk::T_OUT if in_range && data.iter().all(|s| !s.writable) => {
                let mut off = start as usize;
                for s in data {
                    if mem
                        .read(s.gpa, &mut self.disk[off..off + s.len as usize])
                        .is_err()
                    {
                        return (blk::S_IOERR, 0);
                    }
                    off += s.len as usize;
                }
                (blk::S_OK, 0)
            }
            blk::T_FLUSH => (blk::S_OK, 0),
            blk::T_GET_ID => match data.first().filter(|s| s.writable) {
                Some(s) => {
                    let mut id = [0u8; blk::ID_BYTES as usize];
                    id[..16].copy_from_slice(b"vhu-mock-backend");
                    let n = s.len.min(blk::ID_BYTES);
                    if mem.write(s.gpa, &id[..n as usize]).is_err() {
                        return (blk::S_IOERR, 0);
                    }
                    (blk::S_OK, n)
                }
                None => (blk::S_IOERR, 0),
            },
            T_SHMEM_MAP | T_SHMEM_UNMAP => (shmem_request(mem, hdr.kind, data, host), 0),
            blk::T_IN | blk::T_OUT => (blk::S_IOERR, 0),
            _ => (blk::S_UNSUPP, 0),
        }
    }
}

/// A SHMEM vendor request: one 24-byte driver-readable body (see the crate docs).
fn shmem_request(mem: &Memory, kind: u32, data: &[Segment], hook: Host<'_>) -> u8 {
    let mut body = [0u8; 24];
    let ok = match data {
        [s] if !s.writable && s.len == 24 => mem.read(s.gpa, &mut body).is_ok(),
        _ => false,
    };
    if ok && hook.shmem(ShmemReq::decode(kind == T_SHMEM_MAP, &body)) {
        blk::S_OK
    } else {
        blk::S_IOERR
    }
}

fn read_desc(mem: &Memory, table: u64, i: u16) -> Result<SplitDesc, String> {
    let mut raw = [0u8; 16];
    mem.read(table + 16 * u64::from(i), &mut raw)?;
    Ok(SplitDesc::read_from_bytes(&raw).expect("16 bytes"))
}

/// Walks a chain (direct or through one indirect table), validating every step.
fn chain(mem: &Memory, ring: &SplitRing, head: u16) -> Result<Vec<Segment>, String> {
    if head >= ring.size {
        return Err(format!("head {head} out of range"));
    }
    walk(mem, ring, head)
}

fn walk(mem: &Memory, ring: &SplitRing, head: u16) -> Result<Vec<Segment>, String> {
    let first = read_desc(mem, ring.desc, head)?;
    let (table, limit, mut i) = if first.flags & VIRTQ_DESC_F_INDIRECT != 0 {
        if first.len == 0 || first.len % 16 != 0 {
            return Err("bad indirect table length".into());
        }
        (first.addr, (first.len / 16) as u16, 0u16)
    } else {
        (ring.desc, ring.size, head)
    };
    let indirect = table != ring.desc;
    let mut segs = Vec::new();
    loop {
        if i >= limit || segs.len() >= usize::from(limit) {
            return Err("descriptor index out of range or chain loops".into());
        }
        let d = read_desc(mem, table, i)?;
        if indirect && d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err("nested indirect table".into());
        }
        d.addr
            .checked_add(u64::from(d.len))
            .ok_or("descriptor range overflows")?;
        segs.push(Segment {
            gpa: d.addr,
            len: d.len,
            writable: d.flags & VIRTQ_DESC_F_WRITE != 0,
        });
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(segs);
        }
        i = d.next;
    }
}
