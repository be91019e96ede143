//! Inflight I/O tracking over a real socket (R-INFL-01..05): the area handed out with
//! GET_INFLIGHT_FD is kept up to date for a split ring, and a request left in flight when a
//! front-end went away is completed exactly once on the next connection after SET_INFLIGHT_FD.

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, BodyKind, InflightDesc};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures};

fn features() -> ProtocolFeatures {
    ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
        | ProtocolFeatures::INFLIGHT_SHMFD
}

fn get_inflight_fd(c: &Connection) -> (File, InflightDesc) {
    let d = InflightDesc {
        num_queues: 1,
        queue_size: QSIZE,
        ..Default::default()
    };
    let code = FrontendReq::GetInflightFd as u32;
    c.send_request(code, &Body::Inflight(d), false, &[])
        .unwrap();
    let mut m = c.recv_reply(code).unwrap();
    let Ok(Body::Inflight(desc)) = m.body(BodyKind::Inflight) else {
        panic!("bad reply")
    };
    assert_eq!(m.fds.len(), 1);
    (File::from(m.fds.pop().unwrap()), desc)
}

fn u16_at(f: &File, at: u64) -> u16 {
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, at).unwrap();
    u16::from_ne_bytes(b)
}

/// Entry `head` of queue 0: (inflight byte, counter).
fn entry(f: &File, head: u16) -> (u8, u64) {
    let mut e = [0u8; 16];
    f.read_exact_at(&mut e, 16 + 16 * u64::from(head)).unwrap();
    (e[0], u64::from_ne_bytes(e[8..].try_into().unwrap()))
}

#[test]
fn a_request_left_in_flight_is_completed_once_after_set_inflight_fd() {
    let be = start(&[]);
    let mut g = Guest::new();
    let (area, desc, head) = {
        let c = connect(&be.sock);
        negotiate(&c, features());
        let (area, desc) = get_inflight_fd(&c);
        assert!(desc.mmap_size >= 16 + 16 * u64::from(QSIZE));
        assert_eq!(u16_at(&area, 8), 0, "version 0 before use (R-INFL-02)");
        let mut r = setup_ring(&c, &g);
        let (status, _) = blk_request(&mut g, &mut r, blk::T_OUT, 5, Some((&[0x11; 512], false)));
        assert_eq!(status, blk::S_OK);
        assert_eq!(u16_at(&area, 8), 1, "version 1 once used");
        assert_eq!(u16_at(&area, 14), 1, "used_idx tracks the ring (R-INFL-04)");
        assert_eq!(entry(&area, 0), (0, 0), "completed: not in flight");
        // A second request, taken by the back-end but never completed: it crashed. The area
        // says so; the avail ring shows it consumed.
        let hdr = g.alloc(16);
        g.write(hdr, &blk_header(blk::T_OUT, 9));
        let data = g.alloc(512);
        g.write(data, &[0x77; 512]);
        let status = g.alloc(1);
        let head = r.submit(
            &g,
            &[(hdr, 16, false), (data, 512, false), (status, 1, true)],
        );
        area.write_all_at(&[1], 16 + 16 * u64::from(head)).unwrap();
        area.write_all_at(&1u64.to_ne_bytes(), 16 + 16 * u64::from(head) + 8)
            .unwrap();
        (area, desc, head)
    };
    let c = connect(&be.sock);
    negotiate(&c, features());
    let set = Body::Inflight(desc);
    assert_eq!(
        ack(&c, FrontendReq::SetInflightFd, &set, &[area.as_fd()]),
        0
    );
    let mut r = prepare_ring_at(&c, &g, 2, head + 3);
    r.start(&c);
    assert_eq!(
        r.wait_used(&g),
        Some(1),
        "the in-flight request is completed (R-INFL-05)"
    );
    assert!(r.called());
    assert_eq!(entry(&area, head).0, 0);
    assert_eq!(u16_at(&area, 14), 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.used_idx(&g), 2, "completed exactly once");
    let (status, back) = blk_read(&mut g, &mut r, 9, 512);
    assert_eq!((status, back), (blk::S_OK, vec![0x77; 512]));
}
