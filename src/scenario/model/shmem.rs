//! The shared memory steps: `shmem_map` and `shmem_unmap` of a range of a region.

use serde::{Deserialize, Serialize};

/// The range of a shared memory region a `shmem_unmap` (or `shmem_map`) step names.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShmemRange {
    /// The shared memory region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shmid: Option<u8>,
    /// Offset into the region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// The range ends where the region ends (`offset` = size - `len`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_end: Option<bool>,
}

/// `shmem_map`: the range, and whether the front-end refuses the request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShmemMapArgs {
    /// The shared memory region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shmid: Option<u8>,
    /// Offset into the region (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// The range ends where the region ends (`offset` = size - `len`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_end: Option<bool>,
    /// The front-end refuses the back-end's SHMEM_MAP (a non-zero ack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refuse: Option<bool>,
}

impl From<&ShmemMapArgs> for ShmemRange {
    fn from(a: &ShmemMapArgs) -> Self {
        Self {
            shmid: a.shmid,
            offset: a.offset,
            len: a.len,
            at_end: a.at_end,
        }
    }
}
