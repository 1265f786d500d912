//! Cloud identity across the execution boundary (issue 18, parts 3 and 4; docs/security.md,
//! "Cloud identity"), on SQLite and PostgreSQL: a workspace uses the controller's ambient AWS or
//! Google identity, credential files on its disk and custom endpoints only when the instance
//! administrator granted it (or, for endpoints, when `--allowed-endpoint` allows the URL); a
//! pool relying on them is refused at creation, and a pool stored before the rule is refused at
//! submission. The grants are administrator-only and audited.

use std::time::{Duration, Instant};

use pushpool::server::ServeOptions;
use pushpool::store::{NewDeployment, NewPool};
use pushpool_testkit::{both_backends, call_json, serve_fresh_with, Served, TestDb};
use serde_json::{json, Map, Value};

both_backends!(
    ambient_identity_files_and_endpoints_need_the_administrators_grant,
    pools_stored_before_the_rule_are_refused_at_submit,
    grants_are_for_administrators_and_audited,
);

async fn serve(db: &TestDb) -> Served {
    serve_fresh_with(
        &db.url,
        ServeOptions {
            controller: true,
            allowed_endpoints: vec!["http://127.0.0.1".into()],
            ..Default::default()
        },
    )
    .await
}

/// Workspace `team`, created by the administrator; its owner key.
async fn team(s: &Served) -> String {
    let (st, b) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces", s.base),
        &s.admin_key,
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    b["api_key"]["key"].as_str().unwrap().to_string()
}

/// The default template of `pool_type` with these variable defaults set.
async fn template(s: &Served, pool_type: &str, defaults: Value) -> Value {
    let (st, mut t) = call_json(
        &s.client,
        "GET",
        &format!("{}/api/pool_types/{pool_type}/default_template", s.base),
        &s.admin_key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{t}");
    for (k, v) in defaults.as_object().unwrap() {
        t["variables"]["properties"][k]["default"] = v.clone();
    }
    t
}

async fn create_pool(
    s: &Served,
    ws: &str,
    key: &str,
    name: &str,
    ty: &str,
    t: Value,
) -> (u16, Value) {
    call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces/{ws}/work_pools", s.base),
        key,
        Some(json!({"name": name, "type": ty, "base_job_template": t})),
    )
    .await
}

const ROLE: &str = "arn:aws:iam::123456789012:role/pushpool";

fn service_account_key() -> Value {
    json!({"type": "service_account", "client_email": "a@p.iam.gserviceaccount.com",
           "private_key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
           "project_id": "p"})
}

