//! [`ControlPlane`] in memory: for unit tests of the controller and for trying a controller
//! without a database. Several controllers share one plane through
//! [`MemoryPlane::for_controller`]. Proposals go through the store's own rules
//! ([`decide_sequence`]: the transition table, compare-and-set, holds, repeated transition ids,
//! lease, infrastructure and attempt effects), applied to the run as the store writes them; it
//! has no queues, pauses or concurrency limits: every due SCHEDULED run is claimable, workspaces
//! in turn within the claim's per-workspace quota, like the store's claim.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use super::plane::{ControlPlane, Guard, LogEntry, PlaneError, PlaneResult};
use crate::model::{Deployment, FlowRun, State, WorkPool};
use crate::state::{
    decide_sequence, names, retry_after, Decision, Proposal, RunRecord, StateType, TransitionGuard,
};
use crate::store::{round_robin, TransitionOutcome, WorkspaceQuota};

/// One accepted transition as the memory plane keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The state type entered.
    pub state_type: StateType,
    /// Its name.
    pub name: String,
    /// Its message.
    pub message: Option<String>,
    /// The proposal's id.
    pub transition_id: String,
}

impl Transition {
    /// The history entry of `run` having just entered its state through `transition_id`.
    fn entered(run: &FlowRun, transition_id: String) -> Self {
        Transition {
            state_type: run.state.state_type,
            name: run.state.name.clone(),
            message: run.state.message.clone(),
            transition_id,
        }
    }
}

#[derive(Default)]
struct Runs {
    runs: BTreeMap<Uuid, FlowRun>,
    history: HashMap<Uuid, Vec<Transition>>,
    pools: HashMap<Uuid, WorkPool>,
    deployments: HashMap<Uuid, Deployment>,
    logs: HashMap<Uuid, Vec<LogEntry>>,
}

/// A control plane in memory, seen as one controller (`owner`).
#[derive(Clone)]
pub struct MemoryPlane {
    owner: String,
    lease: Duration,
    runs: Arc<Mutex<Runs>>,
    changes: Arc<Notify>,
}

impl MemoryPlane {
    /// An empty plane seen as controller `owner`, whose holds last `lease`.
    pub fn new(owner: &str, lease: Duration) -> Self {
        MemoryPlane {
            owner: owner.to_string(),
            lease,
            runs: Arc::default(),
            changes: Arc::default(),
        }
    }

