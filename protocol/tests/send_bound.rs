//! A peer that stops reading cannot hang a sender that has a timeout: once the socket buffer is
//! full and stays full for the timeout, the send fails with `SendTimeout` (a timeout), and a
//! slow but progressing reader is waited for.

use std::time::{Duration, Instant};

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{ConnError, Connection, Header};

#[test]
fn a_peer_that_never_reads_makes_the_send_time_out_instead_of_blocking() {
    let t = Duration::from_millis(100);
    let (a, _b) = Connection::pair(Some(t)).unwrap();
    let payload = vec![0x5a; 4096];
    let start = Instant::now();
    let err = loop {
        match a.send(Header::request(1, 0, false), &payload, &[]) {
            Ok(()) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "the socket buffer never filled"
            ),
            Err(e) => break e,
        }
    };
    let ConnError::SendTimeout {
        waited,
        sent,
        total,
    } = err
    else {
        panic!("not a send timeout: {err:?}");
    };
    assert!(err_is_timeout(waited, t), "waited {waited:?}");
    assert!(sent < total && total == 12 + 4096, "{sent} of {total}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn err_is_timeout(waited: Duration, t: Duration) -> bool {
    waited >= t && waited < t * 20
}

#[test]
fn a_slow_reader_that_keeps_reading_is_waited_for() {
    let t = Duration::from_millis(300);
    let (a, b) = Connection::pair(Some(t)).unwrap();
    let n = 400;
    let reader = std::thread::spawn(move || {
        for _ in 0..n {
            let m = b.recv().unwrap();
            assert_eq!(m.payload.len(), 4000);
            if m.header.request % 50 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    for i in 0..n {
        a.send_request(i, &Body::Opaque(vec![1; 4000]), false, &[])
            .unwrap();
    }
    reader.join().unwrap();
}

#[test]
fn without_a_timeout_a_send_still_blocks_until_the_reader_drains() {
    let (a, b) = Connection::pair(None).unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut got = 0;
        while got < 200 {
            b.recv().unwrap();
            got += 1;
        }
    });
    for _ in 0..200 {
        a.send(Header::request(1, 0, false), &[7; 4000], &[])
            .unwrap();
    }
    reader.join().unwrap();
}
