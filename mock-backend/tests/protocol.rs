//! The reference back-end over a real socket, driven by a hand-written front-end: negotiation
//! replies, REPLY_ACK acks, a virtio-blk write then read on a split ring with the call eventfd
//! signalled, GET_VRING_BASE, memory regions removed for real, a second connection after a
//! disconnect, in-band notifications, a malformed chain stopping its ring, and SIGTERM.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, VringState, vring_fd_word};
use vhu_protocol::{BackendReq, Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};

fn basic() -> ProtocolFeatures {
    ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIGURE_MEM_SLOTS | ProtocolFeatures::MQ
}

#[test]
fn negotiation_replies_have_flags_0x5_and_offer_the_documented_bits() {
    let be = start(&[]);
    let c = connect(&be.sock);
    c.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &[])
        .unwrap();
    let m = c.recv_reply(1).unwrap();
    assert_eq!(m.header.flags, 0x5);
    let f = m.u64().unwrap();
    let want = VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1;
    assert_eq!(f & want.bits(), want.bits());
    assert!(f & blk::F_MQ != 0);
    let p = ProtocolFeatures::from_bits_retain(get_u64(&c, FrontendReq::GetProtocolFeatures));
    for bit in [
        ProtocolFeatures::MQ,
        ProtocolFeatures::LOG_SHMFD,
        ProtocolFeatures::REPLY_ACK,
        ProtocolFeatures::BACKEND_REQ,
        ProtocolFeatures::CONFIG,
        ProtocolFeatures::INBAND_NOTIFICATIONS,
        ProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ProtocolFeatures::DEVICE_STATE,
    ] {
        assert!(p.contains(bit), "{bit:?} not offered");
    }
    assert!(
        !p.contains(ProtocolFeatures::SHMEM),
        "SHMEM without --shmem"
    );
    assert_eq!(get_u64(&c, FrontendReq::GetQueueNum), 2);
    let with_shmem = start(&["--shmem", "0:0x10000"]);
    let c = connect(&with_shmem.sock);
    let p = get_u64(&c, FrontendReq::GetProtocolFeatures);
    assert!(p & ProtocolFeatures::SHMEM.bits() != 0);
}

