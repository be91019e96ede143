//! The virtio-input steps: config queries, eventq buffers and statusq events.

use serde::{Deserialize, Serialize};

/// `input_config`: one config query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfigArgs {
    /// `VIRTIO_INPUT_CFG_*` (ID_NAME 1, ID_SERIAL 2, ID_DEVIDS 3, PROP_BITS 0x10, EV_BITS
    /// 0x11, ABS_INFO 0x12; another value: a query without information, size 0).
    pub select: u8,
    /// The sub-selector (EV_BITS: the event type; default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsel: Option<u8>,
}

/// `input_post`: eventq buffers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPostArgs {
    /// Buffers posted (default 8), each one 8-byte event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers: Option<u32>,
    /// The buffers go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// How long to watch them, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `input_status`: an event on the statusq.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputStatusArgs {
    /// The event type (default EV_LED, 0x11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ev_type: Option<u16>,
    /// The code (default LED_CAPSL, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The value (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
