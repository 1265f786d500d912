//! End to end against a real Prefect server (issue 12): pushpool serves Prefect's push pools,
//! real Python flows run to their states in Prefect. See harness.rs for how the server and the
//! controllers are started, and docs/prefect.md.

mod clouds;
mod harness;
mod lambda;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use harness::{process_job_variables, unique, ControllerProcess, PrefectServer};
use serde_json::json;

const TERMINAL: &[&str] = &["COMPLETED", "FAILED", "CRASHED", "CANCELLED"];

macro_rules! prefect_or_skip {
    () => {{
        let Some(venv) = harness::venv() else {
            return Ok(());
        };
        PrefectServer::start(&venv).await?
    }};
}

/// A real flow in a `process` push pool runs to COMPLETED with its logs in Prefect; a raising
/// flow ends FAILED; a job that dies before the flow engine starts (a bad command, a killed
/// process) ends CRASHED with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn real_flows_end_completed_failed_and_crashed() -> anyhow::Result<()> {
    let server = prefect_or_skip!();
    let pool = unique("proc");
    server.create_pool(&pool, "process").await?;
    let dir = tempfile::tempdir()?;
    let vars = process_job_variables(&server.venv, dir.path());
    let hello = server.deploy("hello", "hello", &pool, &vars)?;
    let boom = server.deploy("boom", "boom", &pool, &vars)?;
    let mut bad_vars = vars.clone();
    bad_vars["command"] = json!("no-such-command-pushpool --x");
    let bad = server.deploy("hello", "bad-command", &pool, &bad_vars)?;
    let mut killed_vars = vars.clone();
    killed_vars["command"] = json!("kill -KILL $$");
    let killed = server.deploy("hello", "killed", &pool, &killed_vars)?;
    let _controller = ControllerProcess::start(&server, &pool, 30)?;

    // One at a time (the flows' logs arrive in batches after their end).
    let within = Duration::from_secs(120);
    let ok = server.run_deployment(&hello).await?;
    let run = server.wait_for(&ok, TERMINAL, within).await?;
    assert_eq!(run["state_type"], "COMPLETED", "{run}");
    assert!(
        run["infrastructure_pid"]
            .as_str()
            .is_some_and(|p| p.starts_with("process:")),
        "{run}"
    );
    // The return value is persisted by the flow and referenced by its final state, as Prefect
    // shows it.
    let key = run["state"]["data"]["storage_key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no result record in the final state: {run}"))?;
    let stored = std::fs::read_to_string(dir.path().join("results").join(&key))
        .or_else(|_| std::fs::read_to_string(&key))?;
    assert!(stored.contains("hello world"), "{stored}");
    let logs = server.wait_log(&ok, "Finished in state Completed").await?;
    assert!(
        logs.iter()
            .any(|l| l.contains("hello from pushpool, world")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("Finished in state Completed")),
        "{logs:?}"
    );

    let failing = server.run_deployment(&boom).await?;
    let run = server.wait_for(&failing, TERMINAL, within).await?;
    assert_eq!(run["state_type"], "FAILED", "{run}");
    let logs = server.wait_log(&failing, "boom from the flow").await?;
    assert!(
        logs.iter().any(|l| l.contains("boom from the flow")),
        "{logs:?}"
    );

    let crashing = server.run_deployment(&bad).await?;
    let run = server.wait_for(&crashing, TERMINAL, within).await?;
    assert_eq!(run["state_type"], "CRASHED", "{run}");
    let message = run["state"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("127"),
        "the reason names the exit code: {message}"
    );

    let dying = server.run_deployment(&killed).await?;
    let run = server.wait_for(&dying, TERMINAL, within).await?;
    assert_eq!(run["state_type"], "CRASHED", "{run}");
    let message = run["state"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("SIGKILL") || message.contains("signal 9"),
        "the reason names the signal: {message}"
    );
    Ok(())
}

