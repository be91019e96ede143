//! Typed values several steps take: a ring or every ring, and bytes written as hex.

use serde::{Deserialize, Serialize};

/// The rings a step acts on: one index, or every ring set up.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Queues {
    /// One ring.
    Index(u16),
    /// Every ring of the session (`"all"`): those GET_QUEUE_NUM stands for, or those set up.
    All,
}

impl Serialize for Queues {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Index(i) => s.serialize_u16(*i),
            Self::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Queues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrWord::deserialize(d)? {
            NumOrWord::Num(n) => u16::try_from(n)
                .map(Self::Index)
                .map_err(|_| serde::de::Error::custom(format!("`queue` = {n}: past 65535"))),
            NumOrWord::Word(w) if w == "all" => Ok(Self::All),
            NumOrWord::Word(w) => Err(serde::de::Error::custom(format!(
                "`queue` = {w:?}: a ring index or \"all\""
            ))),
        }
    }
}

/// A number or a word, as written (for the fields that take either).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(super) enum NumOrWord {
    Num(u64),
    Word(String),
}

/// Bytes written as hex digits (whitespace between them allowed): `"0100 0000"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }
}

impl std::str::FromStr for Hex {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        let bad = || format!("{text:?} is not an even number of hex digits");
        if digits.len() % 2 != 0 {
            return Err(bad());
        }
        digits
            .chunks(2)
            .map(|p| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
