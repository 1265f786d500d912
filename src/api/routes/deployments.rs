//! Deployments: a pool, a queue, and job-variable and parameter overrides for their runs; the
//! preview of the job configuration a run would get.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::super::table::{handler, ws, Route};
use super::super::validate::{
    check_document_size, check_limit, check_name, checked_tags, double_option, invalid_setting,
};
use super::super::views::{
    deployment_json, deployment_out, secret_variables, secret_variables_by_pool, secrets_in,
};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, OptionalBody,
};
use super::pools::{check_identity, prefix_field};
use crate::access::Scope;
use crate::job::{self, RunFacts};
use crate::model::{Deployment, WorkPool};
use crate::redact;
use crate::state::{RetryDelay, RetryOverride, RetryPolicy, StateType};
use crate::store::{DeploymentPatch, NewDeployment, RunDefaults};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/deployments"), handler!(create_deployment))
        .summary("Create a deployment")
        .access(Access::Workspace(Scope::DeploymentsWrite))
        .audit("deployment.create", Always)
        .body::<CreateDeployment>()
        .created::<Deployment>()
        .errors(&[404, 409]),
    Route::get(ws!("/deployments"), handler!(list_deployments))
        .summary("List deployments")
        .access(Access::Workspace(Scope::DeploymentsRead))
        .audit("deployment.list", DeniedOnly)
        .ok::<Vec<Deployment>>(),
    Route::get(ws!("/deployments/{id_or_name}"), handler!(get_deployment))
        .summary("Get a deployment")
        .access(Access::Workspace(Scope::DeploymentsRead))
        .audit("deployment.read", DeniedOnly)
        .ok::<Deployment>(),
    Route::patch(
        ws!("/deployments/{id_or_name}"),
        handler!(update_deployment),
    )
    .summary("Change a deployment")
    .access(Access::Workspace(Scope::DeploymentsWrite))
    .audit("deployment.update", Always)
    .body::<UpdateDeployment>()
    .ok::<Deployment>()
    .errors(&[409]),
    Route::delete(
        ws!("/deployments/{id_or_name}"),
        handler!(delete_deployment),
    )
    .summary("Delete a deployment")
    .access(Access::Workspace(Scope::DeploymentsWrite))
    .audit("deployment.delete", Always)
    .no_content()
    .errors(&[409]),
    Route::post(ws!("/deployments/{id_or_name}/preview"), handler!(preview))
        .summary("Render the job configuration a run would get")
        .access(Access::Workspace(Scope::DeploymentsRead))
        .audit("deployment.preview", Always)
        .optional_body::<PreviewRequest>()
        .ok::<Preview>(),
];

/// The job configuration a run would get, and the provider's objection to it if any.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Preview {
    /// The rendered job configuration, secrets masked.
    pub job_configuration: Value,
    /// Why the pool's provider could not use it (a run would be refused with 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_error: Option<ProviderObjection>,
}

/// A provider's objection to a job configuration.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProviderObjection {
    /// The JSON path at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// A new deployment.
pub struct CreateDeployment {
    /// Name: 1–100 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
    name: String,
    /// The pool's name.
    work_pool: String,
    /// The queue's name (default `default`).
    #[serde(default)]
    work_queue: Option<String>,
    /// Overrides of the pool template's variables (not restricted by the pool's
    /// `overridable_variables`, which bounds run-level overrides only).
    #[serde(default)]
    job_variables: Map<String, Value>,
    /// Flow parameters.
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Most active runs at once (0 or more); `null` for no limit.
    #[serde(default)]
    concurrency_limit: Option<i64>,
    /// A paused object's runs are not claimed.
    #[serde(default)]
    paused: bool,
    // Retries and tags (issue 13; docs/retries.md).
    /// How many times a failed run is tried again (0–100; default 0).
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
    /// Tags (each 1–100 characters, no commas; at most 50); its runs inherit them.
    #[serde(default)]
    tags: Option<Vec<String>>,

