//! Shared memory steps (spec "VIRTIO shared memory regions", checklist 4.12): the back-end is
//! asked, through vhu-conform's own virtio-blk request type (`T_VHU_SHMEM_MAP`, README), to map
//! a memfd into one of its regions; the SHMEM_MAP / SHMEM_UNMAP it sends on the back-end channel
//! is checked by the mock front-end against GET_SHMEM_CONFIG (R-SHM-05, R-SHM-08) and really
//! mapped, so the step can read through it.

use std::time::Duration;

use vhu_mock_frontend::blk::{self, BlkReq};
use vhu_protocol::BackendReq;
use vhu_protocol::virtio::VhuShmemBody;
use vhu_protocol::virtio::blk::{S_OK, S_UNSUPP, T_VHU_SHMEM_MAP, T_VHU_SHMEM_UNMAP};
use zerocopy::IntoBytes;

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::scenario::Action;
use crate::scenario::model::Step;

impl Ctx<'_> {
    /// `shmem_map` / `shmem_unmap`: the device request on queue 0, then what the back-end sent
    /// on its channel while serving it.
    pub(super) fn shmem_request(&mut self, step: &Step) -> StepResult {
        let map = step.action == Action::ShmemMap;
        let session = self.session()?;
        if session.channel().is_none() {
            return Err(StepError::NotApplicable(
                "no back-end channel: BACKEND_REQ was not negotiated".into(),
            ));
        }
        // Declares the regions the channel checks maps against (and maps into).
        let r = session.get_shmem_config();
        let config = r.map_err(|e| self.session_failed(step, e))?;
        let shmid = step.shmid.unwrap_or(0);
        let len = step.len.unwrap_or(0x1_0000);
        let mut shm_offset = step.offset.unwrap_or(0);
        if step.at_end == Some(true) {
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
        let body = VhuShmemBody {
            shmid,
            padding: [0; 7],
            shm_offset,
            len,
        };
        let before = self.channel_records().len();
        let kind = if map {
            T_VHU_SHMEM_MAP
        } else {
            T_VHU_SHMEM_UNMAP
        };
        let outcome = self.vendor_request(kind, body.as_bytes())?;
        let sent: Vec<_> = self.channel_records().split_off(before);
        let what = if map { "SHMEM_MAP" } else { "SHMEM_UNMAP" };
        let code = if map {
            BackendReq::ShmemMap
        } else {
            BackendReq::ShmemUnmap
        } as u32;
        if let Some(refused) = sent.iter().find_map(|r| r.refused.clone()) {
            let rule = cited_rule(&refused).unwrap_or_else(|| self.rule_of(step));
            self.finding_with(
                rule,
                &format!("the back-end's {what} was refused: {refused}"),
                "a request that names a declared region, lies inside it, and is well formed",
                format!("{body:?} asked; the back-end sent {}", describe(&sent)),
            );
            return Err(StepError::Finding);
        }
        match outcome {
            Some(S_UNSUPP) => Err(StepError::NotApplicable(format!(
                "the back-end does not implement vhu-conform's SHMEM device request (virtio-blk \
                 type {kind:#x}, README \"Shared memory\"), so it cannot be made to send {what}"
            ))),
            Some(S_OK) if sent.iter().any(|r| r.code == code) => {
                self.check_mapping(step, map, body)
            }
            other => {
                self.finding(
                    step,
                    &format!("the device request for {what} did not lead to an accepted {what}"),
                    &format!("one {what} on the back-end channel, acked 0, then status OK"),
                    format!("status {other:?}; the back-end sent {}", describe(&sent)),
                );
                Err(StepError::Finding)
            }
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
            self.finding(
                step,
                "SHMEM_UNMAP was accepted but the mapping is still there",
                "the whole mapping removed",
                format!("{body:?}"),
            );
            return Err(StepError::Finding);
        }
        Ok(())
    }

    /// Every request received on the back-end channel so far.
    fn channel_records(&self) -> Vec<vhu_mock_frontend::channel::BackendRecord> {
        self.session
            .as_ref()
            .and_then(|s| s.channel())
            .map(|c| c.requests())
            .unwrap_or_default()
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

/// The first `R-...` id a refusal names.
fn cited_rule(text: &str) -> Option<String> {
    let start = text.find("R-")?;
    let id: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Some(id)
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
