//! The REST API (axum). Paths, bodies and error shapes follow `CONTRACT.md`.
//!
//! Every route is declared once in [`guard::ROUTES`] with who may call it; [`guard::guard`]
//! authenticates, authorizes and audits each request before its handler runs.

mod access;
mod claims;
pub mod guard;

pub use guard::{Access, AuditNote, AuditPolicy, Caller, RouteSpec, ROUTES};

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use pushpool_provider::Registry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::access::shorten;
use crate::auth::RunTokens;
use crate::job::{self, JobError, RunFacts};
use crate::metrics::Metrics;
use crate::model::{Deployment, WorkPool};
use crate::redact;
use crate::state::{Proposal, StateType};
use crate::store::{
    DeploymentPatch, NewDeployment, NewPool, NewQueue, NewRun, PoolPatch, RunFilter, Store,
    StoreError, TransitionGuard, TransitionOutcome,
};
use crate::template::{BaseJobTemplate, TemplateError};

/// Largest accepted request body (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest base job template, job variables or parameters document, serialized (422 beyond).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest free-text field (descriptions, state messages).
pub const MAX_TEXT_CHARS: usize = 4000;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Providers (for default templates and job validation).
    pub registry: Registry,
    /// Run-token checker.
    pub tokens: RunTokens,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// URL jobs use to reach the API (`PUSHPOOL_API_URL` of jobs claimed through the API).
    pub api_url: String,
}

/// An API error: `{"error": CODE, "message": TEXT, "field": PATH?}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).field(field)
    }
    fn not_found(what: &str, key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} `{key}` not found"),
        )
    }
    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    fn conflict(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message).field(field)
    }
    fn internal(message: &str) -> Self {
        tracing::error!(message, "internal API error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read, so the connection cannot carry another
            // request; say so, or a client reusing it fails on its next request.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response.extensions_mut().insert(guard::ErrorNote {
            code: self.code,
            message: self.message,
        });
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, key } => ApiError::not_found(what, &key),
            StoreError::Conflict { field, message } => {
                let err = ApiError::new(StatusCode::CONFLICT, "conflict", message);
                match field {
                    Some(f) => err.field(f),
                    None => err,
                }
            }
            StoreError::Invalid { field, message } => ApiError::unprocessable(&field, message),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is unavailable; retry shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.message).field(e.field)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose problems become 400 (malformed JSON) or 422 (wrong shape), naming the field.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                let text = e.body_text();
                // serde's message reads "…: field: problem at line…"; keep the path when present.
                let detail = text
                    .split_once(": ")
                    .map(|x| x.1)
                    .unwrap_or(&text)
                    .to_string();
                let field = detail.split_once(": ").map(|x| x.0.to_string());
                let err =
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail.clone());
                Err(match field {
                    Some(f) if !f.contains(' ') => err.field(f),
                    _ => err,
                })
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {}", e.body_text()),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the request body must be JSON with `Content-Type: application/json`",
            )),
            Err(other) => Err(unreadable_body(other.status(), other.body_text())),
        }
    }
}

/// A body that could not be read: 413 when too large, else 400.
fn unreadable_body(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "too_large", text)
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", text)
    }
}

/// A JSON body that may be empty (then `T::default()`).
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| unreadable_body(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(T::default()));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {e}"),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(v) => Ok(OptionalBody(v)),
            Err(e) if e.inner().is_syntax() || e.inner().is_eof() => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {}", e.inner()),
            )),
            Err(e) => {
                let field = e.path().to_string();
                let err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    e.inner().to_string(),
                );
                Err(if field == "." { err } else { err.field(field) })
            }
        }
    }
}

fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            field,
            "must be 1–100 characters of letters, digits, `-`, `_` or `.`, not starting with `-` or `.`",
        ))
    }
}

/// Refuses a JSON document above [`MAX_DOCUMENT_BYTES`].
fn check_document_size(field: &str, value: &impl Serialize) -> ApiResult<()> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        return Err(ApiError::unprocessable(
            field,
            format!("is {size} bytes; at most {MAX_DOCUMENT_BYTES} bytes (serialized JSON)"),
        ));
    }
    Ok(())
}

