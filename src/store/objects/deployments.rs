//! Deployments.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    check_limit, delete_recorded, deployment_from_row, insert_event, DEPLOYMENT_COLUMNS,
    DEPLOYMENT_FROM,
};
use crate::model::{now_micros, Deployment};
use crate::state::{Proposal, RetryPolicy, StateType};
use crate::store::retries::{policy_text, tags_text};
use crate::store::sql::{get_uuid, unique_conflict};
use crate::store::{Result, Store, StoreError, TransitionGuard};

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
    // Retries and tags (issue 13).
    /// New retry policy (checked).
    pub retry: Option<RetryPolicy>,
    /// New tags (checked).
    pub tags: Option<Vec<String>>,
}

/// What a deployment gives each new run besides job variables and parameters (issue 13).
#[derive(Debug, Clone, Default)]
pub struct RunDefaults {
    /// The retry policy (checked).
    pub retry: RetryPolicy,
    /// The tags (checked).
    pub tags: Vec<String>,
}

impl Store {
    /// Creates a deployment (job variables must already be checked against the pool template).
    pub async fn create_deployment(
        &self,
        workspace_id: Uuid,
        new: NewDeployment,
    ) -> Result<Deployment> {
        self.create_deployment_with(workspace_id, new, RunDefaults::default())
            .await
    }

    /// Creates a deployment whose runs get `defaults` (retry policy and tags).
    pub async fn create_deployment_with(
        &self,
        workspace_id: Uuid,
        new: NewDeployment,
        defaults: RunDefaults,
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
        sqlx::query(
            "INSERT INTO deployments (id, workspace_id, name, pool_id, queue_id, job_variables, \
             parameters, concurrency_limit, paused, created, updated, retry_policy, tags) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$10,$11,$12)",
        )
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .bind(&new.name)
        .bind(pool.id.to_string())
        .bind(queue.id.to_string())
        .bind(self.seal_variables(
            "deployments",
            id,
            "job_variables",
            &new.job_variables,
            &pool.base_job_template,
        ))
        .bind(self.seal_variables(
            "deployments",
            id,
            "parameters",
            &new.parameters,
            &Value::Null,
        ))
        .bind(new.concurrency_limit)
        .bind(new.paused as i64)
        .bind(now)
        .bind(policy_text(&defaults.retry))
        .bind(tags_text(&defaults.tags))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_conflict(e, "name", || {
                format!("a deployment named `{}` already exists", new.name)
            })
        })?;
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
        let query = sqlx::query(&sql)
            .bind(workspace_id.to_string())
            .bind(id_or_name);
        self.fetch_found(query, "deployment", id_or_name, |r| {
            deployment_from_row(r, self.secret_key())
        })
        .await
    }

    /// A workspace's deployments, by name.
    pub async fn list_deployments(&self, workspace_id: Uuid) -> Result<Vec<Deployment>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM {DEPLOYMENT_FROM} WHERE d.workspace_id = $1 ORDER BY d.name"
        );
        let query = sqlx::query(&sql).bind(workspace_id.to_string());
        self.fetch_rows(query, |r| deployment_from_row(r, self.secret_key()))
            .await
    }

    /// Changes a deployment (job variables must already be checked).
    pub async fn update_deployment(
        &self,
        workspace_id: Uuid,
        id_or_name: &str,
        patch: DeploymentPatch,
    ) -> Result<Deployment> {
        check_limit("concurrency_limit", patch.concurrency_limit.flatten())?;
        let current = self.deployment(workspace_id, id_or_name).await?;
        let queue_id = match &patch.work_queue {
            Some(q) => self.queue(current.work_pool_id, q).await?.id,
            None => current.work_queue_id,
        };
        // Its schema says which job variables are secret.
        let pool = self.pool_by_id(current.work_pool_id).await?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE deployments SET job_variables = $1, parameters = $2, concurrency_limit = $3, \
             paused = $4, queue_id = $5, updated = $6, retry_policy = $8, tags = $9 WHERE id = $7",
        )
        .bind(
            self.seal_variables(
                "deployments",
                current.id,
                "job_variables",
                patch
                    .job_variables
                    .as_ref()
                    .unwrap_or(&current.job_variables),
                &pool.base_job_template,
            ),
        )
        .bind(self.seal_variables(
            "deployments",
            current.id,
            "parameters",
            patch.parameters.as_ref().unwrap_or(&current.parameters),
            &Value::Null,
        ))
        .bind(patch.concurrency_limit.unwrap_or(current.concurrency_limit))
        .bind(patch.paused.unwrap_or(current.paused) as i64)
        .bind(queue_id.to_string())
        .bind(now_micros())
        .bind(current.id.to_string())
        .bind(policy_text(patch.retry.as_ref().unwrap_or(&current.retry)))
        .bind(tags_text(patch.tags.as_ref().unwrap_or(&current.tags)))
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
        self.commit_notifying(tx).await?;
        self.deployment(workspace_id, &current.id.to_string()).await
    }

    /// Deletes a deployment; its runs that have not started are cancelled, the others are kept.
    pub async fn delete_deployment(&self, workspace_id: Uuid, id_or_name: &str) -> Result<()> {
        let d = self.deployment(workspace_id, id_or_name).await?;
        // Its schedules first (issue 13), so no scheduler adds runs while the rest is cancelled.
        for schedule in self.schedules_of(d.id).await? {
            self.delete_schedule(&d, &schedule.id.to_string()).await?;
        }
        let scheduled = sqlx::query(
            "SELECT id FROM flow_runs WHERE deployment_id = $1 AND state_type IN ('SCHEDULED', 'PAUSED')",
        )
        .bind(d.id.to_string())
        .fetch_all(self.db())
        .await?;
        for row in scheduled {
            let run_id = get_uuid(&row, "id")?;
            let proposal = Proposal::new(StateType::Cancelled)
                .with_message(format!("deployment `{}` was deleted", d.name));
            self.propose_state(run_id, proposal, TransitionGuard::default())
                .await?;
        }
        let tx = self.begin().await?;
        delete_recorded(
            tx,
            "deployments",
            workspace_id,
            "deployment.deleted",
            d.id,
            &d.name,
        )
        .await
    }
}
