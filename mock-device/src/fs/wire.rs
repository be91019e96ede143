//! The FUSE messages the reference virtio-fs device understands, as laid out in the FUSE kernel
//! protocol 7.31 (`linux/fuse.h`): little-endian like the rest of the virtio ring, every
//! structure padded to 8 bytes.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The FUSE kernel protocol major version.
pub const KERNEL_MAJOR: u32 = 7;
/// The minor version this device speaks (the 7.31 structures).
pub const KERNEL_MINOR: u32 = 31;
/// Below this minor the driver expects the 24-byte `fuse_init_out`.
pub const MINOR_FULL_INIT_OUT: u32 = 23;
/// Bytes of `fuse_init_out` for a driver older than 7.23.
pub const COMPAT_22_INIT_OUT_SIZE: usize = 24;
/// The root directory's node id.
pub const ROOT_ID: u64 = 1;

/// FUSE opcodes served (or recognised) by the device.
pub mod op {
    /// Look a name up in a directory.
    pub const LOOKUP: u32 = 1;
    /// Drop lookups of a node; no reply.
    pub const FORGET: u32 = 2;
    /// Attributes of a node.
    pub const GETATTR: u32 = 3;
    /// Open a file.
    pub const OPEN: u32 = 14;
    /// Read from an open file.
    pub const READ: u32 = 15;
    /// File system statistics.
    pub const STATFS: u32 = 17;
    /// Close an open file.
    pub const RELEASE: u32 = 18;
    /// Start the session.
    pub const INIT: u32 = 26;
    /// Open a directory.
    pub const OPENDIR: u32 = 27;
    /// Read directory entries.
    pub const READDIR: u32 = 28;
    /// Close an open directory.
    pub const RELEASEDIR: u32 = 29;
    /// End the session.
    pub const DESTROY: u32 = 38;
    /// Several FORGETs at once; no reply.
    pub const BATCH_FORGET: u32 = 42;
}

/// errno values (Linux) the device answers, positive; the reply carries their negation.
pub mod errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// I/O error (a request before INIT).
    pub const EIO: i32 = 5;
    /// Bad file handle.
    pub const EBADF: i32 = 9;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Not a directory.
    pub const ENOTDIR: i32 = 20;
    /// Is a directory.
    pub const EISDIR: i32 = 21;
    /// Invalid argument (a malformed request).
    pub const EINVAL: i32 = 22;
    /// Read-only file system.
    pub const EROFS: i32 = 30;
    /// Function not implemented (an unknown opcode).
    pub const ENOSYS: i32 = 38;
    /// Too many symbolic links (the device does not follow them).
    pub const ELOOP: i32 = 40;
    /// Protocol error (an INIT of major below 7).
    pub const EPROTO: i32 = 71;
}

/// `struct fuse_in_header` (40 bytes), at the start of every request.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InHeader {
    /// Length of the whole request, header included.
    pub len: u32,
    /// The opcode.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// The node the request acts on.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Extension length in 8-byte units (7.36; zero for 7.31).
    pub total_extlen: u16,
    /// Reserved: zero.
    pub padding: u16,
}

/// `struct fuse_out_header` (16 bytes), at the start of every reply.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct OutHeader {
    /// Length of the whole reply, header included.
    pub len: u32,
    /// 0 or a negative errno.
    pub error: i32,
    /// The request's unique.
    pub unique: u64,
}

/// `struct fuse_init_in` as of 7.31 (the first 16 bytes; later fields are ignored).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InitIn {
    /// Driver's major version.
    pub major: u32,
    /// Driver's minor version.
    pub minor: u32,
    /// Largest readahead the driver does.
    pub max_readahead: u32,
    /// Capability flags the driver offers.
    pub flags: u32,
}

/// `struct fuse_init_out` (64 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InitOut {
    /// Device's major version.
    pub major: u32,
    /// Device's minor version.
    pub minor: u32,
    /// Readahead accepted.
    pub max_readahead: u32,
    /// Capability flags accepted.
    pub flags: u32,
    /// Background requests allowed.
    pub max_background: u16,
    /// Congestion threshold.
    pub congestion_threshold: u16,
    /// Largest WRITE payload.
    pub max_write: u32,
    /// Timestamp granularity in ns.
    pub time_gran: u32,
    /// Largest request in pages.
    pub max_pages: u16,
    /// DAX mapping alignment (log2).
    pub map_alignment: u16,
    /// More flags (7.36), zero.
    pub flags2: u32,
    /// Unused.
    pub unused: [u32; 7],
}

