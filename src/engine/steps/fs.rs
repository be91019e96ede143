//! virtio-fs data-path steps: FUSE requests through the hiprio and request queues, judged on
//! the ring (R-DEV-01..03, shared with every device: [`Ctx::judge_ring`]) and on the FUSE reply
//! (R-FS-01..06), and the files the scenario puts in the shared directory first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use vhu_mock_frontend::WaitError;
use vhu_mock_frontend::exchange::Exchanged;
use vhu_mock_frontend::fs::{FuseExchanged, FuseRequest, fuse_exchange};
use vhu_protocol::virtio::fs::{self, AttrOut, EntryOut, FsConfig, OpenOut};
use zerocopy::FromBytes;

use super::{Ctx, StepError, StepResult};
use crate::engine::{chain, describe_exit};
use crate::rules::{RuleId, id};
use crate::scenario::Action;
use crate::scenario::model::{FsFileArgs, FsReadArgs, Step};
use crate::target::ProcessState;

/// An opcode FUSE does not define (opcodes run from 1 to a few dozen, CUSE_INIT is 4096).
const UNKNOWN_OPCODE: u32 = 0xbeef;

/// The FUSE session of the current vhost-user session, and the files the scenario made.
#[derive(Debug, Default)]
pub struct FsState {
    /// The last `unique` used.
    unique: u64,
    /// The last FUSE request sent, rendered (a finding's `sent`).
    last: Option<String>,
    /// FUSE_INIT was answered with success.
    initialized: bool,
    /// Node ids by name, from LOOKUP.
    nodes: BTreeMap<String, u64>,
    /// Open file handles by name, from OPEN.
    handles: BTreeMap<String, u64>,
    /// The bytes of each file the scenario created, by name (kept across sessions: the files
    /// stay in the directory).
    files: BTreeMap<String, Vec<u8>>,
}

impl FsState {
    /// A new vhost-user session starts a new FUSE session (the files stay).
    pub fn new_session(&mut self) {
        self.unique = 0;
        self.initialized = false;
        self.nodes.clear();
        self.handles.clear();
    }
}

/// The bytes of a created file: `pattern` repeated, or a sequence that differs at every offset
/// of a 251-byte period (so a read at the wrong offset is told apart).
fn file_content(len: u32, pattern: Option<u8>) -> Vec<u8> {
    (0..len)
        .map(|i| pattern.unwrap_or((i % 251) as u8 ^ 0x5a))
        .collect()
}

/// The facts of an exchange on one line (its written bytes left out).
/// The file an fs step names (`name`), for the steps that take one.
fn name_of(step: &Step) -> Option<&str> {
    match &step.action {
        Action::FsGetattr(a) => a.name.as_deref(),
        Action::FsLookup(a) => Some(&a.name),
        Action::FsOpen(a) | Action::FsRelease(a) | Action::FsForget(a) => Some(&a.name),
        Action::FsRead(a) => Some(&a.name),
        Action::FsFile(a) => Some(&a.name),
        _ => None,
    }
}

pub(super) fn brief(x: &Exchanged) -> String {
    format!(
        "used element id {}, used length {} of {} device-writable bytes, canaries {}, readable buffers {}, notified {}",
        x.id,
        x.used_len,
        x.writable_len,
        if x.canary_intact { "intact" } else { "CHANGED" },
        if x.readonly_intact {
            "intact"
        } else {
            "WRITTEN"
        },
        x.notified
    )
}

