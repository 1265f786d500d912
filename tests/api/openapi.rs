//! The OpenAPI document against the route table it is generated from, and the 405 answers.
//!
//! For every route of the table: the operation is in `/api/openapi.json` with its path
//! parameters, its request body (where it has one), each success status with its body schema,
//! and each error status it can answer with the shared error schema. Every `$ref` resolves.
//! The document validates against the OpenAPI 3.1 schema, and answers of a live server are
//! checked against their declared schemas. Every path of the table
//! asked with a method it does not serve answers 405 with `Allow` and the JSON error body.

use pushpool_testkit::{log_warnings, serve_fresh, sqlite_db, Served, TestDb};

use std::collections::{BTreeMap, BTreeSet};

use pushpool::api::table::{Content, Method, RequestBody};
use pushpool::api::{routes, Access};
use serde_json::{json, Value};

async fn serve() -> (Served, TestDb) {
    log_warnings();
    let db = sqlite_db();
    (serve_fresh(&db.url, false).await, db)
}

async fn document(app: &Served) -> Value {
    app.client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every `$ref` under `value`, recursively.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// A validator of `schema`, whose `$ref`s point into the document's components.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.as_object().cloned().unwrap_or_default();
    root.insert("components".into(), doc["components"].clone());
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&Value::Object(root))
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// The OpenAPI Initiative's JSON Schema of OpenAPI 3.1 documents (2022-10-07, Apache-2.0),
/// as shipped in PyPI's `openapi-spec-validator`.
const OAS_3_1_SCHEMA: &str = include_str!("../fixtures/openapi-3.1-schema.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1() {
    let (app, _db) = serve().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let oas: Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&oas)
        .expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_declares_its_body_answers_and_errors() {
    let (app, _db) = serve().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let error_ref = json!({"$ref": "#/components/schemas/Error"});
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error", "message"]), "{error}");
    assert!(error["properties"]["field"].is_object(), "{error}");

    let mut problems = vec![];
    let mut documented = 0;
    for route in routes::all() {
        let what = format!("{} {}", route.method.as_str(), route.path);
        let op = &doc["paths"][route.path][route.method.as_str()];
        if !op.is_object() {
            problems.push(format!("{what}: not in the document"));
            continue;
        }
        documented += 1;
        // Path parameters.
        for name in route.path_params() {
            let declared = op["parameters"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true)
            });
            if !declared {
                problems.push(format!("{what}: path parameter `{name}` not declared"));
            }
        }
        // Query parameters.
        if route.query.is_some() {
            let in_query = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["in"] == "query").count())
                .unwrap_or(0);
            if in_query == 0 {
                problems.push(format!("{what}: no query parameters declared"));
            }
        }
        // Request body.
        match route.body {
            RequestBody::None => {
                if !op["requestBody"].is_null() {
                    problems.push(format!("{what}: declares a body it does not read"));
                }
            }
            RequestBody::Json(_) | RequestBody::OptionalJson(_) => {
                let body = &op["requestBody"];
                if !body["content"]["application/json"]["schema"].is_object() {
                    problems.push(format!("{what}: request body schema not declared"));
                }
                let required = matches!(route.body, RequestBody::Json(_));
                if body["required"] != required {
                    problems.push(format!(
                        "{what}: request body `required` should be {required}"
                    ));
                }
            }
        }
        // Success answers.
        for reply in route.replies.iter().flatten() {
            let answer = &op["responses"][reply.status.to_string()];
            match reply.content {
                Content::Empty => {
                    if !answer.is_object() || !answer["content"].is_null() {
                        problems.push(format!(
                            "{what}: {} should be declared without a body",
                            reply.status
                        ));
                    }
                }
                Content::Json(_) => {
                    if !answer["content"]["application/json"]["schema"].is_object() {
                        problems.push(format!("{what}: {} has no body schema", reply.status));
                    }
                }
                Content::Text(media) => {
                    if !answer["content"][media]["schema"].is_object() {
                        problems.push(format!("{what}: {} has no {media} body", reply.status));
                    }
                }
            }
        }
        // Error answers: those the route's shape implies, at least, all with the error schema.
        let errors = route.error_statuses();
        // Any URL may carry a `%00`, which the guard refuses with 400.
        let mut implied: Vec<u16> = vec![400];
        if route.access != Access::Public {
            implied.extend([401, 403]);
        }
        if route.path_params().next().is_some() {
            implied.push(404);
        }
        if !matches!(route.body, RequestBody::None) {
            implied.extend([400, 413, 422]);
        }
        for status in implied {
            if !errors.contains(&status) {
                problems.push(format!("{what}: {status} missing from its error statuses"));
            }
        }
        for status in errors {
            let schema =
                &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
            if *schema != error_ref {
                problems.push(format!(
                    "{what}: {status} not declared with the error schema"
                ));
            }
        }
        // Creates answer 201, deletes 204 (revoking a key answers the revoked key).
        let statuses: Vec<u16> = route.replies.iter().flatten().map(|r| r.status).collect();
        if route.action.ends_with(".create") && !statuses.contains(&201) {
            problems.push(format!("{what}: a create without 201"));
        }
        if route.method == Method::Delete && route.action != "api_key.revoke" && statuses != [204] {
            problems.push(format!("{what}: a delete answering {statuses:?}, not 204"));
        }
        // Who may call it.
        if route.access == Access::Public {
            if op["security"] != json!([]) {
                problems.push(format!("{what}: public, but not marked so"));
            }
        } else if !op["security"].is_null() {
            problems.push(format!("{what}: should use the document's bearer security"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Exactly the table's operations, and every reference resolves.
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, documented);
    let mut all_refs = vec![];
    refs(&doc, &mut all_refs);
    for r in all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
    // Every component schema compiles as JSON Schema 2020-12.
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        validator(
            &doc,
            &json!({"$ref": format!("#/components/schemas/{name}")}),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_precise_where_a_client_needs_them() {
    let (app, _db) = serve().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let names: BTreeSet<&str> = schemas["StateType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "SCHEDULED",
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
            "CRASHED",
            "CANCELLING",
            "CANCELLED",
            "PAUSED"
        ])
    );
    // Always present but possibly null: required and nullable.
    let run = &schemas["FlowRun"];
    let required: Vec<&str> = run["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for field in [
        "id",
        "state",
        "infrastructure_id",
        "lease_owner",
        "scheduled_time",
        "attempt",
    ] {
        assert!(
            required.contains(&field),
            "FlowRun.{field} not required: {run}"
        );
    }
    assert_eq!(
        run["properties"]["infrastructure_id"]["type"],
        json!(["string", "null"])
    );
    // Bodies refuse unknown fields, as the server does.
    assert_eq!(schemas["CreatePool"]["additionalProperties"], false);
    // Optional request fields are not required.
    assert_eq!(schemas["CreatePool"]["required"], json!(["name", "type"]));
}

/// Sends a request as the instance administrator; the status and the body's text.
async fn call(app: &Served, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let method: reqwest::Method = method.to_uppercase().parse().unwrap();
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(&app.admin_key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Answers of a live server validate against the schemas the document declares for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_match_their_declared_schemas() {
    let (app, _db) = serve().await;
    let doc = document(&app).await;
    let ws = "/api/workspaces/default";
    let steps: Vec<(&str, &str, String, Option<Value>)> = vec![
        (
            "post",
            "/work_pools",
            format!("{ws}/work_pools"),
            Some(json!({"name": "p", "type": "process"})),
        ),
        (
            "post",
            "/work_pools",
            format!("{ws}/work_pools"),
            Some(json!({"name": "p", "type": "process"})),
        ),
        ("get", "/work_pools", format!("{ws}/work_pools"), None),
        (
            "patch",
            "/work_pools/{name}",
            format!("{ws}/work_pools/p"),
            Some(json!({"description": null})),
        ),
        (
            "get",
            "/work_pools/{name}/queues",
            format!("{ws}/work_pools/p/queues"),
            None,
        ),
        (
            "post",
            "/deployments",
            format!("{ws}/deployments"),
            Some(json!({"name": "d", "work_pool": "p", "job_variables": {"command": "sleep 60"}})),
        ),
        (
            "post",
            "/deployments/{id_or_name}/preview",
            format!("{ws}/deployments/d/preview"),
            None,
        ),
        (
            "post",
            "/deployments/{id_or_name}/runs",
            format!("{ws}/deployments/d/runs"),
            Some(json!({"idempotency_key": "k"})),
        ),
        (
            "post",
            "/deployments/{id_or_name}/runs",
            format!("{ws}/deployments/d/runs"),
            Some(json!({"idempotency_key": "k"})),
        ),
        ("get", "/flow_runs", format!("{ws}/flow_runs?limit=5"), None),
        (
            "get",
            "/flow_runs",
            format!("{ws}/flow_runs?limit=zero"),
            None,
        ),
        (
            "get",
            "/flow_runs/{id}",
            format!("{ws}/flow_runs/nope"),
            None,
        ),
        ("get", "/events", format!("{ws}/events"), None),
        (
            "get",
            "/events",
            format!("{ws}/events?event_prefix=pushpool.flow-run.&after=0&limit=5"),
            None,
        ),
        ("get", "/events", format!("{ws}/events?limit=0"), None),
        (
            "get",
            "/events/stream",
            format!("{ws}/events/stream?cursor=0&max_seconds=1"),
            None,
        ),
        (
            "get",
            "/events/stream",
            format!("{ws}/events/stream?cursor=x"),
            None,
        ),
        (
            "post",
            "/service_accounts",
            format!("{ws}/service_accounts"),
            Some(json!({"name": "ci", "role": "runner"})),
        ),
        ("get", "/api_keys", format!("{ws}/api_keys"), None),
        ("get", "/roles", format!("{ws}/roles"), None),
        ("get", "/members", format!("{ws}/members"), None),
        ("get", "/audit_log", format!("{ws}/audit_log"), None),
        ("get", "/api/workspaces", "/api/workspaces".into(), None),
        (
            "post",
            "/api/workspaces",
            "/api/workspaces".into(),
            Some(json!({"name": "w2"})),
        ),
        ("get", "/api/users", "/api/users".into(), None),
    ];
    let mut problems = vec![];
    let mut statuses = vec![];
    for (method, template, path, body) in steps {
        let (status, _) = checked(&app, &doc, method, template, &path, body, &mut problems).await;
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [
            201, 409, 200, 200, 200, 201, 200, 201, 200, 200, 422, 404, 200, 200, 422, 200, 422,
            201, 200, 200, 200, 200, 200, 201, 200
        ],
        "{problems:?}"
    );
    // A run made above: its history, logs and cancellation (twice); a key, rotated and revoked.
    let (_, runs) = checked(
        &app,
        &doc,
        "get",
        "/flow_runs",
        &format!("{ws}/flow_runs"),
        None,
        &mut problems,
    )
    .await;
    let run = runs[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run: {problems:?}"))
        .to_string();
    let (status, key) = checked(
        &app,
        &doc,
        "post",
        "/api_keys",
        &format!("{ws}/api_keys"),
        Some(json!({"name": "k", "role": "viewer"})),
        &mut problems,
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key = key["id"].as_str().unwrap().to_string();
    let (status, rotated) = checked(
        &app,
        &doc,
        "post",
        "/api_keys/{id}/rotate",
        &format!("{ws}/api_keys/{key}/rotate"),
        None,
        &mut problems,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["api_key"]["id"].as_str().unwrap().to_string();
    let calls: Vec<(&str, &str, String, Option<Value>, u16)> = vec![
        (
            "get",
            "/flow_runs/{id}",
            format!("{ws}/flow_runs/{run}"),
            None,
            200,
        ),
        (
            "get",
            "/flow_runs/{id}/states",
            format!("{ws}/flow_runs/{run}/states"),
            None,
            200,
        ),
        (
            "get",
            "/flow_runs/{id}/logs",
            format!("{ws}/flow_runs/{run}/logs"),
            None,
            200,
        ),
        (
            "post",
            "/flow_runs/{id}/cancel",
            format!("{ws}/flow_runs/{run}/cancel"),
            None,
            200,
        ),
        (
            "post",
            "/flow_runs/{id}/cancel",
            format!("{ws}/flow_runs/{run}/cancel"),
            None,
            409,
        ),
        (
            "delete",
            "/api_keys/{id}",
            format!("{ws}/api_keys/{new_key}"),
            None,
            200,
        ),
        (
            "post",
            "/roles",
            format!("{ws}/roles"),
            Some(json!({"name": "reader", "scopes": ["runs:read"]})),
            201,
        ),
        (
            "delete",
            "/roles/{name}",
            format!("{ws}/roles/reader"),
            None,
            204,
        ),
        (
            "delete",
            "/deployments/{id_or_name}",
            format!("{ws}/deployments/d"),
            None,
            204,
        ),
    ];
    for (method, template, path, body, want) in calls {
        let (status, value) =
            checked(&app, &doc, method, template, &path, body, &mut problems).await;
        assert_eq!(status, want, "{method} {path}: {value}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Calls `path` and checks that the answer's status is declared for the `template` operation and
/// that its body validates against the declared schema; the status and the body, parsed (or
/// null).
async fn checked(
    app: &Served,
    doc: &Value,
    method: &str,
    template: &str,
    path: &str,
    body: Option<Value>,
    problems: &mut Vec<String>,
) -> (u16, Value) {
    let template = if template.starts_with("/api/") {
        template.to_string()
    } else {
        format!("/api/workspaces/{{ws}}{template}")
    };
    let (status, text) = call(app, method, path, body).await;
    let answer = &doc["paths"][&template][method]["responses"][status.to_string()];
    if !answer.is_object() {
        problems.push(format!("{method} {path}: {status} is not declared: {text}"));
        return (status, Value::Null);
    }
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let schema = &answer["content"]["application/json"]["schema"];
    if schema.is_null() {
        return (status, value);
    }
    let errors: Vec<String> = validator(doc, schema)
        .iter_errors(&value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    if !errors.is_empty() {
        problems.push(format!("{method} {path} ({status}): {errors:?}\n{text}"));
    }
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_methods_answer_405_with_allow() {
    let (app, _db) = serve().await;
    let mut served: BTreeMap<&str, Vec<Method>> = BTreeMap::new();
    for route in routes::all() {
        served.entry(route.path).or_default().push(route.method);
    }
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let mut problems = vec![];
    let mut checked = 0;
    for (template, methods_served) in &served {
        let path = template
            .split('/')
            .map(|seg| {
                if seg == "{ws}" {
                    "default"
                } else if seg.starts_with('{') {
                    "x"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut allow: Vec<&str> = vec![];
        for m in Method::ALL {
            if methods_served.contains(&m) {
                allow.push(m.as_upper());
                if m == Method::Get {
                    allow.push("HEAD");
                }
            }
        }
        for method in methods {
            if allow.contains(&method) {
                continue;
            }
            checked += 1;
            let r = app
                .client
                .request(method.parse().unwrap(), format!("{}{path}", app.base))
                .bearer_auth(&app.admin_key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let header = r
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            // A HEAD answer carries no body.
            let body_ok = method == "HEAD" || body["error"] == "method_not_allowed";
            if status != 405 || header != allow.join(", ") || !body_ok {
                problems.push(format!(
                    "{method} {path}: {status}, Allow `{header}` (want `{}`), {body}",
                    allow.join(", ")
                ));
            }
        }
    }
    assert!(checked > 100, "only {checked} calls");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // HEAD is served where GET is; unknown paths stay 404.
    let r = app
        .client
        .head(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for method in ["GET", "POST", "DELETE"] {
        let r = app
            .client
            .request(method.parse().unwrap(), format!("{}/api/nowhere", app.base))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{method} /api/nowhere");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
}
