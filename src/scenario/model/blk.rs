//! The virtio-blk steps: data requests (`blk_write`, `blk_read`) and requests without data
//! (`blk_flush`, `blk_get_id`).

use serde::{Deserialize, Serialize};

use super::Queues;

/// `blk_write`, `blk_read`: a data request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkIoArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// Start sector (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sector: Option<u64>,
    /// Number of 512-byte sectors (default 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sectors: Option<u32>,
    /// The data byte written, or expected back (default 0x5a).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u8>,
    /// Descriptors the data is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Kick with a VRING_KICK message (in-band notifications) after making it available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inband_kick: Option<bool>,
    /// With `expect = "no_reply"`: how long the request must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// `blk_flush`, `blk_get_id`: a request without data of its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkCmdArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Kick with a VRING_KICK message (in-band notifications) after making it available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inband_kick: Option<bool>,
    /// With `expect = "no_reply"`: how long the request must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

impl From<&BlkCmdArgs> for BlkIoArgs {
    fn from(a: &BlkCmdArgs) -> Self {
        Self {
            queue: a.queue,
            indirect: a.indirect,
            inband_kick: a.inband_kick,
            window_ms: a.window_ms,
            ..Self::default()
        }
    }
}
