//! Fault modes change the behaviour as named (checked here over a real socket), and the SHMEM
//! device request maps and unmaps a memfd through the back-end channel, inside the declared
//! region unless `shmem-out-of-range` is on.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;
use vhu_mock_backend::{T_SHMEM_MAP, T_SHMEM_UNMAP};
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, BodyKind, VringState};
use vhu_protocol::{BackendReq, Connection, FrontendReq, ProtocolFeatures};

fn basic() -> ProtocolFeatures {
    ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIGURE_MEM_SLOTS
}

fn get_vring_base(c: &Connection) -> u32 {
    let q0 = Body::VringState(VringState { index: 0, num: 0 });
    c.send_request(FrontendReq::GetVringBase as u32, &q0, false, &[])
        .unwrap();
    let m = c.recv_reply(FrontendReq::GetVringBase as u32).unwrap();
    u32::from_ne_bytes(m.payload[4..8].try_into().unwrap())
}

#[test]
fn wrong_reply_code_answers_get_features_with_code_2() {
    let be = start(&["--fault", "wrong-reply-code"]);
    let c = connect(&be.sock);
    c.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &[])
        .unwrap();
    let m = c.recv_unchecked().unwrap();
    assert_eq!(m.header.request, 2);
    assert!(m.header.is_reply());
}

#[test]
fn no_ack_leaves_need_reply_unanswered() {
    let be = start(&["--fault", "no-ack"]);
    let mut c = connect(&be.sock);
    negotiate_without_ack(&c);
    c.set_timeout(Some(Duration::from_millis(300)));
    c.send_request(FrontendReq::SetOwner as u32, &Body::Empty, true, &[])
        .unwrap();
    assert!(c.recv().unwrap_err().is_timeout());
}

fn negotiate_without_ack(c: &Connection) {
    get_u64(c, FrontendReq::GetFeatures);
    let p = Body::U64(ProtocolFeatures::REPLY_ACK.bits());
    c.send_request(FrontendReq::SetProtocolFeatures as u32, &p, false, &[])
        .unwrap();
}

#[test]
fn crash_on_bad_index_aborts_the_process() {
    let mut be = start(&["--fault", "crash-on-bad-index"]);
    let c = connect(&be.sock);
    let bad = Body::VringState(VringState {
        index: 200,
        num: 64,
    });
    c.send_request(FrontendReq::SetVringNum as u32, &bad, true, &[])
        .unwrap();
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = be.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still alive");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGABRT));
}

