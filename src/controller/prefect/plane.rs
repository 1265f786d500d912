//! [`PrefectPlane`]: the [`ControlPlane`] over Prefect's REST API (see the module docs of
//! [`super`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use super::client::{segment, PrefectClient};

mod claims;
use super::convert::{PfDeployment, PfFlowRun, PfState, PfWorkPool, PREFECT_WORKSPACE};
use super::prepare::{self, JobFacts, ResolveError};
use super::PrefectSettings;
use crate::controller::plane::{ControlPlane, Guard, LogEntry, PlaneError, PlaneResult};
use crate::identity::{Grants, WorkspaceGrant};
use crate::job::JobError;
use crate::model::{Deployment, FlowRun, WorkPool};
use crate::state::{Proposal, Rejection, StateType};
use crate::store::{TransitionOutcome, WorkspaceQuota};

/// The name of the SCHEDULED state an adopting controller parks an orphan in, due far ahead so
/// no ordinary claim takes it, before its own PENDING proposal (the lock) takes it over.
pub const AWAITING_ADOPTION: &str = "AwaitingAdoption";
/// How long the served pool list is reused.
const POOLS_TTL: Duration = Duration::from_secs(10);
/// Shortest pause between two orphan scans.
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(5);
/// Shortest pause between two cancellation scans.
const CANCEL_SCAN_EVERY: Duration = Duration::from_millis(500);
/// How often a claiming controller sends its worker heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long the list of a pool's live pushpool controllers is reused.
const PEERS_TTL: Duration = Duration::from_secs(2);
/// Claims proposed at once.
const CLAIM_CONCURRENCY: usize = 8;
/// Most runs one claim hands out: the controller starts their jobs while it claims the next
/// ones (PENDING proposals are written one after the other by a Prefect server on SQLite).
const CLAIM_BATCH: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The message of the PENDING state a controller claims a run with.
pub fn claim_message(controller: &str) -> String {
    format!("pushpool controller `{controller}` claimed this run")
}

/// The controller a PENDING state's message names as its claimer.
pub fn claimer(message: Option<&str>) -> Option<&str> {
    let rest = message?.strip_prefix("pushpool controller `")?;
    rest.split('`').next()
}

/// What the plane remembers of a run for the job's preparation.
#[derive(Debug, Clone)]
struct RunNames {
    name: String,
    flow_id: Option<Uuid>,
}

/// A served pool as last listed.
#[derive(Debug, Clone)]
struct Served {
    name: String,
    id: Uuid,
}

/// The control plane over a Prefect API. One per controller.
pub struct PrefectPlane {
    client: PrefectClient,
    settings: PrefectSettings,
    id: String,
    types: Vec<String>,
    held: Mutex<HashSet<Uuid>>,
    names: Mutex<HashMap<Uuid, RunNames>>,
    flows: Mutex<HashMap<Uuid, String>>,
    served: Mutex<Option<(Instant, Vec<Served>)>>,
    next_due: Mutex<Option<DateTime<Utc>>>,
    last_orphan_scan: Mutex<Option<Instant>>,
    last_cancel_scan: Mutex<Option<Instant>>,
    peers: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    last_heartbeat: Mutex<Option<Instant>>,
    started: Instant,
    changes: Arc<Notify>,
}

impl PrefectPlane {
    /// The plane of controller `id` serving pools of the `types` (the registry's pool types).
    pub fn new(settings: PrefectSettings, id: &str, types: Vec<String>) -> Result<Self, String> {
        let client = PrefectClient::new(&settings.api_url, settings.auth.clone())?;
        Ok(PrefectPlane {
            client,
            settings,
            id: id.to_string(),
            types,
            held: Mutex::new(HashSet::new()),
            names: Mutex::new(HashMap::new()),
            flows: Mutex::new(HashMap::new()),
            served: Mutex::new(None),
            next_due: Mutex::new(None),
            last_orphan_scan: Mutex::new(None),
            last_cancel_scan: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            last_heartbeat: Mutex::new(None),
            started: Instant::now(),
            changes: Arc::new(Notify::new()),
        })
    }

