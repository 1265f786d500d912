//! Aggregates for the dashboard (issue 15): runs per state and time bucket, active runs per
//! pool. Each is one indexed query over a workspace's runs.

use sqlx::Row;
use uuid::Uuid;

use super::ACTIVE_STATES_SQL;
use crate::model::Micros;
use crate::state::StateType;
use crate::store::sql::get_state_type;
use crate::store::{Result, Store};

impl Store {
    /// Runs of a workspace scheduled in `[since, since + buckets × width)`, counted per bucket
    /// index (0-based) and current state type.
    pub async fn run_counts_by_bucket(
        &self,
        workspace_id: Uuid,
        since: Micros,
        width: Micros,
        buckets: i64,
    ) -> Result<Vec<(i64, StateType, i64)>> {
        let width = width.max(1);
        let until = since + width * buckets;
        let query = sqlx::query(
            "SELECT (scheduled_time - $2) / $3 AS bucket, state_type, COUNT(*) AS n \
             FROM flow_runs WHERE workspace_id = $1 AND scheduled_time >= $2 \
             AND scheduled_time < $4 GROUP BY (scheduled_time - $2) / $3, state_type",
        )
        .bind(workspace_id.to_string())
        .bind(since)
        .bind(width)
        .bind(until);
        self.fetch_rows(query, |row| {
            Ok((
                row.try_get("bucket")?,
                get_state_type(row, "state_type")?,
                row.try_get("n")?,
            ))
        })
        .await
    }

    /// Runs of a workspace in PENDING, RUNNING or CANCELLING, per pool id.
    pub async fn active_runs_by_pool(&self, workspace_id: Uuid) -> Result<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT pool_id, COUNT(*) AS n FROM flow_runs \
             WHERE state_type IN {ACTIVE_STATES_SQL} AND workspace_id = $1 GROUP BY pool_id"
        );
        let query = sqlx::query(&sql).bind(workspace_id.to_string());
        self.fetch_rows(query, |row| Ok((row.try_get("pool_id")?, row.try_get("n")?)))
            .await
    }
}
