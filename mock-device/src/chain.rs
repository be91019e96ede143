//! Descriptor chains as the device receives them (virtio 1.2 sections 2.7.5, 2.7.6 and 2.8.6):
//! the flattened list of buffers, driver-readable ones first, and the reasons a chain or a ring
//! is refused ([`RingError`]).

use crate::memory::{GuestMemory, MemError, end_of};

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// A descriptor chain taken from the available ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor index (split) or ring slot of the first descriptor (packed).
    pub head: u16,
    /// Packed: buffer id (of the last descriptor). Split: equal to `head`.
    pub id: u16,
    /// The buffers in order, indirect tables flattened.
    pub segments: Vec<Segment>,
    /// Ring slots the chain occupies (packed; split: descriptors in the ring table walked).
    pub descriptors: u16,
}

impl Chain {
    /// Total bytes of device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.writable)
            .map(|s| u64::from(s.len))
            .sum()
    }
}

/// Why a ring or a chain was refused. After any of these the queue is stopped (virtio: the
/// device sets DEVICE_NEEDS_RESET) and [`crate::Queue::pop`] answers [`RingError::Broken`] until
/// the queue is built again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The driver published more new entries than the ring holds (split avail idx jump).
    #[error("avail idx {avail_idx} is more than {size} entries ahead of {next_avail}")]
    AvailIndexJump {
        /// Avail idx read from the ring.
        avail_idx: u16,
        /// Next entry the device would take.
        next_avail: u16,
        /// Queue size.
        size: u16,
    },
    /// A buffer's address range is invalid.
    #[error("invalid buffer at {gpa:#x} of {len} bytes")]
    BadBuffer {
        /// Start address.
        gpa: u64,
        /// Its length in bytes.
        len: u32,
        /// The cause.
        #[source]
        source: MemError,
    },
    /// An earlier error stopped the queue.
    #[error("queue stopped by an earlier error")]
    Broken(#[source] Box<RingError>),
    /// The chain's buffers add up to more than `u32::MAX` bytes.
    #[error("descriptor chain longer than 4 GiB in total")]
    ChainTooLarge,
    /// The chain has more descriptors than allowed: a loop in `next` or an endless packed chain.
    #[error("descriptor chain longer than {limit} descriptors")]
    ChainTooLong {
        /// The limit (queue size or indirect table entries).
        limit: u32,
    },
    /// A descriptor index (head, avail entry or `next`) is not below the queue size.
    #[error("descriptor index {index} out of range for queue size {size}")]
    DescIndexOutOfRange {
        /// The index read.
        index: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor sets both INDIRECT and NEXT (virtio 2.7.5.3.1), or INDIRECT past the head.
    #[error("indirect descriptor chained with other descriptors")]
    IndirectChained,
    /// A `next` inside an indirect table points out of the table.
    #[error("next {next} inside an indirect table of {entries} entries")]
    IndirectNextOutOfTable {
        /// The `next` read.
        next: u16,
        /// Entries in the table.
        entries: u32,
    },
    /// INDIRECT used without VIRTIO_RING_F_INDIRECT_DESC.
    #[error("indirect descriptor without the INDIRECT_DESC feature")]
    IndirectNotNegotiated,
    /// The indirect table length is zero, not a multiple of 16 or too large.
    #[error("indirect table of {len} bytes")]
    IndirectTableLen {
        /// The table's length in bytes.
        len: u32,
    },
    /// The ring configuration itself is invalid (size, base).
    #[error("invalid ring configuration: {0}")]
    InvalidConfig(&'static str),
    /// An access to a ring area failed.
    #[error("cannot access the {area}")]
    Memory {
        /// Which area (descriptor table, avail ring, ...).
        area: &'static str,
        /// The cause.
        #[source]
        source: MemError,
    },
    /// An indirect table contains an INDIRECT descriptor.
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// A driver-readable buffer follows a device-writable one (virtio 2.7.4.2).
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
}

impl RingError {
    /// Wraps a ring-area memory error.
    pub(crate) fn mem(area: &'static str) -> impl FnOnce(MemError) -> RingError {
        move |source| RingError::Memory { area, source }
    }
}

/// Accumulates a chain's buffers and checks each one as it is added.
pub(crate) struct ChainBuilder<'m> {
    mem: &'m dyn GuestMemory,
    segments: Vec<Segment>,
    total: u64,
    seen_writable: bool,
}

impl<'m> ChainBuilder<'m> {
    /// An empty chain over `mem`.
    pub(crate) fn new(mem: &'m dyn GuestMemory) -> Self {
        Self {
            mem,
            segments: Vec::new(),
            total: 0,
            seen_writable: false,
        }
    }

    /// Adds one buffer: checks order, address range and mapping, and the total length.
    pub(crate) fn push(&mut self, gpa: u64, len: u32, writable: bool) -> Result<(), RingError> {
        if self.seen_writable && !writable {
            return Err(RingError::ReadableAfterWritable);
        }
        let bad = |source| RingError::BadBuffer { gpa, len, source };
        end_of(gpa, u64::from(len)).map_err(bad)?;
        self.mem.check_range(gpa, u64::from(len)).map_err(bad)?;
        self.total += u64::from(len);
        if self.total > u64::from(u32::MAX) {
            return Err(RingError::ChainTooLarge);
        }
        self.seen_writable |= writable;
        self.segments.push(Segment { gpa, len, writable });
        Ok(())
    }

    /// The finished chain.
    pub(crate) fn finish(self, head: u16, id: u16, descriptors: u16) -> Chain {
        Chain {
            head,
            id,
            segments: self.segments,
            descriptors,
        }
    }
}

/// Checks an indirect table's length and returns its entry count (virtio 2.7.5.3 and 2.8.19).
pub(crate) fn indirect_entries(len: u32) -> Result<u32, RingError> {
    // Why: a table longer than the largest queue cannot be a valid chain, and bounding it bounds
    // the work a hostile driver can ask for.
    let max = u32::from(vhu_protocol::virtio::MAX_QUEUE_SIZE) * 16;
    if len == 0 || len % 16 != 0 || len > max {
        return Err(RingError::IndirectTableLen { len });
    }
    Ok(len / 16)
}
