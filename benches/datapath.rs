//! The data path (issue 7): virtio-blk reads of 4 KiB per second through the mock front-end's
//! driver queue (`vhu_mock_frontend::DriverQueue`) and the mock back-end, on a split and on a
//! packed ring, one request per kick and 32 per kick. `harness_blk_read` is the path the
//! scenarios take (`blk::blk_read`: fresh buffers with canaries, every check), one per kick.
//!
//! Requests are prepared once (header, data buffer, status byte per slot); each iteration makes
//! the chains available, publishes, kicks once and waits for every completion (the call eventfd
//! and the used ring).

// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vhu_mock_frontend::blk;
use vhu_mock_frontend::memory::GuestMemory;
use vhu_mock_frontend::{Buffer, DriverQueue, RingLayout, Session};
use vhu_protocol::VirtioFeatures;
use vhu_protocol::virtio::BlkReqHeader;
use zerocopy::IntoBytes;

/// Ring size.
const QUEUE_SIZE: u16 = 256;
/// Bytes per read.
const READ_BYTES: u32 = 4096;
/// Requests per kick in the batched benches.
const BATCH: usize = 32;
/// Wait bound for a completion.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A session with memory and queue 0 running.
struct Rig {
    session: Session,
    mem: GuestMemory,
    queue: DriverQueue,
    /// Prepared chains: header, data, status.
    chains: Vec<[Buffer; 3]>,
    backend: common::MockBackend,
}

impl Rig {
    fn new(layout: RingLayout) -> Self {
        let packed = match layout {
            RingLayout::Split => 0,
            RingLayout::Packed => VirtioFeatures::RING_PACKED.bits(),
        };
        let extra = VirtioFeatures::EVENT_IDX.bits() | packed;
        let (mut session, backend) = common::mock_session(extra);
        let features = session.acked_features().unwrap_or_default();
        assert!(
            packed == 0 || features & packed != 0,
            "the mock back-end did not offer RING_PACKED"
        );
        let event_idx = features & VirtioFeatures::EVENT_IDX.bits() != 0;
        let mut mem =
            GuestMemory::new(&GuestMemory::default_layout(16 << 20)).expect("guest memory");
        session.set_mem_table(&mem).expect("SET_MEM_TABLE");
        let mut queue =
            DriverQueue::new(&mut mem, 0, QUEUE_SIZE, layout, event_idx).expect("queue");
        let base = queue.initial_base();
        queue.setup(&mut session, &mem, base).expect("vring setup");
        session.set_vring_enable(0, true).expect("SET_VRING_ENABLE");
        let chains = (0..BATCH as u64)
            .map(|i| prepare(&mut mem, i * u64::from(READ_BYTES / 512)))
            .collect();
        let mut rig = Self {
            session,
            mem,
            queue,
            chains,
            backend,
        };
        // The kick injected by setup found an empty ring; drain its call, if any.
        rig.round(1);
        rig
    }

    /// Makes `n` prepared chains available, kicks once, waits for all of them.
    fn round(&mut self, n: usize) {
        for c in &self.chains[..n] {
            self.queue.add_chain(&self.mem, c).expect("add chain");
        }
        self.queue.publish(&self.mem).expect("publish");
        self.queue.kick();
        let used = self.queue.wait_used(&self.mem, n, TIMEOUT).expect("used");
        black_box(used);
    }

    fn finish(self) {
        drop(self.session);
        self.backend.join();
    }
}

/// A read of `READ_BYTES` at `sector`: header, device-writable data, status byte.
fn prepare(mem: &mut GuestMemory, sector: u64) -> [Buffer; 3] {
    let hdr = mem.alloc(16, 16).expect("alloc");
    let header = BlkReqHeader {
        kind: vhu_protocol::virtio::blk::T_IN,
        reserved: 0,
        sector,
    };
    mem.write(hdr, header.as_bytes()).expect("write");
    let data = mem.alloc(READ_BYTES.into(), 512).expect("alloc");
    let status = mem.alloc(1, 1).expect("alloc");
    [
        Buffer {
            gpa: hdr,
            len: 16,
            writable: false,
        },
        Buffer {
            gpa: data,
            len: READ_BYTES,
            writable: true,
        },
        Buffer {
            gpa: status,
            len: 1,
            writable: true,
        },
    ]
}

fn datapath(c: &mut Criterion) {
    common::pin_to_one_cpu();
    let mut g = c.benchmark_group("blk_read_4k");
    for (name, layout) in [("split", RingLayout::Split), ("packed", RingLayout::Packed)] {
        let mut rig = Rig::new(layout);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}_1_per_kick"), |b| b.iter(|| rig.round(1)));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{name}_{BATCH}_per_kick"), |b| {
            b.iter(|| rig.round(BATCH));
        });
        if layout == RingLayout::Split {
            g.throughput(Throughput::Elements(1));
            g.bench_function("split_harness_blk_read", |b| {
                b.iter(|| {
                    let r = blk::blk_read(&mut rig.queue, &mut rig.mem, 0, READ_BYTES, TIMEOUT);
                    black_box(r.expect("blk_read"));
                });
            });
        }
        rig.finish();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = datapath
}
criterion_main!(benches);
