//! `pushpool bench`: its flags and which benchmark they pick (run lifecycles, the scheduler's
//! window, or dispatch lag against a Prefect server).

use std::time::Duration;

use anyhow::Context;

use crate::bench::{run_bench, BenchOptions};
use crate::{bench_prefect, bench_schedule};

/// Flags of `pushpool bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `sqlite` (a fresh temp file) or `postgres` (needs --database-url).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// Store URL (required for postgres; for sqlite a file path/URL instead of a temp file).
    #[arg(long, env = "PUSHPOOL_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Number of runs.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Runs per second coming due; 0 makes all due at once.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Null provider submit latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub provider_latency_ms: u64,
    /// Controller instances, each with its own connections.
    #[arg(long, default_value_t = 1)]
    pub controllers: usize,
    /// Put this many old COMPLETED runs (and a tenth as many runs scheduled a day or more
    /// ahead) in the bench's pool first, to measure on a long-lived store.
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Most runs in flight per controller (and per workspace); default: the controller's.
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// `null` (no jobs, default) or `process` (a child process per run running --command).
    #[arg(long, default_value = "null", value_parser = ["null", "process"])]
    pub provider: String,
    /// Shell command of each run with `--provider process`.
    #[arg(long, default_value = "true")]
    pub command: String,
    /// `runs` (default): run lifecycles; `schedule`: time the scheduler filling its window
    /// for --deployments deployments with a minutely schedule each; `ui`: time the dashboard's
    /// pages with --runs runs in the store (docs/ui.md).
    #[arg(long, default_value = "runs", value_parser = ["runs", "schedule", "ui"])]
    pub mode: String,
    /// Deployments of `--mode schedule`.
    #[arg(long, default_value_t = 10_000)]
    pub deployments: usize,
    /// Measure dispatch lag against this Prefect server instead (docs/prefect.md): runs of a
    /// `null` pool created there come due at --rate per second (default 10 in this mode).
    #[arg(long)]
    pub prefect_api_url: Option<String>,
    /// With --prefect-api-url: schedule runs this many seconds ahead (0: created due now).
    #[arg(long, default_value_t = 0.0, requires = "prefect_api_url")]
    pub ahead_seconds: f64,
}

/// Runs the benchmark the flags pick and prints its report as one JSON line.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs {
        store,
        database_url,
        runs,
        rate,
        provider_latency_ms,
        controllers,
        preload,
        max_in_flight,
        provider,
        command,
        mode,
        deployments,
        prefect_api_url,
        ahead_seconds,
    } = args;
    if let Some(api_url) = prefect_api_url {
        anyhow::ensure!(runs >= 1, "--runs must be at least 1");
        let auth = pushpool::controller::prefect::PrefectAuth::from_values(
            std::env::var("PREFECT_API_KEY").ok(),
            std::env::var("PREFECT_API_AUTH_STRING").ok(),
        );
        let report = bench_prefect::run_prefect_bench(
            bench_prefect::PrefectBenchOptions {
                api_url,
                auth,
                runs,
                rate: if rate > 0.0 { rate } else { 10.0 },
                ahead: Duration::from_secs_f64(ahead_seconds.max(0.0)),
            },
            |line| eprintln!("{line}"),
        )
        .await?;
        println!("{}", serde_json::to_string(&report)?);
        if report.double_submits > 0 || report.lost > 0 {
            anyhow::bail!(
                "bench found {} double submissions and {} runs never submitted",
                report.double_submits,
                report.lost
            );
        }
        return Ok(());
    }
    let database_url = match store.as_str() {
        "sqlite" => database_url,
        "postgres" => Some(database_url.context("--store postgres needs --database-url")?),
        other => anyhow::bail!("--store must be `sqlite` or `postgres`, not `{other}`"),
    };
    if mode == "ui" {
        anyhow::ensure!(runs >= 1, "--runs must be at least 1");
        let report =
            crate::bench_ui::run_ui_bench(database_url, runs, 20, |line| eprintln!("{line}"))
                .await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if mode == "schedule" {
        let report = bench_schedule::run_schedule_bench(database_url, deployments, |line| {
            eprintln!("{line}")
        })
        .await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    anyhow::ensure!(
        max_in_flight != Some(0),
        "--max-in-flight must be at least 1"
    );
    let report = run_bench(
        BenchOptions {
            database_url,
            runs,
            rate,
            provider_latency: Duration::from_millis(provider_latency_ms),
            controllers,
            preload,
            max_in_flight,
            provider,
            process_command: command,
        },
        |line| eprintln!("{line}"),
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    if report.double_submits > 0 || report.lost > 0 {
        anyhow::bail!(
            "bench found {} double submissions and {} lost runs",
            report.double_submits,
            report.lost
        );
    }
    Ok(())
}
