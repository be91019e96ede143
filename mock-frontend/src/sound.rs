//! The driver side of virtio-sound (virtio 1.2 section 5.14) on the device-neutral
//! [`exchange`](crate::exchange) path: control requests (item information queries, the PCM
//! command lifecycle) on the control queue, PCM I/O messages on the tx queue, and parsers for
//! what the device answered. Facts only: the engine judges them.

use vhu_protocol::virtio::sound::{
    self, ChmapInfo, HDR_SIZE, JackInfo, PCM_STATUS_SIZE, PcmHdr, PcmInfo, PcmSetParams, PcmStatus,
    QueryInfo,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::exchange::{ChainSpec, Exchanged};

/// The kind of item an information request asks about.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Jacks (JACK_INFO, 24-byte records).
    Jack,
    /// PCM streams (PCM_INFO, 32-byte records).
    Pcm,
    /// Channel maps (CHMAP_INFO, 24-byte records).
    Chmap,
}

impl Item {
    /// The request code.
    pub fn code(self) -> u32 {
        match self {
            Self::Jack => sound::R_JACK_INFO,
            Self::Pcm => sound::R_PCM_INFO,
            Self::Chmap => sound::R_CHMAP_INFO,
        }
    }

    /// The size of one record this driver knows.
    pub fn record_size(self) -> u32 {
        match self {
            Self::Jack => sound::JACK_INFO_SIZE,
            Self::Pcm => sound::PCM_INFO_SIZE,
            Self::Chmap => sound::CHMAP_INFO_SIZE,
        }
    }

    /// How many of them the config space announces.
    pub fn announced(self, c: &sound::Config) -> u32 {
        match self {
            Self::Jack => c.jacks,
            Self::Pcm => c.streams,
            Self::Chmap => c.chmaps,
        }
    }

    /// The name of the config field that counts them.
    pub fn config_field(self) -> &'static str {
        match self {
            Self::Jack => "jacks",
            Self::Pcm => "streams",
            Self::Chmap => "chmaps",
        }
    }
}

/// An item information request: the query readable, then the status header and room for
/// `count` records of `size` bytes writable (each its own descriptor, as Linux's driver does;
/// `one_buffer` puts status and records in one).
pub fn query_chain(
    item: Item,
    start_id: u32,
    count: u32,
    size: u32,
    one_buffer: bool,
    indirect: bool,
) -> ChainSpec {
    let q = QueryInfo {
        code: item.code(),
        start_id,
        count,
        size,
    };
    let records = count.saturating_mul(size);
    let writable = if one_buffer || records == 0 {
        vec![HDR_SIZE as u32 + records]
    } else {
        vec![HDR_SIZE as u32, records]
    };
    ChainSpec {
        readable: vec![q.as_bytes().to_vec()],
        writable,
        indirect,
    }
}

/// A PREPARE, RELEASE, START or STOP request of `stream` (`code`), or any request with a
/// stream header: readable header, writable status.
pub fn pcm_chain(code: u32, stream: u32, indirect: bool) -> ChainSpec {
    let h = PcmHdr {
        code,
        stream_id: stream,
    };
    ChainSpec {
        readable: vec![h.as_bytes().to_vec()],
        writable: vec![HDR_SIZE as u32],
        indirect,
    }
}

/// A SET_PARAMS request.
pub fn set_params_chain(p: &PcmSetParams, indirect: bool) -> ChainSpec {
    ChainSpec {
        readable: vec![p.as_bytes().to_vec()],
        writable: vec![HDR_SIZE as u32],
        indirect,
    }
}

/// A PCM I/O message for an output stream: the xfer header and `frames` readable (in one
/// descriptor each), the status writable.
pub fn tx_chain(stream: u32, frames: Vec<u8>, indirect: bool) -> ChainSpec {
    ChainSpec {
        readable: vec![stream.to_le_bytes().to_vec(), frames],
        writable: vec![PCM_STATUS_SIZE],
        indirect,
    }
}

