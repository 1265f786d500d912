//! The plans of the store's hot queries (issue 17): the claim's candidate scan, the API's run
//! page and the late-run sweep, as the database would run them now. A store test checks that
//! each reads a matching index of `flow_runs` instead of scanning the table, so their cost stays
//! flat however many old runs the store holds. The statements are the ones the store runs (built
//! by the same functions), with the same arguments.

use chrono::Utc;
use sqlx::Row;
use uuid::Uuid;

use super::queries::list_runs_sql;
use super::transitions::mark_late_sql;
use super::{PoolSelector, RunFilter};
use crate::model::to_micros;
use crate::store::sql::{bind_all, AnyQuery};
use crate::store::{Backend, Result, Store};

impl Store {
    /// The plans of [`Store::claim_due`]'s candidate scan over the pools `pools` selects and of
    /// its write of 100 of them, one line per plan node (`EXPLAIN QUERY PLAN` on SQLite,
    /// `EXPLAIN` on PostgreSQL).
    pub async fn explain_claim(&self, pools: &PoolSelector) -> Result<String> {
        let (cond, args) = pools.condition(2);
        let sql = self.claim_scan_sql(&cond, &[], 256);
        let explained = self.explained(&sql);
        let q = sqlx::query(&explained).bind(to_micros(Utc::now()));
        let scan = self.plan(bind_all(q, args)).await?;
        let explained = self.explained(&self.claim_update_sql(100));
        let now = to_micros(Utc::now());
        let q = sqlx::query(&explained).bind(now).bind("explain").bind(now);
        let ids = (0..100).map(|_| Uuid::now_v7().to_string());
        let write = self.plan(bind_all(q, ids)).await?;
        Ok(format!("{scan}\n{write}"))
    }

    /// The plan of [`Store::list_runs`] (the API's run page) for this workspace and filter.
    pub async fn explain_list_runs(
        &self,
        workspace_id: Uuid,
        filter: &RunFilter,
    ) -> Result<String> {
        let (sql, args) = list_runs_sql(workspace_id, filter);
        let explained = self.explained(&sql);
        self.plan(bind_all(sqlx::query(&explained), args)).await
    }

    /// The plan of [`Store::mark_late`]'s sweep over the pools `pools` selects.
    pub async fn explain_mark_late(&self, pools: &PoolSelector) -> Result<String> {
        let (cond, args) = pools.condition(3);
        let sql = mark_late_sql(self.backend(), &cond, 100);
        let explained = self.explained(&sql);
        let now = to_micros(Utc::now());
        let q = sqlx::query(&explained).bind(now).bind(now - 15_000_000);
        self.plan(bind_all(q, args)).await
    }

    fn explained(&self, sql: &str) -> String {
        match self.backend() {
            Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            Backend::Postgres => format!("EXPLAIN {sql}"),
        }
    }

    async fn plan(&self, query: AnyQuery<'_>) -> Result<String> {
        let sqlite = self.backend() == Backend::Sqlite;
        let lines = self
            .fetch_rows(query, |row| {
                Ok(if sqlite {
                    row.try_get::<String, _>("detail")?
                } else {
                    row.try_get::<String, _>(0)?
                })
            })
            .await?;
        Ok(lines.join("\n"))
    }
}
