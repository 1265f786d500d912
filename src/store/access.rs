//! Principals (users and service accounts), workspace memberships, custom roles, API keys and the
//! audit log.
//!
//! A user is instance-wide and may be a member of several workspaces; a service account belongs
//! to one workspace and is a member of it only. Every API key belongs to one principal and acts in
//! one workspace. Secrets are never stored: a key is kept as its SHA-256.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::objects::{insert_event, insert_workspace};
use super::{get_bool, get_uuid, is_unique_violation, Result, Store, StoreError, Tx};
use crate::model::{from_micros, now_micros, Micros, Workspace};

/// The value of `api_keys.role` for a key without a cap of its own.
const NO_CAP: &str = "*";

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

/// A user's membership of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Member {
    /// The user's id.
    pub user_id: Uuid,
    /// The user's name.
    pub user: String,
    /// Role in this workspace.
    pub role: String,
    /// Member since.
    pub created: DateTime<Utc>,
    /// Role last changed.
    pub updated: DateTime<Utc>,
}

/// A service account with its role in its workspace.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ServiceAccount {
    /// Id.
    pub id: Uuid,
    /// Name, unique in the workspace.
    pub name: String,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Role.
    pub role: String,
    /// Created.
    pub created: DateTime<Utc>,
}

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

const KEY_COLUMNS: &str =
    "k.id, k.workspace_id, k.name, k.prefix, k.hash, k.role, k.principal_id, k.created, \
     k.expires, k.revoked, k.rotated_to";
const PRINCIPAL_COLUMNS: &str = "id, kind, name, workspace_id, admin, created, deleted";

fn opt_uuid(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn opt_time(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_micros))
}

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

fn principal_from_row(row: &AnyRow, prefix: &str) -> Result<Principal> {
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

fn conflict(field: &str, message: String) -> StoreError {
    StoreError::Conflict {
        field: Some(field.into()),
        message,
    }
}

async fn insert_principal(
    tx: &mut Tx,
    kind: PrincipalKind,
    name: &str,
    workspace_id: Option<Uuid>,
    admin: bool,
) -> Result<Principal> {
    let id = Uuid::now_v7();
    let now = now_micros();
    let res = sqlx::query(
        "INSERT INTO principals (id, kind, name, workspace_id, admin, created) VALUES ($1,$2,$3,$4,$5,$6)",
    )
    .bind(id.to_string())
    .bind(kind.as_str())
    .bind(name)
    .bind(workspace_id.map(|w| w.to_string()))
    .bind(admin as i64)
    .bind(now)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(Principal {
            id,
            kind,
            name: name.to_string(),
            workspace_id,
            admin,
            created: from_micros(now),
            deleted: None,
        }),
        Err(e) if is_unique_violation(&e) => Err(conflict(
            "name",
            match kind {
                PrincipalKind::User => format!("a user named `{name}` already exists"),
                PrincipalKind::ServiceAccount => {
                    format!("a service account named `{name}` already exists in this workspace")
                }
            },
        )),
        Err(e) => Err(e.into()),
    }
}

