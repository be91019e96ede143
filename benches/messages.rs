//! Control-plane message costs over real Unix sockets, side by side (issue 7):
//! - `round_trip`: one request and its reply. The floor (a raw 20-byte ping-pong between two
//!   threads), vhu-conform's session against the mock back-end (and its bare `Connection`, to
//!   tell the session's own cost), and the peer (rust-vmm's `vhost` `Frontend` against a
//!   `vhost-user-backend` daemon).
//! - `one_way`: messages that take no reply, pipelined, then one GET_FEATURES round trip that
//!   tells they were all read; without fds (SET_VRING_NUM) and with one (SET_VRING_CALL).
//! - `set_mem_table_8`: SET_MEM_TABLE with 8 memfd regions and NEED_REPLY, end to end.
//!
//! Every back-end runs in this process, on threads; the socket between them is real.

// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::os::fd::AsFd;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::VhostBackend;
use vhu_mock_frontend::Session;
use vhu_protocol::wire::payload::{Body, VringState, vring_fd_word};
use vhu_protocol::{Connection, FrontendReq};

use common::peer::Peer;
use common::{Floor, MockBackend};

/// Messages per iteration of the one-way benches.
const BURST: usize = 128;

fn set_vring_num(s: &mut Session, need_reply: bool) {
    let body = Body::VringState(VringState { index: 0, num: 256 });
    let r = s.request(FrontendReq::SetVringNum, &body, &[], Some(need_reply));
    black_box(r.expect("SET_VRING_NUM"));
}

fn set_vring_call(s: &mut Session, fd: &EventFd) {
    let body = Body::U64(vring_fd_word(0, false));
    let r = s.request(FrontendReq::SetVringCall, &body, &[fd.as_fd()], Some(false));
    black_box(r.expect("SET_VRING_CALL"));
}

fn round_trip(c: &mut Criterion) {
    common::pin_to_one_cpu();
    let mut g = c.benchmark_group("round_trip");
    let mut floor = Floor::start();
    g.bench_function("floor_20B", |b| b.iter(|| floor.ping()));
    drop(floor);

    let (mut s, backend) = common::mock_session(0);
    g.bench_function("ours_get_features", |b| {
        b.iter(|| black_box(s.get_features().expect("GET_FEATURES")));
    });
    g.bench_function("ours_set_vring_num_need_reply", |b| {
        b.iter(|| set_vring_num(&mut s, true));
    });
    drop(s);
    backend.join();

    let (backend, stream) = MockBackend::start();
    let conn = Connection::new(stream, Some(Duration::from_secs(2)));
    let code = FrontendReq::GetFeatures as u32;
    g.bench_function("ours_conn_get_features", |b| {
        b.iter(|| {
            conn.send_request(code, &Body::Empty, false, &[])
                .expect("send");
            black_box(conn.recv_reply(code).expect("reply"));
        });
    });
    drop(conn);
    backend.join();

    let (conn, echo) = common::echo_backend();
    g.bench_function("ours_conn_vs_echo_get_features", |b| {
        b.iter(|| {
            conn.send_request(code, &Body::Empty, false, &[])
                .expect("send");
            black_box(conn.recv_reply(code).expect("reply"));
        });
    });
    drop(conn);
    let _ = echo.join();

    let peer = Peer::start();
    g.bench_function("peer_get_features", |b| {
        b.iter(|| black_box(peer.frontend.get_features().expect("GET_FEATURES")));
    });
    peer.need_reply(true);
    g.bench_function("peer_set_vring_num_need_reply", |b| {
        b.iter(|| peer.frontend.set_vring_num(0, 256).expect("SET_VRING_NUM"));
    });
    g.finish();
}

fn one_way(c: &mut Criterion) {
    common::pin_to_one_cpu();
    let mut g = c.benchmark_group("one_way");
    g.throughput(Throughput::Elements(BURST as u64));
    let mut floor = Floor::start();
    g.bench_function("floor_20B", |b| b.iter(|| floor.one_way(BURST)));
    drop(floor);

    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).expect("eventfd");
    let (mut s, backend) = common::mock_session(0);
    g.bench_function("ours_set_vring_num", |b| {
        b.iter(|| {
            (0..BURST).for_each(|_| set_vring_num(&mut s, false));
            black_box(s.get_features().expect("GET_FEATURES"));
        });
    });
    g.bench_function("ours_set_vring_call_fd", |b| {
        b.iter(|| {
            (0..BURST).for_each(|_| set_vring_call(&mut s, &efd));
            black_box(s.get_features().expect("GET_FEATURES"));
        });
    });
    drop(s);
    backend.join();

    // The bare connection: what the session's bookkeeping and transcript cost on top.
    let (backend, stream) = MockBackend::start();
    let conn = Connection::new(stream, Some(Duration::from_secs(2)));
    let num = FrontendReq::SetVringNum as u32;
    let get = FrontendReq::GetFeatures as u32;
    let body = Body::VringState(VringState { index: 0, num: 256 });
    g.bench_function("ours_conn_set_vring_num", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                conn.send_request(num, &body, false, &[]).expect("send");
            }
            conn.send_request(get, &Body::Empty, false, &[])
                .expect("send");
            black_box(conn.recv_reply(get).expect("reply"));
        });
    });
    drop(conn);
    backend.join();

    let (conn, echo) = common::echo_backend();
    g.bench_function("ours_conn_vs_echo_set_vring_num", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                conn.send_request(num, &body, false, &[]).expect("send");
            }
            conn.send_request(get, &Body::Empty, false, &[])
                .expect("send");
            black_box(conn.recv_reply(get).expect("reply"));
        });
    });
    drop(conn);
    let _ = echo.join();

    let peer = Peer::start();
    let pefd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC).expect("eventfd");
    g.bench_function("peer_set_vring_num", |b| {
        b.iter(|| {
            (0..BURST).for_each(|_| peer.frontend.set_vring_num(0, 256).expect("SET_VRING_NUM"));
            black_box(peer.frontend.get_features().expect("GET_FEATURES"));
        });
    });
    g.bench_function("peer_set_vring_call_fd", |b| {
        b.iter(|| {
            (0..BURST).for_each(|_| {
                peer.frontend
                    .set_vring_call(0, &pefd)
                    .expect("SET_VRING_CALL");
            });
            black_box(peer.frontend.get_features().expect("GET_FEATURES"));
        });
    });
    g.finish();
}

fn set_mem_table(c: &mut Criterion) {
    common::pin_to_one_cpu();
    let mut g = c.benchmark_group("set_mem_table_8");
    let mem = common::eight_regions();
    let (mut s, backend) = common::mock_session(0);
    g.bench_function("ours", |b| {
        b.iter(|| black_box(s.set_mem_table(&mem).expect("SET_MEM_TABLE")));
    });
    drop(s);
    backend.join();

    let peer = Peer::start();
    peer.need_reply(true);
    g.bench_function("peer", |b| b.iter(|| peer.set_mem_table(&mem)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = round_trip, one_way, set_mem_table
}
criterion_main!(benches);
