//! Objects as the API shows them: secret job variables, parameters and template defaults masked.

use std::collections::HashMap;

use uuid::Uuid;

use super::{ApiResult, AppState};
use crate::model::{Deployment, FlowRun, WorkPool};
use crate::redact;

/// A pool as the API shows it: secret defaults and literals of its template masked.
pub(crate) fn pool_out(pool: &WorkPool) -> WorkPool {
    let mut out = pool.clone();
    redact::mask_template(&mut out.base_job_template);
    if pool.pool_type == "aws-lambda:push" {
        out.aws_external_id = Some(pushpool_provider::workspace_external_id(
            &pool.workspace_id.to_string(),
        ));
    }
    out
}

/// The variables a pool's schema marks secret.
pub(crate) fn secret_variables(pool: &WorkPool) -> Vec<String> {
    redact::schema_secret_variables(&pool.base_job_template["variables"])
}

/// A deployment as the API shows it: secret job variables and parameters masked.
pub(crate) fn deployment_out(d: &Deployment, secret_vars: &[String]) -> Deployment {
    let mut out = d.clone();
    redact::mask_map(&mut out.job_variables, secret_vars);
    redact::mask_map(&mut out.parameters, &[]);
    out
}

/// A flow run as the API shows it: secret job variables and parameters masked.
pub(crate) fn run_out(r: &FlowRun, secret_vars: &[String]) -> FlowRun {
    let mut out = r.clone();
    redact::mask_map(&mut out.job_variables, secret_vars);
    redact::mask_map(&mut out.parameters, &[]);
    out
}

/// The secret variables of each pool of a workspace, by pool id.
pub(crate) async fn secret_variables_by_pool(
    state: &AppState,
    workspace_id: Uuid,
) -> ApiResult<HashMap<Uuid, Vec<String>>> {
    Ok(state
        .store
        .list_pools(workspace_id)
        .await?
        .iter()
        .map(|p| (p.id, secret_variables(p)))
        .collect())
}

async fn secret_variables_of_pool(state: &AppState, pool_id: Uuid) -> Vec<String> {
    match state.store.pool_by_id(pool_id).await {
        Ok(p) => secret_variables(&p),
        Err(_) => vec![],
    }
}

/// The secret variables of one pool in a [`secret_variables_by_pool`] map.
pub(crate) fn secrets_in<'a>(
    by_pool: &'a HashMap<Uuid, Vec<String>>,
    pool_id: &Uuid,
) -> &'a [String] {
    by_pool.get(pool_id).map(Vec::as_slice).unwrap_or(&[])
}

/// One run as the API shows it, its pool's secret variables masked.
pub(crate) async fn run_json(state: &AppState, run: &FlowRun) -> FlowRun {
    // A FAILED/CRASHED run shows why (docs/error-summaries.md); the summary is its own row.
    let run = match state.store.with_error_summary(run.clone()).await {
        Ok(with) => with,
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "could not read the error summary");
            run.clone()
        }
    };
    run_out(
        &run,
        &secret_variables_of_pool(state, run.work_pool_id).await,
    )
}

/// One deployment as the API shows it, its pool's secret variables masked.
pub(crate) async fn deployment_json(state: &AppState, d: &Deployment) -> Deployment {
    deployment_out(d, &secret_variables_of_pool(state, d.work_pool_id).await)
}
