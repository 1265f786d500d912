//! Work queues inside a pool; every pool has `default`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use super::super::table::{handler, ws, Route};
use super::super::validate::{check_limit, check_name, check_priority};
use super::super::{
    Access, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json,
};
use crate::access::Scope;
use crate::model::WorkQueue;
use crate::store::NewQueue;

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/work_pools/{name}/queues"), handler!(create_queue))
        .summary("Create a work queue")
        .access(Access::Workspace(Scope::PoolsWrite))
        .audit("work_queue.create", Always)
        .body::<CreateQueue>()
        .created::<WorkQueue>()
        .errors(&[409]),
    Route::get(ws!("/work_pools/{name}/queues"), handler!(list_queues))
        .summary("List a pool's work queues")
        .access(Access::Workspace(Scope::PoolsRead))
        .audit("work_queue.list", DeniedOnly)
        .ok::<Vec<WorkQueue>>(),
];

/// A new work queue of a pool.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQueue {
    /// Name: 1–100 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
    name: String,
    /// Claim order: lower numbers first; -1000 to 1000 (default 1).
    #[serde(default = "default_priority")]
    #[schemars(range(min = -1000, max = 1000))]
    priority: i64,
    /// Most active runs at once (0 or more); `null` for no limit.
    #[serde(default)]
    concurrency_limit: Option<i64>,
    /// A paused object's runs are not claimed.
    #[serde(default)]
    paused: bool,
}

fn default_priority() -> i64 {
    1
}

async fn create_queue(
    State(state): State<AppState>,
    Path((_ws, pool)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateQueue>,
) -> ApiResult<(StatusCode, Json<WorkQueue>)> {
    let ws = caller.workspace()?;
    check_name("name", &body.name)?;
    check_limit(body.concurrency_limit)?;
    check_priority(body.priority)?;
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
) -> ApiResult<Json<Vec<WorkQueue>>> {
    let ws = caller.workspace()?;
    let pool = state.store.pool(ws.id, &pool).await?;
    Ok(Json(state.store.list_queues(pool.id).await?))
}