    /// The same runs seen as another controller.
    pub fn for_controller(&self, owner: &str) -> Self {
        MemoryPlane {
            owner: owner.to_string(),
            ..self.clone()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a pool of `pool_type` with this base job template.
    pub fn add_pool(&self, name: &str, pool_type: &str, base_job_template: Value) -> WorkPool {
        let now = Utc::now();
        let pool = WorkPool {
            id: Uuid::now_v7(),
            workspace_id: Uuid::nil(),
            name: name.into(),
            pool_type: pool_type.into(),
            description: None,
            base_job_template,
            concurrency_limit: None,
            paused: false,
            created: now,
            updated: now,
            submit_rate: None,
            overridable_variables: None,
            aws_external_id: None,
        };
        self.lock().pools.insert(pool.id, pool.clone());
        pool
    }

    /// Adds a deployment of `pool` with these job variables.
    pub fn add_deployment(
        &self,
        pool: &WorkPool,
        name: &str,
        job_variables: Map<String, Value>,
    ) -> Deployment {
        let now = Utc::now();
        let deployment = Deployment {
            id: Uuid::now_v7(),
            workspace_id: pool.workspace_id,
            name: name.into(),
            work_pool: pool.name.clone(),
            work_pool_id: pool.id,
            work_queue: "default".into(),
            work_queue_id: Uuid::nil(),
            job_variables,
            parameters: Map::new(),
            concurrency_limit: None,
            paused: false,
            created: now,
            updated: now,
            retry: Default::default(),
            tags: vec![],
        };
        self.lock()
            .deployments
            .insert(deployment.id, deployment.clone());
        deployment
    }

    /// Adds a SCHEDULED run of `deployment`, due at `scheduled_time`.
    pub fn add_run(&self, deployment: &Deployment, scheduled_time: DateTime<Utc>) -> FlowRun {
        let now = Utc::now();
        let run = FlowRun {
            id: Uuid::now_v7(),
            workspace_id: deployment.workspace_id,
            deployment_id: deployment.id,
            deployment: deployment.name.clone(),
            work_pool: deployment.work_pool.clone(),
            work_pool_id: deployment.work_pool_id,
            work_queue: deployment.work_queue.clone(),
            work_queue_id: deployment.work_queue_id,
            parameters: deployment.parameters.clone(),
            job_variables: Map::new(),
            scheduled_time,
            state: State {
                state_type: StateType::Scheduled,
                name: StateType::Scheduled.default_name().into(),
                message: None,
                timestamp: now,
            },
            error_summary: None,
            attempt: 1,
            infrastructure_id: None,
            idempotency_key: None,
            lease_owner: None,
            lease_expires: None,
            last_heartbeat: None,
            created: now,
            updated: now,
            retry: deployment.retry.clone(),
            tags: deployment.tags.clone(),
        };
        self.put_run(run.clone());
        run
    }

    /// Stores `run` as given (tests shape runs with it: another holder, an expired hold, …).
    pub fn put_run(&self, run: FlowRun) {
        self.lock().runs.insert(run.id, run);
        self.changes.notify_waiters();
    }

    /// Removes a deployment (its runs stay).
    pub fn remove_deployment(&self, id: Uuid) {
        self.lock().deployments.remove(&id);
    }

    /// The run now, if it exists.
    pub fn get(&self, run_id: Uuid) -> Option<FlowRun> {
        self.lock().runs.get(&run_id).cloned()
    }

    /// Every accepted transition of a run, oldest first.
    pub fn history(&self, run_id: Uuid) -> Vec<Transition> {
        self.lock()
            .history
            .get(&run_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The run's stored log lines.
    pub fn logs(&self, run_id: Uuid) -> Vec<LogEntry> {
        self.lock().logs.get(&run_id).cloned().unwrap_or_default()
    }

    /// The rules' guard for a proposal this controller makes under `guard`.
    fn transition_guard(&self, guard: Guard) -> TransitionGuard {
        TransitionGuard {
            expected: guard.expected,
            lease_owner: guard.held.then(|| self.owner.clone()),
            attempt: guard.attempt,
        }
    }

    fn hold_until(&self) -> Option<DateTime<Utc>> {
        Some(Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or_default())
    }

    /// Applies `change` to the run if this controller holds it; returns whether it does.
    fn if_held(&self, run_id: Uuid, change: impl FnOnce(&mut FlowRun)) -> PlaneResult<bool> {
        let mut runs = self.lock();
        let run = runs
            .runs
            .get_mut(&run_id)
            .ok_or_else(|| not_found("flow run", run_id))?;
        let held = self.holds(run);
        if held {
            change(run);
        }
        Ok(held)
    }

    fn select(&self, keep: impl Fn(&FlowRun) -> bool) -> Vec<FlowRun> {
        self.lock()
            .runs
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }
}

fn not_found(what: &'static str, id: Uuid) -> PlaneError {
    PlaneError::NotFound {
        what,
        key: id.to_string(),
    }
}

fn is_orphan(run: &FlowRun, now: DateTime<Utc>) -> bool {
    run.state.state_type.is_active()
        && (run.lease_owner.is_none() || run.lease_expires.is_some_and(|t| t < now))
}

impl Runs {
    /// Decides `proposals` with [`decide_sequence`], the store's rules, and applies what it
    /// decided to the run and its history the way the store writes it.
    fn propose(
        &mut self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: &TransitionGuard,
        infrastructure_id: Option<&str>,
    ) -> PlaneResult<Vec<TransitionOutcome>> {
        let run = self
            .runs
            .get_mut(&run_id)
            .ok_or_else(|| not_found("flow run", run_id))?;
        let history = self.history.entry(run_id).or_default();
        let recorded: Vec<String> = history.iter().map(|t| t.transition_id.clone()).collect();
        let now = Utc::now();
        let decisions = decide_sequence(
            &RunRecord::of(run),
            &proposals,
            guard,
            &recorded,
            infrastructure_id,
            now,
        );
        let mut outcomes = Vec::with_capacity(decisions.len());
        for (decision, proposal) in decisions.into_iter().zip(proposals) {
            let outcome = match decision {
                Decision::NoOp => TransitionOutcome::Duplicate(run.clone()),
                Decision::Rejected(reason) => TransitionOutcome::Rejected {
                    reason,
                    run: run.clone(),
                },
                Decision::Accepted(transition) => {
                    *run = transition.applied_to(run);
                    let tid = proposal.transition_id;
                    history.push(Transition::entered(run, tid.clone()));
                    // The store's retry rule (docs/retries.md).
                    let record = RunRecord::of(run);
                    if let Some(retry) = retry_after(&record, transition.from, &run.retry, now, 0.0)
                    {
                        *run = retry.transition.applied_to(run);
                        run.scheduled_time = retry.scheduled_time;
                        history.push(Transition::entered(run, format!("retry-{tid}")));
                    }
                    TransitionOutcome::Accepted(run.clone())
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

#[async_trait]
impl ControlPlane for MemoryPlane {
    async fn claim_due(&self, limit: usize, quota: &WorkspaceQuota) -> PlaneResult<Vec<FlowRun>> {
        let now = Utc::now();
        let mut due =
            self.select(|r| r.state.state_type == StateType::Scheduled && r.scheduled_time <= now);
        due.sort_by_key(|r| (r.scheduled_time, r.id));
        // As the store claims: workspaces in turn, none past its quota.
        let due = round_robin(due, |r| r.workspace_id);
        let mut taken: HashMap<Uuid, usize> = HashMap::new();
        let mut claimed = vec![];
        let guard = self.transition_guard(Guard::held_in(StateType::Scheduled));
        let until = self.hold_until();
        let mut runs = self.lock();
        for run in due {
            if claimed.len() >= limit {
                break;
            }
            let workspace_taken = taken.entry(run.workspace_id).or_default();
            if *workspace_taken >= quota.room(&run.workspace_id) {
                continue;
            }
            let claim = Proposal::new(StateType::Pending).named(names::SUBMITTING);
            let outcome = runs.propose(run.id, vec![claim], &guard, None)?;
            if let Some(TransitionOutcome::Accepted(mut run)) = outcome.into_iter().next() {
                // A claim holds the run for this plane's lease, as the store's claim does.
                run.lease_expires = until;
                runs.runs.insert(run.id, run.clone());
                *workspace_taken += 1;
                claimed.push(run);
            }
        }
        Ok(claimed)
    }

    async fn next_due(&self) -> PlaneResult<Option<DateTime<Utc>>> {
        let scheduled = self.select(|r| r.state.state_type == StateType::Scheduled);
        Ok(scheduled.iter().map(|r| r.scheduled_time).min())
    }

    fn holds(&self, run: &FlowRun) -> bool {
        run.lease_owner.as_deref() == Some(self.owner.as_str())
    }

    async fn renew(&self, run_id: Uuid) -> PlaneResult<bool> {
        let until = self.hold_until();
        self.if_held(run_id, |run| run.lease_expires = until)
    }

    async fn renew_all(&self) -> PlaneResult<u64> {
        let until = self.hold_until();
        let mut runs = self.lock();
        let mut renewed = 0;
        for run in runs.runs.values_mut() {
            if run.state.state_type.is_active() && self.holds(run) {
                run.lease_expires = until;
                renewed += 1;
            }
        }
        Ok(renewed)
    }

    async fn release(&self, run_id: Uuid) -> PlaneResult<bool> {
        self.if_held(run_id, |run| {
            run.lease_owner = None;
            run.lease_expires = None;
        })
    }

    async fn held_runs(&self) -> PlaneResult<Vec<FlowRun>> {
        Ok(self.select(|r| r.state.state_type.is_active() && self.holds(r)))
    }

    async fn cancellations(&self) -> PlaneResult<Vec<FlowRun>> {
        Ok(self.select(|r| r.state.state_type == StateType::Cancelling && self.holds(r)))
    }

    async fn orphans(&self, limit: usize) -> PlaneResult<Vec<FlowRun>> {
        let now = Utc::now();
        let mut orphans = self.select(|r| is_orphan(r, now));
        orphans.truncate(limit);
        Ok(orphans)
    }

    async fn adopt(&self, run: &FlowRun) -> PlaneResult<Option<FlowRun>> {
        let until = self.hold_until();
        let mut runs = self.lock();
        let Some(stored) = runs.runs.get_mut(&run.id) else {
            return Ok(None);
        };
        if !is_orphan(stored, Utc::now()) {
            return Ok(None);
        }
        stored.lease_owner = Some(self.owner.clone());
        stored.lease_expires = until;
        Ok(Some(stored.clone()))
    }

    async fn mark_late(&self, after: Duration) -> PlaneResult<usize> {
        let cutoff = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
        let mut runs = self.lock();
        let mut late = 0;
        for run in runs.runs.values_mut() {
            if run.state.state_type == StateType::Scheduled
                && run.state.name == StateType::Scheduled.default_name()
                && run.scheduled_time < cutoff
            {
                run.state.name = names::LATE.into();
                late += 1;
            }
        }
        Ok(late)
    }

    async fn silent_runs(&self, silence: Duration) -> PlaneResult<Vec<FlowRun>> {
        let cutoff = Utc::now() - chrono::Duration::from_std(silence).unwrap_or_default();
        Ok(self.select(|r| {
            r.state.state_type == StateType::Running && r.last_heartbeat.is_some_and(|t| t < cutoff)
        }))
    }

    async fn run(&self, run_id: Uuid) -> PlaneResult<FlowRun> {
        self.get(run_id)
            .ok_or_else(|| not_found("flow run", run_id))
    }

    async fn propose(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: Guard,
        infrastructure_id: Option<&str>,
    ) -> PlaneResult<Vec<TransitionOutcome>> {
        let guard = self.transition_guard(guard);
        let outcomes = self
            .lock()
            .propose(run_id, proposals, &guard, infrastructure_id)?;
        self.changes.notify_waiters();
        Ok(outcomes)
    }

    async fn record_infrastructure(
        &self,
        run_id: Uuid,
        infrastructure_id: &str,
    ) -> PlaneResult<bool> {
        let mut runs = self.lock();
        let Some(run) = runs.runs.get_mut(&run_id) else {
            return Ok(false);
        };
        if run.state.state_type != StateType::Pending || !self.holds(run) {
            return Ok(false);
        }
        run.infrastructure_id = Some(infrastructure_id.to_string());
        run.state.name = names::INFRASTRUCTURE_PENDING.into();
        Ok(true)
    }

    async fn record_attempt_infrastructure(
        &self,
        run: &FlowRun,
        infrastructure_id: &str,
    ) -> PlaneResult<bool> {
        let current = self.lock().runs.get(&run.id).map(|r| r.attempt);
        if current != Some(run.attempt) {
            return Ok(false);
        }
        self.record_infrastructure(run.id, infrastructure_id).await
    }

    async fn append_logs(&self, run_id: Uuid, lines: &[LogEntry]) -> PlaneResult<()> {
        let mut runs = self.lock();
        runs.logs
            .entry(run_id)
            .or_default()
            .extend_from_slice(lines);
        Ok(())
    }

    async fn pool_of(&self, run: &FlowRun) -> PlaneResult<WorkPool> {
        let pool = self.lock().pools.get(&run.work_pool_id).cloned();
        pool.ok_or_else(|| not_found("work pool", run.work_pool_id))
    }

    async fn deployment_of(&self, run: &FlowRun) -> PlaneResult<Deployment> {
        let deployment = self.lock().deployments.get(&run.deployment_id).cloned();
        deployment.ok_or_else(|| not_found("deployment", run.deployment_id))
    }

    /// The memory plane's one workspace holds every grant.
    async fn workspace_grants(
        &self,
        _run: &FlowRun,
    ) -> PlaneResult<(String, crate::identity::Grants)> {
        Ok((
            "default".into(),
            crate::identity::WorkspaceGrant::ALL.into_iter().collect(),
        ))
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
