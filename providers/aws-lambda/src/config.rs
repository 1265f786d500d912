//! The typed job configuration of the `aws-lambda:push` provider and its validation.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use pushpool_provider::{ProviderError, Secret};
use serde_json::{Map, Value};

use crate::payload;

/// The default base job template, as written in `templates/aws-lambda.json`.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../templates/aws-lambda.json");

/// Default for [`LambdaJobConfig::timeout_seconds`]: Lambda's longest function timeout.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 900;
/// Largest accepted [`LambdaJobConfig::timeout_seconds`].
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// Default for [`LambdaJobConfig::watchdog_grace_seconds`].
pub const DEFAULT_WATCHDOG_GRACE_SECONDS: u64 = 120;
/// Largest accepted [`LambdaJobConfig::watchdog_grace_seconds`].
pub const MAX_WATCHDOG_GRACE_SECONDS: u64 = 86_400;
/// Default for [`LambdaJobConfig::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Largest accepted [`LambdaJobConfig::max_attempts`].
pub const MAX_MAX_ATTEMPTS: u32 = 10;

/// How the function is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    /// Synchronous: the call returns the function's result.
    RequestResponse,
    /// Asynchronous: Lambda queues the event and answers 202 at once.
    Event,
}

impl InvocationType {
    /// The name Lambda uses (`RequestResponse` or `Event`).
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationType::RequestResponse => "RequestResponse",
            InvocationType::Event => "Event",
        }
    }
}

/// Where credentials come from, on top of the standard chain.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CredentialsConfig {
    /// Profile in the shared config and credentials files.
    pub profile_name: Option<String>,
    /// Role to assume with STS.
    pub role_arn: Option<String>,
    /// Session name for the assumed role.
    pub role_session_name: Option<String>,
    /// External id required by the role's trust policy (treated as a secret: never printed).
    pub external_id: Option<String>,
}

impl fmt::Debug for CredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsConfig")
            .field("profile_name", &self.profile_name)
            .field("role_arn", &self.role_arn)
            .field("role_session_name", &self.role_session_name)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|s| Secret::new(s.clone())),
            )
            .finish()
    }
}

/// A validated job configuration for the `aws-lambda:push` provider.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaJobConfig {
    /// Function name, full ARN or partial ARN.
    pub function_name: String,
    /// Version or alias.
    pub qualifier: Option<String>,
    /// Synchronous or asynchronous invocation.
    pub invocation_type: InvocationType,
    /// Payload template (an object; built-in placeholders are filled in at submit time).
    pub payload: Map<String, Value>,
    /// Values passed in the payload's `env` object.
    pub env: BTreeMap<String, String>,
    /// RequestResponse: deadline for the result; Event: the function's timeout.
    pub timeout_seconds: u64,
    /// Added to the timeout before a run with no word is crashed.
    pub watchdog_grace_seconds: u64,
    /// AWS region.
    pub region: Option<String>,
    /// Custom endpoint for Lambda, SQS and STS.
    pub endpoint_url: Option<String>,
    /// SQS queue receiving destination records (Event only).
    pub result_queue_url: Option<String>,
    /// Profile / role settings.
    pub credentials: CredentialsConfig,
    /// SDK attempts per API call.
    pub max_attempts: u32,
}

