//! The LocalStack-backed AWS suite (issue 16): `aws-lambda:push` pools against LocalStack, the
//! emulator users run, for what moto cannot show (moto answers 200 for a function that does not
//! exist and has no function states), and the results-queue cases on both emulators.
//!
//! LocalStack comes from `pushpool_testkit::aws::LocalStack::from_env_or_start`: the
//! `localstack-core` process `scripts/test` starts (`PUSHPOOL_TEST_LOCALSTACK_URL`; no Docker, so
//! function code is not run and a created function ends in state `Failed`), or a container
//! through testcontainers where a Docker engine answers (`--features
//! pushpool-testkit/testcontainers`). Without either the tests skip locally and fail under
//! `CI=true`. Each test prints the backend it ran on.
//!
//! A fault-injecting proxy (`LambdaFake`) sits in front of the emulator in every test: it counts
//! the invocations that reached it and forwards everything else; where a case needs an answer
//! LocalStack cannot give without Docker (a 429, a 202 for an event), the proxy gives it and the
//! test says so.
#![cfg(feature = "aws-lambda")]

use std::time::{Duration, Instant};

use pushpool_testkit::aws::{Emulator, Kind, LocalStack, REGION};
use pushpool_testkit::aws_lambda_fake::{Fault, LambdaFake};
use pushpool_testkit::env::aws_test_credentials as init_env;
use pushpool_testkit::{infra, state, App};
use serde_json::{json, Value};

const HANDLER: &str = "def handler(event, context):\n    return {'ok': True}\n";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// The request id inside an `aws-lambda:event:<ms>:<request id>:<function>` infrastructure id.
fn request_id(infra: &str) -> String {
    infra.split(':').nth(3).unwrap().to_string()
}

async fn spawn_app() -> App {
    init_env();
    pushpool_testkit::spawn_app().await
}

/// Pool `lambda` (default template) and deployment `name` calling `function` at `endpoint`.
async fn deployment(app: &App, name: &str, endpoint: &str, function: &str, vars: Value) {
    app.ensure_pool(
        "lambda",
        json!({"name": "lambda", "type": "aws-lambda:push"}),
    )
    .await;
    let mut job_variables = json!({
        "function_name": function, "endpoint_url": endpoint, "region": REGION,
        "max_attempts": 1, "timeout_seconds": 10, "watchdog_grace_seconds": 1,
        "maximum_retry_attempts": 0
    });
    for (k, v) in vars.as_object().unwrap() {
        job_variables[k] = v.clone();
    }
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": name, "work_pool": "lambda", "job_variables": job_variables}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

async fn log_lines(app: &App, id: &str) -> Vec<String> {
    let (_, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    logs.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str().map(str::to_string))
        .collect()
}

async fn wait_depth(aws: &Emulator, queue: &str, want: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = aws.queue_depth(queue).await;
        if left == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{left} messages left in the results queue, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// LocalStack only

/// A function that does not exist: LocalStack answers 404 `ResourceNotFoundException` like AWS
/// (moto answers 200). The run ends CRASHED at once, naming the function, its region, the account
/// (from STS) and the endpoint; invoked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn localstack_missing_function_crashes_at_once_naming_it_invoked_once() {
    let Some(aws) = LocalStack::from_env_or_start().await else {
        return;
    };
    let proxy = LambdaFake::start(Some(aws.url.clone())).await;
    let function = unique("missing");
    let app = spawn_app().await;
    deployment(
        &app,
        "job",
        &proxy.url,
        &function,
        json!({"timeout_seconds": 60}),
    )
    .await;
    let started = Instant::now();
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(
        message.contains(&format!(
            "Lambda function `{function}` in region {REGION}, account {}",
            aws.account()
        )),
        "{message}"
    );
    assert!(
        message.contains("ResourceNotFoundException (HTTP 404): Function not found"),
        "{message}"
    );
    assert!(
        message.contains(&format!("endpoint {}", proxy.url)),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not at once: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.invocations(&function).len(), 1, "retried");
    // The same for Event: the submit fails and the run is CRASHED without retries.
    deployment(
        &app,
        "event",
        &proxy.url,
        &function,
        json!({"invocation_type": "Event"}),
    )
    .await;
    let id = app.run("event").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(message.contains("ResourceNotFoundException"), "{message}");
    assert_eq!(proxy.invocations(&function).len(), 2);
    app.stop().await;
}

/// LocalStack moves a function it cannot deploy (no Docker here) to state `Failed` and answers
/// 409 `ResourceConflictException … state: Failed`, as AWS does for a failed deployment: that
/// conflict is permanent (unlike `Pending` or an update in progress), so CRASHED at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn localstack_function_in_state_failed_crashes_at_once() {
    let Some(aws) = LocalStack::from_env_or_start().await else {
        return;
    };
    if aws.how == "testcontainers" {
        eprintln!("SKIPPED: with Docker LocalStack deploys the function (state Active)");
        return;
    }
    let proxy = LambdaFake::start(Some(aws.url.clone())).await;
    let function = unique("failed");
    aws.create_function(&function, HANDLER).await;
    assert_eq!(aws.wait_function_settled(&function).await, "Failed");
    let app = spawn_app().await;
    deployment(
        &app,
        "job",
        &proxy.url,
        &function,
        json!({"timeout_seconds": 60}),
    )
    .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(
        message.contains("ResourceConflictException (HTTP 409)")
            && message.contains("state: Failed"),
        "{message}"
    );
    assert_eq!(proxy.invocations(&function).len(), 1, "retried");
    app.stop().await;
}

