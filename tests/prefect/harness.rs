//! The Prefect end-to-end harness: a real `prefect server start` (temporary `PREFECT_HOME`, free
//! loopback port; or the server at `PUSHPOOL_TEST_PREFECT_API_URL` when scripts/test started one
//! for the whole suite), pushpool controllers as child processes of the built binary, and
//! helpers over Prefect's REST API.
//!
//! The Prefect venv comes from `PUSHPOOL_PREFECT_VENV` (scripts/prefect-venv.sh), else
//! `/work/cache/prefect-venv`. Without one the tests are skipped, except under `CI=true`, where
//! that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// The Prefect venv, or `None` (skip) outside CI.
pub fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("PUSHPOOL_PREFECT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/cache/prefect-venv"));
    if dir.join("bin/prefect").exists() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "no Prefect venv at {} (set PUSHPOOL_PREFECT_VENV; scripts/prefect-venv.sh makes one)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: no Prefect venv at {} (set PUSHPOOL_PREFECT_VENV)",
        dir.display()
    );
    None
}

/// The real directory of the venv's Python installation (the sandbox must let jobs read it).
pub fn python_home(venv: &Path) -> PathBuf {
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap_or_default();
    cfg.lines()
        .find_map(|l| l.strip_prefix("home = "))
        .map(|bin| {
            PathBuf::from(bin.trim())
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        })
        .unwrap_or_else(|| PathBuf::from("/usr"))
}

/// A running Prefect server (ours, or the suite's).
pub struct PrefectServer {
    pub api_url: String,
    pub venv: PathBuf,
    child: Option<Child>,
    _home: Option<tempfile::TempDir>,
}

