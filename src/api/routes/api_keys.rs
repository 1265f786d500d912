//! API keys: create (shown once), list (never secrets), revoke, rotate.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::super::guard::role_scopes;
use super::super::table::{handler, ws, Route};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, OptionalBody,
};
use super::access::grantable;
use crate::access::{check_grant, check_revoke, Grant, Scope, Scopes};
use crate::auth::generate_api_key;
use crate::model::Workspace;
use crate::store::{NewApiKey, Principal, PrincipalKind, StoredApiKey};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/api_keys"), handler!(create_api_key))
        .summary("Create an API key (shown once); for another principal needs `keys:write`")
        .access(Access::Workspace(Scope::KeysSelf))
        .audit("api_key.create", Always)
        .body::<CreateKey>()
        .created::<NewApiKeyView>()
        .errors(&[409]),
    Route::get(ws!("/api_keys"), handler!(list_api_keys))
        .summary("List API keys (own keys; all with `keys:read`); never secrets")
        .access(Access::Workspace(Scope::KeysSelf))
        .audit("api_key.list", DeniedOnly)
        .ok::<Vec<ApiKeyView>>(),
    Route::delete(ws!("/api_keys/{id}"), handler!(revoke_api_key))
        .summary("Revoke an API key (own; any with `keys:write`; another owner's only by an owner)")
        .access(Access::Workspace(Scope::KeysSelf))
        .audit("api_key.revoke", Always)
        .ok::<ApiKeyView>()
        .errors(&[409]),
    Route::post(ws!("/api_keys/{id}/rotate"), handler!(rotate_api_key))
        .summary("Rotate an API key: a new key, the old one valid for a grace period")
        .access(Access::Workspace(Scope::KeysSelf))
        .audit("api_key.rotate", Always)
        .optional_body::<RotateKey>()
        .ok::<Rotated>()
        .errors(&[409]),
];

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

/// An API key as the API shows it: never its secret (except [`NewApiKeyView`], once).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyView {
    /// The stored key.
    #[serde(flatten)]
    pub key: StoredApiKey,
    /// `active`, `expired` or `revoked`, now.
    #[schemars(with = "KeyStatus")]
    pub status: &'static str,
    /// Whom it acts for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalRef>,
}

/// A key's status.
#[derive(JsonSchema)]
#[schemars(rename_all = "lowercase")]
#[allow(dead_code)] // describes `StoredApiKey::status`'s strings
enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

/// The principal a key acts for.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PrincipalRef {
    /// Id.
    pub id: Uuid,
    /// User or service account.
    pub kind: PrincipalKind,
    /// Name.
    pub name: String,
}

/// A key just made: its secret is shown this once.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NewApiKeyView {
    /// The key.
    #[serde(flatten)]
    pub view: ApiKeyView,
    /// The secret: `Authorization: Bearer <key>`.
    pub key: String,
}

/// The answer to a rotation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Rotated {
    /// The new key (shown once).
    pub api_key: NewApiKeyView,
    /// The old key, valid until the end of the grace period.
    pub previous: ApiKeyView,
}

fn key_json(key: &StoredApiKey, principal: Option<&Principal>) -> ApiKeyView {
    ApiKeyView {
        key: key.clone(),
        status: key.status(Utc::now()),
        principal: principal.map(|p| PrincipalRef {
            id: p.id,
            kind: p.kind,
            name: p.name.clone(),
        }),
    }
}

/// A key just made, with its secret.
pub(crate) fn new_key_json(
    key: &StoredApiKey,
    principal: &Principal,
    secret: &str,
) -> NewApiKeyView {
    NewApiKeyView {
        view: key_json(key, Some(principal)),
        key: secret.to_string(),
    }
}

/// A new API key: for the caller, or for a service account or a member (`keys:write`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label, 1–100 characters.
    name: String,
    /// A role capping what the key may do (default: the principal's role).
    #[serde(default)]
    role: Option<String>,
    /// A service account of the workspace (needs `keys:write`).
    #[serde(default)]
    service_account_id: Option<String>,
    /// A member user of the workspace (needs `keys:write`).
    #[serde(default)]
    user: Option<String>,
    /// Expiry, in the future and at most 10 years ahead.
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

/// The caller's own effective grant: its principal, scopes (role ∩ key cap) and key expiry.
pub(super) fn caller_grant(caller: &Caller) -> ApiResult<Grant> {
    let key = caller
        .key()
        .ok_or_else(|| ApiError::internal("route without a principal"))?;
    Ok(Grant {
        principal: key.principal.id,
        scopes: caller.scopes.clone(),
        expires: key.key.expires.map(crate::model::to_micros),
        admin: key.principal.admin,
        owner: caller.role.as_deref() == Some("owner"),
    })
}

