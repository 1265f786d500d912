//! The controller: claims due runs of the push pools it serves, renders and submits their jobs,
//! tracks them to a terminal state and handles cancellation.
//!
//! It is written kube-runtime style: [`reconcile`] looks at one run and returns an [`Action`]
//! (requeue after a delay, or done); [`error_policy`] decides what an error means. A run is driven
//! by exactly one task per controller, and by one controller at a time (its hold on the run).
//!
//! Where things are:
//! - [`plane`]: the [`ControlPlane`] trait, the only way the controller reaches its runs;
//!   [`StorePlane`] implements it over pushpool's store, [`MemoryPlane`] in memory (tests).
//! - [`runner`]: the claim loop ([`Controller`], [`Controller::tick`]) and one task per run.
//! - [`reconcile`](mod@reconcile): [`reconcile`] and its steps, [`error_policy`].
//! - [`context`]: the shared [`Context`] (caches, rate limiters) and job preparation through
//!   [`crate::job`].
//! - [`sweep`](mod@sweep): providers' background sweeps of jobs that outlived their runs.
//! - [`logs`]: batched job log writing ([`LogWriter`]); [`rate`]: [`TokenBucket`];
//!   [`cache`]: [`TtlCache`].

pub mod cache;
pub mod context;
pub mod logs;
pub mod memory;
pub mod plane;
pub mod prefect;
mod provider_logs;
pub mod rate;
pub mod reconcile;
pub mod runner;
pub mod store_plane;
pub mod sweep;

#[cfg(test)]
pub(crate) mod tests;

use std::time::Duration;

use pushpool_provider::ProviderError;
use uuid::Uuid;

/// The per-workspace quota a claim honours (defined by the store's claim).
pub use crate::store::WorkspaceQuota;
pub use cache::TtlCache;
pub use context::{Context, PreparedJob, RunWork};
pub use logs::LogWriter;
pub use memory::MemoryPlane;
pub use plane::{BoxError, ControlPlane, Guard, LogEntry, PlaneError, PlaneResult};
pub use prefect::{PrefectPlane, PrefectSettings};
pub use rate::TokenBucket;
pub use reconcile::{error_policy, reconcile};
pub use runner::{Controller, TickReport};
pub use store_plane::StorePlane;

/// How a controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This controller's id (the name its holds on runs go by).
    pub id: String,
    /// URL jobs use to reach the API (`PUSHPOOL_API_URL`).
    pub api_url: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Most runs this controller drives at once.
    pub max_in_flight: usize,
    /// Most runs of one workspace this controller drives at once, so one workspace's backlog
    /// cannot take every slot (`--max-in-flight-per-workspace`); `None`: half of
    /// `max_in_flight`, rounded up. See [`ControllerConfig::workspace_quota`].
    pub max_in_flight_per_workspace: Option<usize>,
    /// Most runs claimed per claim query.
    pub claim_batch: usize,
    /// How long transient submit errors are retried before the run is CRASHED.
    pub submit_deadline: Duration,
    /// How long status polling may fail transiently before the run is CRASHED.
    pub status_deadline: Duration,
    /// First status poll delay; grows 1.5x per poll up to `poll_max`.
    pub poll_min: Duration,
    /// Longest status poll delay.
    pub poll_max: Duration,
    /// Grace given to a job between the polite stop and the kill.
    pub cancel_grace: Duration,
    /// Longest sleep without a wake-up (safety net for missed notifications).
    pub idle_max: Duration,
    /// A SCHEDULED run this far past due is renamed `Late` (it stays claimable).
    pub late_after: Duration,
    /// A RUNNING run whose job sent heartbeats and then fell silent this long is CRASHED.
    pub heartbeat_silence: Duration,
    /// At shutdown, how long runs that already have infrastructure are still tracked (so short
    /// jobs finish recording) before their leases are released for another controller.
    pub shutdown_drain: Duration,
    /// Which workspaces may run `process` pools (`--process-pools`); a run of a pool this
    /// refuses ends CRASHED at submit.
    pub process_pools: crate::execution::ProcessPools,
    /// Endpoint URL prefixes every workspace's jobs may use (`--allowed-endpoint`).
    pub allowed_endpoints: crate::identity::AllowedEndpoints,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            id: format!("controller-{}", Uuid::now_v7().simple()),
            api_url: "http://127.0.0.1:4300".into(),
            lease: Duration::from_secs(30),
            max_in_flight: 2000,
            max_in_flight_per_workspace: None,
            claim_batch: 200,
            submit_deadline: Duration::from_secs(300),
            status_deadline: Duration::from_secs(600),
            poll_min: Duration::from_millis(20),
            poll_max: Duration::from_secs(2),
            cancel_grace: Duration::from_secs(10),
            idle_max: Duration::from_secs(15),
            late_after: Duration::from_secs(15),
            heartbeat_silence: Duration::from_secs(600),
            shutdown_drain: Duration::from_secs(20),
            process_pools: crate::execution::ProcessPools::default(),
            allowed_endpoints: Default::default(),
        }
    }
}

impl ControllerConfig {
    /// Most runs of one workspace this controller drives at once: the configured value, else
    /// half of `max_in_flight` rounded up (1,000 of the default 2,000), at least 1. Half leaves
    /// a flooding workspace room to run at scale while the other half stays free for the rest.
    pub fn workspace_quota(&self) -> usize {
        self.max_in_flight_per_workspace
            .unwrap_or_else(|| self.max_in_flight.div_ceil(2))
            .max(1)
    }
}

/// What to do with a run after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Look at the run again after `d` (or sooner when woken).
    #[must_use]
    pub const fn requeue(d: Duration) -> Self {
        Action {
            requeue_after: Some(d),
        }
    }
    /// Nothing more to do for this run.
    #[must_use]
    pub const fn done() -> Self {
        Action {
            requeue_after: None,
        }
    }
    /// The requeue delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// What can interrupt a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The control plane failed.
    #[error("control plane error: {0}")]
    Plane(#[from] PlaneError),
    /// A provider call failed in a way the reconcile did not handle itself.
    #[error("provider error for run {run_id}: {source}")]
    Provider {
        /// The run.
        run_id: Uuid,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
}

impl ControllerError {
    /// Short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Plane(_) => "control_plane",
            ControllerError::Provider { source, .. } => source.class(),
        }
    }
}
