//! Events over HTTP (issue 14; docs/events.md), on SQLite and PostgreSQL: the list's filters and
//! cursor paging, the live stream (SSE) resuming after a disconnect with every event exactly
//! once while writers run concurrently, and 422s naming the parameter at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pushpool_testkit::{both_backends, call_json, serve_fresh, Served, TestDb};
use serde_json::{json, Value};

both_backends!(
    the_list_filters_and_pages_by_cursor,
    a_stream_client_that_disconnects_and_resumes_sees_every_event_exactly_once,
    the_stream_applies_filters_and_starts_now_without_a_cursor,
    bad_event_queries_answer_422_naming_the_parameter,
);

pub(crate) async fn call(
    app: &Served,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", app.base);
    call_json(&app.client, method, &url, key, body).await
}

pub(crate) async fn ok(
    app: &Served,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (s, b) = call(app, key, method, path, body).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
    b
}

/// A pool `p` and a deployment `d` (tagged `t`) in workspace `ws`.
pub(crate) async fn setup(app: &Served, key: &str, ws: &str) {
    let w = format!("/api/workspaces/{ws}");
    ok(
        app,
        key,
        "POST",
        &format!("{w}/work_pools"),
        Some(json!({"name": "p", "type": "process"})),
    )
    .await;
    ok(
        app,
        key,
        "POST",
        &format!("{w}/deployments"),
        Some(json!({"name": "d", "work_pool": "p", "tags": ["t"], "job_variables": {"command": "true"}})),
    )
    .await;
}

/// Creates a run of `d` in `ws`; its id.
pub(crate) async fn run(app: &Served, key: &str, ws: &str) -> String {
    let b = ok(
        app,
        key,
        "POST",
        &format!("/api/workspaces/{ws}/deployments/d/runs"),
        Some(json!({"scheduled_time": "2099-01-01T00:00:00Z"})),
    )
    .await;
    b["id"].as_str().unwrap().to_string()
}

/// One parsed Server-Sent Events message.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub id: i64,
    pub event: Value,
}

/// Reads an SSE response: calls `on` for each message until it returns false or the stream ends.
pub(crate) async fn read_sse(mut response: reqwest::Response, mut on: impl FnMut(Message) -> bool) {
    let mut buf = String::new();
    loop {
        let chunk = match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => panic!("stream error: {e}"),
            Err(_) => panic!("no data for 30 s"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let (Some(id), false) = (id, data.is_empty()) else {
                continue; // a keep-alive comment
            };
            let event: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(event["seq"], id, "the SSE id is the event's seq");
            if !on(Message { id, event }) {
                return;
            }
        }
    }
}

/// Opens the stream of `ws` with `query`, resuming after `last` (Last-Event-ID) when given.
pub(crate) async fn open_stream(
    app: &Served,
    key: &str,
    ws: &str,
    query: &str,
    last: Option<i64>,
) -> reqwest::Response {
    let mut req = app
        .client
        .get(format!(
            "{}/api/workspaces/{ws}/events/stream?{query}",
            app.base
        ))
        .bearer_auth(key);
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last.to_string());
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    r
}

async fn the_list_filters_and_pages_by_cursor(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    let key = app.admin_key.clone();
    setup(&app, &key, "default").await;
    let ids: Vec<String> =
        futures::future::join_all((0..5).map(|_| run(&app, &key, "default"))).await;
    let w = "/api/workspaces/default/events";
    // By exact name, and by prefix.
    let created = ok(
        &app,
        &key,
        "GET",
        &format!("{w}?event=pushpool.flow-run.created"),
        None,
    )
    .await;
    assert_eq!(created.as_array().unwrap().len(), 5);
    let first = &created[0];
    assert!(first["resource"]["id"]
        .as_str()
        .unwrap()
        .starts_with("pushpool.flow-run."));
    assert!(first["related"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["role"] == "deployment"));
    let flow = ok(
        &app,
        &key,
        "GET",
        &format!("{w}?event_prefix=pushpool.flow-run.,pushpool.work-pool."),
        None,
    )
    .await;
    assert_eq!(flow.as_array().unwrap().len(), 6, "{flow}");
    // By resource and by related resource.
    let one = ok(
        &app,
        &key,
        "GET",
        &format!("{w}?resource=pushpool.flow-run.{}", ids[2]),
        None,
    )
    .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    let tagged = ok(
        &app,
        &key,
        "GET",
        &format!("{w}?related=pushpool.tag.t"),
        None,
    )
    .await;
    assert_eq!(tagged.as_array().unwrap().len(), 5);
    // By time: nothing before the epoch of these runs, everything after.
    let none = ok(
        &app,
        &key,
        "GET",
        &format!("{w}?until=2000-01-01T00:00:00Z"),
        None,
    )
    .await;
    assert!(none.as_array().unwrap().is_empty());
    let all = ok(
        &app,
        &key,
        "GET",
        &format!("{w}?since=2000-01-01T00:00:00Z&limit=1000"),
        None,
    )
    .await;
    let all = all.as_array().unwrap().clone();
    // Paging newest first by cursor, and oldest first after a cursor: the same events, once each.
    let mut paged = Vec::new();
    let mut url = format!("{w}?limit=2");
    loop {
        let page = ok(&app, &key, "GET", &url, None).await;
        let page = page.as_array().unwrap();
        if page.is_empty() {
            break;
        }
        paged.extend(page.iter().cloned());
        url = format!("{w}?limit=2&cursor={}", page.last().unwrap()["seq"]);
    }
    assert_eq!(paged, all);
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let page = ok(
            &app,
            &key,
            "GET",
            &format!("{w}?limit=3&after={after}"),
            None,
        )
        .await;
        let page = page.as_array().unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["seq"].as_i64().unwrap();
        forward.extend(page.iter().cloned());
    }
    forward.reverse();
    assert_eq!(forward, all);
}

