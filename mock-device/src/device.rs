//! The device side of a virtio device other than blk, as the back-end drives it: its feature
//! bits, config space, queues and the work on each chain (virtio 1.2 section 2 for what every
//! device shares, sections 5.x for each device).
//!
//! blk keeps its own richer type ([`crate::BlkDevice`]: state transfer, vendor requests,
//! inflight tracking); the devices behind this trait are the reference implementations of net,
//! fs, vsock and rng.

use std::os::fd::RawFd;

use vhu_protocol::VirtioFeatures;

use crate::blk::ConfigError;
use crate::chain::Chain;
use crate::memory::GuestMemory;

/// VERSION_1 and the ring layouts the queue code drives (indirect tables, EVENT_IDX, packed
/// rings): what a device offers besides its own bits.
pub const RING_FEATURES: u64 = VirtioFeatures::VERSION_1.bits()
    | VirtioFeatures::INDIRECT_DESC.bits()
    | VirtioFeatures::EVENT_IDX.bits()
    | VirtioFeatures::RING_PACKED.bits();

/// A virtio device served by the reference back-end.
///
/// Queues are of two kinds. A driver-to-device queue (net transmitq, fs request queues, vsock
/// tx, rng requestq) has every available chain served at once. A device-to-driver queue (net
/// receiveq, vsock rx) holds the driver's empty buffers until the device has something to put
/// in them: the back-end takes a chain from it only while [`VirtioDevice::ready`] says so, and
/// re-runs such queues after serving any other queue.
pub trait VirtioDevice: Send {
    /// The virtio device id (virtio 1.2 section 5: net 1, blk 2, rng 4, vsock 19, fs 26).
    fn device_id(&self) -> u32;
    /// The queues the device has (what GET_QUEUE_NUM reports and the rings it serves).
    fn num_queues(&self) -> u16;
    /// The virtio feature bits offered (device bits and the ring bits the device supports;
    /// the back-end adds PROTOCOL_FEATURES and the vhost-user bits). Default: no device bit,
    /// every ring layout the queue code drives (`RING_FEATURES`).
    fn device_features(&self) -> u64 {
        RING_FEATURES
    }
    /// The features the driver acknowledged (SET_FEATURES), e.g. net's MRG_RXBUF.
    fn set_features(&mut self, _features: u64) {}
    /// The whole config space; default empty (rng, scmi and i2c have none).
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }
    /// A driver write to the config space; read-only by default.
    ///
    /// # Errors
    /// The range is outside the config space or the field is read-only.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NotWritable {
            offset,
            len: data.len(),
        })
    }
    /// Whether the back-end should take a chain from `queue` now: always for a
    /// driver-to-device queue; for a device-to-driver queue only while the device has data for
    /// the driver. Default: every queue is driver-to-device.
    fn ready(&self, _queue: u16) -> bool {
        true
    }
    /// Serves one chain taken from `queue` and returns the used length (bytes written into
    /// its device-writable buffers). Malformed requests are answered as the device's section
    /// says, never with a panic.
    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32;
    /// Whether `queue` gathers chains ([`VirtioDevice::offer`] instead of
    /// [`VirtioDevice::serve`]): the device keeps the chains it is given and completes them
    /// when it has data for them, several at once if a delivery spans them (net receiveq).
    fn gathers(&self, _queue: u16) -> bool {
        false
    }
    /// A chain taken from a gathering `queue`; the chains completed now (this one or chains
    /// kept before) with their used lengths, published together. Chains kept are dropped by
    /// [`VirtioDevice::reset`].
    fn offer(&mut self, queue: u16, mem: &dyn GuestMemory, chain: Chain) -> Vec<(Chain, u32)> {
        let len = self.serve(queue, mem, &chain);
        vec![(chain, len)]
    }
    /// Chains kept by [`VirtioDevice::offer`] on `queue` that can be completed now.
    fn flush(&mut self, _queue: u16, _mem: &dyn GuestMemory) -> Vec<(Chain, u32)> {
        Vec::new()
    }
    /// Whether a started but disabled `queue` is still drained, its chains used with length 0
    /// and their contents dropped (vhost-user "Ring states": "for a networking device, in the
    /// disabled state the back-end must not supply any new RX packets, but must process and
    /// discard any TX packets"). Default: a disabled queue is left alone.
    fn discard_while_disabled(&self, _queue: u16) -> bool {
        false
    }
    /// File descriptors with device input besides the rings (vsock's host-side sockets): the
    /// back-end polls them with its kick fds and calls [`VirtioDevice::on_input`] when one is
    /// readable, then re-runs the device-to-driver queues that became ready.
    fn input_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Takes what arrived on [`VirtioDevice::input_fds`], without blocking.
    fn on_input(&mut self) {}
    /// The socket GPU_SET_SOCKET handed over (a gpu device speaks the vhost-user-gpu protocol
    /// on it); `false` when the device is not a gpu and refuses it.
    fn set_gpu_socket(&mut self, _socket: std::os::unix::net::UnixStream) -> bool {
        false
    }
    /// `queue` was stopped (GET_VRING_BASE): chains kept from it are forgotten, never
    /// completed (its ring may be set up anew; writing into them would be processing a stopped
    /// ring).
    fn stop(&mut self, _queue: u16) {}
    /// The device was reset (RESET_DEVICE, or every ring stopped by GET_VRING_BASE): drop
    /// pending output and connection state.
    fn reset(&mut self) {}
}
