//! Inflight I/O tracking (checklist 4.8, R-INFL-01..05). GET_INFLIGHT_FD hands out a zeroed memfd
//! sized for the queues asked for; SET_INFLIGHT_FD takes one back, refused unless it fits the
//! queues it claims (BUG-11). The area is mapped and kept up to date for split rings: per queue a
//! 16-byte header (u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx)
//! and desc_num 16-byte entries (u8 inflight, 5 padding, u16 next, u64 counter), each queue's
//! region aligned to 64 bytes as libvhost-user and DPDK lay it out. When a ring starts, entries
//! still in flight from a previous connection are completed first, in counter order (R-INFL-05).

use std::os::fd::OwnedFd;

use vhu_mock_device::{ChainHandler, GuestMemory, Queue, RingError};
use vhu_protocol::ProtocolFeatures;
use vhu_protocol::wire::payload::{Body, InflightDesc};

use crate::memory::Mapping;
use crate::session::{Outcome, Session};

/// Header offsets inside a queue's region.
const VERSION: u64 = 8;
const DESC_NUM: u64 = 10;
const LAST_BATCH_HEAD: u64 = 12;
const USED_IDX: u64 = 14;
/// Size of the header and of one entry.
const HEADER: u64 = 16;
const ENTRY: u64 = 16;

/// A mapped inflight area.
#[derive(Debug)]
pub struct InflightArea {
    map: Mapping,
    offset: u64,
    num_queues: u16,
    queue_size: u16,
    counter: u64,
}

impl InflightArea {
    fn new(fd: OwnedFd, d: &InflightDesc) -> Option<Self> {
        let map = Mapping::new(fd, d.mmap_offset.checked_add(d.mmap_size)?).ok()?;
        Some(Self {
            map,
            offset: d.mmap_offset,
            num_queues: d.num_queues,
            queue_size: d.queue_size,
            counter: 0,
        })
    }

    fn region(&self, q: usize) -> u64 {
        self.offset + q as u64 * area_size(1, self.queue_size)
    }

    fn entry(&self, q: usize, head: u16) -> u64 {
        self.region(q) + HEADER + ENTRY * u64::from(head)
    }

    fn get_u16(&self, at: u64) -> u16 {
        let mut b = [0u8; 2];
        self.map.read_at(at, &mut b);
        u16::from_ne_bytes(b)
    }

    fn put_u16(&self, at: u64, v: u16) {
        self.map.write_at(at, &v.to_ne_bytes());
    }

    fn covers(&self, q: usize, head: u16) -> bool {
        q < usize::from(self.num_queues) && head < self.queue_size
    }

    /// A ring starts with its used index at `used_idx`: a fresh region is initialised; a used
    /// one gives back the heads still in flight, oldest first (R-INFL-05).
    pub fn start(&mut self, q: usize, used_idx: u16) -> Vec<u16> {
        if q >= usize::from(self.num_queues) {
            return vec![];
        }
        let r = self.region(q);
        if self.get_u16(r + VERSION) == 0 {
            self.put_u16(r + DESC_NUM, self.queue_size);
            self.put_u16(r + USED_IDX, used_idx);
            self.put_u16(r + VERSION, 1);
            return vec![];
        }
        if self.get_u16(r + USED_IDX) != used_idx {
            // The last batch was published in the ring but not cleared here.
            let last = self.get_u16(r + LAST_BATCH_HEAD);
            if last < self.queue_size {
                self.map.write_at(self.entry(q, last), &[0]);
            }
            self.put_u16(r + USED_IDX, used_idx);
        }
        self.in_flight(q)
    }

    fn in_flight(&mut self, q: usize) -> Vec<u16> {
        let mut found: Vec<(u64, u16)> = (0..self.queue_size)
            .filter_map(|h| {
                let mut e = [0u8; 16];
                self.map.read_at(self.entry(q, h), &mut e);
                let counter = u64::from_ne_bytes(e[8..16].try_into().expect("8 bytes"));
                (e[0] == 1).then_some((counter, h))
            })
            .collect();
        found.sort_unstable();
        if let Some(&(max, _)) = found.last() {
            self.counter = self.counter.max(max + 1);
        }
        found.into_iter().map(|(_, h)| h).collect()
    }

    /// R-INFL-04: a head taken from the avail ring is in flight with the next counter.
    pub fn taken(&mut self, q: usize, head: u16) {
        if self.covers(q, head) {
            let at = self.entry(q, head);
            self.map.write_at(at + 8, &self.counter.to_ne_bytes());
            self.map.write_at(at, &[1]);
            self.counter += 1;
        }
    }

    /// The head about to be published is the batch's head.
    pub fn completing(&mut self, q: usize, head: u16) {
        if self.covers(q, head) {
            self.put_u16(self.region(q) + LAST_BATCH_HEAD, head);
        }
    }

    /// The head is published: no longer in flight; the used index is stored.
    pub fn completed(&mut self, q: usize, head: u16, used_idx: u16) {
        if self.covers(q, head) {
            self.map.write_at(self.entry(q, head), &[0]);
            self.put_u16(self.region(q) + USED_IDX, used_idx);
        }
    }
}

