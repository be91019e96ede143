//! virtio-scmi (virtio 1.2 section 5.17): one cmdq; each chain holds an SCMI command (le32
//! message header and parameters, device-readable) and room for its response (the header
//! echoed, an int32 status, the return values). The platform implements the BASE protocol
//! (Arm SCMI DEN0056 section 4.2) and nothing else; it offers no notification or delayed
//! response, so no VIRTIO_SCMI_F_P2A_CHANNELS and no eventq. No config space.

use crate::blk::iov::Iov;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;

/// The virtio device id of an SCMI device (virtio 1.2 section 5).
pub const SCMI_DEVICE_ID: u32 = 32;
/// The BASE protocol id.
const BASE: u32 = 0x10;
/// SCMI statuses (SCMI 4.1.4).
const SUCCESS: i32 = 0;
const NOT_SUPPORTED: i32 = -1;
const INVALID_PARAMETERS: i32 = -2;
const NOT_FOUND: i32 = -4;
/// The BASE messages implemented, by id: PROTOCOL_VERSION .. DISCOVER_LIST_PROTOCOLS.
const BASE_MESSAGES: std::ops::RangeInclusive<u32> = 0x0..=0x6;
/// The BASE protocol version answered (2.0: major in the upper 16 bits).
const BASE_VERSION: u32 = 0x2_0000;
/// Bytes of parameters read from a command. Why: no BASE command takes more than one word,
/// and a bound keeps a huge readable buffer from costing anything.
const MAX_PARAMS: u64 = 16;

/// Deliberate departures of the SCMI device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScmiFaults {
    /// The response header carries the command's token + 1 (breaks R-SCMI-01).
    pub token_not_echoed: bool,
    /// An error status is followed by four zero bytes (breaks R-SCMI-02).
    pub error_padded: bool,
    /// A protocol that is not implemented answers SUCCESS and a zero word (breaks R-SCMI-04).
    pub unknown_protocol_success: bool,
}

/// The reference virtio-scmi device: an SCMI platform with the BASE protocol alone.
#[derive(Clone, Debug, Default)]
pub struct ScmiDevice {
    faults: ScmiFaults,
}

impl ScmiDevice {
    /// A platform breaking what `faults` says.
    pub fn new(faults: ScmiFaults) -> Self {
        Self { faults }
    }

    /// The status and return values of a command (`header` its le32 message header).
    fn answer(&self, header: u32, params: &[u8]) -> (i32, Vec<u8>) {
        let message = header & 0xff;
        let kind = (header >> 8) & 0x3;
        let protocol = (header >> 10) & 0xff;
        if kind != 0 {
            return (NOT_SUPPORTED, vec![]);
        }
        if protocol != BASE {
            if self.faults.unknown_protocol_success {
                return (SUCCESS, vec![0; 4]);
            }
            return (NOT_SUPPORTED, vec![]);
        }
        let param = params
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match (message, param) {
            (0x0, _) => (SUCCESS, BASE_VERSION.to_le_bytes().to_vec()),
            // One agent, no protocol besides BASE (bits 15:8 agents, 7:0 protocols).
            (0x1, _) => (SUCCESS, 0x100u32.to_le_bytes().to_vec()),
            (0x2, Some(m)) if BASE_MESSAGES.contains(&m) => (SUCCESS, vec![0; 4]),
            (0x2, Some(_)) => (NOT_FOUND, vec![]),
            (0x3, _) => (SUCCESS, name16("vhu-conform")),
            (0x4, _) => (SUCCESS, name16("reference")),
            (0x5, _) => (SUCCESS, 1u32.to_le_bytes().to_vec()),
            // No protocol besides BASE to list, whatever is skipped.
            (0x6, Some(_)) => (SUCCESS, 0u32.to_le_bytes().to_vec()),
            (0x2 | 0x6, None) => (INVALID_PARAMETERS, vec![]),
            _ => (NOT_SUPPORTED, vec![]),
        }
    }
}

