//! Notifications: channels a workspace sends to (a signed JSON webhook, a Slack-compatible
//! incoming webhook, email over SMTP), the durable delivery outbox and its worker, the
//! outbound-target guard, and the templates of subjects, bodies and inbound hooks.
//! See docs/notifications.md.
//!
//! Producers (automations) call [`enqueue`] or [`enqueue_webhook`]: the message is rendered and
//! written to the store's outbox (`notification_deliveries`) in one transaction, and a
//! [`worker::Worker`] running inside `up`/`controller` delivers it: retried with exponential
//! backoff ([`backon`]) until the channel's retry window ends, then recorded `failed` with an
//! event `notification.failed`; never dropped silently. Several controllers on PostgreSQL
//! share the outbox: a delivery is claimed by one of them at a time (`FOR UPDATE SKIP LOCKED`
//! plus a lease).

pub mod send;
pub mod ssrf;
pub mod template;
pub mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::model::now_micros;
use crate::store::{NewDelivery, Store, StoreError, StoredChannel};

pub use ssrf::{TargetError, TargetPolicy};

/// How long a delivery is retried when its channel does not say (1 hour).
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(3600);
/// The longest retry window a channel may ask for (3 days).
pub const MAX_RETRY_FOR: Duration = Duration::from_secs(3 * 24 * 3600);
/// The header carrying the HMAC-SHA256 signature of a webhook's body: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Pushpool-Signature";
/// The header carrying the delivery id (the same on every retry: receivers dedupe on it).
pub const DELIVERY_HEADER: &str = "X-Pushpool-Delivery";

/// A message for a channel. `subject` and `body` are templates over `payload`
/// (`{{ flow_run.name }}`, `{{ state.type }}`, `{{ message }}`, `{{ links.run }}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Subject (email subject, Slack heading).
    pub subject: String,
    /// Body text.
    pub body: String,
    /// Facts for templates and for the webhook's JSON (run, state, message, links, …).
    pub payload: Value,
}

/// The id of a delivery in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliveryId(pub Uuid);

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a notification could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The store failed, or the channel does not exist in the workspace.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The webhook target is not acceptable.
    #[error("url: {0}")]
    Target(#[from] TargetError),
    /// A header name or value is not acceptable.
    #[error("headers.{name}: {rule}")]
    Header {
        /// The header.
        name: String,
        /// The rule it breaks.
        rule: String,
    },
}

/// The kinds of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// JSON POST signed with HMAC-SHA256 ([`SIGNATURE_HEADER`]).
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": …}`).
    Slack,
    /// Email over SMTP.
    Email,
}

impl ChannelKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }
}

/// The retry window of a channel's deliveries (its `retry_for_seconds`, else the default).
pub fn retry_for(channel: &StoredChannel) -> Duration {
    channel
        .config
        .get("retry_for_seconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_RETRY_FOR)
}

/// The template context of a notification: `payload`'s fields, plus `payload` itself.
fn context(payload: &Value) -> Value {
    let mut ctx = match payload {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    ctx.insert("payload".into(), payload.clone());
    Value::Object(ctx)
}

/// The subject and body a channel sends for `n`: the notification's templates rendered over its
/// payload, then the channel's own templates (if any) over the payload plus `subject`/`body`.
pub fn render(channel: &StoredChannel, n: &Notification) -> (String, String) {
    let mut ctx = context(&n.payload);
    let subject = template::render_text(&n.subject, &ctx);
    let body = template::render_text(&n.body, &ctx);
    ctx["subject"] = json!(subject);
    ctx["body"] = json!(body);
    let subject = match &channel.subject_template {
        Some(t) => template::render_text(t, &ctx),
        None => subject,
    };
    let body = match &channel.body_template {
        Some(t) => template::render_text(t, &ctx),
        None => body,
    };
    (subject, body)
}

fn channel_delivery(channel: &StoredChannel, n: &Notification) -> NewDelivery {
    let (subject, body) = render(channel, n);
    let deadline = now_micros() + retry_for(channel).as_micros() as i64;
    NewDelivery {
        workspace_id: channel.workspace_id,
        channel_id: Some(channel.id),
        kind: channel.kind.clone(),
        request: json!({"subject": subject, "body": body, "payload": n.payload}),
        secret_paths: vec![],
        deadline,
    }
}

/// Puts `notification` for channel `channel_id` of workspace `workspace_id` in the outbox and
/// wakes this process's delivery worker. A channel of another workspace is not found.
pub async fn enqueue(
    store: &Store,
    workspace_id: Uuid,
    channel_id: Uuid,
    notification: Notification,
) -> Result<DeliveryId, NotifyError> {
    let channel = store.channel(workspace_id, &channel_id.to_string()).await?;
    let id = store
        .enqueue_delivery(&channel_delivery(&channel, &notification))
        .await?;
    worker::wake();
    Ok(DeliveryId(id))
}

/// [`enqueue`] inside the caller's transaction (the delivery exists iff `tx` commits); call
/// [`worker::wake`] after committing.
#[allow(dead_code)] // for automations' actions (issue 14, part 2), which commit with their firing
pub(crate) async fn enqueue_in(
    store: &Store,
    tx: &mut crate::store::Tx,
    workspace_id: Uuid,
    channel_id: Uuid,
    notification: Notification,
) -> Result<DeliveryId, NotifyError> {
    let channel = store.channel(workspace_id, &channel_id.to_string()).await?;
    let id = store
        .insert_delivery(tx, &channel_delivery(&channel, &notification))
        .await?;
    Ok(DeliveryId(id))
}

/// Checks a webhook action's URL (scheme, host, no credentials) and headers (names and values
/// HTTP accepts). The target's addresses are checked when it is delivered.
pub fn check_webhook(url: &str, headers: &BTreeMap<String, String>) -> Result<(), NotifyError> {
    ssrf::parse_http_url(url)?;
    for (name, value) in headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(NotifyError::Header {
                name: name.clone(),
                rule: "not a valid HTTP header name".into(),
            });
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(NotifyError::Header {
                name: name.clone(),
                rule: "not a valid HTTP header value".into(),
            });
        }
    }
    Ok(())
}

