//! The built-in `null` provider: submits nothing anywhere. It waits a configured latency on submit,
//! counts submissions per run attempt (so the bench and chaos checks can prove exactly-once), and
//! reports the job finished after `duration_ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pushpool_provider::{CancelOutcome, JobStatus, Lookup, Provider, ProviderError, RunSpec};
use serde_json::Value;
use uuid::Uuid;

/// Pool type of the null provider.
pub const POOL_TYPE: &str = "null";

/// The typed job configuration of the null provider.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NullJob {
    /// How long the simulated job runs.
    #[serde(default)]
    pub duration_ms: u64,
    /// `completed` or `failed`.
    #[serde(default = "default_outcome")]
    pub outcome: String,
}

fn default_outcome() -> String {
    "completed".into()
}

#[derive(Debug, Default)]
struct Book {
    /// Submissions per (run, attempt).
    submissions: HashMap<(Uuid, u32), u32>,
    /// When each infrastructure id was submitted.
    started: HashMap<String, Instant>,
    /// First submit call per run (for lag measurements).
    first_submit: HashMap<Uuid, chrono::DateTime<chrono::Utc>>,
    cancelled: HashMap<String, bool>,
}

/// The null provider. Clones share their submission book.
#[derive(Debug, Clone, Default)]
pub struct NullProvider {
    latency: Duration,
    fail_rate: f64,
    book: Arc<Mutex<Book>>,
}

impl NullProvider {
    /// A provider that accepts every submission after `latency`.
    pub fn new(latency: Duration) -> Self {
        NullProvider {
            latency,
            ..Default::default()
        }
    }

    /// Makes a fraction (0..=1) of submit and status calls fail transiently.
    pub fn with_transient_failures(mut self, rate: f64) -> Self {
        self.fail_rate = rate.clamp(0.0, 1.0);
        self
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Total submit calls that reached the provider (accepted).
    pub fn total_submissions(&self) -> u64 {
        self.book()
            .submissions
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }

    /// Number of run attempts submitted more than once.
    pub fn double_submits(&self) -> u64 {
        self.book().submissions.values().filter(|n| **n > 1).count() as u64
    }

    /// When the provider first received a submit call for each run.
    pub fn first_submits(&self) -> HashMap<Uuid, chrono::DateTime<chrono::Utc>> {
        self.book().first_submit.clone()
    }

    fn maybe_fail(&self, what: &str) -> Result<(), ProviderError> {
        if self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate {
            return Err(ProviderError::Transient {
                message: format!("null provider: injected transient failure on {what}"),
                retry_after: None,
            });
        }
        Ok(())
    }

    fn infra_id(run_id: Uuid, attempt: u32) -> String {
        format!("null:{run_id}:{attempt}")
    }
}

#[async_trait]
impl Provider for NullProvider {
    type JobConfig = NullJob;

    fn pool_type(&self) -> &'static str {
        POOL_TYPE
    }

    fn default_base_job_template(&self) -> Value {
        serde_json::from_str(include_str!("../templates/null.json")).unwrap_or(Value::Null)
    }

    fn validate(&self, rendered: &Value) -> Result<NullJob, ProviderError> {
        let job: NullJob = serde_json::from_value(rendered.clone())
            .map_err(|e| ProviderError::invalid("", e.to_string()))?;
        if job.outcome != "completed" && job.outcome != "failed" {
            return Err(ProviderError::invalid(
                "outcome",
                "must be `completed` or `failed`",
            ));
        }
        Ok(job)
    }

    async fn submit(&self, run: &RunSpec, _job: &NullJob) -> Result<String, ProviderError> {
        self.book()
            .first_submit
            .entry(run.run_id)
            .or_insert_with(chrono::Utc::now);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.maybe_fail("submit")?;
        let id = Self::infra_id(run.run_id, run.attempt);
        let mut book = self.book();
        *book
            .submissions
            .entry((run.run_id, run.attempt))
            .or_default() += 1;
        book.started.insert(id.clone(), Instant::now());
        Ok(id)
    }

    async fn status(&self, id: &str, job: &NullJob) -> Result<JobStatus, ProviderError> {
        self.maybe_fail("status")?;
        let book = self.book();
        if book.cancelled.contains_key(id) {
            return Ok(JobStatus::Cancelled);
        }
        let Some(started) = book.started.get(id) else {
            return Ok(JobStatus::NotFound);
        };
        if started.elapsed() < Duration::from_millis(job.duration_ms) {
            return Ok(JobStatus::Running);
        }
        Ok(if job.outcome == "failed" {
            JobStatus::Failed {
                message: "null job failed as configured".into(),
            }
        } else {
            JobStatus::Completed { summary: None }
        })
    }

    async fn cancel(
        &self,
        id: &str,
        _job: &NullJob,
        _grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        let mut book = self.book();
        if !book.started.contains_key(id) {
            return Ok(CancelOutcome::NotFound);
        }
        book.cancelled.insert(id.to_string(), true);
        Ok(CancelOutcome::Cancelled)
    }

    async fn lookup(&self, run: &RunSpec, _job: &NullJob) -> Result<Lookup, ProviderError> {
        let id = Self::infra_id(run.run_id, run.attempt);
        Ok(if self.book().started.contains_key(&id) {
            Lookup::Found(id)
        } else {
            Lookup::Absent
        })
    }
}
