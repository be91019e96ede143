//! Shared memory steps (spec "VIRTIO shared memory regions", checklist 4.12): the back-end is
//! asked, through vhu-conform's own virtio-blk request type (`T_VHU_SHMEM_MAP`, README), to map
//! a memfd into one of its regions; the SHMEM_MAP / SHMEM_UNMAP it sends on the back-end channel
//! is checked by the mock front-end against GET_SHMEM_CONFIG (R-SHM-05, R-SHM-08) and really
//! mapped, so the step can read through it.

use crate::rules::id;
use std::time::Duration;

use vhu_mock_frontend::Session;
use vhu_mock_frontend::blk::{self, BlkReq};
use vhu_protocol::virtio::VhuShmemBody;
use vhu_protocol::virtio::blk::{S_OK, S_UNSUPP, T_VHU_SHMEM_MAP, T_VHU_SHMEM_UNMAP};
use vhu_protocol::{BackendReq, ProtocolFeatures};
use zerocopy::IntoBytes;

/// Length mapped when a step gives none.
const DEFAULT_LEN: u64 = 0x1_0000;

/// Header flag bit 3: the sender wants an answer.
const NEED_REPLY: u32 = 1 << 3;

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::scenario::Action;
use crate::scenario::model::{ShmemRange, Step};

