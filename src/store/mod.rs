//! The durable store: one implementation over SQLite (embedded default, one file, WAL) and PostgreSQL.
//!
//! Both backends run the same SQL through `sqlx`'s `Any` driver: ids are TEXT, times BIGINT
//! microseconds, JSON TEXT. Where they must differ (transaction start, row locks, advisory locks,
//! notifications) the code branches on [`Backend`]. Migrations are embedded and applied at connect.

mod access;
mod automations;
pub mod crypto;
mod events;
mod grants;
mod notify;
mod objects;
mod retries;
mod runs;
mod schedules;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use tokio::sync::Notify;

pub use access::{
    AuditEntry, AuditFilter, CustomRole, KeyWithPrincipal, Member, NewApiKey, NewAuditEntry,
    Principal, PrincipalKind, ServiceAccount, StoredApiKey, WorkspaceOwner,
};
pub use automations::{
    ActionResult, AutomationPatch, ClaimedAction, EvaluationReport, NewAutomation,
};
pub use crypto::SecretKey;
pub use events::{
    EventFilter, EventPage, EventRow, StoredEvent, EVENT_RETENTION_DAYS_SETTING, EVENT_SETTLE,
};
pub use grants::GrantRecord;
pub use notify::{AttemptOutcome, Delivery, NewChannel, NewDelivery, StoredChannel, StoredHook};
pub use objects::{DeploymentPatch, NewDeployment, NewPool, NewQueue, PoolPatch, RunDefaults};
pub use runs::{
    quota_marker, round_robin, NewRun, PoolSelector, RunFilter, TransitionGuard, TransitionOutcome,
    WorkspaceQuota, ACTIVE_STATES_SQL, LOG_PAGE_BYTES, RUN_LOG_QUOTA_BYTES,
};
pub use schedules::{slot_key, NewSchedule, ScheduleBatch, SchedulePatch, SlotRun};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// What can go wrong in the store. API code maps these to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (in this workspace).
    #[error("{what} `{key}` not found")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// The name or id asked for.
        key: String,
    },
    /// The change clashes with what is stored (duplicate name, object still in use).
    #[error("{message}")]
    Conflict {
        /// Field at fault, when one is.
        field: Option<String>,
        /// What clashes.
        message: String,
    },
    /// The input breaks a rule the store enforces.
    #[error("{field}: {message}")]
    Invalid {
        /// Field at fault.
        field: String,
        /// The rule.
        message: String,
    },
    /// The database cannot be reached right now.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// A secret could not be decrypted (wrong or missing key, altered value).
    #[error(transparent)]
    Secret(#[from] crypto::SecretError),
}

impl StoreError {
    /// True for errors that retrying later may cure (connection lost, pool exhausted, lock timeout).
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(e) => is_busy(e),
            _ => false,
        }
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let msg = db.message();
            // SQLite "database is locked"; PostgreSQL serialization / deadlock codes.
            msg.contains("locked")
                || matches!(
                    db.code().as_deref(),
                    Some("40001") | Some("40P01") | Some("5")
                )
        }
        _ => false,
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("23505") | Some("2067") | Some("1555")
            ) || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            other => StoreError::Database(other),
        }
    }
}

/// Result alias for store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A write transaction. On SQLite it also holds the process-wide write lock of its database file,
/// so writers in one process queue fairly instead of spinning in SQLite's busy handler.
pub(crate) struct Tx {
    inner: Transaction<'static, Any>,
    _write_lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<()> {
        self.inner.commit().await?;
        count_write();
        Ok(())
    }
}

/// Write transactions committed by every [`Store`] of this process (see [`write_commits`]).
static WRITE_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_write() {
    WRITE_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Write transactions committed so far by this process's stores, each single-statement write
/// (lease renewals, heartbeats) counted as one: `pushpool bench` reports them per run.
pub fn write_commits() -> u64 {
    WRITE_COMMITS.load(std::sync::atomic::Ordering::Relaxed)
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type SharedFileState = (Arc<tokio::sync::Mutex<()>>, Arc<Notify>);

/// One async write lock and one change notifier per SQLite file path, shared by every [`Store`]
/// of this process (a producer and several controllers in one process see each other's changes).
fn sqlite_shared(url: &str) -> SharedFileState {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, SharedFileState>>,
    > = std::sync::OnceLock::new();
    let path = url.split('?').next().unwrap_or(url).to_string();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks
        .entry(path)
        .or_insert_with(|| (Default::default(), Arc::new(Notify::new())))
        .clone()
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// Wakes in-process controllers when runs become due or change (SQLite and PostgreSQL).
    changed: Arc<Notify>,
    /// SQLite only: serializes this process's writers.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Seals secrets before they are written; `None` stores them as given.
    secret_key: Option<crypto::SecretKey>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

/// Options for [`Store::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long to wait for a connection (and for SQLite, for the write lock).
    pub acquire_timeout: Duration,
    /// The key that encrypts secrets at rest ([`crypto`]). Without one, secrets are written as
    /// given and an encrypted value cannot be read; the server commands always set one.
    pub secret_key: Option<crypto::SecretKey>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            secret_key: None,
        }
    }
}

