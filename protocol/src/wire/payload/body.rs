//! [`Body`], a decoded payload of any layout, and [`BodyKind`], which layout a message carries.

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::config::decode_config;
use super::memory::decode_mem_table;
use super::{
    ConfigHeader, DeviceStateParams, InflightDesc, IotlbMsg, LogDesc, MAX_MEM_TABLE_REGIONS,
    MemRegion, MemTableHeader, SharedObject, ShmemConfig, ShmemMapMsg, SingleMemRegion, VringAddr,
    VringArea, VringState,
};
use crate::wire::validate::{Violation, check_add};

wire_struct!(
    /// A single u64 (features, acks, status, MTU, fd-index words).
    U64 {
        /// The value, in native byte order.
        value: u64,
    }
);

/// The kind of payload a message carries, which fixes how it is decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// No payload.
    Empty,
    /// [`U64`].
    U64,
    /// [`VringState`].
    VringState,
    /// [`VringAddr`].
    VringAddr,
    /// [`MemTableHeader`] and its regions.
    MemTable,
    /// [`SingleMemRegion`].
    SingleRegion,
    /// [`LogDesc`].
    Log,
    /// [`IotlbMsg`].
    Iotlb,
    /// [`ConfigHeader`] and its bytes.
    Config,
    /// [`VringArea`].
    VringArea,
    /// [`InflightDesc`].
    Inflight,
    /// [`SharedObject`].
    SharedObject,
    /// [`DeviceStateParams`].
    DeviceState,
    /// [`ShmemMapMsg`].
    ShmemMap,
    /// [`ShmemConfig`].
    ShmemConfig,
    /// Bytes whose layout this crate does not fix (crypto sessions, replies of unspecified
    /// size such as SET_LOG_BASE's).
    Opaque,
}

impl BodyKind {
    /// The payload size this kind always has, if it is fixed.
    pub fn fixed_size(self) -> Option<usize> {
        Some(match self {
            Self::Empty => 0,
            Self::U64 => size_of::<U64>(),
            Self::VringState => size_of::<VringState>(),
            Self::VringAddr => size_of::<VringAddr>(),
            Self::SingleRegion => size_of::<SingleMemRegion>(),
            Self::Log => size_of::<LogDesc>(),
            Self::Iotlb => size_of::<IotlbMsg>(),
            Self::VringArea => size_of::<VringArea>(),
            Self::Inflight => size_of::<InflightDesc>(),
            Self::SharedObject => size_of::<SharedObject>(),
            Self::DeviceState => size_of::<DeviceStateParams>(),
            Self::ShmemMap => size_of::<ShmemMapMsg>(),
            Self::ShmemConfig => size_of::<ShmemConfig>(),
            Self::MemTable | Self::Config | Self::Opaque => return None,
        })
    }
}

/// A decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// No payload.
    Empty,
    /// A u64.
    U64(u64),
    /// A vring state (index and number).
    VringState(VringState),
    /// A vring's addresses (SET_VRING_ADDR).
    VringAddr(VringAddr),
    /// A memory table (SET_MEM_TABLE).
    MemTable(Vec<MemRegion>),
    /// One memory region (ADD/REM_MEM_REG).
    SingleRegion(MemRegion),
    /// A log description (SET_LOG_BASE).
    Log(LogDesc),
    /// An IOTLB message (IOTLB_MSG, or a back-end's miss).
    Iotlb(IotlbMsg),
    /// A config access: header and the config bytes.
    Config(ConfigHeader, Vec<u8>),
    /// A vring area (VRING_HOST_NOTIFIER_MSG).
    VringArea(VringArea),
    /// An inflight description (GET/SET_INFLIGHT_FD).
    Inflight(InflightDesc),
    /// A shared object UUID.
    SharedObject(SharedObject),
    /// Device state transfer parameters.
    DeviceState(DeviceStateParams),
    /// A shared memory map or unmap request.
    ShmemMap(ShmemMapMsg),
    /// A shared memory configuration.
    ShmemConfig(Box<ShmemConfig>),
    /// Bytes of no fixed layout.
    Opaque(Vec<u8>),
}

/// Reads a `T` from exactly its size in bytes (any alignment).
pub(super) fn read<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<T, Violation> {
    T::read_from_bytes(bytes).map_err(|_| Violation::SizeMismatch {
        expected: size_of::<T>(),
        actual: bytes.len(),
    })
}

impl Body {
    /// The layout this body has, the [`BodyKind`] that decodes it back.
    pub fn kind(&self) -> BodyKind {
        match self {
            Self::Empty => BodyKind::Empty,
            Self::U64(_) => BodyKind::U64,
            Self::VringState(_) => BodyKind::VringState,
            Self::VringAddr(_) => BodyKind::VringAddr,
            Self::MemTable(_) => BodyKind::MemTable,
            Self::SingleRegion(_) => BodyKind::SingleRegion,
            Self::Log(_) => BodyKind::Log,
            Self::Iotlb(_) => BodyKind::Iotlb,
            Self::Config(..) => BodyKind::Config,
            Self::VringArea(_) => BodyKind::VringArea,
            Self::Inflight(_) => BodyKind::Inflight,
            Self::SharedObject(_) => BodyKind::SharedObject,
            Self::DeviceState(_) => BodyKind::DeviceState,
            Self::ShmemMap(_) => BodyKind::ShmemMap,
            Self::ShmemConfig(_) => BodyKind::ShmemConfig,
            Self::Opaque(_) => BodyKind::Opaque,
        }
    }

