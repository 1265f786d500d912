//! Regression tests for the security review (issue 19): a run's logs are bounded in bytes on
//! write and on read (item 8), a secret restored from a mask never comes back in a refusal or
//! the audit log (item 10), and the event stream shows each reader only what its scopes cover
//! (item 11).

use pushpool::store::{quota_marker, LOG_PAGE_BYTES, RUN_LOG_QUOTA_BYTES};
use pushpool_testkit::{both_backends, call_json, serve_fresh, Served, TestDb};
use serde_json::{json, Value};

both_backends!(
    run_logs_stop_at_the_quota_with_one_marker_and_pages_are_byte_bounded,
    a_restored_secret_never_comes_back_in_a_refusal_or_the_audit_log,
    viewers_do_not_see_security_events,
    nul_characters_are_refused_at_the_api_and_replaced_in_job_output,
);

/// `method …/api/workspaces/default{path}` with `key`.
async fn call(
    served: &Served,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}/api/workspaces/default{path}", served.base);
    call_json(&served.client, method, &url, key, body).await
}

/// A process pool `local` and a deployment `job` of it with these job variables.
async fn pool_and_deployment(served: &Served, job_variables: Value) {
    let owner = &served.admin_key;
    let (s, b) = call(
        served,
        "POST",
        "/work_pools",
        owner,
        Some(json!({"name": "local", "type": "process"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let body = json!({"name": "job", "work_pool": "local", "job_variables": job_variables});
    let (s, b) = call(served, "POST", "/deployments", owner, Some(body)).await;
    assert_eq!(s, 201, "{b}");
}

async fn run_logs_stop_at_the_quota_with_one_marker_and_pages_are_byte_bounded(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    pool_and_deployment(&served, json!({"command": "true"})).await;
    let (s, run) = call(
        &served,
        "POST",
        "/deployments/job/runs",
        &served.admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let tokens = pushpool::server::run_tokens(&served.store).await.unwrap();
    let token = tokens.issue(id.parse().unwrap(), 1);
    // 15 lines of 60,000 bytes per report (under the 1 MiB body limit), until past the quota.
    let line = "x".repeat(60_000);
    let per_report = 15;
    let reports = (RUN_LOG_QUOTA_BYTES as usize) / (per_report * line.len()) + 2;
    let mut accepted_total = 0;
    let mut last_accepted = None;
    for _ in 0..reports {
        let lines: Vec<Value> = (0..per_report).map(|_| json!({"line": line})).collect();
        let r = served
            .client
            .post(format!("{}/api/runs/{id}/logs", served.base))
            .bearer_auth(&token)
            .json(&json!({"lines": lines}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        let accepted: usize = r
            .headers()
            .get("pushpool-lines-accepted")
            .expect("the answer says how many lines were kept")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        accepted_total += accepted;
        last_accepted = Some(accepted);
    }
    assert_eq!(last_accepted, Some(0), "past the quota nothing is kept");
    assert_eq!(accepted_total, RUN_LOG_QUOTA_BYTES as usize / line.len());
    // The controller's log sink appends through the same store call: also refused.
    let kept = served
        .store
        .append_logs(
            id.parse().unwrap(),
            &[(0, "stdout".into(), "from the sink".into())],
        )
        .await
        .unwrap();
    assert_eq!(kept, 0);
    // Stored: the kept lines and exactly one marker.
    let stored: Vec<(String,)> = {
        sqlx::any::install_default_drivers();
        let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
        let rows = sqlx::query_as("SELECT line FROM run_logs WHERE run_id = $1")
            .bind(id.clone())
            .fetch_all(&raw)
            .await
            .unwrap();
        raw.close().await;
        rows
    };
    let marker = quota_marker();
    assert_eq!(stored.iter().filter(|(l,)| *l == marker).count(), 1);
    let bytes: usize = stored.iter().map(|(l,)| l.len()).sum();
    assert!(
        bytes as i64 <= RUN_LOG_QUOTA_BYTES + marker.len() as i64,
        "{bytes} bytes stored"
    );
    // A page stops at its byte bound (past its first line), well before the line cap.
    let (s, page) = call(
        &served,
        "GET",
        &format!("/flow_runs/{id}/logs"),
        &served.admin_key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let page = page.as_array().unwrap();
    let page_bytes: usize = page.iter().map(|l| l["line"].as_str().unwrap().len()).sum();
    assert!(!page.is_empty());
    assert!(
        page.len() < accepted_total,
        "a page of {} lines",
        page.len()
    );
    assert!(
        page_bytes as i64 <= LOG_PAGE_BYTES + 65_536,
        "a page of {page_bytes} bytes"
    );
}

async fn a_restored_secret_never_comes_back_in_a_refusal_or_the_audit_log(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let owner = served.admin_key.clone();
    let secret = "s3cr3t-token-value-4711";
    pool_and_deployment(
        &served,
        json!({"command": "true", "env": {"API_TOKEN": secret}}),
    )
    .await;
    // The deployment as read (masked) is written back: the secret is restored, not overwritten.
    let (s, d) = call(&served, "GET", "/deployments/job", &owner, None).await;
    assert_eq!(s, 200, "{d}");
    assert!(!d.to_string().contains(secret), "{d}");
    let body = json!({"job_variables": d["job_variables"]});
    let (s, b) = call(&served, "PATCH", "/deployments/job", &owner, Some(body)).await;
    assert_eq!(s, 200, "{b}");
    let stored = served.store.deployment(
        served.store.workspace("default").await.unwrap().id,
        d["id"].as_str().unwrap(),
    );
    assert_eq!(
        stored.await.unwrap().job_variables["env"]["API_TOKEN"],
        secret
    );
    // The pool's template tightened so the secret no longer fits: refused, the secret unsaid.
    let (s, pool) = call(&served, "GET", "/work_pools/local", &owner, None).await;
    assert_eq!(s, 200, "{pool}");
    let mut template = pool["base_job_template"].clone();
    template["variables"]["properties"]["env"]["additionalProperties"] =
        json!({"type": "string", "maxLength": 1});
    let body = json!({"base_job_template": template});
    let (s, refusal) = call(
        &served,
        "PATCH",
        "/work_pools/local",
        &owner,
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 422, "{refusal}");
    assert!(!refusal.to_string().contains(secret), "{refusal}");
    assert!(
        refusal.to_string().contains("API_TOKEN"),
        "names the field: {refusal}"
    );
    // Nor does the audit log hold it.
    let (s, audit) = call(&served, "GET", "/audit_log", &owner, None).await;
    assert_eq!(s, 200, "{audit}");
    assert!(audit.as_array().is_some_and(|a| !a.is_empty()));
    assert!(!audit.to_string().contains(secret), "{audit}");
}

async fn viewers_do_not_see_security_events(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let owner = served.admin_key.clone();
    let (s, sa) = call(
        &served,
        "POST",
        "/service_accounts",
        &owner,
        Some(json!({"name": "reader", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, 201, "{sa}");
    let viewer = sa["api_key"]["key"].as_str().unwrap().to_string();
    let (s, b) = call(
        &served,
        "POST",
        "/api_keys",
        &owner,
        Some(json!({"name": "laptop"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        &served,
        "POST",
        "/work_pools",
        &owner,
        Some(json!({"name": "local", "type": "process"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let kinds = |events: &Value| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    };
    let security = |k: &String| {
        ["api_key.", "service_account.", "member.", "role."]
            .iter()
            .any(|p| k.starts_with(p))
    };
    // The owner sees everything.
    let (s, events) = call(&served, "GET", "/events", &owner, None).await;
    assert_eq!(s, 200, "{events}");
    let seen = kinds(&events);
    assert!(seen.iter().any(|k| k == "api_key.created"), "{seen:?}");
    assert!(
        seen.iter().any(|k| k == "service_account.created"),
        "{seen:?}"
    );
    // The viewer sees the pool, not the keys and accounts.
    let (s, events) = call(&served, "GET", "/events", &viewer, None).await;
    assert_eq!(s, 200, "{events}");
    let seen = kinds(&events);
    assert!(seen.iter().any(|k| k == "work_pool.created"), "{seen:?}");
    assert!(!seen.iter().any(security), "{seen:?}");
}

/// PostgreSQL stores no NUL character (U+0000) in `TEXT` or `JSONB`: the API refuses one in a
/// body (422 naming the field) or in the URL (400), and the store replaces one in text it keeps
/// from jobs and providers. Found by the body fuzzer as a 500 on PostgreSQL (CI, stop 20).
async fn nul_characters_are_refused_at_the_api_and_replaced_in_job_output(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let owner = served.admin_key.clone();
    let (s, sa) = call(
        &served,
        "POST",
        "/service_accounts",
        &owner,
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, 201, "{sa}");

    let refusals = [
        (
            "PATCH",
            "/service_accounts/ci",
            json!({"role": "\u{0}"}),
            "role",
        ),
        (
            "POST",
            "/work_pools",
            json!({"name": "a\u{0}b", "type": "process"}),
            "name",
        ),
        (
            "POST",
            "/work_pools",
            json!({"name": "p", "type": "process", "base_job_template": {"variables": {"properties": {"x\u{0}": {}}}}}),
            "base_job_template.variables.properties.x\\u0000",
        ),
    ];
    for (method, path, body, field) in refusals {
        let (s, b) = call(&served, method, path, &owner, Some(body)).await;
        assert_eq!(s, 422, "{method} {path}: {b}");
        assert_eq!(b["field"], field, "{method} {path}: {b}");
        assert!(
            b["message"].as_str().unwrap().contains("NUL character"),
            "{b}"
        );
    }
    for path in [
        "/work_pools/a%00b",
        "/flow_runs?state=%00",
        "/work_pools?name=x%00",
    ] {
        let (s, b) = call(&served, "GET", path, &owner, None).await;
        assert_eq!(s, 400, "GET {path}: {b}");
    }
    // Nothing changed: the service account keeps its role, no pool was made.
    let (s, accounts) = call(&served, "GET", "/service_accounts", &owner, None).await;
    assert_eq!(s, 200, "{accounts}");
    let ci = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ci")
        .unwrap();
    assert_eq!(ci["role"], "viewer", "{ci}");
    let (s, pools) = call(&served, "GET", "/work_pools", &owner, None).await;
    assert_eq!(s, 200, "{pools}");
    assert_eq!(pools.as_array().unwrap().len(), 0, "{pools}");

    // A job's output with NUL bytes (through the controller's log sink) is kept, NUL replaced.
    pool_and_deployment(&served, json!({"command": "true"})).await;
    let (s, run) = call(
        &served,
        "POST",
        "/deployments/job/runs",
        &owner,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{run}");
    let id: uuid::Uuid = run["id"].as_str().unwrap().parse().unwrap();
    // Reported by the job itself through the API, it is refused like any body.
    let token = pushpool::server::run_tokens(&served.store)
        .await
        .unwrap()
        .issue(id, 1);
    let r = served
        .client
        .post(format!("{}/api/runs/{id}/logs", served.base))
        .bearer_auth(&token)
        .json(&json!({"lines": [{"line": "fine"}, {"line": "a\u{0}b"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["field"], "lines[1].line", "{b}");
    let kept = served
        .store
        .append_logs(id, &[(0, "stdout".into(), "a\u{0}b".into())])
        .await
        .unwrap();
    assert_eq!(kept, 1);
    let lines = served.store.logs(id, 10).await.unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].line, "a\u{FFFD}b");
}
