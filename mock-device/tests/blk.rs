//! virtio-blk request handling (virtio 1.2 section 5.2): malformed requests get a status, never
//! a panic or a stray write; each data-path fault has the effect it names; features, config
//! space and save/load.

mod common;

use common::{BlkReq, Buf, Guest, SplitDriver, pattern, ro, wo};
use vhu_mock_device::{
    BlkDevice, CONFIG_SIZE, Chain, Completion, ConfigError, DataPathFaults, OVERRUN_BYTES,
    OVERRUN_FILL, Queue, Segment, StateError, VendorRequests, process_queue,
};
use vhu_protocol::virtio::{BlkReqHeader, blk};
use vhu_protocol::wire::VirtioFeatures;
use zerocopy::IntoBytes;

const DISK: u64 = 64 * 1024;
const SECTORS: u64 = DISK / 512;

fn chain(bufs: &[Buf]) -> Chain {
    Chain {
        segments: bufs
            .iter()
            .map(|b| Segment {
                gpa: b.gpa,
                len: b.len,
                writable: b.writable,
            })
            .collect(),
        descriptors: bufs.len() as u16,
        ..Default::default()
    }
}

fn process(g: &Guest, dev: &mut BlkDevice, bufs: &[Buf], faults: DataPathFaults) -> Completion {
    dev.process(&g.mem, &chain(bufs), &faults)
}

fn ok(g: &Guest, dev: &mut BlkDevice, bufs: &[Buf]) -> Completion {
    process(g, dev, bufs, DataPathFaults::default())
}

fn ioerr(used_len: u32) -> Completion {
    Completion {
        used_len,
        status: blk::S_IOERR,
    }
}

#[test]
fn header_shorter_than_sixteen_bytes_gets_ioerr() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let r = BlkReq::read(&mut g, 0, &[512]);
    let mut bufs = r.bufs.clone();
    bufs[0].len = 8;
    assert_eq!(ok(&g, &mut dev, &bufs), ioerr(1));
    assert_eq!(r.status(&g), blk::S_IOERR);
    assert_eq!(r.data(&g), vec![0; 512], "no data written");
    g.assert_clean();
}

#[test]
fn header_split_across_buffers_is_gathered() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    dev.disk_mut()[512..1024].copy_from_slice(&pattern(1, 512));
    let hdr = BlkReqHeader {
        kind: blk::T_IN,
        reserved: 0,
        sector: 1,
    };
    let a = g.readable(&hdr.as_bytes()[..5]);
    let b = g.readable(&hdr.as_bytes()[5..]);
    let data = g.alloc(512);
    let status = g.alloc(1);
    let c = ok(
        &g,
        &mut dev,
        &[ro(a, 5), ro(b, 11), wo(data, 512), wo(status, 1)],
    );
    assert_eq!(c.used_len, 513);
    assert_eq!(g.read(data, 512), pattern(1, 512));
    g.assert_clean();
}

#[test]
fn request_without_a_writable_status_byte_writes_nothing() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let w = BlkReq::write(&mut g, 0, &[pattern(2, 512)]);
    let readable_only = &w.bufs[..2];
    assert_eq!(ok(&g, &mut dev, readable_only), ioerr(0));
    let mut zero_status = w.bufs.clone();
    zero_status[2].len = 0;
    assert_eq!(ok(&g, &mut dev, &zero_status), ioerr(0));
    assert_eq!(w.status(&g), 0xFF, "status untouched");
    assert_eq!(dev.disk(), vec![0; DISK as usize]);
    g.assert_clean();
}

#[test]
fn access_beyond_capacity_gets_ioerr() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    for sector in [SECTORS, SECTORS - 1, u64::MAX / 512, u64::MAX] {
        let r = BlkReq::read(&mut g, sector, &[1024]);
        assert_eq!(ok(&g, &mut dev, &r.bufs), ioerr(1), "read at {sector}");
        assert_eq!(r.data(&g), vec![0; 1024]);
        let w = BlkReq::write(&mut g, sector, &[pattern(3, 1024)]);
        assert_eq!(ok(&g, &mut dev, &w.bufs), ioerr(1), "write at {sector}");
    }
    let last = BlkReq::read(&mut g, SECTORS - 1, &[512]);
    assert_eq!(ok(&g, &mut dev, &last.bufs).status, blk::S_OK);
    assert_eq!(dev.disk(), vec![0; DISK as usize]);
    g.assert_clean();
}

#[test]
fn read_into_a_driver_readable_buffer_gets_ioerr() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    dev.disk_mut().fill(0x77);
    let r = BlkReq::new(&mut g, blk::T_IN, 0, &[vec![1; 512]], false);
    assert_eq!(ok(&g, &mut dev, &r.bufs), ioerr(1));
    assert_eq!(r.status(&g), blk::S_IOERR);
    g.assert_clean();
}

