//! Automations (issue 14): create, list, read, change (enable, disable), delete, and the list of
//! an automation's firings with their action outcomes. The engine ([`crate::automations`]) does
//! the rest.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::super::table::{handler, ws, Route};
use super::super::validate::{check_name, check_text};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, Query,
};
use crate::access::Scope;
use crate::automations::actions::MAX_ACTIONS;
use crate::automations::{Action, Automation, Firing, Trigger};
use crate::store::{AutomationPatch, NewAutomation};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/automations"), handler!(create_automation))
        .summary("Create an automation (a trigger and actions; each action needs the caller to hold its scope)")
        .access(Access::Workspace(Scope::AutomationsWrite))
        .audit("automation.create", Always)
        .body::<CreateAutomation>()
        .created::<Automation>()
        .errors(&[409]),
    Route::get(ws!("/automations"), handler!(list_automations))
        .summary("List the workspace's automations")
        .access(Access::Workspace(Scope::AutomationsRead))
        .audit("automation.list", DeniedOnly)
        .ok::<Vec<Automation>>(),
    Route::get(ws!("/automations/{id_or_name}"), handler!(get_automation))
        .summary("Get an automation")
        .access(Access::Workspace(Scope::AutomationsRead))
        .audit("automation.read", DeniedOnly)
        .ok::<Automation>(),
    Route::patch(ws!("/automations/{id_or_name}"), handler!(update_automation))
        .summary("Change, enable or disable an automation (a new trigger or enabling starts its count over)")
        .access(Access::Workspace(Scope::AutomationsWrite))
        .audit("automation.update", Always)
        .body::<AutomationPatchInput>()
        .ok::<Automation>()
        .errors(&[409]),
    Route::delete(ws!("/automations/{id_or_name}"), handler!(delete_automation))
        .summary("Delete an automation with its firings and actions not yet done")
        .access(Access::Workspace(Scope::AutomationsWrite))
        .audit("automation.delete", Always)
        .no_content(),
    Route::get(ws!("/automations/{id_or_name}/firings"), handler!(list_firings))
        .summary("An automation's newest firings with the outcome of each action")
        .access(Access::Workspace(Scope::AutomationsRead))
        .audit("automation.firings", DeniedOnly)
        .query::<FiringsQuery>()
        .ok::<Vec<Firing>>(),
];

/// A new automation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAutomation {
    /// Name: 1–100 letters, digits, `-`, `_` or `.`, unique in the workspace.
    name: String,
    /// Free text, at most 1000 characters.
    #[serde(default)]
    description: String,
    /// Starts enabled (default true).
    #[serde(default)]
    enabled: Option<bool>,
    /// What it reacts to.
    trigger: Trigger,
    /// What it does, in order (1–20).
    actions: Vec<Action>,
}

/// Changes to an automation; absent fields stay.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutomationPatchInput {
    /// New name.
    #[serde(default)]
    name: Option<String>,
    /// New description.
    #[serde(default)]
    description: Option<String>,
    /// `false` disables, `true` enables.
    #[serde(default)]
    enabled: Option<bool>,
    /// New trigger.
    #[serde(default)]
    trigger: Option<Trigger>,
    /// New actions.
    #[serde(default)]
    actions: Option<Vec<Action>>,
}

