//! `reconcile` driven tick by tick against the in-memory control plane and a scripted provider.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use pushpool_provider::{
    CancelOutcome, JobStatus, Lookup, Provider, ProviderError, Registry, RunSpec,
};
use serde_json::{json, Map, Value};

use super::*;
use crate::auth::RunTokens;
use crate::metrics::Metrics;
use crate::model::FlowRun;
use crate::state::{Proposal, StateType};

/// The fake provider's pool type.
pub(crate) const FAKE: &str = "fake";

/// The fake provider's job: a command that must not be empty.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub(crate) struct FakeJob {
    command: String,
}

#[derive(Default)]
struct Script {
    submits: VecDeque<Result<String, ProviderError>>,
    statuses: VecDeque<Result<JobStatus, ProviderError>>,
    lookup: Option<Lookup>,
    submitted: Vec<String>,
    cancelled: Vec<String>,
    cleaned: Vec<String>,
    /// Submit panics (a provider bug) instead of answering.
    panic_on_submit: bool,
    /// Set: the provider learns jobs' ends by itself, `wait_ended` returns once this is notified.
    ended: Option<Arc<tokio::sync::Notify>>,
}

/// A provider that answers what the test scripted, in order, and records what it was asked.
/// Unscripted: submit answers `fake-<n>`, status `Pending`, lookup `Absent`.
#[derive(Clone, Default)]
pub(crate) struct ScriptedProvider {
    script: Arc<Mutex<Script>>,
}

impl ScriptedProvider {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn on_submit(&self, answer: Result<&str, ProviderError>) -> &Self {
        self.script().submits.push_back(answer.map(str::to_string));
        self
    }
    fn on_status(&self, answer: Result<JobStatus, ProviderError>) -> &Self {
        self.script().statuses.push_back(answer);
        self
    }
    fn on_lookup(&self, answer: Lookup) -> &Self {
        self.script().lookup = Some(answer);
        self
    }
    fn submitted(&self) -> Vec<String> {
        self.script().submitted.clone()
    }
    fn cancelled(&self) -> Vec<String> {
        self.script().cancelled.clone()
    }
    fn cleaned(&self) -> Vec<String> {
        self.script().cleaned.clone()
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    type JobConfig = FakeJob;

    fn pool_type(&self) -> &'static str {
        FAKE
    }

    fn default_base_job_template(&self) -> Value {
        json!({
            "job_configuration": {"command": "{{ command }}", "run": "{{ flow_run.id }}"},
            "variables": {"type": "object", "properties": {
                "command": {"type": "string", "default": "echo hi"}
            }}
        })
    }

    fn validate(&self, rendered: &Value) -> Result<FakeJob, ProviderError> {
        let job: FakeJob = serde_json::from_value(rendered.clone())
            .map_err(|e| ProviderError::invalid("", e.to_string()))?;
        if job.command.is_empty() {
            return Err(ProviderError::invalid("command", "must not be empty"));
        }
        Ok(job)
    }

    async fn submit(&self, _run: &RunSpec, job: &FakeJob) -> Result<String, ProviderError> {
        let mut script = self.script();
        let n = script.submitted.len() + 1;
        script.submitted.push(job.command.clone());
        if script.panic_on_submit {
            drop(script);
            panic!("provider bug: submit panicked");
        }
        script
            .submits
            .pop_front()
            .unwrap_or_else(|| Ok(format!("fake-{n}")))
    }

    async fn status(&self, _id: &str, _job: &FakeJob) -> Result<JobStatus, ProviderError> {
        self.script()
            .statuses
            .pop_front()
            .unwrap_or(Ok(JobStatus::Pending))
    }

    async fn cancel(
        &self,
        id: &str,
        _job: &FakeJob,
        _grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        self.script().cancelled.push(id.to_string());
        Ok(CancelOutcome::Cancelled)
    }

    async fn wait_ended(&self, _id: &str, _job: &FakeJob) -> bool {
        let ended = self.script().ended.clone();
        match ended {
            Some(ended) => {
                ended.notified().await;
                true
            }
            None => false,
        }
    }

