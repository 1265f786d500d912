//! Leftover Cloud Run jobs and the 1,000-jobs-per-region quota (docs/providers/cloud-run.md):
//! deleting a job with retries, the queue of deletions that failed, and the sweep that finds
//! pushpool's jobs by their run label and deletes those whose run no longer needs them.

use std::time::{Duration, Instant};

use pushpool_provider::{ProviderError, RunLedger, RunPhase, SweepReport};
use serde_json::Value;

use crate::{
    lock, CloudRunJobConfig, CloudRunProvider, ATTEMPT_LABEL, DEFAULT_JOB_RETENTION_DAYS,
    KEEP_LABEL, RETENTION_LABEL, RUN_LABEL,
};

/// How soon a failed job deletion is tried again (besides the location's sweep).
const DELETE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A job deletion that failed, tried again from the sweep.
pub(crate) struct PendingDelete {
    job: CloudRunJobConfig,
    due: Instant,
}

impl CloudRunProvider {
    pub(crate) async fn delete_job(
        &self,
        job: &CloudRunJobConfig,
        name: &str,
    ) -> Result<(), ProviderError> {
        match self.api.delete(job, name).await {
            Ok(_) => {
                tracing::info!(job = name, "deleted Cloud Run job");
                lock(&self.pending_deletes).remove(name);
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                lock(&self.pending_deletes).remove(name);
                Ok(())
            }
            Err(e) => Err(e.into_provider(&format!("deleting Cloud Run job `{name}`"))),
        }
    }

    /// Deletes a job, trying a transient failure twice more at once; a deletion that still
    /// fails is queued for the sweep (and the location's sweep finds the job by its run label
    /// even after a restart).
    pub(crate) async fn delete_or_queue(
        &self,
        job: &CloudRunJobConfig,
        name: &str,
    ) -> Result<(), ProviderError> {
        let mut result = self.delete_job(job, name).await;
        for pause in [Duration::from_millis(200), Duration::from_millis(800)] {
            match &result {
                Err(e) if e.is_retriable() => {
                    tokio::time::sleep(pause).await;
                    result = self.delete_job(job, name).await;
                }
                _ => break,
            }
        }
        if result.is_err() {
            self.remember(job);
            lock(&self.pending_deletes).insert(
                name.to_string(),
                PendingDelete {
                    job: job.clone(),
                    due: Instant::now() + DELETE_RETRY_AFTER.min(self.sweep_interval),
                },
            );
        }
        result
    }

    /// Retries failed job deletions that are due, then sweeps each location seen since start
    /// whose last sweep is older than the sweep interval (what [`pushpool_provider::Provider::sweep`] does).
    pub(crate) async fn sweep_leftovers(
        &self,
        ledger: &dyn RunLedger,
    ) -> Result<SweepReport, ProviderError> {
        use std::sync::atomic::Ordering;
        let mut report = SweepReport::default();
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return Ok(report);
        }
        let _done = SweepingGuard(&self.sweeping);
        self.retry_pending_deletes(&mut report).await;
        let now = Instant::now();
        let due: Vec<(CloudRunJobConfig, String)> = lock(&self.locations)
            .values_mut()
            .filter(|l| {
                l.swept
                    .is_none_or(|t| now.duration_since(t) >= self.sweep_interval)
            })
            .map(|l| {
                l.swept = Some(now);
                (l.job.clone(), l.parent.clone())
            })
            .collect();
        let mut last_error = None;
        for (job, parent) in due {
            if let Err(e) = self
                .sweep_location(&job, &parent, ledger, &mut report)
                .await
            {
                tracing::warn!(location = %parent, error = %e, "sweeping Cloud Run jobs failed; will retry");
                report.failed += 1;
                last_error = Some(e);
            }
        }
        match last_error {
            Some(e) if report.deleted == 0 && report.kept == 0 => Err(e),
            _ => Ok(report),
        }
    }

    /// Tries the queued deletions that are due.
    async fn retry_pending_deletes(&self, report: &mut SweepReport) {
        let now = Instant::now();
        let due: Vec<(String, CloudRunJobConfig)> = lock(&self.pending_deletes)
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(n, p)| (n.clone(), p.job.clone()))
            .collect();
        for (name, job) in due {
            match self.delete_job(&job, &name).await {
                Ok(()) => report.deleted += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(job = %name, error = %e, "deleting the Cloud Run job failed again; will retry");
                    if let Some(p) = lock(&self.pending_deletes).get_mut(&name) {
                        p.due = Instant::now() + DELETE_RETRY_AFTER.min(self.sweep_interval);
                    }
                }
            }
        }
    }

    /// Sweeps one location: deletes pushpool's jobs (by their run label) whose run is terminal
    /// or unknown, or whose attempt is older than the run's current one; a job created with
    /// `keep_job` only once it is older than its `job_retention_days` (never for 0).
    async fn sweep_location(
        &self,
        job: &CloudRunJobConfig,
        parent: &str,
        ledger: &dyn RunLedger,
        report: &mut SweepReport,
    ) -> Result<(), ProviderError> {
        let jobs = self
            .api
            .list_jobs(job, parent)
            .await
            .map_err(|e| e.into_provider(&format!("listing Cloud Run jobs of `{parent}`")))?;
        for found in jobs {
            let labels = &found["labels"];
            let Some(run_id) = labels[RUN_LABEL]
                .as_str()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
            else {
                continue; // not pushpool's
            };
            let Some(name) = found["name"].as_str() else {
                continue;
            };
            let attempt: u32 = labels[ATTEMPT_LABEL]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let leftover = match ledger.phase(run_id).await {
                Ok(RunPhase::Active { attempt: current }) => attempt < current,
                Ok(RunPhase::Terminal | RunPhase::Unknown) => true,
                Err(e) => {
                    tracing::debug!(job = name, error = %e, "run phase unknown; job left alone");
                    report.failed += 1;
                    continue;
                }
            };
            if !leftover || !retention_over(&found) {
                report.kept += 1;
                continue;
            }
            match self.delete_job(job, name).await {
                Ok(()) => {
                    tracing::info!(job = name, %run_id, "sweep deleted a leftover Cloud Run job");
                    report.deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(job = name, error = %e, "sweep could not delete a leftover Cloud Run job");
                    report.failed += 1;
                }
            }
        }
        Ok(())
    }
}

/// For a leftover job: true unless it was created with `keep_job` and its retention period
/// (the `pushpool-retention-days` label; 0 = for ever) has not passed since it was created.
fn retention_over(job: &Value) -> bool {
    if job["labels"][KEEP_LABEL].as_str() != Some("true") {
        return true;
    }
    let days: u64 = job["labels"][RETENTION_LABEL]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_JOB_RETENTION_DAYS);
    if days == 0 {
        return false;
    }
    let Some(created) = job["createTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    else {
        return false;
    };
    let age = chrono::Utc::now().signed_duration_since(created);
    age.num_seconds() >= i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX)
}

/// Clears the "sweep running" flag however the sweep ends.
struct SweepingGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SweepingGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}
