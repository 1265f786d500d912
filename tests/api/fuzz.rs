//! Property tests that throw random JSON at every create/change endpoint of the API and at the
//! template engine: never a 5xx, never a panic, and a refused request stores nothing.
//!
//! Bodies are either random JSON (biased towards the field names and values the API knows) or
//! a valid body with one field replaced, removed or added, which reaches the deeper checks.
//! The number of cases per endpoint is `PUSHPOOL_FUZZ_CASES` (default 40; the template engine
//! runs 25× as many). A failing case is shrunk and printed by proptest.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pushpool::server::run_tokens;
use pushpool::template::BaseJobTemplate;
use pushpool_testkit::{both_backends, log_warnings, serve_fresh, Served, TestDb};
use serde_json::{json, Map, Value};

both_backends!(random_bodies_get_4xx_and_store_nothing);

fn cases() -> u32 {
    std::env::var("PUSHPOOL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

const FIELD_NAMES: &[&str] = &[
    "name",
    "type",
    "base_job_template",
    "job_configuration",
    "variables",
    "properties",
    "concurrency_limit",
    "description",
    "paused",
    "submit_rate",
    "overridable_variables",
    "priority",
    "work_pool",
    "work_queue",
    "job_variables",
    "parameters",
    "scheduled_time",
    "idempotency_key",
    "controller_id",
    "limit",
    "lease_seconds",
    "user",
    "role",
    "scopes",
    "admin",
    "service_account_id",
    "expires_at",
    "grace_seconds",
    "message",
    "transition_id",
    "infrastructure_id",
    "lines",
    "line",
    "stream",
    "command",
    "env",
    "default",
    "required",
    "$ref",
    "pattern",
    "minimum",
    "enum",
    "items",
    "additionalProperties",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "owner",
    "viewer",
    "controller",
    "nobody",
    "runs:read",
    "runs:override",
    "pools:write",
    "process",
    "cloud-run-v2:push",
    "aws-lambda:push",
    "local",
    "job",
    "default",
    "{{ command }}",
    "{{",
    "}}",
    "{{ x }}-{{ y",
    "pre-{{ flow_run.id }}",
    "../../etc/passwd",
    "\u{0}",
    "\u{202e}",
    "RUNNING",
    "COMPLETED",
    "PENDING",
    "CANCELLING",
    "2026-01-01T00:00:00Z",
    "2099-12-31T23:59:59Z",
    "not-a-date",
    "-1",
    "1e309",
    "NaN",
    "null",
    "true",
    "(",
    "^[a-z",
    "#/definitions/nowhere",
    "fuzz-user",
    "object",
    "string",
    "integer",
];

fn arb_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(u64::MAX),
            Just(0u64),
            Just(1u64),
            Just(1_000_000_000u64)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        (1usize..6).prop_map(|n| Value::from("x".repeat(n * 700))),
    ]
    .boxed()
}

fn arb_key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(FIELD_NAMES).prop_map(str::to_string),
        1 => "\\PC{0,8}",
        1 => Just("env.FOO".to_string()),
    ]
    .boxed()
}

