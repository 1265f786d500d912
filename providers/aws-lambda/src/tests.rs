use std::sync::Arc;

use pushpool_provider::{DiscardLogs, Secret};
use serde_json::json;

use super::*;

fn run() -> RunSpec {
    RunSpec {
        run_id: uuid::Uuid::now_v7(),
        attempt: 1,
        workspace: "w".into(),
        work_pool: "pool".into(),
        deployment: "dep".into(),
        parameters: json!({}),
        api_url: "http://127.0.0.1:1".into(),
        run_token: Secret::new("tok"),
        logs: Arc::new(DiscardLogs),
    }
}

fn id(mode: InvocationType, age: Duration) -> String {
    InfraId {
        mode,
        submitted_ms: now_ms() - age.as_millis() as u64,
        key: "req-1".into(),
        function: "arn:aws:lambda:us-east-1:123456789012:function:f:prod".into(),
    }
    .to_string()
}

#[test]
fn infra_ids_round_trip_with_arn_function_names() {
    let s = id(InvocationType::Event, Duration::ZERO);
    assert!(s.starts_with("aws-lambda:event:"), "{s}");
    let parsed: InfraId = s.parse().unwrap();
    assert_eq!(parsed.key, "req-1");
    assert_eq!(
        parsed.function,
        "arn:aws:lambda:us-east-1:123456789012:function:f:prod"
    );
    assert_eq!(parsed.to_string(), s);
    for bad in [
        "process:12",
        "aws-lambda:sync",
        "aws-lambda:other:1:k:f",
        "aws-lambda:sync:x:k:f",
        "aws-lambda:sync:1::f",
        "aws-lambda:sync:1:k:",
    ] {
        assert!(bad.parse::<InfraId>().is_err(), "{bad}");
    }
}

#[test]
fn default_template_is_valid_and_its_defaults_validate() {
    let t = AwsLambdaProvider::template();
    let props = t["variables"]["properties"].as_object().unwrap();
    // Every variable is used in the job configuration and vice versa.
    let config = t["job_configuration"].as_object().unwrap();
    for (k, v) in config {
        assert_eq!(v, &json!(format!("{{{{ {k} }}}}")));
        assert!(props.contains_key(k), "{k}");
    }
    assert_eq!(props.len(), config.len());
    let mut rendered = serde_json::Map::new();
    for (k, p) in props {
        if let Some(d) = p.get("default") {
            rendered.insert(k.clone(), d.clone());
        }
    }
    rendered.insert("function_name".into(), json!("f"));
    let cfg = LambdaJobConfig::from_rendered(&Value::Object(rendered)).unwrap();
    assert_eq!(cfg, LambdaJobConfig::new("f"));
}

