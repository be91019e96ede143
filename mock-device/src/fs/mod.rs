//! A virtio-fs device (virtio 1.2 section 5.11) speaking the FUSE protocol 7.31 over its
//! queues: hiprio (queue 0) and one request queue (queue 1).
//!
//! A request is the driver-readable buffers (`fuse_in_header` and the opcode's body); the reply
//! goes into the device-writable buffers (`fuse_out_header` and the reply body) and the used
//! length is exactly the bytes written, which is also the header's `len` (R-FS-01). FORGET and
//! BATCH_FORGET have no reply: their chain is used with length 0 (R-FS-06). A malformed request
//! (short header, `len` not the readable length, a short body, no room for the reply) is
//! answered with -EINVAL when an out header fits, and used with 0 when it does not; nothing
//! here panics on what the driver sends.

mod ops;
mod store;
pub mod wire;

use std::path::PathBuf;

use zerocopy::{FromBytes, IntoBytes};

use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;
use crate::sg::{read_readable, readable_len, write_writable};
use ops::{Outcome, Session, is_no_reply, min_body};
use store::Store;
use wire::{InHeader, OutHeader, errno};

/// The virtio device id of virtio-fs.
pub const FS_DEVICE_ID: u32 = 26;
/// The tag in the config space, NUL-padded to [`FS_TAG_LEN`] bytes.
pub const FS_TAG: &str = "vhu-mock-fs";
/// Bytes of `virtio_fs_config.tag`.
pub const FS_TAG_LEN: usize = 36;
/// Bytes of `struct virtio_fs_config` (tag, then `num_request_queues` u32).
pub const FS_CONFIG_SIZE: usize = 40;
/// The hiprio queue (FORGET, INTERRUPT).
pub const FS_HIPRIO: u16 = 0;
/// The one request queue.
pub const FS_REQUEST: u16 = 1;
/// Largest request read (a BATCH_FORGET of 64 Ki nodes); longer ones are refused.
const MAX_REQUEST: usize = 1 << 20;
/// Bytes of the out header.
const OUT_LEN: usize = size_of::<OutHeader>();

/// Deliberate fs faults, set by the back-end's fault modes (default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsFaults {
    /// The reply's `unique` is the request's plus one (R-FS-01).
    pub unique_not_echoed: bool,
    /// The out header's `len` is 8 more than the bytes written (R-FS-01).
    pub len_mismatch: bool,
    /// Errors are answered as positive errnos, ENOENT as +2 (R-FS-03).
    pub positive_errno: bool,
    /// FORGET gets a 16-byte reply, and a used length of 16 even with no writable buffer
    /// (R-FS-06, R-DEV-02).
    pub forget_reply: bool,
}

/// Why the device cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The shared directory is not a readable directory.
    #[error("shared directory {path}: {reason}")]
    SharedDir {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The reference virtio-fs device.
#[derive(Debug)]
pub struct FsDevice {
    session: Session,
    faults: FsFaults,
}

impl FsDevice {
    /// A device serving `shared_dir` read-only, or an empty root directory.
    ///
    /// # Errors
    /// `shared_dir` is not a directory.
    pub fn new(shared_dir: Option<PathBuf>) -> Result<Self, FsError> {
        if let Some(path) = &shared_dir {
            let bad = |reason: String| FsError::SharedDir {
                path: path.clone(),
                reason,
            };
            let m = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
            if !m.is_dir() {
                return Err(bad("not a directory".into()));
            }
        }
        Ok(Self {
            session: Session {
                store: Store::new(shared_dir),
                initialized: false,
            },
            faults: FsFaults::default(),
        })
    }

    /// Sets the deliberate faults.
    pub fn set_faults(&mut self, faults: FsFaults) {
        self.faults = faults;
    }

    /// Writes the reply and returns the used length.
    fn reply(&self, mem: &dyn GuestMemory, chain: &Chain, unique: u64, outcome: Outcome) -> u32 {
        let (error, body) = match outcome {
            Outcome::NoReply => return 0,
            Outcome::Body(b) => (0, b),
            Outcome::Error(e) if self.faults.positive_errno => (e, Vec::new()),
            Outcome::Error(e) => (-e, Vec::new()),
        };
        let total = OUT_LEN + body.len();
        let mut len = total as u32;
        if self.faults.len_mismatch {
            len += 8;
        }
        let unique = if self.faults.unique_not_echoed {
            unique.wrapping_add(1)
        } else {
            unique
        };
        let mut bytes = OutHeader { len, error, unique }.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        write_writable(mem, chain, &bytes).unwrap_or(0)
    }
}

impl VirtioDevice for FsDevice {
    fn device_id(&self) -> u32 {
        FS_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        2
    }

    /// `struct virtio_fs_config` (5.11.4): the tag, then num_request_queues = 1 (R-FS-05).
    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; FS_CONFIG_SIZE];
        c[..FS_TAG.len()].copy_from_slice(FS_TAG.as_bytes());
        c[FS_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        if queue > FS_REQUEST {
            return 0;
        }
        let readable = readable_len(chain);
        let room = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX);
        let Ok(req) = read_readable(mem, chain, MAX_REQUEST) else {
            return 0;
        };
        let Ok((h, body)) = InHeader::read_from_prefix(&req) else {
            // Short header: answer with whatever unique the bytes hold, if a header fits.
            let unique = req
                .get(8..16)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            return self.malformed(mem, chain, unique, room);
        };
        if is_no_reply(h.opcode) {
            let well_formed = u64::from(h.len) == readable;
            if well_formed {
                self.session.execute(&h, body, 0);
            }
            return self.forget_done(mem, chain, h.unique);
        }
        if u64::from(h.len) != readable || readable > MAX_REQUEST as u64 {
            return self.malformed(mem, chain, h.unique, room);
        }
        if room < OUT_LEN + min_body(h.opcode) {
            // No room for the reply: change nothing, answer the error if a header fits.
            return self.malformed(mem, chain, h.unique, room);
        }
        let outcome = self.session.execute(&h, body, room - OUT_LEN);
        self.reply(mem, chain, h.unique, outcome)
    }

    fn reset(&mut self) {
        self.session.store.clear();
        self.session.initialized = false;
    }
}

impl FsDevice {
    /// A malformed request: -EINVAL when an out header fits, else nothing written.
    fn malformed(&self, mem: &dyn GuestMemory, chain: &Chain, unique: u64, room: usize) -> u32 {
        if room < OUT_LEN {
            return 0;
        }
        self.reply(mem, chain, unique, Outcome::Error(errno::EINVAL))
    }

    /// The used length of a FORGET: 0, or with the `forget_reply` fault a reply header
    /// claimed as written whether or not it fit.
    fn forget_done(&self, mem: &dyn GuestMemory, chain: &Chain, unique: u64) -> u32 {
        if !self.faults.forget_reply {
            return 0;
        }
        let h = OutHeader {
            len: OUT_LEN as u32,
            error: 0,
            unique,
        };
        let _ = write_writable(mem, chain, h.as_bytes());
        OUT_LEN as u32
    }
}

#[cfg(test)]
mod tests;
