//! The typed job configuration of the `cloud-run-v2:push` provider and its validation.
//!
//! The job configuration has Prefect's `cloud-run-v2` shape (`command`, `env`, `labels`, `name`,
//! `credentials`, `region`, `timeout`, `keep_job`, `job_body`) plus pushpool's own fields
//! (`project`, `endpoint_url`, `watchdog_grace_seconds`); a `base_job_template` exported from a
//! Prefect `cloud-run-v2` work pool is therefore accepted as is.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use pushpool_provider::{ProviderError, Secret};
use serde_json::{json, Map, Value};

/// The default base job template, as written in `templates/cloud-run-v2.json`.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../templates/cloud-run-v2.json");

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

/// Fields of the job configuration this provider reads.
const KNOWN: &[&str] = &[
    "command",
    "env",
    "labels",
    "name",
    "credentials",
    "region",
    "timeout",
    "keep_job",
    "job_body",
    "project",
    "endpoint_url",
    "watchdog_grace_seconds",
    "env_from_secrets",
    "cloudsql_instances",
    "prefect_api_key_secret",
    "prefect_api_auth_string_secret",
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
    /// A key identifying these credentials in the token cache (no secret in it).
    pub(crate) fn cache_key(&self) -> String {
        match self {
            Credentials::ApplicationDefault => "adc".into(),
            Credentials::Anonymous => "anonymous".into(),
            Credentials::ServiceAccountFile(p) => format!("file:{p}"),
            Credentials::ServiceAccountInfo(s) => {
                let v: Value = serde_json::from_str(s.expose()).unwrap_or(Value::Null);
                format!(
                    "info:{}:{}",
                    v["client_email"].as_str().unwrap_or(""),
                    v["private_key_id"].as_str().unwrap_or("")
                )
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
}

impl CloudRunJobConfig {
    /// The task timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// How long an execution may run before the watchdog calls it timed out.
    pub fn watchdog_window(&self) -> Duration {
        Duration::from_secs(
            self.timeout_seconds
                .saturating_mul(self.max_retries.saturating_add(1))
                .saturating_add(self.watchdog_grace_seconds),
        )
    }

    /// Checks a rendered job configuration and turns it into a [`CloudRunJobConfig`]; pure, no I/O.
    ///
    /// Absent or `null` optional fields take their defaults; empty strings count as unset.
    /// Unknown fields are refused, so a misspelt field is not silently dropped.
    pub fn from_rendered(rendered: &Value) -> Result<Self, ProviderError> {
        let obj = rendered
            .as_object()
            .ok_or_else(|| ProviderError::invalid("", "must be a JSON object"))?;
        if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ProviderError::invalid(
                unknown.clone(),
                format!(
                    "is not a field of the cloud-run-v2:push job configuration (known: {})",
                    KNOWN.join(", ")
                ),
            ));
        }
        for unsupported in [
            "cloudsql_instances",
            "prefect_api_key_secret",
            "prefect_api_auth_string_secret",
        ] {
            if let Some(v) = present(obj, unsupported) {
                let empty = v.as_array().is_some_and(|a| a.is_empty())
                    || v.as_object().is_some_and(|o| o.is_empty());
                if !empty {
                    return Err(ProviderError::invalid(
                        unsupported,
                        "is not supported by pushpool's cloud-run-v2:push provider (pushpool passes PUSHPOOL_RUN_TOKEN instead of a Prefect API key; mount Cloud SQL through job_body)",
                    ));
                }
            }
        }

        let credentials_value = present(obj, "credentials");
        let (credentials, credentials_project) = parse_credentials(credentials_value)?;
        let project = optional_string(obj, "project")?.or(credentials_project);
        if let Some(p) = &project {
            if !p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | ':' | '.')
            }) {
                return Err(ProviderError::invalid(
                    "project",
                    "must be a Google Cloud project id (lowercase letters, digits, `-`)",
                ));
            }
        }
        let region = optional_string(obj, "region")?.unwrap_or_else(|| DEFAULT_REGION.into());
        if !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ProviderError::invalid(
                "region",
                "must be a Cloud Run region such as `us-central1`",
            ));
        }
        let timeout_seconds = optional_u64(obj, "timeout")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(ProviderError::invalid(
                "timeout",
                format!("must be between 1 and {MAX_TIMEOUT_SECONDS} seconds (Cloud Run's 7 days)"),
            ));
        }
        let keep_job = match present(obj, "keep_job") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ProviderError::invalid("keep_job", "must be true or false")),
        };
        let watchdog_grace_seconds =
            optional_u64(obj, "watchdog_grace_seconds")?.unwrap_or(DEFAULT_WATCHDOG_GRACE_SECONDS);
        if watchdog_grace_seconds > MAX_WATCHDOG_GRACE_SECONDS {
            return Err(ProviderError::invalid(
                "watchdog_grace_seconds",
                format!("must be at most {MAX_WATCHDOG_GRACE_SECONDS}"),
            ));
        }
        let endpoint_url = optional_string(obj, "endpoint_url")?
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if !(endpoint_url.starts_with("https://") || endpoint_url.starts_with("http://")) {
            return Err(ProviderError::invalid(
                "endpoint_url",
                "must be an http(s) URL such as `https://run.googleapis.com`",
            ));
        }
        let env = string_map(obj, "env")?;
        let labels = string_map(obj, "labels")?;
        for (k, v) in &labels {
            if !valid_label(k, true) || !valid_label(v, false) {
                return Err(ProviderError::invalid(
                    format!("labels.{k}"),
                    "label keys must start with a lowercase letter; keys and values use lowercase letters, digits, `_` and `-`, at most 63 characters",
                ));
            }
        }

        let mut job_body = match present(obj, "job_body") {
            Some(Value::Object(m)) => m.clone(),
            None => {
                return Err(ProviderError::invalid(
                    "job_body",
                    "is required: the Cloud Run v2 Job body (see templates/cloud-run-v2.json)",
                ))
            }
            Some(_) => return Err(ProviderError::invalid("job_body", "must be a JSON object")),
        };
        if let Some(stage) = job_body.get("launchStage") {
            match stage.as_str() {
                Some("" | "LAUNCH_TAG_UNSPECIFIED" | "LAUNCH_STAGE_UNSPECIFIED") => {
                    job_body.remove("launchStage");
                }
                Some(s) if LAUNCH_STAGES.contains(&s) => {}
                _ => {
                    return Err(ProviderError::invalid(
                        "job_body.launchStage",
                        format!("must be one of {}", LAUNCH_STAGES.join(", ")),
                    ))
                }
            }
        }
        let task = job_body
            .get_mut("template")
            .and_then(|t| t.get_mut("template"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                ProviderError::invalid(
                    "job_body.template.template",
                    "is required: the task template (containers, timeout, maxRetries, …)",
                )
            })?;
        task.insert("timeout".into(), json!(format!("{timeout_seconds}s")));
        let max_retries = match task.get("maxRetries") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| *n <= 10)
                .ok_or_else(|| {
                    ProviderError::invalid(
                        "job_body.template.template.maxRetries",
                        "must be an integer between 0 and 10",
                    )
                })?,
        };
        task.insert("maxRetries".into(), json!(max_retries));
        for key in ["serviceAccount", "executionEnvironment", "encryptionKey"] {
            if task.get(key).is_some_and(|v| v.is_null() || v == "") {
                task.remove(key);
            }
        }
        // Prefect's rule: a vpcAccess block whose connector is unset goes away.
        let drop_vpc = match task.get("vpcAccess") {
            None => false,
            Some(Value::Object(v)) => {
                v.is_empty()
                    || (v.len() == 1 && v.get("connector").is_some_and(|c| c.is_null() || c == ""))
            }
            Some(v) => v.is_null() || v == "",
        };
        if drop_vpc {
            task.remove("vpcAccess");
        }
        let containers = task
            .get_mut("containers")
            .and_then(Value::as_array_mut)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ProviderError::invalid(
                    "job_body.template.template.containers",
                    "must list at least one container",
                )
            })?;
        let first = containers[0].as_object_mut().ok_or_else(|| {
            ProviderError::invalid(
                "job_body.template.template.containers[0]",
                "must be a JSON object",
            )
        })?;
        match first.get("image").and_then(Value::as_str) {
            Some(i) if !i.trim().is_empty() => {}
            _ => {
                return Err(ProviderError::invalid(
                    "image",
                    "is required: the container image of the Cloud Run job (job_body.template.template.containers[0].image)",
                ))
            }
        }
        for key in ["command", "args"] {
            let field = format!("job_body.template.template.containers[0].{key}");
            // Prefect's rule: a command/args string is split like a shell would.
            let value = match first.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => Some(
                    shell_split(s)
                        .ok_or_else(|| ProviderError::invalid(&field, "has an unclosed quote"))?,
                ),
                Some(Value::Array(a)) if a.is_empty() => None,
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            ProviderError::invalid(&field, "must be a list of strings")
                        })?,
                ),
                Some(_) => {
                    return Err(ProviderError::invalid(
                        &field,
                        "must be a string or a list of strings",
                    ))
                }
            };
            match value {
                Some(v) => {
                    first.insert(key.into(), json!(v));
                }
                None => {
                    first.remove(key);
                }
            }
        }
        match first.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items
                    .iter()
                    .any(|i| i.get("name").and_then(Value::as_str).is_none())
                {
                    return Err(ProviderError::invalid(
                        "job_body.template.template.containers[0].env",
                        "items must be objects with a `name`",
                    ));
                }
            }
            Some(_) => {
                return Err(ProviderError::invalid(
                    "job_body.template.template.containers[0].env",
                    "must be a list of {name, value} objects",
                ))
            }
        }
        if let Some(secrets) = present(obj, "env_from_secrets") {
            let secrets = secrets.as_object().ok_or_else(|| {
                ProviderError::invalid(
                    "env_from_secrets",
                    "must be an object NAME -> {secret, version}",
                )
            })?;
            let env_list = first.entry("env").or_insert_with(|| json!([]));
            if env_list.is_null() {
                *env_list = json!([]);
            }
            for (name, source) in secrets {
                let secret = source["secret"].as_str().ok_or_else(|| {
                    ProviderError::invalid(format!("env_from_secrets.{name}.secret"), "is required")
                })?;
                let version = source["version"].as_str().unwrap_or("latest");
                if let Some(list) = env_list.as_array_mut() {
                    list.push(json!({"name": name, "valueSource": {"secretKeyRef": {"secret": secret, "version": version}}}));
                }
            }
        }

        Ok(CloudRunJobConfig {
            project,
            region,
            timeout_seconds,
            keep_job,
            watchdog_grace_seconds,
            endpoint_url,
            credentials,
            env,
            labels,
            job_body,
            max_retries,
        })
    }
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ProviderError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ProviderError::invalid(key, "must be a string")),
    }
}

