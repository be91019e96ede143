//! What a request carries: the payload size its layout fixes and the fds it comes with
//! (R-FE-02, R-MEM-13).

use vhu_protocol::wire::payload::{BodyKind, VRING_NOFD_MASK};
use vhu_protocol::{FrontendReq, Message};

use crate::rules::id;

use super::Judge;

impl Judge {
    /// The payload size and the fd count of `req` as its layout fixes them.
    pub(super) fn sizes_and_fds(&mut self, req: FrontendReq, m: &Message) {
        use FrontendReq::*;
        let len = m.payload.len();
        let (size_ok, wanted) = match req.request_body() {
            BodyKind::MemTable => {
                let n = m
                    .payload
                    .get(..4)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
                let want = n.map(|n| 8 + 32 * n as usize);
                (
                    want == Some(len),
                    want.map_or("at least 8".into(), |w| w.to_string()),
                )
            }
            BodyKind::Config => {
                let n = m
                    .payload
                    .get(4..8)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
                let want = n.map(|n| 12 + n as usize);
                (
                    want == Some(len),
                    want.map_or("at least 12".into(), |w| w.to_string()),
                )
            }
            k => match k.fixed_size() {
                Some(f) => (f == len, f.to_string()),
                None => (true, String::new()),
            },
        };
        self.check(
            id::R_FE_02,
            size_ok,
            m,
            || {
                format!(
                    "{} with a {len}-byte payload, its layout has {wanted}",
                    req.spec_name()
                )
            },
            "the payload size the request's layout fixes",
        );
        let fds = m.fds.len();
        let (want_min, want_max, what) = match req {
            SetMemTable => {
                let n = m
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()) as usize);
                (n, n, "one fd per region")
            }
            SetVringKick | SetVringCall | SetVringErr => {
                let nofd = m.u64().is_some_and(|w| w & VRING_NOFD_MASK != 0);
                if nofd {
                    (0, 0, "no fd with bit 8 (invalid FD) set")
                } else {
                    (1, 1, "one fd without bit 8")
                }
            }
            RemMemReg => {
                // "No file descriptors SHOULD be passed": one is tolerated by the spec (the
                // back-end MAY accept it), so it is R-MEM-13's SHOULD, not R-FE-02's MUST.
                self.check(
                    id::R_MEM_13,
                    fds == 0,
                    m,
                    || format!("REM_MEM_REG with {fds} fds"),
                    "no fd with REM_MEM_REG",
                );
                (0, 1, "no fd (one tolerated)")
            }
            other => {
                let (lo, hi) = other.fd_range();
                (lo, hi, "the fds its layout fixes")
            }
        };
        self.check(
            id::R_FE_02,
            (want_min..=want_max).contains(&fds),
            m,
            || format!("{} with {fds} fds", req.spec_name()),
            what,
        );
    }
}
