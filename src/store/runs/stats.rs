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
