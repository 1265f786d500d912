//! The guarded state transition: the store locks and reads the run, [`decide_sequence`] decides,
//! and the store writes what it was told (one row update, one history row and one event per
//! accepted proposal). Also the two writes that are not transitions of the table: recording the
//! infrastructure id and renaming overdue runs `Late`.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use super::{
    insert_history, lease_micros, record_transitions, run_from_row, transition_event, HistoryRow,
    PoolSelector, TransitionOutcome, RUN_COLUMNS,
};
use crate::model::{from_micros, now_micros, to_micros, FlowRun};
use crate::state::{
    decide_sequence, names, retry_after, Decision, InfrastructureEffect, Proposal, Rejection,
    RunRecord, StateType, TransitionGuard,
};
use crate::store::objects::{insert_event, insert_event_rows, EventRow};
use crate::store::sql::{bind_all, get_uuid, not_found, placeholders, storable};
use crate::store::{Result, Store, StoreError, Tx};

/// What the decisions on a sequence of proposals mean for the run as read: the outcome of each,
/// the run after each accepted one, and what to write.
struct Plan {
    /// One outcome per decided proposal.
    outcomes: Vec<TransitionOutcome>,
    /// Per accepted proposal: the run after it, the state it left, its transition id.
    steps: Vec<(FlowRun, StateType, String)>,
    /// The run after the last accepted proposal (what the row update writes).
    current: FlowRun,
    /// Some accepted transition wakes waiting controllers.
    wakes: bool,
    /// The infrastructure id an accepted transition recorded.
    infrastructure: Option<String>,
    /// The error summary of an accepted FAILED/CRASHED proposal: its step index, the summary.
    summary: Option<(usize, pushpool_provider::ErrorSummary)>,
}

impl Plan {
    fn new(read: FlowRun, decisions: Vec<Decision>, proposals: &[Proposal]) -> Self {
        let mut plan = Plan {
            outcomes: Vec::with_capacity(decisions.len()),
            steps: vec![],
            current: read,
            wakes: false,
            infrastructure: None,
            summary: None,
        };
        for (decision, proposal) in decisions.into_iter().zip(proposals) {
            let outcome = match decision {
                Decision::NoOp => TransitionOutcome::Duplicate(plan.current.clone()),
                Decision::Rejected(reason) => TransitionOutcome::Rejected {
                    reason,
                    run: plan.current.clone(),
                },
                Decision::Accepted(transition) => {
                    let next = transition.applied_to(&plan.current);
                    if let InfrastructureEffect::Recorded(id) = transition.infrastructure {
                        plan.infrastructure = Some(id);
                    }
                    plan.wakes |= transition.wakes_controllers;
                    if let (Some(summary), StateType::Failed | StateType::Crashed) =
                        (&proposal.error_summary, next.state.state_type)
                    {
                        plan.summary = Some((plan.steps.len(), summary.clone()));
                    }
                    plan.steps.push((
                        next.clone(),
                        transition.from,
                        proposal.transition_id.clone(),
                    ));
                    plan.current = next.clone();
                    TransitionOutcome::Accepted(next)
                }
            };
            plan.outcomes.push(outcome);
        }
        plan
    }
}

impl Plan {
    /// The retry rule (docs/retries.md): when the last accepted proposal ended the attempt in a
    /// state the run's policy retries, a second step follows in the same transaction:
    /// `SCHEDULED/AwaitingRetry`, the next attempt, due after the policy's delay. The history
    /// keeps the failed state and then the retry.
    fn retry(&mut self, now: chrono::DateTime<chrono::Utc>) {
        let Some((ended, from, tid)) = self.steps.last() else {
            return;
        };
        let Some(retry) = retry_after(
            &RunRecord::of(ended),
            *from,
            &ended.retry,
            now,
            rand::random::<f64>(),
        ) else {
            return;
        };
        let mut next = retry.transition.applied_to(ended);
        next.scheduled_time = retry.scheduled_time;
        let step = (next.clone(), retry.transition.from, format!("retry-{tid}"));
        self.steps.push(step);
        self.wakes = true;
        if let Some(TransitionOutcome::Accepted(last)) = self
            .outcomes
            .iter_mut()
            .rev()
            .find(|o| matches!(o, TransitionOutcome::Accepted(_)))
        {
            *last = next.clone();
        }
        self.current = next;
    }
}

