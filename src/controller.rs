//! The controller: claims due runs of the push pools it serves, renders and submits their jobs,
//! tracks them to a terminal state and handles cancellation.
//!
//! It is written kube-runtime style: [`reconcile`] looks at one run and returns an [`Action`]
//! (requeue after a delay, or done); [`error_policy`] decides what an error means. A run is driven
//! by exactly one task per controller, and by one controller at a time (its lease).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use pushpool_provider::{
    CancelOutcome, DynProvider, JobStatus, LogSink, LogStream, Lookup, ProviderError, Registry,
    RunSpec, Secret, ValidatedJob,
};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use uuid::Uuid;

use crate::auth::RunTokens;
use crate::metrics::Metrics;
use crate::model::{now_micros, Deployment, FlowRun, WorkPool};
use crate::state::{names, Proposal, StateType};
use crate::store::{PoolSelector, Store, StoreError, TransitionGuard, TransitionOutcome};
use crate::template::{BaseJobTemplate, TemplateError};

/// How a controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This controller's id (lease owner name).
    pub id: String,
    /// URL jobs use to reach the API (`PUSHPOOL_API_URL`).
    pub api_url: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Most runs this controller drives at once.
    pub max_in_flight: usize,
    /// Most runs claimed per claim query.
    pub claim_batch: usize,
    /// How long transient submit errors are retried before the run is CRASHED.
    pub submit_deadline: Duration,
    /// How long status polling may fail transiently before the run is CRASHED.
    pub status_deadline: Duration,
    /// First status poll delay; grows 1.5x per poll up to `poll_max`.
    pub poll_min: Duration,
    /// Longest status poll delay.
    pub poll_max: Duration,
    /// Grace given to a job between the polite stop and the kill.
    pub cancel_grace: Duration,
    /// Longest sleep without a wake-up (safety net for missed notifications).
    pub idle_max: Duration,
    /// A SCHEDULED run this far past due is renamed `Late` (it stays claimable).
    pub late_after: Duration,
    /// A RUNNING run whose job sent heartbeats and then fell silent this long is CRASHED.
    pub heartbeat_silence: Duration,
    /// At shutdown, how long runs that already have infrastructure are still tracked (so short
    /// jobs finish recording) before their leases are released for another controller.
    pub shutdown_drain: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            id: format!("controller-{}", Uuid::now_v7().simple()),
            api_url: "http://127.0.0.1:4300".into(),
            lease: Duration::from_secs(30),
            max_in_flight: 2000,
            claim_batch: 200,
            submit_deadline: Duration::from_secs(300),
            status_deadline: Duration::from_secs(600),
            poll_min: Duration::from_millis(20),
            poll_max: Duration::from_secs(2),
            cancel_grace: Duration::from_secs(10),
            idle_max: Duration::from_secs(15),
            late_after: Duration::from_secs(15),
            heartbeat_silence: Duration::from_secs(600),
            shutdown_drain: Duration::from_secs(20),
        }
    }
}

/// What to do with a run after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Look at the run again after `d` (or sooner when woken).
    #[must_use]
    pub const fn requeue(d: Duration) -> Self {
        Action {
            requeue_after: Some(d),
        }
    }
    /// Nothing more to do for this run.
    #[must_use]
    pub const fn done() -> Self {
        Action {
            requeue_after: None,
        }
    }
    /// The requeue delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// What can interrupt a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// A provider call failed in a way the reconcile did not handle itself.
    #[error("provider error for run {run_id}: {source}")]
    Provider {
        /// The run.
        run_id: Uuid,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
}

impl ControllerError {
    /// Short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Store(_) => "store",
            ControllerError::Provider { source, .. } => source.class(),
        }
    }
}

/// Writes job log lines to the store in batches, off the job's path.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<LogMsg>,
}

enum LogMsg {
    Line(Uuid, i64, &'static str, String),
    Flush(oneshot::Sender<()>),
}

struct RunLogSink {
    run_id: Uuid,
    tx: mpsc::Sender<LogMsg>,
}

impl LogSink for RunLogSink {
    fn line(&self, stream: LogStream, line: String) {
        // A full buffer drops lines rather than stalling the job's output pipe.
        let _ = self.tx.try_send(LogMsg::Line(
            self.run_id,
            now_micros(),
            stream.as_str(),
            line,
        ));
    }
}

impl LogWriter {
    /// Starts the writer task.
    pub fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<LogMsg>(50_000);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch: HashMap<Uuid, Vec<(i64, String, String)>> = HashMap::new();
                let mut flushes = vec![];
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(msg) = next.take() {
                    match msg {
                        LogMsg::Line(run, ts, stream, line) => batch
                            .entry(run)
                            .or_default()
                            .push((ts, stream.to_string(), line)),
                        LogMsg::Flush(done) => flushes.push(done),
                    }
                    taken += 1;
                    if taken < 5000 {
                        next = rx.try_recv().ok();
                    }
                }
                for (run, lines) in batch {
                    if let Err(e) = store.append_logs(run, &lines).await {
                        tracing::warn!(run_id = %run, error = %e, "could not store log lines");
                    }
                }
                for f in flushes {
                    let _ = f.send(());
                }
            }
        });
        LogWriter { tx }
    }

    /// A sink for one run's lines.
    pub fn sink(&self, run_id: Uuid) -> Arc<dyn LogSink> {
        Arc::new(RunLogSink {
            run_id,
            tx: self.tx.clone(),
        })
    }

    /// Waits until every line sent before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(LogMsg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}

