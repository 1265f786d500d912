//! Flow runs: creation, the guarded state transition, claims with leases, rescue, logs.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::objects::insert_event;
use super::{get_json_map, get_uuid, placeholders, Backend, Result, Store, StoreError, Tx};
use crate::model::{
    from_micros, now_micros, to_micros, Deployment, FlowRun, HistoryEntry, LogLine, Micros, State,
};
use crate::state::{check_transition, names, Proposal, Rejection, StateType};

/// SQL list of the state types that hold a concurrency slot.
pub const ACTIVE_STATES_SQL: &str = "('PENDING', 'RUNNING', 'CANCELLING')";

const RUN_COLUMNS: &str = "id, workspace_id, deployment_id, deployment_name, pool_id, pool_name, \
     queue_id, queue_name, parameters, job_variables, scheduled_time, state_type, state_name, \
     state_message, state_timestamp, attempt, infrastructure_id, idempotency_key, lease_owner, \
     lease_expires, last_heartbeat, version, created, updated";

/// A run to create.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// When it is due (now when absent).
    pub scheduled_time: Option<DateTime<Utc>>,
    /// Parameters, merged over the deployment's.
    pub parameters: Map<String, Value>,
    /// Run-level job-variable overrides (already checked).
    pub job_variables: Map<String, Value>,
    /// A repeated key returns the existing run.
    pub idempotency_key: Option<String>,
}

/// Which pools a claim or query covers.
#[derive(Debug, Clone)]
pub enum PoolSelector {
    /// Every pool.
    All,
    /// Pools with these ids.
    Ids(Vec<Uuid>),
    /// Pools of these types (what a controller with these providers can serve).
    Types(Vec<String>),
}

impl PoolSelector {
    /// SQL condition on alias `p` with its parameters starting at `$start`.
    fn condition(&self, start: usize) -> (String, Vec<String>) {
        match self {
            PoolSelector::All => ("1 = 1".into(), vec![]),
            PoolSelector::Ids(ids) if ids.is_empty() => ("1 = 0".into(), vec![]),
            PoolSelector::Types(t) if t.is_empty() => ("1 = 0".into(), vec![]),
            PoolSelector::Ids(ids) => (
                format!("p.id IN ({})", placeholders(start, ids.len())),
                ids.iter().map(Uuid::to_string).collect(),
            ),
            PoolSelector::Types(types) => (
                format!("p.type IN ({})", placeholders(start, types.len())),
                types.clone(),
            ),
        }
    }
}

/// Filter for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in this state type.
    pub state: Option<StateType>,
    /// Only runs of this pool (name).
    pub work_pool: Option<String>,
    /// Only runs of this deployment.
    pub deployment_id: Option<Uuid>,
    /// Page size (default 100).
    pub limit: Option<i64>,
    /// Only runs older than this id (the previous page's last id).
    pub cursor: Option<Uuid>,
}

/// Conditions a writer puts on its proposal.
#[derive(Debug, Clone, Default)]
pub struct TransitionGuard {
    /// Compare-and-set: the run must be in this state type.
    pub expected: Option<StateType>,
    /// The writer's controller id: the run must not be leased by another controller.
    pub lease_owner: Option<String>,
}

impl TransitionGuard {
    /// A controller's guard: it must own the lease and expect `state`.
    pub fn owned(owner: &str, state: StateType) -> Self {
        TransitionGuard {
            expected: Some(state),
            lease_owner: Some(owner.to_string()),
        }
    }
}

/// The answer to a proposal. Never an error for a refused proposal: the reason comes back.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// Accepted and recorded; the run as it is now.
    Accepted(FlowRun),
    /// This transition id was already accepted: a retried proposal, nothing changed.
    Duplicate(FlowRun),
    /// Refused; the run is unchanged.
    Rejected {
        /// Why.
        reason: Rejection,
        /// The run as it is.
        run: FlowRun,
    },
}

impl TransitionOutcome {
    /// The run after the proposal.
    pub fn run(&self) -> &FlowRun {
        match self {
            TransitionOutcome::Accepted(r) | TransitionOutcome::Duplicate(r) => r,
            TransitionOutcome::Rejected { run, .. } => run,
        }
    }
    /// True when the proposal is (now or earlier) recorded.
    pub fn is_recorded(&self) -> bool {
        !matches!(self, TransitionOutcome::Rejected { .. })
    }
}

