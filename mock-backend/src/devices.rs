//! The device a back-end process serves (`--device`): today's virtio-blk RAM disk with its own
//! richer type, or one of the devices behind `vhu_mock_device::VirtioDevice`. [`device_for`]
//! is the one place a `--device` name becomes a device.

use std::path::PathBuf;

use vhu_mock_device::{
    BlkDevice, ConfigError, ConsoleDevice, FsDevice, InputDevice, NetDevice, RngDevice,
    VirtioDevice, VsockDevice,
};

use crate::Error;
use crate::cli::{Args, DeviceKind};
use crate::faults::Faults;

/// The device of the process, kept across front-ends (a blk disk keeps its data).
pub enum Device {
    /// virtio-blk: state transfer, inflight tracking, SHMEM and vendor requests.
    Blk(BlkDevice),
    /// Any other device, through the trait.
    Virtio(Box<dyn VirtioDevice>),
}

/// The non-blk device `kind` names, built from the command line and its faults.
///
/// # Errors
/// `kind` is blk (its own type), the fs shared directory is not a directory, or the vsock
/// CID or uds path is unusable.
pub fn device_for(
    kind: DeviceKind,
    args: &Args,
    faults: &Faults,
) -> Result<Box<dyn VirtioDevice>, Error> {
    match kind {
        DeviceKind::Net => Ok(Box::new(NetDevice::new(faults.net()))),
        DeviceKind::Rng => Ok(Box::new(RngDevice::new(faults.rng()))),
        DeviceKind::Gpio => Ok(Box::new(vhu_mock_device::GpioDevice::new(faults.gpio()))),
        DeviceKind::I2c => Ok(Box::new(vhu_mock_device::I2cDevice::new(faults.i2c()))),
        DeviceKind::Scmi => Ok(Box::new(vhu_mock_device::ScmiDevice::new(faults.scmi()))),
        DeviceKind::Console => Ok(Box::new(ConsoleDevice::new(faults.console()))),
        DeviceKind::Input => Ok(Box::new(InputDevice::new(faults.input()))),
        DeviceKind::Gpu => Ok(Box::new(vhu_mock_device::GpuDevice::new(faults.gpu()))),
        DeviceKind::Sound => Ok(Box::new(vhu_mock_device::SoundDevice::new(faults.sound()))),
        DeviceKind::Fs => {
            let mut fs = FsDevice::new(args.shared_dir.clone()).map_err(Error::device)?;
            fs.set_faults(faults.fs());
            Ok(Box::new(fs))
        }
        DeviceKind::Vsock => {
            let uds = vsock_uds_path(args);
            let mut v = VsockDevice::new(args.guest_cid, &uds, true).map_err(Error::device)?;
            v.set_faults(faults.vsock());
            Ok(Box::new(v))
        }
        DeviceKind::Blk => Err(Error::UnsupportedDevice(kind.name())),
    }
}

/// `--uds-path`, else `<socket-path>.vsock` (what vhost-device-vsock users name it); with
/// `--fd` and no `--uds-path`, `vhu-mock-backend-<pid>.vsock` in the temp directory, so an
/// inherited socket is served without more options (R-PROG-02).
fn vsock_uds_path(args: &Args) -> PathBuf {
    if let Some(p) = &args.uds_path {
        return p.clone();
    }
    let mut p = match &args.socket_path {
        Some(sock) => sock.as_os_str().to_owned(),
        None => std::env::temp_dir()
            .join(format!("vhu-mock-backend-{}", std::process::id()))
            .into_os_string(),
    };
    p.push(".vsock");
    p.into()
}

/// The process's device as `--device` asks.
///
/// # Errors
/// See [`device_for`].
pub fn build(args: &Args, faults: &Faults) -> Result<Device, Error> {
    match args.device {
        DeviceKind::Blk => Ok(Device::Blk(BlkDevice::new(args.capacity, args.queues))),
        kind => device_for(kind, args, faults).map(Device::Virtio),
    }
}

