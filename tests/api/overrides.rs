//! Regression (issue 19, item 5): run-level `job_variables` change what a run executes, so they
//! need their own scope (`runs:override`, held by owners and developers), and a pool may list
//! which variables a run may override at all (`overridable_variables`). A refused run stores
//! nothing.

use pushpool_testkit::{both_backends, call_json, serve_fresh, Served, TestDb};
use serde_json::{json, Value};

both_backends!(
    a_runner_cannot_change_what_a_run_executes,
    a_pool_limits_which_variables_a_run_may_override,
    overridable_variables_must_name_variables_of_the_pool,
);

/// `method path` (under workspace `default`) with `key`.
async fn call(
    app: &Served,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}/api/workspaces/default{path}", app.base);
    call_json(&app.client, method, &url, key, body).await
}

async fn ok(app: &Served, method: &str, path: &str, body: Value) -> Value {
    let (s, b) = call(app, method, path, &app.admin_key, Some(body)).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
    b
}

/// A key of a service account with `role`.
async fn service_account_key(app: &Served, name: &str, role: &str) -> String {
    let sa = ok(
        app,
        "POST",
        "/service_accounts",
        json!({"name": name, "role": role}),
    )
    .await;
    sa["api_key"]["key"].as_str().unwrap().to_string()
}