async fn a_stream_client_that_disconnects_and_resumes_sees_every_event_exactly_once(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    let key = app.admin_key.clone();
    setup(&app, &key, "default").await;
    let start = ok(
        &app,
        &key,
        "GET",
        "/api/workspaces/default/events?limit=1",
        None,
    )
    .await[0]["seq"]
        .as_i64()
        .unwrap();
    // Four writers create 120 runs side by side (on PostgreSQL their commits interleave, so
    // `seq` numbers become visible out of order).
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let base = app.base.clone();
            let client = app.client.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for _ in 0..30 {
                    let url = format!("{base}/api/workspaces/default/deployments/d/runs");
                    let (s, b) = call_json(
                        &client,
                        "POST",
                        &url,
                        &key,
                        Some(json!({"scheduled_time": "2099-01-01T00:00:00Z"})),
                    )
                    .await;
                    assert_eq!(s, 201, "{b}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let query = "event=pushpool.flow-run.created";
    let mut seen: Vec<Message> = Vec::new();
    let mut last = start;
    // Several sessions, each dropped after a handful of events (a client disconnecting), each
    // resuming from the last id it received, until all 120 arrived.
    let mut sessions = 0;
    while seen.len() < 120 {
        sessions += 1;
        assert!(sessions < 100, "too many sessions; seen {}", seen.len());
        let response = open_stream(&app, &key, "default", query, Some(last)).await;
        let mut took = 0;
        read_sse(response, |m| {
            assert!(m.id > last, "ids only grow: {} after {last}", m.id);
            last = m.id;
            seen.push(m);
            took += 1;
            took < 7 && seen.len() < 120
        })
        .await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        sessions > 10,
        "the client really reconnected ({sessions} sessions)"
    );
    let ids: BTreeSet<String> = seen
        .iter()
        .map(|m| m.event["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 120, "no event twice");
    // Exactly the events the list holds.
    let listed = ok(
        &app,
        &key,
        "GET",
        &format!("/api/workspaces/default/events?{query}&limit=1000"),
        None,
    )
    .await;
    let listed: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, listed);
    // Nothing more arrives after the last one (a resumed stream that ends by itself).
    let response = open_stream(
        &app,
        &key,
        "default",
        &format!("{query}&max_seconds=1"),
        Some(last),
    )
    .await;
    let mut extra = 0;
    read_sse(response, |_| {
        extra += 1;
        true
    })
    .await;
    assert_eq!(extra, 0);
    // `?cursor=` resumes like Last-Event-ID.
    let response = open_stream(
        &app,
        &key,
        "default",
        &format!("{query}&cursor={start}&max_seconds=1"),
        None,
    )
    .await;
    let mut again = Vec::new();
    read_sse(response, |m| {
        again.push(m.event["id"].as_str().unwrap().to_string());
        again.len() < 120
    })
    .await;
    assert_eq!(again.into_iter().collect::<BTreeSet<_>>(), ids);
}

async fn the_stream_applies_filters_and_starts_now_without_a_cursor(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    let key = app.admin_key.clone();
    setup(&app, &key, "default").await;
    let before = run(&app, &key, "default").await;
    let response = open_stream(
        &app,
        &key,
        "default",
        "related=pushpool.tag.t&max_seconds=3",
        None,
    )
    .await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        read_sse(response, |m| {
            got.push(m.event);
            got.len() < 2
        })
        .await;
        got
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A pool event (no tag) and a run (tagged) after the stream opened.
    ok(
        &app,
        &key,
        "POST",
        "/api/workspaces/default/work_pools",
        Some(json!({"name": "q", "type": "process"})),
    )
    .await;
    let after = run(&app, &key, "default").await;
    let got = reader.await.unwrap();
    let resources: BTreeMap<String, String> = got
        .iter()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap().to_string(),
                e["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        resources,
        BTreeMap::from([(
            format!("pushpool.flow-run.{after}"),
            "pushpool.flow-run.created".to_string()
        )]),
        "only events after the start, only the tagged run's (not {before})"
    );
}

async fn bad_event_queries_answer_422_naming_the_parameter(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    let key = app.admin_key.clone();
    let w = "/api/workspaces/default/events";
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
        ("until=1", "until"),
        ("cursor=-1", "cursor"),
        ("cursor=abc", "cursor"),
        ("after=1.5", "after"),
        ("cursor=1&after=2", "after"),
    ] {
        let (s, b) = call(&app, &key, "GET", &format!("{w}?{query}"), None).await;
        assert_eq!(s, 422, "{query}: {b}");
        assert_eq!(b["field"], field, "{query}: {b}");
    }
    let long = "x".repeat(600);
    let (s, b) = call(&app, &key, "GET", &format!("{w}?resource={long}"), None).await;
    assert_eq!((s, b["field"].as_str()), (422, Some("resource")), "{b}");
    for (query, field) in [("cursor=x", "cursor"), ("max_seconds=0", "max_seconds")] {
        let (s, b) = call(&app, &key, "GET", &format!("{w}/stream?{query}"), None).await;
        assert_eq!(s, 422, "{query}: {b}");
        assert_eq!(b["field"], field, "{query}: {b}");
    }
    let r = app
        .client
        .get(format!("{}{w}/stream", app.base))
        .bearer_auth(&key)
        .header("Last-Event-ID", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["field"], "Last-Event-ID");
}
