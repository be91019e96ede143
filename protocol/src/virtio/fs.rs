//! virtio-fs request layouts: FUSE messages as the virtio-fs device carries them (virtio 1.2
//! section 5.11; the FUSE kernel protocol, Linux `include/uapi/linux/fuse.h`). Every request is a
//! [`InHeader`] and an opcode-specific body in driver-readable buffers; every reply (FORGET has
//! none) a [`OutHeader`] and a body in device-writable buffers. Layouts only.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The FUSE kernel protocol major version (FUSE_KERNEL_VERSION).
pub const KERNEL_VERSION: u32 = 7;
/// The minor version vhu-conform speaks (7.31: the first with virtio-fs, DAX map alignment).
pub const KERNEL_MINOR: u32 = 31;
/// The node id of the shared directory's root (FUSE_ROOT_ID).
pub const ROOT_ID: u64 = 1;

/// FUSE_LOOKUP: a name in a directory.
pub const OP_LOOKUP: u32 = 1;
/// FUSE_FORGET: drop lookups of a node; no reply.
pub const OP_FORGET: u32 = 2;
/// FUSE_GETATTR: a node's attributes.
pub const OP_GETATTR: u32 = 3;
/// FUSE_OPEN: open a file.
pub const OP_OPEN: u32 = 14;
/// FUSE_READ: read an open file.
pub const OP_READ: u32 = 15;
/// FUSE_RELEASE: close an open file.
pub const OP_RELEASE: u32 = 18;
/// FUSE_INIT: the session's first request.
pub const OP_INIT: u32 = 26;

/// `ENOENT` (the errno a missing name answers, negated in [`OutHeader::error`]).
pub const ENOENT: i32 = 2;
/// `ENOSYS` (the errno an unknown opcode answers).
pub const ENOSYS: i32 = 38;

/// `S_IFMT`: the file type bits of a mode.
pub const S_IFMT: u32 = 0o170000;
/// `S_IFDIR`: a directory.
pub const S_IFDIR: u32 = 0o040000;
/// `S_IFREG`: a regular file.
pub const S_IFREG: u32 = 0o100000;

/// `fuse_in_header` (40 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InHeader {
    /// Bytes of the whole request, header included.
    pub len: u32,
    /// `OP_*`.
    pub opcode: u32,
    /// The request's id, echoed by the reply.
    pub unique: u64,
    /// The node the request is about.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Extension bytes after the body, in 8-byte units.
    pub total_extlen: u16,
    /// Reserved: zero.
    pub padding: u16,
}

/// `fuse_out_header` (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct OutHeader {
    /// Bytes of the whole reply, header included.
    pub len: u32,
    /// 0, or a negative errno.
    pub error: i32,
    /// The request's `unique`.
    pub unique: u64,
}

/// `fuse_init_in` without the 7.36 extension (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InitIn {
    /// Protocol major.
    pub major: u32,
    /// Protocol minor.
    pub minor: u32,
    /// Readahead the kernel allows.
    pub max_readahead: u32,
    /// `FUSE_*` capability flags.
    pub flags: u32,
}

/// The first 24 bytes of `fuse_init_out` (what every minor has; 7.23+ replies 64 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InitOutPrefix {
    /// Protocol major.
    pub major: u32,
    /// Protocol minor.
    pub minor: u32,
    /// Readahead the server accepts.
    pub max_readahead: u32,
    /// Capability flags the server accepts.
    pub flags: u32,
    /// Background requests.
    pub max_background: u16,
    /// Congestion threshold.
    pub congestion_threshold: u16,
    /// Largest write.
    pub max_write: u32,
}

/// Bytes of a full `fuse_init_out` (protocol 7.23 and later).
pub const INIT_OUT_SIZE: usize = 64;

/// `fuse_attr` (88 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Access time (s).
    pub atime: u64,
    /// Modification time (s).
    pub mtime: u64,
    /// Change time (s).
    pub ctime: u64,
    /// Access time (ns).
    pub atimensec: u32,
    /// Modification time (ns).
    pub mtimensec: u32,
    /// Change time (ns).
    pub ctimensec: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device.
    pub rdev: u32,
    /// Block size.
    pub blksize: u32,
    /// `FUSE_ATTR_*`.
    pub flags: u32,
}

impl Attr {
    /// The file type bits of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// `fuse_getattr_in` (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GetattrIn {
    /// `FUSE_GETATTR_FH` when `fh` is set.
    pub getattr_flags: u32,
    /// Reserved: zero.
    pub dummy: u32,
    /// File handle.
    pub fh: u64,
}

/// `fuse_attr_out` (104 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct AttrOut {
    /// Cache validity (s).
    pub attr_valid: u64,
    /// Cache validity (ns).
    pub attr_valid_nsec: u32,
    /// Reserved: zero.
    pub dummy: u32,
    /// The attributes.
    pub attr: Attr,
}

/// `fuse_entry_out` (128 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EntryOut {
    /// The node found.
    pub nodeid: u64,
    /// Its generation.
    pub generation: u64,
    /// Name cache validity (s).
    pub entry_valid: u64,
    /// Attribute cache validity (s).
    pub attr_valid: u64,
    /// Name cache validity (ns).
    pub entry_valid_nsec: u32,
    /// Attribute cache validity (ns).
    pub attr_valid_nsec: u32,
    /// The node's attributes.
    pub attr: Attr,
}

/// `fuse_open_in` (8 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct OpenIn {
    /// `open(2)` flags (`O_RDONLY` = 0).
    pub flags: u32,
    /// `FUSE_OPEN_*`.
    pub open_flags: u32,
}

/// `fuse_open_out` (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct OpenOut {
    /// File handle.
    pub fh: u64,
    /// `FOPEN_*`.
    pub open_flags: u32,
    /// Passthrough backing id.
    pub backing_id: i32,
}

/// `fuse_read_in` (40 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReadIn {
    /// File handle.
    pub fh: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
    /// `FUSE_READ_*`.
    pub read_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// Reserved: zero.
    pub padding: u32,
}

/// `fuse_release_in` (24 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReleaseIn {
    /// File handle.
    pub fh: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// `FUSE_RELEASE_*`.
    pub release_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
}

/// `fuse_forget_in` (8 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ForgetIn {
    /// Lookups to drop.
    pub nlookup: u64,
}

/// `struct virtio_fs_config` (virtio 1.2 5.11.4): 40 bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FsConfig {
    /// The file system's name, UTF-8, NUL-padded (not terminated when 36 bytes long).
    pub tag: [u8; 36],
    /// Request queues (after the hiprio queue).
    pub num_request_queues: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_fuse_h() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitIn>(), 16);
        assert_eq!(size_of::<InitOutPrefix>(), 24);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<FsConfig>(), 40);
    }
}
