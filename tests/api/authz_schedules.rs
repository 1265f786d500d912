//! The authorization matrix's requests for the schedule routes (issue 13): a fresh schedule of
//! the workspace's deployment where the call reads, changes or deletes one.

use serde_json::{json, Value};

use super::{Env, Ws};

/// True for the routes this file builds requests for.
pub(super) fn covers(tail: &str) -> bool {
    tail.starts_with("/deployments/{id_or_name}/schedules")
        || tail == "/deployments/{id_or_name}/upcoming"
        || tail == "/deployments/{id_or_name}/backfill"
}

async fn fresh_schedule(env: &Env, ws: &Ws) -> String {
    let s = env
        .ws_setup(
            ws,
            "post",
            &format!("/deployments/{}/schedules", ws.deployment),
            json!({"cron": "0 0 1 1 *", "active": false}),
        )
        .await;
    s["id"].as_str().unwrap().to_string()
}

/// (path, body, success status) of a schedule route in `ws`.
pub(super) async fn case(
    env: &Env,
    method: &str,
    tail: &str,
    ws: &Ws,
) -> (String, Option<Value>, u16) {
    let d = format!("/api/workspaces/{}/deployments/{}", ws.name, ws.deployment);
    match (method, tail) {
        ("post", "/deployments/{id_or_name}/schedules") => (
            format!("{d}/schedules"),
            Some(json!({"cron": "0 0 1 1 *", "active": false})),
            201,
        ),
        ("get", "/deployments/{id_or_name}/schedules") => (format!("{d}/schedules"), None, 200),
        ("get", "/deployments/{id_or_name}/schedules/{schedule_id}") => {
            let s = fresh_schedule(env, ws).await;
            (format!("{d}/schedules/{s}"), None, 200)
        }
        ("patch", "/deployments/{id_or_name}/schedules/{schedule_id}") => {
            let s = fresh_schedule(env, ws).await;
            (
                format!("{d}/schedules/{s}"),
                Some(json!({"timezone": "Europe/Berlin"})),
                200,
            )
        }
        ("delete", "/deployments/{id_or_name}/schedules/{schedule_id}") => {
            let s = fresh_schedule(env, ws).await;
            (format!("{d}/schedules/{s}"), None, 204)
        }
        ("get", "/deployments/{id_or_name}/upcoming") => (format!("{d}/upcoming"), None, 200),
        ("post", "/deployments/{id_or_name}/backfill") => (
            format!("{d}/backfill"),
            Some(json!({"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"})),
            200,
        ),
        other => panic!("no schedule case for {other:?}"),
    }
}
