//! proptest strategies for fuzz cases. Boundary values come first in every `prop_oneof!`, so
//! proptest's shrinking walks a failing case towards zeros, exact sizes, no fds and the earliest
//! stage: the minimal case reads as "this one field does it".

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use vhu_mock_frontend::memory::USER_ADDR_OFFSET;
use vhu_protocol::FrontendReq;
use vhu_protocol::wire::payload::BodyKind;

use super::case::{Addr, Case, ChainCase, Desc, FdKind, Input, Len, MessageCase, Stage, to_hex};

/// Codes outside the defined front-end range (R-ROB-01, R-ROB-02).
pub const UNKNOWN_CODES: &[u32] = &[0, 46, 47, 100, 1000, 0x7fff_ffff, u32::MAX];

/// Which inputs a run generates (`--message`).
#[derive(Clone, Debug)]
pub struct Selection {
    /// Request codes to fuzz; empty with `chains` only: no messages.
    pub codes: Vec<u32>,
    /// Whether descriptor-chain cases are generated.
    pub chains: bool,
    /// Whether lying-count cases are generated ([`lying_count`]).
    pub counts: bool,
}

impl Selection {
    /// Every front-end code, unknown codes and descriptor chains.
    pub fn all() -> Self {
        let mut codes: Vec<u32> = FrontendReq::all().map(|r| r as u32).collect();
        codes.extend_from_slice(UNKNOWN_CODES);
        Self {
            codes,
            chains: true,
            counts: true,
        }
    }

    /// From `--message` names: spec or CamelCase names, codes, `unknown` (codes past the last
    /// defined one, and 0), `chain` (descriptor chains) and `counts` (payloads whose count
    /// fields lie).
    pub fn from_names(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(Self::all());
        }
        let mut sel = Self {
            codes: vec![],
            chains: false,
            counts: false,
        };
        for n in names {
            match n.to_ascii_lowercase().as_str() {
                "chain" | "chains" => sel.chains = true,
                "count" | "counts" => sel.counts = true,
                "unknown" => sel.codes.extend_from_slice(UNKNOWN_CODES),
                _ => {
                    let name = match n.parse::<u32>() {
                        Ok(c) => crate::scenario::model::RequestName::Code(c),
                        Err(_) => crate::scenario::model::RequestName::Name(n.clone()),
                    };
                    sel.codes.push(name.resolve()? as u32);
                }
            }
        }
        Ok(sel)
    }
}

/// A whole case: a message in any stage, descriptor chains on a running ring, or a message
/// whose counts lie.
pub fn case(sel: &Selection) -> BoxedStrategy<Case> {
    let mut kinds: Vec<(u32, BoxedStrategy<Case>)> = vec![];
    if !sel.codes.is_empty() {
        let messages = (stage(), message(sel.codes.clone())).prop_map(|(stage, m)| Case {
            stage,
            input: Input::Message(m),
        });
        kinds.push((4, messages.boxed()));
    }
    if sel.chains {
        let chains = chain().prop_map(|c| Case {
            stage: Stage::Rings,
            input: Input::Chain(c),
        });
        kinds.push((1, chains.boxed()));
    }
    if sel.counts {
        kinds.push((1, lying_count()));
    }
    match kinds.len() {
        0 => case(&Selection::all()),
        1 => kinds.remove(0).1,
        _ => proptest::strategy::Union::new_weighted(kinds).boxed(),
    }
}

/// The stage of a message case. A process that served nothing is rare (each such case starts
/// one) and comes first, so a failure shrinks towards the case that needs no history.
fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        1 => Just(Stage::NewProcess),
        12 => Just(Stage::Fresh),
        12 => Just(Stage::Negotiated),
        12 => Just(Stage::Memory),
        12 => Just(Stage::Rings),
    ]
}

