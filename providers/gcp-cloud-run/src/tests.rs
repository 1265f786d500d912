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
    assert!(e(409).is_already_exists());
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