/// A token bucket smoothing one pool's submissions: `rate` per second, bursts up to `rate` (at least 1).
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for one token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                state.0 = (state.0 + (now - state.1).as_secs_f64() * self.rate).min(self.burst);
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                (1.0 - state.0) / self.rate
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// Everything reconciles share.
pub struct Context {
    /// The store.
    pub store: Store,
    /// Providers by pool type.
    pub registry: Registry,
    /// Settings.
    pub config: ControllerConfig,
    /// Run-token issuer.
    pub tokens: RunTokens,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Job log writer.
    pub logs: LogWriter,
    templates: Mutex<HashMap<Uuid, (i64, Arc<BaseJobTemplate>)>>,
    buckets: Mutex<HashMap<(Uuid, u64), Arc<TokenBucket>>>,
    pools: Mutex<HashMap<Uuid, (Instant, WorkPool)>>,
    deployments: Mutex<HashMap<Uuid, (Instant, Deployment)>>,
}

/// How long a pool or deployment read is reused when preparing jobs (changes apply within this).
const OBJECT_CACHE_TTL: Duration = Duration::from_secs(2);

impl Context {
    /// Builds a context.
    pub fn new(
        store: Store,
        registry: Registry,
        config: ControllerConfig,
        tokens: RunTokens,
        metrics: Arc<Metrics>,
    ) -> Self {
        let logs = LogWriter::spawn(store.clone());
        Context {
            store,
            registry,
            config,
            tokens,
            metrics,
            logs,
            templates: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            deployments: Mutex::new(HashMap::new()),
        }
    }

    async fn cached_pool(&self, id: Uuid) -> Result<WorkPool, StoreError> {
        if let Some((at, pool)) = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            if at.elapsed() < OBJECT_CACHE_TTL {
                return Ok(pool.clone());
            }
        }
        let pool = self.store.pool_by_id(id).await?;
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (Instant::now(), pool.clone()));
        Ok(pool)
    }

    async fn cached_deployment(
        &self,
        workspace_id: Uuid,
        id: Uuid,
    ) -> Result<Deployment, StoreError> {
        if let Some((at, d)) = self
            .deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            if at.elapsed() < OBJECT_CACHE_TTL {
                return Ok(d.clone());
            }
        }
        let d = self.store.deployment(workspace_id, &id.to_string()).await?;
        self.deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (Instant::now(), d.clone()));
        Ok(d)
    }

    fn bucket_for(&self, pool_id: Uuid, rate: f64) -> Arc<TokenBucket> {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((pool_id, rate.to_bits()))
            .or_insert_with(|| Arc::new(TokenBucket::new(rate)))
            .clone()
    }

    fn template_for(&self, pool: &WorkPool) -> Result<Arc<BaseJobTemplate>, TemplateError> {
        let stamp = pool.updated.timestamp_micros();
        if let Some((s, t)) = self
            .templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pool.id)
        {
            if *s == stamp {
                return Ok(t.clone());
            }
        }
        let parsed = Arc::new(BaseJobTemplate::parse(&pool.base_job_template)?);
        self.templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.id, (stamp, parsed.clone()));
        Ok(parsed)
    }
}

