//! The typed job configuration of the `cloud-run-v2:push` provider and its validation.
//!
//! The job configuration has Prefect's `cloud-run-v2` shape (`command`, `env`, `labels`, `name`,
//! `credentials`, `region`, `timeout`, `keep_job`, `job_body`) plus pushpool's own fields
//! (`project`, `endpoint_url`, `watchdog_grace_seconds`); a `base_job_template` exported from a
//! Prefect `cloud-run-v2` work pool is therefore accepted as is.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use pushpool_provider::config::parse_field;
use pushpool_provider::{ensure, non_blank, parse_config, Cloud, Need, ProviderError, Secret};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::body;

/// The default base job template of the `cloud-run-v2:push` pool type (this crate's
/// `template.json`, which `templates/cloud-run-v2.json` links to).
pub const DEFAULT_TEMPLATE: &str = include_str!("../template.json");

/// Default region (Prefect's default).
pub const DEFAULT_REGION: &str = "us-central1";
/// Default task timeout in seconds (Prefect's default).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 600;
/// Longest task timeout Cloud Run accepts (7 days).
pub const MAX_TIMEOUT_SECONDS: u64 = 604_800;
/// Default for [`CloudRunJobConfig::watchdog_grace_seconds`].
pub const DEFAULT_WATCHDOG_GRACE_SECONDS: u64 = 300;
/// Largest accepted [`CloudRunJobConfig::watchdog_grace_seconds`].
pub const MAX_WATCHDOG_GRACE_SECONDS: u64 = 86_400;
/// Default for [`CloudRunJobConfig::job_retention_days`].
pub const DEFAULT_JOB_RETENTION_DAYS: u64 = 7;
/// Largest accepted [`CloudRunJobConfig::job_retention_days`].
pub const MAX_JOB_RETENTION_DAYS: u64 = 3650;
/// The public Cloud Run Admin API endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://run.googleapis.com";

/// Launch stages Cloud Run knows (Prefect's `launch_stage` choices).
pub const LAUNCH_STAGES: &[&str] = &[
    "ALPHA",
    "BETA",
    "GA",
    "DEPRECATED",
    "EARLY_ACCESS",
    "PRELAUNCH",
    "UNIMPLEMENTED",
    "LAUNCH_STAGE_UNSPECIFIED",
    "LAUNCH_TAG_UNSPECIFIED",
];

/// How the provider authenticates to the Cloud Run Admin API.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS` (service-account key or
    /// authorized-user file), gcloud's `application_default_credentials.json`, else the metadata
    /// server (on Google Cloud).
    #[default]
    ApplicationDefault,
    /// No `Authorization` header (tests, private endpoints behind their own authentication).
    Anonymous,
    /// A service-account key file on the controller's disk.
    ServiceAccountFile(String),
    /// A service-account key given inline (Prefect's `service_account_info`); never printed.
    ServiceAccountInfo(Secret),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ApplicationDefault => f.write_str("ApplicationDefault"),
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::ServiceAccountFile(p) => write!(f, "ServiceAccountFile({p:?})"),
            Credentials::ServiceAccountInfo(_) => f.write_str("ServiceAccountInfo([redacted])"),
        }
    }
}