/// The status code a control response starts with, when the used length covers it.
pub fn status(done: &Exchanged) -> Option<u32> {
    let r = done.reply();
    r.get(..HDR_SIZE)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// The records after the status header, as written (up to the used length).
pub fn records(done: &Exchanged) -> Vec<u8> {
    done.reply().get(HDR_SIZE..).unwrap_or_default().to_vec()
}

/// The status of a PCM I/O message: its last 8 device-writable bytes, when the device wrote
/// them (the used length covers the status buffer).
pub fn io_status(done: &Exchanged) -> Option<PcmStatus> {
    let last = done.written.last()?;
    if u64::from(done.used_len) < u64::from(PCM_STATUS_SIZE) {
        return None;
    }
    PcmStatus::read_from_bytes(last.get(..PCM_STATUS_SIZE as usize)?).ok()
}

/// Record `i` of `size` bytes in `bytes`, read as `T` (its first `size_of::<T>()` bytes).
fn record<T: FromBytes>(bytes: &[u8], i: usize, size: usize) -> Option<T> {
    let at = i.checked_mul(size)?;
    let r = bytes.get(at..at.checked_add(size)?)?;
    T::read_from_prefix(r).ok().map(|(t, _)| t)
}

/// The PCM stream records of a PCM_INFO answer.
pub fn pcm_infos(bytes: &[u8], count: u32, size: u32) -> Vec<PcmInfo> {
    (0..count as usize)
        .filter_map(|i| record(bytes, i, size as usize))
        .collect()
}

/// The jack records of a JACK_INFO answer.
pub fn jack_infos(bytes: &[u8], count: u32, size: u32) -> Vec<JackInfo> {
    (0..count as usize)
        .filter_map(|i| record(bytes, i, size as usize))
        .collect()
}

/// The channel map records of a CHMAP_INFO answer.
pub fn chmap_infos(bytes: &[u8], count: u32, size: u32) -> Vec<ChmapInfo> {
    (0..count as usize)
        .filter_map(|i| record(bytes, i, size as usize))
        .collect()
}

/// The parameters a driver picks for a stream it knows the info of: 2 channels within the
/// stream's range, S16 if offered (else the lowest format), 48 kHz if offered (else the lowest
/// rate), `period_bytes` periods, four per buffer.
pub fn params_for(stream: u32, info: Option<&PcmInfo>, period_bytes: u32) -> PcmSetParams {
    let lowest = |mask: u64, want: u8| {
        if mask & (1 << want) != 0 || mask == 0 {
            want
        } else {
            mask.trailing_zeros() as u8
        }
    };
    let (channels, format, rate) = match info {
        Some(i) => (
            2u8.clamp(i.channels_min.max(1), i.channels_max.max(1)),
            lowest(i.formats, sound::PCM_FMT_S16),
            lowest(i.rates, sound::PCM_RATE_48000),
        ),
        None => (2, sound::PCM_FMT_S16, sound::PCM_RATE_48000),
    };
    PcmSetParams {
        hdr: PcmHdr {
            code: sound::R_PCM_SET_PARAMS,
            stream_id: stream,
        },
        buffer_bytes: period_bytes.saturating_mul(4),
        period_bytes,
        features: 0,
        channels,
        format,
        rate,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_has_its_header_readable_and_room_for_every_record() {
        let c = query_chain(Item::Pcm, 1, 2, 32, false, false);
        assert_eq!(c.readable[0].len(), 16);
        assert_eq!(&c.readable[0][..4], &0x0100u32.to_le_bytes());
        assert_eq!(c.writable, vec![4, 64]);
        assert_eq!(
            query_chain(Item::Jack, 0, 1, 24, true, true).writable,
            vec![28]
        );
    }

    #[test]
    fn records_are_read_at_their_size_and_params_follow_the_info() {
        let info = PcmInfo {
            formats: 1 << 3,
            rates: 1 << 7,
            channels_min: 1,
            channels_max: 1,
            ..PcmInfo::default()
        };
        let mut bytes = info.as_bytes().to_vec();
        bytes.extend([0u8; 8]);
        bytes.extend(info.as_bytes());
        bytes.extend([0u8; 8]);
        let got = pcm_infos(&bytes, 2, 40);
        assert_eq!(got, vec![info, info]);
        let p = params_for(0, Some(&info), 1024);
        assert_eq!((p.channels, p.format, p.rate), (1, 3, 7));
        assert_eq!(p.buffer_bytes, 4096);
        assert_eq!(params_for(1, None, 512).format, sound::PCM_FMT_S16);
    }
}
