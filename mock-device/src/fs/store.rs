//! What the reference virtio-fs device serves: an empty root directory, or a read-only
//! passthrough of a host directory. Node ids come from a table (the root is
//! [`ROOT_ID`]); a name is one path component (no `/`, not `.` or `..`) and symbolic links are
//! never followed, so nothing outside the shared directory is reachable.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use zerocopy::IntoBytes;

use super::wire::{Attr, DirentHeader, ROOT_ID, StatfsOut, errno};

/// `S_IFMT` and the file types of `st_mode`.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
/// `O_ACCMODE` and `O_RDONLY` of `open(2)` flags.
const O_ACCMODE: u32 = 0o3;
const O_RDONLY: u32 = 0;
/// Block size reported for the empty root and by STATFS.
const BLOCK: u32 = 4096;
/// Longest name reported by STATFS.
const NAME_MAX: u32 = 255;

/// A FUSE error: the positive errno the reply negates.
pub(crate) type Errno = i32;

/// A node the driver has looked up.
#[derive(Debug)]
struct Node {
    /// Path below the shared directory (empty for the root).
    rel: PathBuf,
    /// Lookups not yet forgotten (the root is never dropped).
    nlookup: u64,
}

/// An open file or directory.
#[derive(Debug)]
enum Handle {
    File(File),
    /// The directory's entries as READDIR returns them: (ino, DT_ type, name), `.` and `..`
    /// first, taken at OPENDIR.
    Dir(Vec<(u64, u32, Vec<u8>)>),
}

/// The node and handle tables over the backing directory.
#[derive(Debug)]
pub(crate) struct Store {
    /// The shared directory; `None` serves an empty root.
    root: Option<PathBuf>,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_node: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

impl Store {
    /// A store over `root` (or an empty root directory).
    pub(crate) fn new(root: Option<PathBuf>) -> Self {
        let mut s = Self {
            root,
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next_node: ROOT_ID + 1,
            handles: HashMap::new(),
            next_fh: 1,
        };
        s.clear();
        s
    }

    /// Forgets every node but the root and closes every handle (DESTROY, device reset).
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
        self.by_path.clear();
        self.handles.clear();
        self.nodes.insert(
            ROOT_ID,
            Node {
                rel: PathBuf::new(),
                nlookup: 1,
            },
        );
        self.by_path.insert(PathBuf::new(), ROOT_ID);
    }

    fn node(&self, nodeid: u64) -> Result<&Node, Errno> {
        self.nodes.get(&nodeid).ok_or(errno::ENOENT)
    }

    /// `lstat` of a node's path (never following a symbolic link).
    fn meta(&self, nodeid: u64) -> Result<Option<Metadata>, Errno> {
        let node = self.node(nodeid)?;
        let Some(root) = &self.root else {
            return Ok(None);
        };
        root.join(&node.rel)
            .symlink_metadata()
            .map(Some)
            .map_err(io_errno)
    }

    /// The attributes of a node (`ino` is its node id).
    pub(crate) fn attr(&self, nodeid: u64) -> Result<Attr, Errno> {
        Ok(match self.meta(nodeid)? {
            Some(m) => attr_of(nodeid, &m),
            None => Attr {
                ino: nodeid,
                mode: S_IFDIR | 0o755,
                nlink: 2,
                blksize: BLOCK,
                ..Attr::default()
            },
        })
    }

