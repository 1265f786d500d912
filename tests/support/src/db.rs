//! A fresh store per test on SQLite (temp file) or PostgreSQL (fresh database).

use pushpool::store::{ConnectOptions, SecretKey, Store};

/// Where a test store lives; dropped = removed.
pub struct TestDb {
    /// The store's database URL.
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

/// The secret key every store of the test suites is opened with (as `pushpool up` always opens
/// its store with one), so the suites run with secrets encrypted at rest.
pub fn test_secret_key() -> SecretKey {
    SecretKey::from_base64(
        "cHVzaHBvb2wtdGVzdC1zZWNyZXQta2V5LTMyLWJ5dGU=",
        "the test suites' key",
    )
    .expect("a 32-byte key")
}

/// Connects a store at `url` with the suites' secret key ([`test_secret_key`]).
pub async fn open_store(url: &str) -> Store {
    Store::connect_with(
        url,
        ConnectOptions {
            secret_key: Some(test_secret_key()),
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("connect store")
}

/// Connects a store to a test database with `max` connections (and the suites' secret key).
pub async fn connect(db: &TestDb, max: u32) -> Store {
    Store::connect_with(
        &db.url,
        ConnectOptions {
            max_connections: max,
            secret_key: Some(test_secret_key()),
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("connect store")
}

/// Defines each listed `async fn name(db: TestDb)` as a test on SQLite and one on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::sqlite_db()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(db) = $crate::postgres_db().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}
