//! What every reconcile shares ([`Context`]) and what one run task remembers ([`RunWork`]),
//! plus turning a run into the job its provider submits ([`Context::prepare`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushpool_provider::{DynProvider, Registry, RunSpec, Secret, ValidatedJob};
use serde_json::Value;
use uuid::Uuid;

use super::cache::TtlCache;
use super::logs::LogWriter;
use super::plane::{ControlPlane, PlaneError, PlaneResult};
use super::rate::TokenBucket;
use super::store_plane::StorePlane;
use super::ControllerConfig;
use crate::auth::RunTokens;
use crate::execution::{ProcessGate, ProcessPools, PROCESS_POOL_TYPE};
use crate::identity::Grants;
use crate::job::{self, BaseJobTemplate, JobError, RunFacts};
use crate::metrics::Metrics;
use crate::model::{Deployment, FlowRun, WorkPool};
use crate::store::Store;
use pushpool_provider::ProviderError;

/// How long a pool or deployment read is reused when preparing jobs (changes apply within this).
const OBJECT_CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a parsed template is kept; it is keyed by the pool's last change, so this only
/// bounds memory.
const TEMPLATE_CACHE_TTL: Duration = Duration::from_secs(600);

/// Everything reconciles share.
pub struct Context {
    /// Where the runs live.
    pub plane: Arc<dyn ControlPlane>,
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
    templates: TtlCache<(Uuid, i64), Arc<BaseJobTemplate>>,
    pools: TtlCache<Uuid, WorkPool>,
    deployments: TtlCache<Uuid, Deployment>,
    grants: TtlCache<Uuid, (String, Grants)>,
    buckets: Mutex<HashMap<(Uuid, u64), Arc<TokenBucket>>>,
    /// When each pool's last `pushpool.work-pool.throttled` event was written (docs/events.md).
    throttle_notes: crate::events::controller::ThrottleNotes,
    /// The store, when the plane is pushpool's own (for [`ProcessGate`] lookups).
    store: Option<Store>,
    gate: ProcessGate,
}

impl Context {
    /// A context over pushpool's own store, serving the pool types of `registry`.
    pub fn new(
        store: Store,
        registry: Registry,
        config: ControllerConfig,
        tokens: RunTokens,
        metrics: Arc<Metrics>,
    ) -> Self {
        let plane = StorePlane::serving(store.clone(), &config, &registry);
        let mut ctx = Context::with_plane(Arc::new(plane), registry, config, tokens, metrics);
        ctx.store = Some(store);
        ctx
    }

    /// A context over any control plane.
    pub fn with_plane(
        plane: Arc<dyn ControlPlane>,
        registry: Registry,
        config: ControllerConfig,
        tokens: RunTokens,
        metrics: Arc<Metrics>,
    ) -> Self {
        let logs = LogWriter::spawn(plane.clone());
        let gate = ProcessGate::new(config.process_pools);
        Context {
            plane,
            registry,
            config,
            tokens,
            metrics,
            logs,
            templates: TtlCache::new(TEMPLATE_CACHE_TTL),
            pools: TtlCache::new(OBJECT_CACHE_TTL),
            deployments: TtlCache::new(OBJECT_CACHE_TTL),
            grants: TtlCache::new(OBJECT_CACHE_TTL),
            buckets: Mutex::new(HashMap::new()),
            throttle_notes: Default::default(),
            store: None,
            gate,
        }
    }

