//! `pushpool bench`: N runs through full lifecycles on the built-in `null` provider.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let template = pushpool_provider::Provider::default_base_job_template(&provider);
    store
        .create_pool(
            ws.id,
            NewPool {
                name: "bench".into(),
                pool_type: pushpool_null::POOL_TYPE.into(),
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
                job_variables: Map::new(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await?;
    // The bench's own null provider (instead of the environment's) so it can count submissions.
    let mut registry = registry_with_null();
    registry.register(Arc::new(provider.clone()));
    let tokens = RunTokens::new(b"bench".to_vec());

    let start_controllers = |stores: Vec<Store>| {
        stores
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let config = ControllerConfig {
                    id: format!("bench-{tag}-{i}"),
                    ..ControllerConfig::default()
                };
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
    if options.rate <= 0.0 {
        progress(format!("creating {} runs", options.runs));
        for i in 0..options.runs {
            store.create_run(&deployment, NewRun::default()).await?;
            if (i + 1) % 2000 == 0 {
                progress(format!("  created {}", i + 1));
            }
        }
        first_due = Instant::now();
        progress(format!(
            "starting {} controller(s)",
            options.controllers.max(1)
        ));
        controllers = start_controllers(controller_stores);
    } else {
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
            store.create_run(&deployment, NewRun::default()).await?;
        }
    }

    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(options.runs as u64 * 20);
    let mut last_report = Instant::now();
    let mut terminal;
    loop {
        let counts = store.count_by_state().await?;
        terminal = counts
            .iter()
            .filter(|(s, _)| s.is_terminal())
            .map(|(_, n)| *n as usize)
            .sum::<usize>();
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
    for (c, _) in &controllers {
        c.shutdown();
    }
    for (_, h) in controllers {
        let _ = h.await;
    }

    // Lag per run: provider's first submit call minus the later of scheduled and created.
    let submits = provider.first_submits();
    let mut lags = Vec::with_capacity(options.runs);
    let mut completed = 0;
    for run in &store.all_runs(ws.id).await? {
        if run.state.state_type == StateType::Completed {
            completed += 1;
        }
        if let Some(at) = submits.get(&run.id) {
            let due = run.scheduled_time.max(run.created);
            lags.push((*at - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
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
    })
}
