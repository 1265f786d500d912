//! Claims: due SCHEDULED runs move to PENDING/Submitting with a lease, within every concurrency
//! limit, in queue-priority then scheduled-time order.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    lease_micros, record_transitions, run_from_row, PoolSelector, ACTIVE_STATES_SQL, RUN_COLUMNS,
};
use crate::model::{from_micros, now_micros, to_micros, FlowRun};
use crate::state::{names, StateType};
use crate::store::sql::{bind_all, placeholders};
use crate::store::{Backend, Result, Store};

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
            q = bind_all(q, pool_args.iter().cloned());
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
        q = bind_all(q, pool_args.iter().cloned());
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
        let mut runs = rows
            .iter()
            .map(|r| run_from_row(r, self.secret_key()))
            .collect::<Result<Vec<_>>>()?;
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

        record_transitions(&mut tx, &runs, StateType::Scheduled, "claim").await?;
        tx.commit().await?;
        Ok(runs)
    }

    /// The earliest scheduled time among SCHEDULED runs of the selected, unpaused pools.
    pub async fn next_due(&self, pools: &PoolSelector) -> Result<Option<DateTime<Utc>>> {
        let (cond, args) = pools.condition(1);
        let sql = format!(
            "SELECT MIN(r.scheduled_time) FROM flow_runs r JOIN work_pools p ON p.id = r.pool_id \
             WHERE r.state_type = 'SCHEDULED' AND p.paused = 0 AND {cond}"
        );
        let mut q = sqlx::query(&sql);
        q = bind_all(q, args);
        let row = q.fetch_one(self.db()).await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.map(from_micros))
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
