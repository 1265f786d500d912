//! Events, automations, the audit log (owners: `audit:read`), API keys and members (owners).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::client::{seg, Api};
use super::layout::{button, esc, page, short, table, text, time_str, Nav};
use super::session::{checked_form, Session, UiResult};
use super::Ui;
use crate::access::Scope;
use crate::api::table::Method;

/// Headers of [`event_row`].
pub const EVENT_HEADERS: &[&str] = &["When", "Event", "Resource", "Details"];

/// One event as a table row.
pub fn event_row(e: &Value) -> String {
    event_row_with(e, true)
}

/// One event as a row of when, what and which object (the dashboard's narrow card).
pub fn event_row_brief(e: &Value) -> String {
    event_row_with(e, false)
}

fn event_row_with(e: &Value, with_details: bool) -> String {
    let payload = e.get("payload").cloned().unwrap_or(Value::Null);
    let mut details = serde_json::to_string(&payload).unwrap_or_default();
    if details.chars().count() > 160 {
        details = format!("{}…", details.chars().take(160).collect::<String>());
    }
    let resource = e["resource_id"]
        .as_str()
        .or_else(|| e["resource"]["id"].as_str())
        .unwrap_or_default();
    let event = e["event"].as_str().unwrap_or_default();
    let is_run = event.starts_with("flow_run") || event.starts_with("pushpool.flow-run");
    let run_id = resource
        .strip_prefix("pushpool.flow-run.")
        .unwrap_or(resource);
    let resource_html = if is_run && uuid::Uuid::parse_str(run_id).is_ok() {
        format!(
            "<a href=\"/ui/runs/{run_id}\"><code>{}</code></a>",
            esc(short(run_id))
        )
    } else {
        format!(
            "<code title=\"{0}\">{1}</code>",
            esc(resource),
            esc(short(resource))
        )
    };
    let details = if with_details {
        format!("<td><code class=\"clip\">{}</code></td>", esc(&details))
    } else {
        String::new()
    };
    format!(
        "<tr><td>{}</td><td>{}</td><td>{resource_html}</td>{details}</tr>",
        time_str(e.get("occurred").unwrap_or(&Value::Null)),
        esc(event),
    )
}

/// `GET /ui/events?event=PREFIX`.
pub async fn events(
    State(ui): State<Ui>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let events: Vec<Value> = api.ws_get("/events").await?;
    let prefix = q.get("event").map(String::as_str).unwrap_or_default();
    let rows: Vec<String> = events
        .iter()
        .filter(|e| e["event"].as_str().unwrap_or_default().starts_with(prefix))
        .take(200)
        .map(event_row)
        .collect();
    let body = format!(
        r#"<h1>Events</h1>
<form method="get" action="/ui/events" class="filters" aria-label="Filter events"><div><label for="f-event">Event starts with</label><input id="f-event" name="event" value="{}" placeholder="flow_run."></div><div class="actions"><button type="submit">Filter</button></div></form>
<div id="events" data-refresh="/ui/events?event={}">{}</div>"#,
        esc(prefix),
        esc(&form_urlencoded::byte_serialize(prefix.as_bytes()).collect::<String>()),
        table("Events, newest first", EVENT_HEADERS, &rows, "No events.")
    );
    Ok(page(&session, Nav::Events, "Events", &body).into_response())
}

/// `GET /ui/audit?cursor=`.
pub async fn audit(
    State(ui): State<Ui>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let mut path = "/audit_log?limit=100".to_string();
    for key in ["actor", "action", "outcome", "cursor"] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty()) {
            path.push_str(&format!(
                "&{key}={}",
                form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            ));
        }
    }
    let entries: Vec<Value> = api.ws_get(&path).await?;
    let rows: Vec<String> = entries
        .iter()
        .map(|e| {
            let actor = e["actor"]["name"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e["actor"].to_string());
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                time_str(&e["time"]),
                esc(&actor),
                text(&e["action"]),
                text(&e["target"]),
                text(&e["outcome"]),
                text(&e["status"]),
                text(&e["source"]),
            )
        })
        .collect();
    let next = entries
        .last()
        .filter(|_| entries.len() == 100)
        .and_then(|e| e["id"].as_str())
        .map(|id| format!("<a href=\"/ui/audit?cursor={id}\" rel=\"next\">Older</a>"))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Audit log</h1>
<form method="get" action="/ui/audit" class="filters" aria-label="Filter the audit log">
<div><label for="f-actor">Actor</label><input id="f-actor" name="actor" value="{}"></div>
<div><label for="f-action">Action</label><input id="f-action" name="action" value="{}" placeholder="flow_run.cancel"></div>
<div><label for="f-outcome">Outcome</label><input id="f-outcome" name="outcome" value="{}" placeholder="denied"></div>
<div class="actions"><button type="submit">Filter</button></div></form>
{}<nav class="pager" aria-label="Pages">{next}</nav>"#,
        esc(q.get("actor").map(String::as_str).unwrap_or_default()),
        esc(q.get("action").map(String::as_str).unwrap_or_default()),
        esc(q.get("outcome").map(String::as_str).unwrap_or_default()),
        table(
            "Audit log, newest first",
            &["When", "Actor", "Action", "Target", "Outcome", "Source"],
            &rows,
            "No records."
        )
    );
    Ok(page(&session, Nav::Audit, "Audit log", &body).into_response())
}