/// Refuses free text longer than `max` characters.
fn check_text(field: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    if value.is_some_and(|v| v.chars().count() > max) {
        return Err(ApiError::unprocessable(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(())
}

fn check_rate(rate: Option<f64>) -> ApiResult<()> {
    match rate {
        Some(r) if !(r.is_finite() && r > 0.0 && r <= 100_000.0) => Err(ApiError::unprocessable(
            "submit_rate",
            "must be a number of submissions per second above 0 and at most 100000",
        )),
        _ => Ok(()),
    }
}

fn check_limit(limit: Option<i64>) -> ApiResult<()> {
    match limit {
        Some(n) if n < 0 => Err(ApiError::unprocessable(
            "concurrency_limit",
            "must be 0 or more",
        )),
        _ => Ok(()),
    }
}

/// Deserializes a field that may be absent (`None`), null (`Some(None)`) or a value.
fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePool {
    name: String,
    #[serde(rename = "type")]
    pool_type: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    base_job_template: Option<Value>,
    #[serde(default)]
    concurrency_limit: Option<i64>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    submit_rate: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatePool {
    #[serde(default, deserialize_with = "double_option")]
    description: Option<Option<String>>,
    #[serde(default)]
    base_job_template: Option<Value>,
    #[serde(default, deserialize_with = "double_option")]
    concurrency_limit: Option<Option<i64>>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    submit_rate: Option<Option<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQueue {
    name: String,
    #[serde(default = "default_priority")]
    priority: i64,
    #[serde(default)]
    concurrency_limit: Option<i64>,
    #[serde(default)]
    paused: bool,
}

fn default_priority() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDeployment {
    name: String,
    work_pool: String,
    #[serde(default)]
    work_queue: Option<String>,
    #[serde(default)]
    job_variables: Map<String, Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    concurrency_limit: Option<i64>,
    #[serde(default)]
    paused: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDeployment {
    #[serde(default)]
    job_variables: Option<Map<String, Value>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "double_option")]
    concurrency_limit: Option<Option<i64>>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    work_queue: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PreviewRequest {
    #[serde(default)]
    job_variables: Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    #[serde(default)]
    scheduled_time: Option<DateTime<Utc>>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    job_variables: Map<String, Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct RunQuery {
    state: Option<String>,
    work_pool: Option<String>,
    deployment: Option<String>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobStateReport {
    #[serde(rename = "type")]
    state_type: StateType,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    transition_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLogs {
    lines: Vec<JobLogLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLogLine {
    line: String,
    #[serde(default)]
    stream: Option<String>,
}

/// A pool as the API shows it: secret defaults and literals of its template masked.
fn pool_out(pool: &WorkPool) -> Value {
    let mut v = json!(pool);
    redact::mask_template(&mut v["base_job_template"]);
    v
}

/// The variables a pool's schema marks secret.
fn secret_variables(pool: &WorkPool) -> Vec<String> {
    redact::schema_secret_variables(&pool.base_job_template["variables"])
}

/// A deployment as the API shows it: secret job variables and parameters masked.
fn deployment_out(d: &Deployment, secret_vars: &[String]) -> Value {
    let mut v = json!(d);
    redact::mask(&mut v["job_variables"], secret_vars);
    redact::mask(&mut v["parameters"], &[]);
    v
}

/// A flow run as the API shows it: secret job variables and parameters masked.
pub(crate) fn run_out(r: &crate::model::FlowRun, secret_vars: &[String]) -> Value {
    let mut v = json!(r);
    redact::mask(&mut v["job_variables"], secret_vars);
    redact::mask(&mut v["parameters"], &[]);
    v
}

/// The secret variables of each pool of a workspace, by pool id.
async fn secret_variables_by_pool(
    state: &AppState,
    workspace_id: Uuid,
) -> ApiResult<std::collections::HashMap<Uuid, Vec<String>>> {
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
fn secrets_in<'a>(
    by_pool: &'a std::collections::HashMap<Uuid, Vec<String>>,
    pool_id: &Uuid,
) -> &'a [String] {
    by_pool.get(pool_id).map(Vec::as_slice).unwrap_or(&[])
}

/// One run as the API shows it, its pool's secret variables masked.
async fn run_json(state: &AppState, run: &crate::model::FlowRun) -> Value {
    run_out(
        run,
        &secret_variables_of_pool(state, run.work_pool_id).await,
    )
}

/// One deployment as the API shows it, its pool's secret variables masked.
async fn deployment_json(state: &AppState, d: &Deployment) -> Value {
    deployment_out(d, &secret_variables_of_pool(state, d.work_pool_id).await)
}

fn parse_template(
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
    let parsed = BaseJobTemplate::parse(&value).map_err(|e| {
        let field = if e.field.starts_with("base_job_template") {
            e.field.clone()
        } else {
            format!("base_job_template.{}", e.field)
        };
        ApiError::unprocessable(&field, e.message)
    })?;
    Ok(parsed)
}

fn unknown_type(state: &AppState, pool_type: &str) -> ApiError {
    ApiError::unprocessable(
        "type",
        format!(
            "unknown pool type `{}`; this server knows: {}",
            shorten(pool_type, 100),
            state.registry.pool_types().join(", ")
        ),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let counts: Vec<(String, i64)> = state
        .store
        .count_by_state()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&counts),
    )
        .into_response()
}

async fn list_pool_types(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.registry.pool_types()))
}

async fn default_template(
    State(state): State<AppState>,
    Path(pool_type): Path<String>,
) -> ApiResult<Json<Value>> {
    state
        .registry
        .get(&pool_type)
        .map(|p| Json(p.default_base_job_template()))
        .ok_or_else(|| ApiError::not_found("pool type", &pool_type))
}

async fn create_pool(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreatePool>,
) -> ApiResult<(StatusCode, Json<Value>)> {
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
    let template = parse_template(&state, &body.pool_type, body.base_job_template)?;
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
            },
        )
        .await?;
    note.target("work_pool", &pool.name);
    Ok((StatusCode::CREATED, Json(pool_out(&pool))))
}

async fn list_pools(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Value>>> {
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
) -> ApiResult<Json<Value>> {
    let ws = caller.workspace()?;
    Ok(Json(pool_out(&state.store.pool(ws.id, &name).await?)))
}

async fn update_pool(
    State(state): State<AppState>,
    Path((_ws, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<UpdatePool>,
) -> ApiResult<Json<Value>> {
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
    let template = match body.base_job_template {
        Some(mut t) => {
            // A template read from the API and written back keeps its masked secrets.
            redact::restore(&mut t, &pool.base_job_template);
            let parsed = parse_template(&state, &pool.pool_type, Some(t))?;
            // Every deployment of the pool must still fit the new template.
            for d in state
                .store
                .list_deployments(ws.id)
                .await?
                .iter()
                .filter(|d| d.work_pool_id == pool.id)
            {
                parsed
                    .validate_deployment_overrides(&d.job_variables)
                    .map_err(|e| {
                        ApiError::unprocessable(
                            "base_job_template",
                            format!(
                                "deployment `{}` would no longer fit this template: {}: {}",
                                d.name, e.field, e.message
                            ),
                        )
                    })?;
            }
            Some(parsed.to_value())
        }
        None => None,
    };
    if let Some(rate) = body.submit_rate {
        check_rate(rate)?;
    }
    let patch = PoolPatch {
        description: body.description,
        base_job_template: template,
        concurrency_limit: body.concurrency_limit,
        paused: body.paused,
        submit_rate: body.submit_rate,
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

async fn create_queue(
    State(state): State<AppState>,
    Path((_ws, pool)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateQueue>,
) -> ApiResult<(StatusCode, Json<crate::model::WorkQueue>)> {
    let ws = caller.workspace()?;
    check_name("name", &body.name)?;
    check_limit(body.concurrency_limit)?;
    let q = state
        .store
        .create_queue(
            ws.id,
            &pool,
            NewQueue {
                name: body.name,
                priority: body.priority,
                concurrency_limit: body.concurrency_limit,
                paused: body.paused,
            },
        )
        .await?;
    note.target("work_queue", format!("{pool}/{}", q.name));
    Ok((StatusCode::CREATED, Json(q)))
}

async fn list_queues(
    State(state): State<AppState>,
    Path((_ws, pool)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::model::WorkQueue>>> {
    let ws = caller.workspace()?;
    let pool = state.store.pool(ws.id, &pool).await?;
    Ok(Json(state.store.list_queues(pool.id).await?))
}

async fn pool_template(state: &AppState, pool: &WorkPool) -> ApiResult<BaseJobTemplate> {
    BaseJobTemplate::parse(&pool.base_job_template)
        .map_err(|e| {
            ApiError::unprocessable(
                "work_pool",
                format!(
                    "the base job template of work pool `{}` is invalid at {}: {}",
                    pool.name, e.field, e.message
                ),
            )
        })
        .inspect(|_| {
            let _ = state;
        })
}

fn prefix_field(e: TemplateError, prefix: &str) -> ApiError {
    let field = if e.field.starts_with(prefix) {
        e.field
    } else {
        format!("{prefix}.{}", e.field)
    };
    ApiError::unprocessable(&field, e.message).with_rule(e.rule)
}

impl ApiError {
    fn with_rule(self, _rule: &str) -> Self {
        self
    }
}

async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateDeployment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ws = caller.workspace()?;
    check_name("name", &body.name)?;
    check_limit(body.concurrency_limit)?;
    check_document_size("job_variables", &body.job_variables)?;
    check_document_size("parameters", &body.parameters)?;
    let pool = state.store.pool(ws.id, &body.work_pool).await?;
    let template = pool_template(&state, &pool).await?;
    template
        .validate_deployment_overrides(&body.job_variables)
        .map_err(|e| prefix_field(e, "job_variables"))?;
    let d = state
        .store
        .create_deployment(
            ws.id,
            NewDeployment {
                name: body.name,
                work_pool: body.work_pool,
                work_queue: body.work_queue,
                job_variables: body.job_variables,
                parameters: body.parameters,
                concurrency_limit: body.concurrency_limit,
                paused: body.paused,
            },
        )
        .await?;
    note.target("deployment", &d.name);
    Ok((
        StatusCode::CREATED,
        Json(deployment_out(&d, &secret_variables(&pool))),
    ))
}

async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
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
) -> ApiResult<Json<Value>> {
    let ws = caller.workspace()?;
    let d = state.store.deployment(ws.id, &id).await?;
    Ok(Json(deployment_json(&state, &d).await))
}

async fn update_deployment(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    Body(mut body): Body<UpdateDeployment>,
) -> ApiResult<Json<Value>> {
    let ws = caller.workspace()?;
    let current = state.store.deployment(ws.id, &id).await?;
    if let Some(Some(limit)) = body.concurrency_limit {
        check_limit(Some(limit))?;
    }
    if let Some(v) = &body.job_variables {
        check_document_size("job_variables", v)?;
    }
    if let Some(p) = &body.parameters {
        check_document_size("parameters", p)?;
    }
    // A deployment read from the API and written back keeps its masked secrets.
    if let Some(vars) = body.job_variables.as_mut() {
        redact::restore_map(vars, &current.job_variables);
    }
    if let Some(params) = body.parameters.as_mut() {
        redact::restore_map(params, &current.parameters);
    }
    if let Some(vars) = &body.job_variables {
        let pool = state.store.pool_by_id(current.work_pool_id).await?;
        pool_template(&state, &pool)
            .await?
            .validate_deployment_overrides(vars)
            .map_err(|e| prefix_field(e, "job_variables"))?;
    }
    let patch = DeploymentPatch {
        job_variables: body.job_variables,
        parameters: body.parameters,
        concurrency_limit: body.concurrency_limit,
        paused: body.paused,
        work_queue: body.work_queue,
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
async fn render_for(
    state: &AppState,
    deployment: &Deployment,
    run_variables: &Map<String, Value>,
) -> ApiResult<(Value, Option<ApiError>, WorkPool)> {
    let pool = state.store.pool_by_id(deployment.work_pool_id).await?;
    let refuse = |e: JobError| ApiError::unprocessable(&e.field(), e.to_string());
    let template = job::parse_template(&pool).map_err(refuse)?;
    let facts = RunFacts::preview(deployment, run_variables);
    let rendered = job::render(&template, &pool, deployment, &facts).map_err(refuse)?;
    // Without a provider for its type here, the job is shown unchecked.
    let provider_error = state
        .registry
        .get(&pool.pool_type)
        .and_then(|p| job::validate(p.as_ref(), &rendered).err())
        .map(refuse);
    Ok((rendered, provider_error, pool))
}

async fn preview(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    OptionalBody(request): OptionalBody<PreviewRequest>,
) -> ApiResult<Json<Value>> {
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
    let mut out = json!({"job_configuration": rendered});
    if let Some(e) = provider_error {
        out["provider_error"] = json!({"field": e.field, "message": e.message});
    }
    Ok(Json(out))
}

async fn create_run(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    OptionalBody(request): OptionalBody<CreateRun>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ws = caller.workspace()?;
    let deployment = state.store.deployment(ws.id, &id).await?;
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
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    let ws = caller.workspace()?;
    let state_filter = match q.state.as_deref() {
        Some(s) if !s.is_empty() => Some(
            s.parse::<StateType>()
                .map_err(|e| ApiError::unprocessable("state", e.to_string()))?,
        ),
        _ => None,
    };
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
        state: state_filter,
        work_pool: q.work_pool.filter(|p| !p.is_empty()),
        deployment_id,
        limit: q.limit,
        cursor: q.cursor,
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

async fn run_in_ws(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<crate::model::FlowRun> {
    let ws = caller.workspace()?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("flow run", id))?;
    Ok(state.store.run_in(ws.id, id).await?)
}

async fn get_run(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let run = run_in_ws(&state, &caller, &id).await?;
    let state_history = state.store.state_history(run.id).await?;
    let mut out = run_json(&state, &run).await;
    out["state_history"] = json!(state_history);
    Ok(Json(out))
}

async fn run_states(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::model::HistoryEntry>>> {
    let run = run_in_ws(&state, &caller, &id).await?;
    Ok(Json(state.store.state_history(run.id).await?))
}

async fn run_logs(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::model::LogLine>>> {
    let run = run_in_ws(&state, &caller, &id).await?;
    Ok(Json(state.store.logs(run.id, 10_000).await?))
}

/// Cancels a run: not yet submitted → CANCELLED at once; submitted → CANCELLING (the controller
/// stops the infrastructure, then records CANCELLED).
async fn cancel_run(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
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

async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::model::Event>>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.list_events(ws.id, 500).await?))
}

/// `{status: ACCEPT|DUPLICATE|REJECT, reason, state}`: the answer to a state report.
fn proposal_answer(outcome: &TransitionOutcome) -> Value {
    let (status, reason) = match outcome {
        TransitionOutcome::Accepted(_) => ("ACCEPT", None),
        TransitionOutcome::Duplicate(_) => ("DUPLICATE", None),
        TransitionOutcome::Rejected { reason, .. } => ("REJECT", Some(reason.to_string())),
    };
    json!({"status": status, "reason": reason, "state": outcome.run().state})
}

/// The run of a run-token route (the guard checked that the token is this run's).
async fn own_run(state: &AppState, caller: &Caller, id: &str) -> ApiResult<crate::model::FlowRun> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("flow run", id))?;
    match &caller.actor {
        guard::Actor::RunToken { run_id, .. } if *run_id == id => Ok(state.store.run(id).await?),
        _ => Err(ApiError::forbidden("this run token belongs to another run")),
    }
}

async fn job_get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let run = own_run(&state, &caller, &id).await?;
    Ok(Json(run_json(&state, &run).await))
}

async fn job_report_state(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    Body(body): Body<JobStateReport>,
) -> ApiResult<Json<Value>> {
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

async fn job_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    Body(body): Body<JobLogs>,
) -> ApiResult<StatusCode> {
    let run = own_run(&state, &caller, &id).await?;
    if body.lines.len() > 1000 {
        return Err(ApiError::unprocessable(
            "lines",
            "at most 1000 lines per request",
        ));
    }
    let now = crate::model::now_micros();
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
    state.store.append_logs(run.id, &lines).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method, r.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "4XX": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            },
            "x-pushpool-action": r.action,
        });
        match r.access {
            Access::Public => op["security"] = json!([]),
            Access::Workspace(scope) => {
                op["description"] = json!(format!("Authorization: {}", r.access.describe()));
                op["x-pushpool-scope"] = json!(scope.as_str());
            }
            other => op["description"] = json!(format!("Authorization: {}", other.describe())),
        }
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "pushpool API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}
        },
        "security": [{"bearer": []}]
    })
}

async fn openapi_json() -> Json<Value> {
    Json(openapi())
}

async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html><html><head><title>pushpool API</title><meta charset="utf-8"></head>
<body><script id="api-reference" data-url="/api/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
<noscript>The OpenAPI document is at <a href="/api/openapi.json">/api/openapi.json</a>.</noscript></body></html>"#,
    )
}

async fn not_found(req: Request) -> Response {
    guard::answer_unread(
        req.into_body(),
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"),
    )
    .await
}

/// The handler of one route of [`ROUTES`].
fn handler_for(method: &str, path: &str) -> MethodRouter<AppState> {
    let p = path.strip_prefix("/api/workspaces/{ws}").unwrap_or(path);
    let ws = path.starts_with("/api/workspaces/{ws}");
    match (method, ws, p) {
        ("get", false, "/healthz") => get(healthz),
        ("get", false, "/readyz") => get(readyz),
        ("get", false, "/metrics") => get(metrics),
        ("get", false, "/api/openapi.json") => get(openapi_json),
        ("get", false, "/docs") => get(docs),
        ("get", false, "/api/pool_types") => get(list_pool_types),
        ("get", false, "/api/pool_types/{type}/default_template") => get(default_template),
        ("post", false, "/api/workspaces") => post(access::create_workspace),
        ("get", false, "/api/workspaces") => get(access::list_workspaces),
        ("post", false, "/api/users") => post(access::create_user),
        ("get", false, "/api/users") => get(access::list_users),
        ("get", false, "/api/audit_log") => get(access::instance_audit_log),
        ("post", true, "/work_pools") => post(create_pool),
        ("get", true, "/work_pools") => get(list_pools),
        ("get", true, "/work_pools/{name}") => get(get_pool),
        ("patch", true, "/work_pools/{name}") => patch(update_pool),
        ("delete", true, "/work_pools/{name}") => delete(delete_pool),
        ("post", true, "/work_pools/{name}/queues") => post(create_queue),
        ("get", true, "/work_pools/{name}/queues") => get(list_queues),
        ("post", true, "/work_pools/{name}/claim") => post(claims::claim),
        ("post", true, "/deployments") => post(create_deployment),
        ("get", true, "/deployments") => get(list_deployments),
        ("get", true, "/deployments/{id_or_name}") => get(get_deployment),
        ("patch", true, "/deployments/{id_or_name}") => patch(update_deployment),
        ("delete", true, "/deployments/{id_or_name}") => delete(delete_deployment),
        ("post", true, "/deployments/{id_or_name}/preview") => post(preview),
        ("post", true, "/deployments/{id_or_name}/runs") => post(create_run),
        ("get", true, "/flow_runs") => get(list_runs),
        ("get", true, "/flow_runs/{id}") => get(get_run),
        ("get", true, "/flow_runs/{id}/states") => get(run_states),
        ("post", true, "/flow_runs/{id}/cancel") => post(cancel_run),
        ("get", true, "/flow_runs/{id}/logs") => get(run_logs),
        ("post", true, "/flow_runs/{id}/set_state") => post(claims::set_state),
        ("get", true, "/events") => get(list_events),
        ("post", true, "/members") => post(access::add_member),
        ("get", true, "/members") => get(access::list_members),
        ("patch", true, "/members/{user}") => patch(access::update_member),
        ("delete", true, "/members/{user}") => delete(access::remove_member),
        ("post", true, "/service_accounts") => post(access::create_service_account),
        ("get", true, "/service_accounts") => get(access::list_service_accounts),
        ("patch", true, "/service_accounts/{id}") => patch(access::update_service_account),
        ("delete", true, "/service_accounts/{id}") => delete(access::delete_service_account),
        ("post", true, "/api_keys") => post(access::create_api_key),
        ("get", true, "/api_keys") => get(access::list_api_keys),
        ("delete", true, "/api_keys/{id}") => delete(access::revoke_api_key),
        ("post", true, "/api_keys/{id}/rotate") => post(access::rotate_api_key),
        ("post", true, "/roles") => post(access::create_role),
        ("get", true, "/roles") => get(access::list_roles),
        ("delete", true, "/roles/{name}") => delete(access::delete_role),
        ("get", true, "/audit_log") => get(access::audit_log),
        ("get", false, "/api/runs/{id}") => get(job_get_run),
        ("post", false, "/api/runs/{id}/state") => post(job_report_state),
        ("post", false, "/api/runs/{id}/heartbeat") => post(job_heartbeat),
        ("post", false, "/api/runs/{id}/logs") => post(job_logs),
        _ => panic!("route {method} {path} is in ROUTES but has no handler"),
    }
}

/// The API router: exactly the routes of [`ROUTES`], each behind the [`guard::guard`].
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        router = router.route(r.path, handler_for(r.method, r.path));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .with_state(state)
}
