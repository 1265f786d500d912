//! The service on a free loopback port (`zero2prod`'s `spawn_app`): started, waited for, stopped.

use std::time::Duration;

use pushpool::server::{bootstrap, serve, ServeOptions};
use pushpool::store::Store;

/// An HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends the server's warnings and errors (or `TEST_LOG`'s filter) to the test's captured
/// stderr, so a failing test shows why the server answered as it did.
pub fn log_warnings() {
    let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Bootstraps a fresh store: the instance administrator's owner key of workspace `default`, and
/// the home folder bootstrap wrote into (keep it alive as long as the server).
pub async fn bootstrap_fresh(store: &Store) -> (String, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let key = bootstrap(store, home.path())
        .await
        .unwrap()
        .expect("a fresh store");
    (key, home)
}

/// `pushpool::server::serve` running on a task; stopped when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client that never goes through a proxy.
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Serves `store` with `options` on a free loopback port (whatever `options.listen` said)
    /// and returns once `/healthz` answers.
    pub async fn start(store: Store, mut options: ServeOptions) -> Server {
        // Port 0: pick a free port, then hand it to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        options.listen = Some(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(store, options, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let client = http();
        let base = format!("http://{addr}");
        for _ in 0..250 {
            if client.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            base,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the server to stop and waits (at most 30 s) until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The API (and, when asked, a controller) serving a fresh store, with the bootstrap admin's key.
/// Stopped when dropped.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client that never goes through a proxy.
    pub client: reqwest::Client,
    /// The bootstrap owner key of workspace `default` (the instance administrator's).
    pub admin_key: String,
    /// The store the server uses.
    pub store: Store,
    _server: Server,
    _home: tempfile::TempDir,
}

/// Bootstraps the store at `url` and serves it on a free loopback port; returns once `/healthz`
/// answers.
pub async fn serve_fresh(url: &str, controller: bool) -> Served {
    serve_fresh_with(
        url,
        ServeOptions {
            controller,
            ..Default::default()
        },
    )
    .await
}

/// [`serve_fresh`] with these options (e.g. `allowed_endpoints`); `database_url` is set to `url`.
pub async fn serve_fresh_with(url: &str, mut options: ServeOptions) -> Served {
    let store = Store::connect(url).await.expect("connect store");
    let (admin_key, home) = bootstrap_fresh(&store).await;
    options.database_url = url.to_string();
    let server = Server::start(store.clone(), options).await;
    Served {
        base: server.base.clone(),
        client: server.client.clone(),
        admin_key,
        store,
        _server: server,
        _home: home,
    }
}

/// Sends `method url` with `key` as bearer and `body` (when any) as JSON: the status and the
/// JSON answer (null when the answer is not JSON).
pub async fn call_json(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(m, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}
