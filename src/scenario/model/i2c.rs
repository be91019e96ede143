//! The virtio-i2c step: requests on the requestq.

use serde::{Deserialize, Serialize};

use super::{GpioStatus, Hex};

/// `i2c_transfer`: requests on the I2C requestq.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I2cTransferArgs {
    /// The 7-bit address of the controlled device (default 0x20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<u8>,
    /// Bytes to read (default 1 when nothing else is asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_len: Option<u32>,
    /// Bytes to write; with `read_len`, a write-read group (FAIL_NEXT on the write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_hex: Option<Hex>,
    /// A request without a buffer (the SMBus "Quick" command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_length: Option<bool>,
    /// The status every request of the step must get (`ok` or `err`; default: either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<GpioStatus>,
    /// Copies of the request (or group) made available at once, answered in order (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