impl LambdaJobConfig {
    /// A configuration invoking `function_name` synchronously with every other field at its default.
    pub fn new(function_name: impl Into<String>) -> Self {
        LambdaJobConfig {
            function_name: function_name.into(),
            qualifier: None,
            invocation_type: InvocationType::RequestResponse,
            payload: default_payload(),
            env: BTreeMap::new(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            watchdog_grace_seconds: DEFAULT_WATCHDOG_GRACE_SECONDS,
            region: None,
            endpoint_url: None,
            result_queue_url: None,
            credentials: CredentialsConfig::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// The deadline for a synchronous result.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// How long after the submission a job with no word is declared crashed.
    pub fn watchdog_window(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds + self.watchdog_grace_seconds)
    }

    /// Checks a rendered job configuration and turns it into a [`LambdaJobConfig`]; pure, no I/O.
    ///
    /// Absent or `null` optional fields take their defaults; empty strings count as unset.
    /// Unknown fields are refused, so a misspelt field is not silently dropped.
    pub fn from_rendered(rendered: &Value) -> Result<Self, ProviderError> {
        let obj = rendered
            .as_object()
            .ok_or_else(|| ProviderError::invalid("", "must be a JSON object"))?;
        const KNOWN: &[&str] = &[
            "function_name",
            "qualifier",
            "invocation_type",
            "payload",
            "env",
            "timeout_seconds",
            "watchdog_grace_seconds",
            "region",
            "endpoint_url",
            "result_queue_url",
            "credentials",
            "max_attempts",
        ];
        if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ProviderError::invalid(
                unknown.clone(),
                format!(
                    "is not a field of the aws-lambda:push job configuration (known: {})",
                    KNOWN.join(", ")
                ),
            ));
        }

        let function_name = match optional_string(obj, "function_name")? {
            None => {
                return Err(ProviderError::invalid(
                    "function_name",
                    "is required: the name or ARN of the Lambda function to invoke",
                ))
            }
            Some(name) => name,
        };
        check_function_name(&function_name)?;

        let qualifier = optional_string(obj, "qualifier")?;
        if let Some(q) = &qualifier {
            if q.len() > 128
                || !q
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '$' | '-' | '_'))
            {
                return Err(ProviderError::invalid(
                    "qualifier",
                    "must be a version number, an alias name or `$LATEST` (letters, digits, `-`, `_`, `$`; at most 128 characters)",
                ));
            }
        }

        let invocation_type = match optional_string(obj, "invocation_type")?.as_deref() {
            None | Some("RequestResponse") => InvocationType::RequestResponse,
            Some("Event") => InvocationType::Event,
            Some(other) => {
                return Err(ProviderError::invalid(
                    "invocation_type",
                    format!("must be `RequestResponse` or `Event`, not `{other}` (DryRun is not a way to run a job)"),
                ))
            }
        };

        let payload = match present(obj, "payload") {
            None => default_payload(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => {
                return Err(ProviderError::invalid(
                    "payload",
                    "must be a JSON object (pushpool adds the run's `env` to it)",
                ))
            }
        };
        payload::check_placeholders(&Value::Object(payload.clone()), "payload")?;

        let env = string_map(obj, "env")?;
        let timeout_seconds = bounded_int(
            obj,
            "timeout_seconds",
            1,
            MAX_TIMEOUT_SECONDS,
            DEFAULT_TIMEOUT_SECONDS,
        )?;
        let watchdog_grace_seconds = bounded_int(
            obj,
            "watchdog_grace_seconds",
            0,
            MAX_WATCHDOG_GRACE_SECONDS,
            DEFAULT_WATCHDOG_GRACE_SECONDS,
        )?;
        let max_attempts = bounded_int(
            obj,
            "max_attempts",
            1,
            u64::from(MAX_MAX_ATTEMPTS),
            u64::from(DEFAULT_MAX_ATTEMPTS),
        )? as u32;

        let region = optional_string(obj, "region")?;
        if let Some(r) = &region {
            if !r
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(ProviderError::invalid(
                    "region",
                    "must look like an AWS region name, e.g. `us-east-1`",
                ));
            }
        }
        let endpoint_url = optional_string(obj, "endpoint_url")?;
        if let Some(url) = &endpoint_url {
            check_url(url, "endpoint_url")?;
        }
        let result_queue_url = optional_string(obj, "result_queue_url")?;
        if let Some(url) = &result_queue_url {
            check_url(url, "result_queue_url")?;
        }
        let credentials = credentials(obj)?;

        Ok(LambdaJobConfig {
            function_name,
            qualifier,
            invocation_type,
            payload,
            env,
            timeout_seconds,
            watchdog_grace_seconds,
            region,
            endpoint_url,
            result_queue_url,
            credentials,
            max_attempts,
        })
    }
}

/// The payload the default template sends: run id, attempt, parameters, API URL and run token.
pub fn default_payload() -> Map<String, Value> {
    let template: Value = serde_json::from_str(DEFAULT_TEMPLATE)
        .expect("templates/aws-lambda.json is valid JSON (checked by tests)");
    template["variables"]["properties"]["payload"]["default"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn check_function_name(name: &str) -> Result<(), ProviderError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '$' | '.'));
    if name.len() > 170 || !ok_chars {
        return Err(ProviderError::invalid(
            "function_name",
            "must be a function name, a full ARN or a partial ARN (letters, digits, `-`, `_`, `:`, `.`, `$`; at most 170 characters)",
        ));
    }
    Ok(())
}

fn check_url(url: &str, field: &str) -> Result<(), ProviderError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(()),
        _ => Err(ProviderError::invalid(
            field,
            "must be an http:// or https:// URL",
        )),
    }
}

fn credentials(obj: &Map<String, Value>) -> Result<CredentialsConfig, ProviderError> {
    let map = match present(obj, "credentials") {
        None => return Ok(CredentialsConfig::default()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ProviderError::invalid(
                "credentials",
                "must be an object (profile_name, role_arn, role_session_name, external_id)",
            ))
        }
    };
    let mut out = CredentialsConfig::default();
    for (key, value) in map {
        let field = format!("credentials.{key}");
        let slot = match key.as_str() {
            "profile_name" => &mut out.profile_name,
            "role_arn" => &mut out.role_arn,
            "role_session_name" => &mut out.role_session_name,
            "external_id" => &mut out.external_id,
            "aws_access_key_id" | "aws_secret_access_key" | "aws_session_token" => {
                return Err(ProviderError::invalid(
                    field,
                    "static keys are not accepted in a job template (it is readable by every user of the pool); give the controller credentials through its environment, a profile or a role",
                ))
            }
            _ => {
                return Err(ProviderError::invalid(
                    field,
                    "is not a credentials setting (profile_name, role_arn, role_session_name, external_id)",
                ))
            }
        };
        *slot = match value {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            _ => return Err(ProviderError::invalid(field, "must be a string")),
        };
    }
    if let Some(arn) = &out.role_arn {
        if !arn.starts_with("arn:") || !arn.contains(":role/") {
            return Err(ProviderError::invalid(
                "credentials.role_arn",
                "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
            ));
        }
    }
    Ok(out)
}

