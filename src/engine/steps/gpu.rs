//! virtio-gpu steps (virtio 1.2 section 5.7) over the vhost-user-gpu protocol: GPU_SET_SOCKET
//! hands the back-end one end of a socket pair whose other end the harness serves
//! (`vhu_mock_frontend::gpu::GpuSocketServer`), the config space's num_scanouts (R-GPU-02),
//! GET_DISPLAY_INFO on the control queue (R-DEV-01..03, then R-GPU-01), and what the back-end
//! sent on the gpu socket (R-GPU-03).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use vhu_mock_frontend::gpu::{self as drv, GpuSocketServer, OFFERED_FEATURES};
use vhu_protocol::ProtocolFeatures;
use vhu_protocol::virtio::gpu::{self, CONTROL_QUEUE, Config, type_name, vugpu};
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{FrontendReq, Message};

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::Action;
use crate::scenario::model::GpuResourceCommand;
use crate::scenario::model::{ChainArgs, GpuResourceArgs, Step};

/// What the gpu steps keep within a session.
#[derive(Debug, Default)]
pub(super) struct GpuState {
    server: Option<GpuSocketServer>,
    config: Option<Config>,
    /// Gpu socket messages already shown in a note.
    noted: usize,
    /// The last request, rendered (a finding's `sent`).
    last: Option<String>,
}

/// The first thing wrong with what the back-end sent on the gpu socket (R-GPU-03).
fn socket_problem(s: &GpuSocketServer) -> Option<String> {
    if let Some(b) = s.broken() {
        return Some(format!("the message stream could not be read: {b}"));
    }
    let mut features: Option<u64> = None;
    for m in s.messages() {
        let (code, flags, size) = (m.hdr.request, m.hdr.flags, m.hdr.size);
        let name = vugpu::request_name(code);
        if !(vugpu::GET_PROTOCOL_FEATURES..=vugpu::DMABUF_SCANOUT2).contains(&code) {
            return Some(format!(
                "request code {code}, which the protocol does not define"
            ));
        }
        if flags & vugpu::FLAG_REPLY != 0 {
            return Some(format!("{name} with the REPLY flag set (flags {flags:#x})"));
        }
        let want = match code {
            vugpu::GET_PROTOCOL_FEATURES | vugpu::GET_DISPLAY_INFO => Some(0),
            vugpu::SET_PROTOCOL_FEATURES => Some(8),
            vugpu::GET_EDID => Some(4),
            _ => None,
        };
        if want.is_some_and(|w| w != size) {
            return Some(format!(
                "{name} with a {size}-byte payload, not {}",
                want.unwrap_or(0)
            ));
        }
        if code == vugpu::SET_PROTOCOL_FEATURES {
            let v = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
            if v & !OFFERED_FEATURES != 0 {
                return Some(format!(
                    "SET_PROTOCOL_FEATURES {v:#x}, bits the front-end did not offer ({OFFERED_FEATURES:#x})"
                ));
            }
            features = Some(v);
        }
        if code == vugpu::GET_EDID && features.is_none_or(|f| f & vugpu::F_EDID == 0) {
            return Some(
                "GET_EDID before SET_PROTOCOL_FEATURES set VHOST_USER_GPU_PROTOCOL_F_EDID".into(),
            );
        }
        if code == vugpu::DMABUF_SCANOUT2 && features.is_none_or(|f| f & vugpu::F_DMABUF2 == 0) {
            return Some("DMABUF_SCANOUT2 without VHOST_USER_GPU_PROTOCOL_F_DMABUF2 set".into());
        }
    }
    None
}

