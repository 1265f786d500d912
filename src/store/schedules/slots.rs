//! The scheduler's writes: one run per (schedule, slot instant), whoever asks first.
//!
//! Runs are inserted with `ON CONFLICT DO NOTHING` against the unique index on
//! `flow_runs (schedule_id, slot_time)`, so schedulers racing, a restarted scheduler or a backfill
//! never make a second run for a slot. Inside the transaction the schedules are read again (locked
//! on PostgreSQL, in id order): a schedule changed, paused or deleted since the scheduler read it
//! gets no runs from that stale read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::Row;
use uuid::Uuid;

use super::super::objects::{
    deployment_from_row, insert_event_rows, EventRow, DEPLOYMENT_COLUMNS, DEPLOYMENT_FROM,
};
use super::super::sql::{bind_all, get_uuid, placeholders};
use super::super::{Backend, Result, Store, Tx};
use super::{schedule_from_row, SCHEDULE_COLUMNS};
use crate::model::{from_micros, now_micros, to_micros, Deployment};
use crate::schedule::Schedule;

/// An active schedule with the deployment it makes runs of.
#[derive(Debug, Clone)]
pub struct ScheduleBatch {
    /// The schedule.
    pub schedule: Schedule,
    /// Its deployment.
    pub deployment: Deployment,
}

/// Runs to create for one schedule's slots.
#[derive(Debug, Clone)]
pub struct SlotRun<'a> {
    /// The schedule (its version is checked again when writing).
    pub batch: &'a ScheduleBatch,
    /// Slot instants.
    pub slots: Vec<DateTime<Utc>>,
    /// Move the schedule's `last_slot` forward to this (never back); `None` leaves it (backfill).
    pub last_slot: Option<DateTime<Utc>>,
}

