//! The service for end-to-end suites: the API on a fresh store, plus controllers on their own
//! runtimes, so a test can kill one outright like a crashed process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{self, TestDb};
use crate::server::{bootstrap_fresh, Server};
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::execution::{ProcessPools, ProcessSandbox};
use pushpool::metrics::Metrics;
use pushpool::registry::registry_with_null;
use pushpool::server::{run_tokens, ServeOptions};
use pushpool::store::Store;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Controllers on their own runtimes, so a test can kill one outright (no hand-back, no lease
// release) like a crashed process.

/// A controller on its own runtime (short lease and deadlines for tests).
pub struct Controllerd {
    rt: Option<tokio::runtime::Runtime>,
}

impl Controllerd {
    /// Starts controller `id` on the store at `db_url`, handing runs the API at `api_url`.
    pub fn start(db_url: &str, id: &str, api_url: &str) -> Controllerd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (url, id, api_url) = (db_url.to_string(), id.to_string(), api_url.to_string());
        rt.spawn(async move {
            let store = crate::db::open_store(&url).await;
            let tokens = run_tokens(&store).await.unwrap();
            let config = ControllerConfig {
                id,
                api_url,
                lease: Duration::from_secs(2),
                poll_max: Duration::from_millis(250),
                submit_deadline: Duration::from_secs(10),
                status_deadline: Duration::from_secs(10),
                idle_max: Duration::from_millis(500),
                process_pools: ProcessPools::All,
                ..ControllerConfig::default()
            };
            let controller = Controller::new(Context::new(
                store,
                registry_with_null(),
                config,
                tokens,
                Arc::new(Metrics::default()),
            ));
            controller.run(Duration::from_secs(1)).await;
        });
        Controllerd { rt: Some(rt) }
    }

    /// Stops every task of this controller at once, like `kill -9`.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Controllerd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The service under test, with the owner key of workspace `default`.
pub struct App {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The bootstrap owner key of workspace `default`.
    pub key: String,
    /// A client that never goes through a proxy.
    pub client: reqwest::Client,
    /// Controllers started with [`App::start_controller`].
    pub controllers: Vec<Controllerd>,
    db_url: String,
    server: Server,
    _db: Option<TestDb>,
    _home: tempfile::TempDir,
}

/// The provider suites' service: the API alone on a fresh SQLite store, and one controller
/// (`controller-a`) on its own runtime.
pub async fn spawn_app() -> App {
    let db = db::sqlite_db();
    let store = db::connect(&db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    let mut app = App::serve(&db.url, store, key, home, false).await;
    app._db = Some(db);
    app.start_controller("controller-a");
    app
}

impl App {
    /// Serves `store` (at `db_url`; with the in-process controller when `controller`) on a free
    /// port, calling it with `key`; `home` is kept as long as the app.
    pub async fn serve(
        db_url: &str,
        store: Store,
        key: String,
        home: tempfile::TempDir,
        controller: bool,
    ) -> App {
        let options = ServeOptions {
            database_url: db_url.to_string(),
            controller,
            process_pools: ProcessPools::All,
            // Process jobs' run directories go away with the test.
            process_sandbox: ProcessSandbox {
                runs_dir: Some(home.path().join("runs")),
                ..ProcessSandbox::default()
            },
            ..Default::default()
        };
        let server = Server::start(store, options).await;
        App {
            base: server.base.clone(),
            key,
            client: server.client.clone(),
            controllers: vec![],
            db_url: db_url.to_string(),
            server,
            _db: None,
            _home: home,
        }
    }
    /// Starts one more controller, `id`, on its own runtime.
    pub fn start_controller(&mut self, id: &str) {
        let c = Controllerd::start(&self.db_url, id, &self.base);
        self.controllers.push(c);
    }
    /// The URL of `path` in workspace `default`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/workspaces/default{path}", self.base)
    }
    /// POSTs `body` to `path` in workspace `default`: status and JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    /// GETs `path` in workspace `default`: status and JSON answer.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    /// Creates pool `name` with `body` unless it exists.
    pub async fn ensure_pool(&self, name: &str, body: Value) {
        let (s, b) = self.get(&format!("/work_pools/{name}")).await;
        if s == 404 {
            let (s, b) = self.post("/work_pools", body).await;
            assert_eq!(s, 201, "{b}");
        } else {
            assert_eq!(s, 200, "{b}");
        }
    }
    /// Creates a run of `deployment`; its id.
    pub async fn run(&self, deployment: &str) -> String {
        let (s, b) = self
            .post(&format!("/deployments/{deployment}/runs"), json!({}))
            .await;
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().unwrap().to_string()
    }
    /// The run `id` as the API shows it.
    pub async fn flow_run(&self, id: &str) -> Value {
        self.get(&format!("/flow_runs/{id}")).await.1
    }
    /// Polls run `id` until `f` holds; fails the test (naming `what`) after `limit`.
    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let run = self.flow_run(id).await;
            if f(&run) {
                return run;
            }
            assert!(
                start.elapsed() < limit,
                "{what} not seen after {limit:?}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    /// Waits until run `id` is COMPLETED, FAILED, CRASHED or CANCELLED.
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, "terminal state", |run| {
            ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
                .contains(&run["state"]["type"].as_str().unwrap_or(""))
        })
        .await
    }
    /// Waits until run `id` is RUNNING.
    pub async fn wait_running(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, "RUNNING", |run| {
            run["state"]["type"] == "RUNNING"
        })
        .await
    }
    /// The state types run `id` went through.
    pub async fn history(&self, id: &str) -> Vec<String> {
        let (_, states) = self.get(&format!("/flow_runs/{id}/states")).await;
        states
            .as_array()
            .unwrap_or_else(|| panic!("{states}"))
            .iter()
            .map(|h| h["type"].as_str().unwrap().to_string())
            .collect()
    }
    /// Kills the controllers, then stops the server.
    pub async fn stop(mut self) {
        for c in &mut self.controllers {
            c.kill();
        }
        self.server.stop().await;
    }
}

/// A run's state type and message.
pub fn state(run: &Value) -> (&str, &str) {
    (
        run["state"]["type"].as_str().unwrap_or(""),
        run["state"]["message"].as_str().unwrap_or(""),
    )
}

/// A run's infrastructure id.
pub fn infra(run: &Value) -> String {
    run["infrastructure_id"].as_str().unwrap_or("").to_string()
}
