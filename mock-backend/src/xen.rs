//! Xen memory regions (protocol feature XEN_MMAP, bit 17): with it negotiated a region is 40
//! bytes, the usual 32 followed by a u32 of Xen mapping flags and a u32 domain id (R-MEM-17),
//! and the flags name exactly one of a foreign and a grant mapping (R-MISC-06). This host is
//! not a Xen domain: a well-formed Xen region cannot be mapped, and is refused as such.

use std::os::fd::OwnedFd;

use vhu_protocol::wire::payload::MemRegion;
use vhu_protocol::{FrontendReq, Message};
use zerocopy::FromBytes;

use crate::faults::Fault;
use crate::session::{Outcome, Session};

/// Bytes of one region with XEN_MMAP.
const REGION: usize = 40;
/// SET_MEM_TABLE's prefix (nregions, padding); ADD_MEM_REG's padding.
const PREFIX: usize = 8;
/// Flag bits 0 (foreign mapping) and 1 (grant mapping): exactly one must be set.
const MAPPING: u32 = 0b11;

impl Session<'_> {
    /// SET_MEM_TABLE or ADD_MEM_REG in the Xen layout.
    pub(crate) fn xen_regions(&mut self, req: FrontendReq, mut msg: Message) -> Outcome {
        let fds = std::mem::take(&mut msg.fds);
        let p = &msg.payload;
        let n = match req {
            FrontendReq::SetMemTable => p
                .get(..4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize),
            _ => 1,
        };
        if n == 0 || n > 8 || p.len() != PREFIX + n * REGION || fds.len() != n {
            self.why = Some(format!(
                "a Xen memory message of {} bytes with {} fds for {n} regions of {REGION} bytes",
                p.len(),
                fds.len()
            ));
            return Outcome::Failed;
        }
        let mut regions = Vec::with_capacity(n);
        for raw in p[PREFIX..].chunks_exact(REGION) {
            let Ok(r) = MemRegion::read_from_bytes(&raw[..32]) else {
                return Outcome::Failed;
            };
            let flags = u32::from_ne_bytes([raw[32], raw[33], raw[34], raw[35]]);
            let one_mapping = matches!(flags & MAPPING, 1 | 2);
            if !one_mapping && !self.has(Fault::XenFlagsUnchecked) {
                self.why = Some(format!(
                    "Xen flags {flags:#x}: not exactly one of foreign and grant"
                ));
                return Outcome::Failed;
            }
            regions.push(r);
        }
        if self.has(Fault::XenFlagsUnchecked) {
            // The fault maps the fds as plain shared memory, whatever the flags say.
            return self.plain_regions(req, regions, fds);
        }
        self.why = Some("this host is not a Xen domain: the region cannot be mapped".into());
        Outcome::Failed
    }

    fn plain_regions(
        &mut self,
        req: FrontendReq,
        mut regions: Vec<MemRegion>,
        fds: Vec<OwnedFd>,
    ) -> Outcome {
        match req {
            FrontendReq::SetMemTable => self.set_mem_table(regions, fds),
            _ => match regions.pop() {
                Some(r) => self.add_mem_reg(r, fds),
                None => Outcome::Failed,
            },
        }
    }
}