    /// The API client.
    pub fn client(&self) -> &PrefectClient {
        &self.client
    }

    fn is_held(&self, id: Uuid) -> bool {
        lock(&self.held).contains(&id)
    }

    /// The run in pushpool's model; a terminal run is forgotten (no longer held: the flow may
    /// have ended it itself).
    fn model(&self, run: &PfFlowRun, pool: Option<(&str, Uuid)>) -> FlowRun {
        if run.state_type().is_some_and(StateType::is_terminal) {
            lock(&self.names).remove(&run.id);
            let holder = lock(&self.held).remove(&run.id).then_some(self.id.as_str());
            return run.to_model(pool, holder);
        }
        lock(&self.names).insert(
            run.id,
            RunNames {
                name: run.name.clone(),
                flow_id: run.flow_id,
            },
        );
        let holder = self.is_held(run.id).then_some(self.id.as_str());
        run.to_model(pool, holder)
    }

    async fn read(&self, run_id: Uuid) -> PlaneResult<PfFlowRun> {
        let v = self.client.get(&format!("/flow_runs/{run_id}")).await?;
        PfFlowRun::parse(&v).map_err(|e| PlaneError::Failed(e.into()))
    }

    /// The pools served: `--pool` names (or all pools) whose type has a provider here, not
    /// paused. Listed at most every 10 s.
    async fn served_pools(&self) -> PlaneResult<Vec<Served>> {
        if let Some((at, pools)) = lock(&self.served).as_ref() {
            if at.elapsed() < POOLS_TTL {
                return Ok(pools.clone());
            }
        }
        let filter = if self.settings.pools.is_empty() {
            json!({})
        } else {
            json!({"work_pools": {"name": {"any_": self.settings.pools}}})
        };
        let answer = self.client.post("/work_pools/filter", &filter).await?;
        let mut pools = Vec::new();
        for item in answer.as_array().into_iter().flatten() {
            let Ok(pool) = PfWorkPool::parse(item) else {
                continue;
            };
            if self.types.contains(&pool.pool_type) && !pool.is_paused {
                pools.push(Served {
                    name: pool.name,
                    id: pool.id,
                });
            }
        }
        *lock(&self.served) = Some((Instant::now(), pools.clone()));
        Ok(pools)
    }

    /// Proposes a state; `Ok((accepted, state))` with Prefect's answer.
    async fn set_state(
        &self,
        run_id: Uuid,
        state_type: StateType,
        name: Option<&str>,
        message: Option<&str>,
        scheduled_time: Option<DateTime<Utc>>,
    ) -> PlaneResult<(bool, Option<PfState>, String)> {
        let mut state = json!({
            "type": state_type.as_str(),
            "name": name.unwrap_or(state_type.default_name()),
            "message": message,
        });
        if let Some(t) = scheduled_time {
            state["state_details"] = json!({"scheduled_time": t.to_rfc3339()});
        }
        let path = format!("/flow_runs/{run_id}/set_state");
        let answer = self
            .client
            .post(&path, &json!({"state": state, "force": false}))
            .await?;
        let status = answer
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let new_state = answer
            .get("state")
            .and_then(|s| serde_json::from_value::<PfState>(s.clone()).ok());
        let reason = answer
            .pointer("/details/reason")
            .and_then(Value::as_str)
            .unwrap_or(&status)
            .to_string();
        Ok((status == "ACCEPT", new_state, reason))
    }

    /// Claims one candidate with the PENDING proposal; `None` when someone else has it.
    async fn claim_one(&self, pool: &Served, run: PfFlowRun) -> PlaneResult<Option<FlowRun>> {
        let message = claim_message(&self.id);
        let (accepted, state, reason) = self
            .set_state(run.id, StateType::Pending, None, Some(&message), None)
            .await?;
        if !accepted {
            tracing::debug!(run_id = %run.id, %reason, "PENDING proposal not accepted: another controller or worker has the run");
            return Ok(None);
        }
        if !self.first_pending(run.id, state.as_ref()).await? {
            tracing::info!(run_id = %run.id, "another claimer's PENDING came first (Prefect accepted both); leaving the run to it");
            return Ok(None);
        }
        lock(&self.held).insert(run.id);
        let mut run = run;
        run.state = state;
        Ok(Some(self.model(&run, Some((&pool.name, pool.id)))))
    }

