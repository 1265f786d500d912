//! Health, metrics, the API description, and the pool types this server knows.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::super::table::{handler, Content, Reply, Route};
use super::super::{openapi, Access, ApiError, ApiResult, AppState, AuditPolicy::DeniedOnly, Json};
use crate::model::BaseJobTemplateDoc;

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::get("/healthz", handler!(healthz))
        .summary("Liveness probe")
        .access(Access::Public)
        .audit("health.read", DeniedOnly)
        .text("text/plain"),
    Route::get("/readyz", handler!(readyz))
        .summary("Readiness probe (store reachable)")
        .access(Access::Public)
        .audit("health.read", DeniedOnly)
        .text("text/plain")
        .reply(Reply {
            status: 503,
            description: "The store is unreachable",
            content: Content::Text("text/plain"),
        }),
    Route::get("/metrics", handler!(metrics))
        .summary("Prometheus metrics")
        .access(Access::Public)
        .audit("metrics.read", DeniedOnly)
        .text("text/plain"),
    Route::get("/api/openapi.json", handler!(openapi_json))
        .summary("This document")
        .access(Access::Public)
        .audit("openapi.read", DeniedOnly)
        .ok::<Map<String, Value>>(),
    Route::get("/docs", handler!(docs))
        .summary("API reference (HTML, rendered from this document)")
        .access(Access::Public)
        .audit("docs.read", DeniedOnly)
        .text("text/html"),
    Route::get("/api/pool_types", handler!(list_pool_types))
        .summary("Pool types this server knows")
        .access(Access::Authenticated)
        .audit("pool_type.list", DeniedOnly)
        .ok::<Vec<String>>(),
    Route::get(
        "/api/pool_types/{type}/default_template",
        handler!(default_template),
    )
    .summary("Default base job template of a pool type")
    .access(Access::Authenticated)
    .audit("pool_type.read", DeniedOnly)
    .ok::<BaseJobTemplateDoc>(),
];

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

async fn openapi_json() -> Json<Value> {
    Json(openapi::document())
}

/// The API reference, rendered from the OpenAPI document with embedded assets only.
async fn docs() -> Response {
    crate::ui::docs::reference()
}

async fn list_pool_types(State(state): State<AppState>) -> Json<Vec<&'static str>> {
    Json(state.registry.pool_types())
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
