//! Flow runs of deployments: create, list, read, history, logs, cancel (the workspace's events
//! are in `events.rs`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::super::table::{handler, ws, Reply, Route};
use super::super::validate::{check_document_size, checked_tags, invalid_setting};
use super::super::views::{
    run_json, run_out, secret_variables, secret_variables_by_pool, secrets_in,
};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Caller, Json, OptionalBody, Query,
};
use super::deployments::{render_for, retry_override};
use crate::access::Scope;
use crate::model::{FlowRun, HistoryEntry, LogLine};
use crate::state::{Proposal, RetryDelay, RetryOverride, StateType};
use crate::store::{NewRun, RunFilter, TransitionGuard, TransitionOutcome};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/deployments/{id_or_name}/runs"), handler!(create_run))
        .summary("Create a flow run")
        .access(Access::Workspace(Scope::RunsCreate))
        .conditional_scope(
            Scope::RunsOverride,
            "the body has non-empty `job_variables`",
        )
        .audit("flow_run.create", Always)
        .optional_body::<CreateRun>()
        .created::<FlowRun>()
        .reply(Reply::json::<FlowRun>(
            200,
            "The run created earlier with the same idempotency key",
        ))
        .errors(&[409]),
    Route::get(ws!("/flow_runs"), handler!(list_runs))
        .summary("List flow runs (state, tag, since, until, work_pool, deployment, limit, cursor)")
        .access(Access::Workspace(Scope::RunsRead))
        .audit("flow_run.list", DeniedOnly)
        .query::<RunQuery>()
        .ok::<Vec<FlowRun>>(),
    Route::get(ws!("/flow_runs/{id}"), handler!(get_run))
        .summary("Get a flow run with its state history")
        .access(Access::Workspace(Scope::RunsRead))
        .audit("flow_run.read", DeniedOnly)
        .ok::<FlowRunWithHistory>(),
    Route::get(ws!("/flow_runs/{id}/states"), handler!(run_states))
        .summary("A flow run's state history")
        .access(Access::Workspace(Scope::RunsRead))
        .audit("flow_run.states", DeniedOnly)
        .ok::<Vec<HistoryEntry>>(),
    Route::post(ws!("/flow_runs/{id}/cancel"), handler!(cancel_run))
        .summary("Cancel a flow run")
        .access(Access::Workspace(Scope::RunsCancel))
        .audit("flow_run.cancel", Always)
        .ok::<FlowRun>()
        .errors(&[409]),
    Route::get(ws!("/flow_runs/{id}/logs"), handler!(run_logs))
        .summary("A flow run's log lines; `after` + `wait` long-poll for new ones (follow)")
        .access(Access::Workspace(Scope::RunsRead))
        .audit("flow_run.logs", DeniedOnly)
        .query::<LogQuery>()
        .ok::<Vec<LogLine>>(),
];

/// A flow run with its state history.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FlowRunWithHistory {
    /// The run.
    #[serde(flatten)]
    pub run: FlowRun,
    /// Every accepted transition, oldest first.
    pub state_history: Vec<HistoryEntry>,
}