/// A message: code, flags, payload shaped by the code's layout, a size that may lie, fds.
pub fn message(codes: Vec<u32>) -> BoxedStrategy<MessageCase> {
    let flags = prop_oneof![
        4 => Just(1u32),
        3 => Just(9u32),
        // Version 0, 2 and 3, the REPLY bit, reserved bits (R-WIRE-13, R-WIRE-14, R-ROB-03).
        2 => select(vec![0u32, 2, 3, 5, 0xd, 0x11, 0x109, 0x8000_0001, u32::MAX]),
    ];
    let fds = prop_oneof![6 => Just(0usize), 2 => Just(1usize), 1 => 2usize..=9];
    let kind = prop_oneof![
        3 => Just(FdKind::Eventfd),
        2 => Just(FdKind::Memfd),
        1 => Just(FdKind::Pipe),
        1 => Just(FdKind::Socket),
        1 => Just(FdKind::Null),
    ];
    (select(codes), flags, fds, kind)
        .prop_flat_map(|(code, flags, fds, fd_kind)| {
            (payload(code), size_lie()).prop_map(move |(p, lie)| MessageCase {
                code,
                flags,
                size: lie.apply(p.len()),
                payload_hex: to_hex(&p),
                fds,
                fd_kind,
            })
        })
        .boxed()
}

/// How the header's size field departs from the payload.
#[derive(Clone, Copy, Debug)]
enum SizeLie {
    Exact,
    More(u32),
    Less(u32),
    Absolute(u32),
}

impl SizeLie {
    fn apply(self, len: usize) -> Option<u32> {
        let len = len as u32;
        let size = match self {
            Self::Exact => len,
            Self::More(k) => len.saturating_add(k),
            Self::Less(k) => len.saturating_sub(k),
            Self::Absolute(v) => v,
        };
        (size != len).then_some(size)
    }
}

fn size_lie() -> impl Strategy<Value = SizeLie> {
    prop_oneof![
        10 => Just(SizeLie::Exact),
        1 => (1u32..=16).prop_map(SizeLie::More),
        1 => (1u32..=8).prop_map(SizeLie::Less),
        1 => select(vec![0u32, 0x1000, 0x1001, 0x10000, u32::MAX]).prop_map(SizeLie::Absolute),
    ]
}

/// A payload for `code`: its layout with boundary values, the layout cut or padded, or bytes.
fn payload(code: u32) -> BoxedStrategy<Vec<u8>> {
    let Ok(req) = FrontendReq::from_code(code) else {
        return bytes(32);
    };
    let shaped = layout(req.request_body());
    let resized = (layout(req.request_body()), -8i32..=8).prop_map(|(mut p, d)| {
        let n = (p.len() as i32 + d).max(0) as usize;
        p.resize(n, 0);
        p
    });
    prop_oneof![6 => shaped, 1 => resized, 1 => bytes(48)].boxed()
}

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..=max).boxed()
}

/// Fields of a layout, in order, each with boundary values (see [`fields`]).
fn layout(kind: BodyKind) -> BoxedStrategy<Vec<u8>> {
    match kind {
        BodyKind::Empty => Just(vec![]).boxed(),
        BodyKind::U64 => fields(&[8]),
        BodyKind::VringState | BodyKind::DeviceState => fields(&[4, 4]),
        BodyKind::VringAddr => fields(&[4, 4, 8, 8, 8, 8]),
        BodyKind::SingleRegion => fields(&[8, 8, 8, 8, 8]),
        BodyKind::Log => fields(&[8, 8]),
        BodyKind::Iotlb => fields(&[8, 8, 8, 8]),
        BodyKind::Inflight => fields(&[8, 8, 2, 2, 4]),
        BodyKind::SharedObject => fields(&[8, 8]),
        BodyKind::MemTable => mem_table(),
        BodyKind::Config => (fields(&[4, 4, 4]), bytes(24))
            .prop_map(|(h, b)| [h, b].concat())
            .boxed(),
        BodyKind::VringArea | BodyKind::ShmemMap | BodyKind::ShmemConfig | BodyKind::Opaque => {
            bytes(48)
        }
    }
}

