//! The inflight I/O tracking buffer a back-end hands out with GET_INFLIGHT_FD (spec "Inflight
//! I/O tracking", R-INFL-01/02). Every value of its description comes from the back-end, so
//! nothing is trusted: the area `[mmap_offset, mmap_offset + mmap_size)` must not wrap, must be
//! bounded ([`MAX_INFLIGHT_SIZE`]), must lie inside the fd as fstat sees it, and every access is
//! checked against it. The buffer is read and written with `pread`/`pwrite`, never mapped, so a
//! back-end that shrinks its fd later makes an access fail instead of faulting.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use thiserror::Error;
use vhu_protocol::wire::payload::InflightDesc;

/// Largest inflight area accepted. A split ring of the largest queue size (32768) takes
/// 512 KiB; 256 MiB is room for hundreds of such queues.
pub const MAX_INFLIGHT_SIZE: u64 = 256 << 20;

/// Bytes of a split-ring queue region's header (features, version, desc_num, last_batch_head,
/// used_idx: R-INFL-02).
pub const SPLIT_HEADER: u64 = 16;
/// Bytes of one split-ring entry (inflight, padding, next, counter).
pub const SPLIT_ENTRY: u64 = 16;

/// The smallest area that holds `num_queues` split-ring regions of `queue_size` entries
/// (QEMU, libvhost-user and DPDK round each region up, never down).
pub fn split_area_size(num_queues: u16, queue_size: u16) -> u64 {
    u64::from(num_queues) * (SPLIT_HEADER + SPLIT_ENTRY * u64::from(queue_size))
}

