//! Schedules over HTTP (issue 13): deployments created with schedules, schedule routes, upcoming
//! slot times, backfill, 422s naming the field at fault, and audit records of every change.

use std::time::{Duration, Instant};

use pushpool::execution::ProcessPools;
use pushpool::scheduler::SchedulerConfig;
use pushpool::server::ServeOptions;
use pushpool_testkit::{both_backends, call_json, serve_fresh, serve_fresh_with, Served, TestDb};
use serde_json::{json, Value};

both_backends!(
    schedules_are_created_listed_paused_and_deleted_over_http,
    bad_schedules_are_refused_naming_the_field,
    backfill_creates_each_slot_once,
    the_servers_scheduler_creates_runs_that_the_controller_completes,
);

async fn call(app: &Served, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/api/workspaces/default{path}", app.base);
    call_json(&app.client, method, &url, &app.admin_key, body).await
}

async fn ok(app: &Served, method: &str, path: &str, body: Option<Value>) -> Value {
    let (s, b) = call(app, method, path, body).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
    b
}

async fn pool(app: &Served) {
    ok(
        app,
        "POST",
        "/work_pools",
        Some(json!({"name": "p", "type": "process"})),
    )
    .await;
}

async fn schedules_are_created_listed_paused_and_deleted_over_http(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    pool(&app).await;
    ok(
        &app,
        "POST",
        "/deployments",
        Some(
            json!({"name": "weekly", "work_pool": "p", "job_variables": {"command": "true"},
                    "schedules": [{"cron": "0 9 * * MON", "timezone": "Europe/Berlin"}]}),
        ),
    )
    .await;
    let list = ok(&app, "GET", "/deployments/weekly/schedules", None).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["kind"], "cron");
    assert_eq!(list[0]["timezone"], "Europe/Berlin");
    assert_eq!(list[0]["catchup"], "none");
    // Upcoming: Mondays 09:00 in Berlin (07:00 or 08:00 UTC), a week apart.
    let up = ok(&app, "GET", "/deployments/weekly/upcoming?limit=3", None).await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = up
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["scheduled_time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    for t in &times {
        let berlin = t.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(berlin.format("%a %H:%M").to_string(), "Mon 09:00");
    }
    // A second schedule, an interval; then pause, resume and delete it.
    let s = ok(
        &app,
        "POST",
        "/deployments/weekly/schedules",
        Some(json!({"interval": "PT30M", "catchup": "latest", "parameters": {"x": 1}})),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["spec"].as_str()),
        (Some("interval"), Some("PT30M"))
    );
    let path = format!("/deployments/weekly/schedules/{id}");
    let paused = ok(&app, "PATCH", &path, Some(json!({"active": false}))).await;
    assert_eq!(paused["active"], false);
    let resumed = ok(
        &app,
        "PATCH",
        &path,
        Some(json!({"active": true, "cron": "*/5 * * * *"})),
    )
    .await;
    assert_eq!(
        (resumed["active"].as_bool(), resumed["kind"].as_str()),
        (Some(true), Some("cron"))
    );
    assert!(resumed["version"].as_i64().unwrap() > s["version"].as_i64().unwrap());
    let (status, _) = call(&app, "DELETE", &path, None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&app, "GET", &path, None).await;
    assert_eq!(status, 404, "{body}");
    // A deployment with schedules can be deleted; its schedules go with it.
    let (status, body) = call(&app, "DELETE", "/deployments/weekly", None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = call(&app, "GET", "/deployments/weekly/schedules", None).await;
    assert_eq!(status, 404);
    // Every change is in the audit log.
    let audit = ok(&app, "GET", "/audit_log?limit=200", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["schedule.create", "schedule.update", "schedule.delete"] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
}

async fn bad_schedules_are_refused_naming_the_field(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    pool(&app).await;
    for (schedule, field) in [
        (json!({"cron": "61 * * * *"}), "schedules[0].cron"),
        (json!({"cron": "* * * *"}), "schedules[0].cron"),
        (json!({"cron": "0 0 31 2 *"}), "schedules[0].cron"),
        (
            json!({"rrule": "DTSTART:20000101T000000\nRRULE:FREQ=MINUTELY"}),
            "schedules[0].rrule",
        ),
        (
            json!({"cron": "@daily", "timezone": "Mars/Base"}),
            "schedules[0].timezone",
        ),
        (json!({"interval": "P1M"}), "schedules[0].interval"),
        (json!({"interval": -5}), "schedules[0].interval"),
        (json!({"rrule": "FREQ=NEVER"}), "schedules[0].rrule"),
        (
            json!({"cron": "@daily", "interval": 60}),
            "schedules[0].interval",
        ),
        (json!({"timezone": "UTC"}), "schedules[0].cron"),
        (
            json!({"cron": "@daily", "max_active_runs": 0}),
            "schedules[0].max_active_runs",
        ),
    ] {
        let (status, body) = call(
            &app,
            "POST",
            "/deployments",
            Some(json!({"name": "bad", "work_pool": "p", "schedules": [schedule]})),
        )
        .await;
        assert_eq!(status, 422, "{schedule}: {body}");
        assert_eq!(body["field"], field, "{schedule}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    // Nothing was created.
    let (status, _) = call(&app, "GET", "/deployments/bad", None).await;
    assert_eq!(status, 404);
    ok(
        &app,
        "POST",
        "/deployments",
        Some(json!({"name": "good", "work_pool": "p"})),
    )
    .await;
    let (status, body) = call(
        &app,
        "POST",
        "/deployments/good/schedules",
        Some(json!({"rrule": "DTSTART;TZID=Europe/Paris:20260101T090000\nRRULE:FREQ=DAILY"})),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("rrule")),
        "{body}"
    );
    let (status, body) = call(
        &app,
        "POST",
        "/deployments/good/backfill",
        Some(json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("to")),
        "{body}"
    );
    let (status, body) = call(&app, "GET", "/deployments/good/upcoming?limit=0", None).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("limit")),
        "{body}"
    );
}