impl PrefectServer {
    /// Starts one (about 10 s), or uses `PUSHPOOL_TEST_PREFECT_API_URL`.
    pub async fn start(venv: &Path) -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("PUSHPOOL_TEST_PREFECT_API_URL") {
            return Ok(PrefectServer {
                api_url: url,
                venv: venv.to_path_buf(),
                child: None,
                _home: None,
            });
        }
        let home = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(venv.join("bin/prefect"))
            .args([
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .env("PREFECT_HOME", home.path())
            .env("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            .env("PREFECT_UI_ENABLED", "false")
            .env("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path().join("server.log"))?)
            .spawn()
            .context("starting prefect server")?;
        let server = PrefectServer {
            api_url: format!("http://127.0.0.1:{port}/api"),
            venv: venv.to_path_buf(),
            child: Some(child),
            _home: Some(home),
        };
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            let health = http.get(format!("{}/health", server.api_url)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!("prefect server did not answer /api/health within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `POST`/`GET`/`PATCH` on the API; the JSON answer.
    /// A 503 (Prefect's SQLite store busy, mostly right after start) is retried.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let http = reqwest::Client::new();
        let mut tries = 0;
        loop {
            let mut req = http.request(method.clone(), format!("{}{}", self.api_url, path));
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let text = resp.text().await?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && tries < 120 {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if !status.is_success() {
                bail!("{path}: {status}: {text}");
            }
            return Ok(if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)?
            });
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Creates a work pool with pushpool's default template of `pool_type`.
    pub async fn create_pool(&self, name: &str, pool_type: &str) -> anyhow::Result<()> {
        let status = Command::new(env!("CARGO_BIN_EXE_pushpool"))
            .args(["prefect", "pool", "create", name, "--type", pool_type])
            .env("PREFECT_API_URL", &self.api_url)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pushpool prefect pool create failed");
        }
        Ok(())
    }

    /// Deploys `tests/prefect/flows.py:<function>` with `flow.from_source(dir, …).deploy(…)`;
    /// returns the deployment id.
    pub fn deploy(
        &self,
        function: &str,
        name: &str,
        pool: &str,
        job_variables: &Value,
    ) -> anyhow::Result<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prefect");
        let script = "import json, sys\nfrom prefect import flow\nd, entry, name, pool, jv = sys.argv[1:6]\nprint(flow.from_source(source=d, entrypoint=entry).deploy(name=name, work_pool_name=pool, job_variables=json.loads(jv), build=False, push=False, print_next_steps=False))\n";
        let out = Command::new(self.venv.join("bin/python"))
            .arg("-c")
            .arg(script)
            .arg(&dir)
            .arg(format!("flows.py:{function}"))
            .args([name, pool, &job_variables.to_string()])
            .env("PREFECT_API_URL", &self.api_url)
            .output()?;
        if !out.status.success() {
            bail!("deploy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().last().unwrap_or_default().trim().to_string())
    }

    /// A deployment of a flow made through the REST API (no source; the job's command does the
    /// work).
    pub async fn api_deployment(
        &self,
        name: &str,
        pool: &str,
        job_variables: Value,
    ) -> anyhow::Result<String> {
        let flow = self
            .post("/flows/", json!({"name": format!("flow-{name}")}))
            .await?;
        let d = self
            .post(
                "/deployments/",
                json!({"name": name, "flow_id": flow["id"], "work_pool_name": pool, "job_variables": job_variables}),
            )
            .await?;
        Ok(d["id"].as_str().unwrap_or_default().to_string())
    }

    /// Creates a run of a deployment due now; returns its id.
    pub async fn run_deployment(&self, deployment: &str) -> anyhow::Result<String> {
        let r = self
            .post(
                &format!("/deployments/{deployment}/create_flow_run"),
                json!({}),
            )
            .await?;
        Ok(r["id"].as_str().unwrap_or_default().to_string())
    }

    /// A run's JSON.
    pub async fn run(&self, id: &str) -> anyhow::Result<Value> {
        self.get(&format!("/flow_runs/{id}")).await
    }

    /// Waits until the run's state type is one of `types`; returns the run.
    pub async fn wait_for(
        &self,
        id: &str,
        types: &[&str],
        within: Duration,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let run = self.run(id).await?;
            if types.iter().any(|t| run["state_type"] == *t) {
                return Ok(run);
            }
            if started.elapsed() > within {
                bail!(
                    "run {id} not in {types:?} within {within:?}: {} {}",
                    run["state_type"],
                    run["state"]["message"]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (up to 20 s: the flow's logs arrive in batches) until a log line of the run contains
    /// `text`; returns all lines.
    pub async fn wait_log(&self, id: &str, text: &str) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        loop {
            let logs = self.logs(id).await?;
            if logs.iter().any(|l| l.contains(text)) || started.elapsed() > Duration::from_secs(20)
            {
                return Ok(logs);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The messages of a run's logs.
    pub async fn logs(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let logs = self
            .post(
                "/logs/filter",
                json!({"logs": {"flow_run_id": {"any_": [id]}}, "limit": 200}),
            )
            .await?;
        Ok(logs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["message"].as_str().map(str::to_string))
            .collect())
    }
}

impl Drop for PrefectServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `pushpool controller --prefect-api-url` child process (SIGKILLed when dropped).
pub struct ControllerProcess {
    pub child: Child,
    _home: tempfile::TempDir,
}

impl ControllerProcess {
    /// Starts one serving `pool`; `orphan_after` in seconds.
    pub fn start(server: &PrefectServer, pool: &str, orphan_after: u64) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let child = Command::new(env!("CARGO_BIN_EXE_pushpool"))
            .args(["controller", "--pool", pool, "--process-pools", "all"])
            .arg("--prefect-api-url")
            .arg(&server.api_url)
            .arg("--prefect-orphan-after-seconds")
            .arg(orphan_after.to_string())
            .arg("--home")
            .arg(home.path())
            .arg("--runs-dir")
            .arg(
                home.path()
                    .join("..")
                    .join(format!("runs-{}", uuid::Uuid::new_v4().simple())),
            )
            .env_remove("PUSHPOOL_DATABASE_URL")
            // Nothing leaves loopback; the AWS SDK sees only dummy credentials.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/pushpool-test-aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/pushpool-test-aws-credentials",
            )
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_LAMBDA")
            .env("RUST_LOG", "warn,pushpool=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_path(pool))?)
            .spawn()?;
        Ok(ControllerProcess { child, _home: home })
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Job variables that let a `process` job run the venv's Prefect under the sandbox: the venv and
/// its Python readable, its `bin` first on `PATH`, `writable` writable.
pub fn process_job_variables(venv: &Path, writable: &Path) -> Value {
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prefect");
    json!({
        "read_paths": [venv, python_home(venv), flows],
        "write_paths": [writable],
        "env": {
            "PATH": format!("{}:/usr/local/bin:/usr/bin:/bin", venv.join("bin").display()),
            "PUSHPOOL_TEST_JOURNAL": writable.join("journal").display().to_string(),
            "PUSHPOOL_TEST_PIDFILE": writable.join("pid").display().to_string(),
            "PREFECT_LOCAL_STORAGE_PATH": writable.join("results").display().to_string(),
        },
    })
}

/// Where a controller serving `pool` logs (kept after the test, under Cargo's test temp dir).
pub fn log_path(pool: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prefect-e2e");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{pool}-{}.log", uuid::Uuid::new_v4().simple()))
}

/// A unique name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