/// SET_MEM_TABLE: a region count that may disagree with the regions that follow (0 to 9: one
/// past the limit of 8), each region with overflowing address and size arithmetic possible.
fn mem_table() -> BoxedStrategy<Vec<u8>> {
    let count = prop_oneof![3 => Just(None), 1 => u32_value().prop_map(Some)];
    (count, vec(fields(&[8, 8, 8, 8]), 0..=9))
        .prop_map(|(count, regions)| {
            let n = count.unwrap_or(regions.len() as u32);
            let mut p = n.to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            p.extend(regions.concat());
            p
        })
        .boxed()
}

/// Little-endian fields of the given widths (1, 2, 4 or 8 bytes).
fn fields(widths: &[u8]) -> BoxedStrategy<Vec<u8>> {
    let parts: Vec<BoxedStrategy<Vec<u8>>> = widths
        .iter()
        .map(|w| match w {
            8 => u64_value().prop_map(|v| v.to_le_bytes().to_vec()).boxed(),
            4 => u32_value().prop_map(|v| v.to_le_bytes().to_vec()).boxed(),
            2 => u16_value().prop_map(|v| v.to_le_bytes().to_vec()).boxed(),
            _ => any::<u8>().prop_map(|v| vec![v]).boxed(),
        })
        .collect();
    parts.prop_map(|p| p.concat()).boxed()
}

/// 64-bit boundary values: zero, one page, values whose sums overflow, plausible guest and
/// user addresses (so validation past the first check is reached), and anything.
fn u64_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(0x1000u64),
        Just(u64::MAX),
        Just(u64::MAX - 0xfff),
        Just(1u64 << 63),
        Just(0xffff_ffffu64),
        Just(0x1_0000_0000u64),
        (0u64..0x100_0000).prop_map(|o| USER_ADDR_OFFSET + o),
        0u64..0x100_0000,
        any::<u64>(),
    ]
}

/// 32-bit boundary values: ring indices in and out of range, the no-fd bit (8) of the
/// KICK/CALL/ERR word, queue sizes that are not powers of two or exceed 32768, and anything.
fn u32_value() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        Just(2u32),
        Just(3u32),
        Just(63u32),
        Just(200u32),
        Just(255u32),
        Just(256u32),
        Just(0x1ffu32),
        Just(0x8000u32),
        Just(0x8001u32),
        Just(0xffffu32),
        Just(0x1_0000u32),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn u16_value() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(1u16),
        Just(64u16),
        Just(0x8000u16),
        Just(u16::MAX),
        any::<u16>(),
    ]
}

/// Messages whose count fields say more than the payload holds or the protocol allows, with
/// every other field plausible, so a back-end that trusts the count goes on to use it:
/// SET_MEM_TABLE's `nregions` past the regions sent, past 8, or not the number of fds;
/// GET/SET_CONFIG's `size` past the bytes sent or past 256; the inflight description's
/// `num_queues` and `queue_size` past the limits, its area past the memfd or too small for
/// them; GET_SHMEM_CONFIG (which takes no payload) with a configuration whose `nregions` lies.
/// A quarter go first on a new process, most others after a normal setup with ring 0
/// running. A refusal or a close is the right answer; a crash, hang or leak is a finding.
pub fn lying_count() -> BoxedStrategy<Case> {
    let stage = prop_oneof![
        2 => Just(Stage::NewProcess),
        1 => Just(Stage::Fresh),
        1 => Just(Stage::Negotiated),
        1 => Just(Stage::Memory),
        3 => Just(Stage::Rings),
    ];
    let message = prop_oneof![
        3 => mem_table_lie(),
        2 => config_lie(),
        2 => inflight_lie(),
        1 => shmem_config_lie(),
    ];
    (stage, message, select(vec![9u32, 1]))
        .prop_map(|(stage, mut m, flags)| {
            m.flags = flags;
            Case {
                stage,
                input: Input::Message(m),
            }
        })
        .boxed()
}

/// A message with a payload whose size field tells the truth, and `fds` memfds.
fn counted(req: FrontendReq, payload: &[u8], fds: usize) -> MessageCase {
    MessageCase {
        code: req as u32,
        flags: 9,
        size: None,
        payload_hex: to_hex(payload),
        fds,
        fd_kind: FdKind::Memfd,
    }
}

