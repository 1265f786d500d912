//! Deployments: the list; one deployment with its schedules, upcoming runs and recent runs; and
//! "run now" with parameters (and run-level job variables for keys with `runs:override`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Map, Value};

use super::client::{seg, Api};
use super::dashboard::{run_rows, RUN_HEADERS};
use super::layout::{esc, json_block, page, table, text, time_str, yes_no, Nav};
use super::session::{checked_form, Session, UiError, UiResult};
use super::Ui;
use crate::access::Scope;
use crate::api::table::Method;

const CREATE: &str = "/api/workspaces/{ws}/deployments/{id_or_name}/runs";

/// `GET /ui/deployments`.
pub async fn list(State(ui): State<Ui>, session: Session) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let deployments: Vec<Value> = api.ws_get("/deployments").await?;
    let rows: Vec<String> = deployments
        .iter()
        .map(|d| {
            let name = d["name"].as_str().unwrap_or_default();
            format!(
                "<tr><td><a href=\"/ui/deployments/{}\">{}</a></td><td><a href=\"/ui/pools/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&seg(name)),
                esc(name),
                esc(&seg(d["work_pool"].as_str().unwrap_or_default())),
                text(&d["work_pool"]),
                text(&d["work_queue"]),
                yes_no(d["paused"].as_bool().unwrap_or(false)),
                tags(&d["tags"]),
                time_str(&d["updated"]),
            )
        })
        .collect();
    let body = format!(
        "<h1>Deployments</h1>{}",
        table(
            "Deployments",
            &["Name", "Pool", "Queue", "Paused", "Tags", "Updated"],
            &rows,
            "No deployments yet. Create one with <code>pushpool deployment create</code>."
        )
    );
    Ok(page(&session, Nav::Deployments, "Deployments", &body).into_response())
}

fn tags(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str())
                .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "—".into()
    } else {
        list.join(" ")
    }
}

