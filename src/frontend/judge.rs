//! The passive checks: every message a front-end sends is judged against the front-end rules
//! of the checklist (and the `R-FE-*` rules spec/rules.toml adds for duties it has no number
//! for). The judge sees each message before the judging back-end acts on it and each answer
//! the back-end gave; it never changes what the back-end does.

use std::collections::{BTreeMap, BTreeSet};

use vhu_protocol::wire::payload::{
    Body, BodyKind, InflightDesc, MemRegion, VRING_NOFD_MASK, VringAddr,
};
use vhu_protocol::{FrontendReq, Message, ProtocolFeatures, VirtioFeatures};

use crate::engine::Finding;
use crate::rules::{RuleId, id};
use crate::scenario::Level;

use super::backend::Profile;

mod channel;
mod features;

/// What the front-end told us about one ring so far.
#[derive(Clone, Debug, Default)]
struct RingSeen {
    num: Option<u32>,
    base: bool,
    addr: Option<VringAddr>,
    /// SET_VRING_KICK came and no GET_VRING_BASE since: the ring runs (R-MIG-03).
    started: bool,
    /// It started with a kick eventfd (not bit 8, polling).
    kick_fd: bool,
    /// That eventfd was signalled since the ring started (R-RING-05).
    kicked: bool,
}

/// Where a postcopy sequence stands on this connection (R-PC-01: ADVISE, LISTEN, END).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum Postcopy {
    #[default]
    Before,
    Advised,
    Listening,
}

/// An inflight buffer the judging back-end handed out (GET_INFLIGHT_FD): its description and
/// the file behind its fd (device and inode), which is what "the same buffer" means.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InflightGiven {
    /// The description the reply carried.
    pub desc: InflightDesc,
    /// `(st_dev, st_ino)` of the memfd.
    pub file: (u64, u64),
}

/// The file an fd refers to, as `(st_dev, st_ino)`.
pub fn file_id(fd: &impl std::os::fd::AsFd) -> Option<(u64, u64)> {
    nix::sys::stat::fstat(fd)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// The rules the passive checks can cite: every front-end run cites them all, and each is
/// `pass` only where its check got to run (`checked_rules`).
pub const PASSIVE_RULES: &[RuleId] = &[
    id::R_WIRE_03,
    id::R_WIRE_06,
    id::R_NEG_04,
    id::R_NEG_09,
    id::R_NEG_13,
    id::R_NEG_14,
    id::R_INB_01,
    id::R_RST_02,
    id::R_MIG_01,
    id::R_IOTLB_01,
    id::R_VRING_01,
    id::R_VRING_08,
    id::R_MEM_02,
    id::R_MEM_04,
    id::R_MEM_13,
    id::R_MQ_02,
    id::R_FE_01,
    id::R_FE_02,
    id::R_FE_04,
    id::R_FE_05,
    id::R_FE_06,
    id::R_LOG_01,
    id::R_RING_05,
    id::R_MEM_18,
    id::R_MIG_03,
    id::R_PC_01,
    id::R_INB_05,
    id::R_SHM_01,
];

/// The judge of one front-end run (all its connections).
#[derive(Debug)]
pub struct Judge {
    profile: Profile,
    level: Level,
    /// Per connection.
    acked_features: Option<u64>,
    acked_protocol: Option<u64>,
    owner: bool,
    table: Vec<MemRegion>,
    rings: BTreeMap<u32, RingSeen>,
    /// A memory table the back-end refused and nothing acked since (R-FE-06).
    table_refused: bool,
    /// Departures: the first per rule, with how many more followed.
    findings: Vec<(Finding, usize)>,
    checked: BTreeSet<RuleId>,
    /// Messages judged.
    pub messages: usize,
    /// SET_OWNER or SET_FEATURES came on this connection: the front-end went on past the
    /// offer (R-NEG-17).
    negotiated: bool,
    /// The postcopy sequence on this connection (R-PC-01).
    postcopy: Postcopy,
    /// The inflight buffer handed out last (any connection).
    inflight: Option<InflightGiven>,
    /// The buffer in use when an earlier connection whose rings ran ended: the one a
    /// reconnecting front-end must give back before its rings start (R-INFL-03).
    inflight_due: Option<InflightGiven>,
    /// SET_INFLIGHT_FD gave [`inflight_due`](Self::inflight_due) back on this connection.
    inflight_returned: bool,
    /// A ring started on this connection.
    ring_ran: bool,
    /// IOTLB updates (iova, size) the front-end sent, in order (R-IOTLB-04).
    iotlb_updates: Vec<(u64, u64)>,
}

/// A one-line description of a message for a finding's "sent".
pub fn describe(m: &Message) -> String {
    let name = FrontendReq::from_code(m.header.request).map_or_else(
        |_| format!("unknown {}", m.header.request),
        |r| r.spec_name().into(),
    );
    let body = FrontendReq::from_code(m.header.request)
        .ok()
        .and_then(|r| Body::decode(r.request_body(), &m.payload).ok())
        .map_or_else(
            || format!("{} bytes", m.payload.len()),
            |b| format!("{b:?}"),
        );
    format!(
        "{name} flags {:#x} size {} fds {}: {body}",
        m.header.flags,
        m.header.size,
        m.fds.len()
    )
}

fn overlaps(a: &MemRegion, b: &MemRegion) -> Option<&'static str> {
    let meet = |s1: u64, s2: u64, n1: u64, n2: u64| {
        s1 < s2.saturating_add(n2) && s2 < s1.saturating_add(n1)
    };
    if meet(a.guest_addr, b.guest_addr, a.size, b.size) {
        Some("guest")
    } else if meet(a.user_addr, b.user_addr, a.size, b.size) {
        Some("user")
    } else {
        None
    }
}

