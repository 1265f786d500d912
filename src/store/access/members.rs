//! Workspace memberships: users as members, service accounts, and the rule that a workspace
//! keeps at least one owner.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use super::keys::{insert_key, revoke_keys_of};
use super::principals::insert_principal;
use super::{NewApiKey, PrincipalKind, StoredApiKey};
use crate::model::{from_micros, now_micros, Micros};
use crate::store::objects::insert_event;
use crate::store::sql::{conflict, get_uuid, not_found, unique_conflict};
use crate::store::{Result, Store, Tx};

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

pub(super) async fn insert_membership(
    tx: &mut Tx,
    workspace_id: Uuid,
    principal_id: Uuid,
    role: &str,
) -> Result<Micros> {
    let now = now_micros();
    sqlx::query(
        "INSERT INTO memberships (workspace_id, principal_id, role, created, updated) VALUES ($1,$2,$3,$4,$4)",
    )
    .bind(workspace_id.to_string())
    .bind(principal_id.to_string())
    .bind(role)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        unique_conflict(e, "user", || {
            "this user is already a member of the workspace".into()
        })
    })?;
    Ok(now)
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
    /// Gives `principal_id` the role `role` in a workspace (refused when that would leave the
    /// workspace without an owner) and records `event` with `payload`.
    async fn change_membership_role(
        &self,
        workspace_id: Uuid,
        principal_id: Uuid,
        role: &str,
        event: &str,
        payload: Value,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        keep_an_owner(self, &mut tx, workspace_id, principal_id, Some(role)).await?;
        sqlx::query(
            "UPDATE memberships SET role = $1, updated = $2 WHERE workspace_id = $3 AND principal_id = $4",
        )
        .bind(role)
        .bind(now_micros())
        .bind(workspace_id.to_string())
        .bind(principal_id.to_string())
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            workspace_id,
            event,
            &principal_id.to_string(),
            &payload,
        )
        .await?;
        tx.commit().await
    }

    /// Ends the membership of `principal_id` in a workspace (refused when that would leave the
    /// workspace without an owner), revokes its keys there, marks the principal deleted when
    /// `delete_principal`, and records `event` with the payload made from the number of keys
    /// revoked.
    async fn end_membership(
        &self,
        workspace_id: Uuid,
        principal_id: Uuid,
        delete_principal: bool,
        event: &str,
        payload: impl FnOnce(u64) -> Value,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        keep_an_owner(self, &mut tx, workspace_id, principal_id, None).await?;
        if delete_principal {
            sqlx::query("UPDATE principals SET deleted = $1 WHERE id = $2")
                .bind(now_micros())
                .bind(principal_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM memberships WHERE workspace_id = $1 AND principal_id = $2")
            .bind(workspace_id.to_string())
            .bind(principal_id.to_string())
            .execute(&mut *tx)
            .await?;
        let revoked = revoke_keys_of(&mut tx, workspace_id, principal_id).await?;
        insert_event(
            &mut tx,
            workspace_id,
            event,
            &principal_id.to_string(),
            &payload(revoked),
        )
        .await?;
        tx.commit().await
    }

    /// The home workspace of `principal_id`: the first one it became a member of (for the
    /// bootstrap administrator, `default`); `None` for a principal of no workspace.
    pub async fn home_workspace(&self, principal_id: Uuid) -> Result<Option<Uuid>> {
        let query = sqlx::query(
            "SELECT workspace_id FROM memberships WHERE principal_id = $1 \
             ORDER BY created, workspace_id LIMIT 1",
        )
        .bind(principal_id.to_string());
        let homes = self
            .fetch_rows(query, |row| get_uuid(row, "workspace_id"))
            .await?;
        Ok(homes.into_iter().next())
    }

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
        let query = sqlx::query(
            "SELECT p.id, p.name, m.role, m.created, m.updated FROM memberships m \
             JOIN principals p ON p.id = m.principal_id \
             WHERE m.workspace_id = $1 AND p.kind = 'user' ORDER BY p.name",
        )
        .bind(workspace_id.to_string());
        self.fetch_rows(query, |row| {
            Ok(Member {
                user_id: get_uuid(row, "id")?,
                user: row.try_get("name")?,
                role: row.try_get("role")?,
                created: from_micros(row.try_get("created")?),
                updated: from_micros(row.try_get("updated")?),
            })
        })
        .await
    }

    /// One member by user name.
    pub async fn member(&self, workspace_id: Uuid, user: &str) -> Result<Member> {
        self.list_members(workspace_id)
            .await?
            .into_iter()
            .find(|m| m.user == user)
            .ok_or_else(|| not_found("member", user))
    }

    /// Changes a member's role (takes effect on their next request).
    pub async fn set_member_role(
        &self,
        workspace_id: Uuid,
        user: &str,
        role: &str,
    ) -> Result<Member> {
        let member = self.member(workspace_id, user).await?;
        let payload = json!({"user": member.user, "from": member.role, "to": role});
        self.change_membership_role(
            workspace_id,
            member.user_id,
            role,
            "member.role_changed",
            payload,
        )
        .await?;
        self.member(workspace_id, user).await
    }

    /// Removes a user from a workspace and revokes their keys there.
    pub async fn remove_member(&self, workspace_id: Uuid, user: &str) -> Result<()> {
        let member = self.member(workspace_id, user).await?;
        self.end_membership(
            workspace_id,
            member.user_id,
            false,
            "member.removed",
            |revoked| json!({"user": member.user, "keys_revoked": revoked}),
        )
        .await
    }

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
        let query = sqlx::query(
            "SELECT p.id, p.name, p.created, m.role FROM principals p \
             JOIN memberships m ON m.principal_id = p.id AND m.workspace_id = p.workspace_id \
             WHERE p.kind = 'service_account' AND p.workspace_id = $1 AND p.deleted IS NULL \
             ORDER BY p.name",
        )
        .bind(workspace_id.to_string());
        self.fetch_rows(query, |row| {
            Ok(ServiceAccount {
                id: get_uuid(row, "id")?,
                name: row.try_get("name")?,
                workspace_id,
                role: row.try_get("role")?,
                created: from_micros(row.try_get("created")?),
            })
        })
        .await
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
            .ok_or_else(|| not_found("service account", id_or_name))
    }

    /// Changes a service account's role.
    pub async fn set_service_account_role(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
        role: &str,
    ) -> Result<ServiceAccount> {
        let sa = self.service_account(workspace_id, id_or_name).await?;
        let payload = json!({"name": sa.name, "from": sa.role, "to": role});
        self.change_membership_role(
            workspace_id,
            sa.id,
            role,
            "service_account.role_changed",
            payload,
        )
        .await?;
        Ok(ServiceAccount {
            role: role.to_string(),
            ..sa
        })
    }

    /// Deletes a service account: its membership goes and all its keys are revoked.
    pub async fn delete_service_account(&self, workspace_id: Uuid, id_or_name: &str) -> Result<()> {
        let sa = self.service_account(workspace_id, id_or_name).await?;
        self.end_membership(
            workspace_id,
            sa.id,
            true,
            "service_account.deleted",
            |revoked| json!({"name": sa.name, "keys_revoked": revoked}),
        )
        .await
    }
}