#[tokio::test]
async fn sync_invocation_unknown_to_this_provider_is_unobservable_then_crashed() {
    let p = AwsLambdaProvider::new();
    let mut job = LambdaJobConfig::new("f");
    job.timeout_seconds = 2;
    job.watchdog_grace_seconds = 1;
    let fresh = id(InvocationType::RequestResponse, Duration::from_secs(1));
    assert_eq!(
        p.status(&fresh, &job).await.unwrap(),
        JobStatus::Unobservable
    );
    let old = id(InvocationType::RequestResponse, Duration::from_secs(4));
    match p.status(&old, &job).await.unwrap() {
        JobStatus::Crashed { message } => {
            assert!(
                message.contains("controller that made it stopped"),
                "{message}"
            );
            assert!(message.contains("= 3s"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn event_without_queue_is_running_until_the_watchdog() {
    let p = AwsLambdaProvider::new();
    let mut job = LambdaJobConfig::new("f");
    job.invocation_type = InvocationType::Event;
    job.timeout_seconds = 2;
    job.watchdog_grace_seconds = 0;
    job.maximum_retry_attempts = 0;
    let fresh = id(InvocationType::Event, Duration::ZERO);
    assert_eq!(p.status(&fresh, &job).await.unwrap(), JobStatus::Running);
    let old = id(InvocationType::Event, Duration::from_secs(3));
    match p.status(&old, &job).await.unwrap() {
        JobStatus::Crashed { message } => {
            assert!(message.contains("no word"), "{message}");
            assert!(message.contains("req-1"), "{message}");
            assert!(message.contains("no result_queue_url"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 16: Lambda retries a failed asynchronous invocation twice, at least 1 and 2 minutes
/// later ("Error handling and automatic retries"); by default the watchdog waits for all three
/// attempts and the pauses, so a run whose first attempt failed is not crashed while Lambda's
/// retry may still succeed.
#[tokio::test]
async fn event_watchdog_default_covers_lambdas_own_retries() {
    let p = AwsLambdaProvider::new();
    let mut job = LambdaJobConfig::new("f");
    job.invocation_type = InvocationType::Event;
    job.timeout_seconds = 60;
    assert_eq!(job.maximum_retry_attempts, 2, "Lambda's default");
    // 3 x 60 s + 60 s + 120 s + the default grace of 120 s.
    assert_eq!(job.watchdog_window(), Duration::from_secs(480));
    let during_first_retry = id(InvocationType::Event, Duration::from_secs(200));
    assert_eq!(
        p.status(&during_first_retry, &job).await.unwrap(),
        JobStatus::Running
    );
    let during_second_retry = id(InvocationType::Event, Duration::from_secs(400));
    assert_eq!(
        p.status(&during_second_retry, &job).await.unwrap(),
        JobStatus::Running
    );
    let after = id(InvocationType::Event, Duration::from_secs(481));
    match p.status(&after, &job).await.unwrap() {
        JobStatus::Crashed { message } => {
            assert!(message.contains("3 attempts"), "{message}");
            assert!(message.contains("= 480s"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The defaults: 3 x 900 s + 180 s + 120 s.
    let mut defaults = LambdaJobConfig::new("f");
    defaults.invocation_type = InvocationType::Event;
    assert_eq!(defaults.watchdog_window(), Duration::from_secs(3000));
    // A function configured without retries, and synchronous calls, wait one timeout.
    job.maximum_retry_attempts = 0;
    assert_eq!(job.watchdog_window(), Duration::from_secs(180));
    job.invocation_type = InvocationType::RequestResponse;
    job.maximum_retry_attempts = 2;
    assert_eq!(job.watchdog_window(), Duration::from_secs(180));
    let bad = json!({"function_name": "f", "maximum_retry_attempts": 3});
    assert!(LambdaJobConfig::from_rendered(&bad)
        .unwrap_err()
        .to_string()
        .contains("maximum_retry_attempts"));
}

#[tokio::test]
async fn cancel_is_unsupported_and_lookup_is_unknown() {
    let p = AwsLambdaProvider::new();
    let job = LambdaJobConfig::new("f");
    let s = id(InvocationType::Event, Duration::ZERO);
    assert_eq!(
        p.cancel(&s, &job, Duration::ZERO).await.unwrap(),
        CancelOutcome::Unsupported
    );
    assert_eq!(p.lookup(&run(), &job).await.unwrap(), Lookup::Unknown);
    assert!(p.status("process:12", &job).await.is_err());
}

#[tokio::test]
async fn oversized_payloads_are_refused_before_any_call() {
    let p = AwsLambdaProvider::new();
    let mut job = LambdaJobConfig::new("f");
    job.invocation_type = InvocationType::Event;
    job.endpoint_url = Some("http://127.0.0.1:9".into());
    job.region = Some("us-east-1".into());
    job.env
        .insert("BIG".into(), "x".repeat(ASYNC_PAYLOAD_LIMIT + 1));
    let err = p.submit(&run(), &job).await.unwrap_err();
    let (field, message) = pushpool_provider::conformance::field_and_rule(err);
    assert_eq!(field, "payload");
    assert!(message.contains("at most"), "{message}");
}

#[test]
fn default_template_conforms() {
    let p = AwsLambdaProvider::new();
    pushpool_provider::conformance::check_template(&p).unwrap();
    let message = pushpool_provider::conformance::check_rejects(
        &p,
        &json!({"function_name": "f", "timeout_seconds": "long"}),
        "timeout_seconds",
    )
    .unwrap();
    assert_eq!(message, "must be a non-negative integer");
}
