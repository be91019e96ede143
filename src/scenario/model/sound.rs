//! The arguments of the virtio-sound steps (README "Writing a scenario"): item information
//! queries, PCM commands, PCM output on the tx queue, undefined requests.

use serde::{Deserialize, Serialize};

/// The kind of item a `sound_query` asks about.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoundItem {
    /// JACK_INFO.
    Jack,
    /// PCM_INFO.
    Pcm,
    /// CHMAP_INFO.
    Chmap,
}

/// A PCM command of the stream lifecycle (virtio 1.2 5.14.6.6.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcmCommand {
    /// PCM_SET_PARAMS.
    SetParams,
    /// PCM_PREPARE.
    Prepare,
    /// PCM_START.
    Start,
    /// PCM_STOP.
    Stop,
    /// PCM_RELEASE.
    Release,
}

/// `sound_query`: an item information request on the control queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoundQueryArgs {
    /// `jack`, `pcm` or `chmap`.
    pub item: SoundItem,
    /// The first item (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_id: Option<u32>,
    /// How many (default: every item the config space announces from `start_id`, else 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Ask for items past the last the config space announces (`start_id` = their number,
    /// `count` 1): the answer must be an error status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_start: Option<bool>,
    /// Status header and records in one device-writable descriptor (default: two).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_buffer: Option<bool>,
    /// The request goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `sound_pcm`: a PCM command on the control queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoundPcmArgs {
    /// The PCM command sent.
    pub command: PcmCommand,
    /// The stream (default: the first output stream a PCM_INFO answer showed, else 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    /// Name the stream past the last the config space announces: the answer must be an error
    /// status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_stream: Option<bool>,
    /// `set_params`: the period size (default 1024; the buffer is four periods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_bytes: Option<u32>,
    /// The request goes in an indirect descriptor table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `sound_tx`: PCM frames for an output stream on the tx queue.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoundTxArgs {
    /// The stream (default as `sound_pcm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    /// I/O messages, one period each (default 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub periods: Option<u32>,
    /// Submit them all with one kick before waiting, instead of one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_once: Option<bool>,
    /// The messages go in indirect descriptor tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
}

/// `sound_unknown`: a control request of a code virtio-sound does not define.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoundUnknownArgs {
    /// The request code (default 0x0fff, in no range the spec uses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}
