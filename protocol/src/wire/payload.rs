//! Payload layouts (checklist 1.5) and a typed [`Body`] that encodes and decodes them.
//!
//! Every struct is `#[repr(C)]` with zerocopy derives, so its bytes are its wire form. Padding is
//! spelled out as explicit fields, as C compilers lay it out (the inflight description and the
//! IOTLB message are 24 and 32 bytes in QEMU, libvhost-user, DPDK and rust-vmm alike).

use core::mem::size_of;

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::validate::{Violation, check_add, check_align, check_reserved};

/// SET_MEM_TABLE has room for this many regions (checklist 1.3).
pub const MAX_MEM_TABLE_REGIONS: usize = 8;
/// Number of shared memory ids in GET_SHMEM_CONFIG.
pub const MAX_SHMEM_REGIONS: usize = 256;
/// Bits 0-7 of a KICK/CALL/ERR payload: the vring index.
pub const VRING_IDX_MASK: u64 = 0xff;
/// Bit 8 of a KICK/CALL/ERR payload (and of a vring area's u64): no fd is attached.
pub const VRING_NOFD_MASK: u64 = 1 << 8;
/// `VHOST_VRING_F_LOG`, the only defined bit of [`VringAddr::flags`].
pub const VRING_F_LOG: u32 = 1;

macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
                 FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
    };
}

wire_struct!(
    /// A single u64 (features, acks, status, MTU, fd-index words).
    U64 { /// The value.
    value: u64 }
);
wire_struct!(
    /// A vring state: index and a number (size, base, enable flag, endianness).
    VringState { /// The vring index.
    index: u32, /// The number.
    num: u32 }
);
wire_struct!(
    /// SET_VRING_ADDR: note the order desc, used, avail.
    VringAddr {
        /// The vring index.
        index: u32,
        /// Bit 0: `VHOST_VRING_F_LOG`.
        flags: u32,
        /// Descriptor table user address.
        desc: u64,
        /// Used ring user address.
        used: u64,
        /// Avail ring user address.
        avail: u64,
        /// Guest address of the used ring, for logging.
        log: u64,
    }
);
wire_struct!(
    /// One memory region.
    MemRegion {
        /// Guest physical address.
        guest_addr: u64,
        /// Size in bytes.
        size: u64,
        /// Front-end user (virtual) address.
        user_addr: u64,
        /// Offset into the fd where the region starts.
        mmap_offset: u64,
    }
);
wire_struct!(
    /// The 8-byte prefix of SET_MEM_TABLE; `nregions` regions follow.
    MemTableHeader { /// Number of regions that follow.
    nregions: u32, /// Padding.
    padding: u32 }
);
wire_struct!(
    /// ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region.
    SingleMemRegion { /// Padding.
    padding: u64, /// The region.
    region: MemRegion }
);
wire_struct!(
    /// SET_LOG_BASE: the log area in the attached fd.
    LogDesc { /// Log size in bytes.
    size: u64, /// Offset into the fd where the log starts.
    offset: u64 }
);
wire_struct!(
    /// An IOTLB message (`struct vhost_iotlb_msg`).
    IotlbMsg {
        /// I/O virtual address.
        iova: u64,
        /// Size.
        size: u64,
        /// User address.
        uaddr: u64,
        /// Permission: 0 none, 1 read, 2 write, 3 read-write.
        perm: u8,
        /// Type: 1 miss, 2 update, 3 invalidate, 4 access fail.
        kind: u8,
        /// C struct padding.
        padding: [u8; 6],
    }
);
wire_struct!(
    /// The 12-byte prefix of GET/SET_CONFIG; `size` config bytes follow.
    ConfigHeader {
        /// Offset into the device config space.
        offset: u32,
        /// Number of config bytes.
        size: u32,
        /// 0 = guest write of writable fields, 1 = live-migration restore.
        flags: u32,
    }
);
wire_struct!(
    /// VRING_HOST_NOTIFIER_MSG's area.
    VringArea {
        /// Bits 0-7 vring index, bit 8 no fd.
        u64_: u64,
        /// Mapping size.
        size: u64,
        /// Offset into the fd.
        offset: u64,
    }
);
wire_struct!(
    /// GET/SET_INFLIGHT_FD's description.
    InflightDesc {
        /// Size of the inflight area.
        mmap_size: u64,
        /// Offset of the area in the fd.
        mmap_offset: u64,
        /// Number of queues.
        num_queues: u16,
        /// Queue size.
        queue_size: u16,
        /// C struct padding.
        padding: u32,
    }
);
wire_struct!(
    /// A shared object UUID (its first three fields big-endian).
    SharedObject { /// The UUID bytes.
    uuid: [u8; 16] }
);
wire_struct!(
    /// SET_DEVICE_STATE_FD's transfer parameters.
    DeviceStateParams { /// 0 save (back-end → front-end), 1 load.
    direction: u32, /// 0 stopped; no other phase is defined.
    phase: u32 }
);
wire_struct!(
    /// SHMEM_MAP / SHMEM_UNMAP.
    ShmemMapMsg {
        /// Shared memory region id.
        shmid: u8,
        /// Padding.
        padding: [u8; 7],
        /// Offset into the fd.
        fd_offset: u64,
        /// Offset into the shared memory region.
        shm_offset: u64,
        /// Length.
        len: u64,
        /// Bit 0: writable.
        flags: u64,
    }
);