fn optional_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ProviderError> {
    match present(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_str()
                    .and_then(|s| s.trim_end_matches('s').parse().ok())
            })
            .map(Some)
            .ok_or_else(|| ProviderError::invalid(key, "must be a non-negative integer")),
    }
}

fn string_map(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut out = BTreeMap::new();
    match present(obj, key) {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => continue,
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => {
                        return Err(ProviderError::invalid(
                            format!("{key}.{k}"),
                            "must be a string",
                        ))
                    }
                };
                out.insert(k.clone(), v);
            }
        }
        Some(_) => return Err(ProviderError::invalid(key, "must be an object of strings")),
    }
    Ok(out)
}

fn valid_label(s: &str, key: bool) -> bool {
    s.len() <= 63
        && (!key || s.starts_with(|c: char| c.is_ascii_lowercase()))
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Reads Prefect's `credentials` (a GcpCredentials block's fields) or pushpool's own form.
fn parse_credentials(
    value: Option<&Value>,
) -> Result<(Credentials, Option<String>), ProviderError> {
    let Some(value) = value else {
        return Ok((Credentials::ApplicationDefault, None));
    };
    let obj = value.as_object().ok_or_else(|| {
        ProviderError::invalid(
            "credentials",
            "must be an object: {} (Application Default Credentials), {\"anonymous\": true}, {\"service_account_file\": PATH} or {\"service_account_info\": {…}}, optionally with \"project\"",
        )
    })?;
    // A Prefect block reference cannot be resolved here: Application Default Credentials are used.
    if obj.contains_key("$ref") {
        return Ok((Credentials::ApplicationDefault, None));
    }
    const FIELDS: &[&str] = &[
        "anonymous",
        "project",
        "service_account_file",
        "service_account_info",
        "block_type_slug",
    ];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ProviderError::invalid(
            format!("credentials.{k}"),
            format!("is not a credentials field (known: {})", FIELDS.join(", ")),
        ));
    }
    let project = present(obj, "project")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let anonymous = matches!(present(obj, "anonymous"), Some(Value::Bool(true)));
    let file = present(obj, "service_account_file")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let info = present(obj, "service_account_info")
        .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()));
    let chosen = [anonymous, file.is_some(), info.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if chosen > 1 {
        return Err(ProviderError::invalid(
            "credentials",
            "give at most one of anonymous, service_account_file, service_account_info",
        ));
    }
    if let Some(info) = info {
        let key_project = info["project_id"].as_str().map(str::to_string);
        if info["private_key"].as_str().is_none() || info["client_email"].as_str().is_none() {
            return Err(ProviderError::invalid(
                "credentials.service_account_info",
                "must be a service-account key (with client_email and private_key)",
            ));
        }
        return Ok((
            Credentials::ServiceAccountInfo(Secret::new(info.to_string())),
            project.or(key_project),
        ));
    }
    if let Some(file) = file {
        return Ok((Credentials::ServiceAccountFile(file.to_string()), project));
    }
    if anonymous {
        return Ok((Credentials::Anonymous, project));
    }
    Ok((Credentials::ApplicationDefault, project))
}

/// Splits a command line like a POSIX shell (quotes and backslashes; no expansion).
pub fn shell_split(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}
