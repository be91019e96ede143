//! A tiny test driver written by hand from virtio 1.2 sections 2.7 and 2.8: guest memory with
//! canary bytes around every buffer, split and packed rings filled descriptor by descriptor, and
//! virtio-blk request builders.

// Each test file uses a different part of the driver.
#![allow(dead_code)]

use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};

use vhu_mock_device::vm_memory::GuestMemoryMmap;
use vhu_mock_device::{GuestMemory, RingConfig, anonymous};
use vhu_protocol::virtio::{
    BlkReqHeader, PackedDesc, SplitDesc, UsedElem, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE,
};
use zerocopy::{FromBytes, IntoBytes};

/// Start of guest RAM in tests.
pub const RAM_BASE: u64 = 0x10_0000;
/// Size of guest RAM in tests.
pub const RAM_SIZE: usize = 4 << 20;
/// An address no region covers.
pub const HOLE: u64 = 0x4000_0000;
/// Canary bytes placed before and after every buffer.
const GUARD: u64 = 64;
const CANARY: u8 = 0xA5;

/// A buffer of a chain as the driver describes it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub gpa: u64,
    pub len: u32,
    pub writable: bool,
}

pub fn ro(gpa: u64, len: u32) -> Buf {
    Buf {
        gpa,
        len,
        writable: false,
    }
}

pub fn wo(gpa: u64, len: u32) -> Buf {
    Buf {
        gpa,
        len,
        writable: true,
    }
}

/// Guest memory plus a bump allocator that surrounds buffers with canaries and remembers the
/// contents of driver-readable buffers.
pub struct Guest<M: GuestMemory = GuestMemoryMmap> {
    pub mem: M,
    next: u64,
    guards: Vec<u64>,
    readonly: Vec<(u64, Vec<u8>)>,
}

impl Guest {
    pub fn new() -> Self {
        Self::with_memory(anonymous(RAM_BASE, RAM_SIZE))
    }
}

impl<M: GuestMemory> Guest<M> {
    /// A guest over `mem`, which must map `RAM_SIZE` bytes at `RAM_BASE`.
    pub fn with_memory(mem: M) -> Self {
        Self {
            mem,
            next: RAM_BASE,
            guards: Vec::new(),
            readonly: Vec::new(),
        }
    }

    fn guard(&mut self) {
        self.mem
            .write(self.next, &[CANARY; GUARD as usize])
            .unwrap();
        self.guards.push(self.next);
        self.next += GUARD;
    }

    /// A zeroed buffer of `len` bytes aligned to 16, with canaries on both sides.
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.guard();
        let gpa = self.next;
        self.next = (gpa + len + 15) & !15;
        self.guard();
        assert!(
            self.next < RAM_BASE + RAM_SIZE as u64,
            "test guest memory full"
        );
        gpa
    }

    /// A driver-readable buffer holding `data`; its contents are checked by `assert_clean`.
    pub fn readable(&mut self, data: &[u8]) -> u64 {
        let gpa = self.alloc(data.len() as u64);
        self.mem.write(gpa, data).unwrap();
        self.readonly.push((gpa, data.to_vec()));
        gpa
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem.read(gpa, &mut b).unwrap();
        b
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem.write(gpa, data).unwrap();
    }

    pub fn u16_at(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.read(gpa, 2).try_into().unwrap())
    }

    /// Canaries whose bytes changed (address of each damaged guard).
    pub fn damaged_guards(&self) -> Vec<u64> {
        self.guards
            .iter()
            .copied()
            .filter(|&g| self.read(g, GUARD as usize).iter().any(|&b| b != CANARY))
            .collect()
    }

    /// Driver-readable buffers whose contents changed.
    pub fn changed_readonly(&self) -> Vec<u64> {
        self.readonly
            .iter()
            .filter(|(gpa, data)| self.read(*gpa, data.len()) != *data)
            .map(|(gpa, _)| *gpa)
            .collect()
    }

    /// Nothing written outside device-writable buffers.
    pub fn assert_clean(&self) {
        assert_eq!(self.damaged_guards(), Vec::<u64>::new(), "canary damaged");
        assert_eq!(
            self.changed_readonly(),
            Vec::<u64>::new(),
            "readable buffer changed"
        );
    }
}

