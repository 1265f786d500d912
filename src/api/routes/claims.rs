//! The controller protocol over the API, for executors that run outside pushpool (the built-in
//! controller talks to the store directly): claim due runs of a pool, then report their states.
//! This is all the `controller` role may do.
//!
//! A claim leases runs to `api:<principal id>:<controller_id>`, so one principal can never
//! write to runs another holds; every later report is checked against that lease. A claim call
//! also renews the leases the controller already holds, so calling it at least every
//! `lease_seconds / 2` (with `limit: 0` when it wants nothing new) keeps its runs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::table::{handler, ws, Route};
use super::super::validate::check_name;
use super::super::views::{run_out, secret_variables};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, WhenChanged},
    Body, Caller, Json,
};
use super::jobs::{proposal_answer, ProposalAnswer, ProposalStatus};
use crate::access::Scope;
use crate::job::{self, RunFacts};
use crate::model::FlowRun;
use crate::state::{Proposal, StateType};
use crate::store::{PoolSelector, TransitionGuard};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/work_pools/{name}/claim"), handler!(claim))
        .summary("Controller: renew this controller's leases and claim due runs of the pool")
        .access(Access::Workspace(Scope::RunsClaim))
        .audit("flow_run.claim", WhenChanged)
        .body::<ClaimRequest>()
        .ok::<ClaimAnswer>(),
    Route::post(ws!("/flow_runs/{id}/set_state"), handler!(set_state))
        .summary("Controller: report the state of a run this controller claimed")
        .access(Access::Workspace(Scope::RunsReport))
        .audit("flow_run.set_state", Always)
        .body::<SetState>()
        .ok::<ProposalAnswer>()
        .errors(&[409]),
];

/// What a claim call handed to the controller.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ClaimAnswer {
    /// The caller's controller id.
    pub controller_id: String,
    /// The lease length granted.
    pub lease_seconds: u64,
    /// How many leases this controller already held were renewed.
    pub renewed: u64,
    /// The runs claimed now.
    pub runs: Vec<ClaimedRun>,
}

/// One claimed run: submit its job configuration with its run token.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ClaimedRun {
    /// The run (secret variables masked, as everywhere).
    pub flow_run: FlowRun,
    /// The rendered job configuration in full; `null` when it could not be rendered.
    pub job_configuration: Value,
    /// The run's job token (`PUSHPOOL_RUN_TOKEN`).
    pub run_token: String,
    /// Why the job configuration could not be rendered.
    pub error: Option<String>,
}

const MAX_CLAIM: usize = 100;
const DEFAULT_CLAIM: usize = 10;
const DEFAULT_LEASE_SECONDS: u64 = 30;

/// A claim: renew this controller's leases, and claim up to `limit` due runs.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The calling controller's id (a name); leases are held per controller.
    controller_id: String,
    /// How many due runs to claim now, 0–100 (default 10; 0 only renews the leases).
    #[serde(default)]
    #[schemars(range(max = 100))]
    limit: Option<usize>,
    /// Lease length, 5–3600 seconds (default 30).
    #[serde(default)]
    #[schemars(range(min = 5, max = 3600))]
    lease_seconds: Option<u64>,
}

fn lease_owner(caller: &Caller, controller_id: &str) -> ApiResult<String> {
    check_name("controller_id", controller_id)?;
    Ok(format!("api:{}:{controller_id}", caller.principal()?.id))
}