/// The field's value, treating `null` like an absent field.
fn present<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ProviderError> {
    match present(obj, field) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProviderError::invalid(field, "must be a string")),
    }
}

fn bounded_int(
    obj: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ProviderError> {
    match present(obj, field) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ProviderError::invalid(field, format!("must be an integer from {min} to {max}"))
            }),
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
        let cfg = LambdaJobConfig::from_rendered(&json!({"function_name": "f"})).unwrap();
        assert_eq!(cfg, LambdaJobConfig::new("f"));
        assert_eq!(cfg.invocation_type, InvocationType::RequestResponse);
        assert_eq!(cfg.timeout_seconds, 900);
        assert_eq!(cfg.watchdog_window(), Duration::from_secs(1020));
        assert_eq!(cfg.payload["flow_run_id"], "{{ flow_run.id }}");
    }

    #[test]
    fn full_config_is_parsed() {
        let cfg = LambdaJobConfig::from_rendered(&json!({
            "function_name": "arn:aws:lambda:eu-west-1:123456789012:function:f",
            "qualifier": "$LATEST", "invocation_type": "Event",
            "payload": {"id": "{{ flow_run.id }}", "x": [1, "a-{{ flow_run.attempt }}"]},
            "env": {"A": "1"}, "timeout_seconds": 5, "watchdog_grace_seconds": 0,
            "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000",
            "result_queue_url": "http://127.0.0.1:5000/123456789012/q",
            "credentials": {"profile_name": "dev", "role_arn": "arn:aws:iam::123456789012:role/r",
                            "external_id": "shh", "role_session_name": null},
            "max_attempts": 1
        }))
        .unwrap();
        assert_eq!(cfg.invocation_type, InvocationType::Event);
        assert_eq!(cfg.env["A"], "1");
        assert_eq!(cfg.watchdog_window(), Duration::from_secs(5));
        assert_eq!(cfg.credentials.profile_name.as_deref(), Some("dev"));
        assert_eq!(cfg.max_attempts, 1);
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("shh"), "{printed}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "function_name"),
            (json!({"function_name": ""}), "function_name"),
            (json!({"function_name": "a/b"}), "function_name"),
            (json!({"function_name": 3}), "function_name"),
            (
                json!({"function_name": "f", "qualifier": "a b"}),
                "qualifier",
            ),
            (
                json!({"function_name": "f", "invocation_type": "DryRun"}),
                "invocation_type",
            ),
            (json!({"function_name": "f", "payload": "x"}), "payload"),
            (
                json!({"function_name": "f", "payload": {"a": {"b": "{{ nope }}"}}}),
                "payload.a.b",
            ),
            (json!({"function_name": "f", "env": {"A": 1}}), "env.A"),
            (
                json!({"function_name": "f", "timeout_seconds": 0}),
                "timeout_seconds",
            ),
            (
                json!({"function_name": "f", "timeout_seconds": 3601}),
                "timeout_seconds",
            ),
            (
                json!({"function_name": "f", "max_attempts": 11}),
                "max_attempts",
            ),
            (json!({"function_name": "f", "region": "US EAST"}), "region"),
            (
                json!({"function_name": "f", "endpoint_url": "localhost:4566"}),
                "endpoint_url",
            ),
            (
                json!({"function_name": "f", "credentials": {"aws_secret_access_key": "x"}}),
                "credentials.aws_secret_access_key",
            ),
            (
                json!({"function_name": "f", "credentials": {"role_arn": "r"}}),
                "credentials.role_arn",
            ),
            (json!({"function_name": "f", "fucntion": 1}), "fucntion"),
            (json!([]), ""),
        ];
        for (value, field) in cases {
            let (f, _) = field_of(LambdaJobConfig::from_rendered(&value).unwrap_err());
            assert_eq!(f, field, "for {value}");
        }
    }

    #[test]
    fn static_keys_are_refused_without_echoing_them() {
        let err = LambdaJobConfig::from_rendered(&json!({
            "function_name": "f", "credentials": {"aws_secret_access_key": "TOPSECRET"}
        }))
        .unwrap_err();
        assert!(!err.to_string().contains("TOPSECRET"));
    }
}
