//! The audit log: of a workspace, and of the instance (admins).

use axum::extract::State;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use uuid::Uuid;

use super::super::table::{handler, ws, Route};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditPolicy::DeniedOnly, Caller, Json, Query,
};
use crate::access::Scope;
use crate::store::{AuditEntry, AuditFilter};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::get("/api/audit_log", handler!(instance_audit_log))
        .summary("The instance-level audit log: users and workspaces created, attempts on workspaces that do not exist (same filters)")
        .access(Access::Admin)
        .audit("audit_log.read", DeniedOnly)
        .query::<AuditQuery>()
        .ok::<Vec<AuditEntry>>(),
    Route::get(ws!("/audit_log"), handler!(audit_log))
        .summary("The audit log (actor, action, outcome, since, limit, cursor)")
        .access(Access::Workspace(Scope::AuditRead))
        .audit("audit_log.read", DeniedOnly)
        .query::<AuditQuery>()
        .ok::<Vec<AuditEntry>>(),
];

/// What became of an audited request.
#[derive(JsonSchema)]
#[schemars(rename_all = "lowercase")]
#[allow(dead_code)] // describes the strings of `AuditEntry::outcome`
pub(crate) enum AuditOutcome {
    Success,
    Denied,
    Failed,
    Pending,
}

/// Filters of the audit log; empty values are ignored.
#[derive(Deserialize, JsonSchema)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    /// `success`, `denied`, `failed` or `pending`.
    #[schemars(with = "Option<AuditOutcome>")]
    outcome: Option<String>,
    /// Only records at or after this RFC 3339 time.
    #[schemars(with = "Option<DateTime<Utc>>")]
    since: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
    /// The last id of the previous page.
    #[schemars(with = "Option<Uuid>")]
    cursor: Option<String>,
}

/// `GET …/audit_log`, newest first.
async fn audit_log(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let ws = caller.workspace()?;
    let filter = audit_filter(q)?;
    Ok(Json(state.store.list_audit(ws.id, &filter).await?))
}

/// `GET /api/audit_log` (admin): the records that belong to no workspace.
async fn instance_audit_log(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let filter = audit_filter(q)?;
    Ok(Json(state.store.list_instance_audit(&filter).await?))
}

fn audit_filter(q: AuditQuery) -> ApiResult<AuditFilter> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    ApiError::unprocessable(
                        "since",
                        "must be an RFC 3339 time, e.g. 2026-11-22T08:00:00Z",
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    let cursor = match q.cursor.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(c) => Some(
            Uuid::parse_str(c)
                .map_err(|_| ApiError::unprocessable("cursor", "must be an audit record id"))?,
        ),
    };
    let outcome = q.outcome.filter(|s| !s.is_empty());
    if let Some(o) = &outcome {
        if !["success", "denied", "failed", "pending"].contains(&o.as_str()) {
            return Err(ApiError::unprocessable(
                "outcome",
                "must be success, denied, failed or pending",
            ));
        }
    }
    for (field, value) in [("actor", &q.actor), ("action", &q.action)] {
        if value.as_ref().is_some_and(|v| v.len() > 200) {
            return Err(ApiError::unprocessable(field, "at most 200 characters"));
        }
    }
    Ok(AuditFilter {
        actor: q.actor.filter(|s| !s.is_empty()),
        action: q.action.filter(|s| !s.is_empty()),
        outcome,
        since,
        cursor,
        limit,
    })
}