    // Schedules (issue 13).
    /// Schedules to add with the deployment (see `…/deployments/{id_or_name}/schedules`).
    #[serde(default)]
    schedules: Vec<super::schedules::ScheduleInput>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Changes to a deployment; absent fields stay.
pub struct UpdateDeployment {
    /// Overrides of the pool template's variables (not restricted by the pool's
    /// `overridable_variables`, which bounds run-level overrides only).
    #[serde(default)]
    job_variables: Option<Map<String, Value>>,
    /// Flow parameters.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Most active runs at once (0 or more); `null` for no limit.
    #[serde(default, deserialize_with = "double_option")]
    concurrency_limit: Option<Option<i64>>,
    /// A paused object's runs are not claimed.
    #[serde(default)]
    paused: Option<bool>,
    /// The queue's name (default `default`).
    #[serde(default)]
    work_queue: Option<String>,
    // Retries and tags (issue 13; docs/retries.md).
    /// How many times a failed run is tried again (0–100; default 0).
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
    /// Replaces the tags (each 1–100 characters, no commas; at most 50); runs made later inherit them.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The retry fields of a create or change request (issue 13).
macro_rules! retry_override {
    ($body:expr) => {
        RetryOverride {
            retries: $body.retries,
            retry_delay_seconds: $body.retry_delay_seconds.take(),
            retry_jitter_factor: $body.retry_jitter_factor,
            retry_on: $body.retry_on.take(),
        }
    };
}
pub(crate) use retry_override;

#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Run-level job variables to preview with.
pub struct PreviewRequest {
    /// Run-level overrides of the pool template's variables, checked as a run's would be
    /// (also against the pool's `overridable_variables`).
    #[serde(default)]
    job_variables: Map<String, Value>,
}

async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(mut body): Body<CreateDeployment>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let ws = caller.workspace()?;
    let defaults = RunDefaults {
        retry: retry_override!(body)
            .apply(&RetryPolicy::default())
            .map_err(invalid_setting)?,
        tags: checked_tags(body.tags.take())?.unwrap_or_default(),
    };
    check_name("name", &body.name)?;
    check_limit(body.concurrency_limit)?;
    check_document_size("job_variables", &body.job_variables)?;
    check_document_size("parameters", &body.parameters)?;
    let pool = state.store.pool(ws.id, &body.work_pool).await?;
    let job_variables = body.job_variables;
    let (checked, job_variables, pool) = job::bounded(move || {
        let checked = job::parse_template(&pool).map(|template| {
            template
                .validate_deployment_overrides(&job_variables)
                .map_err(|e| prefix_field(e, "job_variables"))
                .map(|()| template)
        });
        (checked, job_variables, pool)
    })
    .await
    .map_err(over_budget)?;
    let template = checked??;
    check_identity(
        &state,
        &ws,
        &pool.pool_type,
        &template,
        Some(&job_variables),
        "",
    )
    .await?;
    // Schedules (issue 13): all checked before anything is created.
    let mut schedules = Vec::with_capacity(body.schedules.len());
    for (i, input) in body.schedules.into_iter().enumerate() {
        schedules
            .push(super::schedules::new_schedule(&pool, input, &format!("schedules[{i}].")).await?);
    }
    let d = state
        .store
        .create_deployment_with(
            ws.id,
            NewDeployment {
                name: body.name,
                work_pool: body.work_pool,
                work_queue: body.work_queue,
                job_variables,
                parameters: body.parameters,
                concurrency_limit: body.concurrency_limit,
                paused: body.paused,
            },
            defaults,
        )
        .await?;
    note.target("deployment", &d.name);
    for (i, new) in schedules.into_iter().enumerate() {
        state
            .store
            .create_schedule(&d, new)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Invalid { field, message } => {
                    ApiError::unprocessable(&format!("schedules[{i}].{field}"), message)
                }
                other => other.into(),
            })?;
    }
    Ok((
        StatusCode::CREATED,
        Json(deployment_out(&d, &secret_variables(&pool))),
    ))
}

async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Deployment>>> {
    let ws = caller.workspace()?;
    let secrets = secret_variables_by_pool(&state, ws.id).await?;
    Ok(Json(
        state
            .store
            .list_deployments(ws.id)
            .await?
            .iter()
            .map(|d| deployment_out(d, secrets_in(&secrets, &d.work_pool_id)))
            .collect(),
    ))
}