/// SET_MEM_TABLE with `present` plausible regions (one 64 KiB memfd each, 1 MiB apart) and a
/// count that lies: `(present, nregions, fds)`.
fn mem_table_lie() -> impl Strategy<Value = MessageCase> {
    let shape = prop_oneof![
        // More regions announced than sent.
        (0usize..=8, select(vec![1u32, 2, 7, 8])).prop_map(|(p, more)| (p, p as u32 + more, p)),
        // More than the 8 slots (R-MEM-02).
        (
            0usize..=8,
            select(vec![9u32, 32, 255, 256, 0x8000_0000, u32::MAX])
        )
            .prop_map(|(p, n)| (p, n, p)),
        // As many as sent, but not one fd each (R-MEM-01).
        (1usize..=8, select(vec![0usize, 1, 7, 8]))
            .prop_filter("the fds must disagree", |(p, f)| p != f)
            .prop_map(|(p, f)| (p, p as u32, f)),
        (1usize..=7).prop_map(|p| (p, p as u32, p + 1)),
    ];
    shape.prop_map(|(present, nregions, fds)| {
        let mut p = nregions.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        for i in 0..present as u64 {
            for field in [
                i << 20,
                super::exec::MEMFD_BYTES,
                USER_ADDR_OFFSET + (i << 20),
                0,
            ] {
                p.extend_from_slice(&field.to_le_bytes());
            }
        }
        counted(FrontendReq::SetMemTable, &p, fds)
    })
}

/// How a config message's `size` lies.
#[derive(Clone, Copy, Debug)]
enum ConfigSize {
    /// This many bytes more than the payload carries.
    Past(u32),
    /// This value, whatever the payload carries.
    Value(u32),
    /// Past 256 with every byte there.
    Whole(u32),
}

/// GET_CONFIG or SET_CONFIG whose `size` says more than the bytes after the 12-byte header,
/// or more than the 256 bytes of a config space.
fn config_lie() -> impl Strategy<Value = MessageCase> {
    let lie = prop_oneof![
        select(vec![1u32, 4, 8, 200]).prop_map(ConfigSize::Past),
        select(vec![256u32, 257, 0x1000, 0xffff, 0x8000_0000, u32::MAX])
            .prop_map(ConfigSize::Value),
        select(vec![257u32, 300, 1024]).prop_map(ConfigSize::Whole),
    ];
    (
        select(vec![FrontendReq::GetConfig, FrontendReq::SetConfig]),
        select(vec![0u32, 4, 0xfc, 0x100]),
        0usize..=16,
        lie,
        select(vec![0u32, 1]),
    )
        .prop_map(|(req, offset, sent, lie, flags)| {
            let (size, sent) = match lie {
                ConfigSize::Past(k) => (sent as u32 + k, sent),
                ConfigSize::Value(v) => (v, sent.min(v as usize)),
                ConfigSize::Whole(n) => (n, n as usize),
            };
            let mut p = [offset, size, flags]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>();
            p.extend(std::iter::repeat_n(0u8, sent));
            counted(req, &p, 0)
        })
}

/// How an inflight description lies.
#[derive(Clone, Copy, Debug)]
enum InflightLie {
    /// `num_queues` past the device's queues.
    Queues(u16),
    /// `queue_size` past 32768.
    QueueSize(u16),
    /// SET_INFLIGHT_FD: the area (`mmap_offset`, `mmap_size`) past the end of the memfd.
    PastFd(u64, u64),
    /// SET_INFLIGHT_FD: an area smaller than `num_queues` rings of `queue_size` need.
    TooSmall(u64, u16),
}

