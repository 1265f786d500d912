//! The audit log: one record per request that reached the guard.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::model::{from_micros, now_micros};
use crate::store::sql::{bind_all, get_uuid, opt_uuid};
use crate::store::{Result, Store};

/// An audit record to write.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEntry {
    /// The workspace acted on, when there is one (and it exists).
    pub workspace_id: Option<Uuid>,
    /// `user`, `service_account`, `run_token` or `anonymous`.
    pub actor_kind: String,
    /// Principal id (or run id for a run token).
    pub actor_id: Option<String>,
    /// Principal name, `run:<id>`, or `anonymous`.
    pub actor_name: String,
    /// The API key used.
    pub key_id: Option<Uuid>,
    /// What was attempted, e.g. `work_pool.create`.
    pub action: String,
    /// What it was attempted on, e.g. `work_pool:etl`.
    pub target: Option<String>,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The client's address.
    pub source: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Extra facts (never secrets).
    pub detail: Option<Value>,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AuditEntry {
    /// Id (time-ordered).
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Option<Uuid>,
    /// When.
    pub time: DateTime<Utc>,
    /// Who: `{kind, id, name, key_id}`.
    pub actor: Value,
    /// What was attempted.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    /// HTTP status.
    pub status: u16,
    /// Client address.
    pub source: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Extra facts.
    pub detail: Option<Value>,
}

/// Filter for reading the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Actor name or id.
    pub actor: Option<String>,
    /// Action; a trailing `*` matches a prefix (`api_key.*`).
    pub action: Option<String>,
    /// `success`, `denied` or `failed`.
    pub outcome: Option<String>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records older than this id (the previous page's last id).
    pub cursor: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry> {
    let detail: Option<String> = row.try_get("detail")?;
    let status: i64 = row.try_get("status")?;
    Ok(AuditEntry {
        id: get_uuid(row, "id")?,
        workspace_id: opt_uuid(row, "workspace_id")?,
        time: from_micros(row.try_get("occurred")?),
        actor: json!({
            "kind": row.try_get::<String, _>("actor_kind")?,
            "id": row.try_get::<Option<String>, _>("actor_id")?,
            "name": row.try_get::<String, _>("actor_name")?,
            "key_id": row.try_get::<Option<String>, _>("key_id")?,
        }),
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        status: u16::try_from(status).unwrap_or(0),
        source: row.try_get("source")?,
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

impl Store {
    /// Appends an audit record.
    pub async fn insert_audit(&self, e: NewAuditEntry) -> Result<()> {
        self.insert_audit_pending(e).await.map(|_| ())
    }

    /// Appends an audit record and returns its id (to complete it with [`Store::finish_audit`]).
    pub async fn insert_audit_pending(&self, e: NewAuditEntry) -> Result<Uuid> {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO audit_log (id, workspace_id, occurred, actor_kind, actor_id, actor_name, key_id, \
             action, target, outcome, status, source, method, path, detail) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
        )
        .bind(id.to_string())
        .bind(e.workspace_id.map(|w| w.to_string()))
        .bind(now_micros())
        .bind(e.actor_kind)
        .bind(e.actor_id)
        .bind(e.actor_name)
        .bind(e.key_id.map(|k| k.to_string()))
        .bind(e.action)
        .bind(e.target)
        .bind(e.outcome)
        .bind(i64::from(e.status))
        .bind(e.source)
        .bind(e.method)
        .bind(e.path)
        .bind(e.detail.map(|d| d.to_string()))
        .execute(self.db())
        .await?;
        Ok(id)
    }

    /// Completes a pending audit record with the outcome (and the target, when the request
    /// created it).
    pub async fn finish_audit(
        &self,
        id: Uuid,
        outcome: &str,
        status: u16,
        target: Option<String>,
        detail: Option<Value>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE audit_log SET outcome = $1, status = $2, target = COALESCE($3, target), detail = $4 WHERE id = $5",
        )
        .bind(outcome)
        .bind(i64::from(status))
        .bind(target)
        .bind(detail.map(|d| d.to_string()))
        .bind(id.to_string())
        .execute(self.db())
        .await?;
        Ok(())
    }

    /// A workspace's audit records, newest first.
    pub async fn list_audit(
        &self,
        workspace_id: Uuid,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>> {
        self.audit_records(Some(workspace_id), filter).await
    }

    /// Instance-level audit records (no workspace: users and workspaces created, attempts on
    /// workspaces that do not exist), newest first.
    pub async fn list_instance_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        self.audit_records(None, filter).await
    }

    async fn audit_records(
        &self,
        workspace_id: Option<Uuid>,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>> {
        let mut sql = String::from(
            "SELECT id, workspace_id, occurred, actor_kind, actor_id, actor_name, key_id, action, \
             target, outcome, status, source, method, path, detail FROM audit_log WHERE ",
        );
        let mut args: Vec<String> = vec![];
        match workspace_id {
            Some(ws) => {
                sql.push_str("workspace_id = $1");
                args.push(ws.to_string());
            }
            None => sql.push_str("workspace_id IS NULL"),
        }
        let mut next = |sql: &mut String, cond: &str, value: String| {
            args.push(value);
            sql.push_str(&cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(actor) = &filter.actor {
            next(
                &mut sql,
                " AND (actor_name = ? OR actor_id = ?)",
                actor.clone(),
            );
            // The same placeholder twice is fine for both backends.
        }
        if let Some(action) = &filter.action {
            match action.strip_suffix('*') {
                Some(prefix) => next(
                    &mut sql,
                    " AND action LIKE ? ESCAPE '\\'",
                    format!(
                        "{}%",
                        prefix
                            .replace('\\', "\\\\")
                            .replace('%', "\\%")
                            .replace('_', "\\_")
                    ),
                ),
                None => next(&mut sql, " AND action = ?", action.clone()),
            }
        }
        if let Some(outcome) = &filter.outcome {
            next(&mut sql, " AND outcome = ?", outcome.clone());
        }
        if let Some(cursor) = filter.cursor {
            next(&mut sql, " AND id < ?", cursor.to_string());
        }
        let since = filter.since.map(crate::model::to_micros);
        if since.is_some() {
            sql.push_str(&format!(" AND occurred >= ${}", args.len() + 1));
        }
        sql.push_str(&format!(
            " ORDER BY id DESC LIMIT {}",
            filter.limit.clamp(1, 1000)
        ));
        let mut q = sqlx::query(&sql);
        q = bind_all(q, args);
        if let Some(s) = since {
            q = q.bind(s);
        }
        self.fetch_rows(q, audit_from_row).await
    }
}
