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
    secrets_are_encrypted_at_rest_and_read_back_whole,
    plain_secrets_of_an_older_store_still_read_and_rotation_encrypts_them,
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
        [
            "pushpool.api-key.",
            "pushpool.service-account.",
            "pushpool.member.",
            "pushpool.role.",
        ]
        .iter()
        .any(|p| k.starts_with(p))
    };
    // The owner sees everything.
    let (s, events) = call(&served, "GET", "/events", &owner, None).await;
    assert_eq!(s, 200, "{events}");
    let seen = kinds(&events);
    assert!(
        seen.iter().any(|k| k == "pushpool.api-key.created"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|k| k == "pushpool.service-account.created"),
        "{seen:?}"
    );
    // The viewer sees the pool, not the keys and accounts.
    let (s, events) = call(&served, "GET", "/events", &viewer, None).await;
    assert_eq!(s, 200, "{events}");
    let seen = kinds(&events);
    assert!(
        seen.iter().any(|k| k == "pushpool.work-pool.created"),
        "{seen:?}"
    );
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

/// Every row of the tables that may hold secrets, as one text, read with plain sqlx (no key).
async fn raw_rows(url: &str) -> String {
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(url).await.unwrap();
    let mut out = String::new();
    for sql in [
        "SELECT key || ' ' || value FROM settings",
        "SELECT base_job_template FROM work_pools",
        "SELECT job_variables || parameters FROM deployments",
        "SELECT job_variables || parameters FROM flow_runs",
        "SELECT payload FROM events",
    ] {
        let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&raw).await.unwrap();
        for (text,) in rows {
            out.push_str(&text);
            out.push('\n');
        }
    }
    raw.close().await;
    out
}

/// Asserts no secret, nor its base64, is in `raw`.
fn assert_absent(raw: &str, secrets: &[(&str, String)]) {
    use base64::Engine as _;
    for (what, secret) in secrets {
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(
            !raw.contains(secret.as_str()),
            "the {what} is stored in plain text:\n{raw}"
        );
        assert!(
            !raw.contains(&b64),
            "the {what} is stored as base64:\n{raw}"
        );
    }
}

