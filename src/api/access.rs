//! Handlers for workspaces, users, members, service accounts, API keys, roles and the audit log.
//!
//! Nobody can hand out more than they hold: a role granted to a member, a service account or a
//! key cap must consist of scopes the caller has.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::guard::{role_scopes, AuditNote, Caller};
use super::{check_name, ApiError, ApiResult, AppState, Body, OptionalBody};
use crate::access::{
    builtin_description, builtin_scopes, check_custom_role_name, parse_scopes, shorten, Scope,
    Scopes, BUILTIN_ROLES,
};
use crate::auth::generate_api_key;
use crate::model::Workspace;
use crate::store::{AuditFilter, NewApiKey, Principal, StoredApiKey, WorkspaceOwner};

/// Longest grace period of a rotated key.
const MAX_GRACE_SECONDS: i64 = 30 * 24 * 3600;
/// Grace period of a rotated key when none is given.
const DEFAULT_GRACE_SECONDS: i64 = 3600;
/// Furthest expiry a key may be given.
const MAX_KEY_LIFETIME_DAYS: i64 = 3660;

fn check_label(field: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() || value.chars().count() > 100 || value.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            field,
            "must be 1–100 characters without control characters",
        ));
    }
    Ok(())
}

fn check_user_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "name",
            "must be 1–100 characters of letters, digits, `-`, `_`, `.`, `@` or `+`, starting with a letter or digit",
        ))
    }
}

/// Checks that `role` exists in the workspace and holds nothing the caller lacks.
async fn grantable(
    state: &AppState,
    caller: &Caller,
    ws: &Workspace,
    field: &str,
    role: &str,
) -> ApiResult<Scopes> {
    let scopes = role_scopes(state, ws.id, role).await?.ok_or_else(|| {
        ApiError::unprocessable(
            field,
            format!(
                "unknown role `{}`; the built-in roles are {} (custom roles: GET …/roles)",
                shorten(role, 64),
                BUILTIN_ROLES.join(", ")
            ),
        )
    })?;
    if let Some(missing) = scopes.iter().find(|s| !caller.has(**s)) {
        return Err(ApiError::forbidden(&format!(
            "you cannot grant role `{role}`: it includes `{missing}`, which you do not hold"
        )));
    }
    Ok(scopes)
}

fn key_json(key: &StoredApiKey, principal: Option<&Principal>) -> Value {
    let mut v = json!(key);
    v["status"] = json!(key.status(Utc::now()));
    if let Some(p) = principal {
        v["principal"] = json!({"id": p.id, "kind": p.kind, "name": p.name});
    }
    v
}

fn new_key_json(key: &StoredApiKey, principal: &Principal, secret: &str) -> Value {
    let mut v = key_json(key, Some(principal));
    v["key"] = json!(secret);
    v
}

// ---------------------------------------------------------------------------------------------
// Workspaces and users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateWorkspace {
    name: String,
}

/// `POST /api/workspaces`: the caller (an instance admin) becomes the owner of the new workspace
/// and gets an owner key for it, shown once.
pub(super) async fn create_workspace(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateWorkspace>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_name("name", &body.name)?;
    let principal = caller.principal()?.clone();
    let generated = generate_api_key();
    let (ws, principal, key) = state
        .store
        .create_workspace_with_owner(&body.name, WorkspaceOwner::Existing(principal), |pid| {
            NewApiKey {
                principal_id: pid,
                name: format!("owner key of {}", body.name),
                prefix: generated.prefix.clone(),
                hash: generated.hash.clone(),
                role: None,
                expires: None,
            }
        })
        .await?;
    note.target("workspace", &ws.name);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": ws.id, "name": ws.name, "created": ws.created, "role": "owner",
            "api_key": new_key_json(&key, &principal, generated.key.expose()),
        })),
    ))
}