/// Query of the firings list.
#[derive(Deserialize, JsonSchema)]
pub struct FiringsQuery {
    /// How many (1–1000, default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

fn check_trigger(trigger: &Trigger) -> ApiResult<()> {
    trigger
        .compile()
        .map(|_| ())
        .map_err(|e| ApiError::unprocessable(&e.field, e.message))
}

/// Checks the actions and that the caller may do each of them: an automation never does what
/// its author may not. A notification's channel must be one of the workspace's; a webhook's URL
/// and headers must be ones HTTP accepts (its address is checked when it is called).
async fn check_actions(state: &AppState, caller: &Caller, actions: &[Action]) -> ApiResult<()> {
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return Err(ApiError::unprocessable(
            "actions",
            format!("give 1–{MAX_ACTIONS} actions"),
        ));
    }
    for (i, a) in actions.iter().enumerate() {
        a.check(i)
            .map_err(|(field, message)| ApiError::unprocessable(&field, message))?;
        caller.require(
            a.scope(),
            &format!("actions[{i}] is a `{}` action", a.kind()),
        )?;
        match a {
            Action::SendNotification { channel, .. } => {
                let ws = caller.workspace()?;
                if state
                    .store
                    .channel(ws.id, &channel.to_string())
                    .await
                    .is_err()
                {
                    return Err(ApiError::unprocessable(
                        &format!("actions[{i}].channel"),
                        "no notification channel with this id in the workspace",
                    ));
                }
            }
            Action::CallWebhook { url, headers, .. } if !url.contains("{{") => {
                crate::notify::check_webhook(url, headers).map_err(|e| match e {
                    crate::notify::NotifyError::Header { name, rule } => {
                        ApiError::unprocessable(&format!("actions[{i}].headers.{name}"), rule)
                    }
                    other => {
                        ApiError::unprocessable(&format!("actions[{i}].url"), other.to_string())
                    }
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn create_automation(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<CreateAutomation>,
) -> ApiResult<(StatusCode, Json<Automation>)> {
    let ws = caller.workspace()?;
    check_name("name", &body.name)?;
    check_text("description", Some(&body.description), 1000)?;
    check_trigger(&body.trigger)?;
    check_actions(&state, &caller, &body.actions).await?;
    let a = state
        .store
        .create_automation(
            ws.id,
            NewAutomation {
                name: body.name,
                description: body.description,
                enabled: body.enabled.unwrap_or(true),
                trigger: body.trigger,
                actions: body.actions,
            },
        )
        .await?;
    note.target("automation", a.id);
    note.detail(json!({"name": a.name, "enabled": a.enabled, "actions": a.actions.iter().map(Action::kind).collect::<Vec<_>>()}));
    Ok((StatusCode::CREATED, Json(a)))
}

async fn list_automations(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Automation>>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.list_automations(ws.id).await?))
}

async fn get_automation(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Automation>> {
    let ws = caller.workspace()?;
    Ok(Json(state.store.automation(ws.id, &id).await?))
}

async fn update_automation(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    Body(body): Body<AutomationPatchInput>,
) -> ApiResult<Json<Automation>> {
    let ws = caller.workspace()?;
    if let Some(name) = &body.name {
        check_name("name", name)?;
    }
    check_text("description", body.description.as_deref(), 1000)?;
    if let Some(t) = &body.trigger {
        check_trigger(t)?;
    }
    let current = state.store.automation(ws.id, &id).await?;
    // Enabling or changing an automation makes its actions the caller's: they are checked as
    // on creation.
    if body.actions.is_some() || body.enabled == Some(true) {
        check_actions(
            &state,
            &caller,
            body.actions.as_deref().unwrap_or(&current.actions),
        )
        .await?;
    }
    let a = state
        .store
        .update_automation(
            ws.id,
            &current.id.to_string(),
            AutomationPatch {
                name: body.name,
                description: body.description,
                enabled: body.enabled,
                trigger: body.trigger,
                actions: body.actions,
            },
        )
        .await?;
    note.target("automation", a.id);
    note.detail(json!({"name": a.name, "enabled": a.enabled}));
    Ok(Json(a))
}

async fn delete_automation(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    let a = state.store.automation(ws.id, &id).await?;
    state
        .store
        .delete_automation(ws.id, &a.id.to_string())
        .await?;
    note.target("automation", a.id);
    note.detail(json!({"name": a.name}));
    Ok(StatusCode::NO_CONTENT)
}

async fn list_firings(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    Query(q): Query<FiringsQuery>,
) -> ApiResult<Json<Vec<Firing>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("limit", "must be 1–1000"));
    }
    let ws = caller.workspace()?;
    let a = state.store.automation(ws.id, &id).await?;
    Ok(Json(state.store.automation_firings(a.id, limit).await?))
}
