//! Behaviour tests of [`ProcessProvider`] against real subprocesses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use pushpool_provider::conformance::{self, RecordedLogs as Collect};
use pushpool_provider::{
    CancelOutcome, JobStatus, LogStream, Provider, ProviderError, Registry, RunSpec,
};
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;

fn run_spec(sink: Arc<Collect>) -> RunSpec {
    RunSpec {
        api_url: "http://127.0.0.1:4200".into(),
        ..conformance::run_spec(sink)
    }
}

/// A provider whose run directories go to this test process's own temp directory, not to the
/// shared default runs directory.
fn provider() -> ProcessProvider {
    static RUNS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ProcessProvider::with_sandbox(SandboxConfig {
        runs_dir: Some(RUNS.get_or_init(|| temp_dir("runs")).clone()),
        ..SandboxConfig::default()
    })
}

fn job(config: Value) -> ProcessJobConfig {
    provider().validate(&config).expect("valid config")
}

fn cmd(command: &str) -> ProcessJobConfig {
    job(json!({ "command": command }))
}

async fn wait_final(p: &ProcessProvider, id: &str, job: &ProcessJobConfig) -> JobStatus {
    let start = Instant::now();
    loop {
        let status = p.status(id, job).await.expect("status");
        if status.is_final() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job {id} did not finish, last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `job` to its end and returns its final status and log lines.
async fn run_to_end(job: &ProcessJobConfig) -> (JobStatus, Arc<Collect>, RunSpec) {
    let p = provider();
    let sink = Arc::new(Collect::default());
    let run = run_spec(sink.clone());
    let id = p.submit(&run, job).await.expect("submit");
    let status = wait_final(&p, &id, job).await;
    p.cleanup(&id, job).await.expect("cleanup");
    (status, sink, run)
}

/// Submits `config` with a fresh run whose logs nobody reads.
async fn submit(p: &ProcessProvider, config: &ProcessJobConfig) -> String {
    p.submit(&run_spec(Arc::new(Collect::default())), config)
        .await
        .expect("submit")
}

/// Cancels the running job `id` (5 s grace) and expects it CANCELLED within 2 s.
async fn cancel_quickly(p: &ProcessProvider, id: &str, config: &ProcessJobConfig) {
    let start = Instant::now();
    let outcome = p.cancel(id, config, Duration::from_secs(5)).await.unwrap();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(wait_final(p, id, config).await, JobStatus::Cancelled);
}

/// Cancels `id` with a one-second grace period.
async fn cancel(p: &ProcessProvider, id: &str, config: &ProcessJobConfig) -> CancelOutcome {
    p.cancel(id, config, Duration::from_secs(1))
        .await
        .expect("cancel")
}

/// Whether every member of the process group is gone within 2 s. SIGKILL is delivered
/// asynchronously: a killed member can still be listed as running for a moment after the job's
/// final status (its leader) was read.
async fn group_gone_soon(pgid: Pid) -> bool {
    let start = Instant::now();
    while group_alive(pgid) {
        if start.elapsed() > Duration::from_secs(2) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn pid_of(id: &str) -> Pid {
    Pid::from_raw(ProcessProvider::parse_id(id).expect("process id"))
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pushpool-process-{tag}-{}-{}",
        std::process::id(),
        Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn echo_completes_and_forwards_stdout() {
    let (status, sink, _) = run_to_end(&cmd("echo hello; exit 0")).await;
    assert_eq!(status, JobStatus::Completed { summary: None });
    assert!(sink.has(LogStream::Stdout, "hello"), "{:?}", sink.lines());
}

#[tokio::test]
async fn non_zero_exit_fails_and_forwards_stderr() {
    let (status, sink, _) = run_to_end(&cmd("echo oops >&2; exit 3")).await;
    assert_eq!(
        status,
        JobStatus::Failed {
            message: "exit code 3".into()
        }
    );
    assert!(sink.has(LogStream::Stderr, "oops"), "{:?}", sink.lines());
}

#[tokio::test]
async fn killed_by_foreign_signal_is_crashed() {
    let (status, _, _) = run_to_end(&cmd("kill -KILL $$")).await;
    assert_eq!(
        status,
        JobStatus::Crashed {
            message: "killed by signal SIGKILL".into()
        }
    );
}

#[tokio::test]
async fn env_and_pushpool_variables_reach_the_child() {
    let config = job(json!({
        "command": "echo \"$GREETING\"; echo \"id=$PUSHPOOL_RUN_ID\"; echo \"url=$PUSHPOOL_API_URL\"; [ -n \"$PUSHPOOL_RUN_TOKEN\" ] && echo token-set",
        "env": {"GREETING": "hi there", "PUSHPOOL_RUN_ID": "spoofed"}
    }));
    let (status, sink, run) = run_to_end(&config).await;
    assert_eq!(status, JobStatus::Completed { summary: None });
    assert!(
        sink.has(LogStream::Stdout, "hi there"),
        "{:?}",
        sink.lines()
    );
    assert!(
        sink.has(LogStream::Stdout, &format!("id={}", run.run_id)),
        "pushpool env must win over the rendered env: {:?}",
        sink.lines()
    );
    assert!(sink.has(LogStream::Stdout, "url=http://127.0.0.1:4200"));
    assert!(sink.has(LogStream::Stdout, "token-set"));
}

#[tokio::test]
async fn working_dir_is_respected() {
    let dir = temp_dir("wd");
    let config = job(json!({"command": "pwd -P", "working_dir": dir}));
    let (status, sink, _) = run_to_end(&config).await;
    assert_eq!(status, JobStatus::Completed { summary: None });
    let expected = dir.canonicalize().unwrap();
    assert!(
        sink.has(LogStream::Stdout, expected.to_str().unwrap()),
        "{:?}",
        sink.lines()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn missing_working_dir_is_permanent() {
    let dir = temp_dir("gone");
    std::fs::remove_dir_all(&dir).unwrap();
    let config = job(json!({"command": "true", "working_dir": dir}));
    let p = provider();
    let err = p
        .submit(&run_spec(Arc::new(Collect::default())), &config)
        .await
        .unwrap_err();
    match &err {
        ProviderError::Permanent { message } => {
            assert!(message.contains(dir.to_str().unwrap()), "{message}");
            assert!(message.contains("working_dir"), "{message}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
}

#[tokio::test]
async fn validate_errors_name_command() {
    let p = provider();
    for value in [
        json!({}),
        json!({"command": null}),
        json!({"command": ["ls"]}),
        json!({"command": ""}),
        json!({"command": "   "}),
    ] {
        match p.validate(&value) {
            Err(ProviderError::InvalidConfig { field, message }) => {
                assert_eq!(field, "command", "{value}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{value}: expected InvalidConfig, got {other:?}"),
        }
    }
    let Err(ProviderError::InvalidConfig { message, .. }) = p.validate(&json!({"command": 1}))
    else {
        panic!("expected InvalidConfig")
    };
    assert_eq!(message, "must be a string");
    let Err(ProviderError::InvalidConfig { message, .. }) = p.validate(&json!({})) else {
        panic!("expected InvalidConfig")
    };
    assert_eq!(message, "is required: the shell command to run");
}

#[tokio::test]
async fn cancel_stops_sleep_quickly() {
    let p = provider();
    let config = cmd("sleep 60");
    let id = submit(&p, &config).await;
    assert_eq!(p.status(&id, &config).await.unwrap(), JobStatus::Running);
    cancel_quickly(&p, &id, &config).await;
    let pid = pid_of(&id);
    assert!(kill(pid, None).is_err(), "leader still exists");
    assert!(
        group_gone_soon(pid).await,
        "process group still has live members"
    );
    // A second cancel finds nothing to stop.
    assert_eq!(cancel(&p, &id, &config).await, CancelOutcome::NotFound);
}

#[tokio::test]
async fn cancel_kills_background_children_too() {
    let p = provider();
    let config = cmd("sleep 60 & sleep 60 & wait");
    let id = submit(&p, &config).await;
    let pid = pid_of(&id);
    // Let the shell start its children.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) && !has_children(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel_quickly(&p, &id, &config).await;
    assert!(
        group_gone_soon(pid).await,
        "background children survived the cancel"
    );
}

#[tokio::test]
async fn cancel_sigkills_a_job_that_ignores_sigterm() {
    let p = provider();
    let config = cmd("trap '' TERM; echo ready; sleep 60; echo survived");
    let sink = Arc::new(Collect::default());
    let id = p.submit(&run_spec(sink.clone()), &config).await.unwrap();
    let start = Instant::now();
    while !sink.has(LogStream::Stdout, "ready") {
        assert!(start.elapsed() < Duration::from_secs(10), "never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grace = Duration::from_millis(300);
    let start = Instant::now();
    let outcome = p.cancel(&id, &config, grace).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    assert!(
        elapsed >= grace,
        "SIGKILL sent before the grace ended: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(wait_final(&p, &id, &config).await, JobStatus::Cancelled);
    assert!(
        group_gone_soon(pid_of(&id)).await,
        "the job survived SIGKILL"
    );
    assert!(!sink.has(LogStream::Stdout, "survived"));
}

#[tokio::test]
async fn log_output_is_bounded() {
    let config =
        job(json!({"command": "yes | head -c 200000; echo done >&2", "max_log_bytes": 1024}));
    let (status, sink, _) = run_to_end(&config).await;
    assert_eq!(status, JobStatus::Completed { summary: None });
    let lines = sink.lines();
    let forwarded: usize = lines
        .iter()
        .filter(|(s, _)| *s != LogStream::System)
        .map(|(_, l)| l.len() + 1)
        .sum();
    assert!(forwarded <= 1024, "forwarded {forwarded} bytes");
    assert!(forwarded >= 1000, "forwarded only {forwarded} bytes");
    let markers: Vec<_> = lines
        .iter()
        .filter(|(s, l)| *s == LogStream::System && !l.starts_with(sandbox::REPORT_PREFIX))
        .collect();
    assert_eq!(
        markers,
        vec![&(
            LogStream::System,
            "[log output truncated after 1024 bytes]".to_string()
        )]
    );
    assert_eq!(lines.last().unwrap().0, LogStream::System);
}

#[tokio::test]
async fn last_lines_are_forwarded_before_the_final_status() {
    let config = cmd("i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done; echo last >&2");
    let (status, sink, _) = run_to_end(&config).await;
    assert_eq!(status, JobStatus::Completed { summary: None });
    assert!(sink.has(LogStream::Stdout, "line299"));
    assert!(sink.has(LogStream::Stderr, "last"));
    let job_lines = sink
        .lines()
        .into_iter()
        .filter(|(s, _)| *s != LogStream::System)
        .count();
    assert_eq!(job_lines, 301);
}

#[tokio::test]
async fn stream_output_false_forwards_nothing() {
    let config = job(json!({"command": "echo hidden; echo hidden >&2", "stream_output": false}));
    let (status, sink, _) = run_to_end(&config).await;
    assert_eq!(status, JobStatus::Completed { summary: None });
    assert!(sink.lines().is_empty(), "{:?}", sink.lines());
}

#[tokio::test]
async fn unknown_ids() {
    let p = provider();
    let config = cmd("true");
    for id in [
        "process:999999999",
        "process:abc",
        "lambda:1",
        "process:0",
        "process:-1",
    ] {
        assert_eq!(
            p.status(id, &config).await.unwrap(),
            JobStatus::NotFound,
            "{id}"
        );
        assert_eq!(
            p.cancel(id, &config, Duration::from_millis(10))
                .await
                .unwrap(),
            CancelOutcome::NotFound,
            "{id}"
        );
    }
    // A pid that exists but was not started by this provider (e.g. after a restart).
    let own = format!("process:{}", std::process::id());
    assert_eq!(
        p.status(&own, &config).await.unwrap(),
        JobStatus::Unobservable
    );
    assert_eq!(cancel(&p, &own, &config).await, CancelOutcome::NotFound);
}

#[tokio::test]
async fn finished_jobs_cancel_not_found_and_cleanup_forgets_them() {
    let p = provider();
    let config = cmd("exit 0");
    let id = submit(&p, &config).await;
    assert!(id.starts_with("process:"));
    assert_eq!(
        wait_final(&p, &id, &config).await,
        JobStatus::Completed { summary: None }
    );
    assert_eq!(cancel(&p, &id, &config).await, CancelOutcome::NotFound);
    p.cleanup(&id, &config).await.unwrap();
    assert!(p.lock().is_empty());
    assert!(matches!(
        p.status(&id, &config).await.unwrap(),
        JobStatus::NotFound | JobStatus::Unobservable
    ));
}

#[tokio::test]
async fn cleanup_keeps_running_jobs() {
    let p = provider();
    let config = cmd("sleep 60");
    let id = submit(&p, &config).await;
    p.cleanup(&id, &config).await.unwrap();
    assert_eq!(p.status(&id, &config).await.unwrap(), JobStatus::Running);
    assert_eq!(cancel(&p, &id, &config).await, CancelOutcome::Cancelled);
    p.cleanup(&id, &config).await.unwrap();
    assert!(p.lock().is_empty());
}

#[tokio::test]
async fn works_through_the_registry() {
    let mut registry = Registry::new();
    registry.register(Arc::new(provider()));
    let provider = registry.get("process").expect("registered");
    let job = provider
        .validate(&json!({"command": "echo via-dyn"}))
        .unwrap();
    let sink = Arc::new(Collect::default());
    let id = provider
        .submit(&run_spec(sink.clone()), &job)
        .await
        .unwrap();
    let start = Instant::now();
    let status = loop {
        let status = provider.status(&id, &job).await.unwrap();
        if status.is_final() || start.elapsed() > Duration::from_secs(10) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, JobStatus::Completed { summary: None });
    assert!(sink.has(LogStream::Stdout, "via-dyn"));
    assert_eq!(
        provider.lookup(&run_spec(sink), &job).await.unwrap(),
        pushpool_provider::Lookup::Unknown
    );
}

#[test]
fn run_spec_debug_hides_the_token() {
    let run = run_spec(Arc::new(Collect::default()));
    assert!(!format!("{run:?}").contains("pp_token_value"));
}

/// Placeholder names (`{{ name }}`) in every string of `value`.
fn placeholders(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let end = after.find("}}").expect("unclosed placeholder");
                out.push(after[..end].trim().to_string());
                rest = &after[end + 2..];
            }
        }
        Value::Array(items) => items.iter().for_each(|v| placeholders(v, out)),
        Value::Object(map) => map.values().for_each(|v| placeholders(v, out)),
        _ => {}
    }
}

#[test]
fn default_template_is_consistent() {
    let p = provider();
    assert_eq!(Provider::pool_type(&p), "process");
    let template = Provider::default_base_job_template(&p);
    let config = template["job_configuration"]
        .as_object()
        .expect("job_configuration object");
    let props = template["variables"]["properties"]
        .as_object()
        .expect("variables.properties object");
    assert_eq!(template["variables"]["type"], "object");

    let mut names = Vec::new();
    placeholders(&template["job_configuration"], &mut names);
    assert!(names.len() >= 7, "{names:?}");
    for name in &names {
        assert!(
            props.contains_key(name),
            "placeholder `{name}` is not declared"
        );
    }
    for key in [
        "command",
        "env",
        "working_dir",
        "name",
        "labels",
        "stream_output",
        "max_log_bytes",
    ] {
        assert!(config.contains_key(key), "job_configuration lacks `{key}`");
        assert!(props.contains_key(key), "variables lack `{key}`");
    }
    for (name, schema) in props {
        assert!(schema["title"].is_string(), "`{name}` has no title");
        assert!(
            schema["description"].is_string(),
            "`{name}` has no description"
        );
    }
    assert_eq!(
        props["command"]["description"],
        "Shell command to run with `sh -c`"
    );
    assert!(props["command"].get("default").is_none());
    assert_eq!(props["env"]["default"], json!({}));
    assert_eq!(props["labels"]["default"], json!({}));
    assert_eq!(props["stream_output"]["default"], json!(true));
    assert_eq!(props["max_log_bytes"]["default"], json!(1_048_576));
    assert_eq!(props["max_log_bytes"]["minimum"], json!(1024));

    // Rendering the defaults plus a command gives a valid configuration with the same defaults.
    let mut rendered = serde_json::Map::new();
    for (key, value) in config {
        let name = value
            .as_str()
            .and_then(|s| s.strip_prefix("{{"))
            .and_then(|s| s.strip_suffix("}}"))
            .map(str::trim)
            .expect("whole-value placeholder");
        let v = if name == "command" {
            json!("echo hi")
        } else {
            props[name].get("default").cloned().unwrap_or(Value::Null)
        };
        rendered.insert(key.clone(), v);
    }
    assert_eq!(
        p.validate(&Value::Object(rendered)).unwrap(),
        ProcessJobConfig::new("echo hi")
    );
}

/// True once some process has `pid` as its parent (Linux `/proc`; false elsewhere).
fn has_children(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

#[tokio::test]
async fn leftover_background_process_does_not_hold_up_the_final_status() {
    let p = provider();
    let config = cmd("sleep 30 & echo started");
    let sink = Arc::new(Collect::default());
    let id = p.submit(&run_spec(sink.clone()), &config).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        wait_final(&p, &id, &config).await,
        JobStatus::Completed { summary: None }
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(sink.has(LogStream::Stdout, "started"));
    // Later calls do not wait for the pipe again.
    let again = Instant::now();
    p.status(&id, &config).await.unwrap();
    assert!(again.elapsed() < Duration::from_millis(500));
    let _ = nix::sys::signal::killpg(pid_of(&id), nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn conforms_to_the_provider_contract() {
    let p = provider();
    conformance::check_template(&p).unwrap();
    let run = conformance::run_spec(Arc::new(Collect::default()));
    let (_, end) = conformance::run_to_end(
        &p,
        &run,
        &json!({"command": "true"}),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(end, JobStatus::Completed { summary: None });
    conformance::check_cancel(&p, &json!({"command": "sleep 30"}))
        .await
        .unwrap();
}

/// Issue 18: the job's environment is built from nothing; the controller's never reaches it.
#[tokio::test]
async fn the_controllers_environment_is_not_passed_on() {
    std::env::set_var("PUSHPOOL_PROCESS_TEST_PARENT_SECRET", "parent-only-81f2");
    let config = job(
        json!({"command": "env | cut -d= -f1; env | grep -c parent-only-81f2", "env": {"MINE": "1"}}),
    );
    let (status, sink, _) = run_to_end(&config).await;
    // `grep -c` finds nothing: exit code 1.
    assert_eq!(
        status,
        JobStatus::Failed {
            message: "exit code 1".into()
        }
    );
    let names: Vec<String> = sink
        .lines()
        .into_iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, l)| l)
        .filter(|l| l != "0")
        .collect();
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "MINE",
        "PUSHPOOL_API_URL",
        "PUSHPOOL_RUN_ID",
        "PUSHPOOL_RUN_TOKEN",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    assert!(names.iter().any(|n| n == "MINE"), "{names:?}");
    for name in &names {
        assert!(
            allowed.contains(&name.as_str()),
            "the job saw {name}: {names:?}"
        );
    }
}

/// Issue 18: each job runs in a private directory (HOME, TMPDIR inside it), removed by cleanup.
#[tokio::test]
async fn jobs_run_in_a_private_run_directory_removed_at_cleanup() {
    use std::os::unix::fs::PermissionsExt as _;
    let p = provider();
    let sink = Arc::new(Collect::default());
    let run = run_spec(sink.clone());
    let config = cmd("pwd; echo \"$HOME\"; echo \"$TMPDIR\"; touch made-here");
    let id = p.submit(&run, &config).await.unwrap();
    assert_eq!(
        wait_final(&p, &id, &config).await,
        JobStatus::Completed { summary: None }
    );
    let out: Vec<String> = sink
        .lines()
        .into_iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, l)| l)
        .collect();
    let dir = std::path::PathBuf::from(&out[0]);
    assert_eq!(out[1], out[0]);
    assert_eq!(std::path::PathBuf::from(&out[2]), dir.join("tmp"));
    assert!(dir.join("made-here").exists());
    assert!(dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(&run.run_id.to_string()));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    p.cleanup(&id, &config).await.unwrap();
    assert!(!dir.exists(), "{} was kept", dir.display());
}

/// Issue 18: a template may not hand the job pushpool's data directory (or a directory holding
/// it, or the runs directory) as working directory or allowed path.
#[test]
fn template_paths_exposing_protected_paths_are_refused() {
    let config = SandboxConfig {
        runs_dir: Some("/var/tmp/runs".into()),
        protected: vec!["/srv/pushpool".into()],
        ..SandboxConfig::default()
    };
    let cases = [
        (
            json!({"command": "x", "working_dir": "/srv/pushpool"}),
            "working_dir",
        ),
        (
            json!({"command": "x", "read_paths": ["/usr", "/"]}),
            "read_paths[1]",
        ),
        (
            json!({"command": "x", "write_paths": ["/srv/pushpool/keys"]}),
            "write_paths[0]",
        ),
        (
            json!({"command": "x", "write_paths": ["/var/tmp"]}),
            "write_paths[0]",
        ),
    ];
    for (value, field) in cases {
        let err = check_template_paths(&config, &job(value.clone())).unwrap_err();
        let (f, m) = conformance::field_and_rule(err);
        assert_eq!(f, field, "{value}");
        assert!(m.contains("is not allowed"), "{m}");
    }
    let fine =
        job(json!({"command": "x", "read_paths": ["/srv/data"], "write_paths": ["/srv/out"]}));
    assert!(check_template_paths(&config, &fine).is_ok());
}

/// Issue 18: `--process-sandbox required` never runs a job unsandboxed: without a supervisor the
/// submit fails for good, saying why, and starts nothing.
#[tokio::test]
async fn required_sandbox_without_a_supervisor_refuses_the_job() {
    let runs = temp_dir("required");
    let p = ProcessProvider::with_sandbox(SandboxConfig {
        runs_dir: Some(runs.clone()),
        mode: SandboxMode::Required,
        ..SandboxConfig::default()
    });
    let err = p
        .submit(&run_spec(Arc::new(Collect::default())), &cmd("touch ran"))
        .await
        .unwrap_err();
    match err {
        ProviderError::Permanent { message } => {
            assert!(message.contains("--process-sandbox required"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0);
}

/// Issue 18: a supervisor that cannot be started fails the submit for good, naming it.
#[tokio::test]
async fn a_missing_supervisor_is_a_permanent_error_naming_it() {
    let runs = temp_dir("nosupervisor");
    let p = ProcessProvider::with_sandbox(SandboxConfig {
        supervisor: Some("/nonexistent/pushpool".into()),
        runs_dir: Some(runs.clone()),
        ..SandboxConfig::default()
    });
    let err = p
        .submit(&run_spec(Arc::new(Collect::default())), &cmd("true"))
        .await
        .unwrap_err();
    match err {
        ProviderError::Permanent { message } => {
            assert!(message.contains("/nonexistent/pushpool"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Its run directory is not left behind.
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0);
}

/// Issue 17: the provider tells the controller a job ended the moment its child exits, so the
/// end is recorded without waiting for a status poll; for a job it does not track it says it
/// cannot tell (the controller polls).
#[tokio::test]
async fn wait_ended_returns_once_the_child_exits() {
    let p = provider();
    let config = cmd("sleep 30");
    let id = submit(&p, &config).await;
    assert_eq!(p.status(&id, &config).await.unwrap(), JobStatus::Running);
    let waiting = tokio::time::timeout(Duration::from_millis(300), p.wait_ended(&id, &config));
    assert!(
        waiting.await.is_err(),
        "wait_ended returned while the child runs"
    );
    let pgid = Pid::from_raw(ProcessProvider::parse_id(&id).unwrap());
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), p.wait_ended(&id, &config));
    assert!(
        ended.await.expect("wait_ended returned"),
        "wait_ended said it cannot tell"
    );
    assert!(p.status(&id, &config).await.unwrap().is_final());
    assert!(!p.wait_ended("process:999999:nothing", &config).await);
    p.cleanup(&id, &config).await.unwrap();
}