    async fn cleanup(&self, id: &str, _job: &FakeJob) -> Result<(), ProviderError> {
        self.script().cleaned.push(id.to_string());
        Ok(())
    }

    async fn lookup(&self, _run: &RunSpec, _job: &FakeJob) -> Result<Lookup, ProviderError> {
        Ok(self.script().lookup.clone().unwrap_or(Lookup::Absent))
    }
}

/// A controller's context over a memory plane with the scripted provider.
struct Bench {
    plane: MemoryPlane,
    provider: ScriptedProvider,
    ctx: Context,
    deployment: crate::model::Deployment,
}

fn config(id: &str) -> ControllerConfig {
    ControllerConfig {
        id: id.into(),
        submit_deadline: Duration::from_millis(400),
        ..ControllerConfig::default()
    }
}

fn bench_with(plane: MemoryPlane, provider: ScriptedProvider, id: &str) -> Bench {
    let mut registry = Registry::new();
    registry.register(Arc::new(provider.clone()));
    let deployment = plane.add_deployment(
        &plane.add_pool("fakes", FAKE, provider.default_base_job_template()),
        "d",
        Map::new(),
    );
    let ctx = Context::with_plane(
        Arc::new(plane.for_controller(id)),
        registry,
        config(id),
        RunTokens::new(b"t".to_vec()),
        Arc::new(Metrics::default()),
    );
    Bench {
        plane: plane.for_controller(id),
        provider,
        ctx,
        deployment,
    }
}

fn bench() -> Bench {
    bench_with(
        MemoryPlane::new("c1", Duration::from_secs(30)),
        ScriptedProvider::default(),
        "c1",
    )
}

impl Bench {
    /// A due run claimed by this controller, as its task starts with it.
    async fn claimed(&self) -> RunWork {
        self.plane.add_run(&self.deployment, Utc::now());
        let mut claimed = self
            .plane
            .claim_due(1, &WorkspaceQuota::unlimited())
            .await
            .unwrap();
        RunWork::new(claimed.remove(0), false)
    }

    /// One tick: re-read the run (as the run task does), reconcile, return the action.
    async fn tick(&self, work: &mut RunWork) -> Action {
        work.run = self.plane.get(work.run.id).unwrap();
        match reconcile(work, &self.ctx).await {
            Ok(action) => action,
            Err(e) => error_policy(work, &e, &self.ctx),
        }
    }

    fn state(&self, work: &RunWork) -> (StateType, String, Option<String>) {
        let run = self.plane.get(work.run.id).unwrap();
        (run.state.state_type, run.state.name, run.state.message)
    }

    /// Asserts the run stands in `state` under its default name, with `message`.
    fn assert_state(&self, work: &RunWork, state: StateType, message: Option<&str>) {
        let expected = (
            state,
            state.default_name().to_string(),
            message.map(str::to_string),
        );
        assert_eq!(self.state(work), expected);
    }

    fn history(&self, work: &RunWork) -> Vec<StateType> {
        let history = self.plane.history(work.run.id);
        history.iter().map(|t| t.state_type).collect()
    }

    /// Asks for a cancellation the way the API does (no hold, no expectation).
    async fn cancel_from_outside(&self, run: &FlowRun) {
        let outcomes = self
            .plane
            .propose(
                run.id,
                vec![Proposal::new(StateType::Cancelling)],
                Guard::default(),
                None,
            )
            .await
            .unwrap();
        assert!(outcomes[0].is_recorded(), "{outcomes:?}");
    }
}

fn poll(b: &Bench) -> Action {
    Action::requeue(b.ctx.config.poll_min)
}