async fn insert_membership(
    tx: &mut Tx,
    workspace_id: Uuid,
    principal_id: Uuid,
    role: &str,
) -> Result<Micros> {
    let now = now_micros();
    let res = sqlx::query(
        "INSERT INTO memberships (workspace_id, principal_id, role, created, updated) VALUES ($1,$2,$3,$4,$4)",
    )
    .bind(workspace_id.to_string())
    .bind(principal_id.to_string())
    .bind(role)
    .bind(now)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(now),
        Err(e) if is_unique_violation(&e) => Err(conflict(
            "user",
            "this user is already a member of the workspace".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn insert_key(tx: &mut Tx, workspace_id: Uuid, new: &NewApiKey) -> Result<StoredApiKey> {
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

async fn set_membership_role(
    tx: &mut Tx,
    workspace_id: Uuid,
    principal_id: Uuid,
    role: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE memberships SET role = $1, updated = $2 WHERE workspace_id = $3 AND principal_id = $4",
    )
    .bind(role)
    .bind(now_micros())
    .bind(workspace_id.to_string())
    .bind(principal_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes every live key of `principal_id` in `workspace_id`.
async fn revoke_keys_of(tx: &mut Tx, workspace_id: Uuid, principal_id: Uuid) -> Result<u64> {
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

/// Ends a principal's membership of a workspace and revokes its keys there; how many keys.
async fn remove_membership(tx: &mut Tx, workspace_id: Uuid, principal_id: Uuid) -> Result<u64> {
    sqlx::query("DELETE FROM memberships WHERE workspace_id = $1 AND principal_id = $2")
        .bind(workspace_id.to_string())
        .bind(principal_id.to_string())
        .execute(&mut **tx)
        .await?;
    revoke_keys_of(tx, workspace_id, principal_id).await
}

/// How many owners (users and service accounts) a workspace has, inside `tx`.
async fn owner_count(tx: &mut Tx, workspace_id: Uuid) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) FROM memberships m JOIN principals p ON p.id = m.principal_id \
         WHERE m.workspace_id = $1 AND m.role = 'owner' AND p.deleted IS NULL",
    )
    .bind(workspace_id.to_string())
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get(0)?)
}

/// The role `principal_id` has in `workspace_id`, inside `tx` (locked on PostgreSQL).
async fn membership_role_in(
    store: &Store,
    tx: &mut Tx,
    workspace_id: Uuid,
    principal_id: Uuid,
) -> Result<Option<String>> {
    let row = sqlx::query(&format!(
        "SELECT role FROM memberships WHERE workspace_id = $1 AND principal_id = $2{}",
        store.for_update()
    ))
    .bind(workspace_id.to_string())
    .bind(principal_id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.try_get("role")).transpose()?)
}

/// Refuses a change that would leave a workspace without an owner.
async fn keep_an_owner(
    store: &Store,
    tx: &mut Tx,
    workspace_id: Uuid,
    principal_id: Uuid,
    new_role: Option<&str>,
) -> Result<()> {
    // Lock every owner membership of the workspace first, so two owners demoting each other at
    // the same time cannot both see the other as the remaining owner (PostgreSQL; SQLite writers
    // are serialized already).
    sqlx::query(&format!(
        "SELECT principal_id FROM memberships WHERE workspace_id = $1 AND role = 'owner'{}",
        store.for_update()
    ))
    .bind(workspace_id.to_string())
    .fetch_all(&mut **tx)
    .await?;
    let current = membership_role_in(store, tx, workspace_id, principal_id).await?;
    if current.as_deref() == Some("owner")
        && new_role != Some("owner")
        && owner_count(tx, workspace_id).await? <= 1
    {
        return Err(conflict(
            "role",
            "a workspace must keep at least one owner; make someone else owner first".into(),
        ));
    }
    Ok(())
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
        let rows = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE kind = 'user' ORDER BY name"
        ))
        .fetch_all(self.db())
        .await?;
        rows.iter().map(|r| principal_from_row(r, "")).collect()
    }

    /// A user by name.
    pub async fn user(&self, name: &str) -> Result<Principal> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE kind = 'user' AND name = $1"
        ))
        .bind(name)
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "user",
            key: name.to_string(),
        })?;
        principal_from_row(&row, "")
    }

    /// A principal by id.
    pub async fn principal(&self, id: Uuid) -> Result<Principal> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "principal",
            key: id.to_string(),
        })?;
        principal_from_row(&row, "")
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
        let Some(row) = row else {
            return Ok(None);
        };
        let ws = Workspace {
            id: get_uuid(&row, "id")?,
            name: row.try_get("name")?,
            created: from_micros(row.try_get("created")?),
        };
        Ok(Some((ws, row.try_get("role")?)))
    }

    /// The workspaces `principal_id` is a member of, by name.
    pub async fn workspaces_of(&self, principal_id: Uuid) -> Result<Vec<(Workspace, String)>> {
        let rows = sqlx::query(
            "SELECT w.id, w.name, w.created, m.role FROM workspaces w \
             JOIN memberships m ON m.workspace_id = w.id WHERE m.principal_id = $1 ORDER BY w.name",
        )
        .bind(principal_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    Workspace {
                        id: get_uuid(row, "id")?,
                        name: row.try_get("name")?,
                        created: from_micros(row.try_get("created")?),
                    },
                    row.try_get("role")?,
                ))
            })
            .collect()
    }

    // ----------------------------------------------------------------------------------------
    // Members

    /// Adds a user to a workspace with a role.
    pub async fn add_member(&self, workspace_id: Uuid, user: &str, role: &str) -> Result<Member> {
        let user = self.user(user).await?;
        let mut tx = self.begin().await?;
        let now = insert_membership(&mut tx, workspace_id, user.id, role).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "member.added",
            &user.id.to_string(),
            &json!({"user": user.name, "role": role}),
        )
        .await?;
        tx.commit().await?;
        Ok(Member {
            user_id: user.id,
            user: user.name,
            role: role.to_string(),
            created: from_micros(now),
            updated: from_micros(now),
        })
    }

    /// The users of a workspace, by name.
    pub async fn list_members(&self, workspace_id: Uuid) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT p.id, p.name, m.role, m.created, m.updated FROM memberships m \
             JOIN principals p ON p.id = m.principal_id \
             WHERE m.workspace_id = $1 AND p.kind = 'user' ORDER BY p.name",
        )
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Member {
                    user_id: get_uuid(row, "id")?,
                    user: row.try_get("name")?,
                    role: row.try_get("role")?,
                    created: from_micros(row.try_get("created")?),
                    updated: from_micros(row.try_get("updated")?),
                })
            })
            .collect()
    }

    /// One member by user name.
    pub async fn member(&self, workspace_id: Uuid, user: &str) -> Result<Member> {
        self.list_members(workspace_id)
            .await?
            .into_iter()
            .find(|m| m.user == user)
            .ok_or_else(|| StoreError::NotFound {
                what: "member",
                key: user.to_string(),
            })
    }

    /// Changes a member's role (takes effect on their next request).
    pub async fn set_member_role(
        &self,
        workspace_id: Uuid,
        user: &str,
        role: &str,
    ) -> Result<Member> {
        let member = self.member(workspace_id, user).await?;
        let mut tx = self.begin().await?;
        keep_an_owner(self, &mut tx, workspace_id, member.user_id, Some(role)).await?;
        set_membership_role(&mut tx, workspace_id, member.user_id, role).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "member.role_changed",
            &member.user_id.to_string(),
            &json!({"user": member.user, "from": member.role, "to": role}),
        )
        .await?;
        tx.commit().await?;
        self.member(workspace_id, user).await
    }

    /// Removes a user from a workspace and revokes their keys there.
    pub async fn remove_member(&self, workspace_id: Uuid, user: &str) -> Result<()> {
        let member = self.member(workspace_id, user).await?;
        let mut tx = self.begin().await?;
        keep_an_owner(self, &mut tx, workspace_id, member.user_id, None).await?;
        let revoked = remove_membership(&mut tx, workspace_id, member.user_id).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "member.removed",
            &member.user_id.to_string(),
            &json!({"user": member.user, "keys_revoked": revoked}),
        )
        .await?;
        tx.commit().await
    }

    // ----------------------------------------------------------------------------------------
    // Service accounts

    /// Creates a service account of a workspace with a role, and its first key.
    pub async fn create_service_account(
        &self,
        workspace_id: Uuid,
        name: &str,
        role: &str,
        key: impl FnOnce(Uuid) -> NewApiKey,
    ) -> Result<(ServiceAccount, StoredApiKey)> {
        let mut tx = self.begin().await?;
        let p = insert_principal(
            &mut tx,
            PrincipalKind::ServiceAccount,
            name,
            Some(workspace_id),
            false,
        )
        .await?;
        insert_membership(&mut tx, workspace_id, p.id, role).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "service_account.created",
            &p.id.to_string(),
            &json!({"name": name, "role": role}),
        )
        .await?;
        let stored = insert_key(&mut tx, workspace_id, &key(p.id)).await?;
        tx.commit().await?;
        Ok((
            ServiceAccount {
                id: p.id,
                name: p.name,
                workspace_id,
                role: role.to_string(),
                created: p.created,
            },
            stored,
        ))
    }

    /// The live service accounts of a workspace, by name.
    pub async fn list_service_accounts(&self, workspace_id: Uuid) -> Result<Vec<ServiceAccount>> {
        let rows = sqlx::query(
            "SELECT p.id, p.name, p.created, m.role FROM principals p \
             JOIN memberships m ON m.principal_id = p.id AND m.workspace_id = p.workspace_id \
             WHERE p.kind = 'service_account' AND p.workspace_id = $1 AND p.deleted IS NULL \
             ORDER BY p.name",
        )
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ServiceAccount {
                    id: get_uuid(row, "id")?,
                    name: row.try_get("name")?,
                    workspace_id,
                    role: row.try_get("role")?,
                    created: from_micros(row.try_get("created")?),
                })
            })
            .collect()
    }

    /// A live service account of a workspace by id or name.
    pub async fn service_account(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
    ) -> Result<ServiceAccount> {
        let id = Uuid::parse_str(id_or_name).ok();
        self.list_service_accounts(workspace_id)
            .await?
            .into_iter()
            .find(|s| Some(s.id) == id || s.name == id_or_name)
            .ok_or_else(|| StoreError::NotFound {
                what: "service account",
                key: id_or_name.to_string(),
            })
    }

    /// Changes a service account's role.
    pub async fn set_service_account_role(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
        role: &str,
    ) -> Result<ServiceAccount> {
        let sa = self.service_account(workspace_id, id_or_name).await?;
        let mut tx = self.begin().await?;
        keep_an_owner(self, &mut tx, workspace_id, sa.id, Some(role)).await?;
        set_membership_role(&mut tx, workspace_id, sa.id, role).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "service_account.role_changed",
            &sa.id.to_string(),
            &json!({"name": sa.name, "from": sa.role, "to": role}),
        )
        .await?;
        tx.commit().await?;
        Ok(ServiceAccount {
            role: role.to_string(),
            ..sa
        })
    }

    /// Deletes a service account: its membership goes and all its keys are revoked.
    pub async fn delete_service_account(&self, workspace_id: Uuid, id_or_name: &str) -> Result<()> {
        let sa = self.service_account(workspace_id, id_or_name).await?;
        let mut tx = self.begin().await?;
        keep_an_owner(self, &mut tx, workspace_id, sa.id, None).await?;
        sqlx::query("UPDATE principals SET deleted = $1 WHERE id = $2")
            .bind(now_micros())
            .bind(sa.id.to_string())
            .execute(&mut *tx)
            .await?;
        let revoked = remove_membership(&mut tx, workspace_id, sa.id).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "service_account.deleted",
            &sa.id.to_string(),
            &json!({"name": sa.name, "keys_revoked": revoked}),
        )
        .await?;
        tx.commit().await
    }

    // ----------------------------------------------------------------------------------------
    // Custom roles

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
        let res = sqlx::query(
            "INSERT INTO roles (workspace_id, name, description, scopes, created) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(workspace_id.to_string())
        .bind(name)
        .bind(description)
        .bind(json!(scopes).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(conflict(
                    "name",
                    format!("a role named `{name}` already exists in this workspace"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
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
        let rows = sqlx::query(
            "SELECT name, description, scopes, created FROM roles WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                let scopes: String = row.try_get("scopes")?;
                Ok(CustomRole {
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    scopes: serde_json::from_str(&scopes)
                        .map_err(|e| StoreError::Corrupt(format!("roles.scopes: {e}")))?,
                    created: from_micros(row.try_get("created")?),
                })
            })
            .collect()
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
        row.map(|r| {
            let s: String = r.try_get("scopes")?;
            serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("roles.scopes: {e}")))
        })
        .transpose()
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
            return Err(StoreError::NotFound {
                what: "role",
                key: name.to_string(),
            });
        }
        insert_event(&mut tx, workspace_id, "role.deleted", name, &json!({})).await?;
        tx.commit().await
    }

    // ----------------------------------------------------------------------------------------
    // API keys

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
        let rows = q.fetch_all(self.db()).await?;
        rows.iter().map(key_from_row).collect()
    }

    /// One key of a workspace.
    pub async fn api_key(&self, workspace_id: Uuid, id: Uuid) -> Result<StoredApiKey> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.workspace_id = $1 AND k.id = $2"
        ))
        .bind(workspace_id.to_string())
        .bind(id.to_string())
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "api key",
            key: id.to_string(),
        })?;
        key_from_row(&row)
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
        .ok_or_else(|| StoreError::NotFound {
            what: "api key",
            key: id.to_string(),
        })?;
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

    // ----------------------------------------------------------------------------------------
    // Audit log

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
        for a in args {
            q = q.bind(a);
        }
        if let Some(s) = since {
            q = q.bind(s);
        }
        let rows = q.fetch_all(self.db()).await?;
        rows.iter().map(audit_from_row).collect()
    }
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
