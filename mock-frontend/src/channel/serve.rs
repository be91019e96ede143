//! The thread that serves the back-end channel: each request received is recorded, checked,
//! carried out (or refused) and acked; an IOTLB miss goes to `iotlb_miss.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{BackendReq, ConnError, Connection, Message};

use super::iotlb_miss::{answer_miss, record_miss};
use super::{BackendRecord, ChannelViolation, IotlbLink, MAX_RECORDS, Refusal, Shared, lock};
use crate::iommu::TYPE_MISS;
use crate::transcript::{Channel, Direction};

pub(super) fn serve(
    conn: &Connection,
    shared: &Mutex<Shared>,
    handled: &Condvar,
    stop: &AtomicBool,
    epoch: Instant,
    iotlb: Option<&IotlbLink>,
) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(link) = iotlb {
            for p in link.iommu.released() {
                answer_miss(conn, shared, link, p, epoch);
            }
        }
        match conn.recv_unchecked() {
            Ok(msg) => {
                handle(conn, shared, msg, epoch, iotlb);
                // Taken so a waiter between its check and its wait does not miss this.
                drop(lock(shared));
                handled.notify_all();
            }
            Err(ConnError::Timeout { .. }) => {}
            Err(e) if e.is_peer_gone() => {
                shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .peer_closed = true;
                return;
            }
            Err(e) => {
                let mut s = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.violation(ChannelViolation::Receive(e.to_string()));
                if matches!(e, ConnError::OversizedPayload { .. } | ConnError::Io { .. }) {
                    return;
                }
            }
        }
    }
}

fn handle(
    conn: &Connection,
    shared: &Mutex<Shared>,
    msg: Message,
    epoch: Instant,
    iotlb: Option<&IotlbLink>,
) {
    let mut s = lock(shared);
    let at_us = epoch.elapsed().as_micros() as u64;
    let keep = s.records.len() < MAX_RECORDS;
    if keep {
        s.transcript.record(
            at_us,
            Channel::Backend,
            Direction::FromBackend,
            &msg.header,
            &msg.payload,
            msg.fds.len(),
        );
    } else if s.dropped == 0 {
        s.violation(ChannelViolation::TooManyRequests);
    }
    let refuse = msg.header.need_reply() && s.refuse > 0;
    if refuse {
        s.refuse -= 1;
    }
    let checked = check(&msg);
    if let (Ok((BackendReq::IotlbMsg, Body::Iotlb(m))), Some(link), false) =
        (&checked, iotlb, refuse)
        && m.kind == TYPE_MISS
    {
        // Answered outside the lock: the update's round trip on the main socket comes first.
        let pending = record_miss(&mut s, &msg, *m, at_us, keep);
        drop(s);
        if let Some(p) = link.iommu.hold_or_pass(pending) {
            answer_miss(conn, shared, link, p, epoch);
        }
        return;
    }
    let outcome = match checked {
        Err(violation) => Err(Refusal::Violation(violation)),
        Ok(_) if refuse => Err(Refusal::OnPurpose),
        Ok((req, body)) => carry_out(&mut s, &msg, req, body),
    };
    if let Err(Refusal::Violation(v)) = &outcome {
        s.violation(v.clone());
    }
    let mut ack = None;
    if msg.header.need_reply() {
        let value = u64::from(outcome.is_err());
        let reply = vhu_protocol::Header::reply(msg.header.request, 8);
        if keep {
            s.transcript.record(
                epoch.elapsed().as_micros() as u64,
                Channel::Backend,
                Direction::ToBackend,
                &reply,
                &value.to_ne_bytes(),
                0,
            );
        }
        // Bounded by the connection's timeout: a back-end that does not read its acks cannot
        // block this thread (and so the session's drop, which joins it).
        let _ = conn.send_reply(msg.header.request, &Body::U64(value), &[]);
        ack = Some(value);
    }
    if !keep {
        s.dropped += 1;
        return;
    }
    s.records.push(BackendRecord {
        code: msg.header.request,
        flags: msg.header.flags,
        payload: msg.payload,
        fds: msg.fds.len(),
        ack,
        at_us,
        refused: outcome.err(),
    });
}

/// Does what a valid request asks: SHMEM_MAP/UNMAP act on the shared memory regions; an IOTLB
/// message of a type only front-ends send is refused; the others only need recording. `Err`
/// when it cannot be done.
fn carry_out(s: &mut Shared, msg: &Message, req: BackendReq, body: Body) -> Result<(), Refusal> {
    if let Body::Iotlb(m) = &body
        && !matches!(m.kind, TYPE_MISS | crate::iommu::TYPE_ACCESS_FAIL)
    {
        return Err(Refusal::Invalid(format!(
            "BACKEND_IOTLB_MSG of type {}: back-ends send misses (1) and access failures (4)",
            m.kind
        )));
    }
    let r = match (req, &body) {
        (BackendReq::ShmemMap, Body::ShmemMap(m)) => {
            let Some(fd) = msg.fds.first().and_then(|fd| fd.try_clone().ok()) else {
                return Err(Refusal::Local("cannot duplicate the SHMEM_MAP fd".into()));
            };
            s.shmem.map(m, fd)
        }
        (BackendReq::ShmemUnmap, Body::ShmemMap(m)) => s.shmem.unmap(m),
        _ => return Ok(()),
    };
    r.map_err(|error| {
        if error.is_violation() {
            Refusal::Violation(ChannelViolation::Shmem { req, error })
        } else {
            Refusal::Unsupported { req, error }
        }
    })
}

/// Syntax checks of one back-end request (R-WIRE-16, R-BCH-02, R-BCH-08): its request and
/// decoded body.
fn check(msg: &Message) -> Result<(BackendReq, Body), ChannelViolation> {
    let h = &msg.header;
    if h.validate().is_err() || h.is_reply() {
        return Err(ChannelViolation::BadFlags {
            code: h.request,
            flags: h.flags,
        });
    }
    let Ok(req) = BackendReq::from_code(h.request) else {
        return Err(ChannelViolation::UnknownCode { code: h.request });
    };
    let (min, max) = req.fd_range();
    if !(min..=max).contains(&msg.fds.len()) {
        return Err(ChannelViolation::WrongFdCount {
            req,
            got: msg.fds.len(),
            min,
            max,
        });
    }
    msg.body(req.request_body())
        .and_then(|b| b.validate().map(|()| (req, b)))
        .map_err(|violation| ChannelViolation::BadPayload { req, violation })
}
