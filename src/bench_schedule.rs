//! `pushpool bench --mode schedule`: how long the scheduler takes to fill its window for N
//! deployments with a minutely schedule each (issue 13; figure in docs/benchmarks.md).

use std::time::Instant;

use pushpool::schedule::{Catchup, Kind};
use pushpool::scheduler::{ManualClock, Scheduler, SchedulerConfig};
use pushpool::store::{ConnectOptions, NewDeployment, NewPool, NewSchedule, Store, StoreError};
use serde::Serialize;
use serde_json::Map;

/// The result, printed as the last line.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleBenchReport {
    /// Always `schedule`.
    pub mode: &'static str,
    /// Backend.
    pub store: String,
    /// Deployments, each with one minutely schedule.
    pub deployments: usize,
    /// Runs the first pass created (the whole window).
    pub runs: u64,
    /// Seconds the first pass (filling every window) took.
    pub seconds: f64,
    /// Runs created per second by that pass.
    pub runs_per_sec: f64,
    /// Seconds of the next pass a minute later (one new slot per schedule).
    pub next_tick_seconds: f64,
    /// Runs that pass created.
    pub next_tick_runs: u64,
    /// Peak resident memory of this process.
    pub peak_rss_mb: f64,
}

/// Creates `deployments` deployments with a `* * * * *` schedule, then times the scheduler's
/// first pass with the default window (at least 3 runs and 1 hour ahead) and the pass after it.
pub async fn run_schedule_bench(
    database_url: Option<String>,
    deployments: usize,
    progress: impl Fn(String),
) -> Result<ScheduleBenchReport, StoreError> {
    let temp_dir =
        std::env::temp_dir().join(format!("pushpool-bench-{}", uuid::Uuid::new_v4().simple()));
    let url = match database_url {
        Some(u) => u,
        None => {
            std::fs::create_dir_all(&temp_dir).map_err(|e| StoreError::Invalid {
                field: "database_url".into(),
                message: format!("cannot create {}: {e}", temp_dir.display()),
            })?;
            format!("sqlite://{}", temp_dir.join("bench.db").display())
        }
    };
    let store = Store::connect_with(&url, ConnectOptions::default()).await?;
    let backend = format!("{:?}", store.backend()).to_lowercase();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let ws = store.create_workspace(&format!("bench-{tag}")).await?;
    let provider = pushpool_null::NullProvider::default();
    store
        .create_pool(
            ws.id,
            NewPool {
                name: "bench".into(),
                pool_type: pushpool_null::POOL_TYPE.into(),
                description: None,
                base_job_template: pushpool_provider::Provider::default_base_job_template(
                    &provider,
                ),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await?;
    progress(format!(
        "creating {deployments} deployments with a minutely schedule"
    ));
    for i in 0..deployments {
        let d = store
            .create_deployment(
                ws.id,
                NewDeployment {
                    name: format!("d{i:06}"),
                    work_pool: "bench".into(),
                    work_queue: None,
                    job_variables: Map::new(),
                    parameters: Map::new(),
                    concurrency_limit: None,
                    paused: false,
                },
            )
            .await?;
        store
            .create_schedule(
                &d,
                NewSchedule {
                    kind: Kind::Cron,
                    spec: "* * * * *".into(),
                    timezone: None,
                    anchor: None,
                    active: true,
                    parameters: Map::new(),
                    job_variables: Map::new(),
                    max_active_runs: None,
                    catchup: Catchup::None,
                },
            )
            .await?;
        if (i + 1) % 2000 == 0 {
            progress(format!("  created {}", i + 1));
        }
    }
    let clock = ManualClock::new(chrono::Utc::now());
    let scheduler = Scheduler::with_clock(store.clone(), SchedulerConfig::default(), clock.clone());
    progress("filling the window (first scheduler pass)".into());
    let began = Instant::now();
    let first = scheduler.tick().await?;
    let seconds = began.elapsed().as_secs_f64();
    progress(format!(
        "  {} runs in {seconds:.2} s; next pass a minute later",
        first.created
    ));
    clock.advance(chrono::Duration::minutes(1));
    let began = Instant::now();
    let next = scheduler.tick().await?;
    let next_tick_seconds = began.elapsed().as_secs_f64();
    store.close().await;
    let _ = std::fs::remove_dir_all(&temp_dir);
    Ok(ScheduleBenchReport {
        mode: "schedule",
        store: backend,
        deployments,
        runs: first.created,
        seconds,
        runs_per_sec: first.created as f64 / seconds.max(1e-9),
        next_tick_seconds,
        next_tick_runs: next.created,
        peak_rss_mb: crate::bench::peak_rss_mb(),
    })
}
