//! Custom roles of a workspace.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::model::{from_micros, now_micros};
use crate::store::objects::insert_event;
use crate::store::sql::{conflict, not_found, unique_conflict};
use crate::store::{Result, Store, StoreError};

/// A custom role of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CustomRole {
    /// Name, unique in the workspace and not a built-in name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Scope names.
    #[schemars(with = "Vec<crate::access::Scope>")]
    pub scopes: Vec<String>,
    /// Created.
    pub created: DateTime<Utc>,
}

/// The `scopes` column of a role (a JSON list of scope names).
fn scopes_from_row(row: &AnyRow) -> Result<Vec<String>> {
    let scopes: String = row.try_get("scopes")?;
    serde_json::from_str(&scopes).map_err(|e| StoreError::Corrupt(format!("roles.scopes: {e}")))
}

impl Store {
    /// Creates a custom role.
    pub async fn create_role(
        &self,
        workspace_id: Uuid,
        name: &str,
        description: Option<&str>,
        scopes: &[String],
    ) -> Result<CustomRole> {
        let now = now_micros();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO roles (workspace_id, name, description, scopes, created) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(workspace_id.to_string())
        .bind(name)
        .bind(description)
        .bind(json!(scopes).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("a role named `{name}` already exists in this workspace")
            })
        })?;
        insert_event(
            &mut tx,
            workspace_id,
            "role.created",
            name,
            &json!({"scopes": scopes}),
        )
        .await?;
        tx.commit().await?;
        Ok(CustomRole {
            name: name.to_string(),
            description: description.map(str::to_string),
            scopes: scopes.to_vec(),
            created: from_micros(now),
        })
    }

    /// The custom roles of a workspace, by name.
    pub async fn list_roles(&self, workspace_id: Uuid) -> Result<Vec<CustomRole>> {
        let query = sqlx::query(
            "SELECT name, description, scopes, created FROM roles WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id.to_string());
        self.fetch_rows(query, |row| {
            Ok(CustomRole {
                name: row.try_get("name")?,
                description: row.try_get("description")?,
                scopes: scopes_from_row(row)?,
                created: from_micros(row.try_get("created")?),
            })
        })
        .await
    }

    /// A custom role's scope names, `None` when the workspace has no such role.
    pub async fn custom_role_scopes(
        &self,
        workspace_id: Uuid,
        name: &str,
    ) -> Result<Option<Vec<String>>> {
        let row = sqlx::query("SELECT scopes FROM roles WHERE workspace_id = $1 AND name = $2")
            .bind(workspace_id.to_string())
            .bind(name)
            .fetch_optional(self.db())
            .await?;
        row.as_ref().map(scopes_from_row).transpose()
    }

    /// Deletes a custom role no membership or live key uses.
    pub async fn delete_role(&self, workspace_id: Uuid, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM memberships WHERE workspace_id = $1 AND role = $2) \
             + (SELECT COUNT(*) FROM api_keys WHERE workspace_id = $1 AND role = $2 AND revoked IS NULL)",
        )
        .bind(workspace_id.to_string())
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let users: i64 = row.try_get(0)?;
        if users > 0 {
            return Err(conflict(
                "name",
                format!(
                    "role `{name}` is still held by {users} member(s) or key(s); change them first"
                ),
            ));
        }
        let done = sqlx::query("DELETE FROM roles WHERE workspace_id = $1 AND name = $2")
            .bind(workspace_id.to_string())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("role", name));
        }
        insert_event(&mut tx, workspace_id, "role.deleted", name, &json!({})).await?;
        tx.commit().await
    }
}
