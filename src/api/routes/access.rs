//! Workspaces, users, members, service accounts and roles.
//!
//! Nobody can hand out more than they hold: a role granted to a member, a service account or a
//! key cap must consist of scopes the caller has.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::super::guard::role_scopes;
use super::super::table::{handler, ws, Route};
use super::super::validate::check_name;
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json,
};
use super::api_keys::{new_key_json, NewApiKeyView};
use crate::access::{
    builtin_description, builtin_scopes, check_custom_role_name, check_grant, parse_scopes,
    shorten, Grant, Scope, Scopes, BUILTIN_ROLES,
};
use crate::auth::generate_api_key;
use crate::model::Workspace;
use crate::store::{CustomRole, Member, NewApiKey, Principal, ServiceAccount, WorkspaceOwner};
use uuid::Uuid;

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post("/api/workspaces", handler!(create_workspace))
        .summary("Create a workspace (the caller becomes its owner and gets an owner key for it)")
        .access(Access::Admin)
        .audit("workspace.create", Always)
        .body::<CreateWorkspace>()
        .created::<WorkspaceCreated>()
        .errors(&[409]),
    Route::get("/api/workspaces", handler!(list_workspaces))
        .summary("The workspaces the key's principal is a member of")
        .access(Access::Authenticated)
        .audit("workspace.list", DeniedOnly)
        .ok::<Vec<WorkspaceMembership>>(),
    Route::post("/api/users", handler!(create_user))
        .summary("Create a user")
        .access(Access::Admin)
        .audit("user.create", Always)
        .body::<CreateUser>()
        .created::<Principal>()
        .errors(&[409]),
    Route::get("/api/users", handler!(list_users))
        .summary("List users")
        .access(Access::Admin)
        .audit("user.list", DeniedOnly)
        .ok::<Vec<Principal>>(),
    Route::post(ws!("/members"), handler!(add_member))
        .summary("Add a user to the workspace with a role")
        .access(Access::Workspace(Scope::MembersWrite))
        .audit("member.add", Always)
        .body::<AddMember>()
        .created::<Member>()
        .errors(&[409]),
    Route::get(ws!("/members"), handler!(list_members))
        .summary("List the workspace's users and their roles")
        .access(Access::Workspace(Scope::MembersRead))
        .audit("member.list", DeniedOnly)
        .ok::<Vec<Member>>(),
    Route::patch(ws!("/members/{user}"), handler!(update_member))
        .summary("Change a member's role")
        .access(Access::Workspace(Scope::MembersWrite))
        .audit("member.update", Always)
        .body::<SetRole>()
        .ok::<Member>()
        .errors(&[409]),
    Route::delete(ws!("/members/{user}"), handler!(remove_member))
        .summary("Remove a user from the workspace (revokes their keys here)")
        .access(Access::Workspace(Scope::MembersWrite))
        .audit("member.remove", Always)
        .no_content()
        // 422: the member's current role is no longer known (see `grantable`).
        .errors(&[409, 422]),
    Route::post(ws!("/service_accounts"), handler!(create_service_account))
        .summary("Create a service account and its first API key (shown once)")
        .access(Access::Workspace(Scope::ServiceAccountsWrite))
        .audit("service_account.create", Always)
        .body::<CreateServiceAccount>()
        .created::<ServiceAccountCreated>()
        .errors(&[409]),
    Route::get(ws!("/service_accounts"), handler!(list_service_accounts))
        .summary("List service accounts")
        .access(Access::Workspace(Scope::ServiceAccountsRead))
        .audit("service_account.list", DeniedOnly)
        .ok::<Vec<ServiceAccount>>(),
    Route::patch(
        ws!("/service_accounts/{id}"),
        handler!(update_service_account),
    )
    .summary("Change a service account's role")
    .access(Access::Workspace(Scope::ServiceAccountsWrite))
    .audit("service_account.update", Always)
    .body::<SetRole>()
    .ok::<ServiceAccount>()
    .errors(&[409]),
    Route::delete(
        ws!("/service_accounts/{id}"),
        handler!(delete_service_account),
    )
    .summary("Delete a service account (revokes its keys)")
    .access(Access::Workspace(Scope::ServiceAccountsWrite))
    .audit("service_account.delete", Always)
    .no_content()
    // 422: the account's current role is no longer known (see `grantable`).
    .errors(&[409, 422]),
    Route::post(ws!("/roles"), handler!(create_role))
        .summary("Create a custom role from permission scopes")
        .access(Access::Workspace(Scope::RolesWrite))
        .audit("role.create", Always)
        .body::<CreateRole>()
        .created::<CustomRole>()
        .errors(&[409]),
    Route::get(ws!("/roles"), handler!(list_roles))
        .summary("Built-in and custom roles with their scopes")
        .access(Access::Workspace(Scope::RolesRead))
        .audit("role.list", DeniedOnly)
        .ok::<Vec<RoleView>>(),
    Route::delete(ws!("/roles/{name}"), handler!(delete_role))
        .summary("Delete a custom role no one holds")
        .access(Access::Workspace(Scope::RolesWrite))
        .audit("role.delete", Always)
        .no_content()
        .errors(&[409]),
];

/// A new workspace, with the owner key made for the caller.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkspaceCreated {
    /// The workspace.
    #[serde(flatten)]
    pub workspace: Workspace,
    /// The caller's role in it: `owner`.
    pub role: String,
    /// An owner key for it (shown once).
    pub api_key: NewApiKeyView,
}

