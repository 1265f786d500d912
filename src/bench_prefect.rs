//! `pushpool bench --prefect-api-url URL`: dispatch lag against a Prefect server. A `null`
//! pool and a deployment are created on the server, a Prefect-mode controller (in this process,
//! with the bench's own `null` provider) serves them, and N runs come due: scheduled
//! `--ahead-seconds` ahead (runs known ahead), or created due now at `--rate` per second (runs
//! created ad hoc). Reported: scheduled→PENDING (from Prefect's state history) and
//! scheduled→submit (the provider's first submit call) percentiles, both from the later of the
//! run's scheduled time and its creation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use pushpool::auth::RunTokens;
use pushpool::controller::prefect::{PrefectAuth, PrefectClient, PrefectPlane, PrefectSettings};
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::registry::registry_with_null;
use pushpool_null::NullProvider;
use serde::Serialize;
use serde_json::{json, Value};

use crate::bench::peak_rss_mb;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PrefectBenchOptions {
    /// The Prefect API.
    pub api_url: String,
    /// Its credentials.
    pub auth: PrefectAuth,
    /// Number of runs.
    pub runs: usize,
    /// Runs per second coming due.
    pub rate: f64,
    /// How far ahead runs are scheduled; zero: created due now.
    pub ahead: Duration,
}

/// The result, printed as the last line.
#[derive(Debug, Clone, Serialize)]
pub struct PrefectBenchReport {
    /// `ahead` or `due_now`.
    pub mode: String,
    /// Runs.
    pub runs: usize,
    /// Seconds ahead runs were scheduled.
    pub ahead_seconds: f64,
    /// Runs per second coming due.
    pub rate: f64,
    /// Scheduled→PENDING median, ms.
    pub pending_p50_ms: f64,
    /// Scheduled→PENDING 95th percentile, ms.
    pub pending_p95_ms: f64,
    /// Scheduled→submit median, ms.
    pub submit_p50_ms: f64,
    /// Scheduled→submit 95th percentile, ms.
    pub submit_p95_ms: f64,
    /// Scheduled→submit 99th percentile, ms.
    pub submit_p99_ms: f64,
    /// Largest scheduled→submit lag, ms.
    pub submit_max_ms: f64,
    /// Runs submitted more than once.
    pub double_submits: u64,
    /// Runs never submitted.
    pub lost: usize,
    /// Peak RSS of this process (controller and bench).
    pub peak_rss_mb: f64,
}

