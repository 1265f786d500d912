//! The `cloud-run-v2:push` provider of pushpool: runs each flow run attempt as a Google Cloud Run
//! job execution.
//!
//! - **Submit**: creates the Cloud Run job `pp-<run id>-<attempt>` (a deterministic name, so a
//!   retried create answers `ALREADY_EXISTS` and the job is adopted), looks for an execution of
//!   that job (adopted if there is one, so a retried or taken-over submission never starts a
//!   second execution), else runs the job and waits on the long-running operation only until the
//!   execution exists. The infrastructure id is the execution's full resource name.
//! - **Status**: reads the execution and maps its `Completed` condition and task counts to
//!   RUNNING, COMPLETED, FAILED (the task failure message) and CANCELLED. An execution that fails
//!   because a task reached its timeout, or is still running `timeout × (maxRetries + 1) +
//!   watchdog_grace_seconds` after it started, ends FAILED with a message saying it timed out
//!   (the latter is cancelled first). 429, 5xx, timeouts and connection failures are
//!   [`ProviderError::Transient`]: the controller keeps polling until its status deadline.
//! - **Cancel**: cancels the execution and waits (up to the grace period) for it to stop.
//! - **Cleanup**: deletes the job once the run is terminal, unless `keep_job`.
//!
//! The Admin API is called through the official `google-cloud-run-v2` crate (HTTP/JSON REST,
//! enums as integers) with `google-cloud-auth` credentials (Application Default Credentials, a
//! service-account key, or anonymous for tests), its own retry loop switched off so that the
//! controller's backoff and deadlines apply. Credentials, access
//! tokens and the job body (which carries the run token) are never logged.

mod api;
mod body;
mod config;
mod leftovers;
mod logs;
mod status;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pushpool_provider::{
    CancelOutcome, JobStatus, LogStream, Lookup, Provider, ProviderError, RunLedger, RunSpec,
    SweepReport,
};
use serde_json::{json, Value};

pub use api::{AmbientCredentials, ApiError, CloudRunApi, HOW_TO_PROVIDE_CREDENTIALS};
pub use body::shell_split;
pub use config::{
    CloudRunJobConfig, Credentials, DEFAULT_ENDPOINT, DEFAULT_JOB_RETENTION_DAYS, DEFAULT_REGION,
    DEFAULT_TEMPLATE, DEFAULT_TIMEOUT_SECONDS, DEFAULT_WATCHDOG_GRACE_SECONDS, LAUNCH_STAGES,
    MAX_JOB_RETENTION_DAYS, MAX_TIMEOUT_SECONDS, MAX_WATCHDOG_GRACE_SECONDS,
};
pub use logs::{entry_line, filter as logging_filter, logging_endpoint, LOGGING_ENDPOINT};
pub use status::{execution_status, watchdog_window, Observed, WatchdogWindow};

/// The pool type served by [`CloudRunProvider`].
pub const POOL_TYPE: &str = "cloud-run-v2:push";

