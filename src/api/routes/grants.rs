//! Workspace grants (instance administrators): which workspaces may use the controller's
//! ambient cloud identity, credential files on its disk and custom endpoints
//! (docs/security.md, "Cloud identity").

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use super::super::table::{handler, Route};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Caller, Json,
};
use crate::identity::WorkspaceGrant;
use crate::store::GrantRecord;

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::get("/api/grants", handler!(list_grants))
        .summary("Every workspace's cloud-identity grants (ambient-aws, ambient-gcp, host-credential-files, custom-endpoints)")
        .access(Access::Admin)
        .audit("workspace_grant.list", DeniedOnly)
        .ok::<Vec<GrantView>>(),
    Route::put("/api/grants/{workspace}/{grant}", handler!(put_grant))
        .summary("Grant a workspace a cloud-identity power (idempotent)")
        .access(Access::Admin)
        .audit("workspace_grant.grant", Always)
        .ok::<GrantView>()
        .errors(&[422]),
    Route::delete("/api/grants/{workspace}/{grant}", handler!(delete_grant))
        .summary("Take a cloud-identity grant from a workspace (idempotent); its pools are refused at their next submission")
        .access(Access::Admin)
        .audit("workspace_grant.revoke", Always)
        .no_content()
        .errors(&[422]),
];

/// A grant a workspace holds.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GrantView {
    /// The workspace's name.
    pub workspace: String,
    /// The grant.
    pub grant: WorkspaceGrant,
    /// What it allows.
    pub description: String,
    /// Who granted it (`bootstrap`: given to `default` by the first `pushpool up`).
    pub granted_by: String,
    /// When.
    pub granted_at: DateTime<Utc>,
}

fn view(workspace: String, r: GrantRecord) -> GrantView {
    GrantView {
        workspace,
        grant: r.grant,
        description: r.grant.description().into(),
        granted_by: r.granted_by,
        granted_at: r.granted_at,
    }
}

fn parse_grant(grant: &str) -> ApiResult<WorkspaceGrant> {
    grant
        .parse()
        .map_err(|rule: String| ApiError::unprocessable("grant", rule))
}

/// `GET /api/grants` (admin).
async fn list_grants(State(state): State<AppState>) -> ApiResult<Json<Vec<GrantView>>> {
    let mut out = vec![];
    for r in state.store.grant_records(None).await? {
        let Ok(ws) = state.store.workspace_by_id(r.workspace_id).await else {
            continue;
        };
        out.push(view(ws.name, r));
    }
    Ok(Json(out))
}

/// `PUT /api/grants/{workspace}/{grant}` (admin).
async fn put_grant(
    State(state): State<AppState>,
    Path((workspace, grant)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
) -> ApiResult<Json<GrantView>> {
    let grant = parse_grant(&grant)?;
    let ws = state.store.workspace(&workspace).await?;
    note.target("workspace_grant", format!("{}/{grant}", ws.name));
    let by = caller.principal()?.name.clone();
    let new = state.store.grant_workspace(ws.id, grant, &by).await?;
    note.detail(json!({"workspace": ws.name, "grant": grant, "new": new}));
    let record = state
        .store
        .grant_records(Some(ws.id))
        .await?
        .into_iter()
        .find(|r| r.grant == grant)
        .ok_or_else(|| ApiError::internal("the grant vanished"))?;
    Ok(Json(view(ws.name, record)))
}

/// `DELETE /api/grants/{workspace}/{grant}` (admin).
async fn delete_grant(
    State(state): State<AppState>,
    Path((workspace, grant)): Path<(String, String)>,
    note: AuditNote,
) -> ApiResult<StatusCode> {
    let grant = parse_grant(&grant)?;
    let ws = state.store.workspace(&workspace).await?;
    note.target("workspace_grant", format!("{}/{grant}", ws.name));
    let held = state.store.revoke_workspace_grant(ws.id, grant).await?;
    note.detail(json!({"workspace": ws.name, "grant": grant, "was_held": held}));
    Ok(StatusCode::NO_CONTENT)
}
