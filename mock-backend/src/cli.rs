//! The command line (spec "Backend program conventions", checklist 6.1 and R-PROG-01..05):
//! `--socket-path`, `--fd`, `--print-capabilities`, plus the device's shape and the fault modes.

use std::path::PathBuf;

use clap::Parser;

/// Command line of the mock back-end.
#[derive(Debug, Parser)]
#[command(
    name = "vhu-mock-backend",
    about = "Reference vhost-user back-end of vhu-conform (blk, net, rng, fs, vsock, scmi, gpio, i2c, console, input, sound, gpu), with fault modes"
)]
pub struct Args {
    /// The virtio device served: blk (a RAM disk, the default), net (a loopback port), rng,
    /// fs, vsock, scmi, gpio, i2c, console (two ports), input (a keyboard), sound (null audio),
    /// gpu (one 2D scanout).
    #[arg(long, value_enum, default_value_t = DeviceKind::Blk)]
    pub device: DeviceKind,
    /// Listen on this Unix socket; keep serving front-ends one after another.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// Serve the already-connected socket inherited as this fd, then exit.
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<i32>,
    /// Print the capabilities as JSON and exit (R-PROG-04).
    #[arg(long)]
    pub print_capabilities: bool,
    /// Number of queues (1 to 64; blk only).
    #[arg(long, default_value_t = 2)]
    pub queues: u16,
    /// Largest ring size SET_VRING_NUM accepts (a power of two, at most 32768).
    #[arg(long, default_value_t = 32768)]
    pub queue_size_max: u32,
    /// RAM disk size in bytes (a multiple of 512; blk only).
    #[arg(long, default_value_t = 64 << 20)]
    pub capacity: u64,
    /// Declare a shared memory region (repeatable): `ID:SIZE`, SIZE a multiple of 4096 (hex
    /// with 0x allowed). Offers the SHMEM protocol feature and answers GET_SHMEM_CONFIG (blk
    /// only: the SHMEM device request is a virtio-blk vendor request).
    #[arg(long = "shmem", value_name = "ID:SIZE", value_parser = parse_shmem)]
    pub shmem: Vec<(u8, u64)>,
    /// Break one rule on purpose (repeatable); see --list-faults.
    #[arg(long = "fault", value_name = "NAME")]
    pub faults: Vec<String>,
    /// List the fault modes with the rule each breaks.
    #[arg(long)]
    pub list_faults: bool,
    /// fs: serve this directory read-only (without it, an empty root directory).
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,
    /// vsock: a guest connection to host port P reaches the Unix socket `PATH_P`; the back-end
    /// also listens on PATH for host-initiated `CONNECT <port>` (default `<socket-path>.vsock`).
    #[arg(long, value_name = "PATH")]
    pub uds_path: Option<PathBuf>,
    /// vsock: the guest's CID in the config space (3 to 2^32 - 1).
    #[arg(long, value_name = "CID", default_value_t = 3)]
    pub guest_cid: u64,
}

/// The virtio device a back-end process serves (`--device`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// virtio-blk on a RAM disk (virtio 1.2 section 5.2).
    Blk,
    /// virtio-net, a loopback port (5.1).
    Net,
    /// virtio-fs (5.11).
    Fs,
    /// virtio-vsock (5.10).
    Vsock,
    /// virtio-rng (5.4).
    Rng,
    /// virtio-scmi, an SCMI platform with the BASE protocol (5.17).
    Scmi,
    /// virtio-gpio, eight simulated lines (5.18).
    Gpio,
    /// virtio-i2c, an adapter with one simulated client at 0x20 (5.19).
    I2c,
    /// virtio-console with MULTIPORT, two ports: a console and a named one (5.3).
    Console,
    /// virtio-input, a keyboard (5.8).
    Input,
    /// virtio-sound (5.14), a null audio back-end.
    Sound,
    /// virtio-gpu (5.7) over the vhost-user-gpu protocol, one scanout, no 3D.
    Gpu,
}