/// GET_SHMEM_CONFIG's reply: a count and 256 sizes indexed by shmid (2056 bytes).
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ShmemConfig {
    /// Number of entries with a non-zero size.
    pub nregions: u32,
    /// Padding.
    pub padding: u32,
    /// Region sizes, index = shmid; 0 = unused id.
    pub sizes: [u64; MAX_SHMEM_REGIONS],
}

impl Default for ShmemConfig {
    fn default() -> Self {
        Self {
            nregions: 0,
            padding: 0,
            sizes: [0; MAX_SHMEM_REGIONS],
        }
    }
}

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
    /// A vring state.
    VringState(VringState),
    /// A vring address.
    VringAddr(VringAddr),
    /// A memory table (SET_MEM_TABLE).
    MemTable(Vec<MemRegion>),
    /// One memory region (ADD/REM_MEM_REG).
    SingleRegion(MemRegion),
    /// A log description.
    Log(LogDesc),
    /// An IOTLB message.
    Iotlb(IotlbMsg),
    /// A config access: header and the config bytes.
    Config(ConfigHeader, Vec<u8>),
    /// A vring area.
    VringArea(VringArea),
    /// An inflight description.
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

fn read<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<T, Violation> {
    T::read_from_bytes(bytes).map_err(|_| Violation::SizeMismatch {
        expected: size_of::<T>(),
        actual: bytes.len(),
    })
}

impl Body {
    /// The kind of this body.
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

fn decode_mem_table(bytes: &[u8]) -> Result<Vec<MemRegion>, Violation> {
    let header_len = size_of::<MemTableHeader>();
    let (header, rest) = bytes
        .split_at_checked(header_len)
        .ok_or(Violation::SizeMismatch {
            expected: header_len,
            actual: bytes.len(),
        })?;
    let header: MemTableHeader = read(header)?;
    let n = header.nregions as usize;
    if n > MAX_MEM_TABLE_REGIONS {
        return Err(Violation::OutOfRange {
            field: "nregions",
            value: n as u64,
            max: MAX_MEM_TABLE_REGIONS as u64,
        });
    }
    let expected = header_len + n * size_of::<MemRegion>();
    if bytes.len() != expected {
        return Err(Violation::SizeMismatch {
            expected,
            actual: bytes.len(),
        });
    }
    // Copied region by region: `rest` need not be 8-byte aligned (a payload read at offset 12
    // of a buffer holding the header is not), and a zero-copy view of it would fail there.
    rest.chunks_exact(size_of::<MemRegion>())
        .map(read::<MemRegion>)
        .collect()
}

fn decode_config(bytes: &[u8]) -> Result<Body, Violation> {
    let header_len = size_of::<ConfigHeader>();
    let (header, data) = bytes
        .split_at_checked(header_len)
        .ok_or(Violation::SizeMismatch {
            expected: header_len,
            actual: bytes.len(),
        })?;
    Ok(Body::Config(read(header)?, data.to_vec()))
}

impl VringAddr {
    /// Reserved flag bits, and the alignments every ring layout satisfies (descriptor table 16,
    /// used/device area 4, avail/driver area 2).
    pub fn validate(&self) -> Result<(), Violation> {
        check_reserved("vring address flags", self.flags.into(), VRING_F_LOG.into())?;
        check_align("descriptor table address", self.desc, 16)?;
        check_align("used ring address", self.used, 4)?;
        check_align("avail ring address", self.avail, 2)
    }
}

impl MemRegion {
    /// A region has a size, and none of its ranges wraps around 2^64.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.size == 0 {
            return Err(Violation::ZeroSize {
                field: "region size",
            });
        }
        check_add("region guest_addr + size", self.guest_addr, self.size)?;
        check_add("region user_addr + size", self.user_addr, self.size)?;
        check_add("region mmap_offset + size", self.mmap_offset, self.size).map(drop)
    }

    /// Whether `[addr, addr + len)` lies inside the region's guest range.
    pub fn contains_guest(&self, addr: u64, len: u64) -> bool {
        contains(self.guest_addr, self.size, addr, len)
    }

    /// Whether `[addr, addr + len)` lies inside the region's user range.
    pub fn contains_user(&self, addr: u64, len: u64) -> bool {
        contains(self.user_addr, self.size, addr, len)
    }
}

