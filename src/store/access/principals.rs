//! Principals: users (instance-wide) and the identity side of service accounts, and which
//! workspaces a principal may act in.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::keys::insert_key;
use super::members::insert_membership;
use super::NewApiKey;
use super::StoredApiKey;
use crate::model::{from_micros, now_micros, Workspace};
use crate::store::objects::{insert_workspace, workspace_from_row};
use crate::store::sql::{get_bool, get_uuid, opt_time, opt_uuid, unique_conflict};
use crate::store::{Result, Store, StoreError, Tx};

/// What kind of principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    User,
    /// A machine identity of one workspace (controllers, CI); keys only, no login.
    ServiceAccount,
}

impl PrincipalKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServiceAccount => "service_account",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(PrincipalKind::User),
            "service_account" => Ok(PrincipalKind::ServiceAccount),
            other => Err(StoreError::Corrupt(format!("principal kind `{other}`"))),
        }
    }
}

/// A user or a service account.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Principal {
    /// Id.
    pub id: Uuid,
    /// User or service account.
    pub kind: PrincipalKind,
    /// Name (unique among users; unique per workspace among its service accounts).
    pub name: String,
    /// A service account's workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<Uuid>,
    /// Instance administrator: may create workspaces and users.
    pub admin: bool,
    /// Created.
    pub created: DateTime<Utc>,
    /// Deleted (service accounts); its keys stopped working then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DateTime<Utc>>,
}

/// Who becomes the first owner of a new workspace.
#[derive(Debug, Clone)]
pub enum WorkspaceOwner {
    /// An existing user (the admin who asked for the workspace).
    Existing(Principal),
    /// A new user (the bootstrap admin of a fresh store).
    NewUser {
        /// User name.
        name: String,
        /// Instance administrator.
        admin: bool,
    },
}

const PRINCIPAL_COLUMNS: &str = "id, kind, name, workspace_id, admin, created, deleted";

pub(super) fn principal_from_row(row: &AnyRow, prefix: &str) -> Result<Principal> {
    let col = |c: &str| format!("{prefix}{c}");
    let kind: String = row.try_get(col("kind").as_str())?;
    Ok(Principal {
        id: get_uuid(row, &col("id"))?,
        kind: PrincipalKind::parse(&kind)?,
        name: row.try_get(col("name").as_str())?,
        workspace_id: opt_uuid(row, &col("workspace_id"))?,
        admin: get_bool(row, &col("admin"))?,
        created: from_micros(row.try_get(col("created").as_str())?),
        deleted: opt_time(row, &col("deleted"))?,
    })
}

pub(super) async fn insert_principal(
    tx: &mut Tx,
    kind: PrincipalKind,
    name: &str,
    workspace_id: Option<Uuid>,
    admin: bool,
) -> Result<Principal> {
    let id = Uuid::now_v7();
    let now = now_micros();
    sqlx::query(
        "INSERT INTO principals (id, kind, name, workspace_id, admin, created) VALUES ($1,$2,$3,$4,$5,$6)",
    )
    .bind(id.to_string())
    .bind(kind.as_str())
    .bind(name)
    .bind(workspace_id.map(|w| w.to_string()))
    .bind(admin as i64)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        unique_conflict(e, "name", || match kind {
            PrincipalKind::User => format!("a user named `{name}` already exists"),
            PrincipalKind::ServiceAccount => {
                format!("a service account named `{name}` already exists in this workspace")
            }
        })
    })?;
    Ok(Principal {
        id,
        kind,
        name: name.to_string(),
        workspace_id,
        admin,
        created: from_micros(now),
        deleted: None,
    })
}

impl Store {
    /// Creates a workspace whose first owner is `owner` (an existing user, or a new one named
    /// `new_user` — the bootstrap admin), with `key` for that owner in the new workspace; all in
    /// one transaction.
    pub async fn create_workspace_with_owner(
        &self,
        name: &str,
        owner: WorkspaceOwner,
        key: impl FnOnce(Uuid) -> NewApiKey,
    ) -> Result<(Workspace, Principal, StoredApiKey)> {
        let mut tx = self.begin().await?;
        let ws = insert_workspace(&mut tx, name).await?;
        let principal = match owner {
            WorkspaceOwner::Existing(p) => p,
            WorkspaceOwner::NewUser { name, admin } => {
                insert_principal(&mut tx, PrincipalKind::User, &name, None, admin).await?
            }
        };
        insert_membership(&mut tx, ws.id, principal.id, "owner").await?;
        let stored = insert_key(&mut tx, ws.id, &key(principal.id)).await?;
        tx.commit().await?;
        Ok((ws, principal, stored))
    }

    /// Creates a user (instance-wide; a member of no workspace yet).
    pub async fn create_user(&self, name: &str, admin: bool) -> Result<Principal> {
        let mut tx = self.begin().await?;
        let p = insert_principal(&mut tx, PrincipalKind::User, name, None, admin).await?;
        tx.commit().await?;
        Ok(p)
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<Principal>> {
        let sql =
            format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE kind = 'user' ORDER BY name");
        self.fetch_rows(sqlx::query(&sql), |r| principal_from_row(r, ""))
            .await
    }

    /// A user by name.
    pub async fn user(&self, name: &str) -> Result<Principal> {
        let sql =
            format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE kind = 'user' AND name = $1");
        let query = sqlx::query(&sql).bind(name);
        self.fetch_found(query, "user", name, |r| principal_from_row(r, ""))
            .await
    }

    /// A principal by id.
    pub async fn principal(&self, id: Uuid) -> Result<Principal> {
        let sql = format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = $1");
        let query = sqlx::query(&sql).bind(id.to_string());
        self.fetch_found(query, "principal", id, |r| principal_from_row(r, ""))
            .await
    }

    /// The workspace named `name` and the role `principal_id` has in it (`None`: not a member).
    pub async fn workspace_access(
        &self,
        name: &str,
        principal_id: Uuid,
    ) -> Result<Option<(Workspace, Option<String>)>> {
        let row = sqlx::query(
            "SELECT w.id, w.name, w.created, m.role FROM workspaces w \
             LEFT JOIN memberships m ON m.workspace_id = w.id AND m.principal_id = $2 \
             WHERE w.name = $1",
        )
        .bind(name)
        .bind(principal_id.to_string())
        .fetch_optional(self.db())
        .await?;
        row.map(|row| Ok((workspace_from_row(&row)?, row.try_get("role")?)))
            .transpose()
    }

    /// The workspaces `principal_id` is a member of, by name.
    pub async fn workspaces_of(&self, principal_id: Uuid) -> Result<Vec<(Workspace, String)>> {
        let query = sqlx::query(
            "SELECT w.id, w.name, w.created, m.role FROM workspaces w \
             JOIN memberships m ON m.workspace_id = w.id WHERE m.principal_id = $1 ORDER BY w.name",
        )
        .bind(principal_id.to_string());
        self.fetch_rows(query, |row| {
            Ok((workspace_from_row(row)?, row.try_get("role")?))
        })
        .await
    }
}
