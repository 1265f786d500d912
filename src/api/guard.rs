//! Authentication, authorization and auditing of every API request, in one place.
//!
//! Each entry of the route table ([`super::routes`]) says what the route is (`action`), who may
//! call it ([`Access`]) and what is audited ([`AuditPolicy`]). The router is built from that
//! table, and [`guard`] enforces the entry of the matched method and path: a route that is not
//! in the table cannot be reached (fail closed). A known path asked with a method it does not
//! serve answers 405 with `Allow`.
//!
//! Workspace isolation: a key acts in exactly one workspace. A request for another workspace,
//! existing or not, answers the same 404 `workspace `x` not found`. Inside its workspace, the
//! key's scopes are its principal's role scopes intersected with the key's own role cap; a
//! missing scope answers 403 naming it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::routes;
use super::table::{Method, Route};
use super::{ApiError, AppState};
use crate::access::{builtin_scopes, shorten, Scope, Scopes};
use crate::auth::{hash_key, hashes_match, key_prefix};
use crate::model::Workspace;
use crate::store::{KeyWithPrincipal, NewAuditEntry, Principal, StoreError};

/// How long after its run ended a run token may still write (late log lines).
pub const RUN_TOKEN_AFTERLIFE: std::time::Duration = std::time::Duration::from_secs(600);

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no key (health, metrics, the API description).
    Public,
    /// Any valid API key.
    Authenticated,
    /// An instance administrator's key without a role cap.
    Admin,
    /// A key of the `{ws}` workspace whose scopes include this one.
    Workspace(Scope),
    /// The run token of the run `{id}` (the job itself).
    RunToken,
}

impl Access {
    /// How the OpenAPI document describes it.
    pub fn describe(self) -> String {
        match self {
            Access::Public => "none".into(),
            Access::Authenticated => "any API key".into(),
            Access::Admin => "an instance administrator's API key".into(),
            Access::Workspace(s) => format!("an API key of the workspace with scope `{s}`"),
            Access::RunToken => "the run's own job token (PUSHPOOL_RUN_TOKEN)".into(),
        }
    }
}

/// What the audit log records of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditPolicy {
    /// Every attempt: recorded before the handler runs (`pending`) and completed after, so a
    /// crash in between still leaves the attempt on record.
    Always,
    /// Only attempts that were denied (reads, and the job's heartbeats and log lines).
    DeniedOnly,
    /// Denied attempts, failures, and successes the handler marks as a change (a controller's
    /// claim poll that claimed runs).
    WhenChanged,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An API key and the principal it acts for.
    Key(Box<KeyWithPrincipal>),
    /// A run token: acts on one run attempt only.
    RunToken {
        /// The run.
        run_id: Uuid,
        /// The attempt.
        attempt: i64,
    },
    /// No (valid) credentials.
    Anonymous,
}

impl Actor {
    fn audit_fields(&self) -> (String, Option<String>, String, Option<Uuid>) {
        match self {
            Actor::Key(k) => (
                k.principal.kind.as_str().to_string(),
                Some(k.principal.id.to_string()),
                k.principal.name.clone(),
                Some(k.key.id),
            ),
            Actor::RunToken { run_id, .. } => (
                "run_token".into(),
                Some(run_id.to_string()),
                format!("run:{run_id}"),
                None,
            ),
            Actor::Anonymous => ("anonymous".into(), None, "anonymous".into(), None),
        }
    }
}

/// The authenticated and authorized caller of a request (put there by [`guard`]).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub actor: Actor,
    /// The workspace the request acts in (workspace routes, and a run token's run).
    pub workspace: Option<Workspace>,
    /// The principal's role in that workspace.
    pub role: Option<String>,
    /// What the caller may do there: role scopes ∩ key cap scopes.
    pub scopes: Scopes,
}