impl Credentials {
    /// A key identifying these credentials in the client/token cache: a SHA-256 of the whole
    /// inline key, never the secret itself. Why the whole key: `client_email` and
    /// `private_key_id` are public (they travel in every JWT header), so a workspace copying them
    /// with a junk key must not share (or poison) another workspace's cached client.
    pub(crate) fn cache_key(&self) -> String {
        use sha2::{Digest as _, Sha256};
        match self {
            Credentials::ApplicationDefault => "adc".into(),
            Credentials::Anonymous => "anonymous".into(),
            Credentials::ServiceAccountFile(p) => format!("file:{p}"),
            Credentials::ServiceAccountInfo(s) => {
                let digest = Sha256::digest(s.expose().as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("info-sha256:{hex}")
            }
        }
    }
}

/// A validated job configuration for the `cloud-run-v2:push` provider.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudRunJobConfig {
    /// Google Cloud project; `None` = from the credentials or `GOOGLE_CLOUD_PROJECT` at submit time.
    pub project: Option<String>,
    /// Cloud Run region.
    pub region: String,
    /// Task timeout in seconds (written to `template.template.timeout` as `"<n>s"`).
    pub timeout_seconds: u64,
    /// Keep the Cloud Run job after the run ended.
    pub keep_job: bool,
    /// With `keep_job`: days a kept job stays before the sweep deletes it (0 = never).
    pub job_retention_days: u64,
    /// Added to `timeout × (maxRetries + 1)` before a still-running execution is declared timed out.
    pub watchdog_grace_seconds: u64,
    /// Admin API endpoint (default `https://run.googleapis.com`).
    pub endpoint_url: String,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Extra environment of the first container (before pushpool's own variables).
    pub env: BTreeMap<String, String>,
    /// Labels added to the job.
    pub labels: BTreeMap<String, String>,
    /// The Cloud Run v2 `Job` body, with command/args/timeout/vpcAccess normalised; the env of the
    /// first container is filled in at submit time.
    pub job_body: Map<String, Value>,
    /// `maxRetries` of the task template (for the watchdog window).
    pub max_retries: u64,
    /// `taskCount` of the execution template (1 when unset).
    pub task_count: u64,
    /// `parallelism` of the execution template (0 when unset: as many as the quota allows).
    pub parallelism: u64,
}

impl CloudRunJobConfig {
    /// The task timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// How long an execution of this job may run before the watchdog calls it timed out:
    /// `ceil(taskCount / parallelism) × timeout × (maxRetries + 1) + watchdog_grace_seconds`
    /// (an unknown parallelism counts as 1). An execution's own counts take precedence at
    /// status time ([`crate::status::watchdog_window`]).
    pub fn watchdog_window(&self) -> Duration {
        crate::status::watchdog_window(&Value::Null, self).duration()
    }

    /// Checks a rendered job configuration and turns it into a [`CloudRunJobConfig`]; pure, no I/O.
    ///
    /// Absent or `null` optional fields take their defaults; blank strings count as unset.
    /// Unknown fields are refused, so a misspelt field is not silently dropped.
    pub fn from_rendered(rendered: &Value) -> Result<Self, ProviderError> {
        let fields: Fields = parse_config(rendered)?;
        for (field, value) in [
            ("cloudsql_instances", &fields.cloudsql_instances),
            ("prefect_api_key_secret", &fields.prefect_api_key_secret),
            (
                "prefect_api_auth_string_secret",
                &fields.prefect_api_auth_string_secret,
            ),
        ] {
            let empty = match value {
                None => true,
                Some(v) => {
                    v.as_array().is_some_and(|a| a.is_empty())
                        || v.as_object().is_some_and(|o| o.is_empty())
                }
            };
            ensure(
                empty,
                field,
                "is not supported by pushpool's cloud-run-v2:push provider (pushpool passes PUSHPOOL_RUN_TOKEN instead of a Prefect API key; mount Cloud SQL through job_body)",
            )?;
        }

        let (credentials, credentials_project) = parse_credentials(fields.credentials.as_ref())?;
        let project = trimmed(fields.project).or(credentials_project);
        if let Some(p) = &project {
            ensure(
                p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | ':' | '.')
                }),
                "project",
                "must be a Google Cloud project id (lowercase letters, digits, `-`)",
            )?;
        }
        let region = trimmed(fields.region).unwrap_or_else(|| DEFAULT_REGION.into());
        ensure(
            region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "region",
            "must be a Cloud Run region such as `us-central1`",
        )?;
        let timeout_seconds = fields.timeout.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        ensure(
            (1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds),
            "timeout",
            format!("must be between 1 and {MAX_TIMEOUT_SECONDS} seconds (Cloud Run's 7 days)"),
        )?;
        let watchdog_grace_seconds = fields
            .watchdog_grace_seconds
            .unwrap_or(DEFAULT_WATCHDOG_GRACE_SECONDS);
        ensure(
            watchdog_grace_seconds <= MAX_WATCHDOG_GRACE_SECONDS,
            "watchdog_grace_seconds",
            format!("must be at most {MAX_WATCHDOG_GRACE_SECONDS}"),
        )?;
        let endpoint_url = trimmed(fields.endpoint_url)
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        ensure(
            endpoint_url.starts_with("https://") || endpoint_url.starts_with("http://"),
            "endpoint_url",
            "must be an http(s) URL such as `https://run.googleapis.com`",
        )?;
        let labels = fields.labels.map(lenient_map).unwrap_or_default();
        for (k, v) in &labels {
            ensure(
                valid_label(k, true) && valid_label(v, false),
                &format!("labels.{k}"),
                "label keys must start with a lowercase letter; keys and values use lowercase letters, digits, `_` and `-`, at most 63 characters",
            )?;
        }
        let job_body = fields.job_body.ok_or_else(|| {
            ProviderError::invalid(
                "job_body",
                "is required: the Cloud Run v2 Job body (see this provider's template.json)",
            )
        })?;
        let (job_body, max_retries) =
            body::normalise(job_body, timeout_seconds, fields.env_from_secrets)?;
        let execution_template = &job_body["template"];
        let task_count = execution_count(execution_template, "taskCount")?.unwrap_or(1);
        let parallelism = execution_count(execution_template, "parallelism")?.unwrap_or(0);
        let job_retention_days = fields
            .job_retention_days
            .unwrap_or(DEFAULT_JOB_RETENTION_DAYS);
        ensure(
            job_retention_days <= MAX_JOB_RETENTION_DAYS,
            "job_retention_days",
            format!("must be between 0 (keep for ever) and {MAX_JOB_RETENTION_DAYS} days"),
        )?;

        Ok(CloudRunJobConfig {
            project,
            region,
            timeout_seconds,
            keep_job: fields.keep_job.unwrap_or(false),
            job_retention_days,
            watchdog_grace_seconds,
            endpoint_url,
            credentials,
            env: fields.env.map(lenient_map).unwrap_or_default(),
            labels,
            job_body,
            max_retries,
            task_count,
            parallelism,
        })
    }
}