/// A throttled synchronous invoke (429 `TooManyRequestsException`) is retried. LocalStack
/// throttles only a function that can run (reserved concurrency 0 on an Active function), which
/// needs Docker; so the loopback fault proxy answers the first two calls with AWS's 429 and
/// forwards the third to LocalStack, whose own answer ends the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn localstack_throttled_invoke_is_retried_until_localstack_answers() {
    let Some(aws) = LocalStack::from_env_or_start().await else {
        return;
    };
    let proxy = LambdaFake::start(Some(aws.url.clone())).await;
    let function = unique("busy");
    aws.create_function(&function, HANDLER).await;
    let settled = aws.wait_function_settled(&function).await;
    proxy.push(
        &function,
        [
            Fault::api(429, "TooManyRequestsException", "Rate Exceeded."),
            Fault::api(429, "TooManyRequestsException", "Rate Exceeded."),
        ],
    );
    let app = spawn_app().await;
    deployment(
        &app,
        "job",
        &proxy.url,
        &function,
        json!({"timeout_seconds": 30}),
    )
    .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(60)).await;
    let (t, message) = state(&run);
    if settled == "Active" {
        assert_eq!(t, "COMPLETED", "{run}");
    } else {
        assert_eq!(t, "CRASHED", "{run}");
        assert!(
            message.contains("state: Failed"),
            "LocalStack's answer: {message}"
        );
    }
    assert_eq!(proxy.invocations(&function).len(), 3);
    let retried = log_lines(&app, &id)
        .await
        .into_iter()
        .filter(|l| l.contains("TooManyRequestsException (HTTP 429)") && l.contains("retrying"))
        .count();
    assert_eq!(retried, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn localstack_sqs_results_queue_completes_and_fails_event_runs() {
    let Some(aws) = LocalStack::from_env_or_start().await else {
        return;
    };
    results_queue_completes_and_fails_event_runs(&aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn localstack_sqs_stale_records_are_deleted_and_never_starve_a_run() {
    let Some(aws) = LocalStack::from_env_or_start().await else {
        return;
    };
    stale_records_are_deleted_and_never_starve_a_run(&aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_sqs_results_queue_completes_and_fails_event_runs() {
    let Some(aws) = Emulator::moto_from_env().await else {
        return;
    };
    results_queue_completes_and_fails_event_runs(&aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_sqs_stale_records_are_deleted_and_never_starve_a_run() {
    let Some(aws) = Emulator::moto_from_env().await else {
        return;
    };
    stale_records_are_deleted_and_never_starve_a_run(&aws).await;
}

// ---------------------------------------------------------------------------------------------
// Cases run on both emulators

/// Creates the function and makes the proxy accept its `Event` invocations where the emulator
/// cannot (LocalStack without Docker has no Active function): with moto the invocation reaches
/// moto.
async fn event_function(aws: &Emulator, proxy: &LambdaFake, function: &str) {
    aws.create_function(function, HANDLER).await;
    if aws.kind == Kind::LocalStack && aws.wait_function_settled(function).await != "Active" {
        eprintln!("{function}: the proxy answers Invoke with 202 (LocalStack cannot deploy functions without Docker); SQS is LocalStack's");
        proxy.always(function, Fault::Accepted);
    }
}

/// Destination records on the emulator's SQS end `Event` runs: Success → COMPLETED, a function
/// error → FAILED; records are deleted once the runs' final states are stored; a record of an
/// invocation nobody watches stays for its reader.
async fn results_queue_completes_and_fails_event_runs(aws: &Emulator) {
    eprintln!(
        "aws tests: backend = {:?} at {} ({})",
        aws.kind, aws.url, aws.how
    );
    let proxy = LambdaFake::start(Some(aws.url.clone())).await;
    let function = unique("queued");
    event_function(aws, &proxy, &function).await;
    let queue = aws.create_queue(&unique("results")).await;
    let app = spawn_app().await;
    deployment(
        &app,
        "job",
        &proxy.url,
        &function,
        json!({"invocation_type": "Event", "result_queue_url": queue, "timeout_seconds": 60}),
    )
    .await;
    let foreign = aws.destination_record(
        "someone-else",
        &function,
        "Success",
        json!({"statusCode": 200}),
        json!({"other": true}),
    );
    aws.send_message(&queue, &foreign).await;
    let ok = app.run("job").await;
    let failing = app.run("job").await;
    let ok_infra = infra(&app.wait_running(&ok, Duration::from_secs(20)).await);
    let failing_infra = infra(&app.wait_running(&failing, Duration::from_secs(20)).await);
    let record = aws.destination_record(
        &request_id(&ok_infra),
        &function,
        "Success",
        json!({"statusCode": 200, "executedVersion": "$LATEST"}),
        json!({"rows_loaded": 42}),
    );
    aws.send_message(&queue, &record).await;
    let record = aws.destination_record(
        &request_id(&failing_infra),
        &function,
        "RetriesExhausted",
        json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}),
        json!({"errorType": "KeyError", "errorMessage": "'customer_id'"}),
    );
    aws.send_message(&queue, &record).await;
    let run = app.wait_terminal(&ok, Duration::from_secs(20)).await;
    assert_eq!(
        state(&run),
        (
            "COMPLETED",
            format!("Lambda function `{function}` returned: {{\"rows_loaded\":42}}").as_str()
        ),
        "{run}"
    );
    let run = app.wait_terminal(&failing, Duration::from_secs(20)).await;
    assert_eq!(
        state(&run),
        (
            "FAILED",
            "KeyError: 'customer_id' (after 1 attempt, from the results queue)"
        ),
        "{run}"
    );
    wait_depth(aws, &queue, 1, Duration::from_secs(20)).await;
    assert_eq!(proxy.invocations(&function).len(), 2);
    app.stop().await;
}

/// Records of runs that already ended (duplicates of a delivered record: Lambda may deliver an
/// event twice) and records older than any watchdog window are deleted on sight, so hundreds of
/// them in front of a run's own record neither starve that run nor stay in the queue; a recent
/// record of an invocation nobody here knows stays for its reader.
async fn stale_records_are_deleted_and_never_starve_a_run(aws: &Emulator) {
    eprintln!(
        "aws tests: backend = {:?} at {} ({})",
        aws.kind, aws.url, aws.how
    );
    let proxy = LambdaFake::start(Some(aws.url.clone())).await;
    let function = unique("stale");
    event_function(aws, &proxy, &function).await;
    let queue = aws.create_queue(&unique("results")).await;
    let app = spawn_app().await;
    deployment(
        &app,
        "job",
        &proxy.url,
        &function,
        json!({"invocation_type": "Event", "result_queue_url": queue, "timeout_seconds": 60}),
    )
    .await;
    let first = app.run("job").await;
    let first_id = request_id(&infra(
        &app.wait_running(&first, Duration::from_secs(20)).await,
    ));
    let first_record = aws.destination_record(
        &first_id,
        &function,
        "Success",
        json!({"statusCode": 200}),
        json!(1),
    );
    aws.send_message(&queue, &first_record).await;
    let run = app.wait_terminal(&first, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    wait_depth(aws, &queue, 0, Duration::from_secs(20)).await;

    // 150 more deliveries of the ended run's record, 30 records written two days ago, one
    // recent record of an invocation nobody here knows; then the second run's own record.
    for _ in 0..150 {
        aws.send_message(&queue, &first_record).await;
    }
    for i in 0..30 {
        let mut old = aws.destination_record(
            &format!("old-{i}"),
            &function,
            "Success",
            json!({"statusCode": 200}),
            json!(1),
        );
        old["timestamp"] = json!("2026-01-01T00:00:00.000Z");
        aws.send_message(&queue, &old).await;
    }
    let foreign = aws.destination_record(
        "someone-else",
        &function,
        "Success",
        json!({"statusCode": 200}),
        json!(1),
    );
    aws.send_message(&queue, &foreign).await;
    let second = app.run("job").await;
    let second_id = request_id(&infra(
        &app.wait_running(&second, Duration::from_secs(20)).await,
    ));
    let started = Instant::now();
    let record = aws.destination_record(
        &second_id,
        &function,
        "Success",
        json!({"statusCode": 200}),
        json!({"second": true}),
    );
    aws.send_message(&queue, &record).await;
    let run = app.wait_terminal(&second, Duration::from_secs(60)).await;
    assert_eq!(
        state(&run),
        (
            "COMPLETED",
            format!("Lambda function `{function}` returned: {{\"second\":true}}").as_str()
        ),
        "{run}"
    );
    eprintln!(
        "the second run's record was read {:?} after it was sent, behind 181 others",
        started.elapsed()
    );
    // Only the foreign record is left.
    wait_depth(aws, &queue, 1, Duration::from_secs(30)).await;
    app.stop().await;
}
