//! One FUSE request executed against the [`Store`]: opcode dispatch, body parsing and the
//! reply body (FUSE protocol 7.31, `linux/fuse.h`).

use zerocopy::{FromBytes, IntoBytes};

use super::store::{Errno, Store};
use super::wire::{
    AttrOut, BatchForgetIn, COMPAT_22_INIT_OUT_SIZE, EntryOut, ForgetIn, ForgetOne, InHeader,
    InitIn, InitOut, KERNEL_MAJOR, KERNEL_MINOR, MINOR_FULL_INIT_OUT, OpenIn, OpenOut, ReadIn,
    ReleaseIn, errno, op,
};

/// Largest WRITE payload and READ size announced at INIT.
pub(crate) const MAX_WRITE: u32 = 128 * 1024;
/// Largest request in pages announced at INIT.
const MAX_PAGES: u16 = 32;

/// What a request asks the device to write back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// FORGET and BATCH_FORGET have no reply.
    NoReply,
    /// A successful reply with this body.
    Body(Vec<u8>),
    /// A failed request: this errno, no body.
    Error(Errno),
}

impl From<Result<Vec<u8>, Errno>> for Outcome {
    fn from(r: Result<Vec<u8>, Errno>) -> Self {
        match r {
            Ok(b) => Outcome::Body(b),
            Err(e) => Outcome::Error(e),
        }
    }
}

/// Whether `opcode` is one the device never answers.
pub(crate) fn is_no_reply(opcode: u32) -> bool {
    matches!(opcode, op::FORGET | op::BATCH_FORGET)
}

/// The least reply body a successful `opcode` needs (the reply must fit before the device
/// acts, so a request without room changes nothing).
pub(crate) fn min_body(opcode: u32) -> usize {
    match opcode {
        op::INIT => COMPAT_22_INIT_OUT_SIZE,
        op::GETATTR => size_of::<AttrOut>(),
        op::LOOKUP => size_of::<EntryOut>(),
        op::OPEN | op::OPENDIR => size_of::<OpenOut>(),
        op::STATFS => size_of::<super::wire::StatfsOut>(),
        _ => 0,
    }
}

/// A fixed-size body at the start of `body`, or EINVAL when it is short.
fn parse<T: FromBytes>(body: &[u8]) -> Result<T, Errno> {
    T::read_from_prefix(body)
        .map(|(v, _)| v)
        .map_err(|_| errno::EINVAL)
}

/// The session state the requests change.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) store: Store,
    /// INIT succeeded (major 7) and no DESTROY since.
    pub(crate) initialized: bool,
}

impl Session {
    /// Executes one well-framed request; `room` is how many body bytes the reply can hold.
    pub(crate) fn execute(&mut self, h: &InHeader, body: &[u8], room: usize) -> Outcome {
        if is_no_reply(h.opcode) {
            self.forget(h, body);
            return Outcome::NoReply;
        }
        if h.opcode == op::INIT {
            return self.init(body, room).into();
        }
        if !self.initialized {
            // FUSE: nothing but INIT before the session starts.
            return Outcome::Error(errno::EIO);
        }
        let s = &mut self.store;
        let out: Result<Vec<u8>, Errno> = match h.opcode {
            op::GETATTR => s.attr(h.nodeid).map(|attr| {
                AttrOut {
                    attr_valid: 1,
                    attr,
                    ..AttrOut::default()
                }
                .as_bytes()
                .to_vec()
            }),
            op::LOOKUP => {
                let name = body.split(|&b| b == 0).next().unwrap_or_default();
                s.lookup(h.nodeid, name).map(|(nodeid, attr)| {
                    EntryOut {
                        nodeid,
                        entry_valid: 1,
                        attr_valid: 1,
                        attr,
                        ..EntryOut::default()
                    }
                    .as_bytes()
                    .to_vec()
                })
            }
            op::OPEN | op::OPENDIR => parse::<OpenIn>(body).and_then(|o| {
                let fh = if h.opcode == op::OPEN {
                    s.open(h.nodeid, o.flags)?
                } else {
                    s.opendir(h.nodeid)?
                };
                Ok(OpenOut {
                    fh,
                    ..OpenOut::default()
                }
                .as_bytes()
                .to_vec())
            }),
            op::READ | op::READDIR => parse::<ReadIn>(body).and_then(|r| {
                // Why: a reply never exceeds the room the driver gave, nor max_write.
                let size = r.size.min(MAX_WRITE).min(room as u32);
                if h.opcode == op::READ {
                    s.read(r.fh, r.offset, size)
                } else {
                    s.readdir(r.fh, r.offset, size)
                }
            }),
            op::RELEASE | op::RELEASEDIR => parse::<ReleaseIn>(body)
                .and_then(|r| s.release(r.fh, h.opcode == op::RELEASEDIR))
                .map(|()| Vec::new()),
            op::STATFS => Ok(s.statfs().as_bytes().to_vec()),
            op::DESTROY => {
                s.clear();
                self.initialized = false;
                Ok(Vec::new())
            }
            _ => Err(errno::ENOSYS),
        };
        out.into()
    }

    /// INIT: major 7 starts the session; a newer major is answered with ours alone so the
    /// driver can retry; an older one is refused (FUSE protocol, `fuse_init_out`).
    fn init(&mut self, body: &[u8], room: usize) -> Result<Vec<u8>, Errno> {
        let i: InitIn = parse(body)?;
        if i.major < KERNEL_MAJOR {
            return Err(errno::EPROTO);
        }
        let out = InitOut {
            major: KERNEL_MAJOR,
            minor: KERNEL_MINOR,
            max_readahead: i.max_readahead,
            flags: 0,
            max_background: 16,
            congestion_threshold: 12,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: MAX_PAGES,
            ..InitOut::default()
        };
        let mut bytes = out.as_bytes().to_vec();
        if i.major == KERNEL_MAJOR && i.minor < MINOR_FULL_INIT_OUT {
            bytes.truncate(COMPAT_22_INIT_OUT_SIZE);
        }
        if bytes.len() > room {
            return Err(errno::EINVAL);
        }
        self.initialized = i.major == KERNEL_MAJOR;
        Ok(bytes)
    }

    /// FORGET and BATCH_FORGET (before INIT too: they change nothing then).
    fn forget(&mut self, h: &InHeader, body: &[u8]) {
        if h.opcode == op::FORGET {
            if let Ok(f) = parse::<ForgetIn>(body) {
                self.store.forget(h.nodeid, f.nlookup);
            }
            return;
        }
        let Ok((b, rest)) = BatchForgetIn::read_from_prefix(body) else {
            return;
        };
        for one in rest
            .chunks_exact(size_of::<ForgetOne>())
            .take(b.count as usize)
        {
            if let Ok(f) = parse::<ForgetOne>(one) {
                self.store.forget(f.nodeid, f.nlookup);
            }
        }
    }
}