fn run_from_row(row: &AnyRow) -> Result<FlowRun> {
    let state_type: String = row.try_get("state_type")?;
    Ok(FlowRun {
        id: get_uuid(row, "id")?,
        workspace_id: get_uuid(row, "workspace_id")?,
        deployment_id: get_uuid(row, "deployment_id")?,
        deployment: row.try_get("deployment_name")?,
        work_pool: row.try_get("pool_name")?,
        work_pool_id: get_uuid(row, "pool_id")?,
        work_queue: row.try_get("queue_name")?,
        work_queue_id: get_uuid(row, "queue_id")?,
        parameters: get_json_map(row, "parameters")?,
        job_variables: get_json_map(row, "job_variables")?,
        scheduled_time: from_micros(row.try_get("scheduled_time")?),
        state: State {
            state_type: state_type
                .parse()
                .map_err(|e: crate::state::UnknownStateType| StoreError::Corrupt(e.to_string()))?,
            name: row.try_get("state_name")?,
            message: row.try_get("state_message")?,
            timestamp: from_micros(row.try_get("state_timestamp")?),
        },
        attempt: row.try_get("attempt")?,
        infrastructure_id: row.try_get("infrastructure_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires: row
            .try_get::<Option<i64>, _>("lease_expires")?
            .map(from_micros),
        last_heartbeat: row
            .try_get::<Option<i64>, _>("last_heartbeat")?
            .map(from_micros),
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
    })
}

struct HistoryRow<'a> {
    run: &'a FlowRun,
    transition_id: String,
}

async fn insert_history(tx: &mut Tx, rows: &[HistoryRow<'_>]) -> Result<()> {
    for chunk in rows.chunks(500) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 7 + 1, 7)))
            .collect();
        let sql = format!(
            "INSERT INTO state_history (id, run_id, transition_id, state_type, state_name, message, timestamp) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for h in chunk {
            q = q
                .bind(Uuid::now_v7().to_string())
                .bind(h.run.id.to_string())
                .bind(h.transition_id.clone())
                .bind(h.run.state.state_type.as_str())
                .bind(h.run.state.name.clone())
                .bind(h.run.state.message.clone())
                .bind(to_micros(h.run.state.timestamp));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// One event row to insert.
struct EventRow {
    workspace_id: Uuid,
    occurred: Micros,
    event: String,
    resource_id: String,
    payload: Value,
}

impl EventRow {
    fn transition(run: &FlowRun, from: StateType) -> Self {
        EventRow {
            workspace_id: run.workspace_id,
            occurred: to_micros(run.state.timestamp),
            event: format!(
                "flow_run.state.{}",
                run.state.state_type.as_str().to_ascii_lowercase()
            ),
            resource_id: run.id.to_string(),
            payload: json!({
                "from": from,
                "to": run.state.state_type,
                "name": run.state.name,
                "message": run.state.message,
                "attempt": run.attempt,
            }),
        }
    }
}

/// Inserts events with multi-row statements.
async fn insert_event_rows(tx: &mut Tx, rows: &[EventRow]) -> Result<()> {
    for chunk in rows.chunks(500) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 6 + 1, 6)))
            .collect();
        let sql = format!(
            "INSERT INTO events (id, workspace_id, occurred, event, resource_id, payload) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = q
                .bind(Uuid::now_v7().to_string())
                .bind(row.workspace_id.to_string())
                .bind(row.occurred)
                .bind(row.event.clone())
                .bind(row.resource_id.clone())
                .bind(row.payload.to_string());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_transition_events(tx: &mut Tx, runs: &[(&FlowRun, StateType)]) -> Result<()> {
    let rows: Vec<EventRow> = runs
        .iter()
        .map(|(run, from)| EventRow::transition(run, *from))
        .collect();
    insert_event_rows(tx, &rows).await
}

fn lease_micros(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2)
}

/// A claim candidate with the limits that apply to it.
struct Candidate {
    id: String,
    pool_id: String,
    queue_id: String,
    deployment_id: String,
    pool_limit: Option<i64>,
    queue_limit: Option<i64>,
    deployment_limit: Option<i64>,
}

/// Admits candidates in order while every limit on their path has room (pure, unit-tested).
fn admit(candidates: &[Candidate], active: &ActiveCounts, limit: usize) -> Vec<String> {
    let mut pools = active.pools.clone();
    let mut queues = active.queues.clone();
    let mut deployments = active.deployments.clone();
    let mut admitted = Vec::new();
    for c in candidates {
        if admitted.len() >= limit {
            break;
        }
        let fits = |count: &HashMap<String, i64>, key: &str, lim: Option<i64>| {
            lim.is_none_or(|l| count.get(key).copied().unwrap_or(0) < l)
        };
        if fits(&pools, &c.pool_id, c.pool_limit)
            && fits(&queues, &c.queue_id, c.queue_limit)
            && fits(&deployments, &c.deployment_id, c.deployment_limit)
        {
            *pools.entry(c.pool_id.clone()).or_default() += 1;
            *queues.entry(c.queue_id.clone()).or_default() += 1;
            *deployments.entry(c.deployment_id.clone()).or_default() += 1;
            admitted.push(c.id.clone());
        }
    }
    admitted
}

