//! The typed job configuration of the `process` provider and its validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pushpool_provider::{ensure, non_blank, parse_config, ProviderError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default base job template of the `process` pool type (this crate's `template.json`, which
/// `templates/process.json` links to).
pub const DEFAULT_TEMPLATE: &str = include_str!("../template.json");

/// Default for [`ProcessJobConfig::max_log_bytes`]: 1 MiB.
pub const DEFAULT_MAX_LOG_BYTES: usize = 1024 * 1024;

/// Smallest accepted [`ProcessJobConfig::max_log_bytes`].
pub const MIN_MAX_LOG_BYTES: usize = 1024;

/// A validated job configuration for the `process` provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessJobConfig {
    /// Shell command, run as `sh -c <command>`.
    pub command: String,
    /// Environment variables for the process. Nothing of the controller's environment is
    /// passed on: the process gets `PATH`, `HOME`, `TMPDIR`, these and the `PUSHPOOL_*` ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directory to run in (also readable and writable under the sandbox); the job's private
    /// per-run directory when unset.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// More paths the sandbox lets the job read and execute (never pushpool's data directory).
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    /// More paths the sandbox lets the job read and write (never pushpool's data directory).
    #[serde(default)]
    pub write_paths: Vec<PathBuf>,
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
            read_paths: Vec::new(),
            write_paths: Vec::new(),
            name: None,
            labels: BTreeMap::new(),
            stream_output: true,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        }
    }

    /// Checks a rendered job configuration and turns it into a [`ProcessJobConfig`]; pure, no I/O.
    ///
    /// Absent or `null` optional fields take their defaults; a blank `working_dir` or `name`
    /// counts as unset. Unknown fields are ignored.
    pub fn from_rendered(rendered: &Value) -> Result<Self, ProviderError> {
        let fields: Fields = parse_config(rendered)?;
        let command = fields.command.ok_or_else(|| {
            ProviderError::invalid("command", "is required: the shell command to run")
        })?;
        ensure(
            !command.trim().is_empty(),
            "command",
            "must not be empty: the shell command to run",
        )?;
        let max_log_bytes = fields.max_log_bytes.unwrap_or(DEFAULT_MAX_LOG_BYTES as u64);
        ensure(
            max_log_bytes >= MIN_MAX_LOG_BYTES as u64,
            "max_log_bytes",
            format!("must be an integer of at least {MIN_MAX_LOG_BYTES}"),
        )?;
        Ok(ProcessJobConfig {
            command,
            env: fields.env.unwrap_or_default(),
            working_dir: non_blank(fields.working_dir).map(PathBuf::from),
            read_paths: absolute_paths("read_paths", fields.read_paths)?,
            write_paths: absolute_paths("write_paths", fields.write_paths)?,
            name: non_blank(fields.name),
            labels: fields.labels.unwrap_or_default(),
            stream_output: fields.stream_output.unwrap_or(true),
            max_log_bytes: usize::try_from(max_log_bytes).unwrap_or(usize::MAX),
        })
    }
}

/// Checks that every path of `field` is absolute (the sandbox rules need them so).
fn absolute_paths(field: &str, paths: Option<Vec<String>>) -> Result<Vec<PathBuf>, ProviderError> {
    let paths = paths.unwrap_or_default();
    for (i, p) in paths.iter().enumerate() {
        ensure(
            p.starts_with('/'),
            &format!("{field}[{i}]"),
            "must be an absolute path",
        )?;
    }
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

/// The job configuration as rendered; every field may be absent or `null`.
#[derive(Deserialize)]
struct Fields {
    command: Option<String>,
    env: Option<BTreeMap<String, String>>,
    working_dir: Option<String>,
    read_paths: Option<Vec<String>>,
    write_paths: Option<Vec<String>>,
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stream_output: Option<bool>,
    max_log_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use pushpool_provider::conformance::field_and_rule as field_of;
    use serde_json::json;

    use super::*;

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
            (
                json!({"command": "x", "read_paths": ["rel"]}),
                "read_paths[0]",
            ),
            (json!({"command": "x", "write_paths": "/x"}), "write_paths"),
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