/// How often the provider re-reads a job or an operation while it waits inside one call.
const WAIT_STEP: Duration = Duration::from_millis(200);
/// How many times it does so before answering a transient error (the controller retries).
const WAIT_ROUNDS: u32 = 25;
/// Longest wait for a cancelled execution to stop.
const CANCEL_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often each location (endpoint, credentials, project, region) is swept for leftover jobs.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Label of every job pushpool creates: the run id (the sweep's key).
pub const RUN_LABEL: &str = "pushpool-run-id";
/// Label: the run attempt of the job.
pub const ATTEMPT_LABEL: &str = "pushpool-attempt";
/// Label on jobs created with `keep_job`: `"true"`.
pub const KEEP_LABEL: &str = "pushpool-keep-job";
/// Label on jobs created with `keep_job`: `job_retention_days`.
pub const RETENTION_LABEL: &str = "pushpool-retention-days";

/// The deterministic Cloud Run job name of a run attempt: `pp-<run id, 32 hex>-<attempt>`
/// (lowercase, starts with a letter, at most 63 characters).
pub fn job_id(run: &RunSpec) -> String {
    format!("pp-{}-{}", run.run_id.simple(), run.attempt)
}

/// The job's full name (`projects/P/locations/R/jobs/J`) from an execution's full name.
pub fn job_of_execution(execution: &str) -> Option<&str> {
    execution
        .find("/executions/")
        .map(|i| &execution[..i])
        .filter(|j| j.contains("/jobs/"))
}

fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A location jobs were created or tracked in, for the sweep.
struct Location {
    job: CloudRunJobConfig,
    parent: String,
    swept: Option<Instant>,
}

/// Runs Google Cloud Run jobs (pool type `cloud-run-v2:push`).
pub struct CloudRunProvider {
    api: CloudRunApi,
    /// Run operations started by this provider, by job name, so a retried submit waits on the
    /// operation instead of running the job again.
    operations: Mutex<HashMap<String, String>>,
    /// Cloud Logging clients (the job's own logs; docs/error-summaries.md).
    logs: logs::LogReader,
    /// Locations seen since start, by (endpoint, credentials, parent).
    locations: Mutex<HashMap<String, Location>>,
    /// Job deletions that failed, by job name.
    pending_deletes: Mutex<HashMap<String, leftovers::PendingDelete>>,
    /// How often a location is swept.
    sweep_interval: Duration,
    /// True while a sweep runs (one at a time).
    sweeping: std::sync::atomic::AtomicBool,
}

impl Default for CloudRunProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CloudRunProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudRunProvider").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CloudRunProvider {
    /// A provider with its own HTTP client.
    pub fn new() -> Self {
        Self::with_api(CloudRunApi::new())
    }

    fn with_api(api: CloudRunApi) -> Self {
        CloudRunProvider {
            api,
            operations: Mutex::default(),
            logs: logs::LogReader::default(),
            locations: Mutex::default(),
            pending_deletes: Mutex::default(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            sweeping: Default::default(),
        }
    }

    /// A provider whose Application Default Credentials see `ambient` instead of what the machine
    /// offers (tests, pinned set-ups).
    pub fn with_ambient_credentials(ambient: AmbientCredentials) -> Self {
        Self::with_api(CloudRunApi::new().with_ambient_credentials(ambient))
    }

    /// Sweeps each location at most every `interval` (default [`DEFAULT_SWEEP_INTERVAL`]; the
    /// first sweep of a location comes with the first sweep call after it was seen).
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Remembers the location of `job` for the sweep.
    fn remember(&self, job: &CloudRunJobConfig) {
        let Ok(parent) = Self::parent(job) else {
            return;
        };
        let key = format!(
            "{} {} {parent}",
            job.endpoint_url,
            job.credentials.cache_key()
        );
        lock(&self.locations).entry(key).or_insert(Location {
            job: job.clone(),
            parent,
            swept: None,
        });
    }

    /// The parsed default base job template (this crate's `template.json`).
    pub fn template() -> Value {
        pushpool_provider::builtin_template(DEFAULT_TEMPLATE)
    }

    /// The project: from the configuration, the credentials, or the environment.
    fn project(job: &CloudRunJobConfig) -> Result<String, ProviderError> {
        if let Some(p) = &job.project {
            return Ok(p.clone());
        }
        for var in [
            "GOOGLE_CLOUD_PROJECT",
            "GCLOUD_PROJECT",
            "CLOUDSDK_CORE_PROJECT",
        ] {
            if let Some(p) = std::env::var(var).ok().filter(|p| !p.is_empty()) {
                return Ok(p);
            }
        }
        let key_file = match &job.credentials {
            Credentials::ServiceAccountFile(p) => Some(p.clone()),
            Credentials::ApplicationDefault => std::env::var("GOOGLE_APPLICATION_CREDENTIALS").ok(),
            _ => None,
        };
        if let Some(path) = key_file {
            if let Some(p) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["project_id"].as_str().map(str::to_string))
            {
                return Ok(p);
            }
        }
        Err(ProviderError::invalid(
            "project",
            "no Google Cloud project: set the `project` variable (or credentials.project, or GOOGLE_CLOUD_PROJECT on the controller)",
        ))
    }

    fn parent(job: &CloudRunJobConfig) -> Result<String, ProviderError> {
        Ok(format!(
            "projects/{}/locations/{}",
            Self::project(job)?,
            job.region
        ))
    }

    /// The Job body sent to Cloud Run for this run: the configured body plus labels and the
    /// environment of the first container (the configured env, then PUSHPOOL_*).
    pub fn job_body(run: &RunSpec, job: &CloudRunJobConfig) -> Value {
        let mut body = Value::Object(job.job_body.clone());
        let labels = body
            .as_object_mut()
            .map(|b| b.entry("labels").or_insert_with(|| json!({})));
        if let Some(labels) = labels {
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in &job.labels {
                labels[k] = json!(v);
            }
            labels[RUN_LABEL] = json!(run.run_id.to_string());
            labels[ATTEMPT_LABEL] = json!(run.attempt.to_string());
            if job.keep_job {
                labels[KEEP_LABEL] = json!("true");
                labels[RETENTION_LABEL] = json!(job.job_retention_days.to_string());
            }
        }
        if let Some(container) = body
            .pointer_mut("/template/template/containers/0")
            .and_then(Value::as_object_mut)
        {
            let mut env: Vec<Value> = container
                .get("env")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let extra = job
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(run.pushpool_env());
            for (name, value) in extra {
                env.retain(|e| e["name"] != json!(name));
                env.push(json!({"name": name, "value": value}));
            }
            container.insert("env".into(), Value::Array(env));
        }
        body
    }

    /// Waits until a newly created (or adopted) job is ready to run. Answers the execution the
    /// job already has (its `latestCreatedExecution`), if any: a submit cut short after `:run`
    /// (the controller died before recording the execution) adopts it instead of running the
    /// job a second time.
    async fn ready_or_started(
        &self,
        job: &CloudRunJobConfig,
        name: &str,
    ) -> Result<Option<String>, ProviderError> {
        for round in 0..WAIT_ROUNDS {
            let current = self
                .api
                .get(job, name)
                .await
                .map_err(|e| e.into_provider(&format!("reading Cloud Run job `{name}`")))?;
            if let Some(execution) = latest_created_execution(&current, name) {
                return Ok(Some(execution));
            }
            let condition = &current["terminalCondition"];
            if status::state_is(&condition["state"], "CONDITION_FAILED", 3) {
                return Err(ProviderError::permanent(format!(
                    "Cloud Run could not create job `{name}`: {}",
                    condition["message"].as_str().unwrap_or("no message")
                )));
            }
            let reconciling = current["reconciling"].as_bool().unwrap_or(false);
            if !reconciling {
                return Ok(None);
            }
            if round + 1 < WAIT_ROUNDS {
                tokio::time::sleep(WAIT_STEP).await;
            }
        }
        Err(ProviderError::transient(format!(
            "Cloud Run job `{name}` is still being created"
        )))
    }

    /// The newest execution of a job, if it has any.
    async fn existing_execution(
        &self,
        job: &CloudRunJobConfig,
        name: &str,
    ) -> Result<Option<String>, ApiError> {
        let executions = self.api.list_executions(job, name).await?;
        Ok(executions
            .iter()
            .filter_map(|e| {
                Some((
                    e["createTime"].as_str().unwrap_or("").to_string(),
                    e["name"].as_str()?.to_string(),
                ))
            })
            .max()
            .map(|(_, n)| n))
    }

    /// Waits on a run operation until the execution it started has a name.
    async fn execution_of_operation(
        &self,
        job: &CloudRunJobConfig,
        job_name: &str,
        mut operation: Value,
    ) -> Result<String, ProviderError> {
        let op_name = operation["name"].as_str().unwrap_or("").to_string();
        for round in 0..WAIT_ROUNDS {
            if let Some(error) = operation.get("error").filter(|e| !e.is_null()) {
                lock(&self.operations).remove(job_name);
                let code = error["code"].as_i64().unwrap_or(0);
                let message = format!(
                    "running Cloud Run job `{job_name}` failed: {}",
                    error["message"].as_str().unwrap_or("no message")
                );
                // gRPC codes: 4 DEADLINE_EXCEEDED, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE.
                return Err(if matches!(code, 4 | 8 | 14) {
                    ProviderError::transient(message)
                } else {
                    ProviderError::permanent(message)
                });
            }
            let named = operation["metadata"]["name"]
                .as_str()
                .or(operation["response"]["name"].as_str())
                .filter(|n| n.contains("/executions/"));
            if let Some(n) = named {
                return Ok(n.to_string());
            }
            if let Some(n) = self
                .existing_execution(job, job_name)
                .await
                .map_err(|e| e.into_provider(&format!("listing executions of `{job_name}`")))?
            {
                return Ok(n);
            }
            if op_name.is_empty() || round + 1 == WAIT_ROUNDS {
                break;
            }
            tokio::time::sleep(WAIT_STEP).await;
            operation = self
                .api
                .get(job, &op_name)
                .await
                .map_err(|e| e.into_provider(&format!("reading operation `{op_name}`")))?;
        }
        Err(ProviderError::transient(format!(
            "Cloud Run accepted the run of job `{job_name}` but its execution is not visible yet"
        )))
    }

    async fn stop_execution(
        &self,
        job: &CloudRunJobConfig,
        execution: &str,
        wait: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        match self.api.post_verb(job, execution, "cancel").await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(CancelOutcome::NotFound),
            Err(e) if e.is_transient() => {
                return Err(e.into_provider(&format!("cancelling execution `{execution}`")))
            }
            Err(e) => {
                // FAILED_PRECONDITION and the like: it may have ended already.
                let current =
                    self.api.get(job, execution).await.map_err(|e2| {
                        e2.into_provider(&format!("reading execution `{execution}`"))
                    })?;
                if execution_status(&current, job).is_final() {
                    return Ok(CancelOutcome::NotFound);
                }
                return Err(e.into_provider(&format!("cancelling execution `{execution}`")));
            }
        }
        let deadline = tokio::time::Instant::now() + wait.min(CANCEL_WAIT_MAX);
        loop {
            match self.api.get(job, execution).await {
                Ok(current) => {
                    if execution_status(&current, job).is_final() {
                        break;
                    }
                }
                Err(e) if e.is_not_found() => break,
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(
                    execution,
                    "cancel requested; the execution has not stopped yet"
                );
                break;
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
        Ok(CancelOutcome::Cancelled)
    }

    /// Starts (or adopts) the execution of the created job `name`.
    async fn start_execution(
        &self,
        run: &RunSpec,
        job: &CloudRunJobConfig,
        name: &str,
    ) -> Result<String, ProviderError> {
        let started = self.ready_or_started(job, name).await?;
        let pending_op = lock(&self.operations).get(name).cloned();
        if let Some(op_name) = pending_op {
            match self.api.get(job, &op_name).await {
                Ok(op) => {
                    let execution = self.execution_of_operation(job, name, op).await?;
                    lock(&self.operations).remove(name);
                    return Ok(execution);
                }
                Err(e) if e.is_transient() => {
                    return Err(e.into_provider(&format!("reading operation `{op_name}`")))
                }
                // The operation is gone: the job and its executions decide.
                Err(_) => {
                    lock(&self.operations).remove(name);
                }
            }
        }
        let existing = match started {
            Some(e) => Some(e),
            None => self
                .existing_execution(job, name)
                .await
                .map_err(|e| e.into_provider(&format!("listing executions of `{name}`")))?,
        };
        if let Some(existing) = existing {
            run.logs.line(
                LogStream::System,
                format!(
                    "adopting the existing execution `{existing}` instead of running the job again"
                ),
            );
            tracing::info!(run_id = %run.run_id, infrastructure_id = %existing, "adopted existing Cloud Run execution");
            return Ok(existing);
        }
        let op = self
            .api
            .post_verb(job, name, "run")
            .await
            .map_err(|e| e.into_provider(&format!("running Cloud Run job `{name}`")))?;
        if let Some(op_name) = op["name"].as_str() {
            lock(&self.operations).insert(name.to_string(), op_name.to_string());
        }
        let execution = self.execution_of_operation(job, name, op).await?;
        lock(&self.operations).remove(name);
        run.logs.line(
            LogStream::System,
            format!("started Cloud Run execution `{execution}`"),
        );
        tracing::info!(run_id = %run.run_id, infrastructure_id = %execution, "started Cloud Run execution");
        Ok(execution)
    }
}

/// The execution a job already started (`latestCreatedExecution`), as a full resource name.
fn latest_created_execution(job: &Value, job_name: &str) -> Option<String> {
    let name = job["latestCreatedExecution"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())?;
    Some(if name.contains("/executions/") {
        name.to_string()
    } else {
        format!("{job_name}/executions/{name}")
    })
}

#[async_trait]
impl Provider for CloudRunProvider {
    type JobConfig = CloudRunJobConfig;

    fn pool_type(&self) -> &'static str {
        POOL_TYPE
    }

    fn default_base_job_template(&self) -> Value {
        Self::template()
    }

    /// Cloud Run limits job run requests per minute and region; 1 submission per second per pool
    /// per controller stays inside the default quota.
    fn default_submit_rate(&self) -> Option<f64> {
        Some(1.0)
    }

    fn validate(&self, rendered: &Value) -> Result<CloudRunJobConfig, ProviderError> {
        CloudRunJobConfig::from_rendered(rendered)
    }

    fn needs(&self, rendered: &Value) -> Vec<pushpool_provider::Need> {
        config::needs(rendered)
    }

    /// A service-account key given inline, and the fields of such a key.
    fn secret_fields(&self) -> &'static [&'static str] {
        &[
            "service_account_info",
            "private_key",
            "private_key_data",
            "credentials_json",
        ]
    }

    async fn submit(
        &self,
        run: &RunSpec,
        job: &CloudRunJobConfig,
    ) -> Result<String, ProviderError> {
        let parent = Self::parent(job)?;
        self.remember(job);
        let id = job_id(run);
        let name = format!("{parent}/jobs/{id}");
        let body = Self::job_body(run, job);
        match self.api.create_job(job, &parent, &id, &body).await {
            Ok(_) => {
                run.logs
                    .line(LogStream::System, format!("created Cloud Run job `{name}`"));
            }
            Err(e) if e.is_already_exists() => {
                run.logs.line(
                    LogStream::System,
                    format!("Cloud Run job `{name}` already exists (an earlier submission of this attempt); adopting it"),
                );
            }
            Err(e) => return Err(e.into_provider(&format!("creating Cloud Run job `{name}`"))),
        }
        match self.start_execution(run, job, &name).await {
            Ok(execution) => Ok(execution),
            Err(e) if !e.is_retriable() => {
                // The attempt ends here (the run is CRASHED): its job must not stay behind
                // towards the region's quota of 1,000 jobs.
                match self.delete_or_queue(job, &name).await {
                    Ok(()) => run.logs.line(
                        LogStream::System,
                        format!("deleted Cloud Run job `{name}` after the submission failed"),
                    ),
                    Err(d) => run.logs.line(
                        LogStream::System,
                        format!("could not delete Cloud Run job `{name}` after the submission failed ({d}); the sweep will"),
                    ),
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn status(
        &self,
        infrastructure_id: &str,
        job: &CloudRunJobConfig,
    ) -> Result<JobStatus, ProviderError> {
        self.remember(job);
        let execution =
            self.api.get(job, infrastructure_id).await.map_err(|e| {
                e.into_provider(&format!("reading execution `{infrastructure_id}`"))
            })?;
        let status = execution_status(&execution, job);
        if let JobStatus::Failed { message } = &status {
            if status::is_watchdog(&execution, job) {
                // Still running past its window: stop it so it does not run on unobserved.
                if let Err(e) = self.api.post_verb(job, infrastructure_id, "cancel").await {
                    tracing::warn!(infrastructure_id, error = %e, "could not cancel the timed-out execution");
                }
                tracing::info!(infrastructure_id, "{message}");
            }
        }
        Ok(status)
    }

    async fn cancel(
        &self,
        infrastructure_id: &str,
        job: &CloudRunJobConfig,
        grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        let outcome = self.stop_execution(job, infrastructure_id, grace).await?;
        if !job.keep_job {
            if let Some(job_name) = job_of_execution(infrastructure_id) {
                if let Err(e) = self.delete_or_queue(job, job_name).await {
                    tracing::warn!(infrastructure_id, error = %e, "could not delete the cancelled job; queued for the sweep");
                }
            }
        }
        Ok(outcome)
    }

    /// Deletes the Cloud Run job (and with it its executions) unless `keep_job`; a deletion
    /// that fails is retried by the sweep.
    async fn cleanup(
        &self,
        infrastructure_id: &str,
        job: &CloudRunJobConfig,
    ) -> Result<(), ProviderError> {
        self.remember(job);
        if job.keep_job {
            return Ok(());
        }
        match job_of_execution(infrastructure_id) {
            Some(job_name) => self.delete_or_queue(job, job_name).await,
            None => Ok(()),
        }
    }

    fn reads_logs(&self) -> bool {
        true
    }

    /// The execution's entries from Cloud Logging, filtered by job and execution name.
    async fn read_logs(
        &self,
        infrastructure_id: &str,
        job: &CloudRunJobConfig,
        cursor: &mut pushpool_provider::LogCursor,
    ) -> Result<Vec<pushpool_provider::ProviderLogLine>, ProviderError> {
        self.logs
            .read(&self.api, job, infrastructure_id, cursor)
            .await
    }

    fn summarize(&self, end: &pushpool_provider::RunEnd<'_>) -> pushpool_provider::ErrorSummary {
        logs::summarize(end)
    }

    /// Finds the job of this attempt by its deterministic name and its execution:
    /// [`Lookup::Found`] with the execution, or [`Lookup::Absent`] when there is no job or the
    /// job has no execution (the next submit adopts the job and runs it once).
    async fn lookup(
        &self,
        run: &RunSpec,
        job: &CloudRunJobConfig,
    ) -> Result<Lookup, ProviderError> {
        let name = format!("{}/jobs/{}", Self::parent(job)?, job_id(run));
        self.remember(job);
        match self.api.get(job, &name).await {
            Ok(found) => {
                if let Some(execution) = latest_created_execution(&found, &name) {
                    return Ok(Lookup::Found(execution));
                }
            }
            Err(e) if e.is_not_found() => return Ok(Lookup::Absent),
            Err(e) => return Err(e.into_provider(&format!("looking up Cloud Run job `{name}`"))),
        }
        match self.existing_execution(job, &name).await {
            Ok(Some(execution)) => Ok(Lookup::Found(execution)),
            Ok(None) => Ok(Lookup::Absent),
            Err(e) if e.is_not_found() => Ok(Lookup::Absent),
            Err(e) => Err(e.into_provider(&format!("listing executions of `{name}`"))),
        }
    }

    /// Retries failed job deletions that are due, then sweeps each location seen since start
    /// (submit, status, cancel, cleanup, lookup) whose last sweep is older than the sweep
    /// interval, deleting leftover jobs (see [`CloudRunProvider::with_sweep_interval`]).
    async fn sweep(&self, ledger: &dyn RunLedger) -> Result<SweepReport, ProviderError> {
        self.sweep_leftovers(ledger).await
    }
}

#[cfg(test)]
mod tests;
