//! Packed rings driven by a hand-written driver: virtio-blk requests over direct, chained and
//! indirect descriptors, wrap counters and event suppression (virtio 2.8).

mod common;

use common::{BlkReq, Guest, PackedDriver, pattern};
use vhu_mock_device::{BlkDevice, DataPathFaults, Queue, process_queue};
use vhu_protocol::virtio::blk;

const DISK: u64 = 1 << 20;
/// Event suppression flags (virtio 2.8.10).
const ENABLE: u16 = 0;
const DISABLE: u16 = 1;
const DESC: u16 = 2;

fn setup(size: u16) -> (Guest, PackedDriver, Queue, BlkDevice) {
    let mut g = Guest::new();
    let drv = PackedDriver::new(&mut g, size);
    // Fresh packed ring: both wrap counters 1.
    let q = Queue::try_new(drv.cfg, 1 << 15 | 1 << 31).unwrap();
    (g, drv, q, BlkDevice::new(DISK, 1))
}

fn run(g: &Guest, q: &mut Queue, dev: &mut BlkDevice) -> usize {
    process_queue(q, dev, &g.mem, &DataPathFaults::default())
        .unwrap()
        .completed
}

#[test]
fn write_then_read_of_the_same_sectors_returns_the_data() {
    let (mut g, mut drv, mut q, mut dev) = setup(16);
    let data = pattern(7, 1536);
    let w = BlkReq::write(&mut g, 9, std::slice::from_ref(&data));
    let wid = drv.add(&g, &w.bufs);
    let r = BlkReq::read(&mut g, 9, &[512, 1024]);
    let rid = drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 2);
    assert_eq!(w.status(&g), blk::S_OK);
    assert_eq!(r.status(&g), blk::S_OK);
    assert_eq!(r.data(&g), data);
    assert_eq!(drv.used(&g), vec![(wid, 1), (rid, 1537)]);
    g.assert_clean();
}

#[test]
fn indirect_tables_carry_whole_requests() {
    let (mut g, mut drv, mut q, mut dev) = setup(4);
    let parts: Vec<Vec<u8>> = (0..6).map(|i| pattern(i, 512)).collect();
    let w = BlkReq::write(&mut g, 0, &parts);
    let wid = drv.add_indirect(&mut g, &w.bufs);
    let r = BlkReq::read(&mut g, 0, &[1024, 2048]);
    let rid = drv.add_indirect(&mut g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 2);
    assert_eq!(r.data(&g), parts.concat());
    assert_eq!(drv.used(&g), vec![(wid, 1), (rid, 3073)]);
    g.assert_clean();
}

#[test]
fn wrap_counters_flip_when_chains_pass_the_ring_end() {
    let (mut g, mut drv, mut q, mut dev) = setup(5);
    let mut laps = 0;
    for i in 0..12u8 {
        let before = drv.wrap();
        // Three descriptors per chain, so chains straddle the end of a 5-slot ring.
        let w = BlkReq::write(&mut g, u64::from(i), &[pattern(i, 512)]);
        let id = drv.add(&g, &w.bufs);
        laps += usize::from(before != drv.wrap());
        assert_eq!(run(&g, &mut q, &mut dev), 1);
        assert_eq!(drv.used(&g), vec![(id, 1)]);
        assert_eq!(w.status(&g), blk::S_OK);
    }
    assert!(laps >= 6, "the driver wrapped {laps} times");
    // 36 slots used: position 1, wrap counter flipped 7 times (0).
    assert_eq!(q.base(), 1 | 1 << 16);
    assert_eq!(q.base() >> 16, u32::from(drv.used_word()));
    let r = BlkReq::read(&mut g, 0, &[12 * 512]);
    drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 1);
    let expect: Vec<u8> = (0..12).flat_map(|i| pattern(i, 512)).collect();
    assert_eq!(r.data(&g), expect);
    g.assert_clean();
}

#[test]
fn a_queue_rebuilt_from_its_base_continues_where_it_stopped() {
    let (mut g, mut drv, mut q, mut dev) = setup(4);
    for i in 0..3u8 {
        let w = BlkReq::write(&mut g, u64::from(i), &[pattern(i, 512)]);
        let id = drv.add(&g, &w.bufs);
        run(&g, &mut q, &mut dev);
        assert_eq!(drv.used(&g), vec![(id, 1)]);
    }
    let mut q = Queue::try_new(drv.cfg, q.base()).unwrap();
    let r = BlkReq::read(&mut g, 0, &[1536]);
    let id = drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 1);
    assert_eq!(drv.used(&g), vec![(id, 1537)]);
    assert_eq!(
        r.data(&g),
        (0..3).flat_map(|i| pattern(i, 512)).collect::<Vec<_>>()
    );
}

#[test]
fn driver_event_flags_disable_and_enable_calls() {
    let (mut g, mut drv, mut q, mut dev) = setup(8);
    let faults = DataPathFaults::default();
    drv.set_driver_event(&g, 0, DISABLE);
    let r = BlkReq::read(&mut g, 0, &[512]);
    drv.add(&g, &r.bufs);
    assert!(
        !process_queue(&mut q, &mut dev, &g.mem, &faults)
            .unwrap()
            .notify
    );
    drv.set_driver_event(&g, 0, ENABLE);
    let r = BlkReq::read(&mut g, 0, &[512]);
    drv.add(&g, &r.bufs);
    assert!(
        process_queue(&mut q, &mut dev, &g.mem, &faults)
            .unwrap()
            .notify
    );
}

#[test]
fn event_idx_descriptor_event_fires_only_when_that_slot_is_used() {
    let mut g = Guest::new();
    let mut drv = PackedDriver::new(&mut g, 4);
    drv.cfg.event_idx = true;
    let mut q = Queue::try_new(drv.cfg, 1 << 15 | 1 << 31).unwrap();
    let mut dev = BlkDevice::new(DISK, 1);
    let faults = DataPathFaults::default();
    let mut submit = |g: &mut Guest, drv: &mut PackedDriver, q: &mut Queue| {
        let r = BlkReq::new(g, blk::T_FLUSH, 0, &[], true);
        drv.add(g, &r.bufs);
        process_queue(q, &mut dev, &g.mem, &faults).unwrap().notify
    };
    assert!(
        submit(&mut g, &mut drv, &mut q),
        "first decision always notifies"
    );
    // Each flush takes 2 slots. Ask for a call when slot 2 of the second lap (wrap 0) is used.
    drv.set_driver_event(&g, 2, DESC);
    assert!(!submit(&mut g, &mut drv, &mut q)); // slots 2-3, lap 1
    assert!(!submit(&mut g, &mut drv, &mut q)); // slots 0-1, lap 2
    assert!(submit(&mut g, &mut drv, &mut q)); // slots 2-3, lap 2
    assert!(!submit(&mut g, &mut drv, &mut q));
    // The device asked for a kick at its next avail position, with its wrap counter.
    let (off_wrap, flags) = drv.device_event(&g);
    assert_eq!(flags, DESC);
    assert_eq!(u32::from(off_wrap), q.base() & 0xffff);
    drv.used(&g);
}

#[test]
fn packed_base_beyond_the_queue_size_is_refused() {
    let mut g = Guest::new();
    let drv = PackedDriver::new(&mut g, 8);
    assert!(Queue::try_new(drv.cfg, 8).is_err());
    assert!(Queue::try_new(drv.cfg, 8 << 16).is_err());
    let q = Queue::new(drv.cfg, 8);
    assert!(q.error().is_some());
    assert_eq!(q.base(), 8);
}
