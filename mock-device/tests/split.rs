//! Split rings driven by a hand-written driver: virtio-blk requests over direct, chained and
//! indirect descriptors, index wrap-around and notification suppression (virtio 2.7).

mod common;

use common::{BlkReq, Guest, SplitDriver, pattern};
use vhu_mock_device::{BlkDevice, DEVICE_ID, DataPathFaults, Queue, process_queue};
use vhu_protocol::virtio::blk;

const DISK: u64 = 1 << 20;

fn setup(size: u16, base: u16) -> (Guest, SplitDriver, Queue, BlkDevice) {
    let mut g = Guest::new();
    let drv = SplitDriver::new(&mut g, size, base);
    let q = Queue::try_new(drv.cfg, u32::from(base)).unwrap();
    (g, drv, q, BlkDevice::new(DISK, 1))
}

fn run(g: &Guest, q: &mut Queue, dev: &mut BlkDevice) -> usize {
    process_queue(q, dev, &g.mem, &DataPathFaults::default())
        .unwrap()
        .completed
}

#[test]
fn write_then_read_of_the_same_sectors_returns_the_data() {
    let (mut g, mut drv, mut q, mut dev) = setup(16, 0);
    let data = pattern(3, 1024);
    let w = BlkReq::write(&mut g, 5, std::slice::from_ref(&data));
    drv.add(&g, &w.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 1);
    assert_eq!(w.status(&g), blk::S_OK);
    assert_eq!(&dev.disk()[5 * 512..7 * 512], &data[..]);
    let r = BlkReq::read(&mut g, 5, &[1024]);
    let head = drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 1);
    assert_eq!(r.status(&g), blk::S_OK);
    assert_eq!(r.data(&g), data);
    let used = drv.used(&g);
    assert_eq!(used.len(), 2);
    assert_eq!(used[0].len, 1, "a write only writes the status byte");
    assert_eq!((used[1].id, used[1].len), (u32::from(head), 1025));
    g.assert_clean();
}

#[test]
fn long_chains_scatter_and_gather_across_many_descriptors() {
    let (mut g, mut drv, mut q, mut dev) = setup(64, 0);
    let parts: Vec<Vec<u8>> = (0..8).map(|i| pattern(i, 512)).collect();
    let w = BlkReq::write(&mut g, 0, &parts);
    drv.add(&g, &w.bufs);
    let r = BlkReq::read(&mut g, 0, &[128; 32]);
    assert_eq!(r.bufs.len(), 34, "header, 32 data buffers, status");
    drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 2);
    assert_eq!(r.data(&g), parts.concat());
    assert_eq!(drv.used(&g)[1].len, 4097);
    g.assert_clean();
}

#[test]
fn indirect_tables_carry_whole_requests() {
    let (mut g, mut drv, mut q, mut dev) = setup(8, 0);
    let data = vec![pattern(9, 512), pattern(10, 1536)];
    let w = BlkReq::write(&mut g, 100, &data);
    drv.add_indirect(&mut g, &w.bufs);
    let r = BlkReq::read(&mut g, 100, &[2048]);
    let head = drv.add_indirect(&mut g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 2);
    assert_eq!(r.data(&g), data.concat());
    let used = drv.used(&g);
    assert_eq!((used[1].id, used[1].len), (u32::from(head), 2049));
    g.assert_clean();
}

#[test]
fn flush_succeeds_and_get_id_returns_twenty_bytes() {
    let (mut g, mut drv, mut q, mut dev) = setup(8, 0);
    let f = BlkReq::new(&mut g, blk::T_FLUSH, 0, &[], true);
    drv.add(&g, &f.bufs);
    let id = BlkReq::new(&mut g, blk::T_GET_ID, 0, &[vec![0; 20]], true);
    drv.add(&g, &id.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 2);
    assert_eq!(f.status(&g), blk::S_OK);
    assert_eq!(id.status(&g), blk::S_OK);
    assert_eq!(id.data(&g), DEVICE_ID);
    let used = drv.used(&g);
    assert_eq!((used[0].len, used[1].len), (1, 21));
    g.assert_clean();
}

