//! Automations (issue 14): their definitions (this file), and the engine's durable state —
//! event cursor, per-group trigger state, firings, action queue ([`engine`]).

mod engine;

use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::objects::insert_event;
use super::sql::{get_bool, get_uuid, opt_time, unique_conflict};
use super::{Result, Store, StoreError, Tx};
use crate::automations::{evaluate, Action, ActionOutcome, Automation, Firing, Trigger};
use crate::model::{from_micros, now_micros};

pub use engine::{ActionResult, ClaimedAction, EvaluationReport};

/// A new automation (already checked by the caller).
#[derive(Debug, Clone)]
pub struct NewAutomation {
    /// Unique name in the workspace.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Starts enabled.
    pub enabled: bool,
    /// Trigger.
    pub trigger: Trigger,
    /// Actions.
    pub actions: Vec<Action>,
}

/// Changes to an automation; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct AutomationPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New trigger (its counting starts over).
    pub trigger: Option<Trigger>,
    /// New actions.
    pub actions: Option<Vec<Action>>,
}

const COLUMNS: &str =
    "id, workspace_id, name, description, enabled, trigger_spec, actions, created, updated";

fn automation_from_row(row: &AnyRow) -> Result<Automation> {
    let trigger: String = row.try_get("trigger_spec")?;
    let actions: String = row.try_get("actions")?;
    Ok(Automation {
        id: get_uuid(row, "id")?,
        workspace_id: get_uuid(row, "workspace_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        enabled: get_bool(row, "enabled")?,
        trigger: serde_json::from_str(&trigger)
            .map_err(|e| StoreError::Corrupt(format!("automation trigger: {e}")))?,
        actions: serde_json::from_str(&actions)
            .map_err(|e| StoreError::Corrupt(format!("automation actions: {e}")))?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
    })
}

fn to_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Starts a fresh count for automation `a`: drops its group state and, when it is enabled and
/// its trigger starts a window on enabling, opens that window.
async fn reset_groups(tx: &mut Tx, a: &Automation) -> Result<()> {
    sqlx::query("DELETE FROM automation_groups WHERE automation_id = $1")
        .bind(a.id.to_string())
        .execute(&mut **tx)
        .await?;
    if !a.enabled {
        return Ok(());
    }
    let Ok(t) = a.trigger.compile() else {
        return Ok(());
    };
    if let Some(state) = evaluate::on_enable(&t, now_micros()) {
        sqlx::query(
            "INSERT INTO automation_groups (automation_id, group_key, state, due) VALUES ($1, '', $2, $3)",
        )
        .bind(a.id.to_string())
        .bind(to_text(&state))
        .bind(evaluate::due_at(&t, &state))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Creates an automation; its event is `automation.created`.
    pub async fn create_automation(
        &self,
        workspace_id: Uuid,
        new: NewAutomation,
    ) -> Result<Automation> {
        let now = now_micros();
        let a = Automation {
            id: Uuid::now_v7(),
            workspace_id,
            name: new.name,
            description: new.description,
            enabled: new.enabled,
            trigger: new.trigger,
            actions: new.actions,
            created: from_micros(now),
            updated: from_micros(now),
        };
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO automations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        ))
        .bind(a.id.to_string())
        .bind(workspace_id.to_string())
        .bind(&a.name)
        .bind(&a.description)
        .bind(a.enabled as i64)
        .bind(to_text(&a.trigger))
        .bind(to_text(&a.actions))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("an automation named `{}` already exists", a.name)
            })
        })?;
        reset_groups(&mut tx, &a).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "pushpool.automation.created",
            &engine::automation_resource(a.id),
            &json!({"name": a.name, "enabled": a.enabled}),
        )
        .await?;
        tx.commit().await?;
        Ok(a)
    }

    /// An automation by id or name.
    pub async fn automation(&self, workspace_id: Uuid, id_or_name: &str) -> Result<Automation> {
        let by_id = Uuid::parse_str(id_or_name).is_ok();
        let sql = format!(
            "SELECT {COLUMNS} FROM automations WHERE workspace_id = $1 AND {} = $2",
            if by_id { "id" } else { "name" }
        );
        let query = sqlx::query(&sql)
            .bind(workspace_id.to_string())
            .bind(id_or_name);
        self.fetch_found(query, "automation", id_or_name, automation_from_row)
            .await
    }

    /// A workspace's automations, by name.
    pub async fn list_automations(&self, workspace_id: Uuid) -> Result<Vec<Automation>> {
        let sql =
            format!("SELECT {COLUMNS} FROM automations WHERE workspace_id = $1 ORDER BY name");
        let query = sqlx::query(&sql).bind(workspace_id.to_string());
        self.fetch_rows(query, automation_from_row).await
    }

    /// Every enabled automation of every workspace (the engine's view).
    pub(crate) async fn enabled_automations(&self) -> Result<Vec<Automation>> {
        let sql = format!("SELECT {COLUMNS} FROM automations WHERE enabled = 1 ORDER BY id");
        self.fetch_rows(sqlx::query(&sql), automation_from_row)
            .await
    }

    /// Changes an automation; its event is `automation.updated`. Enabling, disabling or a new
    /// trigger starts its counting over.
    pub async fn update_automation(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
        patch: AutomationPatch,
    ) -> Result<Automation> {
        let current = self.automation(workspace_id, id_or_name).await?;
        let restart =
            patch.trigger.is_some() || patch.enabled.is_some_and(|e| e != current.enabled);
        let mut a = current.clone();
        if let Some(v) = patch.name {
            a.name = v;
        }
        if let Some(v) = patch.description {
            a.description = v;
        }
        if let Some(v) = patch.enabled {
            a.enabled = v;
        }
        if let Some(v) = patch.trigger {
            a.trigger = v;
        }
        if let Some(v) = patch.actions {
            a.actions = v;
        }
        let now = now_micros();
        a.updated = from_micros(now);
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE automations SET name = $1, description = $2, enabled = $3, trigger_spec = $4, \
             actions = $5, updated = $6 WHERE id = $7 AND updated = $8",
        )
        .bind(&a.name)
        .bind(&a.description)
        .bind(a.enabled as i64)
        .bind(to_text(&a.trigger))
        .bind(to_text(&a.actions))
        .bind(now)
        .bind(a.id.to_string())
        .bind(current.updated.timestamp_micros())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("an automation named `{}` already exists", a.name)
            })
        })?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                field: None,
                message: "the automation changed meanwhile; read it again and retry".into(),
            });
        }
        if restart {
            reset_groups(&mut tx, &a).await?;
        }
        insert_event(
            &mut tx,
            workspace_id,
            "pushpool.automation.updated",
            &engine::automation_resource(a.id),
            &json!({"name": a.name, "enabled": a.enabled}),
        )
        .await?;
        tx.commit().await?;
        Ok(a)
    }

    /// Deletes an automation with its state, firings and actions not yet done; its event is
    /// `automation.deleted`.
    pub async fn delete_automation(&self, workspace_id: Uuid, id_or_name: &str) -> Result<()> {
        let a = self.automation(workspace_id, id_or_name).await?;
        let id = a.id.to_string();
        let mut tx = self.begin().await?;
        for table in [
            "automation_groups",
            "automation_actions",
            "automation_firings",
            "automations",
        ] {
            let column = if table == "automations" {
                "id"
            } else {
                "automation_id"
            };
            sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(
            &mut tx,
            workspace_id,
            "pushpool.automation.deleted",
            &engine::automation_resource(a.id),
            &json!({"name": a.name}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` firings of an automation, newest first, with their actions.
    pub async fn automation_firings(&self, automation_id: Uuid, limit: i64) -> Result<Vec<Firing>> {
        let rows = sqlx::query(
            "SELECT id, automation_id, occurrence, group_key, event_id, count, fired \
             FROM automation_firings WHERE automation_id = $1 ORDER BY fired DESC, id DESC LIMIT $2",
        )
        .bind(automation_id.to_string())
        .bind(limit)
        .fetch_all(self.db())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = get_uuid(&row, "id")?;
            let actions = sqlx::query(
                "SELECT position, action, status, attempts, result FROM automation_actions \
                 WHERE firing_id = $1 ORDER BY position",
            )
            .bind(id.to_string())
            .fetch_all(self.db())
            .await?
            .iter()
            .map(|r| {
                let action: Value =
                    serde_json::from_str(&r.try_get::<String, _>("action")?).unwrap_or_default();
                let result: Option<String> = r.try_get("result")?;
                Ok(ActionOutcome {
                    position: r.try_get::<i64, _>("position")? as u32,
                    kind: action["type"].as_str().unwrap_or_default().to_string(),
                    status: r.try_get("status")?,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                    result: result.and_then(|t| serde_json::from_str(&t).ok()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
            out.push(Firing {
                id,
                automation_id: get_uuid(&row, "automation_id")?,
                occurrence: row.try_get("occurrence")?,
                group_key: row.try_get("group_key")?,
                event_id: row.try_get("event_id")?,
                count: row.try_get::<i64, _>("count")? as u32,
                fired: opt_time(&row, "fired")?.unwrap_or_default(),
                actions,
            });
        }
        Ok(out)
    }

    /// How many firings an automation has had (tests, the CLI).
    pub async fn automation_firing_count(&self, automation_id: Uuid) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM automation_firings WHERE automation_id = $1")
            .bind(automation_id.to_string())
            .fetch_one(self.db())
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }
}
