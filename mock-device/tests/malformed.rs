//! Malformed rings and chains (checklist R-ROB-08): every one gives a `RingError`, stops the
//! queue, publishes nothing and writes nothing outside device-writable buffers.

mod common;

use common::{BlkReq, Buf, Guest, HOLE, PackedDriver, SplitDriver, ro, split_table, wo};
use vhu_mock_device::{
    BlkDevice, DataPathFaults, GuestMemory, MemError, Queue, RingError, process_queue,
};
use vhu_protocol::virtio::{
    PackedDesc, SplitDesc, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use zerocopy::IntoBytes;

const NEXT: u16 = VIRTQ_DESC_F_NEXT;
const WRITE: u16 = VIRTQ_DESC_F_WRITE;
const INDIRECT: u16 = VIRTQ_DESC_F_INDIRECT;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> SplitDesc {
    SplitDesc {
        addr,
        len,
        flags,
        next,
    }
}

/// Writes `descs` at indices 0.., publishes head 0, runs the queue and checks the aftermath.
fn split_case(descs: &[SplitDesc]) -> RingError {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    split_case_with(&mut g, &mut drv, descs)
}

fn split_case_with(g: &mut Guest, drv: &mut SplitDriver, descs: &[SplitDesc]) -> RingError {
    for (i, d) in descs.iter().enumerate() {
        drv.write_desc(g, i as u16, *d);
    }
    drv.publish(g, 0);
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    expect_stopped(g, &mut q, |g| drv.used(g).len())
}

/// Runs the queue, expects an error, a stopped queue, nothing used and clean canaries.
fn expect_stopped(g: &mut Guest, q: &mut Queue, used: impl FnOnce(&Guest) -> usize) -> RingError {
    let mut dev = BlkDevice::new(1 << 20, 1);
    let disk = dev.disk().to_vec();
    let err = process_queue(q, &mut dev, &g.mem, &DataPathFaults::default()).unwrap_err();
    assert!(matches!(q.pop(&g.mem), Err(RingError::Broken(_))));
    assert_eq!(q.error(), Some(&err));
    assert_eq!(q.base() & 0x7fff, 0, "the faulty chain is not consumed");
    assert_eq!(used(g), 0, "nothing published");
    assert_eq!(dev.disk(), &disk[..]);
    g.assert_clean();
    err
}

/// A header and a status buffer with canaries, for chains that would otherwise be valid.
fn bufs(g: &mut Guest) -> (u64, u64) {
    let r = BlkReq::read(g, 0, &[]);
    (r.header, r.status)
}

#[test]
fn loop_in_next_is_refused() {
    let mut g = Guest::new();
    let (h, s) = bufs(&mut g);
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    let e = split_case_with(
        &mut g,
        &mut drv,
        &[desc(h, 16, NEXT, 1), desc(s, 1, WRITE | NEXT, 1)],
    );
    assert_eq!(e, RingError::ChainTooLong { limit: 8 });
}

#[test]
fn next_beyond_the_queue_size_is_refused() {
    let e = split_case(&[desc(0x10_0000, 16, NEXT, 8)]);
    assert_eq!(e, RingError::DescIndexOutOfRange { index: 8, size: 8 });
}

#[test]
fn head_beyond_the_queue_size_is_refused() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    drv.publish(&g, 200);
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    let e = expect_stopped(&mut g, &mut q, |g| drv.used(g).len());
    assert_eq!(
        e,
        RingError::DescIndexOutOfRange {
            index: 200,
            size: 8
        }
    );
}

#[test]
fn avail_index_further_ahead_than_the_ring_is_refused() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    g.write(drv.cfg.driver + 2, &9u16.to_le_bytes());
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    let e = expect_stopped(&mut g, &mut q, |g| drv.used(g).len());
    assert!(matches!(e, RingError::AvailIndexJump { avail_idx: 9, .. }));
}

#[test]
fn address_range_that_overflows_is_refused() {
    let e = split_case(&[desc(u64::MAX - 10, 100, 0, 0)]);
    assert!(matches!(
        e,
        RingError::BadBuffer {
            source: MemError::Overflow { .. },
            ..
        }
    ));
}

#[test]
fn unmapped_buffer_is_refused() {
    let mut g = Guest::new();
    let (h, _) = bufs(&mut g);
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    let e = split_case_with(
        &mut g,
        &mut drv,
        &[desc(h, 16, NEXT, 1), desc(HOLE, 512, WRITE, 0)],
    );
    assert!(matches!(
        e,
        RingError::BadBuffer {
            gpa: HOLE,
            source: MemError::Unmapped { .. },
            ..
        }
    ));
}