#[derive(Default)]
struct ActiveCounts {
    pools: HashMap<String, i64>,
    queues: HashMap<String, i64>,
    deployments: HashMap<String, i64>,
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
        let mut parameters = deployment.parameters.clone();
        parameters.extend(new.parameters.clone());
        let id = Uuid::now_v7();
        let mut tx = self.begin().await?;
        let res = sqlx::query(&format!(
            "INSERT INTO flow_runs (id, workspace_id, deployment_id, deployment_name, pool_id, pool_name, \
             queue_id, queue_name, parameters, job_variables, scheduled_time, state_type, state_name, \
             state_timestamp, attempt, idempotency_key, created, updated) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,'SCHEDULED','Scheduled',$12,1,$13,$12,$12) \
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
        .bind(Value::Object(parameters).to_string())
        .bind(Value::Object(new.job_variables.clone()).to_string())
        .bind(scheduled)
        .bind(now)
        .bind(new.idempotency_key.clone())
        .fetch_one(&mut *tx)
        .await;
        let row = match res {
            Ok(row) => row,
            Err(e) if super::is_unique_violation(&e) && new.idempotency_key.is_some() => {
                drop(tx);
                let key = new.idempotency_key.as_deref().unwrap_or_default();
                let existing = self
                    .run_by_idempotency_key(deployment.workspace_id, key)
                    .await?
                    .ok_or_else(|| StoreError::Conflict {
                        field: Some("idempotency_key".into()),
                        message: "idempotency key in use".into(),
                    })?;
                return Ok((existing, false));
            }
            Err(e) => return Err(e.into()),
        };
        let run = run_from_row(&row)?;
        insert_history(
            &mut tx,
            &[HistoryRow {
                run: &run,
                transition_id: format!("create-{id}"),
            }],
        )
        .await?;
        insert_event(
            &mut tx,
            run.workspace_id,
            "flow_run.created",
            &id.to_string(),
            &json!({"deployment": deployment.name, "scheduled_time": run.scheduled_time}),
        )
        .await?;
        self.notify_in(&mut tx).await?;
        tx.commit().await?;
        self.notify_local();
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
        row.as_ref().map(run_from_row).transpose()
    }

    /// A run by id, in any workspace (controller side).
    pub async fn run(&self, id: Uuid) -> Result<FlowRun> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.db())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "flow run",
            key: id.to_string(),
        })?;
        run_from_row(&row)
    }

    /// A run by id within a workspace (API side): another workspace's run is "not found".
    pub async fn run_in(&self, workspace_id: Uuid, id: Uuid) -> Result<FlowRun> {
        let run = self.run(id).await?;
        if run.workspace_id != workspace_id {
            return Err(StoreError::NotFound {
                what: "flow run",
                key: id.to_string(),
            });
        }
        Ok(run)
    }

    /// Lists a workspace's runs, newest first.
    pub async fn list_runs(&self, workspace_id: Uuid, filter: &RunFilter) -> Result<Vec<FlowRun>> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM flow_runs WHERE workspace_id = $1");
        let mut args: Vec<String> = vec![workspace_id.to_string()];
        if let Some(s) = filter.state {
            args.push(s.as_str().to_string());
            sql.push_str(&format!(" AND state_type = ${}", args.len()));
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
        let mut q = sqlx::query(&sql);
        for a in args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(self.db()).await?;
        rows.iter().map(run_from_row).collect()
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

    /// A run's accepted states, oldest first.
    pub async fn state_history(&self, run_id: Uuid) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(
            "SELECT state_type, state_name, message, timestamp, transition_id FROM state_history \
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                let t: String = row.try_get("state_type")?;
                Ok(HistoryEntry {
                    state_type: t.parse().map_err(|e: crate::state::UnknownStateType| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    name: row.try_get("state_name")?,
                    message: row.try_get("message")?,
                    timestamp: from_micros(row.try_get("timestamp")?),
                    transition_id: row.try_get("transition_id")?,
                })
            })
            .collect()
    }

    /// Proposes a new state. Compare-and-set on the current state (and lease owner when the guard
    /// names one); a repeated transition id is a no-op; history and event are written in the same
    /// transaction; terminal states are never left.
    pub async fn propose_state(
        &self,
        run_id: Uuid,
        proposal: Proposal,
        guard: TransitionGuard,
    ) -> Result<TransitionOutcome> {
        let mut outcomes = self
            .propose_states_with(run_id, vec![proposal], guard, None)
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no outcome".into()))
    }

    /// Proposes several states in order in one transaction (e.g. RUNNING then COMPLETED for a job
    /// that finished between two polls). Each later proposal expects the state the previous one
    /// set. Stops at the first proposal not accepted; what was accepted before it is kept. Returns
    /// the outcome of every proposal tried.
    pub async fn propose_states(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: TransitionGuard,
    ) -> Result<Vec<TransitionOutcome>> {
        self.propose_states_with(run_id, proposals, guard, None)
            .await
    }

    /// Like [`Store::propose_states`], and also records the infrastructure id of a PENDING run that
    /// has none yet in the same transaction (a job that already finished when it was submitted).
    pub async fn propose_states_with(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: TransitionGuard,
        infrastructure_id: Option<&str>,
    ) -> Result<Vec<TransitionOutcome>> {
        let mut tx = self.begin().await?;
        let (outcomes, wakes, changed) = self
            .apply_proposals(&mut tx, run_id, proposals, &guard, infrastructure_id)
            .await?;
        if changed {
            tx.commit().await?;
            if wakes {
                self.notify_local();
            }
        }
        Ok(outcomes)
    }

    /// Checks proposals in order against the run (read once, locked), then writes the final state,
    /// one history row and one event per accepted proposal. Returns the outcomes, whether waiters
    /// should be woken, and whether anything was written.
    async fn apply_proposals(
        &self,
        tx: &mut Tx,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: &TransitionGuard,
        infrastructure_id: Option<&str>,
    ) -> Result<(Vec<TransitionOutcome>, bool, bool)> {
        let sql = format!(
            "SELECT {RUN_COLUMNS}, CASE WHEN EXISTS (SELECT 1 FROM state_history h \
             WHERE h.run_id = flow_runs.id AND h.transition_id IN ({})) THEN 1 ELSE 0 END AS seen \
             FROM flow_runs WHERE id = $1{}",
            placeholders(2, proposals.len().max(1)),
            self.for_update()
        );
        let mut q = sqlx::query(&sql).bind(run_id.to_string());
        if proposals.is_empty() {
            q = q.bind(String::new());
        }
        for p in &proposals {
            q = q.bind(p.transition_id.clone());
        }
        let row = q
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "flow run",
                key: run_id.to_string(),
            })?;
        let mut current = run_from_row(&row)?;
        let version: i64 = row.try_get("version")?;
        let mut seen: Vec<String> = vec![];
        if row.try_get::<i64, _>("seen")? != 0 {
            let sql = format!(
                "SELECT transition_id FROM state_history WHERE run_id = $1 AND transition_id IN ({})",
                placeholders(2, proposals.len())
            );
            let mut q = sqlx::query(&sql).bind(run_id.to_string());
            for p in &proposals {
                q = q.bind(p.transition_id.clone());
            }
            for r in q.fetch_all(&mut **tx).await? {
                seen.push(r.try_get("transition_id")?);
            }
        }

        let now = now_micros();
        let mut expected = guard.expected;
        let mut outcomes = Vec::with_capacity(proposals.len());
        let mut steps: Vec<(FlowRun, StateType, String)> = vec![];
        let mut wakes = false;
        let mut infra_applied = None;
        for proposal in proposals {
            if seen.contains(&proposal.transition_id) {
                outcomes.push(TransitionOutcome::Duplicate(current.clone()));
                expected = Some(proposal.state_type);
                continue;
            }
            let from = current.state.state_type;
            let rejection = if from.is_terminal() {
                Some(Rejection::AlreadyTerminal { current: from })
            } else if expected.is_some_and(|e| e != from) {
                Some(Rejection::StateChanged {
                    expected: expected.unwrap_or(from),
                    current: from,
                })
            } else if guard.lease_owner.as_ref().is_some_and(|owner| {
                current.lease_owner.as_deref() != Some(owner.as_str()) && from.is_active()
            }) {
                Some(Rejection::NotLeaseOwner {
                    owner: current.lease_owner.clone(),
                })
            } else {
                check_transition(from, proposal.state_type).err()
            };
            if let Some(reason) = rejection {
                outcomes.push(TransitionOutcome::Rejected {
                    reason,
                    run: current.clone(),
                });
                break;
            }
            let to = proposal.state_type;
            let mut next = current.clone();
            // Side effects of the target state on the lease, the infrastructure id and the attempt.
            if to.is_terminal() || to == StateType::Scheduled {
                next.lease_owner = None;
                next.lease_expires = None;
            } else if to == StateType::Pending {
                next.lease_owner = guard.lease_owner.clone();
                next.lease_expires = Some(from_micros(now + lease_micros(Duration::from_secs(60))));
            }
            if to == StateType::Scheduled {
                next.infrastructure_id = None;
                if proposal.name.as_deref() == Some(names::AWAITING_RETRY) {
                    next.attempt += 1;
                }
            } else if let Some(infra) = infrastructure_id {
                if infra_applied.is_none()
                    && from == StateType::Pending
                    && current.infrastructure_id.is_none()
                {
                    next.infrastructure_id = Some(infra.to_string());
                    infra_applied = Some(infra.to_string());
                }
            }
            next.state = State {
                state_type: to,
                name: proposal.state_name(),
                message: proposal.message.clone(),
                timestamp: from_micros(now),
            };
            next.updated = from_micros(now);
            wakes |= matches!(to, StateType::Scheduled | StateType::Cancelling);
            outcomes.push(TransitionOutcome::Accepted(next.clone()));
            steps.push((next.clone(), from, proposal.transition_id));
            current = next;
            expected = Some(to);
        }
        if steps.is_empty() {
            return Ok((outcomes, false, false));
        }
        let updated = sqlx::query(&format!(
            "UPDATE flow_runs SET state_type = $1, state_name = $2, state_message = $3, state_timestamp = $4, \
             lease_owner = $5, lease_expires = $6, infrastructure_id = $7, attempt = $8, \
             version = version + 1, updated = $4 WHERE id = $9 AND version = $10 RETURNING {RUN_COLUMNS}"
        ))
        .bind(current.state.state_type.as_str())
        .bind(current.state.name.clone())
        .bind(current.state.message.clone())
        .bind(now)
        .bind(current.lease_owner.clone())
        .bind(current.lease_expires.map(to_micros))
        .bind(current.infrastructure_id.clone())
        .bind(current.attempt)
        .bind(run_id.to_string())
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = updated else {
            // Cannot happen while the row is locked, but a lost race must never pass silently.
            let first = steps[0].1;
            return Ok((
                vec![TransitionOutcome::Rejected {
                    reason: Rejection::StateChanged {
                        expected: first,
                        current: first,
                    },
                    run: current,
                }],
                false,
                false,
            ));
        };
        let stored = run_from_row(&row)?;
        if let Some(TransitionOutcome::Accepted(last)) = outcomes
            .iter_mut()
            .rev()
            .find(|o| matches!(o, TransitionOutcome::Accepted(_)))
        {
            *last = stored;
        }
        let history: Vec<HistoryRow> = steps
            .iter()
            .map(|(run, _, tid)| HistoryRow {
                run,
                transition_id: tid.clone(),
            })
            .collect();
        insert_history(tx, &history).await?;
        let mut events: Vec<EventRow> = steps
            .iter()
            .map(|(run, from, _)| EventRow::transition(run, *from))
            .collect();
        if let Some(infra) = infra_applied {
            events.push(EventRow {
                workspace_id: current.workspace_id,
                occurred: now,
                event: "flow_run.infrastructure_assigned".into(),
                resource_id: run_id.to_string(),
                payload: json!({"infrastructure_id": infra, "controller": guard.lease_owner}),
            });
        }
        insert_event_rows(tx, &events).await?;
        if wakes {
            self.notify_in(tx).await?;
        }
        Ok((outcomes, wakes, true))
    }

    /// Claims up to `limit` due SCHEDULED runs of the selected pools for `owner`: moves them to
    /// PENDING/Submitting with a lease, in queue-priority then scheduled-time order, skipping paused
    /// pools, queues and deployments and honouring every concurrency limit (PENDING + RUNNING +
    /// CANCELLING). Runs held back by a full limit never block runs that are free to go.
    pub async fn claim_due(
        &self,
        pools: &PoolSelector,
        due_before: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<FlowRun>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let now = now_micros();
        let mut tx = self.begin().await?;
        let (pool_cond, pool_args) = pools.condition(2);

        if self.backend() == Backend::Postgres {
            // Claims of pools with limits are serialized per pool, so two claimers cannot both
            // count the same free slot. Pools without limits claim in parallel (SKIP LOCKED).
            let (limited_cond, _) = pools.condition(1);
            let limited_sql = format!(
                "SELECT p.id FROM work_pools p WHERE {limited_cond} AND p.paused = 0 AND \
                 (p.concurrency_limit IS NOT NULL \
                  OR EXISTS (SELECT 1 FROM work_queues q WHERE q.pool_id = p.id AND q.concurrency_limit IS NOT NULL) \
                  OR EXISTS (SELECT 1 FROM deployments d WHERE d.pool_id = p.id AND d.concurrency_limit IS NOT NULL)) \
                 ORDER BY p.id"
            );
            let mut q = sqlx::query(&limited_sql);
            for a in &pool_args {
                q = q.bind(a.clone());
            }
            let rows = q.fetch_all(&mut *tx).await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                sqlx::query("SELECT pg_advisory_xact_lock(727275, hashtext($1))")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }

        let active_count = |col: &str, alias: &str| {
            format!(
                "({alias}.concurrency_limit IS NULL OR {alias}.concurrency_limit > \
                 (SELECT COUNT(*) FROM flow_runs a WHERE a.{col} = {alias}.id AND a.state_type IN {ACTIVE_STATES_SQL}))"
            )
        };
        let scan = (limit * 4).max(64);
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE OF r SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT r.id, r.pool_id, r.queue_id, r.deployment_id, p.concurrency_limit AS pool_limit, \
             q.concurrency_limit AS queue_limit, d.concurrency_limit AS deployment_limit \
             FROM flow_runs r \
             JOIN work_pools p ON p.id = r.pool_id \
             JOIN work_queues q ON q.id = r.queue_id \
             JOIN deployments d ON d.id = r.deployment_id \
             WHERE r.state_type = 'SCHEDULED' AND r.scheduled_time <= $1 AND {pool_cond} \
             AND p.paused = 0 AND q.paused = 0 AND d.paused = 0 \
             AND {} AND {} AND {} \
             ORDER BY q.priority, r.scheduled_time, r.id LIMIT {scan}{lock}",
            active_count("pool_id", "p"),
            active_count("queue_id", "q"),
            active_count("deployment_id", "d"),
        );
        let mut q = sqlx::query(&sql).bind(to_micros(due_before));
        for a in &pool_args {
            q = q.bind(a.clone());
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let candidates = rows
            .iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.try_get("id")?,
                    pool_id: row.try_get("pool_id")?,
                    queue_id: row.try_get("queue_id")?,
                    deployment_id: row.try_get("deployment_id")?,
                    pool_limit: row.try_get("pool_limit")?,
                    queue_limit: row.try_get("queue_limit")?,
                    deployment_limit: row.try_get("deployment_limit")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if candidates.is_empty() {
            tx.commit().await?;
            return Ok(vec![]);
        }

        let any_limit = candidates.iter().any(|c| {
            c.pool_limit.is_some() || c.queue_limit.is_some() || c.deployment_limit.is_some()
        });
        let mut active = ActiveCounts::default();
        if any_limit {
            let mut pool_ids: Vec<&String> = candidates.iter().map(|c| &c.pool_id).collect();
            pool_ids.sort();
            pool_ids.dedup();
            let sql = format!(
                "SELECT pool_id, queue_id, deployment_id, COUNT(*) AS n FROM flow_runs \
                 WHERE pool_id IN ({}) AND state_type IN {ACTIVE_STATES_SQL} \
                 GROUP BY pool_id, queue_id, deployment_id",
                placeholders(1, pool_ids.len())
            );
            let mut q = sqlx::query(&sql);
            for p in pool_ids {
                q = q.bind(p.clone());
            }
            for row in q.fetch_all(&mut *tx).await? {
                let n: i64 = row.try_get("n")?;
                *active.pools.entry(row.try_get("pool_id")?).or_default() += n;
                *active.queues.entry(row.try_get("queue_id")?).or_default() += n;
                *active
                    .deployments
                    .entry(row.try_get("deployment_id")?)
                    .or_default() += n;
            }
        }
        let admitted = admit(&candidates, &active, limit);
        if admitted.is_empty() {
            tx.commit().await?;
            return Ok(vec![]);
        }

        let lock_again = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE flow_runs SET state_type = 'PENDING', state_name = '{}', state_message = NULL, \
             state_timestamp = $1, lease_owner = $2, lease_expires = $3, version = version + 1, updated = $1 \
             WHERE id IN (SELECT id FROM flow_runs WHERE id IN ({}) AND state_type = 'SCHEDULED'{lock_again}) \
             RETURNING {RUN_COLUMNS}",
            names::SUBMITTING,
            placeholders(4, admitted.len())
        );
        let mut q = sqlx::query(&sql)
            .bind(now)
            .bind(owner)
            .bind(now + lease_micros(lease));
        for id in &admitted {
            q = q.bind(id.clone());
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let mut runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        // Same order as admitted (priority, then schedule): RETURNING does not promise one.
        let order: HashMap<&str, usize> = admitted
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        runs.sort_by_key(|r| {
            order
                .get(r.id.to_string().as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });

        let history: Vec<HistoryRow> = runs
            .iter()
            .map(|run| HistoryRow {
                run,
                transition_id: format!("claim-{}", Uuid::now_v7()),
            })
            .collect();
        insert_history(&mut tx, &history).await?;
        let events: Vec<(&FlowRun, StateType)> =
            runs.iter().map(|r| (r, StateType::Scheduled)).collect();
        insert_transition_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(runs)
    }

    /// Records the provider's infrastructure id of a PENDING run the caller holds, moving it to
    /// PENDING/InfrastructurePending. Returns false when the run is not (any more) the caller's to write.
    pub async fn set_infrastructure(
        &self,
        run_id: Uuid,
        owner: &str,
        infrastructure_id: &str,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let now = now_micros();
        let row = sqlx::query(
            "UPDATE flow_runs SET infrastructure_id = $1, state_name = $2, updated = $3, version = version + 1 \
             WHERE id = $4 AND lease_owner = $5 AND state_type = 'PENDING' RETURNING workspace_id",
        )
        .bind(infrastructure_id)
        .bind(names::INFRASTRUCTURE_PENDING)
        .bind(now)
        .bind(run_id.to_string())
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let ws = get_uuid(&row, "workspace_id")?;
        insert_event(
            &mut tx,
            ws,
            "flow_run.infrastructure_assigned",
            &run_id.to_string(),
            &json!({"infrastructure_id": infrastructure_id, "controller": owner}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Extends the lease of every active run `owner` holds. Returns how many.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64> {
        let done = sqlx::query(&format!(
            "UPDATE flow_runs SET lease_expires = $1 WHERE lease_owner = $2 AND state_type IN {ACTIVE_STATES_SQL}"
        ))
        .bind(now_micros() + lease_micros(lease))
        .bind(owner)
        .execute(self.db())
        .await?;
        Ok(done.rows_affected())
    }

    /// Extends one run's lease; false when `owner` does not hold it.
    pub async fn renew_lease(&self, run_id: Uuid, owner: &str, lease: Duration) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE flow_runs SET lease_expires = $1 WHERE id = $2 AND lease_owner = $3",
        )
        .bind(now_micros() + lease_micros(lease))
        .bind(run_id.to_string())
        .bind(owner)
        .execute(self.db())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up the lease of a run without changing its state, so another controller adopts it.
    pub async fn release_lease(&self, run_id: Uuid, owner: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE flow_runs SET lease_owner = NULL, lease_expires = NULL, version = version + 1 \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(run_id.to_string())
        .bind(owner)
        .execute(self.db())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Active runs (PENDING, RUNNING, CANCELLING) whose owner vanished: no lease, or a lease that ran out.
    pub async fn expired_leases(
        &self,
        pools: &PoolSelector,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FlowRun>> {
        let (cond, args) = pools.condition(2);
        let sql = format!(
            "SELECT {} FROM flow_runs r JOIN work_pools p ON p.id = r.pool_id \
             WHERE r.state_type IN {ACTIVE_STATES_SQL} AND (r.lease_owner IS NULL OR r.lease_expires < $1) \
             AND {cond} ORDER BY r.lease_expires LIMIT {}",
            RUN_COLUMNS
                .split(", ")
                .map(|c| format!("r.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            limit.clamp(1, 10_000)
        );
        let mut q = sqlx::query(&sql).bind(to_micros(now));
        for a in args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(self.db()).await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Takes over an active run whose lease is gone or expired. Returns the run when this caller won it.
    pub async fn adopt(
        &self,
        run_id: Uuid,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<FlowRun>> {
        let now = now_micros();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE flow_runs SET lease_owner = $1, lease_expires = $2, version = version + 1, updated = $3 \
             WHERE id = $4 AND state_type IN {ACTIVE_STATES_SQL} \
             AND (lease_owner IS NULL OR lease_expires < $3) RETURNING {RUN_COLUMNS}"
        ))
        .bind(owner)
        .bind(now + lease_micros(lease))
        .bind(now)
        .bind(run_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let run = run_from_row(&row)?;
        insert_event(
            &mut tx,
            run.workspace_id,
            "flow_run.adopted",
            &run_id.to_string(),
            &json!({"controller": owner, "state": run.state.state_type}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(run))
    }

    /// Active runs held by `owner` (what a restarted controller with the same id resumes), or only
    /// those in `state`.
    pub async fn runs_owned_by(
        &self,
        owner: &str,
        state: Option<StateType>,
    ) -> Result<Vec<FlowRun>> {
        let states = match state {
            Some(s) => format!("('{}')", s.as_str()),
            None => ACTIVE_STATES_SQL.to_string(),
        };
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE lease_owner = $1 AND state_type IN {states}"
        ))
        .bind(owner)
        .fetch_all(self.db())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// The earliest scheduled time among SCHEDULED runs of the selected, unpaused pools.
    pub async fn next_due(&self, pools: &PoolSelector) -> Result<Option<DateTime<Utc>>> {
        let (cond, args) = pools.condition(1);
        let sql = format!(
            "SELECT MIN(r.scheduled_time) FROM flow_runs r JOIN work_pools p ON p.id = r.pool_id \
             WHERE r.state_type = 'SCHEDULED' AND p.paused = 0 AND {cond}"
        );
        let mut q = sqlx::query(&sql);
        for a in args {
            q = q.bind(a);
        }
        let row = q.fetch_one(self.db()).await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.map(from_micros))
    }

    /// Records a heartbeat from the job.
    pub async fn heartbeat(&self, run_id: Uuid) -> Result<()> {
        sqlx::query("UPDATE flow_runs SET last_heartbeat = $1 WHERE id = $2")
            .bind(now_micros())
            .bind(run_id.to_string())
            .execute(self.db())
            .await?;
        Ok(())
    }

    /// Appends log lines to a run.
    pub async fn append_logs(
        &self,
        run_id: Uuid,
        lines: &[(Micros, String, String)],
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in lines.chunks(200) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 5 + 1, 5)))
                .collect();
            let sql = format!(
                "INSERT INTO run_logs (id, run_id, timestamp, stream, line) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (ts, stream, line) in chunk {
                q = q
                    .bind(Uuid::now_v7().to_string())
                    .bind(run_id.to_string())
                    .bind(*ts)
                    .bind(stream.clone())
                    .bind(line.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A run's log lines, oldest first.
    pub async fn logs(&self, run_id: Uuid, limit: i64) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT timestamp, stream, line FROM run_logs WHERE run_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(run_id.to_string())
        .bind(limit)
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LogLine {
                    timestamp: from_micros(row.try_get("timestamp")?),
                    stream: row.try_get("stream")?,
                    line: row.try_get("line")?,
                })
            })
            .collect()
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

    /// Renames due-but-unclaimed runs `SCHEDULED/Late` once they are `threshold` past their scheduled
    /// time (history and event written). They stay claimable. Returns the ids renamed.
    pub async fn mark_late(
        &self,
        pools: &PoolSelector,
        threshold: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>> {
        let now = now_micros();
        let (cond, args) = pools.condition(3);
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE flow_runs SET state_name = '{late}', state_timestamp = $1, updated = $1, version = version + 1 \
             WHERE id IN (SELECT r.id FROM flow_runs r JOIN work_pools p ON p.id = r.pool_id \
             WHERE r.state_type = 'SCHEDULED' AND r.state_name = 'Scheduled' AND r.scheduled_time < $2 AND {cond} \
             ORDER BY r.scheduled_time LIMIT {limit}) AND state_type = 'SCHEDULED' RETURNING {RUN_COLUMNS}",
            late = names::LATE,
            limit = limit.clamp(1, 10_000),
        );
        let mut q = sqlx::query(&sql)
            .bind(now)
            .bind(now - lease_micros(threshold));
        for a in args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        if runs.is_empty() {
            return Ok(vec![]);
        }
        let history: Vec<HistoryRow> = runs
            .iter()
            .map(|run| HistoryRow {
                run,
                transition_id: format!("late-{}", Uuid::now_v7()),
            })
            .collect();
        insert_history(&mut tx, &history).await?;
        let events: Vec<(&FlowRun, StateType)> =
            runs.iter().map(|r| (r, StateType::Scheduled)).collect();
        insert_transition_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(runs.iter().map(|r| r.id).collect())
    }

    /// RUNNING runs whose job sent heartbeats and then fell silent for longer than `silence`.
    pub async fn silent_runs(
        &self,
        pools: &PoolSelector,
        silence: Duration,
        limit: i64,
    ) -> Result<Vec<FlowRun>> {
        let (cond, args) = pools.condition(2);
        let sql = format!(
            "SELECT {} FROM flow_runs r JOIN work_pools p ON p.id = r.pool_id \
             WHERE r.state_type = 'RUNNING' AND r.last_heartbeat IS NOT NULL AND r.last_heartbeat < $1 AND {cond} \
             ORDER BY r.last_heartbeat LIMIT {}",
            RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", "),
            limit.clamp(1, 10_000)
        );
        let mut q = sqlx::query(&sql).bind(now_micros() - lease_micros(silence));
        for a in args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(self.db()).await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records that controller `id` is alive (registers it on first call).
    pub async fn controller_heartbeat(&self, id: &str, hostname: &str) -> Result<()> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO controllers (id, hostname, started, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET last_seen = $3",
        )
        .bind(id)
        .bind(hostname)
        .bind(now)
        .execute(self.db())
        .await?;
        Ok(())
    }

    /// Controllers seen within `within`, with their last heartbeat.
    pub async fn live_controllers(&self, within: Duration) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows =
            sqlx::query("SELECT id, last_seen FROM controllers WHERE last_seen >= $1 ORDER BY id")
                .bind(now_micros() - lease_micros(within))
                .fetch_all(self.db())
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, from_micros(r.try_get("last_seen")?))))
            .collect()
    }

    /// Every history entry of a workspace's runs as (run, type), in order per run (for audits).
    pub async fn workspace_history(&self, workspace_id: Uuid) -> Result<Vec<(Uuid, StateType)>> {
        let rows = sqlx::query(
            "SELECT h.run_id, h.state_type FROM state_history h JOIN flow_runs r ON r.id = h.run_id \
             WHERE r.workspace_id = $1 ORDER BY h.run_id, h.id",
        )
        .bind(workspace_id.to_string())
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                let t: String = row.try_get("state_type")?;
                Ok((
                    get_uuid(row, "run_id")?,
                    t.parse().map_err(|e: crate::state::UnknownStateType| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                ))
            })
            .collect()
    }

    /// Number of runs per state type (for metrics).
    pub async fn count_by_state(&self) -> Result<Vec<(StateType, i64)>> {
        let rows =
            sqlx::query("SELECT state_type, COUNT(*) AS n FROM flow_runs GROUP BY state_type")
                .fetch_all(self.db())
                .await?;
        rows.iter()
            .map(|row| {
                let t: String = row.try_get("state_type")?;
                Ok((
                    t.parse().map_err(|e: crate::state::UnknownStateType| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    row.try_get("n")?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, dep: &str, dep_limit: Option<i64>, pool_limit: Option<i64>) -> Candidate {
        Candidate {
            id: id.into(),
            pool_id: "p".into(),
            queue_id: "q".into(),
            deployment_id: dep.into(),
            pool_limit,
            queue_limit: None,
            deployment_limit: dep_limit,
        }
    }

    #[test]
    fn a_full_deployment_does_not_block_others() {
        let c = vec![
            cand("a1", "a", Some(1), None),
            cand("a2", "a", Some(1), None),
            cand("a3", "a", Some(1), None),
            cand("b1", "b", None, None),
        ];
        assert_eq!(admit(&c, &ActiveCounts::default(), 10), vec!["a1", "b1"]);
        let mut busy = ActiveCounts::default();
        busy.deployments.insert("a".into(), 1);
        assert_eq!(admit(&c, &busy, 10), vec!["b1"]);
    }

    #[test]
    fn pool_limit_caps_admission() {
        let c = vec![
            cand("x", "a", None, Some(2)),
            cand("y", "b", None, Some(2)),
            cand("z", "c", None, Some(2)),
        ];
        let mut busy = ActiveCounts::default();
        busy.pools.insert("p".into(), 1);
        assert_eq!(admit(&c, &busy, 10), vec!["x"]);
        assert_eq!(admit(&c, &ActiveCounts::default(), 1), vec!["x"]);
    }
}
