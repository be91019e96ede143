//! Inflight I/O tracking areas (checklist 4.8, R-INFL-01/03): GET_INFLIGHT_FD hands out a zeroed
//! memfd sized for the queues asked for; SET_INFLIGHT_FD takes one back, refused unless it fits
//! the queues it claims (BUG-11). The layout is libvhost-user's and DPDK's: per queue a 16-byte
//! header and 16-byte descriptor entries, aligned to 64 bytes.

use std::os::fd::OwnedFd;

use vhu_protocol::ProtocolFeatures;
use vhu_protocol::wire::payload::{Body, InflightDesc};

use crate::session::{Outcome, Session};

impl Session<'_> {
    /// GET_INFLIGHT_FD (R-INFL-01): a zeroed area (every region's version 0, "not yet used").
    pub(crate) fn get_inflight_fd(&mut self, d: InflightDesc) -> Outcome {
        let Some(size) = self.inflight_size(d.num_queues, d.queue_size) else {
            return Outcome::Failed;
        };
        let Some((fd, ours)) = zeroed_memfd(size) else {
            return Outcome::Failed;
        };
        self.inflight = Some(ours);
        let reply = InflightDesc {
            mmap_size: size,
            mmap_offset: 0,
            ..d
        };
        Outcome::ReplyWithFd(Body::Inflight(reply), fd)
    }

    /// SET_INFLIGHT_FD (R-INFL-03): the area must fit the queues it claims (BUG-11: a
    /// num_queues past the device's queues is refused, never walked).
    pub(crate) fn set_inflight_fd(&mut self, d: InflightDesc, mut fds: Vec<OwnedFd>) -> Outcome {
        let needed = self.inflight_size(d.num_queues, d.queue_size);
        match (fds.pop(), needed) {
            (Some(fd), Some(n)) if d.mmap_size >= n => {
                self.inflight = Some(fd);
                Outcome::Done
            }
            _ => Outcome::Failed,
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
    u64::from(num_queues) * (16 + 16 * u64::from(queue_size)).next_multiple_of(64)
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
}
