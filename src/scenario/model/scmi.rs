//! The virtio-scmi step: SCMI commands on the cmdq.

use serde::{Deserialize, Serialize};

use super::Hex;

/// The SCMI status a `scmi_command` expects (SCMI 4.1.4).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScmiStatus {
    /// SUCCESS (0).
    Success,
    /// NOT_SUPPORTED (-1).
    NotSupported,
    /// NOT_FOUND (-4).
    NotFound,
    /// Any status but SUCCESS.
    Error,
}

/// `scmi_command`: SCMI commands on the cmdq.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScmiCommandArgs {
    /// The cmdq (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u16>,
    /// The SCMI protocol id (default 0x10, BASE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    /// The message id within the protocol.
    pub message: u8,
    /// The command's parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_hex: Option<Hex>,
    /// Device-writable bytes for the response (default 128; at least 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_size: Option<u32>,
    /// The status the response must carry (default: any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ScmiStatus>,
    /// With SUCCESS: the bytes of return values after the status (default: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values_len: Option<u32>,
    /// Commands made available at once (one kick), each with its own token (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The header and the parameters in two descriptors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<bool>,
    /// The chains go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