    /// The payload bytes of this body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Empty => Vec::new(),
            Self::U64(v) => v.to_ne_bytes().to_vec(),
            Self::VringState(s) => s.as_bytes().to_vec(),
            Self::VringAddr(a) => a.as_bytes().to_vec(),
            Self::MemTable(regions) => {
                let header = MemTableHeader {
                    nregions: regions.len() as u32,
                    padding: 0,
                };
                let mut out = header.as_bytes().to_vec();
                regions
                    .iter()
                    .for_each(|r| out.extend_from_slice(r.as_bytes()));
                out
            }
            Self::SingleRegion(r) => SingleMemRegion {
                padding: 0,
                region: *r,
            }
            .as_bytes()
            .to_vec(),
            Self::Log(l) => l.as_bytes().to_vec(),
            Self::Iotlb(m) => m.as_bytes().to_vec(),
            Self::Config(h, data) => {
                let mut out = h.as_bytes().to_vec();
                out.extend_from_slice(data);
                out
            }
            Self::VringArea(a) => a.as_bytes().to_vec(),
            Self::Inflight(i) => i.as_bytes().to_vec(),
            Self::SharedObject(s) => s.as_bytes().to_vec(),
            Self::DeviceState(d) => d.as_bytes().to_vec(),
            Self::ShmemMap(m) => m.as_bytes().to_vec(),
            Self::ShmemConfig(c) => c.as_bytes().to_vec(),
            Self::Opaque(b) => b.clone(),
        }
    }

    /// Decodes a payload of the given kind. Checks only that the bytes fit the layout; call
    /// [`Body::validate`] for the syntax rules on the values.
    pub fn decode(kind: BodyKind, bytes: &[u8]) -> Result<Self, Violation> {
        if let Some(expected) = kind.fixed_size() {
            if bytes.len() != expected {
                return Err(Violation::SizeMismatch {
                    expected,
                    actual: bytes.len(),
                });
            }
        }
        Ok(match kind {
            BodyKind::Empty => Self::Empty,
            BodyKind::U64 => Self::U64(read::<U64>(bytes)?.value),
            BodyKind::VringState => Self::VringState(read(bytes)?),
            BodyKind::VringAddr => Self::VringAddr(read(bytes)?),
            BodyKind::MemTable => Self::MemTable(decode_mem_table(bytes)?),
            BodyKind::SingleRegion => Self::SingleRegion(read::<SingleMemRegion>(bytes)?.region),
            BodyKind::Log => Self::Log(read(bytes)?),
            BodyKind::Iotlb => Self::Iotlb(read(bytes)?),
            BodyKind::Config => decode_config(bytes)?,
            BodyKind::VringArea => Self::VringArea(read(bytes)?),
            BodyKind::Inflight => Self::Inflight(read(bytes)?),
            BodyKind::SharedObject => Self::SharedObject(read(bytes)?),
            BodyKind::DeviceState => Self::DeviceState(read(bytes)?),
            BodyKind::ShmemMap => Self::ShmemMap(read(bytes)?),
            BodyKind::ShmemConfig => Self::ShmemConfig(Box::new(read(bytes)?)),
            BodyKind::Opaque => Self::Opaque(bytes.to_vec()),
        })
    }

    /// Syntax rules on the values: reserved bits, zero sizes, overflowing address arithmetic,
    /// alignment, declared counts. Nothing that depends on negotiation.
    pub fn validate(&self) -> Result<(), Violation> {
        match self {
            Self::VringAddr(a) => a.validate(),
            Self::MemTable(regions) => {
                if regions.len() > MAX_MEM_TABLE_REGIONS {
                    return Err(Violation::OutOfRange {
                        field: "nregions",
                        value: regions.len() as u64,
                        max: MAX_MEM_TABLE_REGIONS as u64,
                    });
                }
                regions.iter().try_for_each(MemRegion::validate)
            }
            Self::SingleRegion(r) => r.validate(),
            Self::Log(l) => check_add("log offset + size", l.offset, l.size).map(drop),
            Self::Iotlb(m) => m.validate(),
            Self::Config(h, data) => h.validate(data.len()),
            Self::VringArea(a) => a.validate(),
            Self::Inflight(i) => check_add(
                "inflight mmap_offset + mmap_size",
                i.mmap_offset,
                i.mmap_size,
            )
            .map(drop),
            Self::DeviceState(d) => d.validate(),
            Self::ShmemMap(m) => m.validate(),
            Self::ShmemConfig(c) => c.validate(),
            Self::Empty
            | Self::U64(_)
            | Self::VringState(_)
            | Self::SharedObject(_)
            | Self::Opaque(_) => Ok(()),
        }
    }
}