/// A 16-byte NUL-padded ASCII string (vendor_identifier[16]).
fn name16(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

impl VirtioDevice for ScmiDevice {
    fn device_id(&self) -> u32 {
        SCMI_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        1
    }

    /// 5.17.6.1: the response goes in the same chain's writable buffers; a chain too short for
    /// a header is used with length 0, a response longer than the room is cut.
    fn serve(&mut self, _queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let readable = Iov::of(chain.segments.iter().filter(|s| !s.writable));
        let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
        let n = readable.len().min(4 + MAX_PARAMS) as usize;
        if n < 4 {
            return 0;
        }
        let mut cmd = vec![0u8; n];
        if readable.read(mem, &mut cmd).is_err() {
            return 0;
        }
        let header = u32::from_le_bytes([cmd[0], cmd[1], cmd[2], cmd[3]]);
        let (status, mut values) = self.answer(header, &cmd[4..]);
        if status != SUCCESS && self.faults.error_padded {
            values = vec![0; 4];
        }
        let mut echoed = header;
        if self.faults.token_not_echoed {
            let token = ((header >> 18) + 1) & 0x3ff;
            echoed = (header & !(0x3ff << 18)) | (token << 18);
        }
        let mut resp = echoed.to_le_bytes().to_vec();
        resp.extend_from_slice(&status.to_le_bytes());
        resp.extend_from_slice(&values);
        resp.truncate(usize::try_from(writable.len()).unwrap_or(usize::MAX));
        if writable.write(mem, &resp).is_err() {
            return 0;
        }
        resp.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use crate::sg::testing::{chain_at as chain, read_at as read};

    fn run(dev: &mut ScmiDevice, cmd: &[u8]) -> Vec<u8> {
        let mem = anonymous(0, 0x1000);
        mem.write(0, cmd).unwrap();
        let c = chain(&[(0, cmd.len() as u32, false), (0x100, 64, true)]);
        let n = dev.serve(0, &mem, &c);
        read(&mem, 0x100, n as usize)
    }

    fn cmd(protocol: u32, message: u32, token: u32, params: &[u8]) -> Vec<u8> {
        let mut v = (message | protocol << 10 | token << 18)
            .to_le_bytes()
            .to_vec();
        v.extend_from_slice(params);
        v
    }

    #[test]
    fn base_answers_and_echoes_the_header() {
        let mut dev = ScmiDevice::default();
        let c = cmd(0x10, 0, 7, &[]);
        let r = run(&mut dev, &c);
        assert_eq!(&r[..4], &c[..4]);
        assert_eq!(&r[4..8], &0i32.to_le_bytes());
        assert_eq!(&r[8..], &BASE_VERSION.to_le_bytes());
        assert_eq!(run(&mut dev, &cmd(0x10, 3, 1, &[])).len(), 24);
        let nf = run(&mut dev, &cmd(0x10, 2, 1, &[0xee, 0, 0, 0]));
        assert_eq!(nf.len(), 8);
        assert_eq!(&nf[4..8], &NOT_FOUND.to_le_bytes());
    }

    #[test]
    fn an_unknown_protocol_is_not_supported_and_faults_break_it() {
        let c = cmd(0x7f, 0, 3, &[]);
        let r = run(&mut ScmiDevice::default(), &c);
        assert_eq!(r.len(), 8);
        assert_eq!(&r[4..8], &NOT_SUPPORTED.to_le_bytes());
        let f = |faults| run(&mut ScmiDevice::new(faults), &c);
        let padded = f(ScmiFaults {
            error_padded: true,
            ..ScmiFaults::default()
        });
        assert_eq!(padded.len(), 12);
        let ok = f(ScmiFaults {
            unknown_protocol_success: true,
            ..ScmiFaults::default()
        });
        assert_eq!(&ok[4..8], &SUCCESS.to_le_bytes());
        let token = f(ScmiFaults {
            token_not_echoed: true,
            ..ScmiFaults::default()
        });
        assert_eq!(u32::from_le_bytes(token[..4].try_into().unwrap()) >> 18, 4);
    }
}
