//! The example provider against the contract ([`pushpool_provider::conformance`]) and its own rules.

use std::sync::Arc;
use std::time::Duration;

use pushpool_provider::conformance::{self, RecordedLogs};
use pushpool_provider::{JobStatus, LogStream, Lookup, ProviderError};
use serde_json::json;

use super::*;

/// The job configuration the default template renders with its defaults.
fn defaults() -> Value {
    json!({"message": "hello from the example provider", "sleep_ms": 0, "fail": false})
}

#[tokio::test]
async fn runs_to_completed_and_writes_its_message() {
    let provider = ExampleProvider::new();
    conformance::check_template(&provider).unwrap();
    let logs = Arc::new(RecordedLogs::default());
    let run = conformance::run_spec(logs.clone());
    let (id, end) = conformance::run_to_end(&provider, &run, &defaults(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(end, JobStatus::Completed { summary: None });
    assert_eq!(id, ExampleProvider::infrastructure_id(&run));
    assert!(logs.has(LogStream::Stdout, "hello from the example provider"));
}

#[tokio::test]
async fn fails_when_told_and_stops_when_cancelled() {
    let provider = ExampleProvider::new();
    let run = conformance::run_spec(Arc::new(RecordedLogs::default()));
    let failing = json!({"message": "bye", "fail": true});
    let (_, end) = conformance::run_to_end(&provider, &run, &failing, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(end, JobStatus::Failed { .. }), "{end:?}");
    conformance::check_cancel(&provider, &json!({"message": "slow", "sleep_ms": 60_000}))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_retried_submission_adopts_the_job() {
    let provider = ExampleProvider::new();
    let run = conformance::run_spec(Arc::new(RecordedLogs::default()));
    let job = Provider::validate(&provider, &json!({"message": "m", "sleep_ms": 60_000})).unwrap();
    assert_eq!(provider.lookup(&run, &job).await.unwrap(), Lookup::Absent);
    let first = provider.submit(&run, &job).await.unwrap();
    assert_eq!(provider.submit(&run, &job).await.unwrap(), first);
    assert_eq!(
        provider.lookup(&run, &job).await.unwrap(),
        Lookup::Found(first)
    );
}

#[test]
fn bad_configurations_name_the_field_and_the_rule() {
    let provider = ExampleProvider::new();
    let cases = [
        (json!({}), "message", "is required"),
        (json!({"message": " "}), "message", "must not be empty"),
        (
            json!({"message": "m", "sleep_ms": -1}),
            "sleep_ms",
            "must be a non-negative integer",
        ),
        (
            json!({"message": "m", "sleep_ms": 60_001}),
            "sleep_ms",
            "must be at most 60000",
        ),
        (
            json!({"message": "m", "fail": "yes"}),
            "fail",
            "must be a boolean",
        ),
    ];
    for (rendered, field, rule) in cases {
        let message = conformance::check_rejects(&provider, &rendered, field).unwrap();
        assert_eq!(message, rule, "{rendered}");
    }
    let message = conformance::check_rejects(
        &provider,
        &json!({"message": "m", "sleeep_ms": 1}),
        "sleeep_ms",
    )
    .unwrap();
    assert!(message.starts_with("is not a known field"), "{message}");
}

#[test]
fn the_signing_key_is_secret() {
    let provider = ExampleProvider::new();
    assert_eq!(Provider::secret_fields(&provider), ["signing_key"]);
    let job =
        Provider::validate(&provider, &json!({"message": "m", "signing_key": "k-123"})).unwrap();
    assert!(!format!("{job:?}").contains("k-123"));
}

#[tokio::test]
async fn a_busy_provider_answers_a_retriable_error() {
    let provider = ExampleProvider::new();
    let job = Provider::validate(&provider, &json!({"message": "m", "sleep_ms": 60_000})).unwrap();
    for _ in 0..MAX_RUNNING {
        let run = conformance::run_spec(Arc::new(RecordedLogs::default()));
        provider.submit(&run, &job).await.unwrap();
    }
    let run = conformance::run_spec(Arc::new(RecordedLogs::default()));
    let err = provider.submit(&run, &job).await.unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
    assert!(matches!(
        err,
        ProviderError::Transient {
            retry_after: Some(_),
            ..
        }
    ));
}
