//! [`ControlPlane`] over pushpool's own store: holds are lease rows (`lease_owner`,
//! `lease_expires`), claims one `UPDATE … SKIP LOCKED`, changes come from the store's notifier.

use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pushpool_provider::Registry;
use tokio::sync::Notify;
use uuid::Uuid;

use super::plane::{ControlPlane, Guard, LogEntry, PlaneError, PlaneResult};
use super::ControllerConfig;
use crate::model::{Deployment, FlowRun, WorkPool};
use crate::state::{Proposal, StateType};
use crate::store::{
    PoolSelector, Store, StoreError, TransitionGuard, TransitionOutcome, WorkspaceQuota,
};

impl From<StoreError> for PlaneError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, key } => PlaneError::NotFound { what, key },
            e if e.is_retriable() => PlaneError::Unavailable(Box::new(e)),
            e => PlaneError::Failed(Box::new(e)),
        }
    }
}

/// The store as one controller's control plane.
pub struct StorePlane {
    store: Store,
    owner: String,
    lease: Duration,
    pools: PoolSelector,
    hostname: String,
    listening: Once,
}

impl StorePlane {
    /// The plane of controller `owner`, serving `pools`, holding runs with leases of `lease`.
    pub fn new(store: Store, owner: &str, lease: Duration, pools: PoolSelector) -> Self {
        StorePlane {
            store,
            owner: owner.to_string(),
            lease,
            pools,
            hostname: std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            listening: Once::new(),
        }
    }

    /// The plane of the controller configured by `config`, serving the pool types of `registry`.
    pub fn serving(store: Store, config: &ControllerConfig, registry: &Registry) -> Self {
        let types = registry
            .pool_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        StorePlane::new(store, &config.id, config.lease, PoolSelector::Types(types))
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

#[async_trait]
impl ControlPlane for StorePlane {
    async fn claim_due(&self, limit: usize, quota: &WorkspaceQuota) -> PlaneResult<Vec<FlowRun>> {
        let (pools, owner) = (&self.pools, &self.owner);
        let claim = self
            .store
            .claim_due_within(pools, Utc::now(), limit, owner, self.lease, quota);
        Ok(claim.await?)
    }

    async fn next_due(&self) -> PlaneResult<Option<DateTime<Utc>>> {
        Ok(self.store.next_due(&self.pools).await?)
    }

    fn holds(&self, run: &FlowRun) -> bool {
        run.lease_owner.as_deref() == Some(self.owner.as_str())
    }

    async fn renew(&self, run_id: Uuid) -> PlaneResult<bool> {
        Ok(self
            .store
            .renew_lease(run_id, &self.owner, self.lease)
            .await?)
    }

    async fn renew_all(&self) -> PlaneResult<u64> {
        // Being listed as alive is informational (`pushpool status`): its failure is only logged.
        if let Err(e) = self
            .store
            .controller_heartbeat(&self.owner, &self.hostname)
            .await
        {
            tracing::warn!(error = %e, "controller heartbeat failed");
        }
        Ok(self.store.renew_leases(&self.owner, self.lease).await?)
    }

    async fn release(&self, run_id: Uuid) -> PlaneResult<bool> {
        Ok(self.store.release_lease(run_id, &self.owner).await?)
    }

    async fn held_runs(&self) -> PlaneResult<Vec<FlowRun>> {
        Ok(self.store.runs_owned_by(&self.owner, None).await?)
    }

    async fn cancellations(&self) -> PlaneResult<Vec<FlowRun>> {
        let cancelling = Some(StateType::Cancelling);
        Ok(self.store.runs_owned_by(&self.owner, cancelling).await?)
    }

    async fn orphans(&self, limit: usize) -> PlaneResult<Vec<FlowRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .store
            .expired_leases(&self.pools, Utc::now(), limit)
            .await?)
    }

    async fn adopt(&self, run: &FlowRun) -> PlaneResult<Option<FlowRun>> {
        Ok(self.store.adopt(run.id, &self.owner, self.lease).await?)
    }

    async fn mark_late(&self, after: Duration) -> PlaneResult<usize> {
        Ok(self.store.mark_late(&self.pools, after, 1000).await?.len())
    }

    async fn silent_runs(&self, silence: Duration) -> PlaneResult<Vec<FlowRun>> {
        Ok(self.store.silent_runs(&self.pools, silence, 100).await?)
    }

    async fn run(&self, run_id: Uuid) -> PlaneResult<FlowRun> {
        Ok(self.store.run(run_id).await?)
    }

    async fn propose(
        &self,
        run_id: Uuid,
        proposals: Vec<Proposal>,
        guard: Guard,
        infrastructure_id: Option<&str>,
    ) -> PlaneResult<Vec<TransitionOutcome>> {
        let guard = TransitionGuard {
            expected: guard.expected,
            lease_owner: guard.held.then(|| self.owner.clone()),
            attempt: guard.attempt,
        };
        let write = self
            .store
            .propose_states_with(run_id, proposals, guard, infrastructure_id);
        Ok(write.await?)
    }

    async fn record_infrastructure(
        &self,
        run_id: Uuid,
        infrastructure_id: &str,
    ) -> PlaneResult<bool> {
        let write = self
            .store
            .set_infrastructure(run_id, &self.owner, infrastructure_id);
        Ok(write.await?)
    }

    async fn record_attempt_infrastructure(
        &self,
        run: &FlowRun,
        infrastructure_id: &str,
    ) -> PlaneResult<bool> {
        let write = self.store.set_attempt_infrastructure(
            run.id,
            Some(run.attempt),
            &self.owner,
            infrastructure_id,
        );
        Ok(write.await?)
    }

    async fn append_logs(&self, run_id: Uuid, lines: &[LogEntry]) -> PlaneResult<()> {
        self.store.append_logs(run_id, lines).await?;
        Ok(())
    }

    async fn record_error_summary(
        &self,
        run_id: Uuid,
        attempt: i64,
        summary: &pushpool_provider::ErrorSummary,
    ) -> PlaneResult<()> {
        self.store
            .record_error_summary(run_id, attempt, summary)
            .await?;
        Ok(())
    }

    async fn pool_of(&self, run: &FlowRun) -> PlaneResult<WorkPool> {
        Ok(self.store.pool_by_id(run.work_pool_id).await?)
    }

    async fn deployment_of(&self, run: &FlowRun) -> PlaneResult<Deployment> {
        let id = run.deployment_id.to_string();
        Ok(self.store.deployment(run.workspace_id, &id).await?)
    }

    async fn workspace_grants(
        &self,
        run: &FlowRun,
    ) -> PlaneResult<(String, crate::identity::Grants)> {
        let ws = self.store.workspace_by_id(run.workspace_id).await?;
        Ok((
            ws.name,
            self.store.workspace_grants(run.workspace_id).await?,
        ))
    }

    fn changes(&self) -> Arc<Notify> {
        // PostgreSQL: one LISTEN connection per plane turns other processes' changes into
        // wake-ups (SQLite has one process; its writes notify directly).
        self.listening.call_once(|| {
            let _ = self.store.listen_for_changes();
        });
        self.store.changes()
    }
}