/// `prefect flow-run cancel` on a running flow: its process is gone within 5 s and the run
/// ends CANCELLED.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_flow_kills_its_process() -> anyhow::Result<()> {
    let server = prefect_or_skip!();
    let pool = unique("cancel");
    server.create_pool(&pool, "process").await?;
    let dir = tempfile::tempdir()?;
    let vars = process_job_variables(&server.venv, dir.path());
    let sleepy = server.deploy("sleepy", "sleepy", &pool, &vars)?;
    let _controller = ControllerProcess::start(&server, &pool, 30)?;
    let id = server.run_deployment(&sleepy).await?;
    server
        .wait_for(&id, &["RUNNING"], Duration::from_secs(120))
        .await?;
    let pidfile = dir.path().join("pid");
    let started = Instant::now();
    while !pidfile.exists() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    let alive = |pid: i32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(alive(pid));

    let status = std::process::Command::new(server.venv.join("bin/prefect"))
        .args(["flow-run", "cancel", &id])
        .env("PREFECT_API_URL", &server.api_url)
        .stdout(std::process::Stdio::null())
        .status()?;
    assert!(status.success());
    let asked = Instant::now();
    while alive(pid) && asked.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = asked.elapsed();
    assert!(
        !alive(pid),
        "the flow's process still runs {took:?} after the cancel"
    );
    assert!(
        took <= Duration::from_secs(5),
        "the process was stopped only after {took:?}"
    );
    let run = server
        .wait_for(&id, TERMINAL, Duration::from_secs(30))
        .await?;
    assert_eq!(run["state_type"], "CANCELLED", "{run}");
    Ok(())
}

/// A job that appends its flow run id to the journal and exits (it does not report states, so
/// its run ends CRASHED: "never reported a final state").
fn journal_vars(dir: &std::path::Path) -> serde_json::Value {
    let journal = dir.join("journal");
    json!({
        "command": format!("echo \"$PREFECT__FLOW_RUN_ID\" >> {}", journal.display()),
        "write_paths": [dir],
    })
}

fn journal_ids(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("journal"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_all_terminal(
    server: &PrefectServer,
    ids: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let runs = server
            .post(
                "/flow_runs/filter",
                json!({"flow_runs": {"id": {"any_": ids}}, "limit": 200}),
            )
            .await?;
        let open: Vec<String> = runs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| !TERMINAL.iter().any(|t| r["state_type"] == *t))
            .map(|r| format!("{} {} {}", r["id"], r["state_type"], r["state"]["message"]))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        if started.elapsed() > within {
            anyhow::bail!(
                "{} runs not terminal after {within:?}, e.g. {:?}",
                open.len(),
                &open[..open.len().min(3)]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Two controllers and 200 due runs: each run's job starts exactly once, every run ends terminal.
#[tokio::test(flavor = "multi_thread")]
async fn two_controllers_start_each_of_200_runs_exactly_once() -> anyhow::Result<()> {
    let server = prefect_or_skip!();
    let pool = unique("pair");
    server.create_pool(&pool, "process").await?;
    let dir = tempfile::tempdir()?;
    let deployment = server
        .api_deployment(&pool, &pool, journal_vars(dir.path()))
        .await?;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(server.run_deployment(&deployment).await?);
    }
    let _a = ControllerProcess::start(&server, &pool, 30)?;
    let _b = ControllerProcess::start(&server, &pool, 30)?;
    wait_all_terminal(&server, &ids, Duration::from_secs(240)).await?;
    let started = journal_ids(dir.path());
    let unique_started: HashSet<&String> = started.iter().collect();
    assert_eq!(started.len(), unique_started.len(), "a job started twice");
    let expected: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique_started, expected, "every run's job started");
    Ok(())
}

/// A controller SIGKILLed right after its PENDING proposals: another controller adopts its runs;
/// every run still ends terminal, none started twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_killed_after_pending_leaves_no_run_behind() -> anyhow::Result<()> {
    let server = prefect_or_skip!();
    let pool = unique("kill");
    server.create_pool(&pool, "process").await?;
    let dir = tempfile::tempdir()?;
    let deployment = server
        .api_deployment(&pool, &pool, journal_vars(dir.path()))
        .await?;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(server.run_deployment(&deployment).await?);
    }
    let mut first = ControllerProcess::start(&server, &pool, 5)?;
    let started = Instant::now();
    loop {
        let pending = server
            .post("/flow_runs/filter", json!({"flow_runs": {"id": {"any_": ids}, "state": {"type": {"any_": ["PENDING"]}}}, "limit": 200}))
            .await?;
        if pending.as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no run became PENDING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let _second = ControllerProcess::start(&server, &pool, 5)?;
    wait_all_terminal(&server, &ids, Duration::from_secs(120)).await?;
    let journal = journal_ids(dir.path());
    let once: HashSet<&String> = journal.iter().collect();
    assert_eq!(journal.len(), once.len(), "a job started twice");
    // The second controller took runs over through AwaitingAdoption (the first one's claims).
    let mut adopted = 0;
    for id in &ids {
        let states = server
            .get(&format!("/flow_run_states/?flow_run_id={id}"))
            .await?;
        if states
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "AwaitingAdoption")
        {
            adopted += 1;
        }
    }
    eprintln!(
        "{adopted} of {} runs adopted, {} jobs started",
        ids.len(),
        journal.len()
    );
    assert!(adopted > 0, "no run was adopted from the killed controller");
    Ok(())
}