impl Judge {
    /// A judge for a run against a back-end with this offer; findings weigh at most `level`.
    pub fn new(profile: Profile, level: Level) -> Self {
        Self {
            profile,
            level,
            acked_features: None,
            acked_protocol: None,
            owner: false,
            table: Vec::new(),
            rings: BTreeMap::new(),
            table_refused: false,
            findings: Vec::new(),
            checked: BTreeSet::new(),
            messages: 0,
            negotiated: false,
            postcopy: Postcopy::Before,
            inflight: None,
            inflight_due: None,
            inflight_returned: false,
            ring_ran: false,
            iotlb_updates: Vec::new(),
        }
    }

    /// A new connection: negotiation state starts over (SET_OWNER is due again, R-NEG-09).
    pub fn new_connection(&mut self) {
        self.acked_features = None;
        self.acked_protocol = None;
        self.owner = false;
        self.table.clear();
        self.rings.clear();
        self.table_refused = false;
        self.negotiated = false;
        self.postcopy = Postcopy::Before;
        self.inflight_returned = false;
        self.ring_ran = false;
    }

    /// A connection ended (`by_frontend`: the front-end closed it). Where MQ was not offered, a
    /// front-end that hangs up before it takes the device on (SET_OWNER or SET_FEATURES)
    /// depends on MQ (R-NEG-17); one that got that far did not (QEMU without a guest never
    /// sends SET_FEATURES for net or fs, so SET_OWNER counts). Where the judging back-end or
    /// the deadline ended it first, nothing is judged.
    pub fn connection_ended(&mut self, by_frontend: bool, by_us: bool) {
        // A ring still running when the front-end left (or the run ended) never got its kick;
        // where the judging back-end hung up it had no chance to (R-RING-05).
        if !by_us {
            let idle: Vec<u32> = self
                .rings
                .iter()
                .filter(|(_, r)| r.started && r.kick_fd)
                .map(|(i, _)| *i)
                .collect();
            for i in idle {
                self.judge_kicked(i);
            }
        }
        if self.ring_ran && self.inflight.is_some() {
            self.inflight_due = self.inflight;
        }
        if self.profile.protocol & ProtocolFeatures::MQ.bits() != 0 {
            return;
        }
        if self.negotiated {
            self.checked.insert(id::R_NEG_17);
        } else if by_frontend {
            self.check_raw(
                id::R_NEG_17,
                Level::Must,
                false,
                || "the offer without MQ (protocol bit 0)".into(),
                || "the front-end hung up before SET_OWNER and SET_FEATURES when MQ was not offered".into(),
                "a device with a fixed queue count set up without MQ",
            );
        }
    }

