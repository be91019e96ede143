//! The guest memory the front-end shares: the memory table (SET_MEM_TABLE), its single-region
//! changes (ADD/REM_MEM_REG) and, in IOMMU mode, the IOTLB updates and invalidations.

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, Message};

use super::datapath::IotlbEntry;
use super::{JudgingBackend, Misbehave};

impl JudgingBackend {
    /// The memory requests: regions mapped or dropped, nacked on purpose under
    /// [`Misbehave::NackMemTable`]; an IOTLB update retries the rings that may wait on it.
    pub(super) fn handle_memory_table(
        &mut self,
        conn: &Connection,
        msg: Message,
        req: FrontendReq,
        body: Option<Body>,
    ) {
        use FrontendReq::*;
        let code = msg.header.request;
        match (req, body) {
            (IotlbMsg, Some(Body::Iotlb(t))) => {
                match t.kind {
                    2 => self.iotlb.push(IotlbEntry {
                        iova: t.iova,
                        size: t.size,
                        uaddr: t.uaddr,
                        perm: t.perm,
                    }),
                    3 => self.iotlb.retain(|e| {
                        !(e.iova < t.iova.saturating_add(t.size)
                            && t.iova < e.iova.saturating_add(e.size))
                    }),
                    _ => {}
                }
                self.reply(conn, code, &Body::U64(0));
                // An update may be what a stalled ring waited for.
                let started: Vec<u32> = self.rings.keys().copied().collect();
                for i in started {
                    self.process(i);
                }
            }
            (SetMemTable, Some(Body::MemTable(regions))) => {
                self.mem.clear();
                let mut ok = regions.len() == msg.fds.len();
                if ok {
                    for (r, fd) in regions.iter().zip(&msg.fds) {
                        ok &= self.mem.add(*r, fd).is_ok();
                    }
                }
                let nack = self.misbehave == Misbehave::NackMemTable;
                self.ack(conn, &msg, req, u64::from(!ok || nack));
            }
            (AddMemReg, Some(Body::SingleRegion(r))) => {
                let ok = msg.fds.len() == 1 && self.mem.add(r, &msg.fds[0]).is_ok();
                let nack = self.misbehave == Misbehave::NackMemTable;
                self.ack(conn, &msg, req, u64::from(!ok || nack));
            }
            (RemMemReg, Some(Body::SingleRegion(r))) => {
                let ok = self.mem.remove(&r);
                self.ack(conn, &msg, req, u64::from(!ok));
            }
            _ => self.not_implemented(conn, &msg, req),
        }
    }
}
