//! Leases and liveness: renewing, releasing and adopting runs' leases, finding runs whose
//! controller or job fell silent, and controller heartbeats.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use super::{
    lease_micros, run_columns_of, run_from_row, PoolSelector, ACTIVE_STATES_SQL, RUN_COLUMNS,
};
use crate::model::{from_micros, now_micros, to_micros, FlowRun};
use crate::state::StateType;
use crate::store::objects::insert_event_rows;
use crate::store::sql::bind_all;
use crate::store::{Result, Store};

impl Store {
    /// Extends the lease of every active run `owner` holds. Returns how many.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64> {
        let done = sqlx::query(&format!(
            "UPDATE flow_runs SET lease_expires = $1 WHERE lease_owner = $2 AND state_type IN {ACTIVE_STATES_SQL}"
        ))
        .bind(now_micros() + lease_micros(lease))
        .bind(owner)
        .execute(self.db())
        .await?;
        crate::store::count_write();
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
        crate::store::count_write();
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
        crate::store::count_write();
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
            run_columns_of("r"),
            limit.clamp(1, 10_000)
        );
        let mut q = sqlx::query(&sql).bind(to_micros(now));
        q = bind_all(q, args);
        self.fetch_rows(q, |r| run_from_row(r, self.secret_key()))
            .await
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
        let previous: Option<String> = sqlx::query(&format!(
            "SELECT lease_owner FROM flow_runs WHERE id = $1{}",
            self.for_update()
        ))
        .bind(run_id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten());
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
        let run = run_from_row(&row, self.secret_key())?;
        // The lease was gone or had run out: this is a rescue (docs/events.md).
        let event = super::flow_run_event(
            &run,
            "flow_run.lease_rescued",
            json!({
                "controller": owner,
                "previous_owner": previous,
                "state": run.state.state_type,
            }),
        );
        insert_event_rows(&mut tx, &[event]).await?;
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
        rows.iter()
            .map(|r| run_from_row(r, self.secret_key()))
            .collect()
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
            run_columns_of("r"),
            limit.clamp(1, 10_000)
        );
        let mut q = sqlx::query(&sql).bind(now_micros() - lease_micros(silence));
        q = bind_all(q, args);
        self.fetch_rows(q, |r| run_from_row(r, self.secret_key()))
            .await
    }

    /// Records a heartbeat from the job.
    pub async fn heartbeat(&self, run_id: Uuid) -> Result<()> {
        sqlx::query("UPDATE flow_runs SET last_heartbeat = $1 WHERE id = $2")
            .bind(now_micros())
            .bind(run_id.to_string())
            .execute(self.db())
            .await?;
        crate::store::count_write();
        Ok(())
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
}
