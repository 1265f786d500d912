//! Notification channels, the delivery outbox and inbound hooks (migration 0011; see
//! docs/notifications.md and [`crate::notify`]).
//!
//! Secrets (a channel's HMAC secret, Slack URL, custom headers and SMTP password; a webhook
//! action's headers; a hook's signing secret) are sealed with the store's key like every other
//! secret ([`crypto`]), for the row and the JSON pointer they sit at.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::objects::insert_event;
use super::sql::{get_uuid, not_found, opt_time, opt_uuid, unique_conflict};
use super::{crypto, Backend, Result, Store, StoreError, Tx};
use crate::model::{from_micros, now_micros, Micros};

const CHANNELS: &str = "notification_channels";
const DELIVERIES: &str = "notification_deliveries";
const HOOKS: &str = "inbound_hooks";

/// A notification channel as stored, its secrets opened.
#[derive(Debug, Clone)]
pub struct StoredChannel {
    /// Id.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Name, unique in the workspace.
    pub name: String,
    /// `webhook`, `slack` or `email`.
    pub kind: String,
    /// Its settings (secrets in the clear: never answer them as they are).
    pub config: Value,
    /// Subject template (`None`: the notification's subject).
    pub subject_template: Option<String>,
    /// Body template (`None`: the notification's body).
    pub body_template: Option<String>,
    /// Created.
    pub created: DateTime<Utc>,
    /// Last changed.
    pub updated: DateTime<Utc>,
}

/// A channel to create: `config` in the clear, `secret_paths` the JSON pointers of its values
/// to seal (`/secret`, `/smtp/password`).
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Settings.
    pub config: Value,
    /// Pointers of the secret values in `config`.
    pub secret_paths: Vec<String>,
    /// Subject template.
    pub subject_template: Option<String>,
    /// Body template.
    pub body_template: Option<String>,
}

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Workspace.
    pub workspace_id: Uuid,
    /// The channel (`None` for a webhook action).
    pub channel_id: Option<Uuid>,
    /// `webhook`, `slack`, `email` or `webhook_action`.
    pub kind: String,
    /// The rendered message (`subject`, `body`, `payload`; or `url`, `headers`, `body`).
    pub request: Value,
    /// Pointers of the secret values in `request` (`/headers`).
    pub secret_paths: Vec<String>,
    /// When retrying stops.
    pub deadline: Micros,
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Id (also sent to receivers as `X-Pushpool-Delivery`).
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Channel, when it goes to one.
    pub channel_id: Option<Uuid>,
    /// Kind.
    pub kind: String,
    /// The message, its secrets opened.
    pub request: Value,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made (claims).
    pub attempts: i64,
    /// When it is next due.
    pub next_attempt: DateTime<Utc>,
    /// When retrying stops.
    pub deadline: DateTime<Utc>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Enqueued.
    pub created: DateTime<Utc>,
    /// Delivered or given up.
    pub finished: Option<DateTime<Utc>>,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    /// The receiver accepted it.
    Delivered,
    /// Try again at this time (micros), after this error.
    Retry(Micros, String),
    /// Give up: record it failed with this error.
    Failed(String),
}

/// An inbound hook as stored.
#[derive(Debug, Clone)]
pub struct StoredHook {
    /// Id.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Name, unique in the workspace.
    pub name: String,
    /// The first characters of its slug (the slug itself is not kept).
    pub slug_prefix: String,
    /// The HMAC signing secret, when the hook requires signatures.
    pub secret: Option<String>,
    /// `{event, resource, payload}` templates.
    pub template: Value,
    /// Created.
    pub created: DateTime<Utc>,
}

const CHANNEL_COLUMNS: &str =
    "id, workspace_id, name, kind, config, subject_template, body_template, created, updated";
const DELIVERY_COLUMNS: &str = "id, workspace_id, channel_id, kind, request, status, attempts, \
     next_attempt, deadline, last_error, created, finished";
const HOOK_COLUMNS: &str = "id, workspace_id, name, slug_prefix, secret, template, created";

