//! Claims: due SCHEDULED runs move to PENDING/Submitting with a lease, within every concurrency
//! limit and the claimer's per-workspace quota, shared fairly between workspaces: workspaces take
//! turns (round-robin), and within one workspace runs go in queue-priority then scheduled-time
//! order.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{
    lease_micros, record_transitions, run_from_row, PoolSelector, ACTIVE_STATES_SQL, RUN_COLUMNS,
};
use crate::model::{from_micros, now_micros, to_micros, FlowRun};
use crate::state::{names, StateType};
use crate::store::sql::{bind_all, get_uuid, placeholders};
use crate::store::{Backend, Result, Store};

/// How many runs of each workspace a claimer may still take: the fair share of its in-flight
/// capacity (issue 19, item 7). A workspace at its quota is skipped by the claim, so one
/// workspace's backlog never fills a controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceQuota {
    /// Most active runs the claimer may hold of one workspace; `None`: no cap.
    pub per_workspace: Option<usize>,
    /// Runs the claimer holds now, per workspace.
    pub held: HashMap<Uuid, usize>,
}

impl WorkspaceQuota {
    /// No per-workspace cap (claims still take workspaces in turn).
    pub fn unlimited() -> Self {
        WorkspaceQuota::default()
    }

    /// At most `per_workspace` runs per workspace, `held` being held already.
    pub fn new(per_workspace: usize, held: HashMap<Uuid, usize>) -> Self {
        WorkspaceQuota {
            per_workspace: Some(per_workspace),
            held,
        }
    }

    /// How many more runs of `workspace` may be claimed (`usize::MAX` without a cap).
    pub fn room(&self, workspace: &Uuid) -> usize {
        match self.per_workspace {
            None => usize::MAX,
            Some(cap) => cap.saturating_sub(self.held.get(workspace).copied().unwrap_or(0)),
        }
    }

    /// Workspaces with no room left, sorted (the claim leaves their runs out of its scan).
    pub fn full(&self) -> Vec<Uuid> {
        let mut full: Vec<Uuid> = self
            .held
            .keys()
            .filter(|ws| self.room(ws) == 0)
            .copied()
            .collect();
        full.sort();
        full
    }
}

/// Orders runs so workspaces take turns: the first run of every workspace, then the second of
/// every workspace, and so on; `items` come in their order within a workspace (priority, then
/// schedule) and each round keeps that order between workspaces. The SQL claim ranks the same way
/// (`ROW_NUMBER() OVER (PARTITION BY workspace_id …)`); the memory plane calls this (pure,
/// unit-tested).
pub fn round_robin<T>(items: Vec<T>, workspace: impl Fn(&T) -> Uuid) -> Vec<T> {
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut ranked: Vec<(usize, usize, T)> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let rank = seen.entry(workspace(&item)).or_default();
            *rank += 1;
            (*rank, i, item)
        })
        .collect();
    ranked.sort_by_key(|(rank, i, _)| (*rank, *i));
    ranked.into_iter().map(|(_, _, item)| item).collect()
}

/// A claim candidate with the limits that apply to it.
struct Candidate {
    id: String,
    workspace_id: Uuid,
    pool_id: String,
    queue_id: String,
    deployment_id: String,
    pool_limit: Option<i64>,
    queue_limit: Option<i64>,
    deployment_limit: Option<i64>,
    /// The run's schedule and its `max_active_runs`, when it has them (issue 13).
    schedule_id: Option<String>,
    schedule_limit: Option<i64>,
}

