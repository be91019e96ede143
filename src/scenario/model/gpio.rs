//! The virtio-gpio step: requestq messages, and the status both gpio and i2c answer.

use serde::{Deserialize, Serialize};

/// The message of a `gpio_request` (virtio 1.2 5.18.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpioMessage {
    /// VIRTIO_GPIO_MSG_GET_LINE_NAMES.
    GetLineNames,
    /// VIRTIO_GPIO_MSG_GET_DIRECTION.
    GetDirection,
    /// VIRTIO_GPIO_MSG_SET_DIRECTION (`value`: 0 none, 1 output, 2 input).
    SetDirection,
    /// VIRTIO_GPIO_MSG_GET_VALUE.
    GetValue,
    /// VIRTIO_GPIO_MSG_SET_VALUE (`value`: 0 low, 1 high).
    SetValue,
    /// A message type the spec does not define (0x7f).
    Unknown,
}

/// The status a `gpio_request` or an `i2c_transfer` expects (both devices answer OK 0 / ERR 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpioStatus {
    /// VIRTIO_GPIO_STATUS_OK.
    Ok,
    /// VIRTIO_GPIO_STATUS_ERR.
    Err,
}

/// `gpio_request`: requestq messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioRequestArgs {
    /// The message type sent.
    pub request: GpioMessage,
    /// The line (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpio: Option<u16>,
    /// Send it for every line, 0 to ngpio - 1, one after the other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_lines: Option<bool>,
    /// The line is ngpio, one past the last: the device must answer ERR (R-GPIO-05).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub past_end: Option<bool>,
    /// The request's value field (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// The status the response must carry (default: OK or ERR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<GpioStatus>,
    /// With OK: the value the response must carry (R-GPIO-06, a SHOULD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub want_value: Option<u8>,
    /// Copies made available at once (one kick), answered in order for the same line
    /// (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
