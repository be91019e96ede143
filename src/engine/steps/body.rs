//! The typed body of a `send` step, built from its `body` table, with config offsets and
//! sizes given relative to the device's config space.

use vhu_protocol::FrontendReq;
use vhu_protocol::wire::payload::{Body, BodyKind, ConfigHeader};

use super::StepError;
use crate::scenario::model::SendArgs;

/// The typed body of a `send` step, from its `body` table (the payload struct's field names).
pub(super) fn build_body(
    req: FrontendReq,
    a: &SendArgs,
    device: Option<crate::device::DeviceType>,
) -> Result<Body, StepError> {
    let mut table = a.body.clone().unwrap_or_default();
    if req.request_body() == BodyKind::Config {
        config_sizes(&mut table, device)?;
    }
    let bad = |e: toml::de::Error| StepError::Harness(format!("body of {}: {e}", req.spec_name()));
    let v = toml::Value::Table(table);
    Ok(match req.request_body() {
        BodyKind::Empty => Body::Empty,
        BodyKind::U64 => Body::U64(
            v.try_into::<vhu_protocol::wire::payload::U64>()
                .map_err(bad)?
                .value,
        ),
        BodyKind::VringState => Body::VringState(v.try_into().map_err(bad)?),
        BodyKind::VringAddr => Body::VringAddr(v.try_into().map_err(bad)?),
        BodyKind::SingleRegion => Body::SingleRegion(v.try_into().map_err(bad)?),
        BodyKind::Log => Body::Log(v.try_into().map_err(bad)?),
        BodyKind::Inflight => Body::Inflight(v.try_into().map_err(bad)?),
        BodyKind::DeviceState => Body::DeviceState(v.try_into().map_err(bad)?),
        BodyKind::SharedObject => Body::SharedObject(v.try_into().map_err(bad)?),
        BodyKind::Iotlb => Body::Iotlb(v.try_into().map_err(bad)?),
        BodyKind::Config => {
            let h: ConfigHeader = v.try_into().map_err(bad)?;
            let mut data = vec![0; h.size as usize];
            if req == FrontendReq::SetConfig
                && let Some(hex) = &a.config_hex
            {
                let bytes = &hex.0;
                let n = bytes.len().min(data.len());
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Body::Config(h, data)
        }
        BodyKind::MemTable => Body::MemTable(vec![]),
        other => {
            return Err(StepError::Harness(format!(
                "a `send` body of kind {other:?} is not supported; use a `raw` step"
            )));
        }
    })
}

/// GET_CONFIG / SET_CONFIG bodies may give `offset` and `size` relative to the device's config
/// space: `"config_size"`, `"config_size-4"`, `"config_size+8"` (the size of the part every
/// back-end of the device type has, [`crate::device::DeviceType::config_size`]).
fn config_sizes(
    table: &mut toml::Table,
    device: Option<crate::device::DeviceType>,
) -> Result<(), StepError> {
    for key in ["offset", "size"] {
        let Some(toml::Value::String(expr)) = table.get(key).cloned() else {
            continue;
        };
        let d = device.ok_or_else(|| {
            StepError::NotApplicable(
                "device type unknown: pass --device TYPE (this scenario sizes its request by the device's config space)".into(),
            )
        })?;
        let size = d.config_size().ok_or_else(|| {
            StepError::NotApplicable(format!(
                "the config space size of a {d} device is not known to vhu-conform"
            ))
        })?;
        if size == 0 {
            return Err(StepError::NotApplicable(format!(
                "a {d} device has no config space"
            )));
        }
        let rest = expr.trim().strip_prefix("config_size").ok_or_else(|| {
            StepError::Harness(format!(
                "body `{key}` = {expr:?}: a number or \"config_size[+-N]\""
            ))
        })?;
        let delta: i64 = match rest.trim() {
            "" => 0,
            r => r.replace(' ', "").parse().map_err(|_| {
                StepError::Harness(format!(
                    "body `{key}` = {expr:?}: a number or \"config_size[+-N]\""
                ))
            })?,
        };
        let v = (i64::from(size) + delta).max(0);
        table.insert(key.into(), toml::Value::Integer(v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceType;

    fn table(offset: &str, size: &str) -> toml::Table {
        toml::from_str(&format!("offset = {offset}\nsize = {size}\nflags = 0")).unwrap()
    }

    #[test]
    fn config_bodies_size_themselves_by_the_device() {
        let mut t = table("\"config_size-4\"", "4");
        config_sizes(&mut t, Some(DeviceType::Vsock)).unwrap();
        assert_eq!(t["offset"].as_integer(), Some(4));
        let mut t = table("0", "\"config_size\"");
        config_sizes(&mut t, Some(DeviceType::Block)).unwrap();
        assert_eq!(t["size"].as_integer(), Some(60));
        // Unknown type, no config space, unknown size: not applicable, saying why.
        for (d, why) in [
            (None, "device type unknown"),
            (Some(DeviceType::Rng), "no config space"),
            (Some(DeviceType::Video), "not known"),
        ] {
            let mut t = table("0", "\"config_size\"");
            match config_sizes(&mut t, d) {
                Err(StepError::NotApplicable(r)) => assert!(r.contains(why), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        // A misspelt expression is the scenario's fault, not the back-end's.
        let mut t = table("\"config-size\"", "4");
        assert!(matches!(
            config_sizes(&mut t, Some(DeviceType::Net)),
            Err(StepError::Harness(_))
        ));
    }
}
