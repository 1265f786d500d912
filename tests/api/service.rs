//! End-to-end: API + controller on a fresh store, driven over HTTP like a user would.

use std::time::{Duration, Instant};

use pushpool_testkit::{bootstrap_fresh, both_backends, connect, App, TestDb};
use serde_json::{json, Value};

both_backends!(
    process_run_goes_scheduled_pending_running_completed,
    failing_and_cancelled_runs_end_as_expected,
    bad_input_is_refused_and_nothing_is_stored,
    preview_renders_the_notes_example_exactly,
    run_tokens_act_on_their_own_run_only_and_docs_are_served,
    input_limits_answer_413_and_422_naming_the_field,
    a_refused_request_leaves_its_connection_usable,
);

async fn spawn_app(db: &TestDb) -> App {
    let store = connect(db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    App::serve(&db.url, store, key, home, true).await
}

/// This suite's pool `local` and deployment `job`.
trait LocalJob {
    async fn pool_and_deployment(&self, command: &str);
}

impl LocalJob for App {
    async fn pool_and_deployment(&self, command: &str) {
        let (s, b) = self
            .post("/work_pools", json!({"name": "local", "type": "process"}))
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = self
            .post(
                "/deployments",
                json!({"name": "job", "work_pool": "local", "job_variables": {"command": command}}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

fn history_types(run: &Value) -> Vec<String> {
    run["state_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["type"].as_str().unwrap().to_string())
        .collect()
}

async fn process_run_goes_scheduled_pending_running_completed(db: TestDb) {
    let app = spawn_app(&db).await;
    app.pool_and_deployment("echo hello; exit 0").await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(run["state"]["type"], "COMPLETED", "{run}");
    assert_eq!(
        history_types(&run),
        vec!["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    );
    assert!(run["infrastructure_id"]
        .as_str()
        .unwrap()
        .starts_with("process:"));
    let (_, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"] == "hello"),
        "{logs}"
    );
    app.stop().await;

    // A restart on the same store keeps pools, deployments and runs.
    let again = spawn_app_existing(&db).await;
    let (_, pools) = again.get("/work_pools").await;
    assert_eq!(pools.as_array().unwrap().len(), 1);
    let (_, run) = again.get(&format!("/flow_runs/{id}")).await;
    assert_eq!(run["state"]["type"], "COMPLETED");
    again.stop().await;
}

async fn spawn_app_existing(db: &TestDb) -> App {
    // Same store, a new owner key is not created: make a fresh key of the admin user directly.
    let store = pushpool_testkit::open_store(&db.url).await;
    let ws = store.workspace("default").await.unwrap();
    let admin = store.user("admin").await.unwrap();
    let k = pushpool::auth::generate_api_key();
    store
        .create_api_key(
            ws.id,
            pushpool::store::NewApiKey {
                principal_id: admin.id,
                name: "t".into(),
                prefix: k.prefix,
                hash: k.hash,
                role: None,
                expires: None,
            },
        )
        .await
        .unwrap();
    App::serve(
        &db.url,
        store,
        k.key.expose().to_string(),
        tempfile::tempdir().unwrap(),
        true,
    )
    .await
}

async fn failing_and_cancelled_runs_end_as_expected(db: TestDb) {
    let app = spawn_app(&db).await;
    app.pool_and_deployment("echo oops >&2; exit 3").await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(run["state"]["type"], "FAILED");
    assert_eq!(run["state"]["message"], "exit code 3");

    let (s, _) = app
        .post("/deployments", json!({"name": "sleeper", "work_pool": "local", "job_variables": {"command": "sleep 60"}}))
        .await;
    assert_eq!(s, 201);
    let (_, run) = app.post("/deployments/sleeper/runs", json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let pid = loop {
        let (_, run) = app.get(&format!("/flow_runs/{id}")).await;
        if run["state"]["type"] == "RUNNING" {
            break run["infrastructure_id"]
                .as_str()
                .unwrap()
                .trim_start_matches("process:")
                .split(':')
                .next()
                .unwrap()
                .parse::<i32>()
                .unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never RUNNING: {run}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let cancel_at = Instant::now();
    let (s, body) = app
        .post(&format!("/flow_runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    let run = app.wait_terminal(&id, Duration::from_secs(5)).await;
    assert_eq!(run["state"]["type"], "CANCELLED", "{run}");
    assert!(cancel_at.elapsed() < Duration::from_secs(5));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        },
        "process {pid} still alive"
    );
    // Cancelling a terminal run is a conflict.
    let (s, _) = app
        .post(&format!("/flow_runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 409);
    app.stop().await;
}

async fn bad_input_is_refused_and_nothing_is_stored(db: TestDb) {
    let app = spawn_app(&db).await;
    app.pool_and_deployment("true").await;
    // Breaks the pool schema (env values must be strings): 422 naming the field.
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": "bad", "work_pool": "local", "job_variables": {"env": {"A": 1}}}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["field"]
            .as_str()
            .unwrap()
            .starts_with("job_variables.env"),
        "{b}"
    );
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": "bad", "work_pool": "local", "job_variables": {"nope": 1}}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["field"], "job_variables.nope");
    let (_, list) = app.get("/deployments").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing stored");
    // Malformed JSON is 400.
    let r = app
        .client
        .post(app.url("/deployments"))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // A body that is JSON but not an object is 422, and changes nothing (serde would read a
    // struct from an array by position: `[null, null]` once passed as an empty PATCH).
    for (method, path, body) in [
        ("PATCH", "/work_pools/local", "[null, null]"),
        ("PATCH", "/deployments/job", "[true]"),
        ("POST", "/deployments", r#"["bad", "local"]"#),
        ("POST", "/deployments/job/preview", "[]"),
    ] {
        let r = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&app.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(status, 422, "{method} {path} {body}: {answer}");
        assert_eq!(answer["message"], "the request body must be a JSON object");
    }
    let (_, pool) = app.get("/work_pools/local").await;
    assert_eq!(pool["paused"], false, "{pool}");
    // A missing key is 401.
    let r = app.client.get(app.url("/work_pools")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .client
        .get(app.url("/work_pools"))
        .bearer_auth("pp_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // An unknown pool is 404.
    let (s, b) = app
        .post("/deployments", json!({"name": "x", "work_pool": "missing"}))
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = app.get("/work_pools/missing").await;
    assert_eq!(s, 404);
    // An unknown pool type names the field.
    let (s, b) = app
        .post("/work_pools", json!({"name": "p2", "type": "mainframe"}))
        .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("type")));
    // A template with an undeclared placeholder is refused.
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "p3", "type": "process", "base_job_template": {"job_configuration": {"command": "{{ cmd }}"}, "variables": {"properties": {}}}}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["field"]
            .as_str()
            .unwrap()
            .starts_with("base_job_template"),
        "{b}"
    );
    let (_, pools) = app.get("/work_pools").await;
    assert_eq!(pools.as_array().unwrap().len(), 1);
    app.stop().await;
}

async fn preview_renders_the_notes_example_exactly(db: TestDb) {
    let app = spawn_app(&db).await;
    let template = json!({
        "job_configuration": {"a": "{{ x }}", "b": "pre-{{ x }}-{{ y }}", "c": ["{{ y }}", "{{ x }}"], "d": {"e": "{{ y }}"}},
        "variables": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}}}
    });
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "notes", "type": "process", "base_job_template": template}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .post(
            "/deployments",
            json!({"name": "ex", "work_pool": "notes", "job_variables": {"x": 5}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app.post("/deployments/ex/preview", json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        serde_json::to_string(&b["job_configuration"]).unwrap(),
        r#"{"a":5,"b":"pre-5-","c":[5],"d":{}}"#
    );
    app.stop().await;
}

async fn run_tokens_act_on_their_own_run_only_and_docs_are_served(db: TestDb) {
    let app = spawn_app(&db).await;
    app.pool_and_deployment("sleep 30").await;
    let a = app.run("job").await;
    let b = app.run("job").await;
    let store = pushpool_testkit::open_store(&db.url).await;
    let tokens = pushpool::server::run_tokens(&store).await.unwrap();
    let token_a = tokens.issue(a.parse().unwrap(), 1);
    let job = |path: String, body: Value, token: &str| {
        app.client
            .post(format!("{}/api/runs/{path}", app.base))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    // Its own run: logs, heartbeat and a terminal report are accepted.
    let r = job(
        format!("{a}/logs"),
        json!({"lines": [{"line": "from the job"}]}),
        &token_a,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = job(format!("{a}/heartbeat"), json!({}), &token_a)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // Another run: refused, nothing written.
    let r = job(
        format!("{b}/logs"),
        json!({"lines": [{"line": "intruder"}]}),
        &token_a,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = job(format!("{b}/state"), json!({"type": "COMPLETED"}), &token_a)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A token is no API key: workspace routes are refused.
    let r = app
        .client
        .get(app.url("/work_pools"))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A forged token is 401.
    let forged = token_a.replace(&token_a[token_a.len() - 4..], "0000");
    let r = job(format!("{a}/heartbeat"), json!({}), &forged)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (_, logs) = app.get(&format!("/flow_runs/{a}/logs")).await;
    assert!(logs
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["line"] == "from the job"));
    let (_, logs_b) = app.get(&format!("/flow_runs/{b}/logs")).await;
    assert!(!logs_b
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["line"] == "intruder"));
    // Once RUNNING, the job may report its own end (the controller then sees it terminal).
    let start = Instant::now();
    loop {
        let (_, run) = app.get(&format!("/flow_runs/{a}")).await;
        if run["state"]["type"] == "RUNNING" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = job(
        format!("{a}/state"),
        json!({"type": "COMPLETED", "message": "done by the job"}),
        &token_a,
    )
    .await
    .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["status"], "ACCEPT", "{answer}");
    let (_, run) = app.get(&format!("/flow_runs/{a}")).await;
    assert_eq!(run["state"]["message"], "done by the job");
    // A second terminal report is refused with a reason, never overwriting.
    let r = job(format!("{a}/state"), json!({"type": "FAILED"}), &token_a)
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["status"], "REJECT", "{answer}");
    // Late log lines right after the end are still taken...
    let r = job(
        format!("{a}/logs"),
        json!({"lines": [{"line": "last words"}]}),
        &token_a,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // ...but long after its run ended, a token only reads.
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE flow_runs SET state_timestamp = state_timestamp - 660000000 WHERE id = $1")
        .bind(a.clone())
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let r = job(
        format!("{a}/logs"),
        json!({"lines": [{"line": "from beyond"}]}),
        &token_a,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = app
        .client
        .get(format!("{}/api/runs/{a}", app.base))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // OpenAPI, interactive docs and metrics are served.
    let doc: Value = app
        .client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/workspaces/{ws}/work_pools"]["post"].is_object());
    let html = app
        .client
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("/api/openapi.json"));
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pushpool_flow_runs{state=\"RUNNING\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("pushpool_claim_duration_seconds_count"));
    let r = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    app.post(&format!("/flow_runs/{b}/cancel"), json!({})).await;
    app.wait_terminal(&b, Duration::from_secs(15)).await;
    app.stop().await;
}

async fn input_limits_answer_413_and_422_naming_the_field(db: TestDb) {
    let app = spawn_app(&db).await;
    app.pool_and_deployment("true").await;
    let (_, before) = app.get("/work_pools").await;
    // The whole body: 413.
    let huge =
        json!({"name": "big", "type": "process", "description": "x".repeat(2 * 1024 * 1024)});
    // Refused before it is read to the end, HTTP/1.1 closes the connection and the client may
    // see the reset before the answer: retried until the answer arrives.
    let mut answer = None;
    for _ in 0..10 {
        let sent = app
            .client
            .post(app.url("/work_pools"))
            .bearer_auth(&app.key)
            .json(&huge)
            .send()
            .await;
        if let Ok(r) = sent {
            let status = r.status().as_u16();
            // The unread rest of the body makes the connection unusable: the answer says so.
            assert_eq!(
                r.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "413 without Connection: close"
            );
            if let Ok(text) = r.text().await {
                answer = Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, b) = answer.expect("an answer to the oversized body");
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"], "too_large", "{b}");
    // A template above 256 KiB (inside the body limit): 422 naming it.
    let mut template = app
        .client
        .get(format!(
            "{}/api/pool_types/process/default_template",
            app.base
        ))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    template["variables"]["properties"]["command"]["description"] = json!("d".repeat(300 * 1024));
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "big", "type": "process", "base_job_template": template}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (422, Some("base_job_template")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("at most 262144 bytes"),
        "{b}"
    );
    // Strings: names, descriptions.
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "n".repeat(101), "type": "process"}),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("name")), "{b}");
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "p", "type": "process", "description": "d".repeat(4001)}),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("description")), "{b}");
    // Job variables and parameters documents.
    let (s, b) = app
        .post(
            "/deployments/job/runs",
            json!({"parameters": {"blob": "b".repeat(300 * 1024)}}),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("parameters")), "{b}");
    // Page size.
    let (s, b) = app.get("/flow_runs?limit=5000").await;
    assert_eq!((s, b["field"].as_str()), (422, Some("limit")), "{b}");
    let (s, b) = app.get("/audit_log?limit=0").await;
    assert_eq!((s, b["field"].as_str()), (422, Some("limit")), "{b}");
    // Nothing of it was stored.
    let (_, after) = app.get("/work_pools").await;
    assert_eq!(before, after);
    let (_, runs) = app.get("/flow_runs").await;
    assert!(runs.as_array().unwrap().is_empty(), "{runs}");
    app.stop().await;
}

/// A request refused before its body was read (bad key, unknown route) must not leave the
/// keep-alive connection unusable: found as broken pipes in the fuzz suite.
async fn a_refused_request_leaves_its_connection_usable(db: TestDb) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(&db).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = format!("{{\"name\": \"{}\"}}", "x".repeat(20_000));
    let refused = [
        ("/api/users", "pp_not_a_key"),
        ("/api/no/such/route", app.key.as_str()),
        ("/api/workspaces/elsewhere/work_pools", app.key.as_str()),
    ];
    for (path, key) in refused {
        // The body comes after a pause, as from a slow client: the refusal is decided on the
        // headers alone.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = conn.write_all(body.as_bytes()).await;
        let answer = read_response(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 40"), "{path}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    // The same connection still carries a request.
    conn.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    async fn read_response(conn: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(
                n > 0,
                "the server closed the connection: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }
    app.stop().await;
}
