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

    fn write_desc(
        &self,
        mem: &GuestMemory,
        table: u64,
        i: u16,
        d: &SplitDesc,
    ) -> Result<(), MemoryError> {
        mem.write(table + 16 * u64::from(i), d.as_bytes())
    }

    /// Adds a direct chain; returns its head (split) or buffer id (packed). Not visible to the
    /// device until [`publish`](Self::publish). Descriptors carry the addresses the device
    /// knows the buffers by (IOVAs behind the IOMMU).
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[Buffer]) -> Result<u16, MemoryError> {
        if self.layout == RingLayout::Packed {
            let descs: Vec<(u64, u32, u16)> = bufs
                .iter()
                .map(|b| (mem.device_addr(b.gpa), b.len, write_flag(b)))
                .collect();
            return self.packed_place(mem, &descs);
        }
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(MemoryError::OutOfSpace {
                len: bufs.len() as u64,
            });
        }
        let ids = self.free.split_off(self.free.len() - bufs.len());
        let ids: Vec<u16> = ids.into_iter().rev().collect();
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let flags = write_flag(b) | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = if last { 0 } else { ids[k + 1] };
            self.write_desc(
                mem,
                self.desc,
                ids[k],
                &SplitDesc {
                    addr: mem.device_addr(b.gpa),
                    len: b.len,
                    flags,
                    next,
                },
            )?;
        }
        self.make_available(mem, ids)
    }

    /// Adds a chain as one indirect descriptor whose table lives in guest memory.
    pub fn add_indirect(
        &mut self,
        mem: &mut GuestMemory,
        bufs: &[Buffer],
    ) -> Result<u16, MemoryError> {
        let n = bufs.len() as u16;
        if n == 0 {
            return Err(MemoryError::OutOfSpace { len: 0 });
        }
        let table = mem.alloc(16 * u64::from(n), 16)?;
        for (k, b) in bufs.iter().enumerate() {
            let k = k as u16;
            let entry = match self.layout {
                // Packed indirect tables are sequential: no NEXT, no id (virtio 2.8.19).
                RingLayout::Packed => PackedDesc {
                    addr: mem.device_addr(b.gpa),
                    len: b.len,
                    id: 0,
                    flags: write_flag(b),
                }
                .as_bytes()
                .to_vec(),
                RingLayout::Split => {
                    let last = k + 1 == n;
                    SplitDesc {
                        addr: mem.device_addr(b.gpa),
                        len: b.len,
                        flags: write_flag(b) | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                        next: if last { 0 } else { k + 1 },
                    }
                    .as_bytes()
                    .to_vec()
                }
            };
            mem.write(table + 16 * u64::from(k), &entry)?;
        }
        let len = 16 * u32::from(n);
        let table_addr = mem.device_addr(table);
        if self.layout == RingLayout::Packed {
            return self.packed_place(mem, &[(table_addr, len, VIRTQ_DESC_F_INDIRECT)]);
        }
        let head = self.free.pop().ok_or(MemoryError::OutOfSpace { len: 1 })?;
        self.write_desc(
            mem,
            self.desc,
            head,
            &SplitDesc {
                addr: table_addr,
                len,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )?;
        self.make_available(mem, vec![head])
    }

    fn make_available(&mut self, mem: &GuestMemory, ids: Vec<u16>) -> Result<u16, MemoryError> {
        let head = ids[0];
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_u16(slot, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight[usize::from(head)] = Some(ids);
        Ok(head)
    }

    /// The avail/used flag bits that mark a packed descriptor available in the current lap.
    fn avail_bits(&self) -> u16 {
        if self.avail_wrap {
            VIRTQ_DESC_F_AVAIL
        } else {
            VIRTQ_DESC_F_USED
        }
    }

    /// Packed: writes `(addr, len, flags)` descriptors into consecutive slots under one buffer
    /// id. Every descriptor but the head gets its flags now; the head's flags are written by
    /// [`publish`](Self::publish), after a release fence, so the chain appears at once.
    fn packed_place(
        &mut self,
        mem: &GuestMemory,
        descs: &[(u64, u32, u16)],
    ) -> Result<u16, MemoryError> {
        let n = descs.len() as u16;
        if n == 0 || n > self.size - self.slots_used || self.free.is_empty() {
            return Err(MemoryError::OutOfSpace { len: n.into() });
        }
        let id = self.free.pop().ok_or(MemoryError::OutOfSpace { len: 1 })?;
        let mut slots = Vec::with_capacity(descs.len());
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = k + 1 == descs.len();
            let flags = flags | if last { 0 } else { VIRTQ_DESC_F_NEXT } | self.avail_bits();
            let slot = self.next_avail;
            let at = self.desc + 16 * u64::from(slot);
            let d = PackedDesc {
                addr,
                len,
                id,
                flags,
            };
            if k == 0 {
                // The head's flags stay as they are (not available) until publish.
                mem.write(at, &d.as_bytes()[..14])?;
                self.unpublished.push((slot, flags));
            } else {
                mem.write(at, d.as_bytes())?;
            }
            slots.push(slot);
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
        }
        self.slots_used += n;
        self.in_flight[usize::from(id)] = Some(slots);
        Ok(id)
    }

    /// Makes every added chain visible: split, the avail index after a release fence; packed,
    /// each chain's head flags after a release fence.
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<(), MemoryError> {
        if self.layout == RingLayout::Packed {
            fence(Ordering::Release);
            for (slot, flags) in std::mem::take(&mut self.unpublished) {
                mem.write_u16(self.desc + 16 * u64::from(slot) + 14, flags)?;
            }
            return Ok(());
        }
        if self.event_idx {
            // used_event: ask for a call as soon as the next buffer is used.
            mem.write_u16(self.avail + 4 + 2 * u64::from(self.size), self.last_used)?;
        }
        fence(Ordering::Release);
        mem.write_u16(self.avail + 2, self.next_avail)
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

    /// Split: the used index in guest memory. Packed: the next slot the driver expects a used
    /// descriptor at, with its wrap counter in bit 15.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        match self.layout {
            RingLayout::Split => mem.read_u16(self.used + 2).unwrap_or(self.last_used),
            RingLayout::Packed => self.last_used | u16::from(self.used_wrap) << 15,
        }
    }

    /// Waits until `count` more buffers are used, watching the call eventfd and polling the used
    /// index (split) or the used flags (packed); returns their used elements and recycles their
    /// descriptors.
    pub fn wait_used(
        &mut self,
        mem: &GuestMemory,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<UsedElem>, WaitError> {
        let start = Instant::now();
        let calls_before = self.calls;
        loop {
            let ready = self.ready(mem, count)?;
            if ready >= count {
                if self.calls == calls_before && self.call_fd {
                    // Count a call already signalled; whether one is missing is judged per
                    // request by `await_call`, from the request's submission.
                    self.read_call(Duration::ZERO);
                }
                return self.collect(mem, count);
            }
            if start.elapsed() >= timeout {
                return Err(WaitError::Timeout {
                    got: ready,
                    wanted: count,
                    waited: start.elapsed(),
                });
            }
            self.read_call(Duration::from_millis(10));
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

    /// How many used buffers wait to be collected (counting at most `max` for packed).
    fn ready(&self, mem: &GuestMemory, max: usize) -> Result<usize, MemoryError> {
        if self.layout == RingLayout::Split {
            let used = self.used_idx(mem);
            fence(Ordering::Acquire);
            return Ok(usize::from(used.wrapping_sub(self.last_used)));
        }
        let (mut slot, mut wrap) = (self.last_used, self.used_wrap);
        let mut n = 0;
        while n < max {
            let Some(d) = self.packed_used_at(mem, slot, wrap)? else {
                break;
            };
            n += 1;
            let Some(chain) = self
                .in_flight
                .get(usize::from(d.id))
                .and_then(Option::as_ref)
            else {
                break; // `collect` reports the bad id.
            };
            (slot, wrap) = self.advance(slot, wrap, chain.len());
        }
        Ok(n)
    }

    /// The used descriptor at `slot`, if the device has written one in the lap `wrap` names.
    fn packed_used_at(
        &self,
        mem: &GuestMemory,
        slot: u16,
        wrap: bool,
    ) -> Result<Option<PackedDesc>, MemoryError> {
        let at = self.desc + 16 * u64::from(slot);
        let flags = mem.read_u16(at + 14)?;
        let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = flags & VIRTQ_DESC_F_USED != 0;
        if avail != wrap || used != wrap {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let mut raw = [0u8; 16];
        mem.read(at, &mut raw)?;
        Ok(PackedDesc::read_from_bytes(&raw).ok())
    }

    fn advance(&self, slot: u16, wrap: bool, by: usize) -> (u16, bool) {
        let next = usize::from(slot) + by;
        let size = usize::from(self.size);
        ((next % size) as u16, wrap ^ (next >= size))
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

    fn collect(&mut self, mem: &GuestMemory, count: usize) -> Result<Vec<UsedElem>, WaitError> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let elem = match self.layout {
                RingLayout::Split => self.collect_split(mem)?,
                RingLayout::Packed => self.collect_packed(mem)?,
            };
            out.push(elem);
        }
        Ok(out)
    }

    fn take_in_flight(&mut self, id: u32) -> Result<Vec<u16>, WaitError> {
        self.in_flight
            .get_mut(id as usize)
            .and_then(Option::take)
            .ok_or(WaitError::BadUsedId { id })
    }

    fn collect_split(&mut self, mem: &GuestMemory) -> Result<UsedElem, WaitError> {
        let slot = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let mut raw = [0u8; 8];
        mem.read(slot, &mut raw)?;
        let elem = UsedElem::read_from_bytes(&raw).expect("8 bytes");
        let ids = self.take_in_flight(elem.id)?;
        self.free.extend(ids);
        self.last_used = self.last_used.wrapping_add(1);
        Ok(elem)
    }

    fn collect_packed(&mut self, mem: &GuestMemory) -> Result<UsedElem, WaitError> {
        let d = self
            .packed_used_at(mem, self.last_used, self.used_wrap)?
            .ok_or(WaitError::BadUsedId { id: u32::MAX })?;
        let slots = self.take_in_flight(d.id.into())?;
        self.free.push(d.id);
        self.slots_used -= slots.len() as u16;
        (self.last_used, self.used_wrap) =
            self.advance(self.last_used, self.used_wrap, slots.len());
        Ok(UsedElem {
            id: d.id.into(),
            len: d.len,
        })
    }
}

fn write_flag(b: &Buffer) -> u16 {
    if b.writable { VIRTQ_DESC_F_WRITE } else { 0 }
}
