//! Regression tests for the security review (issue 19): a run's logs are bounded in bytes on
//! write and on read (item 8), a secret restored from a mask never comes back in a refusal or
//! the audit log (item 10), the event stream shows each reader only what its scopes cover
//! (item 11), and a template's regular expressions cannot stall the server (item 6).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pushpool::store::{quota_marker, NewDeployment, NewPool, LOG_PAGE_BYTES, RUN_LOG_QUOTA_BYTES};
use pushpool_testkit::{both_backends, call_json, serve_fresh, Served, TestDb};
use serde_json::{json, Value};

both_backends!(
    run_logs_stop_at_the_quota_with_one_marker_and_pages_are_byte_bounded,
    a_restored_secret_never_comes_back_in_a_refusal_or_the_audit_log,
    viewers_do_not_see_security_events,
    nul_characters_are_refused_at_the_api_and_replaced_in_job_output,
    regex_patterns_cannot_stall_the_runtime_and_previews_are_audited,
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

/// A base job template whose array variable `x` has items matching `pattern`.
fn items_pattern_template(pattern: &str) -> Value {
    json!({
        "job_configuration": {"command": "true", "x": "{{ x }}"},
        "variables": {"type": "object", "properties": {
            "x": {"type": "array", "items": {"type": "string", "pattern": pattern}}
        }}
    })
}

/// Issue 19 item 6: `items.pattern "^(a+)+(?!a)b"` and two 70 KB previews stalled the runtime
/// for ~38 s (`/healthz` took 36 s). Such a pattern is now refused when a pool is created, one
/// stored before is answered with a 422 at once, the linear-time engine gives a correct verdict
/// on nested quantifiers, `/healthz` answers while previews are in flight, and previews are
/// audited.
async fn regex_patterns_cannot_stall_the_runtime_and_previews_are_audited(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let owner = served.admin_key.clone();
    // A pool stored before the fix (the store takes templates as checked), and its deployment.
    let ws = served.store.workspace("default").await.unwrap();
    let legacy = items_pattern_template("^(a+)+(?!a)b");
    served
        .store
        .create_pool(
            ws.id,
            NewPool {
                name: "legacy".into(),
                pool_type: "process".into(),
                description: None,
                base_job_template: legacy.clone(),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
            },
        )
        .await
        .unwrap();
    served
        .store
        .create_deployment(
            ws.id,
            NewDeployment {
                name: "legacy".into(),
                work_pool: "legacy".into(),
                work_queue: None,
                job_variables: Default::default(),
                parameters: Default::default(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();
    // Nested quantifiers the linear-time engine takes: a pool made through the API.
    let (s, b) = call(
        &served,
        "POST",
        "/work_pools",
        &owner,
        Some(json!({"name": "nested", "type": "process",
            "base_job_template": items_pattern_template("^(a+)+$")})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let body = json!({"name": "nested", "work_pool": "nested"});
    let (s, b) = call(&served, "POST", "/deployments", &owner, Some(body)).await;
    assert_eq!(s, 201, "{b}");

    // ~70 KB of items that each cost a backtracking engine a million steps.
    let mut items = vec![json!("a".repeat(27)); 2_400];
    let good = json!({"job_variables": {"x": items.clone()}});
    items[2_000] = json!("aaaa!");
    let bad = json!({"job_variables": {"x": items}});
    assert!(bad.to_string().len() > 70_000);

    // Previews, four at a time, while /healthz is asked in a loop; a shared clock orders every
    // request's sending and answer.
    let clock = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let healthz = {
        let (client, url) = (served.client.clone(), format!("{}/healthz", served.base));
        let (clock, done) = (clock.clone(), done.clone());
        tokio::spawn(async move {
            let mut answered = vec![];
            // Bounded: stops when the previews are done.
            for _ in 0..100_000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let sent = clock.fetch_add(1, Ordering::SeqCst);
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                answered.push((sent, clock.fetch_add(1, Ordering::SeqCst)));
            }
            answered
        })
    };
    let work = async {
        let mut previews = vec![];
        for _round in 0..6 {
            let batch = ["legacy", "nested", "legacy", "nested"].map(|d| {
                let url = format!(
                    "{}/api/workspaces/default/deployments/{d}/preview",
                    served.base
                );
                let (client, clock, owner, bad) = (
                    served.client.clone(),
                    clock.clone(),
                    owner.clone(),
                    bad.clone(),
                );
                tokio::spawn(async move {
                    let sent = clock.fetch_add(1, Ordering::SeqCst);
                    let answer = call_json(&client, "POST", &url, &owner, Some(bad)).await;
                    (d, sent, clock.fetch_add(1, Ordering::SeqCst), answer)
                })
            });
            for p in batch {
                previews.push(p.await.unwrap());
            }
        }
        previews
    };
    let previews = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("previews answered (a backtracking engine takes ~45 s for each)");
    done.store(true, Ordering::SeqCst);
    let healthz = healthz.await.unwrap();

    for (d, _, _, (s, b)) in &previews {
        assert_eq!(*s, 422, "{d}: {b}");
        if *d == "legacy" {
            // The template itself is refused, naming the pattern.
            assert_eq!(b["field"], "work_pool", "{b}");
            let message = b["message"].as_str().unwrap();
            assert!(
                message.contains("base_job_template.variables.properties.x.items.pattern"),
                "{b}"
            );
        } else {
            assert_eq!(b["field"], "job_variables.x[2000]", "{b}");
        }
    }
    let during = healthz.iter().any(|(h_sent, h_answered)| {
        previews
            .iter()
            .any(|(_, p_sent, p_answered, _)| p_sent < h_sent && h_answered < p_answered)
    });
    assert!(
        during,
        "/healthz never answered while a preview was in flight ({} answers)",
        healthz.len()
    );

    // Items that all match: a 200.
    let (s, b) = call(
        &served,
        "POST",
        "/deployments/nested/preview",
        &owner,
        Some(good),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["job_configuration"]["x"].as_array().unwrap().len(), 2_400);

    // The issue's pattern is refused at pool creation, naming it; so are too many patterns.
    let (s, b) = call(
        &served,
        "POST",
        "/work_pools",
        &owner,
        Some(json!({"name": "redos", "type": "process", "base_job_template": legacy})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(
        b["field"],
        "base_job_template.variables.properties.x.items.pattern"
    );
    assert!(b["message"].as_str().unwrap().contains("lookaround"), "{b}");
    let mut props = serde_json::Map::new();
    for i in 0..=pushpool::job::template::MAX_TEMPLATE_PATTERNS {
        props.insert(
            format!("v{i:03}"),
            json!({"type": "string", "pattern": "^a$"}),
        );
    }
    let template = json!({"job_configuration": {"command": "true"},
        "variables": {"type": "object", "properties": props}});
    let (s, b) = call(
        &served,
        "POST",
        "/work_pools",
        &owner,
        Some(json!({"name": "many", "type": "process", "base_job_template": template})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(
        b["field"],
        format!(
            "base_job_template.variables.properties.v{:03}.pattern",
            pushpool::job::template::MAX_TEMPLATE_PATTERNS
        )
    );
    let (s, b) = call(&served, "GET", "/work_pools", &owner, None).await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 2, "nothing stored: {b}");

    // Previews are audited, answered or refused.
    let (s, log) = call(
        &served,
        "GET",
        "/audit_log?action=deployment.preview&limit=1000",
        &owner,
        None,
    )
    .await;
    assert_eq!(s, 200, "{log}");
    let log = log.as_array().unwrap();
    let outcomes = |o: &str| log.iter().filter(|e| e["outcome"] == o).count();
    assert_eq!(
        (outcomes("success"), outcomes("failed")),
        (1, 24),
        "{log:?}"
    );
}
