//! `pushpool bench`: N runs through full lifecycles on the built-in `null` provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pushpool_provider::{
    CancelOutcome, DynProvider, JobStatus, Lookup, Need, ProviderError, RunLedger, RunSpec,
    SweepReport, ValidatedJob,
};
use serde_json::Value;

use pushpool::auth::RunTokens;
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::registry::registry_with_null;
use pushpool::state::StateType;
use pushpool::store::{ConnectOptions, NewDeployment, NewPool, NewRun, Store, StoreError};
use pushpool_null::NullProvider;
use serde::Serialize;
use serde_json::Map;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Store URL; `None` = a fresh SQLite file in a temp dir.
    pub database_url: Option<String>,
    /// Number of runs.
    pub runs: usize,
    /// Runs per second coming due; 0 = all due at once.
    pub rate: f64,
    /// Null provider submit latency.
    pub provider_latency: Duration,
    /// Controller instances (each with its own connections).
    pub controllers: usize,
    /// Old terminal runs put in the store first (and a tenth as many runs scheduled a day
    /// or more ahead), in the bench's pool: what a long-lived store holds.
    pub preload: u64,
    /// Most runs in flight per controller (`None`: the controller's default, 2,000, with
    /// its per-workspace quota of half); when set, the workspace quota is the same.
    pub max_in_flight: Option<usize>,
    /// `null` (default) or `process`: real child processes running `process_command`.
    pub provider: String,
    /// The command of `process` runs.
    pub process_command: String,
}

/// The result, printed as the last line of `pushpool bench`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Backend.
    pub store: String,
    /// Runs driven.
    pub runs: usize,
    /// Controllers.
    pub controllers: usize,
    /// Arrival rate (0 = burst).
    pub rate: f64,
    /// Time from the first run being due to the last run terminal.
    pub seconds: f64,
    /// Runs per second over that time.
    pub runs_per_sec: f64,
    /// Median lag from due (later of scheduled and created) to the provider's submit call.
    pub lag_p50_ms: f64,
    /// 99th percentile of that lag.
    pub lag_p99_ms: f64,
    /// Largest lag.
    pub lag_max_ms: f64,
    /// Peak resident memory of this process.
    pub peak_rss_mb: f64,
    /// Run attempts the provider received more than once.
    pub double_submits: u64,
    /// Runs not terminal at the end.
    pub lost: usize,
    /// Runs that ended COMPLETED.
    pub completed: usize,
    /// Provider: `null` or `process`.
    pub provider: String,
    /// Old runs in the store before the bench (`--preload`; plus a tenth as many future ones).
    pub preload: u64,
    /// Median time from the provider's submit call returning to RUNNING recorded (the history
    /// row's timestamp, taken inside the recording transaction).
    pub submit_to_running_p50_ms: f64,
    /// 99th percentile of that time.
    pub submit_to_running_p99_ms: f64,
    /// Most runs in flight at once (summed over controllers, sampled every 20 ms).
    pub max_in_flight: usize,
    /// Resident memory grown between the controllers' start and the moment of most runs in
    /// flight, divided by those runs (0 when fewer than 100 were in flight at once).
    pub bytes_per_run_in_flight: f64,
    /// Write transactions committed by the store (any statement that writes counts once),
    /// while the bench ran, per run.
    pub store_writes_per_run: f64,
}

/// Current resident set size of this process in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

/// A provider that notes when each run's first submit call returned, around the real one.
struct Timed {
    inner: Arc<dyn DynProvider>,
    submitted: Mutex<HashMap<uuid::Uuid, DateTime<Utc>>>,
}

