//! Pools and their queues: the list, one pool (health, queues, recent runs, the base job
//! template with secrets masked), pause and resume.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};

use super::client::{seg, Api};
use super::dashboard::{active_by_pool, run_rows, RUN_HEADERS};
use super::layout::{button, esc, json_block, page, table, text, time, yes_no, Nav};
use super::session::{checked_form, Session, UiResult};
use super::Ui;
use crate::access::Scope;
use crate::api::table::Method;
use crate::model::WorkPool;

const PATCH: &str = "/api/workspaces/{ws}/work_pools/{name}";

fn load(p: &WorkPool, active: &HashMap<uuid::Uuid, i64>) -> String {
    let n = active.get(&p.id).copied().unwrap_or(0);
    match p.concurrency_limit {
        Some(l) => format!("{n} / {l}"),
        None => format!("{n} / ∞"),
    }
}

/// `GET /ui/pools`.
pub async fn list(State(ui): State<Ui>, session: Session) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let pools: Vec<WorkPool> = api.ws_get("/work_pools").await?;
    let active = active_by_pool(&ui, &session, &pools).await?;
    let rows: Vec<String> = pools
        .iter()
        .map(|p| {
            format!(
                "<tr><td><a href=\"/ui/pools/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&seg(&p.name)),
                esc(&p.name),
                esc(&p.pool_type),
                if p.paused { "<span class=\"pill warn\">paused</span>" } else { "<span class=\"pill ok\">ready</span>" },
                load(p, &active),
                p.submit_rate.map(|r| format!("{r}/s")).unwrap_or_else(|| "provider default".into()),
                time(&p.updated),
            )
        })
        .collect();
    let body = format!(
        "<h1>Pools</h1>{}",
        table(
            "Work pools",
            &[
                "Name",
                "Type",
                "Status",
                "In flight / limit",
                "Submit rate",
                "Updated"
            ],
            &rows,
            "No pools yet. Create one with <code>pushpool pool create</code>."
        )
    );
    Ok(page(&session, Nav::Pools, "Pools", &body).into_response())
}

/// `GET /ui/pools/{name}`.
pub async fn detail(
    State(ui): State<Ui>,
    session: Session,
    Path(name): Path<String>,
) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let p: WorkPool = api.ws_get(&format!("/work_pools/{}", seg(&name))).await?;
    let queues: Vec<Value> = api
        .ws_get(&format!("/work_pools/{}/queues", seg(&p.name)))
        .await?;
    // The newest by scheduled time, read through the (state, pool, time) index.
    let runs: Vec<Value> = if session.has(Scope::RunsRead) {
        let ws = session.caller.workspace()?;
        ui.app
            .store
            .runs_by_pool_and_state(
                ws.id,
                &[p.id],
                &crate::state::ALL_STATE_TYPES,
                0,
                i64::MAX,
                false,
                10,
            )
            .await?
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect()
    } else {
        vec![]
    };
    let active = active_by_pool(&ui, &session, std::slice::from_ref(&p)).await?;
    let mut actions = String::new();
    if session.can(Method::Patch, PATCH) {
        let (verb, label) = if p.paused {
            ("resume", "Resume pool")
        } else {
            ("pause", "Pause pool")
        };
        actions = button(
            &session,
            &format!("/ui/pools/{}/{verb}", seg(&p.name)),
            label,
            if p.paused { "" } else { "danger" },
        );
    }
    let queue_rows: Vec<String> = queues
        .iter()
        .map(|q| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&q["name"]),
                text(&q["priority"]),
                text(&q["concurrency_limit"]),
                yes_no(q["paused"].as_bool().unwrap_or(false)),
            )
        })
        .collect();
    let template = &p.base_job_template;
    let body = format!(
        r#"<div class="title-row"><h1>Pool {n}</h1><div class="actions">{actions}</div></div>
<div class="grid">
<section class="card" aria-labelledby="facts-h"><h2 id="facts-h">Facts</h2><dl class="facts">
<dt>Type</dt><dd>{ty}</dd>
<dt>Status</dt><dd id="pool-status">{status}</dd>
<dt>In flight / limit</dt><dd>{load}</dd>
<dt>Submit rate</dt><dd>{rate}</dd>
<dt>Overridable variables</dt><dd>{over}</dd>
<dt>Description</dt><dd>{desc}</dd>
<dt>Updated</dt><dd>{updated}</dd>
</dl></section>
<section class="card" aria-labelledby="q-h"><h2 id="q-h">Queues</h2>{queues}</section>
</div>
<section class="card" aria-labelledby="t-h"><h2 id="t-h">Base job template <span class="muted">(secrets masked)</span></h2>
<h3>Job configuration</h3>{jc}
<details><summary>Variables (JSON Schema)</summary>{vars}</details></section>
<section class="card" aria-labelledby="r-h"><h2 id="r-h">Recent runs</h2>{runs}</section>"#,
        n = esc(&p.name),
        ty = esc(&p.pool_type),
        status = if p.paused { "paused" } else { "ready" },
        load = load(&p, &active),
        rate = p
            .submit_rate
            .map(|r| format!("{r}/s per controller"))
            .unwrap_or_else(|| "provider default".into()),
        over = p
            .overridable_variables
            .as_ref()
            .map(|v| esc(&v.join(", ")))
            .unwrap_or_else(|| "any".into()),
        desc = esc(p.description.as_deref().unwrap_or("—")),
        updated = time(&p.updated),
        queues = table(
            "Queues",
            &["Name", "Priority", "Limit", "Paused"],
            &queue_rows,
            "No queues."
        ),
        jc = json_block(&template["job_configuration"]),
        vars = json_block(&template["variables"]),
        runs = table("Recent runs", RUN_HEADERS, &run_rows(&runs), "No runs yet."),
    );
    Ok(page(&session, Nav::Pools, &p.name, &body).into_response())
}

async fn set_paused(
    ui: Ui,
    session: Session,
    name: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    paused: bool,
) -> UiResult<Response> {
    checked_form(&session, &headers, &body)?;
    let api = Api::new(&ui, &session);
    api.send(
        "PATCH",
        &api.ws_path(&format!("/work_pools/{}", seg(&name))),
        Some(&json!({ "paused": paused })),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/pools/{}", seg(&name))).into_response())
}

/// `POST /ui/pools/{name}/pause`.
pub async fn pause(
    State(ui): State<Ui>,
    session: Session,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    set_paused(ui, session, name, headers, body, true).await
}

/// `POST /ui/pools/{name}/resume`.
pub async fn resume(
    State(ui): State<Ui>,
    session: Session,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    set_paused(ui, session, name, headers, body, false).await
}