/// The built-in values a template may use besides its variables.
pub fn render_context(
    run_id: &str,
    attempt: i64,
    parameters: &Map<String, Value>,
    deployment: &Deployment,
    pool: &WorkPool,
    api_url: &str,
    run_token: &str,
) -> Map<String, Value> {
    let v = json!({
        "flow_run": {"id": run_id, "attempt": attempt, "parameters": parameters},
        "deployment": {"id": deployment.id, "name": deployment.name},
        "work_pool": {"name": pool.name, "type": pool.pool_type},
        "pushpool": {"api_url": api_url, "run_id": run_id, "run_token": run_token},
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Resolves the job variables (defaults < deployment < run) and renders the job configuration.
pub fn render_job(
    template: &BaseJobTemplate,
    deployment: &Deployment,
    run_variables: &Map<String, Value>,
    context: &Map<String, Value>,
) -> Result<Value, TemplateError> {
    let values = template.resolve(&deployment.job_variables, run_variables)?;
    Ok(template.render(&values, context))
}

/// A run's job, rendered, validated and ready for the provider.
#[derive(Clone)]
pub struct PreparedJob {
    provider: Arc<dyn DynProvider>,
    job: ValidatedJob,
    spec: RunSpec,
    pool_type: String,
    /// Pool id and submissions per second, when limited.
    rate_limit: Option<(Uuid, f64)>,
}

/// What a controller remembers about a run between reconciles.
pub struct RunWork {
    /// The run as last read or written.
    pub run: FlowRun,
    /// True when this controller took the run over from a vanished one.
    pub adopted: bool,
    job: Option<PreparedJob>,
    poll_delay: Duration,
    status_failing_since: Option<Instant>,
}

impl RunWork {
    /// Work for a freshly claimed (or adopted) run.
    pub fn new(run: FlowRun, adopted: bool) -> Self {
        RunWork {
            run,
            adopted,
            job: None,
            poll_delay: Duration::ZERO,
            status_failing_since: None,
        }
    }
}

async fn prepare(work: &RunWork, ctx: &Context) -> Result<Result<PreparedJob, String>, StoreError> {
    let run = &work.run;
    let pool = match ctx.cached_pool(run.work_pool_id).await {
        Ok(p) => p,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Err(format!(
                "work pool `{}` no longer exists",
                run.work_pool
            )))
        }
        Err(e) => return Err(e),
    };
    let deployment = match ctx
        .cached_deployment(run.workspace_id, run.deployment_id)
        .await
    {
        Ok(d) => d,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Err(format!(
                "deployment `{}` no longer exists",
                run.deployment
            )))
        }
        Err(e) => return Err(e),
    };
    let Some(provider) = ctx.registry.get(&pool.pool_type) else {
        return Ok(Err(format!(
            "this controller has no provider for pool type `{}` (it serves: {}); build pushpool with that provider's feature",
            pool.pool_type,
            ctx.registry.pool_types().join(", ")
        )));
    };
    let template = match ctx.template_for(&pool) {
        Ok(t) => t,
        Err(e) => {
            return Ok(Err(format!(
                "the base job template of work pool `{}` is invalid at `{}`: {}; fix the pool's template",
                pool.name, e.field, e.message
            )))
        }
    };
    let token = ctx.tokens.issue(run.id, run.attempt);
    let run_id = run.id.to_string();
    let context = render_context(
        &run_id,
        run.attempt,
        &run.parameters,
        &deployment,
        &pool,
        &ctx.config.api_url,
        &token,
    );
    let rendered = match render_job(&template, &deployment, &run.job_variables, &context) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Err(format!(
                "the job variables are invalid at `{}`: {}; fix the deployment's or the run's job_variables",
                e.field, e.message
            )))
        }
    };
    let job = match provider.validate(&rendered) {
        Ok(j) => j,
        Err(ProviderError::InvalidConfig { field, message }) => {
            return Ok(Err(format!(
                "the rendered job configuration is invalid for `{}` at `{field}`: {message}; fix the job variable or template field that produces it",
                pool.pool_type
            )))
        }
        Err(e) => return Ok(Err(format!("the `{}` provider refused the job: {e}", pool.pool_type))),
    };
    let spec = RunSpec {
        run_id: run.id,
        attempt: u32::try_from(run.attempt).unwrap_or(1),
        workspace: run.workspace_id.to_string(),
        work_pool: pool.name.clone(),
        deployment: deployment.name.clone(),
        parameters: Value::Object(run.parameters.clone()),
        api_url: ctx.config.api_url.clone(),
        run_token: Secret::new(token),
        logs: ctx.logs.sink(run.id),
    };
    let rate_limit = pool
        .submit_rate
        .or_else(|| provider.default_submit_rate())
        .filter(|r| *r > 0.0)
        .map(|r| (pool.id, r));
    Ok(Ok(PreparedJob {
        provider,
        job,
        spec,
        pool_type: pool.pool_type,
        rate_limit,
    }))
}

/// Prepares the run's job once per task; a job that cannot be prepared crashes the run.
async fn ensure_job(
    work: &mut RunWork,
    ctx: &Context,
) -> Result<Option<PreparedJob>, ControllerError> {
    if let Some(job) = &work.job {
        return Ok(Some(job.clone()));
    }
    match prepare(work, ctx).await? {
        Ok(job) => {
            work.job = Some(job.clone());
            Ok(Some(job))
        }
        Err(message) => {
            if work.run.state.state_type == StateType::Cancelling {
                // Nothing to stop; the cancel path records CANCELLED.
                return Ok(None);
            }
            propose(
                work,
                ctx,
                Proposal::new(StateType::Crashed).with_message(message),
            )
            .await?;
            Ok(None)
        }
    }
}

/// Proposes a state as the lease owner, expecting the state the controller last saw. Returns
/// whether it was recorded; on a rejection the run is refreshed from the store's answer.
async fn propose(
    work: &mut RunWork,
    ctx: &Context,
    proposal: Proposal,
) -> Result<bool, StoreError> {
    let guard = TransitionGuard::owned(&ctx.config.id, work.run.state.state_type);
    let outcome = ctx
        .store
        .propose_state(work.run.id, proposal, guard)
        .await?;
    let recorded = outcome.is_recorded();
    if let TransitionOutcome::Rejected { reason, .. } = &outcome {
        tracing::debug!(run_id = %work.run.id, %reason, "proposal rejected");
    }
    work.run = outcome.run().clone();
    Ok(recorded)
}