    async fn heartbeat(&self) -> PlaneResult<()> {
        let interval = (self.settings.orphan_after / 3).as_secs().max(1);
        for pool in self.served_pools().await? {
            let path = format!("/work_pools/{}/workers/heartbeat", segment(&pool.name));
            let body = json!({"name": self.id, "heartbeat_interval_seconds": interval});
            self.client.post(&path, &body).await?;
        }
        Ok(())
    }

    /// Runs of the served pools in the given state types (and names, if any).
    async fn filter_runs(&self, filter: Value) -> PlaneResult<Vec<PfFlowRun>> {
        let answer = self.client.post("/flow_runs/filter", &filter).await?;
        Ok(answer
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| PfFlowRun::parse(v).ok())
            .collect())
    }

    fn due_scan(last: &Mutex<Option<Instant>>, every: Duration) -> bool {
        let mut last = lock(last);
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// One proposal as Prefect sees it; `current` is the run as read just before.
    async fn propose_one(
        &self,
        current: &PfFlowRun,
        proposal: &Proposal,
    ) -> PlaneResult<TransitionOutcome> {
        let from = current.state_type().unwrap_or(StateType::Scheduled);
        let (to, message) = match proposal.state_type {
            // The flow engine reports RUNNING itself from inside the job.
            StateType::Running => return Ok(TransitionOutcome::Accepted(self.model(current, None))),
            // The job ended but the flow never reported its end: Prefect's workers call that
            // CRASHED (a job whose flow ended already reads terminal and is refused above).
            StateType::Completed => (
                StateType::Crashed,
                format!(
                    "the job's infrastructure ended{} but the flow run never reported a final state (did the job run `prefect flow-run execute`?)",
                    proposal.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                ),
            ),
            StateType::Failed => (
                StateType::Crashed,
                format!(
                    "the job's infrastructure ended before the flow run reported a final state: {}",
                    proposal.message.as_deref().unwrap_or("failed")
                ),
            ),
            other => (other, proposal.message.clone().unwrap_or_default()),
        };
        let message = (!message.is_empty()).then_some(message);
        let (accepted, state, reason) = self
            .set_state(
                current.id,
                to,
                proposal.name.as_deref(),
                message.as_deref(),
                None,
            )
            .await?;
        if accepted {
            let mut run = current.clone();
            run.state = state;
            return Ok(TransitionOutcome::Accepted(self.model(&run, None)));
        }
        tracing::debug!(run_id = %current.id, %reason, proposed = %to, "Prefect did not accept the proposal");
        let now = self.read(current.id).await?;
        Ok(TransitionOutcome::Rejected {
            reason: Rejection::IllegalTransition { from, to },
            run: self.model(&now, None),
        })
    }
}

/// PENDING and RUNNING are one for a guard: the flow moves between them on its own.
fn same_phase(a: StateType, b: StateType) -> bool {
    let active = |s| matches!(s, StateType::Pending | StateType::Running);
    a == b || (active(a) && active(b))
}

