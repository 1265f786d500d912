//! `pushpool controller --prefect-api-url URL`: a controller serving a Prefect server's (or
//! Prefect Cloud workspace's) push pools, with no database of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{PrefectPlane, PrefectSettings};
use crate::auth::RunTokens;
use crate::controller::{Context, Controller, ControllerConfig};
use crate::execution::{configure_sandbox, ProcessPools, ProcessSandbox};
use crate::identity::AllowedEndpoints;
use crate::metrics::Metrics;
use crate::server::{default_registry, ServeError};

/// What a Prefect-mode controller needs.
#[derive(Debug, Clone)]
pub struct PrefectServeOptions {
    /// The Prefect API and pools.
    pub settings: PrefectSettings,
    /// Controller id (the worker name Prefect shows); default `pushpool-<random>`.
    pub controller_id: Option<String>,
    /// A directory no process job may reach (`--home`).
    pub home: Option<PathBuf>,
    /// Which pools may run local processes: `all` lets Prefect's `process` pools run; `admin`
    /// and `disabled` refuse them (there are no pushpool workspaces in Prefect mode).
    pub process_pools: ProcessPools,
    /// The `process` provider's sandbox.
    pub process_sandbox: ProcessSandbox,
    /// Endpoint prefixes jobs may use (`--allowed-endpoint`).
    pub allowed_endpoints: Vec<String>,
    /// How long a provider may keep failing status polls before the run is CRASHED.
    pub status_deadline: Option<Duration>,
}

/// A fresh controller id for Prefect mode.
pub fn fresh_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("pushpool-{}", &id[..12])
}

/// Builds the controller of a Prefect-mode process (tests start it the same way).
pub fn controller(options: &PrefectServeOptions) -> Result<Controller, ServeError> {
    let protected: Vec<PathBuf> = options
        .home
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    configure_sandbox(&options.process_sandbox, protected).map_err(ServeError::Config)?;
    let registry = default_registry();
    let mut config = ControllerConfig {
        id: options.controller_id.clone().unwrap_or_else(fresh_id),
        api_url: options.settings.api_url.clone(),
        process_pools: options.process_pools,
        allowed_endpoints: AllowedEndpoints::new(&options.allowed_endpoints),
        lease: options.settings.orphan_after,
        // Prefect's `flow-run cancel` should stop the job within seconds.
        cancel_grace: Duration::from_secs(2),
        ..ControllerConfig::default()
    };
    if let Some(d) = options.status_deadline {
        config.status_deadline = d;
    }
    let types = registry
        .pool_types()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let plane = PrefectPlane::new(options.settings.clone(), &config.id, types)
        .map_err(ServeError::Config)?;
    tracing::info!(controller_id = %config.id, api = %options.settings.api_url, pools = ?options.settings.pools, pool_types = ?registry.pool_types(), "controller starting on a Prefect API");
    let tokens = RunTokens::new(RunTokens::new_secret().into_bytes());
    let metrics = Arc::new(Metrics::default());
    let ctx = Context::with_plane(Arc::new(plane), registry, config, tokens, metrics);
    Ok(Controller::new(ctx))
}

/// Runs a Prefect-mode controller until `shutdown` resolves, then hands its unsubmitted runs
/// back (SCHEDULED) and exits.
pub async fn serve_prefect(
    options: PrefectServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let controller = controller(&options)?;
    let runner = controller.clone();
    let run = tokio::spawn(async move { runner.run(Duration::from_secs(30)).await });
    shutdown.await;
    controller.shutdown();
    let _ = run.await;
    Ok(())
}
