//! The authorization matrix's requests for the notification routes (issue 14, part 3):
//! channels, deliveries, inbound hooks and the public `POST /hooks/{slug}`. Channel URLs are a
//! documentation address (203.0.113.10, TEST-NET-3): no worker runs in the matrix, so nothing is
//! ever sent there.

use serde_json::{json, Value};

use super::{uniq, Env, Ws};

/// True for the routes this file builds requests for.
pub(super) fn covers(tail: &str) -> bool {
    tail.starts_with("/notification_channels")
        || tail.starts_with("/notification_deliveries")
        || tail.starts_with("/inbound_hooks")
        || tail == "/hooks/{slug}"
}

/// A channel body the matrix can create in any workspace.
pub(super) fn channel_body() -> Value {
    json!({"name": uniq("matrix-ch"), "kind": "webhook", "url": "https://203.0.113.10/hook"})
}

async fn fresh_channel(env: &Env, ws: &Ws) -> String {
    let c = env
        .ws_setup(ws, "post", "/notification_channels", channel_body())
        .await;
    c["id"].as_str().unwrap().to_string()
}

async fn fresh_hook(env: &Env, ws: &Ws) -> Value {
    env.ws_setup(ws, "post", "/inbound_hooks", json!({"name": uniq("hook")}))
        .await
}

/// (path, body, success status) of a notification route in `ws`.
pub(super) async fn case(
    env: &Env,
    method: &str,
    tail: &str,
    ws: &Ws,
) -> (String, Option<Value>, u16) {
    let w = format!("/api/workspaces/{}", ws.name);
    match (method, tail) {
        ("post", "/notification_channels") => (
            format!("{w}/notification_channels"),
            Some(channel_body()),
            201,
        ),
        ("get", "/notification_channels") => (format!("{w}/notification_channels"), None, 200),
        ("get", "/notification_channels/{id_or_name}") => {
            let c = fresh_channel(env, ws).await;
            (format!("{w}/notification_channels/{c}"), None, 200)
        }
        ("delete", "/notification_channels/{id_or_name}") => {
            let c = fresh_channel(env, ws).await;
            (format!("{w}/notification_channels/{c}"), None, 204)
        }
        ("post", "/notification_channels/{id_or_name}/test") => {
            let c = fresh_channel(env, ws).await;
            (
                format!("{w}/notification_channels/{c}/test"),
                Some(json!({})),
                202,
            )
        }
        ("get", "/notification_deliveries") => (format!("{w}/notification_deliveries"), None, 200),
        ("get", "/notification_deliveries/{id}") => {
            let c = fresh_channel(env, ws).await;
            let d = env
                .ws_setup(
                    ws,
                    "post",
                    &format!("/notification_channels/{c}/test"),
                    json!({}),
                )
                .await;
            let id = d["id"].as_str().unwrap();
            (format!("{w}/notification_deliveries/{id}"), None, 200)
        }
        ("post", "/inbound_hooks") => (
            format!("{w}/inbound_hooks"),
            Some(json!({"name": uniq("matrix-hook")})),
            201,
        ),
        ("get", "/inbound_hooks") => (format!("{w}/inbound_hooks"), None, 200),
        ("get", "/inbound_hooks/{id_or_name}") => {
            let h = fresh_hook(env, ws).await;
            (
                format!("{w}/inbound_hooks/{}", h["id"].as_str().unwrap()),
                None,
                200,
            )
        }
        ("delete", "/inbound_hooks/{id_or_name}") => {
            let h = fresh_hook(env, ws).await;
            (
                format!("{w}/inbound_hooks/{}", h["id"].as_str().unwrap()),
                None,
                204,
            )
        }
        ("post", "/hooks/{slug}") => {
            let h = fresh_hook(env, ws).await;
            (
                h["path"].as_str().unwrap().to_string(),
                Some(json!({"from": "the matrix"})),
                202,
            )
        }
        other => panic!("no notification case for {other:?}"),
    }
}