#[test]
fn partial_sectors_get_ioerr_and_leave_the_disk_alone() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let w = BlkReq::write(&mut g, 0, &[pattern(4, 500)]);
    assert_eq!(ok(&g, &mut dev, &w.bufs), ioerr(1));
    let r = BlkReq::read(&mut g, 0, &[100]);
    assert_eq!(ok(&g, &mut dev, &r.bufs), ioerr(1));
    assert_eq!(dev.disk(), vec![0; DISK as usize]);
    g.assert_clean();
}

#[test]
fn write_with_device_writable_data_gets_ioerr() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let w = BlkReq::new(&mut g, blk::T_OUT, 0, &[vec![0; 512]], true);
    assert_eq!(ok(&g, &mut dev, &w.bufs), ioerr(1));
    g.assert_clean();
}

#[test]
fn unknown_request_type_gets_unsupp() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    for kind in [2, 11, 13, 0x8000_0000] {
        let r = BlkReq::new(&mut g, kind, 0, &[vec![0; 512]], true);
        let c = ok(&g, &mut dev, &r.bufs);
        assert_eq!((c.used_len, c.status), (1, blk::S_UNSUPP));
        assert_eq!(r.status(&g), blk::S_UNSUPP);
        assert_eq!(r.data(&g), vec![0; 512]);
    }
    g.assert_clean();
}

#[test]
fn get_id_fills_at_most_the_buffer_given() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let r = BlkReq::new(&mut g, blk::T_GET_ID, 0, &[vec![0; 8]], true);
    assert_eq!(ok(&g, &mut dev, &r.bufs).used_len, 9);
    assert_eq!(r.data(&g), b"vhu-mock");
    let r = BlkReq::new(&mut g, blk::T_GET_ID, 0, &[vec![0; 64]], true);
    assert_eq!(ok(&g, &mut dev, &r.bufs).used_len, 21);
    g.assert_clean();
}

#[test]
fn status_shares_a_buffer_with_the_data() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    dev.disk_mut()[..512].copy_from_slice(&pattern(5, 512));
    let hdr = BlkReqHeader {
        kind: blk::T_IN,
        reserved: 0,
        sector: 0,
    };
    let h = g.readable(hdr.as_bytes());
    let buf = g.alloc(513);
    let c = ok(&g, &mut dev, &[ro(h, 16), wo(buf, 513)]);
    assert_eq!((c.used_len, c.status), (513, blk::S_OK));
    assert_eq!(g.read(buf, 512), pattern(5, 512));
    assert_eq!(g.read(buf + 512, 1), [blk::S_OK]);
    g.assert_clean();
}

#[test]
fn fault_write_past_descriptor_damages_the_canary_after_the_data() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let r = BlkReq::read(&mut g, 0, &[512, 512]);
    let faults = DataPathFaults {
        write_past_descriptor: true,
        ..Default::default()
    };
    assert_eq!(process(&g, &mut dev, &r.bufs, faults).used_len, 1025);
    let end = r.data[1] + 512;
    assert_eq!(
        g.read(end, OVERRUN_BYTES),
        vec![OVERRUN_FILL; OVERRUN_BYTES]
    );
    assert_eq!(g.damaged_guards(), vec![end]);
    assert_eq!(r.status(&g), blk::S_OK);
}

#[test]
fn fault_wrong_used_len_reports_one_byte_more() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let r = BlkReq::read(&mut g, 0, &[512]);
    let faults = DataPathFaults {
        wrong_used_len: true,
        ..Default::default()
    };
    assert_eq!(process(&g, &mut dev, &r.bufs, faults).used_len, 514);
    g.assert_clean();
}

#[test]
fn fault_ignore_writable_flag_overwrites_the_readable_header() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    dev.disk_mut().fill(0x3C);
    let r = BlkReq::read(&mut g, 0, &[512]);
    let faults = DataPathFaults {
        ignore_writable_flag: true,
        ..Default::default()
    };
    assert_eq!(process(&g, &mut dev, &r.bufs, faults).used_len, 513);
    assert_eq!(g.changed_readonly(), vec![r.header]);
    assert_eq!(g.read(r.header, 16), vec![0x3C; 16]);
    assert_eq!(g.damaged_guards(), Vec::<u64>::new());
}

#[test]
fn no_fault_means_no_stray_write() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    dev.disk_mut().fill(0x3C);
    let r = BlkReq::read(&mut g, 0, &[512, 1024]);
    assert_eq!(ok(&g, &mut dev, &r.bufs).used_len, 1537);
    g.assert_clean();
}

