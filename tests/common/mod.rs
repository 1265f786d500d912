//! Shared test helpers: a fresh store per test on SQLite (temp file) or PostgreSQL (fresh database).
#![allow(dead_code)]

use pushpool::store::{ConnectOptions, Store};

/// Where a test store lives; dropped = removed.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh SQLite file in a temp dir.
pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("pushpool.db").display());
    TestDb {
        url,
        _dir: Some(dir),
    }
}

/// The PostgreSQL server for tests, from `PUSHPOOL_TEST_DATABASE_URL`. Without it the PostgreSQL
/// half of the suite is skipped locally, and fails under `CI=true`.
pub fn postgres_base_url() -> Option<String> {
    match std::env::var("PUSHPOOL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("PUSHPOOL_TEST_DATABASE_URL is not set: under CI=true the PostgreSQL store suite must run");
            }
            eprintln!("SKIPPED: PUSHPOOL_TEST_DATABASE_URL not set, PostgreSQL half not run");
            None
        }
    }
}

/// A fresh PostgreSQL database on the test server.
pub async fn postgres_db() -> Option<TestDb> {
    let base = postgres_base_url()?;
    let name = format!("pushpool_t_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .expect("connect to PUSHPOOL_TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    // Durability across an OS crash is not what these tests check; commit latency would dominate.
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    ))
    .execute(&admin)
    .await
    .expect("tune test database");
    admin.close().await;
    let (without_query, query) = match base.split_once('?') {
        Some((a, b)) => (a.to_string(), format!("?{b}")),
        None => (base.clone(), String::new()),
    };
    let scheme_end = without_query.find("://").map(|i| i + 3).unwrap_or(0);
    let host = without_query[scheme_end..].split('/').next().unwrap_or("");
    let url = format!("{}{host}/{name}{query}", &without_query[..scheme_end]);
    Some(TestDb { url, _dir: None })
}

/// Connects a store to a test database with `max` connections.
pub async fn connect(db: &TestDb, max: u32) -> Store {
    Store::connect_with(
        &db.url,
        ConnectOptions {
            max_connections: max,
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("connect store")
}

/// Defines each listed `async fn name(db: TestDb)` as a test on SQLite and one on PostgreSQL.
#[macro_export]
#[allow(clippy::crate_in_macro_def)] // the helpers live in each test crate's `common` module
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::common::sqlite_db()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(db) = crate::common::postgres_db().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _home: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Bootstraps the store at `url` and serves it on a free loopback port (`zero2prod`'s
/// `spawn_app`); returns once `/healthz` answers.
pub async fn serve_fresh(url: &str, controller: bool) -> Served {
    let store = Store::connect(url).await.expect("connect store");
    let home = tempfile::tempdir().unwrap();
    let admin_key = pushpool::server::bootstrap(&store, home.path())
        .await
        .unwrap()
        .expect("a fresh store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = pushpool::server::ServeOptions {
        database_url: url.to_string(),
        listen: Some(addr),
        controller,
        ..Default::default()
    };
    let served = store.clone();
    tokio::spawn(async move {
        pushpool::server::serve(served, options, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{addr}");
    for _ in 0..250 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Served {
        base,
        client,
        admin_key,
        store,
        stop: Some(stop),
        _home: home,
    }
}
