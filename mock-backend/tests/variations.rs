//! The legal variations of real back-ends (`faults::VARIATIONS`) behave as named, over real
//! sockets and real processes: a refusal that ends the process with status 1 or closes only
//! that connection, an exit 0 on disconnect, a 64-entry ring limit, no REPLY_ACK offered, an
//! 8-byte config space.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::*;
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, ConfigHeader, VringAddr, VringState};
use vhu_protocol::{
    Connection, FrontendReq, Header, Message, ProtocolFeatures, RawMessage, VirtioFeatures,
};

fn basic() -> ProtocolFeatures {
    ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIGURE_MEM_SLOTS | ProtocolFeatures::CONFIG
}

fn ring(index: u32, num: u32) -> Body {
    Body::VringState(VringState { index, num })
}

/// The disk's capacity in sectors, the config space's first 8 bytes (64 MiB by default).
const CAPACITY_SECTORS: u64 = (64 << 20) / 512;

/// A refusal of each kind the back-end makes: what is sent, and whether a reply comes before
/// the end (a nack asked for, or the error form of a request that is always answered).
struct Refusal {
    what: &'static str,
    send: fn(&Connection, &Guest),
    replied: bool,
    /// What the refusal line on stderr names.
    names: &'static str,
}

fn refusals() -> Vec<Refusal> {
    vec![
        Refusal {
            what: "a ring index past the last queue, NEED_REPLY",
            send: |c, _| {
                let bad = ring(200, 64);
                c.send_request(FrontendReq::SetVringNum as u32, &bad, true, &[])
                    .unwrap();
            },
            replied: true,
            names: "VHOST_USER_SET_VRING_NUM",
        },
        Refusal {
            what: "a ring size that is not a power of two, no NEED_REPLY",
            send: |c, _| {
                let bad = ring(0, 100);
                c.send_request(FrontendReq::SetVringNum as u32, &bad, false, &[])
                    .unwrap();
            },
            replied: false,
            names: "VHOST_USER_SET_VRING_NUM",
        },
        Refusal {
            what: "an unknown request code",
            send: |c, _| {
                let raw = RawMessage::new(Header::request(200, 0, false), vec![]);
                c.send_raw(&raw, &[]).unwrap();
            },
            replied: false,
            names: "unknown request code 200",
        },
        Refusal {
            what: "flags that are not VHOST_VRING_F_LOG",
            send: |c, g| {
                let table = Body::MemTable(vec![g.region()]);
                assert_eq!(
                    ack(c, FrontendReq::SetMemTable, &table, &[g.file.as_fd()]),
                    0
                );
                let addr = VringAddr {
                    index: 0,
                    flags: 2,
                    desc: UA_BASE,
                    used: UA_BASE + 0x2000,
                    avail: UA_BASE + 0x1000,
                    log: 0,
                };
                let body = Body::VringAddr(addr);
                c.send_request(FrontendReq::SetVringAddr as u32, &body, true, &[])
                    .unwrap();
            },
            replied: true,
            names: "VHOST_USER_SET_VRING_ADDR",
        },
        Refusal {
            what: "feature bits that were not offered",
            send: |c, _| {
                let bits = Body::U64(1 << 63 | VirtioFeatures::PROTOCOL_FEATURES.bits());
                c.send_request(FrontendReq::SetFeatures as u32, &bits, true, &[])
                    .unwrap();
            },
            replied: true,
            names: "VHOST_USER_SET_FEATURES",
        },
        Refusal {
            what: "a memory region without its fd",
            send: |c, g| {
                let table = Body::MemTable(vec![g.region()]);
                c.send_request(FrontendReq::SetMemTable as u32, &table, true, &[])
                    .unwrap();
            },
            replied: true,
            names: "VHOST_USER_SET_MEM_TABLE",
        },
        Refusal {
            what: "a payload of the wrong size",
            send: |c, _| {
                let raw = RawMessage::new(
                    Header::request(FrontendReq::SetVringNum as u32, 3, true),
                    vec![0; 3],
                );
                c.send_raw(&raw, &[]).unwrap();
            },
            replied: true,
            names: "malformed payload",
        },
        Refusal {
            what: "GET_CONFIG outside the config space (the empty error reply)",
            send: |c, _| {
                let h = ConfigHeader {
                    offset: 0x1000,
                    size: 4,
                    flags: 0,
                };
                let body = Body::Config(h, vec![0; 4]);
                c.send_request(FrontendReq::GetConfig as u32, &body, false, &[])
                    .unwrap();
            },
            replied: true,
            names: "VHOST_USER_GET_CONFIG",
        },
    ]
}

/// After `r` was sent: the nack or error reply if one is due, then the end of the stream.
fn refused(c: &Connection, r: &Refusal) {
    if r.replied {
        let m = c
            .recv_unchecked()
            .unwrap_or_else(|e| panic!("{}: {e}", r.what));
        assert!(m.header.is_reply(), "{}", r.what);
        let nack = m.payload.len() == 8 && m.u64() != Some(0);
        assert!(nack || m.payload.is_empty(), "{}: {m:?}", r.what);
    }
    assert!(closed(c), "{}: not closed", r.what);
}

