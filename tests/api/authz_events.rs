//! Events and tenant isolation (issue 14, item 5), on SQLite and PostgreSQL: another workspace's
//! events are never visible — not in the list, not with filters naming its resources, not in the
//! live stream replayed from the start — and its routes answer a foreign key as if the workspace
//! did not exist; a viewer reads run and pool events but not security ones, in the list and the
//! stream alike.

use pushpool_testkit::{both_backends, serve_fresh, TestDb};
use serde_json::{json, Value};

use super::events::{call, ok, open_stream, read_sse, run, setup};

both_backends!(
    another_workspace_events_are_never_visible_in_list_filters_or_stream,
    a_viewer_reads_run_events_but_not_security_events_in_list_and_stream,
);

fn ids_in(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn another_workspace_events_are_never_visible_in_list_filters_or_stream(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    let a_key = app.admin_key.clone();
    let created = ok(
        &app,
        &a_key,
        "POST",
        "/api/workspaces",
        Some(json!({"name": "b"})),
    )
    .await;
    let b_key = created["api_key"]["key"].as_str().unwrap().to_string();
    // Both workspaces have a pool `p`, a deployment `d` tagged `t` and runs.
    setup(&app, &a_key, "default").await;
    setup(&app, &b_key, "b").await;
    let a_run = run(&app, &a_key, "default").await;
    let b_run = run(&app, &b_key, "b").await;
    let a_events = ok(
        &app,
        &a_key,
        "GET",
        "/api/workspaces/default/events?limit=1000",
        None,
    )
    .await;
    let a_ids = ids_in(&a_events);
    let a_ws = a_events[0]["workspace_id"].as_str().unwrap().to_string();
    let a_deployment = a_events
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["related"].as_array().cloned().unwrap_or_default())
        .find(|r| r["role"] == "deployment")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let leaks = |text: &str| -> Vec<String> {
        let mut found: Vec<String> = a_ids
            .iter()
            .filter(|id| text.contains(id.as_str()))
            .cloned()
            .collect();
        for marker in [&a_run, &a_ws, &a_deployment] {
            if text.contains(marker.as_str()) {
                found.push(marker.clone());
            }
        }
        found
    };
    // B's list, unfiltered and with filters that name A's resources.
    let w = "/api/workspaces/b/events";
    for query in [
        "limit=1000".to_string(),
        format!("resource=pushpool.flow-run.{a_run}"),
        format!("related={a_deployment}"),
        format!("related=pushpool.workspace.{a_ws}"),
        "related=pushpool.tag.t".to_string(),
        "event_prefix=pushpool.".to_string(),
        "after=0&limit=1000".to_string(),
        "cursor=9223372036854775807".to_string(),
    ] {
        let got = ok(&app, &b_key, "GET", &format!("{w}?{query}"), None).await;
        assert!(leaks(&got.to_string()).is_empty(), "{query}: {got}");
        assert!(
            got.as_array()
                .unwrap()
                .iter()
                .all(|e| e["workspace_id"] != a_ws.as_str()),
            "{query}"
        );
    }
    let mine = ok(
        &app,
        &b_key,
        "GET",
        &format!("{w}?resource=pushpool.flow-run.{b_run}"),
        None,
    )
    .await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "B sees its own run");
    // B's stream replayed from the very start.
    let response = open_stream(&app, &b_key, "b", "cursor=0&max_seconds=1", None).await;
    let mut streamed = Vec::new();
    read_sse(response, |m| {
        streamed.push(m.event);
        true
    })
    .await;
    assert!(!streamed.is_empty());
    let text = Value::Array(streamed).to_string();
    assert!(leaks(&text).is_empty(), "{text}");
    // B's key on A's routes: exactly like a workspace that does not exist.
    for path in ["/events", "/events?limit=5", "/events/stream?max_seconds=1"] {
        let (s, body) = call(
            &app,
            &b_key,
            "GET",
            &format!("/api/workspaces/default{path}"),
            None,
        )
        .await;
        let (n, nowhere) = call(
            &app,
            &b_key,
            "GET",
            &format!("/api/workspaces/nowhere{path}"),
            None,
        )
        .await;
        assert_eq!(s, n, "{path}: {body}");
        assert!(s == 403 || s == 404, "{path}: {s}");
        assert!(leaks(&body.to_string()).is_empty(), "{path}: {body}");
        assert_eq!(
            body.to_string().replace("default", "nowhere"),
            nowhere.to_string(),
            "{path}"
        );
    }
}

async fn a_viewer_reads_run_events_but_not_security_events_in_list_and_stream(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    let owner = app.admin_key.clone();
    setup(&app, &owner, "default").await;
    let sa = ok(
        &app,
        &owner,
        "POST",
        "/api/workspaces/default/service_accounts",
        Some(json!({"name": "reader", "role": "viewer"})),
    )
    .await;
    let viewer = sa["api_key"]["key"].as_str().unwrap().to_string();
    run(&app, &owner, "default").await;
    let security = |e: &Value| {
        let name = e["event"].as_str().unwrap();
        [
            "pushpool.api-key.",
            "pushpool.service-account.",
            "pushpool.member.",
            "pushpool.role.",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    };
    let all = ok(
        &app,
        &owner,
        "GET",
        "/api/workspaces/default/events?limit=1000",
        None,
    )
    .await;
    assert!(
        all.as_array().unwrap().iter().any(security),
        "the owner sees them: {all}"
    );
    let seen = ok(
        &app,
        &viewer,
        "GET",
        "/api/workspaces/default/events?limit=1000",
        None,
    )
    .await;
    let seen = seen.as_array().unwrap();
    assert!(seen
        .iter()
        .any(|e| e["event"] == "pushpool.flow-run.created"));
    assert!(seen
        .iter()
        .any(|e| e["event"] == "pushpool.work-pool.created"));
    assert!(!seen.iter().any(security), "{seen:?}");
    let response = open_stream(&app, &viewer, "default", "cursor=0&max_seconds=1", None).await;
    let mut streamed = Vec::new();
    read_sse(response, |m| {
        streamed.push(m.event);
        true
    })
    .await;
    assert!(streamed
        .iter()
        .any(|e| e["event"] == "pushpool.flow-run.created"));
    assert!(!streamed.iter().any(security), "{streamed:?}");
    // A controller key has no events:read.
    let c = ok(
        &app,
        &owner,
        "POST",
        "/api/workspaces/default/service_accounts",
        Some(json!({"name": "ctl", "role": "controller"})),
    )
    .await;
    let controller = c["api_key"]["key"].as_str().unwrap().to_string();
    let (s, _) = call(
        &app,
        &controller,
        "GET",
        "/api/workspaces/default/events/stream?max_seconds=1",
        None,
    )
    .await;
    assert_eq!(s, 403);
}