impl DeviceKind {
    /// The `--device` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blk => "blk",
            Self::Net => "net",
            Self::Fs => "fs",
            Self::Vsock => "vsock",
            Self::Rng => "rng",
            Self::Scmi => "scmi",
            Self::Gpio => "gpio",
            Self::I2c => "i2c",
            Self::Console => "console",
            Self::Input => "input",
            Self::Sound => "sound",
            Self::Gpu => "gpu",
        }
    }

    /// The `"type"` of QEMU's vhost-user.json (`VHostUserBackendType`) for this device.
    pub fn json_type(self) -> &'static str {
        match self {
            Self::Blk => "block",
            other => other.name(),
        }
    }
}

/// The `--print-capabilities` JSON: the device type with no optional feature (R-PROG-05).
pub fn capabilities(kind: DeviceKind) -> String {
    format!(r#"{{"type":"{}","features":[]}}"#, kind.json_type())
}

/// The `--print-capabilities` JSON of the default device (blk).
pub const CAPABILITIES: &str = r#"{"type":"block","features":[]}"#;

fn parse_shmem(s: &str) -> Result<(u8, u64), String> {
    let (id, size) = s.split_once(':').ok_or("expected ID:SIZE")?;
    let id: u8 = id.parse().map_err(|e| format!("shmem id: {e}"))?;
    let size = match size.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => size.parse(),
    }
    .map_err(|e| format!("shmem size: {e}"))?;
    if size == 0 || size % 4096 != 0 {
        return Err("shmem size must be a non-zero multiple of 4096 (R-SHM-03)".into());
    }
    Ok((id, size))
}

impl Args {
    /// Checks the values clap cannot.
    ///
    /// # Errors
    /// A value out of range, or a shmem id given twice.
    pub fn check(&self) -> Result<(), String> {
        if self.queues == 0 || self.queues > 64 {
            return Err("--queues must be 1 to 64".into());
        }
        if !self.queue_size_max.is_power_of_two() || self.queue_size_max > 32768 {
            return Err("--queue-size-max must be a power of two up to 32768".into());
        }
        if self.capacity % 512 != 0 {
            return Err("--capacity must be a multiple of 512".into());
        }
        let mut ids: Vec<u8> = self.shmem.iter().map(|s| s.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.shmem.len() {
            return Err("a shmem id is declared twice".into());
        }
        if self.shared_dir.is_some() && self.device != DeviceKind::Fs {
            return Err("--shared-dir is for --device fs only".into());
        }
        if self.uds_path.is_some() && self.device != DeviceKind::Vsock {
            return Err("--uds-path is for --device vsock only".into());
        }
        if !self.shmem.is_empty() && self.device != DeviceKind::Blk {
            return Err(format!(
                "--shmem is for --device blk only (the SHMEM request is a virtio-blk vendor request), not --device {}",
                self.device.name()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_the_vhost_user_json_type() {
        assert_eq!(capabilities(DeviceKind::Blk), CAPABILITIES);
        assert_eq!(
            capabilities(DeviceKind::Net),
            r#"{"type":"net","features":[]}"#
        );
        assert_eq!(DeviceKind::Rng.json_type(), "rng");
    }

    #[test]
    fn shmem_sizes_must_be_page_multiples() {
        assert_eq!(parse_shmem("0:0x100000"), Ok((0, 0x10_0000)));
        assert_eq!(parse_shmem("3:8192"), Ok((3, 8192)));
        assert!(parse_shmem("0:100").is_err());
        assert!(parse_shmem("0:0").is_err());
        assert!(parse_shmem("256:4096").is_err());
        assert!(parse_shmem("4096").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let args = |a: &[&str]| Args::try_parse_from([&["x"], a].concat()).unwrap();
        assert!(args(&["--queues", "0"]).check().is_err());
        assert!(args(&["--queue-size-max", "100"]).check().is_err());
        assert!(
            args(&["--shmem", "1:4096", "--shmem", "1:8192"])
                .check()
                .is_err()
        );
        assert!(
            args(&["--device", "net", "--shmem", "1:4096"])
                .check()
                .is_err()
        );
        assert!(args(&["--device", "rng"]).check().is_ok());
        assert!(args(&["--shared-dir", "/tmp"]).check().is_err());
        assert!(
            args(&["--device", "fs", "--shared-dir", "/tmp"])
                .check()
                .is_ok()
        );
        assert!(
            args(&["--device", "net", "--uds-path", "/tmp/v"])
                .check()
                .is_err()
        );
        assert!(args(&[]).check().is_ok());
    }
}
