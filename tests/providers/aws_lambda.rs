//! End-to-end tests of `aws-lambda:push` pools: API + controllers on a fresh SQLite store, Lambda
//! (and SQS, STS) on the moto server that `scripts/test-emulators.sh` starts
//! (`PUSHPOOL_TEST_MOTO_URL`), and a fault-injecting fake (`tests/support/src/aws_lambda_fake.rs`) for
//! what moto cannot produce. Tests named `fake_…` get their outcome from the fake.
//!
//! Without `PUSHPOOL_TEST_MOTO_URL` the moto tests are skipped locally (with a notice) and fail
//! under `CI=true`. LocalStack is not run here: it needs a Docker engine (see
//! docs/providers/aws-lambda.md, "Testing your pool against LocalStack").
#![cfg(feature = "aws-lambda")]

use std::time::{Duration, Instant};

use pushpool_testkit::aws_lambda_fake::{Fault, LambdaFake};
// Dummy credentials, no IMDS, no shared config files, no proxies: nothing leaves loopback.
use pushpool_testkit::env::aws_test_credentials as init_env;
use pushpool_testkit::{http, infra, state, App};
use serde_json::{json, Value};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// The moto server, or `None` (skip) locally; under `CI=true` a missing server fails the test.
fn moto_url() -> Option<String> {
    init_env();
    match std::env::var("PUSHPOOL_TEST_MOTO_URL") {
        Ok(url) if !url.is_empty() => {
            eprintln!(
                "aws-lambda tests: backend = moto at {url} (LocalStack via testcontainers not run: it needs a Docker engine)"
            );
            Some(url)
        }
        _ => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("PUSHPOOL_TEST_MOTO_URL is not set: under CI=true the AWS Lambda emulator suite must run (scripts/test sources scripts/test-emulators.sh to start moto)");
            }
            eprintln!("SKIPPED: PUSHPOOL_TEST_MOTO_URL not set, AWS Lambda emulator test not run (source scripts/test-emulators.sh)");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Emulator set-up over moto's HTTP APIs (moto does not check signatures; the Authorization header
// only names the service).

fn auth(service: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential=testing/20240101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=0")
}

async fn moto_query(moto: &str, service: &str, params: &[(&str, &str)]) -> String {
    let r = http()
        .post(format!("{moto}/"))
        .header("Authorization", auth(service))
        .form(params)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(
        status.is_success() || text.contains("EntityAlreadyExists"),
        "{service} {params:?}: {status} {text}"
    );
    text
}

/// Creates the IAM role and a function in moto (an empty zip: moto echoes the payload).
async fn create_function(moto: &str, name: &str) {
    moto_query(
        moto,
        "iam",
        &[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", "pushpool-test"),
            ("AssumeRolePolicyDocument", "{}"),
        ],
    )
    .await;
    let empty_zip = {
        let mut z = vec![0x50, 0x4b, 0x05, 0x06];
        z.extend([0u8; 18]);
        z
    };
    use base64::Engine as _;
    let r = http()
        .post(format!("{moto}/2015-03-31/functions"))
        .header("Authorization", auth("lambda"))
        .json(&json!({
            "FunctionName": name, "Runtime": "python3.12", "Handler": "app.handler", "Timeout": 3,
            "Role": format!("arn:aws:iam::{ACCOUNT}:role/pushpool-test"),
            "Code": {"ZipFile": base64::engine::general_purpose::STANDARD.encode(empty_zip)}
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(status.is_success(), "{status} {}", r.text().await.unwrap());
}

fn xml_value(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}>")).expect(tag) + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    xml[start..end].to_string()
}

async fn create_queue(moto: &str, name: &str) -> String {
    let xml = moto_query(
        moto,
        "sqs",
        &[("Action", "CreateQueue"), ("QueueName", name)],
    )
    .await;
    xml_value(&xml, "QueueUrl")
}

async fn send_message(moto: &str, queue_url: &str, body: &Value) {
    moto_query(
        moto,
        "sqs",
        &[
            ("Action", "SendMessage"),
            ("QueueUrl", queue_url),
            ("MessageBody", &body.to_string()),
        ],
    )
    .await;
}

async fn visible_messages(moto: &str, queue_url: &str) -> u64 {
    let xml = moto_query(
        moto,
        "sqs",
        &[
            ("Action", "GetQueueAttributes"),
            ("QueueUrl", queue_url),
            ("AttributeName.1", "All"),
        ],
    )
    .await;
    let count = |name: &str| -> u64 {
        let marker = format!("<Name>{name}</Name><Value>");
        xml.find(&marker)
            .map(|i| {
                let rest = &xml[i + marker.len()..];
                rest[..rest.find('<').unwrap()].parse().unwrap()
            })
            .unwrap_or(0)
    };
    count("ApproximateNumberOfMessages") + count("ApproximateNumberOfMessagesNotVisible")
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// The service with the test environment and one controller.
async fn spawn_app() -> App {
    init_env();
    pushpool_testkit::spawn_app().await
}

/// This suite's pool `lambda` and its deployments.
trait LambdaDeployments {
    async fn deployment(&self, name: &str, endpoint: &str, function: &str, vars: Value);
}

impl LambdaDeployments for App {
    /// A pool with the default template and a deployment `name` with these job variables.
    async fn deployment(&self, name: &str, endpoint: &str, function: &str, vars: Value) {
        self.ensure_pool(
            "lambda",
            json!({"name": "lambda", "type": "aws-lambda:push"}),
        )
        .await;
        let mut job_variables = json!({
            "function_name": function, "endpoint_url": endpoint, "region": REGION,
            "max_attempts": 1, "timeout_seconds": 10, "watchdog_grace_seconds": 1
        });
        for (k, v) in vars.as_object().unwrap() {
            job_variables[k] = v.clone();
        }
        let (s, b) = self
            .post(
                "/deployments",
                json!({"name": name, "work_pool": "lambda", "job_variables": job_variables,
                       "parameters": {"rows": 3, "label": "nightly"}}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

/// The request id inside an `aws-lambda:event:<ms>:<request id>:<function>` infrastructure id.
fn request_id(infra: &str) -> String {
    infra.split(':').nth(3).unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// moto

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_request_response_completes_and_the_emulator_got_the_rendered_payload() {
    let Some(moto) = moto_url() else { return };
    let fake = LambdaFake::start(Some(moto.clone())).await; // pass-through recorder
    let function = unique("sync");
    create_function(&moto, &function).await;
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        &function,
        json!({"env": {"STAGE": "test"}}),
    )
    .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "COMPLETED", "{run}");
    // moto echoes the payload: the summary is what the function returned.
    assert!(
        message.starts_with(&format!("Lambda function `{function}` returned: {{")),
        "{message}"
    );
    assert!(message.contains(&id), "{message}");
    assert!(infra(&run).starts_with("aws-lambda:sync:"), "{run}");
    assert_eq!(
        app.history(&id).await,
        ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    );
    let calls = fake.invocations(&function);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].invocation_type, "RequestResponse");
    let p = &calls[0].payload;
    assert_eq!(p["flow_run_id"], id.as_str());
    assert_eq!(p["attempt"], 1);
    assert_eq!(p["parameters"], json!({"rows": 3, "label": "nightly"}));
    assert_eq!(p["api_url"], app.base.as_str());
    assert!(p["run_token"].as_str().unwrap().len() > 10, "{p}");
    assert_eq!(p["env"]["STAGE"], "test");
    assert_eq!(p["env"]["PUSHPOOL_RUN_ID"], id.as_str());
    assert_eq!(p["env"]["PUSHPOOL_API_URL"], app.base.as_str());
    assert_eq!(p["env"]["PUSHPOOL_RUN_TOKEN"], p["run_token"]);
    // The run token is never part of the state message.
    // The echoed run token is not published in the state message.
    assert!(
        !message.contains(p["run_token"].as_str().unwrap()),
        "{message}"
    );
    assert!(message.contains("ppr_[redacted]"), "{message}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_role_to_assume_is_used_for_the_invocation() {
    let Some(moto) = moto_url() else { return };
    let fake = LambdaFake::start(Some(moto.clone())).await;
    let function = unique("assumed");
    create_function(&moto, &function).await; // also creates the role
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        &function,
        json!({"credentials": {"role_arn": format!("arn:aws:iam::{ACCOUNT}:role/pushpool-test"),
                               "role_session_name": "pushpool-test"}}),
    )
    .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    let calls = fake.invocations(&function);
    assert_eq!(calls.len(), 1);
    // Signed with the temporary credentials STS (moto) handed out, not the environment's.
    let key = calls[0].access_key_id.clone().unwrap();
    assert_ne!(key, "testing");
    assert!(key.starts_with("ASIA"), "{key}");
    // The AssumeRole carried the workspace's ExternalId, the one the pool view shows.
    let (_, pool) = app.get("/work_pools/lambda").await;
    let external_id = pool["aws_external_id"].as_str().unwrap().to_string();
    assert!(external_id.starts_with("pushpool-"), "{pool}");
    let assume: Vec<String> = fake
        .forwarded_bodies()
        .into_iter()
        .filter(|b| b.contains("Action=AssumeRole"))
        .collect();
    assert_eq!(assume.len(), 1, "{assume:?}");
    assert!(
        assume[0].contains(&format!("ExternalId={external_id}")),
        "{}",
        assume[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_event_invocation_is_running_then_the_watchdog_crashes_it_without_word() {
    let Some(moto) = moto_url() else { return };
    let fake = LambdaFake::start(Some(moto.clone())).await;
    let function = unique("event");
    create_function(&moto, &function).await;
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        &function,
        json!({
            "invocation_type": "Event", "timeout_seconds": 2, "watchdog_grace_seconds": 1,
            "maximum_retry_attempts": 0, "qualifier": "$LATEST",
            "payload": {"run": "{{ flow_run.id }}", "greeting": "hello from {{ deployment.name }}",
                        "n": "{{ flow_run.attempt }}", "static": [1, 2]}
        }),
    )
    .await;
    let submitted = Instant::now();
    let id = app.run("job").await;
    let running = app.wait_running(&id, Duration::from_secs(20)).await;
    let infra_id = infra(&running);
    assert!(infra_id.starts_with("aws-lambda:event:"), "{running}");
    assert!(infra_id.ends_with(&format!(":{function}")), "{infra_id}");
    assert!(
        !request_id(&infra_id).starts_with("local-"),
        "moto gives a request id: {infra_id}"
    );
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(message.contains("no word"), "{message}");
    assert!(message.contains("= 3s"), "{message}");
    assert!(message.contains(&request_id(&infra_id)), "{message}");
    assert!(message.contains("no result_queue_url"), "{message}");
    assert!(submitted.elapsed() >= Duration::from_secs(3));
    let calls = fake.invocations(&function);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].invocation_type, "Event");
    assert_eq!(calls[0].query.as_deref(), Some("Qualifier=%24LATEST"));
    let p = &calls[0].payload;
    assert_eq!(p["run"], id.as_str());
    assert_eq!(p["greeting"], "hello from job");
    assert_eq!(p["n"], 1);
    assert_eq!(p["static"], json!([1, 2]));
    assert_eq!(p["env"]["PUSHPOOL_RUN_ID"], id.as_str());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_sqs_results_queue_completes_and_fails_event_runs() {
    let Some(moto) = moto_url() else { return };
    let fake = LambdaFake::start(Some(moto.clone())).await;
    let function = unique("queued");
    create_function(&moto, &function).await;
    let queue = create_queue(&moto, &unique("results")).await;
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        &function,
        json!({"invocation_type": "Event", "result_queue_url": queue,
               "timeout_seconds": 60, "watchdog_grace_seconds": 0}),
    )
    .await;
    // Another deployment with its own results queue (issue 19 item 12).
    let own_queue = create_queue(&moto, &unique("results")).await;
    app.deployment(
        "elsewhere",
        &fake.url,
        &function,
        json!({"invocation_type": "Event", "result_queue_url": own_queue,
               "timeout_seconds": 60, "watchdog_grace_seconds": 0}),
    )
    .await;
    // A record of somebody else's invocation must be left in the queue for its reader.
    let foreign = json!({"version": "1.0", "requestContext": {"requestId": "someone-else", "condition": "Success", "approximateInvokeCount": 1},
                         "responseContext": {"statusCode": 200}, "responsePayload": {"other": true}});
    send_message(&moto, &queue, &foreign).await;

    let elsewhere = app.run("elsewhere").await;
    let elsewhere_infra = infra(&app.wait_running(&elsewhere, Duration::from_secs(20)).await);
    let ok = app.run("job").await;
    let failing = app.run("job").await;
    let ok_infra = infra(&app.wait_running(&ok, Duration::from_secs(20)).await);
    let failing_infra = infra(&app.wait_running(&failing, Duration::from_secs(20)).await);
    let function_arn = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}:$LATEST");
    // A forged record for the other deployment's run, in this queue: it must not end that run.
    let forged = |summary: &str| {
        json!({"version": "1.0", "requestContext": {"requestId": request_id(&elsewhere_infra),
                   "functionArn": function_arn, "condition": "Success", "approximateInvokeCount": 1},
               "responseContext": {"statusCode": 200}, "responsePayload": {"from": summary}})
    };
    send_message(&moto, &queue, &forged("the wrong queue")).await;
    // What Lambda's on-success / on-failure destinations would write (moto runs no code).
    send_message(
        &moto,
        &queue,
        &json!({"version": "1.0", "timestamp": "2026-01-01T00:00:00.000Z",
                "requestContext": {"requestId": request_id(&ok_infra), "functionArn": function_arn,
                                   "condition": "Success", "approximateInvokeCount": 1},
                "requestPayload": {}, "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
                "responsePayload": {"rows_loaded": 42}}),
    )
    .await;
    send_message(
        &moto,
        &queue,
        &json!({"version": "1.0", "timestamp": "2026-01-01T00:00:00.000Z",
                "requestContext": {"requestId": request_id(&failing_infra), "functionArn": function_arn,
                                   "condition": "RetriesExhausted", "approximateInvokeCount": 3},
                "requestPayload": {}, "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                "responsePayload": {"errorType": "KeyError", "errorMessage": "'customer_id'"}}),
    )
    .await;
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
            "KeyError: 'customer_id' (after 3 attempts, from the results queue)"
        ),
        "{run}"
    );
    assert_eq!(
        app.history(&failing).await,
        ["SCHEDULED", "PENDING", "RUNNING", "FAILED"]
    );
    // The forged record was read along with the others and handed back: the run it names is
    // still running, and ends only by a record from its own queue.
    assert_eq!(state(&app.flow_run(&elsewhere).await).0, "RUNNING");
    send_message(&moto, &own_queue, &forged("its own queue")).await;
    let run = app.wait_terminal(&elsewhere, Duration::from_secs(20)).await;
    assert_eq!(
        state(&run),
        (
            "COMPLETED",
            format!("Lambda function `{function}` returned: {{\"from\":\"its own queue\"}}")
                .as_str()
        ),
        "{run}"
    );
    // Both records were deleted once the runs' final states were stored; the foreign and the
    // forged ones stay.
    let start = Instant::now();
    loop {
        let left = visible_messages(&moto, &queue).await;
        if left == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{left} messages left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.invocations(&function).len(), 3);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting fake (outcomes moto cannot produce)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_function_error_fails_the_run_with_error_type_and_message() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "etl",
        Fault::FunctionError {
            error_type: "ValueError".into(),
            message: "bad input row 7".into(),
        },
    );
    let app = spawn_app().await;
    app.deployment("job", &fake.url, "etl", json!({})).await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(
        state(&run),
        ("FAILED", "ValueError: bad input row 7"),
        "{run}"
    );
    assert_eq!(
        app.history(&id).await,
        ["SCHEDULED", "PENDING", "RUNNING", "FAILED"]
    );
    assert_eq!(fake.invocations("etl").len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_404_403_400_crash_at_once_naming_function_region_and_account() {
    // STS (for the account) goes through the fake to moto when there is one.
    let moto = std::env::var("PUSHPOOL_TEST_MOTO_URL")
        .ok()
        .filter(|u| !u.is_empty());
    init_env();
    let fake = LambdaFake::start(moto.clone()).await;
    fake.always(
        "missing",
        Fault::api(
            404,
            "ResourceNotFoundException",
            "Function not found: arn:aws:lambda:us-east-1:123456789012:function:missing",
        ),
    );
    fake.always(
        "denied",
        Fault::api(
            403,
            "AccessDeniedException",
            "User is not authorized to perform: lambda:InvokeFunction",
        ),
    );
    fake.always(
        "invalid",
        Fault::api(400, "InvalidParameterValueException", "Invalid qualifier"),
    );
    let app = spawn_app().await;
    let cases = [
        (
            "missing",
            "ResourceNotFoundException (HTTP 404): Function not found",
        ),
        (
            "denied",
            "AccessDeniedException (HTTP 403): User is not authorized",
        ),
        (
            "invalid",
            "InvalidParameterValueException (HTTP 400): Invalid qualifier",
        ),
    ];
    for (function, _) in cases {
        app.deployment(
            function,
            &fake.url,
            function,
            json!({"timeout_seconds": 60}),
        )
        .await;
    }
    let started = Instant::now();
    let mut ids = vec![];
    for (function, _) in cases {
        ids.push(app.run(function).await);
    }
    for ((function, expected), id) in cases.iter().zip(&ids) {
        let run = app.wait_terminal(id, Duration::from_secs(20)).await;
        let (t, message) = state(&run);
        assert_eq!(t, "CRASHED", "{run}");
        assert!(
            message.contains(&format!("Lambda function `{function}`")),
            "{message}"
        );
        assert!(message.contains("region us-east-1"), "{message}");
        assert!(
            message.contains(&format!("endpoint {}", fake.url)),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
        if moto.is_some() {
            assert!(message.contains(&format!("account {ACCOUNT}")), "{message}");
        } else {
            assert!(message.contains("account (unknown"), "{message}");
        }
        // At once: no retry of a call that cannot succeed.
        assert_eq!(fake.invocations(function).len(), 1, "{function}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));

    // The same for Event: the submit itself fails and the run is CRASHED without retries.
    app.deployment(
        "missing-event",
        &fake.url,
        "missing",
        json!({"invocation_type": "Event"}),
    )
    .await;
    let id = app.run("missing-event").await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("Lambda function `missing`"), "{message}");
    assert!(message.contains("ResourceNotFoundException"), "{message}");
    assert_eq!(fake.invocations("missing").len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_throttling_429_is_retried_then_crashes_with_the_last_error_after_the_deadline() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "busy",
        Fault::api(429, "TooManyRequestsException", "Rate Exceeded."),
    );
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        "busy",
        json!({"timeout_seconds": 2, "max_attempts": 2}),
    )
    .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(message.contains("kept failing"), "{message}");
    assert!(message.contains("timeout_seconds = 2s"), "{message}");
    assert!(
        message.contains("the last error: TooManyRequestsException (HTTP 429): Rate Exceeded."),
        "{message}"
    );
    let calls = fake.invocations("busy").len();
    assert!(calls >= 2, "retried: {calls} calls");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_5xx_storm_is_retried_until_the_function_answers() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.push(
        "flaky",
        [
            Fault::api(503, "ServiceException", "unavailable"),
            Fault::api(500, "ServiceException", "internal"),
            Fault::api(502, "EC2ThrottledException", "throttled by EC2"),
            Fault::api(429, "TooManyRequestsException", "slow down"),
        ],
    );
    fake.always("flaky", Fault::Respond(json!({"ok": true})));
    let app = spawn_app().await;
    app.deployment("job", &fake.url, "flaky", json!({"timeout_seconds": 30}))
        .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(
        state(&run),
        (
            "COMPLETED",
            "Lambda function `flaky` returned: {\"ok\":true}"
        ),
        "{run}"
    );
    assert_eq!(fake.invocations("flaky").len(), 5);
    // The retries are in the run's logs.
    let (_, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    let lines: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ServiceException (HTTP 503)") && l.contains("retrying")),
        "{lines:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_slow_response_keeps_the_run_running_then_completes_or_crashes_at_the_timeout() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "slow",
        Fault::Delay(
            Duration::from_millis(2500),
            Box::new(Fault::Respond(json!("done"))),
        ),
    );
    fake.always(
        "stuck",
        Fault::Delay(
            Duration::from_secs(60),
            Box::new(Fault::Respond(json!("late"))),
        ),
    );
    let app = spawn_app().await;
    app.deployment("slow", &fake.url, "slow", json!({"timeout_seconds": 20}))
        .await;
    app.deployment("stuck", &fake.url, "stuck", json!({"timeout_seconds": 2}))
        .await;
    let slow = app.run("slow").await;
    let stuck = app.run("stuck").await;
    let running = app.wait_running(&slow, Duration::from_secs(10)).await;
    assert!(infra(&running).starts_with("aws-lambda:sync:"));
    let run = app.wait_terminal(&slow, Duration::from_secs(20)).await;
    assert_eq!(
        state(&run),
        ("COMPLETED", "Lambda function `slow` returned: \"done\""),
        "{run}"
    );
    let run = app.wait_terminal(&stuck, Duration::from_secs(20)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(
        message.contains("outcome unknown: no answer from Lambda function `stuck` within timeout_seconds = 2s plus a margin (12s in all)"),
        "{message}"
    );
    assert!(message.contains("may still be running"), "{message}");
    assert_eq!(fake.invocations("stuck").len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_event_throttled_at_submit_is_retried_then_runs() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.push(
        "async",
        [Fault::api(
            429,
            "TooManyRequestsException",
            "Rate Exceeded.",
        )],
    );
    fake.always("async", Fault::Respond(json!(null)));
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        "async",
        json!({"invocation_type": "Event", "timeout_seconds": 1, "watchdog_grace_seconds": 1,
               "maximum_retry_attempts": 0}),
    )
    .await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(20)).await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "CRASHED", "{run}");
    assert!(state(&run).1.contains("no word"), "{run}");
    assert_eq!(fake.invocations("async").len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_slow_function_cancel_records_cancelled_and_says_lambda_cannot_stop_it() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "long",
        Fault::Delay(Duration::from_secs(60), Box::new(Fault::Respond(json!(1)))),
    );
    let app = spawn_app().await;
    app.deployment("job", &fake.url, "long", json!({"timeout_seconds": 120}))
        .await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(10)).await;
    let (s, body) = app
        .post(&format!("/flow_runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    let run = app.wait_terminal(&id, Duration::from_secs(10)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CANCELLED", "{run}");
    assert!(message.contains("cannot stop a started job"), "{message}");
    assert_eq!(fake.invocations("long").len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_slow_function_controller_killed_mid_invocation_is_never_invoked_twice_and_ends_at_the_watchdog(
) {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "long",
        Fault::Delay(Duration::from_secs(60), Box::new(Fault::Respond(json!(1)))),
    );
    let mut app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        "long",
        json!({"timeout_seconds": 3, "watchdog_grace_seconds": 2}),
    )
    .await;
    let submitted = Instant::now();
    let id = app.run("job").await;
    let running = app.wait_running(&id, Duration::from_secs(10)).await;
    assert_eq!(fake.invocations("long").len(), 1);
    // kill -9 the controller that is waiting for the synchronous answer, start another.
    app.controllers[0].kill();
    app.start_controller("controller-b");
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(
        message.contains("controller that made it stopped"),
        "{message}"
    );
    assert!(message.contains("= 5s"), "{message}");
    assert!(submitted.elapsed() >= Duration::from_secs(5));
    assert_eq!(infra(&run), infra(&running));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.invocations("long").len(), 1, "invoked twice");
    app.stop().await;
}

/// Issue 18, part 3, in a workspace other than the administrator's: without a grant a pool
/// without a role is refused; with a role the AssumeRole carries that workspace's ExternalId;
/// with the `ambient-aws` grant the controller's own credentials work as before. The emulator's
/// loopback endpoint is given through an explicit `custom-endpoints` grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_other_workspace_needs_a_role_or_the_ambient_grant() {
    let Some(moto) = moto_url() else { return };
    let fake = LambdaFake::start(Some(moto.clone())).await;
    let function = unique("tenant");
    create_function(&moto, &function).await;
    let app = spawn_app().await;
    let client = http();
    let call = |method: &str, path: String, key: String, body: Option<Value>| {
        let client = client.clone();
        let url = format!("{}{path}", app.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        async move {
            let mut r = client.request(method, url).bearer_auth(key);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let admin = app.key.clone();
    let (s, ws) = call(
        "POST",
        "/api/workspaces".into(),
        admin.clone(),
        Some(json!({"name": "tenant"})),
    )
    .await;
    assert_eq!(s, 201, "{ws}");
    let key = ws["api_key"]["key"].as_str().unwrap().to_string();
    let (s, b) = call(
        "PUT",
        "/api/grants/tenant/custom-endpoints".into(),
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let pool = |name: &str| json!({"name": name, "type": "aws-lambda:push"});
    let vars = |credentials: Value| {
        json!({"function_name": function, "endpoint_url": fake.url, "region": REGION,
               "max_attempts": 1, "timeout_seconds": 10, "watchdog_grace_seconds": 1,
               "credentials": credentials})
    };
    let w = "/api/workspaces/tenant";
    // The default template names no role: the controller's own identity, not granted.
    let (s, b) = call(
        "POST",
        format!("{w}/work_pools"),
        key.clone(),
        Some(pool("ambient")),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("ambient-aws"),
        "{b}"
    );
    // With the grant: accepted, and a run with the environment's credentials completes.
    let (s, b) = call(
        "PUT",
        "/api/grants/tenant/ambient-aws".into(),
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        "POST",
        format!("{w}/work_pools"),
        key.clone(),
        Some(pool("lambda")),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let external_id = b["aws_external_id"].as_str().unwrap().to_string();
    assert_eq!(
        external_id,
        format!("pushpool-{}", ws["id"].as_str().unwrap())
    );
    let role = json!({"role_arn": format!("arn:aws:iam::{ACCOUNT}:role/pushpool-test")});
    for (name, credentials) in [("ambient", json!({})), ("role", role)] {
        let (s, b) = call(
            "POST",
            format!("{w}/deployments"),
            key.clone(),
            Some(json!({"name": name, "work_pool": "lambda", "job_variables": vars(credentials)})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        let (s, run) = call(
            "POST",
            format!("{w}/deployments/{name}/runs"),
            key.clone(),
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 201, "{run}");
        let id = run["id"].as_str().unwrap().to_string();
        let start = Instant::now();
        let run = loop {
            let (_, run) = call("GET", format!("{w}/flow_runs/{id}"), key.clone(), None).await;
            if ["COMPLETED", "FAILED", "CRASHED"]
                .contains(&run["state"]["type"].as_str().unwrap_or(""))
            {
                break run;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(state(&run).0, "COMPLETED", "{name}: {run}");
    }
    let calls = fake.invocations(&function);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0].access_key_id.as_deref(),
        Some("testing"),
        "ambient: the environment's key"
    );
    assert!(calls[1]
        .access_key_id
        .as_deref()
        .unwrap()
        .starts_with("ASIA"));
    let assume: Vec<String> = fake
        .forwarded_bodies()
        .into_iter()
        .filter(|b| b.contains("Action=AssumeRole"))
        .collect();
    assert_eq!(assume.len(), 1, "{assume:?}");
    assert!(
        assume[0].contains(&format!("ExternalId={external_id}")),
        "{}",
        assume[0]
    );
    // Revoked: the pool is refused at its next submission (the controller reads grants at most
    // 2 s old).
    let (s, _) = call(
        "DELETE",
        "/api/grants/tenant/ambient-aws".into(),
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(s, 204);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, run) = call(
        "POST",
        format!("{w}/deployments/ambient/runs"),
        key.clone(),
        Some(json!({})),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let run = loop {
        let (_, run) = call("GET", format!("{w}/flow_runs/{id}"), key.clone(), None).await;
        if run["state"]["type"] == "CRASHED" {
            break run;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(state(&run).1.contains("ambient-aws"), "{run}");
    assert_eq!(
        fake.invocations(&function).len(),
        2,
        "nothing more was invoked"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Issue 16, Build 5: behaviour the AWS references describe, shown against the fake

/// Lambda answers 409 `ResourceConflictException` while a function is being created or updated
/// (state `Pending`, `LastUpdateStatus: InProgress`) and `SnapStartNotReadyException` while a
/// snapshot is made: the function did not run and will, so the call is retried. A 409 for a
/// function whose deployment `Failed`, and the 502s of its VPC, KMS key or package, are permanent:
/// CRASHED at once, invoked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_error_codes_decide_retries_from_explicit_lists() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.push(
        "updating",
        [
            Fault::api(409, "ResourceConflictException", "The operation cannot be performed at this time. An update is in progress for resource: arn:aws:lambda:us-east-1:123456789012:function:updating"),
            Fault::api(409, "ResourceConflictException", "The operation cannot be performed at this time. The function is currently in the following state: Pending"),
            Fault::api(409, "SnapStartNotReadyException", "Lambda is initializing your function. You can invoke the function when the state of your function is Active."),
        ],
    );
    fake.always("updating", Fault::Respond(json!({"ok": 1})));
    let permanent = [
        ("eni", 502, "ENILimitReachedException", "Lambda was not able to create an ENI in the VPC"),
        ("kms", 502, "KMSDisabledException", "Lambda was unable to decrypt the environment variables because the KMS key used is disabled"),
        ("kms-denied", 502, "KMSAccessDeniedException", "Lambda was unable to decrypt the environment variables because KMS access was denied"),
        ("subnet", 502, "InvalidSubnetIDException", "The subnet ID provided in the Lambda function VPC configuration is invalid"),
        ("ec2-denied", 502, "EC2AccessDeniedException", "Need additional permissions to configure VPC settings"),
        ("zip", 502, "InvalidZipFileException", "Lambda could not unzip the deployment package"),
        ("failed", 409, "ResourceConflictException", "The operation cannot be performed at this time. The function is currently in the following state: Failed"),
    ];
    for (function, status, code, message) in permanent {
        fake.always(function, Fault::api(status, code, message));
    }
    let app = spawn_app().await;
    app.deployment(
        "updating",
        &fake.url,
        "updating",
        json!({"timeout_seconds": 30}),
    )
    .await;
    for (function, ..) in permanent {
        app.deployment(
            function,
            &fake.url,
            function,
            json!({"timeout_seconds": 30}),
        )
        .await;
    }
    let updating = app.run("updating").await;
    let mut ids = vec![];
    for (function, ..) in permanent {
        ids.push(app.run(function).await);
    }
    let run = app.wait_terminal(&updating, Duration::from_secs(30)).await;
    assert_eq!(
        state(&run),
        (
            "COMPLETED",
            "Lambda function `updating` returned: {\"ok\":1}"
        ),
        "{run}"
    );
    assert_eq!(fake.invocations("updating").len(), 4);
    for ((function, status, code, _), id) in permanent.iter().zip(&ids) {
        let run = app.wait_terminal(id, Duration::from_secs(20)).await;
        let (t, message) = state(&run);
        assert_eq!(t, "CRASHED", "{function}: {run}");
        assert!(
            message.contains(&format!("{code} (HTTP {status})")),
            "{message}"
        );
        assert!(
            message.contains(&format!("Lambda function `{function}`")),
            "{message}"
        );
        assert_eq!(fake.invocations(function).len(), 1, "{function} retried");
    }
    app.stop().await;
}

/// A synchronous invocation whose connection is lost after the request went out may have run
/// the function: the run ends CRASHED "outcome unknown" and the function is not invoked again
/// (neither by the SDK's own retries, which get one attempt for RequestResponse, nor by
/// pushpool's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_connection_lost_after_send_is_outcome_unknown_and_never_invoked_twice() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.push("lost", [Fault::Drop]);
    fake.always("lost", Fault::Respond(json!("second run")));
    let app = spawn_app().await;
    app.deployment(
        "job",
        &fake.url,
        "lost",
        json!({"timeout_seconds": 20, "max_attempts": 3}),
    )
    .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(message.starts_with("outcome unknown"), "{message}");
    assert!(message.contains("Lambda function `lost`"), "{message}");
    assert!(message.contains("not invoked again"), "{message}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.invocations("lost").len(), 1, "invoked twice");
    app.stop().await;
}

/// Lambda answers a function that ran into its own timeout after that timeout (plus its init):
/// 200 with `FunctionError: Unhandled` and `Task timed out after …`. The call is given a margin
/// beyond `timeout_seconds`, so the run ends FAILED with Lambda's answer, not CRASHED for lack of
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_function_timing_out_is_heard_after_its_timeout() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "slowpoke",
        Fault::Delay(
            Duration::from_millis(3500),
            Box::new(Fault::FunctionError {
                error_type: "Sandbox.Timedout".into(),
                message: "2026-12-01T10:00:02.000Z 6f1c Task timed out after 2.00 seconds".into(),
            }),
        ),
    );
    let app = spawn_app().await;
    app.deployment("job", &fake.url, "slowpoke", json!({"timeout_seconds": 2}))
        .await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "FAILED", "{run}");
    assert!(
        message.starts_with("Sandbox.Timedout: ")
            && message.contains("Task timed out after 2.00 seconds"),
        "{message}"
    );
    assert_eq!(fake.invocations("slowpoke").len(), 1);
    app.stop().await;
}

/// The TCP state of the connection from `client` to the fake's `server` port, from
/// /proc/net/tcp{,6}: (`tr` timer kind, `tm->when` in clock ticks).
fn tcp_timer(client: std::net::SocketAddr, server_port: u16) -> Option<(u8, u64)> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).ok()?;
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
            if cols.len() > 5
                && port(cols[1]) == Some(client.port())
                && port(cols[2]) == Some(server_port)
                && cols[3] == "01"
            {
                let (tr, when) = cols[5].split_once(':')?;
                return Some((tr.parse().ok()?, u64::from_str_radix(when, 16).ok()?));
            }
        }
    }
    None
}

/// NAT gateways and load balancers drop a connection idle for ~350 s; a synchronous invoke is idle
/// for as long as the function runs. The SDK's connection has TCP keepalive armed (the kernel's
/// keepalive timer, `tr` 2 in /proc/net/tcp, at most 60 s away) while the call waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_long_synchronous_invoke_has_tcp_keepalive_on_its_connection() {
    init_env();
    let fake = LambdaFake::start(None).await;
    fake.always(
        "long",
        Fault::Delay(Duration::from_secs(3), Box::new(Fault::Respond(json!(1)))),
    );
    let server_port: u16 = fake.url.rsplit(':').next().unwrap().parse().unwrap();
    let app = spawn_app().await;
    app.deployment("job", &fake.url, "long", json!({"timeout_seconds": 30}))
        .await;
    let id = app.run("job").await;
    let start = Instant::now();
    let peer = loop {
        if let Some(p) = fake.invocations("long").first().and_then(|i| i.peer) {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never invoked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // the request is sent and acknowledged
    let (timer, when) = tcp_timer(peer, server_port).expect("the connection is established");
    assert_eq!(
        timer, 2,
        "no keepalive timer on the idle connection (timer {timer})"
    );
    assert!(when > 0 && when <= 61 * 100, "keepalive in {when} ticks");
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    app.stop().await;
}

/// A function given as a full ARN in another region than the pool's `region` is invoked in the
/// ARN's region (signed for it, and sent to its endpoint), as Lambda requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_cross_region_function_arn_is_invoked_in_the_arns_region() {
    init_env();
    let fake = LambdaFake::start(None).await;
    let arn = "arn:aws:lambda:eu-west-1:123456789012:function:etl";
    fake.always(arn, Fault::Respond(json!({"rows": 1})));
    let app = spawn_app().await;
    app.deployment("job", &fake.url, arn, json!({})).await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    let calls = fake.invocations(arn);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].signing_region.as_deref(), Some("eu-west-1"));
    app.stop().await;
}
