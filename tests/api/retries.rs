//! Retries and tags end to end (issue 13; docs/retries.md), on SQLite and PostgreSQL: the API
//! with its controller and the `process` provider. A job that fails twice then succeeds, one
//! that always fails, one that reports its own failure through its run token, a cancelled run;
//! the fields on deployments and runs, the run list's filters, and refusals naming the field.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pushpool_testkit::{bootstrap_fresh, both_backends, connect, App, TestDb};
use serde_json::{json, Value};

both_backends!(
    a_job_failing_twice_then_succeeding_completes_on_its_third_attempt,
    a_job_that_always_fails_ends_failed_after_retries_plus_one_attempts,
    a_failure_the_job_reports_itself_is_retried,
    a_cancelled_run_is_not_retried,
    retry_fields_and_tags_are_shown_inherited_filtered_and_checked,
    a_remote_controller_naming_its_attempt_cannot_write_to_the_next,
);

async fn spawn_app(db: &TestDb) -> App {
    let store = connect(db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    App::serve(&db.url, store, key, home, true).await
}

/// Pool `local` and deployment `name` running `command` with these extra deployment fields;
/// `dir` is writable by the job.
async fn deployment(app: &App, name: &str, command: &str, dir: &std::path::Path, extra: Value) {
    let (s, _) = app.get("/work_pools/local").await;
    if s == 404 {
        let (s, b) = app
            .post("/work_pools", json!({"name": "local", "type": "process"}))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let mut body = json!({"name": name, "work_pool": "local", "job_variables": {
        "command": command,
        "write_paths": [dir.to_str().unwrap()],
        "env": {"COUNT_FILE": dir.join("attempts").to_str().unwrap()},
    }});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (s, b) = app.post("/deployments", body).await;
    assert_eq!(s, 201, "{b}");
}

/// Counts its attempts in `$COUNT_FILE`, then runs `then` with `$n` the attempt number.
fn counting(then: &str) -> String {
    format!(
        "n=$(cat \"$COUNT_FILE\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$COUNT_FILE\"; echo attempt $n; {then}"
    )
}

async fn patch(app: &App, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .patch(app.url(path))
        .bearer_auth(&app.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn attempts_counted(dir: &std::path::Path) -> u32 {
    std::fs::read_to_string(dir.join("attempts"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

async fn history(app: &App, id: &str) -> Vec<Value> {
    let (s, h) = app.get(&format!("/flow_runs/{id}/states")).await;
    assert_eq!(s, 200, "{h}");
    h.as_array().unwrap().clone()
}

fn names(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|h| {
            format!(
                "{}/{}",
                h["type"].as_str().unwrap(),
                h["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn time(entry: &Value) -> DateTime<Utc> {
    entry["timestamp"].as_str().unwrap().parse().unwrap()
}

async fn a_job_failing_twice_then_succeeding_completes_on_its_third_attempt(db: TestDb) {
    let app = spawn_app(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let command = counting("[ $n -ge 3 ] || { echo not yet >&2; exit 1; }");
    let retry = json!({"retries": 3, "retry_delay_seconds": [1, 2]});
    deployment(&app, "flaky", &command, dir.path(), retry).await;
    let id = app.run("flaky").await;
    let run = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(run["state"]["type"], "COMPLETED", "{run}");
    assert_eq!(run["attempt"], 3, "{run}");
    assert_eq!(attempts_counted(dir.path()), 3, "the job ran three times");

    let h = history(&app, &id).await;
    assert_eq!(
        names(&h),
        [
            "SCHEDULED/Scheduled",
            "PENDING/Submitting",
            "RUNNING/Running",
            "FAILED/Failed",
            "SCHEDULED/AwaitingRetry",
            "PENDING/Submitting",
            "RUNNING/Running",
            "FAILED/Failed",
            "SCHEDULED/AwaitingRetry",
            "PENDING/Submitting",
            "RUNNING/Running",
            "COMPLETED/Completed",
        ]
    );
    assert_eq!(h[3]["message"], "exit code 1");
    // The delays were honoured: no attempt was claimed before its retry was due.
    for (failed, claimed, delay) in [(3, 5, 1), (7, 9, 2)] {
        let waited = time(&h[claimed]) - time(&h[failed]);
        assert!(
            waited >= chrono::Duration::seconds(delay),
            "attempt after entry {failed} claimed after {waited} (< {delay}s): {h:?}"
        );
    }
    // Each attempt was a new job at the provider.
    let (_, events) = app.get("/events?limit=500").await;
    let mut infra: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["event"] == "pushpool.flow-run.infrastructure-assigned"
                && e["resource"]["id"] == format!("pushpool.flow-run.{id}")
        })
        .map(|e| {
            e["payload"]["infrastructure_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    infra.sort();
    infra.dedup();
    assert_eq!(infra.len(), 3, "{infra:?}");
    let (_, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    let lines: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .filter(|l| l.starts_with("attempt "))
        .collect();
    assert_eq!(lines, ["attempt 1", "attempt 2", "attempt 3"]);
    app.stop().await;
}

async fn a_job_that_always_fails_ends_failed_after_retries_plus_one_attempts(db: TestDb) {
    let app = spawn_app(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let command = counting("exit 7");
    deployment(&app, "broken", &command, dir.path(), json!({"retries": 2})).await;
    let id = app.run("broken").await;
    let run = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(run["state"]["type"], "FAILED", "{run}");
    assert_eq!(run["state"]["message"], "exit code 7");
    assert_eq!(run["attempt"], 3);
    assert_eq!(attempts_counted(dir.path()), 3);
    let h = names(&history(&app, &id).await);
    assert_eq!(
        h.iter().filter(|n| *n == "FAILED/Failed").count(),
        3,
        "{h:?}"
    );
    assert_eq!(
        h.iter().filter(|n| *n == "SCHEDULED/AwaitingRetry").count(),
        2,
        "{h:?}"
    );
    assert_eq!(h.last().unwrap(), "FAILED/Failed");
    // Nothing more happens to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attempts_counted(dir.path()), 3);
    app.stop().await;
}

async fn a_failure_the_job_reports_itself_is_retried(db: TestDb) {
    let app = spawn_app(&db).await;
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 reports FAILED through its run token and exits 0; attempt 2 just succeeds.
    let report = "curl -sf -X POST -H \"Authorization: Bearer $PUSHPOOL_RUN_TOKEN\" \
        -H 'content-type: application/json' -d '{\"type\":\"FAILED\",\"message\":\"the job says no\"}' \
        \"$PUSHPOOL_API_URL/api/runs/$PUSHPOOL_RUN_ID/state\"; sleep 1";
    let command = counting(&format!("[ $n -ge 2 ] || {{ {report}; }}"));
    deployment(&app, "reports", &command, dir.path(), json!({"retries": 1})).await;
    let id = app.run("reports").await;
    let run = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(run["state"]["type"], "COMPLETED", "{run}");
    assert_eq!(run["attempt"], 2);
    let h = history(&app, &id).await;
    let n = names(&h);
    let failed = n
        .iter()
        .position(|x| x == "FAILED/Failed")
        .expect("FAILED kept");
    assert_eq!(h[failed]["message"], "the job says no");
    assert_eq!(n[failed + 1], "SCHEDULED/AwaitingRetry");
    assert_eq!(n.last().unwrap(), "COMPLETED/Completed");
    assert_eq!(attempts_counted(dir.path()), 2);
    app.stop().await;
}

async fn a_cancelled_run_is_not_retried(db: TestDb) {
    let app = spawn_app(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let command = counting("sleep 60");
    deployment(&app, "sleeper", &command, dir.path(), json!({"retries": 3})).await;
    let id = app.run("sleeper").await;
    app.wait_running(&id, Duration::from_secs(20)).await;
    let (s, b) = app
        .post(&format!("/flow_runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let run = app.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(run["state"]["type"], "CANCELLED", "{run}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let run = app.flow_run(&id).await;
    assert_eq!(run["state"]["type"], "CANCELLED", "{run}");
    assert_eq!(run["attempt"], 1);
    let h = names(&history(&app, &id).await);
    assert!(!h.iter().any(|n| n.contains("AwaitingRetry")), "{h:?}");
    assert_eq!(attempts_counted(dir.path()), 1);
    app.stop().await;
}

async fn retry_fields_and_tags_are_shown_inherited_filtered_and_checked(db: TestDb) {
    let app = spawn_app(&db).await;
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "local", "type": "process", "paused": true}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, d) = app
        .post(
            "/deployments",
            json!({"name": "etl", "work_pool": "local", "job_variables": {"command": "true"},
                   "retries": 2, "retry_delay_seconds": [5, 60], "retry_jitter_factor": 0.1,
                   "retry_on": ["CRASHED"], "tags": ["prod", "etl", "prod"]}),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["retries"], 2);
    assert_eq!(d["retry_delay_seconds"], json!([5.0, 60.0]));
    assert_eq!(d["retry_jitter_factor"], 0.1);
    assert_eq!(d["retry_on"], json!(["CRASHED"]));
    assert_eq!(d["tags"], json!(["prod", "etl"]));
    let (_, read) = app.get("/deployments/etl").await;
    assert_eq!(read["tags"], d["tags"]);
    assert_eq!(read["retry_delay_seconds"], d["retry_delay_seconds"]);

    let (s, run) = app
        .post(
            "/deployments/etl/runs",
            json!({"tags": ["manual"], "retries": 0}),
        )
        .await;
    assert_eq!(s, 201, "{run}");
    assert_eq!(run["tags"], json!(["prod", "etl", "manual"]));
    assert_eq!(run["retries"], 0);
    assert_eq!(
        run["retry_on"],
        json!(["CRASHED"]),
        "other fields from the deployment"
    );
    let manual = run["id"].as_str().unwrap().to_string();
    let plain = app.run("etl").await;

    let (s, d) = patch(
        &app,
        "/deployments/etl",
        json!({"retries": 5, "tags": ["nightly"]}),
    )
    .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(
        (d["retries"].clone(), d["tags"].clone()),
        (json!(5), json!(["nightly"]))
    );
    assert_eq!(d["retry_delay_seconds"], json!([5.0, 60.0]), "unchanged");
    let later = app.run("etl").await;

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (s, l) = app.get("/flow_runs?tag=prod").await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(ids(&l), sorted(vec![manual.clone(), plain.clone()]));
    let (_, l) = app.get("/flow_runs?tag=prod&tag=manual").await;
    assert_eq!(ids(&l), vec![manual.clone()]);
    let (_, l) = app.get("/flow_runs?tag=nightly").await;
    assert_eq!(ids(&l), vec![later.clone()]);
    app.post(&format!("/flow_runs/{plain}/cancel"), json!({}))
        .await;
    let (_, l) = app.get("/flow_runs?state=CANCELLED,FAILED").await;
    assert_eq!(ids(&l), vec![plain.clone()]);
    let (_, l) = app.get("/flow_runs?state=CANCELLED&state=SCHEDULED").await;
    assert_eq!(ids(&l).len(), 3);
    let (_, l) = app.get("/flow_runs?since=2999-01-01T00:00:00Z").await;
    assert_eq!(ids(&l), Vec::<String>::new());
    let (_, l) = app
        .get("/flow_runs?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z&tag=etl")
        .await;
    assert_eq!(ids(&l).len(), 2);

    // Refusals name the field.
    for (path, body, field) in [
        (
            "/deployments",
            json!({"name": "x", "work_pool": "local", "job_variables": {"command": "true"}, "retries": -1}),
            "retries",
        ),
        (
            "/deployments",
            json!({"name": "x", "work_pool": "local", "job_variables": {"command": "true"}, "retry_delay_seconds": [1, -2]}),
            "retry_delay_seconds[1]",
        ),
        (
            "/deployments",
            json!({"name": "x", "work_pool": "local", "job_variables": {"command": "true"}, "retry_on": ["FAILED", "RUNNING"]}),
            "retry_on[1]",
        ),
        (
            "/deployments",
            json!({"name": "x", "work_pool": "local", "job_variables": {"command": "true"}, "retry_on": ["NOPE"]}),
            "retry_on[0]",
        ),
        (
            "/deployments",
            json!({"name": "x", "work_pool": "local", "job_variables": {"command": "true"}, "retry_jitter_factor": 11}),
            "retry_jitter_factor",
        ),
        (
            "/deployments",
            json!({"name": "x", "work_pool": "local", "job_variables": {"command": "true"}, "tags": ["a,b"]}),
            "tags[0]",
        ),
        ("/deployments/etl/runs", json!({"retries": 101}), "retries"),
        (
            "/deployments/etl/runs",
            json!({"retry_delay_seconds": "soon"}),
            "retry_delay_seconds",
        ),
        ("/deployments/etl/runs", json!({"tags": [""]}), "tags[0]"),
    ] {
        let (s, b) = app.post(path, body.clone()).await;
        assert_eq!(s, 422, "{body} → {b}");
        assert_eq!(b["field"], field, "{body} → {b}");
    }
    let (s, b) = patch(&app, "/deployments/etl", json!({"retries": 1000})).await;
    assert_eq!((s, b["field"].clone()), (422, json!("retries")), "{b}");
    for (query, field) in [
        ("state=RUNNING,NOPE", "state"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        (
            "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            "until",
        ),
        ("limit=0&tag=x", "limit"),
    ] {
        let (s, b) = app.get(&format!("/flow_runs?{query}")).await;
        assert_eq!(
            (s, b["field"].clone()),
            (422, json!(field)),
            "{query} → {b}"
        );
    }
    app.stop().await;
}

async fn a_remote_controller_naming_its_attempt_cannot_write_to_the_next(db: TestDb) {
    // The API alone: the test is the (remote) controller, through the claim protocol.
    let store = connect(&db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    let app = App::serve(&db.url, store, key, home, false).await;
    let (s, b) = app
        .post("/work_pools", json!({"name": "remote", "type": "process"}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": "r", "work_pool": "remote", "job_variables": {"command": "true"},
                   "retries": 1}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = app.run("r").await;
    let claim = || async {
        let (s, b) = app
            .post(
                "/work_pools/remote/claim",
                json!({"controller_id": "far", "limit": 1}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["runs"][0]["flow_run"]["id"], id.as_str(), "{b}");
        b["runs"][0]["flow_run"]["attempt"].as_i64().unwrap()
    };
    let set_state = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            let mut body = body;
            body["controller_id"] = json!("far");
            app.post(&format!("/flow_runs/{id}/set_state"), body).await
        }
    };
    assert_eq!(claim().await, 1);
    let (s, b) = set_state(json!({"type": "RUNNING", "attempt": 1})).await;
    assert_eq!((s, b["status"].clone()), (200, json!("ACCEPT")), "{b}");
    let (s, b) = set_state(json!({"type": "FAILED", "attempt": 1, "message": "boom"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"]["name"], "AwaitingRetry", "{b}");
    assert_eq!(claim().await, 2);
    let (s, b) = set_state(
        json!({"type": "PENDING", "infrastructure_id": "job-of-attempt-1", "attempt": 1}),
    )
    .await;
    assert_eq!(
        (s, b["field"].clone()),
        (409, json!("infrastructure_id")),
        "{b}"
    );
    let (s, b) = set_state(json!({"type": "RUNNING", "attempt": 1})).await;
    assert_eq!((s, b["status"].clone()), (200, json!("REJECT")), "{b}");
    assert!(
        b["reason"].as_str().unwrap().contains("attempt 1 is over"),
        "{b}"
    );
    let (s, b) = set_state(
        json!({"type": "PENDING", "infrastructure_id": "job-of-attempt-2", "attempt": 2}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = set_state(json!({"type": "RUNNING", "attempt": 2})).await;
    assert_eq!((s, b["status"].clone()), (200, json!("ACCEPT")), "{b}");
    let run = app.flow_run(&id).await;
    assert_eq!(run["infrastructure_id"], "job-of-attempt-2");
    app.stop().await;
}
