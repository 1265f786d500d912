//! Secrets never reach the logs or a later API answer.
//!
//! Every log line of the process (every target, TRACE level: pushpool, axum, hyper, sqlx, the
//! AWS and Google SDKs) is captured during a full lifecycle: API keys created, rotated, revoked
//! and misused; a service account; a second workspace; pools whose runs carry provider
//! credentials (a GCP service-account key with a real RSA private key, AWS keys in the
//! controller's environment); runs on the process, Cloud Run and Lambda providers; a run token
//! used by the job; a controller claiming through the API. Afterwards no API key, run token,
//! private key or AWS secret appears in the logs, nor in any API answer after the one that
//! created it.
//!
//! A test binary of its own: it installs the process-wide log subscriber and sets the AWS
//! credentials of the whole process, which would meet the other suites under `cargo test`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::server::{default_registry, run_tokens};
use pushpool_testkit::aws_lambda_fake as lambda_fake;
use pushpool_testkit::env::static_aws_credentials;
use pushpool_testkit::{call_json, cloud_run_fake, serve_fresh, sqlite_db};
use serde_json::{json, Value};

/// Everything the process logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn rsa_private_key_pem() -> String {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

struct Http {
    base: String,
    client: reqwest::Client,
    /// Every answer after the creating one, to search for secrets.
    answers: Mutex<String>,
}