    /// Writes `pushpool.work-pool.throttled` (in the background, at most once a minute per pool)
    /// when `error` says the provider throttled a call for `run`; only on pushpool's own store.
    pub(super) fn note_throttled(&self, run: &FlowRun, pool_type: &str, error: &ProviderError) {
        let Some(store) = &self.store else { return };
        if !crate::events::controller::is_throttling(error)
            || !self.throttle_notes.due(run.work_pool_id)
        {
            return;
        }
        let row =
            crate::events::controller::throttled_event(run, pool_type, error, &self.config.id);
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.record_events(&[row]).await {
                tracing::warn!(error = %e, "cannot record a provider throttling event");
            }
        });
    }

    /// `Some(message)` when `--process-pools` refuses the run's `process` pool. Without
    /// pushpool's store (another control plane) only `disabled` and `all` can be told apart:
    /// `admin` refuses.
    pub(super) async fn process_refusal(
        &self,
        run: &FlowRun,
        pool_type: &str,
    ) -> PlaneResult<Option<String>> {
        if pool_type != PROCESS_POOL_TYPE {
            return Ok(None);
        }
        let allowed = match (&self.store, self.gate.mode()) {
            (_, ProcessPools::All) => true,
            (_, ProcessPools::Disabled) | (None, ProcessPools::Admin) => false,
            (Some(store), ProcessPools::Admin) => self
                .gate
                .allows(store, run.workspace_id)
                .await
                .map_err(PlaneError::from)?,
        };
        Ok((!allowed).then(|| self.gate.refusal(None)))
    }

    /// The rate limiter of a pool's submissions.
    pub(super) fn bucket_for(&self, pool_id: Uuid, rate: f64) -> Arc<TokenBucket> {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((pool_id, rate.to_bits()))
            .or_insert_with(|| Arc::new(TokenBucket::new(rate)))
            .clone()
    }

    /// Renders and validates the run's job. `Ok(Err(_))` is a job that cannot be built (the run
    /// crashes with that message); `Err(_)` is the control plane failing (retried).
    pub(super) async fn prepare(
        &self,
        run: &FlowRun,
    ) -> PlaneResult<Result<PreparedJob, JobError>> {
        let plane = &self.plane;
        let pool = match self
            .pools
            .get_or_fetch(run.work_pool_id, plane.pool_of(run))
            .await
        {
            Err(PlaneError::NotFound { .. }) => {
                return Ok(Err(JobError::pool_gone(&run.work_pool)))
            }
            other => other?,
        };
        let deployment = self
            .deployments
            .get_or_fetch(run.deployment_id, plane.deployment_of(run));
        let deployment = match deployment.await {
            Err(PlaneError::NotFound { .. }) => {
                return Ok(Err(JobError::deployment_gone(&run.deployment)))
            }
            other => other?,
        };
        let grants = self
            .grants
            .get_or_fetch(run.workspace_id, plane.workspace_grants(run))
            .await?;
        self.build(run, &pool, &deployment, &grants).await
    }

    async fn build(
        &self,
        run: &FlowRun,
        pool: &WorkPool,
        deployment: &Deployment,
        (workspace, grants): &(String, Grants),
    ) -> PlaneResult<Result<PreparedJob, JobError>> {
        let provider = match job::provider_for(&self.registry, &pool.pool_type) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let token = self.tokens.issue(run.id, run.attempt);
        // Parsing (cached per pool version), rendering, the workspace's grants and the
        // provider's check run off the async runtime, within the time budget (issue 19 item 6).
        let key = (pool.id, pool.updated.timestamp_micros());
        let cached: Option<Arc<BaseJobTemplate>> = self.templates.get(&key);
        let miss = cached.is_none();
        let rendered = {
            let (pool, deployment) = (pool.clone(), deployment.clone());
            let (run, api_url, token) = (run.clone(), self.config.api_url.clone(), token.clone());
            job::bounded(move || {
                let template = match cached {
                    Some(t) => t,
                    None => Arc::new(job::parse_template(&pool)?),
                };
                let facts = RunFacts::of_run(&run, &api_url, &token);
                let rendered = job::render(&template, &pool, &deployment, &facts)?;
                Ok::<_, JobError>((template, rendered))
            })
            .await
        };
        let (template, rendered) = match rendered {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return Ok(Err(e.into())),
        };
        // The plane's own preparation (Prefect: references resolved through its API).
        let rendered = match self
            .plane
            .finish_job(run, pool, deployment, rendered)
            .await?
        {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let job = {
            let provider = provider.clone();
            let (workspace, grants) = (workspace.clone(), grants.clone());
            let endpoints = self.config.allowed_endpoints.clone();
            let workspace_id = run.workspace_id;
            job::bounded(move || {
                // Pools stored before the grants existed are held to them here, at every
                // submission.
                job::check_identity(
                    provider.as_ref(),
                    &rendered,
                    &workspace,
                    &grants,
                    &endpoints,
                )?;
                job::validate_in(provider.as_ref(), &rendered, workspace_id)
            })
            .await
        };
        let job = match job {
            Ok(Ok(job)) => job,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return Ok(Err(e.into())),
        };
        if miss {
            self.templates.insert(key, template);
        }
        let (logs, tail) = self.logs.sink_with_tail(run.id);
        let spec = RunSpec {
            run_id: run.id,
            attempt: u32::try_from(run.attempt).unwrap_or(1),
            workspace: run.workspace_id.to_string(),
            work_pool: pool.name.clone(),
            deployment: deployment.name.clone(),
            parameters: Value::Object(run.parameters.clone()),
            api_url: self.config.api_url.clone(),
            run_token: Secret::new(token),
            logs,
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
            pool_type: pool.pool_type.clone(),
            rate_limit,
            follow: super::provider_logs::Follow::new(tail),
        }))
    }
}

/// A run's job, rendered, validated and ready for the provider.
#[derive(Clone)]
pub struct PreparedJob {
    pub(super) provider: Arc<dyn DynProvider>,
    pub(super) job: ValidatedJob,
    pub(super) spec: RunSpec,
    pub(super) pool_type: String,
    /// Pool id and submissions per second, when limited.
    pub(super) rate_limit: Option<(Uuid, f64)>,
    /// The run's last log lines and the reading of its provider logs.
    pub(super) follow: super::provider_logs::Follow,
}

/// What a controller remembers about a run between reconciles.
pub struct RunWork {
    /// The run as last read or written.
    pub run: FlowRun,
    /// True when this controller took the run over from a vanished one.
    pub adopted: bool,
    pub(super) job: Option<PreparedJob>,
    pub(super) poll_delay: Duration,
    pub(super) status_failing_since: Option<Instant>,
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
