//! API keys: only their SHA-256 is stored; each belongs to one principal and acts in one
//! workspace.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::principals::principal_from_row;
use super::Principal;
use crate::model::{from_micros, now_micros, Micros};
use crate::store::objects::insert_event;
use crate::store::sql::{conflict, get_uuid, not_found, opt_time, opt_uuid};
use crate::store::{Result, Store, Tx};

/// The value of `api_keys.role` for a key without a cap of its own.
const NO_CAP: &str = "*";

/// An API key to store (only its hash is kept).
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The principal the key acts for.
    pub principal_id: Uuid,
    /// Label.
    pub name: String,
    /// Public lookup prefix (not secret).
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// A role capping what the key may do; `None` = the principal's role.
    pub role: Option<String>,
    /// Optional expiry.
    pub expires: Option<Micros>,
}

/// A stored API key (never the secret, never its hash on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StoredApiKey {
    /// Id.
    pub id: Uuid,
    /// The one workspace it acts in.
    pub workspace_id: Uuid,
    /// Label.
    pub name: String,
    /// Public lookup prefix (the 8 characters after `pp_`).
    pub prefix: String,
    /// SHA-256 of the key, hex.
    #[serde(skip)]
    pub hash: String,
    /// The role cap; `None` = the principal's role.
    pub role: Option<String>,
    /// The principal it acts for.
    pub principal_id: Uuid,
    /// Created.
    pub created: DateTime<Utc>,
    /// Expires (set by rotation to the end of the grace period).
    pub expires: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked: Option<DateTime<Utc>>,
    /// The key that replaced this one by rotation.
    pub rotated_to: Option<Uuid>,
}