/// GET_INFLIGHT_FD or SET_INFLIGHT_FD (with one 64 KiB memfd) whose counts say more than the
/// protocol allows or the area holds; the fields that do not lie are one queue of 128.
fn inflight_lie() -> impl Strategy<Value = MessageCase> {
    let lie = prop_oneof![
        select(vec![2u16, 3, 0x100, 0x8000, u16::MAX]).prop_map(InflightLie::Queues),
        select(vec![0x8001u16, 0xc000, u16::MAX]).prop_map(InflightLie::QueueSize),
        (
            select(vec![
                0u64,
                0x1000,
                super::exec::MEMFD_BYTES,
                1 << 40,
                !0xfffu64
            ]),
            select(vec![super::exec::MEMFD_BYTES + 0x1000, 1 << 32, u64::MAX])
        )
            .prop_map(|(o, s)| InflightLie::PastFd(o, s)),
        (
            select(vec![0x10u64, 0x100, 0x1000]),
            select(vec![0x1000u16, 0x8000])
        )
            .prop_map(|(s, q)| InflightLie::TooSmall(s, q)),
    ];
    (any::<bool>(), lie).prop_map(|(set, lie)| {
        let set = set || matches!(lie, InflightLie::PastFd(..) | InflightLie::TooSmall(..));
        let (size, offset, queues, queue_size) = match lie {
            InflightLie::Queues(n) => (0, 0, n, 128),
            InflightLie::QueueSize(q) => (0, 0, 1, q),
            InflightLie::PastFd(o, s) => (s, o, 1, 128),
            InflightLie::TooSmall(s, q) => (s, 0, 1, q),
        };
        let (size, req) = if set {
            // The area a back-end would need for what does not lie, unless the size lies.
            let size = if size == 0 { 16 + 16 * 128 } else { size };
            (size, FrontendReq::SetInflightFd)
        } else {
            (0, FrontendReq::GetInflightFd)
        };
        let mut p = size.to_le_bytes().to_vec();
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&queues.to_le_bytes());
        p.extend_from_slice(&queue_size.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        counted(req, &p, usize::from(set))
    })
}

/// GET_SHMEM_CONFIG, which takes no payload, carrying a configuration whose `nregions` says
/// more regions than the sizes sent or than the 256 ids.
fn shmem_config_lie() -> impl Strategy<Value = MessageCase> {
    (select(vec![1u32, 8, 256, 257, u32::MAX]), 0usize..=4).prop_map(|(nregions, sizes)| {
        let mut p = nregions.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        for k in 0..sizes as u64 {
            p.extend_from_slice(&((k + 1) << 12).to_le_bytes());
        }
        counted(FrontendReq::GetShmemConfig, &p, 0)
    })
}

/// Descriptor tables: loops and out-of-range `next` come from small `next` values with NEXT
/// set, addresses outside every region from [`Addr::Hole`], [`Addr::PastEnd`] and raw values,
/// wrapping lengths from huge [`Len::Value`]s, indirect inside indirect from [`Addr::Nested`].
pub fn chain() -> BoxedStrategy<ChainCase> {
    let head = prop_oneof![6 => 0u16..8, 1 => select(vec![63u16, 64, 65, 0x7fff, u16::MAX])];
    (
        vec(desc(), 1..=8),
        vec(desc(), 0..=6),
        vec(desc(), 0..=4),
        vec(head, 1..=3),
    )
        .prop_map(|(table, indirect, nested, heads)| ChainCase {
            table,
            indirect,
            nested,
            heads,
        })
        .boxed()
}

