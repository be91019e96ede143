//! The judging back-end's data path: a split ring of blk requests served from the front-end's
//! memory (reads return zeros, GET_ID, flush), through the IOTLB where ACCESS_PLATFORM is
//! negotiated, asking the front-end with a miss for what it cannot translate (R-IOTLB-03/04).

use std::os::fd::{AsRawFd, OwnedFd};

use vhu_protocol::virtio::{SplitDesc, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, blk};
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{BackendReq, VirtioFeatures};
use zerocopy::FromBytes;

use crate::device::DeviceType;

use super::probe::{Probe, ProbeKind};
use super::{BLK_ID, JudgingBackend, MAX_MISSES};

/// One IOTLB entry the front-end gave (type 2 update).
#[derive(Copy, Clone, Debug)]
pub(super) struct IotlbEntry {
    pub(super) iova: u64,
    pub(super) size: u64,
    pub(super) uaddr: u64,
    pub(super) perm: u8,
}

pub(super) fn write_eventfd(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an fd we own; an error (a full counter,
    // a non-eventfd) is ignored: the front-end polls or misses one notification.
    unsafe {
        libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8);
    }
}

pub(super) fn drain_eventfd(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads into a live 8-byte buffer; called only after poll said readable.
    unsafe {
        libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8);
    }
}

impl JudgingBackend {
    /// Whether ring and descriptor addresses are IOVAs (ACCESS_PLATFORM negotiated).
    pub(super) fn iommu(&self) -> bool {
        self.acked_features & VirtioFeatures::ACCESS_PLATFORM.bits() != 0
    }

    /// The guest address the data path reaches `addr` by for `len` bytes with `perm` (1 read,
    /// 2 write): itself without an IOMMU, else through the IOTLB, where a miss is remembered
    /// for [`process`](Self::process) to ask the front-end about (R-IOTLB-03/04).
    pub(super) fn xlate(&self, addr: u64, len: u64, perm: u8) -> Option<u64> {
        if !self.iommu() {
            return Some(addr);
        }
        let hit = self.iotlb.iter().rev().find(|e| {
            addr >= e.iova
                && addr - e.iova < e.size
                && (addr - e.iova).saturating_add(len) <= e.size
                && e.perm & perm == perm
        });
        let gpa = hit.and_then(|e| self.mem.user_to_guest(e.uaddr + (addr - e.iova)));
        if gpa.is_none() && self.miss.get().is_none() {
            self.miss.set(Some((addr, perm)));
        }
        gpa
    }

    pub(super) fn rd(&self, addr: u64, buf: &mut [u8]) -> Option<()> {
        let g = self.xlate(addr, buf.len() as u64, 1)?;
        self.mem.read(g, buf)
    }

    pub(super) fn wr(&self, addr: u64, data: &[u8]) -> Option<()> {
        let g = self.xlate(addr, data.len() as u64, 2)?;
        self.mem.write(g, data)
    }

    pub(super) fn rd16(&self, addr: u64) -> Option<u16> {
        let g = self.xlate(addr, 2, 1)?;
        self.mem.read_u16(g)
    }

    pub(super) fn wr16(&self, addr: u64, v: u16) -> Option<()> {
        let g = self.xlate(addr, 2, 2)?;
        self.mem.write_u16(g, v)
    }

    /// A translation missed while processing: ask the front-end for the mapping with a
    /// BACKEND_IOTLB_MSG miss (type 1), once at a time and at most [`MAX_MISSES`] times.
    pub(super) fn ask_for_miss(&mut self) {
        let Some((iova, perm)) = self.miss.take() else {
            return;
        };
        let queued = self
            .probes
            .iter()
            .any(|p| matches!(p.kind, ProbeKind::Miss { .. }))
            || self
                .pending
                .as_ref()
                .is_some_and(|(p, _)| matches!(p.kind, ProbeKind::Miss { .. }));
        if queued || self.misses >= MAX_MISSES || self.backend_channel.is_none() {
            return;
        }
        self.misses += 1;
        let payload = Body::Iotlb(vhu_protocol::wire::payload::IotlbMsg {
            iova,
            size: 0,
            uaddr: 0,
            perm,
            kind: 1,
            padding: [0; 6],
        })
        .encode();
        self.probes.push(Probe {
            code: BackendReq::IotlbMsg as u32,
            payload,
            with_fd: false,
            kind: ProbeKind::Miss { iova, mark: 0 },
        });
    }