#[tokio::test]
async fn submit_then_running_then_completed() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider
        .on_status(Ok(JobStatus::Pending))
        .on_status(Ok(JobStatus::Running))
        .on_status(Ok(JobStatus::Completed {
            summary: Some("done in 1s".into()),
        }));

    assert_eq!(b.tick(&mut work).await, poll(&b));
    assert_eq!(b.provider.submitted(), ["echo hi"]);
    let run = b.plane.get(work.run.id).unwrap();
    assert_eq!(run.infrastructure_id.as_deref(), Some("fake-1"));
    assert_eq!(
        b.state(&work),
        (StateType::Pending, "InfrastructurePending".into(), None)
    );

    assert!(b.tick(&mut work).await.requeue_after().is_some());
    assert_eq!(b.state(&work).0, StateType::Running);

    assert_eq!(b.tick(&mut work).await, Action::done());
    b.assert_state(&work, StateType::Completed, Some("done in 1s"));
    assert_eq!(
        b.history(&work),
        [StateType::Pending, StateType::Running, StateType::Completed]
    );
    assert_eq!(b.provider.cleaned(), ["fake-1"]);
    assert!(!b.plane.holds(&b.plane.get(work.run.id).unwrap()));
}

#[tokio::test]
async fn a_job_over_before_submit_returned_is_recorded_in_one_step() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider.on_status(Ok(JobStatus::Failed {
        message: "exit code 3".into(),
    }));
    assert_eq!(b.tick(&mut work).await, Action::done());
    b.assert_state(&work, StateType::Failed, Some("exit code 3"));
    assert_eq!(
        b.history(&work),
        [StateType::Pending, StateType::Running, StateType::Failed]
    );
    let run = b.plane.get(work.run.id).unwrap();
    assert_eq!(run.infrastructure_id.as_deref(), Some("fake-1"));
}

#[tokio::test]
async fn a_permanent_submit_failure_crashes_the_run_saying_what_to_fix() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider
        .on_submit(Err(ProviderError::permanent("quota exceeded")));
    assert_eq!(b.tick(&mut work).await, Action::done());
    b.assert_state(&work, StateType::Crashed, Some("submitting to the `fake` provider failed: quota exceeded; fix the pool or deployment configuration (or the provider's credentials) and run again"));
}

#[tokio::test]
async fn transient_submit_failures_are_retried_until_the_deadline() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider
        .on_submit(Err(ProviderError::transient("503")))
        .on_submit(Ok("fake-late"));
    assert_eq!(b.tick(&mut work).await, poll(&b));
    assert_eq!(b.provider.submitted().len(), 2, "retried once");
    let run = b.plane.get(work.run.id).unwrap();
    assert_eq!(run.infrastructure_id.as_deref(), Some("fake-late"));

    let b = bench();
    let mut work = b.claimed().await;
    for _ in 0..20 {
        b.provider.on_submit(Err(ProviderError::transient("503")));
    }
    assert_eq!(b.tick(&mut work).await, Action::done());
    let (state, _, message) = b.state(&work);
    assert_eq!(state, StateType::Crashed);
    let message = message.unwrap();
    let (start, end) = message.split_once("s, the last error: ").unwrap();
    assert!(
        start.starts_with("submitting to the `fake` provider kept failing for "),
        "{message}"
    );
    assert_eq!(
        end,
        "503; the provider may be throttling or down, run again later"
    );
}

#[tokio::test]
async fn the_job_failing_or_the_infrastructure_vanishing_ends_the_run() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider
        .on_status(Ok(JobStatus::Pending))
        .on_status(Ok(JobStatus::Failed {
            message: "exit code 1".into(),
        }));
    b.tick(&mut work).await;
    assert_eq!(b.tick(&mut work).await, Action::done());
    assert_eq!(
        b.history(&work),
        [StateType::Pending, StateType::Running, StateType::Failed]
    );

    let b = bench();
    let mut work = b.claimed().await;
    b.provider
        .on_status(Ok(JobStatus::Pending))
        .on_status(Err(ProviderError::NotFound {
            message: "gone".into(),
        }));
    b.tick(&mut work).await;
    assert_eq!(b.tick(&mut work).await, Action::done());
    b.assert_state(&work, StateType::Crashed, Some("infrastructure `fake-1` no longer exists at the `fake` provider (removed outside pushpool, or lost with a controller restart); the job's outcome is unknown"));
}