/// The schema version this build migrates a database to (its newest migration).
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "pool_submit_rate",
        include_str!("../../migrations/0002_pool_submit_rate.sql"),
    ),
    (
        3,
        "active_indexes",
        include_str!("../../migrations/0003_active_indexes.sql"),
    ),
    (
        4,
        "access",
        include_str!("../../migrations/0004_access.sql"),
    ),
    (
        5,
        "pool_overridable_variables",
        include_str!("../../migrations/0005_pool_overridable_variables.sql"),
    ),
    (
        6,
        "schedules",
        include_str!("../../migrations/0006_schedules.sql"),
    ),
    (
        7,
        "retries_tags",
        include_str!("../../migrations/0007_retries_tags.sql"),
    ),
    (
        8,
        "slot_run_indexes",
        include_str!("../../migrations/0008_slot_run_indexes.sql"),
    ),
    (
        9,
        "events",
        include_str!("../../migrations/0009_events.sql"),
    ),
    (
        10,
        "automations",
        include_str!("../../migrations/0010_automations.sql"),
    ),
    (
        11,
        "notify",
        include_str!("../../migrations/0011_notify.sql"),
    ),
    (
        12,
        "scheduled_due_index",
        include_str!("../../migrations/0012_scheduled_due_index.sql"),
    ),
    (
        13,
        "error_summaries",
        include_str!("../../migrations/0013_error_summaries.sql"),
    ),
];

/// A migration's SQL for `backend`: the few spellings the two databases do not share are written
/// as `{{name}}` placeholders (an auto-numbered primary key, for now).
fn dialect(sql: &str, backend: Backend) -> String {
    let seq_primary_key = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    };
    sql.replace("{{seq_primary_key}}", seq_primary_key)
}

/// Turns a user-given location into a database URL: `postgres://…` stays, `sqlite:…` stays, and a
/// plain path becomes an SQLite file URL (created if missing).
pub fn normalize_url(location: &str) -> (Backend, String) {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        (Backend::Postgres, location.to_string())
    } else if let Some(rest) = location.strip_prefix("sqlite://") {
        (Backend::Sqlite, with_rwc(&format!("sqlite://{rest}")))
    } else if let Some(rest) = location.strip_prefix("sqlite:") {
        (Backend::Sqlite, with_rwc(&format!("sqlite://{rest}")))
    } else {
        (Backend::Sqlite, with_rwc(&format!("sqlite://{location}")))
    }
}