/// Admits candidates in order while every limit on their path and their workspace's quota have
/// room (pure, unit-tested).
fn admit(
    candidates: &[Candidate],
    active: &ActiveCounts,
    quota: &WorkspaceQuota,
    limit: usize,
) -> Vec<String> {
    let mut pools = active.pools.clone();
    let mut queues = active.queues.clone();
    let mut deployments = active.deployments.clone();
    let mut schedules = active.schedules.clone();
    let mut taken: HashMap<Uuid, usize> = HashMap::new();
    let mut admitted = Vec::new();
    for c in candidates {
        if admitted.len() >= limit {
            break;
        }
        let fits = |count: &HashMap<String, i64>, key: &str, lim: Option<i64>| {
            lim.is_none_or(|l| count.get(key).copied().unwrap_or(0) < l)
        };
        let workspace_taken = taken.entry(c.workspace_id).or_default();
        if *workspace_taken < quota.room(&c.workspace_id)
            && fits(&pools, &c.pool_id, c.pool_limit)
            && fits(&queues, &c.queue_id, c.queue_limit)
            && fits(&deployments, &c.deployment_id, c.deployment_limit)
            && c.schedule_id
                .as_ref()
                .is_none_or(|s| fits(&schedules, s, c.schedule_limit))
        {
            *workspace_taken += 1;
            *pools.entry(c.pool_id.clone()).or_default() += 1;
            *queues.entry(c.queue_id.clone()).or_default() += 1;
            *deployments.entry(c.deployment_id.clone()).or_default() += 1;
            if let Some(s) = &c.schedule_id {
                *schedules.entry(s.clone()).or_default() += 1;
            }
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
    schedules: HashMap<String, i64>,
}

impl Store {
    /// Claims up to `limit` due SCHEDULED runs of the selected pools for `owner`: moves them to
    /// PENDING/Submitting with a lease, workspaces taking turns and, within one workspace, in
    /// queue-priority then scheduled-time order; skips paused pools, queues and deployments and
    /// honours every concurrency limit (PENDING + RUNNING + CANCELLING). Runs held back by a full
    /// limit never block runs that are free to go. No per-workspace quota: see
    /// [`Store::claim_due_within`].
    pub async fn claim_due(
        &self,
        pools: &PoolSelector,
        due_before: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<FlowRun>> {
        let unlimited = WorkspaceQuota::unlimited();
        self.claim_due_within(pools, due_before, limit, owner, lease, &unlimited)
            .await
    }

    /// [`Store::claim_due`] within a per-workspace quota: no workspace gets more runs than
    /// `quota.room(workspace)`, and workspaces with no room are left out of the scan, so a
    /// workspace's backlog neither fills the claim nor hides other workspaces' runs from it.
    pub async fn claim_due_within(
        &self,
        pools: &PoolSelector,
        due_before: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        quota: &WorkspaceQuota,
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
                  OR EXISTS (SELECT 1 FROM deployments d WHERE d.pool_id = p.id AND d.concurrency_limit IS NOT NULL) \
                  OR EXISTS (SELECT 1 FROM schedules s JOIN deployments d ON d.id = s.deployment_id \
                             WHERE d.pool_id = p.id AND s.max_active_runs IS NOT NULL)) \
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

        let scan = (limit * 4).max(64);
        let sql = self.claim_scan_sql(&pool_cond, &quota.full(), scan);
        let mut q = sqlx::query(&sql).bind(to_micros(due_before));
        q = bind_all(q, pool_args.iter().cloned());
        let rows = q.fetch_all(&mut *tx).await?;
        let candidates = rows
            .iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.try_get("id")?,
                    workspace_id: get_uuid(row, "workspace_id")?,
                    pool_id: row.try_get("pool_id")?,
                    queue_id: row.try_get("queue_id")?,
                    deployment_id: row.try_get("deployment_id")?,
                    pool_limit: row.try_get("pool_limit")?,
                    queue_limit: row.try_get("queue_limit")?,
                    deployment_limit: row.try_get("deployment_limit")?,
                    schedule_id: row.try_get("schedule_id")?,
                    schedule_limit: row.try_get("schedule_limit")?,
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
        // Schedules' `max_active_runs` (issue 13): their active runs, counted apart.
        let mut limited: Vec<&String> = candidates
            .iter()
            .filter(|c| c.schedule_limit.is_some())
            .filter_map(|c| c.schedule_id.as_ref())
            .collect();
        limited.sort();
        limited.dedup();
        if !limited.is_empty() {
            let sql = format!(
                "SELECT schedule_id, COUNT(*) AS n FROM flow_runs WHERE schedule_id IN ({}) \
                 AND state_type IN {ACTIVE_STATES_SQL} GROUP BY schedule_id",
                placeholders(1, limited.len())
            );
            let q = bind_all(sqlx::query(&sql), limited.into_iter().cloned());
            for row in q.fetch_all(&mut *tx).await? {
                active
                    .schedules
                    .insert(row.try_get("schedule_id")?, row.try_get("n")?);
            }
        }
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
        let admitted = admit(&candidates, &active, quota, limit);
        if admitted.is_empty() {
            tx.commit().await?;
            return Ok(vec![]);
        }

        let sql = self.claim_update_sql(admitted.len());
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
        // Same order as admitted (workspaces in turn, priority, schedule): RETURNING does not
        // promise one.
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

    /// The claim's candidate scan: due SCHEDULED runs of the pools `pool_cond` selects (its
    /// arguments from `$2`; `$1` is the due time), workspaces in `full` left out, ranked for
    /// fair share, at most `scan` rows. Shared with [`Store::explain_claim`].
    pub(crate) fn claim_scan_sql(&self, pool_cond: &str, full: &[Uuid], scan: usize) -> String {
        let active_count = |col: &str, alias: &str| {
            format!(
                    "({alias}.concurrency_limit IS NULL OR {alias}.concurrency_limit > \
                     (SELECT COUNT(*) FROM flow_runs a WHERE a.{col} = {alias}.id AND a.state_type IN {ACTIVE_STATES_SQL}))"
                )
        };
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE OF r SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // Workspaces at their quota are left out (ids are UUIDs: inlined as literals).
        let not_full = if full.is_empty() {
            String::new()
        } else {
            let list = full
                .iter()
                .map(|ws| format!("'{ws}'"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(" AND r.workspace_id NOT IN ({list})")
        };
        // Fair share: rank due runs within their workspace (priority, then schedule) and take
        // rank 1 of every workspace first, then rank 2, … so one workspace's backlog can neither
        // fill the batch nor push other workspaces' runs out of the scan window. The ranking is a
        // subquery because PostgreSQL refuses FOR UPDATE next to a window function; it is sorted
        // itself so PostgreSQL locks rows lazily in that order up to the LIMIT (the outer ORDER
        // BY is then free) instead of joining and sorting the whole backlog once more.
        format!(
                "SELECT c.run_id AS id, c.workspace_id, c.pool_id, c.queue_id, c.deployment_id, \
                 c.pool_limit, c.queue_limit, c.deployment_limit, c.schedule_id, c.schedule_limit \
                 FROM (SELECT r.id AS run_id, r.workspace_id, r.pool_id, r.queue_id, r.deployment_id, \
                       p.concurrency_limit AS pool_limit, q.concurrency_limit AS queue_limit, \
                       d.concurrency_limit AS deployment_limit, q.priority AS priority, \
                       r.schedule_id AS schedule_id, s.max_active_runs AS schedule_limit, \
                       r.scheduled_time AS scheduled_time, \
                       ROW_NUMBER() OVER (PARTITION BY r.workspace_id \
                       ORDER BY q.priority, r.scheduled_time, r.id) AS fair_rank \
                       FROM flow_runs r \
                       JOIN work_pools p ON p.id = r.pool_id \
                       JOIN work_queues q ON q.id = r.queue_id \
                       JOIN deployments d ON d.id = r.deployment_id \
                       LEFT JOIN schedules s ON s.id = r.schedule_id \
                       WHERE r.state_type = 'SCHEDULED' AND r.scheduled_time <= $1 AND {pool_cond}{not_full} \
                       AND p.paused = 0 AND q.paused = 0 AND d.paused = 0 \
                       AND {} AND {} AND {} \
                       AND (s.max_active_runs IS NULL OR s.max_active_runs > (SELECT COUNT(*) FROM flow_runs a \
                            WHERE a.schedule_id = s.id AND a.state_type IN {ACTIVE_STATES_SQL})) \
                       ORDER BY fair_rank, priority, scheduled_time, run_id) c \
                 JOIN flow_runs r ON r.id = c.run_id \
                 WHERE r.state_type = 'SCHEDULED' \
                 ORDER BY c.fair_rank, c.priority, c.scheduled_time, c.run_id LIMIT {scan}{lock}",
                active_count("pool_id", "p"),
                active_count("queue_id", "q"),
                active_count("deployment_id", "d"),
            )
    }

    /// The claim's write: the `n` admitted runs (`$4`…) still SCHEDULED move to
    /// PENDING/Submitting with the lease (`$1` now, `$2` owner, `$3` lease end). On SQLite the
    /// state check is kept out of index choice (`+state_type`): it is true anyway inside the
    /// claim's write transaction, and as an index term it made SQLite read every SCHEDULED run
    /// instead of the admitted ones by id. Shared with [`Store::explain_claim`].
    pub(crate) fn claim_update_sql(&self, n: usize) -> String {
        let recheck = match self.backend() {
            Backend::Postgres => "state_type = 'SCHEDULED' FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "+state_type = 'SCHEDULED'",
        };
        format!(
            "UPDATE flow_runs SET state_type = 'PENDING', state_name = '{}', state_message = NULL, \
             state_timestamp = $1, lease_owner = $2, lease_expires = $3, version = version + 1, updated = $1 \
             WHERE id IN (SELECT id FROM flow_runs WHERE id IN ({}) AND {recheck}) \
             RETURNING {RUN_COLUMNS}",
            names::SUBMITTING,
            placeholders(4, n)
        )
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
            workspace_id: Uuid::nil(),
            pool_id: "p".into(),
            queue_id: "q".into(),
            deployment_id: dep.into(),
            pool_limit,
            queue_limit: None,
            deployment_limit: dep_limit,
            schedule_id: None,
            schedule_limit: None,
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
        assert_eq!(
            admit(
                &c,
                &ActiveCounts::default(),
                &WorkspaceQuota::unlimited(),
                10
            ),
            vec!["a1", "b1"]
        );
        let mut busy = ActiveCounts::default();
        busy.deployments.insert("a".into(), 1);
        assert_eq!(
            admit(&c, &busy, &WorkspaceQuota::unlimited(), 10),
            vec!["b1"]
        );
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
        assert_eq!(
            admit(&c, &busy, &WorkspaceQuota::unlimited(), 10),
            vec!["x"]
        );
        assert_eq!(
            admit(
                &c,
                &ActiveCounts::default(),
                &WorkspaceQuota::unlimited(),
                1
            ),
            vec!["x"]
        );
    }

    fn in_ws(id: &str, ws: u128) -> Candidate {
        Candidate {
            workspace_id: Uuid::from_u128(ws),
            ..cand(id, "d", None, None)
        }
    }

    #[test]
    fn a_workspace_at_its_quota_leaves_room_for_others() {
        let a = Uuid::from_u128(1);
        let c = vec![
            in_ws("a1", 1),
            in_ws("a2", 1),
            in_ws("a3", 1),
            in_ws("b1", 2),
        ];
        // A holds 1 of its 2: one more of A, then B (which holds none).
        let quota = WorkspaceQuota::new(2, HashMap::from([(a, 1)]));
        assert_eq!(quota.room(&a), 1);
        assert_eq!(quota.room(&Uuid::from_u128(2)), 2);
        assert!(quota.full().is_empty());
        let got = admit(&c, &ActiveCounts::default(), &quota, 10);
        assert_eq!(got, vec!["a1", "b1"]);
        // A full: none of A, B still goes.
        let quota = WorkspaceQuota::new(2, HashMap::from([(a, 2)]));
        assert_eq!(quota.full(), vec![a]);
        let got = admit(&c, &ActiveCounts::default(), &quota, 10);
        assert_eq!(got, vec!["b1"]);
        // No cap: everything, in order.
        let got = admit(
            &c,
            &ActiveCounts::default(),
            &WorkspaceQuota::unlimited(),
            10,
        );
        assert_eq!(got, vec!["a1", "a2", "a3", "b1"]);
    }

    #[test]
    fn round_robin_takes_workspaces_in_turn_keeping_their_order() {
        // (workspace, id) in priority order: A's backlog first, B's and C's after it.
        let items = vec![
            (1, "a1"),
            (1, "a2"),
            (1, "a3"),
            (2, "b1"),
            (1, "a4"),
            (2, "b2"),
            (3, "c1"),
        ];
        let got: Vec<&str> = round_robin(items, |(ws, _)| Uuid::from_u128(*ws))
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(got, vec!["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        let one: Vec<(u128, &str)> = vec![(1, "x"), (1, "y")];
        assert_eq!(
            round_robin(one.clone(), |(ws, _)| Uuid::from_u128(*ws)),
            one
        );
        assert!(round_robin(Vec::<u8>::new(), |_| Uuid::nil()).is_empty());
    }
}