/// A new flow run; every field is optional.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// When the run is due (default now).
    #[serde(default)]
    scheduled_time: Option<DateTime<Utc>>,
    /// Flow parameters.
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Overrides of the pool template's variables. A non-empty object needs the `runs:override`
    /// scope (403 otherwise), and each variable must be one the pool's `overridable_variables`
    /// lists, when it lists any (422 `job_variables.<name>` otherwise).
    #[serde(default)]
    job_variables: Map<String, Value>,
    /// 1–200 characters; a repeated key returns the run made first.
    #[serde(default)]
    idempotency_key: Option<String>,
    // Retries and tags (issue 13; docs/retries.md).
    /// How many times a failed run is tried again (0–100); each retry field given replaces the deployment's.
    #[serde(default)]
    retries: Option<i64>,
    /// Seconds before each retry (0–604800): a number, or a list with one entry per retry (the
    /// last repeats).
    #[serde(default)]
    retry_delay_seconds: Option<RetryDelay>,
    /// Adds up to this fraction of the delay at random (0–10).
    #[serde(default)]
    retry_jitter_factor: Option<f64>,
    /// The end states retried: `FAILED`, `CRASHED` or both (default both).
    #[serde(default)]
    retry_on: Option<Vec<StateType>>,
    /// Tags besides the deployment's, which the run inherits (each 1–100 characters, no commas).
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Which log lines to read, and whether to wait for new ones (docs/error-summaries.md,
/// "Following a run's logs").
#[derive(Deserialize, JsonSchema)]
pub struct LogQuery {
    /// Only lines stored after the line with this id (the `id` of the last line seen).
    after: Option<String>,
    /// Seconds (0–60) to wait for a line after `after` when there is none yet and the run is
    /// not terminal; answers as soon as one is stored (long-poll). Default 0.
    #[schemars(range(min = 0, max = 60))]
    wait: Option<u64>,
    /// Most lines in the answer, 1–10000 (default 10000; a page also stops at 1 MiB).
    #[schemars(range(min = 1, max = 10000))]
    limit: Option<i64>,
}

/// Longest `wait` of a log long-poll.
const MAX_LOG_WAIT_SECONDS: u64 = 60;

/// Filters of the run list; empty values are ignored.
#[derive(Deserialize, JsonSchema)]
// `state`, `tag`, `since` and `until` are documented here and read by `run_filters::split`.
#[allow(dead_code)]
pub struct RunQuery {
    /// State types, e.g. `RUNNING`: repeat the parameter or give a comma list (any of them).
    #[schemars(with = "Option<String>")]
    state: Option<String>,
    /// A tag the runs must have; repeat it for several (every one of them).
    tag: Option<String>,
    /// Only runs scheduled at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only runs scheduled before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
    work_pool: Option<String>,
    deployment: Option<String>,
    /// Page size, 1–1000.
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
    /// The last id of the previous page.
    cursor: Option<Uuid>,
}

async fn create_run(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    OptionalBody(mut request): OptionalBody<CreateRun>,
) -> ApiResult<(StatusCode, Json<FlowRun>)> {
    let ws = caller.workspace()?;
    // Run-level job variables change what the run executes (its command, image, function,
    // endpoint): that is authoring, not starting (issue 19 item 5).
    if !request.job_variables.is_empty() {
        caller.require(
            Scope::RunsOverride,
            "a run with `job_variables` overrides what its deployment runs; without them, \
             `runs:create` is enough",
        )?;
    }
    let deployment = state.store.deployment(ws.id, &id).await?;
    let retry = retry_override!(request);
    retry.apply(&deployment.retry).map_err(invalid_setting)?;
    let tags = checked_tags(request.tags.take())?.unwrap_or_default();
    check_document_size("job_variables", &request.job_variables)?;
    check_document_size("parameters", &request.parameters)?;
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err(ApiError::unprocessable(
                "idempotency_key",
                "must be 1–200 characters",
            ));
        }
    }
    let (_, provider_error, pool) = render_for(&state, &deployment, &request.job_variables).await?;
    if let Some(e) = provider_error {
        return Err(e);
    }
    let (run, created) = state
        .store
        .create_run(
            &deployment,
            NewRun {
                scheduled_time: request.scheduled_time,
                parameters: request.parameters,
                job_variables: request.job_variables,
                idempotency_key: request.idempotency_key,
                retry,
                tags,
            },
        )
        .await?;
    note.target("flow_run", run.id);
    note.detail(json!({"deployment": deployment.name, "created": created}));
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(run_out(&run, &secret_variables(&pool))),
    ))
}

