//! The bridge to notification delivery (`crate::notify`): a notification or webhook call is
//! put in the delivery outbox, which retries it and records its outcome.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use crate::store::{ActionResult, Store};

/// Enqueues a notification through channel `channel` of workspace `ws`.
pub async fn send(
    _store: &Store,
    _ws: Uuid,
    _channel: Uuid,
    _subject: String,
    _body: String,
    _payload: Value,
) -> Result<Value, ActionResult> {
    Err(ActionResult::Failed(
        "notifications are not available in this build".into(),
    ))
}

/// Enqueues a webhook call.
pub async fn webhook(
    _store: &Store,
    _ws: Uuid,
    _url: String,
    _headers: BTreeMap<String, String>,
    _body: Value,
) -> Result<Value, ActionResult> {
    Err(ActionResult::Failed(
        "webhook calls are not available in this build".into(),
    ))
}
