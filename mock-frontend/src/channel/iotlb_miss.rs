//! The channel's answers to IOTLB misses (R-IOTLB-04): the miss recorded while its ack
//! waits, then the update on the main socket and the ack.

use std::sync::Mutex;
use std::time::Instant;

use vhu_protocol::wire::payload::{Body, IotlbMsg};
use vhu_protocol::{BackendReq, Connection, Message};

use super::{BackendRecord, IotlbLink, Refusal, Shared, lock};
use crate::iommu::{MissAnswer, Pending};
use crate::transcript::{Channel, Direction};

/// Records a miss whose ack waits for its answer; what [`answer_miss`] needs.
pub(super) fn record_miss(
    s: &mut Shared,
    msg: &Message,
    miss: IotlbMsg,
    at_us: u64,
    keep: bool,
) -> Pending {
    let pending = Pending {
        miss,
        need_reply: msg.header.need_reply(),
        record: keep.then_some(s.records.len()),
    };
    if keep {
        s.records.push(BackendRecord {
            code: msg.header.request,
            flags: msg.header.flags,
            payload: msg.payload.clone(),
            fds: 0,
            ack: None,
            at_us,
            refused: None,
        });
    } else {
        s.dropped += 1;
    }
    pending
}

/// Answers a miss (R-IOTLB-04): the update of the mapping that covers it on the main socket,
/// then, if asked, the ack: 0 once the back-end answered the update 0, non-zero otherwise; a
/// miss no mapping covers is invalid: nothing is sent and the ack is non-zero.
pub(super) fn answer_miss(
    conn: &Connection,
    shared: &Mutex<Shared>,
    link: &IotlbLink,
    p: Pending,
    epoch: Instant,
) {
    let update = link.iommu.lookup(p.miss.iova, p.miss.perm);
    let reply = match update {
        Some(m) => link
            .main
            .iotlb(&m.update(), link.need_reply, |header, payload| {
                let dir = if header.is_reply() {
                    Direction::FromBackend
                } else {
                    Direction::ToBackend
                };
                let at = epoch.elapsed().as_micros() as u64;
                lock(shared)
                    .transcript
                    .record(at, Channel::Main, dir, header, payload, 0);
            }),
        None => Err(format!(
            "no mapping covers iova {:#x} with perm {}: nothing sent (an invalid miss)",
            p.miss.iova, p.miss.perm
        )),
    };
    let ack = p.need_reply.then(|| u64::from(reply != Ok(0)));
    // Recorded before the ack goes out: whoever sees the ack finds the answer.
    let refused = reply.clone().err().filter(|_| update.is_none());
    link.iommu.record(MissAnswer {
        miss: p.miss,
        need_reply: p.need_reply,
        update,
        reply,
        ack,
        at_us: epoch.elapsed().as_micros() as u64,
    });
    let mut s = lock(shared);
    if let Some(r) = p.record.and_then(|i| s.records.get_mut(i)) {
        r.ack = ack;
        r.refused = refused.map(Refusal::Invalid);
    }
    if let Some(value) = ack {
        let header = vhu_protocol::Header::reply(BackendReq::IotlbMsg as u32, 8);
        let at = epoch.elapsed().as_micros() as u64;
        s.transcript.record(
            at,
            Channel::Backend,
            Direction::ToBackend,
            &header,
            &value.to_ne_bytes(),
            0,
        );
        let _ = conn.send_reply(BackendReq::IotlbMsg as u32, &Body::U64(value), &[]);
    }
}
