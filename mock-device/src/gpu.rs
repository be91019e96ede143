//! virtio-gpu (virtio 1.2 section 5.7) as a vhost-user-gpu back-end: one scanout, no 3D, the
//! displays those of the front-end. The socket GPU_SET_SOCKET hands over carries the
//! vhost-user-gpu protocol (QEMU `docs/interop/vhost-user-gpu.rst`): the device asks the
//! front-end's protocol features, sets those it knows, and answers the driver's
//! GET_DISPLAY_INFO with what the front-end's GET_DISPLAY_INFO says. Other 2D commands are
//! answered OK_NODATA (nothing is rendered).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhu_protocol::virtio::gpu::{self, Config, CtrlHdr, RespDisplayInfo, vugpu};
use vhu_protocol::wire::VirtioFeatures;
use zerocopy::{FromBytes, IntoBytes};

use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;
use crate::sg::{read_readable, write_writable};

/// How long the device waits for a front-end reply on the gpu socket.
const REPLY_WAIT: Duration = Duration::from_secs(1);

/// Deliberate departures of the gpu device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuFaults {
    /// GET_DISPLAY_INFO is answered OK_NODATA, a bare header (breaks R-GPU-01).
    pub display_info_nodata: bool,
    /// The config space says 0 scanouts (breaks R-GPU-02).
    pub zero_scanouts: bool,
    /// GET_EDID is sent on the gpu socket without VHOST_USER_GPU_PROTOCOL_F_EDID set (breaks
    /// R-GPU-03).
    pub edid_unnegotiated: bool,
}

/// The reference virtio-gpu device.
#[derive(Debug)]
pub struct GpuDevice {
    socket: Option<UnixStream>,
    /// The vhost-user-gpu features agreed with the front-end (after the first exchange).
    features: Option<u64>,
    faults: GpuFaults,
}

impl GpuDevice {
    /// A device without its gpu socket yet, breaking what `faults` says.
    pub fn new(faults: GpuFaults) -> Self {
        Self {
            socket: None,
            features: None,
            faults,
        }
    }

    /// One request on the gpu socket; its reply payload when `reply` (None: the front-end did
    /// not answer, or the socket failed).
    fn ask(&mut self, request: u32, payload: &[u8], reply: bool) -> Option<Vec<u8>> {
        let s = self.socket.as_mut()?;
        let h = vugpu::Hdr {
            request,
            flags: 0,
            size: payload.len() as u32,
        };
        let mut out = h.as_bytes().to_vec();
        out.extend(payload);
        s.write_all(&out).ok()?;
        if !reply {
            return Some(Vec::new());
        }
        let mut rh = [0u8; vugpu::HDR_SIZE];
        s.read_exact(&mut rh).ok()?;
        let rh = vugpu::Hdr::read_from_bytes(&rh).ok()?;
        if rh.size > 1 << 20 {
            return None;
        }
        let mut body = vec![0u8; rh.size as usize];
        s.read_exact(&mut body).ok()?;
        Some(body)
    }

    /// The first use of the socket: GET_PROTOCOL_FEATURES, then SET_PROTOCOL_FEATURES with
    /// the bits this device knows (EDID).
    fn handshake(&mut self) {
        if self.features.is_some() || self.socket.is_none() {
            return;
        }
        let offered = self
            .ask(vugpu::GET_PROTOCOL_FEATURES, &[], true)
            .and_then(|b| {
                b.get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
            })
            .unwrap_or(0);
        let agreed = offered & vugpu::F_EDID;
        if !self.faults.edid_unnegotiated {
            self.ask(vugpu::SET_PROTOCOL_FEATURES, &agreed.to_le_bytes(), false);
        }
        self.features = Some(if self.faults.edid_unnegotiated {
            0
        } else {
            agreed
        });
        if self.faults.edid_unnegotiated {
            // The fault asks for an EDID the protocol never agreed on.
            self.ask(vugpu::GET_EDID, &0u32.to_le_bytes(), true);
        }
    }

    /// 5.7.6.8 GET_DISPLAY_INFO: the front-end's displays, OK_DISPLAY_INFO.
    fn display_info(&mut self) -> Vec<u8> {
        if self.faults.display_info_nodata {
            return hdr(gpu::RESP_OK_NODATA);
        }
        self.handshake();
        let got = self
            .ask(vugpu::GET_DISPLAY_INFO, &[], true)
            .and_then(|b| RespDisplayInfo::read_from_bytes(&b).ok());
        match got {
            Some(mut r) => {
                r.hdr = CtrlHdr {
                    type_: gpu::RESP_OK_DISPLAY_INFO,
                    ..CtrlHdr::default()
                };
                r.as_bytes().to_vec()
            }
            // No front-end to ask (no GPU_SET_SOCKET, or it did not answer).
            None => hdr(gpu::RESP_ERR_UNSPEC),
        }
    }

