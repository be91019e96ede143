//! virtio-scmi driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.17): an SCMI command on the cmdq is one chain, the device-readable
//! `virtio_scmi_request` (le32 SCMI message header, parameters) then the device-writable
//! `virtio_scmi_response` (le32 header, return values starting with an int32 status). The SCMI
//! message header and status codes are those of the Arm SCMI specification (DEN0056, 4.1.1 and
//! 4.1.4). Facts only: the engine judges the reply.

use crate::exchange::{ChainSpec, Exchanged};

/// The command queue.
pub const CMDQ: u16 = 0;
/// The BASE protocol, which every SCMI platform implements (SCMI 4.2).
pub const BASE_PROTOCOL: u8 = 0x10;
/// PROTOCOL_VERSION, message 0 of every protocol.
pub const PROTOCOL_VERSION: u8 = 0x0;
/// PROTOCOL_ATTRIBUTES, message 1 of every protocol.
pub const PROTOCOL_ATTRIBUTES: u8 = 0x1;
/// PROTOCOL_MESSAGE_ATTRIBUTES, message 2 of every protocol (parameter: a message id).
pub const PROTOCOL_MESSAGE_ATTRIBUTES: u8 = 0x2;
/// BASE_DISCOVER_VENDOR: a 16-byte vendor string.
pub const BASE_DISCOVER_VENDOR: u8 = 0x3;
/// BASE_DISCOVER_LIST_PROTOCOLS (parameter: how many protocols to skip).
pub const BASE_DISCOVER_LIST_PROTOCOLS: u8 = 0x6;
/// SCMI status SUCCESS.
pub const SUCCESS: i32 = 0;
/// SCMI status NOT_SUPPORTED.
pub const NOT_SUPPORTED: i32 = -1;
/// SCMI status NOT_FOUND.
pub const NOT_FOUND: i32 = -4;
/// The header and the status: the smallest response.
pub const MIN_RESPONSE: u32 = 8;

/// The fields of an SCMI message header (SCMI 4.1.1): message_id bits 7:0, message_type 9:8
/// (0: command), protocol_id 17:10, token 27:18; bits 31:28 reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message within its protocol.
    pub message_id: u8,
    /// 0 command, 2 delayed response, 3 notification.
    pub message_type: u8,
    /// The protocol.
    pub protocol_id: u8,
    /// The sequence identifier the agent chooses (10 bits).
    pub token: u16,
}

impl Header {
    /// A command of `protocol_id`/`message_id` with `token`.
    pub fn command(protocol_id: u8, message_id: u8, token: u16) -> Self {
        Self {
            message_id,
            message_type: 0,
            protocol_id,
            token: token & 0x3ff,
        }
    }

    /// The le32 value.
    pub fn encode(self) -> u32 {
        u32::from(self.message_id)
            | (u32::from(self.message_type & 0x3) << 8)
            | (u32::from(self.protocol_id) << 10)
            | (u32::from(self.token & 0x3ff) << 18)
    }

    /// The fields of a le32 value (reserved bits dropped).
    pub fn decode(v: u32) -> Self {
        Self {
            message_id: (v & 0xff) as u8,
            message_type: ((v >> 8) & 0x3) as u8,
            protocol_id: ((v >> 10) & 0xff) as u8,
            token: ((v >> 18) & 0x3ff) as u16,
        }
    }
}

/// A cmdq chain: the header and `params` in one device-readable buffer (or the header and the
/// parameters in two when `split`), then `response_size` device-writable bytes.
pub fn command_chain(
    header: Header,
    params: &[u8],
    response_size: u32,
    split: bool,
    indirect: bool,
) -> ChainSpec {
    let hdr = header.encode().to_le_bytes().to_vec();
    let readable = if split && !params.is_empty() {
        vec![hdr, params.to_vec()]
    } else {
        let mut all = hdr;
        all.extend_from_slice(params);
        vec![all]
    };
    ChainSpec {
        readable,
        writable: vec![response_size.max(MIN_RESPONSE)],
        indirect,
    }
}

/// A response as the device wrote it (cut at the used length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The raw le32 header.
    pub raw_header: u32,
    /// The SCMI status (the first return value).
    pub status: i32,
    /// The return values after the status.
    pub values: Vec<u8>,
}

impl Response {
    /// The header's fields.
    pub fn header(&self) -> Header {
        Header::decode(self.raw_header)
    }

    /// The little-endian u32 return value `n` after the status, if written.
    pub fn value_u32(&self, n: usize) -> Option<u32> {
        let b = self.values.get(n * 4..n * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The response a completion holds; `None` when the used length does not cover a header and a
/// status.
pub fn response(done: &Exchanged) -> Option<Response> {
    let bytes = done.reply();
    if bytes.len() < MIN_RESPONSE as usize {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some(Response {
        raw_header: word(0),
        status: word(4) as i32,
        values: bytes[8..].to_vec(),
    })
}

/// The SCMI name of a status (SCMI 4.1.4).
pub fn status_name(status: i32) -> &'static str {
    match status {
        0 => "SUCCESS",
        -1 => "NOT_SUPPORTED",
        -2 => "INVALID_PARAMETERS",
        -3 => "DENIED",
        -4 => "NOT_FOUND",
        -5 => "OUT_OF_RANGE",
        -6 => "BUSY",
        -7 => "COMMS_ERROR",
        -8 => "GENERIC_ERROR",
        -9 => "HARDWARE_ERROR",
        -10 => "PROTOCOL_ERROR",
        _ => "an unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_lays_out_as_scmi_says() {
        let h = Header::command(0x10, 0x1, 0x2a5);
        assert_eq!(h.encode(), 0x1 | (0x10 << 10) | (0x2a5 << 18));
        assert_eq!(Header::decode(h.encode()), h);
        // The token is 10 bits: the rest is dropped.
        assert_eq!(Header::command(0x10, 0, 0xffff).token, 0x3ff);
    }

    #[test]
    fn a_command_is_readable_then_writable_and_a_response_parses() {
        let c = command_chain(Header::command(0x10, 2, 1), &[1, 0, 0, 0], 4, true, false);
        assert_eq!(c.readable.len(), 2);
        assert_eq!(c.writable, vec![MIN_RESPONSE]);
        let one = command_chain(Header::command(0x10, 0, 1), &[], 64, true, true);
        assert_eq!(
            one.readable,
            vec![(0x10u32 << 10 | 1 << 18).to_le_bytes().to_vec()]
        );
        let mut w = Header::command(0x10, 0, 1).encode().to_le_bytes().to_vec();
        w.extend_from_slice(&(-1i32).to_le_bytes());
        let done = Exchanged {
            id: 0,
            used_len: 8,
            written: vec![w],
            writable_len: 64,
            canary_intact: true,
            readonly_intact: true,
            notified: true,
        };
        let r = response(&done).unwrap();
        assert_eq!(r.status, NOT_SUPPORTED);
        assert!(r.values.is_empty() && r.value_u32(0).is_none());
        assert_eq!(status_name(r.status), "NOT_SUPPORTED");
    }
}