#[test]
fn indices_wrap_past_65535_and_the_ring_more_than_once() {
    let (mut g, mut drv, mut q, mut dev) = setup(4, 65530);
    for i in 0..13u8 {
        let w = BlkReq::write(&mut g, u64::from(i), &[pattern(i, 512)]);
        drv.add(&g, &w.bufs);
        assert_eq!(run(&g, &mut q, &mut dev), 1);
        assert_eq!(w.status(&g), blk::S_OK);
        assert_eq!(drv.used(&g).len(), 1);
    }
    assert_eq!(q.base(), u32::from(65530u16.wrapping_add(13)));
    assert_eq!(g.u16_at(drv.cfg.device + 2), 65530u16.wrapping_add(13));
    let r = BlkReq::read(&mut g, 0, &[13 * 512]);
    drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 1);
    let expect: Vec<u8> = (0..13).flat_map(|i| pattern(i, 512)).collect();
    assert_eq!(r.data(&g), expect);
}

#[test]
fn a_batch_of_more_requests_than_the_ring_size_completes_in_rounds() {
    let (mut g, mut drv, mut q, mut dev) = setup(8, 0);
    let mut total = 0;
    for round in 0..5u8 {
        for i in 0..8u8 {
            let r = BlkReq::read(&mut g, u64::from(round * 8 + i), &[512]);
            drv.add(&g, &r.bufs);
        }
        total += run(&g, &mut q, &mut dev);
        assert_eq!(drv.used(&g).len(), 8);
    }
    assert_eq!(total, 40);
    assert_eq!(q.base(), 40);
}

#[test]
fn event_idx_suppresses_calls_until_used_event_is_reached() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    drv.cfg.event_idx = true;
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    let mut dev = BlkDevice::new(DISK, 1);
    let faults = DataPathFaults::default();
    let mut submit = |g: &mut Guest, drv: &mut SplitDriver, q: &mut Queue| {
        let r = BlkReq::read(g, 0, &[512]);
        drv.add(g, &r.bufs);
        process_queue(q, &mut dev, &g.mem, &faults).unwrap()
    };
    // The first decision after the queue is built always notifies.
    assert!(submit(&mut g, &mut drv, &mut q).notify);
    assert_eq!(
        drv.avail_event(&g),
        1,
        "device asks for a kick at the next entry"
    );
    // used_event = 3: the driver wants a call once used entry 3 is written (used idx 4).
    drv.set_used_event(&g, 3);
    assert!(!submit(&mut g, &mut drv, &mut q).notify);
    assert!(!submit(&mut g, &mut drv, &mut q).notify);
    assert!(submit(&mut g, &mut drv, &mut q).notify);
    assert!(!submit(&mut g, &mut drv, &mut q).notify);
    assert_eq!(drv.avail_event(&g), 5);
    // Nothing new since the last decision: no call.
    assert!(!q.should_notify(&g.mem).unwrap());
}

#[test]
fn no_interrupt_flag_suppresses_calls_without_event_idx() {
    let (mut g, mut drv, mut q, mut dev) = setup(8, 0);
    let faults = DataPathFaults::default();
    drv.set_no_interrupt(&g, true);
    let r = BlkReq::read(&mut g, 0, &[512]);
    drv.add(&g, &r.bufs);
    assert!(
        !process_queue(&mut q, &mut dev, &g.mem, &faults)
            .unwrap()
            .notify
    );
    drv.set_no_interrupt(&g, false);
    let r = BlkReq::read(&mut g, 0, &[512]);
    drv.add(&g, &r.bufs);
    let run = process_queue(&mut q, &mut dev, &g.mem, &faults).unwrap();
    assert_eq!((run.completed, run.notify), (1, true));
}