fn desc() -> impl Strategy<Value = Desc> {
    let addr = prop_oneof![
        4 => (0u8..4).prop_map(Addr::Buffer),
        1 => Just(Addr::Indirect),
        1 => Just(Addr::Nested),
        1 => Just(Addr::Hole),
        1 => Just(Addr::PastEnd),
        1 => u64_value().prop_map(Addr::Raw),
    ];
    let len = prop_oneof![
        4 => Just(Len::Exact),
        1 => select(vec![0u32, 1, 15, 17, 0x1001, 0x8000_0000, u32::MAX]).prop_map(Len::Value),
        1 => any::<u32>().prop_map(Len::Value),
    ];
    // NEXT, WRITE and INDIRECT in every combination, sometimes undefined bits too.
    let flags = prop_oneof![6 => 0u16..8, 1 => any::<u16>()];
    let next = prop_oneof![6 => 0u16..8, 1 => select(vec![63u16, 64, 65, u16::MAX])];
    (addr, len, flags, next).prop_map(|(addr, len, flags, next)| Desc {
        addr,
        len,
        flags,
        next,
    })
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    #[test]
    fn names_select_codes_chains_and_unknown_codes() {
        let s = Selection::from_names(&["SET_VRING_NUM".into(), "chain".into()]).unwrap();
        assert_eq!(s.codes, vec![FrontendReq::SetVringNum as u32]);
        assert!(s.chains);
        let s = Selection::from_names(&["unknown".into(), "SetOwner".into()]).unwrap();
        assert!(!s.chains && s.codes.contains(&46) && s.codes.contains(&3));
        assert!(Selection::from_names(&["TELEPORT".into()]).is_err());
    }

    #[test]
    fn every_lying_count_case_lies_and_all_kinds_come_early_and_late() {
        use crate::fuzz::oracle::{Failure, FailureKind};
        use crate::rules::id;
        let mut runner = TestRunner::deterministic();
        let strategy = lying_count();
        let crash = Failure::new(FailureKind::Crash, "killed by signal 6");
        let mut codes = std::collections::BTreeSet::new();
        let mut stages = std::collections::BTreeSet::new();
        let mut rules = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let c = strategy.new_tree(&mut runner).unwrap().current();
            let Input::Message(m) = &c.input else {
                panic!("a lying count is a message: {c}");
            };
            assert!(m.framed(), "the size field tells the truth: {c}");
            // One queue: what the reference blk device has.
            let rule = crate::fuzz::save::rule_for(&c, &crash, Some(1));
            assert!(
                [
                    id::R_MEM_01,
                    id::R_MEM_02,
                    id::R_WIRE_12,
                    id::R_CFG_07,
                    id::R_INFL_01,
                    id::R_INFL_03
                ]
                .contains(&rule),
                "{c} cites {}",
                rule.as_str()
            );
            codes.insert(m.code);
            stages.insert(c.stage);
            rules.insert(rule);
        }
        for r in [
            FrontendReq::SetMemTable,
            FrontendReq::GetConfig,
            FrontendReq::SetConfig,
            FrontendReq::GetInflightFd,
            FrontendReq::SetInflightFd,
            FrontendReq::GetShmemConfig,
        ] {
            assert!(codes.contains(&(r as u32)), "{r:?} never lies");
        }
        assert!(stages.contains(&Stage::NewProcess) && stages.contains(&Stage::Rings));
        assert_eq!(
            rules.len(),
            6,
            "{:?}",
            rules.iter().map(|r| r.as_str()).collect::<Vec<_>>()
        );
        let all = case(&Selection::all());
        assert!((0..500).any(|_| {
            let c = all.new_tree(&mut runner).unwrap().current();
            matches!(&c.input, Input::Message(m) if m.code == FrontendReq::SetInflightFd as u32)
                && c.stage == Stage::NewProcess
        }));
    }

    #[test]
    fn generated_cases_cover_stages_lies_fds_and_chains() {
        let mut runner = TestRunner::deterministic();
        let strategy = case(&Selection::all());
        let cases: Vec<Case> = (0..2000)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect();
        let msgs = || {
            cases.iter().filter_map(|c| match &c.input {
                Input::Message(m) => Some((c.stage, m)),
                Input::Chain(_) => None,
            })
        };
        assert!(msgs().any(|(_, m)| !m.framed()));
        assert!(msgs().any(|(_, m)| m.fds > 1));
        assert!(msgs().any(|(_, m)| UNKNOWN_CODES.contains(&m.code)));
        assert!(msgs().any(|(s, _)| s == Stage::Fresh));
        assert!(msgs().any(|(s, _)| s == Stage::NewProcess));
        assert!(msgs().any(|(s, _)| s == Stage::Rings));
        assert!(cases.iter().any(|c| matches!(c.input, Input::Chain(_))));
    }
}