fn submit_failure_message(e: &ProviderError, pool_type: &str, waited: Duration) -> String {
    match e {
        ProviderError::InvalidConfig { field, message } => format!(
            "the `{pool_type}` provider rejected the job configuration at `{field}`: {message}; fix the job variable or template field that produces it"
        ),
        ProviderError::Transient { message, .. } => format!(
            "submitting to the `{pool_type}` provider kept failing for {}s, the last error: {message}; the provider may be throttling or down, run again later",
            waited.as_secs()
        ),
        ProviderError::Permanent { message } => format!(
            "submitting to the `{pool_type}` provider failed: {message}; fix the pool or deployment configuration (or the provider's credentials) and run again"
        ),
        ProviderError::NotFound { message } => format!(
            "submitting to the `{pool_type}` provider failed, something it needs does not exist: {message}"
        ),
        other => format!("submitting to the `{pool_type}` provider failed: {other}"),
    }
}

fn next_poll(work: &mut RunWork, ctx: &Context) -> Action {
    work.poll_delay = if work.poll_delay.is_zero() {
        ctx.config.poll_min
    } else {
        (work.poll_delay.mul_f64(1.5)).min(ctx.config.poll_max)
    };
    Action::requeue(work.poll_delay)
}

/// Why one submit attempt did not go out.
#[derive(Debug, thiserror::Error)]
enum SubmitError {
    #[error("{0}")]
    Provider(ProviderError),
    #[error("the run's lease is held by another controller")]
    LostLease,
    #[error("store: {0}")]
    Store(StoreError),
}

impl SubmitError {
    fn is_retriable(&self) -> bool {
        match self {
            SubmitError::Provider(p) => p.is_retriable(),
            SubmitError::Store(e) => e.is_retriable(),
            SubmitError::LostLease => false,
        }
    }
}

/// Looks at one run and moves it one step towards a terminal state.
pub async fn reconcile(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let me = ctx.config.id.as_str();
    let state = work.run.state.state_type;
    if state.is_terminal() {
        if let (Some(job), Some(infra)) = (&work.job, &work.run.infrastructure_id) {
            if let Err(e) = job.provider.cleanup(infra, &job.job).await {
                tracing::warn!(run_id = %work.run.id, error = %e, "cleanup failed");
            }
        }
        return Ok(Action::done());
    }
    if work.run.lease_owner.as_deref() != Some(me) {
        // Another controller holds it now (or nobody does: rescue will pick it up).
        return Ok(Action::done());
    }
    match state {
        StateType::Scheduled | StateType::Paused => Ok(Action::done()),
        StateType::Cancelling => cancel_run(work, ctx).await,
        StateType::Pending if work.run.infrastructure_id.is_none() => submit_run(work, ctx).await,
        StateType::Pending | StateType::Running => track_run(work, ctx).await,
        _ => Ok(Action::done()),
    }
}

