//! The job side: a run's own job token reads its run and reports state, heartbeats and logs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::guard::Actor;
use super::super::table::{handler, Route};
use super::super::validate::check_text;
use super::super::views::run_json;
use super::super::{
    Access, ApiError, ApiResult, AppState,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, MAX_TEXT_CHARS,
};
use crate::model::{now_micros, FlowRun, State as RunState};
use crate::state::{Proposal, StateType};
use crate::store::{TransitionGuard, TransitionOutcome};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::get("/api/runs/{id}", handler!(job_get_run))
        .summary("Job side: read the own run (e.g. to see a cancellation)")
        .access(Access::RunToken)
        .audit("flow_run.read", DeniedOnly)
        .ok::<FlowRun>(),
    Route::post("/api/runs/{id}/state", handler!(job_report_state))
        .summary("Job side: report RUNNING or a terminal state")
        .access(Access::RunToken)
        .audit("flow_run.report_state", Always)
        .body::<JobStateReport>()
        .ok::<ProposalAnswer>(),
    Route::post("/api/runs/{id}/heartbeat", handler!(job_heartbeat))
        .summary("Job side: heartbeat")
        .access(Access::RunToken)
        .audit("flow_run.heartbeat", DeniedOnly)
        .no_content(),
    Route::post("/api/runs/{id}/logs", handler!(job_logs))
        .summary("Job side: append log lines")
        .access(Access::RunToken)
        .audit("flow_run.append_logs", DeniedOnly)
        .body::<JobLogs>()
        .no_content(),
];

/// The stream a job's log line came from.
#[derive(Debug, JsonSchema)]
#[schemars(rename_all = "lowercase")]
#[allow(dead_code)] // describes the accepted strings; the handler reads them as text
enum LogStream {
    Stdout,
    Stderr,
}

/// The verdict on a state proposal.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProposalStatus {
    /// The run is now in the proposed state.
    Accept,
    /// The same transition id was accepted before; nothing changed.
    Duplicate,
    /// Not a legal transition from the run's state (see `reason`).
    Reject,
}

/// The answer to a state proposal.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProposalAnswer {
    /// The verdict.
    pub status: ProposalStatus,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The run's state after the proposal.
    pub state: RunState,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// A state the job reports for its run.
pub struct JobStateReport {
    /// The proposed state type.
    #[serde(rename = "type")]
    state_type: StateType,
    /// Sub-state name (at most 100 characters).
    #[serde(default)]
    name: Option<String>,
    /// Why (at most 4000 characters).
    #[serde(default)]
    message: Option<String>,
    /// Idempotency id of the proposal; a repeated one is a no-op.
    #[serde(default)]
    transition_id: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Log lines of the job (at most 1000 per request).
pub struct JobLogs {
    /// The lines, at most 1000.
    lines: Vec<JobLogLine>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// One log line.
pub struct JobLogLine {
    /// The text (at most 65536 bytes).
    line: String,
    /// `stdout` (the default) or `stderr`.
    #[serde(default)]
    #[schemars(with = "Option<LogStream>")]
    stream: Option<String>,
}

/// `{status: ACCEPT|DUPLICATE|REJECT, reason, state}`: the answer to a state report.
pub(crate) fn proposal_answer(outcome: &TransitionOutcome) -> ProposalAnswer {
    let (status, reason) = match outcome {
        TransitionOutcome::Accepted(_) => (ProposalStatus::Accept, None),
        TransitionOutcome::Duplicate(_) => (ProposalStatus::Duplicate, None),
        TransitionOutcome::Rejected { reason, .. } => {
            (ProposalStatus::Reject, Some(reason.to_string()))
        }
    };
    ProposalAnswer {
        status,
        reason,
        state: outcome.run().state.clone(),
    }
}

/// The run of a run-token route (the guard checked that the token is this run's).
async fn own_run(state: &AppState, caller: &Caller, id: &str) -> ApiResult<FlowRun> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("flow run", id))?;
    match &caller.actor {
        Actor::RunToken { run_id, .. } if *run_id == id => Ok(state.store.run(id).await?),
        _ => Err(ApiError::forbidden("this run token belongs to another run")),
    }
}

async fn job_get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<Json<FlowRun>> {
    let run = own_run(&state, &caller, &id).await?;
    Ok(Json(run_json(&state, &run).await))
}

async fn job_report_state(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    Body(body): Body<JobStateReport>,
) -> ApiResult<Json<ProposalAnswer>> {
    let run = own_run(&state, &caller, &id).await?;
    if matches!(
        body.state_type,
        StateType::Pending | StateType::Scheduled | StateType::Cancelling
    ) {
        return Err(ApiError::unprocessable(
            "type",
            "a job may report RUNNING, COMPLETED, FAILED, CRASHED, CANCELLED or PAUSED",
        ));
    }
    check_text("name", body.name.as_deref(), 100)?;
    check_text("message", body.message.as_deref(), MAX_TEXT_CHARS)?;
    check_text("transition_id", body.transition_id.as_deref(), 200)?;
    let mut proposal = Proposal::new(body.state_type);
    proposal.name = body.name;
    proposal.message = body.message;
    if let Some(t) = body.transition_id {
        proposal.transition_id = t;
    }
    let outcome = state
        .store
        .propose_state(run.id, proposal, TransitionGuard::default())
        .await?;
    Ok(Json(proposal_answer(&outcome)))
}

async fn job_heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let run = own_run(&state, &caller, &id).await?;
    state.store.heartbeat(run.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Header of a log report's answer: how many of the lines the run kept (fewer than sent once
/// the run's log quota is reached).
pub const LINES_ACCEPTED_HEADER: &str = "pushpool-lines-accepted";

async fn job_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    Body(body): Body<JobLogs>,
) -> ApiResult<impl IntoResponse> {
    let run = own_run(&state, &caller, &id).await?;
    if body.lines.len() > 1000 {
        return Err(ApiError::unprocessable(
            "lines",
            "at most 1000 lines per request",
        ));
    }
    let now = now_micros();
    let mut lines = Vec::with_capacity(body.lines.len());
    for (i, l) in body.lines.into_iter().enumerate() {
        if l.line.len() > 65_536 {
            return Err(ApiError::unprocessable(
                &format!("lines[{i}].line"),
                "at most 65536 bytes per line",
            ));
        }
        let stream = match l.stream.as_deref() {
            None | Some("stdout") => "stdout",
            Some("stderr") => "stderr",
            Some(_) => {
                return Err(ApiError::unprocessable(
                    &format!("lines[{i}].stream"),
                    "must be `stdout` or `stderr`",
                ))
            }
        };
        lines.push((now, stream.to_string(), l.line));
    }
    // Past the run's log quota lines are dropped; the job learns how many were kept.
    let accepted = state.store.append_logs(run.id, &lines).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(LINES_ACCEPTED_HEADER, accepted.to_string())],
    ))
}