    /// Serves a started, enabled blk ring: every available chain is completed and the call
    /// fd signalled once. Other devices consume nothing (their kicks were drained).
    pub(super) fn process(&mut self, index: u32) {
        self.process_ring(index);
        self.ask_for_miss();
    }

    pub(super) fn process_ring(&mut self, index: u32) {
        if self.profile.device != DeviceType::Block {
            return;
        }
        let Some(r) = self.rings.get(&index) else {
            return;
        };
        if !(r.started && r.enabled) || r.num == 0 || r.desc == 0 && r.avail == 0 {
            return;
        }
        let (num, desc, avail, used) = (r.num, r.desc, r.avail, r.used);
        let (mut last, mut used_idx) = (r.last_avail, r.used_idx);
        let mut done = 0;
        // At most one ring's worth per turn: a front-end that moves its index on and on cannot
        // keep the back-end from its socket.
        while done < usize::from(num) {
            let Some(avail_idx) = self.rd16(avail + 2) else {
                break;
            };
            if avail_idx == last {
                break;
            }
            let Some(head) = self.rd16(avail + 4 + 2 * u64::from(last % num)) else {
                break;
            };
            let len = self.blk_request(desc, num, head);
            if self.miss.get().is_some() {
                // Not consumed: done again once the front-end sent the mapping.
                break;
            }
            let elem = used + 4 + 8 * u64::from(used_idx % num);
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            e[4..].copy_from_slice(&len.to_le_bytes());
            if self.wr(elem, &e).is_none() {
                break;
            }
            used_idx = used_idx.wrapping_add(1);
            if self.wr16(used + 2, used_idx).is_none() {
                break;
            }
            last = last.wrapping_add(1);
            done += 1;
        }
        self.served += done;
        let r = self.rings.get_mut(&index).expect("looked up above");
        (r.last_avail, r.used_idx) = (last, used_idx);
        if done > 0 {
            if let Some(c) = &r.call {
                write_eventfd(c);
            }
        }
    }

    /// Executes one virtio-blk chain; returns the bytes written into it.
    pub(super) fn blk_request(&self, table: u64, num: u16, head: u16) -> u32 {
        let mut chain: Vec<SplitDesc> = Vec::new();
        let mut at = head;
        while chain.len() < usize::from(num) && at < num {
            let mut raw = [0u8; 16];
            if self.rd(table + 16 * u64::from(at), &mut raw).is_none() {
                return 0;
            }
            let Ok(d) = SplitDesc::read_from_bytes(&raw) else {
                return 0;
            };
            chain.push(d);
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            at = d.next;
        }
        let Some(first) = chain.first() else {
            return 0;
        };
        let mut hdr = [0u8; 16];
        if first.len < 16 || self.rd(first.addr, &mut hdr).is_none() {
            return 0;
        }
        let kind = u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes"));
        let writable: Vec<&SplitDesc> = chain
            .iter()
            .filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0 && d.len > 0)
            .collect();
        let Some(last) = writable.last() else {
            return 0;
        };
        // The status byte is the last byte of the last writable buffer (virtio 1.2 5.2.6).
        let status_at = last.addr + u64::from(last.len) - 1;
        let data_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum::<u64>() - 1;
        let (status, written) = match kind {
            blk::T_IN => {
                // Zeros: a disk with nothing on it.
                let mut left = data_len;
                for d in &writable {
                    let n = u64::from(d.len).min(left);
                    let _ = self.wr(d.addr, &vec![0u8; n as usize]);
                    left -= n;
                }
                (blk::S_OK, data_len)
            }
            blk::T_GET_ID => {
                let mut id = [0u8; blk::ID_BYTES as usize];
                id[..BLK_ID.len()].copy_from_slice(BLK_ID);
                let n = data_len.min(u64::from(blk::ID_BYTES));
                if let Some(d) = writable.first() {
                    let _ = self.wr(d.addr, &id[..n.min(u64::from(d.len)) as usize]);
                }
                (blk::S_OK, n)
            }
            blk::T_OUT | blk::T_FLUSH => (blk::S_OK, 0),
            _ => (blk::S_UNSUPP, 0),
        };
        let _ = self.wr(status_at, &[status]);
        (written + 1) as u32
    }
}
