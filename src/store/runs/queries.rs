//! Reading runs: creation, lookups, listings, history and counts.

use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use super::{
    insert_history, run_from_row, HistoryRow, NewRun, RunFilter, ACTIVE_STATES_SQL, RUN_COLUMNS,
};
use crate::model::{from_micros, now_micros, to_micros, Deployment, FlowRun, HistoryEntry};
use crate::state::StateType;
use crate::store::objects::insert_event_rows;
use crate::store::retries::{insert_run_tags, policy_text, tags_text};
use crate::store::sql::{bind_all, conflict, get_state_type, get_uuid, not_found};
use crate::store::{is_unique_violation, Result, Store, StoreError};

/// A refused retry setting as the store's error (the field named).
fn invalid(e: crate::state::InvalidSetting) -> StoreError {
    StoreError::Invalid {
        field: e.field,
        message: e.message,
    }
}

impl Store {
    /// Creates a run of a deployment in SCHEDULED (history and event included). With an idempotency
    /// key that was used before in the workspace, returns the existing run and `false`.
    pub async fn create_run(
        &self,
        deployment: &Deployment,
        new: NewRun,
    ) -> Result<(FlowRun, bool)> {
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self
                .run_by_idempotency_key(deployment.workspace_id, key)
                .await?
            {
                return Ok((existing, false));
            }
        }
        let now = now_micros();
        let scheduled = new.scheduled_time.map(to_micros).unwrap_or(now);
        // Retries and tags (issue 13): the deployment's, with the run's own on top.
        let retry = new.retry.apply(&deployment.retry).map_err(invalid)?;
        let tags = crate::state::inherit_tags(&deployment.tags, &new.tags);
        let mut parameters = deployment.parameters.clone();
        parameters.extend(new.parameters.clone());
        let id = Uuid::now_v7();
        // The pool's schema says which job variables are secret (read only when sealing).
        let template = match self.secret_key() {
            Some(_) => {
                self.pool_by_id(deployment.work_pool_id)
                    .await?
                    .base_job_template
            }
            None => Value::Null,
        };
        let mut tx = self.begin().await?;
        let res = sqlx::query(&format!(
            "INSERT INTO flow_runs (id, workspace_id, deployment_id, deployment_name, pool_id, pool_name, \
             queue_id, queue_name, parameters, job_variables, scheduled_time, state_type, state_name, \
             state_timestamp, attempt, idempotency_key, created, updated, retry_policy, tags) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,'SCHEDULED','Scheduled',$12,1,$13,$12,$12,$14,$15) \
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(deployment.workspace_id.to_string())
        .bind(deployment.id.to_string())
        .bind(&deployment.name)
        .bind(deployment.work_pool_id.to_string())
        .bind(&deployment.work_pool)
        .bind(deployment.work_queue_id.to_string())
        .bind(&deployment.work_queue)
        .bind(self.seal_variables("flow_runs", id, "parameters", &parameters, &Value::Null))
        .bind(self.seal_variables(
            "flow_runs",
            id,
            "job_variables",
            &new.job_variables,
            &template,
        ))
        .bind(scheduled)
        .bind(now)
        .bind(new.idempotency_key.clone())
        .bind(policy_text(&retry))
        .bind(tags_text(&tags))
        .fetch_one(&mut *tx)
        .await;
        let row = match res {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e) && new.idempotency_key.is_some() => {
                drop(tx);
                let key = new.idempotency_key.as_deref().unwrap_or_default();
                let existing = self
                    .run_by_idempotency_key(deployment.workspace_id, key)
                    .await?
                    .ok_or_else(|| conflict("idempotency_key", "idempotency key in use".into()))?;
                return Ok((existing, false));
            }
            Err(e) => return Err(e.into()),
        };
        let run = run_from_row(&row, self.secret_key())?;
        insert_run_tags(&mut tx, run.id, run.workspace_id, &run.tags).await?;
        insert_history(
            &mut tx,
            &[HistoryRow {
                run: &run,
                transition_id: format!("create-{id}"),
            }],
        )
        .await?;
        let event = super::flow_run_event(
            &run,
            "flow_run.created",
            json!({"deployment": deployment.name, "scheduled_time": run.scheduled_time}),
        );
        insert_event_rows(&mut tx, &[event]).await?;
        self.commit_notifying(tx).await?;
        Ok((run, true))
    }

