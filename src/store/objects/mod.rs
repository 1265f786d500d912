//! Workspaces, pools and queues, deployments, and the event log every write appends to.

mod deployments;
mod pools;

use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::crypto::{self, SecretKey};
use super::sql::{get_bool, get_uuid, unique_conflict};
use super::{Result, Store, StoreError, Tx};
use crate::model::{from_micros, now_micros, Deployment, WorkPool, WorkQueue, Workspace};

pub(crate) use super::events::{insert_event, insert_event_rows, EventRow};
pub use deployments::{DeploymentPatch, NewDeployment, RunDefaults};
pub use pools::{NewPool, NewQueue, PoolPatch};

const POOL_COLUMNS: &str = "id, workspace_id, name, type, description, base_job_template, \
     concurrency_limit, paused, created, updated, submit_rate, overridable_variables";
const QUEUE_COLUMNS: &str =
    "id, pool_id, name, priority, concurrency_limit, paused, created, updated";
pub(super) const DEPLOYMENT_COLUMNS: &str = "d.id, d.workspace_id, d.name, d.pool_id, p.name AS pool_name, \
     d.queue_id, q.name AS queue_name, d.job_variables, d.parameters, d.concurrency_limit, d.paused, \
     d.created, d.updated, d.retry_policy, d.tags";
pub(super) const DEPLOYMENT_FROM: &str = "deployments d JOIN work_pools p ON p.id = d.pool_id \
     JOIN work_queues q ON q.id = d.queue_id";

/// A workspace from a row with `id`, `name` and `created`.
pub(crate) fn workspace_from_row(row: &AnyRow) -> Result<Workspace> {
    Ok(Workspace {
        id: get_uuid(row, "id")?,
        name: row.try_get("name")?,
        created: from_micros(row.try_get("created")?),
    })
}

/// A stored JSON column of row `id` of `table`, its sealed secrets opened.
pub(crate) fn open_json(
    key: Option<&SecretKey>,
    table: &str,
    id: Uuid,
    column: &str,
    text: &str,
) -> Result<Value> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))?;
    crypto::open_walk(key, &crypto::row_aad(table, &id, column), "", &mut value)?;
    Ok(value)
}

/// A JSON object column of row `id` of `table`, its sealed secrets opened.
pub(crate) fn open_json_map(
    key: Option<&SecretKey>,
    row: &AnyRow,
    table: &str,
    id: Uuid,
    column: &str,
) -> Result<Map<String, Value>> {
    let text: String = row.try_get(column)?;
    match open_json(key, table, id, column, &text)? {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Corrupt(format!("{column}: not an object"))),
    }
}

fn pool_from_row(row: &AnyRow, key: Option<&SecretKey>) -> Result<WorkPool> {
    let template: String = row.try_get("base_job_template")?;
    let id = get_uuid(row, "id")?;
    Ok(WorkPool {
        id,
        workspace_id: get_uuid(row, "workspace_id")?,
        name: row.try_get("name")?,
        pool_type: row.try_get("type")?,
        description: row.try_get("description")?,
        base_job_template: open_json(key, "work_pools", id, "base_job_template", &template)?,
        concurrency_limit: row.try_get("concurrency_limit")?,
        paused: get_bool(row, "paused")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
        submit_rate: row.try_get("submit_rate")?,
        overridable_variables: row
            .try_get::<Option<String>, _>("overridable_variables")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("overridable_variables: {e}")))?,
        aws_external_id: None,
    })
}

fn queue_from_row(row: &AnyRow) -> Result<WorkQueue> {
    Ok(WorkQueue {
        id: get_uuid(row, "id")?,
        pool_id: get_uuid(row, "pool_id")?,
        name: row.try_get("name")?,
        priority: row.try_get("priority")?,
        concurrency_limit: row.try_get("concurrency_limit")?,
        paused: get_bool(row, "paused")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
    })
}

