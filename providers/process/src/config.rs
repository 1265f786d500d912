//! The typed job configuration of the `process` provider and its validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pushpool_provider::ProviderError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The default base job template, as written in `templates/process.json`.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../templates/process.json");

/// Default for [`ProcessJobConfig::max_log_bytes`]: 1 MiB.
pub const DEFAULT_MAX_LOG_BYTES: usize = 1024 * 1024;

/// Smallest accepted [`ProcessJobConfig::max_log_bytes`].
pub const MIN_MAX_LOG_BYTES: usize = 1024;

/// A validated job configuration for the `process` provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessJobConfig {
    /// Shell command, run as `sh -c <command>`.
    pub command: String,
    /// Extra environment variables for the process (the controller's environment is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directory to run in; the controller's working directory when unset.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Name used in pushpool's own logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Informational labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether stdout and stderr are forwarded to the run's logs.
    #[serde(default = "default_stream_output")]
    pub stream_output: bool,
    /// How many bytes of output are forwarded before the rest is dropped.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: usize,
}

fn default_stream_output() -> bool {
    true
}

fn default_max_log_bytes() -> usize {
    DEFAULT_MAX_LOG_BYTES
}

impl ProcessJobConfig {
    /// A configuration running `command` with every other field at its default.
    pub fn new(command: impl Into<String>) -> Self {
        ProcessJobConfig {
            command: command.into(),
            env: BTreeMap::new(),
            working_dir: None,
            name: None,
            labels: BTreeMap::new(),
            stream_output: true,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        }
    }

    /// Checks a rendered job configuration and turns it into a [`ProcessJobConfig`]; pure, no I/O.
    ///
    /// Absent or `null` optional fields take their defaults; an empty `working_dir` or `name`
    /// counts as unset. Unknown fields are ignored.
    pub fn from_rendered(rendered: &Value) -> Result<Self, ProviderError> {
        let obj = rendered
            .as_object()
            .ok_or_else(|| ProviderError::invalid("", "must be a JSON object"))?;

        let command = match present(obj, "command") {
            None => {
                return Err(ProviderError::invalid(
                    "command",
                    "is required: the shell command to run",
                ))
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(ProviderError::invalid(
                    "command",
                    "must not be empty: the shell command to run",
                ))
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ProviderError::invalid("command", "must be a string")),
        };

        let env = string_map(obj, "env")?;
        let labels = string_map(obj, "labels")?;
        let working_dir = optional_string(obj, "working_dir")?.map(PathBuf::from);
        let name = optional_string(obj, "name")?;

        let stream_output = match present(obj, "stream_output") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ProviderError::invalid("stream_output", "must be a boolean")),
        };

        let max_log_bytes = match present(obj, "max_log_bytes") {
            None => DEFAULT_MAX_LOG_BYTES,
            Some(v) => {
                let rule = format!("must be an integer of at least {MIN_MAX_LOG_BYTES}");
                let n = v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| ProviderError::invalid("max_log_bytes", rule.clone()))?;
                if n < MIN_MAX_LOG_BYTES {
                    return Err(ProviderError::invalid("max_log_bytes", rule));
                }
                n
            }
        };

        Ok(ProcessJobConfig {
            command,
            env,
            working_dir,
            name,
            labels,
            stream_output,
            max_log_bytes,
        })
    }
}

/// The field's value, treating `null` like an absent field.
fn present<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ProviderError> {
    match present(obj, field) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProviderError::invalid(field, "must be a string")),
    }
}

fn string_map(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, ProviderError> {
    match present(obj, field) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ProviderError::invalid(
                    format!("{field}.{k}"),
                    "must be a string",
                )),
            })
            .collect(),
        Some(_) => Err(ProviderError::invalid(
            field,
            "must be an object mapping names to string values",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(err: ProviderError) -> (String, String) {
        match err {
            ProviderError::InvalidConfig { field, message } => (field, message),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let cfg = ProcessJobConfig::from_rendered(&json!({"command": "echo hi"})).unwrap();
        assert_eq!(cfg, ProcessJobConfig::new("echo hi"));
        assert!(cfg.stream_output);
        assert_eq!(cfg.max_log_bytes, 1_048_576);
    }

    #[test]
    fn nulls_and_empty_strings_are_unset() {
        let cfg = ProcessJobConfig::from_rendered(&json!({
            "command": "true", "env": null, "working_dir": "", "name": null,
            "labels": null, "stream_output": null, "max_log_bytes": null
        }))
        .unwrap();
        assert_eq!(cfg, ProcessJobConfig::new("true"));
    }

    #[test]
    fn full_config_is_parsed() {
        let cfg = ProcessJobConfig::from_rendered(&json!({
            "command": "run", "env": {"A": "1"}, "working_dir": "/tmp", "name": "job",
            "labels": {"team": "data"}, "stream_output": false, "max_log_bytes": 2048,
            "unknown": 1
        }))
        .unwrap();
        assert_eq!(cfg.env["A"], "1");
        assert_eq!(cfg.working_dir, Some(PathBuf::from("/tmp")));
        assert_eq!(cfg.name.as_deref(), Some("job"));
        assert_eq!(cfg.labels["team"], "data");
        assert!(!cfg.stream_output);
        assert_eq!(cfg.max_log_bytes, 2048);
    }

    #[test]
    fn command_errors_name_the_field() {
        let (f, m) = field_of(ProcessJobConfig::from_rendered(&json!({})).unwrap_err());
        assert_eq!(f, "command");
        assert!(m.contains("is required"), "{m}");

        let (f, m) = field_of(ProcessJobConfig::from_rendered(&json!({"command": 5})).unwrap_err());
        assert_eq!(f, "command");
        assert_eq!(m, "must be a string");

        let (f, m) =
            field_of(ProcessJobConfig::from_rendered(&json!({"command": "  \n"})).unwrap_err());
        assert_eq!(f, "command");
        assert!(m.contains("must not be empty"), "{m}");
    }

    #[test]
    fn other_field_errors() {
        let cases = [
            (json!({"command": "x", "env": "A=1"}), "env"),
            (json!({"command": "x", "env": {"A": 1}}), "env.A"),
            (json!({"command": "x", "labels": [1]}), "labels"),
            (json!({"command": "x", "working_dir": 3}), "working_dir"),
            (json!({"command": "x", "name": true}), "name"),
            (
                json!({"command": "x", "stream_output": "yes"}),
                "stream_output",
            ),
            (
                json!({"command": "x", "max_log_bytes": 10}),
                "max_log_bytes",
            ),
            (
                json!({"command": "x", "max_log_bytes": -5}),
                "max_log_bytes",
            ),
            (
                json!({"command": "x", "max_log_bytes": "big"}),
                "max_log_bytes",
            ),
            (json!("echo"), ""),
        ];
        for (value, field) in cases {
            let (f, _) = field_of(ProcessJobConfig::from_rendered(&value).unwrap_err());
            assert_eq!(f, field, "for {value}");
        }
    }

    #[test]
    fn serde_defaults_match_validation_defaults() {
        let cfg: ProcessJobConfig = serde_json::from_value(json!({"command": "x"})).unwrap();
        assert_eq!(cfg, ProcessJobConfig::new("x"));
    }
}