/// `GET /ui/deployments/{name}`.
pub async fn detail(
    State(ui): State<Ui>,
    session: Session,
    Path(name): Path<String>,
) -> UiResult<Response> {
    let api = Api::new(&ui, &session);
    let d: Value = api.ws_get(&format!("/deployments/{}", seg(&name))).await?;
    let name = d["name"].as_str().unwrap_or_default().to_string();
    let schedules: Vec<Value> = api
        .ws_get(&format!("/deployments/{}/schedules", seg(&name)))
        .await
        .unwrap_or_default();
    let upcoming: Vec<Value> = api
        .ws_get(&format!("/deployments/{}/upcoming?limit=10", seg(&name)))
        .await
        .unwrap_or_default();
    let runs: Vec<Value> = if session.has(Scope::RunsRead) {
        api.ws_get(&format!("/flow_runs?deployment={}&limit=10", seg(&name)))
            .await?
    } else {
        vec![]
    };
    let schedule_rows: Vec<String> = schedules
        .iter()
        .map(|s| {
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(super::layout::short(s["id"].as_str().unwrap_or_default())),
                text(&s["kind"]),
                text(&s["spec"]),
                text(&s["timezone"]),
                if s["active"].as_bool().unwrap_or(false) { "active" } else { "paused" },
            )
        })
        .collect();
    let upcoming_rows: Vec<String> = upcoming
        .iter()
        .map(|u| {
            format!(
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                time_str(&u["scheduled_time"]),
                esc(super::layout::short(
                    u["schedule_id"].as_str().unwrap_or_default()
                ))
            )
        })
        .collect();
    let run_form = if session.can(Method::Post, CREATE) {
        let overrides = if session.has(Scope::RunsOverride) {
            "<label for=\"jobvars\">Job variables (JSON object, overrides the pool template's variables)</label><textarea id=\"jobvars\" name=\"job_variables\" rows=\"3\" spellcheck=\"false\">{}</textarea>"
        } else {
            ""
        };
        format!(
            r#"<section class="card" aria-labelledby="run-h"><h2 id="run-h">Run now</h2>
<form method="post" action="/ui/deployments/{}/run" class="stack">{}
<label for="params">Parameters (JSON object, merged over the deployment's)</label>
<textarea id="params" name="parameters" rows="4" spellcheck="false">{{}}</textarea>{overrides}
<div><button type="submit" id="run-now">Run now</button></div></form></section>"#,
            esc(&seg(&name)),
            session.csrf_field()
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<h1>Deployment {n}</h1>
<div class="grid">
<section class="card" aria-labelledby="facts-h"><h2 id="facts-h">Facts</h2><dl class="facts">
<dt>Id</dt><dd><code>{id}</code></dd>
<dt>Pool / queue</dt><dd><a href="/ui/pools/{pool_seg}">{pool}</a> / {queue}</dd>
<dt>Paused</dt><dd>{paused}</dd>
<dt>Concurrency limit</dt><dd>{limit}</dd>
<dt>Retries</dt><dd>{retries}</dd>
<dt>Tags</dt><dd>{tags}</dd>
<dt>Updated</dt><dd>{updated}</dd>
</dl></section>
{run_form}
</div>
<section class="card" aria-labelledby="p-h"><h2 id="p-h">Default parameters</h2>{params}
<details><summary>Job variables</summary>{jobvars}</details></section>
<div class="grid">
<section class="card" aria-labelledby="s-h"><h2 id="s-h">Schedules</h2>{schedules}</section>
<section class="card" aria-labelledby="u-h"><h2 id="u-h">Upcoming runs</h2>{upcoming}</section>
</div>
<section class="card" aria-labelledby="r-h"><h2 id="r-h">Recent runs</h2>{runs}</section>"#,
        n = esc(&name),
        id = text(&d["id"]),
        pool_seg = esc(&seg(d["work_pool"].as_str().unwrap_or_default())),
        pool = text(&d["work_pool"]),
        queue = text(&d["work_queue"]),
        paused = yes_no(d["paused"].as_bool().unwrap_or(false)),
        limit = text(&d["concurrency_limit"]),
        retries = text(&d["retries"]),
        tags = tags(&d["tags"]),
        updated = time_str(&d["updated"]),
        params = json_block(&d["parameters"]),
        jobvars = json_block(&d["job_variables"]),
        schedules = table(
            "Schedules",
            &["Id", "Kind", "Spec", "Time zone", "Status"],
            &schedule_rows,
            "No schedules."
        ),
        upcoming = table(
            "Upcoming runs",
            &["Due", "Schedule"],
            &upcoming_rows,
            "Nothing scheduled."
        ),
        runs = table("Recent runs", RUN_HEADERS, &run_rows(&runs), "No runs yet."),
    );
    Ok(page(&session, Nav::Deployments, &name, &body).into_response())
}

/// A JSON object typed into a form field (empty means none).
fn object_field(
    form: &std::collections::HashMap<String, String>,
    field: &str,
) -> UiResult<Map<String, Value>> {
    let raw = form.get(field).map(|s| s.trim()).unwrap_or_default();
    if raw.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(UiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: must be a JSON object such as {{\"name\": \"value\"}}"),
        )),
        Err(e) => Err(UiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: not valid JSON: {e}"),
        )),
    }
}

/// `POST /ui/deployments/{name}/run`.
pub async fn run_now(
    State(ui): State<Ui>,
    session: Session,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    let form = checked_form(&session, &headers, &body)?;
    let mut request = Map::new();
    request.insert(
        "parameters".into(),
        Value::Object(object_field(&form, "parameters")?),
    );
    let job_variables = object_field(&form, "job_variables")?;
    if !job_variables.is_empty() {
        request.insert("job_variables".into(), Value::Object(job_variables));
    }
    let api = Api::new(&ui, &session);
    let run = api
        .send(
            "POST",
            &api.ws_path(&format!("/deployments/{}/runs", seg(&name))),
            Some(&Value::Object(request)),
        )
        .await?;
    let id = run["id"].as_str().unwrap_or_default();
    Ok(Redirect::to(&format!("/ui/runs/{}", seg(id))).into_response())
}
