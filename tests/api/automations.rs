//! Automations through the API (issue 14; docs/automations.md), on SQLite and PostgreSQL: create,
//! list, read, change, enable/disable, delete, refusals naming the field, the author's scopes
//! bounding the actions, audit records; and end to end with the `process` provider and the
//! engine inside the server: a failing run fires a run-state automation whose action starts
//! another deployment with parameters taken from the event, which completes.

use std::time::{Duration, Instant};

use pushpool_testkit::{bootstrap_fresh, both_backends, connect, App, TestDb};
use serde_json::{json, Value};

both_backends!(
    automations_are_created_changed_and_deleted_with_checked_input,
    an_automation_never_does_more_than_its_author_may,
    a_failing_run_starts_a_recovery_run_with_parameters_from_the_event,
);

async fn spawn_app(db: &TestDb, controller: bool) -> App {
    let store = connect(db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    App::serve(&db.url, store, key, home, controller).await
}

async fn call(app: &App, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    pushpool_testkit::call_json(&app.client, method, &app.url(path), key, body).await
}

fn webhook_automation(name: &str) -> Value {
    json!({
        "name": name,
        "trigger": {"type": "run-state", "states": ["Failed", "Crashed"], "deployments": ["etl"]},
        "actions": [{"type": "call-webhook", "url": "https://hooks.example.com/x",
                     "body": {"run": "{{ flow_run.id }}"}}],
    })
}

async fn automations_are_created_changed_and_deleted_with_checked_input(db: TestDb) {
    let app = spawn_app(&db, false).await;
    let key = app.key.clone();
    let (s, a) = call(
        &app,
        "POST",
        "/automations",
        &key,
        Some(webhook_automation("alert")),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["enabled"], true);
    assert_eq!(a["trigger"]["type"], "run-state");
    let (s, b) = call(
        &app,
        "POST",
        "/automations",
        &key,
        Some(webhook_automation("alert")),
    )
    .await;
    assert_eq!((s, b["field"].clone()), (409, json!("name")), "{b}");

    // Refusals name the field and the rule.
    for (body, status, field) in [
        (
            json!({"name": "x", "trigger": {"type": "event", "expect": ["a"], "threshold": 3},
                   "actions": [{"type": "cancel-flow-run"}]}),
            422,
            "trigger.within",
        ),
        (
            json!({"name": "x", "trigger": {"type": "event", "posture": "proactive", "expect": ["a"]},
                   "actions": [{"type": "cancel-flow-run"}]}),
            422,
            "trigger.within",
        ),
        (
            json!({"name": "x", "trigger": {"type": "run-state", "states": ["Exploded"]},
                   "actions": [{"type": "cancel-flow-run"}]}),
            422,
            "trigger.states[0]",
        ),
        (
            json!({"name": "x", "trigger": {"type": "run-state", "states": ["Failed"]},
                   "actions": [{"type": "call-webhook", "url": "ftp://example.com"}]}),
            422,
            "actions[0].url",
        ),
        (
            json!({"name": "x", "trigger": {"type": "run-state", "states": ["Failed"]},
                   "actions": []}),
            422,
            "actions",
        ),
        (
            json!({"name": "bad name!", "trigger": {"type": "run-state", "states": ["Failed"]},
                   "actions": [{"type": "cancel-flow-run"}]}),
            422,
            "name",
        ),
    ] {
        let (s, b) = call(&app, "POST", "/automations", &key, Some(body.clone())).await;
        assert_eq!(s, status, "{body} → {b}");
        assert_eq!(b["field"], field, "{body} → {b}");
    }
    // Unknown fields and action types are refused, not ignored.
    let (s, b) = call(
        &app,
        "POST",
        "/automations",
        &key,
        Some(
            json!({"name": "x", "trigger": {"type": "run-state", "states": ["Failed"]},
                    "actions": [{"type": "launch-rocket"}]}),
        ),
    )
    .await;
    assert!(s == 422 || s == 400, "{s} {b}");

    let (s, list) = call(&app, "GET", "/automations", &key, None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (s, got) = call(&app, "GET", "/automations/alert", &key, None).await;
    assert_eq!((s, &got["id"]), (200, &a["id"]));
    let (s, got) = call(
        &app,
        "PATCH",
        "/automations/alert",
        &key,
        Some(json!({"enabled": false, "description": "paged"})),
    )
    .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(
        (got["enabled"].clone(), got["description"].clone()),
        (json!(false), json!("paged"))
    );
    let (s, f) = call(
        &app,
        "GET",
        "/automations/alert/firings?limit=5",
        &key,
        None,
    )
    .await;
    assert_eq!((s, f), (200, json!([])));
    let (s, f) = call(
        &app,
        "GET",
        "/automations/alert/firings?limit=0",
        &key,
        None,
    )
    .await;
    assert_eq!((s, f["field"].clone()), (422, json!("limit")));

    // Every change is audited.
    let (_, log) = call(&app, "GET", "/audit_log?limit=100", &key, None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["automation.create", "automation.update"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    let (s, _) = call(&app, "DELETE", "/automations/alert", &key, None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&app, "GET", "/automations/alert", &key, None).await;
    assert_eq!(s, 404);
    let (_, log) = call(
        &app,
        "GET",
        "/audit_log?action=automation.delete",
        &key,
        None,
    )
    .await;
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");
    app.stop().await;
}

/// A key of a new service account of workspace `default` with `role`.
async fn key_with_role(app: &App, role: &str) -> String {
    let name = format!("sa-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (s, b) = app
        .post("/service_accounts", json!({"name": name, "role": role}))
        .await;
    assert_eq!(s, 201, "{b}");
    b["api_key"]["key"].as_str().unwrap().to_string()
}

async fn an_automation_never_does_more_than_its_author_may(db: TestDb) {
    let app = spawn_app(&db, false).await;
    let (s, b) = app
        .post(
            "/roles",
            json!({"name": "automator", "scopes": ["automations:read", "automations:write"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let automator = key_with_role(&app, "automator").await;
    let viewer = key_with_role(&app, "viewer").await;
    let developer = key_with_role(&app, "developer").await;
    let cancelling = json!({"name": "cancel-late",
        "trigger": {"type": "run-state", "states": ["Late"]},
        "actions": [{"type": "call-webhook", "url": "https://hooks.example.com/x"},
                    {"type": "cancel-flow-run"}]});
    // automations:write alone cannot make an automation cancel runs.
    let (s, b) = call(
        &app,
        "POST",
        "/automations",
        &automator,
        Some(cancelling.clone()),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(b["message"].as_str().unwrap().contains("actions[1]"), "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("runs:cancel"),
        "{b}"
    );
    // Viewers read automations but do not manage them.
    let (s, _) = call(
        &app,
        "POST",
        "/automations",
        &viewer,
        Some(cancelling.clone()),
    )
    .await;
    assert_eq!(s, 403);
    // A developer may.
    let (s, b) = call(&app, "POST", "/automations", &developer, Some(cancelling)).await;
    assert_eq!(s, 201, "{b}");
    let (s, list) = call(&app, "GET", "/automations", &viewer, None).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
    // The automator may change the description, but not re-enable it with actions beyond it.
    let (s, b) = call(
        &app,
        "PATCH",
        "/automations/cancel-late",
        &automator,
        Some(json!({"description": "mine now"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &app,
        "PATCH",
        "/automations/cancel-late",
        &automator,
        Some(json!({"enabled": true, "actions": [{"type": "pause-work-pool", "work_pool": "x"}]})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    app.stop().await;
}

async fn a_failing_run_starts_a_recovery_run_with_parameters_from_the_event(db: TestDb) {
    let app = spawn_app(&db, true).await;
    let (s, b) = app
        .post("/work_pools", json!({"name": "local", "type": "process"}))
        .await;
    assert_eq!(s, 201, "{b}");
    for (name, command) in [("etl", "exit 3"), ("recover", "true")] {
        let (s, b) = app
            .post(
                "/deployments",
                json!({"name": name, "work_pool": "local", "job_variables": {"command": command}}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = app
        .post(
            "/automations",
            json!({"name": "recover-etl",
                   "trigger": {"type": "run-state", "states": ["Failed", "Crashed"], "deployments": ["etl"]},
                   "actions": [{"type": "run-deployment", "deployment": "recover",
                                "parameters": {"failed_run": "{{ flow_run.id }}",
                                               "state": "{{ flow_run.state }}",
                                               "deployment": "{{ deployment.name }}"}}]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let failing = app.run("etl").await;
    let run = app.wait_terminal(&failing, Duration::from_secs(60)).await;
    assert!(
        ["FAILED", "CRASHED"].contains(&run["state"]["type"].as_str().unwrap()),
        "{run}"
    );
    let state = run["state"]["type"].as_str().unwrap().to_string();
    // The automation's run of `recover` appears and completes.
    let start = Instant::now();
    let recovery = loop {
        let (_, runs) = app.get("/flow_runs?deployment=recover").await;
        if let Some(r) = runs.as_array().and_then(|l| l.first()) {
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no recovery run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = app.wait_terminal(&recovery, Duration::from_secs(60)).await;
    assert_eq!(done["state"]["type"], "COMPLETED", "{done}");
    assert_eq!(
        done["parameters"],
        json!({"failed_run": failing, "state": state, "deployment": "etl"}),
        "{done}"
    );
    let (_, firings) = app.get("/automations/recover-etl/firings").await;
    let firings = firings.as_array().unwrap().clone();
    assert_eq!(firings.len(), 1, "{firings:?}");
    assert_eq!(firings[0]["actions"][0]["status"], "succeeded");
    assert_eq!(firings[0]["actions"][0]["result"]["flow_run_id"], recovery);
    app.stop().await;
}
