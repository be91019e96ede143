//! The wire codec alone (issue 7), no I/O: encode (header + payload bytes) and decode + validate
//! (header, payload layout, syntax rules) of small messages and of SET_MEM_TABLE with 8 regions.

// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vhu_protocol::wire::payload::{Body, MemRegion, VringAddr, VringState};
use vhu_protocol::wire::{HEADER_SIZE, Header};
use vhu_protocol::{FrontendReq, Violation};

/// Header and payload as they go on the wire.
fn encode(req: FrontendReq, body: &Body) -> Vec<u8> {
    let payload = body.encode();
    let header = Header::request(req as u32, payload.len() as u32, true);
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&payload);
    out
}

/// What a receiver does with the bytes: header, code, payload layout, syntax rules.
fn decode(bytes: &[u8]) -> Result<Body, Violation> {
    let (head, payload) = bytes.split_at(HEADER_SIZE);
    let header = Header::from_bytes(head.try_into().expect("12 bytes"));
    header.validate()?;
    let req = FrontendReq::from_code(header.request).expect("known code");
    let body = Body::decode(req.request_body(), payload)?;
    body.validate()?;
    Ok(body)
}

fn messages() -> Vec<(&'static str, FrontendReq, Body)> {
    let regions = (0..8u64)
        .map(|i| MemRegion {
            guest_addr: i << 21,
            size: 1 << 20,
            user_addr: 0x7f00_0000_0000 + (i << 21),
            mmap_offset: 0,
        })
        .collect();
    vec![
        ("get_features", FrontendReq::GetFeatures, Body::Empty),
        ("set_features", FrontendReq::SetFeatures, Body::U64(1 << 32)),
        (
            "set_vring_num",
            FrontendReq::SetVringNum,
            Body::VringState(VringState { index: 0, num: 256 }),
        ),
        (
            "set_vring_addr",
            FrontendReq::SetVringAddr,
            Body::VringAddr(VringAddr {
                index: 0,
                flags: 0,
                desc: 0x7f00_0000_0000,
                used: 0x7f00_0000_2000,
                avail: 0x7f00_0000_1000,
                log: 0,
            }),
        ),
        (
            "set_mem_table_8",
            FrontendReq::SetMemTable,
            Body::MemTable(regions),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for (name, req, body) in messages() {
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| encode(black_box(req), black_box(&body)));
        });
        let bytes = encode(req, &body);
        assert_eq!(decode(&bytes).as_ref(), Ok(&body));
        g.bench_function(format!("decode_validate_{name}"), |b| {
            b.iter(|| decode(black_box(&bytes)));
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion::Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
        .configure_from_args();
    targets = codec
}
criterion_main!(benches);