#[async_trait]
impl ControlPlane for PrefectPlane {
    async fn claim_due(&self, limit: usize, quota: &WorkspaceQuota) -> PlaneResult<Vec<FlowRun>> {
        let room = limit.min(quota.room(&PREFECT_WORKSPACE));
        // Heartbeats every few seconds (besides the renewer's), so a busy server answering some
        // of them 503 does not make this controller look gone to its peers.
        // Sent apart, so a slow answer never holds up a claim.
        if Self::due_scan(&self.last_heartbeat, HEARTBEAT_EVERY) {
            let (client, id) = (self.client.clone(), self.id.clone());
            let interval = (self.settings.orphan_after / 3).as_secs().max(1);
            let pools = self.served_pools().await?;
            tokio::spawn(async move {
                for pool in pools {
                    let path = format!("/work_pools/{}/workers/heartbeat", segment(&pool.name));
                    let body = json!({"name": id, "heartbeat_interval_seconds": interval});
                    if let Err(e) = client.post(&path, &body).await {
                        tracing::warn!(error = %e, "worker heartbeat failed");
                    }
                }
            });
        }
        if self.started.elapsed() < self.settings.start_grace {
            return Ok(Vec::new());
        }
        let early = chrono::Duration::from_std(self.settings.early).unwrap_or_default();
        // Runs due within `early` are claimed now; their submission waits for the due time.
        let now = Utc::now() + early;
        let ahead = chrono::Duration::from_std(self.settings.lookahead).unwrap_or_default();
        let mut candidates: Vec<(Served, PfFlowRun)> = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        for pool in self.served_pools().await? {
            let path = format!(
                "/work_pools/{}/get_scheduled_flow_runs",
                segment(&pool.name)
            );
            // Each live pushpool controller claims its own share of the runs (by run id), so
            // they never race for one run; Prefect's PENDING lock (not reliable on a server
            // with SQLite) then only separates pushpool from Prefect workers.
            let peers = self.peers(&pool.name).await?;
            let fetch = room.saturating_mul(peers.len()).clamp(1, 200); // Prefect's maximum
            let body = json!({"scheduled_before": (now + ahead).to_rfc3339(), "limit": fetch});
            let answer = self.client.post(&path, &body).await?;
            for item in answer.as_array().into_iter().flatten() {
                let Some(Ok(run)) = item.get("flow_run").map(PfFlowRun::parse) else {
                    continue;
                };
                let owner = &peers[(run.id.as_u128() % peers.len() as u128) as usize];
                // A vanished controller's share waits until its heartbeat is stale
                // (`orphan_after`); then the live ones share its runs.
                if *owner != self.id {
                    continue;
                }
                match run.due() {
                    Some(t) if t > now => next = Some(next.map_or(t, |n| n.min(t))),
                    _ => candidates.push((pool.clone(), run)),
                }
            }
        }
        candidates.sort_by_key(|(_, r)| r.due());
        let batch = room.min(CLAIM_BATCH);
        if candidates.len() > batch {
            next = Some(Utc::now());
            candidates.truncate(batch);
        }
        *lock(&self.next_due) = next;
        let claims = futures::stream::iter(candidates)
            .map(|(pool, run)| async move { self.claim_one(&pool, run).await })
            .buffer_unordered(CLAIM_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut claimed = Vec::new();
        for c in claims {
            match c {
                Ok(Some(run)) => claimed.push(run),
                Ok(None) => {}
                // The run may or may not be PENDING under this controller now; the orphan scan
                // finds it (its claim message names this controller) if it is.
                Err(e) => tracing::warn!(error = %e, "PENDING proposal failed"),
            }
        }
        Ok(claimed)
    }

    async fn next_due(&self) -> PlaneResult<Option<DateTime<Utc>>> {
        let poll = chrono::Duration::from_std(self.settings.poll).unwrap_or_default();
        let early = chrono::Duration::from_std(self.settings.early).unwrap_or_default();
        let fallback = Utc::now() + poll;
        Ok(Some(
            lock(&self.next_due).map_or(fallback, |t| (t - early).min(fallback)),
        ))
    }

    fn holds(&self, run: &FlowRun) -> bool {
        self.is_held(run.id)
    }

    async fn renew(&self, run_id: Uuid) -> PlaneResult<bool> {
        Ok(self.is_held(run_id))
    }

    async fn renew_all(&self) -> PlaneResult<u64> {
        self.heartbeat().await?;
        Ok(lock(&self.held).len() as u64)
    }

    async fn release(&self, run_id: Uuid) -> PlaneResult<bool> {
        Ok(lock(&self.held).remove(&run_id))
    }

    async fn held_runs(&self) -> PlaneResult<Vec<FlowRun>> {
        // Runs this id claimed before a restart are found by the orphan scan (their claim
        // message names this controller, which holds nothing yet).
        Ok(Vec::new())
    }

    async fn cancellations(&self) -> PlaneResult<Vec<FlowRun>> {
        let held: Vec<Uuid> = lock(&self.held).iter().copied().collect();
        if held.is_empty() || !Self::due_scan(&self.last_cancel_scan, CANCEL_SCAN_EVERY) {
            return Ok(Vec::new());
        }
        let filter = json!({"flow_runs": {"id": {"any_": held}, "state": {"type": {"any_": ["CANCELLING"]}}}});
        let runs = self.filter_runs(filter).await?;
        Ok(runs.iter().map(|r| self.model(r, None)).collect())
    }

    /// Runs left PENDING by a controller that is gone: the PENDING
    /// state's message names a pushpool controller whose worker heartbeat on the pool is older
    /// than `orphan_after` (or this controller itself, which lost the answer to its claim or
    /// restarted with the same id), and the state is at least that old. Runs PENDING under a
    /// Prefect worker (no pushpool claim message) are left alone. Among the live controllers one
    /// adopts each run (chosen by the run id), so they do not race for it; [`Self::adopt`]
    /// makes the take-over exclusive anyway.
    async fn orphans(&self, limit: usize) -> PlaneResult<Vec<FlowRun>> {
        if !Self::due_scan(&self.last_orphan_scan, ORPHAN_SCAN_EVERY) {
            return Ok(Vec::new());
        }
        let pools = self.served_pools().await?;
        if pools.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let filter = json!({
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "SCHEDULED"]}}},
            "work_pools": {"name": {"any_": names}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200,
        });
        let runs = self.filter_runs(filter).await?;
        let old = chrono::Duration::from_std(self.settings.orphan_after).unwrap_or_default();
        let now = Utc::now();
        let mut live_by_pool: HashMap<String, Vec<String>> = HashMap::new();
        let mut out = Vec::new();
        for run in runs {
            if out.len() >= limit || self.is_held(run.id) {
                continue;
            }
            let Some(state) = &run.state else { continue };
            if state.timestamp.is_some_and(|t| now - t < old) {
                continue;
            }
            let parked =
                state.state_type == "SCHEDULED" && state.name.as_deref() == Some(AWAITING_ADOPTION);
            let pool = run.work_pool_name.clone().unwrap_or_default();
            if !live_by_pool.contains_key(&pool) {
                let live = self.live_controllers(&pool).await?;
                live_by_pool.insert(pool.clone(), live);
            }
            let live = &live_by_pool[&pool];
            let mut mine = false;
            if !parked {
                if state.state_type != "PENDING" {
                    continue;
                }
                let Some(by) = claimer(state.message.as_deref()) else {
                    continue;
                };
                // Named by this controller, which does not hold it: a claim it lost or whose
                // answer it never saw. It takes it back itself.
                mine = by == self.id;
                if !mine && live.iter().any(|l| l == by) {
                    continue;
                }
            }
            let chosen = &live[(run.id.as_u128() % live.len() as u128) as usize];
            if mine || *chosen == self.id {
                out.push(self.model(&run, None));
            }
        }
        Ok(out)
    }

    /// Takes over an orphan through Prefect's lock: SCHEDULED `AwaitingAdoption` (due in an
    /// hour, so no ordinary claim takes it meanwhile), then this controller's own PENDING
    /// proposal, which only one claimer can win. The controller then looks the job up at its
    /// provider before submitting anything.
    async fn adopt(&self, run: &FlowRun) -> PlaneResult<Option<FlowRun>> {
        let current = self.read(run.id).await?;
        let Some(state) = current.state.clone() else {
            return Ok(None);
        };
        let parked =
            state.state_type == "SCHEDULED" && state.name.as_deref() == Some(AWAITING_ADOPTION);
        if !parked {
            // Still the PENDING state the scan saw (same claimer, same infrastructure).
            if state.state_type != "PENDING"
                || current.infrastructure_pid.clone().filter(|s| !s.is_empty())
                    != run.infrastructure_id
                || state.message != run.state.message
            {
                return Ok(None);
            }
            let message = format!(
                "adopted by pushpool controller `{}`: {}",
                self.id,
                state.message.as_deref().unwrap_or("its claimer vanished")
            );
            let later = Utc::now() + chrono::Duration::hours(1);
            let (ok, _, _) = self
                .set_state(
                    run.id,
                    StateType::Scheduled,
                    Some(AWAITING_ADOPTION),
                    Some(&message),
                    Some(later),
                )
                .await?;
            if !ok {
                return Ok(None);
            }
        }
        let claim = format!("{} (adopted)", claim_message(&self.id));
        let (ok, state, _) = self
            .set_state(run.id, StateType::Pending, None, Some(&claim), None)
            .await?;
        if !ok || !self.first_pending(run.id, state.as_ref()).await? {
            return Ok(None);
        }
        lock(&self.held).insert(run.id);
        let mut current = current;
        current.state = state;
        Ok(Some(self.model(&current, None)))
    }

    async fn mark_late(&self, _after: Duration) -> PlaneResult<usize> {
        Ok(0) // Prefect's server names late runs itself.
    }

    async fn silent_runs(&self, _silence: Duration) -> PlaneResult<Vec<FlowRun>> {
        Ok(Vec::new())
    }

    async fn run(&self, run_id: Uuid) -> PlaneResult<FlowRun> {
        let run = self.read(run_id).await?;
        Ok(self.model(&run, None))
    }

    async fn propose(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: Guard,
        infrastructure_id: Option<&str>,
    ) -> PlaneResult<Vec<TransitionOutcome>> {
        if let Some(infra) = infrastructure_id {
            let body = json!({"infrastructure_pid": infra});
            self.client
                .patch(&format!("/flow_runs/{run_id}"), &body)
                .await?;
        }
        let mut current = self.read(run_id).await?;
        let mut expected = guard.expected;
        let mut out = Vec::new();
        for proposal in proposals {
            let state = current.state_type().unwrap_or(StateType::Scheduled);
            let rejection = if guard.held && !self.is_held(run_id) {
                Some(Rejection::NotLeaseOwner { owner: None })
            } else if state.is_terminal() {
                Some(Rejection::AlreadyTerminal { current: state })
            } else {
                expected
                    .filter(|e| !same_phase(*e, state))
                    .map(|e| Rejection::StateChanged {
                        expected: e,
                        current: state,
                    })
            };
            if let Some(reason) = rejection {
                out.push(TransitionOutcome::Rejected {
                    reason,
                    run: self.model(&current, None),
                });
                break;
            }
            let outcome = self.propose_one(&current, &proposal).await?;
            let accepted = outcome.is_recorded();
            if accepted && proposal.state_type != StateType::Running {
                current = self.read(run_id).await?;
            }
            expected = None;
            out.push(outcome);
            if !accepted {
                break;
            }
        }
        Ok(out)
    }

    async fn record_infrastructure(
        &self,
        run_id: Uuid,
        infrastructure_id: &str,
    ) -> PlaneResult<bool> {
        let body = json!({"infrastructure_pid": infrastructure_id});
        self.client
            .patch(&format!("/flow_runs/{run_id}"), &body)
            .await?;
        let run = self.read(run_id).await?;
        Ok(self.is_held(run_id)
            && matches!(
                run.state_type(),
                Some(StateType::Pending | StateType::Running)
            ))
    }

    /// pushpool's own lines (`system`) go to the run's Prefect logs; the job's stdout and
    /// stderr do not: the flow engine inside the job sends its logs to Prefect itself.
    async fn append_logs(&self, run_id: Uuid, lines: &[LogEntry]) -> PlaneResult<()> {
        let logs: Vec<Value> = lines
            .iter()
            .filter(|(_, stream, _)| stream == "system")
            .map(|(at, _, line)| {
                json!({
                    "name": "pushpool",
                    "level": 20,
                    "message": line,
                    "timestamp": crate::model::from_micros(*at).to_rfc3339(),
                    "flow_run_id": run_id,
                })
            })
            .collect();
        if !logs.is_empty() {
            self.client.post("/logs/", &Value::Array(logs)).await?;
        }
        Ok(())
    }

    async fn pool_of(&self, run: &FlowRun) -> PlaneResult<WorkPool> {
        let v = self
            .client
            .get(&format!("/work_pools/{}", segment(&run.work_pool)))
            .await?;
        let pool = PfWorkPool::parse(&v).map_err(|e| PlaneError::Failed(e.into()))?;
        let mut template = pool.base_job_template.clone();
        prepare::hide_prefect_placeholders(&mut template);
        Ok(pool.to_model(template))
    }

    async fn deployment_of(&self, run: &FlowRun) -> PlaneResult<Deployment> {
        if run.deployment_id.is_nil() {
            return Err(PlaneError::NotFound {
                what: "deployment",
                key: "(the flow run has no deployment)".into(),
            });
        }
        let v = self
            .client
            .get(&format!("/deployments/{}", run.deployment_id))
            .await?;
        let d = PfDeployment::parse(&v).map_err(|e| PlaneError::Failed(e.into()))?;
        Ok(d.to_model(run.work_pool_id))
    }

    /// Every grant: like a Prefect worker, the controller runs Prefect's pools with its own
    /// identity (docs/prefect.md).
    async fn workspace_grants(&self, _run: &FlowRun) -> PlaneResult<(String, Grants)> {
        Ok(("prefect".into(), WorkspaceGrant::ALL.into_iter().collect()))
    }

    async fn finish_job(
        &self,
        run: &FlowRun,
        pool: &WorkPool,
        deployment: &Deployment,
        rendered: Value,
    ) -> PlaneResult<Result<Value, JobError>> {
        let refused = |message: String| JobError::Refused {
            pool_type: pool.pool_type.clone(),
            field: String::new(),
            message,
        };
        let mut rendered = rendered;
        prepare::restore_prefect_placeholders(&mut rendered);
        let resolved = match prepare::resolve_references(&self.client, rendered).await {
            Ok(v) => v,
            Err(ResolveError::Invalid(m)) => return Ok(Err(refused(m))),
            Err(ResolveError::Api(e)) => return Err(e.into()),
        };
        let Value::Object(mut config) = resolved else {
            return Ok(Err(refused(
                "the rendered job configuration is not an object".into(),
            )));
        };
        let names = lock(&self.names).get(&run.id).cloned();
        let names = match names {
            Some(n) => n,
            None => {
                let r = self.read(run.id).await?;
                RunNames {
                    name: r.name,
                    flow_id: r.flow_id,
                }
            }
        };
        let flow_name = match names.flow_id {
            None => None,
            Some(id) => {
                let cached = lock(&self.flows).get(&id).cloned();
                match cached {
                    Some(n) => Some(n),
                    None => {
                        let v = self.client.get(&format!("/flows/{id}")).await?;
                        let n = v.get("name").and_then(Value::as_str).map(str::to_string);
                        if let Some(n) = &n {
                            lock(&self.flows).insert(id, n.clone());
                        }
                        n
                    }
                }
            }
        };
        let template_keys: Vec<String> = pool
            .base_job_template
            .get("job_configuration")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let facts = JobFacts {
            flow_run_id: run.id,
            flow_run_name: names.name,
            flow_id: names.flow_id,
            flow_name,
            deployment_id: Some(deployment.id),
            deployment_name: Some(deployment.name.clone()),
            deployment_updated: Some(deployment.updated.to_rfc3339()),
            pool_name: pool.name.clone(),
            pool_id: pool.id,
            worker_name: self.id.clone(),
            api_url: self
                .settings
                .job_api_url
                .clone()
                .unwrap_or_else(|| self.client.base_url().to_string()),
            auth_env: self.client.auth().job_env(),
            cloud_run: pool.pool_type.starts_with("cloud-run"),
        };
        prepare::prepare_for_flow_run(&mut config, &template_keys, &facts);
        Ok(Ok(Value::Object(config)))
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
