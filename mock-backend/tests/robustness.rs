//! Malformed input never panics the back-end (R-ROB-01..04): every request code, known and
//! unknown, with payloads of wrong and right sizes full of pseudo-random bytes, each on a fresh
//! connection, gets an answer or a closed connection; the process stays alive and serves the
//! next front-end normally.

mod common;

use common::*;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{FrontendReq, Header, ProtocolFeatures, RawMessage};

/// Every protocol feature whose handlers random input should reach.
fn deep() -> ProtocolFeatures {
    ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::MQ
        | ProtocolFeatures::LOG_SHMFD
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::INFLIGHT_SHMFD
        | ProtocolFeatures::RESET_DEVICE
        | ProtocolFeatures::INBAND_NOTIFICATIONS
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
        | ProtocolFeatures::STATUS
        | ProtocolFeatures::DEVICE_STATE
        | ProtocolFeatures::SHMEM
}

/// xorshift64: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

#[test]
fn random_payloads_for_every_code_get_an_answer_or_a_close_and_never_kill_the_process() {
    let mut be = start(&["--shmem", "0:0x10000"]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for code in (1..=48).chain([0, 1000, u32::MAX]) {
        let expected = FrontendReq::from_code(code)
            .ok()
            .map(|r| r.request_body().fixed_size());
        let sizes = [Some(0), Some(8), Some(41), expected.flatten()];
        for size in sizes.into_iter().flatten() {
            let c = connect(&be.sock);
            negotiate(&c, deep());
            let raw = RawMessage::new(Header::request(code, size as u32, true), rng.bytes(size));
            c.send_raw(&raw, &[]).unwrap();
            let answer = c.recv();
            let may_drop_ack = code == FrontendReq::SetProtocolFeatures as u32;
            if let Err(e) = &answer {
                assert!(
                    e.is_peer_gone() || may_drop_ack,
                    "code {code} size {size}: {e}"
                );
            }
            assert!(
                be.child.try_wait().unwrap().is_none(),
                "died on code {code}"
            );
        }
    }
    let c = connect(&be.sock);
    negotiate(&c, ProtocolFeatures::REPLY_ACK);
    assert_eq!(ack(&c, FrontendReq::SetOwner, &Body::Empty, &[]), 0);
}

#[test]
fn crash_on_unknown_code_is_seen_dying_by_the_same_probe() {
    let mut be = start(&["--fault", "crash-on-unknown-code"]);
    let c = connect(&be.sock);
    negotiate(&c, ProtocolFeatures::REPLY_ACK);
    c.send_raw(
        &RawMessage::new(Header::request(1000, 0, true), vec![]),
        &[],
    )
    .unwrap();
    assert!(c.recv().unwrap_err().is_peer_gone());
    let deadline = std::time::Instant::now() + T;
    while be.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "still alive");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
