//! The virtio-console steps: the MULTIPORT handshake, port data and control messages.

use serde::{Deserialize, Serialize};

/// `console_ready`: the MULTIPORT handshake.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleReadyArgs {
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// How long to wait for the device's control messages, in ms (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `console_write`: port data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleWriteArgs {
    /// The port (default 0; its transmitq is queue 1, or 2(port + 1) + 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Bytes of each chain (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    /// Chains written (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Every byte value 0 to 255 in turn instead of lowercase text (a port carries bytes; no
    /// encoding is implied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<bool>,
    /// Submit every chain at once (one kick) before waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_once: Option<bool>,
    /// Descriptors each chain is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `console_control`: a control message of the driver's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleControlArgs {
    /// The event (default 0x7f, one the spec does not define).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<u16>,
    /// The port (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// The value (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u16>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