fn with_rwc(url: &str) -> String {
    if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The URL with any password replaced by `***`, safe to log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Connects with default options and applies migrations.
    pub async fn connect(location: &str) -> Result<Store> {
        Self::connect_with(location, ConnectOptions::default()).await
    }

    /// Connects and applies migrations.
    pub async fn connect_with(location: &str, options: ConnectOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = normalize_url(location);
        let busy_ms = options.acquire_timeout.as_millis();
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout);
        if backend == Backend::Sqlite {
            pool_options = pool_options.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        format!(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA foreign_keys=ON; PRAGMA busy_timeout={busy_ms};"
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect(&url).await?;
        let (write_lock, changed) = match backend {
            Backend::Sqlite => {
                let (lock, notify) = sqlite_shared(&url);
                (Some(lock), notify)
            }
            Backend::Postgres => (None, Arc::new(Notify::new())),
        };
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                changed,
                write_lock,
                url,
                secret_key: options.secret_key,
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The key secrets are sealed with, if any.
    pub fn secret_key(&self) -> Option<&crypto::SecretKey> {
        self.inner.secret_key.as_ref()
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The connection URL with its password redacted.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.inner.url)
    }

    /// A notifier that fires when runs are created, rescheduled or asked to cancel in this process
    /// (and, once [`Store::listen_for_changes`] runs, in any process on PostgreSQL).
    pub fn changes(&self) -> Arc<Notify> {
        self.inner.changed.clone()
    }

    /// On PostgreSQL, forwards `NOTIFY pushpool_runs` from other processes to [`Store::changes`];
    /// reconnects after errors. No-op on SQLite (one process owns the file).
    pub fn listen_for_changes(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.inner.backend != Backend::Postgres {
            return None;
        }
        let url = self.inner.url.clone();
        let notify = self.inner.changed.clone();
        Some(tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen("pushpool_runs").await.is_ok() {
                            notify.notify_waiters();
                            while listener.recv().await.is_ok() {
                                notify.notify_waiters();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for run notifications; retrying")
                    }
                }
                // Missed notifications are covered by the controller's periodic claim.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    /// Cheap connectivity probe for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Closes all connections.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    pub(crate) fn db(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Starts a write transaction. SQLite takes the write lock at once (`BEGIN IMMEDIATE`), so two
    /// writers never deadlock on a lock upgrade.
    pub(crate) async fn begin(&self) -> Result<Tx> {
        let write_lock = match &self.inner.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let inner = match self.inner.backend {
            Backend::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.inner.pool.begin().await?,
        };
        Ok(Tx {
            inner,
            _write_lock: write_lock,
        })
    }

    /// ` FOR UPDATE` on PostgreSQL, nothing on SQLite (whose write transaction already excludes others).
    pub(crate) fn for_update(&self) -> &'static str {
        match self.inner.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Signals run changes to this process and, on PostgreSQL, to others when `tx` commits.
    pub(crate) async fn notify_in(&self, tx: &mut Tx) -> Result<()> {
        if self.inner.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('pushpool_runs', '')")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub(crate) fn notify_local(&self) {
        self.inner.changed.notify_waiters();
    }

    /// Commits `tx` and signals run changes to this process and (PostgreSQL) to others.
    pub(crate) async fn commit_notifying(&self, mut tx: Tx) -> Result<()> {
        self.notify_in(&mut tx).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        if self.inner.backend == Backend::Postgres {
            // Several controllers may start at once: one migrates, the others wait here.
            sqlx::query("SELECT pg_advisory_xact_lock(727274, 1)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS pushpool_migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query("SELECT version FROM pushpool_migrations")
            .fetch_all(&mut *tx)
            .await?;
        let applied: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0)).collect();
        if let Some(newest) = applied.iter().max() {
            let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
            if *newest > known {
                return Err(StoreError::Invalid {
                    field: "database".into(),
                    message: format!(
                        "the database schema is version {newest}, newer than this pushpool ({known}); upgrade pushpool"
                    ),
                });
            }
        }
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in split_statements(&dialect(sql, self.inner.backend)) {
                sqlx::query(&statement).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO pushpool_migrations (version, name, applied) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(crate::model::now_micros())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The schema version in force.
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) FROM pushpool_migrations")
            .fetch_one(self.db())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Reads a server setting (decrypted).
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.db())
            .await?;
        row.map(|r| self.open_setting(key, &r.get::<String, _>(0)))
            .transpose()
    }

    /// A stored setting value as plain text: envelopes are opened, plain (older) values kept.
    fn open_setting(&self, key: &str, stored: &str) -> Result<String> {
        if !stored.starts_with(crypto::ENVELOPE_PREFIX) {
            return Ok(stored.to_string());
        }
        match crypto::open(self.secret_key(), &crypto::setting_aad(key), stored)? {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(StoreError::Corrupt(format!("setting {key}: not a string"))),
        }
    }

    /// A setting value as stored: sealed when the store has a key (settings hold secrets).
    fn seal_setting(&self, key: &str, value: &str) -> String {
        match crypto::seal(
            self.secret_key(),
            &crypto::setting_aad(key),
            &serde_json::Value::String(value.to_string()),
        ) {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// Returns the setting, storing `make()` first if it is absent (first writer wins). The
    /// value is stored encrypted; a plain one written before encryption is encrypted now.
    pub async fn setting_or_init(
        &self,
        key: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = existing {
            let stored = r.get::<String, _>(0);
            let value = self.open_setting(key, &stored)?;
            if self.secret_key().is_some() && !stored.starts_with(crypto::ENVELOPE_PREFIX) {
                sqlx::query("UPDATE settings SET value = $1 WHERE key = $2")
                    .bind(self.seal_setting(key, &value))
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            return Ok(value);
        }
        let value = make();
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(self.seal_setting(key, &value))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Stores `value` as the setting `key`, replacing any earlier value.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(self.db())
        .await?;
        Ok(())
    }
}

fn split_statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_and_redacted() {
        assert_eq!(normalize_url("/tmp/x.db").1, "sqlite:///tmp/x.db?mode=rwc");
        assert_eq!(normalize_url("sqlite:a.db").1, "sqlite://a.db?mode=rwc");
        assert_eq!(normalize_url("postgres://u@h/db").0, Backend::Postgres);
        assert_eq!(
            redact_url("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(
            redact_url("postgres://user@host/db"),
            "postgres://user@host/db"
        );
    }

    #[test]
    fn migration_splits_into_statements() {
        let s = split_statements("-- c\nCREATE TABLE a (x INT);\n\nCREATE INDEX i ON a (x);\n");
        assert_eq!(s, vec!["CREATE TABLE a (x INT)", "CREATE INDEX i ON a (x)"]);
    }
}