async fn ambient_identity_files_and_endpoints_need_the_administrators_grant(db: TestDb) {
    let s = serve(&db).await;
    let key = team(&s).await;
    let team_id = s.store.workspace("team").await.unwrap().id;

    // Lambda: no role of its own = the controller's identity: refused, saying how to fix it.
    let t = template(&s, "aws-lambda:push", json!({"function_name": "f"})).await;
    let (st, b) = create_pool(&s, "team", &key, "ambient", "aws-lambda:push", t).await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(
        b["field"], "base_job_template.job_configuration.credentials",
        "{b}"
    );
    let message = b["message"].as_str().unwrap();
    assert!(message.contains("ambient-aws"), "{message}");
    assert!(message.contains("role_arn"), "{message}");
    assert!(
        message.contains("pushpool workspace grant team ambient-aws"),
        "{message}"
    );
    assert_eq!(s.store.list_pools(team_id).await.unwrap().len(), 0);

    // With a role of its own: accepted, and the pool shows the ExternalId its AssumeRole passes.
    let t = template(
        &s,
        "aws-lambda:push",
        json!({"function_name": "f", "credentials": {"role_arn": ROLE}}),
    )
    .await;
    let (st, pool) = create_pool(&s, "team", &key, "lambda", "aws-lambda:push", t).await;
    assert_eq!(st, 201, "{pool}");
    assert_eq!(
        pool["aws_external_id"],
        format!("pushpool-{team_id}"),
        "{pool}"
    );
    // A deployment taking the role away again is refused the same way.
    let (st, b) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces/team/deployments", s.base),
        &key,
        Some(json!({"name": "d", "work_pool": "lambda", "job_variables": {"credentials": {}}})),
    )
    .await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(b["field"], "job_configuration.credentials", "{b}");
    // A custom endpoint outside --allowed-endpoint is refused; inside it, accepted.
    let (st, b) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces/team/deployments", s.base),
        &key,
        Some(json!({"name": "d", "work_pool": "lambda",
                    "job_variables": {"endpoint_url": "https://tenant.example"}})),
    )
    .await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(b["field"], "job_configuration.endpoint_url", "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("custom-endpoints"),
        "{b}"
    );

    // Cloud Run: a key file on the controller's disk is refused.
    let t = template(
        &s,
        "cloud-run-v2:push",
        json!({"image": "i", "credentials": {"service_account_file": "/etc/pushpool/sa.json"}}),
    )
    .await;
    let (st, b) = create_pool(&s, "team", &key, "file", "cloud-run-v2:push", t).await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(
        b["field"], "base_job_template.job_configuration.credentials.service_account_file",
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("host-credential-files"),
        "{b}"
    );
    // Application Default Credentials (no credentials) are the controller's identity.
    let t = template(&s, "cloud-run-v2:push", json!({"image": "i"})).await;
    let (st, b) = create_pool(&s, "team", &key, "adc", "cloud-run-v2:push", t).await;
    assert_eq!(st, 403, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("ambient-gcp"),
        "{b}"
    );
    // Its own key, but an endpoint outside the allowed list: its token would go there.
    for (endpoint, expected) in [
        ("http://tenant.example", 403),
        ("http://127.0.0.1.tenant.example", 403),
        ("http://127.0.0.1:9", 201),
    ] {
        let t = template(
            &s,
            "cloud-run-v2:push",
            json!({"image": "i", "credentials": {"service_account_info": service_account_key()},
                   "endpoint_url": endpoint}),
        )
        .await;
        let name = format!("own-{expected}");
        let (st, b) = create_pool(&s, "team", &key, &name, "cloud-run-v2:push", t).await;
        assert_eq!(st, expected, "{endpoint}: {b}");
        if expected == 403 {
            assert_eq!(
                b["field"], "base_job_template.job_configuration.endpoint_url",
                "{b}"
            );
        }
    }
    // Changing a pool into one that relies on the controller's identity is refused too.
    let t = template(&s, "aws-lambda:push", json!({"function_name": "f"})).await;
    let (st, b) = call_json(
        &s.client,
        "PATCH",
        &format!("{}/api/workspaces/team/work_pools/lambda", s.base),
        &key,
        Some(json!({"base_job_template": t})),
    )
    .await;
    assert_eq!(st, 403, "{b}");

    // With the administrator's grant, the file path is accepted.
    let (st, b) = call_json(
        &s.client,
        "PUT",
        &format!("{}/api/grants/team/host-credential-files", s.base),
        &s.admin_key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["grant"], "host-credential-files");
    assert_eq!(b["granted_by"], "admin");
    let t = template(
        &s,
        "cloud-run-v2:push",
        json!({"image": "i", "credentials": {"service_account_file": "/etc/pushpool/sa.json"}}),
    )
    .await;
    let (st, b) = create_pool(&s, "team", &key, "file", "cloud-run-v2:push", t).await;
    assert_eq!(st, 201, "{b}");

    // The administrator's home workspace holds every grant from the bootstrap: the quickstart's
    // default-template Lambda pool is accepted there.
    let t = template(&s, "aws-lambda:push", json!({"function_name": "f"})).await;
    let (st, b) = create_pool(&s, "default", &s.admin_key, "ambient", "aws-lambda:push", t).await;
    assert_eq!(st, 201, "{b}");
}