pub fn ring_config(size: u16, desc: u64, driver: u64, device: u64, packed: bool) -> RingConfig {
    RingConfig {
        size,
        desc,
        driver,
        device,
        packed,
        event_idx: false,
        indirect: true,
    }
}

/// The driver side of a split ring.
pub struct SplitDriver {
    pub cfg: RingConfig,
    free: u16,
    pub avail_idx: Wrapping<u16>,
    pub last_used: Wrapping<u16>,
}

impl SplitDriver {
    /// A ring of `size` whose avail and used idx start at `base`.
    pub fn new(g: &mut Guest<impl GuestMemory>, size: u16, base: u16) -> Self {
        let n = u64::from(size);
        let desc = g.alloc(16 * n);
        let driver = g.alloc(6 + 2 * n);
        let device = g.alloc(6 + 8 * n);
        g.write(driver + 2, &base.to_le_bytes());
        g.write(device + 2, &base.to_le_bytes());
        Self {
            cfg: ring_config(size, desc, driver, device, false),
            free: 0,
            avail_idx: Wrapping(base),
            last_used: Wrapping(base),
        }
    }

    pub fn write_desc(&self, g: &Guest<impl GuestMemory>, index: u16, d: SplitDesc) {
        g.write(self.cfg.desc + 16 * u64::from(index), d.as_bytes());
    }

    /// Puts `head` in the avail ring and publishes it.
    pub fn publish(&mut self, g: &Guest<impl GuestMemory>, head: u16) {
        let slot = u64::from(self.avail_idx.0 % self.cfg.size);
        g.write(self.cfg.driver + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx += 1;
        fence(Ordering::Release);
        g.write(self.cfg.driver + 2, &self.avail_idx.0.to_le_bytes());
    }

    fn take(&mut self) -> u16 {
        let i = self.free;
        self.free = (self.free + 1) % self.cfg.size;
        i
    }

    /// Writes `bufs` as a chain of direct descriptors and publishes it; returns the head.
    pub fn add(&mut self, g: &Guest<impl GuestMemory>, bufs: &[Buf]) -> u16 {
        let idx: Vec<u16> = bufs.iter().map(|_| self.take()).collect();
        for (i, b) in bufs.iter().enumerate() {
            let more = i + 1 < bufs.len();
            let d = SplitDesc {
                addr: b.gpa,
                len: b.len,
                flags: flag(b.writable, VIRTQ_DESC_F_WRITE) | flag(more, VIRTQ_DESC_F_NEXT),
                next: if more { idx[i + 1] } else { 0 },
            };
            self.write_desc(g, idx[i], d);
        }
        self.publish(g, idx[0]);
        idx[0]
    }

    /// Writes `bufs` as an indirect table behind one descriptor and publishes it.
    pub fn add_indirect(&mut self, g: &mut Guest<impl GuestMemory>, bufs: &[Buf]) -> u16 {
        let table = split_table(bufs);
        let gpa = g.alloc(table.len() as u64);
        g.write(gpa, &table);
        let head = self.take();
        let d = SplitDesc {
            addr: gpa,
            len: table.len() as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        self.write_desc(g, head, d);
        self.publish(g, head);
        head
    }

    /// Used elements published since the last call.
    pub fn used(&mut self, g: &Guest<impl GuestMemory>) -> Vec<UsedElem> {
        let idx = Wrapping(g.u16_at(self.cfg.device + 2));
        fence(Ordering::Acquire);
        let mut out = Vec::new();
        while self.last_used != idx {
            let slot = u64::from(self.last_used.0 % self.cfg.size);
            let raw = g.read(self.cfg.device + 4 + 8 * slot, 8);
            out.push(UsedElem::read_from_bytes(&raw).unwrap());
            self.last_used += 1;
        }
        out
    }

    pub fn set_used_event(&self, g: &Guest<impl GuestMemory>, v: u16) {
        let at = self.cfg.driver + 4 + 2 * u64::from(self.cfg.size);
        g.write(at, &v.to_le_bytes());
    }

    pub fn set_no_interrupt(&self, g: &Guest<impl GuestMemory>, on: bool) {
        g.write(
            self.cfg.driver,
            &flag(on, VIRTQ_AVAIL_F_NO_INTERRUPT).to_le_bytes(),
        );
    }

    pub fn avail_event(&self, g: &Guest<impl GuestMemory>) -> u16 {
        g.u16_at(self.cfg.device + 4 + 8 * u64::from(self.cfg.size))
    }
}

/// A split indirect table for `bufs`, chained by `next`.
pub fn split_table(bufs: &[Buf]) -> Vec<u8> {
    let mut t = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        let more = i + 1 < bufs.len();
        let d = SplitDesc {
            addr: b.gpa,
            len: b.len,
            flags: flag(b.writable, VIRTQ_DESC_F_WRITE) | flag(more, VIRTQ_DESC_F_NEXT),
            next: if more { i as u16 + 1 } else { 0 },
        };
        t.extend_from_slice(d.as_bytes());
    }
    t
}

pub fn flag(on: bool, f: u16) -> u16 {
    if on { f } else { 0 }
}

/// The driver side of a packed ring.
pub struct PackedDriver {
    pub cfg: RingConfig,
    next: u16,
    wrap: bool,
    used_next: u16,
    used_wrap: bool,
    next_id: u16,
    /// Ring slots taken by each outstanding buffer id.
    slots: std::collections::HashMap<u16, u16>,
}

impl PackedDriver {
    pub fn new(g: &mut Guest<impl GuestMemory>, size: u16) -> Self {
        let desc = g.alloc(16 * u64::from(size));
        let driver = g.alloc(4);
        let device = g.alloc(4);
        Self {
            cfg: ring_config(size, desc, driver, device, true),
            next: 0,
            wrap: true,
            used_next: 0,
            used_wrap: true,
            next_id: 0,
            slots: Default::default(),
        }
    }

