//! The virtio device type of the back-end under test, and the few facts about each type the
//! device-neutral scenarios need: the size of its config space (virtio spec, Linux
//! `include/uapi/linux/virtio_*.h`) and how GET_QUEUE_NUM counts its rings. Nothing
//! device-specific is assumed when the type is unknown.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device type of QEMU's `VHostUserBackendType` list (`--print-capabilities`, the JSON
/// description files), by its canonical name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// `9p`.
    NineP,
    /// `audio`.
    Audio,
    /// `block` (alias `blk`).
    Block,
    /// `can`.
    Can,
    /// `console`.
    Console,
    /// `crypto`.
    Crypto,
    /// `fs`.
    Fs,
    /// `gpio`.
    Gpio,
    /// `gpu`.
    Gpu,
    /// `i2c`.
    I2c,
    /// `input`.
    Input,
    /// `memory`.
    Memory,
    /// `net`.
    Net,
    /// `rng`.
    Rng,
    /// `rpmb`.
    Rpmb,
    /// `scmi`.
    Scmi,
    /// `scsi`.
    Scsi,
    /// `sound` (alias `snd`).
    Sound,
    /// `video`.
    Video,
    /// `vsock`.
    Vsock,
}

const NAMES: &[(DeviceType, &str)] = &[
    (DeviceType::NineP, "9p"),
    (DeviceType::Audio, "audio"),
    (DeviceType::Block, "block"),
    (DeviceType::Can, "can"),
    (DeviceType::Console, "console"),
    (DeviceType::Crypto, "crypto"),
    (DeviceType::Fs, "fs"),
    (DeviceType::Gpio, "gpio"),
    (DeviceType::Gpu, "gpu"),
    (DeviceType::I2c, "i2c"),
    (DeviceType::Input, "input"),
    (DeviceType::Memory, "memory"),
    (DeviceType::Net, "net"),
    (DeviceType::Rng, "rng"),
    (DeviceType::Rpmb, "rpmb"),
    (DeviceType::Scmi, "scmi"),
    (DeviceType::Scsi, "scsi"),
    (DeviceType::Sound, "sound"),
    (DeviceType::Video, "video"),
    (DeviceType::Vsock, "vsock"),
];

impl DeviceType {
    /// The type by name (`block`, `blk`, `net`, `sound`, `snd`...), case-insensitive.
    pub fn parse(name: &str) -> Result<Self, String> {
        let n = name.trim().to_ascii_lowercase();
        let n = match n.as_str() {
            "blk" | "virtio-blk" => "block",
            "snd" => "sound",
            other => other,
        };
        NAMES
            .iter()
            .find(|(_, s)| *s == n)
            .map(|(d, _)| *d)
            .ok_or_else(|| {
                let all: Vec<&str> = NAMES.iter().map(|(_, s)| *s).collect();
                format!(
                    "unknown device type {name:?} (one of: {}, or blk)",
                    all.join(", ")
                )
            })
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(d, _)| *d == self)
            .map_or("?", |(_, s)| s)
    }

    /// The size of the part of the config space every back-end of this type has (fields that
    /// later feature bits add are left out), when vhu-conform knows it; `Some(0)` for types
    /// without a config space.
    pub fn config_size(self) -> Option<u32> {
        Some(match self {
            // capacity .. write_zeroes_may_unmap + unused (virtio 1.1 layout, 60 bytes).
            Self::Block => 60,
            // mac, status, max_virtqueue_pairs, mtu.
            Self::Net => 12,
            // tag[36], num_request_queues.
            Self::Fs => 40,
            // guest_cid.
            Self::Vsock => 8,
            // I2C: "None currently defined" (virtio 1.2 5.19.4).
            Self::Rng | Self::Scmi | Self::I2c => 0,
            // cols, rows, max_nr_ports, emerg_wr.
            Self::Console => 12,
            // events_read, events_clear, num_scanouts, num_capsets.
            Self::Gpu => 16,
            // jacks, streams, chmaps.
            Self::Sound => 12,
            // select, subsel, size, reserved[5], union of 128 bytes.
            Self::Input => 136,
            // ngpio, padding, gpio_names_size.
            Self::Gpio => 8,
            // num_queues .. max_lun.
            Self::Scsi => 36,
            _ => return None,
        })
    }

    /// How many rings a GET_QUEUE_NUM answer of `n` stands for: net counts queue pairs (a
    /// receive and a transmit ring each, and a control ring after them), every other type
    /// counts rings.
    pub fn rings(self, n: u64) -> u64 {
        match self {
            Self::Net => n.saturating_mul(2).saturating_add(1),
            _ => n,
        }
    }
}

impl std::fmt::Display for DeviceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for DeviceType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DeviceType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The first ring index that is past the last ring under every reading of GET_QUEUE_NUM's
/// answer `n` for `device` (when the type is unknown, the largest reading: queue pairs plus a
/// control ring).
pub fn first_index_past_end(device: Option<DeviceType>, n: u64) -> u64 {
    device.unwrap_or(DeviceType::Net).rings(n)
}

/// Where the device type came from, for the report header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSource {
    /// `--device`.
    Option,
    /// `--backend-json`'s `type`.
    BackendJson,
    /// The spawned program's `--print-capabilities`.
    PrintCapabilities,
    /// The bundled reference back-end (a block device).
    Bundled,
}

impl DeviceSource {
    /// How the header names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Option => "--device",
            Self::BackendJson => "--backend-json",
            Self::PrintCapabilities => "--print-capabilities",
            Self::Bundled => "the bundled reference back-end",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse_and_round_trip() {
        for (d, n) in NAMES {
            assert_eq!(DeviceType::parse(n), Ok(*d));
            assert_eq!(d.name(), *n);
        }
        assert_eq!(DeviceType::parse("blk"), Ok(DeviceType::Block));
        assert_eq!(DeviceType::parse("SND"), Ok(DeviceType::Sound));
        let e = DeviceType::parse("teleport").unwrap_err();
        assert!(
            e.contains("unknown device type") && e.contains("vsock"),
            "{e}"
        );
    }

    #[test]
    fn past_the_end_is_out_of_range_under_every_reading() {
        // net: 1 pair = rings 0 (rx), 1 (tx), 2 (ctrl); 3 is past the end.
        assert_eq!(first_index_past_end(Some(DeviceType::Net), 1), 3);
        assert_eq!(first_index_past_end(Some(DeviceType::Block), 1), 1);
        assert_eq!(first_index_past_end(Some(DeviceType::Vsock), 3), 3);
        assert_eq!(first_index_past_end(None, 3), 7);
    }
}
