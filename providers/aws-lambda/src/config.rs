//! The typed job configuration of the `aws-lambda:push` provider and its validation.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use pushpool_provider::{
    bounded, ensure, non_blank, parse_config, Cloud, Need, ProviderError, Secret,
};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::payload;

/// The default base job template of the `aws-lambda:push` pool type (this crate's
/// `template.json`, which `templates/aws-lambda.json` links to).
pub const DEFAULT_TEMPLATE: &str = include_str!("../template.json");

/// Default for [`LambdaJobConfig::timeout_seconds`]: Lambda's longest function timeout.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 900;
/// Largest accepted [`LambdaJobConfig::timeout_seconds`].
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// Default for [`LambdaJobConfig::watchdog_grace_seconds`].
pub const DEFAULT_WATCHDOG_GRACE_SECONDS: u64 = 120;
/// Largest accepted [`LambdaJobConfig::watchdog_grace_seconds`].
pub const MAX_WATCHDOG_GRACE_SECONDS: u64 = 86_400;
/// Default for [`LambdaJobConfig::maximum_retry_attempts`]: Lambda's own default for
/// asynchronous invocations (two retries).
pub const DEFAULT_MAXIMUM_RETRY_ATTEMPTS: u64 = 2;
/// Lambda's pauses before its retries of a failed asynchronous invocation: at least 1 minute
/// before the first, 2 minutes before the second ("Error handling and automatic retries").
pub const ASYNC_RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];
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
    /// External id passed on `AssumeRole`: never from the job template, always the workspace's
    /// ([`pushpool_provider::workspace_external_id`], set by [`LambdaJobConfig::in_workspace`]).
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
    /// SDK attempts per API call (asynchronous invocations and the results queue; a synchronous
    /// `Invoke` always gets one).
    pub max_attempts: u32,
    /// Event only: the function's asynchronous `MaximumRetryAttempts` (0–2), so the watchdog
    /// waits for every attempt Lambda makes.
    pub maximum_retry_attempts: u64,
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
            maximum_retry_attempts: DEFAULT_MAXIMUM_RETRY_ATTEMPTS,
        }
    }

    /// The deadline for a synchronous result.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// How long after the submission a job with no word is declared crashed:
    /// `timeout_seconds + watchdog_grace_seconds` for `RequestResponse`; for `Event` every attempt
    /// Lambda makes (1 + `maximum_retry_attempts`, each up to `timeout_seconds`) and its pauses
    /// between them (1 and 2 minutes), plus the grace. With the defaults (900 s, 2 retries, 120 s)
    /// that is 3,000 s.
    pub fn watchdog_window(&self) -> Duration {
        let grace = Duration::from_secs(self.watchdog_grace_seconds);
        match self.invocation_type {
            InvocationType::RequestResponse => self.timeout() + grace,
            InvocationType::Event => {
                let retries = self.maximum_retry_attempts.min(2) as usize;
                let attempts = self.timeout() * (retries as u32 + 1);
                let pauses: Duration = ASYNC_RETRY_DELAYS[..retries].iter().sum();
                attempts + pauses + grace
            }
        }
    }

    /// This configuration as submitted for workspace `workspace_id`: an assumed role gets the
    /// workspace's `ExternalId`.
    pub fn in_workspace(mut self, workspace_id: &str) -> Self {
        if self.credentials.role_arn.is_some() {
            self.credentials.external_id =
                Some(pushpool_provider::workspace_external_id(workspace_id));
        }
        self
    }

    /// Checks a rendered job configuration and turns it into a [`LambdaJobConfig`]; pure, no I/O.
    ///
    /// Absent or `null` optional fields take their defaults; blank strings count as unset.
    /// Unknown fields are refused, so a misspelt field is not silently dropped.
    pub fn from_rendered(rendered: &Value) -> Result<Self, ProviderError> {
        let fields: Fields = parse_config(rendered)?;
        let function_name = non_blank(fields.function_name).ok_or_else(|| {
            ProviderError::invalid(
                "function_name",
                "is required: the name or ARN of the Lambda function to invoke",
            )
        })?;
        ensure(
            function_name.len() <= 170
                && function_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '$' | '.')),
            "function_name",
            "must be a function name, a full ARN or a partial ARN (letters, digits, `-`, `_`, `:`, `.`, `$`; at most 170 characters)",
        )?;
        let qualifier = non_blank(fields.qualifier);
        if let Some(q) = &qualifier {
            ensure(
                q.len() <= 128
                    && q.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '$' | '-' | '_')),
                "qualifier",
                "must be a version number, an alias name or `$LATEST` (letters, digits, `-`, `_`, `$`; at most 128 characters)",
            )?;
        }
        let invocation_type = match non_blank(fields.invocation_type).as_deref() {
            None | Some("RequestResponse") => InvocationType::RequestResponse,
            Some("Event") => InvocationType::Event,
            Some(other) => {
                return Err(ProviderError::invalid(
                    "invocation_type",
                    format!("must be `RequestResponse` or `Event`, not `{other}` (DryRun is not a way to run a job)"),
                ))
            }
        };
        let payload = fields.payload.unwrap_or_else(default_payload);
        payload::check_placeholders(&Value::Object(payload.clone()), "payload")?;

        let region = non_blank(fields.region);
        if let Some(r) = &region {
            ensure(
                r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "region",
                "must look like an AWS region name, e.g. `us-east-1`",
            )?;
        }
        let endpoint_url = non_blank(fields.endpoint_url);
        check_url(endpoint_url.as_deref(), "endpoint_url")?;
        let result_queue_url = non_blank(fields.result_queue_url);
        check_url(result_queue_url.as_deref(), "result_queue_url")?;

        Ok(LambdaJobConfig {
            function_name,
            qualifier,
            invocation_type,
            payload,
            env: fields.env.unwrap_or_default(),
            timeout_seconds: bounded(
                fields.timeout_seconds,
                "timeout_seconds",
                (1, MAX_TIMEOUT_SECONDS),
                DEFAULT_TIMEOUT_SECONDS,
            )?,
            watchdog_grace_seconds: bounded(
                fields.watchdog_grace_seconds,
                "watchdog_grace_seconds",
                (0, MAX_WATCHDOG_GRACE_SECONDS),
                DEFAULT_WATCHDOG_GRACE_SECONDS,
            )?,
            region,
            endpoint_url,
            result_queue_url,
            credentials: fields
                .credentials
                .map(credentials)
                .transpose()?
                .unwrap_or_default(),
            max_attempts: bounded(
                fields.max_attempts.map(u64::from),
                "max_attempts",
                (1, u64::from(MAX_MAX_ATTEMPTS)),
                u64::from(DEFAULT_MAX_ATTEMPTS),
            )? as u32,
            maximum_retry_attempts: bounded(
                fields.maximum_retry_attempts,
                "maximum_retry_attempts",
                (0, 2),
                DEFAULT_MAXIMUM_RETRY_ATTEMPTS,
            )?,
        })
    }
}

