//! The passive checks: every message a front-end sends is judged against the front-end rules
//! of the checklist (and the `R-FE-*` rules spec/rules.toml adds for duties it has no number
//! for). The judge sees each message before the judging back-end acts on it and each answer
//! the back-end gave; it never changes what the back-end does.

use std::collections::{BTreeMap, BTreeSet};

use vhu_protocol::wire::payload::{Body, InflightDesc, MemRegion, VringAddr};
use vhu_protocol::{FrontendReq, Message, ProtocolFeatures};

use crate::engine::Finding;
use crate::rules::{RuleId, id};
use crate::scenario::Level;

use super::backend::Profile;

mod channel;
mod features;
mod layout;
mod memory;
mod negotiation;
mod rings;

use memory::body_regions;

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
    /// What SET_FEATURES acked on this connection ([`Judge::new_connection`] resets it, as
    /// every field that says "on this connection").
    acked_features: Option<u64>,
    acked_protocol: Option<u64>,
    owner: bool,
    /// The memory table as SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG left it.
    table: Vec<MemRegion>,
    rings: BTreeMap<u32, RingSeen>,
    /// A memory table the back-end refused and nothing acked since (R-FE-06).
    table_refused: bool,
    /// Departures: the first per rule, with how many more followed.
    findings: Vec<(Finding, usize)>,
    checked: BTreeSet<RuleId>,
    /// Messages judged so far, on every connection (a note of the result).
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

    /// Judges what a request means in the state so far and keeps that state: one handler per
    /// request, in the module of its concern.
    fn semantics(&mut self, req: FrontendReq, m: &Message, body: Option<Body>) {
        use FrontendReq::*;
        match (req, body) {
            (SetFeatures, Some(Body::U64(f))) => self.set_features(m, f),
            (SetProtocolFeatures, Some(Body::U64(p))) => self.set_protocol_features(m, p),
            (SetOwner, _) => {
                self.owner = true;
                self.negotiated = true;
            }
            (SetMemTable, Some(Body::MemTable(regions))) => self.set_mem_table(m, regions),
            (AddMemReg, Some(Body::SingleRegion(r))) => self.add_mem_reg(m, r),
            (RemMemReg, Some(Body::SingleRegion(r))) => self.rem_mem_reg(r),
            (SetVringNum, Some(Body::VringState(s))) => {
                self.ring_index(req, m, s.index);
                self.rings.entry(s.index).or_default().num = Some(s.num);
            }
            (SetVringBase, Some(Body::VringState(s))) => {
                self.ring_index(req, m, s.index);
                self.rings.entry(s.index).or_default().base = true;
            }
            (SetVringAddr, Some(Body::VringAddr(a))) => self.set_vring_addr(req, m, a),
            (SetVringEnable, Some(Body::VringState(s))) => self.ring_index(req, m, s.index),
            (GetVringBase | GetVringBaseSkipDrain, Some(Body::VringState(s))) => {
                self.get_vring_base(req, m, s);
            }
            (SetVringCall | SetVringErr, Some(Body::U64(w))) => {
                self.ring_index(req, m, (w & 0xff) as u32);
            }
            (SetVringKick, Some(Body::U64(w))) => self.set_vring_kick(req, m, w),
            (SetInflightFd, Some(Body::Inflight(d))) => self.inflight_back(m, d),
            (SetDeviceStateFd, _) => self.state_transfer(m),
            (PostcopyAdvise | PostcopyListen | PostcopyEnd, _) => self.postcopy_order(req, m),
            (VringKick, _) => self.vring_kick(m),
            (IotlbMsg, Some(Body::Iotlb(t))) if t.kind == 2 => {
                self.iotlb_updates.push((t.iova, t.size));
            }
            _ => {}
        }
        if matches!(req, SetMemTable | AddMemReg) {
            self.gpa_regions(req, m, body_regions(req, m));
        }
    }
}