#[test]
fn buffer_crossing_the_end_of_memory_is_refused() {
    let end = common::RAM_BASE + common::RAM_SIZE as u64;
    let e = split_case(&[desc(end - 8, 16, WRITE, 0)]);
    assert!(matches!(e, RingError::BadBuffer { .. }));
}

#[test]
fn readable_buffer_after_a_writable_one_is_refused() {
    let mut g = Guest::new();
    let (h, s) = bufs(&mut g);
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    let e = split_case_with(
        &mut g,
        &mut drv,
        &[desc(s, 1, WRITE | NEXT, 1), desc(h, 16, 0, 0)],
    );
    assert_eq!(e, RingError::ReadableAfterWritable);
}

/// Puts `table` in guest memory behind one INDIRECT descriptor of length `len`.
fn indirect_case(table: &[u8], len: u32, flags: u16) -> RingError {
    let mut g = Guest::new();
    let gpa = g.alloc(table.len().max(1) as u64);
    g.write(gpa, table);
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    split_case_with(
        &mut g,
        &mut drv,
        &[desc(gpa, len, INDIRECT | flags, 1), desc(gpa, 16, 0, 0)],
    )
}

#[test]
fn nested_indirect_is_refused() {
    let mut g = Guest::new();
    let (h, _) = bufs(&mut g);
    let inner = split_table(&[ro(h, 16)]);
    let mut t = desc(h, 16, NEXT, 1).as_bytes().to_vec();
    t.extend_from_slice(desc(h, inner.len() as u32, INDIRECT, 0).as_bytes());
    assert_eq!(indirect_case(&t, 32, 0), RingError::NestedIndirect);
}

#[test]
fn zero_length_and_ragged_indirect_tables_are_refused() {
    let t = split_table(&[ro(0x10_0000, 16)]);
    assert_eq!(
        indirect_case(&t, 0, 0),
        RingError::IndirectTableLen { len: 0 }
    );
    assert_eq!(
        indirect_case(&t, 17, 0),
        RingError::IndirectTableLen { len: 17 }
    );
}

#[test]
fn next_out_of_an_indirect_table_is_refused() {
    let mut g = Guest::new();
    let (h, _) = bufs(&mut g);
    let mut t = desc(h, 16, NEXT, 1).as_bytes().to_vec();
    t.extend_from_slice(desc(h, 16, NEXT, 2).as_bytes());
    let e = indirect_case(&t, 32, 0);
    assert_eq!(
        e,
        RingError::IndirectNextOutOfTable {
            next: 2,
            entries: 2
        }
    );
}

#[test]
fn loop_inside_an_indirect_table_is_refused() {
    let mut g = Guest::new();
    let (h, _) = bufs(&mut g);
    let mut t = desc(h, 16, NEXT, 1).as_bytes().to_vec();
    t.extend_from_slice(desc(h, 16, NEXT, 0).as_bytes());
    assert_eq!(
        indirect_case(&t, 32, 0),
        RingError::ChainTooLong { limit: 2 }
    );
}

#[test]
fn indirect_with_next_is_refused() {
    let t = split_table(&[ro(0x10_0000, 16)]);
    assert_eq!(indirect_case(&t, 16, NEXT), RingError::IndirectChained);
}

#[test]
fn unmapped_indirect_table_is_refused() {
    let e = split_case(&[desc(HOLE, 32, INDIRECT, 0)]);
    assert!(matches!(e, RingError::BadBuffer { gpa: HOLE, .. }));
}

#[test]
fn indirect_without_the_feature_is_refused() {
    let mut g = Guest::new();
    let (h, s) = bufs(&mut g);
    let t = split_table(&[ro(h, 16), wo(s, 1)]);
    let gpa = g.alloc(t.len() as u64);
    g.write(gpa, &t);
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    drv.cfg.indirect = false;
    let e = split_case_with(&mut g, &mut drv, &[desc(gpa, 32, INDIRECT, 0)]);
    assert_eq!(e, RingError::IndirectNotNegotiated);
}

/// Memory where every address is mapped (reads give zeros, writes vanish).
struct Everything;

impl GuestMemory for Everything {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        vhu_mock_device::memory::end_of(gpa, buf.len() as u64)?;
        buf.fill(0);
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        vhu_mock_device::memory::end_of(gpa, data.len() as u64).map(|_| ())
    }
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        vhu_mock_device::memory::end_of(gpa, len).map(|_| ())
    }
}

