//! Work pools and their queues.

use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use super::{
    check_limit, delete_recorded, insert_event, pool_from_row, queue_from_row, POOL_COLUMNS,
    QUEUE_COLUMNS,
};
use crate::model::{now_micros, WorkPool, WorkQueue};
use crate::store::crypto;
use crate::store::sql::{not_found, unique_conflict};
use crate::store::{Result, Store, StoreError, Tx};

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
    /// Checked names of the variables a run may override (`None`: any).
    pub overridable_variables: Option<Vec<String>>,
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
    /// New checked list of the variables a run may override (`Some(None)`: any).
    pub overridable_variables: Option<Option<Vec<String>>>,
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

/// A list of names as stored: a JSON array, or NULL for none.
fn names_json(names: Option<&[String]>) -> Option<String> {
    names.map(|n| serde_json::Value::from(n.to_vec()).to_string())
}

impl Store {
    /// Creates a pool and its `default` queue.
    pub async fn create_pool(&self, workspace_id: Uuid, new: NewPool) -> Result<WorkPool> {
        check_limit("concurrency_limit", new.concurrency_limit)?;
        let id = Uuid::now_v7();
        let now = now_micros();
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO work_pools (id, workspace_id, name, type, description, base_job_template, \
             concurrency_limit, paused, created, updated, overridable_variables, submit_rate) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$9,$10,{})",
            float_param(new.submit_rate, 11)
        );
        let mut q = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(workspace_id.to_string())
            .bind(&new.name)
            .bind(&new.pool_type)
            .bind(new.description.clone())
            .bind(crypto::seal_template(
                self.secret_key(),
                &crypto::row_aad("work_pools", &id, "base_job_template"),
                &new.base_job_template,
            ))
            .bind(new.concurrency_limit)
            .bind(new.paused as i64)
            .bind(now)
            .bind(names_json(new.overridable_variables.as_deref()));
        if let Some(rate) = new.submit_rate {
            q = q.bind(rate);
        }
        q.execute(&mut *tx).await.map_err(|e| {
            unique_conflict(e, "name", || {
                format!("a work pool named `{}` already exists", new.name)
            })
        })?;
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
        let sql = format!("SELECT {POOL_COLUMNS} FROM work_pools WHERE id = $1");
        let query = sqlx::query(&sql).bind(id.to_string());
        self.fetch_found(query, "work pool", id, |r| {
            pool_from_row(r, self.secret_key())
        })
        .await
    }

    /// A pool by name in a workspace.
    pub async fn pool(&self, workspace_id: Uuid, name: &str) -> Result<WorkPool> {
        let sql =
            format!("SELECT {POOL_COLUMNS} FROM work_pools WHERE workspace_id = $1 AND name = $2");
        let query = sqlx::query(&sql).bind(workspace_id.to_string()).bind(name);
        self.fetch_found(query, "work pool", name, |r| {
            pool_from_row(r, self.secret_key())
        })
        .await
    }

    /// A workspace's pools, by name.
    pub async fn list_pools(&self, workspace_id: Uuid) -> Result<Vec<WorkPool>> {
        let sql =
            format!("SELECT {POOL_COLUMNS} FROM work_pools WHERE workspace_id = $1 ORDER BY name");
        let query = sqlx::query(&sql).bind(workspace_id.to_string());
        self.fetch_rows(query, |r| pool_from_row(r, self.secret_key()))
            .await
    }

    /// Changes a pool.
    pub async fn update_pool(
        &self,
        workspace_id: Uuid,
        name: &str,
        patch: PoolPatch,
    ) -> Result<WorkPool> {
        check_limit("concurrency_limit", patch.concurrency_limit.flatten())?;
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
        let overridable = patch
            .overridable_variables
            .clone()
            .unwrap_or(current.overridable_variables.clone());
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE work_pools SET description = $1, base_job_template = $2, concurrency_limit = $3, \
             paused = $4, updated = $5, overridable_variables = $7, submit_rate = {} WHERE id = $6",
            float_param(submit_rate, 8)
        );
        let mut q = sqlx::query(&sql)
            .bind(description)
            .bind(crypto::seal_template(
                self.secret_key(),
                &crypto::row_aad("work_pools", &current.id, "base_job_template"),
                &template,
            ))
            .bind(limit)
            .bind(paused as i64)
            .bind(now_micros())
            .bind(current.id.to_string())
            .bind(names_json(overridable.as_deref()));
        if let Some(rate) = submit_rate {
            q = q.bind(rate);
        }
        let done = q.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(not_found("work pool", name));
        }
        insert_event(
            &mut tx,
            workspace_id,
            "work_pool.updated",
            &current.id.to_string(),
            &json!({"name": name, "paused": paused, "concurrency_limit": limit}),
        )
        .await?;
        self.commit_notifying(tx).await?;
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
        delete_recorded(
            tx,
            "work_pools",
            workspace_id,
            "work_pool.deleted",
            pool.id,
            name,
        )
        .await
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
        check_limit("concurrency_limit", concurrency_limit.flatten())?;
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
        self.commit_notifying(tx).await?;
        self.queue_by_id(current.id).await
    }

    /// A queue by id.
    pub async fn queue_by_id(&self, id: Uuid) -> Result<WorkQueue> {
        let sql = format!("SELECT {QUEUE_COLUMNS} FROM work_queues WHERE id = $1");
        let query = sqlx::query(&sql).bind(id.to_string());
        self.fetch_found(query, "work queue", id, queue_from_row)
            .await
    }

    /// A queue by name in a pool.
    pub async fn queue(&self, pool_id: Uuid, name: &str) -> Result<WorkQueue> {
        let sql =
            format!("SELECT {QUEUE_COLUMNS} FROM work_queues WHERE pool_id = $1 AND name = $2");
        let query = sqlx::query(&sql).bind(pool_id.to_string()).bind(name);
        self.fetch_found(query, "work queue", name, queue_from_row)
            .await
    }

    /// A pool's queues, by priority then name.
    pub async fn list_queues(&self, pool_id: Uuid) -> Result<Vec<WorkQueue>> {
        let sql = format!(
            "SELECT {QUEUE_COLUMNS} FROM work_queues WHERE pool_id = $1 ORDER BY priority, name"
        );
        let query = sqlx::query(&sql).bind(pool_id.to_string());
        self.fetch_rows(query, queue_from_row).await
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
    sqlx::query(
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
    .await
    .map_err(|e| {
        unique_conflict(e, "name", || {
            format!(
                "a work queue named `{}` already exists in this pool",
                new.name
            )
        })
    })?;
    Ok(id)
}