impl Http {
    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        call_json(&self.client, method, &url, key, body).await
    }
    /// A call whose answer may show a secret just created (recorded nowhere).
    async fn create(&self, method: &str, path: &str, key: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, key, Some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }
    /// A call whose answer must not show any secret.
    async fn read(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let (s, v) = self.call(method, path, key, body).await;
        self.answers
            .lock()
            .unwrap()
            .push_str(&format!("{method} {path} → {s} {v}\n"));
        (s, v)
    }
    async fn wait_terminal(&self, ws: &str, key: &str, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let (_, run) = self
                .read(
                    "GET",
                    &format!("/api/workspaces/{ws}/flow_runs/{id}"),
                    key,
                    None,
                )
                .await;
            let t = run["state"]["type"].as_str().unwrap_or("").to_string();
            if ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].contains(&t.as_str()) {
                return run;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "not terminal: {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_token_or_provider_secret_is_logged_or_returned_after_creation() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(captured.clone())
        .with_ansi(false)
        .init();

    let aws_secret = format!("awsSecret{}", uuid::Uuid::new_v4().simple());
    let aws_session = format!("awsSession{}", uuid::Uuid::new_v4().simple());
    static_aws_credentials("AKIAPUSHPOOLSECRETS", &aws_secret);
    std::env::set_var("AWS_SESSION_TOKEN", &aws_session);
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "AWS_PROFILE",
    ] {
        std::env::remove_var(k);
    }

    let cloud_run = cloud_run_fake::CloudRunFake::start().await;
    cloud_run.auto(cloud_run_fake::Outcome::Succeeded);
    let lambda = lambda_fake::LambdaFake::start(None).await;
    lambda.always("etl", lambda_fake::Fault::Respond(json!({"rows": 3})));

    let private_key = rsa_private_key_pem();
    let private_key_id = format!("kid{}", uuid::Uuid::new_v4().simple());
    let service_account_info = json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": private_key_id,
        "private_key": private_key,
        "client_email": "robot@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "http://127.0.0.1:9/token",
    });

    // The API alone; a controller joins after the API-claim step below.
    let db = sqlite_db();
    let served = serve_fresh(&db.url, false).await;
    let (store, admin_key) = (served.store.clone(), served.admin_key.clone());
    let http = Http {
        base: served.base.clone(),
        client: served.client.clone(),
        answers: Mutex::default(),
    };
    let ws = "/api/workspaces/default";
    let mut secrets: Vec<(String, String)> =
        vec![("bootstrap admin key".into(), admin_key.clone())];

    // Keys: a service account, a personal key, rotated, revoked, a second workspace.
    let sa = http
        .create(
            "POST",
            &format!("{ws}/service_accounts"),
            &admin_key,
            json!({"name": "ci", "role": "owner"}),
        )
        .await;
    let ci_key = sa["api_key"]["key"].as_str().unwrap().to_string();
    secrets.push(("service account key".into(), ci_key.clone()));
    let personal = http
        .create(
            "POST",
            &format!("{ws}/api_keys"),
            &admin_key,
            json!({"name": "laptop"}),
        )
        .await;
    secrets.push((
        "personal key".into(),
        personal["key"].as_str().unwrap().into(),
    ));
    let rotated = http
        .create(
            "POST",
            &format!("{ws}/api_keys/{}/rotate", personal["id"].as_str().unwrap()),
            &admin_key,
            json!({"grace_seconds": 0}),
        )
        .await;
    let rotated_key = rotated["api_key"]["key"].as_str().unwrap().to_string();
    secrets.push(("rotated key".into(), rotated_key.clone()));
    let (s, _) = http
        .read(
            "GET",
            &format!("{ws}/work_pools"),
            personal["key"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(s, 401, "the rotated-out key still works");
    http.read("GET", &format!("{ws}/work_pools"), &rotated_key, None)
        .await;
    let (s, _) = http
        .read(
            "DELETE",
            &format!(
                "{ws}/api_keys/{}",
                rotated["api_key"]["id"].as_str().unwrap()
            ),
            &admin_key,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = http
        .read("GET", &format!("{ws}/work_pools"), &rotated_key, None)
        .await;
    assert_eq!(s, 401, "the revoked key still works");
    let bogus = pushpool::auth::generate_api_key().key.expose().to_string();
    secrets.push(("unknown key someone tried".into(), bogus.clone()));
    let (s, _) = http
        .read("GET", &format!("{ws}/work_pools"), &bogus, None)
        .await;
    assert_eq!(s, 401);
    let other = http
        .create(
            "POST",
            "/api/workspaces",
            &admin_key,
            json!({"name": "other"}),
        )
        .await;
    secrets.push((
        "owner key of a new workspace".into(),
        other["api_key"]["key"].as_str().unwrap().into(),
    ));

    // Pools and deployments, one per provider, with provider credentials in the job variables.
    for (name, pool_type) in [
        ("local", "process"),
        ("gcp", "cloud-run-v2:push"),
        ("aws", "aws-lambda:push"),
    ] {
        http.create(
            "POST",
            &format!("{ws}/work_pools"),
            &ci_key,
            json!({"name": name, "type": pool_type}),
        )
        .await;
    }
    http.create(
        "POST",
        &format!("{ws}/deployments"),
        &ci_key,
        json!({"name": "hello", "work_pool": "local", "job_variables": {"command": "echo hello"}}),
    )
    .await;
    let gcp_vars = json!({
        "image": "us-docker.pkg.dev/test-project/jobs/etl:1", "project": "test-project",
        "region": "us-central1", "endpoint_url": cloud_run.url,
        "credentials": {"service_account_info": service_account_info},
    });
    http.create(
        "POST",
        &format!("{ws}/deployments"),
        &ci_key,
        json!({"name": "gcp-job", "work_pool": "gcp", "job_variables": gcp_vars}),
    )
    .await;
    http.create(
        "POST",
        &format!("{ws}/deployments"),
        &ci_key,
        json!({"name": "aws-job", "work_pool": "aws",
               "job_variables": {"function_name": "etl", "endpoint_url": lambda.url, "region": "us-east-1"}}),
    )
    .await;
    // Read back: masked. Written back as read (with one change): the key is kept.
    let (_, d) = http
        .read("GET", &format!("{ws}/deployments/gcp-job"), &ci_key, None)
        .await;
    assert_eq!(
        d["job_variables"]["credentials"]["service_account_info"],
        pushpool::redact::MASK,
        "{d}"
    );
    let mut vars = d["job_variables"].clone();
    vars["region"] = json!("us-central1");
    let (s, _) = http
        .read(
            "PATCH",
            &format!("{ws}/deployments/gcp-job"),
            &ci_key,
            Some(json!({"job_variables": vars})),
        )
        .await;
    assert_eq!(s, 200);
    let default_ws = store.workspace("default").await.unwrap();
    let stored = store.deployment(default_ws.id, "gcp-job").await.unwrap();
    assert_eq!(
        stored.job_variables["credentials"]["service_account_info"]["private_key"],
        json!(private_key),
        "writing back the masked value lost the stored key"
    );
    let (s, preview) = http
        .read(
            "POST",
            &format!("{ws}/deployments/gcp-job/preview"),
            &ci_key,
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{preview}");

    // A controller working through the API claims a run and reports it.
    let ctl = http
        .create(
            "POST",
            &format!("{ws}/service_accounts"),
            &admin_key,
            json!({"name": "ext", "role": "controller"}),
        )
        .await;
    let ctl_key = ctl["api_key"]["key"].as_str().unwrap().to_string();
    secrets.push(("controller service account key".into(), ctl_key.clone()));
    let run = http
        .create(
            "POST",
            &format!("{ws}/deployments/hello/runs"),
            &ci_key,
            json!({}),
        )
        .await;
    let claimed = http
        .create(
            "POST",
            &format!("{ws}/work_pools/local/claim"),
            &ctl_key,
            json!({"controller_id": "ext-1", "limit": 5}),
        )
        .await;
    assert_eq!(claimed["runs"][0]["flow_run"]["id"], run["id"], "{claimed}");
    secrets.push((
        "run token handed to an API controller".into(),
        claimed["runs"][0]["run_token"].as_str().unwrap().into(),
    ));
    for state in ["RUNNING", "COMPLETED"] {
        let (s, v) = http
            .read(
                "POST",
                &format!("{ws}/flow_runs/{}/set_state", run["id"].as_str().unwrap()),
                &ctl_key,
                Some(json!({"controller_id": "ext-1", "type": state})),
            )
            .await;
        assert_eq!((s, v["status"].as_str()), (200, Some("ACCEPT")), "{v}");
    }

    // The built-in controller runs one job per provider.
    let tokens = run_tokens(&store).await.unwrap();
    let controller_store = store.clone();
    let api_url = http.base.clone();
    let controller = Controller::new(Context::new(
        controller_store,
        default_registry(),
        ControllerConfig {
            api_url,
            poll_max: Duration::from_millis(200),
            idle_max: Duration::from_millis(300),
            ..ControllerConfig::default()
        },
        tokens.clone(),
        Arc::new(Metrics::default()),
    ));
    let running = controller.clone();
    let controller_task = tokio::spawn(async move { running.run(Duration::from_secs(5)).await });
    for deployment in ["hello", "gcp-job", "aws-job"] {
        let run = http
            .create(
                "POST",
                &format!("{ws}/deployments/{deployment}/runs"),
                &ci_key,
                json!({}),
            )
            .await;
        let id = run["id"].as_str().unwrap().to_string();
        let token = tokens.issue(id.parse().unwrap(), 1);
        secrets.push((format!("run token of {deployment}"), token.clone()));
        let done = http.wait_terminal("default", &ci_key, &id).await;
        assert_eq!(done["state"]["type"], "COMPLETED", "{deployment}: {done}");
        // The job uses its token.
        let r = http
            .client
            .post(format!("{}/api/runs/{id}/logs", http.base))
            .bearer_auth(&token)
            .json(&json!({"lines": [{"line": "job says hi"}]}))
            .send()
            .await
            .unwrap();
        // The run is over: the log line is still accepted or refused, never an error.
        assert!(r.status().as_u16() < 500);
    }
    // The Cloud Run job body carried the run token and the service-account key signed the
    // requests (self-signed JWT, no token endpoint).
    let bodies = cloud_run.created_bodies();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].1.to_string().contains("PUSHPOOL_RUN_TOKEN"));

    // Everything an owner can list afterwards.
    for path in [
        "/api_keys",
        "/service_accounts",
        "/deployments",
        "/work_pools",
        "/flow_runs",
        "/events",
        "/audit_log?limit=1000",
        "/members",
        "/roles",
    ] {
        let (s, _) = http
            .read("GET", &format!("{ws}{path}"), &admin_key, None)
            .await;
        assert_eq!(s, 200, "{path}");
    }
    for run in store.all_runs(default_ws.id).await.unwrap() {
        let (s, _) = http
            .read(
                "GET",
                &format!("{ws}/flow_runs/{}/logs", run.id),
                &admin_key,
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    controller.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), controller_task).await;
    drop(served);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The search.
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    let answers = http.answers.lock().unwrap().clone();
    assert!(
        logs.len() > 100_000 && logs.contains("TRACE") && logs.contains("controller"),
        "the capture does not look like all logs ({} bytes)",
        logs.len()
    );
    let run_token_secret = store
        .setting(pushpool::auth::RUN_TOKEN_SECRET_SETTING)
        .await
        .unwrap()
        .unwrap();
    secrets.push(("run token signing secret".into(), run_token_secret));
    secrets.push(("AWS secret access key".into(), aws_secret));
    secrets.push(("AWS session token".into(), aws_session));
    // The private key: its PEM body, and any 40-character piece of it (a log might wrap it).
    let pem_body: String = private_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    secrets.push(("GCP private key".into(), pem_body.clone()));
    for i in (0..pem_body.len().saturating_sub(40)).step_by(200) {
        secrets.push((
            "a piece of the GCP private key".into(),
            pem_body[i..i + 40].to_string(),
        ));
    }
    let mut leaks = vec![];
    for (what, secret) in &secrets {
        // An API key's secret part, without its public prefix, must not appear either.
        let parts: Vec<&str> = if secret.starts_with("pp_") {
            vec![secret.as_str(), &secret[11..43]]
        } else if let Some(mac) = secret
            .strip_prefix("ppr_")
            .and_then(|t| t.rsplit('_').next())
        {
            vec![secret.as_str(), mac]
        } else {
            vec![secret.as_str()]
        };
        for part in parts {
            if logs.contains(part) {
                leaks.push(format!("{what} is in the logs"));
            }
            if answers.contains(part) {
                leaks.push(format!("{what} is in a later API answer"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    println!(
        "checked {} secrets against {} bytes of logs and {} bytes of API answers",
        secrets.len(),
        logs.len(),
        answers.len()
    );
}