impl Device {
    /// The blk device, if that is what this is.
    pub fn blk(&mut self) -> Option<&mut BlkDevice> {
        match self {
            Self::Blk(b) => Some(b),
            Self::Virtio(_) => None,
        }
    }

    /// The rings the device has.
    pub fn num_queues(&self) -> u16 {
        match self {
            Self::Blk(b) => b.num_queues(),
            Self::Virtio(d) => d.num_queues(),
        }
    }

    /// What GET_QUEUE_NUM answers: what the device's driver counts (virtio-net counts queue
    /// pairs, 5.1.4 max_virtqueue_pairs; every other device its queues).
    pub fn queue_num(&self) -> u64 {
        match self {
            Self::Virtio(d) if d.device_id() == vhu_mock_device::NET_DEVICE_ID => {
                u64::from(d.num_queues().saturating_sub(1) / 2).max(1)
            }
            other => u64::from(other.num_queues()),
        }
    }

    /// The device's virtio feature bits.
    pub fn device_features(&self) -> u64 {
        match self {
            Self::Blk(b) => b.device_features(),
            Self::Virtio(d) => d.device_features(),
        }
    }

    /// The size of the config space.
    pub fn config_len(&self) -> usize {
        match self {
            Self::Blk(b) => b.config().len(),
            Self::Virtio(d) => d.config().len(),
        }
    }

    /// `len` bytes of config space at `offset`, or why not.
    pub fn read_config(&self, offset: u32, len: usize) -> Result<Vec<u8>, ConfigError> {
        match self {
            Self::Blk(b) => b.read_config(offset, len),
            Self::Virtio(d) => {
                let config = d.config();
                let start = offset as usize;
                match start.checked_add(len).filter(|&end| end <= config.len()) {
                    Some(end) => Ok(config[start..end].to_vec()),
                    None => Err(ConfigError::OutOfRange { offset, len }),
                }
            }
        }
    }

    /// SET_CONFIG (blk knows its flags; the other devices take guest writes only).
    pub fn write_config(
        &mut self,
        offset: u32,
        data: &[u8],
        flags: u32,
    ) -> Result<(), ConfigError> {
        match self {
            Self::Blk(b) => b.write_config(offset, data, flags),
            Self::Virtio(d) => d.write_config(offset, data),
        }
    }

    /// GPU_SET_SOCKET's socket; `false` when the device is not a gpu.
    pub fn set_gpu_socket(&mut self, socket: std::os::unix::net::UnixStream) -> bool {
        match self {
            Self::Virtio(d) => d.set_gpu_socket(socket),
            Self::Blk(_) => false,
        }
    }

    /// The driver acknowledged `features`.
    pub fn set_features(&mut self, features: u64) {
        if let Self::Virtio(d) = self {
            d.set_features(features);
        }
    }

    /// Ring `queue` was stopped (GET_VRING_BASE).
    pub fn stop(&mut self, queue: u16) {
        if let Self::Virtio(d) = self {
            d.stop(queue);
        }
    }

    /// The device was reset (RESET_DEVICE, RESET_OWNER, a new front-end, every ring stopped).
    pub fn reset(&mut self) {
        if let Self::Virtio(d) = self {
            d.reset();
        }
    }
}

#[cfg(test)]
mod vsock_uds_tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn uds_path_defaults_next_to_the_socket_or_in_the_temp_dir() {
        let args = |a: &[&str]| Args::try_parse_from([&["x"], a].concat()).unwrap();
        let with = args(&["--device", "vsock", "--uds-path", "/run/v.sock"]);
        assert_eq!(vsock_uds_path(&with), PathBuf::from("/run/v.sock"));
        let next = args(&["--device", "vsock", "--socket-path", "/run/be.sock"]);
        assert_eq!(vsock_uds_path(&next), PathBuf::from("/run/be.sock.vsock"));
        let fd = vsock_uds_path(&args(&["--device", "vsock", "--fd", "3"]));
        assert!(fd.starts_with(std::env::temp_dir()), "{}", fd.display());
        assert!(fd.to_string_lossy().ends_with(".vsock"));
    }
}