/// A key of a new member user with `role`.
async fn member_key(app: &Served, name: &str, role: &str) -> String {
    let url = format!("{}/api/users", app.base);
    let (s, b) = call_json(
        &app.client,
        "POST",
        &url,
        &app.admin_key,
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    ok(app, "POST", "/members", json!({"user": name, "role": role})).await;
    let key = ok(
        app,
        "POST",
        "/api_keys",
        json!({"name": name, "user": name}),
    )
    .await;
    key["key"].as_str().unwrap().to_string()
}

async fn runs_of(app: &Served, deployment: &str) -> Vec<Value> {
    let (s, b) = call(
        app,
        "GET",
        &format!("/flow_runs?deployment={deployment}"),
        &app.admin_key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b.as_array().unwrap().clone()
}

async fn pool_and_deployment(app: &Served, pool: Value) {
    ok(app, "POST", "/work_pools", pool.clone()).await;
    ok(
        app,
        "POST",
        "/deployments",
        json!({"name": "etl", "work_pool": pool["name"], "job_variables": {"command": "true"}}),
    )
    .await;
}

/// The runner's `{"command": "id; ls …/home"}` of the issue: refused, nothing stored.
async fn a_runner_cannot_change_what_a_run_executes(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    pool_and_deployment(&app, json!({"name": "local", "type": "process"})).await;
    let runner = service_account_key(&app, "ci-runner", "runner").await;
    let developer = member_key(&app, "dev", "developer").await;

    for body in [
        json!({"job_variables": {"command": "id; ls -la /home"}}),
        json!({"job_variables": {"env": {"PATH": "/tmp/evil"}}, "idempotency_key": "k1"}),
        json!({"job_variables": {"working_dir": "/"}, "parameters": {"x": 1}}),
    ] {
        let (s, b) = call(&app, "POST", "/deployments/etl/runs", &runner, Some(body)).await;
        assert_eq!(s, 403, "the runner's overrides are refused: {b}");
        assert_eq!(b["error"], "forbidden", "{b}");
        let message = b["message"].as_str().unwrap();
        assert!(
            message.contains("`runs:override`") && message.contains("runner"),
            "the refusal names the scope and the role: {b}"
        );
    }
    assert!(
        runs_of(&app, "etl").await.is_empty(),
        "a refused run stores nothing"
    );
    // The refusal is audited as denied.
    let (_, log) = call(
        &app,
        "GET",
        "/audit_log?action=flow_run.create&outcome=denied",
        &app.admin_key,
        None,
    )
    .await;
    assert_eq!(log.as_array().map(Vec::len), Some(3), "{log}");

    // Starting a run as the deployment says needs only runs:create.
    for body in [
        json!({}),
        json!({"job_variables": {}, "parameters": {"x": 1}}),
    ] {
        let (s, b) = call(&app, "POST", "/deployments/etl/runs", &runner, Some(body)).await;
        assert_eq!(s, 201, "a runner still starts runs: {b}");
    }
    let (s, b) = call(&app, "POST", "/deployments/etl/runs", &runner, None).await;
    assert_eq!(s, 201, "no body at all: {b}");

    // A developer (and an owner) may override.
    let (s, b) = call(
        &app,
        "POST",
        "/deployments/etl/runs",
        &developer,
        Some(json!({"job_variables": {"command": "echo hi"}})),
    )
    .await;
    assert_eq!(s, 201, "a developer overrides: {b}");
    assert_eq!(b["job_variables"], json!({"command": "echo hi"}), "{b}");
    let (s, b) = call(
        &app,
        "POST",
        "/deployments/etl/runs",
        &app.admin_key,
        Some(json!({"job_variables": {"command": "echo owner"}})),
    )
    .await;
    assert_eq!(s, 201, "an owner overrides: {b}");

    // A custom role decides by the scope; a key capped at runner loses it.
    ok(
        &app,
        "POST",
        "/roles",
        json!({"name": "launcher", "scopes": ["runs:create", "runs:override"]}),
    )
    .await;
    let launcher = service_account_key(&app, "launcher-sa", "launcher").await;
    let (s, b) = call(
        &app,
        "POST",
        "/deployments/etl/runs",
        &launcher,
        Some(json!({"job_variables": {"command": "echo custom"}})),
    )
    .await;
    assert_eq!(s, 201, "a custom role with runs:override: {b}");
    let capped = ok(
        &app,
        "POST",
        "/api_keys",
        json!({"name": "capped", "role": "runner"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, b) = call(
        &app,
        "POST",
        "/deployments/etl/runs",
        &capped,
        Some(json!({"job_variables": {"command": "id"}})),
    )
    .await;
    assert_eq!(s, 403, "an owner key capped at runner: {b}");
    assert!(b["message"].as_str().unwrap().contains("capped"), "{b}");
    assert_eq!(runs_of(&app, "etl").await.len(), 6);
}

/// `overridable_variables: ["env"]`: a run may set `env`, not `command`; `[]`: nothing; `null`:
/// any variable. Deployment-level job variables are not restricted by the list.
async fn a_pool_limits_which_variables_a_run_may_override(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    pool_and_deployment(
        &app,
        json!({"name": "locked", "type": "process", "overridable_variables": ["env"]}),
    )
    .await;
    let (_, pool) = call(&app, "GET", "/work_pools/locked", &app.admin_key, None).await;
    assert_eq!(pool["overridable_variables"], json!(["env"]), "{pool}");

    for (body, field) in [
        (json!({"command": "id"}), "job_variables.command"),
        (
            json!({"env": {"A": "1"}, "working_dir": "/"}),
            "job_variables.working_dir",
        ),
    ] {
        for path in ["/deployments/etl/runs", "/deployments/etl/preview"] {
            let (s, b) = call(
                &app,
                "POST",
                path,
                &app.admin_key,
                Some(json!({ "job_variables": body })),
            )
            .await;
            assert_eq!(s, 422, "{path} {body}: {b}");
            assert_eq!(b["field"], field, "{b}");
            assert!(
                b["message"]
                    .as_str()
                    .unwrap()
                    .contains("overridable_variables"),
                "the refusal names the rule: {b}"
            );
        }
    }
    assert!(runs_of(&app, "etl").await.is_empty(), "nothing stored");
    for vars in [json!({"env": {"A": "1"}}), json!({"env.B": "2"})] {
        let (s, b) = call(
            &app,
            "POST",
            "/deployments/etl/runs",
            &app.admin_key,
            Some(json!({ "job_variables": vars })),
        )
        .await;
        assert_eq!(s, 201, "{vars}: {b}");
    }
    // The deployment's own `command` is its author's (deployments:write), not the run's.
    ok(
        &app,
        "PATCH",
        "/deployments/etl",
        json!({"job_variables": {"command": "echo changed"}}),
    )
    .await;

    // `[]`: no run-level override at all.
    let patched = ok(
        &app,
        "PATCH",
        "/work_pools/locked",
        json!({"overridable_variables": []}),
    )
    .await;
    assert_eq!(patched["overridable_variables"], json!([]), "{patched}");
    let (s, b) = call(
        &app,
        "POST",
        "/deployments/etl/runs",
        &app.admin_key,
        Some(json!({"job_variables": {"env": {"A": "1"}}})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["field"], "job_variables.env", "{b}");

    // `null`: any variable of the schema again.
    let patched = ok(
        &app,
        "PATCH",
        "/work_pools/locked",
        json!({"overridable_variables": null}),
    )
    .await;
    assert!(patched["overridable_variables"].is_null(), "{patched}");
    let (s, b) = call(
        &app,
        "POST",
        "/deployments/etl/runs",
        &app.admin_key,
        Some(json!({"job_variables": {"command": "echo ok"}})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    // A PATCH without the field keeps the list.
    ok(
        &app,
        "PATCH",
        "/work_pools/locked",
        json!({"overridable_variables": ["env"]}),
    )
    .await;
    let patched = ok(
        &app,
        "PATCH",
        "/work_pools/locked",
        json!({"description": "d"}),
    )
    .await;
    assert_eq!(
        patched["overridable_variables"],
        json!(["env"]),
        "{patched}"
    );

    // A run made before the pool was locked is not handed out with its override: the claim
    // answers the same rule instead of a job configuration.
    let controller = service_account_key(&app, "ctl", "controller").await;
    let (s, claimed) = call(
        &app,
        "POST",
        "/work_pools/locked/claim",
        &controller,
        Some(json!({"controller_id": "c1", "limit": 10})),
    )
    .await;
    assert_eq!(s, 200, "{claimed}");
    let runs = claimed["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{claimed}");
    let refused: Vec<&Value> = runs
        .iter()
        .filter(|r| r["flow_run"]["job_variables"]["command"] == "echo ok")
        .collect();
    assert_eq!(refused.len(), 1, "{claimed}");
    assert!(refused[0]["job_configuration"].is_null(), "{claimed}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("overridable_variables"),
        "{claimed}"
    );
}

/// Each listed name must be a variable of the pool's schema, once; a refusal stores nothing.
async fn overridable_variables_must_name_variables_of_the_pool(db: TestDb) {
    let app = serve_fresh(&db.url, false).await;
    for (list, field) in [
        (json!(["nope"]), "overridable_variables[0]"),
        (json!(["env", "image"]), "overridable_variables[1]"),
        (json!(["env", "env"]), "overridable_variables[1]"),
        (json!(["flow_run"]), "overridable_variables[0]"),
        (json!([""]), "overridable_variables[0]"),
    ] {
        let (s, b) = call(
            &app,
            "POST",
            "/work_pools",
            &app.admin_key,
            Some(json!({"name": "p", "type": "process", "overridable_variables": list})),
        )
        .await;
        assert_eq!(s, 422, "{list}: {b}");
        assert_eq!(b["field"], field, "{list}: {b}");
    }
    let (_, pools) = call(&app, "GET", "/work_pools", &app.admin_key, None).await;
    assert_eq!(pools, json!([]), "nothing stored");

    ok(
        &app,
        "POST",
        "/work_pools",
        json!({"name": "p", "type": "process", "overridable_variables": ["env", "command"]}),
    )
    .await;
    let (s, b) = call(
        &app,
        "PATCH",
        "/work_pools/p",
        &app.admin_key,
        Some(json!({"overridable_variables": ["env", "nope"], "description": "changed"})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["field"], "overridable_variables[1]", "{b}");
    // A new template must still declare every listed variable.
    let template = json!({
        "job_configuration": {"command": "{{ command }}"},
        "variables": {"type": "object", "properties": {"command": {"type": "string"}}},
    });
    let (s, b) = call(
        &app,
        "PATCH",
        "/work_pools/p",
        &app.admin_key,
        Some(json!({"base_job_template": template})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["field"], "overridable_variables[0]", "{b}");
    assert!(b["message"].as_str().unwrap().contains("env"), "{b}");
    let (_, pool) = call(&app, "GET", "/work_pools/p", &app.admin_key, None).await;
    assert_eq!(
        pool["overridable_variables"],
        json!(["env", "command"]),
        "{pool}"
    );
    assert!(pool["description"].is_null(), "unchanged: {pool}");
    // Both together: the list is checked against the new template.
    let patched = ok(
        &app,
        "PATCH",
        "/work_pools/p",
        json!({"base_job_template": template, "overridable_variables": ["command"]}),
    )
    .await;
    assert_eq!(patched["overridable_variables"], json!(["command"]));
}

/// The OpenAPI document tells the truth about both: the pool field in requests and answers, and
/// the further scope of a run with `job_variables`.
#[test]
fn the_openapi_document_states_the_scope_and_the_field() {
    let doc = pushpool::api::openapi::document();
    let schemas = &doc["components"]["schemas"];
    for schema in ["CreatePool", "UpdatePool", "WorkPool"] {
        let field =
            serde_json::to_string(&schemas[schema]["properties"]["overridable_variables"]).unwrap();
        assert!(
            field.contains("\"array\"") && field.contains("\"null\""),
            "{schema}: {field}"
        );
        assert!(field.contains("\"string\""), "{schema}: {field}");
    }
    let create_run = &doc["paths"]["/api/workspaces/{ws}/deployments/{id_or_name}/runs"]["post"];
    assert_eq!(create_run["x-pushpool-scope"], "runs:create");
    assert_eq!(
        create_run["x-pushpool-conditional-scope"]["scope"],
        "runs:override"
    );
    assert!(
        create_run["description"]
            .as_str()
            .unwrap()
            .contains("`runs:override`"),
        "{create_run}"
    );
    for status in ["403", "422"] {
        assert!(create_run["responses"][status].is_object(), "{status}");
    }
}
