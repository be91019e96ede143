//! What one fuzz case is: a session stage to reach, then one malformed input (a message on the
//! wire, or descriptor chains in guest memory). Plain serde data, so a case can be saved next to
//! the scenario it becomes and read back by `vhu-conform replay`.

use serde::{Deserialize, Serialize};

/// How far a well-formed session goes before the fuzzed input is sent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Nothing sent yet, on a process that has served no connection before: some back-ends
    /// only crash on a malformed first message (a short payload read past its end finds
    /// leftover valid bytes once a session has run). A persistent worker starts a new process
    /// for it; with `--backend` (one process) it is [`Stage::Fresh`].
    NewProcess,
    /// Nothing sent yet on this connection.
    Fresh,
    /// GET_FEATURES .. SET_FEATURES done (QEMU's order).
    Negotiated,
    /// Negotiated, then SET_MEM_TABLE with the default two-region layout.
    Memory,
    /// Memory, then ring 0 set up and enabled.
    Rings,
}

/// One fuzz case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// The stage reached before the input.
    pub stage: Stage,
    /// The input.
    pub input: Input,
}

/// The malformed input of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// One message on the main channel.
    Message(MessageCase),
    /// Descriptor chains written into ring 0, then a kick.
    Chain(ChainCase),
}

/// A message as bytes: any code, any flags, a size field that may lie, fds of any kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCase {
    /// The request code (known or not).
    pub code: u32,
    /// The header's flags word.
    pub flags: u32,
    /// The header's size field when it lies; absent: the payload's length.
    pub size: Option<u32>,
    /// The payload bytes, in hex.
    pub payload_hex: String,
    /// How many fds ride on the message.
    pub fds: usize,
    /// What those fds are.
    pub fd_kind: FdKind,
}

impl MessageCase {
    /// The payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        from_hex(&self.payload_hex)
    }

    /// The size field as sent.
    pub fn size_field(&self) -> u32 {
        self.size.unwrap_or(self.payload_hex.len() as u32 / 2)
    }

    /// Whether the back-end receives exactly one whole message: otherwise it waits for bytes
    /// that never come, or reads our next message as garbage, and no reply can be expected on
    /// this connection (R-WIRE-07, R-WIRE-15).
    pub fn framed(&self) -> bool {
        self.size_field() as usize == self.payload_hex.len() / 2
    }
}

/// The kind of fd attached to a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// An eventfd (what KICK/CALL/ERR take).
    Eventfd,
    /// A 64 KiB memfd (what memory messages take; [`crate::fuzz::exec::MEMFD_BYTES`]).
    Memfd,
    /// The read end of a pipe whose write end is closed.
    Pipe,
    /// One end of a Unix socket pair whose other end is closed.
    Socket,
    /// `/dev/null`.
    Null,
}

impl FdKind {
    /// The scenario file's `fd_kind` for this kind (a pipe stands for the kinds a scenario
    /// cannot make).
    pub fn scenario_kind(self) -> crate::scenario::model::FdKind {
        use crate::scenario::model::FdKind as Kind;
        match self {
            Self::Eventfd => Kind::Eventfd,
            Self::Memfd => Kind::Memfd,
            Self::Pipe | Self::Socket | Self::Null => Kind::Pipe,
        }
    }
}

/// Descriptor tables for ring 0 (size [`RING_SIZE`]) and the heads made available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCase {
    /// Entries 0.. of the ring's descriptor table (the rest stay zero).
    pub table: Vec<Desc>,
    /// An indirect table in guest memory (what [`Addr::Indirect`] points at).
    pub indirect: Vec<Desc>,
    /// A second indirect table (what [`Addr::Nested`] points at: indirect inside indirect).
    pub nested: Vec<Desc>,
    /// Heads written into the avail ring, in order.
    pub heads: Vec<u16>,
}

/// The ring size of descriptor-chain cases.
pub const RING_SIZE: u16 = 64;

/// One split descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desc {
    /// Where it points.
    pub addr: Addr,
    /// How long it says the buffer is.
    pub len: Len,
    /// `VIRTQ_DESC_F_*` bits, possibly undefined ones.
    pub flags: u16,
    /// The `next` field.
    pub next: u16,
}

/// A descriptor's address, named by what it points at so a case reads well and shrinks well.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Addr {
    /// One of the case's 4 KiB data buffers (0 holds a blk read header, 3 a write header).
    Buffer(u8),
    /// The indirect table.
    Indirect,
    /// The nested indirect table.
    Nested,
    /// The hole between the two guest memory regions.
    Hole,
    /// 8 bytes before the end of the last region, so any length crosses the end.
    PastEnd,
    /// A raw guest address (written in hex: TOML integers stop at i64::MAX).
    Raw(#[serde(with = "hex_u64")] u64),
}

/// A descriptor's length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Len {
    /// What the target really is: 4096 for a buffer, 16 per entry for a table.
    Exact,
    /// This many bytes.
    Value(u32),
}

/// A u64 as a `0x` hex string in TOML.
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string; invalid digit pairs read as 0 (the string is always ours).
pub fn from_hex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .unwrap_or(0)
        })
        .collect()
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.input {
            Input::Message(m) => {
                let name = vhu_protocol::FrontendReq::from_code(m.code).map_or_else(
                    |_| format!("unknown code {}", m.code),
                    |r| r.spec_name().into(),
                );
                write!(
                    f,
                    "{:?} stage: {name} flags={:#x} size={}{} payload={} bytes fds={}",
                    self.stage,
                    m.flags,
                    m.size_field(),
                    if m.framed() { "" } else { " (lies)" },
                    m.payload_hex.len() / 2,
                    m.fds
                )?;
                if m.fds > 0 {
                    write!(f, " ({:?})", m.fd_kind)?;
                }
                Ok(())
            }
            Input::Chain(c) => write!(
                f,
                "{:?} stage: descriptor chains, heads {:?}, table {:?}, indirect {:?}, nested {:?}",
                self.stage, c.heads, c.table, c.indirect, c.nested
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = vec![0, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&b)), b);
    }

    #[test]
    fn a_case_survives_toml() {
        let case = Case {
            stage: Stage::Rings,
            input: Input::Chain(ChainCase {
                table: vec![Desc {
                    addr: Addr::Raw(u64::MAX),
                    len: Len::Value(7),
                    flags: 1,
                    next: 0,
                }],
                indirect: vec![],
                nested: vec![Desc {
                    addr: Addr::Buffer(2),
                    len: Len::Exact,
                    flags: 2,
                    next: 9,
                }],
                heads: vec![0, 64],
            }),
        };
        let text = toml::to_string(&case).unwrap();
        assert_eq!(toml::from_str::<Case>(&text).unwrap(), case);
    }
}