async fn cancel_run(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let mut message = "cancelled".to_string();
    if let Some(infra) = work.run.infrastructure_id.clone() {
        if let Some(job) = ensure_job(work, ctx).await? {
            match job.provider.cancel(&infra, &job.job, ctx.config.cancel_grace).await {
                Ok(CancelOutcome::Cancelled) => message = format!("cancelled; infrastructure `{infra}` stopped"),
                Ok(CancelOutcome::NotFound) => {
                    message = format!("cancelled; infrastructure `{infra}` had already ended")
                }
                Ok(CancelOutcome::Unsupported) => {
                    message = format!(
                        "cancelled; the `{}` provider cannot stop a started job, the job can see the cancellation through its run API",
                        job.pool_type
                    )
                }
                Err(e) if e.is_retriable() => {
                    ctx.metrics.provider_error(&job.pool_type, e.class());
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Err(e) => {
                    ctx.metrics.provider_error(&job.pool_type, e.class());
                    message = format!("cancelled; stopping infrastructure `{infra}` failed: {e}")
                }
            }
        }
    }
    ctx.logs.flush().await;
    propose(
        work,
        ctx,
        Proposal::new(StateType::Cancelled).with_message(message),
    )
    .await?;
    Ok(Action::done())
}

async fn submit_run(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let Some(prepared) = ensure_job(work, ctx).await? else {
        return Ok(Action::done());
    };
    if work.adopted {
        // Another controller may have submitted this attempt before it vanished.
        match prepared
            .provider
            .lookup(&prepared.spec, &prepared.job)
            .await
        {
            Ok(Lookup::Found(infra)) => {
                ctx.store
                    .set_infrastructure(work.run.id, &ctx.config.id, &infra)
                    .await?;
                work.run = ctx.store.run(work.run.id).await?;
                work.adopted = false;
                return Ok(Action::requeue(Duration::ZERO));
            }
            Ok(Lookup::Absent) => {}
            Ok(Lookup::Unknown) => {
                let message = format!(
                    "the controller submitting this run vanished, and the `{}` provider cannot tell whether the job started; not submitting it again so it never runs twice",
                    prepared.pool_type
                );
                propose(
                    work,
                    ctx,
                    Proposal::new(StateType::Crashed).with_message(message),
                )
                .await?;
                return Ok(Action::done());
            }
            Err(e) => {
                return Err(ControllerError::Provider {
                    run_id: work.run.id,
                    source: e,
                })
            }
        }
    }
    let started = Instant::now();
    let deadline = ctx.config.submit_deadline;
    let lease = ctx.config.lease;
    let run_id = work.run.id;
    // The lease this task knows to be valid: set by the claim (or adoption) and by its own renewals.
    let lease_valid_until = std::sync::Mutex::new(if work.adopted {
        Instant::now()
    } else {
        Instant::now() + lease
    });
    // Exactly once: a submit call only starts with at least half a lease left, and is cut off after
    // a quarter lease, so a rescuer (which adopts only after expiry and looks the job up first)
    // never overlaps with it.
    let bucket = prepared
        .rate_limit
        .map(|(pool_id, rate)| ctx.bucket_for(pool_id, rate));
    let attempt_submit = || async {
        if let Some(bucket) = &bucket {
            bucket.acquire().await;
        }
        let valid_until = *lease_valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if valid_until.saturating_duration_since(Instant::now()) < lease / 2 {
            match ctx.store.renew_lease(run_id, &ctx.config.id, lease).await {
                Ok(true) => {
                    *lease_valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Instant::now() + lease;
                }
                Ok(false) => return Err(SubmitError::LostLease),
                Err(e) => return Err(SubmitError::Store(e)),
            }
        }
        let cap = deadline.saturating_sub(started.elapsed()).min(lease / 4);
        match tokio::time::timeout(
            cap.max(Duration::from_millis(1)),
            prepared.provider.submit(&prepared.spec, &prepared.job),
        )
        .await
        {
            Ok(r) => r.map_err(SubmitError::Provider),
            Err(_) => Err(SubmitError::Provider(ProviderError::transient(format!(
                "submit did not answer within {}s",
                cap.as_secs_f64()
            )))),
        }
    };
    let result = attempt_submit
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(usize::MAX),
        )
        .when(|e: &SubmitError| e.is_retriable() && started.elapsed() < deadline)
        .notify(|e: &SubmitError, after: Duration| {
            if let SubmitError::Provider(p) = e {
                ctx.metrics.provider_error(&prepared.pool_type, p.class());
            }
            tracing::info!(run_id = %run_id, error = %e, retry_in = ?after, "submit failed transiently; retrying");
        })
        .await;
    let result = match result {
        Ok(infra) => Ok(infra),
        Err(SubmitError::Provider(e)) => Err(e),
        Err(SubmitError::LostLease) => {
            tracing::info!(run_id = %run_id, "lost the lease before submitting; leaving the run to its new owner");
            return Ok(Action::done());
        }
        Err(SubmitError::Store(e)) => return Err(ControllerError::Store(e)),
    };
    ctx.metrics.submit_latency.observe(started.elapsed());
    match result {
        Ok(infra) => {
            ctx.metrics
                .submitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A job already over when submit returned (fast jobs, the null provider) is recorded
            // with its infrastructure id, RUNNING and its end in one transaction.
            let early_end = match prepared.provider.status(&infra, &prepared.job).await {
                Ok(JobStatus::Completed { summary }) => {
                    let mut p = Proposal::new(StateType::Completed);
                    p.message = summary;
                    Some(p)
                }
                Ok(JobStatus::Failed { message }) => {
                    Some(Proposal::new(StateType::Failed).with_message(message))
                }
                _ => None,
            };
            if let Some(end) = early_end {
                ctx.logs.flush().await;
                let guard = TransitionGuard::owned(&ctx.config.id, StateType::Pending);
                let outcomes = ctx
                    .store
                    .propose_states_with(
                        work.run.id,
                        vec![Proposal::new(StateType::Running), end],
                        guard,
                        Some(&infra),
                    )
                    .await?;
                if outcomes.len() == 2 && outcomes.iter().all(|o| o.is_recorded()) {
                    if let Some(last) = outcomes.last() {
                        work.run = last.run().clone();
                    }
                    if let Err(e) = prepared.provider.cleanup(&infra, &prepared.job).await {
                        tracing::warn!(run_id = %work.run.id, error = %e, "cleanup failed");
                    }
                    return Ok(Action::done());
                }
                // Refused (the run changed meanwhile): the path below records or stops the job.
            }
            if ctx
                .store
                .set_infrastructure(work.run.id, &ctx.config.id, &infra)
                .await?
            {
                work.run.infrastructure_id = Some(infra);
                work.run.state.name = names::INFRASTRUCTURE_PENDING.into();
                Ok(next_poll(work, ctx))
            } else {
                // The run changed while we submitted (cancelled before it had infrastructure):
                // stop the job we just started so it does not run unobserved.
                let _ = prepared
                    .provider
                    .cancel(&infra, &prepared.job, ctx.config.cancel_grace)
                    .await;
                work.run = ctx.store.run(work.run.id).await?;
                Ok(Action::requeue(Duration::ZERO))
            }
        }
        Err(e) => {
            ctx.metrics.provider_error(&prepared.pool_type, e.class());
            let message = submit_failure_message(&e, &prepared.pool_type, started.elapsed());
            ctx.logs.flush().await;
            propose(
                work,
                ctx,
                Proposal::new(StateType::Crashed).with_message(message),
            )
            .await?;
            Ok(Action::done())
        }
    }
}