/// R-INFL-05: completes the chains a previous connection left in flight, oldest first and
/// before anything new, rebuilt from the descriptor table without touching the avail ring. A
/// chain that no longer validates is completed empty, so it leaves the area all the same.
pub(crate) fn resubmit(
    q: &mut Queue,
    mem: &dyn GuestMemory,
    heads: &[u16],
    handler: &mut dyn ChainHandler,
) -> Result<(), RingError> {
    for &head in heads {
        let chain = q.chain_at(mem, head).unwrap_or(vhu_mock_device::Chain {
            head,
            id: head,
            segments: vec![],
            descriptors: 1,
        });
        let len = handler.serve(mem, &chain);
        q.push_used(mem, &chain, len)?;
        handler.published(q, &chain);
    }
    Ok(())
}

impl Session<'_> {
    /// GET_INFLIGHT_FD (R-INFL-01): a zeroed area (every region's version 0, "not yet used").
    pub(crate) fn get_inflight_fd(&mut self, d: InflightDesc) -> Outcome {
        let Some(size) = self.inflight_size(d.num_queues, d.queue_size) else {
            return Outcome::Failed;
        };
        let reply = InflightDesc {
            mmap_size: size,
            mmap_offset: 0,
            ..d
        };
        let Some((fd, ours)) = zeroed_memfd(size) else {
            return Outcome::Failed;
        };
        let Some(area) = InflightArea::new(ours, &reply) else {
            return Outcome::Failed;
        };
        self.inflight = Some(area);
        Outcome::ReplyWithFd(Body::Inflight(reply), fd)
    }

    /// SET_INFLIGHT_FD (R-INFL-03): the area must fit the queues it claims (BUG-11: a
    /// num_queues past the device's queues is refused, never walked); it is mapped and used.
    pub(crate) fn set_inflight_fd(&mut self, d: InflightDesc, mut fds: Vec<OwnedFd>) -> Outcome {
        let needed = self.inflight_size(d.num_queues, d.queue_size);
        let fits = needed.is_some_and(|n| d.mmap_size >= n);
        match fds
            .pop()
            .filter(|_| fits)
            .and_then(|fd| InflightArea::new(fd, &d))
        {
            Some(area) => {
                self.inflight = Some(area);
                Outcome::Done
            }
            None => Outcome::Failed,
        }
    }

    fn inflight_size(&self, num_queues: u16, queue_size: u16) -> Option<u64> {
        // R-NEG-11: only once INFLIGHT_SHMFD is negotiated.
        let ok = self.negotiated(ProtocolFeatures::INFLIGHT_SHMFD)
            && (1..=self.queues.len() as u16).contains(&num_queues)
            && (1..=32768).contains(&queue_size);
        ok.then(|| area_size(num_queues, queue_size))
    }
}

/// Bytes of the area for `num_queues` rings of `queue_size` entries.
fn area_size(num_queues: u16, queue_size: u16) -> u64 {
    u64::from(num_queues) * (HEADER + ENTRY * u64::from(queue_size)).next_multiple_of(64)
}

/// A zeroed memfd of `size` bytes: the fd to send and our own duplicate.
fn zeroed_memfd(size: u64) -> Option<(OwnedFd, OwnedFd)> {
    let m = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .create("vhu-inflight")
        .ok()?;
    let file = m.into_file();
    file.set_len(size).ok()?;
    let fd = OwnedFd::from(file);
    let ours = fd.try_clone().ok()?;
    Some((fd, ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_queue_region_is_a_header_plus_entries_aligned_to_64_bytes() {
        assert_eq!(area_size(1, 1), 64);
        assert_eq!(area_size(2, 128), 2 * 2112);
    }

    fn area() -> InflightArea {
        let d = InflightDesc {
            mmap_size: area_size(2, 8),
            mmap_offset: 0,
            num_queues: 2,
            queue_size: 8,
            ..Default::default()
        };
        let (_, ours) = zeroed_memfd(d.mmap_size).unwrap();
        InflightArea::new(ours, &d).unwrap()
    }

    #[test]
    fn in_flight_heads_come_back_oldest_first_and_completed_ones_do_not() {
        let mut a = area();
        assert!(a.start(1, 0).is_empty(), "fresh region");
        assert_eq!(a.get_u16(a.region(1) + VERSION), 1);
        for h in [5, 2, 7] {
            a.taken(1, h);
        }
        a.completing(1, 2);
        a.completed(1, 2, 1);
        a.counter = 0;
        assert_eq!(a.start(1, 1), vec![5, 7]);
        assert_eq!(a.counter, 3);
    }

    #[test]
    fn a_batch_published_in_the_ring_but_not_cleared_is_not_resubmitted() {
        let mut a = area();
        a.start(0, 0);
        a.taken(0, 3);
        a.taken(0, 4);
        a.completing(0, 3);
        // Crash here: the ring's used index is 1, the area still says 0.
        assert_eq!(a.start(0, 1), vec![4]);
    }
}
