//! The guest memory the front-end shares: the memory table, single regions added and removed
//! (R-MEM-04, R-MEM-10, R-MEM-11, R-MEM-14, R-MEM-20), and the dirty log (SET_LOG_BASE,
//! SET_LOG_FD).

use std::os::fd::OwnedFd;

use vhu_protocol::ProtocolFeatures;
use vhu_protocol::wire::payload::{Body, LogDesc, MemRegion};

use crate::faults::Fault;
use crate::memory::{DirtyLog, Region};

use super::{MAX_MEM_SLOTS, Outcome, Session};

impl Session<'_> {
    pub(crate) fn set_mem_table(&mut self, regions: Vec<MemRegion>, fds: Vec<OwnedFd>) -> Outcome {
        if regions.len() != fds.len() || regions.is_empty() {
            return Outcome::Failed; // R-MEM-20
        }
        let mut mapped: Vec<Region> = vec![];
        for (r, fd) in regions.into_iter().zip(fds) {
            if mapped.iter().any(|o| o.overlaps(&r)) {
                return Outcome::Failed; // R-MEM-04
            }
            match Region::map(r, fd) {
                Ok(region) => mapped.push(region),
                Err(_) => return Outcome::Failed,
            }
        }
        self.mem.replace_regions(mapped);
        self.retranslate();
        Outcome::Done
    }

    pub(crate) fn add_mem_reg(&mut self, r: MemRegion, mut fds: Vec<OwnedFd>) -> Outcome {
        let Some(fd) = fds.pop().filter(|_| fds.is_empty()) else {
            return Outcome::Failed;
        };
        let overlaps = self.mem.regions().iter().any(|o| o.overlaps(&r));
        let full = self.mem.regions().len() as u64 >= MAX_MEM_SLOTS
            && !self.has(Fault::AcceptPastMaxSlots);
        if overlaps || full {
            return Outcome::Failed; // R-MEM-04, R-MEM-10
        }
        match Region::map(r, fd) {
            Ok(region) => {
                self.mem.add_region(region);
                self.retranslate();
                Outcome::Done
            }
            Err(_) => Outcome::Failed,
        }
    }

    pub(super) fn rem_mem_reg(&mut self, r: MemRegion) -> Outcome {
        let lax = self.has(Fault::LaxRemMemReg);
        let pos = self.mem.regions().iter().position(|o| {
            o.desc.guest_addr == r.guest_addr
                && o.desc.size == r.size
                && (lax || o.desc.user_addr == r.user_addr)
        });
        match pos {
            Some(_) if self.has(Fault::IgnoreRemMemReg) => Outcome::Done,
            // R-MEM-11: dropping the region unmaps it and closes its fd.
            Some(i) => {
                self.mem.remove_region(i);
                self.retranslate();
                Outcome::Done
            }
            None if lax => Outcome::Done,
            None => Outcome::Failed, // R-MEM-14
        }
    }

    /// SET_LOG_BASE (R-LOG-02, R-LOG-07): maps the log; a second one replaces the first. The
    /// reply is a u64, 0 on success.
    pub(super) fn set_log_base(&mut self, l: LogDesc, mut fds: Vec<OwnedFd>) -> Outcome {
        let ok = self.negotiated(ProtocolFeatures::LOG_SHMFD) && l.size > 0;
        let mapped = fds
            .pop()
            .filter(|_| ok)
            .and_then(|fd| DirtyLog::new(fd, l.size, l.offset).ok());
        match mapped {
            Some(log) => {
                if let Some(old) = self
                    .mem
                    .log
                    .replace(log)
                    .filter(|_| self.has(Fault::KeepOldLog))
                {
                    self.kept_logs.push(old);
                }
                Outcome::Reply(Body::U64(0))
            }
            None => Outcome::Refused(Body::U64(1)),
        }
    }

    pub(super) fn set_log_fd(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
        match fds.pop() {
            Some(fd) => {
                self.log_fd = Some(fd);
                Outcome::Done
            }
            None => Outcome::Failed,
        }
    }
}