fn webhook_delivery(
    workspace_id: Uuid,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Value,
) -> Result<NewDelivery, NotifyError> {
    check_webhook(url, headers)?;
    Ok(NewDelivery {
        workspace_id,
        channel_id: None,
        kind: "webhook_action".into(),
        request: json!({"url": url, "headers": headers, "body": body}),
        secret_paths: vec!["/headers".into()],
        deadline: now_micros() + DEFAULT_RETRY_FOR.as_micros() as i64,
    })
}

/// Puts an automation's "call a webhook" action in the outbox: a JSON POST of `body` to `url`
/// with `headers` (stored sealed: they may carry credentials), through the same outbox, retry
/// and outbound-target guard as channels.
pub async fn enqueue_webhook(
    store: &Store,
    workspace_id: Uuid,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Value,
) -> Result<DeliveryId, NotifyError> {
    let new = webhook_delivery(workspace_id, url, headers, body)?;
    let id = store.enqueue_delivery(&new).await?;
    worker::wake();
    Ok(DeliveryId(id))
}

/// [`enqueue_webhook`] inside the caller's transaction; call [`worker::wake`] after committing.
#[allow(dead_code)] // for automations' actions (issue 14, part 2), which commit with their firing
pub(crate) async fn enqueue_webhook_in(
    store: &Store,
    tx: &mut crate::store::Tx,
    workspace_id: Uuid,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Value,
) -> Result<DeliveryId, NotifyError> {
    let new = webhook_delivery(workspace_id, url, headers, body)?;
    Ok(DeliveryId(store.insert_delivery(tx, &new).await?))
}

/// The HMAC-SHA256 of `body` under `secret`, as [`SIGNATURE_HEADER`] carries it: `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!(
        "sha256={}",
        crate::auth::hex_encode(&mac.finalize().into_bytes())
    )
}

/// True when `header` is the signature of `body` under `secret` (compared in constant time).
pub fn signature_matches(secret: &str, body: &[u8], header: &str) -> bool {
    crate::auth::hashes_match(&signature(secret, body), header.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(subject: Option<&str>) -> StoredChannel {
        StoredChannel {
            id: Uuid::nil(),
            workspace_id: Uuid::nil(),
            name: "c".into(),
            kind: "email".into(),
            config: json!({"retry_for_seconds": 5}),
            subject_template: subject.map(str::to_string),
            body_template: None,
            created: chrono::Utc::now(),
            updated: chrono::Utc::now(),
        }
    }

    #[test]
    fn notifications_render_through_the_channel_templates() {
        let n = Notification {
            subject: "Run {{ flow_run.name }} is {{ state.type }}".into(),
            body: "{{ message }} {{ links.run }}".into(),
            payload: json!({"flow_run": {"name": "etl-1"}, "state": {"type": "FAILED"},
                            "message": "exit 1", "links": {"run": "http://x/runs/1"}}),
        };
        let (s, b) = render(&channel(None), &n);
        assert_eq!(s, "Run etl-1 is FAILED");
        assert_eq!(b, "exit 1 http://x/runs/1");
        let (s, _) = render(
            &channel(Some("[prod] {{ subject }} ({{ payload.state.type }})")),
            &n,
        );
        assert_eq!(s, "[prod] Run etl-1 is FAILED (FAILED)");
        assert_eq!(retry_for(&channel(None)), Duration::from_secs(5));
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(signature_matches(
            "Jefe",
            b"what do ya want for nothing?",
            &sig
        ));
        assert!(!signature_matches(
            "Jeff",
            b"what do ya want for nothing?",
            &sig
        ));
    }
}