    fn serve_control(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let Ok(req) = read_readable(mem, chain, gpu::CTRL_HDR_SIZE) else {
            return 0;
        };
        let Ok((h, _)) = CtrlHdr::read_from_prefix(&req) else {
            return write_writable(mem, chain, &hdr(gpu::RESP_ERR_UNSPEC)).unwrap_or(0);
        };
        let reply = match h.type_ {
            gpu::CMD_GET_DISPLAY_INFO => self.display_info(),
            t if (gpu::CMD_GET_DISPLAY_INFO..=gpu::CMD_GET_EDID).contains(&t) => {
                hdr(gpu::RESP_OK_NODATA)
            }
            _ => hdr(gpu::RESP_ERR_UNSPEC),
        };
        write_writable(mem, chain, &reply).unwrap_or(0)
    }
}

/// A bare response header of `type_`.
fn hdr(type_: u32) -> Vec<u8> {
    CtrlHdr {
        type_,
        ..CtrlHdr::default()
    }
    .as_bytes()
    .to_vec()
}

impl VirtioDevice for GpuDevice {
    fn device_id(&self) -> u32 {
        gpu::DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        2
    }

    /// No device bits (no VIRGL, no EDID, 5.7.3); the ring layouts the queue code drives.
    fn device_features(&self) -> u64 {
        (VirtioFeatures::VERSION_1
            | VirtioFeatures::INDIRECT_DESC
            | VirtioFeatures::EVENT_IDX
            | VirtioFeatures::RING_PACKED)
            .bits()
    }

    fn config(&self) -> Vec<u8> {
        Config {
            events_read: 0,
            events_clear: 0,
            num_scanouts: if self.faults.zero_scanouts { 0 } else { 1 },
            num_capsets: 0,
        }
        .as_bytes()
        .to_vec()
    }

    fn ready(&self, _queue: u16) -> bool {
        true
    }

    /// The control queue answers; cursor commands have no response (5.7.6.10).
    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        match queue {
            gpu::CONTROL_QUEUE => self.serve_control(mem, chain),
            _ => 0,
        }
    }

    fn set_gpu_socket(&mut self, socket: UnixStream) -> bool {
        // Bounded waits: a front-end that never answers cannot hang the device.
        let _ = socket.set_read_timeout(Some(REPLY_WAIT));
        self.socket = Some(socket);
        self.features = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use crate::sg::testing::{chain_at as chain, read_at as read};
    use vm_memory::GuestMemoryMmap;

    fn display_info(dev: &mut GpuDevice, mem: &GuestMemoryMmap) -> (u32, Vec<u8>) {
        mem.write(0, &hdr(gpu::CMD_GET_DISPLAY_INFO)).unwrap();
        let c = chain(&[(0, 24, false), (0x1000, 408, true)]);
        let used = dev.serve(gpu::CONTROL_QUEUE, mem, &c);
        (used, read(mem, 0x1000, used as usize))
    }

    #[test]
    fn display_info_comes_from_the_front_end_over_the_gpu_socket() {
        let mem = anonymous(0, 0x4000);
        let mut dev = GpuDevice::new(GpuFaults::default());
        assert_eq!(
            display_info(&mut dev, &mem).0,
            24,
            "no socket: an error header"
        );
        let (ours, mut fe) = UnixStream::pair().unwrap();
        assert!(dev.set_gpu_socket(ours));
        let t = std::thread::spawn(move || {
            let mut seen = vec![];
            for _ in 0..3 {
                let mut h = [0u8; 12];
                fe.read_exact(&mut h).unwrap();
                let h = vugpu::Hdr::read_from_bytes(&h).unwrap();
                let mut p = vec![0u8; h.size as usize];
                fe.read_exact(&mut p).unwrap();
                seen.push(h.request);
                let body = match h.request {
                    vugpu::GET_PROTOCOL_FEATURES => 1u64.to_le_bytes().to_vec(),
                    vugpu::GET_DISPLAY_INFO => {
                        let mut r = RespDisplayInfo::default();
                        r.pmodes[0].enabled = 1;
                        r.pmodes[0].r.width = 640;
                        r.as_bytes().to_vec()
                    }
                    _ => continue,
                };
                let rh = vugpu::Hdr {
                    request: h.request,
                    flags: vugpu::FLAG_REPLY,
                    size: body.len() as u32,
                };
                fe.write_all(rh.as_bytes()).unwrap();
                fe.write_all(&body).unwrap();
            }
            seen
        });
        let (used, r) = display_info(&mut dev, &mem);
        assert_eq!(used, 408);
        let r = RespDisplayInfo::read_from_bytes(&r).unwrap();
        assert_eq!(r.hdr.type_, gpu::RESP_OK_DISPLAY_INFO);
        assert_eq!((r.pmodes[0].enabled, r.pmodes[0].r.width), (1, 640));
        assert_eq!(
            t.join().unwrap(),
            vec![
                vugpu::GET_PROTOCOL_FEATURES,
                vugpu::SET_PROTOCOL_FEATURES,
                vugpu::GET_DISPLAY_INFO
            ]
        );
    }
}
