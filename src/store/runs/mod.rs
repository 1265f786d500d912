//! Flow runs: creation and queries, the guarded state transition, claims, leases and rescue,
//! logs. The rules of a transition live in [`crate::state`]; this module only locks, reads and
//! writes.

mod claim;
pub use claim::{round_robin, WorkspaceQuota};
mod leases;
mod logs;
pub use logs::{quota_marker, LOG_PAGE_BYTES, RUN_LOG_QUOTA_BYTES};
mod plans;
mod queries;
mod stats;
mod summaries;
mod transitions;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::crypto::SecretKey;
use super::objects::open_json_map;
use super::objects::EventRow;
use super::sql::{get_state_type, get_uuid, insert_rows, opt_time, placeholders};
use super::{Result, Tx};
use crate::model::{from_micros, to_micros, FlowRun, State};
use crate::state::{Rejection, RetryOverride, StateType};

pub use crate::state::TransitionGuard;

/// SQL list of the state types that hold a concurrency slot.
pub const ACTIVE_STATES_SQL: &str = "('PENDING', 'RUNNING', 'CANCELLING')";

const RUN_COLUMNS: &str = "id, workspace_id, deployment_id, deployment_name, pool_id, pool_name, \
     queue_id, queue_name, parameters, job_variables, scheduled_time, state_type, state_name, \
     state_message, state_timestamp, attempt, infrastructure_id, idempotency_key, lease_owner, \
     lease_expires, last_heartbeat, version, created, updated, retry_policy, tags";

/// [`RUN_COLUMNS`] of the table aliased `alias` (for queries that join).
fn run_columns_of(alias: &str) -> String {
    RUN_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

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
    // Retries and tags (issue 13).
    /// Changes to the deployment's retry policy (checked).
    pub retry: RetryOverride,
    /// Tags besides the deployment's (checked).
    pub tags: Vec<String>,
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
    // Tags and time filters (issue 13).
    /// Only runs in one of these state types (besides `state`; empty: any).
    pub states: Vec<StateType>,
    /// Only runs with every one of these tags.
    pub tags: Vec<String>,
    /// Only runs scheduled at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only runs scheduled before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only runs of this pool (name).
    pub work_pool: Option<String>,
    /// Only runs of this deployment.
    pub deployment_id: Option<Uuid>,
    /// Page size (default 100).
    pub limit: Option<i64>,
    /// Only runs older than this id (the previous page's last id).
    pub cursor: Option<Uuid>,
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

fn run_from_row(row: &AnyRow, key: Option<&SecretKey>) -> Result<FlowRun> {
    let id = get_uuid(row, "id")?;
    Ok(FlowRun {
        id,
        workspace_id: get_uuid(row, "workspace_id")?,
        deployment_id: get_uuid(row, "deployment_id")?,
        deployment: row.try_get("deployment_name")?,
        work_pool: row.try_get("pool_name")?,
        work_pool_id: get_uuid(row, "pool_id")?,
        work_queue: row.try_get("queue_name")?,
        work_queue_id: get_uuid(row, "queue_id")?,
        parameters: open_json_map(key, row, "flow_runs", id, "parameters")?,
        job_variables: open_json_map(key, row, "flow_runs", id, "job_variables")?,
        scheduled_time: from_micros(row.try_get("scheduled_time")?),
        state: State {
            state_type: get_state_type(row, "state_type")?,
            name: row.try_get("state_name")?,
            message: row.try_get("state_message")?,
            timestamp: from_micros(row.try_get("state_timestamp")?),
        },
        error_summary: None,
        attempt: row.try_get("attempt")?,
        infrastructure_id: row.try_get("infrastructure_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires: opt_time(row, "lease_expires")?,
        last_heartbeat: opt_time(row, "last_heartbeat")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
        retry: super::retries::policy_from_row(row)?,
        tags: super::retries::tags_from_row(row)?,
    })
}

/// One history row to insert: the state `run` is in now, accepted under `transition_id`.
struct HistoryRow<'a> {
    run: &'a FlowRun,
    transition_id: String,
}

async fn insert_history(tx: &mut Tx, rows: &[HistoryRow<'_>]) -> Result<()> {
    let head = "INSERT INTO state_history \
        (id, run_id, transition_id, state_type, state_name, message, timestamp)";
    insert_rows(tx, head, 7, 500, rows, |q, h| {
        q.bind(Uuid::now_v7().to_string())
            .bind(h.run.id.to_string())
            .bind(h.transition_id.clone())
            .bind(h.run.state.state_type.as_str())
            .bind(h.run.state.name.clone())
            .bind(h.run.state.message.clone())
            .bind(to_micros(h.run.state.timestamp))
    })
    .await
}

/// The `pushpool.flow-run.<state name>` event of `run` having just left `from`, with the run's
/// deployment, pool, queue, workspace and tags as related resources.
fn transition_event(run: &FlowRun, from: StateType) -> EventRow {
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
        resource_labels: crate::events::flow_run_labels(run),
        related: crate::events::flow_run_related(run),
    }
}

/// An event `event` (a short name, e.g. `flow_run.created`) about `run`, happening now, with the
/// run's labels and related resources.
pub(crate) fn flow_run_event(run: &FlowRun, event: &str, payload: Value) -> EventRow {
    EventRow {
        resource_labels: crate::events::flow_run_labels(run),
        related: crate::events::flow_run_related(run),
        ..EventRow::new(run.workspace_id, event, &run.id.to_string(), payload)
    }
}

/// Writes the history row (under a fresh transition id made from `prefix`) and the transition
/// event of every run in `runs`, each of which has just left `from`.
async fn record_transitions(
    tx: &mut Tx,
    runs: &[FlowRun],
    from: StateType,
    prefix: &str,
) -> Result<()> {
    let history: Vec<HistoryRow> = runs
        .iter()
        .map(|run| HistoryRow {
            run,
            transition_id: format!("{prefix}-{}", Uuid::now_v7()),
        })
        .collect();
    insert_history(tx, &history).await?;
    let events: Vec<EventRow> = runs.iter().map(|r| transition_event(r, from)).collect();
    super::objects::insert_event_rows(tx, &events).await
}

fn lease_micros(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2)
}
