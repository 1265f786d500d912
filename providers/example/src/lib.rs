//! The `example` provider of pushpool: the smallest complete provider, to copy when writing one.
//!
//! A job of this provider runs inside the controller process: it waits `sleep_ms`, writes
//! `message` to the run's logs and ends COMPLETED (or FAILED when `fail` is set). Everything a
//! real provider does is here in miniature — a typed job configuration, a default template in
//! its own folder, a declared secret field, submit/status/cancel/lookup, and errors classed as
//! transient or permanent. `docs/providers/writing-a-provider.md` walks through this file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pushpool_provider::{
    ensure, parse_config, CancelOutcome, JobStatus, LogStream, Lookup, Provider, ProviderError,
    RunSpec, Secret,
};
use serde::Deserialize;
use serde_json::Value;

/// The pool type this provider serves (`pushpool pool create NAME --type example`).
pub const POOL_TYPE: &str = "example";

/// The default base job template, kept next to this crate (`template.json`).
pub const DEFAULT_TEMPLATE: &str = include_str!("../template.json");

/// Longest accepted `sleep_ms` (one minute: it is an example).
pub const MAX_SLEEP_MS: u64 = 60_000;

/// How many jobs may run at once; more is refused as *transient* so the controller retries later,
/// the way a real provider answers a throttled API.
pub const MAX_RUNNING: usize = 100;

/// The job configuration: the rendered template, parsed by [`parse_config`] (which names the
/// field and the rule when something does not fit, e.g. `sleep_ms: must be a non-negative
/// integer`). Unknown fields are refused so that a misspelt one is not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleJob {
    /// The line written to the run's logs when the job ends (required).
    pub message: String,
    /// How long the job runs, in milliseconds.
    #[serde(default)]
    pub sleep_ms: u64,
    /// End FAILED instead of COMPLETED.
    #[serde(default)]
    pub fail: bool,
    /// A secret the job would use. [`Secret`] never prints its value, and the provider declares
    /// the field in [`Provider::secret_fields`] so API answers mask it too.
    #[serde(default)]
    pub signing_key: Option<Secret>,
}

/// What the provider knows about one job: its final status once it has one.
#[derive(Debug)]
struct Job {
    outcome: Arc<Mutex<Option<JobStatus>>>,
    task: tokio::task::AbortHandle,
}

impl Job {
    /// The final status, `None` while the job runs.
    fn status(&self) -> Option<JobStatus> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Runs `example` jobs in-process.
#[derive(Debug, Default)]
pub struct ExampleProvider {
    /// Jobs by infrastructure id. A real provider asks its platform instead of remembering.
    jobs: Mutex<HashMap<String, Job>>,
}

impl ExampleProvider {
    /// A provider that knows no jobs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The infrastructure id of a run attempt. Deterministic, so that a retried submission and
    /// [`Provider::lookup`] find the job an earlier call started instead of starting a second one.
    pub fn infrastructure_id(run: &RunSpec) -> String {
        format!("example:{}:{}", run.run_id, run.attempt)
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Provider for ExampleProvider {
    type JobConfig = ExampleJob;

    fn pool_type(&self) -> &'static str {
        POOL_TYPE
    }

    fn default_base_job_template(&self) -> Value {
        pushpool_provider::builtin_template(DEFAULT_TEMPLATE)
    }

    /// Pure: the typed parse, then the rules serde cannot say.
    fn validate(&self, rendered: &Value) -> Result<ExampleJob, ProviderError> {
        let job: ExampleJob = parse_config(rendered)?;
        ensure(
            !job.message.trim().is_empty(),
            "message",
            "must not be empty",
        )?;
        ensure(
            job.sleep_ms <= MAX_SLEEP_MS,
            "sleep_ms",
            format!("must be at most {MAX_SLEEP_MS}"),
        )?;
        Ok(job)
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["signing_key"]
    }

    /// Starts the job and answers at once; the job goes on in a background task.
    async fn submit(&self, run: &RunSpec, job: &ExampleJob) -> Result<String, ProviderError> {
        let id = Self::infrastructure_id(run);
        let mut jobs = self.jobs();
        if jobs.contains_key(&id) {
            return Ok(id); // submitted before (a retry): adopt it, never run twice
        }
        let running = jobs.values().filter(|j| j.status().is_none()).count();
        if running >= MAX_RUNNING {
            return Err(ProviderError::Transient {
                message: format!("the example provider already runs {MAX_RUNNING} jobs"),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        let outcome = Arc::new(Mutex::new(None));
        let slot = outcome.clone();
        let (job, logs) = (job.clone(), run.logs.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
            logs.line(LogStream::Stdout, job.message.clone());
            let status = if job.fail {
                JobStatus::Failed {
                    message: "the example job was told to fail".into(),
                }
            } else {
                JobStatus::Completed { summary: None }
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        });
        let task = task.abort_handle();
        jobs.insert(id.clone(), Job { outcome, task });
        Ok(id)
    }

    async fn status(&self, id: &str, _job: &ExampleJob) -> Result<JobStatus, ProviderError> {
        Ok(match self.jobs().get(id) {
            None => JobStatus::NotFound, // e.g. after a controller restart
            Some(job) => job.status().unwrap_or(JobStatus::Running),
        })
    }

    /// Stops the job at once (`grace` is for jobs that can shut down by themselves).
    async fn cancel(
        &self,
        id: &str,
        _job: &ExampleJob,
        _grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        let jobs = self.jobs();
        let Some(job) = jobs.get(id) else {
            return Ok(CancelOutcome::NotFound);
        };
        let mut outcome = job.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if outcome.as_ref().is_some_and(|s| *s != JobStatus::Cancelled) {
            return Ok(CancelOutcome::NotFound); // it ended before the cancel came
        }
        job.task.abort();
        *outcome = Some(JobStatus::Cancelled);
        Ok(CancelOutcome::Cancelled)
    }

    /// Forgets the job once the run is terminal.
    async fn cleanup(&self, id: &str, _job: &ExampleJob) -> Result<(), ProviderError> {
        self.jobs().remove(id);
        Ok(())
    }

    /// After a controller takeover: is there a job for this attempt already?
    async fn lookup(&self, run: &RunSpec, _job: &ExampleJob) -> Result<Lookup, ProviderError> {
        let id = Self::infrastructure_id(run);
        Ok(if self.jobs().contains_key(&id) {
            Lookup::Found(id)
        } else {
            Lookup::Absent
        })
    }
}

#[cfg(test)]
mod tests;