#[tokio::test]
async fn a_job_that_cannot_be_built_crashes_with_the_job_modules_message() {
    let b = bench();
    b.plane.add_run(&b.deployment, Utc::now());
    let mut run = b
        .plane
        .claim_due(1, &WorkspaceQuota::unlimited())
        .await
        .unwrap()
        .remove(0);
    run.job_variables.insert("command".into(), json!(""));
    b.plane.put_run(run.clone());
    let mut work = RunWork::new(run, false);
    assert_eq!(b.tick(&mut work).await, Action::done());
    assert_eq!(
        b.state(&work).2.as_deref(),
        Some("the `fake` provider cannot use this job configuration at `job_configuration.command`: must not be empty; fix the job variable or template field that produces it")
    );
    assert!(b.provider.submitted().is_empty());

    let b = bench();
    let mut work = b.claimed().await;
    b.plane.remove_deployment(b.deployment.id);
    assert_eq!(b.tick(&mut work).await, Action::done());
    b.assert_state(
        &work,
        StateType::Crashed,
        Some("deployment `d` no longer exists"),
    );
}

#[tokio::test]
async fn cancellation_stops_the_infrastructure_then_records_cancelled() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider.on_status(Ok(JobStatus::Pending));
    b.tick(&mut work).await;
    b.cancel_from_outside(&work.run).await;
    assert_eq!(b.tick(&mut work).await, Action::done());
    assert_eq!(b.provider.cancelled(), ["fake-1"]);
    b.assert_state(
        &work,
        StateType::Cancelled,
        Some("cancelled; infrastructure `fake-1` stopped"),
    );
}

#[tokio::test]
async fn a_run_cancelled_before_submission_is_never_submitted() {
    let b = bench();
    let mut work = b.claimed().await;
    b.cancel_from_outside(&work.run).await;
    assert_eq!(b.tick(&mut work).await, Action::done());
    assert!(b.provider.submitted().is_empty());
    b.assert_state(&work, StateType::Cancelled, Some("cancelled"));
}

/// A PENDING run whose controller vanished (its hold ran out), seen by controller `c2`.
async fn orphan_for_c2(lookup: Lookup) -> (Bench, RunWork) {
    let shared = MemoryPlane::new("gone", Duration::from_secs(30));
    let provider = ScriptedProvider::default();
    provider.on_lookup(lookup);
    let b = bench_with(shared, provider, "c2");
    let gone = b.plane.for_controller("gone");
    gone.add_run(&b.deployment, Utc::now());
    let mut run = gone
        .claim_due(1, &WorkspaceQuota::unlimited())
        .await
        .unwrap()
        .remove(0);
    run.lease_expires = Some(Utc::now() - chrono::Duration::seconds(1));
    b.plane.put_run(run);
    let orphans = b.plane.orphans(10).await.unwrap();
    assert_eq!(orphans.len(), 1);
    let adopted = b.plane.adopt(&orphans[0]).await.unwrap().unwrap();
    assert!(b.plane.holds(&adopted));
    (b, RunWork::new(adopted, true))
}

#[tokio::test]
async fn an_adopted_run_whose_job_exists_is_tracked_not_resubmitted() {
    let (b, mut work) = orphan_for_c2(Lookup::Found("fake-old".into())).await;
    b.provider.on_status(Ok(JobStatus::Running));
    assert_eq!(b.tick(&mut work).await, Action::requeue(Duration::ZERO));
    let run = b.plane.get(work.run.id).unwrap();
    assert_eq!(run.infrastructure_id.as_deref(), Some("fake-old"));
    assert!(b.tick(&mut work).await.requeue_after().is_some());
    assert_eq!(b.state(&work).0, StateType::Running);
    assert!(b.provider.submitted().is_empty(), "never submitted twice");
}

#[tokio::test]
async fn an_adopted_run_is_submitted_once_when_no_job_exists() {
    let (b, mut work) = orphan_for_c2(Lookup::Absent).await;
    b.tick(&mut work).await;
    assert_eq!(b.provider.submitted().len(), 1);
    assert_eq!(b.state(&work).1, "InfrastructurePending");
}

