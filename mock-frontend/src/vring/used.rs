//! Reading what the device used: the used index or packed used flags, the used elements
//! collected in order and matched to the chains in flight, and the wait on the call eventfd.

use super::*;

impl DriverQueue {
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

    /// How many used buffers wait to be collected (counting at most `max` for packed).
    pub(super) fn ready(&self, mem: &GuestMemory, max: usize) -> Result<usize, MemoryError> {
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
    pub(super) fn packed_used_at(
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

    pub(super) fn advance(&self, slot: u16, wrap: bool, by: usize) -> (u16, bool) {
        let next = usize::from(slot) + by;
        let size = usize::from(self.size);
        ((next % size) as u16, wrap ^ (next >= size))
    }

    pub(super) fn collect(
        &mut self,
        mem: &GuestMemory,
        count: usize,
    ) -> Result<Vec<UsedElem>, WaitError> {
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

    pub(super) fn take_in_flight(&mut self, id: u32) -> Result<Vec<u16>, WaitError> {
        self.in_flight
            .get_mut(id as usize)
            .and_then(Option::take)
            .ok_or(WaitError::BadUsedId { id })
    }

    pub(super) fn collect_split(&mut self, mem: &GuestMemory) -> Result<UsedElem, WaitError> {
        let slot = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let mut raw = [0u8; 8];
        mem.read(slot, &mut raw)?;
        let elem = UsedElem::read_from_bytes(&raw).expect("8 bytes");
        let ids = self.take_in_flight(elem.id)?;
        self.free.extend(ids);
        self.last_used = self.last_used.wrapping_add(1);
        Ok(elem)
    }

    pub(super) fn collect_packed(&mut self, mem: &GuestMemory) -> Result<UsedElem, WaitError> {
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
