//! Issue 16, "outcomes that survive a restart": `pushpool up` (the real binary) is SIGKILLed while
//! 30 `process` runs of `sleep 2` are in flight and restarted at once on the same data directory.
//! Every run ends COMPLETED (the jobs' supervisor recorded their exit status, the new controller
//! reads it), no job started twice (each appends its run id to a file), and the previous
//! controller being provably gone (its pid no longer exists), its runs are adopted without
//! waiting for the 30 s lease. The recovery time is printed (`--nocapture`), and checked only
//! against a generous bound below the lease. On SQLite (`up`'s own file) and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pushpool_testkit::call_json;
use serde_json::{json, Value};

const RUNS: usize = 30;

/// Starts `pushpool up` on `home` (and `database_url`, else its SQLite file), listening on
/// `listen`; returns once it answers.
async fn up(home: &Path, runs_dir: &Path, listen: &str, database_url: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pushpool"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PUSHPOOL_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .arg("up")
        .arg("--home")
        .arg(home)
        .arg("--listen")
        .arg(listen)
        .arg("--runs-dir")
        .arg(runs_dir)
        .args(
            database_url
                .map(|url| ["--database-url", url])
                .into_iter()
                .flatten(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start `pushpool up`");
    let started = Instant::now();
    let client = http();
    while client
        .get(format!("http://{listen}/healthz"))
        .send()
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait().expect("poll the server") {
            panic!("`pushpool up` exited at start with {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/api/workspaces/default{path}", self.base);
        call_json(&self.client, method, &url, &self.key, body).await
    }

    async fn states(&self, ids: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for id in ids {
            let (s, run) = self.call("GET", &format!("/flow_runs/{id}"), None).await;
            assert_eq!(s, 200, "{run}");
            out.push(run["state"]["type"].as_str().unwrap_or("").to_string());
        }
        out
    }
}

fn is_final(state: &str) -> bool {
    ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].contains(&state)
}

/// Ends the child that is still running at a failed assert.
struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_up_with_30_process_runs_in_flight_loses_no_outcome() {
    kill_and_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_up_with_30_process_runs_in_flight_loses_no_outcome_postgres() {
    if let Some(db) = pushpool_testkit::db::postgres_db().await {
        kill_and_restart(Some(&db.url)).await;
    }
}

/// The scenario, on `database_url` (else `up`'s own SQLite file).
async fn kill_and_restart(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let runs_dir = dir.path().join("runs");
    let work: PathBuf = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let starts = work.join("starts");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");

    let mut guard = Guard(Some(up(&home, &runs_dir, &listen, database_url).await));
    let key = std::fs::read_to_string(home.join("owner.key")).expect("owner.key");
    let api = Api {
        client: http(),
        base: format!("http://{listen}"),
        key: key.trim().to_string(),
    };
    let (s, b) = api
        .call(
            "POST",
            "/work_pools",
            Some(json!({"name": "local", "type": "process"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let command = format!("echo \"$PUSHPOOL_RUN_ID\" >> {}; sleep 2", starts.display());
    let (s, b) = api
        .call(
            "POST",
            "/deployments",
            Some(json!({"name": "sleeper", "work_pool": "local",
                        "job_variables": {"command": command, "write_paths": [work]}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        let (s, run) = api
            .call("POST", "/deployments/sleeper/runs", Some(json!({})))
            .await;
        assert_eq!(s, 201, "{run}");
        ids.push(run["id"].as_str().unwrap().to_string());
    }

    // Every job started (its infrastructure recorded: RUNNING), most still sleeping.
    let since = Instant::now();
    loop {
        let states = api.states(&ids).await;
        if states.iter().all(|s| s == "RUNNING" || is_final(s)) {
            let in_flight = states.iter().filter(|s| *s == "RUNNING").count();
            println!("killing `pushpool up` with {in_flight} of {RUNS} runs in flight");
            assert!(in_flight > 0, "{states:?}");
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "runs not started: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first = guard.0.take().unwrap();
    first.kill().expect("SIGKILL `pushpool up`");
    first.wait().unwrap();

    let restarted = Instant::now();
    guard.0 = Some(up(&home, &runs_dir, &listen, database_url).await);
    let api_up = restarted.elapsed();
    let states = loop {
        let states = api.states(&ids).await;
        if states.iter().all(|s| is_final(s)) {
            break states;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "runs not over: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recovery = restarted.elapsed();
    println!(
        "restart recovery: API answering after {:.2} s, all {RUNS} runs final after {:.2} s",
        api_up.as_secs_f64(),
        recovery.as_secs_f64()
    );
    assert!(
        states.iter().all(|s| s == "COMPLETED"),
        "every run COMPLETED: {states:?}"
    );
    let text = std::fs::read_to_string(&starts).unwrap();
    let mut started: Vec<&str> = text.lines().collect();
    assert_eq!(started.len(), RUNS, "each job started once:\n{text}");
    started.sort_unstable();
    started.dedup();
    assert_eq!(started.len(), RUNS, "no job started twice:\n{text}");
    // Without the handover the runs wait for the previous controller's 30 s lease.
    assert!(
        recovery < Duration::from_secs(20),
        "runs adopted only after {recovery:?}: the previous owner's leases were not handed over"
    );
}