#[test]
fn notifications_toggle_the_used_no_notify_flag() {
    let (g, drv, mut q, _) = setup(8, 0);
    q.disable_notifications(&g.mem).unwrap();
    assert_eq!(g.u16_at(drv.cfg.device), 1);
    q.enable_notifications(&g.mem).unwrap();
    assert_eq!(g.u16_at(drv.cfg.device), 0);
}

#[test]
fn base_reports_the_next_avail_index_without_consuming() {
    let (mut g, mut drv, mut q, _) = setup(8, 300);
    let r = BlkReq::read(&mut g, 0, &[512]);
    drv.add(&g, &r.bufs);
    assert!(q.has_available(&g.mem).unwrap());
    assert_eq!(q.base(), 300);
    let chain = q.pop(&g.mem).unwrap().unwrap();
    assert_eq!(chain.segments.len(), 3);
    assert_eq!(q.base(), 301);
    assert!(q.pop(&g.mem).unwrap().is_none());
}

#[test]
fn chain_at_rebuilds_an_inflight_request_without_consuming_avail() {
    let (mut g, mut drv, mut q, mut dev) = setup(8, 0);
    let r = BlkReq::read(&mut g, 0, &[512]);
    let head = drv.add(&g, &r.bufs);
    let popped = q.pop(&g.mem).unwrap().unwrap();
    let again = q.chain_at(&g.mem, head).unwrap();
    assert_eq!(again, popped);
    assert!(q.chain_at(&g.mem, 8).is_err());
    assert!(
        q.error().is_none(),
        "a bad head given by the caller does not stop the queue"
    );
    let done = dev.process(&g.mem, &again, &DataPathFaults::default());
    q.push_used(&g.mem, &again, done.used_len).unwrap();
    assert_eq!(q.used_idx(), 1);
    assert_eq!(drv.used(&g).len(), 1);
}

#[test]
fn sync_used_idx_adopts_the_used_ring_after_reconnect() {
    let (mut g, mut drv, _, mut dev) = setup(8, 0);
    g.write(drv.cfg.device + 2, &3u16.to_le_bytes());
    drv.last_used = std::num::Wrapping(3);
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    assert_eq!(q.sync_used_idx(&g.mem).unwrap(), 3);
    let r = BlkReq::read(&mut g, 0, &[512]);
    drv.add(&g, &r.bufs);
    assert_eq!(run(&g, &mut q, &mut dev), 1);
    assert_eq!(g.u16_at(drv.cfg.device + 2), 4);
    assert_eq!(drv.used(&g).len(), 1);
}

#[test]
fn an_empty_run_asks_for_no_call() {
    let (g, _, mut q, mut dev) = setup(8, 0);
    let run = process_queue(&mut q, &mut dev, &g.mem, &DataPathFaults::default()).unwrap();
    assert_eq!((run.completed, run.notify), (0, false));
}

/// R-VRING-06 probe: avail idx 3, used idx 1, SET_VRING_BASE(1).
#[test]
fn base_sets_the_avail_position_and_the_used_index_comes_from_the_ring() {
    let (mut g, mut drv, _, mut dev) = setup(8, 0);
    let reqs: Vec<BlkReq> = (0..3).map(|i| BlkReq::read(&mut g, i, &[512])).collect();
    let heads: Vec<u16> = reqs.iter().map(|r| drv.add(&g, &r.bufs)).collect();
    g.write(drv.cfg.device + 2, &1u16.to_le_bytes());
    drv.last_used = std::num::Wrapping(1);
    let mut q = Queue::try_new(drv.cfg, 1).unwrap();
    assert_eq!(run(&g, &mut q, &mut dev), 2);
    let used = drv.used(&g);
    let ids: Vec<u32> = used.iter().map(|u| u.id).collect();
    assert_eq!(ids, vec![u32::from(heads[1]), u32::from(heads[2])]);
    assert_eq!(g.u16_at(drv.cfg.device + 2), 3);
    assert_eq!(reqs[0].status(&g), 0xFF, "entry 0 is not processed");
    assert_eq!((q.base(), q.used_idx()), (3, 3));
}
