//! Workspaces, pools, queues, deployments and events.

use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{get_bool, get_json_map, get_uuid, is_unique_violation, Result, Store, StoreError, Tx};
use crate::model::{from_micros, now_micros, Deployment, Event, WorkPool, WorkQueue, Workspace};

/// A pool to create.
#[derive(Debug, Clone)]
pub struct NewPool {
    /// Name, unique in the workspace.
    pub name: String,
    /// Provider pool type.
    pub pool_type: String,
    /// Free text.
    pub description: Option<String>,
    /// Checked base job template.
    pub base_job_template: Value,
    /// Pool concurrency limit.
    pub concurrency_limit: Option<i64>,
    /// Start paused.
    pub paused: bool,
    /// Most submissions per second per controller (`None`: the provider's default).
    pub submit_rate: Option<f64>,
}

/// Changes to a pool; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PoolPatch {
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New checked base job template.
    pub base_job_template: Option<Value>,
    /// New limit (`Some(None)` removes it).
    pub concurrency_limit: Option<Option<i64>>,
    /// Pause or resume.
    pub paused: Option<bool>,
    /// New submission rate (`Some(None)` returns to the provider default).
    pub submit_rate: Option<Option<f64>>,
}

/// A queue to create.
#[derive(Debug, Clone)]
pub struct NewQueue {
    /// Name, unique in the pool.
    pub name: String,
    /// 1 is claimed first.
    pub priority: i64,
    /// Queue concurrency limit.
    pub concurrency_limit: Option<i64>,
    /// Start paused.
    pub paused: bool,
}

/// A deployment to create.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    /// Name, unique in the workspace.
    pub name: String,
    /// Pool name.
    pub work_pool: String,
    /// Queue name (`default` when absent).
    pub work_queue: Option<String>,
    /// Checked job-variable overrides.
    pub job_variables: Map<String, Value>,
    /// Default parameters.
    pub parameters: Map<String, Value>,
    /// Deployment concurrency limit.
    pub concurrency_limit: Option<i64>,
    /// Start paused.
    pub paused: bool,
}

/// Changes to a deployment; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DeploymentPatch {
    /// New checked job variables.
    pub job_variables: Option<Map<String, Value>>,
    /// New parameters.
    pub parameters: Option<Map<String, Value>>,
    /// New limit (`Some(None)` removes it).
    pub concurrency_limit: Option<Option<i64>>,
    /// Pause or resume.
    pub paused: Option<bool>,
    /// Move to another queue of the same pool.
    pub work_queue: Option<String>,
}

const POOL_COLUMNS: &str = "id, workspace_id, name, type, description, base_job_template, \
     concurrency_limit, paused, created, updated, submit_rate";
const QUEUE_COLUMNS: &str =
    "id, pool_id, name, priority, concurrency_limit, paused, created, updated";
const DEPLOYMENT_COLUMNS: &str = "d.id, d.workspace_id, d.name, d.pool_id, p.name AS pool_name, \
     d.queue_id, q.name AS queue_name, d.job_variables, d.parameters, d.concurrency_limit, d.paused, \
     d.created, d.updated";
const DEPLOYMENT_FROM: &str = "deployments d JOIN work_pools p ON p.id = d.pool_id \
     JOIN work_queues q ON q.id = d.queue_id";

fn workspace_from_row(row: &AnyRow) -> Result<Workspace> {
    Ok(Workspace {
        id: get_uuid(row, "id")?,
        name: row.try_get("name")?,
        created: from_micros(row.try_get("created")?),
    })
}