    async fn run_by_idempotency_key(
        &self,
        workspace_id: Uuid,
        key: &str,
    ) -> Result<Option<FlowRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE workspace_id = $1 AND idempotency_key = $2"
        ))
        .bind(workspace_id.to_string())
        .bind(key)
        .fetch_optional(self.db())
        .await?;
        row.as_ref()
            .map(|r| run_from_row(r, self.secret_key()))
            .transpose()
    }

    /// A run by id, in any workspace (controller side).
    pub async fn run(&self, id: Uuid) -> Result<FlowRun> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = $1");
        let query = sqlx::query(&sql).bind(id.to_string());
        self.fetch_found(query, "flow run", id, |r| {
            run_from_row(r, self.secret_key())
        })
        .await
    }

    /// A run by id within a workspace (API side): another workspace's run is "not found".
    pub async fn run_in(&self, workspace_id: Uuid, id: Uuid) -> Result<FlowRun> {
        let run = self.run(id).await?;
        if run.workspace_id != workspace_id {
            return Err(not_found("flow run", id));
        }
        Ok(run)
    }

    /// Lists a workspace's runs, newest first.
    pub async fn list_runs(&self, workspace_id: Uuid, filter: &RunFilter) -> Result<Vec<FlowRun>> {
        let (sql, args) = list_runs_sql(workspace_id, filter);
        self.fetch_rows(bind_all(sqlx::query(&sql), args), |r| {
            run_from_row(r, self.secret_key())
        })
        .await
    }

    /// Every run of a workspace, newest first (reads in pages of 1,000).
    pub async fn all_runs(&self, workspace_id: Uuid) -> Result<Vec<FlowRun>> {
        let mut all = vec![];
        let mut cursor = None;
        loop {
            let filter = RunFilter {
                limit: Some(1000),
                cursor,
                ..RunFilter::default()
            };
            let page = self.list_runs(workspace_id, &filter).await?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.id);
            all.extend(page);
        }
        Ok(all)
    }

    /// A run's accepted states, oldest first. A scheduler-made run has no history row for its
    /// creation (the run row records it; see `create_slot_runs`): it is shown here as the first
    /// entry, SCHEDULED at the run's creation time.
    pub async fn state_history(&self, run_id: Uuid) -> Result<Vec<HistoryEntry>> {
        let query = sqlx::query(
            "SELECT state_type, state_name, message, timestamp, transition_id, id AS ord \
             FROM state_history WHERE run_id = $1 \
             UNION ALL SELECT 'SCHEDULED', 'Scheduled', NULL, created, 'create-' || id, '' \
             FROM flow_runs r WHERE r.id = $1 AND r.schedule_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM state_history h WHERE h.run_id = r.id \
              AND h.transition_id = 'create-' || r.id) \
             ORDER BY ord",
        )
        .bind(run_id.to_string());
        self.fetch_rows(query, |row| {
            Ok(HistoryEntry {
                state_type: get_state_type(row, "state_type")?,
                name: row.try_get("state_name")?,
                message: row.try_get("message")?,
                timestamp: from_micros(row.try_get("timestamp")?),
                transition_id: row.try_get("transition_id")?,
            })
        })
        .await
    }

    /// Every history entry of a workspace's runs as (run, type), in order per run (for audits).
    pub async fn workspace_history(&self, workspace_id: Uuid) -> Result<Vec<(Uuid, StateType)>> {
        let query = sqlx::query(
            "SELECT h.run_id, h.state_type, h.id AS ord FROM state_history h \
             JOIN flow_runs r ON r.id = h.run_id WHERE r.workspace_id = $1 \
             UNION ALL SELECT r.id, 'SCHEDULED', '' FROM flow_runs r \
             WHERE r.workspace_id = $1 AND r.schedule_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM state_history h WHERE h.run_id = r.id \
              AND h.transition_id = 'create-' || r.id) \
             ORDER BY 1, 3",
        )
        .bind(workspace_id.to_string());
        self.fetch_rows(query, |row| {
            Ok((get_uuid(row, "run_id")?, get_state_type(row, "state_type")?))
        })
        .await
    }

    /// Number of runs per state type (for metrics).
    pub async fn count_by_state(&self) -> Result<Vec<(StateType, i64)>> {
        let query =
            sqlx::query("SELECT state_type, COUNT(*) AS n FROM flow_runs GROUP BY state_type");
        self.fetch_rows(query, |row| {
            Ok((get_state_type(row, "state_type")?, row.try_get("n")?))
        })
        .await
    }

    /// Active runs (PENDING, RUNNING, CANCELLING) per pool name and deployment id, read in one snapshot.
    pub async fn count_active_by_deployment(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(&format!(
            "SELECT pool_name, deployment_id, COUNT(*) AS n FROM flow_runs \
             WHERE state_type IN {ACTIVE_STATES_SQL} GROUP BY pool_name, deployment_id"
        ))
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("pool_name")?,
                    row.try_get("deployment_id")?,
                    row.try_get("n")?,
                ))
            })
            .collect()
    }
}

/// The statement of [`Store::list_runs`] and its arguments (shared with [`Store::explain_list_runs`]).
pub(crate) fn list_runs_sql(workspace_id: Uuid, filter: &RunFilter) -> (String, Vec<String>) {
    let mut sql = format!("SELECT {RUN_COLUMNS} FROM flow_runs WHERE workspace_id = $1");
    let mut args: Vec<String> = vec![workspace_id.to_string()];
    if let Some(s) = filter.state {
        args.push(s.as_str().to_string());
        sql.push_str(&format!(" AND state_type = ${}", args.len()));
    }
    if !filter.states.is_empty() {
        let first = args.len() + 1;
        args.extend(filter.states.iter().map(|s| s.as_str().to_string()));
        let list = crate::store::sql::placeholders(first, filter.states.len());
        sql.push_str(&format!(" AND state_type IN ({list})"));
    }
    for tag in &filter.tags {
        args.push(tag.clone());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM flow_run_tags t WHERE t.workspace_id = $1 \
             AND t.tag = ${} AND t.run_id = flow_runs.id)",
            args.len()
        ));
    }
    if let Some(since) = filter.since {
        args.push(to_micros(since).to_string());
        sql.push_str(&format!(
            " AND scheduled_time >= CAST(${} AS BIGINT)",
            args.len()
        ));
    }
    if let Some(until) = filter.until {
        args.push(to_micros(until).to_string());
        sql.push_str(&format!(
            " AND scheduled_time < CAST(${} AS BIGINT)",
            args.len()
        ));
    }
    if let Some(p) = &filter.work_pool {
        args.push(p.clone());
        sql.push_str(&format!(" AND pool_name = ${}", args.len()));
    }
    if let Some(d) = filter.deployment_id {
        args.push(d.to_string());
        sql.push_str(&format!(" AND deployment_id = ${}", args.len()));
    }
    if let Some(c) = filter.cursor {
        args.push(c.to_string());
        sql.push_str(&format!(" AND id < ${}", args.len()));
    }
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    (sql, args)
}