impl Timed {
    fn submitted(&self) -> HashMap<uuid::Uuid, DateTime<Utc>> {
        self.submitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl DynProvider for Timed {
    fn pool_type(&self) -> &'static str {
        self.inner.pool_type()
    }
    fn default_base_job_template(&self) -> Value {
        self.inner.default_base_job_template()
    }
    fn validate(&self, rendered: &Value) -> Result<ValidatedJob, ProviderError> {
        self.inner.validate(rendered)
    }
    fn validate_in(&self, rendered: &Value, ws: &str) -> Result<ValidatedJob, ProviderError> {
        self.inner.validate_in(rendered, ws)
    }
    fn needs(&self, rendered: &Value) -> Vec<Need> {
        self.inner.needs(rendered)
    }
    fn secret_fields(&self) -> &'static [&'static str] {
        self.inner.secret_fields()
    }
    fn default_submit_rate(&self) -> Option<f64> {
        self.inner.default_submit_rate()
    }
    async fn submit(&self, run: &RunSpec, job: &ValidatedJob) -> Result<String, ProviderError> {
        let id = self.inner.submit(run, job).await?;
        self.submitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(run.run_id)
            .or_insert_with(Utc::now);
        Ok(id)
    }
    async fn status(&self, id: &str, job: &ValidatedJob) -> Result<JobStatus, ProviderError> {
        self.inner.status(id, job).await
    }
    async fn cancel(
        &self,
        id: &str,
        job: &ValidatedJob,
        grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        self.inner.cancel(id, job, grace).await
    }
    async fn wait_ended(&self, id: &str, job: &ValidatedJob) -> bool {
        self.inner.wait_ended(id, job).await
    }
    async fn cleanup(&self, id: &str, job: &ValidatedJob) -> Result<(), ProviderError> {
        self.inner.cleanup(id, job).await
    }
    async fn lookup(&self, run: &RunSpec, job: &ValidatedJob) -> Result<Lookup, ProviderError> {
        self.inner.lookup(run, job).await
    }
    async fn sweep(&self, ledger: &dyn RunLedger) -> Result<SweepReport, ProviderError> {
        self.inner.sweep(ledger).await
    }
    fn reads_logs(&self) -> bool {
        self.inner.reads_logs()
    }
    async fn read_logs(
        &self,
        id: &str,
        job: &ValidatedJob,
        cursor: &mut pushpool_provider::LogCursor,
    ) -> Result<Vec<pushpool_provider::ProviderLogLine>, ProviderError> {
        self.inner.read_logs(id, job, cursor).await
    }
    fn summarize(&self, end: &pushpool_provider::RunEnd<'_>) -> pushpool_provider::ErrorSummary {
        self.inner.summarize(end)
    }
}