impl Caller {
    /// The workspace of a workspace route.
    pub fn workspace(&self) -> Result<Workspace, ApiError> {
        self.workspace
            .clone()
            .ok_or_else(|| ApiError::internal("route without a workspace"))
    }
    /// The key and principal, for key-authenticated requests.
    pub fn key(&self) -> Option<&KeyWithPrincipal> {
        match &self.actor {
            Actor::Key(k) => Some(k),
            _ => None,
        }
    }
    /// The principal, for key-authenticated requests.
    pub fn principal(&self) -> Result<&Principal, ApiError> {
        self.key()
            .map(|k| &k.principal)
            .ok_or_else(|| ApiError::internal("route without a principal"))
    }
    /// True when the caller holds `scope` in the workspace.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
    /// A 403 like the guard's unless the caller holds `scope`, for what a route's body asks
    /// beyond the route's own scope; `why` says which part of the request needs it.
    pub fn require(&self, scope: Scope, why: &str) -> Result<(), ApiError> {
        if self.has(scope) {
            return Ok(());
        }
        let role = self.role.as_deref().unwrap_or("none");
        let cap = self.key().and_then(|k| k.key.role.as_deref());
        Err(ApiError::forbidden(&format!(
            "{} ({why})",
            missing_scope(scope, role, cap)
        )))
    }
}

/// The message of a 403 for a missing scope, naming the role (and the key's cap) that lacks it.
fn missing_scope(scope: Scope, role: &str, cap: Option<&str>) -> String {
    let held = match cap {
        Some(cap) if cap != role => format!("role `{role}` capped by the key's role `{cap}`"),
        _ => format!("role `{role}`"),
    };
    format!("this needs the `{scope}` permission, which your {held} does not include")
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("request reached a handler without the guard"))
    }
}

#[derive(Debug, Default)]
struct NoteInner {
    target: Option<String>,
    changed: bool,
    detail: Option<Value>,
}

/// What a handler adds to its audit record: the target it created, that it changed something,
/// extra facts (never secrets).
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<NoteInner>>);

impl AuditNote {
    fn lock(&self) -> std::sync::MutexGuard<'_, NoteInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The object acted on, as `kind:id`.
    pub fn target(&self, kind: &str, id: impl std::fmt::Display) {
        self.lock().target = Some(format!("{kind}:{id}"));
    }
    /// Marks a [`AuditPolicy::WhenChanged`] request as having changed something.
    pub fn changed(&self) {
        self.lock().changed = true;
    }
    /// Extra facts.
    pub fn detail(&self, detail: Value) {
        self.lock().detail = Some(detail);
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuditNote {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default())
    }
}

/// An error answer's code and message, attached to the response for the audit record.
#[derive(Debug, Clone)]
pub struct ErrorNote {
    /// The error code.
    pub code: &'static str,
    /// The message.
    pub message: String,
}

/// Why a request was refused before its handler ran.
struct Denial {
    error: ApiError,
    actor: Actor,
    workspace_id: Option<Uuid>,
}

fn deny(error: ApiError, actor: &Actor, workspace_id: Option<Uuid>) -> Denial {
    Denial {
        error,
        actor: actor.clone(),
        workspace_id,
    }
}

/// Reads and checks the bearer credential.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <key>` header"))?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    if token.starts_with("ppr_") {
        let (run_id, attempt) = state
            .tokens
            .verify(token)
            .ok_or_else(|| ApiError::unauthorized("invalid run token"))?;
        return Ok(Actor::RunToken { run_id, attempt });
    }
    let prefix = key_prefix(token).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    let found = state
        .store
        .api_key_by_prefix(prefix)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    if !hashes_match(&hash_key(token), &found.key.hash) {
        return Err(ApiError::unauthorized("invalid API key"));
    }
    if found.key.revoked.is_some() {
        return Err(ApiError::unauthorized("this API key was revoked"));
    }
    if found.key.expires.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::unauthorized("this API key has expired"));
    }
    if found.principal.deleted.is_some() {
        return Err(ApiError::unauthorized(
            "the service account of this API key was deleted",
        ));
    }
    Ok(Actor::Key(Box::new(found)))
}

/// The scopes of a role name in a workspace (built-in or custom; unknown = none).
pub async fn role_scopes(
    state: &AppState,
    workspace_id: Uuid,
    role: &str,
) -> Result<Option<Scopes>, StoreError> {
    if let Some(s) = builtin_scopes(role) {
        return Ok(Some(s));
    }
    Ok(state
        .store
        .custom_role_scopes(workspace_id, role)
        .await?
        .map(|names| names.iter().filter_map(|n| n.parse().ok()).collect()))
}

async fn workspace_id_by_name(state: &AppState, name: Option<&str>) -> Option<Uuid> {
    state.store.workspace(name?).await.ok().map(|w| w.id)
}

