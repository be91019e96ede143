//! The driver side of a virtqueue in guest memory (virtio 1.2 section 2.7, split ring): add
//! descriptor chains (direct or indirect), publish them, kick, wait for the call eventfd and read
//! the used ring. Packed rings (section 2.8) are the second [`RingLayout`]: one descriptor ring
//! whose avail/used flag bits and wrap counters replace the avail and used rings. Written from
//! the virtio spec, separately from the mock back-end's device side, so a misreading in one is
//! not mirrored in the other.

use std::os::fd::AsFd;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use thiserror::Error;
use vhu_protocol::virtio::{
    PackedDesc, SplitDesc, UsedElem, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE, split_ring_sizes,
};
use vhu_protocol::wire::payload::VringAddr;
use zerocopy::{FromBytes, IntoBytes};

use crate::memory::{GuestMemory, MemoryError};
use crate::session::{Session, SessionError};

mod avail;
mod used;

/// The ring format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RingLayout {
    /// Split virtqueue (descriptor table, avail ring, used ring).
    Split,
    /// Packed virtqueue (descriptor ring, driver and device event suppression areas).
    Packed,
}

/// A buffer of a descriptor chain.
#[derive(Copy, Clone, Debug)]
pub struct Buffer {
    /// Guest address.
    pub gpa: u64,
    /// Its size in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// Why waiting for used buffers ended without them.
#[derive(Debug, Error)]
pub enum WaitError {
    /// The used ring holds an id the driver never made available.
    #[error("used ring entry names descriptor {id}, which is not in flight")]
    BadUsedId {
        /// The id.
        id: u32,
    },
    /// Guest memory failed.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// Fewer used buffers than expected arrived in time.
    #[error("{got} of {wanted} used buffers after {waited:?}")]
    Timeout {
        /// Used buffers seen.
        got: usize,
        /// Used buffers expected.
        wanted: usize,
        /// How long it waited.
        waited: Duration,
    },
}

/// A driver-side queue.
#[derive(Debug)]
pub struct DriverQueue {
    /// Queue index.
    pub index: u16,
    /// Queue size.
    pub size: u16,
    /// Kick eventfd (the driver writes it).
    pub kick: EventFd,
    /// Call eventfd (the device writes it).
    pub call: EventFd,
    /// Error eventfd.
    pub err: EventFd,
    layout: RingLayout,
    /// Split: descriptor table; packed: descriptor ring.
    desc: u64,
    /// Split: avail ring; packed: driver event suppression area.
    avail: u64,
    /// Split: used ring; packed: device event suppression area.
    used: u64,
    event_idx: bool,
    /// Split: free descriptors; packed: free buffer ids.
    free: Vec<u16>,
    /// Split: descriptors of each in-flight chain, by head; packed: descriptor slots of each
    /// in-flight buffer, by buffer id.
    in_flight: Vec<Option<Vec<u16>>>,
    /// Split: the avail index; packed: the next descriptor slot.
    next_avail: u16,
    /// Split: the used index seen; packed: the next slot the device writes a used descriptor at.
    last_used: u16,
    /// Packed: the driver's wrap counter (starts at 1).
    avail_wrap: bool,
    /// Packed: the wrap counter expected in the next used descriptor (starts at 1).
    used_wrap: bool,
    /// Packed: descriptor slots in use.
    slots_used: u16,
    /// Packed: head slots and flags written at publish time, so a chain appears at once.
    unpublished: Vec<(u16, u16)>,
    /// Whether to inject one kick after SET_VRING_KICK (R-RING-05).
    pub inject_kick: bool,
    /// Give the back-end a call eventfd; without one (SET_VRING_CALL bit 8, R-VRING-13) the
    /// driver polls the used ring and completions are not notified.
    pub call_fd: bool,
    /// Give the back-end a kick eventfd; without one (SET_VRING_KICK bit 8, R-VRING-12) the
    /// back-end must poll the ring and [`kick`](Self::kick) does nothing.
    pub kick_fd: bool,
    /// Send the setup messages before KICK in reverse order (ERR, CALL, ADDR, BASE, NUM):
    /// the spec fixes no order for them (R-VRING-15).
    pub reverse_setup: bool,
    /// Ask for used-ring writes to be logged (VHOST_VRING_F_LOG in SET_VRING_ADDR, R-LOG-04).
    pub log_used: bool,
    /// Notifications read from the call eventfd so far.
    pub calls: u64,
}

/// How long a completion's call may trail its used element (see [`DriverQueue::await_call`]).
pub const CALL_GRACE: Duration = Duration::from_millis(200);

/// One setup message of [`DriverQueue::setup`], sent on the session.
type SetupMessage<'a> = dyn Fn(&mut Session) -> Result<(), SessionError> + 'a;

fn eventfd() -> Result<EventFd, MemoryError> {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .map_err(|e| MemoryError::Create(std::io::Error::from(e)))
}

impl DriverQueue {
    /// Allocates the ring areas in guest memory and zeroes them.
    pub fn new(
        mem: &mut GuestMemory,
        index: u16,
        size: u16,
        layout: RingLayout,
        event_idx: bool,
    ) -> Result<Self, MemoryError> {
        if size == 0 {
            return Err(MemoryError::OutOfSpace { len: 0 });
        }
        let (d, a, u) = match layout {
            RingLayout::Split => split_ring_sizes(size),
            RingLayout::Packed => (16 * u64::from(size), 4, 4),
        };
        let desc = mem.alloc(d, 16)?;
        let avail = mem.alloc(a, 4)?;
        let used = mem.alloc(u, 4)?;
        for (gpa, len) in [(desc, d), (avail, a), (used, u)] {
            mem.fill(gpa, len, 0)?;
        }
        Ok(Self {
            index,
            size,
            kick: eventfd()?,
            call: eventfd()?,
            err: eventfd()?,
            layout,
            desc,
            avail,
            used,
            event_idx,
            free: (0..size).rev().collect(),
            in_flight: vec![None; usize::from(size)],
            next_avail: 0,
            last_used: 0,
            avail_wrap: true,
            used_wrap: true,
            slots_used: 0,
            unpublished: vec![],
            inject_kick: true,
            call_fd: true,
            kick_fd: true,
            log_used: false,
            reverse_setup: false,
            calls: 0,
        })
    }