    fn has_protocol(&self, f: ProtocolFeatures) -> bool {
        self.acked_protocol.is_some_and(|p| p & f.bits() != 0)
    }

    /// Records that a check of `rule` ran; when `ok` is false, a finding.
    fn check(
        &mut self,
        rule: RuleId,
        ok: bool,
        m: &Message,
        summary: impl FnOnce() -> String,
        expected: &str,
    ) {
        self.check_capped(rule, Level::Must, ok, m, summary, expected);
    }

    /// As [`check`](Self::check), weighing at most `cap` where the spec's word for this one
    /// case is weaker than the rule's (a "should", or an ambiguous passage).
    fn check_capped(
        &mut self,
        rule: RuleId,
        cap: Level,
        ok: bool,
        m: &Message,
        summary: impl FnOnce() -> String,
        expected: &str,
    ) {
        self.check_raw(rule, cap, ok, || describe(m), summary, expected);
    }

    /// The core of every check: `sent` describes what the finding is about (a message, or a
    /// request the judging back-end sent on the channel).
    fn check_raw(
        &mut self,
        rule: RuleId,
        cap: Level,
        ok: bool,
        sent: impl FnOnce() -> String,
        summary: impl FnOnce() -> String,
        expected: &str,
    ) {
        self.checked.insert(rule);
        if ok {
            return;
        }
        if let Some((_, more)) = self.findings.iter_mut().find(|(f, _)| f.rule == rule) {
            *more += 1;
            return;
        }
        let level = self.level.min(rule.level().finding_cap()).min(cap);
        let received = format!(
            "the judging back-end offered features {:#x}, protocol features {:#x}, {} queues, {} memory slots",
            self.profile.features,
            self.profile.protocol,
            self.profile.queue_num,
            self.profile.max_mem_slots
        );
        self.findings.push((
            Finding {
                rule,
                level,
                summary: summary(),
                sent: sent(),
                received,
                expected: expected.into(),
                crash: None,
            },
            0,
        ));
    }

    /// Adds a finding that is not about one message (a crash of the front-end process).
    pub fn push_finding(&mut self, f: Finding) {
        self.checked.insert(f.rule);
        self.findings.push((f, 0));
    }

    /// Marks a rule checked without a message (a process-level check that held).
    pub fn mark_checked(&mut self, rule: RuleId) {
        self.checked.insert(rule);
    }

    /// The findings, each saying how many more times the same rule was broken.
    pub fn findings(&self) -> Vec<Finding> {
        self.findings
            .iter()
            .map(|(f, more)| {
                let mut f = f.clone();
                if *more > 0 {
                    f.summary.push_str(&format!(" (and {more} more times)"));
                }
                f
            })
            .collect()
    }

    /// The rules whose checks ran.
    pub fn checked(&self) -> Vec<RuleId> {
        self.checked.iter().copied().collect()
    }

    /// The back-end's answer to an ack-only request: `Some(0)` accepted, `Some(n)` refused,
    /// `None` no ack asked (taken as accepted).
    pub fn answered(&mut self, req: FrontendReq, ack: Option<u64>) {
        if matches!(req, FrontendReq::SetMemTable | FrontendReq::AddMemReg) {
            self.table_refused = ack.is_some_and(|v| v != 0);
        }
    }

