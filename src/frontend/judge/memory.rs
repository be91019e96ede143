//! The memory table as the front-end builds it: at most 8 regions (R-MEM-02), no more than
//! the slots (R-FE-04), none overlapping (R-MEM-04).

use vhu_protocol::wire::payload::{Body, MemRegion};
use vhu_protocol::{FrontendReq, Message, ProtocolFeatures};

use crate::rules::id;

use super::Judge;

impl Judge {
    /// GET_MAX_MEM_SLOTS's answer where CONFIGURE_MEM_SLOTS is negotiated; `None` without
    /// it, where the 8-region bound is R-MEM-02's alone (R-FE-04 does not repeat it).
    pub(super) fn slots(&self) -> Option<u64> {
        self.has_protocol(ProtocolFeatures::CONFIGURE_MEM_SLOTS)
            .then_some(self.profile.max_mem_slots)
    }

    /// SET_MEM_TABLE: the whole table, checked and kept.
    pub(super) fn set_mem_table(&mut self, m: &Message, regions: Vec<MemRegion>) {
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
                || format!("SET_MEM_TABLE with {n} regions; the back-end has {slots} slots"),
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

    /// ADD_MEM_REG: one region more, checked against the table and added to it.
    pub(super) fn add_mem_reg(&mut self, m: &Message, r: MemRegion) {
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
                || format!("ADD_MEM_REG makes {n} regions; GET_MAX_MEM_SLOTS answered {slots}"),
                "no more regions than GET_MAX_MEM_SLOTS answered",
            );
        }
        self.table.push(r);
    }

    /// REM_MEM_REG: the region with the same addresses and size leaves the table.
    pub(super) fn rem_mem_reg(&mut self, r: MemRegion) {
        self.table.retain(|t| {
            !(t.guest_addr == r.guest_addr && t.user_addr == r.user_addr && t.size == r.size)
        });
    }
}

/// The space (`"guest"` or `"user"`) in which two regions overlap, if any.
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

/// The regions a SET_MEM_TABLE or ADD_MEM_REG carries.
pub(super) fn body_regions(req: FrontendReq, m: &Message) -> Vec<MemRegion> {
    match Body::decode(req.request_body(), &m.payload) {
        Ok(Body::MemTable(r)) => r,
        Ok(Body::SingleRegion(r)) => vec![r],
        _ => Vec::new(),
    }
}

/// The pair of regions a finding names, defaulted where no overlap was found.
trait PairDefault {
    fn unwrap_or_default_pair(self) -> (MemRegion, MemRegion, &'static str);
}

impl PairDefault for Option<(MemRegion, MemRegion, &'static str)> {
    fn unwrap_or_default_pair(self) -> (MemRegion, MemRegion, &'static str) {
        self.unwrap_or((MemRegion::default(), MemRegion::default(), ""))
    }
}