    /// SET_VRING_ADDR's payload: ring locations as user addresses (R-VRING-03), or as IOVAs
    /// when the memory is behind the IOMMU (R-IOTLB-03).
    pub fn vring_addr(&self, mem: &GuestMemory) -> VringAddr {
        let ua = |gpa| {
            if mem.behind_iommu() {
                mem.device_addr(gpa)
            } else {
                mem.gpa_to_ua(gpa).unwrap_or(gpa)
            }
        };
        VringAddr {
            index: self.index.into(),
            flags: u32::from(self.log_used),
            desc: ua(self.desc),
            used: ua(self.used),
            avail: ua(self.avail),
            log: self.used,
        }
    }

    /// The ring format.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// The base a fresh ring starts from: 0 for split; for packed, index 0 with the wrap
    /// counter set (bit 15), as virtio 2.8 starts both wrap counters at 1.
    pub fn initial_base(&self) -> u16 {
        match self.layout {
            RingLayout::Split => 0,
            RingLayout::Packed => 0x8000,
        }
    }

    /// Sets the ring's starting point. Split: the avail and used indices in memory and the
    /// driver's own. Packed: `base` is the next slot (bits 0-14) and wrap counter (bit 15) of
    /// both the driver and the device.
    pub fn set_base(&mut self, mem: &GuestMemory, base: u16) -> Result<(), MemoryError> {
        match self.layout {
            RingLayout::Split => {
                self.next_avail = base;
                self.last_used = base;
                mem.write_u16(self.avail + 2, base)?;
                mem.write_u16(self.used + 2, base)
            }
            RingLayout::Packed => {
                let slot = (base & 0x7fff) % self.size;
                let wrap = base & 0x8000 != 0;
                (self.next_avail, self.last_used) = (slot, slot);
                (self.avail_wrap, self.used_wrap) = (wrap, wrap);
                Ok(())
            }
        }
    }

    /// SET_VRING_BASE's word for `base`: split, the index; packed, the same slot and wrap counter
    /// for avail (bits 0-15) and used (bits 16-31).
    pub fn base_word(&self, base: u16) -> u32 {
        match self.layout {
            RingLayout::Split => base.into(),
            RingLayout::Packed => u32::from(base) | u32::from(base) << 16,
        }
    }

    /// The same ring announced on a new connection (after a reconnect), starting from `base`,
    /// without touching guest memory: what the ring holds (requests made available while the
    /// back-end was away, the used index it reached) is the back-end's to pick up. NUM, BASE,
    /// ADDR, CALL, ERR, KICK, one injected kick.
    pub fn reattach(
        &mut self,
        session: &mut Session,
        mem: &GuestMemory,
        base: u16,
    ) -> Result<(), SessionError> {
        self.announce(session, mem, base)?;
        self.kick();
        Ok(())
    }

    /// NUM, BASE, ADDR, CALL, ERR, KICK (R-VRING-01), then one injected kick (R-RING-05) unless
    /// `inject_kick` is off. Enabling is separate (SET_VRING_ENABLE). For a packed ring `base`
    /// carries the wrap counter in bit 15 (see [`initial_base`](Self::initial_base)).
    pub fn setup(
        &mut self,
        session: &mut Session,
        mem: &GuestMemory,
        base: u16,
    ) -> Result<(), SessionError> {
        self.set_base(mem, base)?;
        self.announce(session, mem, base)?;
        if self.inject_kick {
            self.kick();
        }
        Ok(())
    }

