//! Running pushpool: `up` (API + controller on one store), `controller` alone, `api` alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{router, AppState};
use crate::auth::{generate_api_key, RunTokens, RUN_TOKEN_SECRET_SETTING};
use crate::controller::{Context, Controller, ControllerConfig};
use crate::metrics::Metrics;
use crate::store::{NewApiKey, Store, StoreError, WorkspaceOwner};

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
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
    /// Where to write the bootstrap owner key (for `up`).
    pub home: Option<PathBuf>,
    /// Controller id (defaults to a fresh one).
    pub controller_id: Option<String>,
    /// Lease length (default 30 s).
    pub lease: Option<Duration>,
    /// How long a provider may keep failing status polls with transient errors before the run is
    /// CRASHED (default 600 s).
    pub status_deadline: Option<Duration>,
}

/// The run-token issuer backed by the store's secret.
pub async fn run_tokens(store: &Store) -> Result<RunTokens, StoreError> {
    let secret = store
        .setting_or_init(RUN_TOKEN_SECRET_SETTING, RunTokens::new_secret)
        .await?;
    Ok(RunTokens::new(secret.into_bytes()))
}

/// On a store without workspaces: creates `default` and an owner key, writes the key to
/// `home/owner.key` (mode 0600) and returns it so it can be printed once.
pub async fn bootstrap(store: &Store, home: &Path) -> Result<Option<String>, ServeError> {
    if !store.list_workspaces().await?.is_empty() {
        return Ok(None);
    }
    let key = generate_api_key();
    store
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
        .await?;
    let path = home.join("owner.key");
    write_secret_file(&path, key.key.expose()).map_err(|source| ServeError::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    Ok(Some(key.key.expose().to_string()))
}

fn write_secret_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")
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
        tracing::info!(controller_id = %config.id, pool_types = ?registry.pool_types(), "controller starting");
        Controller::new(Context::new(store.clone(), registry.clone(), config, tokens.clone(), metrics.clone()))
    });
    let controller_task = controller.clone().map(|c| {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let runner = c.clone();
            let run = tokio::spawn(async move { runner.run(Duration::from_secs(30)).await });
            let _ = stop.wait_for(|s| *s).await;
            c.shutdown();
            let _ = run.await;
        })
    });
    let api_task = listener.map(|listener| {
        let app = router(AppState {
            store: store.clone(),
            registry: registry.clone(),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            api_url: api_url.clone(),
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
