//! The web dashboard (issue 15). `http`: sessions, cookies, CSRF, roles and tenant isolation
//! over plain HTTP. `browser`: headless Chromium through chromedriver drives the real pages
//! (sign in, run from a deployment and watch it complete without reload, logs, cancel, pause,
//! a viewer's missing buttons and refused forged POST), with every non-loopback request trapped,
//! and writes the screenshots docs/ui.md shows.

mod browser;
mod http;
mod webdriver;

use pushpool_testkit::{call_json, serve_fresh, sqlite_db, Served, TestDb};
use serde_json::{json, Value};

/// A served fresh SQLite store with a controller, a `process` pool `local` and deployments
/// `hello` (prints and completes) and `sleeper` (runs a minute).
pub async fn seeded() -> (Served, TestDb) {
    seeded_on(sqlite_db()).await
}

/// [`seeded`] on a given fresh store.
pub async fn seeded_on(db: TestDb) -> (Served, TestDb) {
    pushpool_testkit::env::loopback_only();
    let s = serve_fresh(&db.url, true).await;
    let ws = format!("{}/api/workspaces/default", s.base);
    let (st, body) = call_json(
        &s.client,
        "POST",
        &format!("{ws}/work_pools"),
        &s.admin_key,
        Some(json!({"name": "local", "type": "process"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    for (name, command) in [
        ("hello", "echo hello-from-the-ui; echo second line >&2"),
        ("sleeper", "sleep 60"),
    ] {
        let (st, body) = call_json(
            &s.client,
            "POST",
            &format!("{ws}/deployments"),
            &s.admin_key,
            Some(json!({"name": name, "work_pool": "local", "job_variables": {"command": command}, "parameters": {"who": "world"}})),
        )
        .await;
        assert_eq!(st, 201, "{body}");
    }
    (s, db)
}

/// A new key of workspace `default` capped to `role`.
pub async fn key_with_role(s: &Served, role: &str) -> String {
    let (st, body): (u16, Value) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces/default/api_keys", s.base),
        &s.admin_key,
        Some(json!({"name": format!("{role}-key"), "role": role})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    body["key"].as_str().unwrap().to_string()
}

/// Creates a run of a deployment through the API; its id.
pub async fn api_run(s: &Served, deployment: &str) -> String {
    let (st, body) = call_json(
        &s.client,
        "POST",
        &format!(
            "{}/api/workspaces/default/deployments/{deployment}/runs",
            s.base
        ),
        &s.admin_key,
        None,
    )
    .await;
    assert!(st == 201, "{st} {body}");
    body["id"].as_str().unwrap().to_string()
}

/// The run's state type, read through the API.
pub async fn run_state(s: &Served, id: &str) -> String {
    let (_, body) = call_json(
        &s.client,
        "GET",
        &format!("{}/api/workspaces/default/flow_runs/{id}", s.base),
        &s.admin_key,
        None,
    )
    .await;
    body["state"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits (up to `secs`) until the run is in `want`.
pub async fn wait_state(s: &Served, id: &str, want: &str, secs: u64) {
    let start = std::time::Instant::now();
    loop {
        let st = run_state(s, id).await;
        if st == want {
            return;
        }
        assert!(
            start.elapsed().as_secs() < secs,
            "run {id} is {st}, not {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Cancels a run through the API (so no `sleep 60` outlives its test).
pub async fn cancel_all(s: &Served, id: &str) {
    let _ = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces/default/flow_runs/{id}/cancel", s.base),
        &s.admin_key,
        None,
    )
    .await;
}
