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
use super::super::sql::{bind_all, get_uuid, insert_rows, placeholders};
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
        let mut rows: Vec<(&SlotRun, DateTime<Utc>)> = vec![];
        for plan in &fresh {
            rows.extend(plan.slots.iter().map(|slot| (*plan, *slot)));
        }
        let history = "INSERT INTO state_history \
            (id, run_id, transition_id, state_type, state_name, message, timestamp)";
        // Per schedule: workspace, runs created, first and last slot.
        let mut per_schedule: HashMap<String, (Uuid, u64, i64, i64)> = HashMap::new();
        let mut count = |sid: String, ws: Uuid, n: u64, first: i64, last: i64| {
            let e = per_schedule.entry(sid).or_insert((ws, 0, first, last));
            e.1 += n;
            e.2 = e.2.min(first);
            e.3 = e.3.max(last);
        };
        if self.backend() == Backend::Sqlite {
            // A few statements per few thousand runs, the rows passed as one JSON array and
            // nothing returned row by row: sqlx binds SQLite parameters by looking each one's
            // name up (quadratic in a statement's parameter count), and hands every statement and
            // every returned row to and from its worker thread.
            let extract = |n: usize| {
                (0..n)
                    .map(|i| format!("json_extract(value, '$[{i}]')"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let insert_runs = format!(
                "INSERT INTO flow_runs ({SLOT_RUN_COLUMNS}) SELECT {} FROM json_each($1) \
                 WHERE 1 ON CONFLICT DO NOTHING",
                extract(SLOT_RUN_JSON_COLUMNS.len())
            );
            // Run ids are fresh, so a run with one exists only if this pass inserted it.
            let insert_history = format!(
                "{history} SELECT json_extract(value, '$[{h}]'), json_extract(value, '$[0]'), \
                 'create-' || json_extract(value, '$[0]'), 'SCHEDULED', 'Scheduled', NULL, $2 \
                 FROM json_each($1) WHERE EXISTS \
                 (SELECT 1 FROM flow_runs f WHERE f.id = json_extract(value, '$[0]'))",
                h = SLOT_RUN_JSON_COLUMNS.len()
            );
            let tally = "SELECT schedule_id, workspace_id, COUNT(*) AS n, \
                 MIN(scheduled_time) AS first, MAX(scheduled_time) AS last FROM flow_runs \
                 WHERE id IN (SELECT json_extract(value, '$[0]') FROM json_each($1)) \
                 GROUP BY schedule_id, workspace_id";
            for part in rows.chunks(4096) {
                let items: Vec<Value> = part
                    .iter()
                    .map(|(plan, slot)| {
                        let mut row = self.slot_row(plan, *slot, templates, now);
                        row.push(json!(Uuid::now_v7().to_string()));
                        Value::Array(row)
                    })
                    .collect();
                let items = Value::Array(items).to_string();
                let made = sqlx::query(&insert_runs)
                    .bind(items.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if made == 0 {
                    continue;
                }
                sqlx::query(&insert_history)
                    .bind(items.clone())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                for row in sqlx::query(tally).bind(items).fetch_all(&mut *tx).await? {
                    count(
                        row.try_get("schedule_id")?,
                        get_uuid(&row, "workspace_id")?,
                        row.try_get::<i64, _>("n")? as u64,
                        row.try_get("first")?,
                        row.try_get("last")?,
                    );
                }
            }
        } else {
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
            insert_rows(&mut tx, history, 7, 32, &inserted, |q, (id, _, _, _)| {
                q.bind(Uuid::now_v7().to_string())
                    .bind(id.clone())
                    .bind(format!("create-{id}"))
                    .bind("SCHEDULED")
                    .bind("Scheduled")
                    .bind(None::<String>)
                    .bind(now)
            })
            .await?;
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
        let id = Uuid::now_v7();
        let mut parameters = d.parameters.clone();
        parameters.extend(s.parameters.clone());
        let null = Value::Null;
        let template = templates.get(&d.work_pool_id).unwrap_or(&null);
        vec![
            json!(id.to_string()),
            json!(d.workspace_id.to_string()),
            json!(d.id.to_string()),
            json!(d.name),
            json!(d.work_pool_id.to_string()),
            json!(d.work_pool),
            json!(d.work_queue_id.to_string()),
            json!(d.work_queue),
            json!(self.seal_variables("flow_runs", id, "parameters", &parameters, &null)),
            json!(self.seal_job_variables(id, &s.job_variables, template)),
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
