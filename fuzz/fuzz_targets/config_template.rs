//! `${VAR}` expansion of the configuration template (`config::expand`, which
//! `Config::from_template` uses), with a lookup whose values are cut from the input itself
//! (quotes, backslashes, braces, control characters, non-ASCII: whatever the input holds),
//! and with some variables unset and some empty.
//!
//! Checked:
//! - `expand` and `Config::from_template` never panic (nor `redacted` and
//!   `producer_properties` on a configuration that loads);
//! - a template without `${` expands to itself;
//! - when the template is valid JSON and every `${` in it sits inside a string together with
//!   the `}` that closes it, a successful expansion is valid JSON;
//! - a value (the whole input) comes back exactly from `"${V}"`, and a default `d` without
//!   `}` from `"${U:-d}"` whether `U` is unset or empty, as its raw text: values and defaults
//!   are JSON-escaped, never interpreted.
#![no_main]

use kinesis_kafka_replicator::config::{expand, Config};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

/// The variable `name`'s value: unset, empty, or a piece of the template.
fn value_for(template: &str, name: &str) -> Option<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    match h % 5 {
        0 => None,
        1 => Some(String::new()),
        _ if template.is_empty() => Some("value".into()),
        _ => {
            let mut start = (h >> 8) as usize % template.len();
            while !template.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + (h >> 32) as usize % 48).min(template.len());
            while !template.is_char_boundary(end) {
                end += 1;
            }
            Some(template[start..end].to_owned())
        }
    }
}

/// Whether `template` is valid JSON in which every `${` lies inside a string literal, with
/// a `}` after it in the same literal (so the whole placeholder is inside the string).
fn placeholders_only_inside_strings(template: &str) -> bool {
    if serde_json::from_str::<IgnoredAny>(template).is_err() {
        return false;
    }
    // Valid JSON: a string starts at a quote outside a string and ends at the next quote
    // that is not escaped.
    let bytes = template.as_bytes();
    let mut strings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let open = i;
            i += 1;
            while bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            strings.push((open, i));
        }
        i += 1;
    }
    template.match_indices("${").all(|(at, _)| {
        strings
            .iter()
            .any(|&(open, close)| open < at && at < close && template[at..close].contains('}'))
    })
}

fn json_string(json: &str) -> String {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON string ({e}): {json:?}"))
}

fuzz_target!(|input: &[u8]| {
    let Ok(template) = std::str::from_utf8(input) else {
        return;
    };
    let lookup = |name: &str| value_for(template, name);

    let expanded = expand(template, lookup);
    if let Err(e) = &expanded {
        let _ = format!("{e:#}");
    }
    if !template.contains("${") {
        assert_eq!(
            expanded.as_deref().ok(),
            Some(template),
            "a template without placeholders changed"
        );
    }
    if let Ok(out) = &expanded {
        if placeholders_only_inside_strings(template) {
            if let Err(e) = serde_json::from_str::<IgnoredAny>(out) {
                panic!("valid JSON in, invalid JSON out ({e}): {out:?}");
            }
        }
    }

    // Values and defaults are escaped exactly.
    let out = expand("\"${V}\"", |_| Some(template.to_owned())).expect("V is set");
    assert_eq!(json_string(&out), template);
    let default: String = template.chars().filter(|&c| c != '}').collect();
    let with_default = format!("\"${{U:-{default}}}\"");
    for unset_or_empty in [None, Some(String::new())] {
        let out = expand(&with_default, |_| unset_or_empty.clone()).expect("a default");
        assert_eq!(json_string(&out), default);
    }

    match Config::from_template(template, lookup) {
        Ok(config) => {
            let _ = config.redacted();
            let _ = config.producer_properties();
        }
        Err(e) => {
            let _ = format!("{e:#}");
        }
    }
});
