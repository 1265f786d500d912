//! Doing one claimed action, in the automation's workspace only: every object is looked up
//! by the automation's workspace id, so an automation can never act on another workspace.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::actions::Action;
use super::template::{lookup, render, render_text};
use crate::state::{Proposal, StateType};
use crate::store::{
    ActionResult, ClaimedAction, DeploymentPatch, NewRun, PoolPatch, Store, StoreError,
    TransitionGuard, TransitionOutcome,
};

/// How long a retriable failure waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(2);

fn from_store(e: StoreError) -> ActionResult {
    if e.is_retriable() {
        ActionResult::Retry(e.to_string(), RETRY_AFTER)
    } else {
        ActionResult::Failed(e.to_string())
    }
}

/// A name given in the action (a template), else the one the context has at `path`.
fn target(
    given: &Option<String>,
    ctx: &Value,
    path: &str,
    what: &str,
) -> Result<String, ActionResult> {
    let name = match given {
        Some(t) => render_text(t, ctx),
        None => lookup(ctx, path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    };
    if name.is_empty() {
        Err(ActionResult::Failed(format!(
            "no {what} given and the triggering event names none"
        )))
    } else {
        Ok(name)
    }
}

/// Does `claimed` and says how it went.
pub async fn execute(store: &Store, claimed: &ClaimedAction) -> ActionResult {
    match run(store, claimed).await {
        Ok(v) => ActionResult::Succeeded(v),
        Err(r) => r,
    }
}

async fn run(store: &Store, c: &ClaimedAction) -> Result<Value, ActionResult> {
    let ws = c.workspace_id;
    let ctx = &c.context;
    match &c.action {
        Action::RunDeployment {
            deployment,
            parameters,
        } => {
            let name = target(deployment, ctx, "deployment.id", "deployment")?;
            let d = store.deployment(ws, &name).await.map_err(from_store)?;
            let parameters = match render(&Value::Object(parameters.clone()), ctx) {
                Value::Object(m) => m,
                _ => Default::default(),
            };
            let new = NewRun {
                parameters,
                // The same action row never makes two runs, also when retried after a crash.
                idempotency_key: Some(format!("automation-action-{}", c.id)),
                ..NewRun::default()
            };
            let (run, created) = store.create_run(&d, new).await.map_err(from_store)?;
            Ok(json!({"flow_run_id": run.id, "deployment": d.name, "created": created}))
        }
        Action::PauseDeployment { deployment } | Action::ResumeDeployment { deployment } => {
            let paused = matches!(c.action, Action::PauseDeployment { .. });
            let name = target(deployment, ctx, "deployment.id", "deployment")?;
            let patch = DeploymentPatch {
                paused: Some(paused),
                ..DeploymentPatch::default()
            };
            let d = store
                .update_deployment(ws, &name, patch)
                .await
                .map_err(from_store)?;
            Ok(json!({"deployment": d.name, "paused": d.paused}))
        }
        Action::PauseWorkPool { work_pool } | Action::ResumeWorkPool { work_pool } => {
            let paused = matches!(c.action, Action::PauseWorkPool { .. });
            let name = target(work_pool, ctx, "work_pool.name", "work pool")?;
            let patch = PoolPatch {
                paused: Some(paused),
                ..PoolPatch::default()
            };
            let p = store
                .update_pool(ws, &name, patch)
                .await
                .map_err(from_store)?;
            Ok(json!({"work_pool": p.name, "paused": p.paused}))
        }
        Action::PauseWorkQueue {
            work_pool,
            work_queue,
        }
        | Action::ResumeWorkQueue {
            work_pool,
            work_queue,
        } => {
            let paused = matches!(c.action, Action::PauseWorkQueue { .. });
            let pool = target(work_pool, ctx, "work_pool.name", "work pool")?;
            let queue = target(work_queue, ctx, "work_queue.name", "work queue")?;
            let q = store
                .update_queue(ws, &pool, &queue, None, None, Some(paused))
                .await
                .map_err(from_store)?;
            Ok(json!({"work_pool": pool, "work_queue": q.name, "paused": q.paused}))
        }
        Action::CancelFlowRun {} => {
            let id = lookup(ctx, "flow_run.id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| {
                    ActionResult::Failed("the triggering event is not about a flow run".into())
                })?;
            cancel(store, ws, id).await
        }
        Action::SendNotification { .. } | Action::CallWebhook { .. } => Err(ActionResult::Failed(
            "notification actions go through the delivery outbox".into(),
        )),
    }
}

/// Cancels run `id` of workspace `ws` as the API does: not yet submitted → CANCELLED,
/// submitted → CANCELLING (the controller stops its infrastructure).
async fn cancel(store: &Store, ws: Uuid, id: Uuid) -> Result<Value, ActionResult> {
    let mut run = store.run_in(ws, id).await.map_err(from_store)?;
    for _ in 0..10 {
        let current = run.state.state_type;
        if current == StateType::Cancelling || current.is_terminal() {
            return Ok(json!({"flow_run_id": id, "state": current, "changed": false}));
        }
        let to = match current {
            StateType::Scheduled | StateType::Paused => StateType::Cancelled,
            StateType::Pending if run.infrastructure_id.is_none() => StateType::Cancelled,
            _ => StateType::Cancelling,
        };
        let proposal = Proposal::new(to).with_message("cancelled by an automation");
        let guard = TransitionGuard {
            expected: Some(current),
            lease_owner: None,
            attempt: None,
        };
        match store
            .propose_state(run.id, proposal, guard)
            .await
            .map_err(from_store)?
        {
            TransitionOutcome::Accepted(r) | TransitionOutcome::Duplicate(r) => {
                return Ok(json!({"flow_run_id": id, "state": r.state.state_type, "changed": true}))
            }
            TransitionOutcome::Rejected { run: r, .. } => run = r,
        }
    }
    Err(ActionResult::Retry(
        "the run keeps changing state".into(),
        RETRY_AFTER,
    ))
}