/// `GET /api/workspaces`: the workspaces the key's principal is a member of, with its role;
/// `current` marks the one this key acts in.
pub(super) async fn list_workspaces(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
    let key = caller
        .key()
        .ok_or_else(|| ApiError::internal("no key on an authenticated route"))?;
    let all = state.store.workspaces_of(key.principal.id).await?;
    Ok(Json(
        all.into_iter()
            .map(|(w, role)| {
                json!({"id": w.id, "name": w.name, "created": w.created, "role": role,
                       "current": w.id == key.key.workspace_id})
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    name: String,
    #[serde(default)]
    admin: bool,
}

/// `POST /api/users` (admin): a user, member of no workspace yet.
pub(super) async fn create_user(
    State(state): State<AppState>,
    note: AuditNote,
    Body(body): Body<CreateUser>,
) -> ApiResult<(StatusCode, Json<Principal>)> {
    check_user_name(&body.name)?;
    let user = state.store.create_user(&body.name, body.admin).await?;
    note.target("user", &user.name);
    Ok((StatusCode::CREATED, Json(user)))
}

/// `GET /api/users` (admin).
pub(super) async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<Principal>>> {
    Ok(Json(state.store.list_users().await?))
}

// ---------------------------------------------------------------------------------------------
// Members

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddMember {
    user: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetRole {
    role: String,
}

pub(super) async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<AddMember>,
) -> ApiResult<(StatusCode, Json<crate::store::Member>)> {
    let ws = caller.workspace()?;
    check_user_name(&body.user)
        .map_err(|_| ApiError::unprocessable("user", "must be the name of an existing user"))?;
    grantable(&state, &caller, &ws, "role", &body.role).await?;
    let member = state
        .store
        .add_member(ws.id, &body.user, &body.role)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound { .. } => ApiError::unprocessable(
                "user",
                format!(
                    "no user named `{}`; an administrator creates users (POST /api/users)",
                    body.user
                ),
            ),
            other => other.into(),
        })?;
    note.target("member", &member.user);
    note.detail(json!({"role": member.role}));
    Ok((StatusCode::CREATED, Json(member)))
}

pub(super) async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::store::Member>>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.list_members(ws.id).await?))
}

pub(super) async fn update_member(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, user)): Path<(String, String)>,
    Body(body): Body<SetRole>,
) -> ApiResult<Json<crate::store::Member>> {
    let ws = caller.workspace()?;
    let current = state.store.member(ws.id, &user).await?;
    // Taking a role away is as sensitive as granting it.
    grantable(&state, &caller, &ws, "role", &current.role).await?;
    grantable(&state, &caller, &ws, "role", &body.role).await?;
    let member = state
        .store
        .set_member_role(ws.id, &user, &body.role)
        .await?;
    note.detail(json!({"from": current.role, "to": member.role}));
    Ok(Json(member))
}

pub(super) async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((_ws, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    let current = state.store.member(ws.id, &user).await?;
    grantable(&state, &caller, &ws, "role", &current.role).await?;
    state.store.remove_member(ws.id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Service accounts

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateServiceAccount {
    name: String,
    role: String,
}

pub(super) async fn create_service_account(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateServiceAccount>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ws = caller.workspace()?;
    check_name("name", &body.name)?;
    grantable(&state, &caller, &ws, "role", &body.role).await?;
    let generated = generate_api_key();
    let (sa, key) = state
        .store
        .create_service_account(ws.id, &body.name, &body.role, |pid| NewApiKey {
            principal_id: pid,
            name: "initial".into(),
            prefix: generated.prefix.clone(),
            hash: generated.hash.clone(),
            role: None,
            expires: None,
        })
        .await?;
    note.target("service_account", &sa.name);
    note.detail(json!({"role": sa.role, "api_key_id": key.id}));
    let principal = state.store.principal(sa.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": sa.id, "name": sa.name, "workspace_id": sa.workspace_id, "role": sa.role,
            "created": sa.created,
            "api_key": new_key_json(&key, &principal, generated.key.expose()),
        })),
    ))
}

pub(super) async fn list_service_accounts(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<crate::store::ServiceAccount>>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.list_service_accounts(ws.id).await?))
}

pub(super) async fn update_service_account(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, id)): Path<(String, String)>,
    Body(body): Body<SetRole>,
) -> ApiResult<Json<crate::store::ServiceAccount>> {
    let ws = caller.workspace()?;
    let current = state.store.service_account(ws.id, &id).await?;
    grantable(&state, &caller, &ws, "role", &current.role).await?;
    grantable(&state, &caller, &ws, "role", &body.role).await?;
    let sa = state
        .store
        .set_service_account_role(ws.id, &id, &body.role)
        .await?;
    note.detail(json!({"from": current.role, "to": sa.role}));
    Ok(Json(sa))
}

