//! The arguments of the virtio-gpu steps (README "Writing a scenario"): display info and 2D
//! resource commands on the control queue.

use serde::{Deserialize, Serialize};

/// A 2D resource command of `gpu_resource`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuResourceCommand {
    /// RESOURCE_CREATE_2D, 64x64 B8G8R8A8_UNORM.
    #[serde(rename = "create_2d")]
    Create2d,
    /// RESOURCE_UNREF.
    Unref,
}

/// `gpu_resource`: a 2D resource command on the gpu control queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuResourceArgs {
    /// The 2D resource command sent.
    pub command: GpuResourceCommand,
    /// The resource (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<u32>,
    /// The request goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}