#[tokio::test]
async fn an_adopted_run_is_crashed_when_the_provider_cannot_tell() {
    let (b, mut work) = orphan_for_c2(Lookup::Unknown).await;
    assert_eq!(b.tick(&mut work).await, Action::done());
    assert!(b.provider.submitted().is_empty());
    assert_eq!(
        b.state(&work).2.as_deref(),
        Some("the controller submitting this run vanished, and the `fake` provider cannot tell whether the job started; not submitting it again so it never runs twice")
    );
}

#[tokio::test]
async fn a_controller_that_lost_its_hold_stops_touching_the_run() {
    let b = bench();
    let mut work = b.claimed().await;
    let mut run = b.plane.get(work.run.id).unwrap();
    run.lease_owner = Some("c2".into());
    b.plane.put_run(run);
    assert_eq!(b.tick(&mut work).await, Action::done());
    assert!(b.provider.submitted().is_empty());
    assert_eq!(
        b.state(&work).0,
        StateType::Pending,
        "left to its new holder"
    );
}

#[tokio::test]
async fn a_hold_lost_while_submitting_stops_before_the_provider_call() {
    let (b, mut work) = orphan_for_c2(Lookup::Absent).await;
    // Another controller took the run between the adoption and the submit (its renewal fails);
    // this task still has the run as it adopted it.
    let mut run = b.plane.get(work.run.id).unwrap();
    run.lease_owner = Some("c3".into());
    b.plane.put_run(run);
    assert_eq!(reconcile(&mut work, &b.ctx).await.unwrap(), Action::done());
    assert!(b.provider.submitted().is_empty());
    let run = b.plane.get(work.run.id).unwrap();
    assert_eq!(run.state.state_type, StateType::Pending);
    assert_eq!(run.lease_owner.as_deref(), Some("c3"));
}

