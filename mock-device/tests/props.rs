//! Property tests: arbitrary descriptor tables, indirect tables and avail rings never panic,
//! and the device never writes a byte of guest memory outside the device-writable buffers of
//! the chains it accepted and its own ring areas.

mod common;

use common::{Guest, HOLE, PackedDriver, RAM_BASE, SplitDriver};
use proptest::prelude::*;
use vhu_mock_device::{BlkDevice, DataPathFaults, Queue, RingConfig, Segment};
use vhu_protocol::virtio::{
    BlkReqHeader, PackedDesc, SplitDesc, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE, blk,
};
use zerocopy::IntoBytes;

const SIZE: u16 = 8;
const TABLE_ENTRIES: u64 = 6;

/// A descriptor described by choices rather than raw values, so most point somewhere useful.
#[derive(Clone, Debug)]
struct RawDesc {
    addr_sel: u8,
    off: u16,
    len_sel: u8,
    raw_len: u32,
    flags: u16,
    next: u16,
}

fn raw_desc() -> impl Strategy<Value = RawDesc> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<u8>(),
        any::<u32>(),
        prop_oneof![4 => 0u16..8, 1 => any::<u16>()],
        prop_oneof![4 => 0u16..10, 1 => any::<u16>()],
    )
        .prop_map(|(addr_sel, off, len_sel, raw_len, flags, next)| RawDesc {
            addr_sel,
            off,
            len_sel,
            raw_len,
            flags,
            next,
        })
}

/// Flags of a template descriptor.
const R: u16 = 0;
const W: u16 = VIRTQ_DESC_F_WRITE;
const N: u16 = VIRTQ_DESC_F_NEXT;
const I: u16 = VIRTQ_DESC_F_INDIRECT;

/// The guest buffers descriptors may point at.
struct Layout {
    /// header, data (readable), big (writable), status.
    buffers: Vec<(u64, u32)>,
    table: u64,
}

impl Layout {
    fn new(g: &mut Guest, kind: u32, sector: u64) -> Self {
        let hdr = BlkReqHeader {
            kind,
            reserved: 0,
            sector,
        };
        let header = g.readable(hdr.as_bytes());
        let data = g.readable(&[0x11; 512]);
        let big = g.alloc(1024);
        let status = g.alloc(1);
        let table = g.alloc(16 * TABLE_ENTRIES);
        Self {
            buffers: vec![(header, 16), (data, 512), (big, 1024), (status, 1)],
            table,
        }
    }

    /// A valid descriptor: buffer `b` (4 = the indirect table), flags, next.
    fn template(&self, b: usize, flags: u16, next: u16) -> (u64, u32, u16, u16) {
        let (gpa, len) = match b {
            4 => (self.table, 16 * 3),
            b => self.buffers[b],
        };
        (gpa, len, flags, next)
    }

    /// Ring templates: requests at heads 0, 3, 5 (indirect) and 6.
    fn ring_template(&self, i: usize) -> (u64, u32, u16, u16) {
        const T: [(usize, u16, u16); 8] = [
            (0, R | N, 1),
            (1, R | N, 2),
            (3, W, 0),
            (0, R | N, 4),
            (2, W | N, 7),
            (4, I, 0),
            (0, R | N, 7),
            (3, W, 0),
        ];
        let (b, f, n) = T[i];
        self.template(b, f, n)
    }

    /// Packed ring templates: chains at slots 0-2, 3 (indirect), 4-6, and 7 wrapping to 0.
    fn packed_template(&self, i: usize) -> (u64, u32, u16, u16) {
        const T: [(usize, u16); 8] = [
            (0, R | N),
            (1, R | N),
            (3, W),
            (4, I),
            (0, R | N),
            (2, W | N),
            (3, W),
            (0, R | N),
        ];
        let (b, f) = T[i];
        self.template(b, f, i as u16)
    }

    /// Indirect table template: header, big, status (split `next` chaining).
    fn table_template(&self, i: usize) -> (u64, u32, u16, u16) {
        const T: [(usize, u16, u16); TABLE_ENTRIES as usize] = [
            (0, R | N, 1),
            (2, W | N, 2),
            (3, W, 0),
            (1, R, 0),
            (0, R, 0),
            (3, W, 0),
        ];
        let (b, f, n) = T[i];
        self.template(b, f, n)
    }

    fn addr(&self, d: &RawDesc) -> u64 {
        let off = if d.off % 4 == 0 {
            0
        } else {
            u64::from(d.off % 24)
        };
        match d.addr_sel % 8 {
            i @ 0..4 => self.buffers[i as usize].0 + off,
            4 => HOLE,
            5 => u64::MAX - u64::from(d.off),
            6 => self.table,
            _ => u64::from(d.raw_len) << 8,
        }
    }

    fn len(&self, d: &RawDesc) -> u32 {
        match d.len_sel % 7 {
            0 => 0,
            1 => 16,
            2 => 512,
            3 => 16 * (d.raw_len % 8),
            4 => d.raw_len % 2048,
            5 => self.buffers[usize::from(d.addr_sel % 4)].1,
            _ => d.raw_len,
        }
    }

    /// A template descriptor or, when `random` is given, a random one.
    fn pick(&self, tpl: (u64, u32, u16, u16), random: &Option<RawDesc>) -> (u64, u32, u16, u16) {
        match random {
            None => tpl,
            Some(d) => (self.addr(d), self.len(d), d.flags, d.next),
        }
    }

    fn split(&self, (addr, len, flags, next): (u64, u32, u16, u16)) -> SplitDesc {
        SplitDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    fn packed(&self, (addr, len, flags, id): (u64, u32, u16, u16)) -> PackedDesc {
        PackedDesc {
            addr,
            len,
            id,
            flags,
        }
    }
}

fn kinds() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(blk::T_IN),
        Just(blk::T_OUT),
        Just(blk::T_FLUSH),
        Just(blk::T_GET_ID),
        any::<u32>()
    ]
}

