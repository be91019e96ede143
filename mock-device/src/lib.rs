//! `vhu-mock-device`: the device side of virtqueues and a virtio-blk RAM disk, the data path of
//! the harness's mock back-end. It knows nothing of sockets or vhost-user messages.
//!
//! Written from the virtio 1.2 specification, sharing no code with other implementations:
//! - [`Queue`]: split rings (section 2.7) and packed rings (2.8), indirect descriptors (2.7.5.3,
//!   2.8.19), notification suppression with and without EVENT_IDX (2.7.7, 2.7.10, 2.8.10), and
//!   the vhost-user SET/GET_VRING_BASE position encoding. Every descriptor is validated; a
//!   malformed one is a [`RingError`], never a panic.
//! - [`BlkDevice`]: virtio-blk (5.2) on a RAM disk with its config space, save/load for device
//!   state transfer, and [`DataPathFaults`] that break the data path on purpose.
//! - [`GuestMemory`]: the only way the crate touches guest memory; the back-end implements it
//!   over its mmapped regions (see [`memory`] for the volatile-copy requirement).

mod blk;
mod chain;
pub mod memory;
mod packed;
mod queue;
mod split;

pub use blk::{
    BlkDevice, CONFIG_SIZE, Completion, ConfigError, DEVICE_ID, DataPathFaults, FLAGS_GUEST_WRITE,
    FLAGS_MIGRATION, OVERRUN_BYTES, OVERRUN_FILL, SEG_MAX, StateError,
};
pub use chain::{Chain, RingError, Segment};
pub use memory::{GuestMemory, MemError, VecMemory};
pub use queue::{Queue, RingConfig};

/// What [`process_queue`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains completed and published.
    pub completed: usize,
    /// Whether the driver wants an interrupt now.
    pub notify: bool,
}

/// Pops, processes and publishes every available chain, then decides on notification. With
/// EVENT_IDX it re-arms the driver's kick (avail_event / device event) and re-checks the ring
/// to close the race with a buffer published meanwhile.
///
/// On `Err` the queue is stopped; used elements published before the error stay published,
/// so the caller should signal the call fd (a spurious interrupt is harmless) besides
/// reporting the error.
pub fn process_queue(
    q: &mut Queue,
    dev: &mut BlkDevice,
    mem: &dyn GuestMemory,
    faults: &DataPathFaults,
) -> Result<QueueRun, RingError> {
    let mut completed = 0;
    loop {
        while let Some(chain) = q.pop(mem)? {
            let done = dev.process(mem, &chain, faults);
            q.push_used(mem, &chain, done.used_len)?;
            completed += 1;
        }
        if !q.config().event_idx {
            break;
        }
        q.enable_notifications(mem)?;
        if !q.has_available(mem)? {
            break;
        }
    }
    let notify = q.should_notify(mem)?;
    Ok(QueueRun { completed, notify })
}
