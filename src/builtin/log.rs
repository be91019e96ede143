//! Dirty logging (checklist 4.17, R-LOG): with LOG_ALL negotiated and a log given with
//! SET_LOG_BASE, every guest page the device writes, and the used ring's page when the ring's
//! VHOST_VRING_F_LOG is set, has its bit set (bit `p` for page `p` = GPA / 4096, in byte `p / 8`).
//! The log is a memfd the harness reads directly.

use crate::rules::id;
use std::os::fd::AsFd;
use std::time::Duration;

use memfd::MemfdOptions;
use vhu_mock_frontend::blk::{self, BlkReq};
use vhu_mock_frontend::{DriverQueue, GuestMemory, Wanted};
use vhu_protocol::FrontendReq;
use vhu_protocol::wire::payload::{Body, LogDesc};
use vhu_protocol::{ProtocolFeatures, VirtioFeatures};

use super::{Builtin, BuiltinMeta, Needs, default_memory, needs_process, start_queue};
use crate::engine::{Ctx, StepError};

const PAGE: u64 = 4096;

/// A log memfd of `len` bytes, zeroed.
fn log_memfd(len: u64) -> Result<memfd::Memfd, StepError> {
    let m = MemfdOptions::default()
        .create("vhu-dirty-log")
        .map_err(|e| StepError::Harness(format!("log memfd: {e}")))?;
    m.as_file()
        .set_len(len)
        .map_err(|e| StepError::Harness(format!("log memfd: {e}")))?;
    Ok(m)
}

fn read_log(m: &memfd::Memfd, len: u64) -> Result<Vec<u8>, StepError> {
    let mut buf = vec![0u8; len as usize];
    nix::sys::uio::pread(m.as_file(), &mut buf, 0)
        .map_err(|e| StepError::Harness(format!("reading the log: {e}")))?;
    Ok(buf)
}

/// The log's size covering every page of the default layout (one bit per page, whole bytes).
fn log_bytes() -> u64 {
    let end = crate::engine::session::default_layout()
        .iter()
        .map(|r| r.guest_addr + r.size)
        .max()
        .unwrap_or(0);
    end.div_ceil(PAGE).div_ceil(8)
}

/// Negotiation with LOG_ALL and LOG_SHMFD, the default memory, SET_LOG_BASE with `log`, queue 0
/// with VHOST_VRING_F_LOG; returns memory and queue.
fn logged_session(
    ctx: &mut Ctx<'_>,
    log: &memfd::Memfd,
    size: u64,
) -> Result<(GuestMemory, DriverQueue), StepError> {
    let mut wanted = Wanted::all();
    wanted.features |= VirtioFeatures::LOG_ALL.bits();
    wanted.protocol |= ProtocolFeatures::LOG_SHMFD.bits();
    let r = ctx.session_mut()?.negotiate(&wanted);
    let n = r.map_err(|e| ctx.session_error(id::R_LOG_01, e))?;
    let mut mem = default_memory(ctx)?;
    let desc = Body::Log(LogDesc { size, offset: 0 });
    let r = ctx.session_mut()?.request(
        FrontendReq::SetLogBase,
        &desc,
        &[log.as_file().as_fd()],
        None,
    );
    r.map_err(|e| ctx.session_error(id::R_LOG_02, e))?;
    let q = start_queue(ctx, &mut mem, n.features, id::R_LOG_04, |q| {
        q.log_used = true;
    })?;
    Ok((mem, q))
}

/// Every page the device wrote has its bit (R-LOG-03, R-LOG-04).
#[derive(Debug)]
pub struct LogBlkRead;

/// What [`LogBlkRead`] declares.
const LOG_BLK_READ_META: BuiltinMeta = BuiltinMeta {
    id: "log/blk-read-logged",
    title: "With LOG_ALL and SET_LOG_BASE, a blk read logs every page it wrote and the used ring's page",
    rules: &[id::R_LOG_04, id::R_LOG_02, id::R_LOG_03, id::R_VRING_04],
    requires: Needs {
        virtio: &["LOG_ALL"],
        protocol: &["LOG_SHMFD"],
    },
    device: Some(crate::device::DeviceType::Block),
    description: "LOG_ALL is negotiated, SET_LOG_BASE gives a memfd covering guest memory, queue 0 is set \
up with VHOST_VRING_F_LOG. A 16 KiB read makes the device write the data buffer, the status byte \
and a used element: each of their pages must have its bit set in the log (bit p of page p = GPA / \
4096 in byte p / 8).",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for LogBlkRead {
    fn meta(&self) -> &'static BuiltinMeta {
        &LOG_BLK_READ_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let size = log_bytes().next_multiple_of(PAGE);
        let log = log_memfd(size)?;
        let (mut mem, mut q) = logged_session(ctx, &log, size)?;
        let timeout = ctx.step_timeout();
        let o = blk::blk_request(&mut q, &mut mem, BlkReq::read(0, 16 * 1024), timeout);
        let o = match o {
            Ok(o) if o.status == vhu_protocol::virtio::blk::S_OK => o,
            other => {
                return Err(ctx.fail(
                    id::R_LOG_04,
                    "the read did not complete with logging on",
                    "the request completes while the log is active",
                    format!("{other:?}"),
                ));
            }
        };
        // The used element just written, and the used index.
        let used = q.vring_addr(&mem).log;
        let mut ranges = o.written.clone();
        ranges.push((used, 4 + 8 * 128));
        let bits = read_log(&log, size)?;
        let missing: Vec<(u64, u64)> = ranges
            .iter()
            .flat_map(|&(gpa, len)| (gpa / PAGE..=(gpa + len - 1) / PAGE).map(move |p| (gpa, p)))
            .filter(|&(_, p)| {
                bits.get((p / 8) as usize)
                    .is_none_or(|b| b & (1 << (p % 8)) == 0)
            })
            .collect();
        // VHOST_VRING_F_LOG was set in SET_VRING_ADDR: the used ring's writes are logged at its
        // log address (R-VRING-04).
        ctx.mark(id::R_VRING_04);
        let used_pages = used / PAGE..=(used + 4 + 8 * 128 - 1) / PAGE;
        // Only the used ring's pages unlogged: the ring's own flag was ignored (R-VRING-04);
        // data pages too: the log itself (R-LOG-04).
        let used_missing =
            !missing.is_empty() && missing.iter().all(|(_, p)| used_pages.contains(p));
        let missing: Vec<String> = missing
            .iter()
            .map(|(gpa, p)| format!("page {p:#x} (GPA {:#x}, written at {gpa:#x})", p * PAGE))
            .collect();
        if !missing.is_empty() {
            let set = bits.iter().map(|b| b.count_ones()).sum::<u32>();
            return Err(ctx.fail(
                if used_missing {
                    id::R_VRING_04
                } else {
                    id::R_LOG_04
                },
                &format!(
                    "{} written pages have no bit in the dirty log",
                    missing.len()
                ),
                "the bit of every page the device wrote (data, status, used ring) set",
                format!("missing: {}; {set} bits set in all", missing.join(", ")),
            ));
        }
        Ok(())
    }
}