/// A store on `url` opened with `key`.
async fn open_with(url: &str, key: &pushpool::store::SecretKey) -> pushpool::store::Store {
    pushpool::store::Store::connect_with(
        url,
        pushpool::store::ConnectOptions {
            secret_key: Some(key.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// The job configuration run `run_id` of `deployment` gets, rendered from what `store` reads.
async fn rendered_job(store: &pushpool::store::Store, deployment: &str, run_id: &str) -> Value {
    let ws = store.workspace("default").await.unwrap().id;
    let d = store.deployment(ws, deployment).await.unwrap();
    let pool = store.pool_by_id(d.work_pool_id).await.unwrap();
    let run = store.run(run_id.parse().unwrap()).await.unwrap();
    let template = pushpool::job::parse_template(&pool).unwrap();
    let facts = pushpool::job::RunFacts::of_run(&run, "http://api", "token");
    pushpool::job::render(&template, &pool, &d, &facts).unwrap()
}

/// Issue 19 item 9: provider credentials (a Cloud Run service-account key in a pool template's
/// defaults, an API token in deployment and run variables, a variable the pool's schema
/// marks `writeOnly`) and the run-token secret are stored encrypted: the raw rows hold neither
/// them nor their base64, while the API and the jobs still get the real values. A wrong key is
/// a clear error naming the key's source; rotation re-encrypts everything under a new key.
async fn secrets_are_encrypted_at_rest_and_read_back_whole(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let owner = served.admin_key.clone();
    let private_key = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-private-4711";
    let external_id = "ext-id-deployment-0815";
    let run_external_id = "ext-id-run-4242";
    let vault = "vault-pass-1234";

    // Cloud Run pool: the service-account key is the template's default credentials.
    let (s, pool) = call(
        &served,
        "POST",
        "/work_pools",
        &owner,
        Some(json!({"name": "gcp", "type": "cloud-run-v2:push"})),
    )
    .await;
    assert_eq!(s, 201, "{pool}");
    let mut template = pool["base_job_template"].clone();
    template["variables"]["properties"]["credentials"]["default"] = json!({
        "service_account_info": {"type": "service_account", "client_email": "a@p.iam",
                                 "private_key": private_key}
    });
    let (s, b) = call(
        &served,
        "PATCH",
        "/work_pools/gcp",
        &owner,
        Some(json!({"base_job_template": template})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &served,
        "POST",
        "/deployments",
        &owner,
        Some(json!({
            "name": "gcp-job", "work_pool": "gcp",
            "job_variables": {"image": "img", "project": "p", "region": "us-central1"}
        })),
    )
    .await;
    assert_eq!(s, 201, "{b}");

    // AWS pool with a schema-secret variable; an API token in deployment and run variables.
    let (s, pool) = call(
        &served,
        "POST",
        "/work_pools",
        &owner,
        Some(json!({"name": "aws", "type": "aws-lambda:push"})),
    )
    .await;
    assert_eq!(s, 201, "{pool}");
    let mut template = pool["base_job_template"].clone();
    template["variables"]["properties"]["vault"] = json!({"type": "string", "writeOnly": true});
    // `api_token` is secret by its name (a template may no longer carry an AWS external id).
    template["variables"]["properties"]["api_token"] = json!({"type": "string"});
    template["job_configuration"]["env"] =
        json!({"VAULT": "{{ vault }}", "API_TOKEN": "{{ api_token }}"});
    let (s, b) = call(
        &served,
        "PATCH",
        "/work_pools/aws",
        &owner,
        Some(json!({"base_job_template": template})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &served,
        "POST",
        "/deployments",
        &owner,
        Some(json!({
            "name": "aws-job", "work_pool": "aws",
            "job_variables": {"function_name": "etl", "region": "us-east-1",
                              "api_token": external_id, "vault": vault}
        })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, aws_run) = call(
        &served,
        "POST",
        "/deployments/aws-job/runs",
        &owner,
        Some(json!({"job_variables": {"api_token": run_external_id}})),
    )
    .await;
    assert_eq!(s, 201, "{aws_run}");
    let aws_run = aws_run["id"].as_str().unwrap().to_string();
    let (s, gcp_run) = call(
        &served,
        "POST",
        "/deployments/gcp-job/runs",
        &owner,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{gcp_run}");
    let gcp_run = gcp_run["id"].as_str().unwrap().to_string();

    // `serve` made the run-token secret.
    let run_token_secret = served
        .store
        .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
        .await
        .unwrap()
        .unwrap();
    let secrets = [
        ("service-account private key", private_key.to_string()),
        ("deployment external id", external_id.to_string()),
        ("run external id", run_external_id.to_string()),
        ("writeOnly variable", vault.to_string()),
        ("run-token secret", run_token_secret.clone()),
    ];
    let raw = raw_rows(&db.url).await;
    assert_absent(&raw, &secrets);
    let key = pushpool_testkit::test_secret_key();
    assert!(raw.contains(&format!("ppenc:v1:{}:", key.id())), "{raw}");

    // The API works as before: masked answers, previews render.
    let (s, d) = call(&served, "GET", "/deployments/aws-job", &owner, None).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["job_variables"]["api_token"], pushpool::redact::MASK);
    let (s, p) = call(
        &served,
        "POST",
        "/deployments/gcp-job/preview",
        &owner,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    // The jobs get the real values.
    let gcp_job = rendered_job(&served.store, "gcp-job", &gcp_run).await;
    assert_eq!(
        gcp_job["credentials"]["service_account_info"]["private_key"], private_key,
        "{gcp_job}"
    );
    let aws_job = rendered_job(&served.store, "aws-job", &aws_run).await;
    assert_eq!(aws_job["env"]["API_TOKEN"], run_external_id, "{aws_job}");
    assert_eq!(aws_job["env"]["VAULT"], vault, "{aws_job}");

    // A ciphertext copied into another row does not decrypt there (the row is associated data).
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let (aws_vars,): (String,) =
        sqlx::query_as("SELECT job_variables FROM deployments WHERE name = 'aws-job'")
            .fetch_one(&raw)
            .await
            .unwrap();
    let (gcp_vars,): (String,) =
        sqlx::query_as("SELECT job_variables FROM deployments WHERE name = 'gcp-job'")
            .fetch_one(&raw)
            .await
            .unwrap();
    let set_gcp_vars = |text: String| {
        sqlx::query("UPDATE deployments SET job_variables = $1 WHERE name = 'gcp-job'").bind(text)
    };
    set_gcp_vars(aws_vars).execute(&raw).await.unwrap();
    let ws = served.store.workspace("default").await.unwrap().id;
    let err = served
        .store
        .deployment(ws, "gcp-job")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("moved") && err.contains("job_variables"),
        "{err}"
    );
    set_gcp_vars(gcp_vars).execute(&raw).await.unwrap();
    raw.close().await;
    served.store.deployment(ws, "gcp-job").await.unwrap();

    // A wrong key: a clear error naming the key's source, never garbage.
    let wrong = pushpool::store::SecretKey::generate("the file /wrong/secret.key");
    let other = open_with(&db.url, &wrong).await;
    let err = pushpool::server::run_tokens(&other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/wrong/secret.key") && err.contains(key.id()) && err.contains(wrong.id()),
        "{err}"
    );
    let ws = other.workspace("default").await.unwrap().id;
    let err = other
        .deployment(ws, "aws-job")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/wrong/secret.key") && err.contains("job_variables"),
        "{err}"
    );
    other.close().await;

    // Rotation: everything re-encrypted under the new key; the old one no longer decrypts.
    let new = pushpool::store::SecretKey::generate("the file new.key");
    let settings: i64 = {
        let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM settings")
            .fetch_one(&raw)
            .await
            .unwrap();
        raw.close().await;
        n
    };
    let report = served.store.reseal_all(&new).await.unwrap();
    // Every setting (the run-token secret among them) is sealed, whatever else the store keeps.
    assert_eq!(
        (
            report.settings as i64,
            report.work_pools,
            report.deployments,
            report.flow_runs
        ),
        (settings, 2, 2, 2)
    );
    let raw = raw_rows(&db.url).await;
    assert_absent(&raw, &secrets);
    assert!(!raw.contains(&format!("ppenc:v1:{}:", key.id())), "{raw}");
    assert!(raw.contains(&format!("ppenc:v1:{}:", new.id())), "{raw}");
    let err = served
        .store
        .deployment(ws, "aws-job")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(new.id()), "{err}");
    let rotated = open_with(&db.url, &new).await;
    let tokens_secret = rotated
        .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
        .await
        .unwrap();
    assert_eq!(tokens_secret.as_deref(), Some(run_token_secret.as_str()));
    let gcp_job = rendered_job(&rotated, "gcp-job", &gcp_run).await;
    assert_eq!(
        gcp_job["credentials"]["service_account_info"]["private_key"],
        private_key
    );
    let aws_job = rendered_job(&rotated, "aws-job", &aws_run).await;
    assert_eq!(aws_job["env"]["API_TOKEN"], run_external_id);
    assert_eq!(aws_job["env"]["VAULT"], vault);
    let d = rotated.deployment(ws, "aws-job").await.unwrap();
    assert_eq!(d.job_variables["api_token"], external_id);
    rotated.close().await;
}

/// A store written before encryption (no key): its plain secrets read as they are with a key,
/// the run-token secret is encrypted at the next start, and rotation encrypts the rest.
async fn plain_secrets_of_an_older_store_still_read_and_rotation_encrypts_them(db: TestDb) {
    let secret = "plain-api-token-9876";
    let old = pushpool::store::Store::connect(&db.url).await.unwrap();
    pushpool::server::run_tokens(&old).await.unwrap();
    let ws = old.create_workspace("default").await.unwrap().id;
    old.create_pool(
        ws,
        pushpool::store::NewPool {
            name: "local".into(),
            pool_type: "process".into(),
            description: None,
            base_job_template: json!({"job_configuration": {"command": "{{ command }}"},
            "variables": {"properties": {"command": {"type": "string"}}}}),
            concurrency_limit: None,
            paused: false,
            submit_rate: None,
            overridable_variables: None,
        },
    )
    .await
    .unwrap();
    let mut vars = serde_json::Map::new();
    vars.insert("env".into(), json!({"API_TOKEN": secret}));
    old.create_deployment(
        ws,
        pushpool::store::NewDeployment {
            name: "job".into(),
            work_pool: "local".into(),
            work_queue: None,
            job_variables: vars,
            parameters: Default::default(),
            concurrency_limit: None,
            paused: false,
        },
    )
    .await
    .unwrap();
    let plain_run_token = old
        .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
        .await
        .unwrap()
        .unwrap();
    old.close().await;
    assert!(raw_rows(&db.url).await.contains(secret));

    let key = pushpool_testkit::test_secret_key();
    let store = open_with(&db.url, &key).await;
    let d = store.deployment(ws, "job").await.unwrap();
    assert_eq!(d.job_variables["env"]["API_TOKEN"], secret);
    // The next start encrypts the run-token secret, keeping its value.
    pushpool::server::run_tokens(&store).await.unwrap();
    assert_eq!(
        store
            .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
            .await
            .unwrap()
            .as_deref(),
        Some(plain_run_token.as_str())
    );
    let secrets = [("run-token secret", plain_run_token.clone())];
    assert_absent(&raw_rows(&db.url).await, &secrets);
    // Rotation with the same key encrypts what is still plain.
    store.reseal_all(&key).await.unwrap();
    let secrets = [
        ("API token", secret.to_string()),
        ("run-token secret", plain_run_token),
    ];
    assert_absent(&raw_rows(&db.url).await, &secrets);
    assert_eq!(
        store.deployment(ws, "job").await.unwrap().job_variables["env"]["API_TOKEN"],
        secret
    );
    store.close().await;
}

/// `pushpool secrets rotate-key` (the real binary, offline, on the store in `--home`): it
/// re-encrypts with the new key file it creates (0600), prints the counts and what to do next;
/// afterwards only the new key opens the store, and a wrong current key is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotate_key_command_re_encrypts_the_store_under_a_new_key_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("pushpool.db");
    let url = format!("sqlite://{}", db.display());
    // What `pushpool up` does: the key file in the home, the run-token secret in the store.
    let options = pushpool::store::crypto::KeyOptions {
        home: home.path().to_path_buf(),
        create: true,
        ..Default::default()
    };
    let old = pushpool::store::crypto::resolve_key(&options).unwrap();
    let store = open_with(&url, &old).await;
    let secret = pushpool::server::run_tokens(&store)
        .await
        .map(|_| ())
        .and(
            store
                .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
                .await,
        )
        .unwrap()
        .unwrap();
    store.close().await;

    let rotate = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pushpool"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PUSHPOOL_") {
                command.env_remove(name);
            }
        }
        command
            .args(["secrets", "rotate-key", "--home"])
            .arg(home.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let new_file = home.path().join("new.key");
    let out = rotate(&["--new-key-file", new_file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = pushpool::store::SecretKey::read_file(&new_file).unwrap();
    assert!(
        stdout.contains("1 setting(s)")
            && stdout.contains(new.id())
            && stdout.contains("secret.key"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::metadata(&new_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let with_old = open_with(&url, &old).await;
    let err = with_old
        .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(new.id()) && err.contains(old.id()), "{err}");
    with_old.close().await;
    let with_new = open_with(&url, &new).await;
    assert_eq!(
        with_new
            .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
            .await
            .unwrap(),
        Some(secret)
    );
    with_new.close().await;

    // The old key is still in secret.key: the next rotation is refused, naming that file.
    let out = rotate(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("secret.key") && stderr.contains(old.id()) && stderr.contains(new.id()),
        "{stderr}"
    );
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
                overridable_variables: None,
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
