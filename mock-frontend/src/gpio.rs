//! virtio-gpio driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.18): a request on the requestq is one chain, the device-readable
//! `virtio_gpio_request` (le16 type, le16 gpio, le32 value) then the device-writable
//! `virtio_gpio_response` (u8 status, u8 value; for GET_LINE_NAMES u8 status then
//! gpio_names_size bytes of names). The config space is `virtio_gpio_config` (le16 ngpio,
//! `u8 padding[2]`, le32 gpio_names_size). Facts only: the engine judges the reply.

use crate::exchange::{ChainSpec, Exchanged};

/// The request queue.
pub const REQUESTQ: u16 = 0;
/// Bytes of `virtio_gpio_config`.
pub const CONFIG_SIZE: u32 = 8;
/// VIRTIO_GPIO_MSG_GET_LINE_NAMES.
pub const GET_LINE_NAMES: u16 = 0x1;
/// VIRTIO_GPIO_MSG_GET_DIRECTION.
pub const GET_DIRECTION: u16 = 0x2;
/// VIRTIO_GPIO_MSG_SET_DIRECTION.
pub const SET_DIRECTION: u16 = 0x3;
/// VIRTIO_GPIO_MSG_GET_VALUE.
pub const GET_VALUE: u16 = 0x4;
/// VIRTIO_GPIO_MSG_SET_VALUE.
pub const SET_VALUE: u16 = 0x5;
/// VIRTIO_GPIO_STATUS_OK.
pub const STATUS_OK: u8 = 0;
/// VIRTIO_GPIO_STATUS_ERR.
pub const STATUS_ERR: u8 = 1;

/// The config space's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of lines.
    pub ngpio: u16,
    /// The padding bytes (zero by the spec).
    pub padding: [u8; 2],
    /// Size of the names block GET_LINE_NAMES answers (0: no names).
    pub gpio_names_size: u32,
}

impl Config {
    /// The fields of the first [`CONFIG_SIZE`] bytes, if there are that many.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..CONFIG_SIZE as usize)?;
        Some(Self {
            ngpio: u16::from_le_bytes([b[0], b[1]]),
            padding: [b[2], b[3]],
            gpio_names_size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// A request chain: the 8-byte request, then a response of `1 + value_len` bytes (1 for every
/// message but GET_LINE_NAMES, whose value is the names block).
pub fn request_chain(
    kind: u16,
    gpio: u16,
    value: u32,
    value_len: u32,
    indirect: bool,
) -> ChainSpec {
    let mut req = kind.to_le_bytes().to_vec();
    req.extend_from_slice(&gpio.to_le_bytes());
    req.extend_from_slice(&value.to_le_bytes());
    ChainSpec {
        readable: vec![req],
        writable: vec![1 + value_len],
        indirect,
    }
}

/// A response as the device wrote it into the writable buffer (not cut at the used length:
/// the engine compares that with what was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status byte.
    pub status: u8,
    /// The value bytes after it.
    pub value: Vec<u8>,
}

/// The bytes of the response buffer (status, then value).
pub fn response(done: &Exchanged) -> Option<Response> {
    let all = done.written.concat();
    let (&status, value) = all.split_first()?;
    Some(Response {
        status,
        value: value.to_vec(),
    })
}

/// The names of a GET_LINE_NAMES block: one string per NUL terminator, in order; `Err` names
/// the first problem (bytes after the last terminator, a byte that is not 7-bit ASCII).
pub fn names(block: &[u8]) -> Result<Vec<String>, String> {
    let Some(end) = block.iter().rposition(|&b| b == 0) else {
        return Err("no zero-terminated string".into());
    };
    if block[end + 1..].iter().any(|&b| b != 0) {
        return Err(format!("bytes after the last terminator at offset {end}"));
    }
    if let Some(i) = block[..end].iter().position(|&b| b >= 0x80) {
        return Err(format!(
            "byte {:#04x} at offset {i} is not 7-bit ASCII",
            block[i]
        ));
    }
    Ok(block[..end]
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lays_out_and_a_config_parses() {
        let c = request_chain(GET_DIRECTION, 3, 0, 1, false);
        assert_eq!(c.readable, vec![vec![2, 0, 3, 0, 0, 0, 0, 0]]);
        assert_eq!(c.writable, vec![2]);
        let cfg = Config::parse(&[8, 0, 0, 0, 20, 0, 0, 0]).unwrap();
        assert_eq!((cfg.ngpio, cfg.gpio_names_size), (8, 20));
        assert!(Config::parse(&[0; 4]).is_none());
    }

    #[test]
    fn names_split_at_terminators_and_refuse_garbage() {
        assert_eq!(names(b"a\0\0bc\0").unwrap(), vec!["a", "", "bc"]);
        assert!(names(b"a\0b").is_err());
        assert!(names(b"\xff\0").is_err());
        assert!(names(b"").is_err());
    }
}