#[test]
fn reply_ack_is_zero_for_success_and_non_zero_for_a_failing_request() {
    let be = start(&[]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    assert_eq!(ack(&c, FrontendReq::SetOwner, &Body::Empty, &[]), 0);
    let g = Guest::new();
    let unknown = Body::SingleRegion(g.region());
    assert_ne!(ack(&c, FrontendReq::RemMemReg, &unknown, &[]), 0);
    let bad_num = Body::VringState(VringState { index: 0, num: 100 });
    assert_ne!(ack(&c, FrontendReq::SetVringNum, &bad_num, &[]), 0);
    // Without NEED_REPLY nothing comes back (R-ACK-02).
    c.send_request(FrontendReq::SetOwner as u32, &Body::Empty, false, &[])
        .unwrap();
    assert_eq!(get_u64(&c, FrontendReq::GetQueueNum), 2);
}

#[test]
fn a_blk_write_then_read_completes_with_calls_and_get_vring_base_returns_the_index() {
    let be = start(&[]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    let data = vec![0x5a; 1024];
    let (status, used) = blk_request(&mut g, &mut r, blk::T_OUT, 8, Some((&data, false)));
    assert_eq!((status, used), (blk::S_OK, Some(1)));
    assert!(r.called(), "no call after the write");
    let (status, back) = blk_read(&mut g, &mut r, 8, 1024);
    assert_eq!(status, blk::S_OK);
    assert_eq!(back, data);
    assert!(r.called(), "no call after the read");
    let (status, _) = blk_request(&mut g, &mut r, 0x77, 0, None);
    assert_eq!(
        status,
        blk::S_UNSUPP,
        "an unknown type gets an error status"
    );
    c.send_request(
        FrontendReq::GetVringBase as u32,
        &Body::VringState(VringState { index: 0, num: 0 }),
        false,
        &[],
    )
    .unwrap();
    let m = c.recv_reply(FrontendReq::GetVringBase as u32).unwrap();
    assert_eq!(m.payload[4..8], 3u32.to_ne_bytes());
    // Stopped: a new request is not processed, even with a kick (R-RING-11).
    let hdr = g.alloc(16);
    r.submit(&g, &[(hdr, 16, false)]);
    r.kick();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.used_idx(&g), 3);
}

#[test]
fn requests_queued_before_set_vring_kick_are_processed_without_a_kick() {
    let be = start(&[]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let mut g = Guest::new();
    let r = prepare_ring(&c, &g);
    let hdr = g.alloc(16);
    g.write(hdr, &blk_header(blk::T_FLUSH, 0));
    let status = g.alloc(1);
    let mut r = r;
    r.submit(&g, &[(hdr, 16, false), (status, 1, true)]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        r.used_idx(&g),
        0,
        "processed before the ring started (R-RING-01)"
    );
    r.start(&c);
    assert_eq!(
        r.wait_used(&g),
        Some(1),
        "R-RING-04: no completion without a kick"
    );
    assert_eq!(g.read(status, 1), [blk::S_OK]);
}

#[test]
fn rem_mem_reg_unmaps_the_region_and_closes_its_fd() {
    let be = start(&[]);
    let pid = be.child.id();
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let g = Guest::new();
    let region = Body::SingleRegion(g.region());
    assert_eq!(
        ack(&c, FrontendReq::AddMemReg, &region, &[g.file.as_fd()]),
        0
    );
    assert_eq!(memfds(pid, "guest"), 1);
    assert_eq!(ack(&c, FrontendReq::RemMemReg, &region, &[]), 0);
    assert_eq!(memfds(pid, "guest"), 0, "fd kept after REM_MEM_REG");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("memfd:guest"), "region still mapped");
}

#[test]
fn ignore_rem_mem_reg_keeps_the_fd_it_acked_as_removed() {
    let be = start(&["--fault", "ignore-rem-mem-reg"]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let g = Guest::new();
    let region = Body::SingleRegion(g.region());
    assert_eq!(
        ack(&c, FrontendReq::AddMemReg, &region, &[g.file.as_fd()]),
        0
    );
    assert_eq!(ack(&c, FrontendReq::RemMemReg, &region, &[]), 0);
    assert_eq!(memfds(be.child.id(), "guest"), 1);
}

#[test]
fn a_second_front_end_is_served_after_the_first_disconnects_and_sees_the_disk() {
    let be = start(&[]);
    {
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let mut g = Guest::new();
        let mut r = setup_ring(&c, &g);
        let data = vec![0xc3; 512];
        let (status, _) = blk_request(&mut g, &mut r, blk::T_OUT, 3, Some((&data, false)));
        assert_eq!(status, blk::S_OK);
    }
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    let (status, back) = blk_read(&mut g, &mut r, 3, 512);
    assert_eq!((status, back), (blk::S_OK, vec![0xc3; 512]));
}

#[test]
fn without_a_call_fd_completions_are_signalled_in_band_and_vring_kick_starts_the_ring() {
    let be = start(&[]);
    let c = connect(&be.sock);
    let p = basic() | ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::INBAND_NOTIFICATIONS;
    negotiate(&c, p);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        ack(
            &c,
            FrontendReq::SetBackendReqFd,
            &Body::Empty,
            &[theirs.as_fd()]
        ),
        0
    );
    drop(theirs);
    let channel = Connection::new(ours, Some(T));
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    let no_fd = Body::U64(vring_fd_word(0, true));
    assert_eq!(ack(&c, FrontendReq::SetVringCall, &no_fd, &[]), 0);
    let hdr = g.alloc(16);
    g.write(hdr, &blk_header(blk::T_FLUSH, 0));
    let status = g.alloc(1);
    r.submit(&g, &[(hdr, 16, false), (status, 1, true)]);
    // The in-band kick instead of the eventfd (R-INB-02).
    let kick = Body::VringState(VringState { index: 0, num: 0 });
    c.send_request(FrontendReq::VringKick as u32, &kick, true, &[])
        .unwrap();
    let call = channel.recv().unwrap();
    assert_eq!(call.header.request, BackendReq::VringCall as u32);
    assert_eq!(
        call.payload, [0u8; 8],
        "vring state index 0, num 0 (R-BCH-05)"
    );
    assert!(call.header.need_reply());
    channel
        .send_reply(BackendReq::VringCall as u32, &Body::U64(0), &[])
        .unwrap();
    assert_eq!(
        c.recv_reply(FrontendReq::VringKick as u32).unwrap().u64(),
        Some(0)
    );
    assert_eq!(r.used_idx(&g), 1);
    let _ = &mut r;
}

#[test]
fn inband_notifications_without_backend_req_close_the_connection() {
    let be = start(&[]);
    let c = connect(&be.sock);
    let p = ProtocolFeatures::INBAND_NOTIFICATIONS | ProtocolFeatures::REPLY_ACK;
    c.send_request(
        FrontendReq::SetProtocolFeatures as u32,
        &Body::U64(p.bits()),
        true,
        &[],
    )
    .unwrap();
    assert!(c.recv().unwrap_err().is_peer_gone(), "R-NEG-12");
    let c = connect(&be.sock);
    assert!(get_u64(&c, FrontendReq::GetFeatures) != 0);
}

#[test]
fn sigterm_ends_the_process_at_once_with_status_0_and_removes_the_socket() {
    let mut be = start(&[]);
    let _c = connect(&be.sock);
    let pid = nix::unistd::Pid::from_raw(be.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(s) = be.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!be.sock.exists());
}

#[test]
fn a_packed_ring_completes_a_write_and_a_read_and_get_vring_base_returns_the_packed_word() {
    let be = start(&[]);
    let c = connect(&be.sock);
    let mut g = Guest::new();
    let mut r = setup_packed(&c, &g, basic());
    let data: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
    let (status, used) = blk_request(&mut g, &mut r, blk::T_OUT, 40, Some((&data, false)));
    assert_eq!((status, used), (blk::S_OK, Some(1)));
    let mut fds = [nix::poll::PollFd::new(
        r.call.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(nix::poll::poll(&mut fds, 2000u16).unwrap(), 1, "no call");
    // Enough requests (3 slots each) to wrap the 16-slot ring twice.
    for _ in 0..10 {
        let (status, back) = blk_read(&mut g, &mut r, 40, 2048);
        assert_eq!(status, blk::S_OK);
        assert_eq!(back, data);
    }
    let q0 = Body::VringState(VringState { index: 0, num: 0 });
    c.send_request(FrontendReq::GetVringBase as u32, &q0, false, &[])
        .unwrap();
    let m = c.recv_reply(FrontendReq::GetVringBase as u32).unwrap();
    // 11 chains of 3 slots: 33 slots = two wraps of 16 (wrap counters back to 1), then slot 1.
    assert_eq!(m.payload[4..8], 0x8001_8001u32.to_ne_bytes());
}

#[test]
fn a_malformed_chain_stops_the_ring_reports_on_the_err_fd_and_keeps_its_position() {
    let be = start(&[]);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let mut g = Guest::new();
    let mut r = prepare_ring(&c, &g);
    let err = nix::sys::eventfd::EventFd::new().unwrap();
    let word = Body::U64(vring_fd_word(0, false));
    assert_eq!(ack(&c, FrontendReq::SetVringErr, &word, &[err.as_fd()]), 0);
    r.start(&c);
    let (status, _) = blk_request(&mut g, &mut r, blk::T_FLUSH, 0, None);
    assert_eq!(status, blk::S_OK);
    // A data buffer past the end of guest memory: the chain is refused, not executed.
    let hdr = g.alloc(16);
    g.write(hdr, &blk_header(blk::T_IN, 0));
    let status = g.alloc(1);
    r.submit(
        &g,
        &[(hdr, 16, false), (MEM_SIZE, 512, true), (status, 1, true)],
    );
    r.kick();
    let mut fds = [nix::poll::PollFd::new(
        err.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(nix::poll::poll(&mut fds, 2000u16).unwrap(), 1, "no err");
    assert_eq!(r.used_idx(&g), 1, "nothing published for the bad chain");
    let q0 = Body::VringState(VringState { index: 0, num: 0 });
    c.send_request(FrontendReq::GetVringBase as u32, &q0, false, &[])
        .unwrap();
    let m = c.recv_reply(FrontendReq::GetVringBase as u32).unwrap();
    assert_eq!(
        m.payload[4..8],
        1u32.to_ne_bytes(),
        "stopped at the bad chain"
    );
}