impl StoredApiKey {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if self.expires.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// A key found by its prefix, with its principal (for authentication).
#[derive(Debug, Clone)]
pub struct KeyWithPrincipal {
    /// The key.
    pub key: StoredApiKey,
    /// Its principal.
    pub principal: Principal,
}

const KEY_COLUMNS: &str =
    "k.id, k.workspace_id, k.name, k.prefix, k.hash, k.role, k.principal_id, k.created, \
     k.expires, k.revoked, k.rotated_to";

fn key_from_row(row: &AnyRow) -> Result<StoredApiKey> {
    let role: String = row.try_get("role")?;
    Ok(StoredApiKey {
        id: get_uuid(row, "id")?,
        workspace_id: get_uuid(row, "workspace_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        hash: row.try_get("hash")?,
        role: (role != NO_CAP).then_some(role),
        principal_id: get_uuid(row, "principal_id")?,
        created: from_micros(row.try_get("created")?),
        expires: opt_time(row, "expires")?,
        revoked: opt_time(row, "revoked")?,
        rotated_to: opt_uuid(row, "rotated_to")?,
    })
}

pub(super) async fn insert_key(
    tx: &mut Tx,
    workspace_id: Uuid,
    new: &NewApiKey,
) -> Result<StoredApiKey> {
    let id = Uuid::now_v7();
    let now = now_micros();
    sqlx::query(
        "INSERT INTO api_keys (id, workspace_id, name, prefix, hash, role, created, expires, admin, principal_id) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,0,$9)",
    )
    .bind(id.to_string())
    .bind(workspace_id.to_string())
    .bind(&new.name)
    .bind(&new.prefix)
    .bind(&new.hash)
    .bind(new.role.as_deref().unwrap_or(NO_CAP))
    .bind(now)
    .bind(new.expires)
    .bind(new.principal_id.to_string())
    .execute(&mut **tx)
    .await?;
    insert_event(
        tx,
        workspace_id,
        "api_key.created",
        &id.to_string(),
        &json!({"name": new.name, "role": new.role, "principal_id": new.principal_id}),
    )
    .await?;
    Ok(StoredApiKey {
        id,
        workspace_id,
        name: new.name.clone(),
        prefix: new.prefix.clone(),
        hash: new.hash.clone(),
        role: new.role.clone(),
        principal_id: new.principal_id,
        created: from_micros(now),
        expires: new.expires.map(from_micros),
        revoked: None,
        rotated_to: None,
    })
}

/// Revokes every live key of `principal_id` in `workspace_id`.
pub(super) async fn revoke_keys_of(
    tx: &mut Tx,
    workspace_id: Uuid,
    principal_id: Uuid,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked = $1 WHERE workspace_id = $2 AND principal_id = $3 AND revoked IS NULL",
    )
    .bind(now_micros())
    .bind(workspace_id.to_string())
    .bind(principal_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

impl Store {
    /// Stores a new API key's hash for a principal in a workspace.
    pub async fn create_api_key(&self, workspace_id: Uuid, new: NewApiKey) -> Result<StoredApiKey> {
        let mut tx = self.begin().await?;
        let stored = insert_key(&mut tx, workspace_id, &new).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The key with this public prefix and its principal, if any.
    pub async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<KeyWithPrincipal>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, p.id AS p_id, p.kind AS p_kind, p.name AS p_name, \
             p.workspace_id AS p_workspace_id, p.admin AS p_admin, p.created AS p_created, \
             p.deleted AS p_deleted \
             FROM api_keys k JOIN principals p ON p.id = k.principal_id WHERE k.prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(self.db())
        .await?;
        row.map(|r| {
            Ok(KeyWithPrincipal {
                key: key_from_row(&r)?,
                principal: principal_from_row(&r, "p_")?,
            })
        })
        .transpose()
    }

    /// A workspace's keys, or only those of one principal (hashes are never serialized).
    pub async fn list_api_keys(
        &self,
        workspace_id: Uuid,
        principal_id: Option<Uuid>,
    ) -> Result<Vec<StoredApiKey>> {
        let mut sql = format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.workspace_id = $1");
        if principal_id.is_some() {
            sql.push_str(" AND k.principal_id = $2");
        }
        sql.push_str(" ORDER BY k.created, k.id");
        let mut q = sqlx::query(&sql).bind(workspace_id.to_string());
        if let Some(p) = principal_id {
            q = q.bind(p.to_string());
        }
        self.fetch_rows(q, key_from_row).await
    }

    /// One key of a workspace.
    pub async fn api_key(&self, workspace_id: Uuid, id: Uuid) -> Result<StoredApiKey> {
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.workspace_id = $1 AND k.id = $2");
        let query = sqlx::query(&sql)
            .bind(workspace_id.to_string())
            .bind(id.to_string());
        self.fetch_found(query, "api key", id, key_from_row).await
    }

    /// Revokes a key from the next request on.
    pub async fn revoke_api_key(&self, workspace_id: Uuid, id: Uuid) -> Result<StoredApiKey> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked = $1 WHERE id = $2 AND workspace_id = $3 AND revoked IS NULL",
        )
        .bind(now_micros())
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            drop(tx);
            // Gone or already revoked: tell which.
            let key = self.api_key(workspace_id, id).await?;
            return Err(conflict(
                "id",
                format!("api key `{}` is already revoked", key.id),
            ));
        }
        insert_event(
            &mut tx,
            workspace_id,
            "api_key.revoked",
            &id.to_string(),
            &json!({}),
        )
        .await?;
        tx.commit().await?;
        self.api_key(workspace_id, id).await
    }

    /// Replaces a live key by `new` (same principal): the old key keeps working until
    /// `old_valid_until` (never longer than it would have), then stops. Returns (new, old).
    pub async fn rotate_api_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        new: impl FnOnce(&StoredApiKey) -> NewApiKey,
        old_valid_until: Micros,
    ) -> Result<(StoredApiKey, StoredApiKey)> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.workspace_id = $1 AND k.id = $2{}",
            self.for_update()
        ))
        .bind(workspace_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("api key", id))?;
        let old = key_from_row(&row)?;
        let now = Utc::now();
        if old.status(now) != "active" {
            return Err(conflict(
                "id",
                format!(
                    "api key `{id}` is {}; only an active key can be rotated",
                    old.status(now)
                ),
            ));
        }
        if let Some(next) = old.rotated_to {
            return Err(conflict(
                "id",
                format!("api key `{id}` was already rotated to `{next}`; rotate that one"),
            ));
        }
        let stored = insert_key(&mut tx, workspace_id, &new(&old)).await?;
        let until = match old.expires {
            Some(e) => old_valid_until.min(crate::model::to_micros(e)),
            None => old_valid_until,
        };
        sqlx::query("UPDATE api_keys SET expires = $1, rotated_to = $2 WHERE id = $3")
            .bind(until)
            .bind(stored.id.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "api_key.rotated",
            &id.to_string(),
            &json!({"new_key_id": stored.id, "old_valid_until": from_micros(until)}),
        )
        .await?;
        tx.commit().await?;
        let old = self.api_key(workspace_id, id).await?;
        Ok((stored, old))
    }
}
