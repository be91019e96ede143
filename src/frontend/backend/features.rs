//! Feature negotiation and the counts a front-end asks at start-up: GET/SET_FEATURES,
//! GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS and GET_STATUS, answered from the
//! [`Profile`](super::Profile).

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, Message};

use super::JudgingBackend;

impl JudgingBackend {
    /// The offer's requests: the profile's values, and what the front-end acked kept.
    pub(super) fn handle_features(
        &mut self,
        conn: &Connection,
        msg: Message,
        req: FrontendReq,
        body: Option<Body>,
    ) {
        use FrontendReq::*;
        let code = msg.header.request;
        match (req, body) {
            (GetFeatures, _) => self.reply(conn, code, &Body::U64(self.profile.features)),
            (GetProtocolFeatures, _) => self.reply(conn, code, &Body::U64(self.profile.protocol)),
            (GetQueueNum, _) => self.reply(conn, code, &Body::U64(self.profile.queue_num)),
            (GetMaxMemSlots, _) => self.reply(conn, code, &Body::U64(self.profile.max_mem_slots)),
            (GetStatus, _) => self.reply(conn, code, &Body::U64(0)),
            (SetFeatures, Some(Body::U64(f))) => {
                self.acked_features = f;
                self.ack(conn, &msg, req, 0);
            }
            (SetProtocolFeatures, Some(Body::U64(f))) => {
                // Takes effect at once (R-NEG-03): its own ack is already due under it.
                self.acked_protocol = f;
                self.ack(conn, &msg, req, 0);
            }
            _ => self.not_implemented(conn, &msg, req),
        }
    }
}
