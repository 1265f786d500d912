//! Deployment schedules: creating, reading, changing and deleting them. Changing or deleting a
//! schedule removes its future runs that have not started (see [`slots`]), so the scheduler
//! regenerates them from the new spec.

mod slots;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::objects::{insert_event, open_json_map};
use super::sql::{get_bool, get_uuid, opt_time};
use super::{Result, Store, StoreError};
use crate::model::{from_micros, now_micros, to_micros, Deployment};
use crate::schedule::{Catchup, Kind, Recurrence, Schedule, SpecError};

pub use slots::{slot_key, ScheduleBatch, SlotRun};

const SCHEDULE_COLUMNS: &str =
    "s.id, s.workspace_id, s.deployment_id, s.kind, s.spec, s.timezone, \
     s.anchor, s.active, s.parameters, s.job_variables, s.max_active_runs, s.catchup, s.last_slot, \
     s.version, s.created, s.updated";

/// A schedule to create (its job variables already checked against the pool's template).
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// Cron, interval or RRULE.
    pub kind: Kind,
    /// Its text.
    pub spec: String,
    /// IANA time zone (`UTC` when absent).
    pub timezone: Option<String>,
    /// Interval anchor / default RRULE DTSTART; default: midnight of today in the zone.
    pub anchor: Option<DateTime<Utc>>,
    /// Create runs (default true).
    pub active: bool,
    /// Parameter overrides.
    pub parameters: Map<String, Value>,
    /// Run-level job-variable overrides (checked).
    pub job_variables: Map<String, Value>,
    /// Most active runs of the schedule at once.
    pub max_active_runs: Option<i64>,
    /// Missed-slot policy.
    pub catchup: Catchup,
}

/// Changes to a schedule; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SchedulePatch {
    /// New kind and spec together.
    pub spec: Option<(Kind, String)>,
    /// New time zone.
    pub timezone: Option<String>,
    /// New anchor.
    pub anchor: Option<DateTime<Utc>>,
    /// Pause (false) or resume (true).
    pub active: Option<bool>,
    /// New parameter overrides.
    pub parameters: Option<Map<String, Value>>,
    /// New checked job-variable overrides.
    pub job_variables: Option<Map<String, Value>>,
    /// New limit (`Some(None)` removes it).
    pub max_active_runs: Option<Option<i64>>,
    /// New missed-slot policy.
    pub catchup: Option<Catchup>,
}

fn invalid(e: SpecError) -> StoreError {
    StoreError::Invalid {
        field: e.field.to_string(),
        message: e.message,
    }
}

/// Midnight of `now`'s day in `timezone` (the default anchor).
fn default_anchor(timezone: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let tz = crate::schedule::parse_timezone(timezone).map_err(invalid)?;
    let midnight = now
        .with_timezone(&tz)
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default();
    Ok(crate::schedule::resolve(&tz, midnight))
}

fn check_max_active(n: Option<i64>) -> Result<()> {
    match n {
        Some(n) if n < 1 => Err(StoreError::Invalid {
            field: "max_active_runs".into(),
            message: "must be 1 or more (null for no limit)".into(),
        }),
        _ => Ok(()),
    }
}

pub(super) fn schedule_from_row(
    row: &AnyRow,
    key: Option<&super::crypto::SecretKey>,
) -> Result<Schedule> {
    let id = get_uuid(row, "id")?;
    let catchup: String = row.try_get("catchup")?;
    Ok(Schedule {
        id,
        deployment_id: get_uuid(row, "deployment_id")?,
        kind: row.try_get("kind")?,
        spec: row.try_get("spec")?,
        timezone: row.try_get("timezone")?,
        anchor: from_micros(row.try_get("anchor")?),
        active: get_bool(row, "active")?,
        parameters: open_json_map(key, row, "schedules", id, "parameters")?,
        job_variables: open_json_map(key, row, "schedules", id, "job_variables")?,
        max_active_runs: row.try_get("max_active_runs")?,
        catchup: Catchup::parse(&catchup)
            .ok_or_else(|| StoreError::Corrupt(format!("catchup `{catchup}`")))?,
        last_slot: opt_time(row, "last_slot")?,
        version: row.try_get("version")?,
        created: from_micros(row.try_get("created")?),
        updated: from_micros(row.try_get("updated")?),
    })
}

