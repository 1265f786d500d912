//! The control plane: the one seam between the controller and wherever its runs live.
//!
//! The controller never reads or writes runs any other way. Today one implementation exists,
//! [`StorePlane`](super::StorePlane) over pushpool's own store (SQLite or PostgreSQL, with leases);
//! [`MemoryPlane`](super::MemoryPlane) serves unit tests. A Prefect-server implementation
//! (issue 12) is meant to be added next to them without changing anything else in the
//! controller, which is why the trait speaks in terms of the run's life, not of the store:
//!
//! - **Holding a run.** A plane is bound to one controller (its identity is given when the plane
//!   is built). [`ControlPlane::claim_due`] hands out runs this controller now *holds*, fairly
//!   between workspaces (in turn, within the controller's per-workspace quota); holding is
//!   exclusive (no two controllers submit one run). The store implements it with a lease row;
//!   Prefect implements it with the PENDING proposal that its orchestration rules make the lock
//!   (`get_scheduled_flow_runs`, then `set_state` PENDING; an ABORT means someone else has it).
//!   [`ControlPlane::renew`], [`ControlPlane::renew_all`] and [`ControlPlane::release`] keep or
//!   give up a hold; a plane without expiring holds answers `true` / no-ops (Prefect: worker
//!   heartbeats keep the pool ready). [`ControlPlane::holds`] tells from a run as read whether
//!   this controller still holds it.
//! - **Orphans.** [`ControlPlane::orphans`] lists active runs nobody drives any more (a store lease
//!   ran out; for Prefect: PENDING runs without infrastructure whose claimer went silent), and
//!   [`ControlPlane::adopt`] takes one over. An adopted run is looked up at its provider before
//!   anything is submitted again.
//! - **Transitions.** [`ControlPlane::propose`] proposes states in order with a [`Guard`]
//!   (compare-and-set on the state type, and "only while I hold it"); the answer is a
//!   [`TransitionOutcome`] per proposal, never an error for a refusal. A plane never leaves a
//!   terminal state.
//! - **What the job needs.** The run's pool and deployment ([`ControlPlane::pool_of`],
//!   [`ControlPlane::deployment_of`]); the infrastructure id and the job's log lines go back
//!   through [`ControlPlane::record_infrastructure`] and [`ControlPlane::append_logs`].
//! - **Housekeeping a plane may not need.** [`ControlPlane::mark_late`] and
//!   [`ControlPlane::silent_runs`] (a Prefect server marks late runs itself and has no job
//!   heartbeats: it answers 0 and nothing).
//!
//! Every method is called from many run tasks at once; implementations are `Send + Sync`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::identity::Grants;
use crate::model::{Deployment, FlowRun, Micros, WorkPool};
use crate::state::{Proposal, StateType};
use crate::store::{TransitionOutcome, WorkspaceQuota};

/// Any error a plane's backend reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong talking to a control plane.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The run, pool or deployment asked for does not exist.
    #[error("{what} `{key}` not found")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// The id or name asked for.
        key: String,
    },
    /// The plane cannot be reached right now; retrying later may cure it.
    #[error(transparent)]
    Unavailable(BoxError),
    /// Any other failure.
    #[error(transparent)]
    Failed(BoxError),
}

impl PlaneError {
    /// True for errors that retrying later may cure.
    pub fn is_retriable(&self) -> bool {
        matches!(self, PlaneError::Unavailable(_))
    }
}

/// Results of a control plane.
pub type PlaneResult<T> = Result<T, PlaneError>;

/// Conditions a proposal is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guard {
    /// Compare-and-set: the run must be in this state type.
    pub expected: Option<StateType>,
    /// The run must not be held by another controller (the writer is its holder).
    pub held: bool,
    /// The run must still be in this attempt (issue 13: a retry starts the next one).
    pub attempt: Option<i64>,
}

impl Guard {
    /// This controller's usual guard: it holds the run and expects it in `state`.
    pub fn held_in(state: StateType) -> Self {
        Guard {
            expected: Some(state),
            held: true,
            attempt: None,
        }
    }

    /// Only a compare-and-set on the state type (e.g. crashing another controller's silent run).
    pub fn expecting(state: StateType) -> Self {
        Guard {
            expected: Some(state),
            held: false,
            attempt: None,
        }
    }
}

/// One job output line: when it was received (microseconds since the epoch), the stream
/// (`stdout`, `stderr`, `system`) and the text.
pub type LogEntry = (Micros, String, String);