/// A log too small for the memory: nothing is written past it (R-LOG-06).
#[derive(Debug)]
pub struct LogTooSmall;

/// What [`LogTooSmall`] declares.
const LOG_TOO_SMALL_META: BuiltinMeta = BuiltinMeta {
    id: "log/too-small",
    title: "A dirty log too small for guest memory is never written past its size, and the back-end survives",
    rules: &[id::R_LOG_06],
    level: crate::scenario::Level::Rob,
    requires: Needs {
        virtio: &["LOG_ALL"],
        protocol: &["LOG_SHMFD"],
    },
    device: Some(crate::device::DeviceType::Block),
    description: "SET_LOG_BASE announces a 1-byte log (8 pages) in a one-page memfd; a read into guest \
memory far above 32 KiB follows. Bytes 1..4096 of the memfd must stay zero (nothing logged \
outside the log), and the back-end must keep serving (libvhost-user asserts instead).",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for LogTooSmall {
    fn meta(&self) -> &'static BuiltinMeta {
        &LOG_TOO_SMALL_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let log = log_memfd(PAGE)?;
        let (mut mem, mut q) = logged_session(ctx, &log, 1)?;
        let timeout = ctx.step_timeout();
        let _ = blk::blk_request(&mut q, &mut mem, BlkReq::read(0, 4096), timeout);
        std::thread::sleep(Duration::from_millis(50));
        let bytes = read_log(&log, PAGE)?;
        if let Some(at) = bytes[1..].iter().position(|&b| b != 0) {
            return Err(ctx.fail(
                id::R_LOG_06,
                "the back-end wrote past the end of the dirty log it was given",
                "only the 1 byte the log description announced is ever written",
                format!("byte {} of the memfd is {:#04x}", at + 1, bytes[at + 1]),
            ));
        }
        let r = ctx.session_mut()?.get_features();
        r.map(drop).map_err(|e| ctx.session_error(id::R_LOG_06, e))
    }
}

/// A second SET_LOG_BASE unmaps the first log (R-LOG-07).
#[derive(Debug)]
pub struct LogReplaceUnmaps;

/// What [`LogReplaceUnmaps`] declares.
const LOG_REPLACE_UNMAPS_META: BuiltinMeta = BuiltinMeta {
    id: "log/replace-unmaps",
    title: "A second SET_LOG_BASE unmaps the first log and closes its fd",
    rules: &[id::R_LOG_07],
    requires: Needs {
        virtio: &["LOG_ALL"],
        protocol: &["LOG_SHMFD"],
    },
    description: "Spawn mode only. After SET_LOG_BASE with a first memfd and then with a second one, the \
first memfd (found by inode) must be neither mapped in /proc/<pid>/maps nor open in \
/proc/<pid>/fd of the back-end.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for LogReplaceUnmaps {
    fn meta(&self) -> &'static BuiltinMeta {
        &LOG_REPLACE_UNMAPS_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        use std::os::unix::fs::MetadataExt;
        needs_process(ctx)?;
        let size = PAGE;
        let first = log_memfd(size)?;
        let ino = first
            .as_file()
            .metadata()
            .map_err(|e| StepError::Harness(e.to_string()))?
            .ino();
        let (_mem, _q) = logged_session(ctx, &first, size)?;
        let second = log_memfd(size)?;
        let desc = Body::Log(LogDesc { size, offset: 0 });
        let r = ctx.session_mut()?.request(
            FrontendReq::SetLogBase,
            &desc,
            &[second.as_file().as_fd()],
            None,
        );
        r.map_err(|e| ctx.session_error(id::R_LOG_02, e))?;
        drop(first);
        match super::hygiene::released(ctx, ino) {
            Some((0, 0)) | None => Ok(()),
            Some((maps, fds)) => Err(ctx.fail(
                id::R_LOG_07,
                "the replaced dirty log is still mapped or open",
                "the first log unmapped and its fd closed once the second is acked",
                format!(
                    "1 s after the second SET_LOG_BASE: {maps} mappings, {fds} fds of the first log"
                ),
            )),
        }
    }
}