#[test]
fn chain_longer_than_4_gib_is_refused() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    drv.write_desc(&g, 0, desc(0, u32::MAX, NEXT, 1));
    drv.write_desc(&g, 1, desc(1 << 33, 2, 0, 0));
    drv.publish(&g, 0);
    // Copy the ring into memory that maps everything, so only the length can fail.
    struct Overlay<'a>(&'a Guest);
    impl GuestMemory for Overlay<'_> {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            self.0
                .mem
                .read(gpa, buf)
                .or_else(|_| Everything.read(gpa, buf))
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
            self.0
                .mem
                .write(gpa, data)
                .or_else(|_| Everything.write(gpa, data))
        }
        fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemError> {
            Everything.check_range(gpa, len)
        }
    }
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    assert_eq!(q.pop(&Overlay(&g)), Err(RingError::ChainTooLarge));
}

#[test]
fn unmapped_ring_areas_are_errors_not_panics() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    drv.cfg.driver = HOLE;
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    let e = expect_stopped(&mut g, &mut q, |_| 0);
    assert!(matches!(
        e,
        RingError::Memory {
            area: "avail ring",
            ..
        }
    ));
}

#[test]
fn invalid_split_sizes_are_refused() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    for size in [0, 6, 65535] {
        drv.cfg.size = size;
        assert!(matches!(
            Queue::try_new(drv.cfg, 0),
            Err(RingError::InvalidConfig(_))
        ));
        let mut q = Queue::new(drv.cfg, 0);
        assert!(q.pop(&g.mem).is_err());
        assert!(q.push_used(&g.mem, &Default::default(), 0).is_err());
    }
    drv.cfg.size = 8;
    assert!(Queue::try_new(drv.cfg, 1 << 16).is_err());
}

fn packed_case(build: impl FnOnce(&mut Guest, &mut PackedDriver)) -> RingError {
    let mut g = Guest::new();
    let mut drv = PackedDriver::new(&mut g, 4);
    build(&mut g, &mut drv);
    let mut q = Queue::try_new(drv.cfg, 1 << 15 | 1 << 31).unwrap();
    let desc_before = g.read(drv.cfg.desc, 64);
    let e = expect_stopped(&mut g, &mut q, |_| 0);
    assert_eq!(g.read(drv.cfg.desc, 64), desc_before, "no used descriptor");
    e
}

fn pdesc(addr: u64, len: u32, flags: u16) -> PackedDesc {
    PackedDesc {
        addr,
        len,
        id: 0,
        flags,
    }
}

#[test]
fn packed_chain_without_end_is_refused() {
    let e = packed_case(|g, drv| {
        let (h, _) = bufs(g);
        drv.add_descs(g, &[pdesc(h, 16, NEXT); 4]);
    });
    assert_eq!(e, RingError::ChainTooLong { limit: 4 });
}

#[test]
fn packed_nested_indirect_is_refused() {
    let e = packed_case(|g, drv| {
        let (h, _) = bufs(g);
        let mut t = pdesc(h, 16, 0).as_bytes().to_vec();
        t.extend_from_slice(pdesc(h, 16, INDIRECT).as_bytes());
        let gpa = g.alloc(32);
        g.write(gpa, &t);
        drv.add_descs(g, &[pdesc(gpa, 32, INDIRECT)]);
    });
    assert_eq!(e, RingError::NestedIndirect);
}

#[test]
fn packed_zero_length_indirect_is_refused() {
    let e = packed_case(|g, drv| {
        let gpa = g.alloc(16);
        drv.add_descs(g, &[pdesc(gpa, 0, INDIRECT)]);
    });
    assert_eq!(e, RingError::IndirectTableLen { len: 0 });
}

#[test]
fn packed_unmapped_buffer_is_refused() {
    let e = packed_case(|g, drv| {
        drv.add(
            g,
            &[Buf {
                gpa: HOLE,
                len: 16,
                writable: false,
            }],
        );
    });
    assert!(matches!(e, RingError::BadBuffer { gpa: HOLE, .. }));
}

#[test]
fn packed_indirect_in_the_middle_of_a_chain_is_refused() {
    let e = packed_case(|g, drv| {
        let (h, s) = bufs(g);
        let t = pdesc(s, 1, WRITE);
        let gpa = g.alloc(16);
        g.write(gpa, t.as_bytes());
        drv.add_descs(g, &[pdesc(h, 16, NEXT), pdesc(gpa, 16, INDIRECT)]);
    });
    assert_eq!(e, RingError::IndirectChained);
}