/// Peak resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the benchmark; `progress` receives human-readable lines while it runs.
pub async fn run_bench(
    options: BenchOptions,
    progress: impl Fn(String),
) -> Result<BenchReport, StoreError> {
    let temp_dir =
        std::env::temp_dir().join(format!("pushpool-bench-{}", uuid::Uuid::new_v4().simple()));
    let url = match &options.database_url {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&temp_dir).map_err(|e| StoreError::Invalid {
                field: "database_url".into(),
                message: format!("cannot create {}: {e}", temp_dir.display()),
            })?;
            format!("sqlite://{}", temp_dir.join("bench.db").display())
        }
    };
    let connect = || {
        Store::connect_with(
            &url,
            ConnectOptions {
                max_connections: 8,
                ..ConnectOptions::default()
            },
        )
    };
    let store = connect().await?;
    let backend = format!("{:?}", store.backend()).to_lowercase();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let ws = store.create_workspace(&format!("bench-{tag}")).await?;
    let provider = NullProvider::new(options.provider_latency);
    let inner: Arc<dyn DynProvider> = match options.provider.as_str() {
        "null" => Arc::new(provider.clone()),
        #[cfg(feature = "process")]
        "process" => Arc::new(pushpool_process::ProcessProvider::new()),
        other => {
            return Err(StoreError::Invalid {
                field: "provider".into(),
                message: format!("must be `null` or `process` (built in), not `{other}`"),
            })
        }
    };
    let timed = Arc::new(Timed {
        inner,
        submitted: Mutex::default(),
    });
    let template = timed.default_base_job_template();
    let mut job_variables = Map::new();
    if options.provider == "process" {
        job_variables.insert(
            "command".into(),
            Value::String(options.process_command.clone()),
        );
        job_variables.insert("stream_output".into(), Value::Bool(false));
    }
    store
        .create_pool(
            ws.id,
            NewPool {
                name: "bench".into(),
                pool_type: timed.pool_type().into(),
                description: None,
                base_job_template: template,
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await?;
    let deployment = store
        .create_deployment(
            ws.id,
            NewDeployment {
                name: "bench".into(),
                work_pool: "bench".into(),
                work_queue: None,
                job_variables,
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await?;
    // The bench's own null provider (instead of the environment's) so it can count submissions.
    let mut registry = registry_with_null();
    registry.register(timed.clone());
    if options.preload > 0 {
        progress(format!(
            "preloading {} old runs and {} future ones",
            options.preload,
            options.preload / 10
        ));
        let (template, _) = store.create_run(&deployment, NewRun::default()).await?;
        store
            .preload_runs(template.id, options.preload, options.preload / 10)
            .await?;
        for to in [StateType::Pending, StateType::Running, StateType::Completed] {
            store
                .propose_state(
                    template.id,
                    pushpool::state::Proposal::new(to),
                    pushpool::store::TransitionGuard::default(),
                )
                .await?;
        }
        store.vacuum_analyze().await?;
        progress("preloaded".into());
    }
    let tokens = RunTokens::new(b"bench".to_vec());

    let start_controllers = |stores: Vec<Store>| {
        stores
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut config = ControllerConfig {
                    id: format!("bench-{tag}-{i}"),
                    process_pools: pushpool::execution::ProcessPools::All,
                    ..ControllerConfig::default()
                };
                if let Some(n) = options.max_in_flight {
                    config.max_in_flight = n;
                    config.max_in_flight_per_workspace = Some(n);
                }
                let c = Controller::new(Context::new(
                    s,
                    registry.clone(),
                    config,
                    tokens.clone(),
                    Arc::new(Metrics::default()),
                ));
                let runner = c.clone();
                let handle = tokio::spawn(async move { runner.run(Duration::from_secs(10)).await });
                (c, handle)
            })
            .collect::<Vec<_>>()
    };
    let mut controller_stores = vec![];
    for _ in 0..options.controllers.max(1) {
        controller_stores.push(connect().await?);
    }

    let first_due;
    let controllers;
    let rss_before;
    let writes_before;
    let mut ids = Vec::with_capacity(options.runs);
    if options.rate <= 0.0 {
        progress(format!("creating {} runs", options.runs));
        for i in 0..options.runs {
            ids.push(store.create_run(&deployment, NewRun::default()).await?.0.id);
            if (i + 1) % 2000 == 0 {
                progress(format!("  created {}", i + 1));
            }
        }
        first_due = Instant::now();
        progress(format!(
            "starting {} controller(s)",
            options.controllers.max(1)
        ));
        rss_before = rss_bytes();
        writes_before = pushpool::store::write_commits();
        controllers = start_controllers(controller_stores);
    } else {
        rss_before = rss_bytes();
        writes_before = pushpool::store::write_commits();
        controllers = start_controllers(controller_stores);
        first_due = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / options.rate);
        progress(format!(
            "creating {} runs at {}/s",
            options.runs, options.rate
        ));
        for i in 0..options.runs {
            let due = first_due + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            ids.push(store.create_run(&deployment, NewRun::default()).await?.0.id);
        }
    }

    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(options.runs as u64 * 20);
    let mut last_report = Instant::now();
    let mut terminal;
    let (mut max_in_flight, mut rss_at_max) = (0, rss_before);
    loop {
        let in_flight: usize = controllers.iter().map(|(c, _)| c.in_flight()).sum();
        if in_flight > max_in_flight {
            max_in_flight = in_flight;
            rss_at_max = rss_bytes();
        }
        let unfinished = store
            .unfinished_runs(deployment.work_pool_id, pushpool::model::now_micros())
            .await?;
        terminal = options.runs.saturating_sub(unfinished as usize);
        if terminal >= options.runs || Instant::now() > deadline {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            progress(format!(
                "  {terminal}/{} terminal, {:.1}s",
                options.runs,
                first_due.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = first_due.elapsed().as_secs_f64();
    // Writes of the run creations (rate mode) are the producer's, not the controllers'.
    let creations = if options.rate > 0.0 { options.runs } else { 0 };
    let writes =
        (pushpool::store::write_commits() - writes_before).saturating_sub(creations as u64);
    for (c, _) in &controllers {
        c.shutdown();
    }
    for (_, h) in controllers {
        let _ = h.await;
    }

    // Lag per run: provider's first submit call minus the later of scheduled and created.
    let submits = if options.provider == "null" {
        provider.first_submits()
    } else {
        timed.submitted()
    };
    let returned = timed.submitted();
    let running = store.running_times(ws.id).await?;
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let mut lags = Vec::with_capacity(options.runs);
    let mut to_running = Vec::with_capacity(options.runs);
    let mut completed = 0;
    let mut runs = Vec::with_capacity(ids.len());
    for id in &ids {
        runs.push(store.run(*id).await?);
    }
    for run in &runs {
        if run.state.state_type == StateType::Completed {
            completed += 1;
        }
        if let Some(at) = submits.get(&run.id) {
            let due = run.scheduled_time.max(run.created);
            lags.push(ms(*at - due));
        }
        if let (Some(sent), Some(started)) = (returned.get(&run.id), running.get(&run.id)) {
            to_running.push(ms(*started - *sent));
        }
    }
    let by_value = |a: &f64, b: &f64| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
    lags.sort_by(by_value);
    to_running.sort_by(by_value);
    store.close().await;
    if options.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&temp_dir);
    }
    Ok(BenchReport {
        store: backend,
        runs: options.runs,
        controllers: options.controllers.max(1),
        rate: options.rate,
        seconds,
        runs_per_sec: if seconds > 0.0 {
            options.runs as f64 / seconds
        } else {
            0.0
        },
        lag_p50_ms: percentile(&lags, 0.50),
        lag_p99_ms: percentile(&lags, 0.99),
        lag_max_ms: lags.last().copied().unwrap_or(0.0),
        peak_rss_mb: peak_rss_mb(),
        double_submits: provider.double_submits(),
        lost: options.runs.saturating_sub(terminal),
        completed,
        provider: options.provider.clone(),
        preload: options.preload,
        submit_to_running_p50_ms: percentile(&to_running, 0.50),
        submit_to_running_p99_ms: percentile(&to_running, 0.99),
        max_in_flight,
        bytes_per_run_in_flight: if max_in_flight >= 100 {
            (rss_at_max - rss_before).max(0.0) / max_in_flight as f64
        } else {
            0.0
        },
        store_writes_per_run: writes as f64 / options.runs as f64,
    })
}