#[test]
fn without_the_fault_a_bad_index_is_refused_and_the_process_lives() {
    let mut be = start(&[]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let bad = Body::VringState(VringState {
        index: 200,
        num: 64,
    });
    assert_ne!(ack(&c, FrontendReq::SetVringNum, &bad, &[]), 0);
    assert!(be.child.try_wait().unwrap().is_none());
}

#[test]
fn stale_vring_base_returns_the_initial_base_after_requests() {
    for (fault, expected) in [(None, 1), (Some("stale-vring-base"), 0)] {
        let be = start(&fault.map(|f| vec!["--fault", f]).unwrap_or_default());
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let mut g = Guest::new();
        let mut r = setup_ring(&c, &g);
        let (status, _) = blk_request(&mut g, &mut r, blk::T_FLUSH, 0, None);
        assert_eq!(status, blk::S_OK);
        assert_eq!(get_vring_base(&c), expected, "{fault:?}");
    }
}

#[test]
fn write_past_descriptor_overwrites_the_bytes_after_a_read_buffer() {
    let be = start(&["--fault", "write-past-descriptor"]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    // Header, then the 512-byte buffer, then the status byte right after it (which the
    // device writes last, over the first byte of the overrun).
    let buf_at = g.peek() + 64;
    let (status, _) = blk_read(&mut g, &mut r, 0, 512);
    assert_eq!(status, blk::S_OK);
    assert_eq!(g.read(buf_at + 513, 15), [0xee; 15]);
}

#[test]
fn process_before_kick_runs_a_stopped_ring_on_set_vring_enable() {
    for (fault, completes) in [(None, false), (Some("process-before-kick"), true)] {
        let be = start(&fault.map(|f| vec!["--fault", f]).unwrap_or_default());
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let mut g = Guest::new();
        let mut r = setup_ring(&c, &g);
        assert_eq!(
            blk_request(&mut g, &mut r, blk::T_FLUSH, 0, None).0,
            blk::S_OK
        );
        assert_eq!(get_vring_base(&c), 1);
        let on = Body::VringState(VringState { index: 0, num: 1 });
        assert_eq!(ack(&c, FrontendReq::SetVringEnable, &on, &[]), 0);
        let (_, used) = blk_request(&mut g, &mut r, blk::T_FLUSH, 0, None);
        assert_eq!(used.is_some(), completes, "{fault:?}");
    }
}

/// The front-end's side of the back-end channel: answers SHMEM_MAP/UNMAP with `ack` and
/// records (code, payload, first 16 bytes of the fd's contents).
fn channel(c: &Connection, ack_value: u64) -> Seen {
    let (ours, theirs) = UnixStream::pair().unwrap();
    assert_eq!(
        ack(
            c,
            FrontendReq::SetBackendReqFd,
            &Body::Empty,
            &[theirs.as_fd()]
        ),
        0
    );
    let conn = Connection::new(ours, Some(Duration::from_secs(3)));
    std::thread::spawn(move || {
        let mut seen = vec![];
        while let Ok(m) = conn.recv() {
            let body = m.body(BodyKind::ShmemMap).unwrap();
            let mut head = vec![0u8; 16];
            if let Some(fd) = m.fds.first() {
                let file = std::fs::File::from(fd.try_clone().unwrap());
                file.read_exact_at(&mut head, 0).unwrap();
            }
            seen.push((m.header.request, body, head));
            if m.header.need_reply() {
                let _ = conn.send_reply(m.header.request, &Body::U64(ack_value), &[]);
            }
        }
        seen
    })
}

fn shmem_body(shmid: u8, offset: u64, len: u64) -> Vec<u8> {
    [
        [shmid, 0, 0, 0, 0, 0, 0, 0],
        offset.to_ne_bytes(),
        len.to_ne_bytes(),
    ]
    .concat()
}

fn shmem_features() -> ProtocolFeatures {
    ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::BACKEND_SEND_FD | ProtocolFeatures::SHMEM
}

/// What the channel double saw: (code, payload, first bytes of the fd).
type Seen = std::thread::JoinHandle<Vec<(u32, Body, Vec<u8>)>>;

fn shmem_session(args: &[&str], ack_value: u64) -> (Backend, Connection, Guest, Ring, Seen) {
    let be = start(&[&["--shmem", "1:0x10000"], args].concat());
    let c = connect(&be.sock);
    negotiate(&c, basic() | shmem_features());
    let fe = channel(&c, ack_value);
    let g = Guest::new();
    let r = setup_ring(&c, &g);
    (be, c, g, r, fe)
}

#[test]
fn the_shmem_device_request_maps_a_filled_memfd_inside_the_region_and_unmaps_it() {
    let (_be, c, mut g, mut r, fe) = shmem_session(&[], 0);
    let body = shmem_body(1, 0x2000, 0x1000);
    let map = blk_request(&mut g, &mut r, T_SHMEM_MAP, 0, Some((&body, false)));
    assert_eq!(map.0, blk::S_OK);
    let outside = shmem_body(1, 0xf000, 0x2000);
    let refused = blk_request(&mut g, &mut r, T_SHMEM_MAP, 0, Some((&outside, false)));
    assert_eq!(
        refused.0,
        blk::S_IOERR,
        "a range leaving the region is refused locally"
    );
    let unmap = blk_request(&mut g, &mut r, T_SHMEM_UNMAP, 0, Some((&body, false)));
    assert_eq!(unmap.0, blk::S_OK);
    drop(c);
    let seen = fe.join().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (code, Body::ShmemMap(m), head) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(*code, BackendReq::ShmemMap as u32);
    assert_eq!(
        (m.shmid, m.shm_offset, m.len, m.flags),
        (1, 0x2000, 0x1000, 1)
    );
    assert_eq!(head, &vec![0xa5; 16]);
    assert_eq!(seen[1].0, BackendReq::ShmemUnmap as u32);
}

#[test]
fn a_refused_shmem_map_completes_the_request_with_an_error() {
    let (_be, _c, mut g, mut r, _fe) = shmem_session(&[], 1);
    let body = shmem_body(1, 0, 0x1000);
    let map = blk_request(&mut g, &mut r, T_SHMEM_MAP, 0, Some((&body, false)));
    assert_eq!(map.0, blk::S_IOERR);
}

#[test]
fn shmem_out_of_range_maps_past_the_declared_region() {
    let (_be, c, mut g, mut r, fe) = shmem_session(&["--fault", "shmem-out-of-range"], 0);
    let body = shmem_body(1, 0x2000, 0x1000);
    blk_request(&mut g, &mut r, T_SHMEM_MAP, 0, Some((&body, false)));
    drop(c);
    let seen = fe.join().unwrap();
    let Some((_, Body::ShmemMap(m), _)) = seen.first() else {
        panic!("{seen:?}")
    };
    assert!(m.shm_offset + m.len > 0x10000, "{m:?}");
}

#[test]
fn hang_set_mem_table_never_answers() {
    let be = start(&["--fault", "hang-set-mem-table"]);
    let mut c = connect(&be.sock);
    negotiate(&c, basic());
    c.set_timeout(Some(Duration::from_millis(300)));
    let g = Guest::new();
    let table = Body::MemTable(vec![g.region()]);
    c.send_request(
        FrontendReq::SetMemTable as u32,
        &table,
        true,
        &[g.file.as_fd()],
    )
    .unwrap();
    assert!(c.recv().unwrap_err().is_timeout());
}

#[test]
fn a_shmem_map_is_not_sent_without_backend_send_fd() {
    let be = start(&["--shmem", "1:0x10000"]);
    let c = connect(&be.sock);
    negotiate(
        &c,
        basic() | ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::SHMEM,
    );
    let fe = channel(&c, 0);
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    let body = shmem_body(1, 0, 0x1000);
    let map = blk_request(&mut g, &mut r, T_SHMEM_MAP, 0, Some((&body, false)));
    assert_eq!(map.0, blk::S_IOERR);
    drop(c);
    assert!(fe.join().unwrap().is_empty());
}

/// One vring message of each kind with ring index `index`.
fn vring_messages(index: u32) -> Vec<(FrontendReq, Body)> {
    let state = |num| Body::VringState(VringState { index, num });
    let word = Body::U64(vhu_protocol::wire::payload::vring_fd_word(
        index as u8,
        true,
    ));
    let addr = vhu_protocol::wire::payload::VringAddr {
        index,
        flags: 0,
        desc: UA_BASE,
        used: UA_BASE + 0x2000,
        avail: UA_BASE + 0x1000,
        log: 0,
    };
    vec![
        (FrontendReq::SetVringNum, state(64)),
        (FrontendReq::SetVringBase, state(0)),
        (FrontendReq::SetVringAddr, Body::VringAddr(addr)),
        (FrontendReq::GetVringBase, state(0)),
        (FrontendReq::SetVringKick, word.clone()),
        (FrontendReq::SetVringCall, word.clone()),
        (FrontendReq::SetVringErr, word),
        (FrontendReq::SetVringEnable, state(1)),
        (FrontendReq::VringKick, state(0)),
    ]
}

#[test]
fn segfault_on_bad_index_dies_by_sigsegv_on_every_vring_message() {
    // Two queues: index 1 is the last one, 2 the first past it.
    let valid = vring_messages(1);
    for (req, body) in vring_messages(2) {
        let mut be = start(&["--fault", "segfault-on-bad-index"]);
        let c = connect(&be.sock);
        let inband = ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::INBAND_NOTIFICATIONS;
        negotiate(&c, basic() | inband);
        // The same message on the last queue is served (acked, or answered).
        let (ok_req, ok_body) = valid.iter().find(|v| v.0 == req).unwrap();
        c.send_request(*ok_req as u32, ok_body, true, &[]).unwrap();
        c.recv_reply(*ok_req as u32)
            .unwrap_or_else(|e| panic!("{req:?} on queue 1: {e}"));
        assert!(be.child.try_wait().unwrap().is_none(), "{req:?}");
        c.send_request(req as u32, &body, true, &[]).unwrap();
        let status = wait_exit(&mut be).unwrap_or_else(|| panic!("{req:?}: still alive"));
        assert_eq!(status.signal(), Some(libc::SIGSEGV), "{req:?}: {status:?}");
        assert!(!status.core_dumped(), "{req:?}: a core was dumped");
    }
}
