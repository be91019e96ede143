//! The vring requests: a ring's size, base, addresses, kick and call fds, enabling, in-band
//! kicks, GET_VRING_BASE stopping it, and RESET_DEVICE dropping them all.

use vhu_protocol::wire::payload::{Body, VringState};
use vhu_protocol::{Connection, FrontendReq, Message, VirtioFeatures};

use super::JudgingBackend;

impl JudgingBackend {
    /// The ring requests: each sets up its ring (made on first mention), and one that may let
    /// the ring run looks at it at once.
    pub(super) fn handle_vrings(
        &mut self,
        conn: &Connection,
        msg: Message,
        req: FrontendReq,
        body: Option<Body>,
    ) {
        use FrontendReq::*;
        let code = msg.header.request;
        match (req, body) {
            (GetVringBase | GetVringBaseSkipDrain, Some(Body::VringState(s))) => {
                let num = self.rings.get_mut(&s.index).map_or(0, |r| {
                    r.started = false;
                    r.kick = None;
                    r.last_avail
                });
                let state = VringState {
                    index: s.index,
                    num: u32::from(num),
                };
                self.reply(conn, code, &Body::VringState(state));
            }
            (SetVringNum, Some(Body::VringState(s))) => {
                self.rings.entry(s.index).or_default().num = s.num as u16;
                self.ack(conn, &msg, req, 0);
            }
            (SetVringBase, Some(Body::VringState(s))) => {
                let r = self.rings.entry(s.index).or_default();
                r.last_avail = s.num as u16;
                r.used_idx = s.num as u16;
                self.ack(conn, &msg, req, 0);
            }
            (SetVringAddr, Some(Body::VringAddr(a))) if self.iommu() => {
                // IOVAs: translated through the IOTLB on every access.
                let r = self.rings.entry(a.index).or_default();
                (r.desc, r.avail, r.used) = (a.desc, a.avail, a.used);
                self.ack(conn, &msg, req, 0);
            }
            (SetVringAddr, Some(Body::VringAddr(a))) => {
                // Ring locations are user addresses: kept as guest addresses for the data
                // path.
                let g = |ua| self.mem.user_to_guest(ua);
                let (d, av, u) = (g(a.desc), g(a.avail), g(a.used));
                let r = self.rings.entry(a.index).or_default();
                let ok = d.is_some() && av.is_some() && u.is_some();
                (r.desc, r.avail, r.used) = (d.unwrap_or(0), av.unwrap_or(0), u.unwrap_or(0));
                self.ack(conn, &msg, req, u64::from(!ok));
            }
            (SetVringKick, Some(Body::U64(w))) => {
                let bit30 = self.acked_features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
                let r = self.rings.entry((w & 0xff) as u32).or_default();
                r.kick = msg.fds.into_iter().next();
                r.poll = r.kick.is_none();
                r.started = true;
                // Without bit 30 a ring starts enabled (spec "Ring states").
                r.enabled |= !bit30;
                let idx = (w & 0xff) as u32;
                self.process(idx);
                let m = Message {
                    header: msg.header,
                    payload: msg.payload,
                    fds: Vec::new(),
                };
                self.ack(conn, &m, req, 0);
            }
            (SetVringCall, Some(Body::U64(w))) => {
                let r = self.rings.entry((w & 0xff) as u32).or_default();
                r.call = msg.fds.into_iter().next();
                let m = Message {
                    header: msg.header,
                    payload: msg.payload,
                    fds: Vec::new(),
                };
                self.ack(conn, &m, req, 0);
            }
            (SetVringEnable, Some(Body::VringState(s))) => {
                self.rings.entry(s.index).or_default().enabled = s.num == 1;
                self.process(s.index);
                self.ack(conn, &msg, req, 0);
            }
            (VringKick, Some(Body::VringState(s))) => {
                self.process(s.index);
                self.ack(conn, &msg, req, 0);
            }
            (ResetDevice, _) => {
                self.rings.clear();
                self.ack(conn, &msg, req, 0);
            }
            _ => self.not_implemented(conn, &msg, req),
        }
    }
}