pub(super) async fn delete_service_account(
    State(state): State<AppState>,
    caller: Caller,
    Path((_ws, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    let current = state.store.service_account(ws.id, &id).await?;
    grantable(&state, &caller, &ws, "role", &current.role).await?;
    state.store.delete_service_account(ws.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// API keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    service_account_id: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

fn check_expiry(expires_at: Option<DateTime<Utc>>) -> ApiResult<Option<i64>> {
    match expires_at {
        None => Ok(None),
        Some(t) if t <= Utc::now() => Err(ApiError::unprocessable(
            "expires_at",
            "must be in the future",
        )),
        Some(t) if t > Utc::now() + ChronoDuration::days(MAX_KEY_LIFETIME_DAYS) => Err(
            ApiError::unprocessable("expires_at", "must be at most 10 years from now"),
        ),
        Some(t) => Ok(Some(crate::model::to_micros(t))),
    }
}

/// `POST …/api_keys`: a key for the caller (needs `keys:self`), or for a service account or a
/// member user of the workspace (needs `keys:write`). The key is shown once.
pub(super) async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ws = caller.workspace()?;
    check_label("name", &body.name)?;
    let expires = check_expiry(body.expires_at)?;
    let own = caller.principal()?.clone();
    let principal = match (&body.service_account_id, &body.user) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "service_account_id",
                "give either `service_account_id` or `user`, not both",
            ))
        }
        (Some(sa), None) => {
            let sa = state.store.service_account(ws.id, sa).await.map_err(|_| {
                ApiError::unprocessable(
                    "service_account_id",
                    "no such service account in this workspace",
                )
            })?;
            state.store.principal(sa.id).await?
        }
        (None, Some(user)) => {
            let member =
                state.store.member(ws.id, user).await.map_err(|_| {
                    ApiError::unprocessable("user", "no such member of this workspace")
                })?;
            state.store.principal(member.user_id).await?
        }
        (None, None) => own.clone(),
    };
    if principal.id != own.id && !caller.has(Scope::KeysWrite) {
        return Err(ApiError::forbidden(
            "a key for another principal needs the `keys:write` permission",
        ));
    }
    if let Some(role) = &body.role {
        grantable(&state, &caller, &ws, "role", role).await?;
    }
    let generated = generate_api_key();
    let key = state
        .store
        .create_api_key(
            ws.id,
            NewApiKey {
                principal_id: principal.id,
                name: body.name.clone(),
                prefix: generated.prefix.clone(),
                hash: generated.hash.clone(),
                role: body.role.clone(),
                expires,
            },
        )
        .await?;
    note.target("api_key", key.id);
    note.detail(json!({"principal": principal.name, "role": key.role, "expires": key.expires}));
    Ok((
        StatusCode::CREATED,
        Json(new_key_json(&key, &principal, generated.key.expose())),
    ))
}

/// `GET …/api_keys`: all keys with `keys:read`, else the caller's own; never secrets.
pub(super) async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
    let ws = caller.workspace()?;
    let own = caller.principal()?.id;
    let filter = (!caller.has(Scope::KeysRead)).then_some(own);
    let keys = state.store.list_api_keys(ws.id, filter).await?;
    let mut principals: std::collections::HashMap<Uuid, Principal> = Default::default();
    let mut out = Vec::with_capacity(keys.len());
    for k in &keys {
        if !principals.contains_key(&k.principal_id) {
            let p = state.store.principal(k.principal_id).await?;
            principals.insert(p.id, p);
        }
        out.push(key_json(k, principals.get(&k.principal_id)));
    }
    Ok(Json(out))
}

/// A key of the workspace the caller may manage: its own, or any with `keys:write`.
async fn manageable_key(state: &AppState, caller: &Caller, id: &str) -> ApiResult<StoredApiKey> {
    let ws = caller.workspace()?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("api key", id))?;
    let key = state.store.api_key(ws.id, id).await?;
    if key.principal_id != caller.principal()?.id && !caller.has(Scope::KeysWrite) {
        return Err(ApiError::forbidden(
            "managing another principal's key needs the `keys:write` permission",
        ));
    }
    Ok(key)
}