/// `GET /ui/keys`: the keys the session may see (its own; all with `keys:read`).
pub async fn keys(State(ui): State<Ui>, session: Session) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let keys: Vec<Value> = api.ws_get("/api_keys").await?;
    let own = session.caller.key().map(|k| k.key.id.to_string());
    let can_revoke = session.can(Method::Delete, "/api/workspaces/{ws}/api_keys/{id}");
    let rows: Vec<String> = keys
        .iter()
        .map(|k| {
            let id = k["id"].as_str().unwrap_or_default();
            let mine = own.as_deref() == Some(id);
            let action = if can_revoke && k["status"] == "active" && !mine {
                button(&session, &format!("/ui/keys/{}/revoke", seg(id)), "Revoke", "danger small")
            } else if mine {
                "this session".into()
            } else {
                String::new()
            };
            format!(
                "<tr><td>{}</td><td><code>pp_{}…</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                text(&k["name"]),
                text(&k["prefix"]),
                text(&k["principal"]["name"]),
                text(&k["role"]),
                text(&k["status"]),
                time_str(&k["created"]),
                time_str(&k["expires"]),
            )
        })
        .collect();
    let body = format!(
        "<h1>API keys</h1><p class=\"muted\">Secrets are shown once, when a key is made (<code>pushpool key create</code>); never here.</p>{}",
        table(
            "API keys",
            &["Name", "Prefix", "Principal", "Role cap", "Status", "Created", "Expires", ""],
            &rows,
            "No keys."
        )
    );
    Ok(page(&session, Nav::Keys, "API keys", &body).into_response())
}

/// `POST /ui/keys/{id}/revoke`.
pub async fn revoke_key(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    checked_form(&session, &headers, &body)?;
    let api = Api::new(&ui, &session);
    api.send(
        "DELETE",
        &api.ws_path(&format!("/api_keys/{}", seg(&id))),
        None,
    )
    .await?;
    Ok(Redirect::to("/ui/keys").into_response())
}

/// `GET /ui/members`: users and service accounts with their roles.
pub async fn members(State(ui): State<Ui>, session: Session) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let members: Vec<Value> = api.ws_get("/members").await?;
    let rows: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&m["user"]),
                text(&m["role"]),
                time_str(&m["created"])
            )
        })
        .collect();
    let accounts: Vec<Value> = if session.has(Scope::ServiceAccountsRead) {
        api.ws_get("/service_accounts").await?
    } else {
        vec![]
    };
    let account_rows: Vec<String> = accounts
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&a["name"]),
                text(&a["role"]),
                time_str(&a["created"])
            )
        })
        .collect();
    let body = format!(
        "<h1>Members</h1><section class=\"card\" aria-labelledby=\"u-h\"><h2 id=\"u-h\">Users</h2>{}</section><section class=\"card\" aria-labelledby=\"sa-h\"><h2 id=\"sa-h\">Service accounts</h2>{}</section>",
        table("Users", &["User", "Role", "Since"], &rows, "No members."),
        table("Service accounts", &["Name", "Role", "Created"], &account_rows, "No service accounts.")
    );
    Ok(page(&session, Nav::Members, "Members", &body).into_response())
}

/// `GET /ui/automations`: the workspace's automations (read-only; they are changed with
/// `pushpool automation …` or the API, docs/automations.md).
pub async fn automations(State(ui): State<Ui>, session: Session) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let list: Vec<Value> = api.ws_get("/automations").await?;
    let rows: Vec<String> = list
        .iter()
        .map(|a| {
            let actions: Vec<String> = a["actions"]
                .as_array()
                .map(|v| v.iter().map(|x| text(&x["type"])).collect())
                .unwrap_or_default();
            let mut trigger = serde_json::to_string(&a["trigger"]).unwrap_or_default();
            if trigger.chars().count() > 160 {
                trigger = format!("{}…", trigger.chars().take(160).collect::<String>());
            }
            let enabled = if a["enabled"].as_bool().unwrap_or(false) {
                "enabled"
            } else {
                "disabled"
            };
            format!(
                "<tr><td>{}</td><td>{enabled}</td><td><code class=\"clip\">{}</code></td><td>{}</td><td>{}</td></tr>",
                text(&a["name"]),
                esc(&trigger),
                actions.join(", "),
                time_str(&a["updated"]),
            )
        })
        .collect();
    let body = format!(
        "<h1>Automations</h1>\n<p>Triggers and the actions they start; change them with \
         <code>pushpool automation</code> or the API.</p>\n{}",
        table(
            "Automations",
            &["Name", "State", "Trigger", "Actions", "Changed"],
            &rows,
            "No automations."
        )
    );
    Ok(page(&session, Nav::Automations, "Automations", &body).into_response())
}
