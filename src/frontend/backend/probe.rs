//! The requests the judging back-end sends on the back-end channel, each with NEED_REPLY and
//! judged by what it is for: plain acks (R-ACK-08, R-BCH-08), the liveness probe of an idle
//! front-end (a hang), IOTLB misses (R-IOTLB-04) and SHMEM_MAP/UNMAP (R-SHM-06/07/08/14). One is
//! in flight at a time, while the main socket is served.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use vhu_protocol::wire::payload::{Body, ShmemMapMsg};
use vhu_protocol::{BackendReq, Header, Message, ProtocolFeatures};

use crate::rules::{RuleId, id};

use super::resources::memfd;
use super::{IDLE_BEFORE_PROBE, JudgingBackend, SHMEM_REGION};

/// What a request on the back-end channel is for, and so how its answer is judged.
#[derive(Clone, Debug)]
pub(super) enum ProbeKind {
    /// A request any front-end must ack (R-ACK-08; an unknown code R-BCH-08).
    Plain,
    /// Asked after the main socket fell silent: no answer is a hang.
    Liveness,
    /// An IOTLB miss for `iova`; `mark` counts the updates seen when it went (R-IOTLB-04).
    Miss { iova: u64, mark: usize },
    /// A SHMEM_MAP/UNMAP (`what`), judged under `rule`: `want_fail` as
    /// [`Judge::shmem_answered`]; `needs_map`: only sent after the first map succeeded.
    Shmem {
        what: &'static str,
        rule: RuleId,
        want_fail: Option<bool>,
        needs_map: bool,
    },
}

/// A request the judging back-end sends on the channel with NEED_REPLY.
#[derive(Clone, Debug)]
pub(super) struct Probe {
    pub(super) code: u32,
    pub(super) payload: Vec<u8>,
    /// Attach a fresh 4 KiB memfd (SHMEM_MAP carries exactly one).
    pub(super) with_fd: bool,
    pub(super) kind: ProbeKind,
}

impl Probe {
    pub(super) fn plain(code: u32) -> Self {
        Self {
            code,
            payload: Vec::new(),
            with_fd: false,
            kind: ProbeKind::Plain,
        }
    }
}

pub(super) fn shmem_msg(shmid: u8, shm_offset: u64, len: u64, flags: u64) -> Vec<u8> {
    Body::ShmemMap(ShmemMapMsg {
        shmid,
        padding: [0; 7],
        fd_offset: 0,
        shm_offset,
        len,
        flags,
    })
    .encode()
}

/// The SHMEM probes, in order: one valid map, then maps and unmaps the spec has fail, then
/// the unmap of the first map.
pub(super) fn shmem_probes() -> Vec<Probe> {
    let map = BackendReq::ShmemMap as u32;
    let unmap = BackendReq::ShmemUnmap as u32;
    let p = |code, payload, what, rule, want_fail, needs_map| Probe {
        code,
        payload,
        with_fd: code == map,
        kind: ProbeKind::Shmem {
            what,
            rule,
            want_fail,
            needs_map,
        },
    };
    vec![
        p(
            map,
            shmem_msg(0, 0, 4096, 1),
            "of shmid 0 [0, 4 KiB) read-write",
            id::R_SHM_06,
            None,
            false,
        ),
        p(
            map,
            shmem_msg(0, 0, 4096, 1),
            "of the same range again (an overlap)",
            id::R_SHM_07,
            Some(true),
            true,
        ),
        p(
            map,
            shmem_msg(0, SHMEM_REGION, 4096, 1),
            "past the end of shmid 0",
            id::R_SHM_07,
            Some(true),
            false,
        ),
        p(
            map,
            shmem_msg(7, 0x4000, 4096, 1),
            "of shmid 7, which GET_SHMEM_CONFIG did not declare",
            id::R_SHM_07,
            Some(true),
            false,
        ),
        p(
            map,
            shmem_msg(0, 0x8000, 4096, 3),
            "with flags 0x3 (bits other than 0)",
            id::R_SHM_14,
            Some(true),
            false,
        ),
        p(
            map,
            shmem_msg(0, 0x8000, 0, 1),
            "of length 0",
            id::R_SHM_14,
            Some(true),
            false,
        ),
        p(
            unmap,
            shmem_msg(0, 0, 8192, 0),
            "of [0, 8 KiB), which is not exactly one mapping",
            id::R_SHM_08,
            Some(true),
            false,
        ),
        p(
            unmap,
            shmem_msg(0, 0, 4096, 0),
            "of the first mapping, exactly",
            id::R_SHM_08,
            Some(false),
            true,
        ),
    ]
}