fn arb_json() -> BoxedStrategy<Value> {
    arb_leaf()
        .prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(arb_key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A body: random JSON, or a valid body with one field changed, removed or added.
fn arb_body(valid: Value) -> BoxedStrategy<Value> {
    let keys: Vec<String> = valid
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let v1 = valid.clone();
    let v2 = valid.clone();
    let v3 = valid.clone();
    let unchanged = Just(valid);
    let replace = (prop::sample::select(keys.clone()), arb_json()).prop_map(move |(k, x)| {
        let mut b = v1.clone();
        b[k.as_str()] = x;
        b
    });
    let remove = prop::sample::select(keys).prop_map(move |k| {
        let mut b = v2.clone();
        b.as_object_mut().map(|m| m.remove(&k));
        b
    });
    let add = (arb_key(), arb_json()).prop_map(move |(k, x)| {
        let mut b = v3.clone();
        b[k.as_str()] = x;
        b
    });
    prop_oneof![1 => unchanged, 2 => arb_json(), 4 => replace, 1 => remove, 1 => add].boxed()
}

struct Target {
    method: &'static str,
    path: String,
    valid: Value,
    /// Sent with this bearer instead of the owner key (the run token of job routes).
    bearer: Option<String>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

struct App {
    base: String,
    client: reqwest::Client,
    key: String,
    _served: Served,
}

impl App {
    async fn send(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }
    /// POSTs a body the server may refuse before reading it all: HTTP/1.1 then closes the
    /// connection, and the client may see the reset before the answer. Retried until an answer.
    async fn send_big(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        for _ in 0..10 {
            let sent = self
                .client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            if let Ok(r) = sent {
                let status = r.status().as_u16();
                return (status, r.text().await.unwrap_or_default());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no answer to a {} byte body in 10 tries", body.len());
    }
    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, text) = self
            .send(method, path, &self.key, Some(body.to_string().into_bytes()))
            .await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
    /// Everything a request could have stored (the audit log, which records refusals by
    /// design, aside).
    async fn snapshot(&self) -> String {
        let mut out = String::new();
        for path in [
            "/api/users",
            "/api/workspaces",
            "/api/workspaces/default/work_pools",
            "/api/workspaces/default/work_pools/local/queues",
            "/api/workspaces/default/deployments",
            "/api/workspaces/default/flow_runs?limit=1000",
            "/api/workspaces/default/members",
            "/api/workspaces/default/service_accounts",
            "/api/workspaces/default/api_keys",
            "/api/workspaces/default/roles",
            "/api/workspaces/default/events",
        ] {
            let (s, text) = self.send("GET", path, &self.key, None).await;
            assert_eq!(s, 200, "{path}: {text}");
            out.push_str(path);
            out.push_str(&text);
            out.push('\n');
        }
        out
    }
}

async fn random_bodies_get_4xx_and_store_nothing(db: TestDb) {
    log_warnings();
    // proptest is synchronous: it runs on a blocking thread and drives the server, which lives
    // on a runtime of its own, case by case.
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || fuzz_endpoints(&url))
        .await
        .unwrap();
    drop(db);
}

fn fuzz_endpoints(url: &str) {
    let url = url.to_string();
    let state = runtime().block_on(fuzz_setup(url));
    fuzz_run(state);
}

async fn fuzz_setup(url: String) -> FuzzState {
    let (app, run_token) = start(&url).await;
    let ws = "/api/workspaces/default";
    let process_template = app
        .ok(
            "GET",
            "/api/pool_types/process/default_template",
            json!(null),
        )
        .await;
    // What the valid bodies refer to.
    app.ok(
        "POST",
        &format!("{ws}/work_pools"),
        json!({"name": "local", "type": "process"}),
    )
    .await;
    app.ok(
        "POST",
        &format!("{ws}/deployments"),
        json!({"name": "job", "work_pool": "local", "job_variables": {"command": "true"}}),
    )
    .await;
    app.ok("POST", "/api/users", json!({"name": "fuzz-user"}))
        .await;
    app.ok("POST", "/api/users", json!({"name": "member-user"}))
        .await;
    app.ok(
        "POST",
        &format!("{ws}/members"),
        json!({"user": "member-user", "role": "viewer"}),
    )
    .await;
    let sa = app
        .ok(
            "POST",
            &format!("{ws}/service_accounts"),
            json!({"name": "robot", "role": "viewer"}),
        )
        .await;
    let key = app
        .ok("POST", &format!("{ws}/api_keys"), json!({"name": "spare"}))
        .await;
    let run = app
        .ok(
            "POST",
            &format!("{ws}/deployments/job/runs"),
            json!({"scheduled_time": "2099-01-01T00:00:00Z"}),
        )
        .await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let token = run_token(run_id.parse().unwrap());

    let targets = vec![
        Target {
            method: "POST",
            path: "/api/workspaces".into(),
            valid: json!({"name": "NAME"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: "/api/users".into(),
            valid: json!({"name": "NAME", "admin": false}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/work_pools"),
            valid: json!({"name": "NAME", "type": "process", "base_job_template": process_template,
                          "concurrency_limit": 3, "description": "d", "paused": false, "submit_rate": 1.5,
                          "overridable_variables": ["env"]}),
            bearer: None,
        },
        Target {
            method: "PATCH",
            path: format!("{ws}/work_pools/local"),
            valid: json!({"description": "x", "concurrency_limit": 2, "paused": false, "base_job_template": process_template,
                          "overridable_variables": ["command", "env"]}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/work_pools/local/queues"),
            valid: json!({"name": "NAME", "priority": 2}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/work_pools/local/claim"),
            valid: json!({"controller_id": "fuzz", "limit": 0, "lease_seconds": 30}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/deployments"),
            valid: json!({"name": "NAME", "work_pool": "local", "job_variables": {"command": "true"},
                          "parameters": {"a": 1}, "concurrency_limit": 1}),
            bearer: None,
        },
        Target {
            method: "PATCH",
            path: format!("{ws}/deployments/job"),
            valid: json!({"job_variables": {"command": "true", "env": {"A": "1"}}, "parameters": {}, "paused": false}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/deployments/job/preview"),
            valid: json!({"job_variables": {"env.X": "1"}}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/deployments/job/runs"),
            valid: json!({"parameters": {}, "job_variables": {}, "scheduled_time": "2099-01-01T00:00:00Z", "idempotency_key": "NAME"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/flow_runs/{run_id}/set_state"),
            valid: json!({"controller_id": "fuzz", "type": "RUNNING", "message": "m"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/members"),
            valid: json!({"user": "fuzz-user", "role": "viewer"}),
            bearer: None,
        },
        Target {
            method: "PATCH",
            path: format!("{ws}/members/member-user"),
            valid: json!({"role": "viewer"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/service_accounts"),
            valid: json!({"name": "NAME", "role": "viewer"}),
            bearer: None,
        },
        Target {
            method: "PATCH",
            path: format!("{ws}/service_accounts/{}", sa["id"].as_str().unwrap()),
            valid: json!({"role": "viewer"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/api_keys"),
            valid: json!({"name": "k", "role": "viewer", "expires_at": "2030-01-01T00:00:00Z", "service_account_id": "robot"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/api_keys/{}/rotate", key["id"].as_str().unwrap()),
            valid: json!({"grace_seconds": 60}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("{ws}/roles"),
            valid: json!({"name": "NAME", "scopes": ["runs:read"], "description": "d"}),
            bearer: None,
        },
        Target {
            method: "POST",
            path: format!("/api/runs/{run_id}/state"),
            valid: json!({"type": "PAUSED", "message": "m"}),
            bearer: Some(token.clone()),
        },
        Target {
            method: "POST",
            path: format!("/api/runs/{run_id}/logs"),
            valid: json!({"lines": [{"line": "x", "stream": "stdout"}]}),
            bearer: Some(token.clone()),
        },
    ];

    (std::sync::Arc::new(app), targets)
}

type FuzzState = (std::sync::Arc<App>, Vec<Target>);

fn fuzz_run((app, targets): FuzzState) {
    let mut summary = vec![];
    for target in targets {
        let app = app.clone();
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let counts = std::sync::Mutex::new((0usize, 0usize));
        let bearer = target.bearer.clone().unwrap_or_else(|| app.key.clone());
        let result = runner.run(&arb_body(target.valid.clone()), |body| {
            // Names must be fresh for a valid body to succeed more than once.
            let text = body.to_string().replace(
                "\"NAME\"",
                &format!("\"n{}\"", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            );
            let app = app.clone();
            let (method, path, bearer) = (target.method, target.path.clone(), bearer.clone());
            let (status, answer, changed) = runtime().block_on(async move {
                let before = app.snapshot().await;
                let (status, answer) = app
                    .send(method, &path, &bearer, Some(text.into_bytes()))
                    .await;
                let after = app.snapshot().await;
                (status, answer, before != after)
            });
            let mut c = counts.lock().unwrap();
            if status < 300 {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
            if status >= 500 {
                return Err(TestCaseError::fail(format!(
                    "{} {}: {status} {answer}",
                    target.method, target.path
                )));
            }
            if status >= 400 && changed {
                return Err(TestCaseError::fail(format!(
                    "{} {}: refused with {status} but something was stored: {answer}",
                    target.method, target.path
                )));
            }
            if status >= 400 {
                let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                if !(v["error"].is_string() && v["message"].is_string()) {
                    return Err(TestCaseError::fail(format!(
                        "{status} without the error shape: {answer}"
                    )));
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let c = counts.lock().unwrap();
        summary.push(format!(
            "{} {}: {} accepted, {} refused",
            target.method, target.path, c.0, c.1
        ));
    }

    // Bodies that are not JSON at all, too deep, or too big.
    let garbage: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        "[".repeat(10_000).into_bytes(),
        format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)).into_bytes(),
    ];
    let app2 = app.clone();
    runtime().block_on(async move {
        for body in garbage {
            let before = app2.snapshot().await;
            let (s, text) = app2
                .send_big("/api/workspaces/default/work_pools", body)
                .await;
            assert!((400..500).contains(&s), "{s} {text}");
            assert_eq!(before, app2.snapshot().await);
        }
        // Random query strings on the list endpoints.
        for q in [
            "limit=0",
            "limit=-5",
            "limit=abc",
            "cursor=nope",
            "state=BOGUS",
            "since=yesterday",
            "limit=99999999999999999999",
            "outcome=maybe",
            "action=%25%25%25*",
        ] {
            for path in [
                "/api/workspaces/default/flow_runs",
                "/api/workspaces/default/audit_log",
            ] {
                let (s, text) = app2
                    .send("GET", &format!("{path}?{q}"), &app2.key, None)
                    .await;
                assert!(
                    s == 200 || (400..500).contains(&s),
                    "{path}?{q}: {s} {text}"
                );
            }
        }
    });
    println!("{}", summary.join("\n"));
}

async fn start(url: &str) -> (App, impl Fn(uuid::Uuid) -> String) {
    let served = serve_fresh(url, false).await;
    let tokens = run_tokens(&served.store).await.unwrap();
    let app = App {
        base: served.base.clone(),
        client: served.client.clone(),
        key: served.admin_key.clone(),
        _served: served,
    };
    (app, move |id| tokens.issue(id, 1))
}

// ---------------------------------------------------------------------------------------------
// The template engine

/// Variable names templates use; placeholders mostly name declared ones.
const VARS: &[&str] = &["x", "y", "env", "command"];

fn arb_placeholder_string() -> BoxedStrategy<Value> {
    let names = prop::sample::select(vec![
        "x",
        "y",
        "env",
        "command",
        "x",
        "y",
        "flow_run.id",
        "pushpool.run_id",
        "undeclared",
        "a.b",
        "",
        "x}}",
    ]);
    prop_oneof![
        4 => names.clone().prop_map(|n| json!(format!("{{{{ {n} }}}}"))),
        2 => (names.clone(), names).prop_map(|(a, b)| json!(format!("pre-{{{{ {a} }}}}-{{{{ {b} }}}}"))),
        1 => Just(json!("{{")),
        1 => Just(json!("}}{{ x")),
        2 => arb_leaf(),
    ]
    .boxed()
}

fn arb_job_configuration() -> BoxedStrategy<Value> {
    arb_placeholder_string()
        .prop_recursive(4, 30, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(arb_key(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A property schema: usually a plain type with a fitting default, sometimes anything.
fn arb_property_schema() -> BoxedStrategy<Value> {
    let fitting = prop_oneof![
        Just(json!({"type": "string", "default": "hello"})),
        Just(json!({"type": "string"})),
        Just(json!({"type": ["string", "null"], "default": null})),
        Just(json!({"type": "integer", "default": 3, "minimum": 0})),
        Just(json!({"type": "object", "additionalProperties": {"type": "string"}, "default": {}})),
        Just(json!({"type": "array", "items": {"type": "string"}, "default": ["a"]})),
        Just(json!({"type": "boolean", "default": false, "writeOnly": true})),
        Just(json!({"type": "string", "pattern": "^[a-z]+$", "default": "abc"})),
    ];
    let types = prop::sample::select(vec![
        json!("string"),
        json!("integer"),
        json!("object"),
        json!(5),
        json!("nonsense"),
    ]);
    let wild = (
        types,
        prop::option::of(arb_json()),
        prop::option::of(arb_json()),
    )
        .prop_map(|(t, default, extra)| {
            let mut s = json!({"type": t});
            if let Some(d) = default {
                s["default"] = d;
            }
            if let Some(Value::Object(m)) = extra {
                for (k, v) in m {
                    s[k.as_str()] = v;
                }
            }
            s
        });
    prop_oneof![4 => fitting, 1 => wild, 1 => arb_json()].boxed()
}

fn arb_template() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => arb_json(),
        6 => (
            arb_job_configuration(),
            prop::collection::btree_map(
                prop::sample::select(VARS).prop_map(str::to_string),
                arb_property_schema(),
                0..5,
            ),
            prop::option::of(prop::collection::vec(prop::sample::select(vec!["x", "y", "env", "zzz"]), 0..3)),
        )
            .prop_map(|(jc, mut props, required)| {
                // Declare what the configuration uses, so most templates parse.
                let text = jc.to_string();
                for v in VARS {
                    if text.contains(&format!("{{{{ {v} }}}}")) {
                        props.entry(v.to_string()).or_insert(json!({"type": "string", "default": "d"}));
                    }
                }
                let mut variables = json!({"type": "object", "properties": props});
                if let Some(r) = required {
                    variables["required"] = json!(r);
                }
                json!({"job_configuration": jc, "variables": variables})
            }),
    ]
    .boxed()
}

/// Variable overrides: mostly for declared variables, with values of any kind.
fn arb_overrides() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(json!({})),
        3 => prop::collection::btree_map(
            prop::sample::select(vec!["x", "y", "env", "command", "env.FOO", "zzz"]).prop_map(str::to_string),
            prop_oneof![3 => Just(json!("value")), 1 => Just(json!({"A": "b"})), 2 => arb_json()],
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => arb_json(),
    ]
    .boxed()
}

fn as_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("x".into(), other);
            m
        }
    }
}

#[test]
fn template_engine_never_panics_on_random_templates_and_values() {
    let mut runner = TestRunner::new(Config {
        cases: cases() * 25,
        failure_persistence: None,
        ..Config::default()
    });
    let parsed = std::sync::atomic::AtomicUsize::new(0);
    let rendered = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(
            &(arb_template(), arb_overrides(), arb_overrides(), arb_json()),
            |(template, dep, run, ctx)| {
                let Ok(t) = BaseJobTemplate::parse(&template) else {
                    return Ok(());
                };
                parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (dep, run, ctx) = (as_map(dep), as_map(run), as_map(ctx));
                let _ = t.validate_deployment_overrides(&dep);
                if let Ok(values) = t.resolve(&dep, &run) {
                    let out = t.render(&values, &ctx);
                    // Rendering is pure: the same input renders the same output.
                    prop_assert_eq!(out, t.render(&values, &ctx));
                    rendered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // The parsed template survives a round trip.
                prop_assert!(BaseJobTemplate::parse(&t.to_value()).is_ok());
                Ok(())
            },
        )
        .unwrap();
    let (parsed, rendered) = (parsed.into_inner(), rendered.into_inner());
    println!("template fuzz: {parsed} templates parsed, {rendered} rendered");
    assert!(
        parsed > 0 && rendered > 0,
        "the generator never produced a usable template"
    );
}