/// `POST`, retried while the server answers 503 (its SQLite store busy) for up to 30 s.
async fn post(client: &PrefectClient, path: &str, body: &Value) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        match client.post(path, body).await {
            Err(e) if e.is_retriable() && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => return Ok(other?),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// Runs the benchmark; `progress` receives human-readable lines.
pub async fn run_prefect_bench(
    options: PrefectBenchOptions,
    progress: impl Fn(String),
) -> anyhow::Result<PrefectBenchReport> {
    let client =
        PrefectClient::new(&options.api_url, options.auth.clone()).map_err(anyhow::Error::msg)?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let pool = format!("pushpool-bench-{tag}");
    let provider = NullProvider::new(Duration::ZERO);
    let template = pushpool_provider::Provider::default_base_job_template(&provider);
    client
        .post(
            "/work_pools/",
            &json!({"name": pool, "type": pushpool_null::POOL_TYPE, "base_job_template": template}),
        )
        .await
        .context("creating the bench pool")?;
    let flow = client.post("/flows/", &json!({"name": pool})).await?;
    let deployment = client
        .post(
            "/deployments/",
            &json!({"name": pool, "flow_id": flow["id"], "work_pool_name": pool}),
        )
        .await?;
    let deployment = deployment["id"].as_str().unwrap_or_default().to_string();

    let mut registry = registry_with_null();
    registry.register(Arc::new(provider.clone()));
    let mut settings = PrefectSettings::new(&options.api_url, options.auth.clone());
    settings.pools = vec![pool.clone()];
    let config = ControllerConfig {
        id: format!("pushpool-bench-{tag}"),
        ..ControllerConfig::default()
    };
    let plane = PrefectPlane::new(settings, &config.id, vec![pushpool_null::POOL_TYPE.into()])
        .map_err(anyhow::Error::msg)?;
    let ctx = Context::with_plane(
        Arc::new(plane),
        registry,
        config,
        RunTokens::new(b"bench".to_vec()),
        Arc::new(Metrics::default()),
    );
    let controller = Controller::new(ctx);
    let runner = controller.clone();
    let handle = tokio::spawn(async move { runner.run(Duration::from_secs(10)).await });
    // A new controller claims nothing during its start grace (docs/prefect.md).
    tokio::time::sleep(
        PrefectSettings::new("", PrefectAuth::None).start_grace + Duration::from_millis(500),
    )
    .await;

    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.1));
    let mut ids = Vec::with_capacity(options.runs);
    let path = format!("/deployments/{deployment}/create_flow_run");
    if options.ahead.is_zero() {
        progress(format!(
            "creating {} runs due now, {}/s",
            options.runs, options.rate
        ));
        let start = Instant::now();
        for i in 0..options.runs {
            tokio::time::sleep_until((start + interval.mul_f64(i as f64)).into()).await;
            let run = post(&client, &path, &json!({})).await?;
            ids.push(run["id"].as_str().unwrap_or_default().to_string());
        }
    } else {
        // Every run is created at least `ahead` before it falls due.
        let creating = Duration::from_millis(50).mul_f64(options.runs as f64);
        let first = Utc::now() + chrono::Duration::from_std(options.ahead + creating)?;
        progress(format!(
            "creating {} runs due from {first} on, {}/s",
            options.runs, options.rate
        ));
        for i in 0..options.runs {
            let at = first + chrono::Duration::from_std(interval.mul_f64(i as f64))?;
            let body = json!({"state": {"type": "SCHEDULED", "name": "Scheduled",
                                        "state_details": {"scheduled_time": at.to_rfc3339()}}});
            let run = post(&client, &path, &body).await?;
            ids.push(run["id"].as_str().unwrap_or_default().to_string());
        }
    }
    let deadline = Instant::now()
        + Duration::from_secs(60)
        + interval.mul_f64(options.runs as f64 * 2.0)
        + options.ahead * 2;
    loop {
        let submitted = provider.first_submits().len();
        if submitted >= options.runs || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last runs be recorded, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    controller.shutdown();
    let _ = handle.await;

    let submits = provider.first_submits();
    let (mut pending, mut submit) = (Vec::new(), Vec::new());
    let mut lost = 0;
    for id in &ids {
        let run = client.get(&format!("/flow_runs/{id}")).await?;
        let scheduled =
            time(&run["expected_start_time"]).or_else(|| time(&run["next_scheduled_start_time"]));
        let created = time(&run["created"]);
        let (Some(scheduled), Some(created)) = (scheduled, created) else {
            continue;
        };
        let due = scheduled.max(created);
        match uuid::Uuid::parse_str(id).ok().and_then(|u| submits.get(&u)) {
            Some(at) => submit.push(ms(*at - due)),
            None => lost += 1,
        }
        let states = client
            .get(&format!("/flow_run_states/?flow_run_id={id}"))
            .await?;
        let first_pending = states
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"] == "PENDING")
            .filter_map(|s| time(&s["timestamp"]))
            .min();
        if let Some(at) = first_pending {
            pending.push(ms(at - due));
        }
    }
    let sort =
        |v: &mut Vec<f64>| v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sort(&mut pending);
    sort(&mut submit);
    Ok(PrefectBenchReport {
        mode: if options.ahead.is_zero() {
            "due_now"
        } else {
            "ahead"
        }
        .into(),
        runs: options.runs,
        ahead_seconds: options.ahead.as_secs_f64(),
        rate: options.rate,
        pending_p50_ms: percentile(&pending, 0.5),
        pending_p95_ms: percentile(&pending, 0.95),
        submit_p50_ms: percentile(&submit, 0.5),
        submit_p95_ms: percentile(&submit, 0.95),
        submit_p99_ms: percentile(&submit, 0.99),
        submit_max_ms: submit.last().copied().unwrap_or(0.0),
        double_submits: provider.double_submits(),
        lost,
        peak_rss_mb: peak_rss_mb(),
    })
}