/// `taskCount` / `parallelism` of the execution template: absent, or a non-negative integer.
fn execution_count(template: &Value, key: &str) -> Result<Option<u64>, ProviderError> {
    match &template[key] {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(Some)
            .ok_or_else(|| {
                ProviderError::invalid(
                    format!("job_body.template.{key}"),
                    "must be a non-negative integer",
                )
            }),
    }
}

/// The job configuration as rendered (Prefect's `cloud-run-v2` fields plus pushpool's own);
/// every field may be absent or `null`, unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    /// Prefect's top-level `command` and `name` are rendered into `job_body`; accepted, unused.
    #[serde(rename = "command")]
    _command: Option<IgnoredAny>,
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    env: Option<BTreeMap<String, LenientString>>,
    labels: Option<BTreeMap<String, LenientString>>,
    credentials: Option<Value>,
    region: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    timeout: Option<u64>,
    keep_job: Option<bool>,
    #[serde(default, deserialize_with = "whole_number")]
    job_retention_days: Option<u64>,
    job_body: Option<Map<String, Value>>,
    project: Option<String>,
    endpoint_url: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    watchdog_grace_seconds: Option<u64>,
    env_from_secrets: Option<BTreeMap<String, body::SecretSource>>,
    cloudsql_instances: Option<Value>,
    prefect_api_key_secret: Option<Value>,
    prefect_api_auth_string_secret: Option<Value>,
}

/// A string map value as Prefect templates write them: numbers and booleans are taken as their
/// text, `null` drops the entry.
#[derive(Deserialize)]
#[serde(try_from = "Value")]
struct LenientString(Option<String>);

impl TryFrom<Value> for LenientString {
    type Error = &'static str;
    fn try_from(value: Value) -> Result<Self, Self::Error> {
        match value {
            Value::String(s) => Ok(LenientString(Some(s))),
            Value::Null => Ok(LenientString(None)),
            Value::Number(_) | Value::Bool(_) => Ok(LenientString(Some(value.to_string()))),
            _ => Err("must be a string"),
        }
    }
}

fn lenient_map(map: BTreeMap<String, LenientString>) -> BTreeMap<String, String> {
    map.into_iter()
        .filter_map(|(k, v)| v.0.map(|v| (k, v)))
        .collect()
}

/// A non-negative integer (or its text).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("must be a non-negative integer")),
    }
}

/// Seconds as a number or as Cloud Run writes durations (`"600"`, `"600s"`).
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    match value {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_str()
                    .and_then(|s| s.trim_end_matches('s').parse().ok())
            })
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("must be a non-negative integer")),
    }
}

/// A trimmed, non-blank string.
fn trimmed(value: Option<String>) -> Option<String> {
    non_blank(value).map(|s| s.trim().to_string())
}

fn valid_label(s: &str, key: bool) -> bool {
    s.len() <= 63
        && (!key || s.starts_with(|c: char| c.is_ascii_lowercase()))
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Prefect's `credentials` (a GcpCredentials block's fields) or pushpool's own form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFields {
    /// A Prefect block reference cannot be resolved here: Application Default Credentials are used.
    #[serde(rename = "$ref")]
    block_reference: Option<IgnoredAny>,
    anonymous: Option<bool>,
    project: Option<String>,
    service_account_file: Option<String>,
    service_account_info: Option<Map<String, Value>>,
    #[serde(rename = "block_type_slug")]
    _block_type_slug: Option<IgnoredAny>,
}

