//! The steps that send a front-end message as written: `send` (a request built from its body's
//! fields, its reply checked) and `raw` (header and payload bytes, unvalidated).

use serde::{Deserialize, Serialize};

use super::Hex;

/// A front-end request a `send` step builds, by spec name (with or without `VHOST_USER_`),
/// CamelCase name or code; one vhu-conform does not know is refused at load.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Request(pub vhu_protocol::FrontendReq);

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.spec_name().trim_start_matches("VHOST_USER_"))
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = RequestName::deserialize(d)?;
        name.resolve().map(Self).map_err(serde::de::Error::custom)
    }
}

/// The request code of a `raw` step: any number (codes no spec defines included), or a name
/// (which must be known).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawRequest(pub u32);

impl Serialize for RawRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RequestName::deserialize(d)? {
            RequestName::Code(c) => Ok(Self(c)),
            name => name
                .resolve()
                .map(|r| Self(r as u32))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A request named by spec name, CamelCase name or code, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestName {
    /// A request code, as a number.
    Code(u32),
    /// A spec or CamelCase name, resolved by [`RequestName::resolve`].
    Name(String),
}

impl RequestName {
    /// The front-end request: by code, spec name (with or without `VHOST_USER_`) or CamelCase
    /// name (`SET_VRING_NUM`, `VHOST_USER_SET_VRING_NUM`, `SetVringNum`).
    pub fn resolve(&self) -> Result<vhu_protocol::FrontendReq, String> {
        use vhu_protocol::FrontendReq;
        match self {
            Self::Code(c) => FrontendReq::from_code(*c).map_err(|e| e.to_string()),
            Self::Name(n) => {
                let up = n.trim_start_matches("VHOST_USER_").to_ascii_uppercase();
                FrontendReq::all()
                    .find(|r| {
                        r.spec_name().trim_start_matches("VHOST_USER_") == up
                            || format!("{r:?}").eq_ignore_ascii_case(n)
                    })
                    .ok_or_else(|| format!("unknown request name {n:?}"))
            }
        }
    }
}

/// The kinds of extra fd a `send` or `raw` step can attach.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// An eventfd.
    #[default]
    Eventfd,
    /// A 2 MiB memfd.
    Memfd,
    /// The write end of a pipe; the back-end must close it (its read end then sees EOF).
    Pipe,
    /// One end of a Unix socket pair; the back-end must close it.
    Socket,
}

/// Which ring index a `send` body names in place of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyQueue {
    /// The first index past the rings GET_QUEUE_NUM's answer stands for.
    PastEnd,
}

/// `send`: a request built from its body's fields, and what its reply must hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// The request sent, by name or code.
    pub request: Request,
    /// The body's fields (the payload struct's field names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<toml::Table>,
    /// `"past_end"` puts the first ring index past GET_QUEUE_NUM's count in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<BodyQueue>,
    /// Force NEED_REPLY on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_reply: Option<bool>,
    /// Extra fds to attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<usize>,
    /// Their kind (default eventfd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_kind: Option<FdKind>,
    /// With `expect = "no_reply"`: listen this long (ms) instead of a GET_FEATURES round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The reply's u64 must equal this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// These bits must be set in the reply's u64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_mask: Option<u64>,
    /// The reply's u64 must be non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonzero: Option<bool>,
    /// Bits 0-7 of the reply's u64 (an error code, as SET_DEVICE_STATE_FD's) must be non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<bool>,
    /// The reply's u64 must equal what the session's first GET_FEATURES offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered: Option<bool>,
    /// The reply's payload size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_size: Option<u32>,
    /// SET_CONFIG: the config bytes written (default zeros). GET_CONFIG: the config bytes the
    /// reply must carry after its 12-byte header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hex: Option<Hex>,
    /// The reply's flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_flags: Option<u32>,
    /// The number of fds the reply carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_fds: Option<usize>,
}

impl SendArgs {
    /// A `send` of `request` with its default body and checks.
    pub fn new(request: vhu_protocol::FrontendReq) -> Self {
        Self {
            request: Request(request),
            body: None,
            queue: None,
            need_reply: None,
            fds: None,
            fd_kind: None,
            window_ms: None,
            value: None,
            value_mask: None,
            nonzero: None,
            error_code: None,
            offered: None,
            reply_size: None,
            config_hex: None,
            reply_flags: None,
            reply_fds: None,
        }
    }
}

/// `raw`: a header and payload as given, unvalidated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgs {
    /// The header's request code (a name or any number).
    pub request: RawRequest,
    /// The header's flags (default 1: version 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// The header's size field (default: the payload's length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_size: Option<u32>,
    /// The payload bytes (default none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<Hex>,
    /// Extra fds to attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<usize>,
    /// Their kind (default eventfd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_kind: Option<FdKind>,
    /// With `expect = "alive"`: read what comes for this long (ms) before the liveness probe;
    /// with `expect = "no_reply"`: listen this long instead of a round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}
