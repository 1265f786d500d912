//! The authorization matrix: every route of the OpenAPI document × every role × own and foreign
//! workspace × missing, malformed, expired, revoked, rotated-out and deleted-account keys.
//!
//! The expected outcome of each route is written down here, independently of the server's
//! tables ([`MATRIX`]); the test fails when the OpenAPI document lists a route without an entry
//! (or an entry names a route that does not exist). For each call it asserts the status, that a
//! request into another workspace answers exactly like one for a workspace that does not exist,
//! and that no response carries anything of the other workspace. Finally it checks that nothing
//! in the other workspace changed.

use std::collections::BTreeSet;

use pushpool::store::{NewApiKey, Store};
use pushpool_testkit::{both_backends, serve_fresh, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

both_backends!(every_route_every_role_own_and_foreign_workspace_and_bad_keys);

/// Who may call a route: `public`, `any-key`, `admin`, `run-token`, or the built-in roles that
/// may call a workspace route as letters (Owner, Developer, Runner, Viewer, Controller) plus the
/// scope the route needs (which decides for custom roles).
#[derive(Debug, Clone, Copy)]
enum Allowed {
    Public,
    AnyKey,
    Admin,
    RunToken,
    Roles(&'static str, &'static str),
}

use Allowed::*;

#[path = "authz_schedules.rs"]
mod schedule_cases;

#[path = "authz_notify.rs"]
mod notify_cases;

/// The expected authorization of every route, written out by hand.
const MATRIX: &[(&str, &str, Allowed)] = &[
    ("get", "/healthz", Public),
    ("get", "/readyz", Public),
    ("get", "/metrics", Public),
    ("get", "/api/openapi.json", Public),
    ("get", "/docs", Public),
    ("get", "/api/pool_types", AnyKey),
    ("get", "/api/pool_types/{type}/default_template", AnyKey),
    ("post", "/api/workspaces", Admin),
    ("get", "/api/workspaces", AnyKey),
    ("post", "/api/users", Admin),
    ("get", "/api/users", Admin),
    ("get", "/api/audit_log", Admin),
    ("get", "/api/grants", Admin),
    ("put", "/api/grants/{workspace}/{grant}", Admin),
    ("delete", "/api/grants/{workspace}/{grant}", Admin),
    (
        "post",
        "/api/workspaces/{ws}/work_pools",
        Roles("OD", "pools:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/work_pools",
        Roles("ODRV", "pools:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/work_pools/{name}",
        Roles("ODRV", "pools:read"),
    ),
    (
        "patch",
        "/api/workspaces/{ws}/work_pools/{name}",
        Roles("OD", "pools:write"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/work_pools/{name}",
        Roles("OD", "pools:write"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/work_pools/{name}/queues",
        Roles("OD", "pools:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/work_pools/{name}/queues",
        Roles("ODRV", "pools:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/work_pools/{name}/claim",
        Roles("OC", "runs:claim"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/deployments",
        Roles("OD", "deployments:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/deployments",
        Roles("ODRV", "deployments:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/deployments/{id_or_name}",
        Roles("ODRV", "deployments:read"),
    ),
    (
        "patch",
        "/api/workspaces/{ws}/deployments/{id_or_name}",
        Roles("OD", "deployments:write"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/deployments/{id_or_name}",
        Roles("OD", "deployments:write"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/deployments/{id_or_name}/preview",
        Roles("ODRV", "deployments:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/deployments/{id_or_name}/runs",
        Roles("ODR", "runs:create"),
    ),
    // Schedules (issue 13); their requests are built in authz_schedules.rs.
    (
        "post",
        "/api/workspaces/{ws}/deployments/{id_or_name}/schedules",
        Roles("OD", "deployments:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/deployments/{id_or_name}/schedules",
        Roles("ODRV", "deployments:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/deployments/{id_or_name}/schedules/{schedule_id}",
        Roles("ODRV", "deployments:read"),
    ),
    (
        "patch",
        "/api/workspaces/{ws}/deployments/{id_or_name}/schedules/{schedule_id}",
        Roles("OD", "deployments:write"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/deployments/{id_or_name}/schedules/{schedule_id}",
        Roles("OD", "deployments:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/deployments/{id_or_name}/upcoming",
        Roles("ODRV", "deployments:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/deployments/{id_or_name}/backfill",
        Roles("ODR", "runs:create"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/flow_runs",
        Roles("ODRV", "runs:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/flow_runs/{id}",
        Roles("ODRV", "runs:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/flow_runs/{id}/states",
        Roles("ODRV", "runs:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/flow_runs/{id}/cancel",
        Roles("ODR", "runs:cancel"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/flow_runs/{id}/logs",
        Roles("ODRV", "runs:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/flow_runs/{id}/set_state",
        Roles("OC", "runs:report"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/events",
        Roles("ODRV", "events:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/events/stream",
        Roles("ODRV", "events:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/members",
        Roles("O", "members:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/members",
        Roles("O", "members:read"),
    ),
    (
        "patch",
        "/api/workspaces/{ws}/members/{user}",
        Roles("O", "members:write"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/members/{user}",
        Roles("O", "members:write"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/service_accounts",
        Roles("O", "service_accounts:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/service_accounts",
        Roles("O", "service_accounts:read"),
    ),
    (
        "patch",
        "/api/workspaces/{ws}/service_accounts/{id}",
        Roles("O", "service_accounts:write"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/service_accounts/{id}",
        Roles("O", "service_accounts:write"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/api_keys",
        Roles("ODRV", "keys:self"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/api_keys",
        Roles("ODRV", "keys:self"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/api_keys/{id}",
        Roles("ODRV", "keys:self"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/api_keys/{id}/rotate",
        Roles("ODRV", "keys:self"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/roles",
        Roles("O", "roles:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/roles",
        Roles("O", "roles:read"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/roles/{name}",
        Roles("O", "roles:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/audit_log",
        Roles("O", "audit:read"),
    ),
    // Notifications (issue 14, part 3); their requests are built in authz_notify.rs.
    (
        "post",
        "/api/workspaces/{ws}/notification_channels",
        Roles("OD", "notifications:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/notification_channels",
        Roles("ODRV", "notifications:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/notification_channels/{id_or_name}",
        Roles("ODRV", "notifications:read"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/notification_channels/{id_or_name}",
        Roles("OD", "notifications:write"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/notification_channels/{id_or_name}/test",
        Roles("OD", "notifications:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/notification_deliveries",
        Roles("ODRV", "notifications:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/notification_deliveries/{id}",
        Roles("ODRV", "notifications:read"),
    ),
    (
        "post",
        "/api/workspaces/{ws}/inbound_hooks",
        Roles("OD", "notifications:write"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/inbound_hooks",
        Roles("ODRV", "notifications:read"),
    ),
    (
        "get",
        "/api/workspaces/{ws}/inbound_hooks/{id_or_name}",
        Roles("ODRV", "notifications:read"),
    ),
    (
        "delete",
        "/api/workspaces/{ws}/inbound_hooks/{id_or_name}",
        Roles("OD", "notifications:write"),
    ),
    ("post", "/hooks/{slug}", Public),
    ("get", "/api/runs/{id}", RunToken),
    ("post", "/api/runs/{id}/state", RunToken),
    ("post", "/api/runs/{id}/heartbeat", RunToken),
    ("post", "/api/runs/{id}/logs", RunToken),
];

/// The custom role of the `custom` principal.
const CUSTOM_SCOPES: [&str; 3] = ["runs:read", "runs:cancel", "audit:read"];

/// A caller of the matrix.
#[derive(Debug, Clone)]
struct Who {
    label: &'static str,
    /// Built-in role letter in workspace A (`X` = the custom role), `None` for non-members.
    letter: Option<char>,
    /// Bearer credential; `None` sends no Authorization header.
    bearer: Option<String>,
    /// Its principal in workspace A, as `("user", name)` or `("service_account", name)`.
    principal: Option<(&'static str, String)>,
    /// Admin of the instance (its key, of workspace `default`, has no cap).
    admin: bool,
    run_token: bool,
}

#[derive(Debug, Clone)]
struct Ws {
    name: String,
    /// An owner key of this workspace (the admin user's, from creating it), for setup.
    setup_key: String,
    pool: String,
    deployment: String,
    run: String,
}

struct Env {
    base: String,
    client: reqwest::Client,
    store: Store,
    admin_key: String,
    a: Ws,
    b: Ws,
    /// Strings only workspace B's data contains.
    b_markers: Vec<String>,
    run_token_a: String,
    run_a: String,
    /// Names and ids of the objects made in workspace B for the foreign calls to aim at.
    made_in_b: std::sync::Mutex<Vec<String>>,
}

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..10])
}

impl Env {
    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value, String) {
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = self.client.request(m, format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        if let Some(body) = body {
            req = req.json(body);
        } else if method != "get" && method != "delete" {
            req = req.json(&json!({}));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value, text)
    }

    /// A setup call that must succeed.
    async fn setup(&self, method: &str, path: &str, key: &str, body: Value) -> Value {
        let (s, v, text) = self.call(method, path, Some(key), Some(&body)).await;
        assert!(
            (200..300).contains(&s),
            "setup {method} {path} → {s}: {text}"
        );
        v
    }

    async fn ws_setup(&self, ws: &Ws, method: &str, path: &str, body: Value) -> Value {
        self.setup(
            method,
            &format!("/api/workspaces/{}{path}", ws.name),
            &ws.setup_key,
            body,
        )
        .await
    }

    /// Remembers an object made in workspace B, which must still be there, unchanged, at the end.
    fn made(&self, ws: &Ws, id: &str) -> String {
        if ws.name == self.b.name {
            self.made_in_b.lock().unwrap().push(id.to_string());
        }
        id.to_string()
    }

    async fn fresh_pool(&self, ws: &Ws) -> String {
        let name = uniq("pool");
        self.ws_setup(
            ws,
            "post",
            "/work_pools",
            json!({"name": name, "type": "process"}),
        )
        .await;
        name
    }

    async fn fresh_deployment(&self, ws: &Ws, pool: &str) -> String {
        let name = uniq("dep");
        self.ws_setup(
            ws,
            "post",
            "/deployments",
            json!({"name": name, "work_pool": pool, "job_variables": {"command": "true"}}),
        )
        .await;
        self.made(ws, &name)
    }

    async fn fresh_run(&self, ws: &Ws) -> String {
        let run = self
            .ws_setup(
                ws,
                "post",
                &format!("/deployments/{}/runs", ws.deployment),
                json!({}),
            )
            .await;
        self.made(ws, run["id"].as_str().unwrap())
    }

    async fn fresh_user(&self) -> String {
        let name = uniq("user");
        self.setup("post", "/api/users", &self.admin_key, json!({"name": name}))
            .await;
        name
    }

    async fn fresh_member(&self, ws: &Ws) -> String {
        let user = self.fresh_user().await;
        self.ws_setup(
            ws,
            "post",
            "/members",
            json!({"user": user, "role": "viewer"}),
        )
        .await;
        self.made(ws, &user)
    }

    async fn fresh_service_account(&self, ws: &Ws) -> String {
        let sa = self
            .ws_setup(
                ws,
                "post",
                "/service_accounts",
                json!({"name": uniq("sa"), "role": "viewer"}),
            )
            .await;
        self.made(ws, sa["id"].as_str().unwrap())
    }

    /// A fresh key of `who`'s principal when it has one in `ws`, else of a fresh service account.
    async fn fresh_key_of(&self, ws: &Ws, who: &Who) -> String {
        let body = match (&who.principal, ws.name == self.a.name) {
            (Some(("user", name)), true) => json!({"name": "fresh", "user": name}),
            (Some((_, name)), true) => {
                json!({"name": "fresh", "service_account_id": name})
            }
            _ => {
                let sa = self.fresh_service_account(ws).await;
                json!({"name": "fresh", "service_account_id": sa})
            }
        };
        let key = self.ws_setup(ws, "post", "/api_keys", body).await;
        self.made(ws, key["id"].as_str().unwrap())
    }

    /// Builds the concrete request for a route in workspace `ws` as `who` would send it, with
    /// fresh objects where the call changes or deletes one. Returns (path, body, success status).
    async fn case(
        &self,
        method: &str,
        template: &str,
        ws: &Ws,
        who: &Who,
    ) -> (String, Option<Value>, u16) {
        let w = format!("/api/workspaces/{}", ws.name);
        let tail = template.strip_prefix("/api/workspaces/{ws}");
        let ok = |path: String, body: Option<Value>, status: u16| (path, body, status);
        match (method, tail.unwrap_or(template)) {
            ("get", "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json" | "/docs") => {
                ok(template.to_string(), None, 200)
            }
            ("get", "/api/pool_types") => ok(template.into(), None, 200),
            ("get", "/api/pool_types/{type}/default_template") => {
                ok("/api/pool_types/process/default_template".into(), None, 200)
            }
            ("post", "/api/workspaces") => ok(
                template.into(),
                Some(json!({"name": uniq("matrix-ws")})),
                201,
            ),
            ("get", "/api/workspaces") => ok(template.into(), None, 200),
            ("post", "/api/users") => ok(
                template.into(),
                Some(json!({"name": uniq("matrix-u")})),
                201,
            ),
            ("get", "/api/users" | "/api/audit_log" | "/api/grants") => {
                ok(template.into(), None, 200)
            }
            ("put", "/api/grants/{workspace}/{grant}") => ok(
                format!("/api/grants/{}/custom-endpoints", ws.name),
                None,
                200,
            ),
            ("delete", "/api/grants/{workspace}/{grant}") => ok(
                format!("/api/grants/{}/custom-endpoints", ws.name),
                None,
                204,
            ),
            ("post", "/work_pools") => ok(
                format!("{w}/work_pools"),
                Some(json!({"name": uniq("matrix-p"), "type": "process"})),
                201,
            ),
            ("get", "/work_pools") => ok(format!("{w}/work_pools"), None, 200),
            ("get", "/work_pools/{name}") => ok(format!("{w}/work_pools/{}", ws.pool), None, 200),
            ("patch", "/work_pools/{name}") => ok(
                format!("{w}/work_pools/{}", ws.pool),
                Some(json!({"description": "changed by the matrix"})),
                200,
            ),
            ("delete", "/work_pools/{name}") => {
                let pool = self.fresh_pool(ws).await;
                ok(format!("{w}/work_pools/{pool}"), None, 204)
            }
            ("post", "/work_pools/{name}/queues") => ok(
                format!("{w}/work_pools/{}/queues", ws.pool),
                Some(json!({"name": uniq("matrix-q")})),
                201,
            ),
            ("get", "/work_pools/{name}/queues") => {
                ok(format!("{w}/work_pools/{}/queues", ws.pool), None, 200)
            }
            ("post", "/work_pools/{name}/claim") => ok(
                format!("{w}/work_pools/{}/claim", ws.pool),
                Some(json!({"controller_id": "matrix", "limit": 0})),
                200,
            ),
            ("post", "/deployments") => ok(
                format!("{w}/deployments"),
                Some(json!({"name": uniq("matrix-d"), "work_pool": ws.pool})),
                201,
            ),
            ("get", "/deployments") => ok(format!("{w}/deployments"), None, 200),
            ("get", "/deployments/{id_or_name}") => {
                ok(format!("{w}/deployments/{}", ws.deployment), None, 200)
            }
            ("patch", "/deployments/{id_or_name}") => ok(
                format!("{w}/deployments/{}", ws.deployment),
                Some(json!({"parameters": {"matrix": true}})),
                200,
            ),
            ("delete", "/deployments/{id_or_name}") => {
                let d = self.fresh_deployment(ws, &ws.pool).await;
                ok(format!("{w}/deployments/{d}"), None, 204)
            }
            ("post", "/deployments/{id_or_name}/preview") => ok(
                format!("{w}/deployments/{}/preview", ws.deployment),
                Some(json!({})),
                200,
            ),
            ("post", "/deployments/{id_or_name}/runs") => ok(
                format!("{w}/deployments/{}/runs", ws.deployment),
                Some(
                    json!({"scheduled_time": "2099-01-01T00:00:00Z", "idempotency_key": uniq("matrix")}),
                ),
                201,
            ),
            (m, t) if schedule_cases::covers(t) => schedule_cases::case(self, m, t, ws).await,
            (m, t) if notify_cases::covers(t) => notify_cases::case(self, m, t, ws).await,
            ("get", "/flow_runs") => ok(format!("{w}/flow_runs"), None, 200),
            ("get", "/flow_runs/{id}") => ok(format!("{w}/flow_runs/{}", ws.run), None, 200),
            ("get", "/flow_runs/{id}/states") => {
                ok(format!("{w}/flow_runs/{}/states", ws.run), None, 200)
            }
            ("get", "/flow_runs/{id}/logs") => {
                ok(format!("{w}/flow_runs/{}/logs", ws.run), None, 200)
            }
            ("post", "/flow_runs/{id}/cancel") => {
                let run = self.fresh_run(ws).await;
                ok(format!("{w}/flow_runs/{run}/cancel"), Some(json!({})), 200)
            }
            ("post", "/flow_runs/{id}/set_state") => {
                // A run `who` claimed itself, when it may claim; else any run.
                let pool = self.fresh_pool(ws).await;
                let dep = self.fresh_deployment(ws, &pool).await;
                self.ws_setup(ws, "post", &format!("/deployments/{dep}/runs"), json!({}))
                    .await;
                let (s, claimed, _) = self
                    .call(
                        "post",
                        &format!("{w}/work_pools/{pool}/claim"),
                        who.bearer.as_deref(),
                        Some(&json!({"controller_id": "matrix", "limit": 1})),
                    )
                    .await;
                let run = if s == 200 {
                    claimed["runs"][0]["flow_run"]["id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                } else {
                    ws.run.clone()
                };
                ok(
                    format!("{w}/flow_runs/{run}/set_state"),
                    Some(json!({"controller_id": "matrix", "type": "RUNNING"})),
                    200,
                )
            }
            ("get", "/events") => ok(format!("{w}/events"), None, 200),
            // Replayed from the start and closed after a second, so its body can be checked.
            ("get", "/events/stream") => ok(
                format!("{w}/events/stream?cursor=0&max_seconds=1"),
                None,
                200,
            ),
            ("post", "/members") => {
                let user = self.fresh_user().await;
                ok(
                    format!("{w}/members"),
                    Some(json!({"user": user, "role": "viewer"})),
                    201,
                )
            }
            ("get", "/members") => ok(format!("{w}/members"), None, 200),
            ("patch", "/members/{user}") => {
                let user = self.fresh_member(ws).await;
                ok(
                    format!("{w}/members/{user}"),
                    Some(json!({"role": "runner"})),
                    200,
                )
            }
            ("delete", "/members/{user}") => {
                let user = self.fresh_member(ws).await;
                ok(format!("{w}/members/{user}"), None, 204)
            }
            ("post", "/service_accounts") => ok(
                format!("{w}/service_accounts"),
                Some(json!({"name": uniq("matrix-sa"), "role": "viewer"})),
                201,
            ),
            ("get", "/service_accounts") => ok(format!("{w}/service_accounts"), None, 200),
            ("patch", "/service_accounts/{id}") => {
                let sa = self.fresh_service_account(ws).await;
                ok(
                    format!("{w}/service_accounts/{sa}"),
                    Some(json!({"role": "runner"})),
                    200,
                )
            }
            ("delete", "/service_accounts/{id}") => {
                let sa = self.fresh_service_account(ws).await;
                ok(format!("{w}/service_accounts/{sa}"), None, 204)
            }
            ("post", "/api_keys") => ok(
                format!("{w}/api_keys"),
                Some(json!({"name": "matrix key"})),
                201,
            ),
            ("get", "/api_keys") => ok(format!("{w}/api_keys"), None, 200),
            ("delete", "/api_keys/{id}") => {
                let key = self.fresh_key_of(ws, who).await;
                ok(format!("{w}/api_keys/{key}"), None, 200)
            }
            ("post", "/api_keys/{id}/rotate") => {
                let key = self.fresh_key_of(ws, who).await;
                ok(
                    format!("{w}/api_keys/{key}/rotate"),
                    Some(json!({"grace_seconds": 0})),
                    200,
                )
            }
            ("post", "/roles") => ok(
                format!("{w}/roles"),
                Some(json!({"name": uniq("matrix-role"), "scopes": ["runs:read"]})),
                201,
            ),
            ("get", "/roles") => ok(format!("{w}/roles"), None, 200),
            ("delete", "/roles/{name}") => {
                let name = self.made(ws, &uniq("role"));
                self.ws_setup(
                    ws,
                    "post",
                    "/roles",
                    json!({"name": name, "scopes": ["runs:read"]}),
                )
                .await;
                ok(format!("{w}/roles/{name}"), None, 204)
            }
            ("get", "/audit_log") => ok(format!("{w}/audit_log"), None, 200),
            ("get", "/api/runs/{id}") => ok(format!("/api/runs/{}", self.run_a), None, 200),
            ("post", "/api/runs/{id}/state") => ok(
                format!("/api/runs/{}/state", self.run_a),
                Some(json!({"type": "RUNNING", "transition_id": uniq("t")})),
                200,
            ),
            ("post", "/api/runs/{id}/heartbeat") => ok(
                format!("/api/runs/{}/heartbeat", self.run_a),
                Some(json!({})),
                204,
            ),
            ("post", "/api/runs/{id}/logs") => ok(
                format!("/api/runs/{}/logs", self.run_a),
                Some(json!({"lines": [{"line": "from the matrix"}]})),
                204,
            ),
            other => panic!("the matrix has no case builder for {other:?}"),
        }
    }

    /// Everything a workspace holds that callers could change, for a before/after comparison.
    async fn snapshot(&self, ws: &Ws) -> Value {
        let mut out = serde_json::Map::new();
        for path in [
            "/work_pools",
            "/deployments",
            "/flow_runs?limit=1000",
            "/members",
            "/service_accounts",
            "/api_keys",
            "/roles",
        ] {
            let (s, v, text) = self
                .call(
                    "get",
                    &format!("/api/workspaces/{}{path}", ws.name),
                    Some(&ws.setup_key),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{path}: {text}");
            out.insert(path.to_string(), v);
        }
        Value::Object(out)
    }
}

fn expected_status(allowed: Allowed, who: &Who, ok: u16, scope_of_custom: bool) -> u16 {
    let key_caller = who.bearer.is_some() && !who.run_token;
    match allowed {
        Public => ok,
        AnyKey if key_caller => ok,
        Admin if who.admin => ok,
        AnyKey | Admin => 403,
        RunToken if who.run_token => ok,
        RunToken => 403,
        Roles(letters, _) => match who.letter {
            _ if who.run_token => 403,
            Some('X') if scope_of_custom => ok,
            Some(l) if l != 'X' && letters.contains(l) => ok,
            Some(_) => 403,
            // Not a member of workspace A (the admin's key is of `default`).
            None => 404,
        },
    }
}

fn empty_ws() -> Ws {
    Ws {
        name: String::new(),
        setup_key: String::new(),
        pool: String::new(),
        deployment: String::new(),
        run: String::new(),
    }
}

async fn make_workspace(env: &Env, name: &str) -> Ws {
    let admin_key = env.admin_key.as_str();
    let created = env
        .setup("post", "/api/workspaces", admin_key, json!({"name": name}))
        .await;
    let mut ws = Ws {
        name: name.into(),
        setup_key: created["api_key"]["key"].as_str().unwrap().into(),
        pool: format!("{name}-pool"),
        deployment: format!("{name}-deployment"),
        run: String::new(),
    };
    env.ws_setup(
        &ws,
        "post",
        "/work_pools",
        json!({"name": ws.pool, "type": "process", "description": format!("{name} secret pool")}),
    )
    .await;
    env.ws_setup(
        &ws,
        "post",
        "/deployments",
        json!({"name": ws.deployment, "work_pool": ws.pool,
               "job_variables": {"command": "true"}, "parameters": {"marker": format!("{name}-parameter")}}),
    )
    .await;
    ws.run = env.fresh_run(&ws).await;
    ws
}

async fn every_route_every_role_own_and_foreign_workspace_and_bad_keys(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let (store, admin_key) = (served.store.clone(), served.admin_key.clone());
    let mut env = Env {
        base: served.base.clone(),
        client: served.client.clone(),
        store: store.clone(),
        admin_key: admin_key.clone(),
        a: empty_ws(),
        b: empty_ws(),
        b_markers: vec![],
        run_token_a: String::new(),
        run_a: String::new(),
        made_in_b: Default::default(),
    };
    let a = make_workspace(&env, "alpha").await;
    let b = make_workspace(&env, "bravo").await;
    let tokens = pushpool::server::run_tokens(&store).await.unwrap();
    let run_token_a = tokens.issue(a.run.parse().unwrap(), 1);
    env.a = a.clone();
    env.b = b.clone();
    env.run_a = a.run.clone();
    env.run_token_a = run_token_a.clone();

    // Workspace B's own data, which nothing asked by A's callers may reveal.
    let b_ws = store.workspace("bravo").await.unwrap();
    env.b_markers = vec![
        b_ws.id.to_string(),
        "bravo secret pool".into(),
        "bravo-parameter".into(),
        b.run.clone(),
    ];
    let b_sa = env
        .ws_setup(
            &b,
            "post",
            "/service_accounts",
            json!({"name": "bravo-robot", "role": "owner"}),
        )
        .await;
    env.b_markers.push(b_sa["id"].as_str().unwrap().into());
    env.b_markers
        .push(b_sa["api_key"]["prefix"].as_str().unwrap().into());

    // The callers: every built-in role, a custom role, a capped key, the instance admin's key,
    // and a run token, all in workspace A (the admin's key is of workspace `default`).
    env.ws_setup(
        &a,
        "post",
        "/roles",
        json!({"name": "auditor", "scopes": CUSTOM_SCOPES}),
    )
    .await;
    let mut who: Vec<Who> = vec![];
    for (label, letter, role, kind) in [
        ("owner", 'O', "owner", "user"),
        ("developer", 'D', "developer", "user"),
        ("runner", 'R', "runner", "service_account"),
        ("viewer", 'V', "viewer", "user"),
        ("controller", 'C', "controller", "service_account"),
        ("custom", 'X', "auditor", "service_account"),
    ] {
        let name = format!("{label}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let key = if kind == "user" {
            env.setup("post", "/api/users", &admin_key, json!({"name": name}))
                .await;
            env.ws_setup(&a, "post", "/members", json!({"user": name, "role": role}))
                .await;
            env.ws_setup(
                &a,
                "post",
                "/api_keys",
                json!({"name": label, "user": name}),
            )
            .await["key"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            env.ws_setup(
                &a,
                "post",
                "/service_accounts",
                json!({"name": name, "role": role}),
            )
            .await["api_key"]["key"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let kind: &'static str = if kind == "user" {
            "user"
        } else {
            "service_account"
        };
        who.push(Who {
            label,
            letter: Some(letter),
            bearer: Some(key),
            principal: Some((kind, name)),
            admin: false,
            run_token: false,
        });
    }
    // The owner's key capped at `runner` acts as a runner.
    let owner_name = who[0].principal.clone().unwrap().1;
    let capped = env
        .ws_setup(
            &a,
            "post",
            "/api_keys",
            json!({"name": "capped", "user": owner_name, "role": "runner"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    who.push(Who {
        label: "owner key capped at runner",
        letter: Some('R'),
        bearer: Some(capped),
        principal: Some(("user", owner_name)),
        admin: false,
        run_token: false,
    });
    who.push(Who {
        label: "instance admin (key of workspace default)",
        letter: None,
        bearer: Some(admin_key.clone()),
        principal: None,
        admin: true,
        run_token: false,
    });
    who.push(Who {
        label: "run token of a run in A",
        letter: None,
        bearer: Some(run_token_a.clone()),
        principal: None,
        admin: false,
        run_token: true,
    });

    // The matrix must cover exactly the routes of the OpenAPI document.
    let (_, doc, _) = env.call("get", "/api/openapi.json", None, None).await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let listed: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = documented.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes without an entry in the authorization matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "matrix entries for routes that do not exist: {stale:?}"
    );
    // The documented scope of every workspace route is the one written here.
    for (m, p, allowed) in MATRIX {
        if let Roles(_, scope) = allowed {
            assert_eq!(
                doc["paths"][p][m]["x-pushpool-scope"], *scope,
                "{m} {p}: documented scope"
            );
        }
    }

    let b_before = env.snapshot(&b).await;
    let nowhere_body = |name: &str| json!({"error": "not_found", "message": format!("workspace `{name}` not found")});
    let mut calls = 0usize;
    let mut failures: Vec<String> = vec![];
    let mut check = |cond: bool, what: String| {
        if !cond {
            failures.push(what);
        }
    };

    for (method, template, allowed) in MATRIX {
        let in_ws = template.starts_with("/api/workspaces/{ws}");
        let custom_ok = match allowed {
            Roles(_, scope) => CUSTOM_SCOPES.contains(scope),
            _ => false,
        };
        for w in &who {
            // Own workspace (A).
            let (path, body, ok) = env.case(method, template, &env.a, w).await;
            let (status, value, text) = env
                .call(method, &path, w.bearer.as_deref(), body.as_ref())
                .await;
            calls += 1;
            let want = expected_status(*allowed, w, ok, custom_ok);
            check(
                status == want,
                format!(
                    "{} {method} {path}: want {want}, got {status}: {text}",
                    w.label
                ),
            );
            if want == 404 {
                check(
                    value == nowhere_body("alpha"),
                    format!(
                        "{} {method} {path}: not the not-found body: {text}",
                        w.label
                    ),
                );
            }
            if status == 403 {
                check(
                    value["error"] == "forbidden",
                    format!(
                        "{} {method} {path}: 403 without `forbidden`: {text}",
                        w.label
                    ),
                );
            }
            // The admin is itself a member of B (it created it): only its list of workspaces
            // may name B.
            if !(w.admin && (*template == "/api/workspaces" || *template == "/api/audit_log")) {
                for m in &env.b_markers {
                    check(
                        !text.contains(m.as_str()),
                        format!(
                            "{} {method} {path}: answer reveals workspace B ({m}): {text}",
                            w.label
                        ),
                    );
                }
            }

            // Foreign workspace (B), existing, and one that does not exist: same answer.
            if in_ws {
                let (path, body, _) = env.case(method, template, &env.b, w).await;
                let (status, value, text) = env
                    .call(method, &path, w.bearer.as_deref(), body.as_ref())
                    .await;
                let nowhere = path.replacen("/bravo", "/nowhere", 1);
                let (n_status, n_value, _) = env
                    .call(method, &nowhere, w.bearer.as_deref(), body.as_ref())
                    .await;
                calls += 2;
                let want = if w.run_token { 403 } else { 404 };
                check(
                    status == want && n_status == want,
                    format!("{} {method} {path} (foreign): want {want}, got {status} (nowhere: {n_status}): {text}", w.label),
                );
                if want == 404 {
                    check(
                        value == nowhere_body("bravo") && n_value == nowhere_body("nowhere"),
                        format!("{} {method} {path} (foreign): differs from a missing workspace: {text} vs {n_value}", w.label),
                    );
                } else {
                    check(
                        value == n_value,
                        format!("{} {method} {path} (foreign): differs from a missing workspace: {text} vs {n_value}", w.label),
                    );
                }
                for m in &env.b_markers {
                    check(
                        !text.contains(m.as_str()),
                        format!("{} {method} {path} (foreign): reveals {m}: {text}", w.label),
                    );
                }
            }
        }
    }

    // A run token acts on its own run only.
    for (method, template, _) in MATRIX.iter().filter(|r| r.1.starts_with("/api/runs/")) {
        let (path, body, _) = env.case(method, template, &env.a, &who[0]).await;
        let other = path.replace(&env.run_a, &b.run);
        let (status, _, text) = env
            .call(method, &other, Some(&env.run_token_a), body.as_ref())
            .await;
        calls += 1;
        check(
            status == 403,
            format!("run token on another run {method} {other}: want 403, got {status}: {text}"),
        );
    }

    // Run-level job variables change what a run executes: besides the route's `runs:create` they
    // need `runs:override` (issue 19 item 5), held by owners and developers only; a run without
    // them needs `runs:create` alone (the route's case above).
    let create_run = "/api/workspaces/{ws}/deployments/{id_or_name}/runs";
    assert_eq!(
        doc["paths"][create_run]["post"]["x-pushpool-conditional-scope"]["scope"], "runs:override",
        "documented conditional scope"
    );
    for w in &who {
        let path = format!(
            "/api/workspaces/{}/deployments/{}/runs",
            a.name, a.deployment
        );
        let body = json!({"scheduled_time": "2099-01-01T00:00:00Z",
                          "job_variables": {"command": "echo matrix override"}});
        let (status, value, text) = env
            .call("post", &path, w.bearer.as_deref(), Some(&body))
            .await;
        calls += 1;
        let want = expected_status(Roles("OD", "runs:override"), w, 201, false);
        check(
            status == want,
            format!(
                "{} post {path} with job_variables: want {want}, got {status}: {text}",
                w.label
            ),
        );
        // Runners hold the route's scope: their refusal names the one they lack.
        if w.letter == Some('R') {
            check(
                value["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("`runs:override`")),
                format!("{}: the refusal names runs:override: {text}", w.label),
            );
        }
    }

    // Missing, malformed, expired, revoked, rotated-out and deleted-account credentials.
    let bad = bad_credentials(&env, &a).await;
    for (method, template, allowed) in MATRIX {
        if matches!(allowed, Public) {
            continue;
        }
        for (label, bearer) in &bad {
            let (path, body, _) = env.case(method, template, &env.a, &who[0]).await;
            let (status, value, text) = env
                .call(method, &path, bearer.as_deref(), body.as_ref())
                .await;
            calls += 1;
            check(
                status == 401 && value["error"] == "unauthorized",
                format!("{label} {method} {path}: want 401, got {status}: {text}"),
            );
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {calls} authorization checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing in B changed through A's callers: what was there is there unchanged, everything
    // made for the foreign calls to aim at is still there and untouched, nothing of theirs
    // was added.
    let b_after = env.snapshot(&b).await;
    let after_text = b_after.to_string();
    for (collection, items) in b_before.as_object().unwrap() {
        for item in items.as_array().unwrap() {
            assert!(
                b_after[collection]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i == item),
                "workspace B: {collection} changed or lost {item}"
            );
        }
    }
    for id in env.made_in_b.lock().unwrap().iter() {
        assert!(after_text.contains(id.as_str()), "workspace B lost {id}");
    }
    assert!(
        !after_text.contains("matrix"),
        "something of the foreign calls reached workspace B"
    );
    for run in b_after["/flow_runs?limit=1000"].as_array().unwrap() {
        assert_eq!(run["state"]["type"], "SCHEDULED", "{run}");
        assert!(run["lease_owner"].is_null(), "{run}");
    }
    for key in b_after["/api_keys"].as_array().unwrap() {
        assert_eq!(key["status"], "active", "{key}");
        assert!(key["rotated_to"].is_null(), "{key}");
    }
    for sa in b_after["/service_accounts"].as_array().unwrap() {
        assert!(
            sa["role"] == "viewer" || sa["name"] == "bravo-robot",
            "{sa}"
        );
    }
    for m in b_after["/members"].as_array().unwrap() {
        assert!(m["role"] == "viewer" || m["user"] == "admin", "{m}");
    }

    // Denied attempts are in the audit log of the workspace they aimed at.
    let (_, log, _) = env
        .call(
            "get",
            "/api/workspaces/bravo/audit_log?outcome=denied&limit=1000",
            Some(&b.setup_key),
            None,
        )
        .await;
    let denied = log.as_array().unwrap();
    assert!(
        denied.len() >= 20,
        "denied attempts on B recorded: {}",
        denied.len()
    );
    assert!(denied
        .iter()
        .all(|e| e["status"] == 404 || e["status"] == 403 || e["status"] == 401));
    drop(served);
    println!("authorization matrix: {calls} calls checked");
}

/// Credentials that must all be refused with 401 (label, bearer).
async fn bad_credentials(env: &Env, a: &Ws) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = vec![
        ("no Authorization header".into(), None),
        ("malformed key".into(), Some("pp_not-a-key".into())),
        (
            "unknown well-formed key".into(),
            Some(pushpool::auth::generate_api_key().key.expose().to_string()),
        ),
        (
            "forged run token".into(),
            Some(format!(
                "ppr_{}_1_{}",
                Uuid::new_v4().simple(),
                "0".repeat(64)
            )),
        ),
    ];
    // Expired: written straight to the store with an expiry in the past.
    let ws = env.store.workspace(&a.name).await.unwrap();
    let owner = env
        .store
        .list_members(ws.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.role == "owner")
        .unwrap();
    let k = pushpool::auth::generate_api_key();
    env.store
        .create_api_key(
            ws.id,
            NewApiKey {
                principal_id: owner.user_id,
                name: "expired".into(),
                prefix: k.prefix.clone(),
                hash: k.hash.clone(),
                role: None,
                expires: Some(pushpool::model::now_micros() - 1_000_000),
            },
        )
        .await
        .unwrap();
    out.push(("expired key".into(), Some(k.key.expose().to_string())));
    // Revoked.
    let key = env
        .ws_setup(a, "post", "/api_keys", json!({"name": "to revoke"}))
        .await;
    let secret = key["key"].as_str().unwrap().to_string();
    env.setup(
        "delete",
        &format!(
            "/api/workspaces/{}/api_keys/{}",
            a.name,
            key["id"].as_str().unwrap()
        ),
        &a.setup_key,
        json!({}),
    )
    .await;
    out.push(("revoked key".into(), Some(secret)));
    // Rotated with no grace period.
    let key = env
        .ws_setup(a, "post", "/api_keys", json!({"name": "to rotate"}))
        .await;
    let secret = key["key"].as_str().unwrap().to_string();
    env.setup(
        "post",
        &format!(
            "/api/workspaces/{}/api_keys/{}/rotate",
            a.name,
            key["id"].as_str().unwrap()
        ),
        &a.setup_key,
        json!({"grace_seconds": 0}),
    )
    .await;
    out.push(("rotated-out key".into(), Some(secret)));
    // A deleted service account's key.
    let sa = env
        .ws_setup(
            a,
            "post",
            "/service_accounts",
            json!({"name": uniq("doomed"), "role": "owner"}),
        )
        .await;
    env.setup(
        "delete",
        &format!(
            "/api/workspaces/{}/service_accounts/{}",
            a.name,
            sa["id"].as_str().unwrap()
        ),
        &a.setup_key,
        json!({}),
    )
    .await;
    out.push((
        "deleted service account's key".into(),
        Some(sa["api_key"]["key"].as_str().unwrap().to_string()),
    ));
    out
}