/// What a rendered (possibly defaults-only) job configuration relies on: Application Default
/// Credentials (the controller's own Google identity) when it names no key of its own, a key file
/// on the controller's disk, an endpoint other than the public Admin API. Lenient: reads only
/// `credentials` and `endpoint_url`.
pub fn needs(rendered: &Value) -> Vec<Need> {
    let text = pushpool_provider::present_text;
    let credentials = rendered.get("credentials").filter(|c| c.is_object());
    let get = |k: &str| credentials.and_then(|c| c.get(k));
    let mut out = vec![];
    let has_info = get("service_account_info")
        .and_then(Value::as_object)
        .is_some_and(|o| !o.is_empty());
    if get("$ref").is_none() && text(get("service_account_file")).is_some() {
        out.push(Need::HostFile {
            field: "credentials.service_account_file".into(),
        });
    } else if get("$ref").is_some()
        || !(has_info || get("anonymous").and_then(Value::as_bool) == Some(true))
    {
        out.push(Need::AmbientIdentity {
            cloud: Cloud::Gcp,
            field: "credentials".into(),
            how_to_fix: "give the pool its own service-account key: {\"service_account_info\": {…the key JSON…}} as the default of the `credentials` variable (or in each deployment's job variables)",
        });
    }
    if let Some(url) = text(rendered.get("endpoint_url")) {
        let url = url.trim_end_matches('/').to_string();
        if url != DEFAULT_ENDPOINT {
            out.push(Need::Endpoint {
                field: "endpoint_url".into(),
                url,
            });
        }
    }
    out
}

/// Reads the `credentials` object: how to authenticate, and the project it names, if any.
fn parse_credentials(
    value: Option<&Value>,
) -> Result<(Credentials, Option<String>), ProviderError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok((Credentials::ApplicationDefault, None));
    };
    ensure(
        value.is_object(),
        "credentials",
        "must be an object: {} (Application Default Credentials), {\"anonymous\": true}, {\"service_account_file\": PATH} or {\"service_account_info\": {…}}, optionally with \"project\"",
    )?;
    let fields: CredentialFields = parse_field(value, "credentials")?;
    if fields.block_reference.is_some() {
        return Ok((Credentials::ApplicationDefault, None));
    }
    let project = non_blank(fields.project);
    let anonymous = fields.anonymous == Some(true);
    let file = non_blank(fields.service_account_file);
    let info = fields.service_account_info.filter(|o| !o.is_empty());
    let chosen = [anonymous, file.is_some(), info.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    ensure(
        chosen <= 1,
        "credentials",
        "give at most one of anonymous, service_account_file, service_account_info",
    )?;
    if let Some(info) = info {
        let key_project = info
            .get("project_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        ensure(
            info.get("private_key").is_some_and(Value::is_string)
                && info.get("client_email").is_some_and(Value::is_string),
            "credentials.service_account_info",
            "must be a service-account key (with client_email and private_key)",
        )?;
        return Ok((
            Credentials::ServiceAccountInfo(Secret::new(Value::Object(info).to_string())),
            project.or(key_project),
        ));
    }
    if let Some(file) = file {
        return Ok((Credentials::ServiceAccountFile(file), project));
    }
    if anonymous {
        return Ok((Credentials::Anonymous, project));
    }
    Ok((Credentials::ApplicationDefault, project))
}

#[cfg(test)]
mod needs_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn needs_name_adc_key_files_and_endpoints() {
        let info = json!({"credentials": {"service_account_info": {"client_email": "a", "private_key": "k"}}});
        assert!(needs(&info).is_empty());
        assert!(needs(&json!({"credentials": {"anonymous": true}})).is_empty());
        assert!(matches!(
            needs(&json!({}))[..],
            [Need::AmbientIdentity {
                cloud: Cloud::Gcp,
                ..
            }]
        ));
        assert!(matches!(
            needs(&json!({"credentials": {"$ref": {"block_document_id": "x"}}}))[..],
            [Need::AmbientIdentity { .. }]
        ));
        assert!(matches!(
            needs(&json!({"credentials": {"service_account_file": "/etc/key.json"}}))[..],
            [Need::HostFile { .. }]
        ));
        assert!(needs(&json!({"credentials": {"anonymous": true}, "endpoint_url": "https://run.googleapis.com/"})).is_empty());
        assert_eq!(
            needs(
                &json!({"credentials": {"anonymous": true}, "endpoint_url": "http://evil.example"})
            ),
            vec![Need::Endpoint {
                field: "endpoint_url".into(),
                url: "http://evil.example".into()
            }]
        );
    }
}
