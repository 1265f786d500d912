//! Workspace grants (docs/security.md, "Cloud identity"): one row per grant in the `settings`
//! table, keyed `grant:<workspace id>:<grant>`, valued `{"granted_by", "granted_at"}`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{Result, Store};
use crate::identity::{Grants, WorkspaceGrant};

/// A grant held by a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GrantRecord {
    /// The workspace's id.
    pub workspace_id: Uuid,
    /// The grant.
    pub grant: WorkspaceGrant,
    /// Who granted it (`bootstrap` for the grants the first `pushpool up` gives `default`).
    pub granted_by: String,
    /// When.
    pub granted_at: DateTime<Utc>,
}

fn key(workspace_id: Uuid, grant: WorkspaceGrant) -> String {
    format!("grant:{workspace_id}:{}", grant.as_str())
}

impl Store {
    /// The grants workspace `workspace_id` holds.
    pub async fn workspace_grants(&self, workspace_id: Uuid) -> Result<Grants> {
        Ok(self
            .grant_records(Some(workspace_id))
            .await?
            .into_iter()
            .map(|r| r.grant)
            .collect())
    }

    /// Grant records, of one workspace or of all.
    pub async fn grant_records(&self, workspace_id: Option<Uuid>) -> Result<Vec<GrantRecord>> {
        let prefix = match workspace_id {
            Some(id) => format!("grant:{id}:%"),
            None => "grant:%".to_string(),
        };
        let rows = sqlx::query("SELECT key, value FROM settings WHERE key LIKE $1 ORDER BY key")
            .bind(prefix)
            .fetch_all(self.db())
            .await?;
        let mut out = vec![];
        for row in rows {
            let key: String = row.get(0);
            // `secrets rotate-key` seals every setting, these too.
            let value = self.open_setting(&key, &row.get::<String, _>(1))?;
            let mut parts = key.splitn(3, ':').skip(1);
            let (Some(Ok(workspace_id)), Some(Ok(grant))) = (
                parts.next().map(Uuid::parse_str),
                parts.next().map(str::parse::<WorkspaceGrant>),
            ) else {
                continue;
            };
            let meta: serde_json::Value = serde_json::from_str(&value).unwrap_or_default();
            out.push(GrantRecord {
                workspace_id,
                grant,
                granted_by: meta["granted_by"].as_str().unwrap_or_default().to_string(),
                granted_at: meta["granted_at"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Grants `grant` to the workspace; false when it already held it (nothing changes).
    pub async fn grant_workspace(
        &self,
        workspace_id: Uuid,
        grant: WorkspaceGrant,
        granted_by: &str,
    ) -> Result<bool> {
        let value = serde_json::json!({"granted_by": granted_by, "granted_at": Utc::now()});
        let done = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key(workspace_id, grant))
        .bind(value.to_string())
        .execute(self.db())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Takes `grant` from the workspace; false when it did not hold it.
    pub async fn revoke_workspace_grant(
        &self,
        workspace_id: Uuid,
        grant: WorkspaceGrant,
    ) -> Result<bool> {
        let done = sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(key(workspace_id, grant))
            .execute(self.db())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
