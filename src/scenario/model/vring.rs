//! The ring steps: `vring` (setting a ring up), `enable`, the steps that name only a ring, and
//! `get_vring_base` with what its answer must be.

use serde::{Deserialize, Serialize};

use super::values::{NumOrWord, Queues};

/// The virtqueue layouts.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ring {
    /// Split virtqueue.
    #[default]
    Split,
    /// Packed virtqueue (negotiate RING_PACKED: list it in `requires`).
    Packed,
}

/// `vring`: how a ring is set up.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VringArgs {
    /// The ring, or `"all"` (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// Entries in the ring (SET_VRING_NUM; default the run's ring size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u64>,
    /// The starting base (SET_VRING_BASE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<u16>,
    /// Send SET_VRING_ENABLE(1) when bit 30 is negotiated (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// Inject a kick after SET_VRING_KICK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kick: Option<bool>,
    /// Split (default) or packed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring: Option<Ring>,
    /// Give a call eventfd (default); false sends SET_VRING_CALL with bit 8 (polling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_fd: Option<bool>,
    /// Give a kick eventfd (default); false sends SET_VRING_KICK with bit 8: the back-end must
    /// poll the ring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kick_fd: Option<bool>,
    /// Send the setup messages before KICK in reverse order (ERR, CALL, ADDR, BASE, NUM): the
    /// spec fixes no order (R-VRING-15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse_setup: Option<bool>,
}

/// `enable`: SET_VRING_ENABLE of a ring.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// Enable (true) or disable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
}

/// The steps that name only a ring (`blk_complete`, `swap_call`, ...).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
}

/// What GET_VRING_BASE must answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VringNum {
    /// Exactly this index.
    Value(u64),
    /// `"reached"`: the index the driver made available so far.
    Reached,
}

impl Serialize for VringNum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => s.serialize_u64(*v),
            Self::Reached => s.serialize_str("reached"),
        }
    }
}

impl<'de> Deserialize<'de> for VringNum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrWord::deserialize(d)? {
            NumOrWord::Num(n) => Ok(Self::Value(n)),
            NumOrWord::Word(w) if w == "reached" => Ok(Self::Reached),
            NumOrWord::Word(w) => Err(serde::de::Error::custom(format!(
                "`num` = {w:?}: a number or \"reached\""
            ))),
        }
    }
}

/// `get_vring_base`: the ring and what it must answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetVringBaseArgs {
    /// The ring, or `"all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queues>,
    /// The index the reply must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num: Option<VringNum>,
}