async fn backfill_creates_each_slot_once(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    pool(&app).await;
    ok(
        &app,
        "POST",
        "/deployments",
        Some(json!({"name": "hourly", "work_pool": "p", "job_variables": {"command": "true"},
                    "schedules": [{"cron": "@hourly", "timezone": "America/New_York", "active": false}]})),
    )
    .await;
    // The day New York falls back: 25 hours, but 24 wall-clock hours (01:00 happens twice and runs
    // once, at its first occurrence), each slot once however often it is asked.
    let body = json!({"from": "2026-11-01T04:00:00Z", "to": "2026-11-02T04:59:59Z"});
    let first = ok(
        &app,
        "POST",
        "/deployments/hourly/backfill",
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (first["slots"].as_u64(), first["created"].as_u64()),
        (Some(24), Some(24))
    );
    let again = ok(&app, "POST", "/deployments/hourly/backfill", Some(body)).await;
    assert_eq!(
        (again["slots"].as_u64(), again["created"].as_u64()),
        (Some(24), Some(0))
    );
    let runs = ok(&app, "GET", "/flow_runs?deployment=hourly&limit=1000", None).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 24);
    let times: Vec<&str> = runs
        .iter()
        .map(|r| r["scheduled_time"].as_str().unwrap())
        .collect();
    assert!(
        times.iter().any(|t| t.starts_with("2026-11-01T05:00:00")),
        "{times:?}"
    );
    assert!(
        !times.iter().any(|t| t.starts_with("2026-11-01T06:00:00")),
        "{times:?}"
    );
    assert!(runs.iter().all(|r| r["idempotency_key"]
        .as_str()
        .unwrap()
        .starts_with("schedule:")));
}

/// The scheduler inside the server (as `pushpool up` runs it): an every-second interval schedule's
/// runs appear and the controller completes them.
async fn the_servers_scheduler_creates_runs_that_the_controller_completes(db: TestDb) {
    let app = serve_fresh_with(
        &db.url,
        ServeOptions {
            controller: true,
            process_pools: ProcessPools::All,
            scheduler: Some(SchedulerConfig {
                interval: Duration::from_millis(200),
                min_runs: 1,
                min_time: chrono::TimeDelta::seconds(2),
                ..SchedulerConfig::default()
            }),
            ..Default::default()
        },
    )
    .await;
    pool(&app).await;
    ok(
        &app,
        "POST",
        "/deployments",
        Some(
            json!({"name": "ticking", "work_pool": "p", "job_variables": {"command": "true"},
                    "schedules": [{"interval": 1}]}),
        ),
    )
    .await;
    let began = Instant::now();
    loop {
        let runs = ok(
            &app,
            "GET",
            "/flow_runs?deployment=ticking&state=COMPLETED",
            None,
        )
        .await;
        if runs.as_array().unwrap().len() >= 2 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no scheduled run completed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Their keys name the schedule and slot; no slot has two runs.
    let all = ok(
        &app,
        "GET",
        "/flow_runs?deployment=ticking&limit=1000",
        None,
    )
    .await;
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["idempotency_key"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    assert!(keys.iter().all(|k| k.starts_with("schedule:")));
}