/// A workspace the key's principal is a member of.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkspaceMembership {
    /// The workspace.
    #[serde(flatten)]
    pub workspace: Workspace,
    /// The principal's role there.
    pub role: String,
    /// The workspace this key acts in.
    pub current: bool,
}

/// A new service account with its first API key.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ServiceAccountCreated {
    /// The account.
    #[serde(flatten)]
    pub account: ServiceAccount,
    /// Its first API key (shown once).
    pub api_key: NewApiKeyView,
}

/// A role of the workspace: built-in or custom.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RoleView {
    /// Name.
    pub name: String,
    /// One of the five built-in roles.
    pub builtin: bool,
    /// What it is for.
    pub description: Option<String>,
    /// Its permissions.
    pub scopes: Vec<Scope>,
    /// When a custom role was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
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
pub(super) async fn grantable(
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
    // A role is no credential of its own: the lifetime part of the rule applies to keys.
    let mine = super::api_keys::caller_grant(caller)?;
    let given = Grant {
        principal: Uuid::nil(),
        scopes: scopes.clone(),
        expires: mine.expires,
        admin: false,
        owner: false,
    };
    check_grant(&mine, &given)
        .map_err(|rule| ApiError::forbidden(&format!("you cannot grant role `{role}`: {rule}")))?;
    Ok(scopes)
}

// ---------------------------------------------------------------------------------------------
// Workspaces and users

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Name: 1–100 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
    name: String,
}

/// `POST /api/workspaces`: the caller (an instance admin) becomes the owner of the new workspace
/// and gets an owner key for it, shown once.
async fn create_workspace(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateWorkspace>,
) -> ApiResult<(StatusCode, Json<WorkspaceCreated>)> {
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
        Json(WorkspaceCreated {
            workspace: ws,
            role: "owner".into(),
            api_key: new_key_json(&key, &principal, generated.key.expose()),
        }),
    ))
}

/// `GET /api/workspaces`: the workspaces the key's principal is a member of, with its role;
/// `current` marks the one this key acts in.
async fn list_workspaces(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<WorkspaceMembership>>> {
    let key = caller
        .key()
        .ok_or_else(|| ApiError::internal("no key on an authenticated route"))?;
    let all = state.store.workspaces_of(key.principal.id).await?;
    Ok(Json(
        all.into_iter()
            .map(|(w, role)| WorkspaceMembership {
                current: w.id == key.key.workspace_id,
                workspace: w,
                role,
            })
            .collect(),
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1–100 letters, digits, `-`, `_`, `.`, `@` or `+`, starting with a letter or digit.
    name: String,
    /// An instance administrator.
    #[serde(default)]
    admin: bool,
}

/// `POST /api/users` (admin): a user, member of no workspace yet.
async fn create_user(
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
async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<Principal>>> {
    Ok(Json(state.store.list_users().await?))
}

// ---------------------------------------------------------------------------------------------
// Members

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// A user's name.
    user: String,
    /// A built-in role (`owner`, `developer`, `runner`, `viewer`, `controller`) or a custom role.
    role: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// A built-in role (`owner`, `developer`, `runner`, `viewer`, `controller`) or a custom role.
    role: String,
}

async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<AddMember>,
) -> ApiResult<(StatusCode, Json<Member>)> {
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

async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Member>>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.list_members(ws.id).await?))
}

async fn update_member(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, user)): Path<(String, String)>,
    Body(body): Body<SetRole>,
) -> ApiResult<Json<Member>> {
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

async fn remove_member(
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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    /// Name: 1–100 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
    name: String,
    /// A built-in role (`owner`, `developer`, `runner`, `viewer`, `controller`) or a custom role.
    role: String,
}

async fn create_service_account(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateServiceAccount>,
) -> ApiResult<(StatusCode, Json<ServiceAccountCreated>)> {
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
            // The account's first key never outlives the caller's key.
            expires: caller
                .key()
                .and_then(|k| k.key.expires)
                .map(crate::model::to_micros),
        })
        .await?;
    note.target("service_account", &sa.name);
    note.detail(json!({"role": sa.role, "api_key_id": key.id}));
    let principal = state.store.principal(sa.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(ServiceAccountCreated {
            account: sa,
            api_key: new_key_json(&key, &principal, generated.key.expose()),
        }),
    ))
}

async fn list_service_accounts(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ServiceAccount>>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.list_service_accounts(ws.id).await?))
}

async fn update_service_account(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, id)): Path<(String, String)>,
    Body(body): Body<SetRole>,
) -> ApiResult<Json<ServiceAccount>> {
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

async fn delete_service_account(
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
// Roles

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    /// Lowercase letters, digits, `-`, `_`, 1–64 characters, starting with a letter; not a built-in name.
    name: String,
    /// Free text (at most 1000 characters).
    #[serde(default)]
    description: Option<String>,
    /// Permission scopes, at least one, no repeats.
    scopes: Vec<String>,
}

async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateRole>,
) -> ApiResult<(StatusCode, Json<CustomRole>)> {
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

async fn list_roles(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<RoleView>>> {
    let ws = caller.workspace()?;
    let mut out: Vec<RoleView> = BUILTIN_ROLES
        .iter()
        .map(|r| RoleView {
            name: r.to_string(),
            builtin: true,
            description: Some(builtin_description(r).to_string()),
            scopes: builtin_scopes(r).unwrap_or_default().into_iter().collect(),
            created: None,
        })
        .collect();
    for r in state.store.list_roles(ws.id).await? {
        out.push(RoleView {
            name: r.name,
            builtin: false,
            description: r.description,
            scopes: r.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            created: Some(r.created),
        });
    }
    Ok(Json(out))
}

async fn delete_role(
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
