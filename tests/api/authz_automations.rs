//! The authorization matrix's requests for the automation routes (issue 14): a fresh automation
//! of the workspace where the call reads, changes or deletes one. The bodies say "matrix", which
//! must never show up in the other workspace.

use serde_json::{json, Value};

use super::{uniq, Env, Ws};

/// True for the routes this file builds requests for.
pub(super) fn covers(tail: &str) -> bool {
    tail.starts_with("/automations")
}

/// An automation whose only action needs no scope beyond `automations:write`.
fn body(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "description": description,
        "enabled": false,
        "trigger": {"type": "run-state", "states": ["Failed"]},
        "actions": [{"type": "call-webhook", "url": "https://hooks.example.com/pushpool"}],
    })
}

async fn fresh_automation(env: &Env, ws: &Ws) -> String {
    let name = uniq("automation");
    env.ws_setup(ws, "post", "/automations", body(&name, "made for the case"))
        .await;
    env.made(ws, &name)
}

/// (path, body, success status) of an automation route in `ws`.
pub(super) async fn case(
    env: &Env,
    method: &str,
    tail: &str,
    ws: &Ws,
) -> (String, Option<Value>, u16) {
    let base = format!("/api/workspaces/{}/automations", ws.name);
    match (method, tail) {
        ("post", "/automations") => (base, Some(body(&uniq("matrix"), "from the matrix")), 201),
        ("get", "/automations") => (base, None, 200),
        ("get", "/automations/{id_or_name}") => {
            let a = fresh_automation(env, ws).await;
            (format!("{base}/{a}"), None, 200)
        }
        ("patch", "/automations/{id_or_name}") => {
            let a = fresh_automation(env, ws).await;
            (
                format!("{base}/{a}"),
                Some(json!({"description": "changed by the matrix"})),
                200,
            )
        }
        ("delete", "/automations/{id_or_name}") => {
            let a = fresh_automation(env, ws).await;
            (format!("{base}/{a}"), None, 204)
        }
        ("get", "/automations/{id_or_name}/firings") => {
            let a = fresh_automation(env, ws).await;
            (format!("{base}/{a}/firings"), None, 200)
        }
        other => panic!("no automation case for {other:?}"),
    }
}
