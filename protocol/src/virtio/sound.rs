//! virtio-sound layouts (virtio 1.2 section 5.14; Linux `include/uapi/linux/virtio_snd.h`):
//! the config space, control requests and their status codes, the item information records
//! and the PCM I/O message header and status. Layouts and constants only.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The virtio device id of a sound card.
pub const DEVICE_ID: u32 = 25;

/// Control queue (driver to device requests, 5.14.2).
pub const CONTROL_QUEUE: u16 = 0;
/// Event queue (device notifications).
pub const EVENT_QUEUE: u16 = 1;
/// Transmit queue: PCM frames of output streams.
pub const TX_QUEUE: u16 = 2;
/// Receive queue: PCM frames of input streams.
pub const RX_QUEUE: u16 = 3;

/// Bytes of the config space: jacks, streams, chmaps (5.14.4; `controls` needs a feature).
pub const CONFIG_SIZE: usize = 12;

/// `VIRTIO_SND_R_JACK_INFO`.
pub const R_JACK_INFO: u32 = 1;
/// `VIRTIO_SND_R_JACK_REMAP`.
pub const R_JACK_REMAP: u32 = 2;
/// `VIRTIO_SND_R_PCM_INFO`.
pub const R_PCM_INFO: u32 = 0x0100;
/// `VIRTIO_SND_R_PCM_SET_PARAMS`.
pub const R_PCM_SET_PARAMS: u32 = 0x0101;
/// `VIRTIO_SND_R_PCM_PREPARE`.
pub const R_PCM_PREPARE: u32 = 0x0102;
/// `VIRTIO_SND_R_PCM_RELEASE`.
pub const R_PCM_RELEASE: u32 = 0x0103;
/// `VIRTIO_SND_R_PCM_START`.
pub const R_PCM_START: u32 = 0x0104;
/// `VIRTIO_SND_R_PCM_STOP`.
pub const R_PCM_STOP: u32 = 0x0105;
/// `VIRTIO_SND_R_CHMAP_INFO`.
pub const R_CHMAP_INFO: u32 = 0x0200;

/// `VIRTIO_SND_S_OK`: success.
pub const S_OK: u32 = 0x8000;
/// `VIRTIO_SND_S_BAD_MSG`: malformed, or invalid parameters.
pub const S_BAD_MSG: u32 = 0x8001;
/// `VIRTIO_SND_S_NOT_SUPP`: operation or parameters not supported.
pub const S_NOT_SUPP: u32 = 0x8002;
/// `VIRTIO_SND_S_IO_ERR`: an I/O error.
pub const S_IO_ERR: u32 = 0x8003;

/// `VIRTIO_SND_D_OUTPUT`.
pub const D_OUTPUT: u8 = 0;
/// `VIRTIO_SND_D_INPUT`.
pub const D_INPUT: u8 = 1;

/// `VIRTIO_SND_PCM_FMT_S16`: signed 16-bit samples.
pub const PCM_FMT_S16: u8 = 5;
/// The highest format code defined (`VIRTIO_SND_PCM_FMT_IEC958_SUBFRAME`).
pub const PCM_FMT_MAX: u8 = 24;
/// `VIRTIO_SND_PCM_RATE_44100`.
pub const PCM_RATE_44100: u8 = 6;
/// `VIRTIO_SND_PCM_RATE_48000`.
pub const PCM_RATE_48000: u8 = 7;
/// The highest rate code defined (`VIRTIO_SND_PCM_RATE_384000`).
pub const PCM_RATE_MAX: u8 = 13;
/// The highest PCM feature bit defined (`VIRTIO_SND_PCM_F_EVT_XRUNS`).
pub const PCM_F_MAX: u32 = 4;
/// The highest jack feature bit defined (`VIRTIO_SND_JACK_F_REMAP`).
pub const JACK_F_MAX: u32 = 0;
/// Positions in a channel map (`VIRTIO_SND_CHMAP_MAX_SIZE`).
pub const CHMAP_MAX_SIZE: usize = 18;

/// Bytes of `struct virtio_snd_hdr`.
pub const HDR_SIZE: usize = 4;
/// Bytes of `struct virtio_snd_jack_info`.
pub const JACK_INFO_SIZE: u32 = 24;
/// Bytes of `struct virtio_snd_pcm_info`.
pub const PCM_INFO_SIZE: u32 = 32;
/// Bytes of `struct virtio_snd_chmap_info`.
pub const CHMAP_INFO_SIZE: u32 = 24;
/// Bytes of `struct virtio_snd_pcm_status`.
pub const PCM_STATUS_SIZE: u32 = 8;

/// The name of a request code, for reports.
pub fn request_name(code: u32) -> &'static str {
    match code {
        R_JACK_INFO => "JACK_INFO",
        R_JACK_REMAP => "JACK_REMAP",
        R_PCM_INFO => "PCM_INFO",
        R_PCM_SET_PARAMS => "PCM_SET_PARAMS",
        R_PCM_PREPARE => "PCM_PREPARE",
        R_PCM_RELEASE => "PCM_RELEASE",
        R_PCM_START => "PCM_START",
        R_PCM_STOP => "PCM_STOP",
        R_CHMAP_INFO => "CHMAP_INFO",
        _ => "unknown request",
    }
}