impl Ctx<'_> {
    /// `shmem_map` / `shmem_unmap`: the device request on queue 0, then what the back-end sent
    /// on its channel while serving it.
    pub(super) fn shmem_request(
        &mut self,
        step: &Step,
        a: &ShmemRange,
        refuse: bool,
    ) -> StepResult {
        let map = matches!(step.action, Action::ShmemMap(_));
        let session = self.session()?;
        if session.channel().is_none() {
            return Err(StepError::NotApplicable(
                "no back-end channel: BACKEND_REQ was not negotiated".into(),
            ));
        }
        let negotiated = session.has_protocol(ProtocolFeatures::SHMEM);
        if !negotiated {
            return self.shmem_not_negotiated(a);
        }
        // Declares the regions the channel checks maps against (and maps into).
        let r = session.get_shmem_config();
        let config = r.map_err(|e| self.session_failed(step, e))?;
        let shmid = a.shmid.unwrap_or(0);
        let len = a.len.unwrap_or(DEFAULT_LEN);
        let mut shm_offset = a.offset.unwrap_or(0);
        if a.at_end == Some(true) {
            let size = match config.body(vhu_protocol::FrontendReq::GetShmemConfig.reply_body()) {
                Ok(vhu_protocol::wire::payload::Body::ShmemConfig(c)) => {
                    c.sizes.get(usize::from(shmid)).copied().unwrap_or(0)
                }
                _ => 0,
            };
            shm_offset = size.checked_sub(len).ok_or_else(|| {
                StepError::NotApplicable(format!(
                    "region {shmid} ({size:#x} bytes) is smaller than the {len:#x} bytes to map"
                ))
            })?;
        }
        let body = shmem_body(shmid, shm_offset, len);

        if refuse && let Some(c) = self.session.as_ref().and_then(|s| s.channel()) {
            c.refuse_next(1);
        }
        let before = self.channel_records().len();
        let kind = if map {
            T_VHU_SHMEM_MAP
        } else {
            T_VHU_SHMEM_UNMAP
        };
        let outcome = self.vendor_request(kind, body.as_bytes())?;
        // Without NEED_REPLY (R-SHM-11) the device may complete before the channel thread has
        // recorded the request: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        let mut records = self.wait_channel(deadline, |r| {
            r.get(before..).is_some_and(|new| {
                new.iter().any(|r| {
                    r.code == BackendReq::ShmemMap as u32 || r.code == BackendReq::ShmemUnmap as u32
                })
            })
        });
        let sent: Vec<_> = if records.len() > before {
            records.split_off(before)
        } else {
            Vec::new()
        };
        let what = if map { "SHMEM_MAP" } else { "SHMEM_UNMAP" };
        let code = if map {
            BackendReq::ShmemMap
        } else {
            BackendReq::ShmemUnmap
        } as u32;
        if refuse {
            return self.shmem_refused(step, &sent, code);
        }
        self.mark(if map { id::R_SHM_05 } else { id::R_SHM_08 });
        if let Some(refused) = sent.iter().find_map(|r| r.refused.clone()) {
            let rule = super::super::violations::refusal_rule(&refused)
                .unwrap_or_else(|| self.rule_of(step));
            return Err(self.fail(
                rule,
                &format!("the back-end's {what} was refused: {refused}"),
                "a request that names a declared region, lies inside it, and is well formed",
                format!("{body:?} asked; the back-end sent {}", describe(&sent)),
            ));
        }
        match outcome {
            Some(S_UNSUPP) => Err(StepError::NotApplicable(format!(
                "the back-end does not implement vhu-conform's SHMEM device request (virtio-blk \
                 type {kind:#x}, README \"Shared memory\"), so it cannot be made to send {what}"
            ))),
            Some(S_OK) if sent.iter().any(|r| r.code == code) => {
                self.check_need_reply(&sent, code)?;
                self.check_mapping(step, map, body)
            }
            other => Err(self.finding(
                step,
                &format!("the device request for {what} did not lead to an accepted {what}"),
                &format!("one {what} on the back-end channel, acked 0, then status OK"),
                format!("status {other:?}; the back-end sent {}", describe(&sent)),
            )),
        }
    }

    /// After an accepted map: the range is mapped and readable through the front-end's
    /// mapping; after an unmap: it is gone.
    fn check_mapping(&mut self, step: &Step, map: bool, body: VhuShmemBody) -> StepResult {
        let Some(channel) = self.session.as_ref().and_then(|s| s.channel()) else {
            return Err(StepError::Harness("the back-end channel went away".into()));
        };
        let live = channel
            .shmem_mappings()
            .into_iter()
            .any(|m| m.shmid == body.shmid && m.shm_offset == body.shm_offset);
        let mut byte = [0u8; 1];
        let readable = channel
            .shmem_read(body.shmid, body.shm_offset, &mut byte)
            .is_ok();
        if map && !(live && readable) {
            return Err(StepError::Harness(format!(
                "SHMEM_MAP was acked but the range is not readable here (live {live}, readable \
                 {readable})"
            )));
        }
        if !map && live {
            return Err(self.finding(
                step,
                "SHMEM_UNMAP was accepted but the mapping is still there",
                "the whole mapping removed",
                format!("{body:?}"),
            ));
        }
        Ok(())
    }

    /// R-SHM-11: with REPLY_ACK negotiated the back-end asks for the front-end's answer.
    fn check_need_reply(
        &mut self,
        sent: &[vhu_mock_frontend::channel::BackendRecord],
        code: u32,
    ) -> StepResult {
        let reply_ack = self.session.as_ref().is_some_and(Session::reply_ack);
        if reply_ack && sent.iter().any(|r| r.code == code) {
            self.mark(id::R_SHM_11);
        }
        let unconfirmed = sent
            .iter()
            .find(|r| r.code == code && r.flags & NEED_REPLY == 0);
        if let (true, Some(r)) = (reply_ack, unconfirmed) {
            return Err(self.fail(
                id::R_SHM_11,
                "the back-end sent a SHMEM request without NEED_REPLY although REPLY_ACK is negotiated",
                "NEED_REPLY set, and the mapping used only after the front-end's ack",
                format!("flags {:#x}", r.flags),
            ));
        }
        Ok(())
    }

    /// R-SHM-12: the front-end refuses the map; the back-end copes (no crash, keeps serving).
    fn shmem_refused(
        &mut self,
        step: &Step,
        sent: &[vhu_mock_frontend::channel::BackendRecord],
        code: u32,
    ) -> StepResult {
        if !sent.iter().any(|r| r.code == code) {
            self.notes.push(format!(
                "step {}: the back-end sent no SHMEM request, so there was nothing to refuse",
                self.step_no
            ));
        }
        self.alive(step)
    }

    /// R-SHM-10: without SHMEM negotiated, the device request must not lead to SHMEM_MAP.
    fn shmem_not_negotiated(&mut self, a: &ShmemRange) -> StepResult {
        self.mark(id::R_SHM_10);
        let before = self.channel_records().len();
        let body = shmem_body(
            a.shmid.unwrap_or(0),
            a.offset.unwrap_or(0),
            a.len.unwrap_or(DEFAULT_LEN),
        );
        let _ = self.vendor_request(T_VHU_SHMEM_MAP, body.as_bytes())?;
        let sent: Vec<_> = self.channel_records().split_off(before);
        let shmem = [BackendReq::ShmemMap as u32, BackendReq::ShmemUnmap as u32];
        if sent.iter().any(|r| shmem.contains(&r.code)) {
            return Err(self.fail(
                id::R_SHM_10,
                "the back-end sent a SHMEM request although SHMEM was not negotiated",
                "no SHMEM_MAP / SHMEM_UNMAP unless SHMEM and BACKEND_REQ are negotiated",
                format!("the back-end sent {}", describe(&sent)),
            ));
        }
        Ok(())
    }

    /// A request of `kind` with one driver-readable body on queue 0; the status the device
    /// wrote, or `None` when it did not complete (a finding is recorded by the caller).
    fn vendor_request(&mut self, kind: u32, body: &[u8]) -> Result<Option<u8>, StepError> {
        let mut q = self.queues.remove(&0).ok_or_else(|| {
            StepError::Harness("queue 0 is not set up: add a `vring` step first".into())
        })?;
        let Some(mut mem) = self.mem.take() else {
            self.queues.insert(0, q);
            return Err(StepError::Harness("no memory".into()));
        };
        let req = BlkReq {
            kind,
            sector: 0,
            data_out: Some(body),
            data_in_len: 0,
            segments: 1,
            indirect: false,
            unkicked: false,
        };
        let timeout = self.opts.step_timeout.max(Duration::from_millis(500));
        let r = blk::blk_request(&mut q, &mut mem, req, timeout);
        self.mem = Some(mem);
        self.queues.insert(0, q);
        match r {
            Ok(o) => Ok(Some(o.status)),
            Err(vhu_mock_frontend::vring::WaitError::Memory(e)) => {
                Err(StepError::Harness(chain(&e)))
            }
            Err(_) => Ok(None),
        }
    }
}

/// The body of the SHMEM device request.
fn shmem_body(shmid: u8, shm_offset: u64, len: u64) -> VhuShmemBody {
    VhuShmemBody {
        shmid,
        padding: [0; 7],
        shm_offset,
        len,
    }
}

fn describe(records: &[vhu_mock_frontend::channel::BackendRecord]) -> String {
    if records.is_empty() {
        return "nothing".into();
    }
    records
        .iter()
        .map(|r| {
            let name = BackendReq::from_code(r.code)
                .map_or_else(|_| r.code.to_string(), |b| format!("{b:?}"));
            format!(
                "{name} (flags {:#x}, {} payload bytes, {} fds, ack {:?})",
                r.flags,
                r.payload.len(),
                r.fds,
                r.ack
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