/// True for an administrator's uncapped key of its home workspace (the first it became a member
/// of). A key an administrator holds in any other workspace is an ordinary member's key: being
/// added to a workspace never hands its owners a way to administrator powers.
async fn admin_at_home(state: &AppState, key: &KeyWithPrincipal) -> bool {
    if !key.principal.admin || key.key.role.is_some() {
        return false;
    }
    let home = state.store.home_workspace(key.principal.id).await;
    matches!(home, Ok(Some(home)) if home == key.key.workspace_id)
}

/// Decides whether the request may proceed, and as whom.
async fn authorize(
    state: &AppState,
    spec: &Route,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Caller, Denial> {
    let ws_name = params.get("ws").map(String::as_str);
    let actor = match authenticate(state, headers).await {
        Ok(a) => a,
        Err(e) => {
            return Err(deny(
                e,
                &Actor::Anonymous,
                workspace_id_by_name(state, ws_name).await,
            ))
        }
    };
    let caller = |workspace: Option<Workspace>, role: Option<String>, scopes: Scopes| Caller {
        actor: actor.clone(),
        workspace,
        role,
        scopes,
    };
    match spec.access {
        Access::Public => Ok(caller(None, None, Scopes::new())),
        Access::Authenticated | Access::Admin => {
            let Actor::Key(key) = &actor else {
                return Err(deny(
                    ApiError::forbidden(
                        "a run token may only act on its own run (under /api/runs/{id})",
                    ),
                    &actor,
                    None,
                ));
            };
            if spec.access == Access::Admin && !admin_at_home(state, key).await {
                return Err(deny(
                    ApiError::forbidden(
                        "only an instance administrator's API key (without a role cap, of its home workspace) may do this",
                    ),
                    &actor,
                    None,
                ));
            }
            Ok(caller(None, None, Scopes::new()))
        }
        Access::Workspace(scope) => {
            let Actor::Key(key) = &actor else {
                return Err(deny(
                    ApiError::forbidden(
                        "a run token may only act on its own run (under /api/runs/{id})",
                    ),
                    &actor,
                    workspace_id_by_name(state, ws_name).await,
                ));
            };
            let ws_name = ws_name.unwrap_or_default();
            let not_found = || ApiError::not_found("workspace", ws_name);
            let access = state
                .store
                .workspace_access(ws_name, key.principal.id)
                .await
                .map_err(|e| deny(e.into(), &actor, None))?;
            let Some((ws, role)) = access else {
                return Err(deny(not_found(), &actor, None));
            };
            // Another workspace, existing or not, looks exactly like one that does not exist.
            let Some(role) = role.filter(|_| key.key.workspace_id == ws.id) else {
                return Err(deny(not_found(), &actor, Some(ws.id)));
            };
            let mut scopes = role_scopes(state, ws.id, &role)
                .await
                .map_err(|e| deny(e.into(), &actor, Some(ws.id)))?
                .unwrap_or_default();
            if let Some(cap) = &key.key.role {
                let cap_scopes = role_scopes(state, ws.id, cap)
                    .await
                    .map_err(|e| deny(e.into(), &actor, Some(ws.id)))?
                    .unwrap_or_default();
                scopes = scopes.intersection(&cap_scopes).copied().collect();
            }
            if !scopes.contains(&scope) {
                return Err(deny(
                    ApiError::forbidden(&missing_scope(scope, &role, key.key.role.as_deref())),
                    &actor,
                    Some(ws.id),
                ));
            }
            Ok(caller(Some(ws), Some(role), scopes))
        }
        Access::RunToken => {
            let Actor::RunToken { run_id, attempt } = &actor else {
                return Err(deny(
                    ApiError::forbidden(
                        "this route is for a run's job token (PUSHPOOL_RUN_TOKEN); use the workspace routes with an API key",
                    ),
                    &actor,
                    None,
                ));
            };
            let asked = params.get("id").map(String::as_str).unwrap_or_default();
            if Uuid::parse_str(asked).ok() != Some(*run_id) {
                return Err(deny(
                    ApiError::forbidden("this run token belongs to another run"),
                    &actor,
                    None,
                ));
            }
            let run = state
                .store
                .run(*run_id)
                .await
                .map_err(|e| deny(e.into(), &actor, None))?;
            if run.attempt != *attempt {
                return Err(deny(
                    ApiError::forbidden("this run token belongs to an earlier attempt"),
                    &actor,
                    Some(run.workspace_id),
                ));
            }
            // A job may flush its last lines after its final state; long after, its token only
            // reads.
            let ended_long_ago = run.state.state_type.is_terminal()
                && Utc::now() - run.state.timestamp
                    > chrono::Duration::from_std(RUN_TOKEN_AFTERLIFE).unwrap_or_default();
            if ended_long_ago && spec.method != Method::Get {
                return Err(deny(
                    ApiError::forbidden(&format!(
                        "this run ended more than {} minutes ago; its token no longer writes",
                        RUN_TOKEN_AFTERLIFE.as_secs() / 60
                    )),
                    &actor,
                    Some(run.workspace_id),
                ));
            }
            let ws = state
                .store
                .workspace_by_id(run.workspace_id)
                .await
                .map_err(|e| deny(e.into(), &actor, Some(run.workspace_id)))?;
            Ok(caller(Some(ws), None, Scopes::new()))
        }
    }
}

/// The caller an API key is in its own workspace (the dashboard's sign-in and every page): the
/// key checked as the guard checks a bearer key, its workspace, its principal's role there and
/// its scopes (role scopes ∩ the key's cap). A run token or a key without a role there is
/// refused with a 401/403 like the API's.
pub async fn key_caller(state: &AppState, key: &str) -> Result<Caller, ApiError> {
    let mut headers = HeaderMap::new();
    let value = header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
        .map_err(|_| ApiError::unauthorized("invalid API key"))?;
    headers.insert(header::AUTHORIZATION, value);
    let actor = authenticate(state, &headers).await?;
    let Actor::Key(k) = &actor else {
        return Err(ApiError::forbidden(
            "a run token cannot sign in; use an API key",
        ));
    };
    let ws = state.store.workspace_by_id(k.key.workspace_id).await?;
    let role = state
        .store
        .workspace_access(&ws.name, k.principal.id)
        .await?
        .and_then(|(_, role)| role)
        .ok_or_else(|| ApiError::forbidden("this key's principal is no member of its workspace"))?;
    let mut scopes = role_scopes(state, ws.id, &role).await?.unwrap_or_default();
    if let Some(cap) = &k.key.role {
        let cap_scopes = role_scopes(state, ws.id, cap).await?.unwrap_or_default();
        scopes = scopes.intersection(&cap_scopes).copied().collect();
    }
    Ok(Caller {
        actor: actor.clone(),
        workspace: Some(ws),
        role: Some(role),
        scopes,
    })
}

fn target_of(spec: &Route, params: &HashMap<String, String>) -> Option<String> {
    let kind = spec.action.split('.').next().unwrap_or(spec.action);
    // The last parameter of the path template names the object (the workspace for
    // workspace-level lists and creates is recorded separately).
    let last = spec.path_params().filter(|p| *p != "ws").last()?;
    let kind = match last {
        "name" if spec.path.contains("/work_pools/") => "work_pool",
        "id_or_name" => "deployment",
        "id" if spec.path.contains("/flow_runs/") || spec.path.starts_with("/api/runs/") => {
            "flow_run"
        }
        "type" => "pool_type",
        _ => kind,
    };
    let value = shorten(params.get(last)?, 200);
    Some(format!("{kind}:{value}"))
}

fn outcome_of(status: StatusCode) -> &'static str {
    if status.is_success() || status.is_redirection() {
        "success"
    } else if matches!(status.as_u16(), 401 | 403) {
        "denied"
    } else {
        "failed"
    }
}