impl Store {
    /// Proposes a new state. Compare-and-set on the current state (and lease owner when the guard
    /// names one); a repeated transition id is a no-op; history and event are written in the same
    /// transaction; terminal states are never left.
    pub async fn propose_state(
        &self,
        run_id: Uuid,
        proposal: Proposal,
        guard: TransitionGuard,
    ) -> Result<TransitionOutcome> {
        let mut outcomes = self
            .propose_states_with(run_id, vec![proposal], guard, None)
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no outcome".into()))
    }

    /// Proposes several states in order in one transaction (e.g. RUNNING then COMPLETED for a job
    /// that finished between two polls). Each later proposal expects the state the previous one
    /// set. Stops at the first proposal not accepted; what was accepted before it is kept. Returns
    /// the outcome of every proposal tried.
    pub async fn propose_states(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: TransitionGuard,
    ) -> Result<Vec<TransitionOutcome>> {
        self.propose_states_with(run_id, proposals, guard, None)
            .await
    }

    /// Like [`Store::propose_states`], and also records the infrastructure id of a PENDING run that
    /// has none yet in the same transaction (a job that already finished when it was submitted).
    pub async fn propose_states_with(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: TransitionGuard,
        infrastructure_id: Option<&str>,
    ) -> Result<Vec<TransitionOutcome>> {
        let proposals: Vec<Proposal> = proposals.into_iter().map(storable_proposal).collect();
        let infrastructure_id = infrastructure_id.map(storable);
        let infrastructure_id = infrastructure_id.as_deref();
        let mut tx = self.begin().await?;
        let (outcomes, wakes, changed) = self
            .apply_proposals(&mut tx, run_id, proposals, &guard, infrastructure_id)
            .await?;
        if changed {
            tx.commit().await?;
            if wakes {
                self.notify_local();
            }
        }
        Ok(outcomes)
    }

    /// Locks and reads the run, lets [`decide_sequence`] decide the proposals, then writes the
    /// last accepted row (guarded by the row version), one history row and one event per accepted
    /// proposal. Returns the outcomes, whether waiters should be woken, and whether anything was
    /// written.
    async fn apply_proposals(
        &self,
        tx: &mut Tx,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: &TransitionGuard,
        infrastructure_id: Option<&str>,
    ) -> Result<(Vec<TransitionOutcome>, bool, bool)> {
        let (read, version, recorded) = self.lock_run(tx, run_id, &proposals).await?;
        let now = from_micros(now_micros());
        let decisions = decide_sequence(
            &RunRecord::of(&read),
            &proposals,
            guard,
            &recorded,
            infrastructure_id,
            now,
        );
        let mut plan = Plan::new(read, decisions, &proposals);
        plan.retry(now);
        if plan.steps.is_empty() {
            return Ok((plan.outcomes, false, false));
        }
        let Plan {
            mut outcomes,
            steps,
            current,
            wakes,
            infrastructure,
            summary,
        } = plan;
        let updated = sqlx::query(&format!(
            "UPDATE flow_runs SET state_type = $1, state_name = $2, state_message = $3, state_timestamp = $4, \
             lease_owner = $5, lease_expires = $6, infrastructure_id = $7, attempt = $8, \
             version = version + 1, updated = $4, scheduled_time = $11 \
             WHERE id = $9 AND version = $10 RETURNING {RUN_COLUMNS}"
        ))
        .bind(current.state.state_type.as_str())
        .bind(current.state.name.clone())
        .bind(current.state.message.clone())
        .bind(to_micros(now))
        .bind(current.lease_owner.clone())
        .bind(current.lease_expires.map(to_micros))
        .bind(current.infrastructure_id.clone())
        .bind(current.attempt)
        .bind(run_id.to_string())
        .bind(version)
        .bind(to_micros(current.scheduled_time))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = updated else {
            // Cannot happen while the row is locked, but a lost race must never pass silently.
            let first = steps[0].1;
            return Ok((
                vec![TransitionOutcome::Rejected {
                    reason: Rejection::StateChanged {
                        expected: first,
                        current: first,
                    },
                    run: current,
                }],
                false,
                false,
            ));
        };
        let stored = run_from_row(&row, self.secret_key())?;
        if let Some(TransitionOutcome::Accepted(last)) = outcomes
            .iter_mut()
            .rev()
            .find(|o| matches!(o, TransitionOutcome::Accepted(_)))
        {
            *last = stored;
        }
        let history: Vec<HistoryRow> = steps
            .iter()
            .map(|(run, _, tid)| HistoryRow {
                run,
                transition_id: tid.clone(),
            })
            .collect();
        insert_history(tx, &history).await?;
        let mut events: Vec<EventRow> = steps
            .iter()
            .map(|(run, from, _)| transition_event(run, *from))
            .collect();
        if let Some((step, summary)) = summary {
            let attempt = steps[step].0.attempt;
            super::summaries::write_summary(tx, run_id, attempt, &summary).await?;
            events[step].payload["error_summary"] = json!(summary);
        }
        if let Some(infra) = infrastructure {
            events.push(EventRow {
                occurred: to_micros(now),
                ..super::flow_run_event(
                    &current,
                    "flow_run.infrastructure_assigned",
                    json!({"infrastructure_id": infra, "controller": guard.lease_owner}),
                )
            });
        }
        insert_event_rows(tx, &events).await?;
        if wakes {
            self.notify_in(tx).await?;
        }
        Ok((outcomes, wakes, true))
    }

