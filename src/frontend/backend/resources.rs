//! What the judging back-end hands a front-end besides answers: memfds (SHMEM_MAP, the inflight
//! buffer), a userfaultfd (POSTCOPY_ADVISE), and the device state it saves or reads.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vhu_protocol::wire::payload::{Body, InflightDesc};
use vhu_protocol::{Connection, Header};

use super::super::judge::{InflightGiven, file_id};
use super::JudgingBackend;

/// A fresh memfd of `len` bytes.
pub(super) fn memfd(name: &std::ffi::CStr, len: u64) -> Option<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked before use and
    // owned from here on.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::ftruncate(&fd, len as i64).ok()?;
    Some(fd)
}

/// A userfaultfd for POSTCOPY_ADVISE's reply: user-mode only first (allowed unprivileged),
/// then a plain one; `None` where the host allows neither (the reply then carries no fd,
/// the error form QEMU reads as "failed to get PostCopy ufd").
pub(super) fn userfaultfd() -> Option<OwnedFd> {
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    for flags in [UFFD_USER_MODE_ONLY, 0] {
        // SAFETY: the userfaultfd syscall takes one int of flags and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | flags,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            return Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
    }
    None
}

/// The size of a split-ring inflight area for `num_queues` rings of `queue_size` (spec
/// "Inflight I/O tracking": a 16-byte header and 16 bytes per descriptor per queue, each
/// queue's region aligned to 64 bytes as QEMU and libvhost-user do).
pub(super) fn inflight_size(num_queues: u16, queue_size: u16) -> u64 {
    let per = (16 + 16 * u64::from(queue_size)).div_ceil(64) * 64;
    per * u64::from(num_queues.max(1))
}

/// SET_DEVICE_STATE_FD's transfer, off the serving thread: a save writes a short state and
/// closes the fd (EOF ends the transfer, spec "Migrating back-end state"); a load reads to EOF
/// (bounded, so a front-end that never closes its end costs one thread for 5 s, not a hang).
pub(super) fn transfer_state(direction: u32, fd: OwnedFd) {
    let _ = std::thread::Builder::new()
        .name("vhu-device-state".into())
        .spawn(move || {
            use std::io::{Read, Write};
            let mut f = std::fs::File::from(fd);
            if direction == 0 {
                let _ = f.write_all(b"vhu-conform judging back-end: no state\n");
                return;
            }
            let until = Instant::now() + Duration::from_secs(5);
            let mut buf = [0u8; 4096];
            let _ = nix::fcntl::fcntl(
                &f,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            while Instant::now() < until {
                match f.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => return,
                }
            }
        });
}

impl JudgingBackend {
    /// GET_INFLIGHT_FD: a zeroed memfd of the size the queues need, with its description
    /// (spec "Inflight I/O tracking"); the judge remembers it (R-INFL-03).
    pub(super) fn give_inflight(&mut self, conn: &Connection, code: u32, ask: InflightDesc) {
        let desc = InflightDesc {
            mmap_size: inflight_size(ask.num_queues, ask.queue_size),
            mmap_offset: 0,
            num_queues: ask.num_queues,
            queue_size: ask.queue_size,
            padding: 0,
        };
        let fd = memfd(c"vhu-inflight", desc.mmap_size);
        let payload = Body::Inflight(desc).encode();
        let header = Header::reply(code, payload.len() as u32);
        let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
        self.record(false, header, &payload, fds.len());
        let _ = conn.send(header, &payload, &fds);
        if let Some(fd) = fd {
            if let Some(file) = file_id(&fd) {
                self.judge.inflight_given(InflightGiven { desc, file });
            }
            self.inflight_fds.push(fd);
        }
    }
}
