//! The virtio-net steps: transmit, receive buffers and frames, control-queue commands.

use serde::{Deserialize, Serialize};

use super::Hex;

/// `net_tx`: frames to transmit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetTxArgs {
    /// The TX ring (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// Frames to send (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    /// Bytes of each Ethernet frame (default 64; at least 22).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_len: Option<u32>,
    /// Descriptors each chain is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Replace the ring's call eventfd first; the completion must be signalled on the new one
    /// only (R-RING-15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_call: Option<bool>,
    /// With `expect = "no_reply"`: how long the chains must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `net_rx_post`: receive buffers to post.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRxPostArgs {
    /// The RX ring (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// Buffers to post (default 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers: Option<u32>,
    /// Bytes of each buffer (default 1526, the header and a full frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_size: Option<u32>,
    /// Descriptors each buffer is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The buffers go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `net_rx`: the frames sent must come back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRxArgs {
    /// The RX ring (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// How long to wait, in ms (default 2000; with `expect = "no_reply"` 500).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `net_ctrl`: a control-queue command.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetCtrlArgs {
    /// The control ring (default: the one after the data rings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// The command class (`VIRTIO_NET_CTRL_RX` = 0).
    pub class: u8,
    /// The command within its class.
    pub command: u8,
    /// The command's data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<Hex>,
    /// The ack byte the device must answer (0 OK, 1 ERR); either when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<u8>,
    /// How long to wait for the answer, in ms (default 1000; none: the scenario is skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `net_complete`: the TX ring whose pending chains must complete now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetQueueArgs {
    /// The TX ring (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
}