/// Answers a request whose body no handler read. The body is read and dropped first (up to the
/// body limit): a connection with an unread body cannot carry the next request, and hyper would
/// close it silently, so a client reusing it would fail on its next request with a broken pipe.
/// A body over the limit is not read; the answer then says `Connection: close`.
pub(super) async fn answer_unread(body: axum::body::Body, error: ApiError) -> Response {
    let drained = axum::body::to_bytes(body, super::MAX_BODY_BYTES)
        .await
        .is_ok();
    let mut response = error.into_response();
    if !drained {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Whether the path or query string decodes to a NUL character. No name or filter holds one,
/// and PostgreSQL cannot even compare against one (a 500 otherwise); a URL cannot carry a raw NUL.
fn holds_nul(uri: &axum::http::Uri) -> bool {
    let encoded = |s: &str| s.as_bytes().windows(3).any(|w| w == b"%00");
    encoded(uri.path()) || uri.query().is_some_and(encoded)
}

/// Enforces the route table on every request and writes the audit log.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(matched) = req.extensions().get::<MatchedPath>().cloned() else {
        return answer_unread(req.into_body(), ApiError::no_route()).await;
    };
    let method = req.method().as_str().to_ascii_lowercase();
    let Some(spec) = Method::of(req.method()).and_then(|m| routes::find(m, matched.as_str()))
    else {
        let allowed = routes::methods_at(matched.as_str());
        return answer_unread(req.into_body(), ApiError::method_not_allowed(&allowed)).await;
    };
    if holds_nul(req.uri()) {
        let error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the URL must not contain the NUL character (%00)",
        );
        return answer_unread(req.into_body(), error).await;
    }
    if spec.access == Access::Public {
        return next.run(req).await;
    }
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let path = shorten(req.uri().path(), 1000);
    let (mut parts, body) = req.into_parts();
    let params = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &state)
        .await
        .map(|p| p.0)
        .unwrap_or_default();
    let entry = |actor: &Actor, workspace_id: Option<Uuid>| {
        let (actor_kind, actor_id, actor_name, key_id) = actor.audit_fields();
        NewAuditEntry {
            workspace_id,
            actor_kind,
            actor_id,
            actor_name,
            key_id,
            action: spec.action.to_string(),
            target: target_of(spec, &params),
            outcome: String::new(),
            status: 0,
            source: source.clone(),
            method: method.to_uppercase(),
            path: path.clone(),
            detail: None,
        }
    };

    let caller = match authorize(&state, spec, &parts.headers, &params).await {
        Ok(c) => c,
        Err(denial) => {
            let status = denial.error.status;
            let mut record = entry(&denial.actor, denial.workspace_id);
            record.outcome = "denied".into();
            record.status = status.as_u16();
            record.detail = Some(json!({"message": shorten(&denial.error.message, 1000)}));
            if let Err(e) = state.store.insert_audit(record).await {
                tracing::warn!(error = %e, action = spec.action, "could not write the audit record of a denied request");
            }
            state
                .metrics
                .denied_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return answer_unread(body, denial.error).await;
        }
    };
    let workspace_id = caller.workspace.as_ref().map(|w| w.id);
    let note = AuditNote::default();
    let pending = if spec.audit == AuditPolicy::Always {
        let mut record = entry(&caller.actor, workspace_id);
        record.outcome = "pending".into();
        match state.store.insert_audit_pending(record).await {
            Ok(id) => Some(id),
            Err(e) => {
                // Never act without a record of it.
                tracing::warn!(error = %e, action = spec.action, "could not write the audit record; refusing the request");
                return ApiError::from(e).into_response();
            }
        }
    } else {
        None
    };
    parts.extensions.insert(caller.clone());
    parts.extensions.insert(note.clone());
    let response = next.run(Request::from_parts(parts, body)).await;

    let status = response.status();
    let outcome = outcome_of(status);
    let error = response.extensions().get::<ErrorNote>().cloned();
    let (target, changed, detail) = {
        let n = note.lock();
        (n.target.clone(), n.changed, n.detail.clone())
    };
    let detail = match (&error, detail) {
        (Some(e), _) if outcome != "success" => {
            Some(json!({"error": e.code, "message": shorten(&e.message, 1000)}))
        }
        (_, d) => d,
    };
    let write = match spec.audit {
        AuditPolicy::Always => true,
        AuditPolicy::DeniedOnly => outcome == "denied",
        AuditPolicy::WhenChanged => outcome != "success" || changed,
    };
    if write {
        let result = match pending {
            Some(id) => {
                state
                    .store
                    .finish_audit(id, outcome, status.as_u16(), target, detail)
                    .await
            }
            None => {
                let mut record = entry(&caller.actor, workspace_id);
                record.outcome = outcome.into();
                record.status = status.as_u16();
                if target.is_some() {
                    record.target = target;
                }
                record.detail = detail;
                state.store.insert_audit(record).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, action = spec.action, "could not complete the audit record");
        }
    }
    if outcome == "denied" {
        state
            .metrics
            .denied_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_the_object() {
        let spec = routes::find(Method::Patch, "/api/workspaces/{ws}/work_pools/{name}").unwrap();
        let params: HashMap<String, String> = [("ws", "default"), ("name", "etl")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(target_of(spec, &params).as_deref(), Some("work_pool:etl"));
        let spec = routes::find(Method::Post, "/api/workspaces/{ws}/work_pools").unwrap();
        assert_eq!(target_of(spec, &params), None);
    }
}