/// Why an inflight description or an access to its area is unusable.
#[derive(Debug, Error)]
pub enum InflightError {
    /// `mmap_size` is 0.
    #[error("mmap_size is 0")]
    ZeroSize,
    /// `mmap_offset + mmap_size` wraps around 2^64.
    #[error("mmap_offset {offset:#x} + mmap_size {size:#x} overflows")]
    Overflow {
        /// mmap_offset.
        offset: u64,
        /// mmap_size.
        size: u64,
    },
    /// `mmap_size` is beyond [`MAX_INFLIGHT_SIZE`].
    #[error("mmap_size {size:#x} exceeds the bound of {max:#x} bytes")]
    TooLarge {
        /// mmap_size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// `mmap_size` cannot hold the queues asked for.
    #[error("mmap_size {size:#x} is smaller than the {needed:#x} bytes the queues asked for take")]
    TooSmall {
        /// mmap_size.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The fd is not a regular file (a memfd or shared memory file).
    #[error("the fd is not a regular file (mode {mode:#o})")]
    NotAFile {
        /// st_mode.
        mode: u32,
    },
    /// The area goes past the end of the fd.
    #[error("the area {offset:#x}+{size:#x} ends past the end of the fd ({file_size:#x} bytes)")]
    BeyondFile {
        /// mmap_offset.
        offset: u64,
        /// mmap_size.
        size: u64,
        /// The fd's size (fstat).
        file_size: u64,
    },
    /// An access leaves the area.
    #[error("an access at {at:#x}+{len:#x} leaves the inflight area of {size:#x} bytes")]
    OutOfBounds {
        /// Offset in the area.
        at: u64,
        /// Bytes of the access.
        len: u64,
        /// mmap_size.
        size: u64,
    },
    /// The fd ended before the access did (the back-end shrank it).
    #[error("the fd ended after {got} of {wanted} bytes at area offset {at:#x} (shrunk?)")]
    Short {
        /// Offset in the area.
        at: u64,
        /// Bytes transferred.
        got: usize,
        /// Bytes wanted.
        wanted: usize,
    },
    /// A system call failed on the fd.
    #[error("{op} on the inflight fd failed")]
    Io {
        /// The call.
        op: &'static str,
        /// The errno the call returned.
        #[source]
        source: nix::Error,
    },
}

impl InflightError {
    /// Whether the back-end caused it: everything but a failing system call.
    pub fn is_backend_fault(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

/// The inflight area: the description the back-end gave and its fd, checked.
#[derive(Debug)]
pub struct InflightBuffer {
    desc: InflightDesc,
    fd: OwnedFd,
}

impl InflightBuffer {
    /// Checks a GET_INFLIGHT_FD answer: a non-zero size of at least `needed` bytes and at most
    /// [`MAX_INFLIGHT_SIZE`], an area that does not wrap and lies inside `fd` (a regular file).
    pub fn new(desc: InflightDesc, fd: OwnedFd, needed: u64) -> Result<Self, InflightError> {
        let (offset, size) = (desc.mmap_offset, desc.mmap_size);
        if size == 0 {
            return Err(InflightError::ZeroSize);
        }
        let end = offset
            .checked_add(size)
            .ok_or(InflightError::Overflow { offset, size })?;
        if size > MAX_INFLIGHT_SIZE {
            return Err(InflightError::TooLarge {
                size,
                max: MAX_INFLIGHT_SIZE,
            });
        }
        if size < needed {
            return Err(InflightError::TooSmall { size, needed });
        }
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|source| InflightError::Io {
            op: "fstat",
            source,
        })?;
        let mode = st.st_mode;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(InflightError::NotAFile { mode });
        }
        let file_size = u64::try_from(st.st_size).unwrap_or(0);
        if end > file_size {
            return Err(InflightError::BeyondFile {
                offset,
                size,
                file_size,
            });
        }
        Ok(Self { desc, fd })
    }

    /// The description, as SET_INFLIGHT_FD gives it back.
    pub fn desc(&self) -> InflightDesc {
        self.desc
    }

    /// The fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The file offset of `[at, at + len)` of the area, if the range lies inside it.
    fn file_offset(&self, at: u64, len: usize) -> Result<i64, InflightError> {
        let size = self.desc.mmap_size;
        let len64 = len as u64;
        let oob = InflightError::OutOfBounds {
            at,
            len: len64,
            size,
        };
        if at.checked_add(len64).is_none_or(|end| end > size) {
            return Err(oob);
        }
        // Inside the area, which `new` checked lies inside the file: no overflow, fits i64.
        self.desc
            .mmap_offset
            .checked_add(at)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or(oob)
    }

    /// Reads `buf.len()` bytes at offset `at` of the area.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), InflightError> {
        let base = self.file_offset(at, buf.len())?;
        let wanted = buf.len();
        let mut got = 0;
        while got < wanted {
            match nix::sys::uio::pread(&self.fd, &mut buf[got..], base + got as i64) {
                Ok(0) => return Err(InflightError::Short { at, got, wanted }),
                Ok(n) => got += n,
                Err(nix::Error::EINTR) => {}
                Err(source) => {
                    return Err(InflightError::Io {
                        op: "pread",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at offset `at` of the area.
    pub fn write(&self, at: u64, data: &[u8]) -> Result<(), InflightError> {
        let base = self.file_offset(at, data.len())?;
        let wanted = data.len();
        let mut got = 0;
        while got < wanted {
            match nix::sys::uio::pwrite(&self.fd, &data[got..], base + got as i64) {
                Ok(0) => return Err(InflightError::Short { at, got, wanted }),
                Ok(n) => got += n,
                Err(nix::Error::EINTR) => {}
                Err(source) => {
                    return Err(InflightError::Io {
                        op: "pwrite",
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> OwnedFd {
        let f = memfd::MemfdOptions::default()
            .create("inflight-test")
            .unwrap()
            .into_file();
        f.set_len(len).unwrap();
        f.into()
    }

    fn desc(offset: u64, size: u64) -> InflightDesc {
        InflightDesc {
            mmap_size: size,
            mmap_offset: offset,
            num_queues: 1,
            queue_size: 128,
            padding: 0,
        }
    }

    #[test]
    fn absurd_descriptions_are_typed_back_end_faults() {
        let needed = split_area_size(1, 128);
        type Check = fn(&InflightError) -> bool;
        let cases: [(u64, u64, Check); 7] = [
            (0, 0, |e| matches!(e, InflightError::ZeroSize)),
            (u64::MAX, u64::MAX, |e| {
                matches!(e, InflightError::Overflow { .. })
            }),
            (u64::MAX, 1, |e| matches!(e, InflightError::Overflow { .. })),
            (0, u64::MAX, |e| matches!(e, InflightError::TooLarge { .. })),
            (0, 16, |e| matches!(e, InflightError::TooSmall { .. })),
            (1 << 62, needed, |e| {
                matches!(e, InflightError::BeyondFile { .. })
            }),
            (4096, 8192, |e| {
                matches!(e, InflightError::BeyondFile { .. })
            }),
        ];
        for (offset, size, want) in cases {
            let e = InflightBuffer::new(desc(offset, size), memfd(8192), needed).unwrap_err();
            assert!(want(&e), "{offset:#x}+{size:#x}: {e:?}");
            assert!(e.is_backend_fault());
        }
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = InflightBuffer::new(desc(0, needed), r, needed).unwrap_err();
        assert!(matches!(e, InflightError::NotAFile { .. }), "{e:?}");
    }

    #[test]
    fn accesses_stay_inside_the_area_and_a_shrunk_fd_fails_the_read() {
        let fd = memfd(8192);
        let file = std::fs::File::from(fd.try_clone().unwrap());
        let b = InflightBuffer::new(desc(4096, 4096), fd, 2064).unwrap();
        b.write(16, b"counter!").unwrap();
        let mut buf = [0u8; 8];
        b.read(16, &mut buf).unwrap();
        assert_eq!(&buf, b"counter!");
        assert!(matches!(
            b.read(4090, &mut buf),
            Err(InflightError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.read(u64::MAX - 2, &mut buf),
            Err(InflightError::OutOfBounds { .. })
        ));
        file.set_len(4100).unwrap();
        let e = b.read(16, &mut buf).unwrap_err();
        assert!(matches!(e, InflightError::Short { got: 0, .. }), "{e:?}");
    }
}