fn contains(base: u64, size: u64, addr: u64, len: u64) -> bool {
    addr >= base
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= base.saturating_add(size))
}

impl IotlbMsg {
    /// Permission 0 to 3 and type 1 to 4.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.perm > 3 {
            return Err(Violation::OutOfRange {
                field: "iotlb perm",
                value: self.perm.into(),
                max: 3,
            });
        }
        if !(1..=4).contains(&self.kind) {
            return Err(Violation::OutOfRange {
                field: "iotlb type",
                value: self.kind.into(),
                max: 4,
            });
        }
        check_add("iotlb iova + size", self.iova, self.size).map(drop)
    }
}

impl ConfigHeader {
    /// The declared size matches the bytes, the range does not wrap, flags are 0 or 1.
    pub fn validate(&self, data_len: usize) -> Result<(), Violation> {
        if self.size as usize != data_len {
            return Err(Violation::CountMismatch {
                field: "config size",
                declared: self.size.into(),
                actual: data_len as u64,
            });
        }
        if self.offset.checked_add(self.size).is_none() {
            return Err(Violation::Overflow {
                field: "config offset + size",
                base: self.offset.into(),
                len: self.size.into(),
            });
        }
        if self.flags > 1 {
            return Err(Violation::OutOfRange {
                field: "config flags",
                value: self.flags.into(),
                max: 1,
            });
        }
        Ok(())
    }
}

impl VringArea {
    /// Only bits 0-8 of the index word are defined, and the range does not wrap.
    pub fn validate(&self) -> Result<(), Violation> {
        check_reserved(
            "vring area index word",
            self.u64_,
            VRING_IDX_MASK | VRING_NOFD_MASK,
        )?;
        check_add("vring area offset + size", self.offset, self.size).map(drop)
    }
}

impl DeviceStateParams {
    /// Direction 0 or 1; phase 0.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.direction > 1 {
            return Err(Violation::OutOfRange {
                field: "transfer direction",
                value: self.direction.into(),
                max: 1,
            });
        }
        if self.phase != 0 {
            return Err(Violation::OutOfRange {
                field: "transfer phase",
                value: self.phase.into(),
                max: 0,
            });
        }
        Ok(())
    }
}

impl ShmemMapMsg {
    /// Bit 0 is the only flag, the length is non-zero and no range wraps.
    pub fn validate(&self) -> Result<(), Violation> {
        check_reserved("shmem flags", self.flags, 1)?;
        if self.len == 0 {
            return Err(Violation::ZeroSize { field: "shmem len" });
        }
        check_add("shmem shm_offset + len", self.shm_offset, self.len)?;
        check_add("shmem fd_offset + len", self.fd_offset, self.len).map(drop)
    }
}

impl ShmemConfig {
    /// `nregions` counts the non-zero sizes.
    pub fn validate(&self) -> Result<(), Violation> {
        let actual = self.sizes.iter().filter(|&&s| s != 0).count() as u64;
        if u64::from(self.nregions) != actual {
            return Err(Violation::CountMismatch {
                field: "shmem nregions",
                declared: self.nregions.into(),
                actual,
            });
        }
        Ok(())
    }
}

/// Builds the u64 of SET_VRING_KICK/CALL/ERR: the index, and bit 8 when no fd is attached.
pub fn vring_fd_word(index: u8, no_fd: bool) -> u64 {
    u64::from(index) | if no_fd { VRING_NOFD_MASK } else { 0 }
}