fn seal_paths(store: &Store, base: &str, value: &Value, paths: &[String]) -> Value {
    let mut v = value.clone();
    for p in paths {
        if let Some(slot) = v.pointer_mut(p) {
            if !slot.is_null() {
                *slot = crypto::seal(store.secret_key(), &format!("{base}#{p}"), slot);
            }
        }
    }
    v
}

fn open_text(store: &Store, base: &str, text: &str) -> Result<Value> {
    let mut v: Value =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{base}: {e}")))?;
    crypto::open_walk(store.secret_key(), base, "", &mut v)?;
    Ok(v)
}

impl Store {
    fn channel_from_row(&self, row: &AnyRow) -> Result<StoredChannel> {
        let id = get_uuid(row, "id")?;
        let base = crypto::row_aad(CHANNELS, &id, "config");
        Ok(StoredChannel {
            id,
            workspace_id: get_uuid(row, "workspace_id")?,
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            config: open_text(self, &base, &row.try_get::<String, _>("config")?)?,
            subject_template: row.try_get("subject_template")?,
            body_template: row.try_get("body_template")?,
            created: from_micros(row.try_get("created")?),
            updated: from_micros(row.try_get("updated")?),
        })
    }

    fn delivery_from_row(&self, row: &AnyRow) -> Result<Delivery> {
        let id = get_uuid(row, "id")?;
        let base = crypto::row_aad(DELIVERIES, &id, "request");
        Ok(Delivery {
            id,
            workspace_id: get_uuid(row, "workspace_id")?,
            channel_id: opt_uuid(row, "channel_id")?,
            kind: row.try_get("kind")?,
            request: open_text(self, &base, &row.try_get::<String, _>("request")?)?,
            status: row.try_get("status")?,
            attempts: row.try_get("attempts")?,
            next_attempt: from_micros(row.try_get("next_attempt")?),
            deadline: from_micros(row.try_get("deadline")?),
            last_error: row.try_get("last_error")?,
            created: from_micros(row.try_get("created")?),
            finished: opt_time(row, "finished")?,
        })
    }

    fn hook_from_row(&self, row: &AnyRow) -> Result<StoredHook> {
        let id = get_uuid(row, "id")?;
        let secret: Option<String> = row.try_get("secret")?;
        let secret = match secret {
            Some(s) if s.starts_with(crypto::ENVELOPE_PREFIX) => {
                let aad = crypto::row_aad(HOOKS, &id, "secret");
                match crypto::open(self.secret_key(), &aad, &s)? {
                    Value::String(s) => Some(s),
                    _ => return Err(StoreError::Corrupt(format!("{aad}: not a string"))),
                }
            }
            other => other,
        };
        let template: String = row.try_get("template")?;
        Ok(StoredHook {
            id,
            workspace_id: get_uuid(row, "workspace_id")?,
            name: row.try_get("name")?,
            slug_prefix: row.try_get("slug_prefix")?,
            secret,
            template: serde_json::from_str(&template)
                .map_err(|e| StoreError::Corrupt(format!("inbound hook {id}: {e}")))?,
            created: from_micros(row.try_get("created")?),
        })
    }

