//! Runs: the filtered, paged list; one run's page (state timeline with durations, parameters,
//! rendered job configuration with secrets masked, infrastructure id, live logs, cancel and
//! re-run); the live view the page's script polls.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::client::{seg, Api};
use super::dashboard::{run_rows, RUN_HEADERS};
use super::layout::{
    badge, button, duration, esc, json_block, page, short, table, text, time, Nav,
};
use super::session::{checked_form, Session, UiError, UiResult};
use super::Ui;
use crate::access::Scope;
use crate::api::table::Method;
use crate::model::{FlowRun, HistoryEntry, LogLine, WorkPool};
use crate::state::{StateType, ALL_STATE_TYPES};

/// Runs per page.
const PAGE: usize = 50;
const CANCEL: &str = "/api/workspaces/{ws}/flow_runs/{id}/cancel";
const CREATE: &str = "/api/workspaces/{ws}/deployments/{id_or_name}/runs";

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A `datetime-local` value (read as UTC) or an RFC 3339 time, as RFC 3339.
fn time_param(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if DateTime::parse_from_rfc3339(v).is_ok() {
        return Some(v.to_string());
    }
    let with_secs = if v.len() == 16 {
        format!("{v}:00")
    } else {
        v.to_string()
    };
    Some(format!("{with_secs}Z"))
}

/// `GET /ui/runs`: filters (state, pool, deployment, tag, time range) and paging.
pub async fn list(
    State(ui): State<Ui>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let mut filter = String::new();
    for (param, key) in [
        ("state", "state"),
        ("work_pool", "pool"),
        ("deployment", "deployment"),
        ("tag", "tag"),
    ] {
        if !get(key).is_empty() {
            filter.push_str(&format!("&{param}={}", enc(get(key))));
        }
    }
    for key in ["since", "until"] {
        if let Some(t) = time_param(get(key)) {
            filter.push_str(&format!("&{key}={}", enc(&t)));
        }
    }
    let cursor = get("cursor");
    let cursor_q = if cursor.is_empty() {
        String::new()
    } else {
        format!("&cursor={}", enc(cursor))
    };
    let mut runs: Vec<Value> = api
        .ws_get(&format!("/flow_runs?limit={}{filter}{cursor_q}", PAGE + 1))
        .await?;
    let more = runs.len() > PAGE;
    runs.truncate(PAGE);
    let pools: Vec<WorkPool> = if session.has(Scope::PoolsRead) {
        api.ws_get("/work_pools").await?
    } else {
        vec![]
    };
    let deployments: Vec<Value> = if session.has(Scope::DeploymentsRead) {
        api.ws_get("/deployments").await?
    } else {
        vec![]
    };
    let select = |name: &str, label: &str, options: Vec<String>| {
        let current = get(name);
        let opts: String = options
            .iter()
            .map(|o| {
                let sel = if o == current { " selected" } else { "" };
                format!("<option value=\"{0}\"{sel}>{0}</option>", esc(o))
            })
            .collect();
        format!(
            "<div><label for=\"f-{name}\">{label}</label><select id=\"f-{name}\" name=\"{name}\"><option value=\"\">any</option>{opts}</select></div>"
        )
    };
    let form = format!(
        r#"<form method="get" action="/ui/runs" class="filters" aria-label="Filter runs">
{}{}{}
<div><label for="f-tag">Tag</label><input id="f-tag" name="tag" value="{}"></div>
<div><label for="f-since">Scheduled from (UTC)</label><input id="f-since" name="since" type="datetime-local" value="{}"></div>
<div><label for="f-until">until (UTC)</label><input id="f-until" name="until" type="datetime-local" value="{}"></div>
<div class="actions"><button type="submit">Filter</button> <a href="/ui/runs">Clear</a></div>
</form>"#,
        select(
            "state",
            "State",
            ALL_STATE_TYPES
                .iter()
                .map(|s| s.as_str().to_string())
                .collect()
        ),
        select(
            "pool",
            "Pool",
            pools.iter().map(|p| p.name.clone()).collect()
        ),
        select(
            "deployment",
            "Deployment",
            deployments
                .iter()
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect()
        ),
        esc(get("tag")),
        esc(get("since").get(..16).unwrap_or(get("since"))),
        esc(get("until").get(..16).unwrap_or(get("until"))),
    );
    let mut keep: Vec<String> = vec![];
    for key in ["state", "pool", "deployment", "tag", "since", "until"] {
        if !get(key).is_empty() {
            keep.push(format!("{key}={}", enc(get(key))));
        }
    }
    let keep = keep.join("&");
    let mut pager = String::new();
    if !cursor.is_empty() {
        pager.push_str(&format!("<a href=\"/ui/runs?{keep}\">First page</a>"));
    }
    if more {
        if let Some(last) = runs.last().and_then(|r| r["id"].as_str()) {
            pager.push_str(&format!(
                " <a href=\"/ui/runs?{keep}{}cursor={last}\" rel=\"next\">Next page</a>",
                if keep.is_empty() { "" } else { "&" }
            ));
        }
    }
    let self_url = format!(
        "/ui/runs?{keep}{}",
        if cursor.is_empty() {
            String::new()
        } else {
            format!("&cursor={}", enc(cursor))
        }
    );
    let body = format!(
        "<h1>Runs</h1>{form}<div id=\"runs\" data-refresh=\"{}\">{}</div><nav class=\"pager\" aria-label=\"Pages\">{pager}</nav>",
        esc(&self_url),
        table("Runs", RUN_HEADERS, &run_rows(&runs), "No runs match."),
    );
    Ok(page(&session, Nav::Runs, "Runs", &body).into_response())
}