/// Checks the u64 of SET_VRING_KICK/CALL/ERR: only bits 0-8 are defined.
pub fn validate_vring_fd_word(word: u64) -> Result<(), Violation> {
    check_reserved(
        "vring fd index word",
        word,
        VRING_IDX_MASK | VRING_NOFD_MASK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn a_mem_table_decodes_whole_from_an_unaligned_slice() {
        let regions: Vec<MemRegion> = (0..3u64)
            .map(|i| MemRegion {
                guest_addr: i << 21,
                size: 1 << 20,
                user_addr: 0x7f00_0000_0000 + (i << 21),
                mmap_offset: i,
            })
            .collect();
        let body = Body::MemTable(regions);
        // After a 12-byte header, as on the wire: the regions start at offset 20.
        let mut buf = vec![0u8; 12];
        buf.extend_from_slice(&body.encode());
        assert_eq!(Body::decode(BodyKind::MemTable, &buf[12..]), Ok(body));
    }

    #[test]
    fn sizes_match_checklist_1_5() {
        assert_eq!(size_of::<U64>(), 8);
        assert_eq!(size_of::<VringState>(), 8);
        assert_eq!(size_of::<VringAddr>(), 40);
        assert_eq!(size_of::<MemRegion>(), 32);
        assert_eq!(size_of::<MemTableHeader>(), 8);
        assert_eq!(size_of::<SingleMemRegion>(), 40);
        assert_eq!(size_of::<LogDesc>(), 16);
        assert_eq!(size_of::<IotlbMsg>(), 32);
        assert_eq!(size_of::<ConfigHeader>(), 12);
        assert_eq!(size_of::<VringArea>(), 24);
        assert_eq!(size_of::<InflightDesc>(), 24);
        assert_eq!(size_of::<SharedObject>(), 16);
        assert_eq!(size_of::<DeviceStateParams>(), 8);
        assert_eq!(size_of::<ShmemMapMsg>(), 40);
        assert_eq!(size_of::<ShmemConfig>(), 2056);
    }

    #[test]
    fn offsets_match_checklist_1_5() {
        assert_eq!(offset_of!(VringState, num), 4);
        assert_eq!(
            [
                offset_of!(VringAddr, flags),
                offset_of!(VringAddr, desc),
                offset_of!(VringAddr, used)
            ],
            [4, 8, 16]
        );
        assert_eq!(
            [offset_of!(VringAddr, avail), offset_of!(VringAddr, log)],
            [24, 32]
        );
        assert_eq!(
            [
                offset_of!(MemRegion, size),
                offset_of!(MemRegion, user_addr),
                offset_of!(MemRegion, mmap_offset)
            ],
            [8, 16, 24]
        );
        assert_eq!(offset_of!(SingleMemRegion, region), 8);
        assert_eq!(offset_of!(LogDesc, offset), 8);
        assert_eq!(
            [
                offset_of!(IotlbMsg, size),
                offset_of!(IotlbMsg, uaddr),
                offset_of!(IotlbMsg, perm)
            ],
            [8, 16, 24]
        );
        assert_eq!(offset_of!(IotlbMsg, kind), 25);
        assert_eq!(
            [
                offset_of!(ConfigHeader, size),
                offset_of!(ConfigHeader, flags)
            ],
            [4, 8]
        );
        assert_eq!(
            [offset_of!(VringArea, size), offset_of!(VringArea, offset)],
            [8, 16]
        );
        assert_eq!(
            [
                offset_of!(InflightDesc, mmap_offset),
                offset_of!(InflightDesc, num_queues),
                offset_of!(InflightDesc, queue_size)
            ],
            [8, 16, 18]
        );
        assert_eq!(offset_of!(DeviceStateParams, phase), 4);
        assert_eq!(
            [
                offset_of!(ShmemMapMsg, fd_offset),
                offset_of!(ShmemMapMsg, shm_offset),
                offset_of!(ShmemMapMsg, len),
                offset_of!(ShmemMapMsg, flags)
            ],
            [8, 16, 24, 32]
        );
        assert_eq!(offset_of!(ShmemConfig, sizes), 8);
    }

    #[test]
    fn overflowing_region_arithmetic_is_a_violation() {
        let r = MemRegion {
            guest_addr: u64::MAX - 10,
            size: 4096,
            user_addr: 0,
            mmap_offset: 0,
        };
        assert!(matches!(r.validate(), Err(Violation::Overflow { .. })));
        let zero = MemRegion { size: 0, ..r };
        assert_eq!(
            zero.validate(),
            Err(Violation::ZeroSize {
                field: "region size"
            })
        );
    }

    #[test]
    fn mem_table_with_nine_regions_or_a_lying_count_is_rejected() {
        let mut bytes = Body::MemTable(vec![MemRegion::default(); 2]).encode();
        bytes[0] = 3;
        assert!(matches!(
            Body::decode(BodyKind::MemTable, &bytes),
            Err(Violation::SizeMismatch {
                expected: 104,
                actual: 72
            })
        ));
        bytes[0] = 9;
        assert!(matches!(
            Body::decode(BodyKind::MemTable, &bytes),
            Err(Violation::OutOfRange { .. })
        ));
    }

    #[test]
    fn misaligned_ring_and_reserved_flags_are_reported() {
        let a = VringAddr {
            desc: 0x1008,
            ..Default::default()
        };
        assert!(matches!(
            a.validate(),
            Err(Violation::Misaligned { align: 16, .. })
        ));
        let a = VringAddr {
            flags: 2,
            ..Default::default()
        };
        assert!(matches!(
            a.validate(),
            Err(Violation::ReservedBits { bits: 2, .. })
        ));
        assert!(validate_vring_fd_word(vring_fd_word(3, true)).is_ok());
        assert!(validate_vring_fd_word(1 << 9).is_err());
    }
}
