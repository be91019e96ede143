//! The virtio-fs steps: a file in the shared directory, and the FUSE requests on it.

use serde::{Deserialize, Serialize};

/// `fs_file`: a file in the shared directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsFileArgs {
    /// Its name in the shared directory's root.
    pub name: String,
    /// Its size (default 4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u32>,
    /// Every byte this value (default: a position-dependent sequence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u8>,
}

/// `fs_getattr`: of the root, or of a file looked up before.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsGetattrArgs {
    /// The file (default: the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_lookup`: a name in the root.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsLookupArgs {
    /// The name looked up in the shared directory's root.
    pub name: String,
    /// It must not exist (-ENOENT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<bool>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_open`, `fs_release`, `fs_forget`: a file named before.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsNameArgs {
    /// The file, by the name a `fs_lookup` step looked up.
    pub name: String,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_read`: bytes of an open file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsReadArgs {
    /// The file (opened before).
    pub name: String,
    /// Offset in the file (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_offset: Option<u64>,
    /// Bytes asked for (default 4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_size: Option<u32>,
    /// The chain goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `fs_unknown`: the opcode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsUnknownArgs {
    /// An opcode FUSE does not define (default 9999).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opcode: Option<u32>,
}
