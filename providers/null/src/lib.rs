//! The built-in `null` provider: submits nothing anywhere. It waits a configured latency on submit,
//! counts submissions per run attempt (so the bench and chaos checks can prove exactly-once), and
//! reports the job finished after `duration_ms`.
//!
//! `pushpool bench` and the fault-injection suite (`scripts/chaos`) drive it; the registry always
//! includes it, tuned by the environment ([`NullProvider::from_env`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pushpool_provider::{
    ensure, parse_config, CancelOutcome, JobStatus, Lookup, Provider, ProviderError, RunSpec,
};
use serde_json::Value;
use uuid::Uuid;

/// Pool type of the null provider.
pub const POOL_TYPE: &str = "null";

/// The default base job template of the `null` pool type (this crate's `template.json`, which
/// `templates/null.json` links to).
pub const DEFAULT_TEMPLATE: &str = include_str!("../template.json");

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
    /// Failures injected so far.
    injected: u64,
}

/// The null provider. Clones share their submission book.
#[derive(Debug, Clone, Default)]
pub struct NullProvider {
    latency: Duration,
    fail_rate: f64,
    /// Injected failures look like throttling (HTTP 429 with a Retry-After).
    throttle: bool,
    book: Arc<Mutex<Book>>,
    /// Shared submission journal (one file per process) so several processes agree on which jobs
    /// exist: what `lookup` reads and what the chaos checker counts.
    journal: Option<std::path::PathBuf>,
}

/// One journal line: a job that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The run.
    pub run_id: Uuid,
    /// The attempt.
    pub attempt: u32,
    /// The infrastructure id handed out.
    pub infrastructure_id: String,
}

/// Reads every process's journal in `dir`.
pub fn read_journal(dir: &std::path::Path) -> Vec<JournalEntry> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(run), Some(attempt), Some(id)) = (parts.next(), parts.next(), parts.next())
            {
                if let (Ok(run_id), Ok(attempt)) = (Uuid::parse_str(run), attempt.parse()) {
                    out.push(JournalEntry {
                        run_id,
                        attempt,
                        infrastructure_id: id.to_string(),
                    });
                }
            }
        }
    }
    out
}

impl NullProvider {
    /// The provider tuned by `PUSHPOOL_NULL_LATENCY_MS`, `PUSHPOOL_NULL_FAIL_RATE` and
    /// `PUSHPOOL_NULL_JOURNAL_DIR` (used by the chaos suite; unset means instant, reliable,
    /// in-memory).
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let latency = env("PUSHPOOL_NULL_LATENCY_MS")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::ZERO);
        let mut provider = NullProvider::new(latency);
        if let Some(rate) = env("PUSHPOOL_NULL_FAIL_RATE").and_then(|v| v.parse().ok()) {
            provider = provider.with_transient_failures(rate);
        }
        if let Some(dir) = env("PUSHPOOL_NULL_JOURNAL_DIR") {
            provider = provider.with_journal(dir.into());
        }
        provider
    }

    /// A provider that accepts every submission after `latency`.
    pub fn new(latency: Duration) -> Self {
        NullProvider {
            latency,
            ..Default::default()
        }
    }

    /// Records every accepted submission in `dir/<pid>.log`, shared with other processes.
    pub fn with_journal(mut self, dir: std::path::PathBuf) -> Self {
        self.journal = Some(dir);
        self
    }

    fn journal_append(&self, entry: &JournalEntry) -> std::io::Result<()> {
        use std::io::Write;
        let Some(dir) = &self.journal else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", std::process::id())))?;
        // One write per line: appends of a short line are not interleaved.
        f.write_all(
            format!(
                "{} {} {}\n",
                entry.run_id, entry.attempt, entry.infrastructure_id
            )
            .as_bytes(),
        )
    }

    /// Makes a fraction (0..=1) of submit and status calls fail transiently.
    pub fn with_transient_failures(mut self, rate: f64) -> Self {
        self.fail_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Makes a fraction (0..=1) of submit and status calls fail as a throttling provider does
    /// (transient, "HTTP 429", a 10 ms Retry-After). The first call is always throttled, so a
    /// test that asks for throttling sees some whatever the dice say.
    pub fn with_throttling(mut self, rate: f64) -> Self {
        self.fail_rate = rate.clamp(0.0, 1.0);
        self.throttle = true;
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
        let first_throttle = self.throttle && self.fail_rate > 0.0 && self.book().injected == 0;
        if first_throttle || (self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate) {
            self.book().injected += 1;
            if self.throttle {
                return Err(ProviderError::Transient {
                    message: format!("null provider: TooManyRequests (HTTP 429) on {what}"),
                    retry_after: Some(Duration::from_millis(10)),
                });
            }
            return Err(ProviderError::Transient {
                message: format!("null provider: injected transient failure on {what}"),
                retry_after: None,
            });
        }
        Ok(())
    }

    fn infra_id(run_id: Uuid, attempt: u32) -> String {
        format!(
            "null:{run_id}:{attempt}:{}",
            chrono::Utc::now().timestamp_millis()
        )
    }

    /// Submit time encoded in an infrastructure id.
    fn submitted_ms(id: &str) -> Option<i64> {
        id.rsplit(':').next()?.parse().ok()
    }
}