impl Store {
    /// Adds a schedule to a deployment; the spec and time zone are checked here (a bad one is
    /// [`StoreError::Invalid`] naming `cron`, `interval`, `rrule` or `timezone`).
    pub async fn create_schedule(
        &self,
        deployment: &Deployment,
        new: NewSchedule,
    ) -> Result<Schedule> {
        check_max_active(new.max_active_runs)?;
        let now = now_micros();
        let timezone = new.timezone.unwrap_or_else(|| "UTC".into());
        let anchor = match new.anchor {
            Some(a) => a,
            None => default_anchor(&timezone, from_micros(now))?,
        };
        Recurrence::new(new.kind, &new.spec, &timezone, anchor)
            .and_then(|r| r.check_usable(from_micros(now)))
            .map_err(invalid)?;
        let template = self
            .pool_by_id(deployment.work_pool_id)
            .await?
            .base_job_template;
        let id = Uuid::now_v7();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO schedules (id, workspace_id, deployment_id, kind, spec, timezone, anchor, \
             active, parameters, job_variables, max_active_runs, catchup, last_slot, version, \
             created, updated) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,NULL,1,$13,$13)",
        )
        .bind(id.to_string())
        .bind(deployment.workspace_id.to_string())
        .bind(deployment.id.to_string())
        .bind(new.kind.as_str())
        .bind(new.spec.trim().to_string())
        .bind(&timezone)
        .bind(to_micros(anchor))
        .bind(new.active as i64)
        .bind(self.seal_variables("schedules", id, "parameters", &new.parameters, &Value::Null))
        .bind(self.seal_variables(
            "schedules",
            id,
            "job_variables",
            &new.job_variables,
            &template,
        ))
        .bind(new.max_active_runs)
        .bind(new.catchup.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            deployment.workspace_id,
            "schedule.created",
            &id.to_string(),
            &json!({"deployment": deployment.name, "kind": new.kind.as_str(), "spec": new.spec}),
        )
        .await?;
        tx.commit().await?;
        self.schedule(deployment, &id.to_string()).await
    }

    /// A schedule of a deployment.
    pub async fn schedule(&self, deployment: &Deployment, id: &str) -> Result<Schedule> {
        if Uuid::parse_str(id).is_err() {
            return Err(super::sql::not_found("schedule", id));
        }
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules s WHERE s.deployment_id = $1 AND s.id = $2"
        );
        let query = sqlx::query(&sql)
            .bind(deployment.id.to_string())
            .bind(id.to_string());
        self.fetch_found(query, "schedule", id, |r| {
            schedule_from_row(r, self.secret_key())
        })
        .await
    }

    /// A deployment's schedules, oldest first.
    pub async fn schedules_of(&self, deployment_id: Uuid) -> Result<Vec<Schedule>> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules s WHERE s.deployment_id = $1 ORDER BY s.id"
        );
        let query = sqlx::query(&sql).bind(deployment_id.to_string());
        self.fetch_rows(query, |r| schedule_from_row(r, self.secret_key()))
            .await
    }

    /// Changes a schedule. A change of what or when it runs (spec, zone, anchor, overrides,
    /// pausing) removes its future runs that have not started; the scheduler makes them anew.
    /// Resuming starts from now: slots missed while paused are not caught up.
    pub async fn update_schedule(
        &self,
        deployment: &Deployment,
        id: &str,
        patch: SchedulePatch,
    ) -> Result<Schedule> {
        let current = self.schedule(deployment, id).await?;
        let max_active = patch.max_active_runs.unwrap_or(current.max_active_runs);
        check_max_active(max_active)?;
        let (kind, spec) = match &patch.spec {
            Some((k, s)) => (*k, s.trim().to_string()),
            None => (current.kind().map_err(invalid)?, current.spec.clone()),
        };
        let timezone = patch.timezone.clone().unwrap_or(current.timezone.clone());
        let anchor = patch.anchor.unwrap_or(current.anchor);
        Recurrence::new(kind, &spec, &timezone, anchor)
            .and_then(|r| r.check_usable(from_micros(now_micros())))
            .map_err(invalid)?;
        let active = patch.active.unwrap_or(current.active);
        let now = now_micros();
        let last_slot = match current.last_slot {
            Some(_) if active && !current.active => Some(now),
            Some(last) => Some(to_micros(last).min(now)),
            None => None,
        };
        let template = self
            .pool_by_id(deployment.work_pool_id)
            .await?
            .base_job_template;
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE schedules SET kind = $1, spec = $2, timezone = $3, anchor = $4, active = $5, \
             parameters = $6, job_variables = $7, max_active_runs = $8, catchup = $9, \
             last_slot = $10, version = version + 1, updated = $11 WHERE id = $12",
        )
        .bind(kind.as_str())
        .bind(&spec)
        .bind(&timezone)
        .bind(to_micros(anchor))
        .bind(active as i64)
        .bind(self.seal_variables(
            "schedules",
            current.id,
            "parameters",
            patch.parameters.as_ref().unwrap_or(&current.parameters),
            &Value::Null,
        ))
        .bind(
            self.seal_variables(
                "schedules",
                current.id,
                "job_variables",
                patch
                    .job_variables
                    .as_ref()
                    .unwrap_or(&current.job_variables),
                &template,
            ),
        )
        .bind(max_active)
        .bind(patch.catchup.unwrap_or(current.catchup).as_str())
        .bind(last_slot)
        .bind(now)
        .bind(current.id.to_string())
        .execute(&mut *tx)
        .await?;
        let removed = slots::delete_future_runs(&mut tx, self.backend(), current.id, now).await?;
        insert_event(
            &mut tx,
            deployment.workspace_id,
            "schedule.updated",
            &current.id.to_string(),
            &json!({"deployment": deployment.name, "active": active, "removed_runs": removed}),
        )
        .await?;
        self.commit_notifying(tx).await?;
        self.schedule(deployment, id).await
    }

    /// Deletes a schedule and its future runs that have not started.
    pub async fn delete_schedule(&self, deployment: &Deployment, id: &str) -> Result<()> {
        let current = self.schedule(deployment, id).await?;
        let mut tx = self.begin().await?;
        // The schedule row first, then its runs: the scheduler locks in that order too.
        sqlx::query(&format!(
            "SELECT id FROM schedules WHERE id = $1{}",
            self.for_update()
        ))
        .bind(current.id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let removed =
            slots::delete_future_runs(&mut tx, self.backend(), current.id, now_micros()).await?;
        sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(current.id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            deployment.workspace_id,
            "schedule.deleted",
            &current.id.to_string(),
            &json!({"deployment": deployment.name, "removed_runs": removed}),
        )
        .await?;
        self.commit_notifying(tx).await
    }
}
