//! Work pools: a provider type plus the base job template its runs are rendered from.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::super::table::{handler, ws, Route};
use super::super::validate::{
    check_document_size, check_limit, check_name, check_rate, check_text, double_option,
};
use super::super::views::{self, pool_out};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, MAX_TEXT_CHARS,
};
use crate::access::{shorten, Scope};
use crate::execution::PROCESS_POOL_TYPE;
use crate::job;
use crate::model::{BaseJobTemplateDoc, Deployment, WorkPool, Workspace};
use crate::redact;
use crate::store::{NewPool, PoolPatch};
use crate::template::{BaseJobTemplate, TemplateError};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/work_pools"), handler!(create_pool))
        .summary("Create a work pool")
        .access(Access::Workspace(Scope::PoolsWrite))
        .audit("work_pool.create", Always)
        .body::<CreatePool>()
        .created::<WorkPool>()
        .errors(&[409]),
    Route::get(ws!("/work_pools"), handler!(list_pools))
        .summary("List work pools")
        .access(Access::Workspace(Scope::PoolsRead))
        .audit("work_pool.list", DeniedOnly)
        .ok::<Vec<WorkPool>>(),
    Route::get(ws!("/work_pools/{name}"), handler!(get_pool))
        .summary("Get a work pool")
        .access(Access::Workspace(Scope::PoolsRead))
        .audit("work_pool.read", DeniedOnly)
        .ok::<WorkPool>(),
    Route::patch(ws!("/work_pools/{name}"), handler!(update_pool))
        .summary("Change a work pool (pause, limit, template)")
        .access(Access::Workspace(Scope::PoolsWrite))
        .audit("work_pool.update", Always)
        .body::<UpdatePool>()
        .ok::<WorkPool>()
        .errors(&[409]),
    Route::delete(ws!("/work_pools/{name}"), handler!(delete_pool))
        .summary("Delete a work pool")
        .access(Access::Workspace(Scope::PoolsWrite))
        .audit("work_pool.delete", Always)
        .no_content()
        .errors(&[409]),
];

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// A new work pool.
pub struct CreatePool {
    /// Name: 1–100 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
    name: String,
    /// Provider pool type (`GET /api/pool_types`), e.g. `process`.
    #[serde(rename = "type")]
    pool_type: String,
    /// Free text.
    #[serde(default)]
    description: Option<String>,
    /// `{"job_configuration": …, "variables": <JSON Schema>}`; default: the type's default template.
    #[serde(default)]
    #[schemars(with = "Option<BaseJobTemplateDoc>")]
    base_job_template: Option<Value>,
    /// Most active runs at once (0 or more); `null` for no limit.
    #[serde(default)]
    concurrency_limit: Option<i64>,
    /// A paused object's runs are not claimed.
    #[serde(default)]
    paused: bool,
    /// Most submissions per second per controller: 0.001 to 10000; `null` for no limit.
    #[serde(default)]
    #[schemars(range(min = 0.001, max = 10000.0))]
    submit_rate: Option<f64>,
    /// The job variables a run may override (run-level `job_variables`), each a property of the
    /// template's `variables`, once; `null` (default) for any, `[]` for none. Deployment-level
    /// job variables are not restricted by it.
    #[serde(default)]
    overridable_variables: Option<Vec<String>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Changes to a work pool; absent fields stay, `null` clears.
pub struct UpdatePool {
    /// Free text.
    #[serde(default, deserialize_with = "double_option")]
    description: Option<Option<String>>,
    /// `{"job_configuration": …, "variables": <JSON Schema>}`; default: the type's default template.
    #[serde(default)]
    #[schemars(with = "Option<BaseJobTemplateDoc>")]
    base_job_template: Option<Value>,
    /// Most active runs at once (0 or more); `null` for no limit.
    #[serde(default, deserialize_with = "double_option")]
    concurrency_limit: Option<Option<i64>>,
    /// A paused object's runs are not claimed.
    #[serde(default)]
    paused: Option<bool>,
    /// Most submissions per second per controller: 0.001 to 10000; `null` for no limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schemars(range(min = 0.001, max = 10000.0))]
    submit_rate: Option<Option<f64>>,
    /// The job variables a run may override (run-level `job_variables`), each a property of the
    /// template's `variables`, once; `null` for any, `[]` for none. Deployment-level job
    /// variables are not restricted by it.
    #[serde(default, deserialize_with = "double_option")]
    overridable_variables: Option<Option<Vec<String>>>,
}

async fn create_pool(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreatePool>,
) -> ApiResult<(StatusCode, Json<WorkPool>)> {
    let ws = caller.workspace()?;
    check_name("name", &body.name)?;
    check_limit(body.concurrency_limit)?;
    check_text("description", body.description.as_deref(), MAX_TEXT_CHARS)?;
    if let Some(t) = &body.base_job_template {
        check_document_size("base_job_template", t)?;
    }
    if state.registry.get(&body.pool_type).is_none() {
        return Err(unknown_type(&state, &body.pool_type));
    }
    check_rate(body.submit_rate)?;
    check_process_allowed(&state, &ws, &body.pool_type).await?;
    let template = parse_template(&state, &body.pool_type, body.base_job_template).await?;
    if let Some(names) = &body.overridable_variables {
        check_overridable(&template, names, true)?;
    }
    check_identity(
        &state,
        &ws,
        &body.pool_type,
        &template,
        None,
        "base_job_template.",
    )
    .await?;
    let pool = state
        .store
        .create_pool(
            ws.id,
            NewPool {
                name: body.name,
                pool_type: body.pool_type,
                description: body.description,
                base_job_template: template.to_value(),
                concurrency_limit: body.concurrency_limit,
                paused: body.paused,
                submit_rate: body.submit_rate,
                overridable_variables: body.overridable_variables,
            },
        )
        .await?;
    note.target("work_pool", &pool.name);
    Ok((StatusCode::CREATED, Json(pool_out(&pool))))
}

async fn list_pools(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<WorkPool>>> {
    let ws = caller.workspace()?;
    Ok(Json(
        state
            .store
            .list_pools(ws.id)
            .await?
            .iter()
            .map(pool_out)
            .collect(),
    ))
}

async fn get_pool(
    State(state): State<AppState>,
    Path((_ws, name)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<WorkPool>> {
    let ws = caller.workspace()?;
    Ok(Json(pool_out(&state.store.pool(ws.id, &name).await?)))
}

async fn update_pool(
    State(state): State<AppState>,
    Path((_ws, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<UpdatePool>,
) -> ApiResult<Json<WorkPool>> {
    let ws = caller.workspace()?;
    let pool = state.store.pool(ws.id, &name).await?;
    if let Some(Some(limit)) = body.concurrency_limit {
        check_limit(Some(limit))?;
    }
    if let Some(Some(d)) = &body.description {
        check_text("description", Some(d), MAX_TEXT_CHARS)?;
    }
    if let Some(t) = &body.base_job_template {
        check_document_size("base_job_template", t)?;
    }
    if body.base_job_template.is_some() {
        check_process_allowed(&state, &ws, &pool.pool_type).await?;
    }
    let parsed = match body.base_job_template {
        Some(mut t) => {
            // A template read from the API and written back keeps its masked secrets; the
            // values put back (and the deployments' secrets) never appear in a refusal.
            let mut secrets = vec![];
            redact::restore_collecting(&mut t, &pool.base_job_template, &mut secrets);
            let mut secret_variables = redact::schema_secret_variables(&t["variables"]);
            secret_variables.extend(views::secret_variables(&pool));
            let parsed = parse_template(&state, &pool.pool_type, Some(t))
                .await
                .map_err(|e| e.scrubbed(&secrets))?;
            check_identity(
                &state,
                &ws,
                &pool.pool_type,
                &parsed,
                None,
                "base_job_template.",
            )
            .await
            .map_err(|e| e.scrubbed(&secrets))?;
            // Every deployment of the pool must still fit the new template.
            let deployments: Vec<Deployment> = state
                .store
                .list_deployments(ws.id)
                .await?
                .into_iter()
                .filter(|d| d.work_pool_id == pool.id)
                .collect();
            let (parsed, misfit) = job::bounded(move || {
                let misfit = deployments.into_iter().find_map(|d| {
                    parsed
                        .validate_deployment_overrides(&d.job_variables)
                        .err()
                        .map(|e| (d, e))
                });
                (parsed, misfit)
            })
            .await
            .map_err(|over| ApiError::unprocessable("base_job_template", over.to_string()))?;
            if let Some((d, e)) = misfit {
                let variables = Value::Object(d.job_variables.clone());
                secrets.extend(redact::secret_strings(&variables, &secret_variables));
                return Err(ApiError::unprocessable(
                    "base_job_template",
                    format!(
                        "deployment `{}` would no longer fit this template: {}: {}",
                        d.name, e.field, e.message
                    ),
                )
                .scrubbed(&secrets));
            }
            Some(parsed)
        }
        None => None,
    };
    if let Some(rate) = body.submit_rate {
        check_rate(rate)?;
    }
    // The list in force after this change must name variables of the template in force.
    let list_given = body.overridable_variables.is_some();
    let names = match &body.overridable_variables {
        Some(given) => given.as_ref(),
        None => pool.overridable_variables.as_ref(),
    };
    if let Some(names) = names.filter(|_| list_given || parsed.is_some()) {
        match &parsed {
            Some(t) => check_overridable(t, names, list_given)?,
            None => check_overridable(&job::parse_template(&pool)?, names, list_given)?,
        }
    }
    let template = parsed.map(|t| t.to_value());
    let patch = PoolPatch {
        description: body.description,
        base_job_template: template,
        concurrency_limit: body.concurrency_limit,
        paused: body.paused,
        submit_rate: body.submit_rate,
        overridable_variables: body.overridable_variables,
    };
    Ok(Json(pool_out(
        &state.store.update_pool(ws.id, &name, patch).await?,
    )))
}

async fn delete_pool(
    State(state): State<AppState>,
    Path((_ws, name)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    state.store.delete_pool(ws.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Holds a pool's job configuration, as its defaults (and a deployment's job variables) render
/// it, to what the workspace is granted (docs/security.md, "Cloud identity"): 403 naming the
/// field otherwise. `prefix` roots the field (`base_job_template.` for pools).
pub(crate) async fn check_identity(
    state: &AppState,
    ws: &crate::model::Workspace,
    pool_type: &str,
    template: &BaseJobTemplate,
    job_variables: Option<&serde_json::Map<String, Value>>,
    prefix: &str,
) -> ApiResult<()> {
    let Some(provider) = state.registry.get(pool_type) else {
        return Ok(());
    };
    let mut values = template.defaults();
    if let Some(vars) = job_variables {
        crate::job::template::apply_overrides(&mut values, vars);
    }
    let rendered = template.render(&values, &serde_json::Map::new());
    let grants = state.store.workspace_grants(ws.id).await?;
    crate::job::check_identity(
        provider.as_ref(),
        &rendered,
        &ws.name,
        &grants,
        &state.allowed_endpoints,
    )
    .map_err(|e| {
        let field = format!("{prefix}{}", e.field());
        ApiError::from(e).field(field)
    })
}

/// Parses and checks a pool's template (the type's default when `None`) off the async runtime,
/// within [`job::TIME_BUDGET`].
pub(crate) async fn parse_template(
    state: &AppState,
    pool_type: &str,
    template: Option<Value>,
) -> ApiResult<BaseJobTemplate> {
    let value = match template {
        Some(t) => t,
        None => state
            .registry
            .get(pool_type)
            .map(|p| p.default_base_job_template())
            .ok_or_else(|| unknown_type(state, pool_type))?,
    };
    let parsed = job::bounded(move || BaseJobTemplate::parse(&value))
        .await
        .map_err(|over| ApiError::unprocessable("base_job_template", over.to_string()))?;
    let parsed = parsed.map_err(|e| {
        let field = if e.field.starts_with("base_job_template") {
            e.field.clone()
        } else {
            format!("base_job_template.{}", e.field)
        };
        ApiError::unprocessable(&field, e.message)
    })?;
    Ok(parsed)
}

/// Checks a pool's `overridable_variables` against its template: each name a property of the
/// `variables` schema, none twice. `given`: the list is in the request (else a new template is,
/// and the stored list must still fit it).
fn check_overridable(template: &BaseJobTemplate, names: &[String], given: bool) -> ApiResult<()> {
    // A set, not a scan of the earlier names: the list may be as long as the body allows.
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("overridable_variables[{i}]");
        let shown = shorten(name, 100);
        if !seen.insert(name.as_str()) {
            return Err(ApiError::unprocessable(
                &field,
                format!("`{shown}` is listed twice"),
            ));
        }
        if template.declares(name) {
            continue;
        }
        let declared = template.variables_schema()["properties"]
            .as_object()
            .map(|p| {
                p.keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|d| !d.is_empty())
            .map(|d| shorten(&d, 500))
            .unwrap_or_else(|| "none".into());
        let message = if given {
            format!(
                "`{shown}` is not a variable of the pool's base job template: each name must be \
                 a property of its `variables` (declared: {declared})"
            )
        } else {
            format!(
                "the new base_job_template does not declare `{shown}`, which the pool's \
                 overridable_variables lists: keep the variable, or change overridable_variables \
                 in the same request (declared: {declared})"
            )
        };
        return Err(ApiError::unprocessable(&field, message));
    }
    Ok(())
}

/// 403 when `--process-pools` does not let this workspace have `process` pools.
async fn check_process_allowed(state: &AppState, ws: &Workspace, pool_type: &str) -> ApiResult<()> {
    if pool_type != PROCESS_POOL_TYPE || state.process_gate.allows(&state.store, ws.id).await? {
        return Ok(());
    }
    Err(ApiError::forbidden(&state.process_gate.refusal(Some(&ws.name))).field("type"))
}

pub(crate) fn unknown_type(state: &AppState, pool_type: &str) -> ApiError {
    ApiError::unprocessable(
        "type",
        format!(
            "unknown pool type `{}`; this server knows: {}",
            shorten(pool_type, 100),
            state.registry.pool_types().join(", ")
        ),
    )
}

pub(crate) fn prefix_field(e: TemplateError, prefix: &str) -> ApiError {
    let field = if e.field.starts_with(prefix) {
        e.field
    } else {
        format!("{prefix}.{}", e.field)
    };
    ApiError::unprocessable(&field, e.message)
}
