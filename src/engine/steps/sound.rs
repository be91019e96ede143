//! virtio-sound steps (virtio 1.2 section 5.14): the config space, item information requests
//! and the PCM command lifecycle on the control queue, PCM output on the tx queue. Every
//! completion is judged on what every device owes (chains.rs: R-DEV-01..03), then on the
//! device's own rules: a response header with a status code (R-SND-01), in-range queries
//! answered OK with their records (R-SND-02), invalid parameters answered with an error status
//! (R-SND-03), well-formed records (R-SND-04), the lifecycle accepted (R-SND-05, a SHOULD) and
//! I/O messages answered with their status (R-SND-06).

use vhu_mock_frontend::exchange::{ChainSpec, Exchanged};
use vhu_mock_frontend::sound::{self as drv, Item};
use vhu_protocol::ProtocolFeatures;
use vhu_protocol::virtio::sound::{
    self, CONTROL_QUEUE, ChmapInfo, Config, JackInfo, PcmInfo, TX_QUEUE, request_name, status_name,
};

use super::chains::{Batching, Completions};
use super::{Ctx, StepError, StepResult};
use crate::rules::id;
use crate::scenario::Action;
use crate::scenario::model::{PcmCommand, SoundItem};
use crate::scenario::model::{SoundPcmArgs, SoundQueryArgs, SoundTxArgs, SoundUnknownArgs, Step};

/// The period size when no `set_params` step gave one.
const DEFAULT_PERIOD: u32 = 1024;
/// A start id or stream id past every item when the config space cannot be read.
const FAR_ID: u32 = 0x7fff_ffff;

/// What the sound steps keep within a session.
#[derive(Debug, Default)]
pub(super) struct SoundState {
    config: Option<Config>,
    /// PCM_INFO records seen, by stream id.
    pcm: std::collections::BTreeMap<u32, PcmInfo>,
    /// The period size of the last SET_PARAMS.
    period: Option<u32>,
    /// The last request, rendered (a finding's `sent`).
    last: Option<String>,
}

fn item_of(i: SoundItem) -> Item {
    match i {
        SoundItem::Jack => Item::Jack,
        SoundItem::Pcm => Item::Pcm,
        SoundItem::Chmap => Item::Chmap,
    }
}

fn code_of(c: PcmCommand) -> u32 {
    match c {
        PcmCommand::SetParams => sound::R_PCM_SET_PARAMS,
        PcmCommand::Prepare => sound::R_PCM_PREPARE,
        PcmCommand::Start => sound::R_PCM_START,
        PcmCommand::Stop => sound::R_PCM_STOP,
        PcmCommand::Release => sound::R_PCM_RELEASE,
    }
}

/// A mask of bits 0..=max.
fn bits_upto(max: u32) -> u64 {
    (1u64 << (max + 1)) - 1
}

/// What is wrong with a PCM_INFO record (R-SND-04), if anything.
fn pcm_problem(p: &PcmInfo) -> Option<String> {
    let (features, formats, rates) = (p.features, p.formats, p.rates);
    if u64::from(features) & !bits_upto(sound::PCM_F_MAX) != 0 {
        return Some(format!("undefined feature bits {features:#x}"));
    }
    if formats & !bits_upto(sound::PCM_FMT_MAX.into()) != 0 {
        return Some(format!("undefined format bits {formats:#x}"));
    }
    if rates & !bits_upto(sound::PCM_RATE_MAX.into()) != 0 {
        return Some(format!("undefined rate bits {rates:#x}"));
    }
    if p.direction > sound::D_INPUT {
        return Some(format!("undefined direction {}", p.direction));
    }
    if p.channels_min > p.channels_max {
        return Some(format!(
            "channels_min {} above channels_max {}",
            p.channels_min, p.channels_max
        ));
    }
    (p.padding != [0; 5]).then(|| format!("padding {:02x?} not zero", p.padding))
}

fn jack_problem(j: &JackInfo) -> Option<String> {
    let features = j.features;
    if u64::from(features) & !bits_upto(sound::JACK_F_MAX) != 0 {
        return Some(format!("undefined feature bits {features:#x}"));
    }
    (j.padding != [0; 7]).then(|| format!("padding {:02x?} not zero", j.padding))
}

fn chmap_problem(c: &ChmapInfo) -> Option<String> {
    if c.direction > sound::D_INPUT {
        return Some(format!("undefined direction {}", c.direction));
    }
    (usize::from(c.channels) > sound::CHMAP_MAX_SIZE)
        .then(|| format!("{} channels, more than 18", c.channels))
}