pub(super) async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((_ws, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let key = manageable_key(&state, &caller, &id).await?;
    let revoked = state.store.revoke_api_key(key.workspace_id, key.id).await?;
    Ok(Json(key_json(&revoked, None)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateKey {
    #[serde(default)]
    grace_seconds: Option<i64>,
}

/// `POST …/api_keys/{id}/rotate`: a new key for the same principal, name, role and expiry; the
/// old key keeps working for `grace_seconds` (default 3600, at most 30 days), then stops.
pub(super) async fn rotate_api_key(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, id)): Path<(String, String)>,
    OptionalBody(body): OptionalBody<RotateKey>,
) -> ApiResult<Json<Value>> {
    let grace = body.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(ApiError::unprocessable(
            "grace_seconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS} (30 days)"),
        ));
    }
    let key = manageable_key(&state, &caller, &id).await?;
    let generated = generate_api_key();
    let until = crate::model::now_micros() + grace * 1_000_000;
    let (new, old) = state
        .store
        .rotate_api_key(
            key.workspace_id,
            key.id,
            |old| NewApiKey {
                principal_id: old.principal_id,
                name: old.name.clone(),
                prefix: generated.prefix.clone(),
                hash: generated.hash.clone(),
                role: old.role.clone(),
                expires: old.expires.map(crate::model::to_micros),
            },
            until,
        )
        .await?;
    note.detail(json!({"new_key_id": new.id, "old_valid_until": old.expires}));
    let principal = state.store.principal(new.principal_id).await?;
    Ok(Json(json!({
        "api_key": new_key_json(&new, &principal, generated.key.expose()),
        "previous": key_json(&old, Some(&principal)),
    })))
}

// ---------------------------------------------------------------------------------------------
// Roles

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRole {
    name: String,
    #[serde(default)]
    description: Option<String>,
    scopes: Vec<String>,
}

pub(super) async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateRole>,
) -> ApiResult<(StatusCode, Json<crate::store::CustomRole>)> {
    let ws = caller.workspace()?;
    check_custom_role_name(&body.name).map_err(|m| ApiError::unprocessable("name", m))?;
    if let Some(d) = &body.description {
        if d.chars().count() > 1000 {
            return Err(ApiError::unprocessable(
                "description",
                "at most 1000 characters",
            ));
        }
    }
    if body.scopes.len() > crate::access::Scope::ALL.len() {
        return Err(ApiError::unprocessable("scopes", "too many scopes"));
    }
    let scopes = parse_scopes(&body.scopes)
        .map_err(|(i, m)| ApiError::unprocessable(&format!("scopes[{i}]"), m))?;
    if let Some(missing) = scopes.iter().find(|s| !caller.has(**s)) {
        return Err(ApiError::forbidden(&format!(
            "you cannot create a role with `{missing}`, which you do not hold"
        )));
    }
    let names: Vec<String> = scopes.iter().map(|s| s.as_str().to_string()).collect();
    let role = state
        .store
        .create_role(ws.id, &body.name, body.description.as_deref(), &names)
        .await?;
    note.target("role", &role.name);
    note.detail(json!({"scopes": role.scopes}));
    Ok((StatusCode::CREATED, Json(role)))
}

pub(super) async fn list_roles(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
    let ws = caller.workspace()?;
    let mut out: Vec<Value> = BUILTIN_ROLES
        .iter()
        .map(|r| {
            let scopes: Vec<&str> = builtin_scopes(r)
                .unwrap_or_default()
                .into_iter()
                .map(Scope::as_str)
                .collect();
            json!({"name": r, "builtin": true, "description": builtin_description(r), "scopes": scopes})
        })
        .collect();
    for r in state.store.list_roles(ws.id).await? {
        let mut v = json!(r);
        v["builtin"] = json!(false);
        out.push(v);
    }
    Ok(Json(out))
}

pub(super) async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((_ws, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    if BUILTIN_ROLES.contains(&name.as_str()) {
        return Err(ApiError::conflict(
            "name",
            format!("`{name}` is a built-in role and cannot be deleted"),
        ));
    }
    state.store.delete_role(ws.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Audit log

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET …/audit_log`, newest first.
pub(super) async fn audit_log(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<crate::store::AuditEntry>>> {
    let ws = caller.workspace()?;
    let filter = audit_filter(q)?;
    Ok(Json(state.store.list_audit(ws.id, &filter).await?))
}

/// `GET /api/audit_log` (admin): the records that belong to no workspace.
pub(super) async fn instance_audit_log(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<crate::store::AuditEntry>>> {
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
