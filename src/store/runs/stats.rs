//! Reads for the dashboard (issue 15): runs per state and time bucket, active runs per pool,
//! and the runs of some pools in some states by scheduled time. Each is written so that it reads
//! an index range, not the workspace's every run (a page answers in milliseconds with 100,000
//! runs in the store; `pushpool bench --mode ui`).

use sqlx::Row;
use uuid::Uuid;

use super::{run_from_row, ACTIVE_STATES_SQL, RUN_COLUMNS};
use crate::model::{FlowRun, Micros};
use crate::state::StateType;
use crate::store::sql::placeholders;
use crate::store::{Result, Store};

impl Store {
    /// Runs of the pools `pool_ids` scheduled in `[since, since + buckets × width)`, counted
    /// per bucket index (0-based) and current state type. One statement per pool and state type,
    /// reading the `(state_type, pool_id, scheduled_time)` index alone (no table rows are
    /// visited). The caller passes its workspace's pools.
    pub async fn run_counts_by_bucket(
        &self,
        pool_ids: &[Uuid],
        since: Micros,
        width: Micros,
        buckets: i64,
    ) -> Result<Vec<(i64, StateType, i64)>> {
        let width = width.max(1);
        // One range count per bucket, in one statement: each reads the index alone, with no
        // sorter for a GROUP BY over an expression (several times faster on SQLite). The bounds
        // are integers computed here, written into the SQL.
        let sql = (0..buckets.max(0))
            .map(|b| {
                let lo = since + b * width;
                format!(
                    "SELECT CAST({b} AS BIGINT) AS bucket, COUNT(*) AS n FROM flow_runs WHERE state_type = $1 \
                     AND pool_id = $2 AND scheduled_time >= {lo} AND scheduled_time < {}",
                    lo + width
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut out = vec![];
        for pool in pool_ids {
            for state in crate::state::ALL_STATE_TYPES {
                let query = sqlx::query(&sql)
                    .bind(state.as_str())
                    .bind(pool.to_string());
                out.extend(
                    self.fetch_rows(query, |row| {
                        let bucket: i64 = row.try_get("bucket")?;
                        let n: i64 = row.try_get("n")?;
                        Ok((bucket, state, n))
                    })
                    .await?
                    .into_iter()
                    .filter(|(_, _, n)| *n > 0),
                );
            }
        }
        Ok(out)
    }

    /// Runs in PENDING, RUNNING or CANCELLING of each of `pool_ids` (pools with none are
    /// left out). Read through the state index: a handful of rows however many runs ended.
    pub async fn active_runs_by_pool(&self, pool_ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
        if pool_ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT pool_id, COUNT(*) AS n FROM flow_runs WHERE state_type IN {ACTIVE_STATES_SQL} \
             AND pool_id IN ({}) GROUP BY pool_id",
            placeholders(1, pool_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in pool_ids {
            query = query.bind(id.to_string());
        }
        self.fetch_rows(query, |row| {
            let id: String = row.try_get("pool_id")?;
            Ok((Uuid::parse_str(&id).unwrap_or_default(), row.try_get("n")?))
        })
        .await
    }

    /// At most `limit` runs of `workspace_id`'s pools `pool_ids` in any of `states`, scheduled
    /// in `[since, until)`, by scheduled time (oldest first, or newest first). One range read of
    /// the `(state_type, pool_id, scheduled_time)` index per pool and state, merged here (the
    /// workspace is not in the SQL, so the planner has no other index to prefer).
    #[allow(clippy::too_many_arguments)]
    pub async fn runs_by_pool_and_state(
        &self,
        workspace_id: Uuid,
        pool_ids: &[Uuid],
        states: &[StateType],
        since: Micros,
        until: Micros,
        oldest_first: bool,
        limit: i64,
    ) -> Result<Vec<FlowRun>> {
        let order = if oldest_first { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE state_type = $1 AND pool_id = $2 \
             AND scheduled_time >= $3 AND scheduled_time < $4 \
             ORDER BY scheduled_time {order} LIMIT $5"
        );
        let mut out = vec![];
        for pool in pool_ids {
            for state in states {
                let query = sqlx::query(&sql)
                    .bind(state.as_str())
                    .bind(pool.to_string())
                    .bind(since)
                    .bind(until)
                    .bind(limit);
                out.extend(
                    self.fetch_rows(query, |r| run_from_row(r, self.secret_key()))
                        .await?,
                );
            }
        }
        // The pools are the workspace's; its id is checked again all the same.
        out.retain(|r| r.workspace_id == workspace_id);
        out.sort_by_key(|r| r.scheduled_time);
        if !oldest_first {
            out.reverse();
        }
        out.truncate(limit.max(0) as usize);
        Ok(out)
    }

    /// On PostgreSQL, what autovacuum does a little after many writes (`VACUUM ANALYZE`: fresh
    /// planner statistics and visibility map). The UI bench calls it after its bulk seed, so it
    /// measures the plans of a running server, not those of empty-table guesses. On SQLite
    /// nothing: pushpool never analyzes a SQLite store, so neither does the bench.
    pub async fn vacuum_analyze(&self) -> Result<()> {
        if self.backend() == crate::store::Backend::Postgres {
            sqlx::query("VACUUM ANALYZE").execute(self.db()).await?;
        }
        Ok(())
    }
}

/// How many rows [`Store::preload_runs`] inserts per statement (and per transaction).
const PRELOAD_CHUNK: u64 = 50_000;

impl Store {
    /// Fills the store with `terminal` COMPLETED runs from the last month (one COMPLETED history
    /// row each) and `future` SCHEDULED runs due from a day ahead, copies of the run `template`
    /// (pool, deployment, parameters) in all but id, times and state: the store `pushpool bench
    /// --preload` measures against. Their ids (`00000000-0000-4000-8000-<n>`) sort before any
    /// real run's, as old runs' do.
    pub async fn preload_runs(&self, template: Uuid, terminal: u64, future: u64) -> Result<()> {
        let postgres = self.backend() == crate::store::Backend::Postgres;
        let id = |prefix: &str| {
            if postgres {
                format!("'{prefix}' || lpad(s.n::text, 12, '0')")
            } else {
                format!("'{prefix}' || printf('%012d', s.n)")
            }
        };
        let series = if postgres {
            "generate_series($1::bigint, $2::bigint) AS s(n)".to_string()
        } else {
            "(WITH RECURSIVE q(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM q WHERE n < $2) \
             SELECT n FROM q) AS s"
                .to_string()
        };
        let run_id = id("00000000-0000-4000-8000-");
        let month = 30 * 24 * 3600 * 1_000_000_i64;
        let now = crate::model::now_micros();
        // (first n, count, state, first scheduled time, step between runs in microseconds)
        let parts = [
            (
                0,
                terminal,
                "COMPLETED",
                "Completed",
                now - month,
                month / terminal.max(1) as i64,
            ),
            (
                terminal,
                future,
                "SCHEDULED",
                "Scheduled",
                now + month / 30,
                10_000,
            ),
        ];
        for (first, count, state, name, t0, step) in parts {
            let mut lo = first;
            while lo < first + count {
                let hi = (lo + PRELOAD_CHUNK).min(first + count) - 1;
                let time = format!("({t0} + (s.n - {first}) * {step})");
                let mut tx = self.begin().await?;
                sqlx::query(&format!(
                    "INSERT INTO flow_runs (id, workspace_id, deployment_id, deployment_name, pool_id, \
                     pool_name, queue_id, queue_name, parameters, job_variables, scheduled_time, \
                     state_type, state_name, state_timestamp, attempt, created, updated, retry_policy, tags) \
                     SELECT {run_id}, t.workspace_id, t.deployment_id, t.deployment_name, t.pool_id, \
                     t.pool_name, t.queue_id, t.queue_name, t.parameters, t.job_variables, {time}, \
                     '{state}', '{name}', {time}, 1, {time}, {time}, t.retry_policy, t.tags \
                     FROM flow_runs t, {series} WHERE t.id = $3"
                ))
                .bind(lo as i64)
                .bind(hi as i64)
                .bind(template.to_string())
                .execute(&mut *tx)
                .await?;
                if state == "COMPLETED" {
                    sqlx::query(&format!(
                        "INSERT INTO state_history (id, run_id, transition_id, state_type, state_name, \
                         message, timestamp) SELECT {}, {run_id}, {}, 'COMPLETED', 'Completed', NULL, {time} \
                         FROM {series}",
                        id("00000000-0000-4000-9000-"),
                        id("preload-"),
                    ))
                    .bind(lo as i64)
                    .bind(hi as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                lo = hi + 1;
            }
        }
        Ok(())
    }

    /// Runs of pool `pool_id` due by `until` that are not terminal yet, counted through the
    /// `(state_type, pool_id, scheduled_time)` index (`pushpool bench` waits on it).
    pub async fn unfinished_runs(&self, pool_id: Uuid, until: Micros) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM flow_runs WHERE state_type IN \
             ('SCHEDULED', 'PENDING', 'RUNNING', 'PAUSED', 'CANCELLING') \
             AND pool_id = $1 AND scheduled_time <= $2",
        )
        .bind(pool_id.to_string())
        .bind(until)
        .fetch_one(self.db())
        .await?;
        Ok(row.try_get(0)?)
    }

    /// When each run of `workspace_id` was first recorded RUNNING (what `pushpool bench`
    /// measures submit → RUNNING with).
    pub async fn running_times(
        &self,
        workspace_id: Uuid,
    ) -> Result<std::collections::HashMap<Uuid, chrono::DateTime<chrono::Utc>>> {
        let query = sqlx::query(
            "SELECT h.run_id, MIN(h.timestamp) AS t FROM state_history h \
             JOIN flow_runs r ON r.id = h.run_id \
             WHERE r.workspace_id = $1 AND h.state_type = 'RUNNING' GROUP BY h.run_id",
        )
        .bind(workspace_id.to_string());
        let rows = self
            .fetch_rows(query, |row| {
                let id: String = row.try_get("run_id")?;
                let t: i64 = row.try_get("t")?;
                Ok((id, t))
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, t)| Some((id.parse().ok()?, crate::model::from_micros(t))))
            .collect())
    }
}