#[tokio::test]
async fn plane_errors_are_retried_soon() {
    let b = bench();
    let work = b.claimed().await;
    let error = ControllerError::Plane(PlaneError::Unavailable("down".into()));
    assert_eq!(
        error_policy(&work, &error, &b.ctx),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(error.metric_label(), "control_plane");
}

#[tokio::test]
async fn the_claim_loop_drives_runs_to_the_end_over_any_plane() {
    let b = bench();
    for _ in 0..3 {
        b.plane.add_run(&b.deployment, Utc::now());
    }
    for _ in 0..3 {
        b.provider
            .on_status(Ok(JobStatus::Completed { summary: None }));
    }
    let controller = Controller::new(b.ctx);
    assert_eq!(controller.tick().await.unwrap().claimed, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while controller.in_flight() > 0 {
        assert!(std::time::Instant::now() < deadline, "runs still in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let runs = b.plane.held_runs().await.unwrap();
    assert!(runs.is_empty(), "{runs:?}");
    assert_eq!(b.provider.submitted().len(), 3);
}

/// Issue 17: a job already running when submit returned is recorded RUNNING with its
/// infrastructure id in one write, not PENDING first and RUNNING at the next status poll.
#[tokio::test]
async fn a_job_running_when_submit_returned_is_recorded_running_in_one_step() {
    let b = bench();
    let mut work = b.claimed().await;
    b.provider.on_status(Ok(JobStatus::Running));
    assert_eq!(b.tick(&mut work).await, poll(&b));
    b.assert_state(&work, StateType::Running, None);
    let run = b.plane.get(work.run.id).unwrap();
    assert_eq!(run.infrastructure_id.as_deref(), Some("fake-1"));
    assert_eq!(b.history(&work), [StateType::Pending, StateType::Running]);
}

/// Issue 17: a provider that learns a job's end by itself (`wait_ended`) has it recorded at
/// once, without waiting for the next status poll (here a minute away).
#[tokio::test]
async fn a_job_end_the_provider_reports_is_recorded_before_the_next_poll() {
    let plane = MemoryPlane::new("c1", Duration::from_secs(30));
    let provider = ScriptedProvider::default();
    let ended = Arc::new(tokio::sync::Notify::new());
    provider.script().ended = Some(ended.clone());
    provider.on_status(Ok(JobStatus::Running));
    let mut registry = Registry::new();
    registry.register(Arc::new(provider.clone()));
    let pool = plane.add_pool("fakes", FAKE, provider.default_base_job_template());
    let d = plane.add_deployment(&pool, "d", Map::new());
    let run = plane.add_run(&d, Utc::now());
    let config = ControllerConfig {
        poll_min: Duration::from_secs(60),
        poll_max: Duration::from_secs(60),
        ..config("c1")
    };
    let controller = Controller::new(Context::with_plane(
        Arc::new(plane.clone()),
        registry,
        config,
        RunTokens::new(b"t".to_vec()),
        Arc::new(Metrics::default()),
    ));
    assert_eq!(controller.tick().await.unwrap().claimed, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while plane.get(run.id).unwrap().state.state_type != StateType::Running {
        assert!(std::time::Instant::now() < deadline, "never RUNNING");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    provider.on_status(Ok(JobStatus::Completed {
        summary: Some("exit code 0".into()),
    }));
    ended.notify_one();
    while controller.in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the end was not recorded before the next poll (a minute away)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let run = plane.get(run.id).unwrap();
    assert_eq!(
        run.state.state_type,
        StateType::Completed,
        "{:?}",
        run.state
    );
    assert_eq!(run.state.message.as_deref(), Some("exit code 0"));
}

/// Regression (issue 19 item 7): a panic while processing a run held its in-flight slot for ever
/// and left the run PENDING (panicking again after every restart).
#[tokio::test]
async fn a_panicking_provider_crashes_the_run_and_frees_the_slot() {
    let b = bench();
    b.provider.script().panic_on_submit = true;
    let run = b.plane.add_run(&b.deployment, Utc::now());
    let controller = Controller::new(b.ctx);
    assert_eq!(controller.tick().await.unwrap().claimed, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while controller.in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot is still held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let run = b.plane.get(run.id).unwrap();
    assert_eq!(run.state.state_type, StateType::Crashed, "{:?}", run.state);
    let message = run.state.message.unwrap_or_default();
    assert!(message.contains("panicked"), "{message}");
    assert!(message.contains("provider bug"), "{message}");
}

/// Issue 19 item 7: a controller full of one workspace's runs still had no room for another's.
/// With `max_in_flight` 4 (quota 2 per workspace), A's 5 due runs, whose jobs never end, take
/// 2 slots and B's run, due after them, still gets one; A gets no more while it holds 2.
#[tokio::test]
async fn a_workspace_gets_at_most_its_quota_and_others_still_get_slots() {
    let plane = MemoryPlane::new("c1", Duration::from_secs(30));
    let provider = ScriptedProvider::default(); // status Pending for ever: slots stay held
    let mut registry = Registry::new();
    registry.register(Arc::new(provider.clone()));
    let pool = plane.add_pool("fakes", FAKE, provider.default_base_job_template());
    let a = plane.add_deployment(&pool, "d", Map::new());
    let mut b = a.clone();
    b.workspace_id = Uuid::from_u128(2);
    for _ in 0..5 {
        plane.add_run(&a, Utc::now() - chrono::Duration::seconds(10));
    }
    let b_run = plane.add_run(&b, Utc::now());
    let config = ControllerConfig {
        max_in_flight: 4,
        ..config("c1")
    };
    assert_eq!(config.workspace_quota(), 2, "half of max_in_flight");
    let controller = Controller::new(Context::with_plane(
        Arc::new(plane.clone()),
        registry,
        config,
        RunTokens::new(b"t".to_vec()),
        Arc::new(Metrics::default()),
    ));
    assert_eq!(controller.tick().await.unwrap().claimed, 3);
    let held = controller.in_flight_by_workspace();
    assert_eq!(
        (held.get(&a.workspace_id), held.get(&b.workspace_id)),
        (Some(&2), Some(&1)),
        "A holds its quota, B has its run"
    );
    let b_state = plane.get(b_run.id).unwrap().state.state_type;
    assert_ne!(b_state, StateType::Scheduled, "B's run was not claimed");
    assert_eq!(
        controller.tick().await.unwrap().claimed,
        0,
        "A at its quota gets no more, though a slot is free"
    );
    controller.shutdown();
}

/// A run whose policy retries once, due now.
fn retried_once(b: &Bench) -> FlowRun {
    let mut run = b.plane.add_run(&b.deployment, Utc::now());
    run.retry.retries = 1;
    b.plane.put_run(run.clone());
    run
}

/// Issue 13: a failed attempt with retries left goes back to SCHEDULED/AwaitingRetry as the next
/// attempt; the ended attempt's job is cleaned up and the next one is a new submission.
#[tokio::test]
async fn a_failed_attempt_with_retries_left_is_submitted_again_as_a_new_attempt() {
    let b = bench();
    let run = retried_once(&b);
    let claim = || async {
        let mut claimed = b
            .plane
            .claim_due(1, &WorkspaceQuota::unlimited())
            .await
            .unwrap();
        RunWork::new(claimed.remove(0), false)
    };
    let mut work = claim().await;
    b.provider.on_status(Ok(JobStatus::Failed {
        message: "exit code 1".into(),
    }));
    assert_eq!(b.tick(&mut work).await, Action::done());
    let after = b.plane.get(run.id).unwrap();
    assert_eq!(
        (
            after.state.state_type,
            after.state.name.as_str(),
            after.attempt
        ),
        (StateType::Scheduled, "AwaitingRetry", 2)
    );
    assert_eq!(after.infrastructure_id, None);
    assert_eq!(
        b.provider.cleaned(),
        ["fake-1"],
        "the ended attempt is cleaned up"
    );

    let mut work = claim().await;
    assert_eq!(work.run.attempt, 2);
    b.provider
        .on_status(Ok(JobStatus::Completed { summary: None }));
    assert_eq!(b.tick(&mut work).await, Action::done());
    b.assert_state(&work, StateType::Completed, None);
    assert_eq!(b.provider.submitted().len(), 2);
    use StateType::*;
    assert_eq!(
        b.history(&work),
        [Pending, Running, Failed, Scheduled, Pending, Running, Completed]
    );
}

/// Issue 13: through the claim loop, a retry due at once may be claimed while the task of the
/// failed attempt is still finishing; either way one task drives each attempt and the run ends
/// with exactly two submissions.
#[tokio::test]
async fn the_claim_loop_drives_a_retried_run_to_the_end_once_per_attempt() {
    let b = bench();
    let run = retried_once(&b);
    // Attempt 1: pending when submitted, then crashed; attempt 2: over when submitted.
    b.provider
        .on_status(Ok(JobStatus::Pending))
        .on_status(Ok(JobStatus::Crashed {
            message: "node lost".into(),
        }))
        .on_status(Ok(JobStatus::Completed { summary: None }));
    let plane = b.plane.clone();
    let controller = Controller::new(b.ctx);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        controller.tick().await.unwrap();
        let now = plane.get(run.id).unwrap();
        if now.state.state_type.is_terminal() && controller.in_flight() == 0 {
            assert_eq!(
                now.state.state_type,
                StateType::Completed,
                "{:?}",
                now.state
            );
            assert_eq!(now.attempt, 2);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", now.state);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.provider.submitted().len(), 2);
    let history: Vec<(StateType, String)> = plane
        .history(run.id)
        .into_iter()
        .map(|t| (t.state_type, t.name))
        .collect();
    let crashed = history
        .iter()
        .position(|h| h.0 == StateType::Crashed)
        .unwrap_or_else(|| panic!("{history:?}"));
    assert_eq!(
        history[crashed + 1],
        (StateType::Scheduled, "AwaitingRetry".into())
    );
    assert!(b.provider.cleaned().contains(&"fake-1".to_string()));
}