    /// Reads the run locked for this transaction (PostgreSQL; SQLite's write transaction already
    /// excludes others): the run, its row version, and which of the proposals' transition ids its
    /// history already holds.
    async fn lock_run(
        &self,
        tx: &mut Tx,
        run_id: Uuid,
        proposals: &[Proposal],
    ) -> Result<(FlowRun, i64, Vec<String>)> {
        let sql = format!(
            "SELECT {RUN_COLUMNS}, CASE WHEN EXISTS (SELECT 1 FROM state_history h \
             WHERE h.run_id = flow_runs.id AND h.transition_id IN ({})) THEN 1 ELSE 0 END AS seen \
             FROM flow_runs WHERE id = $1{}",
            placeholders(2, proposals.len().max(1)),
            self.for_update()
        );
        let mut q = sqlx::query(&sql).bind(run_id.to_string());
        if proposals.is_empty() {
            q = q.bind(String::new());
        }
        for p in proposals {
            q = q.bind(p.transition_id.clone());
        }
        let row = q
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| not_found("flow run", run_id))?;
        let run = run_from_row(&row, self.secret_key())?;
        let version: i64 = row.try_get("version")?;
        let mut recorded: Vec<String> = vec![];
        if row.try_get::<i64, _>("seen")? != 0 {
            let sql = format!(
                "SELECT transition_id FROM state_history WHERE run_id = $1 AND transition_id IN ({})",
                placeholders(2, proposals.len())
            );
            let mut q = sqlx::query(&sql).bind(run_id.to_string());
            for p in proposals {
                q = q.bind(p.transition_id.clone());
            }
            for r in q.fetch_all(&mut **tx).await? {
                recorded.push(r.try_get("transition_id")?);
            }
        }
        Ok((run, version, recorded))
    }

    /// Records the provider's infrastructure id of a PENDING run the caller holds, moving it to
    /// PENDING/InfrastructurePending. Returns false when the run is not (any more) the caller's to write.
    pub async fn set_infrastructure(
        &self,
        run_id: Uuid,
        owner: &str,
        infrastructure_id: &str,
    ) -> Result<bool> {
        self.set_attempt_infrastructure(run_id, None, owner, infrastructure_id)
            .await
    }

    /// [`Store::set_infrastructure`] for the job of one attempt: false also when the run is in
    /// another attempt (it was retried meanwhile; issue 13).
    pub async fn set_attempt_infrastructure(
        &self,
        run_id: Uuid,
        attempt: Option<i64>,
        owner: &str,
        infrastructure_id: &str,
    ) -> Result<bool> {
        let infrastructure_id = storable(infrastructure_id);
        let infrastructure_id = infrastructure_id.as_ref();
        let mut tx = self.begin().await?;
        let now = now_micros();
        let row = sqlx::query(
            "UPDATE flow_runs SET infrastructure_id = $1, state_name = $2, updated = $3, version = version + 1 \
             WHERE id = $4 AND lease_owner = $5 AND state_type = 'PENDING' AND attempt = COALESCE($6, attempt) \
             RETURNING workspace_id",
        )
        .bind(infrastructure_id)
        .bind(names::INFRASTRUCTURE_PENDING)
        .bind(now)
        .bind(run_id.to_string())
        .bind(owner)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let ws = get_uuid(&row, "workspace_id")?;
        insert_event(
            &mut tx,
            ws,
            "flow_run.infrastructure_assigned",
            &run_id.to_string(),
            &json!({"infrastructure_id": infrastructure_id, "controller": owner}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Renames due-but-unclaimed runs `SCHEDULED/Late` once they are `threshold` past their scheduled
    /// time (history and event written). They stay claimable. Returns the ids renamed.
    pub async fn mark_late(
        &self,
        pools: &PoolSelector,
        threshold: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>> {
        let now = now_micros();
        let (cond, args) = pools.condition(3);
        let mut tx = self.begin().await?;
        let sql = mark_late_sql(self.backend(), &cond, limit);
        let mut q = sqlx::query(&sql)
            .bind(now)
            .bind(now - lease_micros(threshold));
        q = bind_all(q, args);
        let rows = q.fetch_all(&mut *tx).await?;
        let runs = rows
            .iter()
            .map(|r| run_from_row(r, self.secret_key()))
            .collect::<Result<Vec<_>>>()?;
        if runs.is_empty() {
            return Ok(vec![]);
        }
        record_transitions(&mut tx, &runs, StateType::Scheduled, "late").await?;
        tx.commit().await?;
        Ok(runs.iter().map(|r| r.id).collect())
    }
}

/// The late-run sweep of [`Store::mark_late`]: `$1` now, `$2` the time before which a run is
/// late, the pool condition's arguments from `$3` (shared with [`Store::explain_mark_late`]).
/// The outer state check guards against a claim committed meanwhile on PostgreSQL; on SQLite
/// (one writer) it is kept out of index choice (`+state_type`), where it made SQLite read every
/// SCHEDULED run instead of the late ones by id.
pub(crate) fn mark_late_sql(backend: crate::store::Backend, pool_cond: &str, limit: i64) -> String {
    let recheck = match backend {
        crate::store::Backend::Postgres => "state_type",
        crate::store::Backend::Sqlite => "+state_type",
    };
    format!(
        "UPDATE flow_runs SET state_name = '{late}', state_timestamp = $1, updated = $1, version = version + 1 \
         WHERE id IN (SELECT r.id FROM flow_runs r JOIN work_pools p ON p.id = r.pool_id \
         WHERE r.state_type = 'SCHEDULED' AND r.state_name = 'Scheduled' AND r.scheduled_time < $2 AND {pool_cond} \
         ORDER BY r.scheduled_time LIMIT {limit}) AND {recheck} = 'SCHEDULED' RETURNING {RUN_COLUMNS}",
        late = names::LATE,
        limit = limit.clamp(1, 10_000),
    )
}

/// A proposal whose texts PostgreSQL can store (they come from jobs and providers: see
/// [`storable`]).
fn storable_proposal(mut proposal: Proposal) -> Proposal {
    let fix = |t: &mut Option<String>| {
        if let Some(text) = t.as_mut() {
            if let std::borrow::Cow::Owned(fixed) = storable(text) {
                *text = fixed;
            }
        }
    };
    fix(&mut proposal.name);
    fix(&mut proposal.message);
    if let std::borrow::Cow::Owned(fixed) = storable(&proposal.transition_id) {
        proposal.transition_id = fixed;
    }
    proposal
}