/// The timeline: every accepted transition, with how long the run stayed in it.
fn timeline(history: &[HistoryEntry], now: DateTime<Utc>, terminal: bool) -> String {
    let rows: Vec<String> = history
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (lasted, ongoing) = match history.get(i + 1) {
                Some(next) => (duration(next.timestamp - h.timestamp), false),
                None if terminal => ("—".to_string(), false),
                None => (duration(now - h.timestamp), true),
            };
            format!(
                "<li><span class=\"when\">{}</span> {} <span class=\"lasted\">{}{lasted}</span>{}</li>",
                time(&h.timestamp),
                badge(h.state_type, &h.name),
                if ongoing { "for " } else { "" },
                h.message
                    .as_deref()
                    .map(|m| format!("<div class=\"msg\">{}</div>", esc(m)))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!("<ol class=\"timeline\">{}</ol>", rows.concat())
}

fn log_lines(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|l| {
            format!(
                "<span class=\"log {}\"><span class=\"ts\">{}</span> {}</span>\n",
                esc(&l.stream),
                l.timestamp.format("%H:%M:%S%.3f"),
                esc(&l.line)
            )
        })
        .collect()
}

/// The run's rendered job configuration, secrets masked, or why there is none.
async fn job_configuration(ui: &Ui, session: &Session, run_id: Uuid) -> String {
    let Ok(ws) = session.caller.workspace() else {
        return String::new();
    };
    let rendered = async {
        let run = ui.app.store.run_in(ws.id, run_id).await?;
        let deployment = ui
            .app
            .store
            .deployment(ws.id, &run.deployment_id.to_string())
            .await?;
        let (mut rendered, _, pool) =
            crate::api::routes::deployments::render_for(&ui.app, &deployment, &run.job_variables)
                .await?;
        let secrets = crate::redact::render_secrets(
            &pool.base_job_template,
            &[&deployment.job_variables, &run.job_variables],
        );
        crate::redact::mask_rendered(&mut rendered, &secrets);
        Ok::<_, UiError>(rendered)
    }
    .await;
    match rendered {
        Ok(v) => json_block(&v),
        Err(e) => format!("<p class=\"muted\">Not available: {}</p>", esc(&e.message)),
    }
}

