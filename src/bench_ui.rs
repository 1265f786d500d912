//! `pushpool bench --mode ui`: how long the dashboard's pages take with N runs in the store
//! (issue 15: under 100 ms with 100,000 runs). The runs are spread over the last week (a
//! backfilled 6-second interval schedule), a sample is moved through RUNNING to COMPLETED or
//! FAILED, one run gets 1,000 log lines, on PostgreSQL `VACUUM ANALYZE` runs (as
//! autovacuum would);
//! then `pushpool api` serves the store in-process and
//! each page is fetched over loopback with the owner's session cookie. The time per page is
//! measured at the client, so it includes HTTP on loopback: an upper bound of the server's.

use std::time::{Duration, Instant};

use pushpool::model::{now_micros, Deployment};
use pushpool::schedule::{Catchup, Kind};
use pushpool::server::{bootstrap, serve, ServeOptions};
use pushpool::state::{Proposal, StateType, TransitionGuard};
use pushpool::store::{ConnectOptions, NewDeployment, NewPool, NewSchedule, RunFilter, Store};
use serde::Serialize;
use serde_json::Map;

/// One page's timings.
#[derive(Debug, Clone, Serialize)]
pub struct PageTiming {
    /// The path fetched.
    pub path: String,
    /// Fetches.
    pub requests: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// The result, printed as the last line.
#[derive(Debug, Clone, Serialize)]
pub struct UiBenchReport {
    /// Always `ui`.
    pub mode: &'static str,
    /// Backend.
    pub store: String,
    /// Runs in the store.
    pub runs: usize,
    /// Per page.
    pub pages: Vec<PageTiming>,
    /// The slowest page's p95, ms.
    pub worst_p95_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn seed(
    store: &Store,
    runs: usize,
    progress: &impl Fn(String),
) -> anyhow::Result<Deployment> {
    let ws = store.workspace("default").await?;
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
                concurrency_limit: Some(50),
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await?;
    let d = store
        .create_deployment(
            ws.id,
            NewDeployment {
                name: "etl".into(),
                work_pool: "bench".into(),
                work_queue: None,
                job_variables: Map::new(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await?;
    let week = chrono::Duration::days(7);
    let every = (week.num_milliseconds() as f64 / runs as f64 / 1000.0).max(1.0) as u64;
    let schedule = store
        .create_schedule(
            &d,
            NewSchedule {
                kind: Kind::Interval,
                spec: every.to_string(),
                timezone: None,
                anchor: None,
                active: false,
                parameters: Map::new(),
                job_variables: Map::new(),
                max_active_runs: None,
                catchup: Catchup::None,
            },
        )
        .await?;
    progress(format!(
        "creating {runs} runs over the last week (one every {every} s)"
    ));
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::seconds(every as i64 * runs as i64);
    let (_, created) =
        pushpool::scheduler::backfill(store, &d, &[schedule], from, to, runs).await?;
    progress(format!("created {created} runs; finishing a sample"));
    let filter = RunFilter {
        limit: Some(1000),
        ..RunFilter::default()
    };
    let sample = store.list_runs(ws.id, &filter).await?;
    for (i, run) in sample.iter().enumerate() {
        let end = if i % 7 == 0 {
            StateType::Failed
        } else {
            StateType::Completed
        };
        for to in [StateType::Pending, StateType::Running, end] {
            store
                .propose_state(run.id, Proposal::new(to), TransitionGuard::default())
                .await?;
        }
    }
    if let Some(run) = sample.first() {
        let lines: Vec<(i64, String, String)> = (0..1000)
            .map(|i| {
                (
                    now_micros(),
                    "stdout".to_string(),
                    format!("log line {i} of the bench run"),
                )
            })
            .collect();
        store.append_logs(run.id, &lines).await?;
    }
    Ok(d)
}

/// Seeds a fresh store with `runs` runs, serves it and times each page `repeat` times.
pub async fn run_ui_bench(
    database_url: Option<String>,
    runs: usize,
    repeat: usize,
    progress: impl Fn(String),
) -> anyhow::Result<UiBenchReport> {
    let dir = std::env::temp_dir().join(format!(
        "pushpool-bench-ui-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let url =
        database_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("bench.db").display()));
    let store = Store::connect_with(&url, ConnectOptions::default()).await?;
    let backend = format!("{:?}", store.backend()).to_lowercase();
    let key = bootstrap(&store, &dir)
        .await?
        .ok_or_else(|| anyhow::anyhow!("--mode ui needs an empty store"))?;
    let began = Instant::now();
    seed(&store, runs, &progress).await?;
    // What autovacuum does on PostgreSQL a little after such a bulk insert (without it the
    // planner still believes the table is empty and some run lists scan every run).
    store.vacuum_analyze().await?;
    progress(format!(
        "seeded and analyzed in {:.1} s",
        began.elapsed().as_secs_f64()
    ));
    let ws = store.workspace("default").await?;
    let sample = store
        .list_runs(
            ws.id,
            &RunFilter {
                limit: Some(1),
                ..RunFilter::default()
            },
        )
        .await?;
    // The newest run has the 1,000 log lines; an older one is still SCHEDULED (late).
    let with_logs = sample.first().map(|r| r.id).unwrap_or_default();
    let late = store
        .list_runs(
            ws.id,
            &RunFilter {
                limit: Some(1),
                states: vec![StateType::Scheduled],
                ..RunFilter::default()
            },
        )
        .await?
        .first()
        .map(|r| r.id)
        .unwrap_or_default();

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        database_url: url.clone(),
        listen: Some(addr),
        controller: false,
        ..Default::default()
    };
    let server = tokio::spawn(serve(store.clone(), options, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().no_proxy().build()?;
    let base = format!("http://{addr}");
    for _ in 0..250 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pages = [
        "/ui".to_string(),
        "/ui?window=hour".into(),
        "/ui?window=week".into(),
        "/ui/runs".into(),
        "/ui/runs?state=FAILED".into(),
        "/ui/runs?deployment=etl&state=SCHEDULED".into(),
        format!("/ui/runs/{with_logs}"),
        format!("/ui/runs/{late}"),
        format!("/ui/runs/{with_logs}/live?logs=0"),
        "/ui/deployments".into(),
        "/ui/deployments/etl".into(),
        "/ui/pools".into(),
        "/ui/pools/bench".into(),
        "/ui/events".into(),
        "/ui/audit".into(),
        "/docs".into(),
    ];
    let mut out = vec![];
    for path in pages {
        let mut times = vec![];
        for i in 0..repeat + 2 {
            let t = Instant::now();
            let r = client
                .get(format!("{base}{path}"))
                .header("cookie", format!("pushpool_session={key}"))
                .send()
                .await?;
            let status = r.status();
            let _ = r.bytes().await?;
            let elapsed = t.elapsed();
            anyhow::ensure!(status.is_success(), "{path} answered {status}");
            if i >= 2 {
                times.push(ms(elapsed));
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let pick = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
        let timing = PageTiming {
            path: path.clone(),
            requests: times.len(),
            p50_ms: pick(0.5),
            p95_ms: pick(0.95),
            max_ms: *times.last().unwrap_or(&0.0),
        };
        progress(format!(
            "{path}: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            timing.p50_ms, timing.p95_ms, timing.max_ms
        ));
        out.push(timing);
    }
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    let worst = out.iter().map(|p| p.p95_ms).fold(0.0, f64::max);
    Ok(UiBenchReport {
        mode: "ui",
        store: backend,
        runs,
        pages: out,
        worst_p95_ms: worst,
    })
}
