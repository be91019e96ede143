//! The virtio-rng step: entropy requests.

use serde::{Deserialize, Serialize};

use super::Queues;

/// `rng_read`: entropy requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngReadArgs {
    /// The ring (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// The size of each request, in order (default `[64]`); none may be 0.
    #[serde(
        default,
        deserialize_with = "nonzero_sizes",
        skip_serializing_if = "Option::is_none"
    )]
    pub sizes: Option<Vec<u32>>,
    /// Submit every request at once (one kick) before waiting, instead of one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_once: Option<bool>,
    /// Descriptors each buffer is split over (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The buffers go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// Replace the ring's call eventfd first (R-RING-15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_call: Option<bool>,
    /// With `expect = "no_reply"`: how long the requests must stay unused, in ms (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// Entropy request sizes: not empty, none 0 (each request needs a writable byte).
fn nonzero_sizes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    let v = Vec::<u32>::deserialize(d)?;
    if v.is_empty() || v.contains(&0) {
        return Err(serde::de::Error::custom(
            "`sizes` is empty or holds 0: each entropy request needs a writable byte",
        ));
    }
    Ok(Some(v))
}