impl JudgingBackend {
    /// Sends back-end request `code` with NEED_REPLY on the channel; false if it could not go.
    pub(super) fn send_channel(&mut self, code: u32) -> bool {
        self.send_probe(&Probe::plain(code))
    }

    pub(super) fn send_probe(&mut self, p: &Probe) -> bool {
        let header = Header::request(p.code, p.payload.len() as u32, true);
        let fd = if p.with_fd {
            memfd(c"vhu-shmem", 4096)
        } else {
            None
        };
        let Some(ch) = &self.backend_channel else {
            return false;
        };
        let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
        let ok = ch.send(header, &p.payload, &fds).is_ok();
        let n = fds.len();
        self.record_channel(false, header, &p.payload, n);
        ok
    }

    pub(super) fn shmem_negotiated(&self) -> bool {
        self.acked_protocol & ProtocolFeatures::SHMEM.bits() != 0
    }

    pub(super) fn ring_running(&self) -> bool {
        self.rings.values().any(|r| r.started)
    }

    /// Whether `p` may go now: SHMEM requests only with SHMEM negotiated and a ring running
    /// (a back-end sends none while suspended, R-SHM-10), and those that need the first map
    /// only after it succeeded.
    pub(super) fn due(&self, p: &Probe) -> Option<bool> {
        match &p.kind {
            ProbeKind::Shmem { needs_map, .. } => {
                if !self.shmem_negotiated() || !self.ring_running() {
                    None
                } else {
                    Some(!*needs_map || self.shmem_mapped)
                }
            }
            _ => Some(true),
        }
    }

    /// The next probe, if one is due now: the channel is armed, no ack is awaited.
    pub(super) fn next_probe(&mut self) {
        if !self.channel_armed || self.pending.is_some() || !self.reply_ack_acked() {
            return;
        }
        while let Some(p) = self.probes.first().cloned() {
            match self.due(&p) {
                None => return,
                Some(false) => {
                    self.probes.remove(0);
                    continue;
                }
                Some(true) => {}
            }
            self.probes.remove(0);
            let mut p = p;
            if let ProbeKind::Miss { mark, .. } = &mut p.kind {
                *mark = self.judge.iotlb_mark();
            }
            if self.send_probe(&p) {
                self.pending = Some((p, Instant::now()));
            } else {
                self.judge_probe(&p, None, false);
                self.probes.clear();
            }
            return;
        }
    }

    /// Judges the answer (or its absence) to probe `p`.
    pub(super) fn judge_probe(&mut self, p: &Probe, reply: Option<&Message>, timed_out: bool) {
        match &p.kind {
            ProbeKind::Plain => self.judge.channel_reply(p.code, reply, timed_out),
            ProbeKind::Liveness => {
                if reply.is_some() {
                    self.notes.push(format!(
                        "idle, not hung: after {} ms of silence it answered a request on its channel",
                        IDLE_BEFORE_PROBE.as_millis()
                    ));
                }
                self.judge.liveness(p.code, reply, timed_out);
            }
            ProbeKind::Miss { iova, mark } => self.judge.miss_answered(*iova, *mark, reply),
            ProbeKind::Shmem {
                what,
                rule,
                want_fail,
                ..
            } => {
                let v = self
                    .judge
                    .shmem_answered(what, p.code, *rule, *want_fail, reply);
                if *rule == id::R_SHM_06 {
                    self.shmem_mapped = v == Some(0);
                }
            }
        }
    }

    /// [`idle_probe`](Self::idle_probe): after [`IDLE_BEFORE_PROBE`] of silence on the main
    /// socket, one NEED_REPLY request on the channel (CONFIG_CHANGE_MSG where CONFIG is
    /// negotiated, which every front-end must ack, else an unknown code, which it should).
    pub(super) fn maybe_liveness(&mut self) {
        if !self.idle_probe
            || self.liveness_sent
            || self.pending.is_some()
            || !self.channel_armed
            || !self.reply_ack_acked()
            || self.last_main.elapsed() < IDLE_BEFORE_PROBE
        {
            return;
        }
        self.liveness_sent = true;
        let p = Probe {
            kind: ProbeKind::Liveness,
            ..Probe::plain(self.block_code())
        };
        if self.send_probe(&p) {
            self.pending = Some((p, Instant::now()));
        } else {
            self.judge_probe(&p, None, false);
        }
    }
}