/// The idempotency key a slot's run carries (shown on the run; the unique index on
/// `(schedule_id, slot_time)` is what enforces one run per slot).
pub fn slot_key(schedule_id: Uuid, slot: DateTime<Utc>) -> String {
    format!(
        "schedule:{schedule_id}:{}",
        slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Deletes the schedule's runs that are due after `now` and have not started (SCHEDULED, first
/// attempt), with their history; returns how many.
pub(super) async fn delete_future_runs(
    tx: &mut Tx,
    backend: Backend,
    schedule_id: Uuid,
    now: i64,
) -> Result<u64> {
    let lock = if backend == Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let rows = sqlx::query(&format!(
        "SELECT id FROM flow_runs WHERE schedule_id = $1 AND state_type = 'SCHEDULED' \
         AND attempt = 1 AND scheduled_time > $2{lock}"
    ))
    .bind(schedule_id.to_string())
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<std::result::Result<_, _>>()?;
    for part in ids.chunks(500) {
        let list = placeholders(1, part.len());
        for table in ["state_history WHERE run_id", "flow_runs WHERE id"] {
            let sql = format!("DELETE FROM {table} IN ({list})");
            bind_all(sqlx::query(&sql), part.iter().cloned())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(ids.len() as u64)
}

impl Store {
    /// Active schedules of deployments that are not paused, among the next `limit` active
    /// schedules in id order after `after` (the scheduler pages through them), and the id of the
    /// last one scanned (`None` when there were none: the end). Schedules of paused deployments
    /// are scanned but not returned.
    pub async fn active_schedules(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<ScheduleBatch>, Option<Uuid>)> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules s \
             WHERE s.active = 1 AND s.id > $1 ORDER BY s.id LIMIT {limit}"
        );
        let query = sqlx::query(&sql).bind(after.map(|a| a.to_string()).unwrap_or_default());
        let schedules = self
            .fetch_rows(query, |r| schedule_from_row(r, self.secret_key()))
            .await?;
        let last = schedules.last().map(|s| s.id);
        let mut ids: Vec<String> = schedules
            .iter()
            .map(|s| s.deployment_id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        let mut deployments: HashMap<Uuid, Deployment> = HashMap::new();
        for part in ids.chunks(500) {
            let sql = format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM {DEPLOYMENT_FROM} WHERE d.paused = 0 AND d.id IN ({})",
                placeholders(1, part.len())
            );
            let found = self
                .fetch_rows(bind_all(sqlx::query(&sql), part.iter().cloned()), |r| {
                    deployment_from_row(r, self.secret_key())
                })
                .await?;
            deployments.extend(found.into_iter().map(|d| (d.id, d)));
        }
        let batches = schedules
            .into_iter()
            .filter_map(|schedule| {
                let deployment = deployments.get(&schedule.deployment_id)?.clone();
                Some(ScheduleBatch {
                    schedule,
                    deployment,
                })
            })
            .collect();
        Ok((batches, last))
    }

    /// Creates the runs of `plans` that do not exist yet (one per schedule and slot) and moves
    /// each schedule's `last_slot` forward; a schedule changed or gone since it was read is
    /// skipped. Returns the runs created.
    pub async fn create_slot_runs(&self, plans: &[SlotRun<'_>]) -> Result<u64> {
        let mut created = 0;
        let mut templates: HashMap<Uuid, Value> = HashMap::new();
        for part in plans.chunks(200) {
            if self.secret_key().is_some() {
                for plan in part {
                    let pool = plan.batch.deployment.work_pool_id;
                    if let std::collections::hash_map::Entry::Vacant(e) = templates.entry(pool) {
                        e.insert(self.pool_by_id(pool).await?.base_job_template);
                    }
                }
            }
            created += self.create_slot_runs_in_one(part, &templates).await?;
        }
        Ok(created)
    }

    async fn create_slot_runs_in_one(
        &self,
        plans: &[SlotRun<'_>],
        templates: &HashMap<Uuid, Value>,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        // Read the schedules again inside the transaction (locked, in id order, on PostgreSQL).
        let mut ids: Vec<String> = plans
            .iter()
            .map(|p| p.batch.schedule.id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        let sql = format!(
            "SELECT id, version, active FROM schedules WHERE id IN ({}) ORDER BY id{}",
            placeholders(1, ids.len()),
            self.for_update()
        );
        let rows = bind_all(sqlx::query(&sql), ids.iter().cloned())
            .fetch_all(&mut *tx)
            .await?;
        let mut current: HashMap<Uuid, (i64, bool)> = HashMap::new();
        for row in &rows {
            let active = row.try_get::<i64, _>("active")? == 1;
            current.insert(get_uuid(row, "id")?, (row.try_get("version")?, active));
        }
        // The scheduler's plans need the schedule active; a backfill (no `last_slot`) does not.
        let fresh: Vec<&SlotRun> = plans
            .iter()
            .filter(|p| match current.get(&p.batch.schedule.id) {
                Some((version, active)) => {
                    *version == p.batch.schedule.version && (*active || p.last_slot.is_none())
                }
                None => false,
            })
            .collect();
        let now = now_micros();
        // Per schedule: workspace, runs created, first and last slot.
        let mut per_schedule: HashMap<String, (Uuid, u64, i64, i64)> = HashMap::new();
        let mut count = |sid: String, ws: Uuid, n: u64, first: i64, last: i64| {
            let e = per_schedule.entry(sid).or_insert((ws, 0, first, last));
            e.1 += n;
            e.2 = e.2.min(first);
            e.3 = e.3.max(last);
        };
        // No `state_history` row is written for a slot run's creation: the run row holds it
        // (SCHEDULED at `created`), and `Store::state_history` shows it as the first entry. At
        // 600,000 runs per window fill that row was a third of the writes (docs/schedules.md).
        if self.backend() == Backend::Sqlite {
            // Few statements, each for up to SQLITE_SLOT_CHUNK runs of many schedules: a JSON
            // array of schedules, each with what its runs share bound once and its slots (id,
            // time, key and the sealed documents, which are bound to the run id) as an inner
            // array. sqlx binds SQLite parameters by name (quadratic in their count) and hands
            // every statement to a worker thread, so one statement per schedule cost more than
            // the rows it wrote (docs/benchmarks.md).
            // The schedules' shared values are a second JSON array, read once per statement
            // into a materialized table that SQLite indexes for the join: reading them from a
            // value that also held the schedule's slots re-encoded that value for every slot.
            let insert_runs = format!(
                "WITH s AS MATERIALIZED (SELECT key AS idx, value ->> 0 AS ws, \
                 value ->> 1 AS dep, value ->> 2 AS dname, value ->> 3 AS pool, \
                 value ->> 4 AS pname, value ->> 5 AS queue, value ->> 6 AS qname, \
                 value ->> 7 AS sid FROM json_each($2)) \
                 INSERT INTO flow_runs ({SLOT_RUN_COLUMNS}) SELECT \
                 slot.value ->> 1, s.ws, s.dep, s.dname, s.pool, s.pname, s.queue, s.qname, \
                 slot.value ->> 4, slot.value ->> 5, slot.value ->> 2, 'SCHEDULED', 'Scheduled', \
                 $3, 1, slot.value ->> 3, $3, $3, s.sid, slot.value ->> 2 \
                 FROM json_each($1) AS slot CROSS JOIN s ON s.idx = slot.value ->> 0 \
                 WHERE 1 ON CONFLICT DO NOTHING"
            );
            let tally = "SELECT schedule_id, COUNT(*) AS n, MIN(scheduled_time) AS first, \
                 MAX(scheduled_time) AS last FROM flow_runs WHERE id IN \
                 (SELECT value ->> 1 FROM json_each($1)) GROUP BY schedule_id";
            let mut chunk: Vec<Value> = vec![];
            let mut chunk_slots: Vec<Value> = vec![];
            // Per schedule of the chunk: id, workspace, runs, first and last slot.
            let mut chunk_tally: Vec<(String, Uuid, u64, i64, i64)> = vec![];
            let last_index = fresh.len().saturating_sub(1);
            for (i, plan) in fresh.iter().enumerate() {
                if !plan.slots.is_empty() {
                    let d = &plan.batch.deployment;
                    let sid = plan.batch.schedule.id.to_string();
                    let index = chunk.len();
                    for slot in &plan.slots {
                        let (id, parameters, job_variables) = self.slot_documents(plan, templates);
                        let key = slot_key(plan.batch.schedule.id, *slot);
                        chunk_slots.push(json!([
                            index,
                            id.to_string(),
                            to_micros(*slot),
                            key,
                            parameters,
                            job_variables
                        ]));
                    }
                    let first = plan.slots.iter().map(|s| to_micros(*s)).min();
                    let last = plan.slots.iter().map(|s| to_micros(*s)).max();
                    chunk_tally.push((
                        sid.clone(),
                        d.workspace_id,
                        plan.slots.len() as u64,
                        first.unwrap_or_default(),
                        last.unwrap_or_default(),
                    ));
                    chunk.push(json!([
                        d.workspace_id.to_string(),
                        d.id.to_string(),
                        d.name,
                        d.work_pool_id.to_string(),
                        d.work_pool,
                        d.work_queue_id.to_string(),
                        d.work_queue,
                        sid
                    ]));
                }
                if chunk.is_empty() || (chunk_slots.len() < SQLITE_SLOT_CHUNK && i < last_index) {
                    continue;
                }
                let schedules = Value::Array(std::mem::take(&mut chunk)).to_string();
                let items = Value::Array(std::mem::take(&mut chunk_slots));
                let planned = items.as_array().map_or(0, Vec::len) as u64;
                let items = items.to_string();
                let made = sqlx::query(&insert_runs)
                    .bind(items.clone())
                    .bind(schedules)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let planned_tally = std::mem::take(&mut chunk_tally);
                if made == planned {
                    for (sid, ws, n, first, last) in planned_tally {
                        count(sid, ws, n, first, last);
                    }
                } else if made > 0 {
                    // Some slots had runs already (another scheduler, a backfill): count what
                    // this statement made, by the fresh run ids.
                    let workspaces: HashMap<String, Uuid> = planned_tally
                        .into_iter()
                        .map(|(sid, ws, ..)| (sid, ws))
                        .collect();
                    for row in sqlx::query(tally).bind(items).fetch_all(&mut *tx).await? {
                        let sid: String = row.try_get("schedule_id")?;
                        let Some(ws) = workspaces.get(&sid) else {
                            continue;
                        };
                        count(
                            sid,
                            *ws,
                            row.try_get::<i64, _>("n")? as u64,
                            row.try_get("first")?,
                            row.try_get("last")?,
                        );
                    }
                }
            }
        } else {
            let mut rows: Vec<(&SlotRun, DateTime<Utc>)> = vec![];
            for plan in &fresh {
                rows.extend(plan.slots.iter().map(|slot| (*plan, *slot)));
            }
            let mut inserted: Vec<(String, Uuid, i64, String)> = vec![];
            for part in rows.chunks(16) {
                let width = SLOT_RUN_JSON_COLUMNS.len();
                let values: Vec<String> = (0..part.len())
                    .map(|i| format!("({})", placeholders(i * width + 1, width)))
                    .collect();
                let sql = format!(
                    "INSERT INTO flow_runs ({SLOT_RUN_COLUMNS}) VALUES {} ON CONFLICT DO NOTHING \
                     RETURNING id, workspace_id, scheduled_time, schedule_id",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (plan, slot) in part {
                    for value in self.slot_row(plan, *slot, templates, now) {
                        q = match value {
                            Value::Number(n) => q.bind(n.as_i64()),
                            Value::String(text) => q.bind(text),
                            _ => q.bind(None::<String>),
                        };
                    }
                }
                for row in q.fetch_all(&mut *tx).await? {
                    inserted.push(slot_returned(&row)?);
                }
            }
            for (_, ws, at, sid) in inserted {
                count(sid, ws, 1, at, at);
            }
        }
        let created: u64 = per_schedule.values().map(|e| e.1).sum();
        // One event per schedule and pass (not per run: a pass may make 100 runs of each of
        // 10,000 schedules), naming how many runs and which slots.
        let events: Vec<EventRow> = per_schedule
            .into_iter()
            .map(|(sid, (ws, n, first, last))| EventRow {
                workspace_id: ws,
                occurred: now,
                event: "schedule.runs_created".into(),
                resource_id: sid,
                payload: json!({"runs": n, "first": from_micros(first), "last": from_micros(last)}),
                ..Default::default()
            })
            .collect();
        insert_event_rows(&mut tx, &events).await?;
        for plan in &fresh {
            let Some(last) = plan.last_slot else { continue };
            sqlx::query(
                "UPDATE schedules SET last_slot = $1 WHERE id = $2 AND version = $3 \
                 AND (last_slot IS NULL OR last_slot < $1)",
            )
            .bind(to_micros(last))
            .bind(plan.batch.schedule.id.to_string())
            .bind(plan.batch.schedule.version)
            .execute(&mut *tx)
            .await?;
        }
        if created == 0 {
            tx.commit().await?;
        } else {
            self.commit_notifying(tx).await?;
        }
        Ok(created)
    }

    /// A new slot run's id and its sealed `parameters` and `job_variables` (sealing binds them
    /// to the run id).
    fn slot_documents(
        &self,
        plan: &SlotRun,
        templates: &HashMap<Uuid, Value>,
    ) -> (Uuid, String, String) {
        let d = &plan.batch.deployment;
        let s = &plan.batch.schedule;
        let id = Uuid::now_v7();
        let mut parameters = d.parameters.clone();
        parameters.extend(s.parameters.clone());
        let null = Value::Null;
        let template = templates.get(&d.work_pool_id).unwrap_or(&null);
        let parameters = self.seal_variables("flow_runs", id, "parameters", &parameters, &null);
        let job_variables = self.seal_job_variables(id, &s.job_variables, template);
        (id, parameters, job_variables)
    }

    /// One slot run's column values, in [`SLOT_RUN_JSON_COLUMNS`] order.
    fn slot_row(
        &self,
        plan: &SlotRun,
        slot: DateTime<Utc>,
        templates: &HashMap<Uuid, Value>,
        now: i64,
    ) -> Vec<Value> {
        let d = &plan.batch.deployment;
        let s = &plan.batch.schedule;
        let (id, parameters, job_variables) = self.slot_documents(plan, templates);
        vec![
            json!(id.to_string()),
            json!(d.workspace_id.to_string()),
            json!(d.id.to_string()),
            json!(d.name),
            json!(d.work_pool_id.to_string()),
            json!(d.work_pool),
            json!(d.work_queue_id.to_string()),
            json!(d.work_queue),
            json!(parameters),
            json!(job_variables),
            json!(to_micros(slot)),
            json!("SCHEDULED"),
            json!("Scheduled"),
            json!(now),
            json!(1),
            json!(slot_key(s.id, slot)),
            json!(now),
            json!(now),
            json!(s.id.to_string()),
            json!(to_micros(slot)),
        ]
    }

    fn seal_job_variables(&self, id: Uuid, vars: &Map<String, Value>, template: &Value) -> String {
        self.seal_variables("flow_runs", id, "job_variables", vars, template)
    }
}

/// Runs per insert statement on SQLite (the scheduler's window fill; docs/benchmarks.md).
const SQLITE_SLOT_CHUNK: usize = 4096;

/// The columns a slot run is inserted with.
const SLOT_RUN_COLUMNS: &str = "id, workspace_id, deployment_id, deployment_name, pool_id, \
    pool_name, queue_id, queue_name, parameters, job_variables, scheduled_time, state_type, \
    state_name, state_timestamp, attempt, idempotency_key, created, updated, schedule_id, slot_time";

/// The same columns, one per value of [`Store::slot_row`].
const SLOT_RUN_JSON_COLUMNS: [&str; 20] = [
    "id",
    "workspace_id",
    "deployment_id",
    "deployment_name",
    "pool_id",
    "pool_name",
    "queue_id",
    "queue_name",
    "parameters",
    "job_variables",
    "scheduled_time",
    "state_type",
    "state_name",
    "state_timestamp",
    "attempt",
    "idempotency_key",
    "created",
    "updated",
    "schedule_id",
    "slot_time",
];

/// What the insert returns of a created run: id, workspace, scheduled time, schedule id.
fn slot_returned(row: &sqlx::any::AnyRow) -> Result<(String, Uuid, i64, String)> {
    Ok((
        row.try_get("id")?,
        get_uuid(row, "workspace_id")?,
        row.try_get("scheduled_time")?,
        row.try_get("schedule_id")?,
    ))
}