    fn avail_flags(&self, wrap: bool) -> u16 {
        flag(wrap, VIRTQ_DESC_F_AVAIL) | flag(!wrap, VIRTQ_DESC_F_USED)
    }

    pub fn wrap(&self) -> bool {
        self.wrap
    }

    /// Writes raw descriptors in consecutive slots, the head's flags last; returns the id.
    pub fn add_descs(&mut self, g: &Guest<impl GuestMemory>, descs: &[PackedDesc]) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let (head, head_wrap) = (self.next, self.wrap);
        let mut head_flags = 0;
        for (i, d) in descs.iter().enumerate() {
            let mut d = *d;
            d.id = id;
            d.flags |= self.avail_flags(self.wrap);
            let at = self.cfg.desc + 16 * u64::from(self.next);
            if i == 0 {
                head_flags = d.flags;
                d.flags = self.avail_flags(!head_wrap);
            }
            g.write(at, d.as_bytes());
            self.next += 1;
            if self.next == self.cfg.size {
                self.next = 0;
                self.wrap = !self.wrap;
            }
        }
        g.write(
            self.cfg.desc + 16 * u64::from(head) + 14,
            &head_flags.to_le_bytes(),
        );
        self.slots.insert(id, descs.len() as u16);
        id
    }

    /// Writes `bufs` as a chain; returns the buffer id.
    pub fn add(&mut self, g: &Guest<impl GuestMemory>, bufs: &[Buf]) -> u16 {
        let descs: Vec<PackedDesc> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| PackedDesc {
                addr: b.gpa,
                len: b.len,
                id: 0,
                flags: flag(b.writable, VIRTQ_DESC_F_WRITE)
                    | flag(i + 1 < bufs.len(), VIRTQ_DESC_F_NEXT),
            })
            .collect();
        self.add_descs(g, &descs)
    }

    /// Writes `bufs` as an indirect table behind one descriptor; returns the buffer id.
    pub fn add_indirect(&mut self, g: &mut Guest<impl GuestMemory>, bufs: &[Buf]) -> u16 {
        let mut table = Vec::new();
        for b in bufs {
            let d = PackedDesc {
                addr: b.gpa,
                len: b.len,
                id: 0,
                flags: flag(b.writable, VIRTQ_DESC_F_WRITE),
            };
            table.extend_from_slice(d.as_bytes());
        }
        let gpa = g.alloc(table.len() as u64);
        g.write(gpa, &table);
        let d = PackedDesc {
            addr: gpa,
            len: table.len() as u32,
            id: 0,
            flags: VIRTQ_DESC_F_INDIRECT,
        };
        self.add_descs(g, &[d])
    }

    /// Used descriptors (id, len) written since the last call.
    pub fn used(&mut self, g: &Guest<impl GuestMemory>) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        loop {
            let at = self.cfg.desc + 16 * u64::from(self.used_next);
            let flags = g.u16_at(at + 14);
            let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
            let used = flags & VIRTQ_DESC_F_USED != 0;
            if avail != self.used_wrap || used != self.used_wrap {
                return out;
            }
            fence(Ordering::Acquire);
            let d = PackedDesc::read_from_bytes(&g.read(at, 16)).unwrap();
            out.push((d.id, d.len));
            let n = self.slots.remove(&d.id).expect("used id was outstanding");
            let next = u32::from(self.used_next) + u32::from(n);
            if next >= u32::from(self.cfg.size) {
                self.used_wrap = !self.used_wrap;
            }
            self.used_next = (next % u32::from(self.cfg.size)) as u16;
        }
    }

    /// Writes the driver event suppression structure.
    pub fn set_driver_event(&self, g: &Guest<impl GuestMemory>, off_wrap: u16, flags: u16) {
        let mut b = off_wrap.to_le_bytes().to_vec();
        b.extend_from_slice(&flags.to_le_bytes());
        g.write(self.cfg.driver, &b);
    }

    /// The device event suppression structure (off_wrap, flags).
    pub fn device_event(&self, g: &Guest<impl GuestMemory>) -> (u16, u16) {
        (g.u16_at(self.cfg.device), g.u16_at(self.cfg.device + 2))
    }

    /// The position (bits 0-14) and wrap counter (bit 15) of the next used descriptor.
    pub fn used_word(&self) -> u16 {
        self.used_next | flag(self.used_wrap, 1 << 15)
    }
}

