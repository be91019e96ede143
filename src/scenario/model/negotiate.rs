//! `negotiate`: the features a step asks for, by name, checked against the feature tables at
//! load.

use serde::{Deserialize, Serialize};

/// A feature name (`VERSION_1`, `REPLY_ACK`) or `bit:N`, checked against the virtio (`V =
/// true`) or protocol table at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName<const VIRTIO: bool>(String);

/// A virtio feature name.
pub type VirtioFeature = FeatureName<true>;
/// A protocol feature name.
pub type ProtocolFeature = FeatureName<false>;

impl<const VIRTIO: bool> FeatureName<VIRTIO> {
    /// The feature's bit mask.
    pub fn bits(&self) -> u64 {
        let lookup = if VIRTIO {
            crate::features::virtio_bit
        } else {
            crate::features::protocol_bit
        };
        lookup(&self.0).unwrap_or(0)
    }

    /// The name as written.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl<const VIRTIO: bool> Serialize for FeatureName<VIRTIO> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de, const VIRTIO: bool> Deserialize<'de> for FeatureName<VIRTIO> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let known = if VIRTIO {
            crate::features::virtio_bit(&name)
        } else {
            crate::features::protocol_bit(&name)
        };
        let kind = if VIRTIO { "virtio" } else { "protocol" };
        match known {
            Some(_) => Ok(Self(name)),
            None => Err(serde::de::Error::custom(format!(
                "unknown {kind} feature name {name:?}"
            ))),
        }
    }
}

/// Which features a `negotiate` step asks for: every one offered, or those named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Features<const VIRTIO: bool> {
    /// `"all"`: every feature offered (the default).
    All,
    /// Exactly the features named.
    Only(Vec<FeatureName<VIRTIO>>),
}

impl<const VIRTIO: bool> Serialize for Features<VIRTIO> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => s.serialize_str("all"),
            Self::Only(v) => v.serialize(s),
        }
    }
}

impl<'de, const VIRTIO: bool> Deserialize<'de> for Features<VIRTIO> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Word(String),
            List(Vec<String>),
        }
        let names = match Written::deserialize(d)? {
            Written::Word(w) if w == "all" => return Ok(Self::All),
            Written::Word(w) => vec![w],
            Written::List(v) => v,
        };
        names
            .into_iter()
            .map(|n| FeatureName::deserialize(toml::Value::String(n)))
            .collect::<Result<_, _>>()
            .map(Self::Only)
            .map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// `negotiate`: which features to take.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegotiateArgs {
    /// Virtio features: `"all"` offered (default) or the names to take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Features<true>>,
    /// Protocol features: `"all"` offered (default) or the names to take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Features<false>>,
    /// Protocol features to leave out of what is taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_protocol: Vec<ProtocolFeature>,
}
