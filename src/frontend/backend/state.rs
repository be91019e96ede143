//! The requests about the device's state beyond its rings: the dirty log base, postcopy
//! (ADVISE, END), state transfer (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE) and the inflight
//! buffer (GET_INFLIGHT_FD).

use std::os::fd::{AsFd, BorrowedFd};

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, Header, Message};

use super::JudgingBackend;
use super::resources::{transfer_state, userfaultfd};

impl JudgingBackend {
    /// Migration and reconnection: successes where the request can succeed, the state saved or
    /// read through the front-end's fd, a userfaultfd where the host allows one.
    pub(super) fn handle_state(
        &mut self,
        conn: &Connection,
        msg: Message,
        req: FrontendReq,
        body: Option<Body>,
    ) {
        use FrontendReq::*;
        let code = msg.header.request;
        match (req, body) {
            (SetLogBase, _) => self.reply(conn, code, &Body::U64(0)),
            (PostcopyAdvise, _) => {
                // The userfaultfd, or no fd (the error form) where the host allows none.
                let ufd = userfaultfd();
                if ufd.is_none() {
                    self.notes.push(
                        "POSTCOPY_ADVISE answered without a userfaultfd: the host allows none"
                            .into(),
                    );
                }
                let header = Header::reply(code, 0);
                let fds: Vec<BorrowedFd<'_>> = ufd.iter().map(|f| f.as_fd()).collect();
                self.record(false, header, &[], fds.len());
                let _ = conn.send(header, &[], &fds);
            }
            (PostcopyEnd | CheckDeviceState, _) => self.reply(conn, code, &Body::U64(0)),
            (SetDeviceStateFd, Some(Body::DeviceState(d))) => {
                let fd = msg.fds.into_iter().next();
                // Success, bit 8: no fd of our own, the front-end's is used.
                let ok = fd.is_some() && d.phase == 0 && d.direction <= 1;
                self.reply(conn, code, &Body::U64(if ok { 0x100 } else { 1 }));
                if let (true, Some(fd)) = (ok, fd) {
                    transfer_state(d.direction, fd);
                }
            }
            (GetInflightFd, Some(Body::Inflight(ask))) => self.give_inflight(conn, code, ask),
            _ => self.not_implemented(conn, &msg, req),
        }
    }
}