#[async_trait]
impl Provider for NullProvider {
    type JobConfig = NullJob;

    fn pool_type(&self) -> &'static str {
        POOL_TYPE
    }

    fn default_base_job_template(&self) -> Value {
        pushpool_provider::builtin_template(DEFAULT_TEMPLATE)
    }

    fn validate(&self, rendered: &Value) -> Result<NullJob, ProviderError> {
        let job: NullJob = parse_config(rendered)?;
        ensure(
            job.outcome == "completed" || job.outcome == "failed",
            "outcome",
            "must be `completed` or `failed`",
        )?;
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
        self.journal_append(&JournalEntry {
            run_id: run.run_id,
            attempt: run.attempt,
            infrastructure_id: id.clone(),
        })
        .map_err(|e| ProviderError::transient(format!("null provider journal: {e}")))?;
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
        let running = match book.started.get(id) {
            Some(started) => started.elapsed() < Duration::from_millis(job.duration_ms),
            // Started by another process (journal mode): the id carries the submit time.
            None => match (&self.journal, Self::submitted_ms(id)) {
                (Some(_), Some(ms)) => {
                    chrono::Utc::now().timestamp_millis() - ms < job.duration_ms as i64
                }
                _ => return Ok(JobStatus::NotFound),
            },
        };
        if running {
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
        let prefix = format!("null:{}:{}:", run.run_id, run.attempt);
        if let Some(dir) = &self.journal {
            return Ok(read_journal(dir)
                .into_iter()
                .find(|e| e.run_id == run.run_id && e.attempt == run.attempt)
                .map(|e| Lookup::Found(e.infrastructure_id))
                .unwrap_or(Lookup::Absent));
        }
        Ok(self
            .book()
            .started
            .keys()
            .find(|k| k.starts_with(&prefix))
            .map(|k| Lookup::Found(k.clone()))
            .unwrap_or(Lookup::Absent))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushpool_provider::conformance;
    use pushpool_provider::DiscardLogs;
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn conforms_to_the_provider_contract() {
        let provider = NullProvider::default();
        conformance::check_template(&provider).unwrap();
        conformance::check_rejects(&provider, &json!({"outcome": "maybe"}), "outcome").unwrap();
        conformance::check_rejects(&provider, &json!({"duration_ms": -1}), "duration_ms").unwrap();
        let run = conformance::run_spec(Arc::new(DiscardLogs));
        let (_, end) = conformance::run_to_end(&provider, &run, &json!({}), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(end, JobStatus::Completed { summary: None });
        assert_eq!(provider.double_submits(), 0);
        conformance::check_cancel(&provider, &json!({"duration_ms": 60_000}))
            .await
            .unwrap();
    }
}