/// Only faults that stay inside writable buffers (wrong_used_len); the others break the
/// property on purpose.
fn faults() -> impl Strategy<Value = DataPathFaults> {
    any::<bool>().prop_map(|wrong_used_len| DataPathFaults {
        wrong_used_len,
        ..Default::default()
    })
}

/// Pops, processes and pushes until the ring is empty or stopped; returns accepted chains.
fn drive(g: &Guest, cfg: RingConfig, base: u32, faults: &DataPathFaults) -> Vec<Segment> {
    let mut q = Queue::new(cfg, base);
    let mut dev = BlkDevice::new(64 * 1024, 1);
    let mut writable = Vec::new();
    for _ in 0..4 * usize::from(SIZE) {
        let Ok(Some(chain)) = q.pop(&g.mem) else {
            break;
        };
        let done = dev.process(&g.mem, &chain, faults);
        assert!(
            u64::from(done.used_len) <= chain.writable_len() + u64::from(faults.wrong_used_len)
        );
        writable.extend(chain.segments.iter().filter(|s| s.writable).copied());
        if q.push_used(&g.mem, &chain, done.used_len).is_err() {
            break;
        }
    }
    let _ = q.should_notify(&g.mem);
    let _ = q.enable_notifications(&g.mem);
    let _ = q.base();
    writable
}

/// Every changed byte lies in an allowed range.
fn assert_only_allowed_writes(before: &[u8], after: &[u8], allowed: &[(u64, u64)]) {
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a == b {
            continue;
        }
        let gpa = RAM_BASE + i as u64;
        assert!(
            allowed.iter().any(|&(s, len)| gpa >= s && gpa - s < len),
            "device wrote {gpa:#x} outside writable buffers"
        );
    }
}

fn snapshot(g: &Guest) -> Vec<u8> {
    g.read(RAM_BASE, 64 * 1024)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_split_rings_never_panic_or_write_stray_bytes(
        descs in prop::collection::vec(prop::option::weighted(0.2, raw_desc()), SIZE as usize),
        table in prop::collection::vec(prop::option::weighted(0.2, raw_desc()), TABLE_ENTRIES as usize),
        heads in prop::collection::vec(
            prop_oneof![8 => prop::sample::select(vec![0u16, 3, 5, 6]), 1 => 0u16..8, 1 => any::<u16>()],
            SIZE as usize,
        ),
        avail_idx in prop_oneof![4 => 0u16..10, 1 => any::<u16>()],
        kind in kinds(),
        sector in 0u64..200,
        f in faults(),
        indirect in any::<bool>(),
    ) {
        let mut g = Guest::new();
        let l = Layout::new(&mut g, kind, sector);
        let mut drv = SplitDriver::new(&mut g, SIZE, 0);
        drv.cfg.indirect = indirect;
        for (i, d) in descs.iter().enumerate() {
            drv.write_desc(&g, i as u16, l.split(l.pick(l.ring_template(i), d)));
        }
        for (i, d) in table.iter().enumerate() {
            let e = l.split(l.pick(l.table_template(i), d));
            g.write(l.table + 16 * i as u64, e.as_bytes());
        }
        for h in heads {
            drv.publish(&g, h);
        }
        g.write(drv.cfg.driver + 2, &avail_idx.to_le_bytes());
        let before = snapshot(&g);
        let writable = drive(&g, drv.cfg, 0, &f);
        let mut allowed: Vec<(u64, u64)> =
            writable.iter().map(|s| (s.gpa, u64::from(s.len))).collect();
        allowed.push((drv.cfg.device, 6 + 8 * u64::from(SIZE)));
        assert_only_allowed_writes(&before, &snapshot(&g), &allowed);
    }

    #[test]
    fn arbitrary_packed_rings_never_panic_or_write_stray_bytes(
        descs in prop::collection::vec(
            (prop::option::weighted(0.2, raw_desc()), prop::bool::weighted(0.9), prop::bool::weighted(0.1)),
            SIZE as usize,
        ),
        table in prop::collection::vec(prop::option::weighted(0.2, raw_desc()), TABLE_ENTRIES as usize),
        base in prop_oneof![3 => Just(1u32 << 15 | 1 << 31), 1 => any::<u32>()],
        kind in kinds(),
        sector in 0u64..200,
        f in faults(),
        indirect in any::<bool>(),
    ) {
        let mut g = Guest::new();
        let l = Layout::new(&mut g, kind, sector);
        let mut drv = PackedDriver::new(&mut g, SIZE);
        drv.cfg.indirect = indirect;
        for (i, (d, avail, used)) in descs.iter().enumerate() {
            let mut p = l.packed(l.pick(l.packed_template(i), d));
            p.flags = (p.flags & !(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED))
                | if *avail { VIRTQ_DESC_F_AVAIL } else { 0 }
                | if *used { VIRTQ_DESC_F_USED } else { 0 };
            g.write(drv.cfg.desc + 16 * i as u64, p.as_bytes());
        }
        for (i, d) in table.iter().enumerate() {
            let e = l.packed(l.pick(l.table_template(i), d));
            g.write(l.table + 16 * i as u64, e.as_bytes());
        }
        let before = snapshot(&g);
        let writable = drive(&g, drv.cfg, base, &f);
        let mut allowed: Vec<(u64, u64)> =
            writable.iter().map(|s| (s.gpa, u64::from(s.len))).collect();
        allowed.push((drv.cfg.desc, 16 * u64::from(SIZE)));
        allowed.push((drv.cfg.device, 4));
        assert_only_allowed_writes(&before, &snapshot(&g), &allowed);
    }
}