    /// Judges one message from the front-end, before the back-end acts on it.
    pub fn observe(&mut self, m: &Message) {
        self.messages += 1;
        let flags = m.header.flags();
        self.check(
            id::R_WIRE_03,
            flags.version() == 1,
            m,
            || format!("a request with version {}", flags.version()),
            "version bits 0-1 equal 1 in every message",
        );
        self.check(
            id::R_WIRE_06,
            !m.header.is_reply(),
            m,
            || "a request with the REPLY flag (bit 2) set".into(),
            "requests never set REPLY",
        );
        let reply_ack = self.has_protocol(ProtocolFeatures::REPLY_ACK);
        if m.header.need_reply() {
            self.check(
                id::R_WIRE_06,
                reply_ack,
                m,
                || "NEED_REPLY set while REPLY_ACK (protocol bit 3) was not negotiated".into(),
                "front-end requests set NEED_REPLY only if REPLY_ACK was negotiated",
            );
        }
        let Ok(req) = FrontendReq::from_code(m.header.request) else {
            self.check(
                id::R_FE_02,
                false,
                m,
                || format!("request code {} is not in the spec", m.header.request),
                "every request a code of the spec",
            );
            return;
        };
        self.sizes_and_fds(req, m);
        self.gates(req, m);
        let body = Body::decode(req.request_body(), &m.payload).ok();
        self.semantics(req, m, body);
    }

