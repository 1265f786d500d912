//! The service for provider suites: the API (no controller) on a fresh SQLite store, plus
//! controllers on their own runtimes, so a test can kill one outright like a crashed process.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, TestDb};
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::server::{bootstrap, default_registry, run_tokens, serve, ServeOptions};
use pushpool::store::Store;
use serde_json::{json, Value};

/// An HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The service: the API (no controller) plus controllers on their own runtimes, so a test can kill
// one outright (no hand-back, no lease release) like a crashed process.

pub struct Controllerd {
    rt: Option<tokio::runtime::Runtime>,
}

impl Controllerd {
    pub fn start(db_url: &str, id: &str, api_url: &str) -> Controllerd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (url, id, api_url) = (db_url.to_string(), id.to_string(), api_url.to_string());
        rt.spawn(async move {
            let store = Store::connect(&url).await.unwrap();
            let tokens = run_tokens(&store).await.unwrap();
            let config = ControllerConfig {
                id,
                api_url,
                lease: Duration::from_secs(2),
                poll_max: Duration::from_millis(250),
                submit_deadline: Duration::from_secs(10),
                status_deadline: Duration::from_secs(10),
                idle_max: Duration::from_millis(500),
                ..ControllerConfig::default()
            };
            let controller = Controller::new(Context::new(
                store,
                default_registry(),
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

pub struct App {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub controllers: Vec<Controllerd>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub _home: tempfile::TempDir,
}

pub async fn spawn_app() -> App {
    crate::init_env();
    let db = common::sqlite_db();
    let store = common::connect(&db, 8).await;
    let home = tempfile::tempdir().unwrap();
    let key = bootstrap(&store, home.path())
        .await
        .unwrap()
        .expect("fresh store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        database_url: db.url.clone(),
        listen: Some(addr),
        controller: false,
        api_url: None,
        home: None,
        controller_id: None,
        lease: None,
        status_deadline: None,
    };
    let task = tokio::spawn(async move {
        serve(store, options, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let client = http();
    let base = format!("http://{addr}");
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut app = App {
        base,
        key,
        client,
        db,
        controllers: vec![],
        stop: Some(stop),
        task: Some(task),
        _home: home,
    };
    app.start_controller("controller-a");
    app
}

impl App {
    pub fn start_controller(&mut self, id: &str) {
        let c = Controllerd::start(&self.db.url, id, &self.base);
        self.controllers.push(c);
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/workspaces/default{path}", self.base)
    }
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
    pub async fn run(&self, deployment: &str) -> String {
        let (s, b) = self
            .post(&format!("/deployments/{deployment}/runs"), json!({}))
            .await;
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().unwrap().to_string()
    }
    pub async fn flow_run(&self, id: &str) -> Value {
        self.get(&format!("/flow_runs/{id}")).await.1
    }
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
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, "terminal state", |run| {
            ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
                .contains(&run["state"]["type"].as_str().unwrap_or(""))
        })
        .await
    }
    pub async fn wait_running(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, "RUNNING", |run| {
            run["state"]["type"] == "RUNNING"
        })
        .await
    }
    pub async fn history(&self, id: &str) -> Vec<String> {
        let (_, states) = self.get(&format!("/flow_runs/{id}/states")).await;
        states
            .as_array()
            .unwrap_or_else(|| panic!("{states}"))
            .iter()
            .map(|h| h["type"].as_str().unwrap().to_string())
            .collect()
    }
    pub async fn stop(mut self) {
        for c in &mut self.controllers {
            c.kill();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
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
