//! Issue 16, items 1 and 2 end to end (docs/error-summaries.md): the job's own logs from each
//! provider in the run's log (`provider` stream, the provider's timestamps), and the error
//! summary of a FAILED or CRASHED run (cause and evidence) in the API's run object and in the
//! run's Failed/Crashed event, for `process`, `aws-lambda:push` (a Lambda fake answering like
//! Lambda with `X-Amz-Log-Result`, and CloudWatch Logs on moto) and `cloud-run-v2:push` (the
//! Cloud Run fake and its logging fake).

use std::time::{Duration, Instant};

use pushpool_testkit::{infra, state, App};
use serde_json::{json, Value};

async fn spawn_app() -> App {
    pushpool_testkit::env::loopback_only();
    pushpool_testkit::spawn_app().await
}

/// The run's log lines.
async fn logs(app: &App, id: &str) -> Vec<Value> {
    let (s, b) = app.get(&format!("/flow_runs/{id}/logs")).await;
    assert_eq!(s, 200, "{b}");
    b.as_array().unwrap().clone()
}

/// Waits until the run's log has a line of `stream` containing `text`; all lines.
async fn wait_log(app: &App, id: &str, stream: &str, text: &str, limit: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let lines = logs(app, id).await;
        if lines
            .iter()
            .any(|l| l["stream"] == stream && l["line"].as_str().unwrap_or("").contains(text))
        {
            return lines;
        }
        assert!(
            start.elapsed() < limit,
            "no {stream} line with {text:?} after {limit:?}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the run's API object has an error summary; the summary.
async fn wait_summary(app: &App, id: &str, limit: Duration) -> Value {
    let run = app
        .wait_for(id, limit, "error summary", |r| {
            r["error_summary"].is_object()
        })
        .await;
    run["error_summary"].clone()
}

/// The `pushpool.flow-run.<state>` event of run `id`.
async fn state_event(app: &App, id: &str, state: &str) -> Value {
    let (s, b) = app
        .get(&format!(
            "/events?resource=pushpool.flow-run.{id}&event=pushpool.flow-run.{state}"
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    let events = b.get("events").unwrap_or(&b).as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{b}");
    events[0].clone()
}

fn evidence(summary: &Value) -> Vec<String> {
    summary["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// process

#[cfg(feature = "process")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_python_error_has_a_user_code_summary_in_the_run_and_its_failed_event() {
    let app = spawn_app().await;
    app.ensure_pool("local", json!({"name": "local", "type": "process"}))
        .await;
    let script = "print('loading rows', flush=True)\nraise ValueError('bad input row 7')";
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": "py", "work_pool": "local",
                   "job_variables": {"command": format!("python3 -c \"{script}\"")}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = app.run("py").await;
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(state(&run), ("FAILED", "exit code 1"), "{run}");
    let summary = wait_summary(&app, &id, Duration::from_secs(5)).await;
    assert_eq!(summary["cause"], "user_code_error", "{summary}");
    assert_eq!(
        summary["explanation"],
        "the job's Python code raised ValueError"
    );
    assert_eq!(
        evidence(&summary),
        ["ValueError: bad input row 7", "exit code 1"]
    );
    // The Failed event carries the same summary (notifications template over it).
    let event = state_event(&app, &id, "Failed").await;
    assert_eq!(event["payload"]["error_summary"], summary, "{event}");
    app.stop().await;
}

#[cfg(feature = "process")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_logs_can_be_followed_with_after_and_wait() {
    let app = spawn_app().await;
    app.ensure_pool("local", json!({"name": "local", "type": "process"}))
        .await;
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": "slow", "work_pool": "local",
                   "job_variables": {"command": "echo first; sleep 2; echo second"}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = app.run("slow").await;
    let lines = wait_log(&app, &id, "stdout", "first", Duration::from_secs(20)).await;
    let last = lines.last().unwrap()["id"].as_str().unwrap().to_string();
    assert!(!last.is_empty());
    // A long-poll after the last line answers when `second` is stored, not at once and not at
    // the end of the wait.
    let asked = Instant::now();
    let (s, page) = app
        .get(&format!("/flow_runs/{id}/logs?after={last}&wait=30"))
        .await;
    assert_eq!(s, 200, "{page}");
    let page = page.as_array().unwrap();
    assert!(!page.is_empty());
    assert!(page
        .iter()
        .all(|l| l["id"].as_str().unwrap() > last.as_str()));
    assert!(
        asked.elapsed() > Duration::from_millis(500),
        "answered before a new line"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(25),
        "waited to the end"
    );
    app.wait_terminal(&id, Duration::from_secs(20)).await;
    // Bad input names the parameter.
    let (s, b) = app.get(&format!("/flow_runs/{id}/logs?wait=61")).await;
    assert_eq!((s, b["field"].as_str()), (422, Some("wait")), "{b}");
    let (s, b) = app.get(&format!("/flow_runs/{id}/logs?wait=x")).await;
    assert_eq!(s, 422, "{b}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// aws-lambda:push

#[cfg(feature = "aws-lambda")]
mod lambda {
    use base64::Engine as _;
    use pushpool_testkit::aws_lambda_fake::{Fault, LambdaFake};
    use pushpool_testkit::http;

    use super::*;

    const REGION: &str = "us-east-1";

    fn moto_url() -> Option<String> {
        pushpool_testkit::env::aws_test_credentials();
        match std::env::var("PUSHPOOL_TEST_MOTO_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("PUSHPOOL_TEST_MOTO_URL is not set: under CI=true the moto-backed tests must run");
                }
                eprintln!(
                    "SKIPPED: PUSHPOOL_TEST_MOTO_URL not set (source scripts/test-emulators.sh)"
                );
                None
            }
        }
    }

    async fn deployment(app: &App, endpoint: &str, function: &str, vars: Value) {
        app.ensure_pool(
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
        let (s, b) = app
            .post(
                "/deployments",
                json!({"name": "job", "work_pool": "lambda", "job_variables": job_variables}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    /// Calls the CloudWatch Logs JSON API of moto.
    async fn logs_api(moto: &str, action: &str, body: Value) -> Value {
        let r = http()
            .post(format!("{moto}/"))
            .header("Authorization", format!("AWS4-HMAC-SHA256 Credential=testing/20240101/{REGION}/logs/aws4_request, SignedHeaders=host, Signature=0"))
            .header("X-Amz-Target", format!("Logs_20140328.{action}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(
            status.is_success() || text.contains("ResourceAlreadyExists"),
            "{action}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A Python function's log for one invocation, as Lambda writes it to CloudWatch.
    fn invocation_log(request_id: &str) -> Vec<String> {
        vec![
            format!("START RequestId: {request_id} Version: $LATEST"),
            "loading rows".into(),
            "[ERROR] KeyError: 'rows'".into(),
            "Traceback (most recent call last):".into(),
            "  File \"/var/task/app.py\", line 5, in handler".into(),
            "    n = event['rows']".into(),
            "KeyError: 'rows'".into(),
            format!("END RequestId: {request_id}"),
            format!("REPORT RequestId: {request_id}\tDuration: 2.35 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\tMax Memory Used: 39 MB"),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fake_function_error_summary_names_type_and_message_and_the_log_tail_is_in_the_run_logs(
    ) {
        pushpool_testkit::env::aws_test_credentials();
        let fake = LambdaFake::start(None).await;
        let request_id = "6d8e3f0a-1b2c-4d5e-8f90-0a1b2c3d4e5f";
        let tail = [
            format!("START RequestId: {request_id} Version: $LATEST"),
            "loading rows".into(),
            "[ERROR] ValueError: bad input row 7".into(),
            "Traceback (most recent call last):".into(),
            "  File \"/var/task/app.py\", line 9, in handler".into(),
            "    raise ValueError(\"bad input row 7\")".into(),
            format!("END RequestId: {request_id}"),
            format!("REPORT RequestId: {request_id}\tDuration: 2.35 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\tMax Memory Used: 39 MB"),
        ]
        .join("\n");
        // Lambda's answer to an Invoke whose function raised, with LogType=Tail.
        fake.always(
            "etl",
            Fault::Reply {
                status: 200,
                headers: vec![
                    ("x-amz-function-error".into(), "Unhandled".into()),
                    ("x-amz-executed-version".into(), "$LATEST".into()),
                    (
                        "x-amz-log-result".into(),
                        base64::engine::general_purpose::STANDARD.encode(&tail),
                    ),
                ],
                body: json!({
                    "errorMessage": "bad input row 7", "errorType": "ValueError",
                    "requestId": request_id,
                    "stackTrace": ["  File \"/var/task/app.py\", line 9, in handler\n    raise ValueError(\"bad input row 7\")\n"]
                })
                .to_string(),
            },
        );
        let app = spawn_app().await;
        deployment(&app, &fake.url, "etl", json!({})).await;
        let id = app.run("job").await;
        let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
        assert_eq!(state(&run).0, "FAILED", "{run}");
        let summary = wait_summary(&app, &id, Duration::from_secs(5)).await;
        assert_eq!(summary["cause"], "user_code_error", "{summary}");
        assert_eq!(summary["explanation"], "the function raised ValueError");
        assert_eq!(evidence(&summary)[0], "ValueError: bad input row 7");
        let event = state_event(&app, &id, "Failed").await;
        assert_eq!(event["payload"]["error_summary"], summary, "{event}");
        // The tail is in the run's log, as provider lines, in order.
        let lines = wait_log(
            &app,
            &id,
            "provider",
            "REPORT RequestId",
            Duration::from_secs(5),
        )
        .await;
        let provider: Vec<&str> = lines
            .iter()
            .filter(|l| l["stream"] == "provider")
            .map(|l| l["line"].as_str().unwrap())
            .collect();
        assert_eq!(provider, tail.lines().collect::<Vec<_>>());
        let calls = fake.invocations("etl");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].log_type.as_deref(), Some("Tail"));
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn moto_event_invocation_reads_its_lines_from_cloudwatch_logs() {
        let Some(moto) = moto_url() else { return };
        let fake = LambdaFake::start(Some(moto.clone())).await;
        let function = format!("cw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        // moto accepts the async Invoke of any name (202) and never runs code.
        let app = spawn_app().await;
        deployment(
            &app,
            &fake.url,
            &function,
            json!({"invocation_type": "Event", "timeout_seconds": 3, "watchdog_grace_seconds": 2}),
        )
        .await;
        let id = app.run("job").await;
        let running = app.wait_running(&id, Duration::from_secs(20)).await;
        let request_id = infra(&running).split(':').nth(3).unwrap().to_string();
        // Seed the function's log the way Lambda writes it: another invocation first, then this
        // one, in the group /aws/lambda/<function>.
        let group = format!("/aws/lambda/{function}");
        let stream = "2026/12/01/[$LATEST]4f1c9e0b2a7d4e55a1b3c5d7e9f01234";
        logs_api(&moto, "CreateLogGroup", json!({"logGroupName": group})).await;
        logs_api(
            &moto,
            "CreateLogStream",
            json!({"logGroupName": group, "logStreamName": stream}),
        )
        .await;
        let now = chrono::Utc::now().timestamp_millis();
        let mut events: Vec<Value> = invocation_log("00000000-other-invocation")
            .into_iter()
            .chain(invocation_log(&request_id))
            .enumerate()
            .map(|(i, m)| json!({"timestamp": now + i as i64, "message": m}))
            .collect();
        events.push(json!({"timestamp": now + 100, "message": "START RequestId: later-one Version: $LATEST"}));
        logs_api(
            &moto,
            "PutLogEvents",
            json!({"logGroupName": group, "logStreamName": stream, "logEvents": events}),
        )
        .await;
        let lines = wait_log(
            &app,
            &id,
            "provider",
            "REPORT RequestId",
            Duration::from_secs(30),
        )
        .await;
        let provider: Vec<&str> = lines
            .iter()
            .filter(|l| l["stream"] == "provider")
            .map(|l| l["line"].as_str().unwrap())
            .collect();
        assert_eq!(provider, invocation_log(&request_id), "{lines:#?}");
        // The provider's timestamps are kept.
        let first = lines.iter().find(|l| l["stream"] == "provider").unwrap();
        let ts = chrono::DateTime::parse_from_rfc3339(first["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert_eq!(ts, now + 9, "{first}");
        let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
        assert_eq!(state(&run).0, "CRASHED", "{run}");
        // The watchdog ended it; the evidence includes the function's own last line.
        let summary = wait_summary(&app, &id, Duration::from_secs(10)).await;
        assert_eq!(summary["cause"], "timeout", "{summary}");
        app.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// cloud-run-v2:push

#[cfg(feature = "gcp-cloud-run")]
mod cloud_run {
    use pushpool_testkit::cloud_run_fake::{CloudRunFake, Outcome};

    use super::*;

    async fn setup(extra: Value) -> (CloudRunFake, App) {
        let fake = CloudRunFake::start().await;
        let app = spawn_app().await;
        app.ensure_pool("cr", json!({"name": "cr", "type": "cloud-run-v2:push"}))
            .await;
        let mut vars = json!({
            "image": "us-docker.pkg.dev/test-project/jobs/etl:1.4",
            "project": "test-project", "region": "us-central1", "endpoint_url": fake.url,
            "credentials": {"anonymous": true}, "command": "python -m etl"
        });
        for (k, v) in extra.as_object().unwrap() {
            vars[k] = v.clone();
        }
        let (s, b) = app
            .post(
                "/deployments",
                json!({"name": "job", "work_pool": "cr", "job_variables": vars}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        (fake, app)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fake_task_failure_shows_the_containers_lines_and_a_summary_naming_the_exit_code() {
        let (fake, app) = setup(json!({})).await;
        let id = app.run("job").await;
        let running = app.wait_running(&id, Duration::from_secs(15)).await;
        let execution = infra(&running);
        // A failing read first: one warning line, then the next read succeeds.
        fake.fail_logs_next(1);
        fake.seed_logs(&execution, &[("stdout", "loading rows")]);
        wait_log(
            &app,
            &id,
            "system",
            "reading the job's logs",
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(state(&app.flow_run(&id).await).0, "RUNNING");
        wait_log(
            &app,
            &id,
            "provider",
            "loading rows",
            Duration::from_secs(15),
        )
        .await;
        fake.seed_logs(
            &execution,
            &[
                ("stderr", "Traceback (most recent call last):"),
                ("stderr", "  File \"/app/etl.py\", line 9, in <module>"),
                ("stderr", "    raise ValueError(\"bad input row 7\")"),
                ("stderr", "ValueError: bad input row 7"),
                ("varlog/system", "Container called exit(1)."),
            ],
        );
        fake.finish_all(Outcome::Failed(
            "Task job-task0 failed with message: The container exited with an error.".into(),
        ));
        let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
        assert_eq!(state(&run).0, "FAILED", "{run}");
        let lines = wait_log(
            &app,
            &id,
            "provider",
            "Container called exit(1).",
            Duration::from_secs(15),
        )
        .await;
        let provider: Vec<&str> = lines
            .iter()
            .filter(|l| l["stream"] == "provider")
            .map(|l| l["line"].as_str().unwrap())
            .collect();
        assert_eq!(
            provider,
            [
                "loading rows",
                "Traceback (most recent call last):",
                "  File \"/app/etl.py\", line 9, in <module>",
                "    raise ValueError(\"bad input row 7\")",
                "ValueError: bad input row 7",
                "Container called exit(1)."
            ],
            "each entry once: {lines:#?}"
        );
        let warnings = lines
            .iter()
            .filter(|l| {
                l["line"]
                    .as_str()
                    .unwrap()
                    .contains("reading the job's logs")
            })
            .count();
        assert_eq!(warnings, 1);
        // The summary names the exit code; the final read may sharpen it after the end.
        let summary = app
            .wait_for(
                &id,
                Duration::from_secs(15),
                "summary with exit code",
                |r| r["error_summary"]["evidence"][0] == "exit code 1",
            )
            .await["error_summary"]
            .clone();
        assert_eq!(summary["cause"], "user_code_error", "{summary}");
        assert_eq!(evidence(&summary)[1], "ValueError: bad input row 7");
        assert!(fake.logs_calls() >= 2);
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fake_execution_stopped_by_the_watchdog_has_cause_timeout() {
        let (fake, app) = setup(json!({"timeout": 1, "watchdog_grace_seconds": 1})).await;
        let id = app.run("job").await;
        let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
        assert_eq!(state(&run).0, "FAILED", "{run}");
        let summary = wait_summary(&app, &id, Duration::from_secs(5)).await;
        assert_eq!(summary["cause"], "timeout", "{summary}");
        assert!(
            evidence(&summary)[0].contains("watchdog_grace_seconds"),
            "{summary}"
        );
        let event = state_event(&app, &id, "Failed").await;
        assert_eq!(event["payload"]["error_summary"]["cause"], "timeout");
        assert!(fake.cancel_calls() >= 1);
        app.stop().await;
    }
}
