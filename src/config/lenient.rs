//! How a setting's value is read: leniently, because a template quotes its placeholders
//! to stay valid JSON, so numbers, booleans and enums may all arrive as strings (and an
//! empty string from `${VAR:-}` means "not set").

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// An enum written in any case, with `-` or `_`, and empty meaning the default (so that
/// `${VAR:-}` in a template means "not set").
pub(super) fn lenient_enum<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let text = String::deserialize(d)?;
    let normal = text.trim().to_ascii_lowercase().replace('-', "_");
    if normal.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_value(serde_json::Value::String(normal))
        .map_err(|e| de::Error::custom(format!("{text:?}: {e}")))
}

pub(super) fn optional_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let text = match Option::<Scalar>::deserialize(d)? {
        None => return Ok(None),
        Some(Scalar::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => {
            return Ok(Some(n as u32))
        }
        Some(Scalar::Number(n)) => n.to_string(),
        Some(Scalar::Text(s)) => s,
        Some(Scalar::Bool(b)) => b.to_string(),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse::<u32>()
        .map(Some)
        .map_err(|_| de::Error::custom(format!("expected a whole number, found {text:?}")))
}

/// A JSON number or a string holding one: templates quote their placeholders so that the
/// template itself stays valid JSON.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Number(f64),
    Text(String),
}

pub(super) fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = match Scalar::deserialize(d)? {
        Scalar::Number(n) => n,
        Scalar::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| de::Error::custom(format!("expected a number of seconds, found {s:?}")))?,
        Scalar::Bool(b) => {
            return Err(de::Error::custom(format!(
                "expected a number of seconds, found {b}"
            )))
        }
    };
    if !value.is_finite() || !(0.0..=1e9).contains(&value) {
        return Err(de::Error::custom(format!(
            "expected a number of seconds between 0 and 1e9, found {value}"
        )));
    }
    Ok(value)
}

fn count_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = match Scalar::deserialize(d)? {
        Scalar::Number(n) if n >= 0.0 && n.fract() == 0.0 && n < 1e18 => return Ok(n as u64),
        Scalar::Number(n) => n.to_string(),
        Scalar::Text(s) => s,
        Scalar::Bool(b) => b.to_string(),
    };
    text.trim()
        .parse::<u64>()
        .map_err(|_| de::Error::custom(format!("expected a whole number, found {text:?}")))
}

pub(super) fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = count_u64(d)?;
    u32::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large")))
}

pub(super) fn count_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = count_u64(d)?;
    usize::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large")))
}

pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Bool(b) => Ok(b),
        Scalar::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(de::Error::custom(format!(
                "expected true or false, found {s:?}"
            ))),
        },
        Scalar::Number(n) => Err(de::Error::custom(format!(
            "expected true or false, found {n}"
        ))),
    }
}

/// librdkafka properties are strings; accept numbers and booleans too, as people write them.
pub(super) fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "kafka.properties.{k}: expected a string, found {other}"
                    )))
                }
            };
            Ok((k, v))
        })
        .collect()
}