impl Ctx<'_> {
    /// The shared directory: the one made for `{fs_dir}`, else `--fs-dir`.
    fn fs_dir(&mut self) -> Option<PathBuf> {
        let made = self.inst().fs_dir().map(PathBuf::from);
        made.or_else(|| self.opts.host.fs_dir.clone())
    }

    pub(super) fn fs_step(&mut self, step: &Step) -> StepResult {
        let before = self.findings.len();
        self.fs.last = None;
        let r = match &step.action {
            Action::FsFile(a) => self.fs_file(a),
            Action::FsConfig(_) => self.fs_config(step),
            _ => self.fuse(step),
        };
        let sent = self.fs.last.clone();
        self.data_path_sent(before, sent, r)
    }

    /// A data-path finding's `sent` is the request on the ring (the last vhost-user message,
    /// what `fail` records, follows it): in the findings recorded since `before` and in the
    /// one `r` stops the scenario with.
    pub(super) fn data_path_sent(
        &mut self,
        before: usize,
        sent: Option<String>,
        mut r: StepResult,
    ) -> StepResult {
        let Some(sent) = sent else { return r };
        let stopping = match &mut r {
            Err(StepError::Finding(f)) => Some(&mut **f),
            _ => None,
        };
        for f in self.findings[before..]
            .iter_mut()
            .chain(stopping)
            .filter(|f| f.crash.is_none())
        {
            f.sent = format!("{sent} (last vhost-user message: {})", f.sent);
        }
        r
    }

    fn fs_file(&mut self, a: &FsFileArgs) -> StepResult {
        let name = a.name.clone();
        let Some(dir) = self.fs_dir() else {
            return Err(StepError::NotApplicable(
                "the shared directory is unknown: pass --fs-dir DIR, or put {fs_dir} in the --spawn command".into(),
            ));
        };
        let data = file_content(a.file_bytes.unwrap_or(4096), a.pattern);
        std::fs::write(dir.join(&name), &data).map_err(|e| {
            StepError::Harness(format!("cannot create {}: {e}", dir.join(&name).display()))
        })?;
        self.fs.files.insert(name, data);
        Ok(())
    }

    /// The queue a FUSE step uses: 1, the first request queue (0 is hiprio, for FORGET).
    fn fs_queue(step: &Step) -> u16 {
        match step.action {
            Action::FsForget(_) => 0,
            _ => 1,
        }
    }

    fn node_of(&self, step: &Step) -> Result<u64, StepError> {
        match name_of(step) {
            None => Ok(fs::ROOT_ID),
            Some(n) => self.fs.nodes.get(n).copied().ok_or_else(|| {
                StepError::Harness(format!(
                    "{n:?} was not looked up: add an fs_lookup step first"
                ))
            }),
        }
    }

    fn handle_of(&self, step: &Step) -> Result<(u64, u64), StepError> {
        let node = self.node_of(step)?;
        let n = name_of(step).unwrap_or_default();
        let fh = self.fs.handles.get(n).copied().ok_or_else(|| {
            StepError::Harness(format!("{n:?} is not open: add an fs_open step first"))
        })?;
        Ok((node, fh))
    }

    fn fuse_request(&self, step: &Step) -> Result<FuseRequest, StepError> {
        Ok(match &step.action {
            Action::FsInit(_) => FuseRequest::init(),
            Action::FsGetattr(_) => FuseRequest::getattr(self.node_of(step)?),
            Action::FsLookup(a) => FuseRequest::lookup(fs::ROOT_ID, &a.name),
            Action::FsOpen(_) => FuseRequest::open(self.node_of(step)?),
            Action::FsRead(a) => {
                let (node, fh) = self.handle_of(step)?;
                FuseRequest::read(
                    node,
                    fh,
                    a.read_offset.unwrap_or(0),
                    a.read_size.unwrap_or(4096),
                )
            }
            Action::FsRelease(_) => {
                let (node, fh) = self.handle_of(step)?;
                FuseRequest::release(node, fh)
            }
            Action::FsForget(_) => FuseRequest::forget(self.node_of(step)?, 1),
            Action::FsUnknown(a) => FuseRequest::unknown(a.opcode.unwrap_or(UNKNOWN_OPCODE)),
            other => {
                return Err(StepError::Harness(format!(
                    "{} is not a FUSE request",
                    other.name()
                )));
            }
        })
    }

    fn fuse(&mut self, step: &Step) -> StepResult {
        if !matches!(step.action, Action::FsInit(_)) && !self.fs.initialized {
            // INIT first (R-FS-02) is the driver's duty: a scenario without it is wrong.
            return Err(StepError::Harness(
                "FUSE requests need an fs_init step first (FUSE_INIT opens the session)".into(),
            ));
        }
        let idx = Self::fs_queue(step);
        let req = self.fuse_request(step)?;
        self.fs.unique += 1;
        let unique = self.fs.unique;
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let spec = req.chain(unique, uid, gid, step.action.indirect());
        self.fs.last = Some(format!(
            "on queue {idx}: {:?} with a {}-byte body, {} device-writable bytes",
            req.header(unique, uid, gid),
            req.body.len(),
            req.reply_room
        ));
        let mut q = self.queues.remove(&idx).ok_or_else(|| {
            StepError::Harness(format!("queue {idx} is not set up: add a `vring` step"))
        })?;
        let Some(mut mem) = self.mem.take() else {
            self.queues.insert(idx, q);
            return Err(StepError::Harness("no memory".into()));
        };
        let r = fuse_exchange(&mut q, &mut mem, &spec, self.opts.step_timeout);
        self.mem = Some(mem);
        self.queues.insert(idx, q);
        let what = format!(
            "FUSE opcode {} (unique {unique}) on queue {idx}",
            req.opcode
        );
        let x = match r {
            Ok(x) => x,
            Err(e) => return self.judge_ring(step, idx, &what, Err(e)),
        };
        // FORGET has no reply: its used length is its rule's, before the generic bound.
        let forget = matches!(step.action, Action::FsForget(_));
        if forget && x.ring.canary_intact && x.ring.readonly_intact {
            self.mark(id::R_FS_06);
            if x.ring.used_len != 0 {
                return Err(self.fail(
                    id::R_FS_06,
                    &format!("{what}: FORGET was used with length {}", x.ring.used_len),
                    "FORGET gets no reply: its chain is used with length 0",
                    brief(&x.ring),
                ));
            }
        }
        self.judge_ring(step, idx, &what, Ok(&x.ring))?;
        if forget {
            return Ok(());
        }
        self.judge_fuse(step, &what, unique, &x)
    }

    /// R-DEV-01..03 for one device request: the chain was used, named by the used element,
    /// only its writable buffers written, a used length within them, and the driver notified
    /// (unless it gave no call fd); the ring rules a completed request checks
    /// ([`Ctx::mark_datapath`]). Every device's steps judge their exchanges here first.
    pub(super) fn judge_ring(
        &mut self,
        step: &Step,
        idx: u16,
        what: &str,
        r: Result<&Exchanged, WaitError>,
    ) -> StepResult {
        let notified = r.as_ref().ok().map(|x| x.notified);
        self.judge_ring_notified(step, idx, what, r, notified)
    }

    /// [`Self::judge_ring`] where the caller says whether a notification was owed and came
    /// (`None`: none was owed, as for a buffer the device used before the driver asked for a
    /// call).
    pub(super) fn judge_ring_notified(
        &mut self,
        step: &Step,
        idx: u16,
        what: &str,
        r: Result<&Exchanged, WaitError>,
        notified: Option<bool>,
    ) -> StepResult {
        let x = match r {
            Ok(x) => x,
            Err(WaitError::Memory(e)) => return Err(StepError::Harness(chain(&e))),
            Err(e) => {
                let mut received = e.to_string();
                let st = self.inst().state();
                if matches!(st, ProcessState::Exited(_) | ProcessState::Signaled(_)) {
                    received = format!(
                        "{received}; {}",
                        describe_exit(&st, &self.inst().stderr_tail(400))
                    );
                }
                return Err(self.fail(
                    id::R_DEV_03,
                    &format!("{what} was not completed"),
                    "every available chain of a started queue is used, its used element naming it",
                    received,
                ));
            }
        };
        self.mark(id::R_DEV_01);
        self.mark(id::R_DEV_02);
        self.mark(id::R_DEV_03);
        self.mark_datapath(step, idx);
        if let Some(p) = x.common_problem() {
            let rule = if x.canary_intact && x.readonly_intact {
                id::R_DEV_02
            } else {
                id::R_DEV_01
            };
            return Err(self.fail(
                rule,
                &format!("{what}: {p}"),
                "only device-writable buffers written, used length within them",
                brief(x),
            ));
        }
        let polled = self.queues.get(&idx).is_some_and(|q| !q.call_fd);
        if notified == Some(false) && !polled {
            return Err(self.fail(
                id::R_DEV_03,
                &format!("{what}: the completion was not signalled on the call eventfd"),
                "the driver is notified of a used buffer (it did not suppress notifications)",
                brief(x),
            ));
        }
        Ok(())
    }

    fn judge_fuse(
        &mut self,
        step: &Step,
        what: &str,
        unique: u64,
        x: &FuseExchanged,
    ) -> StepResult {
        self.mark(id::R_FS_01);
        let Some(h) = x.header else {
            return Err(self.fail(
                id::R_FS_01,
                &format!("{what}: the reply is shorter than a fuse_out_header"),
                "a 16-byte fuse_out_header, then the reply body",
                format!("used length {}", x.ring.used_len),
            ));
        };
        if h.unique != unique || h.len != x.ring.used_len {
            return Err(self.fail(
                id::R_FS_01,
                &format!("{what}: the out header does not match the request"),
                &format!(
                    "unique {unique} echoed and len = the used length {}",
                    x.ring.used_len
                ),
                format!("{h:?}"),
            ));
        }
        match &step.action {
            Action::FsInit(_) => self.judge_init(what, x),
            Action::FsGetattr(_) => self.judge_getattr(step, what, x),
            Action::FsLookup(a) => self.judge_lookup(&a.name, a.missing == Some(true), what, x),
            Action::FsOpen(a) => {
                self.expect_ok(id::R_FS_04, what, x, size_of::<OpenOut>())?;
                let o = x.body_as::<OpenOut>().unwrap_or_default();
                self.fs.handles.insert(a.name.clone(), o.fh);
                Ok(())
            }
            Action::FsRead(a) => self.judge_read(a, what, x),
            Action::FsRelease(a) => {
                self.expect_ok(id::R_FS_04, what, x, 0)?;
                self.fs.handles.remove(&a.name);
                Ok(())
            }
            _ => self.expect_errno(id::R_FS_03, what, x, fs::ENOSYS, "ENOSYS"),
        }
    }

    /// The reply succeeded (error 0) with a body of at least `min_body` bytes.
    fn expect_ok(
        &mut self,
        rule: RuleId,
        what: &str,
        x: &FuseExchanged,
        min_body: usize,
    ) -> StepResult {
        self.mark(rule);
        let h = x.header.unwrap_or_default();
        if h.error != 0 || x.body.len() < min_body {
            return Err(self.fail(
                rule,
                &format!(
                    "{what}: error {} with a {}-byte body",
                    h.error,
                    x.body.len()
                ),
                &format!("error 0 and a body of at least {min_body} bytes"),
                format!("{h:?}, body {:02x?}", &x.body[..x.body.len().min(64)]),
            ));
        }
        Ok(())
    }

    /// The reply is the error form: `-errno` and no body (len 16).
    fn expect_errno(
        &mut self,
        rule: RuleId,
        what: &str,
        x: &FuseExchanged,
        errno: i32,
        name: &str,
    ) -> StepResult {
        self.mark(rule);
        let h = x.header.unwrap_or_default();
        if h.error != -errno || h.len != 16 {
            return Err(self.fail(
                rule,
                &format!("{what}: answered error {} (len {})", h.error, h.len),
                &format!("error -{name} (-{errno}) and no body (len 16)"),
                format!("{h:?}"),
            ));
        }
        Ok(())
    }

    fn judge_init(&mut self, what: &str, x: &FuseExchanged) -> StepResult {
        self.expect_ok(id::R_FS_02, what, x, size_of::<fs::InitOutPrefix>())?;
        let o = x.body_as::<fs::InitOutPrefix>().unwrap_or_default();
        if o.major != fs::KERNEL_VERSION {
            return Err(self.fail(
                id::R_FS_02,
                &format!("{what}: fuse_init_out major {}", o.major),
                "major 7, the FUSE kernel protocol",
                format!("{o:?}"),
            ));
        }
        self.fs.initialized = true;
        Ok(())
    }

    fn judge_getattr(&mut self, step: &Step, what: &str, x: &FuseExchanged) -> StepResult {
        self.expect_ok(id::R_FS_04, what, x, size_of::<AttrOut>())?;
        let a = x.body_as::<AttrOut>().unwrap_or_default().attr;
        let (want, kind) = match name_of(step) {
            None => (fs::S_IFDIR, "a directory (the root)"),
            Some(_) => (fs::S_IFREG, "a regular file"),
        };
        let size = name_of(step)
            .and_then(|n| self.fs.files.get(n))
            .map(|d| d.len() as u64);
        if a.file_type() != want || size.is_some_and(|s| s != a.size) {
            return Err(self.fail(
                id::R_FS_04,
                &format!("{what}: attributes mode {:#o}, size {}", a.mode, a.size),
                &format!(
                    "{kind}{}",
                    size.map(|s| format!(" of {s} bytes")).unwrap_or_default()
                ),
                format!("{a:?}"),
            ));
        }
        Ok(())
    }

    fn judge_lookup(
        &mut self,
        name: &str,
        missing: bool,
        what: &str,
        x: &FuseExchanged,
    ) -> StepResult {
        let name = name.to_string();
        let h = x.header.unwrap_or_default();
        if missing {
            // A successful reply with node id 0 is FUSE's negative entry (the kernel reads it as
            // ENOENT and caches it): legal.
            if h.error == 0 && x.body_as::<EntryOut>().is_some_and(|e| e.nodeid == 0) {
                self.mark(id::R_FS_03);
                self.note(format!(
                    "step {}: LOOKUP of the missing {name:?} answered a negative entry (node id 0), which FUSE allows instead of -ENOENT",
                    self.step_no
                ));
                return Ok(());
            }
            return self.expect_errno(id::R_FS_03, what, x, fs::ENOENT, "ENOENT");
        }
        self.expect_ok(id::R_FS_04, what, x, size_of::<EntryOut>())?;
        let e = x.body_as::<EntryOut>().unwrap_or_default();
        let size = self.fs.files.get(&name).map(|d| d.len() as u64);
        if e.nodeid == 0
            || e.attr.file_type() != fs::S_IFREG
            || size.is_some_and(|s| s != e.attr.size)
        {
            return Err(self.fail(
                id::R_FS_04,
                &format!(
                    "{what}: LOOKUP {name:?} gave node {} mode {:#o} size {}",
                    e.nodeid, e.attr.mode, e.attr.size
                ),
                &format!(
                    "a node id other than 0 for a regular file{}",
                    size.map(|s| format!(" of {s} bytes")).unwrap_or_default()
                ),
                format!("{e:?}"),
            ));
        }
        self.fs.nodes.insert(name, e.nodeid);
        Ok(())
    }

    fn judge_read(&mut self, a: &FsReadArgs, what: &str, x: &FuseExchanged) -> StepResult {
        self.expect_ok(id::R_FS_04, what, x, 0)?;
        let name = a.name.clone();
        let Some(data) = self.fs.files.get(&name) else {
            // A file the scenario did not make: its bytes are unknown, only the reply's form
            // was checked.
            return Ok(());
        };
        let off = (a.read_offset.unwrap_or(0) as usize).min(data.len());
        let end = (off + a.read_size.unwrap_or(4096) as usize).min(data.len());
        let want = &data[off..end];
        if x.body != want {
            let at = x
                .body
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(x.body.len()));
            return Err(self.fail(
                id::R_FS_04,
                &format!(
                    "{what}: READ of {name:?} returned {} bytes, differing from the file at byte {at}",
                    x.body.len()
                ),
                &format!("the file's {} bytes at offset {off}", want.len()),
                format!(
                    "{} bytes, from {at}: {:02x?}",
                    x.body.len(),
                    &x.body[at.min(x.body.len())..(at + 16).min(x.body.len())]
                ),
            ));
        }
        Ok(())
    }

    /// R-FS-05: tag NUL-padded UTF-8, num_request_queues ≥ 1 (virtio 1.2 5.11.4).
    fn fs_config(&mut self, step: &Step) -> StepResult {
        let size = size_of::<FsConfig>() as u32;
        let r = self.session()?.get_config(0, size);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        self.mark(id::R_FS_05);
        let Some(c) = m
            .payload
            .get(12..12 + size as usize)
            .and_then(|b| FsConfig::read_from_bytes(b).ok())
        else {
            return Err(self.fail(
                id::R_FS_05,
                "GET_CONFIG of the 40-byte virtio-fs config space failed",
                "the config space: tag[36] and num_request_queues",
                format!("{} payload bytes", m.payload.len()),
            ));
        };
        let end = c.tag.iter().position(|&b| b == 0).unwrap_or(c.tag.len());
        let padded = c.tag[end..].iter().all(|&b| b == 0);
        let utf8 = std::str::from_utf8(&c.tag[..end]).is_ok();
        if !padded || !utf8 || c.num_request_queues == 0 {
            return Err(self.fail(
                id::R_FS_05,
                &format!(
                    "config tag {:?}, num_request_queues {}",
                    String::from_utf8_lossy(&c.tag),
                    c.num_request_queues
                ),
                "a UTF-8 tag padded with NUL bytes and num_request_queues ≥ 1",
                format!("{c:?}"),
            ));
        }
        if end == 0 {
            self.note(format!(
                "step {}: the file system tag is empty",
                self.step_no
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::file_content;

    #[test]
    fn file_content_differs_along_the_file() {
        let d = file_content(600, None);
        assert_ne!(d[0], d[1]);
        assert_ne!(&d[0..250], &d[1..251]);
        assert!(file_content(10, Some(7)).iter().all(|&b| b == 7));
    }
}