#[test]
fn features_cover_blk_and_ring_bits() {
    let one = BlkDevice::new(DISK, 1).device_features();
    let ring = VirtioFeatures::VERSION_1
        | VirtioFeatures::INDIRECT_DESC
        | VirtioFeatures::EVENT_IDX
        | VirtioFeatures::RING_PACKED;
    let dev = blk::F_FLUSH | blk::F_BLK_SIZE | blk::F_SEG_MAX | blk::F_CONFIG_WCE;
    assert_eq!(one, dev | ring.bits());
    assert_eq!(BlkDevice::new(DISK, 4).device_features(), one | blk::F_MQ);
}

#[test]
fn config_space_has_capacity_and_queues_and_only_wce_is_guest_writable() {
    let mut dev = BlkDevice::new(DISK, 3);
    let c = dev.config();
    assert_eq!(c.len(), CONFIG_SIZE);
    assert!(c.len() >= 60);
    assert_eq!(c[0..8], SECTORS.to_le_bytes());
    assert_eq!(c[34..36], 3u16.to_le_bytes());
    assert_eq!(dev.read_config(34, 2).unwrap(), 3u16.to_le_bytes());
    assert!(dev.read_config(50, 20).is_err());
    assert!(matches!(
        dev.write_config(0, &[0; 8], 0),
        Err(ConfigError::NotWritable { .. })
    ));
    assert_eq!(dev.config(), c);
    dev.write_config(32, &[0], 0).unwrap();
    assert!(!dev.writeback());
    dev.write_config(0, &4u64.to_le_bytes(), 1).unwrap();
    // Capacity shrunk to 4 sectors by a migration restore: sector 4 is now out of range.
    let mut g = Guest::new();
    let r = BlkReq::read(&mut g, 4, &[512]);
    assert_eq!(ok(&g, &mut dev, &r.bufs), ioerr(1));
}

#[test]
fn saved_state_restores_a_disk_written_through_the_ring() {
    let mut g = Guest::new();
    let mut drv = SplitDriver::new(&mut g, 8, 0);
    let mut q = Queue::try_new(drv.cfg, 0).unwrap();
    let mut dev = BlkDevice::new(DISK, 1);
    let w = BlkReq::write(&mut g, 3, &[pattern(6, 2048)]);
    drv.add(&g, &w.bufs);
    process_queue(&mut q, &mut dev, &g.mem, &DataPathFaults::default()).unwrap();
    let blob = dev.save(&[]);
    let mut other = BlkDevice::new(DISK, 1);
    assert!(matches!(
        other.load(&blob[..blob.len() / 2]),
        Err(StateError::WrongLength { .. })
    ));
    assert_eq!(other.disk(), vec![0; DISK as usize]);
    assert_eq!(other.load(&blob).unwrap(), Vec::<u8>::new());
    let mut q = Queue::try_new(drv.cfg, q.base()).unwrap();
    let r = BlkReq::read(&mut g, 3, &[2048]);
    drv.add(&g, &r.bufs);
    process_queue(&mut q, &mut other, &g.mem, &DataPathFaults::default()).unwrap();
    assert_eq!(r.data(&g), pattern(6, 2048));
}

/// A vendor hook that records what it was given and answers `status`.
struct Recorder {
    seen: Vec<(u32, Vec<u8>, u64)>,
    status: u8,
}

impl VendorRequests for Recorder {
    fn serves(&self, kind: u32) -> bool {
        kind == 0x8000_0001
    }

    fn serve(&mut self, kind: u32, body: &[u8], writable: u64) -> u8 {
        self.seen.push((kind, body.to_vec(), writable));
        self.status
    }
}

#[test]
fn vendor_types_reach_the_hook_with_their_body_and_others_stay_unsupported() {
    let mut g = Guest::new();
    let mut dev = BlkDevice::new(DISK, 1);
    let mut hook = Recorder {
        seen: vec![],
        status: blk::S_OK,
    };
    let faults = DataPathFaults::default();
    let r = BlkReq::new(&mut g, 0x8000_0001, 0, &[vec![1, 2], vec![3]], false);
    let done = dev.process_with(&g.mem, &chain(&r.bufs), &faults, &mut hook);
    assert_eq!((done.status, done.used_len), (blk::S_OK, 1));
    assert_eq!(hook.seen, vec![(0x8000_0001, vec![1, 2, 3], 0)]);
    hook.status = blk::S_IOERR;
    let done = dev.process_with(&g.mem, &chain(&r.bufs), &faults, &mut hook);
    assert_eq!(done, ioerr(1));
    let other = BlkReq::new(&mut g, 0x8000_0002, 0, &[], false);
    let done = dev.process_with(&g.mem, &chain(&other.bufs), &faults, &mut hook);
    assert_eq!(done.status, blk::S_UNSUPP);
    assert_eq!(hook.seen.len(), 2);
    g.assert_clean();
}
