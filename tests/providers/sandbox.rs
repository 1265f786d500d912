//! Issue 18 (tenant isolation across the execution boundary): the owner of a second workspace
//! made a `process` pool whose command read, in its run logs, the controller's AWS secret, the
//! data directory listing (with the admin's owner.key) and the store. A process job now starts
//! from an empty environment, in a private per-run directory, restricted by Landlock; and
//! `--process-pools` decides which workspaces may have `process` pools at all.
//!
//! The controller runs in this test process, so the marker variable is set on this process's
//! environment: a job that inherited the controller's environment would print it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pushpool::auth::RUN_TOKEN_SECRET_SETTING;
use pushpool::execution::{ProcessPools, ProcessSandbox};
use pushpool::server::{bootstrap, ServeOptions};
use pushpool::store::Store;
use pushpool_testkit::{call_json, Server};
use serde_json::{json, Value};

/// A variable only the controller's environment has.
const MARKER_NAME: &str = "PUSHPOOL_TEST_CONTROLLER_SECRET";
const MARKER_VALUE: &str = "controller-secret-4d1f0c7e";

/// What a `pushpool up` data directory holds: the SQLite store and the owner key.
struct DataDir {
    _dir: tempfile::TempDir,
    home: PathBuf,
    db_url: String,
}

fn data_dir() -> DataDir {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    pushpool::server::prepare_home(&home).unwrap();
    let db_url = format!("sqlite://{}", home.join("pushpool.db").display());
    DataDir {
        _dir: dir,
        home,
        db_url,
    }
}

fn options(data: &DataDir, process_pools: ProcessPools) -> ServeOptions {
    ServeOptions {
        database_url: data.db_url.clone(),
        controller: true,
        home: Some(data.home.clone()),
        process_pools,
        process_sandbox: ProcessSandbox {
            // The `pushpool` binary is the Landlock supervisor (`pushpool __sandbox-exec`).
            supervisor: Some(PathBuf::from(env!("CARGO_BIN_EXE_pushpool"))),
            runs_dir: None,
            required: false,
        },
        ..ServeOptions::default()
    }
}