    /// The setup messages before KICK (NUM, BASE, ADDR, CALL, ERR), with the driver's ring
    /// positions set to `base`: the ring is configured but not started (R-RING-01). Finish with
    /// [`start`](Self::start).
    pub fn configure(
        &mut self,
        session: &mut Session,
        mem: &GuestMemory,
        base: u16,
    ) -> Result<(), SessionError> {
        self.set_base(mem, base)?;
        self.announce_before_kick(session, mem, base)
    }

    /// SET_VRING_KICK: starts a ring [`configure`](Self::configure) set up, without a kick.
    pub fn start(&mut self, session: &mut Session) -> Result<(), SessionError> {
        let idx = self.index as u8;
        let kick = self.kick_fd.then(|| self.kick.as_fd());
        session.checked(vhu_protocol::FrontendReq::SetVringKick, |s| {
            s.set_vring_kick(idx, kick)
        })
    }

    /// Reads away kicks not yet seen, so a back-end given the kick eventfd later finds none
    /// pending (buffers made available before the ring started, R-RING-04).
    pub fn clear_kicks(&self) {
        let _ = self.kick.read();
    }

    /// The setup messages, from NUM to KICK, for a ring starting at `base`.
    fn announce(
        &mut self,
        session: &mut Session,
        mem: &GuestMemory,
        base: u16,
    ) -> Result<(), SessionError> {
        self.announce_before_kick(session, mem, base)?;
        self.start(session)
    }

    fn announce_before_kick(
        &mut self,
        session: &mut Session,
        mem: &GuestMemory,
        base: u16,
    ) -> Result<(), SessionError> {
        use vhu_protocol::FrontendReq::*;
        let i = u32::from(self.index);
        let word = self.base_word(base);
        let addr = self.vring_addr(mem);
        let idx = self.index as u8;
        let call = self.call_fd.then(|| self.call.as_fd());
        let err = self.err.as_fd();
        let size = self.size.into();
        let mut steps: [&SetupMessage<'_>; 5] = [
            &|s| s.checked(SetVringNum, |s| s.set_vring_num(i, size)),
            &|s| s.checked(SetVringBase, |s| s.set_vring_base(i, word)),
            &|s| s.checked(SetVringAddr, |s| s.set_vring_addr(&addr)),
            &|s| s.checked(SetVringCall, |s| s.set_vring_call(idx, call)),
            &|s| s.checked(SetVringErr, |s| s.set_vring_err(idx, Some(err))),
        ];
        if self.reverse_setup {
            steps.reverse();
        }
        for step in steps {
            step(session)?;
        }
        Ok(())
    }

    /// Writes the kick eventfd (nothing in polling mode: the back-end has no kick fd).
    pub fn kick(&self) {
        if self.kick_fd {
            let _ = self.kick.write(1);
        }
    }

    /// Replaces the call eventfd while the ring runs (SET_VRING_CALL, R-RING-15): later
    /// completions must be signalled on the new one. Returns the old one, so a test can check
    /// it stays quiet.
    pub fn replace_call(&mut self, session: &mut Session) -> Result<EventFd, SessionError> {
        let new = eventfd().map_err(|e| SessionError::Local {
            what: "cannot create an eventfd".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let idx = self.index as u8;
        session.checked(vhu_protocol::FrontendReq::SetVringCall, |s| {
            s.set_vring_call(idx, Some(new.as_fd()))
        })?;
        self.call_fd = true;
        Ok(std::mem::replace(&mut self.call, new))
    }

    /// What the driver has made available: split, the avail index; packed, the next slot with
    /// the driver's wrap counter in bit 15 (GET_VRING_BASE's low 16 bits).
    pub fn avail_idx(&self) -> u16 {
        match self.layout {
            RingLayout::Split => self.next_avail,
            RingLayout::Packed => self.next_avail | u16::from(self.avail_wrap) << 15,
        }
    }

    /// Whether the call eventfd was signalled since the driver had counted `since` calls. The
    /// device publishes the used index before it signals, so when no call is counted yet this
    /// waits up to [`CALL_GRACE`] for one: a missing notification is told from a late one.
    /// Without a call fd nothing can arrive: no wait.
    pub fn await_call(&mut self, since: u64) -> bool {
        if self.calls == since && self.call_fd {
            self.read_call(CALL_GRACE);
        }
        self.calls > since
    }

    /// The calls counted so far, after taking any pending on the call eventfd (no wait).
    pub fn calls_now(&mut self) -> u64 {
        self.read_call(Duration::ZERO);
        self.calls
    }

    /// Waits up to `timeout` for the call eventfd and counts what it carried.
    fn read_call(&mut self, timeout: Duration) {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut pfd = [PollFd::new(self.call.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut pfd, PollTimeout::from(ms));
        if let Ok(n) = self.call.read() {
            self.calls += n;
        }
    }
}
