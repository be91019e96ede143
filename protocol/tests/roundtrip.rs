//! Property tests of the codec: encode then decode is the identity for every message type, and
//! decoding arbitrary bytes never panics nor allocates past the bound.

use proptest::prelude::*;
use vhu_protocol::wire::payload::*;
use vhu_protocol::{BackendReq, FrontendReq, Header};

fn region() -> impl Strategy<Value = MemRegion> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(g, s, u, o)| MemRegion {
        guest_addr: g,
        size: s,
        user_addr: u,
        mmap_offset: o,
    })
}

/// A body of the given kind with arbitrary field values.
fn body(kind: BodyKind) -> BoxedStrategy<Body> {
    match kind {
        BodyKind::Empty => Just(Body::Empty).boxed(),
        BodyKind::U64 => any::<u64>().prop_map(Body::U64).boxed(),
        BodyKind::VringState => (any::<u32>(), any::<u32>())
            .prop_map(|(index, num)| Body::VringState(VringState { index, num }))
            .boxed(),
        BodyKind::VringAddr => any::<[u64; 5]>()
            .prop_map(|v| {
                Body::VringAddr(VringAddr {
                    index: v[0] as u32,
                    flags: (v[0] >> 32) as u32,
                    desc: v[1],
                    used: v[2],
                    avail: v[3],
                    log: v[4],
                })
            })
            .boxed(),
        BodyKind::MemTable => proptest::collection::vec(region(), 0..=8)
            .prop_map(Body::MemTable)
            .boxed(),
        BodyKind::SingleRegion => region().prop_map(Body::SingleRegion).boxed(),
        BodyKind::Log => (any::<u64>(), any::<u64>())
            .prop_map(|(size, offset)| Body::Log(LogDesc { size, offset }))
            .boxed(),
        BodyKind::Iotlb => (any::<[u64; 3]>(), any::<u8>(), any::<u8>())
            .prop_map(|(v, perm, kind)| {
                Body::Iotlb(IotlbMsg {
                    iova: v[0],
                    size: v[1],
                    uaddr: v[2],
                    perm,
                    kind,
                    padding: [0; 6],
                })
            })
            .boxed(),
        BodyKind::Config => (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(offset, flags, data)| {
                Body::Config(
                    ConfigHeader {
                        offset,
                        size: data.len() as u32,
                        flags,
                    },
                    data,
                )
            })
            .boxed(),
        BodyKind::VringArea => any::<[u64; 3]>()
            .prop_map(|v| {
                Body::VringArea(VringArea {
                    u64_: v[0],
                    size: v[1],
                    offset: v[2],
                })
            })
            .boxed(),
        BodyKind::Inflight => (any::<u64>(), any::<u64>(), any::<u16>(), any::<u16>())
            .prop_map(|(mmap_size, mmap_offset, num_queues, queue_size)| {
                Body::Inflight(InflightDesc {
                    mmap_size,
                    mmap_offset,
                    num_queues,
                    queue_size,
                    padding: 0,
                })
            })
            .boxed(),
        BodyKind::SharedObject => any::<[u8; 16]>()
            .prop_map(|uuid| Body::SharedObject(SharedObject { uuid }))
            .boxed(),
        BodyKind::DeviceState => (any::<u32>(), any::<u32>())
            .prop_map(|(direction, phase)| {
                Body::DeviceState(DeviceStateParams { direction, phase })
            })
            .boxed(),
        BodyKind::ShmemMap => (any::<u8>(), any::<[u64; 4]>())
            .prop_map(|(shmid, v)| {
                Body::ShmemMap(ShmemMapMsg {
                    shmid,
                    padding: [0; 7],
                    fd_offset: v[0],
                    shm_offset: v[1],
                    len: v[2],
                    flags: v[3],
                })
            })
            .boxed(),
        BodyKind::ShmemConfig => (any::<u32>(), proptest::collection::vec(any::<u64>(), 256))
            .prop_map(|(nregions, sizes)| {
                let mut c = ShmemConfig {
                    nregions,
                    ..Default::default()
                };
                c.sizes.copy_from_slice(&sizes);
                Body::ShmemConfig(Box::new(c))
            })
            .boxed(),
        BodyKind::Opaque => proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(Body::Opaque)
            .boxed(),
    }
}

/// Every request and reply layout of both directions.
fn every_kind() -> Vec<(String, BodyKind)> {
    let mut kinds: Vec<(String, BodyKind)> = FrontendReq::all()
        .flat_map(|r| {
            [
                (format!("{r:?} request"), r.request_body()),
                (format!("{r:?} reply"), r.reply_body()),
            ]
        })
        .collect();
    kinds.extend(BackendReq::all().map(|r| (format!("backend {r:?}"), r.request_body())));
    kinds
}

fn message() -> impl Strategy<Value = (String, BodyKind, Body)> {
    proptest::sample::select(every_kind())
        .prop_flat_map(|(name, kind)| body(kind).prop_map(move |b| (name.clone(), kind, b)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_the_identity_for_every_message_type((name, kind, b) in message()) {
        let bytes = b.encode();
        if let Some(size) = kind.fixed_size() {
            prop_assert_eq!(bytes.len(), size, "{}", name);
        }
        let decoded = Body::decode(kind, &bytes).map_err(|v| TestCaseError::fail(format!("{name}: {v}")))?;
        prop_assert_eq!(decoded, b, "{}", name);
    }

    #[test]
    fn headers_round_trip_with_any_field_values(request in any::<u32>(), flags in any::<u32>(), size in any::<u32>()) {
        let h = Header { request, flags, size };
        prop_assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(kind_ix in 0usize..64, bytes in proptest::collection::vec(any::<u8>(), 0..4200)) {
        let kinds = every_kind();
        let (_, kind) = kinds[kind_ix % kinds.len()];
        if let Ok(b) = Body::decode(kind, &bytes) {
            let _ = b.validate();
            // What decodes re-encodes to the same bytes: nothing is invented or lost.
            prop_assert_eq!(b.encode(), bytes);
        }
    }
}