/// Creates workspace `other` with the admin key; its owner's key.
async fn other_workspace(server: &Server, admin_key: &str) -> String {
    let (s, b) = call_json(
        &server.client,
        "POST",
        &format!("{}/api/workspaces", server.base),
        admin_key,
        Some(json!({"name": "other"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["api_key"]["key"].as_str().unwrap().to_string()
}

async fn post(server: &Server, key: &str, ws: &str, path: &str, body: Value) -> (u16, Value) {
    let url = format!("{}/api/workspaces/{ws}{path}", server.base);
    call_json(&server.client, "POST", &url, key, Some(body)).await
}

async fn get(server: &Server, key: &str, ws: &str, path: &str) -> Value {
    let url = format!("{}/api/workspaces/{ws}{path}", server.base);
    let (s, b) = call_json(&server.client, "GET", &url, key, None).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Runs deployment `d` of workspace `ws` and waits for its end: the run.
async fn run_to_end(server: &Server, key: &str, ws: &str, d: &str) -> Value {
    let (s, run) = post(
        server,
        key,
        ws,
        &format!("/deployments/{d}/runs"),
        json!({}),
    )
    .await;
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap();
    let start = Instant::now();
    loop {
        let run = get(server, key, ws, &format!("/flow_runs/{id}")).await;
        let state = run["state"]["type"].as_str().unwrap_or("");
        if ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].contains(&state) {
            return run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run not over: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The acceptance scenario of issue 18, with process pools allowed for every workspace.
#[tokio::test]
async fn a_process_job_of_another_workspace_reaches_no_secret_of_the_instance() {
    std::env::set_var(MARKER_NAME, MARKER_VALUE);
    let data = data_dir();
    let store = Store::connect(&data.db_url).await.unwrap();
    let admin_key = bootstrap(&store, &data.home).await.unwrap().unwrap();
    let token_secret = store.setting(RUN_TOKEN_SECRET_SETTING).await.unwrap();
    let server = Server::start(store.clone(), options(&data, ProcessPools::All)).await;
    let token_secret = match token_secret {
        Some(s) => s,
        None => store
            .setting(RUN_TOKEN_SECRET_SETTING)
            .await
            .unwrap()
            .unwrap(),
    };
    let key = other_workspace(&server, &admin_key).await;

    let (s, b) = post(
        &server,
        &key,
        "other",
        "/work_pools",
        json!({"name": "local", "type": "process"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let home = data.home.display().to_string();
    let pid = std::process::id();
    let command = format!(
        "env | cut -d= -f1 | sed 's/^/ENVNAME /'; env | grep -c {MARKER_VALUE}; \
         echo \"pwd=$(pwd) home=$HOME\"; \
         ls {home} && echo LISTED-DATA-DIR; cat {home}/owner.key; \
         head -c 200 {home}/pushpool.db && echo READ-STORE; \
         cat /proc/{pid}/environ && echo READ-CONTROLLER-ENV; \
         ls .. && echo LISTED-RUNS-DIR; \
         echo scratch > note.txt && echo WROTE-RUN-DIR; true"
    );
    let (s, b) = post(
        &server,
        &key,
        "other",
        "/deployments",
        json!({"name": "probe", "work_pool": "local",
               "job_variables": {"command": command, "env": {"GREETING": "hi"}}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let run = run_to_end(&server, &key, "other", "probe").await;
    assert_eq!(run["state"]["type"], "COMPLETED", "{run}");
    let id = run["id"].as_str().unwrap();
    let logs = get(&server, &key, "other", &format!("/flow_runs/{id}/logs")).await;
    let lines: Vec<String> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    let text = lines.join("\n");

    // Which enforcement ran, as the supervisor reported it.
    let report = lines
        .iter()
        .find(|l| l.starts_with("pushpool sandbox:"))
        .unwrap_or_else(|| panic!("no sandbox report in the logs:\n{text}"));
    eprintln!("enforcement: {report}");
    let landlock = report.contains("landlock ABI");
    if !landlock && under_ci() {
        panic!("Landlock was not available under CI=true: {report}");
    }

    // No variable of the controller's environment: only what the provider builds.
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ENVNAME "))
        .collect();
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "GREETING",
        "PUSHPOOL_API_URL",
        "PUSHPOOL_RUN_ID",
        "PUSHPOOL_RUN_TOKEN",
        // Set by the shell itself.
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    assert!(names.contains(&"GREETING"), "{text}");
    for name in &names {
        assert!(allowed.contains(name), "the job saw `{name}`:\n{text}");
    }
    assert!(
        !text.contains(MARKER_VALUE),
        "the controller's variable leaked:\n{text}"
    );

    // A private per-run directory, outside the data directory.
    let pwd = lines
        .iter()
        .find_map(|l| l.strip_prefix("pwd="))
        .unwrap_or_else(|| panic!("{text}"));
    let (pwd, job_home) = pwd.split_once(" home=").unwrap();
    assert_eq!(pwd, job_home, "{text}");
    assert!(!Path::new(pwd).starts_with(&data.home), "{text}");
    assert!(text.contains("WROTE-RUN-DIR"), "{text}");

    // No secret of the instance in the logs.
    let owner_key = std::fs::read_to_string(data.home.join("owner.key")).unwrap();
    assert!(
        !text.contains(owner_key.trim()),
        "the owner key leaked:\n{text}"
    );
    assert!(!text.contains(&admin_key), "{text}");
    assert!(
        !text.contains(&token_secret),
        "the run-token secret leaked:\n{text}"
    );

    if landlock {
        // The data directory can be neither listed nor read, nor the controller's environ.
        for marker in [
            "LISTED-DATA-DIR",
            "READ-STORE",
            "READ-CONTROLLER-ENV",
            "LISTED-RUNS-DIR",
        ] {
            assert!(!text.contains(marker), "{marker}:\n{text}");
        }
        // A listing would show the file names on lines of their own.
        for name in ["owner.key", "pushpool.db"] {
            assert!(!lines.iter().any(|l| l == name), "{name} listed:\n{text}");
        }
        assert!(text.contains("Permission denied"), "{text}");
    } else {
        eprintln!("SKIPPED: the kernel lacks Landlock; the filesystem assertions were not run");
    }

    // The run directory is removed once the finished run is cleaned up.
    let start = Instant::now();
    while Path::new(pwd).exists() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!Path::new(pwd).exists(), "{pwd} was kept");
    server.stop().await;
}

/// With `--process-pools admin` (the default) only the bootstrap workspace may make `process`
/// pools: another workspace gets a 403 naming the setting, and a run of a `process` pool it
/// stored earlier (under `all`) ends CRASHED saying why.
#[tokio::test]
async fn process_pools_admin_refuses_other_workspaces() {
    let data = data_dir();
    let store = Store::connect(&data.db_url).await.unwrap();
    let admin_key = bootstrap(&store, &data.home).await.unwrap().unwrap();

    // Made while every workspace could.
    let server = Server::start(store.clone(), options(&data, ProcessPools::All)).await;
    let key = other_workspace(&server, &admin_key).await;
    let (s, b) = post(
        &server,
        &key,
        "other",
        "/work_pools",
        json!({"name": "old", "type": "process"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        &server,
        &key,
        "other",
        "/deployments",
        json!({"name": "d", "work_pool": "old", "job_variables": {"command": "echo ran"}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    server.stop().await;

    assert_eq!(ServeOptions::default().process_pools, ProcessPools::Admin);
    let server = Server::start(store.clone(), options(&data, ProcessPools::Admin)).await;
    let (s, b) = post(
        &server,
        &key,
        "other",
        "/work_pools",
        json!({"name": "new", "type": "process"}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let message = b.to_string();
    assert!(message.contains("--process-pools admin"), "{b}");
    assert!(message.contains("PUSHPOOL_PROCESS_POOLS"), "{b}");
    // Nor may it change the template of the `process` pool it stored earlier.
    let url = format!("{}/api/workspaces/other/work_pools/old", server.base);
    let template = json!({"job_configuration": {"command": "{{ command }}"},
                          "variables": {"properties": {"command": {"type": "string"}}}});
    let (s, b) = call_json(
        &server.client,
        "PATCH",
        &url,
        &key,
        Some(json!({"base_job_template": template})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(b.to_string().contains("--process-pools admin"), "{b}");
    // Other pool types are not concerned (given the cloud grant they need of their own: see
    // tests/api/identity.rs); the bootstrap workspace keeps its process pools.
    let other_id = store.workspace("other").await.unwrap().id;
    store
        .grant_workspace(
            other_id,
            pushpool::identity::WorkspaceGrant::AmbientAws,
            "test",
        )
        .await
        .unwrap();
    let (s, b) = post(
        &server,
        &key,
        "other",
        "/work_pools",
        json!({"name": "aws", "type": "aws-lambda:push"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        &server,
        &admin_key,
        "default",
        "/work_pools",
        json!({"name": "local", "type": "process"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");

    let run = run_to_end(&server, &key, "other", "d").await;
    assert_eq!(run["state"]["type"], "CRASHED", "{run}");
    let message = run["state"]["message"].as_str().unwrap();
    assert!(message.contains("--process-pools admin"), "{message}");
    server.stop().await;

    // `disabled`: not even the bootstrap workspace.
    let server = Server::start(store.clone(), options(&data, ProcessPools::Disabled)).await;
    let (s, b) = post(
        &server,
        &admin_key,
        "default",
        "/work_pools",
        json!({"name": "l2", "type": "process"}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(b.to_string().contains("--process-pools disabled"), "{b}");
    server.stop().await;
}