    /// Looks `name` up in directory `parent` and counts one lookup of the node found.
    pub(crate) fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<(u64, Attr), Errno> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(errno::EINVAL);
        }
        let dir = self.attr(parent)?;
        if dir.mode & S_IFMT != S_IFDIR {
            return Err(errno::ENOTDIR);
        }
        let Some(root) = &self.root else {
            return Err(errno::ENOENT);
        };
        let rel = self.node(parent)?.rel.join(OsStr::from_bytes(name));
        let meta = root.join(&rel).symlink_metadata().map_err(io_errno)?;
        let id = match self.by_path.get(&rel) {
            Some(&id) => id,
            None => {
                let id = self.next_node;
                self.next_node += 1;
                self.by_path.insert(rel.clone(), id);
                self.nodes.insert(id, Node { rel, nlookup: 0 });
                id
            }
        };
        if let Some(n) = self.nodes.get_mut(&id) {
            n.nlookup += 1;
        }
        Ok((id, attr_of(id, &meta)))
    }

    /// Drops `nlookup` lookups of a node; at zero the node id is released (never the root).
    pub(crate) fn forget(&mut self, nodeid: u64, nlookup: u64) {
        if nodeid == ROOT_ID {
            return;
        }
        let Some(n) = self.nodes.get_mut(&nodeid) else {
            return;
        };
        n.nlookup = n.nlookup.saturating_sub(nlookup);
        if n.nlookup == 0 {
            let rel = n.rel.clone();
            self.nodes.remove(&nodeid);
            self.by_path.remove(&rel);
        }
    }

    fn new_handle(&mut self, h: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, h);
        fh
    }

    /// Opens a regular file for reading (the store is read-only).
    pub(crate) fn open(&mut self, nodeid: u64, flags: u32) -> Result<u64, Errno> {
        let attr = self.attr(nodeid)?;
        match attr.mode & S_IFMT {
            S_IFDIR => return Err(errno::EISDIR),
            S_IFREG => {}
            _ => return Err(errno::ELOOP),
        }
        if flags & O_ACCMODE != O_RDONLY {
            return Err(errno::EROFS);
        }
        let root = self.root.as_ref().ok_or(errno::ENOENT)?;
        let file = File::open(root.join(&self.node(nodeid)?.rel)).map_err(io_errno)?;
        Ok(self.new_handle(Handle::File(file)))
    }

    /// Up to `size` bytes of an open file at `offset` (fewer at the end of the file).
    pub(crate) fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let Some(Handle::File(f)) = self.handles.get_mut(&fh) else {
            return Err(errno::EBADF);
        };
        f.seek(SeekFrom::Start(offset)).map_err(io_errno)?;
        let mut out = Vec::new();
        f.take(u64::from(size))
            .read_to_end(&mut out)
            .map_err(io_errno)?;
        Ok(out)
    }

    /// Opens a directory: its entries are listed now.
    pub(crate) fn opendir(&mut self, nodeid: u64) -> Result<u64, Errno> {
        let attr = self.attr(nodeid)?;
        if attr.mode & S_IFMT != S_IFDIR {
            return Err(errno::ENOTDIR);
        }
        let mut entries = vec![
            (nodeid, S_IFDIR >> 12, b".".to_vec()),
            (ROOT_ID, S_IFDIR >> 12, b"..".to_vec()),
        ];
        if let Some(root) = &self.root {
            let dir = root.join(&self.node(nodeid)?.rel);
            let mut names = Vec::new();
            for e in std::fs::read_dir(dir).map_err(io_errno)? {
                let e = e.map_err(io_errno)?;
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                names.push((m.ino(), (m.mode() & S_IFMT) >> 12, e.file_name()));
            }
            // Why: a stable order, so READDIR at an offset resumes where the last one stopped.
            names.sort_by(|a, b| a.2.cmp(&b.2));
            entries.extend(
                names
                    .into_iter()
                    .map(|(ino, t, n)| (ino, t, n.as_bytes().to_vec())),
            );
        }
        Ok(self.new_handle(Handle::Dir(entries)))
    }

    /// `fuse_dirent` records from entry `offset` on, as many as fit in `size` bytes.
    pub(crate) fn readdir(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let Some(Handle::Dir(entries)) = self.handles.get(&fh) else {
            return Err(errno::EBADF);
        };
        let mut out = Vec::new();
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            let rec = (size_of::<DirentHeader>() + name.len()).div_ceil(8) * 8;
            if out.len() + rec > size as usize {
                break;
            }
            let h = DirentHeader {
                ino: *ino,
                off: i as u64 + 1,
                namelen: name.len() as u32,
                kind: *kind,
            };
            let start = out.len();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(name);
            out.resize(start + rec, 0);
        }
        Ok(out)
    }

    /// Closes a file (RELEASE) or directory (RELEASEDIR) handle.
    pub(crate) fn release(&mut self, fh: u64, dir: bool) -> Result<(), Errno> {
        match self.handles.get(&fh) {
            Some(Handle::Dir(_)) if dir => {}
            Some(Handle::File(_)) if !dir => {}
            _ => return Err(errno::EBADF),
        }
        self.handles.remove(&fh);
        Ok(())
    }

    /// STATFS: a read-only file system of the nodes known so far.
    pub(crate) fn statfs(&self) -> StatfsOut {
        StatfsOut {
            files: self.nodes.len() as u64,
            bsize: BLOCK,
            namelen: NAME_MAX,
            frsize: BLOCK,
            ..StatfsOut::default()
        }
    }

    /// Node ids in the table (tests: FORGET releases them).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// The attributes of `m`, with the node id as inode number.
fn attr_of(nodeid: u64, m: &Metadata) -> Attr {
    let ft = m.file_type();
    let rdev = if ft.is_block_device() || ft.is_char_device() {
        m.rdev() as u32
    } else {
        0
    };
    Attr {
        ino: nodeid,
        size: m.size(),
        blocks: m.blocks(),
        atime: m.atime() as u64,
        mtime: m.mtime() as u64,
        ctime: m.ctime() as u64,
        atimensec: m.atime_nsec() as u32,
        mtimensec: m.mtime_nsec() as u32,
        ctimensec: m.ctime_nsec() as u32,
        mode: m.mode(),
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

/// The errno of an I/O error (EIO when the OS gave none).
fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(errno::EIO)
}