pub(super) fn deployment_from_row(row: &AnyRow, key: Option<&SecretKey>) -> Result<Deployment> {
    let id = get_uuid(row, "id")?;
    Ok(Deployment {
        id,
        workspace_id: get_uuid(row, "workspace_id")?,
        name: row.try_get("name")?,
        work_pool: row.try_get("pool_name")?,
        work_pool_id: get_uuid(row, "pool_id")?,
        work_queue: row.try_get("queue_name")?,
        work_queue_id: get_uuid(row, "queue_id")?,
        job_variables: open_json_map(key, row, "deployments", id, "job_variables")?,
        parameters: open_json_map(key, row, "deployments", id, "parameters")?,
        concurrency_limit: row.try_get("concurrency_limit")?,
        paused: get_bool(row, "paused")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
        retry: super::retries::policy_from_row(row)?,
        tags: super::retries::tags_from_row(row)?,
    })
}

fn check_limit(field: &str, limit: Option<i64>) -> Result<()> {
    match limit {
        Some(n) if n < 0 => Err(StoreError::Invalid {
            field: field.into(),
            message: "must be 0 or more".into(),
        }),
        _ => Ok(()),
    }
}

/// Inserts a workspace (and its `workspace.created` event) inside `tx`.
pub(crate) async fn insert_workspace(tx: &mut Tx, name: &str) -> Result<Workspace> {
    let id = Uuid::now_v7();
    let now = now_micros();
    sqlx::query("INSERT INTO workspaces (id, name, created) VALUES ($1, $2, $3)")
        .bind(id.to_string())
        .bind(name)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("a workspace named `{name}` already exists")
            })
        })?;
    insert_event(
        tx,
        id,
        "workspace.created",
        &id.to_string(),
        &json!({"name": name}),
    )
    .await?;
    Ok(Workspace {
        id,
        name: name.to_string(),
        created: from_micros(now),
    })
}

/// Deletes the row `id` of `table` inside `tx`, appends `event` naming the object, and commits.
async fn delete_recorded(
    mut tx: Tx,
    table: &'static str,
    workspace_id: Uuid,
    event: &str,
    id: Uuid,
    name: &str,
) -> Result<()> {
    // The id as stored (text), for the row and for the event.
    let id = id.to_string();
    sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    insert_event(&mut tx, workspace_id, event, &id, &json!({"name": name})).await?;
    tx.commit().await?;
    Ok(())
}

impl Store {
    /// The JSON text of `map` for `column` of row `id` of `table`, its secret values sealed:
    /// those under secret keys and the variables `template`'s schema marks secret.
    pub(crate) fn seal_variables(
        &self,
        table: &str,
        id: Uuid,
        column: &str,
        map: &Map<String, Value>,
        template: &Value,
    ) -> String {
        let extra = crate::redact::schema_secret_variables(&template["variables"]);
        crypto::seal_map(
            self.secret_key(),
            &crypto::row_aad(table, &id, column),
            map,
            &extra,
        )
    }

    /// Creates a workspace.
    pub async fn create_workspace(&self, name: &str) -> Result<Workspace> {
        let mut tx = self.begin().await?;
        let ws = insert_workspace(&mut tx, name).await?;
        tx.commit().await?;
        Ok(ws)
    }

    /// Looks a workspace up by name.
    pub async fn workspace(&self, name: &str) -> Result<Workspace> {
        let query =
            sqlx::query("SELECT id, name, created FROM workspaces WHERE name = $1").bind(name);
        self.fetch_found(query, "workspace", name, workspace_from_row)
            .await
    }

    /// Looks a workspace up by id.
    pub async fn workspace_by_id(&self, id: Uuid) -> Result<Workspace> {
        let query = sqlx::query("SELECT id, name, created FROM workspaces WHERE id = $1")
            .bind(id.to_string());
        self.fetch_found(query, "workspace", id, workspace_from_row)
            .await
    }

    /// All workspaces, by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let query = sqlx::query("SELECT id, name, created FROM workspaces ORDER BY name");
        self.fetch_rows(query, workspace_from_row).await
    }
}