/// The job configuration as rendered; every field may be absent or `null`, unknown fields are
/// refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    function_name: Option<String>,
    qualifier: Option<String>,
    invocation_type: Option<String>,
    payload: Option<Map<String, Value>>,
    env: Option<BTreeMap<String, String>>,
    timeout_seconds: Option<u64>,
    watchdog_grace_seconds: Option<u64>,
    region: Option<String>,
    endpoint_url: Option<String>,
    result_queue_url: Option<String>,
    credentials: Option<CredentialFields>,
    max_attempts: Option<u32>,
    maximum_retry_attempts: Option<u64>,
}

/// The `credentials` object. The static-key fields are read only to be refused with a reason
/// (their values are never kept or echoed).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFields {
    profile_name: Option<String>,
    role_arn: Option<String>,
    role_session_name: Option<String>,
    external_id: Option<String>,
    aws_access_key_id: Option<IgnoredAny>,
    aws_secret_access_key: Option<IgnoredAny>,
    aws_session_token: Option<IgnoredAny>,
}

/// The payload the default template sends: run id, attempt, parameters, API URL and run token.
pub fn default_payload() -> Map<String, Value> {
    let template = pushpool_provider::builtin_template(DEFAULT_TEMPLATE);
    template["variables"]["properties"]["payload"]["default"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// What a rendered (possibly defaults-only) job configuration relies on: the controller's own
/// AWS identity when it names no role to assume, the controller's shared config files for a
/// profile, a custom endpoint. Lenient: reads only `credentials` and `endpoint_url`.
pub fn needs(rendered: &Value) -> Vec<Need> {
    let text = pushpool_provider::present_text;
    let credentials = rendered.get("credentials");
    let mut out = vec![];
    if text(credentials.and_then(|c| c.get("profile_name"))).is_some() {
        out.push(Need::HostFile {
            field: "credentials.profile_name".into(),
        });
    } else if text(credentials.and_then(|c| c.get("role_arn"))).is_none() {
        out.push(Need::AmbientIdentity {
            cloud: Cloud::Aws,
            field: "credentials".into(),
            how_to_fix: "give the pool a role to assume: {\"role_arn\": \"arn:aws:iam::<account>:role/<name>\"} as the default of the `credentials` variable (or in each deployment's job variables), whose trust policy admits the controller's identity with the workspace's ExternalId",
        });
    }
    if let Some(url) = text(rendered.get("endpoint_url")) {
        out.push(Need::Endpoint {
            field: "endpoint_url".into(),
            url,
        });
    }
    out
}

fn check_url(url: Option<&str>, field: &str) -> Result<(), ProviderError> {
    let Some(url) = url else { return Ok(()) };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    ensure(
        rest.is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace)),
        field,
        "must be an http:// or https:// URL",
    )
}

