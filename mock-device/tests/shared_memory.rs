//! The device and a driver running concurrently on two mappings of one memfd, as a back-end and
//! a VMM do: the driver thread submits while the device thread polls, so the avail idx / packed
//! flags reads and the fences are exercised on memory that really changes underneath.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{BlkReq, Guest, PackedDriver, RAM_BASE, RAM_SIZE, SplitDriver, pattern};
use vhu_mock_device::vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vhu_mock_device::{BlkDevice, DataPathFaults, Queue, RingConfig, process_queue};
use vhu_protocol::virtio::blk;

/// Requests each test pushes through the ring.
const REQUESTS: usize = 300;
/// Requests the driver keeps outstanding.
const DEPTH: usize = 4;
/// Bound on every test: nothing may hang.
const DEADLINE: Duration = Duration::from_secs(20);

/// One shared mapping of the guest memfd: rust-vmm's guest memory over it, as the back-end
/// keeps its regions (volatile copies, atomic idx/flags accesses).
type SharedMem = GuestMemoryMmap;

/// Maps the guest memfd at RAM_BASE.
fn map(fd: &memfd::Memfd) -> SharedMem {
    let file = fd.as_file().try_clone().expect("dup memfd");
    let range = (
        GuestAddress(RAM_BASE),
        RAM_SIZE,
        Some(FileOffset::new(file, 0)),
    );
    GuestMemoryMmap::from_ranges_with_files([range]).expect("map guest memory")
}

fn guest_memfd() -> memfd::Memfd {
    let fd = memfd::MemfdOptions::default()
        .create("vhu-mock-device-test")
        .expect("memfd");
    fd.as_file().set_len(RAM_SIZE as u64).expect("size memfd");
    fd
}

/// Runs the device on its own mapping until `stop`, polling the ring.
fn device_thread(
    fd: &memfd::Memfd,
    cfg: mpsc::Receiver<(RingConfig, u32)>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(usize, BlkDevice)> {
    let mem = map(fd);
    thread::spawn(move || {
        let (cfg, base) = cfg.recv_timeout(DEADLINE).expect("ring config");
        let mut q = Queue::try_new(cfg, base).unwrap();
        let mut dev = BlkDevice::new(1 << 20, 1);
        let mut done = 0;
        let start = Instant::now();
        while !stop.load(Ordering::Acquire) && start.elapsed() < DEADLINE {
            let run = process_queue(&mut q, &mut dev, &mem, &DataPathFaults::default()).unwrap();
            done += run.completed;
            if run.completed == 0 {
                thread::yield_now();
            }
        }
        (done, dev)
    })
}

/// The operations of request `i`: writes of sector i, then reads checking them.
fn request(g: &mut Guest<SharedMem>, i: usize) -> (BlkReq, Option<Vec<u8>>) {
    let sector = (i % (REQUESTS / 2)) as u64;
    let data = pattern(sector as u8, 512);
    if i < REQUESTS / 2 {
        (BlkReq::write(g, sector, &[data]), None)
    } else {
        (BlkReq::read(g, sector, &[512]), Some(data))
    }
}

/// Checks a completed request.
fn check(g: &Guest<SharedMem>, req: &BlkReq, expect: &Option<Vec<u8>>) {
    assert_eq!(req.status(g), blk::S_OK);
    if let Some(data) = expect {
        assert_eq!(&req.data(g), data);
    }
}

#[test]
fn split_ring_serves_a_concurrent_driver_on_shared_memory() {
    let fd = guest_memfd();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let device = device_thread(&fd, rx, stop.clone());
    let mut g = Guest::with_memory(map(&fd));
    let mut drv = SplitDriver::new(&mut g, 16, 65500);
    drv.cfg.event_idx = true;
    tx.send((drv.cfg, 65500)).unwrap();
    let mut pending = std::collections::VecDeque::new();
    let start = Instant::now();
    let mut completed = 0;
    for i in 0..REQUESTS {
        while pending.len() == DEPTH {
            for u in drv.used(&g) {
                let (head, req, expect): (u16, BlkReq, Option<Vec<u8>>) =
                    pending.pop_front().unwrap();
                assert_eq!(u.id, u32::from(head), "in-order completion");
                assert_eq!(u.len, if expect.is_some() { 513 } else { 1 });
                check(&g, &req, &expect);
                completed += 1;
            }
            assert!(start.elapsed() < DEADLINE, "device stalled");
        }
        let (req, expect) = request(&mut g, i);
        let head = drv.add(&g, &req.bufs);
        pending.push_back((head, req, expect));
    }
    while completed < REQUESTS {
        for u in drv.used(&g) {
            let (head, req, expect) = pending.pop_front().unwrap();
            assert_eq!(u.id, u32::from(head));
            check(&g, &req, &expect);
            completed += 1;
        }
        assert!(start.elapsed() < DEADLINE, "device stalled");
    }
    stop.store(true, Ordering::Release);
    let (done, _) = device.join().unwrap();
    assert_eq!(done, REQUESTS);
    g.assert_clean();
}

#[test]
fn packed_ring_serves_a_concurrent_driver_on_shared_memory() {
    let fd = guest_memfd();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let device = device_thread(&fd, rx, stop.clone());
    let mut g = Guest::with_memory(map(&fd));
    let mut drv = PackedDriver::new(&mut g, 13);
    tx.send((drv.cfg, 1 << 15 | 1 << 31)).unwrap();
    let mut pending = std::collections::HashMap::new();
    let start = Instant::now();
    let mut completed = 0;
    let mut reap =
        |g: &Guest<SharedMem>,
         drv: &mut PackedDriver,
         pending: &mut std::collections::HashMap<u16, (BlkReq, Option<Vec<u8>>)>| {
            for (id, _) in drv.used(g) {
                let (req, expect) = pending.remove(&id).expect("known id");
                check(g, &req, &expect);
                completed += 1;
            }
            assert!(start.elapsed() < DEADLINE, "device stalled");
        };
    for i in 0..REQUESTS {
        while pending.len() == DEPTH {
            reap(&g, &mut drv, &mut pending);
        }
        let (req, expect) = request(&mut g, i);
        let id = drv.add(&g, &req.bufs);
        pending.insert(id, (req, expect));
    }
    while !pending.is_empty() {
        reap(&g, &mut drv, &mut pending);
    }
    stop.store(true, Ordering::Release);
    let (done, dev) = device.join().unwrap();
    assert_eq!(done, REQUESTS);
    assert_eq!(completed, REQUESTS);
    assert_eq!(&dev.disk()[..512], &pattern(0, 512)[..]);
    g.assert_clean();
}