impl Ctx<'_> {
    pub(super) fn gpu_step(&mut self, step: &Step) -> StepResult {
        let before = self.findings.len();
        self.gpu.last = None;
        let r = match &step.action {
            Action::GpuSetSocket(_) => self.gpu_set_socket(step),
            Action::GpuConfig(_) => self.gpu_config(step).map(drop),
            Action::GpuDisplayInfo(a) => self.gpu_display_info(step, a),
            Action::GpuResource(a) => self.gpu_resource(step, a),
            _ => Ok(()),
        };
        let sent = self.gpu.last.clone();
        self.data_path_sent(before, sent, r)
    }

    /// R-MISC-03: a gpu back-end takes GPU_SET_SOCKET with one socket fd (a non-zero ack is a
    /// refusal a gpu back-end owes no one).
    fn gpu_set_socket(&mut self, step: &Step) -> StepResult {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| StepError::Harness(format!("cannot make a socket pair: {e}")))?;
        let server = GpuSocketServer::serve(ours)
            .map_err(|e| StepError::Harness(format!("cannot serve the gpu socket: {e}")))?;
        self.gpu.server = Some(server);
        let r = self.session()?.request(
            FrontendReq::GpuSetSocket,
            &Body::Empty,
            &[theirs.as_fd()],
            None,
        );
        drop(theirs);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        self.mark(id::R_MISC_03);
        if let Some(v) = m.as_ref().and_then(Message::u64).filter(|&v| v != 0) {
            return Err(self.fail(
                id::R_MISC_03,
                "a gpu back-end refused GPU_SET_SOCKET with one socket fd",
                "an ack of 0: the gpu back-end takes the vhost-user-gpu socket",
                format!("ack {v:#x}"),
            ));
        }
        self.sync_unacked(step)
    }

    /// R-GPU-02: GET_CONFIG of the 16-byte config space; 1 <= num_scanouts <= 16.
    fn gpu_config(&mut self, step: &Step) -> Result<Config, StepError> {
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Err(StepError::NotApplicable(
                "num_scanouts is in the config space, and the CONFIG protocol feature was not negotiated".into(),
            ));
        }
        let r = self.session()?.get_config(0, gpu::CONFIG_SIZE as u32);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        self.mark(id::R_GPU_02);
        let c = m
            .payload
            .get(12..12 + gpu::CONFIG_SIZE)
            .and_then(|b| <Config as zerocopy::FromBytes>::read_from_bytes(b).ok());
        let Some(c) = c.filter(|c| (1..=gpu::MAX_SCANOUTS as u32).contains(&c.num_scanouts)) else {
            return Err(self.fail(
                id::R_GPU_02,
                "the virtio-gpu config space does not give 1 to 16 scanouts",
                "le32 events_read, events_clear, num_scanouts (1 to 16), num_capsets",
                format!("config {c:?} ({} payload bytes)", m.payload.len()),
            ));
        };
        self.gpu.config = Some(c);
        Ok(c)
    }

    /// One control request, judged on the ring (R-DEV-01..03).
    fn gpu_control(
        &mut self,
        step: &Step,
        spec: vhu_mock_frontend::exchange::ChainSpec,
        what: &str,
    ) -> Result<vhu_mock_frontend::exchange::Exchanged, StepError> {
        self.sync_unacked(step)?;
        self.gpu.last = Some(what.to_string());
        let Completions { mut done, .. } =
            self.exchange_chains(step, CONTROL_QUEUE, &[spec], Batching::AtOnce, |_| {
                what.to_string()
            })?;
        let d = done.remove(0);
        self.judge_common(CONTROL_QUEUE, what, &d)?;
        self.mark_datapath(step, CONTROL_QUEUE);
        Ok(d)
    }

    /// R-GPU-04: a 2D resource command answered with a bare OK_NODATA header (or an error).
    fn gpu_resource(&mut self, step: &Step, a: &GpuResourceArgs) -> StepResult {
        let rid = a.resource_id.unwrap_or(1);
        let indirect = a.indirect == Some(true);
        let (spec, what) = match a.command {
            GpuResourceCommand::Create2d => (
                drv::resource_create_2d_chain(rid, indirect),
                format!("RESOURCE_CREATE_2D resource {rid} 64x64 B8G8R8A8_UNORM"),
            ),
            GpuResourceCommand::Unref => (
                drv::resource_unref_chain(rid, indirect),
                format!("RESOURCE_UNREF resource {rid}"),
            ),
        };
        let d = self.gpu_control(step, spec, &what)?;
        self.mark(id::R_GPU_04);
        let t = drv::response_hdr(&d).map(|h| h.type_);
        let error = t
            .is_some_and(|t| (gpu::RESP_ERR_UNSPEC..=gpu::RESP_ERR_INVALID_PARAMETER).contains(&t));
        if d.used_len as usize == gpu::CTRL_HDR_SIZE && (t == Some(gpu::RESP_OK_NODATA) || error) {
            if error {
                self.note(format!(
                    "{what} was answered with error type {:#x}",
                    t.unwrap_or(0)
                ));
            }
            return Ok(());
        }
        let shown = t.map_or("no header".into(), |t| format!("{t:#x} ({})", type_name(t)));
        Err(self.fail(
            id::R_GPU_04,
            &format!("{what} was answered with type {shown} and used length {}", d.used_len),
            "a 24-byte virtio_gpu_ctrl_hdr of type VIRTIO_GPU_RESP_OK_NODATA (0x1100), or an error type",
            format!("type {shown}, used length {}", d.used_len),
        ))
    }

    /// GET_DISPLAY_INFO: R-DEV-01..03, R-GPU-01, then R-GPU-03 on the gpu socket.
    fn gpu_display_info(&mut self, step: &Step, a: &ChainArgs) -> StepResult {
        let spec = drv::display_info_chain(a.indirect == Some(true));
        let d = self.gpu_control(step, spec, "GET_DISPLAY_INFO")?;
        self.mark(id::R_GPU_01);
        let t = drv::response_hdr(&d).map(|h| h.type_);
        let info = drv::display_info(&d).filter(|_| t == Some(gpu::RESP_OK_DISPLAY_INFO));
        let Some(info) = info.filter(|_| d.used_len as usize == gpu::DISPLAY_INFO_SIZE) else {
            let shown = t.map_or("no header".into(), |t| format!("{t:#x} ({})", type_name(t)));
            return Err(self.fail(
                id::R_GPU_01,
                &format!(
                    "GET_DISPLAY_INFO was answered with type {shown} and used length {}",
                    d.used_len
                ),
                "VIRTIO_GPU_RESP_OK_DISPLAY_INFO (0x1101) and the 408-byte virtio_gpu_resp_display_info",
                format!("type {shown}, used length {}", d.used_len),
            ));
        };
        let enabled = info.pmodes.iter().filter(|p| p.enabled != 0).count();
        if let Some(c) = self
            .gpu
            .config
            .filter(|c| enabled > c.num_scanouts as usize)
        {
            return Err(self.fail(
                id::R_GPU_01,
                &format!(
                    "GET_DISPLAY_INFO shows {enabled} enabled scanouts, the config space {}",
                    c.num_scanouts
                ),
                "no more enabled scanouts than num_scanouts",
                format!("{:?}", info.pmodes),
            ));
        }
        if enabled == 0 && self.gpu.server.is_some() {
            self.note(format!(
                "GET_DISPLAY_INFO shows no enabled scanout, while the front-end's GET_DISPLAY_INFO on the gpu socket offers one of {}x{}",
                drv::DISPLAY_WIDTH,
                drv::DISPLAY_HEIGHT
            ));
        }
        self.judge_gpu_socket()
    }

    /// R-GPU-03: what the back-end sent on the gpu socket so far.
    fn judge_gpu_socket(&mut self) -> StepResult {
        let Some(server) = self.gpu.server.as_ref() else {
            return Ok(());
        };
        let problem = socket_problem(server);
        let shown: Vec<String> = server
            .messages()
            .iter()
            .map(|m| {
                format!(
                    "{} ({} bytes)",
                    vugpu::request_name(m.hdr.request),
                    m.hdr.size
                )
            })
            .collect();
        self.mark(id::R_GPU_03);
        if let Some(p) = problem {
            return Err(self.fail(
                id::R_GPU_03,
                &format!("on the vhost-user-gpu socket: {p}"),
                "the vhost-user-gpu protocol: known requests, REPLY clear, features agreed before the messages needing them",
                format!("messages: {}", shown.join(", ")),
            ));
        }
        if shown.len() > self.gpu.noted {
            let new = shown[self.gpu.noted..].join(", ");
            self.gpu.noted = shown.len();
            self.note(format!("the back-end sent on the gpu socket: {new}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zerocopy::IntoBytes;

    use super::*;

    /// Serves a socket, writes `msgs` to it as the back-end would, and returns the judgement.
    fn judge(msgs: &[(u32, u32, Vec<u8>)]) -> Option<String> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let server = GpuSocketServer::serve(ours).unwrap();
        for (request, flags, payload) in msgs {
            let h = vugpu::Hdr {
                request: *request,
                flags: *flags,
                size: payload.len() as u32,
            };
            theirs.write_all(h.as_bytes()).unwrap();
            theirs.write_all(payload).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while server.messages().len() < msgs.len() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        socket_problem(&server)
    }

    #[test]
    fn the_protocol_order_passes_and_each_departure_is_named() {
        let set = |v: u64| (vugpu::SET_PROTOCOL_FEATURES, 0, v.to_le_bytes().to_vec());
        let edid = (vugpu::GET_EDID, 0, 0u32.to_le_bytes().to_vec());
        assert_eq!(judge(&[set(vugpu::F_EDID), edid.clone()]), None);
        let early = judge(std::slice::from_ref(&edid)).unwrap();
        assert!(early.contains("GET_EDID before"), "{early}");
        let unoffered = judge(&[set(1 << 7)]).unwrap();
        assert!(unoffered.contains("did not offer"), "{unoffered}");
        let flagged = judge(&[(vugpu::CURSOR_POS, vugpu::FLAG_REPLY, vec![0; 16])]).unwrap();
        assert!(flagged.contains("REPLY flag"), "{flagged}");
        let unknown = judge(&[(99, 0, vec![])]).unwrap();
        assert!(unknown.contains("99"), "{unknown}");
    }
}