async fn finish(
    work: &mut RunWork,
    ctx: &Context,
    proposal: Proposal,
) -> Result<Action, ControllerError> {
    ctx.logs.flush().await;
    // A job that finished has run: record RUNNING first (same transaction) so the history tells
    // the truth.
    let mut proposals = vec![];
    if work.run.state.state_type == StateType::Pending
        && matches!(
            proposal.state_type,
            StateType::Completed | StateType::Failed
        )
    {
        proposals.push(Proposal::new(StateType::Running));
    }
    proposals.push(proposal);
    let wanted = proposals.len();
    let guard = TransitionGuard::owned(&ctx.config.id, work.run.state.state_type);
    let outcomes = ctx
        .store
        .propose_states(work.run.id, proposals, guard)
        .await?;
    let all_recorded = outcomes.len() == wanted && outcomes.iter().all(|o| o.is_recorded());
    if let Some(last) = outcomes.last() {
        work.run = last.run().clone();
    }
    if !all_recorded {
        return Ok(Action::requeue(Duration::ZERO));
    }
    if let (Some(job), Some(infra)) = (&work.job, &work.run.infrastructure_id) {
        if let Err(e) = job.provider.cleanup(infra, &job.job).await {
            tracing::warn!(run_id = %work.run.id, error = %e, "cleanup failed");
        }
    }
    Ok(Action::done())
}

async fn track_run(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let Some(prepared) = ensure_job(work, ctx).await? else {
        return Ok(Action::done());
    };
    let infra = work.run.infrastructure_id.clone().unwrap_or_default();
    let status = prepared.provider.status(&infra, &prepared.job).await;
    let status = match status {
        Ok(s) => {
            work.status_failing_since = None;
            s
        }
        Err(ProviderError::NotFound { .. }) => JobStatus::NotFound,
        Err(e) if e.is_retriable() => {
            ctx.metrics.provider_error(&prepared.pool_type, e.class());
            let since = *work.status_failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() < ctx.config.status_deadline {
                return Ok(next_poll(work, ctx));
            }
            let message = format!(
                "lost contact with the `{}` provider for {}s while watching `{infra}`; last error: {e}",
                prepared.pool_type,
                since.elapsed().as_secs()
            );
            return finish(
                work,
                ctx,
                Proposal::new(StateType::Crashed).with_message(message),
            )
            .await;
        }
        Err(e) => {
            ctx.metrics.provider_error(&prepared.pool_type, e.class());
            let message = format!("watching `{infra}` failed: {e}");
            return finish(
                work,
                ctx,
                Proposal::new(StateType::Crashed).with_message(message),
            )
            .await;
        }
    };
    match status {
        JobStatus::Pending => Ok(next_poll(work, ctx)),
        JobStatus::Running => {
            if work.run.state.state_type == StateType::Pending
                && !propose(work, ctx, Proposal::new(StateType::Running)).await?
            {
                return Ok(Action::requeue(Duration::ZERO));
            }
            Ok(next_poll(work, ctx))
        }
        JobStatus::Completed { summary } => {
            let mut p = Proposal::new(StateType::Completed);
            p.message = summary;
            finish(work, ctx, p).await
        }
        JobStatus::Failed { message } => {
            finish(
                work,
                ctx,
                Proposal::new(StateType::Failed).with_message(message),
            )
            .await
        }
        JobStatus::Crashed { message } => {
            finish(
                work,
                ctx,
                Proposal::new(StateType::Crashed).with_message(message),
            )
            .await
        }
        JobStatus::Cancelled => {
            finish(
                work,
                ctx,
                Proposal::new(StateType::Cancelled)
                    .with_message("the infrastructure reports the job cancelled"),
            )
            .await
        }
        JobStatus::NotFound => {
            let message = format!(
                "infrastructure `{infra}` no longer exists at the `{}` provider (removed outside pushpool, or lost with a controller restart); the job's outcome is unknown",
                prepared.pool_type
            );
            finish(
                work,
                ctx,
                Proposal::new(StateType::Crashed).with_message(message),
            )
            .await
        }
        JobStatus::Unobservable => Ok(Action::requeue(ctx.config.poll_max)),
    }
}

/// Decides what a failed reconcile means: store trouble is retried; provider errors the reconcile
/// did not handle are retried while transient.
pub fn error_policy(work: &RunWork, error: &ControllerError, _ctx: &Context) -> Action {
    tracing::warn!(run_id = %work.run.id, error = %error, kind = error.metric_label(), "reconcile failed; will retry");
    match error {
        ControllerError::Store(_) => Action::requeue(Duration::from_secs(1)),
        ControllerError::Provider { source, .. } => match source {
            ProviderError::Transient { retry_after, .. } => {
                Action::requeue(retry_after.unwrap_or(Duration::from_secs(2)))
            }
            _ => Action::requeue(Duration::from_secs(5)),
        },
    }
}

/// Summary of one [`Controller::tick`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Runs claimed.
    pub claimed: usize,
    /// Orphaned runs adopted.
    pub adopted: usize,
    /// Runs renamed `Late`.
    pub late: usize,
    /// Silent runs crashed.
    pub zombies: usize,
}

/// A controller: the claim loop plus one task per run in flight.
#[derive(Clone)]
pub struct Controller {
    ctx: Arc<Context>,
    in_flight: Arc<Mutex<HashMap<Uuid, Arc<Notify>>>>,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
    shutdown: watch::Sender<bool>,
}

