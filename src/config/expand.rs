//! The `${VAR}` expansion of the configuration template, from the environment (or any
//! lookup), every value JSON-escaped.

use anyhow::{bail, Result};

/// Replaces every `${NAME}`, `${NAME:-default}` (unset or empty → default) and
/// `${NAME-default}` (unset → default) with the value from `lookup`, escaped for a JSON
/// string; `$${` stands for a literal `${`. Missing variables are all reported at once,
/// each with its line.
pub fn expand(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            // `$${` is a literal `${` (a regex group reference in a topic template, say).
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Lines before the placeholder, plus its own (`lines()` would miss the line a
        // placeholder starts).
        let line = template[..template.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let Some(end) = after.find('}') else {
            bail!("line {line}: `${{` without a closing `}}`");
        };
        let body = &after[..end];
        // The first `-` ends the name, as in the shell: `${X-a:-b}` defaults to `a:-b`.
        let (name, default, empty_is_unset) = match body.find('-') {
            Some(i) if body[..i].ends_with(':') => (&body[..i - 1], Some(&body[i + 1..]), true),
            Some(i) => (&body[..i], Some(&body[i + 1..]), false),
            None => (body, None, false),
        };
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            bail!("line {line}: `${{{body}}}` is not a valid placeholder; use ${{NAME}} or ${{NAME:-default}}");
        }
        let value = match lookup(name) {
            Some(v) if !(empty_is_unset && v.is_empty()) => Some(v),
            _ => default.map(str::to_owned),
        };
        match value {
            Some(v) => push_json_escaped(&mut out, &v),
            None => missing.push(format!("{name} (line {line})")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if !missing.is_empty() {
        bail!(
            "environment variable{} not set: {}; set {} or give a default as ${{NAME:-default}}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "them" } else { "it" }
        );
    }
    Ok(out)
}

/// Escapes `value` as the inside of a JSON string.
fn push_json_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;

    #[test]
    fn expansion_escapes_values_for_json() {
        let out = expand(r#"{"p":"${P}"}"#, env(&[("P", "a\"b\\c\n")])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["p"], "a\"b\\c\n");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let lookup = env(&[("EMPTY", "")]);
        assert_eq!(expand("${X:-d}", &lookup).unwrap(), "d");
        assert_eq!(expand("${EMPTY:-d}", &lookup).unwrap(), "d");
        assert_eq!(expand("${EMPTY-d}", &lookup).unwrap(), "");
        assert_eq!(expand("${X-}", &lookup).unwrap(), "");
        // The first `-` ends the name, as in the shell (found by fuzzing).
        assert_eq!(expand("${X-a:-b}", &lookup).unwrap(), "a:-b");
        assert_eq!(expand("${X:-a-b}", &lookup).unwrap(), "a-b");
        assert_eq!(expand("${EMPTY:-a-b}", &lookup).unwrap(), "a-b");
        assert_eq!(
            expand("no placeholders $X {}", &lookup).unwrap(),
            "no placeholders $X {}"
        );
    }

    #[test]
    fn every_missing_variable_is_named_with_its_line() {
        let err = expand("{\n\"a\":\"${A}\",\n\"b\":\"${B}\"}", env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("A (line 2)"), "{msg}");
        assert!(msg.contains("B (line 3)"), "{msg}");
        // A placeholder at the start of a line is on that line (found by fuzzing).
        let err = expand("{\n${A}\n}", env(&[])).unwrap_err().to_string();
        assert!(err.contains("A (line 2)"), "{err}");
        let err = expand("${A}", env(&[])).unwrap_err().to_string();
        assert!(err.contains("A (line 1)"), "{err}");
    }
}
