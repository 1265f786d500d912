//! What an automation does when it fires: the actions as the API takes them, their checks, and
//! the scope a caller needs to give an automation each of them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access::Scope;

/// Most actions of one automation.
pub const MAX_ACTIONS: usize = 20;

/// One action. Text fields may hold `{{ path }}` placeholders (see docs/automations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Creates a run of a deployment.
    RunDeployment {
        /// The deployment (name or id); absent: the deployment the event is related to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment: Option<String>,
        /// Run parameters; string values may be templates (`"{{ event.payload.branch }}"`).
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        parameters: Map<String, Value>,
    },
    /// Pauses a deployment (its runs are not claimed).
    PauseDeployment {
        /// Name or id; absent: the event's deployment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment: Option<String>,
    },
    /// Resumes a deployment.
    ResumeDeployment {
        /// Name or id; absent: the event's deployment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment: Option<String>,
    },
    /// Pauses a work pool.
    PauseWorkPool {
        /// Name; absent: the event's work pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work_pool: Option<String>,
    },
    /// Resumes a work pool.
    ResumeWorkPool {
        /// Name; absent: the event's work pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work_pool: Option<String>,
    },
    /// Pauses a work queue.
    PauseWorkQueue {
        /// The queue's pool; absent: the event's work pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work_pool: Option<String>,
        /// The queue's name; absent: the event's work queue.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work_queue: Option<String>,
    },
    /// Resumes a work queue.
    ResumeWorkQueue {
        /// The queue's pool; absent: the event's work pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work_pool: Option<String>,
        /// The queue's name; absent: the event's work queue.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work_queue: Option<String>,
    },
    /// Cancels the flow run the triggering event is about.
    CancelFlowRun {},
    /// Sends a notification through one of the workspace's channels.
    SendNotification {
        /// The channel's id.
        channel: uuid::Uuid,
        /// Subject (template).
        subject: String,
        /// Body (template).
        body: String,
    },
    /// POSTs JSON to a URL (through the delivery outbox: retried, SSRF-guarded).
    CallWebhook {
        /// `http` or `https` URL.
        url: String,
        /// Extra request headers.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// The JSON body (templates in its strings); absent: the standard firing document.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
}

impl Action {
    /// The action's type name, as in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::RunDeployment { .. } => "run-deployment",
            Action::PauseDeployment { .. } => "pause-deployment",
            Action::ResumeDeployment { .. } => "resume-deployment",
            Action::PauseWorkPool { .. } => "pause-work-pool",
            Action::ResumeWorkPool { .. } => "resume-work-pool",
            Action::PauseWorkQueue { .. } => "pause-work-queue",
            Action::ResumeWorkQueue { .. } => "resume-work-queue",
            Action::CancelFlowRun {} => "cancel-flow-run",
            Action::SendNotification { .. } => "send-notification",
            Action::CallWebhook { .. } => "call-webhook",
        }
    }

    /// The scope whoever creates or changes an automation with this action must hold: an
    /// automation acts for its author, never beyond what the author may do.
    pub fn scope(&self) -> Scope {
        match self {
            Action::RunDeployment { .. } => Scope::RunsCreate,
            Action::PauseDeployment { .. } | Action::ResumeDeployment { .. } => {
                Scope::DeploymentsWrite
            }
            Action::PauseWorkPool { .. }
            | Action::ResumeWorkPool { .. }
            | Action::PauseWorkQueue { .. }
            | Action::ResumeWorkQueue { .. } => Scope::PoolsWrite,
            Action::CancelFlowRun {} => Scope::RunsCancel,
            Action::SendNotification { .. } | Action::CallWebhook { .. } => Scope::AutomationsWrite,
        }
    }

    /// Checks the action's own fields; errors name `actions[i].<field>`.
    pub fn check(&self, i: usize) -> Result<(), (String, String)> {
        let at = |f: &str| format!("actions[{i}].{f}");
        let text = |f: &str, v: &str, max: usize| {
            if v.len() > max || v.contains('\0') {
                Err((
                    at(f),
                    format!("must be at most {max} bytes without NUL characters"),
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Action::RunDeployment {
                deployment,
                parameters,
            } => {
                text("deployment", deployment.as_deref().unwrap_or(""), 200)?;
                if serde_json::to_vec(parameters).map(|v| v.len()).unwrap_or(0) > 256 * 1024 {
                    return Err((at("parameters"), "must be at most 256 KiB of JSON".into()));
                }
            }
            Action::PauseDeployment { deployment } | Action::ResumeDeployment { deployment } => {
                text("deployment", deployment.as_deref().unwrap_or(""), 200)?
            }
            Action::PauseWorkPool { work_pool } | Action::ResumeWorkPool { work_pool } => {
                text("work_pool", work_pool.as_deref().unwrap_or(""), 200)?
            }
            Action::PauseWorkQueue {
                work_pool,
                work_queue,
            }
            | Action::ResumeWorkQueue {
                work_pool,
                work_queue,
            } => {
                text("work_pool", work_pool.as_deref().unwrap_or(""), 200)?;
                text("work_queue", work_queue.as_deref().unwrap_or(""), 200)?;
            }
            Action::CancelFlowRun {} => {}
            Action::SendNotification { subject, body, .. } => {
                text("subject", subject, 1000)?;
                text("body", body, 64 * 1024)?;
            }
            Action::CallWebhook { url, headers, body } => {
                text("url", url, 2000)?;
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    // A template is checked when it is filled in.
                    _ if url.contains("{{") => {}
                    _ => return Err((at("url"), "must be an absolute http or https URL".into())),
                }
                if headers.len() > 20 {
                    return Err((at("headers"), "at most 20 headers".into()));
                }
                for (k, v) in headers {
                    let name_ok = !k.is_empty()
                        && k.len() <= 100
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !name_ok {
                        return Err((
                            at(&format!("headers.{k}")),
                            "header names are 1–100 letters, digits or `-`".into(),
                        ));
                    }
                    if v.len() > 4000 || v.bytes().any(|b| b.is_ascii_control()) {
                        return Err((
                            at(&format!("headers.{k}")),
                            "header values are at most 4000 bytes without control characters"
                                .into(),
                        ));
                    }
                }
                if let Some(b) = body {
                    if serde_json::to_vec(b).map(|v| v.len()).unwrap_or(0) > 256 * 1024 {
                        return Err((at("body"), "must be at most 256 KiB of JSON".into()));
                    }
                }
            }
        }
        Ok(())
    }
}
