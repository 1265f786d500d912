//! Running pushpool: `up` (API + controller on one store), `controller` alone, `api` alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{router, AppState};
use crate::auth::{generate_api_key, RunTokens, RUN_TOKEN_SECRET_SETTING};
use crate::controller::{Context, Controller, ControllerConfig};
use crate::execution::{
    configure_sandbox, ProcessGate, ProcessPools, ProcessSandbox, BOOTSTRAP_WORKSPACE_SETTING,
};
use crate::identity::AllowedEndpoints;
use crate::metrics::Metrics;
use crate::store::{NewApiKey, Store, StoreError, WorkspaceOwner};

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A setting cannot be used.
    #[error("{0}")]
    Config(String),
    /// A file or socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Kept here for callers of `pushpool::server::default_registry`; see [`crate::registry`].
pub use crate::registry::default_registry;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Store location (SQLite path/URL or PostgreSQL URL).
    pub database_url: String,
    /// API listen address; `None` runs no API.
    pub listen: Option<SocketAddr>,
    /// Run a controller.
    pub controller: bool,
    /// URL jobs use to reach the API (defaults to `http://<listen>`).
    pub api_url: Option<String>,
    /// The data directory: where `up` writes the bootstrap owner key, and a path no process job
    /// may reach.
    pub home: Option<PathBuf>,
    /// Controller id (defaults to a fresh one).
    pub controller_id: Option<String>,
    /// Lease length (default 30 s).
    pub lease: Option<Duration>,
    /// How long a provider may keep failing status polls with transient errors before the run is
    /// CRASHED (default 600 s).
    pub status_deadline: Option<Duration>,
    /// Most runs of one workspace the controller drives at once (default half of its
    /// `max_in_flight`).
    pub max_in_flight_per_workspace: Option<usize>,
    /// Which workspaces may use `process` pools (`--process-pools`; default `admin`).
    pub process_pools: ProcessPools,
    /// How the `process` provider sandboxes its jobs (`--process-sandbox`, `--runs-dir`).
    pub process_sandbox: ProcessSandbox,
    /// Endpoint URL prefixes every workspace's pools may use as `endpoint_url`
    /// (`--allowed-endpoint`, e.g. `http://127.0.0.1` for emulators); other custom endpoints
    /// need the workspace's `custom-endpoints` grant.
    pub allowed_endpoints: Vec<String>,
    /// The scheduler to run beside the controller (`None`: none here).
    pub scheduler: Option<crate::scheduler::SchedulerConfig>,
    /// The notification delivery worker beside the controller, and the outbound-target policy
    /// of notifications (`--allow-private-targets`).
    pub notify: crate::notify::worker::NotifyConfig,
}

/// The paths no process job may reach: the data directory and, for a SQLite store, its files.
fn protected_paths(options: &ServeOptions) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = options.home.iter().cloned().collect();
    let url = options.database_url.as_str();
    if !url.starts_with("postgres") {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        if !path.is_empty() && !path.starts_with(':') {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                out.push(PathBuf::from(format!("{path}{suffix}")));
            }
        }
    }
    // Relative to where pushpool started, not to the job's directory.
    out.into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

/// The run-token issuer backed by the store's secret.
pub async fn run_tokens(store: &Store) -> Result<RunTokens, StoreError> {
    let secret = store
        .setting_or_init(RUN_TOKEN_SECRET_SETTING, RunTokens::new_secret)
        .await?;
    Ok(RunTokens::new(secret.into_bytes()))
}

/// On a store without workspaces: creates `default` and an owner key, writes the key to
/// `home/owner.key` (mode 0600, created new: an existing file or a pre-placed symlink there is
/// refused, never followed or truncated) and returns it so it can be printed once.
pub async fn bootstrap(store: &Store, home: &Path) -> Result<Option<String>, ServeError> {
    if !store.list_workspaces().await?.is_empty() {
        return Ok(None);
    }
    let path = home.join("owner.key");
    // Claimed before the workspace exists, so a refused file leaves no key nobody was shown.
    let mut file = create_secret_file(&path)?;
    let key = generate_api_key();
    let created = store
        .create_workspace_with_owner(
            "default",
            WorkspaceOwner::NewUser {
                name: "admin".into(),
                admin: true,
            },
            |principal_id| NewApiKey {
                principal_id,
                name: "owner".into(),
                prefix: key.prefix.clone(),
                hash: key.hash.clone(),
                role: None,
                expires: None,
            },
        )
        .await;
    let workspace = match created {
        Ok((workspace, _, _)) => workspace,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    // The admin's home: the workspace `--process-pools admin` lets run local processes.
    store
        .set_setting(BOOTSTRAP_WORKSPACE_SETTING, &workspace.id.to_string())
        .await?;
    // The administrator's home workspace keeps today's single-tenant behaviour: it holds every
    // cloud-identity grant (revocable like any other; docs/security.md, "Cloud identity").
    for grant in crate::identity::WorkspaceGrant::ALL {
        store
            .grant_workspace(workspace.id, grant, "bootstrap")
            .await?;
    }
    use std::io::Write as _;
    file.write_all(key.key.expose().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|source| io_error(format!("writing {}", path.display()), source))?;
    Ok(Some(key.key.expose().to_string()))
}

fn io_error(context: String, source: std::io::Error) -> ServeError {
    ServeError::Io { context, source }
}

/// Creates a secret file with mode 0600. `create_new` is `O_CREAT|O_EXCL`, which fails with
/// `EEXIST` on any existing path, a symlink (even a dangling one) included, without following
/// it; so a pre-placed file or link is never truncated or written through.
fn create_secret_file(path: &Path) -> Result<std::fs::File, ServeError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            let context = if source.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "refusing to write the owner key to {}: something (a file or a symlink) is already there; move it away and start again",
                    path.display()
                )
            } else {
                format!("creating {}", path.display())
            };
            io_error(context, source)
        })
}