fn credentials(fields: CredentialFields) -> Result<CredentialsConfig, ProviderError> {
    let static_keys = [
        ("aws_access_key_id", fields.aws_access_key_id.is_some()),
        (
            "aws_secret_access_key",
            fields.aws_secret_access_key.is_some(),
        ),
        ("aws_session_token", fields.aws_session_token.is_some()),
    ];
    if let Some((key, _)) = static_keys.iter().find(|(_, given)| *given) {
        return Err(ProviderError::invalid(
            format!("credentials.{key}"),
            "static keys are not accepted in a job template (it is readable by every user of the pool); give the controller credentials through its environment, a profile or a role",
        ));
    }
    // A tenant choosing the ExternalId could name another workspace's and assume its role.
    ensure(
        non_blank(fields.external_id).is_none(),
        "credentials.external_id",
        "is set by pushpool, not by the template: every AssumeRole passes the workspace's ExternalId `pushpool-<workspace id>` (shown as `aws_external_id` by `pushpool pool inspect`); remove it and require that value in the role's trust policy",
    )?;
    let out = CredentialsConfig {
        profile_name: non_blank(fields.profile_name),
        role_arn: non_blank(fields.role_arn),
        role_session_name: non_blank(fields.role_session_name),
        external_id: None,
    };
    if let Some(arn) = &out.role_arn {
        ensure(
            arn.starts_with("arn:") && arn.contains(":role/"),
            "credentials.role_arn",
            "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use pushpool_provider::conformance::field_and_rule as field_of;
    use serde_json::json;

    use super::*;

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
                            "role_session_name": null},
            "max_attempts": 1, "maximum_retry_attempts": 0
        }))
        .unwrap();
        assert_eq!(cfg.invocation_type, InvocationType::Event);
        assert_eq!(cfg.env["A"], "1");
        assert_eq!(cfg.maximum_retry_attempts, 0);
        assert_eq!(cfg.watchdog_window(), Duration::from_secs(5));
        assert_eq!(cfg.credentials.profile_name.as_deref(), Some("dev"));
        assert_eq!(cfg.max_attempts, 1);
        let cfg = cfg.in_workspace("shh");
        assert_eq!(cfg.credentials.external_id.as_deref(), Some("pushpool-shh"));
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
            (
                json!({"function_name": "f", "credentials": {"role_arn": "arn:aws:iam::1:role/r", "external_id": "other"}}),
                "credentials.external_id",
            ),
            (json!([]), ""),
        ];
        for (value, field) in cases {
            let (f, _) = field_of(LambdaJobConfig::from_rendered(&value).unwrap_err());
            assert_eq!(f, field, "for {value}");
        }
    }

    #[test]
    fn needs_name_ambient_identity_profiles_and_endpoints() {
        let role = json!({"credentials": {"role_arn": "arn:aws:iam::1:role/r"}});
        assert!(needs(&role).is_empty());
        assert!(matches!(
            needs(&json!({"credentials": null}))[..],
            [Need::AmbientIdentity {
                cloud: Cloud::Aws,
                ..
            }]
        ));
        assert!(matches!(
            needs(
                &json!({"credentials": {"profile_name": "p", "role_arn": "arn:aws:iam::1:role/r"}})
            )[..],
            [Need::HostFile { .. }]
        ));
        let with_endpoint = json!({"credentials": {"role_arn": "arn:aws:iam::1:role/r"}, "endpoint_url": "http://127.0.0.1:1"});
        assert_eq!(
            needs(&with_endpoint),
            vec![Need::Endpoint {
                field: "endpoint_url".into(),
                url: "http://127.0.0.1:1".into()
            }]
        );
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