    /// Creates a channel; a name taken in the workspace is a conflict on `name`.
    pub async fn create_channel(
        &self,
        workspace_id: Uuid,
        new: NewChannel,
    ) -> Result<StoredChannel> {
        let id = Uuid::now_v7();
        let now = now_micros();
        let base = crypto::row_aad(CHANNELS, &id, "config");
        let config = seal_paths(self, &base, &new.config, &new.secret_paths);
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {CHANNELS} ({CHANNEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        ))
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .bind(&new.name)
        .bind(&new.kind)
        .bind(config.to_string())
        .bind(new.subject_template.clone())
        .bind(new.body_template.clone())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("a notification channel named `{}` already exists", new.name)
            })
        })?;
        insert_event(
            &mut tx,
            workspace_id,
            "notification_channel.created",
            &id.to_string(),
            &json!({"name": new.name, "kind": new.kind}),
        )
        .await?;
        tx.commit().await?;
        self.channel(workspace_id, &id.to_string()).await
    }

    /// The workspace's channels, by name.
    pub async fn channels(&self, workspace_id: Uuid) -> Result<Vec<StoredChannel>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM {CHANNELS} WHERE workspace_id = $1 ORDER BY name"
        ))
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter().map(|r| self.channel_from_row(r)).collect()
    }

    /// A channel of the workspace by id or name.
    pub async fn channel(&self, workspace_id: Uuid, id_or_name: &str) -> Result<StoredChannel> {
        let row = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM {CHANNELS} WHERE workspace_id = $1 AND (id = $2 OR name = $2)"
        ))
        .bind(workspace_id.to_string())
        .bind(id_or_name)
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| not_found("notification channel", id_or_name))?;
        self.channel_from_row(&row)
    }

    /// Deletes a channel; its pending deliveries are then recorded failed when their turn comes.
    pub async fn delete_channel(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
    ) -> Result<StoredChannel> {
        let channel = self.channel(workspace_id, id_or_name).await?;
        let mut tx = self.begin().await?;
        sqlx::query(&format!("DELETE FROM {CHANNELS} WHERE id = $1"))
            .bind(channel.id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "notification_channel.deleted",
            &channel.id.to_string(),
            &json!({"name": channel.name}),
        )
        .await?;
        tx.commit().await?;
        Ok(channel)
    }

    /// Puts a message in the outbox inside `tx`; due at once.
    pub(crate) async fn insert_delivery(&self, tx: &mut Tx, new: &NewDelivery) -> Result<Uuid> {
        let id = Uuid::now_v7();
        let now = now_micros();
        let base = crypto::row_aad(DELIVERIES, &id, "request");
        let request = seal_paths(self, &base, &new.request, &new.secret_paths);
        sqlx::query(&format!(
            "INSERT INTO {DELIVERIES} (id, workspace_id, channel_id, kind, request, status, \
             attempts, next_attempt, deadline, created) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $6)"
        ))
        .bind(id.to_string())
        .bind(new.workspace_id.to_string())
        .bind(new.channel_id.map(|c| c.to_string()))
        .bind(&new.kind)
        .bind(request.to_string())
        .bind(now)
        .bind(new.deadline)
        .execute(&mut **tx)
        .await?;
        Ok(id)
    }

    /// Puts a message in the outbox in a transaction of its own; wakes this process's worker.
    pub async fn enqueue_delivery(&self, new: &NewDelivery) -> Result<Uuid> {
        let mut tx = self.begin().await?;
        let id = self.insert_delivery(&mut tx, new).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Claims up to `limit` due pending deliveries for `worker` until `lease_until` (micros):
    /// on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so of several controllers exactly one
    /// holds a row; a row whose lease expired (its worker died) is due again.
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        lease_until: Micros,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let now = now_micros();
        let skip = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE {DELIVERIES} SET locked_by = $1, locked_until = $2, attempts = attempts + 1 \
             WHERE status = 'pending' AND next_attempt <= $3 \
               AND (locked_until IS NULL OR locked_until < $3) \
               AND id IN (SELECT id FROM {DELIVERIES} WHERE status = 'pending' \
                 AND next_attempt <= $3 AND (locked_until IS NULL OR locked_until < $3) \
                 ORDER BY next_attempt LIMIT $4{skip}) \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(worker)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|r| self.delivery_from_row(r)).collect()
    }

    /// The earliest time a pending delivery is due (micros), if any.
    pub async fn next_delivery_due(&self) -> Result<Option<Micros>> {
        let row = sqlx::query(&format!(
            "SELECT MIN(CASE WHEN locked_until IS NOT NULL AND locked_until > next_attempt \
             THEN locked_until ELSE next_attempt END) FROM {DELIVERIES} WHERE status = 'pending'"
        ))
        .fetch_one(self.db())
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Records how `worker`'s attempt at delivery `d` ended; a no-op (false) when `worker` no
    /// longer holds it. Delivered and failed deliveries also write an event
    /// (`notification.delivered`, `notification.failed`).
    pub async fn finish_delivery(
        &self,
        d: &Delivery,
        worker: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool> {
        let now = now_micros();
        let (status, next, error) = match outcome {
            AttemptOutcome::Delivered => ("delivered", None, None),
            AttemptOutcome::Retry(at, e) => ("pending", Some(*at), Some(e.clone())),
            AttemptOutcome::Failed(e) => ("failed", None, Some(e.clone())),
        };
        let mut tx = self.begin().await?;
        let done = sqlx::query(&format!(
            "UPDATE {DELIVERIES} SET status = $1, next_attempt = COALESCE($2, next_attempt), \
             last_error = COALESCE($3, last_error), locked_by = NULL, locked_until = NULL, \
             finished = $4 WHERE id = $5 AND locked_by = $6 AND status = 'pending'"
        ))
        .bind(status)
        .bind(next)
        .bind(error.clone())
        .bind((status != "pending").then_some(now))
        .bind(d.id.to_string())
        .bind(worker)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done && status != "pending" {
            let mut payload = json!({
                "kind": d.kind,
                "channel_id": d.channel_id,
                "attempts": d.attempts,
            });
            if let Some(e) = &error {
                payload["error"] = json!(e);
            }
            insert_event(
                &mut tx,
                d.workspace_id,
                &format!("notification.{status}"),
                &d.id.to_string(),
                &payload,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// The workspace's newest deliveries, newest first.
    pub async fn deliveries(&self, workspace_id: Uuid, limit: i64) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERIES} WHERE workspace_id = $1 \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(workspace_id.to_string())
        .bind(limit)
        .fetch_all(self.db())
        .await?;
        rows.iter().map(|r| self.delivery_from_row(r)).collect()
    }

    /// One delivery of the workspace.
    pub async fn delivery(&self, workspace_id: Uuid, id: &str) -> Result<Delivery> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERIES} WHERE workspace_id = $1 AND id = $2"
        ))
        .bind(workspace_id.to_string())
        .bind(id)
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| not_found("notification delivery", id))?;
        self.delivery_from_row(&row)
    }

    /// Creates an inbound hook reached at the slug whose SHA-256 is `slug_hash`.
    pub async fn create_hook(
        &self,
        workspace_id: Uuid,
        name: &str,
        slug_hash: &str,
        slug_prefix: &str,
        secret: Option<&str>,
        template: &Value,
    ) -> Result<StoredHook> {
        let id = Uuid::now_v7();
        let sealed = secret.map(|s| {
            match crypto::seal(
                self.secret_key(),
                &crypto::row_aad(HOOKS, &id, "secret"),
                &Value::String(s.to_string()),
            ) {
                Value::String(s) => s,
                other => other.to_string(),
            }
        });
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {HOOKS} (id, workspace_id, name, slug_hash, slug_prefix, secret, \
             template, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .bind(name)
        .bind(slug_hash)
        .bind(slug_prefix)
        .bind(sealed)
        .bind(template.to_string())
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("an inbound hook named `{name}` already exists")
            })
        })?;
        insert_event(
            &mut tx,
            workspace_id,
            "inbound_hook.created",
            &id.to_string(),
            &json!({"name": name}),
        )
        .await?;
        tx.commit().await?;
        self.hook(workspace_id, &id.to_string()).await
    }

    /// The workspace's inbound hooks, by name.
    pub async fn hooks(&self, workspace_id: Uuid) -> Result<Vec<StoredHook>> {
        let rows = sqlx::query(&format!(
            "SELECT {HOOK_COLUMNS} FROM {HOOKS} WHERE workspace_id = $1 ORDER BY name"
        ))
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter().map(|r| self.hook_from_row(r)).collect()
    }

    /// An inbound hook of the workspace by id or name.
    pub async fn hook(&self, workspace_id: Uuid, id_or_name: &str) -> Result<StoredHook> {
        let row = sqlx::query(&format!(
            "SELECT {HOOK_COLUMNS} FROM {HOOKS} WHERE workspace_id = $1 AND (id = $2 OR name = $2)"
        ))
        .bind(workspace_id.to_string())
        .bind(id_or_name)
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| not_found("inbound hook", id_or_name))?;
        self.hook_from_row(&row)
    }

    /// The hook whose slug hashes to `slug_hash`, if any.
    pub async fn hook_by_slug_hash(&self, slug_hash: &str) -> Result<Option<StoredHook>> {
        let row = sqlx::query(&format!(
            "SELECT {HOOK_COLUMNS} FROM {HOOKS} WHERE slug_hash = $1"
        ))
        .bind(slug_hash)
        .fetch_optional(self.db())
        .await?;
        row.map(|r| self.hook_from_row(&r)).transpose()
    }

    /// Deletes an inbound hook.
    pub async fn delete_hook(&self, workspace_id: Uuid, id_or_name: &str) -> Result<StoredHook> {
        let hook = self.hook(workspace_id, id_or_name).await?;
        let mut tx = self.begin().await?;
        sqlx::query(&format!("DELETE FROM {HOOKS} WHERE id = $1"))
            .bind(hook.id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "inbound_hook.deleted",
            &hook.id.to_string(),
            &json!({"name": hook.name}),
        )
        .await?;
        tx.commit().await?;
        Ok(hook)
    }

    /// Writes the event an inbound hook made of a request.
    pub async fn record_hook_event(
        &self,
        hook: &StoredHook,
        event: &str,
        resource: &str,
        payload: &Value,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_event(&mut tx, hook.workspace_id, event, resource, payload).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The pointers of the sealed values in `v`.
fn envelope_paths(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with(crypto::ENVELOPE_PREFIX) => out.push(path.to_string()),
        Value::Object(map) => {
            for (k, x) in map {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                envelope_paths(x, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                envelope_paths(x, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The JSON text `text` of row `base` with every sealed value opened with `old` and sealed again
/// with `new`, at the same place.
fn reseal_text(
    old: Option<&crypto::SecretKey>,
    new: Option<&crypto::SecretKey>,
    base: &str,
    text: &str,
) -> Result<String> {
    let mut v: Value =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{base}: {e}")))?;
    let mut paths = vec![];
    envelope_paths(&v, "", &mut paths);
    crypto::open_walk(old, base, "", &mut v)?;
    for p in paths {
        if let Some(slot) = v.pointer_mut(&p) {
            *slot = crypto::seal(new, &format!("{base}#{p}"), slot);
        }
    }
    Ok(v.to_string())
}

/// Re-encrypts the secrets of channels, deliveries and hooks inside `tx` (part of
/// [`Store::reseal_all`]); how many rows it rewrote.
pub(crate) async fn reseal(
    tx: &mut Tx,
    old: Option<&crypto::SecretKey>,
    new: Option<&crypto::SecretKey>,
) -> Result<u64> {
    let mut n = 0;
    for (table, column) in [(CHANNELS, "config"), (DELIVERIES, "request")] {
        let rows = sqlx::query(&format!("SELECT id, {column} FROM {table}"))
            .fetch_all(&mut **tx)
            .await?;
        for row in rows {
            let id: String = row.try_get(0)?;
            let base = crypto::row_aad(table, &id, column);
            let text = reseal_text(old, new, &base, &row.try_get::<String, _>(1)?)?;
            sqlx::query(&format!("UPDATE {table} SET {column} = $1 WHERE id = $2"))
                .bind(text)
                .bind(&id)
                .execute(&mut **tx)
                .await?;
            n += 1;
        }
    }
    let rows = sqlx::query(&format!(
        "SELECT id, secret FROM {HOOKS} WHERE secret IS NOT NULL"
    ))
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let id: String = row.try_get(0)?;
        let aad = crypto::row_aad(HOOKS, &id, "secret");
        let stored: String = row.try_get(1)?;
        let value = if stored.starts_with(crypto::ENVELOPE_PREFIX) {
            crypto::open(old, &aad, &stored)?
        } else {
            Value::String(stored)
        };
        let sealed = match crypto::seal(new, &aad, &value) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        sqlx::query(&format!("UPDATE {HOOKS} SET secret = $1 WHERE id = $2"))
            .bind(sealed)
            .bind(&id)
            .execute(&mut **tx)
            .await?;
        n += 1;
    }
    Ok(n)
}
