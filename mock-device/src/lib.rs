//! `vhu-mock-device`: the device side of virtqueues and a virtio-blk RAM disk, the data path of
//! the harness's mock back-end. It knows nothing of sockets or vhost-user messages.
//!
//! Written from the virtio 1.2 specification, sharing no code with other implementations:
//! - [`Queue`]: split rings (section 2.7) and packed rings (2.8), indirect descriptors (2.7.5.3,
//!   2.8.19), notification suppression with and without EVENT_IDX (2.7.7, 2.7.10, 2.8.10), and
//!   the vhost-user SET/GET_VRING_BASE position encoding. Every descriptor is validated; a
//!   malformed one is a [`RingError`], never a panic.
//! - [`BlkDevice`]: virtio-blk (5.2) on a RAM disk with its config space, sparse save/load for
//!   device state transfer, a [`VendorRequests`] hook for request types of the back-end's own,
//!   and [`DataPathFaults`] that break the data path on purpose.
//! - [`process_queue`] drains a queue into the device; [`process_queue_with`] lets a
//!   [`ChainHandler`] wrap each chain with the back-end's bookkeeping.
//! - [`VirtioDevice`]: what the reference net, fs, vsock and rng devices implement;
//!   [`NetDevice`] (5.1, a loopback port) and [`RngDevice`] (5.4) are two of them;
//!   [`ConsoleDevice`] (5.3, one console port with MULTIPORT) and [`InputDevice`] (5.8, a
//!   keyboard) two more.
//! - [`FsDevice`]: virtio-fs (5.11) speaking FUSE 7.31 over an empty root or a read-only
//!   passthrough directory; [`VsockDevice`]: hybrid virtio-vsock (5.10) whose host ports are Unix
//!   sockets `<uds path>_<port>`. Each has fault flags ([`FsFaults`], [`VsockFaults`]).
//! - [`GuestMemory`]: the only way the crate touches guest memory; the back-end implements it
//!   over `vm_memory::GuestMemoryMmap` regions (see [`memory`] for the ordering of ring accesses).

mod blk;
mod chain;
mod console;
mod device;
pub mod fs;
mod gpio;
mod gpu;
mod i2c;
mod input;
pub mod memory;
mod net;
mod packed;
mod queue;
mod rng;
mod run;
mod scmi;
mod sg;
mod sound;
mod split;
pub mod vsock;

pub use blk::{
    BlkDevice, CONFIG_SIZE, Completion, ConfigError, DEVICE_ID, DataPathFaults, FLAGS_GUEST_WRITE,
    FLAGS_MIGRATION, OVERRUN_BYTES, OVERRUN_FILL, SEG_MAX, StateError, VENDOR_BODY_MAX,
    VendorRequests,
};
pub use chain::{Chain, RingError, Segment};
pub use console::{CONSOLE_CONFIG_SIZE, CONSOLE_DEVICE_ID, ConsoleDevice, ConsoleFaults};
pub use device::VirtioDevice;
pub use fs::{FsDevice, FsError, FsFaults};
pub use gpio::{GPIO_DEVICE_ID, GPIO_LINES, GpioDevice, GpioFaults};
pub use gpu::{GpuDevice, GpuFaults};
pub use i2c::{I2C_BAD_STATUS, I2C_CLIENT_ADDR, I2C_DEVICE_ID, I2cDevice, I2cFaults};
pub use input::{INPUT_CONFIG_SIZE, INPUT_DEVICE_ID, InputDevice, InputFaults};
pub use memory::{GuestMemory, MemError, anonymous};
pub use net::{
    NET_BACKLOG, NET_CONFIG_SIZE, NET_CTRL, NET_DEVICE_ID, NET_ERR, NET_HDR_LEN, NET_MAC, NET_MTU,
    NET_OK, NET_RX, NET_TX, NetDevice, NetFaults,
};
pub use queue::{Queue, RingConfig};
pub use rng::{RNG_DEVICE_ID, RNG_MAX_PER_REQUEST, RNG_PAST_BUFFER, RngDevice, RngFaults};
pub use run::{ChainHandler, QueueRun, process_queue, process_queue_with};
pub use scmi::{SCMI_DEVICE_ID, ScmiDevice, ScmiFaults};
pub use sound::{SoundDevice, SoundFaults};
/// rust-vmm's guest memory, which every [`GuestMemory`] view ends in.
pub use vm_memory;
pub use vsock::{VsockDevice, VsockError, VsockFaults};
