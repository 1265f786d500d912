//! Inbound webhooks: a workspace's hooks (create, list, read, delete) and the public
//! `POST /hooks/{slug}` that turns a JSON body into an event of the workspace through the hook's
//! templates. The slug is a random secret shown once; a hook may also require an HMAC-SHA256
//! signature of the body (`X-Pushpool-Signature: sha256=<hex>`). See docs/notifications.md.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::table::{handler, ws, Reply, Route};
use super::super::validate::{check_document_size, check_name};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json,
};
use crate::access::Scope;
use crate::notify::template::{paths, render_json, Missing};
use crate::notify::{signature_matches, SIGNATURE_HEADER};
use crate::redact::MASK;
use crate::store::StoredHook;

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/inbound_hooks"), handler!(create_hook))
        .summary("Create an inbound webhook (its URL is shown once)")
        .access(Access::Workspace(Scope::NotificationsWrite))
        .audit("inbound_hook.create", Always)
        .body::<HookInput>()
        .created::<HookOut>()
        .errors(&[409]),
    Route::get(ws!("/inbound_hooks"), handler!(list_hooks))
        .summary("List the workspace's inbound webhooks")
        .access(Access::Workspace(Scope::NotificationsRead))
        .audit("inbound_hook.list", DeniedOnly)
        .ok::<Vec<HookOut>>(),
    Route::get(ws!("/inbound_hooks/{id_or_name}"), handler!(get_hook))
        .summary("Get an inbound webhook")
        .access(Access::Workspace(Scope::NotificationsRead))
        .audit("inbound_hook.read", DeniedOnly)
        .ok::<HookOut>(),
    Route::delete(ws!("/inbound_hooks/{id_or_name}"), handler!(delete_hook))
        .summary("Delete an inbound webhook")
        .access(Access::Workspace(Scope::NotificationsWrite))
        .audit("inbound_hook.delete", Always)
        .no_content(),
    Route::post("/hooks/{slug}", handler!(receive))
        .summary("Deliver a JSON body to an inbound webhook: it becomes an event of its workspace")
        .access(Access::Public)
        .audit("inbound_hook.receive", Always)
        .body::<serde_json::Map<String, Value>>()
        .reply(Reply::json::<HookAccepted>(202, "The event was recorded"))
        .errors(&[401, 403]),
];

/// The characters of a slug kept (and shown) to recognise a hook.
const SLUG_PREFIX: usize = 6;

/// An inbound webhook to create. Templates use `{{ body.… }}` (the request's JSON) and
/// `{{ hook.name }}`, `{{ hook.id }}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookInput {
    /// Name, unique in the workspace.
    pub name: String,
    /// Event name template, e.g. `github.{{ body.action }}` (default `webhook.received`).
    #[serde(default)]
    pub event: Option<String>,
    /// Resource id template, e.g. `github.repo.{{ body.repository.id }}` (default
    /// `pushpool.inbound-hook.{{ hook.id }}`).
    #[serde(default)]
    pub resource: Option<String>,
    /// Payload template: any JSON whose strings may hold placeholders; a string that is one
    /// placeholder keeps the value's JSON type (default `"{{ body }}"`, the whole body).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Require an HMAC-SHA256 signature of the body: a secret is generated and shown once.
    #[serde(default)]
    pub signed: bool,
}

/// An inbound webhook as the API shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HookOut {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The first characters of the slug.
    pub slug_prefix: String,
    /// The full slug: only in the answer that created the hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// The path to POST to (`/hooks/<slug>`): only in the answer that created the hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether requests must be signed.
    pub signed: bool,
    /// The signing secret: shown once on creation, masked after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Event name template.
    pub event: String,
    /// Resource id template.
    pub resource: String,
    /// Payload template.
    pub payload: Value,
    /// Created.
    pub created: DateTime<Utc>,
}

/// What an inbound webhook recorded.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HookAccepted {
    /// The event name.
    pub event: String,
    /// The resource id.
    pub resource: String,
}

fn hook_out(h: &StoredHook, slug: Option<String>, secret: Option<String>) -> HookOut {
    HookOut {
        id: h.id,
        name: h.name.clone(),
        slug_prefix: h.slug_prefix.clone(),
        path: slug.as_ref().map(|s| format!("/hooks/{s}")),
        slug,
        signed: h.secret.is_some(),
        secret: secret.or_else(|| h.secret.as_ref().map(|_| MASK.to_string())),
        event: h.template["event"].as_str().unwrap_or_default().to_string(),
        resource: h.template["resource"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        payload: h.template["payload"].clone(),
        created: h.created,
    }
}

/// Refuses a template whose placeholders name anything but `body…` or `hook…`.
fn check_template_paths(field: &str, template: &str) -> ApiResult<()> {
    for p in paths(template) {
        let root = p.split('.').next().unwrap_or_default();
        if root != "body" && root != "hook" {
            return Err(ApiError::unprocessable(
                field,
                format!("`{{{{ {p} }}}}`: placeholders start with `body` or `hook`"),
            ));
        }
    }
    Ok(())
}

fn check_payload_template(field: &str, v: &Value) -> ApiResult<()> {
    match v {
        Value::String(s) => check_template_paths(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_payload_template(&format!("{field}[{i}]"), x)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, x)| check_payload_template(&format!("{field}.{k}"), x)),
        _ => Ok(()),
    }
}

