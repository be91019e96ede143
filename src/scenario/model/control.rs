//! The steps that steer the run rather than a device: `sleep`, and `load_state` of a state
//! saved before.

use serde::{Deserialize, Serialize};

/// `load_state`: the state saved before, whole or cut short.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStateArgs {
    /// Load only the first bytes of the saved state (a truncated stream must be refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate_to: Option<u64>,
}

/// `sleep`: how long.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to wait, in milliseconds.
    pub ms: u64,
}
