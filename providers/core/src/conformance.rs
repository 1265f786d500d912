//! Checks a provider against the contract of this crate, for the provider crate's own tests.
//!
//! ```text
//! #[tokio::test]
//! async fn conforms() {
//!     let provider = MyProvider::new();
//!     conformance::check_template(&provider).unwrap();
//!     let (_, end) = conformance::run_to_end(&provider, &json!({...}), Duration::from_secs(5))
//!         .await
//!         .unwrap();
//!     assert_eq!(end, JobStatus::Completed { summary: None });
//! }
//! ```
//!
//! The checks answer `Err(description)` instead of panicking, so a test can say which provider
//! and which input broke the contract.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::{CancelOutcome, DynProvider, JobStatus, LogSink, LogStream, ProviderError, RunSpec};

/// How often [`run_to_end`] polls the status.
const POLL: Duration = Duration::from_millis(20);

/// A [`LogSink`] that keeps every line, for assertions.
#[derive(Debug, Default)]
pub struct RecordedLogs(Mutex<Vec<(LogStream, String)>>);

impl RecordedLogs {
    /// The lines recorded so far.
    pub fn lines(&self) -> Vec<(LogStream, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True when exactly `text` was recorded on `stream`.
    pub fn has(&self, stream: LogStream, text: &str) -> bool {
        self.lines().iter().any(|(s, l)| *s == stream && l == text)
    }
}

impl LogSink for RecordedLogs {
    fn line(&self, stream: LogStream, line: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((stream, line));
    }
}

/// A [`RunSpec`] for tests: a fresh run id, attempt 1, logs into `logs`.
pub fn run_spec(logs: Arc<dyn LogSink>) -> RunSpec {
    RunSpec {
        run_id: Uuid::new_v4(),
        attempt: 1,
        workspace: "conformance".into(),
        work_pool: "conformance".into(),
        deployment: "conformance".into(),
        parameters: json!({}),
        api_url: "http://127.0.0.1:9".into(),
        run_token: crate::Secret::new("ppr_conformance_token"),
        logs,
    }
}

/// The default base job template is `{"job_configuration": {…}, "variables": {"properties": …}}`,
/// every variable placeholder of the job configuration is declared, the provider's secret fields
/// are plain key names, and a non-object configuration is refused at the root.
pub fn check_template(provider: &dyn DynProvider) -> Result<(), String> {
    let pool_type = provider.pool_type();
    let template = provider.default_base_job_template();
    let config = template["job_configuration"]
        .as_object()
        .ok_or_else(|| format!("{pool_type}: job_configuration is not an object"))?;
    let declared = template["variables"]["properties"]
        .as_object()
        .ok_or_else(|| format!("{pool_type}: variables.properties is not an object"))?;
    for name in placeholders(&Value::Object(config.clone())) {
        // Dotted names (`flow_run.id`) are the built-in render context, not variables.
        if !name.contains('.') && !declared.contains_key(&name) {
            return Err(format!(
                "{pool_type}: placeholder `{{{{ {name} }}}}` has no variable"
            ));
        }
    }
    for field in provider.secret_fields() {
        if field.is_empty() || field.contains(|c: char| c.is_whitespace() || c == '.') {
            return Err(format!(
                "{pool_type}: secret field `{field}` is not a plain key name"
            ));
        }
    }
    match provider.validate(&json!("not an object")) {
        Err(ProviderError::InvalidConfig { field, .. }) if field.is_empty() => Ok(()),
        other => Err(format!(
            "{pool_type}: a non-object configuration gave {other:?}, not InvalidConfig at the root"
        )),
    }
}

/// The placeholder names (`{{ name }}`) in the strings of `value`.
fn placeholders(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s
            .split("{{")
            .skip(1)
            .filter_map(|rest| rest.split_once("}}"))
            .map(|(name, _)| name.trim().to_string())
            .collect(),
        Value::Array(items) => items.iter().flat_map(placeholders).collect(),
        Value::Object(map) => map.values().flat_map(placeholders).collect(),
        _ => vec![],
    }
}

/// The field and the rule of an [`ProviderError::InvalidConfig`]; panics on any other error
/// (for tests of a provider's configuration parser).
pub fn field_and_rule(err: ProviderError) -> (String, String) {
    match err.invalid_field() {
        Some((field, rule)) => (field.to_string(), rule.to_string()),
        None => panic!("expected InvalidConfig, got {err:?}"),
    }
}

/// `rendered` is refused with [`ProviderError::InvalidConfig`] naming `field`.
pub fn check_rejects(
    provider: &dyn DynProvider,
    rendered: &Value,
    field: &str,
) -> Result<String, String> {
    match provider.validate(rendered) {
        Err(ProviderError::InvalidConfig { field: f, message }) if f == field => Ok(message),
        other => Err(format!(
            "{}: {rendered} gave {other:?}, expected InvalidConfig at `{field}`",
            provider.pool_type()
        )),
    }
}

/// Validates `rendered`, submits it and polls the status until it is final (or `timeout`
/// passed), then cleans up. Answers the infrastructure id and the final status.
pub async fn run_to_end(
    provider: &dyn DynProvider,
    run: &RunSpec,
    rendered: &Value,
    timeout: Duration,
) -> Result<(String, JobStatus), String> {
    let pool_type = provider.pool_type();
    let job = provider
        .validate(rendered)
        .map_err(|e| format!("{pool_type}: validate: {e}"))?;
    let id = provider
        .submit(run, &job)
        .await
        .map_err(|e| format!("{pool_type}: submit: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = provider
            .status(&id, &job)
            .await
            .map_err(|e| format!("{pool_type}: status of `{id}`: {e}"))?;
        if status.is_final() {
            provider
                .cleanup(&id, &job)
                .await
                .map_err(|e| format!("{pool_type}: cleanup of `{id}`: {e}"))?;
            return Ok((id, status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{pool_type}: `{id}` still {status:?} after {timeout:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Submits `rendered` (a job that runs for a while), cancels it, and expects the job to end
/// CANCELLED; a second cancel must not fail.
pub async fn check_cancel(provider: &dyn DynProvider, rendered: &Value) -> Result<(), String> {
    let pool_type = provider.pool_type();
    let job = provider
        .validate(rendered)
        .map_err(|e| format!("{pool_type}: validate: {e}"))?;
    let run = run_spec(Arc::new(crate::DiscardLogs));
    let id = provider
        .submit(&run, &job)
        .await
        .map_err(|e| format!("{pool_type}: submit: {e}"))?;
    let grace = Duration::from_secs(1);
    let outcome = provider
        .cancel(&id, &job, grace)
        .await
        .map_err(|e| format!("{pool_type}: cancel: {e}"))?;
    if outcome != CancelOutcome::Cancelled {
        return Err(format!("{pool_type}: cancel answered {outcome:?}"));
    }
    let status = provider
        .status(&id, &job)
        .await
        .map_err(|e| format!("{pool_type}: status after cancel: {e}"))?;
    if status != JobStatus::Cancelled {
        return Err(format!("{pool_type}: status after cancel is {status:?}"));
    }
    provider
        .cancel(&id, &job, grace)
        .await
        .map_err(|e| format!("{pool_type}: second cancel: {e}"))?;
    Ok(())
}
