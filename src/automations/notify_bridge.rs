//! The bridge to notification delivery ([`crate::notify`]): a `send-notification` or
//! `call-webhook` action puts its message in the delivery outbox in the same transaction that
//! records the action `succeeded`, so a message is enqueued exactly once per action, also when
//! a controller dies in between. The outbox's worker then delivers it: signed, retried with
//! backoff, guarded against internal targets, recorded `delivered` or `failed`.

use serde_json::{json, Value};

use super::actions::Action;
use super::context::standard_body;
use super::template::{render, render_text};
use crate::notify::{self, Notification, NotifyError};
use crate::store::{ActionResult, ClaimedAction, Store, StoreError};

/// The payload a notification's templates (and a webhook channel's JSON) see: the firing's
/// context plus `state` (`type`, `name`), `message` and `error_summary` (`cause`, `explanation`,
/// `evidence`) of the run, as notify's templates name them.
fn payload(ctx: &Value) -> Value {
    let mut p = ctx.clone();
    if let Some(run) = ctx.get("flow_run") {
        p["state"] = json!({"type": run["state"], "name": run["state_name"]});
        p["message"] = run["message"].clone();
        p["error_summary"] = run["error_summary"].clone();
    }
    p
}

fn outcome(e: NotifyError) -> ActionResult {
    match e {
        NotifyError::Store(e) if e.is_retriable() => {
            ActionResult::Retry(e.to_string(), std::time::Duration::from_secs(2))
        }
        other => ActionResult::Failed(other.to_string()),
    }
}

/// Enqueues the message of a notification action `c` and records the action's outcome.
pub async fn deliver(
    store: &Store,
    c: &ClaimedAction,
    owner: &str,
    max_attempts: u32,
) -> Result<(), StoreError> {
    let ctx = &c.context;
    let ws = c.workspace_id;
    let mut tx = store.begin().await?;
    let enqueued = match &c.action {
        Action::SendNotification {
            channel,
            subject,
            body,
        } => {
            let n = Notification {
                subject: render_text(subject, ctx),
                body: render_text(body, ctx),
                payload: payload(ctx),
            };
            notify::enqueue_in(store, &mut tx, ws, *channel, n).await
        }
        Action::CallWebhook { url, headers, body } => {
            let body = match body {
                Some(b) => render(b, ctx),
                None => standard_body(ctx),
            };
            let url = render_text(url, ctx);
            notify::enqueue_webhook_in(store, &mut tx, ws, &url, headers, body).await
        }
        other => Err(NotifyError::Store(StoreError::Invalid {
            field: "action".into(),
            message: format!("`{}` is not a notification action", other.kind()),
        })),
    };
    match enqueued {
        Ok(id) => {
            let result = ActionResult::Succeeded(json!({"delivery_id": id.0}));
            if store
                .mark_automation_action(&mut tx, c, owner, result, max_attempts)
                .await?
            {
                tx.commit().await?;
                notify::worker::wake();
            }
            Ok(())
        }
        Err(e) => {
            drop(tx);
            store
                .finish_automation_action(c, owner, outcome(e), max_attempts)
                .await
                .map(|_| ())
        }
    }
}
