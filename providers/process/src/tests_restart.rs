//! Outcomes that survive a controller restart: the supervisor records the job's exit status and
//! a fresh provider (one that did not start the job) reads it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pushpool_provider::conformance::{self, RecordedLogs as Collect};
use pushpool_provider::{CancelOutcome, JobStatus, Provider};
use serde_json::json;

use super::*;

fn runs_dir() -> PathBuf {
    static RUNS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "pushpool-process-restart-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
    .clone()
}

/// A new provider over the same runs directory: what a restarted controller has.
fn provider() -> ProcessProvider {
    ProcessProvider::with_sandbox(SandboxConfig {
        runs_dir: Some(runs_dir()),
        ..SandboxConfig::default()
    })
}

fn cmd(command: &str) -> ProcessJobConfig {
    provider()
        .validate(&json!({ "command": command }))
        .expect("valid config")
}

async fn submit(p: &ProcessProvider, job: &ProcessJobConfig) -> String {
    let run = conformance::run_spec(Arc::new(Collect::default()));
    p.submit(&run, job).await.expect("submit")
}

/// Polls `p` (which did not start the job) until a final status.
async fn wait_final(p: &ProcessProvider, id: &str, job: &ProcessJobConfig) -> JobStatus {
    let start = Instant::now();
    loop {
        let status = p.status(id, job).await.expect("status");
        if status.is_final() {
            return status;
        }
        assert_eq!(status, JobStatus::Running, "{id}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{id} never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job's exit status is recorded in its run directory, and a fresh provider reads it.
async fn outcome_after_restart(command: &str) -> (JobStatus, JobStatus) {
    let job = cmd(command);
    let first = provider();
    let id = submit(&first, &job).await;
    let own = wait_final(&first, &id, &job).await;
    let dir = runs_dir().join(outcome::dir_name(&id).expect("id names the run dir"));
    assert!(
        outcome::exit_file(&dir).is_file(),
        "the supervisor recorded the exit status"
    );
    let fresh = provider();
    let recovered = fresh.status(&id, &job).await.unwrap();
    fresh.cleanup(&id, &job).await.unwrap();
    assert!(
        !dir.exists(),
        "cleanup by the fresh provider removes the run dir"
    );
    (own, recovered)
}

#[tokio::test]
async fn a_fresh_provider_reads_the_recorded_outcome() {
    for (command, want) in [
        ("true", JobStatus::Completed { summary: None }),
        (
            "exit 3",
            JobStatus::Failed {
                message: "exit code 3".into(),
            },
        ),
        (
            "kill -KILL $$",
            JobStatus::Crashed {
                message: "killed by signal SIGKILL".into(),
            },
        ),
    ] {
        let (own, recovered) = outcome_after_restart(command).await;
        assert_eq!(own, want, "{command}: the starting provider");
        assert_eq!(recovered, want, "{command}: a fresh provider");
    }
}

#[tokio::test]
async fn a_fresh_provider_sees_a_running_job_run_then_end() {
    let job = cmd("sleep 0.5; exit 4");
    let first = provider();
    let id = submit(&first, &job).await;
    let fresh = provider();
    assert_eq!(fresh.status(&id, &job).await.unwrap(), JobStatus::Running);
    drop(first); // the controller that started it is gone; the job goes on
    assert_eq!(
        wait_final(&fresh, &id, &job).await,
        JobStatus::Failed {
            message: "exit code 4".into()
        }
    );
}

#[tokio::test]
async fn ids_that_name_no_run_dir_are_not_found() {
    let p = provider();
    let job = cmd("true");
    for id in [
        "process:999999999:nope",
        "process:999999999:..",
        "process:999999999:a/b",
        "process:999999999:",
    ] {
        assert_eq!(
            p.status(id, &job).await.unwrap(),
            JobStatus::NotFound,
            "{id}"
        );
    }
    assert_eq!(ProcessProvider::parse_id("process:42:x"), Some(42));
    assert_eq!(ProcessProvider::parse_id("process:42"), Some(42));
}

#[test]
fn exit_codes_map_like_the_starting_provider() {
    assert_eq!(
        outcome::status_of_code(143),
        JobStatus::Crashed {
            message: "killed by signal SIGTERM".into()
        }
    );
    assert_eq!(
        outcome::status_of_code(200),
        JobStatus::Failed {
            message: "exit code 200".into()
        }
    );
}

/// A controller that died between starting the job and recording its id: a fresh provider's
/// `lookup` finds the job by its run directory and the pid its supervisor wrote.
#[tokio::test]
async fn lookup_finds_a_job_started_by_a_controller_that_died() {
    let job = cmd("sleep 0.3");
    let run = conformance::run_spec(Arc::new(Collect::default()));
    let first = provider();
    let id = first.submit(&run, &job).await.expect("submit");
    let fresh = provider();
    let start = Instant::now();
    let found = loop {
        match fresh.lookup(&run, &job).await.unwrap() {
            pushpool_provider::Lookup::Found(found) => break found,
            other => {
                assert!(start.elapsed() < Duration::from_secs(5), "{other:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(found, id);
    assert_eq!(
        wait_final(&fresh, &found, &job).await,
        JobStatus::Completed { summary: None }
    );
    // Another attempt of the run, or another run: the provider cannot tell.
    let other = conformance::run_spec(Arc::new(Collect::default()));
    assert_eq!(
        fresh.lookup(&other, &job).await.unwrap(),
        pushpool_provider::Lookup::Unknown
    );
}

/// After a restart, cancelling a job the new provider did not start stops its process group.
#[tokio::test]
async fn a_fresh_provider_cancels_a_job_it_did_not_start() {
    let job = cmd("sleep 30");
    let first = provider();
    let id = submit(&first, &job).await;
    let pgid = Pid::from_raw(ProcessProvider::parse_id(&id).unwrap());
    let dir = runs_dir().join(outcome::dir_name(&id).unwrap());
    let fresh = provider();
    assert!(
        fresh.cleanup(&id, &job).await.is_ok() && dir.exists(),
        "a running job's directory stays"
    );
    let start = Instant::now();
    let outcome = fresh
        .cancel(&id, &job, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // The starting provider's waiter reaps the leader; the group empties.
    let gone = Instant::now();
    while group_alive(pgid) {
        assert!(gone.elapsed() < Duration::from_secs(2), "group still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fresh
            .cancel(&id, &job, Duration::from_secs(1))
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );
    fresh.cleanup(&id, &job).await.unwrap();
    assert!(
        !dir.exists(),
        "cleanup removes the cancelled job's directory"
    );
}