async fn get_deployment(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Deployment>> {
    let ws = caller.workspace()?;
    let d = state.store.deployment(ws.id, &id).await?;
    Ok(Json(deployment_json(&state, &d).await))
}

async fn update_deployment(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    Body(mut body): Body<UpdateDeployment>,
) -> ApiResult<Json<Deployment>> {
    let ws = caller.workspace()?;
    let current = state.store.deployment(ws.id, &id).await?;
    let retry = retry_override!(body);
    let retry = match retry.is_empty() {
        true => None,
        false => Some(retry.apply(&current.retry).map_err(invalid_setting)?),
    };
    let tags = checked_tags(body.tags.take())?;
    if let Some(Some(limit)) = body.concurrency_limit {
        check_limit(Some(limit))?;
    }
    if let Some(v) = &body.job_variables {
        check_document_size("job_variables", v)?;
    }
    if let Some(p) = &body.parameters {
        check_document_size("parameters", p)?;
    }
    // A deployment read from the API and written back keeps its masked secrets; the values
    // put back never appear in a refusal.
    let mut restored = vec![];
    if let Some(vars) = body.job_variables.as_mut() {
        redact::restore_map_collecting(vars, &current.job_variables, &mut restored);
    }
    if let Some(params) = body.parameters.as_mut() {
        redact::restore_map_collecting(params, &current.parameters, &mut restored);
    }
    if let Some(vars) = body.job_variables.take() {
        let pool = state.store.pool_by_id(current.work_pool_id).await?;
        let pool_type = pool.pool_type.clone();
        let (checked, vars) = job::bounded(move || {
            let checked = job::parse_template(&pool).map(|template| {
                template
                    .validate_deployment_overrides(&vars)
                    .map_err(|e| prefix_field(e, "job_variables"))
                    .map(|()| template)
            });
            (checked, vars)
        })
        .await
        .map_err(over_budget)?;
        let template = checked?.map_err(|e| e.scrubbed(&restored))?;
        check_identity(&state, &ws, &pool_type, &template, Some(&vars), "")
            .await
            .map_err(|e| e.scrubbed(&restored))?;
        body.job_variables = Some(vars);
    }
    let patch = DeploymentPatch {
        job_variables: body.job_variables,
        parameters: body.parameters,
        concurrency_limit: body.concurrency_limit,
        paused: body.paused,
        work_queue: body.work_queue,
        retry,
        tags,
    };
    let d = state.store.update_deployment(ws.id, &id, patch).await?;
    Ok(Json(deployment_json(&state, &d).await))
}

async fn delete_deployment(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    state.store.delete_deployment(ws.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Renders what a run would get; `Err` for variable problems, plus the provider's verdict and
/// the pool it was rendered for.
pub(crate) async fn render_for(
    state: &AppState,
    deployment: &Deployment,
    run_variables: &Map<String, Value>,
) -> ApiResult<(Value, Option<ApiError>, WorkPool)> {
    let pool = state.store.pool_by_id(deployment.work_pool_id).await?;
    let provider = state.registry.get(&pool.pool_type);
    let (deployment, run_variables) = (deployment.clone(), run_variables.clone());
    let (rendered, provider_error, pool) = job::bounded(move || {
        let template = job::parse_template(&pool)?;
        let facts = RunFacts::preview(&deployment, &run_variables);
        let rendered = job::render(&template, &pool, &deployment, &facts)?;
        // Without a provider for its type here, the job is shown unchecked.
        let provider_error = provider.and_then(|p| job::validate(p.as_ref(), &rendered).err());
        Ok::<_, job::JobError>((rendered, provider_error, pool))
    })
    .await
    .map_err(over_budget)??;
    Ok((rendered, provider_error.map(ApiError::from), pool))
}

/// Template work past its time budget: a 422 on the job variables checked.
fn over_budget(over: job::OverBudget) -> ApiError {
    ApiError::from(job::JobError::from(over))
}

async fn preview(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    OptionalBody(request): OptionalBody<PreviewRequest>,
) -> ApiResult<Json<Preview>> {
    let ws = caller.workspace()?;
    let deployment = state.store.deployment(ws.id, &id).await?;
    check_document_size("job_variables", &request.job_variables)?;
    let (mut rendered, provider_error, pool) =
        render_for(&state, &deployment, &request.job_variables).await?;
    // Secret values never leave the server, whatever name the template renders them under.
    let secrets = redact::render_secrets(
        &pool.base_job_template,
        &[&deployment.job_variables, &request.job_variables],
    );
    redact::mask_rendered(&mut rendered, &secrets);
    Ok(Json(Preview {
        job_configuration: rendered,
        provider_error: provider_error.map(|e| ProviderObjection {
            field: e.field,
            message: e.message,
        }),
    }))
}
