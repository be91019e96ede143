//! The driver side of a virtqueue in guest memory (virtio 1.2 section 2.7, split ring): add
//! descriptor chains (direct or indirect), publish them, kick, wait for the call eventfd and read
//! the used ring. Written from the virtio spec, separately from the mock back-end's device side,
//! so a misreading in one is not mirrored in the other. Packed rings (section 2.8) will be a
//! second [`RingLayout`].

use std::os::fd::AsFd;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use thiserror::Error;
use vhu_protocol::virtio::{
    SplitDesc, UsedElem, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    split_ring_sizes,
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
}

/// A buffer of a descriptor chain.
#[derive(Copy, Clone, Debug)]
pub struct Buffer {
    /// Guest address.
    pub gpa: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// Why waiting for used buffers ended without them.
#[derive(Debug, Error)]
pub enum WaitError {
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
    /// The used ring holds an id the driver never made available.
    #[error("used ring entry names descriptor {id}, which is not in flight")]
    BadUsedId {
        /// The id.
        id: u32,
    },
    /// Guest memory failed.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
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
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    free: Vec<u16>,
    /// Descriptors of each in-flight chain, by head.
    in_flight: Vec<Option<Vec<u16>>>,
    next_avail: u16,
    last_used: u16,
    /// Whether to inject one kick after SET_VRING_KICK (R-RING-05).
    pub inject_kick: bool,
    /// Notifications read from the call eventfd so far.
    pub calls: u64,
}

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
        _layout: RingLayout,
        event_idx: bool,
    ) -> Result<Self, MemoryError> {
        let (d, a, u) = split_ring_sizes(size);
        let desc = mem.alloc(d, 16)?;
        let avail = mem.alloc(a, 2)?;
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
            desc,
            avail,
            used,
            event_idx,
            free: (0..size).rev().collect(),
            in_flight: vec![None; usize::from(size)],
            next_avail: 0,
            last_used: 0,
            inject_kick: true,
            calls: 0,
        })
    }

    /// SET_VRING_ADDR's payload: ring locations as user addresses (R-VRING-03).
    pub fn vring_addr(&self, mem: &GuestMemory) -> VringAddr {
        let ua = |gpa| mem.gpa_to_ua(gpa).unwrap_or(gpa);
        VringAddr {
            index: self.index.into(),
            flags: 0,
            desc: ua(self.desc),
            used: ua(self.used),
            avail: ua(self.avail),
            log: self.used,
        }
    }

    /// Sets the ring's starting index: the avail and used indices in memory and the driver's own.
    pub fn set_base(&mut self, mem: &GuestMemory, base: u16) -> Result<(), MemoryError> {
        self.next_avail = base;
        self.last_used = base;
        mem.write_u16(self.avail + 2, base)?;
        mem.write_u16(self.used + 2, base)
    }

    /// NUM, BASE, ADDR, KICK, CALL, ERR in QEMU's order (R-VRING-01), then one injected kick
    /// (R-RING-05) unless `inject_kick` is off. Enabling is separate (SET_VRING_ENABLE).
    pub fn setup(
        &mut self,
        session: &mut Session,
        mem: &GuestMemory,
        base: u16,
    ) -> Result<(), SessionError> {
        use vhu_protocol::FrontendReq::*;
        let i = u32::from(self.index);
        self.set_base(mem, base)?;
        session.checked(SetVringNum, |s| s.set_vring_num(i, self.size.into()))?;
        session.checked(SetVringBase, |s| s.set_vring_base(i, base.into()))?;
        let addr = self.vring_addr(mem);
        session.checked(SetVringAddr, |s| s.set_vring_addr(&addr))?;
        let idx = self.index as u8;
        session.checked(SetVringCall, |s| {
            s.set_vring_call(idx, Some(self.call.as_fd()))
        })?;
        session.checked(SetVringErr, |s| {
            s.set_vring_err(idx, Some(self.err.as_fd()))
        })?;
        session.checked(SetVringKick, |s| {
            s.set_vring_kick(idx, Some(self.kick.as_fd()))
        })?;
        if self.inject_kick {
            self.kick();
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

    /// Adds a direct chain; returns its head. Not visible to the device until [`publish`](Self::publish).
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[Buffer]) -> Result<u16, MemoryError> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(MemoryError::OutOfSpace {
                len: bufs.len() as u64,
            });
        }
        let ids: Vec<u16> = (0..bufs.len())
            .map(|_| self.free.pop().expect("checked"))
            .collect();
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = if last { 0 } else { ids[k + 1] };
            self.write_desc(
                mem,
                self.desc,
                ids[k],
                &SplitDesc {
                    addr: b.gpa,
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
        let table = mem.alloc(16 * u64::from(n), 16)?;
        for (k, b) in bufs.iter().enumerate() {
            let k = k as u16;
            let last = k + 1 == n;
            let flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            self.write_desc(
                mem,
                table,
                k,
                &SplitDesc {
                    addr: b.gpa,
                    len: b.len,
                    flags,
                    next: if last { 0 } else { k + 1 },
                },
            )?;
        }
        let head = self.free.pop().ok_or(MemoryError::OutOfSpace { len: 1 })?;
        self.write_desc(
            mem,
            self.desc,
            head,
            &SplitDesc {
                addr: table,
                len: 16 * u32::from(n),
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

    /// Makes every added chain visible: the avail index, after a release fence.
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<(), MemoryError> {
        if self.event_idx {
            // used_event: ask for a call as soon as the next buffer is used.
            mem.write_u16(self.avail + 4 + 2 * u64::from(self.size), self.last_used)?;
        }
        fence(Ordering::Release);
        mem.write_u16(self.avail + 2, self.next_avail)
    }

    /// Writes the kick eventfd.
    pub fn kick(&self) {
        let _ = self.kick.write(1);
    }

    /// The driver's avail index (what it has made available).
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    /// The used index in guest memory.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_u16(self.used + 2).unwrap_or(self.last_used)
    }

    /// Waits until `count` more buffers are used, watching the call eventfd and polling the used
    /// index; returns their used elements and recycles their descriptors.
    pub fn wait_used(
        &mut self,
        mem: &GuestMemory,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<UsedElem>, WaitError> {
        let start = Instant::now();
        let calls_before = self.calls;
        loop {
            let used = self.used_idx(mem);
            fence(Ordering::Acquire);
            let ready = usize::from(used.wrapping_sub(self.last_used));
            if ready >= count {
                if self.calls == calls_before {
                    // The device publishes the used index before it signals: give the call a
                    // moment to arrive, so a missing notification is told from a late one.
                    self.read_call(Duration::from_millis(200));
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
            let slot = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let mut raw = [0u8; 8];
            mem.read(slot, &mut raw)?;
            let elem = UsedElem::read_from_bytes(&raw).expect("8 bytes");
            let ids = self
                .in_flight
                .get_mut(elem.id as usize)
                .and_then(Option::take)
                .ok_or(WaitError::BadUsedId { id: elem.id })?;
            self.free.extend(ids);
            self.last_used = self.last_used.wrapping_add(1);
            out.push(elem);
        }
        Ok(out)
    }
}
