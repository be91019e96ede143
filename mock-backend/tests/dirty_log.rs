//! Dirty logging (checklist 4.17): with LOG_ALL negotiated and a log set with SET_LOG_BASE, the
//! pages a blk read writes and the used ring's page are marked (R-LOG-03/04), SET_LOG_BASE is
//! answered with a u64 (R-LOG-02), and a log too small for memory is never written past
//! (R-LOG-06).

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use common::*;
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, LogDesc};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};

fn set_log_base(c: &Connection, log: &File, size: u64, offset: u64) -> u64 {
    let code = FrontendReq::SetLogBase as u32;
    let body = Body::Log(LogDesc { size, offset });
    c.send_request(code, &body, false, &[log.as_fd()]).unwrap();
    c.recv_reply(code).unwrap().u64().unwrap()
}

fn memfd(len: u64) -> File {
    let m = memfd::MemfdOptions::default().create("log").unwrap();
    m.as_file().set_len(len).unwrap();
    m.into_file()
}

fn log_session(be: &Backend) -> Connection {
    let c = connect(&be.sock);
    get_u64(&c, FrontendReq::GetFeatures);
    let p = ProtocolFeatures::REPLY_ACK | ProtocolFeatures::LOG_SHMFD;
    c.send_request(
        FrontendReq::SetProtocolFeatures as u32,
        &Body::U64(p.bits()),
        false,
        &[],
    )
    .unwrap();
    let f = VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1 | VirtioFeatures::LOG_ALL;
    assert_eq!(
        ack(&c, FrontendReq::SetFeatures, &Body::U64(f.bits()), &[]),
        0
    );
    c
}

#[test]
fn a_blk_read_marks_its_data_pages_and_the_used_ring_page() {
    let be = start(&[]);
    let c = log_session(&be);
    // One bit per 4 KiB page of the 1 MiB guest: 32 bytes, at offset 64 of the fd.
    let log = memfd(4096);
    assert_eq!(set_log_base(&c, &log, MEM_SIZE / 4096 / 8, 64), 0);
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    let data_at = g.peek() + 64;
    let (status, _) = blk_read(&mut g, &mut r, 0, 8192);
    assert_eq!(status, blk::S_OK);
    let mut bits = [0u8; 32];
    log.read_exact_at(&mut bits, 64).unwrap();
    let dirty = |page: u64| bits[(page / 8) as usize] & (1 << (page % 8)) != 0;
    for page in data_at / 4096..=(data_at + 8191) / 4096 {
        assert!(dirty(page), "data page {page} not logged");
    }
    assert!(dirty(2), "used ring page (GPA 0x2000) not logged");
    assert!(!dirty(200), "a page never written is marked");
    let mut before = [0u8; 64];
    log.read_exact_at(&mut before, 0).unwrap();
    assert_eq!(before, [0; 64], "bytes before the log's offset written");
}

#[test]
fn a_log_too_small_for_memory_is_not_written_past() {
    let be = start(&[]);
    let c = log_session(&be);
    let log = memfd(4096);
    assert_eq!(set_log_base(&c, &log, 1, 0), 0);
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    let (status, _) = blk_read(&mut g, &mut r, 0, 512);
    assert_eq!(status, blk::S_OK);
    let mut rest = [0u8; 4095];
    log.read_exact_at(&mut rest, 1).unwrap();
    assert!(rest.iter().all(|&b| b == 0));
    let mut first = [0u8; 1];
    log.read_exact_at(&mut first, 0).unwrap();
    assert!(
        first[0] & 0b100 != 0,
        "used ring page 2 is inside the log and marked"
    );
}