/// A virtio-blk request laid out in guest memory.
pub struct BlkReq {
    pub header: u64,
    pub data: Vec<u64>,
    pub status: u64,
    pub bufs: Vec<Buf>,
}

impl BlkReq {
    /// Header (readable), data buffers of `data_lens` (writable when `data_writable`), status.
    pub fn new(
        g: &mut Guest<impl GuestMemory>,
        kind: u32,
        sector: u64,
        data: &[Vec<u8>],
        data_writable: bool,
    ) -> Self {
        let hdr = BlkReqHeader {
            kind,
            reserved: 0,
            sector,
        };
        let header = g.readable(hdr.as_bytes());
        let mut bufs = vec![ro(header, 16)];
        let mut addrs = Vec::new();
        for d in data {
            let gpa = if data_writable {
                g.alloc(d.len() as u64)
            } else {
                g.readable(d)
            };
            addrs.push(gpa);
            bufs.push(Buf {
                gpa,
                len: d.len() as u32,
                writable: data_writable,
            });
        }
        let status = g.alloc(1);
        g.write(status, &[0xFF]);
        bufs.push(wo(status, 1));
        Self {
            header,
            data: addrs,
            status,
            bufs,
        }
    }

    pub fn write(g: &mut Guest<impl GuestMemory>, sector: u64, data: &[Vec<u8>]) -> Self {
        Self::new(g, vhu_protocol::virtio::blk::T_OUT, sector, data, false)
    }

    pub fn read(g: &mut Guest<impl GuestMemory>, sector: u64, lens: &[usize]) -> Self {
        let data: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0; n]).collect();
        Self::new(g, vhu_protocol::virtio::blk::T_IN, sector, &data, true)
    }

    pub fn status(&self, g: &Guest<impl GuestMemory>) -> u8 {
        g.read(self.status, 1)[0]
    }

    /// The data buffers' contents, concatenated.
    pub fn data(&self, g: &Guest<impl GuestMemory>) -> Vec<u8> {
        let mut out = Vec::new();
        for (gpa, b) in self.data.iter().zip(&self.bufs[1..]) {
            out.extend(g.read(*gpa, b.len as usize));
        }
        out
    }
}

/// `n` bytes of a pattern seeded by `seed`.
pub fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8 ^ (i >> 8) as u8))
        .collect()
}