/// Where the controller's runs live: claim, hold, transition, log. See the module docs for the
/// contract a new implementation must keep.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Claims up to `limit` due runs of the pools this controller serves, honouring pauses,
    /// concurrency limits and `quota` (no workspace gets more than its room); workspaces take
    /// turns (round-robin), priority and schedule order runs within a workspace. Each comes back
    /// PENDING and held by this controller.
    async fn claim_due(&self, limit: usize, quota: &WorkspaceQuota) -> PlaneResult<Vec<FlowRun>>;

    /// When the next run of the served pools falls due, if any is scheduled.
    async fn next_due(&self) -> PlaneResult<Option<DateTime<Utc>>>;

    /// True when this controller holds `run` as read (its claim or adoption is not lost).
    fn holds(&self, run: &FlowRun) -> bool;

    /// Extends this controller's hold on one run; false when it no longer holds it.
    async fn renew(&self, run_id: Uuid) -> PlaneResult<bool>;

    /// Extends every hold of this controller and says it is alive. Returns how many runs it holds.
    async fn renew_all(&self) -> PlaneResult<u64>;

    /// Gives up the hold on a run without changing its state, so another controller adopts it.
    async fn release(&self, run_id: Uuid) -> PlaneResult<bool>;

    /// Active runs this controller holds (what a restarted controller resumes).
    async fn held_runs(&self) -> PlaneResult<Vec<FlowRun>>;

    /// Held runs asked to cancel (CANCELLING).
    async fn cancellations(&self) -> PlaneResult<Vec<FlowRun>>;

    /// Active runs of the served pools that nobody holds any more, at most `limit`.
    async fn orphans(&self, limit: usize) -> PlaneResult<Vec<FlowRun>>;

    /// Takes over an orphan; `None` when another controller was faster.
    async fn adopt(&self, run: &FlowRun) -> PlaneResult<Option<FlowRun>>;

    /// Renames due runs not claimed `after` their scheduled time `Late`; returns how many.
    async fn mark_late(&self, after: Duration) -> PlaneResult<usize>;

    /// RUNNING runs whose job sent heartbeats and then fell silent for longer than `silence`.
    async fn silent_runs(&self, silence: Duration) -> PlaneResult<Vec<FlowRun>>;

    /// Reads one run.
    async fn run(&self, run_id: Uuid) -> PlaneResult<FlowRun>;

    /// Proposes states in order (each later one expects the state the previous one set), stopping
    /// at the first not accepted. With `infrastructure_id`, a PENDING run without one records it
    /// in the same step. One outcome per proposal tried.
    async fn propose(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: Guard,
        infrastructure_id: Option<&str>,
    ) -> PlaneResult<Vec<TransitionOutcome>>;

    /// Records the provider's id of a PENDING run this controller holds; false when the run is
    /// no longer PENDING under this controller.
    async fn record_infrastructure(
        &self,
        run_id: Uuid,
        infrastructure_id: &str,
    ) -> PlaneResult<bool>;

    /// [`ControlPlane::record_infrastructure`] for the job of one attempt of `run`: false also
    /// when the run was retried meanwhile (issue 13). A plane that cannot tell attempts apart
    /// keeps this default.
    async fn record_attempt_infrastructure(
        &self,
        run: &FlowRun,
        infrastructure_id: &str,
    ) -> PlaneResult<bool> {
        self.record_infrastructure(run.id, infrastructure_id).await
    }

    /// Appends job output lines to a run.
    async fn append_logs(&self, run_id: Uuid, lines: &[LogEntry]) -> PlaneResult<()>;

    /// Records (or replaces) why attempt `attempt` of a run failed, after its terminal state
    /// (the final read of its provider logs sharpened it, or the job itself ended the run).
    /// Planes without a place for it drop it (the default).
    async fn record_error_summary(
        &self,
        _run_id: Uuid,
        _attempt: i64,
        _summary: &pushpool_provider::ErrorSummary,
    ) -> PlaneResult<()> {
        Ok(())
    }

    /// The run's work pool (with its base job template).
    async fn pool_of(&self, run: &FlowRun) -> PlaneResult<WorkPool>;

    /// The run's deployment.
    async fn deployment_of(&self, run: &FlowRun) -> PlaneResult<Deployment>;

    /// The name of the run's workspace and the cloud-identity grants it holds (checked before
    /// every submission; docs/security.md, "Cloud identity").
    async fn workspace_grants(&self, run: &FlowRun) -> PlaneResult<(String, Grants)>;

    /// Finishes a rendered job configuration the way this plane's runs need it, before the
    /// provider checks it: Prefect resolves block and variable references through its API and
    /// adds its own preparation (env, labels, command). `Ok(Err(_))` is a job that cannot be
    /// built (the run crashes with that message). The default leaves it unchanged.
    async fn finish_job(
        &self,
        _run: &FlowRun,
        _pool: &WorkPool,
        _deployment: &Deployment,
        rendered: serde_json::Value,
    ) -> PlaneResult<Result<serde_json::Value, crate::job::JobError>> {
        Ok(Ok(rendered))
    }

    /// Notified when runs may have changed (new due runs, cancellations); missed notifications
    /// are covered by the controller's periodic look.
    fn changes(&self) -> Arc<Notify>;
}