/// Waits until run `id` of workspace `ws` is terminal.
async fn wait_terminal(s: &Served, ws: &str, key: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, run) = call_json(
            &s.client,
            "GET",
            &format!("{}/api/workspaces/{ws}/flow_runs/{id}", s.base),
            key,
            None,
        )
        .await;
        let t = run["state"]["type"].as_str().unwrap_or("");
        if ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].contains(&t) {
            return run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not terminal: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pools_stored_before_the_rule_are_refused_at_submit(db: TestDb) {
    let s = serve(&db).await;
    let key = team(&s).await;
    let team_id = s.store.workspace("team").await.unwrap().id;
    // Pools and deployments written before the rule existed: straight into the store.
    let cases = [
        (
            "file",
            "cloud-run-v2:push",
            json!({"image": "i", "credentials": {"service_account_file": "/etc/pushpool/sa.json"}}),
            "host-credential-files",
        ),
        (
            "endpoint",
            "cloud-run-v2:push",
            json!({"image": "i", "credentials": {"service_account_info": service_account_key()},
                   "endpoint_url": "https://tenant.example"}),
            "custom-endpoints",
        ),
        (
            "ambient",
            "aws-lambda:push",
            json!({"function_name": "f"}),
            "ambient-aws",
        ),
    ];
    for (name, ty, defaults, grant) in cases {
        let t = template(&s, ty, defaults).await;
        s.store
            .create_pool(
                team_id,
                NewPool {
                    name: name.into(),
                    pool_type: ty.into(),
                    description: None,
                    base_job_template: t,
                    concurrency_limit: None,
                    paused: false,
                    submit_rate: None,
                    overridable_variables: None,
                },
            )
            .await
            .unwrap();
        s.store
            .create_deployment(
                team_id,
                NewDeployment {
                    name: name.into(),
                    work_pool: name.into(),
                    work_queue: None,
                    job_variables: Map::new(),
                    parameters: Map::new(),
                    concurrency_limit: None,
                    paused: false,
                },
            )
            .await
            .unwrap();
        let (st, run) = call_json(
            &s.client,
            "POST",
            &format!("{}/api/workspaces/team/deployments/{name}/runs", s.base),
            &key,
            Some(json!({})),
        )
        .await;
        assert_eq!(st, 201, "{run}");
        let run = wait_terminal(&s, "team", &key, run["id"].as_str().unwrap()).await;
        assert_eq!(run["state"]["type"], "CRASHED", "{name}: {run}");
        assert!(run["infrastructure_id"].is_null(), "never submitted: {run}");
        let message = run["state"]["message"].as_str().unwrap();
        assert!(
            message.contains("not allowed in this workspace"),
            "{name}: {message}"
        );
        assert!(
            message.contains(&format!("pushpool workspace grant team {grant}")),
            "{name}: {message}"
        );
    }
}

async fn grants_are_for_administrators_and_audited(db: TestDb) {
    let s = serve(&db).await;
    let key = team(&s).await;
    let url = |path: &str| format!("{}{path}", s.base);
    // Bootstrap: the administrator's home workspace holds all four.
    let (st, list) = call_json(&s.client, "GET", &url("/api/grants"), &s.admin_key, None).await;
    assert_eq!(st, 200, "{list}");
    let default: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["workspace"] == "default")
        .map(|g| g["grant"].as_str().unwrap())
        .collect();
    assert_eq!(
        default,
        [
            "ambient-aws",
            "ambient-gcp",
            "custom-endpoints",
            "host-credential-files"
        ]
    );
    // A workspace owner cannot grant its own workspace anything.
    let (st, b) = call_json(
        &s.client,
        "PUT",
        &url("/api/grants/team/ambient-aws"),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 403, "{b}");
    assert!(s
        .store
        .workspace_grants(s.store.workspace("team").await.unwrap().id)
        .await
        .unwrap()
        .is_empty());
    // Unknown grants and workspaces.
    let (st, b) = call_json(
        &s.client,
        "PUT",
        &url("/api/grants/team/root"),
        &s.admin_key,
        None,
    )
    .await;
    assert_eq!((st, b["field"].as_str()), (422, Some("grant")), "{b}");
    let (st, _) = call_json(
        &s.client,
        "PUT",
        &url("/api/grants/nope/ambient-aws"),
        &s.admin_key,
        None,
    )
    .await;
    assert_eq!(st, 404);
    // Grant and revoke (both idempotent).
    for _ in 0..2 {
        let (st, b) = call_json(
            &s.client,
            "PUT",
            &url("/api/grants/team/ambient-aws"),
            &s.admin_key,
            None,
        )
        .await;
        assert_eq!(st, 200, "{b}");
    }
    for _ in 0..2 {
        let (st, b) = call_json(
            &s.client,
            "DELETE",
            &url("/api/grants/team/ambient-aws"),
            &s.admin_key,
            None,
        )
        .await;
        assert_eq!(st, 204, "{b}");
    }
    // A refused pool is on the workspace's record.
    let t = template(&s, "aws-lambda:push", json!({"function_name": "f"})).await;
    let (st, _) = create_pool(&s, "team", &key, "ambient", "aws-lambda:push", t).await;
    assert_eq!(st, 403);
    let (_, log) = call_json(
        &s.client,
        "GET",
        &url("/api/workspaces/team/audit_log?action=work_pool.create"),
        &key,
        None,
    )
    .await;
    let refused = &log.as_array().unwrap()[0];
    assert_eq!(refused["outcome"], "denied", "{log}");
    assert!(
        refused["detail"].to_string().contains("ambient-aws"),
        "{refused}"
    );
    // The instance log has the grants, the revocations and the owner's denied attempt.
    let (_, log) = call_json(
        &s.client,
        "GET",
        &url("/api/audit_log?action=workspace_grant.*&limit=1000"),
        &s.admin_key,
        None,
    )
    .await;
    let entries = log.as_array().unwrap();
    let count = |action: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("workspace_grant.grant", "success"), 2, "{log}");
    assert_eq!(count("workspace_grant.revoke", "success"), 2, "{log}");
    assert_eq!(count("workspace_grant.grant", "denied"), 1, "{log}");
    let granted = entries
        .iter()
        .find(|e| e["action"] == "workspace_grant.grant" && e["outcome"] == "success")
        .unwrap();
    assert_eq!(
        granted["target"], "workspace_grant:team/ambient-aws",
        "{granted}"
    );
}