/// `struct fuse_attr` (88 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Attr {
    /// Inode number (the node id here).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Access time, seconds.
    pub atime: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Change time, seconds.
    pub ctime: u64,
    /// Access time, nanoseconds.
    pub atimensec: u32,
    /// Modification time, nanoseconds.
    pub mtimensec: u32,
    /// Change time, nanoseconds.
    pub ctimensec: u32,
    /// File type and permissions (`S_IF*`).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number.
    pub rdev: u32,
    /// Block size.
    pub blksize: u32,
    /// Attribute flags.
    pub flags: u32,
}

/// `struct fuse_attr_out` (104 bytes), the GETATTR reply.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct AttrOut {
    /// Cache timeout, seconds.
    pub attr_valid: u64,
    /// Cache timeout, nanoseconds.
    pub attr_valid_nsec: u32,
    /// Reserved: zero.
    pub dummy: u32,
    /// The attributes.
    pub attr: Attr,
}

/// `struct fuse_entry_out` (128 bytes), the LOOKUP reply.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EntryOut {
    /// The node id found.
    pub nodeid: u64,
    /// Generation of the node id.
    pub generation: u64,
    /// Name cache timeout, seconds.
    pub entry_valid: u64,
    /// Attribute cache timeout, seconds.
    pub attr_valid: u64,
    /// Name cache timeout, nanoseconds.
    pub entry_valid_nsec: u32,
    /// Attribute cache timeout, nanoseconds.
    pub attr_valid_nsec: u32,
    /// The attributes.
    pub attr: Attr,
}

/// `struct fuse_open_in` (8 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct OpenIn {
    /// `open(2)` flags.
    pub flags: u32,
    /// `FUSE_OPEN_*` flags.
    pub open_flags: u32,
}

/// `struct fuse_open_out` (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct OpenOut {
    /// The file handle.
    pub fh: u64,
    /// `FOPEN_*` flags.
    pub open_flags: u32,
    /// Reserved: zero.
    pub padding: u32,
}

/// `struct fuse_read_in` (40 bytes), for READ and READDIR.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReadIn {
    /// The file handle.
    pub fh: u64,
    /// Offset (READDIR: the `off` of the last entry seen).
    pub offset: u64,
    /// Most bytes to return.
    pub size: u32,
    /// `FUSE_READ_*` flags.
    pub read_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// Reserved: zero.
    pub padding: u32,
}

/// `struct fuse_release_in` (24 bytes), for RELEASE and RELEASEDIR.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReleaseIn {
    /// The file handle.
    pub fh: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// `FUSE_RELEASE_*` flags.
    pub release_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
}

/// `struct fuse_forget_in` (8 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ForgetIn {
    /// Lookups to drop.
    pub nlookup: u64,
}

/// `struct fuse_batch_forget_in` (8 bytes), followed by `count` [`ForgetOne`].
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BatchForgetIn {
    /// Entries that follow.
    pub count: u32,
    /// Reserved: zero.
    pub dummy: u32,
}

/// `struct fuse_forget_one` (16 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ForgetOne {
    /// The node.
    pub nodeid: u64,
    /// Lookups to drop.
    pub nlookup: u64,
}

/// `struct fuse_statfs_out` (`struct fuse_kstatfs`, 80 bytes).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct StatfsOut {
    /// Blocks in the file system.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
    /// Reserved: zero.
    pub padding: u32,
    /// Spare.
    pub spare: [u32; 6],
}

/// `struct fuse_dirent` without its name (24 bytes); the name follows, padded to 8 bytes.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DirentHeader {
    /// Inode number.
    pub ino: u64,
    /// The offset of the next entry (what the next READDIR passes).
    pub off: u64,
    /// Name length.
    pub namelen: u32,
    /// File type (`DT_*`, the mode's type bits shifted right by 12).
    pub kind: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_fuse_h() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<StatfsOut>(), 80);
        assert_eq!(size_of::<DirentHeader>(), 24);
    }
}
