//! Housekeeping for providers whose jobs can outlive their runs (a Cloud Run job left by a failed
//! cleanup or a controller that died counts towards the region's quota of 1,000 jobs): each full
//! tick lets every provider sweep, in the background and one sweep at a time per controller.
//! The provider decides whether a sweep is due ([`pushpool_provider::Provider::sweep`]); it asks
//! this controller's plane, through [`PlaneLedger`], whether a run is active, terminal or unknown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pushpool_provider::{RunLedger, RunPhase};
use uuid::Uuid;

use super::context::Context;
use super::plane::{ControlPlane, PlaneError};

/// The control plane as a provider's sweep sees it.
pub struct PlaneLedger(pub Arc<dyn ControlPlane>);

#[async_trait]
impl RunLedger for PlaneLedger {
    async fn phase(&self, run_id: Uuid) -> Result<RunPhase, String> {
        match self.0.run(run_id).await {
            Ok(run) if run.state.state_type.is_terminal() => Ok(RunPhase::Terminal),
            Ok(run) => Ok(RunPhase::Active {
                attempt: u32::try_from(run.attempt).unwrap_or(u32::MAX),
            }),
            Err(PlaneError::NotFound { .. }) => Ok(RunPhase::Unknown),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Clears the "sweep running" flag however the sweep task ends (a panic included).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Starts a background sweep of every provider unless one is still running.
pub(super) fn spawn(ctx: &Arc<Context>, running: &Arc<AtomicBool>) {
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    let guard = Running(running.clone());
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let ledger = PlaneLedger(ctx.plane.clone());
        for pool_type in ctx.registry.pool_types() {
            let Some(provider) = ctx.registry.get(pool_type) else {
                continue;
            };
            match provider.sweep(&ledger).await {
                Ok(report) if report.deleted > 0 || report.failed > 0 => {
                    tracing::info!(
                        pool_type,
                        deleted = report.deleted,
                        kept = report.kept,
                        failed = report.failed,
                        "swept leftover jobs"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pool_type, error = %e, "sweeping leftover jobs failed; will retry")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::controller::MemoryPlane;
    use crate::state::StateType;

    /// What a provider's sweep learns: an active run with its attempt, a terminal run, and a
    /// run the plane does not have.
    #[tokio::test]
    async fn the_ledger_tells_active_terminal_and_unknown_runs_apart() {
        let plane = MemoryPlane::new("c1", Duration::from_secs(30));
        let pool = plane.add_pool("p", "null", json!({}));
        let deployment = plane.add_deployment(&pool, "d", Default::default());
        let mut active = plane.add_run(&deployment, chrono::Utc::now());
        active.attempt = 3;
        active.state.state_type = StateType::Running;
        plane.put_run(active.clone());
        let mut done = plane.add_run(&deployment, chrono::Utc::now());
        done.state.state_type = StateType::Crashed;
        plane.put_run(done.clone());
        let ledger = PlaneLedger(Arc::new(plane));
        assert_eq!(
            ledger.phase(active.id).await,
            Ok(RunPhase::Active { attempt: 3 })
        );
        assert_eq!(ledger.phase(done.id).await, Ok(RunPhase::Terminal));
        assert_eq!(ledger.phase(Uuid::now_v7()).await, Ok(RunPhase::Unknown));
    }
}
