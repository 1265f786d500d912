//! Typed parsing of rendered job configurations.
//!
//! A provider describes its job configuration as a `#[derive(Deserialize)]` struct and calls
//! [`parse_config`]; a field of the wrong shape becomes a [`ProviderError::InvalidConfig`] naming
//! the JSON path of the first bad field (`env.A`, `job_body.template.template.containers[0]`) and
//! the rule it breaks (`must be a string`, `is required`, …). Rules serde cannot express (ranges,
//! formats, "one of") are checked afterwards on the typed value, with [`ensure`] and [`bounded`].
//!
//! Conventions that keep Prefect-style templates working: a whole placeholder whose variable has
//! no value renders as an absent key, and a variable may be given as `null` — declare optional
//! fields as `Option<T>` (serde reads `null` as `None`) and treat blank strings as unset with
//! [`non_blank`].

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ProviderError;

/// Parses a rendered job configuration into `T`, naming the JSON path and the rule of the first
/// field that does not fit.
pub fn parse_config<T: DeserializeOwned>(rendered: &Value) -> Result<T, ProviderError> {
    parse_field(rendered, "")
}

/// [`parse_config`] for the object at `field` inside a configuration (paths in errors start with
/// `field`); for a part a provider reads in its own way before parsing it.
pub fn parse_field<T: DeserializeOwned>(value: &Value, field: &str) -> Result<T, ProviderError> {
    ensure(value.is_object(), field, "must be a JSON object")?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = field_path(error.path());
        let path = if field.is_empty() || inner.is_empty() || inner.starts_with('[') {
            format!("{field}{inner}")
        } else {
            format!("{field}.{inner}")
        };
        let (field, rule) = describe(path, &error.inner().to_string());
        ProviderError::invalid(field, rule)
    })
}

/// `Err(InvalidConfig { field, rule })` unless `ok`.
pub fn ensure(ok: bool, field: &str, rule: impl Into<String>) -> Result<(), ProviderError> {
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(field, rule))
    }
}

/// An optional integer field: `default` when absent, else it must lie in `min..=max`
/// (`must be an integer from {min} to {max}`).
pub fn bounded(
    value: Option<u64>,
    field: &str,
    (min, max): (u64, u64),
    default: u64,
) -> Result<u64, ProviderError> {
    let value = value.unwrap_or(default);
    ensure(
        (min..=max).contains(&value),
        field,
        format!("must be an integer from {min} to {max}"),
    )?;
    Ok(value)
}

/// A blank string (empty or whitespace only) counts as unset.
pub fn non_blank(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

/// The path as `a.b[0].c`; the root is the empty string.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else if path == key || path.ends_with(&format!(".{key}")) {
        path.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The first `` `name` `` in a serde message.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The names listed after `expected` (`one of`) in a serde message, without backticks.
fn listed(message: &str) -> String {
    message
        .split_once("expected ")
        .map(|(_, list)| list.trim_start_matches("one of ").replace('`', ""))
        .unwrap_or_default()
}

/// serde's wording of an expected shape, in the words of a JSON document.
fn shape(expected: &str) -> String {
    let numeric = |prefix: char| {
        expected.len() > 1
            && expected.starts_with(prefix)
            && (expected[1..].chars().all(|c| c.is_ascii_digit()) || &expected[1..] == "size")
    };
    if numeric('u') {
        "a non-negative integer".into()
    } else if numeric('i') {
        "an integer".into()
    } else if numeric('f') {
        "a number".into()
    } else if expected == "a map" || expected.starts_with("struct ") {
        "a JSON object".into()
    } else if expected == "a sequence" {
        "a list".into()
    } else {
        expected.to_string()
    }
}

/// Turns serde's message at `path` into (field, rule).
fn describe(path: String, message: &str) -> (String, String) {
    if message.starts_with("missing field") {
        if let Some(name) = quoted(message) {
            return (join(&path, name), "is required".into());
        }
    }
    if message.starts_with("unknown field") {
        if let Some(name) = quoted(message) {
            let known = listed(message);
            let rule = if known.is_empty() {
                "is not a known field".to_string()
            } else {
                format!("is not a known field (known: {known})")
            };
            return (join(&path, name), rule);
        }
    }
    if message.starts_with("unknown variant") {
        let rule = match message.split_once("expected ") {
            Some((_, expected)) => format!("must be {}", expected.replace("one of ", "one of: ")),
            None => message.to_string(),
        };
        return (path, rule);
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        if let Some((_, expected)) = message.rsplit_once(", expected ") {
            return (path, format!("must be {}", shape(expected)));
        }
    }
    (path, message.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        role: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        name: String,
        count: Option<u64>,
        env: Option<BTreeMap<String, String>>,
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
        flag: Option<bool>,
    }

    fn error(value: Value) -> (String, String) {
        match parse_config::<Config>(&value).unwrap_err() {
            ProviderError::InvalidConfig { field, message } => (field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_path_and_the_rule() {
        let e = |v: Value| error(v);
        assert_eq!(e(json!([])), ("".into(), "must be a JSON object".into()));
        assert_eq!(e(json!({})), ("name".into(), "is required".into()));
        assert_eq!(
            e(json!({"name": 1})),
            ("name".into(), "must be a string".into())
        );
        assert_eq!(
            e(json!({"name": "n", "count": -1})),
            ("count".into(), "must be a non-negative integer".into())
        );
        assert_eq!(
            e(json!({"name": "n", "env": {"A": 1}})),
            ("env.A".into(), "must be a string".into())
        );
        assert_eq!(
            e(json!({"name": "n", "env": "A=1"})),
            ("env".into(), "must be a JSON object".into())
        );
        assert_eq!(
            e(json!({"name": "n", "flag": "yes"})),
            ("flag".into(), "must be a boolean".into())
        );
        assert_eq!(
            e(json!({"name": "n", "list": [{}, {"role": 3}]})),
            ("list[1].role".into(), "must be a string".into())
        );
        let (field, rule) = e(json!({"name": "n", "inner": {"rol": "x"}}));
        assert_eq!(field, "inner.rol");
        assert!(rule.contains("(known: role)"), "{rule}");
        let (field, rule) = e(json!({"name": "n", "nmae": 1}));
        assert_eq!(field, "nmae");
        assert!(rule.starts_with("is not a known field"), "{rule}");
    }

    #[test]
    fn nulls_are_absent_values() {
        let c: Config = parse_config(&json!({"name": "n", "count": null, "env": null})).unwrap();
        assert_eq!((c.count, c.env), (None, None));
    }

    #[test]
    fn rule_helpers() {
        assert_eq!(bounded(None, "n", (1, 5), 3).unwrap(), 3);
        let err = bounded(Some(9), "n", (1, 5), 3).unwrap_err();
        assert_eq!(
            err,
            ProviderError::invalid("n", "must be an integer from 1 to 5")
        );
        assert_eq!(non_blank(Some("  ".into())), None);
        assert_eq!(non_blank(Some("a".into())).as_deref(), Some("a"));
        assert!(ensure(false, "x", "rule").is_err());
    }
}