async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
) -> ApiResult<Json<Vec<FlowRun>>> {
    let ws = caller.workspace()?;
    // `state` and `tag` may repeat (issue 13): read apart from the typed parameters.
    let repeated = super::run_filters::split(uri.query())?;
    let Query(q) = Query::<RunQuery>::from_uri(&repeated.rest)?;
    let deployment_id = match q.deployment.as_deref() {
        Some(d) if !d.is_empty() => Some(state.store.deployment(ws.id, d).await?.id),
        _ => None,
    };
    if let Some(l) = q.limit {
        if !(1..=1000).contains(&l) {
            return Err(ApiError::unprocessable(
                "limit",
                "must be between 1 and 1000",
            ));
        }
    }
    let filter = RunFilter {
        state: None,
        work_pool: q.work_pool.filter(|p| !p.is_empty()),
        deployment_id,
        limit: q.limit,
        cursor: q.cursor,
        states: repeated.states,
        tags: repeated.tags,
        since: repeated.since,
        until: repeated.until,
    };
    let secrets = secret_variables_by_pool(&state, ws.id).await?;
    Ok(Json(
        state
            .store
            .list_runs(ws.id, &filter)
            .await?
            .iter()
            .map(|r| run_out(r, secrets_in(&secrets, &r.work_pool_id)))
            .collect(),
    ))
}

async fn run_in_ws(state: &AppState, caller: &Caller, id: &str) -> ApiResult<FlowRun> {
    let ws = caller.workspace()?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("flow run", id))?;
    Ok(state.store.run_in(ws.id, id).await?)
}

async fn get_run(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<FlowRunWithHistory>> {
    let run = run_in_ws(&state, &caller, &id).await?;
    let state_history = state.store.state_history(run.id).await?;
    Ok(Json(FlowRunWithHistory {
        run: run_json(&state, &run).await,
        state_history,
    }))
}

async fn run_states(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Vec<HistoryEntry>>> {
    let run = run_in_ws(&state, &caller, &id).await?;
    Ok(Json(state.store.state_history(run.id).await?))
}

async fn run_logs(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<LogLine>>> {
    let run = run_in_ws(&state, &caller, &id).await?;
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_LOG_WAIT_SECONDS {
        return Err(ApiError::unprocessable(
            "wait",
            format!("at most {MAX_LOG_WAIT_SECONDS} seconds"),
        ));
    }
    let limit = q.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::unprocessable("limit", "between 1 and 10000"));
    }
    let after = q.after.filter(|a| !a.is_empty());
    if after.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(ApiError::unprocessable(
            "after",
            "a log line id (at most 64 characters)",
        ));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut run = run;
    loop {
        let lines = state
            .store
            .logs_after(run.id, after.as_deref(), limit)
            .await?;
        if !lines.is_empty()
            || run.state.state_type.is_terminal()
            || std::time::Instant::now() >= deadline
        {
            return Ok(Json(lines));
        }
        // Lines come in batches from the controller's log writer; a short sleep is cheap and
        // needs no notification path from the log writer to the API.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        run = state.store.run(run.id).await?;
    }
}

/// Cancels a run: not yet submitted → CANCELLED at once; submitted → CANCELLING (the controller
/// stops the infrastructure, then records CANCELLED).
async fn cancel_run(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<FlowRun>> {
    let mut run = run_in_ws(&state, &caller, &id).await?;
    for _ in 0..10 {
        let current = run.state.state_type;
        if current == StateType::Cancelling {
            return Ok(Json(run_json(&state, &run).await));
        }
        if current.is_terminal() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the run is already {current}; there is nothing to cancel"),
            ));
        }
        let to = match current {
            StateType::Scheduled | StateType::Paused => StateType::Cancelled,
            StateType::Pending if run.infrastructure_id.is_none() => StateType::Cancelled,
            _ => StateType::Cancelling,
        };
        let proposal = Proposal::new(to).with_message("cancelled by request");
        let guard = TransitionGuard {
            expected: Some(current),
            lease_owner: None,
            attempt: None,
        };
        match state.store.propose_state(run.id, proposal, guard).await? {
            TransitionOutcome::Accepted(r) | TransitionOutcome::Duplicate(r) => {
                return Ok(Json(run_json(&state, &r).await))
            }
            TransitionOutcome::Rejected { run: r, .. } => run = r,
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "the run keeps changing state; retry",
    ))
}