impl Ctx<'_> {
    pub(super) fn sound_step(&mut self, step: &Step) -> StepResult {
        let before = self.findings.len();
        self.sound.last = None;
        let r = match &step.action {
            Action::SoundConfig(_) => self.sound_read_config(step).map(drop),
            Action::SoundQuery(a) => self.sound_query(step, a),
            Action::SoundPcm(a) => self.sound_pcm(step, a),
            Action::SoundTx(a) => self.sound_tx(step, a),
            Action::SoundUnknown(a) => self.sound_unknown(step, a),
            _ => Ok(()),
        };
        let sent = self.sound.last.clone();
        self.data_path_sent(before, sent, r)
    }

    /// R-SND-02: GET_CONFIG of the 12-byte config space.
    fn sound_read_config(&mut self, step: &Step) -> Result<Config, StepError> {
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Err(StepError::NotApplicable(
                "the item counts are in the config space, and the CONFIG protocol feature was not negotiated".into(),
            ));
        }
        let r = self.session()?.get_config(0, sound::CONFIG_SIZE as u32);
        let m = r.map_err(|e| self.session_failed(step, e))?;
        self.mark(id::R_SND_02);
        let Some(c) = m
            .payload
            .get(12..12 + sound::CONFIG_SIZE)
            .and_then(|b| <Config as zerocopy::FromBytes>::read_from_bytes(b).ok())
        else {
            return Err(self.fail(
                id::R_SND_02,
                "GET_CONFIG of the 12-byte virtio-sound config space failed",
                "the config space: le32 jacks, streams, chmaps",
                format!("{} payload bytes", m.payload.len()),
            ));
        };
        self.sound.config = Some(c);
        Ok(c)
    }

    /// The config space, read once per session when CONFIG is negotiated.
    fn sound_config(&mut self, step: &Step) -> Result<Option<Config>, StepError> {
        if let Some(c) = self.sound.config {
            return Ok(Some(c));
        }
        if self.protocol & ProtocolFeatures::CONFIG.bits() == 0 {
            return Ok(None);
        }
        self.sound_read_config(step).map(Some)
    }

    /// One control request: made available, waited for, judged on the ring (R-DEV-01..03)
    /// and on its response header (R-SND-01). The completion and its status code.
    fn sound_control(
        &mut self,
        step: &Step,
        spec: ChainSpec,
        what: String,
    ) -> Result<(Exchanged, u32), StepError> {
        self.sync_unacked(step)?;
        self.sound.last = Some(what.clone());
        let Completions { mut done, .. } =
            self.exchange_chains(step, CONTROL_QUEUE, &[spec], Batching::AtOnce, |_| {
                what.clone()
            })?;
        let d = done.remove(0);
        self.judge_common(CONTROL_QUEUE, &what, &d)?;
        self.mark_datapath(step, CONTROL_QUEUE);
        self.mark(id::R_SND_01);
        let status = drv::status(&d).filter(|s| (sound::S_OK..=sound::S_IO_ERR).contains(s));
        let Some(status) = status else {
            return Err(self.fail(
                id::R_SND_01,
                &format!("{what} was used without a status code in its response header"),
                "a used length of at least 4 and a code of VIRTIO_SND_S_OK, BAD_MSG, NOT_SUPP or IO_ERR",
                format!("used length {}, reply {:02x?}", d.used_len, &d.reply()[..d.reply().len().min(8)]),
            ));
        };
        Ok((d, status))
    }

    /// R-SND-03: a request with invalid parameters must not be answered OK.
    fn sound_expect_error(&mut self, what: &str, why: &str, status: u32) -> StepResult {
        self.mark(id::R_SND_03);
        if status == sound::S_OK {
            return Err(self.fail(
                id::R_SND_03,
                &format!("{what} ({why}) was answered VIRTIO_SND_S_OK"),
                "an error status (VIRTIO_SND_S_BAD_MSG: the message contains invalid parameters)",
                format!("status {status:#x} (OK)"),
            ));
        }
        if status != sound::S_BAD_MSG {
            self.note(format!(
                "{what} ({why}) was answered {} ({status:#x}); BAD_MSG is the code for invalid parameters",
                status_name(status)
            ));
        }
        Ok(())
    }

    fn sound_query(&mut self, step: &Step, a: &SoundQueryArgs) -> StepResult {
        let item = item_of(a.item);
        let size = item.record_size();
        let announced = self.sound_config(step)?.map(|c| item.announced(&c));
        let (start, count) = if a.bad_start == Some(true) {
            (announced.unwrap_or(FAR_ID), 1)
        } else {
            let start = a.start_id.unwrap_or(0);
            let count = a
                .count
                .unwrap_or_else(|| announced.map_or(1, |n| n.saturating_sub(start)));
            (start, count)
        };
        let past = announced.is_none_or(|n| u64::from(start) + u64::from(count) > u64::from(n));
        let invalid = a.bad_start == Some(true) || (announced.is_some() && past);
        if count == 0 && !invalid {
            return Err(StepError::NotApplicable(format!(
                "the config space announces {} {}: nothing to query",
                announced.unwrap_or(0),
                item.config_field()
            )));
        }
        let what = format!(
            "{} start_id {start} count {count} size {size}",
            request_name(item.code())
        );
        let spec = drv::query_chain(
            item,
            start,
            count,
            size,
            a.one_buffer == Some(true),
            a.indirect == Some(true),
        );
        let (d, status) = self.sound_control(step, spec, what.clone())?;
        if invalid {
            let why = match announced {
                Some(n) => format!(
                    "past the {n} {} the config space announces",
                    item.config_field()
                ),
                None => format!("start_id {FAR_ID:#x}, past any device's items"),
            };
            return self.sound_expect_error(&what, &why, status);
        }
        self.judge_records(&what, item, start, count, size, &d, status)
    }

    /// R-SND-02 (status OK, 4 + count * size bytes) and R-SND-04 (each record well formed).
    #[allow(clippy::too_many_arguments)]
    fn judge_records(
        &mut self,
        what: &str,
        item: Item,
        start: u32,
        count: u32,
        size: u32,
        d: &Exchanged,
        status: u32,
    ) -> StepResult {
        self.mark(id::R_SND_02);
        let want = 4 + u64::from(count) * u64::from(size);
        if status != sound::S_OK || u64::from(d.used_len) != want {
            return Err(self.fail(
                id::R_SND_02,
                &format!(
                    "{what} within the announced items was answered {} with used length {}",
                    status_name(status),
                    d.used_len
                ),
                &format!("VIRTIO_SND_S_OK and {count} records of {size} bytes: used length {want}"),
                format!("status {status:#x}, used length {}", d.used_len),
            ));
        }
        self.mark(id::R_SND_04);
        let bytes = drv::records(d);
        let problems: Vec<String> = match item {
            Item::Pcm => {
                let infos = drv::pcm_infos(&bytes, count, size);
                for (i, p) in infos.iter().enumerate() {
                    self.sound.pcm.insert(start + i as u32, *p);
                }
                infos.iter().map(pcm_problem).collect::<Vec<_>>()
            }
            Item::Jack => drv::jack_infos(&bytes, count, size)
                .iter()
                .map(jack_problem)
                .collect(),
            Item::Chmap => drv::chmap_infos(&bytes, count, size)
                .iter()
                .map(chmap_problem)
                .collect(),
        }
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| format!("item {}: {p}", start + i as u32)))
        .collect();
        if let Some(first) = problems.first() {
            return Err(self.fail(
                id::R_SND_04,
                &format!("{what}: a record is malformed: {first}"),
                "records with only defined feature, format, rate and direction values and zeroed padding",
                problems.join("; "),
            ));
        }
        Ok(())
    }

    /// The stream a step names: its own, else the first output stream PCM_INFO showed, else 0.
    fn sound_stream(&self, stream: Option<u32>) -> u32 {
        stream.unwrap_or_else(|| {
            self.sound
                .pcm
                .iter()
                .find(|(_, p)| p.direction == sound::D_OUTPUT)
                .map_or(0, |(id, _)| *id)
        })
    }

    fn sound_pcm(&mut self, step: &Step, a: &SoundPcmArgs) -> StepResult {
        let config = self.sound_config(step)?;
        let bad = a.bad_stream == Some(true);
        let stream = if bad {
            config.map_or(FAR_ID, |c| c.streams)
        } else {
            self.sound_stream(a.stream)
        };
        let code = code_of(a.command);
        let indirect = a.indirect == Some(true);
        let (spec, what) = if a.command == PcmCommand::SetParams {
            let period = a.period_bytes.unwrap_or(DEFAULT_PERIOD);
            let p = drv::params_for(stream, self.sound.pcm.get(&stream), period);
            self.sound.period = Some(period);
            let (buffer, channels, format, rate) = (p.buffer_bytes, p.channels, p.format, p.rate);
            let what = format!(
                "PCM_SET_PARAMS stream {stream} buffer_bytes {buffer} period_bytes {period} channels {channels} format {format} rate {rate}"
            );
            (drv::set_params_chain(&p, indirect), what)
        } else {
            let what = format!("{} stream {stream}", request_name(code));
            (drv::pcm_chain(code, stream, indirect), what)
        };
        let (_, status) = self.sound_control(step, spec, what.clone())?;
        if bad {
            let why = match config {
                Some(c) => format!(
                    "stream_id {stream}: the config space announces {} streams",
                    c.streams
                ),
                None => format!("stream_id {FAR_ID:#x}, past any device's streams"),
            };
            return self.sound_expect_error(&what, &why, status);
        }
        self.mark(id::R_SND_05);
        if status != sound::S_OK {
            return Err(self.fail(
                id::R_SND_05,
                &format!(
                    "{what}, a valid transition of the PCM command lifecycle, was answered {}",
                    status_name(status)
                ),
                "VIRTIO_SND_S_OK (parameters taken from the stream's PCM_INFO)",
                format!("status {status:#x}"),
            ));
        }
        Ok(())
    }

    /// R-SND-07: a request of a code the spec does not define gets an error status.
    fn sound_unknown(&mut self, step: &Step, a: &SoundUnknownArgs) -> StepResult {
        let code = a.code.unwrap_or(0x0fff);
        let what = format!("a control request of undefined code {code:#x}");
        let (_, status) = self.sound_control(step, drv::pcm_chain(code, 0, false), what.clone())?;
        self.mark(id::R_SND_07);
        if status == sound::S_OK {
            return Err(self.fail(
                id::R_SND_07,
                &format!("{what} was answered VIRTIO_SND_S_OK"),
                "an error status: VIRTIO_SND_S_NOT_SUPP (operation not supported) or BAD_MSG",
                format!("status {status:#x} (OK)"),
            ));
        }
        Ok(())
    }

    fn sound_tx(&mut self, step: &Step, a: &SoundTxArgs) -> StepResult {
        self.sync_unacked(step)?;
        let stream = self.sound_stream(a.stream);
        let period = self.sound.period.unwrap_or(DEFAULT_PERIOD);
        let n = a.periods.unwrap_or(4).max(1);
        let indirect = a.indirect == Some(true);
        let specs: Vec<ChainSpec> = (0..n)
            .map(|i| {
                let frames = (0..period)
                    .map(|b| (b as u8).wrapping_add(i as u8))
                    .collect();
                drv::tx_chain(stream, frames, indirect)
            })
            .collect();
        let what = format!("a PCM I/O message of {period} bytes for stream {stream}");
        self.sound.last = Some(format!("{n} x {what} on the tx queue"));
        let batching = Batching::from_at_once(a.at_once);
        let Completions { done, .. } =
            self.exchange_chains(step, TX_QUEUE, &specs, batching, |_| what.clone())?;
        for d in &done {
            self.judge_io(&what, d)?;
        }
        self.mark_datapath(step, TX_QUEUE);
        Ok(())
    }

    /// R-DEV-01..03, then R-SND-06: used length 8 and status OK or IO_ERR.
    fn judge_io(&mut self, what: &str, d: &Exchanged) -> StepResult {
        self.judge_common(TX_QUEUE, what, d)?;
        self.mark(id::R_SND_06);
        let st = drv::io_status(d);
        let ok = st.is_some_and(|s| s.status == sound::S_OK || s.status == sound::S_IO_ERR);
        if d.used_len != sound::PCM_STATUS_SIZE || !ok {
            return Err(self.fail(
                id::R_SND_06,
                &format!("{what} was used with length {} and status {st:?}", d.used_len),
                "a used length of 8 (virtio_snd_pcm_status only) with status VIRTIO_SND_S_OK or VIRTIO_SND_S_IO_ERR",
                format!("{d:?}"),
            ));
        }
        if st.is_some_and(|s| s.status == sound::S_IO_ERR) {
            self.note(format!("{what} was answered VIRTIO_SND_S_IO_ERR"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm() -> PcmInfo {
        PcmInfo {
            formats: 1 << sound::PCM_FMT_S16,
            rates: 1 << sound::PCM_RATE_48000,
            channels_min: 1,
            channels_max: 2,
            ..PcmInfo::default()
        }
    }

    #[test]
    fn well_formed_records_pass_and_each_undefined_value_is_named() {
        assert_eq!(pcm_problem(&pcm()), None);
        let cases = [
            (
                PcmInfo {
                    padding: [0, 1, 0, 0, 0],
                    ..pcm()
                },
                "padding",
            ),
            (
                PcmInfo {
                    formats: 1 << 25,
                    ..pcm()
                },
                "format",
            ),
            (
                PcmInfo {
                    rates: 1 << 14,
                    ..pcm()
                },
                "rate",
            ),
            (
                PcmInfo {
                    features: 1 << 5,
                    ..pcm()
                },
                "feature",
            ),
            (
                PcmInfo {
                    direction: 2,
                    ..pcm()
                },
                "direction",
            ),
            (
                PcmInfo {
                    channels_min: 3,
                    ..pcm()
                },
                "channels_min",
            ),
        ];
        for (p, word) in cases {
            let why = pcm_problem(&p).unwrap_or_default();
            assert!(why.contains(word), "{why} lacks {word}");
        }
        assert!(
            jack_problem(&JackInfo {
                features: 2,
                ..JackInfo::default()
            })
            .is_some()
        );
        assert_eq!(jack_problem(&JackInfo::default()), None);
        let c = ChmapInfo {
            channels: 19,
            ..ChmapInfo::default()
        };
        assert!(chmap_problem(&c).is_some_and(|w| w.contains("19")));
    }
}