/// `POST …/work_pools/{name}/claim`: renews this controller's leases and claims up to `limit`
/// due runs of the pool, each with its rendered job configuration and run token.
async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, pool_name)): Path<(String, String)>,
    Body(body): Body<ClaimRequest>,
) -> ApiResult<Json<ClaimAnswer>> {
    let ws = caller.workspace()?;
    let owner = lease_owner(&caller, &body.controller_id)?;
    let limit = body.limit.unwrap_or(DEFAULT_CLAIM);
    if limit > MAX_CLAIM {
        return Err(ApiError::unprocessable(
            "limit",
            format!("must be between 0 and {MAX_CLAIM}"),
        ));
    }
    let lease_seconds = body.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS);
    if !(5..=3600).contains(&lease_seconds) {
        return Err(ApiError::unprocessable(
            "lease_seconds",
            "must be between 5 and 3600",
        ));
    }
    let lease = Duration::from_secs(lease_seconds);
    let pool = state.store.pool(ws.id, &pool_name).await?;
    let renewed = state.store.renew_leases(&owner, lease).await?;
    let claimed = state
        .store
        .claim_due(
            &PoolSelector::Ids(vec![pool.id]),
            Utc::now(),
            limit,
            &owner,
            lease,
        )
        .await?;
    // Template work runs off the async runtime, within the time budget (issue 19 item 6).
    let template = {
        let pool = pool.clone();
        job::bounded(move || job::parse_template(&pool).map(Arc::new))
            .await
            .unwrap_or_else(|over| Err(over.into()))
    };
    let grants = state.store.workspace_grants(ws.id).await?;
    let provider = state.registry.get(&pool.pool_type);
    let mut runs = Vec::with_capacity(claimed.len());
    for run in claimed {
        let token = state.tokens.issue(run.id, run.attempt);
        let rendered = match (
            &template,
            state
                .store
                .deployment(ws.id, &run.deployment_id.to_string())
                .await,
        ) {
            (Ok(template), Ok(deployment)) => {
                let (template, pool, run) = (template.clone(), pool.clone(), run.clone());
                let (api_url, token) = (state.api_url.clone(), token.clone());
                job::bounded(move || {
                    let facts = RunFacts::of_run(&run, &api_url, &token);
                    job::render(&template, &pool, &deployment, &facts)
                })
                .await
                .unwrap_or_else(|over| Err(over.into()))
                .and_then(|rendered| {
                    // Held to the workspace's grants as the built-in controller is.
                    if let Some(p) = &provider {
                        job::check_identity(
                            p.as_ref(),
                            &rendered,
                            &ws.name,
                            &grants,
                            &state.allowed_endpoints,
                        )?;
                    }
                    Ok(rendered)
                })
                .map_err(|e| e.to_string())
            }
            (Err(e), _) => Err(e.to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
        let (job, error) = match rendered {
            Ok(job) => (job, None),
            Err(e) => (Value::Null, Some(e)),
        };
        // The controller gets the job configuration in full (it must submit it); the run
        // itself is shown as everywhere else.
        runs.push(ClaimedRun {
            flow_run: run_out(&run, &secret_variables(&pool)),
            job_configuration: job,
            run_token: token,
            error,
        });
    }
    if !runs.is_empty() {
        note.changed();
        note.target("work_pool", &pool.name);
        note.detail(json!({"controller_id": body.controller_id, "claimed": runs.len()}));
    }
    Ok(Json(ClaimAnswer {
        controller_id: body.controller_id,
        lease_seconds,
        renewed,
        runs,
    }))
}

/// A state proposal for a run this controller holds the lease of.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetState {
    /// The calling controller's id (a name); leases are held per controller.
    controller_id: String,
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
    /// With type PENDING: the provider's id of the submitted job.
    #[serde(default)]
    infrastructure_id: Option<String>,
    /// The attempt the controller works on: refused (REJECT, or 409 for `infrastructure_id`)
    /// once the run was retried into a later attempt. Recommended with retries (docs/retries.md).
    #[serde(default)]
    attempt: Option<i64>,
}

/// `POST …/flow_runs/{id}/set_state`: a state proposal (or, with `infrastructure_id` and type
/// PENDING, the infrastructure id) for a run this controller holds the lease of.
async fn set_state(
    State(state): State<AppState>,
    caller: Caller,
    Path((_ws, id)): Path<(String, String)>,
    Body(body): Body<SetState>,
) -> ApiResult<Json<ProposalAnswer>> {
    let ws = caller.workspace()?;
    let owner = lease_owner(&caller, &body.controller_id)?;
    for (field, value, max) in [
        ("name", &body.name, 100),
        ("message", &body.message, 4000),
        ("transition_id", &body.transition_id, 200),
        ("infrastructure_id", &body.infrastructure_id, 1000),
    ] {
        if value.as_ref().is_some_and(|v| v.chars().count() > max) {
            return Err(ApiError::unprocessable(
                field,
                format!("at most {max} characters"),
            ));
        }
    }
    let run_id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("flow run", &id))?;
    let run = state.store.run_in(ws.id, run_id).await?;
    if run.lease_owner.as_deref() != Some(owner.as_str()) {
        return Err(ApiError::conflict(
            "controller_id",
            format!(
                "controller `{}` does not hold the lease of this run (claim it first; a lease runs out when claims stop)",
                body.controller_id
            ),
        ));
    }
    if let Some(infra) = &body.infrastructure_id {
        if body.state_type != StateType::Pending {
            return Err(ApiError::unprocessable(
                "infrastructure_id",
                "is reported with type PENDING, before RUNNING",
            ));
        }
        if !state
            .store
            .set_attempt_infrastructure(run.id, body.attempt, &owner, infra)
            .await?
        {
            return Err(ApiError::conflict(
                "infrastructure_id",
                "the run is no longer PENDING under this controller's lease (or is in another attempt)",
            ));
        }
        let run = state.store.run(run.id).await?;
        return Ok(Json(ProposalAnswer {
            status: ProposalStatus::Accept,
            reason: None,
            state: run.state,
        }));
    }
    let mut proposal = Proposal::new(body.state_type);
    proposal.name = body.name;
    proposal.message = body.message;
    if let Some(t) = body.transition_id {
        proposal.transition_id = t;
    }
    let guard = TransitionGuard {
        expected: None,
        lease_owner: Some(owner),
        attempt: body.attempt,
    };
    let outcome = state.store.propose_state(run.id, proposal, guard).await?;
    Ok(Json(proposal_answer(&outcome)))
}
