use std::sync::Arc;

use pushpool_provider::{DiscardLogs, JobStatus, RunSpec, Secret};
use serde_json::{json, Value};

use super::*;

fn run(attempt: u32) -> RunSpec {
    RunSpec {
        run_id: uuid::Uuid::new_v4(),
        attempt,
        workspace: "default".into(),
        work_pool: "cr".into(),
        deployment: "d".into(),
        parameters: json!({}),
        api_url: "http://127.0.0.1:4300".into(),
        run_token: Secret::new("pp_run_token"),
        logs: Arc::new(DiscardLogs),
    }
}

fn rendered(extra: Value) -> Value {
    let mut v = json!({
        "region": "us-central1", "timeout": 600, "keep_job": false, "project": "proj",
        "job_body": {"launchStage": "BETA", "template": {"template": {
            "maxRetries": 0, "timeout": 600, "vpcAccess": {},
            "containers": [{"env": [], "image": "img", "command": "python -m 'my app'", "args": [],
                            "resources": {"limits": {"cpu": "1000m", "memory": "512Mi"}}}]}}}
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

#[test]
fn template_is_valid_json_with_prefect_defaults() {
    let t = CloudRunProvider::template();
    let p = &t["variables"]["properties"];
    assert_eq!(p["region"]["default"], "us-central1");
    assert_eq!(p["cpu"]["default"], "1000m");
    assert_eq!(p["memory"]["default"], "512Mi");
    assert_eq!(p["timeout"]["default"], 600);
    assert_eq!(p["timeout"]["maximum"], 604800);
    assert_eq!(p["max_retries"]["default"], 0);
    assert_eq!(p["keep_job"]["default"], false);
    assert_eq!(p["launch_stage"]["default"], "BETA");
}

#[test]
fn job_names_are_deterministic_and_valid() {
    let r = run(12);
    let id = job_id(&r);
    assert_eq!(id, job_id(&r));
    assert!(id.len() <= 63);
    assert!(id.starts_with(|c: char| c.is_ascii_lowercase()));
    assert!(id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    assert_ne!(id, job_id(&run(13)));
}

#[test]
fn validate_normalises_the_body_like_prefect() {
    let c = CloudRunJobConfig::from_rendered(&rendered(json!({}))).unwrap();
    let task = &c.job_body["template"]["template"];
    assert_eq!(task["timeout"], "600s");
    assert!(task.get("vpcAccess").is_none());
    assert_eq!(
        task["containers"][0]["command"],
        json!(["python", "-m", "my app"])
    );
    assert!(task["containers"][0].get("args").is_none());
    assert_eq!(c.project.as_deref(), Some("proj"));
    assert_eq!(c.credentials, Credentials::ApplicationDefault);
}

#[test]
fn validate_refuses_bad_fields() {
    let e = CloudRunJobConfig::from_rendered(&rendered(json!({"timeout": 700000}))).unwrap_err();
    assert!(e.to_string().contains("`timeout`"), "{e}");
    let e = CloudRunJobConfig::from_rendered(&rendered(json!({"functon": 1}))).unwrap_err();
    assert!(e.to_string().contains("`functon`"), "{e}");
    let mut r = rendered(json!({}));
    r["job_body"]["template"]["template"]["containers"][0]["image"] = json!("");
    let e = CloudRunJobConfig::from_rendered(&r).unwrap_err();
    assert!(e.to_string().contains("`image`"), "{e}");
}

#[test]
fn credentials_are_never_printed() {
    let c = CloudRunJobConfig::from_rendered(&rendered(json!({"credentials": {
        "service_account_info": {"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----SECRETKEY", "project_id": "p2"}
    }, "project": null})))
    .unwrap();
    assert_eq!(c.project.as_deref(), Some("p2"));
    assert!(!format!("{c:?}").contains("SECRETKEY"));
}

#[test]
fn job_body_carries_env_labels_and_the_run_token() {
    let c = CloudRunJobConfig::from_rendered(&rendered(
        json!({"env": {"A": "1"}, "labels": {"team": "data"}}),
    ))
    .unwrap();
    let r = run(1);
    let body = CloudRunProvider::job_body(&r, &c);
    let env = &body["template"]["template"]["containers"][0]["env"];
    assert_eq!(env[0], json!({"name": "A", "value": "1"}));
    assert_eq!(
        env[3],
        json!({"name": "PUSHPOOL_RUN_TOKEN", "value": "pp_run_token"})
    );
    assert_eq!(body["labels"]["team"], "data");
    assert_eq!(body["labels"]["pushpool-run-id"], r.run_id.to_string());
}

#[test]
fn shell_split_handles_quotes() {
    assert_eq!(
        shell_split(r#"a "b c" 'd e' f\ g"#).unwrap(),
        vec!["a", "b c", "d e", "f g"]
    );
    assert!(shell_split("a 'b").is_none());
}

#[test]
fn executions_map_to_job_statuses() {
    let c = CloudRunJobConfig::from_rendered(&rendered(json!({}))).unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let ex = |v: Value| {
        let mut e =
            json!({"name": "projects/p/locations/r/jobs/j/executions/j-abc", "createTime": now});
        for (k, val) in v.as_object().unwrap() {
            e[k] = val.clone();
        }
        execution_status(&e, &c)
    };
    assert_eq!(ex(json!({})), JobStatus::Pending);
    assert_eq!(
        ex(json!({"runningCount": 1, "startTime": now})),
        JobStatus::Running
    );
    assert!(matches!(
        ex(
            json!({"completionTime": now, "succeededCount": 1, "taskCount": 1,
        "conditions": [{"type": "Completed", "state": 4}]})
        ),
        JobStatus::Completed { .. }
    ));
    let failed = ex(json!({"completionTime": now, "failedCount": 1,
        "conditions": [{"type": "Completed", "state": "CONDITION_FAILED", "message": "Task j-abc-task0 failed with exit code 3"}]}));
    assert_eq!(
        failed,
        JobStatus::Failed {
            message: "Cloud Run execution `j-abc` failed: Task j-abc-task0 failed with exit code 3"
                .into()
        }
    );
    let timed_out = ex(json!({"completionTime": now, "failedCount": 1,
        "conditions": [{"type": "Completed", "state": 3, "message": "The configured timeout was reached."}]}));
    assert!(
        matches!(&timed_out, JobStatus::Failed { message } if message.contains("timed out")),
        "{timed_out:?}"
    );
    assert_eq!(
        ex(json!({"completionTime": now, "cancelledCount": 1,
        "conditions": [{"type": "Completed", "state": 3, "executionReason": 3}]})),
        JobStatus::Cancelled
    );
    assert_eq!(
        ex(
            json!({"cancelledCount": 1, "conditions": [{"type": "Completed",
            "state": "CONDITION_FAILED", "executionReason": "CANCELLED"}]})
        ),
        JobStatus::Cancelled
    );
    let old = (chrono::Utc::now() - chrono::Duration::seconds(100_000)).to_rfc3339();
    let stuck = ex(json!({"runningCount": 1, "startTime": old}));
    assert!(
        matches!(&stuck, JobStatus::Failed { message } if message.contains("timed out")),
        "{stuck:?}"
    );
}

#[test]
fn errors_are_classified() {
    let e = |code: u16| ApiError::Status {
        code,
        status: String::new(),
        message: "m".into(),
        retry_after: None,
    };
    for code in [429, 500, 502, 503, 504] {
        assert!(e(code).into_provider("x").is_retriable(), "{code}");
    }
    assert!(matches!(
        e(404).into_provider("x"),
        ProviderError::NotFound { .. }
    ));
    // ALREADY_EXISTS by its google.rpc status name, not by HTTP 409, which ABORTED shares.
    let named = |code: u16, status: &str| ApiError::Status {
        code,
        status: status.into(),
        message: "m".into(),
        retry_after: None,
    };
    assert!(named(409, "ALREADY_EXISTS").is_already_exists());
    assert!(!named(409, "ABORTED").is_already_exists());
    assert!(!e(409).is_already_exists());
    assert!(named(409, "ABORTED").into_provider("x").is_retriable());
    assert!(matches!(
        e(403).into_provider("x"),
        ProviderError::Permanent { .. }
    ));
    assert!(ApiError::Transport("reset".into())
        .into_provider("x")
        .is_retriable());
}

#[test]
fn default_template_conforms() {
    let p = CloudRunProvider::new();
    pushpool_provider::conformance::check_template(&p).unwrap();
    pushpool_provider::conformance::check_rejects(
        &p,
        &rendered(json!({"keep_job": "yes"})),
        "keep_job",
    )
    .unwrap();
    pushpool_provider::conformance::check_rejects(
        &p,
        &rendered(json!({"env": {"A": [1]}})),
        "env.A",
    )
    .unwrap();
}

#[test]
fn prefect_style_values_are_read_leniently() {
    let c = CloudRunJobConfig::from_rendered(&rendered(json!({
        "timeout": "90s", "env": {"N": 3, "B": true, "GONE": null},
        "credentials": {"$ref": {"block_document_id": "x"}}
    })))
    .unwrap();
    assert_eq!(c.timeout_seconds, 90);
    assert_eq!(c.env["N"], "3");
    assert_eq!(c.env["B"], "true");
    assert!(!c.env.contains_key("GONE"));
    assert_eq!(c.credentials, Credentials::ApplicationDefault);
    let e = CloudRunJobConfig::from_rendered(&rendered(
        json!({"credentials": {"servce_account_file": "x"}}),
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("`credentials.servce_account_file`"),
        "{e}"
    );
}

/// A pool with no credentials on a machine with none: the submission fails at once, permanently,
/// saying how to provide them (it used to be retried as transient until the submit deadline).
#[tokio::test]
async fn missing_credentials_fail_fast_saying_how_to_provide_them() {
    let p = CloudRunProvider::with_ambient_credentials(AmbientCredentials::Nothing);
    let job =
        CloudRunJobConfig::from_rendered(&rendered(json!({"endpoint_url": "http://127.0.0.1:9"})))
            .unwrap();
    assert_eq!(job.credentials, Credentials::ApplicationDefault);
    let started = std::time::Instant::now();
    let err = p.submit(&run(1), &job).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    let message = err.to_string();
    for hint in [
        "no Google Cloud credentials",
        "`credentials` job variable",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "metadata server",
    ] {
        assert!(message.contains(hint), "{hint}: {message}");
    }
    let status = p
        .status("projects/p/locations/r/jobs/j/executions/e", &job)
        .await;
    assert!(
        matches!(status, Err(ProviderError::Permanent { .. })),
        "{status:?}"
    );
}

fn config_with(extra: Value) -> CloudRunJobConfig {
    CloudRunJobConfig::from_rendered(&rendered(extra)).unwrap()
}

fn execution(fields: Value) -> Value {
    let now = chrono::Utc::now().to_rfc3339();
    let mut e = json!({"name": "projects/p/locations/r/jobs/j/executions/j-abc",
                       "createTime": now, "startTime": now});
    for (k, val) in fields.as_object().unwrap() {
        e[k] = val.clone();
    }
    e
}

/// Issue 16: `completionTime` is not ordered with the conditions; only the `Completed`
/// condition says the execution ended (and how).
#[test]
fn completion_time_without_a_final_completed_condition_is_still_running() {
    let c = config_with(json!({}));
    let now = chrono::Utc::now().to_rfc3339();
    let e = execution(
        json!({"completionTime": now, "runningCount": 0, "succeededCount": 1,
        "taskCount": 1, "conditions": [
            {"type": "Started", "state": "CONDITION_SUCCEEDED"},
            {"type": "Completed", "state": "CONDITION_RECONCILING"}]}),
    );
    assert_eq!(execution_status(&e, &c), JobStatus::Running);
    // Other conditions succeeding say nothing about the end.
    let e = execution(json!({"runningCount": 1, "conditions": [
        {"type": "ResourcesAvailable", "state": 4}, {"type": "Started", "state": 4}]}));
    assert_eq!(execution_status(&e, &c), JobStatus::Running);
    // The condition alone ends it, with or without completionTime.
    let e = execution(json!({"succeededCount": 1, "taskCount": 1,
        "conditions": [{"type": "Completed", "state": 4}]}));
    assert!(matches!(
        execution_status(&e, &c),
        JobStatus::Completed { .. }
    ));
}

/// Issue 16: a multi-task execution that failed has cancelled tasks too (Cloud Run stops the
/// rest); only `executionReason` CANCELLED means the execution was cancelled.
#[test]
fn a_failed_execution_with_cancelled_tasks_is_failed_not_cancelled() {
    let c = config_with(json!({}));
    let e = execution(
        json!({"taskCount": 4, "failedCount": 1, "cancelledCount": 3,
        "completionTime": chrono::Utc::now().to_rfc3339(),
        "conditions": [{"type": "Completed", "state": "CONDITION_FAILED",
            "executionReason": "NON_ZERO_EXIT_CODE",
            "message": "Task j-abc-task2 failed with message: The container exited with an error."}]}),
    );
    assert_eq!(
        execution_status(&e, &c),
        JobStatus::Failed {
            message: "Cloud Run execution `j-abc` failed: Task j-abc-task2 failed with message: The container exited with an error.".into()
        }
    );
    // Being cancelled is not cancelled yet: the run stays RUNNING until CANCELLED.
    let e = execution(
        json!({"runningCount": 1, "conditions": [{"type": "Completed",
        "state": 2, "executionReason": 4}]}),
    );
    assert_eq!(execution_status(&e, &c), JobStatus::Running);
}

/// Issue 16: tasks run in waves of `parallelism`; the watchdog window is
/// `ceil(taskCount / parallelism) × timeout × (maxRetries + 1) + grace`.
#[test]
fn the_watchdog_window_counts_task_waves() {
    let c = config_with(json!({"timeout": 600, "watchdog_grace_seconds": 300}));
    let started = |secs: i64| (chrono::Utc::now() - chrono::Duration::seconds(secs)).to_rfc3339();
    // 10 tasks, 2 at a time: 5 waves × 600 s + 300 s = 3,300 s.
    let running = |secs: i64| {
        execution(json!({"taskCount": 10, "parallelism": 2, "runningCount": 2,
            "template": {"timeout": "600s", "maxRetries": 0}, "startTime": started(secs)}))
    };
    let w = watchdog_window(&running(0), &c);
    assert_eq!((w.waves, w.duration()), (5, Duration::from_secs(3300)));
    assert_eq!(execution_status(&running(1000), &c), JobStatus::Running);
    assert_eq!(execution_status(&running(3200), &c), JobStatus::Running);
    let late = execution_status(&running(3400), &c);
    assert!(
        matches!(&late, JobStatus::Failed { message } if message.contains("timed out: still not finished 3300s") && message.contains("5 wave(s) of 10 task(s) at parallelism 2")),
        "{late:?}"
    );
    // Retries multiply each wave; an unknown parallelism (0) counts as one task at a time.
    let e = execution(json!({"taskCount": 3, "parallelism": 0,
        "template": {"timeout": "100s", "maxRetries": 2}}));
    assert_eq!(
        watchdog_window(&e, &c).duration(),
        Duration::from_secs(3 * 100 * 3 + 300)
    );
    // Without the execution's counts, the job body's own `taskCount` and `parallelism`.
    let mut r = rendered(json!({"timeout": 60, "watchdog_grace_seconds": 0}));
    r["job_body"]["template"]["taskCount"] = json!(6);
    r["job_body"]["template"]["parallelism"] = json!(4);
    let c = CloudRunJobConfig::from_rendered(&r).unwrap();
    assert_eq!(c.watchdog_window(), Duration::from_secs(120));
    r["job_body"]["template"]["taskCount"] = json!("many");
    let e = CloudRunJobConfig::from_rendered(&r).unwrap_err();
    assert!(
        e.to_string().contains("`job_body.template.taskCount`"),
        "{e}"
    );
}

#[test]
fn keep_job_labels_carry_the_retention() {
    let r = run(1);
    let body = CloudRunProvider::job_body(&r, &config_with(json!({})));
    assert!(body["labels"].get(KEEP_LABEL).is_none(), "{body}");
    let c = config_with(json!({"keep_job": true, "job_retention_days": 30}));
    let body = CloudRunProvider::job_body(&r, &c);
    assert_eq!(body["labels"][KEEP_LABEL], "true");
    assert_eq!(body["labels"][RETENTION_LABEL], "30");
    assert_eq!(config_with(json!({"keep_job": true})).job_retention_days, 7);
    let e = CloudRunJobConfig::from_rendered(&rendered(json!({"job_retention_days": 5000})))
        .unwrap_err();
    assert!(e.to_string().contains("`job_retention_days`"), "{e}");
}