async fn create_hook(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(input): Body<HookInput>,
) -> ApiResult<(StatusCode, Json<HookOut>)> {
    let ws = caller.workspace()?;
    check_name("name", &input.name)?;
    let event = input.event.unwrap_or_else(|| "webhook.received".into());
    let resource = input
        .resource
        .unwrap_or_else(|| "pushpool.inbound-hook.{{ hook.id }}".into());
    let payload = input.payload.unwrap_or_else(|| json!("{{ body }}"));
    for (field, text, max) in [("event", &event, 200), ("resource", &resource, 1000)] {
        if text.trim().is_empty() || text.chars().count() > max {
            return Err(ApiError::unprocessable(
                field,
                format!("must be 1–{max} characters"),
            ));
        }
        check_template_paths(field, text)?;
    }
    check_document_size("payload", &payload)?;
    check_payload_template("payload", &payload)?;
    let slug = crate::auth::random_base62(32);
    let secret = input
        .signed
        .then(|| format!("whsec_{}", crate::auth::random_base62(32)));
    let template = json!({"event": event, "resource": resource, "payload": payload});
    let hook = state
        .store
        .create_hook(
            ws.id,
            &input.name,
            &crate::auth::hash_key(&slug),
            &slug[..SLUG_PREFIX],
            secret.as_deref(),
            &template,
        )
        .await?;
    note.target("inbound_hook", hook.id);
    note.detail(json!({"name": hook.name, "signed": hook.secret.is_some()}));
    Ok((
        StatusCode::CREATED,
        Json(hook_out(&hook, Some(slug), secret)),
    ))
}

async fn list_hooks(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<HookOut>>> {
    let ws = caller.workspace()?;
    let list = state.store.hooks(ws.id).await?;
    Ok(Json(list.iter().map(|h| hook_out(h, None, None)).collect()))
}

async fn get_hook(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<HookOut>> {
    let ws = caller.workspace()?;
    let h = state.store.hook(ws.id, &id).await?;
    Ok(Json(hook_out(&h, None, None)))
}

async fn delete_hook(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    let h = state.store.delete_hook(ws.id, &id).await?;
    note.target("inbound_hook", h.id);
    note.detail(json!({"name": h.name}));
    Ok(StatusCode::NO_CONTENT)
}

fn missing(m: Missing) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("{m}; the request body lacks it"),
    )
    .field(m.path)
}

fn rendered_text(what: &str, v: Value, max: usize) -> ApiResult<String> {
    let text = match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let ok = !text.trim().is_empty() && text.chars().count() <= max && !text.contains('\0');
    if !ok {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the {what} the hook's template makes of this body must be 1–{max} characters"),
        )
        .field("body"));
    }
    Ok(text)
}

async fn receive(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<HookAccepted>)> {
    let unknown = || ApiError::not_found("inbound hook", "(this URL)");
    if slug.len() > 100 {
        return Err(unknown());
    }
    let hook = state
        .store
        .hook_by_slug_hash(&crate::auth::hash_key(&slug))
        .await?
        .ok_or_else(unknown)?;
    if let Some(secret) = &hook.secret {
        let given = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(&format!(
                    "this hook requires the header {SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of the body>"
                ))
            })?;
        if !signature_matches(secret, &body, given) {
            return Err(ApiError::forbidden(&format!(
                "the {SIGNATURE_HEADER} header does not match the body"
            )));
        }
    }
    let parsed: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let ctx = json!({"body": parsed, "hook": {"id": hook.id, "name": hook.name}});
    let t = &hook.template;
    let event = render_json(&t["event"], &ctx, true).map_err(missing)?;
    let event = rendered_text("event name", event, 200)?;
    let resource = render_json(&t["resource"], &ctx, true).map_err(missing)?;
    let resource = rendered_text("resource id", resource, 1000)?;
    let payload = render_json(&t["payload"], &ctx, true).map_err(missing)?;
    let payload = match payload {
        Value::Object(_) => payload,
        other => json!({"body": other}),
    };
    state
        .store
        .record_hook_event(&hook, &event, &resource, &payload)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(HookAccepted { event, resource })))
}