/// Creates the data directory with mode 0700, or tightens an existing one that group or others
/// can read (with a warning): it holds the store and the owner key.
pub fn prepare_home(home: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| io_error(format!("creating {}", home.display()), e))?;
    let mode = std::fs::metadata(home)
        .map_err(|e| io_error(format!("reading {}", home.display()), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "data directory {} had mode {:o}; tightening it to 0700",
            home.display(),
            mode & 0o777
        );
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error(format!("setting the mode of {}", home.display()), e))?;
    }
    Ok(())
}

/// Makes the SQLite store file `db` and its `-wal`/`-shm` companions mode 0600: creates `db`
/// empty with 0600 when missing (SQLite gives new companions the database file's mode) and
/// tightens whichever exist. Symlinks are left alone.
pub fn secure_sqlite_files(db: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(format!("creating {}", db.display()), e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if is_file {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io_error(format!("setting the mode of {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the API and/or a controller until `shutdown` resolves, then stops cleanly: the API stops
/// accepting, the controller stops claiming and hands its runs back.
pub async fn serve(
    store: Store,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let registry = default_registry();
    let tokens = run_tokens(&store).await?;
    // Also without a controller here: a controller of this process started apart (the test
    // kit's) uses the process-wide setting.
    configure_sandbox(&options.process_sandbox, protected_paths(&options))
        .map_err(ServeError::Config)?;
    // Pins the bootstrap workspace of a store made before the setting existed.
    crate::execution::bootstrap_workspace(&store).await?;
    let gate = ProcessGate::new(options.process_pools);
    let metrics = Arc::new(Metrics::default());
    let listener = match options.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Io {
                    context: format!("listening on {addr}"),
                    source,
                })?,
        ),
        None => None,
    };
    let local = listener.as_ref().and_then(|l| l.local_addr().ok());
    let api_url = options
        .api_url
        .clone()
        .or_else(|| local.map(|a| format!("http://{a}")))
        .unwrap_or_else(|| "http://127.0.0.1:4300".into());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let controller = options.controller.then(|| {
        let mut config = ControllerConfig {
            api_url: api_url.clone(),
            process_pools: options.process_pools,
            allowed_endpoints: AllowedEndpoints::new(&options.allowed_endpoints),
            ..ControllerConfig::default()
        };
        if let Some(id) = &options.controller_id {
            config.id = id.clone();
        }
        if let Some(lease) = options.lease {
            config.lease = lease;
        }
        if let Some(deadline) = options.status_deadline {
            config.status_deadline = deadline;
        }
        if let Some(quota) = options.max_in_flight_per_workspace {
            config.max_in_flight_per_workspace = Some(quota);
        }
        tracing::info!(controller_id = %config.id, pool_types = ?registry.pool_types(), max_in_flight = config.max_in_flight, max_in_flight_per_workspace = config.workspace_quota(), "controller starting");
        Controller::new(Context::new(store.clone(), registry.clone(), config, tokens.clone(), metrics.clone()))
    });
    let controller_task = controller.clone().map(|c| {
        let mut stop = stop_rx.clone();
        // `pushpool.controller.started` / `stopped` events (docs/events.md), best effort.
        let events = (
            store.clone(),
            c.context().config.id.clone(),
            serde_json::json!({"pool_types": registry.pool_types(), "version": env!("CARGO_PKG_VERSION")}),
        );
        tokio::spawn(async move {
            let (store, id, payload) = events;
            if let Err(e) = crate::events::controller::record_controller(&store, &id, "started", payload.clone()).await {
                tracing::warn!(error = %e, "cannot record the controller's start event");
            }
            let runner = c.clone();
            let run = tokio::spawn(async move { runner.run(Duration::from_secs(30)).await });
            let _ = stop.wait_for(|s| *s).await;
            c.shutdown();
            let _ = run.await;
            if let Err(e) = crate::events::controller::record_controller(&store, &id, "stopped", payload).await {
                tracing::warn!(error = %e, "cannot record the controller's stop event");
            }
        })
    });
    // The event retention pruner runs wherever a controller runs (`up`, `controller`).
    let pruner_task = options
        .controller
        .then(|| tokio::spawn(crate::events::pruner::run(store.clone(), stop_rx.clone())));
    let scheduler_task = options
        .scheduler
        .clone()
        .filter(|_| options.controller)
        .map(|config| {
            tracing::info!(interval = ?config.interval, "scheduler starting");
            let scheduler = crate::scheduler::Scheduler::new(store.clone(), config);
            tokio::spawn(scheduler.run(stop_rx.clone()))
        });
    let notify_task = options.controller.then(|| {
        let id = controller
            .as_ref()
            .map(|c| c.context().config.id.clone())
            .unwrap_or_else(|| format!("notify-{}", uuid::Uuid::new_v4()));
        let worker = crate::notify::worker::Worker::new(store.clone(), id, options.notify.clone());
        tokio::spawn(worker.run(stop_rx.clone()))
    });
    let api_task = listener.map(|listener| {
        let app = router(AppState {
            store: store.clone(),
            registry: registry.clone(),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            api_url: api_url.clone(),
            process_gate: gate.clone(),
            allowed_endpoints: AllowedEndpoints::new(&options.allowed_endpoints),
            target_policy: options.notify.policy,
        });
        let mut stop = stop_rx.clone();
        tracing::info!(listen = ?local, "API listening");
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    });
    if let Some(t) = controller_task {
        let _ = t.await;
    }
    if let Some(t) = scheduler_task {
        let _ = t.await;
    }
    if let Some(t) = pruner_task {
        let _ = t.await;
    }
    if let Some(t) = notify_task {
        let _ = t.await;
    }
    if let Some(t) = api_task {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ServeError::Io {
                    context: "serving the API".into(),
                    source,
                })
            }
            Err(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Issue 19 item 9: a symlink (dangling or not) or a file pre-placed at `owner.key` is refused
    /// with a clear error, never followed or truncated, and no workspace is left without a key.
    #[tokio::test]
    async fn bootstrap_never_follows_or_truncates_a_pre_placed_owner_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        prepare_home(&home).unwrap();
        let store = Store::connect(&format!("{}", home.join("pushpool.db").display()))
            .await
            .unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, home.join("owner.key")).unwrap();
        let err = bootstrap(&store, &home).await.unwrap_err().to_string();
        assert!(
            err.contains("refusing") && err.contains("owner.key"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(store.list_workspaces().await.unwrap().is_empty());

        // A dangling symlink is refused too (O_CREAT|O_EXCL does not follow it).
        std::fs::remove_file(home.join("owner.key")).unwrap();
        let target = dir.path().join("not-yet");
        std::os::unix::fs::symlink(&target, home.join("owner.key")).unwrap();
        assert!(bootstrap(&store, &home).await.is_err());
        assert!(!target.exists());

        std::fs::remove_file(home.join("owner.key")).unwrap();
        let key = bootstrap(&store, &home).await.unwrap().unwrap();
        let path = home.join("owner.key");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{key}\n"));
        assert_eq!(mode(&path), 0o600);
    }

    /// Issue 18: a runs directory inside the data directory would hand every process job the
    /// data directory: the server refuses to start.
    #[tokio::test]
    async fn a_runs_dir_inside_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        prepare_home(&home).unwrap();
        let url = format!("{}", home.join("pushpool.db").display());
        let store = Store::connect(&url).await.unwrap();
        let options = ServeOptions {
            database_url: url,
            controller: true,
            home: Some(home.clone()),
            process_sandbox: ProcessSandbox {
                runs_dir: Some(home.join("runs")),
                ..ProcessSandbox::default()
            },
            ..ServeOptions::default()
        };
        let err = serve(store, options, async {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--runs-dir") && err.contains("inside"),
            "{err}"
        );
    }

    /// Issue 19 item 9: the data directory is 0700 (an existing looser one is tightened) and the
    /// SQLite files are 0600.
    #[tokio::test]
    async fn the_data_directory_and_store_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        prepare_home(&home).unwrap();
        assert_eq!(mode(&home), 0o700);
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_home(&home).unwrap();
        assert_eq!(mode(&home), 0o700);

        let db = home.join("pushpool.db");
        secure_sqlite_files(&db).unwrap();
        let store = Store::connect(&format!("{}", db.display())).await.unwrap();
        store.list_workspaces().await.unwrap();
        let wal = home.join("pushpool.db-wal");
        if wal.exists() {
            std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        secure_sqlite_files(&db).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db.display()));
            if path.exists() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }
}