/// The name of a status code, for reports.
pub fn status_name(code: u32) -> &'static str {
    match code {
        S_OK => "OK",
        S_BAD_MSG => "BAD_MSG",
        S_NOT_SUPP => "NOT_SUPP",
        S_IO_ERR => "IO_ERR",
        _ => "not a status code",
    }
}

/// `struct virtio_snd_config`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Config {
    /// Jacks the device has.
    pub jacks: u32,
    /// PCM streams the device has.
    pub streams: u32,
    /// Channel maps the device has.
    pub chmaps: u32,
}

/// `struct virtio_snd_query_info`: the request of JACK_INFO, PCM_INFO and CHMAP_INFO.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct QueryInfo {
    /// `VIRTIO_SND_R_*_INFO`.
    pub code: u32,
    /// The first item's id.
    pub start_id: u32,
    /// How many items.
    pub count: u32,
    /// Bytes of one record.
    pub size: u32,
}

/// `struct virtio_snd_pcm_hdr`: PREPARE, RELEASE, START, STOP.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PcmHdr {
    /// `VIRTIO_SND_R_PCM_*`.
    pub code: u32,
    /// The stream, 0 to streams - 1.
    pub stream_id: u32,
}

/// `struct virtio_snd_pcm_set_params`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PcmSetParams {
    /// `R_PCM_SET_PARAMS` and the stream.
    pub hdr: PcmHdr,
    /// The driver's buffer size.
    pub buffer_bytes: u32,
    /// The driver's period size (divides `buffer_bytes`).
    pub period_bytes: u32,
    /// `1 << VIRTIO_SND_PCM_F_*` selected.
    pub features: u32,
    /// Channels.
    pub channels: u8,
    /// `VIRTIO_SND_PCM_FMT_*`.
    pub format: u8,
    /// `VIRTIO_SND_PCM_RATE_*`.
    pub rate: u8,
    /// 0.
    pub padding: u8,
}

/// `struct virtio_snd_pcm_info` (after its `hda_fn_nid` header).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PcmInfo {
    /// `virtio_snd_info.hda_fn_nid`.
    pub hda_fn_nid: u32,
    /// `1 << VIRTIO_SND_PCM_F_*` supported.
    pub features: u32,
    /// `1 << VIRTIO_SND_PCM_FMT_*` supported.
    pub formats: u64,
    /// `1 << VIRTIO_SND_PCM_RATE_*` supported.
    pub rates: u64,
    /// `VIRTIO_SND_D_*`.
    pub direction: u8,
    /// Fewest channels.
    pub channels_min: u8,
    /// Most channels.
    pub channels_max: u8,
    /// 0.
    pub padding: [u8; 5],
}

/// `struct virtio_snd_jack_info`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct JackInfo {
    /// `virtio_snd_info.hda_fn_nid`.
    pub hda_fn_nid: u32,
    /// `1 << VIRTIO_SND_JACK_F_*`.
    pub features: u32,
    /// HDA pin default configuration.
    pub hda_reg_defconf: u32,
    /// HDA pin capabilities.
    pub hda_reg_caps: u32,
    /// 1 when connected.
    pub connected: u8,
    /// 0.
    pub padding: [u8; 7],
}

/// `struct virtio_snd_chmap_info`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ChmapInfo {
    /// `virtio_snd_info.hda_fn_nid`.
    pub hda_fn_nid: u32,
    /// `VIRTIO_SND_D_*`.
    pub direction: u8,
    /// Channels in the map (at most [`CHMAP_MAX_SIZE`]).
    pub channels: u8,
    /// `VIRTIO_SND_CHMAP_*` per channel.
    pub positions: [u8; CHMAP_MAX_SIZE],
}

/// `struct virtio_snd_pcm_status`: the device-writable end of a PCM I/O message.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PcmStatus {
    /// `S_OK` or `S_IO_ERR`.
    pub status: u32,
    /// The device's latency.
    pub latency_bytes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_spec_sizes() {
        assert_eq!(size_of::<Config>(), CONFIG_SIZE);
        assert_eq!(size_of::<QueryInfo>(), 16);
        assert_eq!(size_of::<PcmSetParams>(), 24);
        assert_eq!(size_of::<PcmInfo>() as u32, PCM_INFO_SIZE);
        assert_eq!(size_of::<JackInfo>() as u32, JACK_INFO_SIZE);
        assert_eq!(size_of::<ChmapInfo>() as u32, CHMAP_INFO_SIZE);
        assert_eq!(size_of::<PcmStatus>() as u32, PCM_STATUS_SIZE);
        assert_eq!(request_name(R_PCM_STOP), "PCM_STOP");
        assert_eq!(status_name(S_BAD_MSG), "BAD_MSG");
    }
}
