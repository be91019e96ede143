//! The `iotlb` step: updates, invalidations and misses behind the IOMMU.

use serde::{Deserialize, Serialize};

/// `iotlb`: what it does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IotlbArgs {
    /// What the step does (see [`IotlbOp`]).
    pub op: IotlbOp,
    /// Force NEED_REPLY on the IOTLB messages on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_reply: Option<bool>,
    /// `expect_miss`: how long to wait for the miss, in ms (default: the step timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// What an `iotlb` step does. Behind the IOMMU (VIRTIO_F_ACCESS_PLATFORM negotiated, then a
/// `memory` step) every region is mapped at an IOVA of the harness's choosing, and the
/// back-end's misses are answered from those mappings while requests are waited for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IotlbOp {
    /// An IOTLB_MSG update for every mapping; each must be answered 0 (R-IOTLB-02).
    Map,
    /// An IOTLB_MSG invalidation of every mapping; each must be answered 0 (R-IOTLB-02), and
    /// requests after it must not complete from the old entries.
    Unmap,
    /// An update whose user range no region holds: it must be refused (R-IOTLB-05).
    Outside,
    /// Misses wait unanswered (and unacked) from now on.
    Hold,
    /// Held misses are answered, and later ones as they come.
    Release,
    /// A miss (BACKEND_IOTLB_MSG type 1) must have come since the last `map`, `unmap`, `hold`
    /// or `release` began (the start of the session without one), for
    /// an address the IOMMU maps (R-IOTLB-03), within `window_ms` (default: the step timeout).
    ExpectMiss,
    /// Nothing was written where the memory table's guest addresses would put the IOVAs
    /// (R-MEM-19), and every update sent for a miss was answered 0 (R-IOTLB-02).
    Check,
}