/// Refuses (403, naming the rule) what would exceed the caller's own grant; see [`check_grant`].
pub(super) fn within_grant(caller: &Caller, given: &Grant) -> ApiResult<()> {
    check_grant(&caller_grant(caller)?, given).map_err(|rule| ApiError::forbidden(&rule))
}

/// What a key of `principal` in `ws` with role cap `cap` and expiry `expires` would hold.
async fn key_grant(
    state: &AppState,
    ws: &Workspace,
    principal: &Principal,
    cap: Option<&str>,
    expires: Option<i64>,
) -> ApiResult<Grant> {
    let role = state
        .store
        .workspace_access(&ws.name, principal.id)
        .await?
        .and_then(|(_, role)| role);
    let mut scopes = match &role {
        Some(r) => role_scopes(state, ws.id, r).await?.unwrap_or_default(),
        None => Scopes::new(),
    };
    if let Some(cap) = cap {
        let capped = role_scopes(state, ws.id, cap).await?.unwrap_or_default();
        scopes.retain(|s| capped.contains(s));
    }
    Ok(Grant {
        principal: principal.id,
        scopes,
        expires,
        admin: principal.admin,
        owner: role.as_deref() == Some("owner"),
    })
}

/// The earlier of two expiries (`None` = never).
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `POST …/api_keys`: a key for the caller (needs `keys:self`), or for a service account or a
/// member user of the workspace (needs `keys:write`). The key is shown once.
async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateKey>,
) -> ApiResult<(StatusCode, Json<NewApiKeyView>)> {
    let ws = caller.workspace()?;
    check_label("name", &body.name)?;
    let mine = caller_grant(&caller)?;
    // Without an expiry or a cap of its own, a key inherits the caller's: a capped or expiring
    // key never mints a wider or longer-lived one.
    let expires = check_expiry(body.expires_at)?.or(mine.expires);
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
    let role = body
        .role
        .clone()
        .or_else(|| caller.key().and_then(|k| k.key.role.clone()));
    within_grant(
        &caller,
        &key_grant(&state, &ws, &principal, role.as_deref(), expires).await?,
    )?;
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
                role,
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
async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiKeyView>>> {
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

async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((_ws, id)): Path<(String, String)>,
) -> ApiResult<Json<ApiKeyView>> {
    let key = manageable_key(&state, &caller, &id).await?;
    // Taking an owner's key away is as sensitive as rotating it: only a full owner may.
    let ws = caller.workspace()?;
    let principal = state.store.principal(key.principal_id).await?;
    let target = key_grant(&state, &ws, &principal, key.role.as_deref(), None).await?;
    check_revoke(&caller_grant(&caller)?, &target).map_err(|rule| ApiError::forbidden(&rule))?;
    let revoked = state.store.revoke_api_key(key.workspace_id, key.id).await?;
    Ok(Json(key_json(&revoked, None)))
}

/// How long the old key keeps working (seconds, default 3600, at most 30 days).
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, 0–2592000 seconds (default 3600).
    #[serde(default)]
    #[schemars(range(min = 0, max = 2_592_000))]
    grace_seconds: Option<i64>,
}

/// `POST …/api_keys/{id}/rotate`: a new key for the same principal, name, role and expiry (never
/// beyond the caller's own grant: see [`check_grant`]); the old key keeps working for `grace_seconds` (default 3600, at most 30 days), then stops.
async fn rotate_api_key(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Path((_ws, id)): Path<(String, String)>,
    OptionalBody(body): OptionalBody<RotateKey>,
) -> ApiResult<Json<Rotated>> {
    let grace = body.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(ApiError::unprocessable(
            "grace_seconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS} (30 days)"),
        ));
    }
    let key = manageable_key(&state, &caller, &id).await?;
    // The new key never outlives the caller's, and must be one the caller could mint.
    let expires = earliest(
        key.expires.map(crate::model::to_micros),
        caller_grant(&caller)?.expires,
    );
    let principal = state.store.principal(key.principal_id).await?;
    let ws = caller.workspace()?;
    let mut role = key.role.clone();
    let grant = key_grant(&state, &ws, &principal, role.as_deref(), expires).await?;
    if principal.id == caller.principal()?.id && within_grant(&caller, &grant).is_err() {
        // Rotating one's own wider key through a capped one narrows the new key to the
        // caller's cap instead of handing the wider key back.
        role = caller.key().and_then(|k| k.key.role.clone());
    }
    within_grant(
        &caller,
        &key_grant(&state, &ws, &principal, role.as_deref(), expires).await?,
    )?;
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
                role: role.clone(),
                expires,
            },
            until,
        )
        .await?;
    note.detail(json!({"new_key_id": new.id, "old_valid_until": old.expires}));
    Ok(Json(Rotated {
        api_key: new_key_json(&new, &principal, generated.key.expose()),
        previous: key_json(&old, Some(&principal)),
    }))
}