impl Controller {
    /// A controller over this context.
    pub fn new(ctx: Context) -> Self {
        Controller {
            ctx: Arc::new(ctx),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            tasks: Arc::new(Mutex::new(tokio::task::JoinSet::new())),
            shutdown: watch::channel(false).0,
        }
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Runs this controller is driving now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn selector(&self) -> PoolSelector {
        PoolSelector::Types(
            self.ctx
                .registry
                .pool_types()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    }

    fn spawn_run(&self, run: FlowRun, adopted: bool) {
        let wake = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&run.id) {
                return; // one task per run, never two
            }
            let wake = Arc::new(Notify::new());
            map.insert(run.id, wake.clone());
            wake
        };
        let ctx = self.ctx.clone();
        let in_flight = self.in_flight.clone();
        let shutdown = self.shutdown.subscribe();
        let run_id = run.id;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.spawn(async move {
            drive(ctx, RunWork::new(run, adopted), wake, shutdown).await;
            in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
        });
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }

    /// One step of the claim loop: adopt orphaned runs, wake runs asked to cancel, claim due runs
    /// up to the free capacity and start a task for each. Tests call this directly.
    pub async fn tick(&self) -> Result<TickReport, StoreError> {
        let mut report = TickReport::default();
        if *self.shutdown.borrow() {
            return Ok(report);
        }
        let selector = self.selector();
        for orphan in self
            .ctx
            .store
            .expired_leases(&selector, Utc::now(), 100)
            .await?
        {
            if let Some(run) = self
                .ctx
                .store
                .adopt(orphan.id, &self.ctx.config.id, self.ctx.config.lease)
                .await?
            {
                tracing::info!(run_id = %run.id, previous = ?orphan.lease_owner, "adopted an orphaned run");
                report.adopted += 1;
                self.spawn_run(run, true);
            }
        }
        for run in self
            .ctx
            .store
            .runs_owned_by(&self.ctx.config.id, Some(StateType::Cancelling))
            .await?
        {
            let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&run.id) {
                Some(wake) if run.state.state_type == StateType::Cancelling => wake.notify_one(),
                Some(_) => {}
                None => {
                    drop(map);
                    self.spawn_run(run, true);
                }
            }
        }
        report.late = self
            .ctx
            .store
            .mark_late(&selector, self.ctx.config.late_after, 1000)
            .await?
            .len();
        for run in self
            .ctx
            .store
            .silent_runs(&selector, self.ctx.config.heartbeat_silence, 100)
            .await?
        {
            let heard = run
                .last_heartbeat
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let message = format!(
                "the job stopped sending heartbeats: last heard from at {heard}, more than {}s ago",
                self.ctx.config.heartbeat_silence.as_secs()
            );
            let guard = TransitionGuard {
                expected: Some(StateType::Running),
                lease_owner: None,
            };
            let outcome = self
                .ctx
                .store
                .propose_state(
                    run.id,
                    Proposal::new(StateType::Crashed).with_message(message),
                    guard,
                )
                .await?;
            if matches!(outcome, TransitionOutcome::Accepted(_)) {
                report.zombies += 1;
            }
        }
        let capacity = self
            .ctx
            .config
            .max_in_flight
            .saturating_sub(self.in_flight());
        let limit = capacity.min(self.ctx.config.claim_batch);
        if limit > 0 {
            let started = Instant::now();
            let claimed = self
                .ctx
                .store
                .claim_due(
                    &selector,
                    Utc::now(),
                    limit,
                    &self.ctx.config.id,
                    self.ctx.config.lease,
                )
                .await?;
            self.ctx.metrics.claim_latency.observe(started.elapsed());
            report.claimed = claimed.len();
            for run in claimed {
                self.spawn_run(run, false);
            }
        }
        Ok(report)
    }

    /// Claims only (no adoption or cancel scan); the fast path while a backlog drains.
    async fn claim_only(&self) -> Result<usize, StoreError> {
        let capacity = self
            .ctx
            .config
            .max_in_flight
            .saturating_sub(self.in_flight());
        let limit = capacity.min(self.ctx.config.claim_batch);
        if limit == 0 {
            return Ok(0);
        }
        let started = Instant::now();
        let claimed = self
            .ctx
            .store
            .claim_due(
                &self.selector(),
                Utc::now(),
                limit,
                &self.ctx.config.id,
                self.ctx.config.lease,
            )
            .await?;
        self.ctx.metrics.claim_latency.observe(started.elapsed());
        let n = claimed.len();
        for run in claimed {
            self.spawn_run(run, false);
        }
        Ok(n)
    }

    /// Asks the controller to stop: no more claims; runs in flight are handed back or released.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Runs the claim loop until [`Controller::shutdown`], then waits for in-flight work to be
    /// handed back (bounded by `grace`).
    pub async fn run(&self, grace: Duration) {
        let changes = self.ctx.store.changes();
        let _listener = self.ctx.store.listen_for_changes();
        let renewer = {
            let ctx = self.ctx.clone();
            let mut shutdown = self.shutdown.subscribe();
            tokio::spawn(async move {
                let every = ctx.config.lease / 3;
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
                loop {
                    if let Err(e) = ctx.store.controller_heartbeat(&ctx.config.id, &host).await {
                        tracing::warn!(error = %e, "controller heartbeat failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.changed() => {}
                    }
                    if let Err(e) = ctx
                        .store
                        .renew_leases(&ctx.config.id, ctx.config.lease)
                        .await
                    {
                        tracing::warn!(error = %e, "lease renewal failed");
                    }
                    if *shutdown.borrow() {
                        break;
                    }
                }
            })
        };
        // Runs this controller id held before a restart are resumed (as adopted: looked up first).
        if let Ok(mine) = self
            .ctx
            .store
            .runs_owned_by(&self.ctx.config.id, None)
            .await
        {
            for run in mine {
                self.spawn_run(run, true);
            }
        }
        let mut shutdown = self.shutdown.subscribe();
        let mut last_full_tick = Instant::now() - Duration::from_secs(3600);
        let mut store_failing_since: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let notified = changes.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A full tick (adoption, cancel scan) at most every 250 ms; claims as often as needed.
            let result = if last_full_tick.elapsed() >= Duration::from_millis(250) {
                last_full_tick = Instant::now();
                self.tick().await.map(|r| r.claimed)
            } else {
                self.claim_only().await
            };
            let claimed = match result {
                Ok(n) => {
                    store_failing_since = None;
                    n
                }
                Err(e) => {
                    let since = *store_failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(error = %e, failing_for = ?since.elapsed(), "claim failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if claimed > 0 && self.in_flight() < self.ctx.config.max_in_flight {
                continue; // more may be due right now
            }
            let sleep_for = match self.ctx.store.next_due(&self.selector()).await {
                Ok(Some(next)) => (next - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(5), self.ctx.config.idle_max),
                _ => self.ctx.config.idle_max,
            };
            // With runs in flight, look again soon for cancellations and orphans.
            let sleep_for = if self.in_flight() > 0 {
                sleep_for.min(Duration::from_millis(250))
            } else {
                sleep_for
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(sleep_for) => {}
                _ = shutdown.changed() => {}
            }
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut tasks = tasks;
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        self.ctx.logs.flush().await;
        renewer.abort();
    }
}

async fn drive(
    ctx: Arc<Context>,
    mut work: RunWork,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut fresh = true;
    let mut needs_read = false;
    let mut last_read = Instant::now();
    // Set at shutdown for runs that already have infrastructure: keep recording their progress
    // until this deadline, then release the lease for another controller.
    let mut drain_until: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            match drain_until {
                None if work.run.infrastructure_id.is_some()
                    && !ctx.config.shutdown_drain.is_zero() =>
                {
                    drain_until = Some(Instant::now() + ctx.config.shutdown_drain);
                }
                Some(deadline) if Instant::now() < deadline => {}
                _ => {
                    hand_back(&ctx, &mut work).await;
                    return;
                }
            }
        }
        // The run in memory is what this task last wrote or read; read again when woken (a cancel,
        // a change by someone else), after a refused write, or at least every second.
        if !fresh && (needs_read || last_read.elapsed() >= Duration::from_secs(1)) {
            last_read = Instant::now();
            needs_read = false;
            match ctx.store.run(work.run.id).await {
                Ok(run) => work.run = run,
                Err(e) => {
                    tracing::warn!(run_id = %work.run.id, error = %e, "cannot read run; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        fresh = false;
        let action = match reconcile(&mut work, &ctx).await {
            Ok(a) => a,
            Err(e) => error_policy(&work, &e, &ctx),
        };
        let Some(delay) = action.requeue_after() else {
            return;
        };
        if delay.is_zero() {
            needs_read = true;
        } else {
            let delay = match drain_until {
                Some(deadline) => delay.min(deadline.saturating_duration_since(Instant::now())),
                None => delay,
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wake.notified() => needs_read = true,
                _ = shutdown.changed(), if drain_until.is_none() => needs_read = true,
            }
        }
    }
}

/// On shutdown: a run not yet submitted goes back to SCHEDULED for another controller; a submitted
/// one keeps running and its lease is released so a live controller adopts it at once.
async fn hand_back(ctx: &Context, work: &mut RunWork) {
    let Ok(run) = ctx.store.run(work.run.id).await else {
        return;
    };
    work.run = run;
    if work.run.lease_owner.as_deref() != Some(ctx.config.id.as_str())
        || work.run.state.state_type.is_terminal()
    {
        return;
    }
    if work.run.state.state_type == StateType::Pending && work.run.infrastructure_id.is_none() {
        let p = Proposal::new(StateType::Scheduled).with_message(format!(
            "handed back by controller {} on shutdown",
            ctx.config.id
        ));
        if let Err(e) = propose(work, ctx, p).await {
            tracing::warn!(run_id = %work.run.id, error = %e, "could not hand the run back");
        }
    } else if let Err(e) = ctx.store.release_lease(work.run.id, &ctx.config.id).await {
        tracing::warn!(run_id = %work.run.id, error = %e, "could not release the lease");
    }
}