    fn sizes_and_fds(&mut self, req: FrontendReq, m: &Message) {
        use FrontendReq::*;
        let len = m.payload.len();
        let (size_ok, wanted) = match req.request_body() {
            BodyKind::MemTable => {
                let n = m
                    .payload
                    .get(..4)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
                let want = n.map(|n| 8 + 32 * n as usize);
                (
                    want == Some(len),
                    want.map_or("at least 8".into(), |w| w.to_string()),
                )
            }
            BodyKind::Config => {
                let n = m
                    .payload
                    .get(4..8)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
                let want = n.map(|n| 12 + n as usize);
                (
                    want == Some(len),
                    want.map_or("at least 12".into(), |w| w.to_string()),
                )
            }
            k => match k.fixed_size() {
                Some(f) => (f == len, f.to_string()),
                None => (true, String::new()),
            },
        };
        self.check(
            id::R_FE_02,
            size_ok,
            m,
            || {
                format!(
                    "{} with a {len}-byte payload, its layout has {wanted}",
                    req.spec_name()
                )
            },
            "the payload size the request's layout fixes",
        );
        let fds = m.fds.len();
        let (want_min, want_max, what) = match req {
            SetMemTable => {
                let n = m
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()) as usize);
                (n, n, "one fd per region")
            }
            SetVringKick | SetVringCall | SetVringErr => {
                let nofd = m.u64().is_some_and(|w| w & VRING_NOFD_MASK != 0);
                if nofd {
                    (0, 0, "no fd with bit 8 (invalid FD) set")
                } else {
                    (1, 1, "one fd without bit 8")
                }
            }
            RemMemReg => {
                // "No file descriptors SHOULD be passed": one is tolerated by the spec (the
                // back-end MAY accept it), so it is R-MEM-13's SHOULD, not R-FE-02's MUST.
                self.check(
                    id::R_MEM_13,
                    fds == 0,
                    m,
                    || format!("REM_MEM_REG with {fds} fds"),
                    "no fd with REM_MEM_REG",
                );
                (0, 1, "no fd (one tolerated)")
            }
            other => {
                let (lo, hi) = other.fd_range();
                (lo, hi, "the fds its layout fixes")
            }
        };
        self.check(
            id::R_FE_02,
            (want_min..=want_max).contains(&fds),
            m,
            || format!("{} with {fds} fds", req.spec_name()),
            what,
        );
    }

    fn gates(&mut self, req: FrontendReq, m: &Message) {
        use FrontendReq::*;
        let bit30_offered = self.profile.features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if matches!(req, GetProtocolFeatures | SetProtocolFeatures) {
            self.check(
                id::R_NEG_04,
                bit30_offered,
                m,
                || {
                    format!(
                        "{} although GET_FEATURES did not offer bit 30",
                        req.spec_name()
                    )
                },
                "GET/SET_PROTOCOL_FEATURES only if bit 30 was offered",
            );
        }
        if let Some(gate) = req.protocol_gate() {
            let rule = match req {
                GetQueueNum => id::R_NEG_14,
                ResetDevice => id::R_RST_02,
                SetDeviceStateFd | CheckDeviceState => id::R_MIG_01,
                PostcopyAdvise | PostcopyListen | PostcopyEnd => id::R_PC_01,
                // SHMEM is bit 22 (R-SHM-01): a front-end that acked bit 21 (GPA_ADDRESSES,
                // the bit rust-vmm up to 0.16 used for it) is caught here.
                GetShmemConfig => id::R_SHM_01,
                // The checklist's gate table (section 2) and R-NEG-14 cover every other gate.
                _ => id::R_NEG_14,
            };
            let ok = self.has_protocol(gate);
            let acked = self
                .acked_protocol
                .map_or("none".into(), |p| format!("{p:#x}"));
            self.check(
                rule,
                ok,
                m,
                || {
                    format!(
                        "{} before protocol feature {gate:?} was negotiated (acked: {acked})",
                        req.spec_name(),
                    )
                },
                "a gated request only once SET_PROTOCOL_FEATURES acked its feature",
            );
        }
        if req == SetVringEnable {
            let ok = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
            // SHOULD twice over: the spec says "should be sent only when
            // VHOST_USER_F_PROTOCOL_FEATURES has been negotiated", and "negotiated" is
            // ambiguous: a virtio feature is negotiated by SET_FEATURES, but a front-end may
            // read it as offered and protocol features set (QEMU's net start-up does).
            // The gate table gives SET_VRING_ENABLE's gate as "F_30 negotiated": R-NEG-14.
            self.check_capped(
                id::R_NEG_14,
                Level::Should,
                ok,
                m,
                || "SET_VRING_ENABLE before SET_FEATURES acked bit 30 (VHOST_USER_F_PROTOCOL_FEATURES)".into(),
                "SET_VRING_ENABLE only once VHOST_USER_F_PROTOCOL_FEATURES is negotiated (SET_FEATURES with bit 30)",
            );
        }
        if req == IotlbMsg {
            let ok = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::ACCESS_PLATFORM.bits() != 0);
            self.check(
                id::R_IOTLB_01,
                ok,
                m,
                || "IOTLB_MSG without VIRTIO_F_IOMMU_PLATFORM negotiated".into(),
                "IOTLB_MSG only with bit 33",
            );
        }
        if matches!(
            req,
            SetMemTable
                | AddMemReg
                | SetVringNum
                | SetVringAddr
                | SetVringBase
                | SetVringKick
                | SetVringCall
                | SetVringErr
        ) {
            let owner = self.owner;
            self.check(
                id::R_NEG_09,
                owner,
                m,
                || format!("{} before SET_OWNER on this connection", req.spec_name()),
                "SET_OWNER on every new connection, before memory and rings",
            );
        }
    }

    fn ring_index(&mut self, req: FrontendReq, m: &Message, index: u32) {
        let bound = self.profile.device.rings(self.profile.queue_num);
        self.check(
            id::R_MQ_02,
            u64::from(index) < bound,
            m,
            || {
                format!(
                    "{} for ring {index}; the back-end has {bound}",
                    req.spec_name()
                )
            },
            "ring indices below the number of rings GET_QUEUE_NUM reported",
        );
    }

    /// GET_MAX_MEM_SLOTS's answer where CONFIGURE_MEM_SLOTS is negotiated; `None` without
    /// it, where the 8-region bound is R-MEM-02's alone (R-FE-04 does not repeat it).
    fn slots(&self) -> Option<u64> {
        self.has_protocol(ProtocolFeatures::CONFIGURE_MEM_SLOTS)
            .then_some(self.profile.max_mem_slots)
    }

    fn semantics(&mut self, req: FrontendReq, m: &Message, body: Option<Body>) {
        use FrontendReq::*;
        match (req, body) {
            (SetFeatures, Some(Body::U64(f))) => {
                let extra = f & !self.profile.features;
                self.check(
                    id::R_FE_01,
                    extra == 0,
                    m,
                    || {
                        format!(
                            "SET_FEATURES {f:#x} sets {extra:#x}, which GET_FEATURES did not offer"
                        )
                    },
                    "only offered feature bits",
                );
                self.acked_features = Some(f);
                self.negotiated = true;
            }
            (SetProtocolFeatures, Some(Body::U64(p))) => {
                let extra = p & !self.profile.protocol;
                self.check(
                    id::R_NEG_04,
                    extra == 0,
                    m,
                    || {
                        format!(
                            "SET_PROTOCOL_FEATURES {p:#x} sets {extra:#x}, which was not offered"
                        )
                    },
                    "only offered protocol bits",
                );
                let has = |f: ProtocolFeatures| p & f.bits() != 0;
                if has(ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN) {
                    self.check(
                        id::R_NEG_13,
                        has(ProtocolFeatures::GET_VRING_BASE_INFLIGHT)
                            && has(ProtocolFeatures::INFLIGHT_SHMFD),
                        m,
                        || "GET_VRING_BASE_SKIP_DRAIN (23) without 20 and 12".into(),
                        "bit 23 only together with 20 and 12",
                    );
                }
                if has(ProtocolFeatures::INBAND_NOTIFICATIONS) {
                    self.check(
                        id::R_INB_01,
                        has(ProtocolFeatures::BACKEND_REQ) && has(ProtocolFeatures::REPLY_ACK),
                        m,
                        || "INBAND_NOTIFICATIONS (14) without BACKEND_REQ and REPLY_ACK".into(),
                        "bit 14 only with bits 5 and 3 (\"It is also considered an error\")",
                    );
                }
                self.acked_protocol = Some(p);
            }
            (SetOwner, _) => {
                self.owner = true;
                self.negotiated = true;
            }
            (SetMemTable, Some(Body::MemTable(regions))) => {
                let n = regions.len();
                self.check(
                    id::R_MEM_02,
                    n <= 8,
                    m,
                    || format!("SET_MEM_TABLE with {n} regions"),
                    "at most 8 regions on SET_MEM_TABLE",
                );
                if let Some(slots) = self.slots() {
                    self.check(
                        id::R_FE_04,
                        n as u64 <= slots,
                        m,
                        || {
                            format!(
                                "SET_MEM_TABLE with {n} regions; the back-end has {slots} slots"
                            )
                        },
                        "no more regions than GET_MAX_MEM_SLOTS answered",
                    );
                }
                let clash = regions.iter().enumerate().find_map(|(i, a)| {
                    regions[i + 1..]
                        .iter()
                        .find_map(|b| overlaps(a, b).map(|w| (*a, *b, w)))
                });
                self.check(
                    id::R_MEM_04,
                    clash.is_none(),
                    m,
                    || {
                        let (a, b, w) = clash.unwrap_or_default_pair();
                        format!("regions {a:x?} and {b:x?} overlap in {w} space")
                    },
                    "regions never overlap in guest nor in user space",
                );
                self.table = regions;
            }
            (AddMemReg, Some(Body::SingleRegion(r))) => {
                let clash = self
                    .table
                    .iter()
                    .find_map(|b| overlaps(&r, b).map(|w| (*b, w)));
                self.check(
                    id::R_MEM_04,
                    clash.is_none(),
                    m,
                    || {
                        let (b, w) = clash.unwrap_or((MemRegion::default(), ""));
                        format!("ADD_MEM_REG {r:x?} overlaps {b:x?} in {w} space")
                    },
                    "regions never overlap in guest nor in user space; to change one, remove it first",
                );
                // ADD_MEM_REG without CONFIGURE_MEM_SLOTS is R-NEG-14's (the gate).
                if let Some(slots) = self.slots() {
                    let n = self.table.len() as u64 + 1;
                    self.check(
                        id::R_FE_04,
                        n <= slots,
                        m,
                        || {
                            format!(
                                "ADD_MEM_REG makes {n} regions; GET_MAX_MEM_SLOTS answered {slots}"
                            )
                        },
                        "no more regions than GET_MAX_MEM_SLOTS answered",
                    );
                }
                self.table.push(r);
            }
            (RemMemReg, Some(Body::SingleRegion(r))) => {
                self.table.retain(|t| {
                    !(t.guest_addr == r.guest_addr
                        && t.user_addr == r.user_addr
                        && t.size == r.size)
                });
            }
            (SetVringNum, Some(Body::VringState(s))) => {
                self.ring_index(req, m, s.index);
                self.rings.entry(s.index).or_default().num = Some(s.num);
            }
            (SetVringBase, Some(Body::VringState(s))) => {
                self.ring_index(req, m, s.index);
                self.rings.entry(s.index).or_default().base = true;
            }
            (SetVringAddr, Some(Body::VringAddr(a))) => {
                self.ring_index(req, m, a.index);
                // Ring logging is switched on by VHOST_VRING_F_LOG only together with
                // VHOST_F_LOG_ALL in the features (R-LOG-01).
                if a.flags & 1 != 0 {
                    let log_all = self
                        .acked_features
                        .is_some_and(|f| f & VirtioFeatures::LOG_ALL.bits() != 0);
                    self.check(
                        id::R_LOG_01,
                        log_all,
                        m,
                        || format!("SET_VRING_ADDR for ring {} with VHOST_VRING_F_LOG while VHOST_F_LOG_ALL (bit 26) is not set", a.index),
                        "VHOST_VRING_F_LOG only while SET_FEATURES has VHOST_F_LOG_ALL",
                    );
                }
                self.rings.entry(a.index).or_default().addr = Some(a);
            }
            (SetVringEnable, Some(Body::VringState(s))) => self.ring_index(req, m, s.index),
            (GetVringBase | GetVringBaseSkipDrain, Some(Body::VringState(s))) => {
                self.ring_index(req, m, s.index);
                self.judge_kicked(s.index);
                if let Some(r) = self.rings.get_mut(&s.index) {
                    r.started = false;
                }
                self.check(
                    id::R_VRING_08,
                    s.num == 0,
                    m,
                    || format!("GET_VRING_BASE with num {}", s.num),
                    "num 0 in GET_VRING_BASE's request",
                );
            }
            (SetVringCall | SetVringErr, Some(Body::U64(w))) => {
                self.ring_index(req, m, (w & 0xff) as u32);
            }
            (SetVringKick, Some(Body::U64(w))) => {
                let index = (w & 0xff) as u32;
                self.ring_index(req, m, index);
                self.inflight_before_start(m, index);
                self.ring_start(m, index);
                let r = self.rings.entry(index).or_default();
                r.started = true;
                r.kick_fd = w & VRING_NOFD_MASK == 0 && !m.fds.is_empty();
                r.kicked = false;
                self.ring_ran = true;
            }
            (SetInflightFd, Some(Body::Inflight(d))) => self.inflight_back(m, d),
            (SetDeviceStateFd, _) => self.state_transfer(m),
            (PostcopyAdvise | PostcopyListen | PostcopyEnd, _) => self.postcopy_order(req, m),
            (VringKick, _) => {
                // "The front-end is expected to ask for a reply" (spec VHOST_USER_VRING_KICK):
                // the kick then completes synchronously, as a simulation needs.
                let asked =
                    m.header.need_reply() || !self.has_protocol(ProtocolFeatures::REPLY_ACK);
                self.check_capped(
                    id::R_INB_05,
                    Level::Should,
                    asked,
                    m,
                    || "VRING_KICK without NEED_REPLY while REPLY_ACK is negotiated".into(),
                    "NEED_REPLY on every VRING_KICK",
                );
            }
            (IotlbMsg, Some(Body::Iotlb(t))) if t.kind == 2 => {
                self.iotlb_updates.push((t.iova, t.size));
            }
            _ => {}
        }
        if matches!(req, SetMemTable | AddMemReg) {
            self.gpa_regions(req, m, body_regions(req, m));
        }
    }

    /// SET_VRING_KICK starts the ring: it must be fully described and inside the memory table.
    fn ring_start(&mut self, m: &Message, index: u32) {
        let seen = self.rings.get(&index).cloned().unwrap_or_default();
        let missing: Vec<&str> = [
            ("SET_VRING_NUM", seen.num.is_none()),
            ("SET_VRING_BASE", !seen.base),
            ("SET_VRING_ADDR", seen.addr.is_none()),
        ]
        .into_iter()
        .filter_map(|(n, miss)| miss.then_some(n))
        .collect();
        self.check(
            id::R_VRING_01,
            missing.is_empty(),
            m,
            || {
                format!(
                    "SET_VRING_KICK for ring {index} before {}",
                    missing.join(", ")
                )
            },
            "SET_VRING_NUM, SET_VRING_BASE and SET_VRING_ADDR before the ring starts",
        );
        if let (Some(num), Some(a)) = (seen.num, seen.addr) {
            let iommu = self
                .acked_features
                .is_some_and(|f| f & VirtioFeatures::ACCESS_PLATFORM.bits() != 0);
            // With an IOMMU ring addresses are IOVAs the table cannot judge (R-IOTLB).
            if !iommu {
                let n = u64::from(num);
                let parts = [
                    ("descriptor table", a.desc, 16 * n),
                    ("avail ring", a.avail, 6 + 2 * n),
                    ("used ring", a.used, 6 + 8 * n),
                ];
                let outside: Vec<String> = parts
                    .iter()
                    .filter(|(_, addr, len)| {
                        !self.table.iter().any(|r| r.contains_user(*addr, *len))
                    })
                    .map(|(what, addr, len)| format!("{what} {addr:#x}+{len:#x}"))
                    .collect();
                self.check(
                    id::R_FE_05,
                    outside.is_empty(),
                    m,
                    || {
                        format!(
                            "ring {index} starts with {} outside the memory table",
                            outside.join(", ")
                        )
                    },
                    "ring areas inside the regions of the memory table (by user address)",
                );
            }
        }
        let refused = self.table_refused;
        self.check(
            id::R_FE_06,
            !refused,
            m,
            || format!("ring {index} starts on a memory table the back-end refused"),
            "no ring started on a refused memory table",
        );
    }
}

/// The regions a SET_MEM_TABLE or ADD_MEM_REG carries.
fn body_regions(req: FrontendReq, m: &Message) -> Vec<MemRegion> {
    match Body::decode(req.request_body(), &m.payload) {
        Ok(Body::MemTable(r)) => r,
        Ok(Body::SingleRegion(r)) => vec![r],
        _ => Vec::new(),
    }
}

trait PairDefault {
    fn unwrap_or_default_pair(self) -> (MemRegion, MemRegion, &'static str);
}

impl PairDefault for Option<(MemRegion, MemRegion, &'static str)> {
    fn unwrap_or_default_pair(self) -> (MemRegion, MemRegion, &'static str) {
        self.unwrap_or((MemRegion::default(), MemRegion::default(), ""))
    }
}