/// `GET /ui/runs/{id}`.
pub async fn detail(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let run: Value = api.ws_get(&format!("/flow_runs/{}", seg(&id))).await?;
    let typed: FlowRun = serde_json::from_value(run.clone())
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let history: Vec<HistoryEntry> =
        serde_json::from_value(run["state_history"].clone()).unwrap_or_default();
    let logs: Vec<LogLine> = api.ws_get(&format!("/flow_runs/{}/logs", seg(&id))).await?;
    let terminal = typed.state.state_type.is_terminal();
    let now = Utc::now();
    let mut actions = String::new();
    if !terminal && session.can(Method::Post, CANCEL) {
        actions.push_str(&button(
            &session,
            &format!("/ui/runs/{}/cancel", typed.id),
            "Cancel run",
            "danger",
        ));
    }
    if terminal && session.can(Method::Post, CREATE) {
        actions.push_str(&button(
            &session,
            &format!("/ui/runs/{}/rerun", typed.id),
            "Re-run",
            "",
        ));
    }
    let job_config = if session.has(Scope::DeploymentsRead) {
        format!(
            "<details><summary>Job configuration (rendered, secrets masked)</summary>{}</details>",
            job_configuration(&ui, &session, typed.id).await
        )
    } else {
        String::new()
    };
    let tags = if typed.tags.is_empty() {
        "—".to_string()
    } else {
        typed
            .tags
            .iter()
            .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let body = format!(
        r#"<div id="run" data-live="{live}" data-live-url="/ui/runs/{id}/live" data-logs="{nlogs}">
<div class="title-row"><h1>Run <code>{short}</code> of <a href="/ui/deployments/{dep_seg}">{dep}</a></h1>
<div class="actions" id="run-actions">{actions}</div></div>
<p class="state-line">State: <span id="run-state">{state}</span> <span id="run-message" class="msg">{message}</span></p>
<div class="grid">
<section class="card" aria-labelledby="facts-h"><h2 id="facts-h">Facts</h2><dl class="facts">
<dt>Id</dt><dd><code>{id}</code></dd>
<dt>Deployment</dt><dd><a href="/ui/deployments/{dep_seg}">{dep}</a></dd>
<dt>Pool / queue</dt><dd><a href="/ui/pools/{pool_seg}">{pool}</a> / {queue}</dd>
<dt>Scheduled</dt><dd>{scheduled}</dd>
<dt>Created</dt><dd>{created}</dd>
<dt>Attempt</dt><dd>{attempt}</dd>
<dt>Infrastructure id</dt><dd id="run-infra"><code>{infra}</code></dd>
<dt>Tags</dt><dd>{tags}</dd>
</dl></section>
<section class="card" aria-labelledby="tl-h"><h2 id="tl-h">State timeline</h2><div id="run-timeline">{timeline}</div></section>
</div>
<section class="card" aria-labelledby="logs-h"><h2 id="logs-h">Logs <span class="muted">(times UTC)</span></h2><pre id="logs" class="logs" tabindex="0" aria-live="polite">{log_html}</pre></section>
<section class="card" aria-labelledby="params-h"><h2 id="params-h">Parameters</h2>{params}
<details><summary>Run job variables</summary>{jobvars}</details>{job_config}</section>
</div>"#,
        live = if terminal { "0" } else { "1" },
        id = typed.id,
        nlogs = logs.len(),
        short = short(&typed.id.to_string()),
        dep_seg = esc(&seg(&typed.deployment)),
        dep = esc(&typed.deployment),
        state = badge(typed.state.state_type, &typed.state.name),
        message = esc(typed.state.message.as_deref().unwrap_or("")),
        pool_seg = esc(&seg(&typed.work_pool)),
        pool = esc(&typed.work_pool),
        queue = esc(&typed.work_queue),
        scheduled = time(&typed.scheduled_time),
        created = time(&typed.created),
        attempt = typed.attempt,
        infra = text(&run["infrastructure_id"]),
        timeline = timeline(&history, now, terminal),
        params = json_block(&run["parameters"]),
        jobvars = json_block(&run["job_variables"]),
        log_html = log_lines(&logs),
    );
    Ok(page(&session, Nav::Runs, &format!("Run {}", short(&id)), &body).into_response())
}

/// `GET /ui/runs/{id}/live?logs=N`: the run's state, timeline and the log lines after the
/// first N, for the run page's script.
pub async fn live(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> UiResult<Response> {
    if !session.has(Scope::RunsRead) {
        return Err(UiError::forbidden("this needs the `runs:read` permission"));
    }
    let ws = session.caller.workspace()?;
    let run_id = Uuid::parse_str(&id)
        .map_err(|_| UiError::new(StatusCode::NOT_FOUND, format!("flow run `{id}` not found")))?;
    let run = ui.app.store.run_in(ws.id, run_id).await?;
    let history = ui.app.store.state_history(run_id).await?;
    let skip: usize = q.get("logs").and_then(|n| n.parse().ok()).unwrap_or(0);
    let logs = ui.app.store.logs(run_id, 10_000).await?;
    let terminal = run.state.state_type.is_terminal();
    let new_logs = logs.get(skip.min(logs.len())..).unwrap_or_default();
    Ok(Json(json!({
        "state_type": run.state.state_type.as_str(),
        "state_html": badge(run.state.state_type, &run.state.name),
        "message": run.state.message.unwrap_or_default(),
        "terminal": terminal,
        "timeline_html": timeline(&history, Utc::now(), terminal),
        "infrastructure_id": run.infrastructure_id,
        "logs_html": log_lines(new_logs),
        "logs": logs.len(),
        "can_cancel": !terminal && run.state.state_type != StateType::Cancelling && session.can(Method::Post, CANCEL),
        "rerun_html": if terminal && session.can(Method::Post, CREATE) {
            button(&session, &format!("/ui/runs/{run_id}/rerun"), "Re-run", "")
        } else {
            String::new()
        },
    }))
    .into_response())
}

/// `POST /ui/runs/{id}/cancel`.
pub async fn cancel(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    checked_form(&session, &headers, &body)?;
    Api::new(&ui, &session)
        .send(
            "POST",
            &Api::new(&ui, &session).ws_path(&format!("/flow_runs/{}/cancel", seg(&id))),
            None,
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/runs/{}", seg(&id))).into_response())
}

/// `POST /ui/runs/{id}/rerun`: a new run of the same deployment with the same parameters (and
/// run-level job variables, which need `runs:override` as in the API).
pub async fn rerun(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    checked_form(&session, &headers, &body)?;
    let api = Api::new(&ui, &session);
    // The API masks secret parameters; the new run gets the stored values (same workspace
    // and `runs:read` checked by reading it through the API first).
    let _: Value = api.ws_get(&format!("/flow_runs/{}", seg(&id))).await?;
    let ws = session.caller.workspace()?;
    let run_id = Uuid::parse_str(&id)
        .map_err(|_| UiError::new(StatusCode::NOT_FOUND, format!("flow run `{id}` not found")))?;
    let run = ui.app.store.run_in(ws.id, run_id).await?;
    let mut request = Map::new();
    request.insert("parameters".into(), Value::Object(run.parameters.clone()));
    if !run.job_variables.is_empty() {
        request.insert(
            "job_variables".into(),
            Value::Object(run.job_variables.clone()),
        );
    }
    let created = api
        .send(
            "POST",
            &api.ws_path(&format!("/deployments/{}/runs", run.deployment_id)),
            Some(&Value::Object(request)),
        )
        .await?;
    let new_id = created["id"].as_str().unwrap_or_default();
    Ok(Redirect::to(&format!("/ui/runs/{}", seg(new_id))).into_response())
}