#[test]
fn exit_after_refusal_nacks_then_exits_with_status_1() {
    for r in refusals() {
        let mut be = start_piped(&["--fault", "exit-after-refusal"]);
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let g = Guest::new();
        // A valid request first: only refusals end the process.
        assert_eq!(ack(&c, FrontendReq::SetVringNum, &ring(0, 64), &[]), 0);
        (r.send)(&c, &g);
        refused(&c, &r);
        let status = wait_exit(&mut be).unwrap_or_else(|| panic!("{}: still running", r.what));
        assert_eq!(status.code(), Some(1), "{}: {status:?}", r.what);
        assert!(!be.sock.exists(), "{}: the socket file is left", r.what);
        let err = stderr_of(&mut be);
        assert!(
            err.contains("exit-after-refusal")
                && err.contains(r.names)
                && err.contains("exiting with status 1"),
            "{}: {err}",
            r.what
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn exit_after_refusal_serves_sessions_without_refusals_and_keeps_listening() {
    let mut be = start(&["--fault", "exit-after-refusal"]);
    for _ in 0..2 {
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let mut g = Guest::new();
        let mut r = setup_ring(&c, &g);
        let data = vec![0x5a; 512];
        let (status, _) = blk_request(&mut g, &mut r, blk::T_OUT, 3, Some((&data, false)));
        assert_eq!(status, blk::S_OK);
        assert_eq!(blk_read(&mut g, &mut r, 3, 512), (blk::S_OK, data));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        be.child.try_wait().unwrap().is_none(),
        "exited without a refusal"
    );
}

#[test]
fn close_after_refusal_closes_that_connection_and_serves_the_next() {
    let mut be = start_piped(&["--fault", "close-after-refusal"]);
    for r in refusals() {
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let g = Guest::new();
        assert_eq!(ack(&c, FrontendReq::SetVringNum, &ring(0, 64), &[]), 0);
        (r.send)(&c, &g);
        refused(&c, &r);
        assert!(
            be.child.try_wait().unwrap().is_none(),
            "{}: the process went",
            r.what
        );
    }
    // The next front-end gets a whole working session.
    let c = connect(&be.sock);
    negotiate(&c, basic());
    let mut g = Guest::new();
    let mut r = setup_ring(&c, &g);
    assert_eq!(
        blk_request(&mut g, &mut r, blk::T_FLUSH, 0, None).0,
        blk::S_OK
    );
    drop(c);
    let err = stderr_of(&mut be);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), refusals().len(), "{err}");
    for (line, r) in lines.iter().zip(refusals()) {
        assert!(
            line.contains("close-after-refusal")
                && line.contains(r.names)
                && line.contains("closing the connection"),
            "{line}"
        );
    }
}

#[test]
fn exit_on_disconnect_exits_0_when_the_front_end_leaves() {
    for (fault, exits) in [(None, false), (Some("exit-on-disconnect"), true)] {
        let mut be = start(&fault.map(|f| vec!["--fault", f]).unwrap_or_default());
        let c = connect(&be.sock);
        negotiate(&c, basic());
        drop(c);
        let status = wait_exit(&mut be);
        assert_eq!(status.is_some(), exits, "{fault:?}: {status:?}");
        if let Some(s) = status {
            assert_eq!(s.code(), Some(0), "{s:?}");
        }
    }
}

/// Under `args`, SET_VRING_NUM of each size is acked 0 or refused as `sizes` says.
fn ring_sizes(args: &[&str], sizes: &[(u32, bool)]) {
    let be = start(args);
    let c = connect(&be.sock);
    negotiate(&c, basic());
    for &(num, accepted) in sizes {
        let a = ack(&c, FrontendReq::SetVringNum, &ring(1, num), &[]);
        assert_eq!(a == 0, accepted, "{args:?}: SET_VRING_NUM {num} acked {a}");
    }
}

#[test]
fn max_ring_64_refuses_rings_above_64() {
    ring_sizes(&[], &[(64, true), (128, true), (32768, true)]);
    let max_64 = ["--fault", "max-ring-64"];
    ring_sizes(
        &max_64,
        &[(1, true), (64, true), (128, false), (32768, false)],
    );
    // A lower --queue-size-max stays the limit.
    let lower = ["--fault", "max-ring-64", "--queue-size-max", "32"];
    ring_sizes(&lower, &[(32, true), (64, false)]);
}

#[test]
fn no_reply_ack_is_not_offered_and_everything_works_without_it() {
    let be = start(&["--fault", "no-reply-ack"]);
    let mut c = connect(&be.sock);
    let offer = get_u64(&c, FrontendReq::GetProtocolFeatures);
    let offer = ProtocolFeatures::from_bits_retain(offer);
    assert!(!offer.contains(ProtocolFeatures::REPLY_ACK), "{offer:?}");
    assert!(
        !offer.contains(ProtocolFeatures::INBAND_NOTIFICATIONS),
        "{offer:?}"
    );
    assert!(
        offer.contains(ProtocolFeatures::MQ | ProtocolFeatures::CONFIG),
        "{offer:?}"
    );
    let features = get_u64(&c, FrontendReq::GetFeatures);
    let want = (VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1).bits();
    assert_eq!(features & want, want);
    // REPLY_ACK asked for anyway is refused (not offered, R-NEG-05), the offer accepted.
    let with_ack = Body::U64((offer | ProtocolFeatures::REPLY_ACK).bits());
    c.send_request(
        FrontendReq::SetProtocolFeatures as u32,
        &with_ack,
        false,
        &[],
    )
    .unwrap();
    // All of the offer but XEN_MMAP, which would make the memory table below Xen regions.
    let p = Body::U64((offer - ProtocolFeatures::XEN_MMAP).bits());
    c.send_request(FrontendReq::SetProtocolFeatures as u32, &p, false, &[])
        .unwrap();
    c.send_request(
        FrontendReq::SetFeatures as u32,
        &Body::U64(want),
        false,
        &[],
    )
    .unwrap();
    // Without REPLY_ACK negotiated NEED_REPLY gets no ack, and the stream stays in step.
    c.set_timeout(Some(Duration::from_millis(300)));
    c.send_request(FrontendReq::SetOwner as u32, &Body::Empty, true, &[])
        .unwrap();
    assert!(c.recv().unwrap_err().is_timeout());
    c.set_timeout(Some(T));
    assert_eq!(get_u64(&c, FrontendReq::GetQueueNum), 2);
    // The data path, set up without a single ack.
    let mut g = Guest::new();
    let mut r = setup_ring_unacked(&c, &g);
    let data: Vec<u8> = (0..=255).cycle().take(1024).collect();
    let (status, used) = blk_request(&mut g, &mut r, blk::T_OUT, 8, Some((&data, false)));
    assert_eq!((status, used), (blk::S_OK, Some(1)));
    assert!(r.called());
    assert_eq!(blk_read(&mut g, &mut r, 8, 1024), (blk::S_OK, data));
}

fn get_config(c: &Connection, offset: u32, size: u32) -> Message {
    let h = ConfigHeader {
        offset,
        size,
        flags: 0,
    };
    let body = Body::Config(h, vec![0; size as usize]);
    c.send_request(FrontendReq::GetConfig as u32, &body, false, &[])
        .unwrap();
    c.recv_reply(FrontendReq::GetConfig as u32).unwrap()
}

fn set_config(c: &Connection, offset: u32, data: &[u8], flags: u32) -> u64 {
    let h = ConfigHeader {
        offset,
        size: data.len() as u32,
        flags,
    };
    ack(
        c,
        FrontendReq::SetConfig,
        &Body::Config(h, data.to_vec()),
        &[],
    )
}

#[test]
fn config_8_serves_the_first_8_bytes_and_refuses_past_them() {
    for fault in [false, true] {
        let args: &[&str] = if fault { &["--fault", "config-8"] } else { &[] };
        let be = start(args);
        let c = connect(&be.sock);
        negotiate(&c, basic());
        let m = get_config(&c, 0, 8);
        assert_eq!(m.header.size, 20, "{m:?}");
        let capacity = u64::from_le_bytes(m.payload[12..20].try_into().unwrap());
        assert_eq!(capacity, CAPACITY_SECTORS);
        let m = get_config(&c, 4, 4);
        assert_eq!(m.header.size, 16, "{m:?}");
        for (offset, size) in [(0, 9), (4, 8), (8, 4), (32, 1), (0, 60)] {
            let m = get_config(&c, offset, size);
            if fault {
                // R-CFG-02: the error is a reply with an empty payload.
                assert_eq!(m.header.size, 0, "{offset}+{size}: {m:?}");
                assert!(m.payload.is_empty());
            } else {
                assert_eq!(m.header.size, 12 + size, "{offset}+{size}: {m:?}");
            }
        }
        // A migration restore (flags 1) may write any field, but only inside the space.
        let sectors = CAPACITY_SECTORS.to_le_bytes();
        assert_eq!(set_config(&c, 0, &sectors, 1), 0);
        // Bytes 4..12: capacity's high half (0) and size_max.
        assert_eq!(set_config(&c, 4, &[0; 8], 1) == 0, !fault);
        // `writeback` at offset 32 is past the 8 bytes.
        assert_eq!(set_config(&c, 32, &[1], 0) == 0, !fault);
        // The session goes on.
        assert_eq!(get_config(&c, 0, 8).header.size, 20);
    }
}

#[test]
fn list_faults_shows_the_faults_with_their_rules_then_the_legal_variations() {
    use vhu_mock_backend::faults::{ALL, VARIATIONS};
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhu-mock-backend"))
        .arg("--list-faults")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    let expected: Vec<Vec<&str>> = (ALL.iter().map(|f| vec![f.1, f.2]))
        .chain(VARIATIONS.iter().map(|v| vec![v.1, "legal"]))
        .collect();
    assert_eq!(rows, expected, "{text}");
    assert!(
        text.contains("segfault-on-bad-index      R-CRASH-01"),
        "{text}"
    );
}
