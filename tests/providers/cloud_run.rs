//! End-to-end tests of `cloud-run-v2:push` pools: API + controllers on a fresh SQLite store and a
//! fake Cloud Run Admin API v2 (`tests/support/src/cloud_run_fake.rs`; there is no official Cloud Run
//! emulator). The test `real_gcp_…` runs against a real project and is ignored unless asked for.
#![cfg(feature = "gcp-cloud-run")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pushpool_testkit::cloud_run_fake::{CloudRunFake, Outcome};
// No proxies, no ambient Google credentials: nothing leaves loopback.
use pushpool_testkit::env::loopback_only as init_env;
use pushpool_testkit::{infra, state, App};
use serde_json::{json, Value};

const PROJECT: &str = "test-project";
const REGION: &str = "us-central1";

/// The service with the test environment and one controller.
async fn spawn_app() -> App {
    init_env();
    pushpool_testkit::spawn_app().await
}

/// This suite's pools and deployments.
trait CloudRunDeployments {
    async fn deployment(&self, pool: &str, template: Option<Value>, name: &str, vars: Value);
}

impl CloudRunDeployments for App {
    /// A pool `pool` (default template unless `template` is given) and a deployment `name` on it
    /// with these job variables (on top of project, endpoint and anonymous credentials).
    async fn deployment(&self, pool: &str, template: Option<Value>, name: &str, vars: Value) {
        let mut body = json!({"name": pool, "type": "cloud-run-v2:push"});
        if let Some(t) = template {
            body["base_job_template"] = t;
        }
        self.ensure_pool(pool, body).await;
        let (s, b) = self
            .post(
                "/deployments",
                json!({"name": name, "work_pool": pool, "job_variables": vars,
                       "parameters": {"rows": 3}}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Job variables pointing a default-template pool at the fake.
fn vars(fake: &CloudRunFake, extra: Value) -> Value {
    let mut v = json!({
        "image": "us-docker.pkg.dev/test-project/jobs/etl:1.4",
        "project": PROJECT, "region": REGION, "endpoint_url": fake.url,
        "credentials": {"anonymous": true},
        "command": "python -m etl", "args": ["--rows", "3"],
        "env": {"GREETING": "hi"}, "labels": {"team": "data"}
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

async fn wait_until(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} not seen after {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts the fake and the service, creates a default-template pool and a deployment `job`.
async fn setup(extra: Value) -> (CloudRunFake, App) {
    init_env();
    let fake = CloudRunFake::start().await;
    let app = spawn_app().await;
    app.deployment("cr", None, "job", vars(&fake, extra)).await;
    (fake, app)
}

fn assert_execution_id(infra: &str) {
    assert!(
        infra.starts_with(&format!("projects/{PROJECT}/locations/{REGION}/jobs/pp-"))
            && infra.contains("/executions/"),
        "{infra}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_success_completes_sends_the_rendered_job_and_deletes_the_job() {
    let (fake, app) = setup(json!({})).await;
    let id = app.run("job").await;
    let running = app.wait_running(&id, Duration::from_secs(15)).await;
    assert_execution_id(&infra(&running));
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "COMPLETED", "{run}");
    assert!(message.contains("succeeded (1 of 1 task(s))"), "{message}");
    assert_eq!(infra(&run), infra(&running));
    let history = app.history(&id).await;
    assert!(
        history.ends_with(&["RUNNING".to_string(), "COMPLETED".to_string()]),
        "{history:?}"
    );
    assert_eq!(fake.executions_started(), 1);
    assert_eq!(fake.run_calls(), 1);
    // The job body: Prefect-style normalisation plus env and labels.
    let bodies = fake.created_bodies();
    assert_eq!(bodies.len(), 1);
    let (name, body) = &bodies[0];
    assert_eq!(
        name,
        &format!(
            "projects/{PROJECT}/locations/{REGION}/jobs/pp-{}-1",
            id.replace('-', "")
        )
    );
    let task = &body["template"]["template"];
    assert_eq!(task["timeout"], "600s");
    assert_eq!(task["maxRetries"], 0);
    assert!(task.get("vpcAccess").is_none(), "{body}");
    assert!(task.get("serviceAccount").is_none(), "{body}");
    let container = &task["containers"][0];
    assert_eq!(container["command"], json!(["python", "-m", "etl"]));
    assert_eq!(container["args"], json!(["--rows", "3"]));
    assert_eq!(
        container["resources"],
        json!({"limits": {"cpu": "1000m", "memory": "512Mi"}})
    );
    let env = container["env"].as_array().unwrap();
    let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "GREETING",
            "PUSHPOOL_API_URL",
            "PUSHPOOL_RUN_ID",
            "PUSHPOOL_RUN_TOKEN"
        ]
    );
    assert_eq!(env[2]["value"], id);
    // The official client sends enums as integers (`$alt=json;enum-encoding=int`): BETA = 3.
    assert_eq!(body["launchStage"], 3);
    assert_eq!(body["labels"]["team"], "data");
    assert_eq!(body["labels"]["pushpool-run-id"], id);
    // The official client's REST contract: every call carries $alt.
    assert!(fake
        .calls()
        .iter()
        .all(|c| c.alt.as_deref() == Some("json;enum-encoding=int")));
    // keep_job = false: the job is deleted once the run is terminal.
    wait_until(Duration::from_secs(10), "job deleted", || {
        fake.jobs().is_empty()
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_keep_job_keeps_the_job_after_completion() {
    let (fake, app) = setup(json!({"keep_job": true})).await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.jobs().len(), 1, "the job was deleted despite keep_job");
    assert!(!fake.calls().iter().any(|c| c.method == "DELETE"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_task_failure_fails_the_run_with_the_task_message() {
    let (fake, app) = setup(json!({})).await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    fake.finish_all(Outcome::Failed(
        "Task etl-task0 failed with message: The container exited with an error (exit code 3)."
            .into(),
    ));
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "FAILED", "{run}");
    assert!(message.contains("failed: Task etl-task0 failed with message: The container exited with an error (exit code 3)."), "{message}");
    wait_until(Duration::from_secs(10), "job deleted", || {
        fake.jobs().is_empty()
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_task_timeout_reported_by_cloud_run_fails_the_run_saying_it_timed_out() {
    let (fake, app) = setup(json!({"timeout": 30})).await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    fake.finish_all(Outcome::TimedOut);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "FAILED", "{run}");
    assert!(
        message.contains("timed out: a task exceeded its timeout of 30s"),
        "{message}"
    );
    assert!(
        message.contains("The configured timeout was reached."),
        "{message}"
    );
    assert_eq!(
        fake.created_bodies()[0].1["template"]["template"]["timeout"],
        "30s"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_execution_running_past_its_timeout_is_cancelled_and_fails_saying_it_timed_out() {
    // Prefect #13053: a Cloud Run timeout left the run RUNNING forever.
    let (fake, app) = setup(json!({"timeout": 1, "watchdog_grace_seconds": 1})).await;
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "FAILED", "{run}");
    assert!(
        message.contains("timed out: still not finished 2s after it started"),
        "{message}"
    );
    assert!(message.contains("pushpool cancelled it"), "{message}");
    assert!(fake.cancel_calls() >= 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_cancel_of_a_running_execution_stops_it_and_records_cancelled() {
    let (fake, app) = setup(json!({})).await;
    let id = app.run("job").await;
    let running = app.wait_running(&id, Duration::from_secs(15)).await;
    let (s, body) = app
        .post(&format!("/flow_runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CANCELLED", "{run}");
    assert!(
        message.contains(&format!("infrastructure `{}` stopped", infra(&running))),
        "{message}"
    );
    assert_eq!(fake.cancel_calls(), 1);
    // The execution was cancelled at Cloud Run, and (keep_job = false) the job deleted.
    wait_until(Duration::from_secs(10), "job deleted", || {
        fake.jobs().is_empty()
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_status_polls_back_off_instead_of_a_fixed_interval() {
    let (fake, app) = setup(json!({})).await;
    let id = app.run("job").await;
    let running = app.wait_running(&id, Duration::from_secs(15)).await;
    let execution = infra(&running);
    tokio::time::sleep(Duration::from_secs(3)).await;
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    let polls: Vec<Instant> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path == execution)
        .map(|c| c.at)
        .collect();
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    // Quick at first, then growing up to the controller's ceiling (250 ms in these tests,
    // 2 s by default): not a fixed interval.
    assert!(gaps[0] < Duration::from_millis(150), "{gaps:?}");
    let late = &gaps[gaps.len() - 3..];
    assert!(
        late.iter().all(|g| *g >= Duration::from_millis(180)),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(1500)),
        "{gaps:?}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_503_and_429_storms_while_polling_are_survived() {
    // Prefect #22085: one 503 on a status poll marked the run Crashed and deleted the job.
    let (fake, app) = setup(json!({})).await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    fake.storm(503, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let served_503 = fake.storm_served();
    assert!(served_503 >= 2, "the storm was not hit: {served_503}");
    assert_eq!(state(&app.flow_run(&id).await).0, "RUNNING");
    fake.storm(429, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(fake.storm_served() > served_503);
    assert_eq!(state(&app.flow_run(&id).await).0, "RUNNING");
    assert_eq!(fake.jobs().len(), 1, "the job must survive the storm");
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert_eq!(fake.executions_started(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_transient_errors_at_submit_are_retried_and_start_one_execution() {
    let (fake, app) = setup(json!({})).await;
    // create, get job, list executions, :run… each answered 503/429 once along the way.
    fake.fail_next(&[503, 429, 503, 500]);
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(20)).await;
    assert!(fake.storm_served() >= 4);
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert_eq!(fake.executions_started(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_503_storm_longer_than_the_status_deadline_crashes_the_run_with_the_last_error() {
    let (fake, app) = setup(json!({})).await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    // The test controllers' status deadline is 10 s (600 s by default).
    fake.storm(503, Duration::from_secs(60));
    let run = app.wait_terminal(&id, Duration::from_secs(30)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(
        message.contains("lost contact with the `cloud-run-v2:push` provider"),
        "{message}"
    );
    assert!(
        message.contains("HTTP 503 UNAVAILABLE: injected storm"),
        "{message}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_already_exists_on_create_adopts_the_job_and_runs_it_once() {
    let (fake, app) = setup(json!({})).await;
    fake.already_exists_once();
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert_eq!(fake.executions_started(), 1);
    let (s, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    assert_eq!(s, 200);
    assert!(logs.to_string().contains("already exists"), "{logs}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_controller_killed_between_create_and_run_successor_starts_exactly_one_execution() {
    init_env();
    let fake = CloudRunFake::start().await;
    fake.hang_runs(true);
    let mut app = spawn_app().await;
    app.deployment("cr", None, "job", vars(&fake, json!({})))
        .await;
    let id = app.run("job").await;
    // Controller A created the job and is stuck in `:run`: kill it like `kill -9`.
    wait_until(Duration::from_secs(15), "a :run call", || {
        fake.run_calls() >= 1
    })
    .await;
    assert_eq!(fake.jobs().len(), 1);
    assert_eq!(fake.executions_started(), 0);
    app.controllers[0].kill();
    fake.hang_runs(false);
    app.start_controller("controller-b");
    let running = app.wait_running(&id, Duration::from_secs(30)).await;
    assert_execution_id(&infra(&running));
    assert_eq!(fake.executions_started(), 1);
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.executions_started(),
        1,
        "a second execution was started"
    );
    assert!(
        fake.created_bodies().len() >= 2,
        "the successor re-created (adopted) the job"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_controller_killed_after_run_successor_adopts_the_execution() {
    init_env();
    let fake = CloudRunFake::start().await;
    let mut app = spawn_app().await;
    app.deployment("cr", None, "job", vars(&fake, json!({})))
        .await;
    let id = app.run("job").await;
    let running = app.wait_running(&id, Duration::from_secs(15)).await;
    app.controllers[0].kill();
    app.start_controller("controller-b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert_eq!(infra(&run), infra(&running));
    assert_eq!(fake.executions_started(), 1);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Prefect compatibility

/// The `base_job_template` of a Prefect `cloud-run-v2` work pool (prefect-gcp 0.5.x / 0.6.x
/// worker), as `prefect work-pool get-default-base-job-template --type cloud-run-v2` prints it.
fn prefect_template() -> Value {
    json!({
      "job_configuration": {
        "command": "{{ command }}",
        "env": "{{ env }}",
        "labels": "{{ labels }}",
        "name": "{{ name }}",
        "credentials": "{{ credentials }}",
        "job_body": {
          "client": "prefect",
          "launchStage": "{{ launch_stage }}",
          "template": {
            "template": {
              "serviceAccount": "{{ service_account_name }}",
              "maxRetries": "{{ max_retries }}",
              "timeout": "{{ timeout }}",
              "vpcAccess": {"connector": "{{ vpc_connector_name }}"},
              "containers": [
                {
                  "env": [],
                  "image": "{{ image }}",
                  "command": "{{ command }}",
                  "args": "{{ args }}",
                  "resources": {"limits": {"cpu": "{{ cpu }}", "memory": "{{ memory }}"}}
                }
              ]
            }
          }
        },
        "keep_job": "{{ keep_job }}",
        "region": "{{ region }}",
        "timeout": "{{ timeout }}"
      },
      "variables": {
        "description": "Default variables for the Cloud Run worker V2.\n\nThe schema for this class is used to populate the `variables` section of the\ndefault base job template.",
        "type": "object",
        "properties": {
          "name": {"title": "Name", "description": "Name given to infrastructure created by a worker.", "type": "string"},
          "env": {"title": "Environment Variables", "description": "Environment variables to set when starting a flow run.", "type": "object", "additionalProperties": {"type": "string"}},
          "labels": {"title": "Labels", "description": "Labels applied to infrastructure created by a worker.", "type": "object", "additionalProperties": {"type": "string"}},
          "command": {"title": "Command", "description": "The command to use when starting a flow run. In most cases, this should be left blank and the command will be automatically generated by the worker.", "type": "string"},
          "credentials": {"title": "GCP Credentials", "description": "The GCP Credentials used to connect to Cloud Run. If not provided credentials will be inferred from the local environment.", "allOf": [{"$ref": "#/definitions/GcpCredentials"}]},
          "region": {"title": "Region", "description": "The region in which to run the Cloud Run job", "default": "us-central1", "type": "string"},
          "image": {"title": "Image Name", "description": "The image to use for the Cloud Run job. If not provided the default Prefect image will be used.", "default": "prefecthq/prefect:2-latest", "type": "string"},
          "args": {"title": "Args", "description": "The arguments to pass to the Cloud Run Job V2's entrypoint command.", "type": "array", "items": {"type": "string"}},
          "keep_job": {"title": "Keep Job After Completion", "description": "Keep the completed Cloud run job on Google Cloud Platform.", "default": false, "type": "boolean"},
          "launch_stage": {"title": "Launch Stage", "description": "The launch stage of the Cloud Run Job V2. See https://cloud.google.com/run/docs/about-features-categories for additional details.", "default": "BETA", "enum": ["ALPHA", "BETA", "GA", "DEPRECATED", "EARLY_ACCESS", "PRELAUNCH", "UNIMPLEMENTED", "LAUNCH_TAG_UNSPECIFIED"], "type": "string"},
          "max_retries": {"title": "Max Retries", "description": "The number of times to retry the Cloud Run job.", "default": 0, "type": "integer"},
          "cpu": {"title": "CPU", "description": "The CPU to allocate to the Cloud Run job.", "default": "1000m", "type": "string"},
          "memory": {"title": "Memory", "description": "The memory to allocate to the Cloud Run job along with the units, whichcould be: G, Gi, M, Mi.", "default": "512Mi", "example": "512Mi", "pattern": "^\\d+(?:G|Gi|M|Mi)$", "type": "string"},
          "timeout": {"title": "Job Timeout", "description": "The length of time that Prefect will wait for a Cloud Run Job to complete before raising an exception (maximum of 86400 seconds, 1 day).", "default": 600, "exclusiveMinimum": 0, "maximum": 86400, "type": "integer"},
          "vpc_connector_name": {"title": "VPC Connector Name", "description": "The name of the VPC connector to use for the Cloud Run job.", "type": "string"},
          "service_account_name": {"title": "Service Account Name", "description": "The name of the service account to use for the task execution of Cloud Run Job. By default Cloud Run jobs run as the default Compute Engine Service Account.", "example": "service-account@example.iam.gserviceaccount.com", "type": "string"}
        },
        "definitions": {
          "GcpCredentials": {
            "title": "GcpCredentials",
            "description": "Block used to manage authentication with GCP.",
            "type": "object",
            "properties": {
              "service_account_file": {"title": "Service Account File", "description": "Path to the service account JSON keyfile.", "type": "string", "format": "path"},
              "service_account_info": {"title": "Service Account Info", "description": "The contents of the keyfile as a dict.", "type": "object"},
              "project": {"title": "Project", "description": "The GCP project to use for the client.", "type": "string"}
            },
            "block_type_slug": "gcp-credentials",
            "secret_fields": ["service_account_info.*"],
            "block_schema_references": {}
          }
        }
      }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefect_cloud_run_v2_template_is_accepted_as_is_and_renders_the_exact_job_body() {
    init_env();
    let fake = CloudRunFake::start().await;
    let app = spawn_app().await;
    let job_variables = json!({
        "credentials": {"project": PROJECT, "anonymous": true},
        "env": {"GREETING": "hi"},
        "command": "python -m 'flows.etl' --fast",
        "args": ["--rows", "3"],
        "vpc_connector_name": "projects/test-project/locations/us-central1/connectors/c1"
    });
    // As is: the pool is created and a deployment previews without objection.
    app.deployment(
        "prefect",
        Some(prefect_template()),
        "as-is",
        job_variables.clone(),
    )
    .await;
    let (s, preview) = app.post("/deployments/as-is/preview", json!({})).await;
    assert_eq!(s, 200, "{preview}");
    assert!(preview.get("provider_error").is_none(), "{preview}");
    assert_eq!(preview["job_configuration"]["region"], "us-central1");
    // Pointed at the fake: the same template plus one literal `endpoint_url` (the per-pool
    // endpoint override), run end to end.
    let mut template = prefect_template();
    template["job_configuration"]["endpoint_url"] = json!(fake.url);
    app.deployment("prefect-fake", Some(template), "prefect-job", job_variables)
        .await;
    let id = app.run("prefect-job").await;
    let running = app.wait_running(&id, Duration::from_secs(15)).await;
    assert_execution_id(&infra(&running));
    let bodies = fake.created_bodies();
    assert_eq!(bodies.len(), 1);
    let mut body = bodies[0].1.clone();
    let token = body["template"]["template"]["containers"][0]["env"][3]["value"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!token.is_empty(), "{body}");
    body["template"]["template"]["containers"][0]["env"][3]["value"] = json!("<run token>");
    let expected = json!({
        "client": "prefect",
        "launchStage": 3, // BETA, as the official client encodes enums (`enum-encoding=int`)
        "labels": {"pushpool-run-id": id, "pushpool-attempt": "1"},
        "template": {"template": {
            "maxRetries": 0,
            "timeout": "600s",
            "vpcAccess": {"connector": "projects/test-project/locations/us-central1/connectors/c1"},
            "containers": [{
                "env": [
                    {"name": "GREETING", "value": "hi"},
                    {"name": "PUSHPOOL_API_URL", "value": app.base},
                    {"name": "PUSHPOOL_RUN_ID", "value": id},
                    {"name": "PUSHPOOL_RUN_TOKEN", "value": "<run token>"}
                ],
                "image": "prefecthq/prefect:2-latest",
                "command": ["python", "-m", "flows.etl", "--fast"],
                "args": ["--rows", "3"],
                "resources": {"limits": {"cpu": "1000m", "memory": "512Mi"}}
            }]
        }}
    });
    assert_eq!(body, expected);
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A real project (ignored by default)

/// Runs one job on real Cloud Run. Needs `PUSHPOOL_TEST_GCP_PROJECT`, optionally
/// `PUSHPOOL_TEST_GCP_REGION` (default us-central1) and `PUSHPOOL_TEST_GCP_IMAGE` (default
/// `us-docker.pkg.dev/cloudrun/container/job:latest`), and Application Default Credentials whose
/// principal may create, run and delete Cloud Run jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs real GCP"]
async fn real_gcp_job_runs_to_completion_and_is_deleted() {
    init_env();
    let project = std::env::var("PUSHPOOL_TEST_GCP_PROJECT")
        .expect("set PUSHPOOL_TEST_GCP_PROJECT (and Application Default Credentials)");
    let region = std::env::var("PUSHPOOL_TEST_GCP_REGION").unwrap_or_else(|_| REGION.into());
    let image = std::env::var("PUSHPOOL_TEST_GCP_IMAGE")
        .unwrap_or_else(|_| "us-docker.pkg.dev/cloudrun/container/job:latest".into());
    let app = spawn_app().await;
    let pool = unique("gcp");
    app.deployment(
        &pool,
        None,
        "real",
        json!({"project": project, "region": region, "image": image, "timeout": 300}),
    )
    .await;
    let id = app.run("real").await;
    let run = app.wait_terminal(&id, Duration::from_secs(600)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert!(infra(&run).contains("/executions/"), "{run}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The provider alone against the fake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_provider_lookup_and_retried_submit_never_start_a_second_execution() {
    use pushpool_gcp_cloud_run::CloudRunProvider;
    use pushpool_provider::{DiscardLogs, Lookup, Provider, RunSpec, Secret};
    init_env();
    let fake = CloudRunFake::start().await;
    let provider = CloudRunProvider::new();
    let template = provider.default_base_job_template();
    let mut rendered = template["job_configuration"].clone();
    // Render by hand: the values a pool with these variables would get.
    rendered["job_body"]["launchStage"] = json!("BETA");
    let task = &mut rendered["job_body"]["template"]["template"];
    task["maxRetries"] = json!(0);
    task["timeout"] = json!(600);
    task["vpcAccess"] = json!({});
    task.as_object_mut().unwrap().remove("serviceAccount");
    task["containers"][0] =
        json!({"image": "img", "resources": {"limits": {"cpu": "1000m", "memory": "512Mi"}}});
    let rendered = json!({
        "job_body": rendered["job_body"], "project": PROJECT, "region": REGION,
        "endpoint_url": fake.url, "credentials": {"anonymous": true}, "timeout": 600
    });
    let job = provider.validate(&rendered).unwrap();
    let spec = RunSpec {
        run_id: uuid::Uuid::now_v7(),
        attempt: 2,
        workspace: "default".into(),
        work_pool: "cr".into(),
        deployment: "job".into(),
        parameters: json!({}),
        api_url: "http://127.0.0.1:1".into(),
        run_token: Secret::new("pp_test_token"),
        logs: Arc::new(DiscardLogs),
    };
    // No job yet.
    assert_eq!(provider.lookup(&spec, &job).await.unwrap(), Lookup::Absent);
    // A submit cut off inside `:run`: the job exists, without execution.
    fake.hang_runs(true);
    let cut = tokio::time::timeout(Duration::from_millis(500), provider.submit(&spec, &job)).await;
    assert!(cut.is_err(), "the submit should have hung in :run");
    assert_eq!(fake.jobs().len(), 1);
    assert!(fake.jobs()[0].ends_with(&format!("/jobs/pp-{}-2", spec.run_id.simple())));
    assert_eq!(provider.lookup(&spec, &job).await.unwrap(), Lookup::Absent);
    fake.hang_runs(false);
    let execution = provider.submit(&spec, &job).await.unwrap();
    assert_eq!(fake.executions_started(), 1);
    assert_eq!(
        provider.lookup(&spec, &job).await.unwrap(),
        Lookup::Found(execution.clone())
    );
    // A retried submit of the same attempt adopts the execution.
    assert_eq!(provider.submit(&spec, &job).await.unwrap(), execution);
    assert_eq!(fake.executions_started(), 1);
    // Cleanup deletes the job (keep_job is off).
    provider.cleanup(&execution, &job).await.unwrap();
    assert!(fake.jobs().is_empty());
    assert_eq!(provider.lookup(&spec, &job).await.unwrap(), Lookup::Absent);
}

// ---------------------------------------------------------------------------------------------
// Issue 16: correctness against the Admin API reference (each fails on the code before it)

/// The default template with an execution template of `tasks` tasks, `parallelism` at a time.
fn multi_task_template(tasks: u64, parallelism: u64) -> Value {
    let mut t = pushpool_gcp_cloud_run::CloudRunProvider::template();
    t["job_configuration"]["job_body"]["template"]["taskCount"] = json!(tasks);
    t["job_configuration"]["job_body"]["template"]["parallelism"] = json!(parallelism);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_completion_time_before_the_completed_condition_does_not_end_the_run_early() {
    let (fake, app) = setup(json!({})).await;
    // completionTime shows 1.5 s before the Completed condition says SUCCEEDED.
    fake.condition_lag(Duration::from_millis(1500));
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "COMPLETED", "{run}");
    assert!(message.contains("succeeded (1 of 1 task(s))"), "{message}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_failed_multi_task_execution_with_cancelled_tasks_is_failed_not_cancelled() {
    init_env();
    let fake = CloudRunFake::start().await;
    let app = spawn_app().await;
    app.deployment(
        "cr",
        Some(multi_task_template(4, 4)),
        "job",
        vars(&fake, json!({})),
    )
    .await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    // Task 2 failed for good; Cloud Run stopped the other three (cancelledCount 3).
    fake.finish_all(Outcome::Failed(
        "Task pp-task2 failed with message: The container exited with an error (exit code 1)."
            .into(),
    ));
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "FAILED", "{run}");
    assert!(message.contains("exit code 1"), "{message}");
    assert_eq!(fake.created_bodies()[0].1["template"]["taskCount"], 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_cancel_passing_through_cancelling_ends_cancelled() {
    let (fake, app) = setup(json!({})).await;
    fake.cancel_lag(Duration::from_millis(800));
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    let (s, body) = app
        .post(&format!("/flow_runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "CANCELLED", "{run}");
    wait_until(Duration::from_secs(10), "job deleted", || {
        fake.jobs().is_empty()
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_watchdog_window_counts_task_waves() {
    init_env();
    let fake = CloudRunFake::start().await;
    let app = spawn_app().await;
    // 4 tasks, 2 at a time: 2 waves × 3 s + 1 s = 7 s (one wave would be 4 s).
    app.deployment(
        "cr",
        Some(multi_task_template(4, 2)),
        "job",
        vars(&fake, json!({"timeout": 3, "watchdog_grace_seconds": 1})),
    )
    .await;
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(4600)).await;
    let run = app.flow_run(&id).await;
    assert_eq!(
        state(&run).0,
        "RUNNING",
        "killed before its second wave: {run}"
    );
    assert_eq!(fake.cancel_calls(), 0);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "FAILED", "{run}");
    assert!(
        message.contains("timed out: still not finished 7s after it started (2 wave(s) of 4 task(s) at parallelism 2"),
        "{message}"
    );
    assert!(fake.cancel_calls() >= 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_aborted_409_on_create_is_retried_not_taken_for_already_exists() {
    let (fake, app) = setup(json!({})).await;
    // ABORTED (a concurrency conflict) is HTTP 409 like ALREADY_EXISTS, and created nothing.
    fake.fail_calls("POST", "/jobs", 409, "ABORTED", 1);
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(20)).await;
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert_eq!(fake.executions_started(), 1);
    assert_eq!(
        fake.created_bodies().len(),
        1,
        "the ABORTED create was retried"
    );
    let (_, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    assert!(!logs.to_string().contains("already exists"), "{logs}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_submit_refused_after_create_deletes_the_job() {
    let (fake, app) = setup(json!({})).await;
    fake.fail_calls("POST", ":run", 403, "PERMISSION_DENIED", 1);
    let id = app.run("job").await;
    let run = app.wait_terminal(&id, Duration::from_secs(20)).await;
    let (t, message) = state(&run);
    assert_eq!(t, "CRASHED", "{run}");
    assert!(message.contains("PERMISSION_DENIED"), "{message}");
    assert_eq!(fake.executions_started(), 0);
    wait_until(Duration::from_secs(10), "job deleted", || {
        fake.jobs().is_empty()
    })
    .await;
    assert_eq!(fake.deleted_jobs().len(), 1);
    let (_, logs) = app.get(&format!("/flow_runs/{id}/logs")).await;
    assert!(
        logs.to_string().contains("after the submission failed"),
        "{logs}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_controller_sweeps_leftover_jobs_of_unknown_runs() {
    let (fake, app) = setup(json!({})).await;
    let parent = format!("projects/{PROJECT}/locations/{REGION}");
    let orphan = format!("{parent}/jobs/pp-{}-1", uuid::Uuid::new_v4().simple());
    let run_id = uuid::Uuid::new_v4().to_string();
    fake.insert_job(
        &orphan,
        json!({"pushpool-run-id": run_id, "pushpool-attempt": "1"}),
        Duration::from_secs(3600),
    );
    let foreign = format!("{parent}/jobs/someone-elses");
    fake.insert_job(&foreign, json!({"team": "web"}), Duration::from_secs(3600));
    // A run in the location lets the controller learn it; its first sweep follows.
    let id = app.run("job").await;
    app.wait_running(&id, Duration::from_secs(15)).await;
    wait_until(Duration::from_secs(10), "orphan job swept", || {
        !fake.jobs().contains(&orphan)
    })
    .await;
    assert!(
        fake.jobs().contains(&foreign),
        "a job without pushpool's label was touched"
    );
    assert_eq!(
        state(&app.flow_run(&id).await).0,
        "RUNNING",
        "the active run's job was swept"
    );
    assert_eq!(fake.jobs().len(), 2);
    fake.finish_all(Outcome::Succeeded);
    let run = app.wait_terminal(&id, Duration::from_secs(15)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    app.stop().await;
}

/// The job configuration of the provider-alone tests, pointed at `fake`.
fn provider_job(
    provider: &pushpool_gcp_cloud_run::CloudRunProvider,
    fake: &CloudRunFake,
    extra: Value,
) -> pushpool_gcp_cloud_run::CloudRunJobConfig {
    use pushpool_provider::Provider;
    let template = provider.default_base_job_template();
    let mut body = template["job_configuration"]["job_body"].clone();
    body["launchStage"] = json!("BETA");
    let task = &mut body["template"]["template"];
    task["maxRetries"] = json!(0);
    task["timeout"] = json!(600);
    task["vpcAccess"] = json!({});
    task.as_object_mut().unwrap().remove("serviceAccount");
    task["containers"][0] =
        json!({"image": "img", "resources": {"limits": {"cpu": "1000m", "memory": "512Mi"}}});
    let mut rendered = json!({
        "job_body": body, "project": PROJECT, "region": REGION,
        "endpoint_url": fake.url, "credentials": {"anonymous": true}, "timeout": 600
    });
    for (k, v) in extra.as_object().unwrap() {
        rendered[k] = v.clone();
    }
    provider.validate(&rendered).unwrap()
}

fn spec(attempt: u32) -> pushpool_provider::RunSpec {
    pushpool_provider::RunSpec {
        run_id: uuid::Uuid::now_v7(),
        attempt,
        workspace: "default".into(),
        work_pool: "cr".into(),
        deployment: "job".into(),
        parameters: json!({}),
        api_url: "http://127.0.0.1:1".into(),
        run_token: pushpool_provider::Secret::new("pp_test_token"),
        logs: Arc::new(pushpool_provider::DiscardLogs),
    }
}

/// A ledger with fixed answers (unlisted runs are unknown).
struct Ledger(std::collections::HashMap<uuid::Uuid, pushpool_provider::RunPhase>);

#[async_trait::async_trait]
impl pushpool_provider::RunLedger for Ledger {
    async fn phase(&self, run_id: uuid::Uuid) -> Result<pushpool_provider::RunPhase, String> {
        Ok(self
            .0
            .get(&run_id)
            .copied()
            .unwrap_or(pushpool_provider::RunPhase::Unknown))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_submit_cut_short_after_run_adopts_the_latest_created_execution() {
    use pushpool_gcp_cloud_run::CloudRunProvider;
    use pushpool_provider::{Lookup, Provider};
    init_env();
    let fake = CloudRunFake::start().await;
    // The executions list shows a new execution only after a minute; the job's
    // latestCreatedExecution names it at once.
    fake.list_lag(Duration::from_secs(60));
    fake.lose_run_answers(true);
    let a = CloudRunProvider::new();
    let job = provider_job(&a, &fake, json!({}));
    let run = spec(1);
    // Controller A: `:run` started the execution, its answer was lost, A died.
    let cut = tokio::time::timeout(Duration::from_millis(1500), a.submit(&run, &job)).await;
    assert!(cut.is_err(), "the submit should have hung in :run");
    assert_eq!(fake.executions_started(), 1);
    fake.lose_run_answers(false);
    // Controller B (no memory of A's operation): takeover lookup and submit both adopt it.
    let b = CloudRunProvider::new();
    let found = b.lookup(&run, &job).await.unwrap();
    let Lookup::Found(execution) = found else {
        panic!("lookup did not find the execution: {found:?}");
    };
    assert_eq!(fake.executions()[0].0, execution);
    assert_eq!(b.submit(&run, &job).await.unwrap(), execution);
    assert_eq!(
        fake.executions_started(),
        1,
        "a second execution was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_failed_job_deletes_are_retried_by_the_sweep() {
    use pushpool_gcp_cloud_run::CloudRunProvider;
    use pushpool_provider::{Provider, RunPhase};
    init_env();
    let fake = CloudRunFake::start().await;
    let provider = CloudRunProvider::new().with_sweep_interval(Duration::ZERO);
    let job = provider_job(&provider, &fake, json!({}));
    let run = spec(1);
    let execution = provider.submit(&run, &job).await.unwrap();
    fake.finish_all(Outcome::Succeeded);
    // Every try of the cleanup's deletion fails (503): the job stays for now.
    fake.fail_calls("DELETE", "", 503, "UNAVAILABLE", 3);
    let err = provider.cleanup(&execution, &job).await.unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
    assert_eq!(fake.jobs().len(), 1);
    let ledger = Ledger([(run.run_id, RunPhase::Terminal)].into());
    let report = provider.sweep(&ledger).await.unwrap();
    assert!(report.deleted >= 1, "{report:?}");
    assert!(fake.jobs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_sweep_deletes_leftover_jobs_by_run_label_and_honours_keep_job_retention() {
    use pushpool_gcp_cloud_run::CloudRunProvider;
    use pushpool_provider::{Lookup, Provider, RunPhase};
    init_env();
    let fake = CloudRunFake::start().await;
    let parent = format!("projects/{PROJECT}/locations/{REGION}");
    let day = Duration::from_secs(86_400);
    let mut phases = std::collections::HashMap::new();
    let mut job_of = |name: &str,
                      phase: Option<RunPhase>,
                      attempt: u32,
                      keep: Option<u64>,
                      age: Duration| {
        let run_id = uuid::Uuid::new_v4();
        if let Some(p) = phase {
            phases.insert(run_id, p);
        }
        let mut labels =
            json!({"pushpool-run-id": run_id.to_string(), "pushpool-attempt": attempt.to_string()});
        if let Some(days) = keep {
            labels["pushpool-keep-job"] = json!("true");
            labels["pushpool-retention-days"] = json!(days.to_string());
        }
        let full = format!("{parent}/jobs/{name}");
        fake.insert_job(&full, labels, age);
        full
    };
    let unknown = job_of("unknown-run", None, 1, None, day);
    let terminal = job_of("terminal-run", Some(RunPhase::Terminal), 1, None, day);
    let active = job_of(
        "active-run",
        Some(RunPhase::Active { attempt: 2 }),
        2,
        None,
        day,
    );
    let earlier_attempt = job_of(
        "earlier-attempt",
        Some(RunPhase::Active { attempt: 2 }),
        1,
        None,
        day,
    );
    let kept_expired = job_of(
        "kept-expired",
        Some(RunPhase::Terminal),
        1,
        Some(7),
        day * 8,
    );
    let kept_young = job_of("kept-young", Some(RunPhase::Terminal), 1, Some(7), day);
    let kept_for_ever = job_of(
        "kept-for-ever",
        Some(RunPhase::Terminal),
        1,
        Some(0),
        day * 400,
    );
    let foreign = format!("{parent}/jobs/not-pushpools");
    fake.insert_job(&foreign, json!({"team": "web"}), day * 400);
    let provider = CloudRunProvider::new().with_sweep_interval(Duration::from_secs(3600));
    let ledger = Ledger(phases);
    // Nothing known yet: nothing swept.
    assert_eq!(provider.sweep(&ledger).await.unwrap().deleted, 0);
    // Any call in the location (here a takeover lookup) makes it known.
    let job = provider_job(&provider, &fake, json!({}));
    assert_eq!(
        provider.lookup(&spec(1), &job).await.unwrap(),
        Lookup::Absent
    );
    let report = provider.sweep(&ledger).await.unwrap();
    assert_eq!(
        (report.deleted, report.kept, report.failed),
        (4, 3, 0),
        "{report:?}"
    );
    let mut deleted = fake.deleted_jobs();
    deleted.sort();
    let mut want = vec![unknown, terminal, earlier_attempt, kept_expired];
    want.sort();
    assert_eq!(deleted, want);
    let mut left = fake.jobs();
    left.sort();
    let mut want = vec![active, kept_young, kept_for_ever, foreign];
    want.sort();
    assert_eq!(left, want);
    // Not due again within the interval.
    let calls = fake.calls().len();
    assert_eq!(provider.sweep(&ledger).await.unwrap(), Default::default());
    assert_eq!(fake.calls().len(), calls);
}