fn pool_from_row(row: &AnyRow) -> Result<WorkPool> {
    let template: String = row.try_get("base_job_template")?;
    Ok(WorkPool {
        id: get_uuid(row, "id")?,
        workspace_id: get_uuid(row, "workspace_id")?,
        name: row.try_get("name")?,
        pool_type: row.try_get("type")?,
        description: row.try_get("description")?,
        base_job_template: serde_json::from_str(&template)
            .map_err(|e| StoreError::Corrupt(format!("base_job_template: {e}")))?,
        concurrency_limit: row.try_get("concurrency_limit")?,
        paused: get_bool(row, "paused")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
        submit_rate: row.try_get("submit_rate")?,
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

fn deployment_from_row(row: &AnyRow) -> Result<Deployment> {
    Ok(Deployment {
        id: get_uuid(row, "id")?,
        workspace_id: get_uuid(row, "workspace_id")?,
        name: row.try_get("name")?,
        work_pool: row.try_get("pool_name")?,
        work_pool_id: get_uuid(row, "pool_id")?,
        work_queue: row.try_get("queue_name")?,
        work_queue_id: get_uuid(row, "queue_id")?,
        job_variables: get_json_map(row, "job_variables")?,
        parameters: get_json_map(row, "parameters")?,
        concurrency_limit: row.try_get("concurrency_limit")?,
        paused: get_bool(row, "paused")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
    })
}

/// `$n` for a float value, `NULL` for none: the caller binds the value only when there is one.
///
/// sqlx 0.8's `Any` driver sends a NULL `f64` as a `float4` parameter (its `Real` and `Double`
/// null kinds are swapped), and PostgreSQL keeps the parameter types of the connection's cached
/// statement, so a later non-NULL `f64` (`float8`) on the same statement fails with "incorrect
/// binary data format". A literal NULL is a different statement.
fn float_param(value: Option<f64>, n: usize) -> String {
    match value {
        Some(_) => format!("${n}"),
        None => "NULL".into(),
    }
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
    let res = sqlx::query("INSERT INTO workspaces (id, name, created) VALUES ($1, $2, $3)")
        .bind(id.to_string())
        .bind(name)
        .bind(now)
        .execute(&mut **tx)
        .await;
    if let Err(e) = res {
        return Err(if is_unique_violation(&e) {
            StoreError::Conflict {
                field: Some("name".into()),
                message: format!("a workspace named `{name}` already exists"),
            }
        } else {
            e.into()
        });
    }
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

/// Appends an event inside `tx`.
pub(crate) async fn insert_event(
    tx: &mut Tx,
    workspace_id: Uuid,
    event: &str,
    resource_id: &str,
    payload: &Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, workspace_id, occurred, event, resource_id, payload) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(workspace_id.to_string())
    .bind(now_micros())
    .bind(event)
    .bind(resource_id)
    .bind(payload.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Creates a workspace.
    pub async fn create_workspace(&self, name: &str) -> Result<Workspace> {
        let mut tx = self.begin().await?;
        let ws = insert_workspace(&mut tx, name).await?;
        tx.commit().await?;
        Ok(ws)
    }

    /// Looks a workspace up by name.
    pub async fn workspace(&self, name: &str) -> Result<Workspace> {
        let row = sqlx::query("SELECT id, name, created FROM workspaces WHERE name = $1")
            .bind(name)
            .fetch_optional(self.db())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "workspace",
                key: name.to_string(),
            })?;
        workspace_from_row(&row)
    }

    /// Looks a workspace up by id.
    pub async fn workspace_by_id(&self, id: Uuid) -> Result<Workspace> {
        let row = sqlx::query("SELECT id, name, created FROM workspaces WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "workspace",
                key: id.to_string(),
            })?;
        workspace_from_row(&row)
    }

    /// All workspaces, by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let rows = sqlx::query("SELECT id, name, created FROM workspaces ORDER BY name")
            .fetch_all(self.db())
            .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    /// Creates a pool and its `default` queue.
    pub async fn create_pool(&self, workspace_id: Uuid, new: NewPool) -> Result<WorkPool> {
        check_limit("concurrency_limit", new.concurrency_limit)?;
        let id = Uuid::now_v7();
        let now = now_micros();
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO work_pools (id, workspace_id, name, type, description, base_job_template, \
             concurrency_limit, paused, created, updated, submit_rate) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$9,{})",
            float_param(new.submit_rate, 10)
        );
        let mut q = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(workspace_id.to_string())
            .bind(&new.name)
            .bind(&new.pool_type)
            .bind(new.description.clone())
            .bind(new.base_job_template.to_string())
            .bind(new.concurrency_limit)
            .bind(new.paused as i64)
            .bind(now);
        if let Some(rate) = new.submit_rate {
            q = q.bind(rate);
        }
        let res = q.execute(&mut *tx).await;
        if let Err(e) = res {
            return Err(if is_unique_violation(&e) {
                StoreError::Conflict {
                    field: Some("name".into()),
                    message: format!("a work pool named `{}` already exists", new.name),
                }
            } else {
                e.into()
            });
        }
        insert_queue(
            &mut tx,
            workspace_id,
            id,
            &NewQueue {
                name: "default".into(),
                priority: 1,
                concurrency_limit: None,
                paused: false,
            },
        )
        .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "work_pool.created",
            &id.to_string(),
            &json!({"name": new.name, "type": new.pool_type}),
        )
        .await?;
        tx.commit().await?;
        self.pool_by_id(id).await
    }

    /// A pool by id.
    pub async fn pool_by_id(&self, id: Uuid) -> Result<WorkPool> {
        let row = sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM work_pools WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "work pool",
            key: id.to_string(),
        })?;
        pool_from_row(&row)
    }

    /// A pool by name in a workspace.
    pub async fn pool(&self, workspace_id: Uuid, name: &str) -> Result<WorkPool> {
        let row = sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM work_pools WHERE workspace_id = $1 AND name = $2"
        ))
        .bind(workspace_id.to_string())
        .bind(name)
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "work pool",
            key: name.to_string(),
        })?;
        pool_from_row(&row)
    }

    /// A workspace's pools, by name.
    pub async fn list_pools(&self, workspace_id: Uuid) -> Result<Vec<WorkPool>> {
        let rows = sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM work_pools WHERE workspace_id = $1 ORDER BY name"
        ))
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter().map(pool_from_row).collect()
    }

    /// Changes a pool.
    pub async fn update_pool(
        &self,
        workspace_id: Uuid,
        name: &str,
        patch: PoolPatch,
    ) -> Result<WorkPool> {
        if let Some(limit) = patch.concurrency_limit {
            check_limit("concurrency_limit", limit)?;
        }
        let current = self.pool(workspace_id, name).await?;
        let description = patch
            .description
            .clone()
            .unwrap_or(current.description.clone());
        let template = patch
            .base_job_template
            .clone()
            .unwrap_or(current.base_job_template.clone());
        let limit = patch.concurrency_limit.unwrap_or(current.concurrency_limit);
        let paused = patch.paused.unwrap_or(current.paused);
        let submit_rate = patch.submit_rate.unwrap_or(current.submit_rate);
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE work_pools SET description = $1, base_job_template = $2, concurrency_limit = $3, \
             paused = $4, updated = $5, submit_rate = {} WHERE id = $6",
            float_param(submit_rate, 7)
        );
        let mut q = sqlx::query(&sql)
            .bind(description)
            .bind(template.to_string())
            .bind(limit)
            .bind(paused as i64)
            .bind(now_micros())
            .bind(current.id.to_string());
        if let Some(rate) = submit_rate {
            q = q.bind(rate);
        }
        let done = q.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "work pool",
                key: name.to_string(),
            });
        }
        insert_event(
            &mut tx,
            workspace_id,
            "work_pool.updated",
            &current.id.to_string(),
            &json!({"name": name, "paused": paused, "concurrency_limit": limit}),
        )
        .await?;
        self.notify_in(&mut tx).await?;
        tx.commit().await?;
        self.notify_local();
        self.pool_by_id(current.id).await
    }

    /// Deletes a pool and its queues; refused while deployments use it.
    pub async fn delete_pool(&self, workspace_id: Uuid, name: &str) -> Result<()> {
        let pool = self.pool(workspace_id, name).await?;
        let mut tx = self.begin().await?;
        let in_use: i64 = sqlx::query("SELECT COUNT(*) FROM deployments WHERE pool_id = $1")
            .bind(pool.id.to_string())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if in_use > 0 {
            return Err(StoreError::Conflict {
                field: None,
                message: format!(
                    "work pool `{name}` is used by {in_use} deployment(s); delete them first"
                ),
            });
        }
        sqlx::query("DELETE FROM work_queues WHERE pool_id = $1")
            .bind(pool.id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM work_pools WHERE id = $1")
            .bind(pool.id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "work_pool.deleted",
            &pool.id.to_string(),
            &json!({"name": name}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a queue to a pool.
    pub async fn create_queue(
        &self,
        workspace_id: Uuid,
        pool_name: &str,
        new: NewQueue,
    ) -> Result<WorkQueue> {
        check_limit("concurrency_limit", new.concurrency_limit)?;
        let pool = self.pool(workspace_id, pool_name).await?;
        let mut tx = self.begin().await?;
        let id = insert_queue(&mut tx, workspace_id, pool.id, &new).await?;
        insert_event(
            &mut tx,
            workspace_id,
            "work_queue.created",
            &id.to_string(),
            &json!({"name": new.name, "work_pool": pool_name}),
        )
        .await?;
        tx.commit().await?;
        self.queue_by_id(id).await
    }

    /// Changes a queue's priority, limit or pause flag.
    pub async fn update_queue(
        &self,
        workspace_id: Uuid,
        pool_name: &str,
        queue_name: &str,
        priority: Option<i64>,
        concurrency_limit: Option<Option<i64>>,
        paused: Option<bool>,
    ) -> Result<WorkQueue> {
        if let Some(limit) = concurrency_limit {
            check_limit("concurrency_limit", limit)?;
        }
        let pool = self.pool(workspace_id, pool_name).await?;
        let current = self.queue(pool.id, queue_name).await?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE work_queues SET priority = $1, concurrency_limit = $2, paused = $3, updated = $4 WHERE id = $5",
        )
        .bind(priority.unwrap_or(current.priority))
        .bind(concurrency_limit.unwrap_or(current.concurrency_limit))
        .bind(paused.unwrap_or(current.paused) as i64)
        .bind(now_micros())
        .bind(current.id.to_string())
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "work_queue.updated",
            &current.id.to_string(),
            &json!({"name": queue_name}),
        )
        .await?;
        self.notify_in(&mut tx).await?;
        tx.commit().await?;
        self.notify_local();
        self.queue_by_id(current.id).await
    }

    /// A queue by id.
    pub async fn queue_by_id(&self, id: Uuid) -> Result<WorkQueue> {
        let row = sqlx::query(&format!(
            "SELECT {QUEUE_COLUMNS} FROM work_queues WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "work queue",
            key: id.to_string(),
        })?;
        queue_from_row(&row)
    }

    /// A queue by name in a pool.
    pub async fn queue(&self, pool_id: Uuid, name: &str) -> Result<WorkQueue> {
        let row = sqlx::query(&format!(
            "SELECT {QUEUE_COLUMNS} FROM work_queues WHERE pool_id = $1 AND name = $2"
        ))
        .bind(pool_id.to_string())
        .bind(name)
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "work queue",
            key: name.to_string(),
        })?;
        queue_from_row(&row)
    }

    /// A pool's queues, by priority then name.
    pub async fn list_queues(&self, pool_id: Uuid) -> Result<Vec<WorkQueue>> {
        let rows = sqlx::query(&format!(
            "SELECT {QUEUE_COLUMNS} FROM work_queues WHERE pool_id = $1 ORDER BY priority, name"
        ))
        .bind(pool_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter().map(queue_from_row).collect()
    }

    /// Creates a deployment (job variables must already be checked against the pool template).
    pub async fn create_deployment(
        &self,
        workspace_id: Uuid,
        new: NewDeployment,
    ) -> Result<Deployment> {
        check_limit("concurrency_limit", new.concurrency_limit)?;
        let pool = self
            .pool(workspace_id, &new.work_pool)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { key, .. } => StoreError::NotFound {
                    what: "work pool",
                    key,
                },
                other => other,
            })?;
        let queue_name = new.work_queue.clone().unwrap_or_else(|| "default".into());
        let queue = self.queue(pool.id, &queue_name).await?;
        let id = Uuid::now_v7();
        let now = now_micros();
        let mut tx = self.begin().await?;
        let res = sqlx::query(
            "INSERT INTO deployments (id, workspace_id, name, pool_id, queue_id, job_variables, \
             parameters, concurrency_limit, paused, created, updated) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$10)",
        )
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .bind(&new.name)
        .bind(pool.id.to_string())
        .bind(queue.id.to_string())
        .bind(Value::Object(new.job_variables.clone()).to_string())
        .bind(Value::Object(new.parameters.clone()).to_string())
        .bind(new.concurrency_limit)
        .bind(new.paused as i64)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            return Err(if is_unique_violation(&e) {
                StoreError::Conflict {
                    field: Some("name".into()),
                    message: format!("a deployment named `{}` already exists", new.name),
                }
            } else {
                e.into()
            });
        }
        insert_event(
            &mut tx,
            workspace_id,
            "deployment.created",
            &id.to_string(),
            &json!({"name": new.name, "work_pool": new.work_pool}),
        )
        .await?;
        tx.commit().await?;
        self.deployment(workspace_id, &id.to_string()).await
    }

    /// A deployment by id or name.
    pub async fn deployment(&self, workspace_id: Uuid, id_or_name: &str) -> Result<Deployment> {
        let by_id = Uuid::parse_str(id_or_name).is_ok();
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM {DEPLOYMENT_FROM} WHERE d.workspace_id = $1 AND {} = $2",
            if by_id { "d.id" } else { "d.name" }
        );
        let row = sqlx::query(&sql)
            .bind(workspace_id.to_string())
            .bind(id_or_name)
            .fetch_optional(self.db())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "deployment",
                key: id_or_name.to_string(),
            })?;
        deployment_from_row(&row)
    }

    /// A workspace's deployments, by name.
    pub async fn list_deployments(&self, workspace_id: Uuid) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM {DEPLOYMENT_FROM} WHERE d.workspace_id = $1 ORDER BY d.name"
        ))
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Changes a deployment (job variables must already be checked).
    pub async fn update_deployment(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
        patch: DeploymentPatch,
    ) -> Result<Deployment> {
        if let Some(limit) = patch.concurrency_limit {
            check_limit("concurrency_limit", limit)?;
        }
        let current = self.deployment(workspace_id, id_or_name).await?;
        let queue_id = match &patch.work_queue {
            Some(q) => self.queue(current.work_pool_id, q).await?.id,
            None => current.work_queue_id,
        };
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE deployments SET job_variables = $1, parameters = $2, concurrency_limit = $3, \
             paused = $4, queue_id = $5, updated = $6 WHERE id = $7",
        )
        .bind(
            Value::Object(
                patch
                    .job_variables
                    .clone()
                    .unwrap_or(current.job_variables.clone()),
            )
            .to_string(),
        )
        .bind(
            Value::Object(
                patch
                    .parameters
                    .clone()
                    .unwrap_or(current.parameters.clone()),
            )
            .to_string(),
        )
        .bind(patch.concurrency_limit.unwrap_or(current.concurrency_limit))
        .bind(patch.paused.unwrap_or(current.paused) as i64)
        .bind(queue_id.to_string())
        .bind(now_micros())
        .bind(current.id.to_string())
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "deployment.updated",
            &current.id.to_string(),
            &json!({"name": current.name}),
        )
        .await?;
        self.notify_in(&mut tx).await?;
        tx.commit().await?;
        self.notify_local();
        self.deployment(workspace_id, &current.id.to_string()).await
    }

    /// Deletes a deployment; its runs that have not started are cancelled, the others are kept.
    pub async fn delete_deployment(&self, workspace_id: Uuid, id_or_name: &str) -> Result<()> {
        let d = self.deployment(workspace_id, id_or_name).await?;
        let scheduled = sqlx::query(
            "SELECT id FROM flow_runs WHERE deployment_id = $1 AND state_type IN ('SCHEDULED', 'PAUSED')",
        )
        .bind(d.id.to_string())
        .fetch_all(self.db())
        .await?;
        for row in scheduled {
            let run_id = get_uuid(&row, "id")?;
            let proposal = crate::state::Proposal::new(crate::state::StateType::Cancelled)
                .with_message(format!("deployment `{}` was deleted", d.name));
            self.propose_state(run_id, proposal, super::TransitionGuard::default())
                .await?;
        }
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM deployments WHERE id = $1")
            .bind(d.id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            workspace_id,
            "deployment.deleted",
            &d.id.to_string(),
            &json!({"name": d.name}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A workspace's newest events, newest first.
    pub async fn list_events(&self, workspace_id: Uuid, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, occurred, event, resource_id, payload FROM events \
             WHERE workspace_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(workspace_id.to_string())
        .bind(limit)
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get("payload")?;
                Ok(Event {
                    id: get_uuid(row, "id")?,
                    workspace_id: get_uuid(row, "workspace_id")?,
                    occurred: from_micros(row.try_get("occurred")?),
                    event: row.try_get("event")?,
                    resource_id: row.try_get("resource_id")?,
                    payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                })
            })
            .collect()
    }
}

async fn insert_queue(
    tx: &mut Tx,
    workspace_id: Uuid,
    pool_id: Uuid,
    new: &NewQueue,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    let now = now_micros();
    let res = sqlx::query(
        "INSERT INTO work_queues (id, workspace_id, pool_id, name, priority, concurrency_limit, paused, created, updated) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$8)",
    )
    .bind(id.to_string())
    .bind(workspace_id.to_string())
    .bind(pool_id.to_string())
    .bind(&new.name)
    .bind(new.priority)
    .bind(new.concurrency_limit)
    .bind(new.paused as i64)
    .bind(now)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(id),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict {
            field: Some("name".into()),
            message: format!(
                "a work queue named `{}` already exists in this pool",
                new.name
            ),
        }),
        Err(e) => Err(e.into()),
    }
}
