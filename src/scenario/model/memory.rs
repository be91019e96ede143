//! The guest memory steps: `memory` (a layout and how it is announced), `add_mem_reg` and
//! `rem_mem_reg`.

use serde::{Deserialize, Serialize};

/// The guest memory layouts a `memory` step can build.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Two regions with a hole between them.
    #[default]
    Default,
    /// One region.
    Single,
}

/// How a `memory` step announces its regions.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// SET_MEM_TABLE.
    #[default]
    Table,
    /// One ADD_MEM_REG per region (CONFIGURE_MEM_SLOTS).
    AddMemReg,
}

/// One region of an explicit `memory` layout.
#[derive(Copy, Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
    /// User address announced to the back-end.
    pub user_addr: u64,
    /// Offset of the region in its memfd.
    pub mmap_offset: u64,
}

impl From<Region> for vhu_mock_frontend::RegionSpec {
    fn from(r: Region) -> Self {
        Self {
            guest_addr: r.guest_addr,
            size: r.size,
            user_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
        }
    }
}

/// `memory`: the layout and how it is announced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryArgs {
    /// A named layout (ignored when `regions` is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Explicit regions, in the order they are announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<Region>>,
    /// SET_MEM_TABLE (default) or ADD_MEM_REG per region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// Send the current table again (same memfds and addresses) instead of a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resend: Option<bool>,
}

/// `add_mem_reg`: which region of the current layout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemRegArgs {
    /// The region's index in the layout.
    pub region: usize,
}

/// `rem_mem_reg`: which region, and fields changed in the message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemMemRegArgs {
    /// The region's index in the layout.
    pub region: usize,
    /// Fields of the region description replaced before sending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tweak: Option<Tweak>,
}

/// Field overrides for REM_MEM_REG.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tweak {
    /// The guest physical address sent in place of the region's.
    pub guest_addr: Option<u64>,
    /// The size sent in place of the region's.
    pub size: Option<u64>,
    /// The user address sent in place of the region's.
    pub user_addr: Option<u64>,
    /// The mmap offset sent in place of the region's.
    pub mmap_offset: Option<u64>,
}
