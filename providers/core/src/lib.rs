//! The provider contract of pushpool.
//!
//! A provider is the piece that knows one kind of serverless infrastructure. It owns its pool type
//! name, its default base job template, a pure [`Provider::validate`] step that turns the rendered job
//! configuration into a typed config, and the three calls that touch the outside world:
//! [`Provider::submit`], [`Provider::status`] and [`Provider::cancel`]. State reporting stays in the
//! pushpool core: a provider never writes to the store.
//!
//! A platform team adds a provider as one small crate under `providers/` that implements
//! [`Provider`]; the blanket [`DynProvider`] impl lets the registry hold it as a trait object.
//! [`parse_config`] turns a rendered job configuration into the provider's derived config struct,
//! and [`conformance`] checks a provider against this contract in its own tests
//! (`docs/providers/writing-a-provider.md` walks through it).

pub mod config;
pub mod conformance;
pub mod logs;
pub mod summary;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use config::{bounded, ensure, non_blank, parse_config};
pub use logs::{LogCursor, ProviderLogLine};
pub use summary::{Cause, Ending, ErrorSummary, RunEnd, TailLine};

/// How a provider call failed; the controller picks its reaction from the class.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The rendered job configuration is not usable by this provider (no I/O was attempted).
    #[error("invalid job configuration at `{field}`: {message}")]
    InvalidConfig {
        /// JSON path of the offending field inside the job configuration.
        field: String,
        /// What rule the field breaks.
        message: String,
    },
    /// A failure that may go away by itself (throttling, 5xx, timeouts); worth retrying.
    #[error("transient provider error: {message}")]
    Transient {
        /// What failed.
        message: String,
        /// How long the provider asked us to wait, when it said so.
        retry_after: Option<Duration>,
    },
    /// A failure that retrying will not fix (access denied, bad parameters, missing function).
    #[error("{message}")]
    Permanent {
        /// What failed and, where known, how to fix it.
        message: String,
    },
    /// The infrastructure the call was about does not exist (any more).
    #[error("not found: {message}")]
    NotFound {
        /// What was looked for.
        message: String,
    },
}

impl ProviderError {
    /// A short, stable label for metrics (`invalid_config`, `transient`, `permanent`, `not_found`).
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::InvalidConfig { .. } => "invalid_config",
            ProviderError::Transient { .. } => "transient",
            ProviderError::Permanent { .. } => "permanent",
            ProviderError::NotFound { .. } => "not_found",
        }
    }

    /// The field and the rule of an [`ProviderError::InvalidConfig`], `None` for other errors.
    pub fn invalid_field(&self) -> Option<(&str, &str)> {
        match self {
            ProviderError::InvalidConfig { field, message } => Some((field, message)),
            _ => None,
        }
    }

    /// True when retrying the same call may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ProviderError::Transient { .. })
    }

    /// Shorthand for a [`ProviderError::Permanent`].
    pub fn permanent(message: impl Into<String>) -> Self {
        ProviderError::Permanent {
            message: message.into(),
        }
    }

    /// Shorthand for a [`ProviderError::Transient`] without a retry-after hint.
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Shorthand for a [`ProviderError::InvalidConfig`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::InvalidConfig {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a default base job template shipped with a provider (its `template.json`, read with
/// `include_str!`). Invalid JSON gives `null`, which [`conformance::check_template`] refuses in
/// the provider's own tests.
pub fn builtin_template(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

/// A string that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output of the job.
    Stdout,
    /// Standard error of the job.
    Stderr,
    /// A line written by pushpool itself about the job.
    System,
    /// A line of the job read from the provider's log service (CloudWatch Logs, Cloud Logging,
    /// Lambda's log tail), with the provider's timestamp.
    Provider,
}

impl LogStream {
    /// The lowercase name stored with the line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
            LogStream::Provider => "provider",
        }
    }
}

/// Where a provider sends the job's log lines; the core stores them with the run.
pub trait LogSink: Send + Sync {
    /// Records one line (without its trailing newline), timestamped now.
    fn line(&self, stream: LogStream, line: String);

    /// Records one line with the time it was written at the source (Unix microseconds), e.g. a
    /// provider log entry's own timestamp. Sinks that keep no timestamps ignore it.
    fn line_at(&self, stream: LogStream, timestamp_micros: i64, line: String) {
        let _ = timestamp_micros;
        self.line(stream, line);
    }
}

/// A sink that drops everything (for providers whose logs live elsewhere, and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardLogs;

impl LogSink for DiscardLogs {
    fn line(&self, _stream: LogStream, _line: String) {}
}

/// Everything a provider may need to know about the run it submits.
#[derive(Clone)]
pub struct RunSpec {
    /// The flow run id.
    pub run_id: Uuid,
    /// The attempt number (1 for the first); a provider derives deterministic names from run id + attempt.
    pub attempt: u32,
    /// Workspace name.
    pub workspace: String,
    /// Work pool name.
    pub work_pool: String,
    /// Deployment name.
    pub deployment: String,
    /// The flow run's parameters.
    pub parameters: Value,
    /// Base URL of the pushpool API the job may report to (`PUSHPOOL_API_URL`).
    pub api_url: String,
    /// The token scoped to this run (`PUSHPOOL_RUN_TOKEN`).
    pub run_token: Secret,
    /// Where the job's output goes.
    pub logs: Arc<dyn LogSink>,
}

impl fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunSpec")
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .field("workspace", &self.workspace)
            .field("work_pool", &self.work_pool)
            .field("deployment", &self.deployment)
            .finish_non_exhaustive()
    }
}

impl RunSpec {
    /// The environment every job receives: `PUSHPOOL_API_URL`, `PUSHPOOL_RUN_ID`, `PUSHPOOL_RUN_TOKEN`.
    pub fn pushpool_env(&self) -> Vec<(String, String)> {
        vec![
            ("PUSHPOOL_API_URL".into(), self.api_url.clone()),
            ("PUSHPOOL_RUN_ID".into(), self.run_id.to_string()),
            (
                "PUSHPOOL_RUN_TOKEN".into(),
                self.run_token.expose().to_string(),
            ),
        ]
    }
}

/// What the provider knows about a submitted job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStatus {
    /// Accepted but not started yet.
    Pending,
    /// Started.
    Running,
    /// Finished successfully; `summary` is a short description of the result, if any.
    Completed {
        /// Short result summary kept on the run's final state.
        summary: Option<String>,
    },
    /// Finished unsuccessfully because of the job itself.
    Failed {
        /// What went wrong, e.g. "exit code 3".
        message: String,
    },
    /// Ended for a reason outside the job (infrastructure lost, killed).
    Crashed {
        /// What happened.
        message: String,
    },
    /// Stopped by a cancellation.
    Cancelled,
    /// The provider has no such job; the controller decides what that means.
    NotFound,
    /// The provider cannot observe this job; its end comes from the job's own reports or a watchdog.
    Unobservable,
}

impl JobStatus {
    /// True for states after which the job does not change any more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobStatus::Completed { .. }
                | JobStatus::Failed { .. }
                | JobStatus::Crashed { .. }
                | JobStatus::Cancelled
        )
    }
}

/// What a cancel call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was stopped (or is stopping and will not do more work).
    Cancelled,
    /// There was no such job: it already ended or never started.
    NotFound,
    /// The provider cannot stop a started job (e.g. a Lambda invocation); it was told through its run API.
    Unsupported,
}

/// Whether infrastructure already exists for a run attempt (used when a controller takes over a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A job for this attempt exists; its infrastructure id.
    Found(String),
    /// The provider can prove that no job exists for this attempt.
    Absent,
    /// The provider cannot tell (no deterministic names, no lookup API).
    Unknown,
}

/// What the control plane knows of a run, for a sweep of leftover infrastructure
/// ([`Provider::sweep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// The run is not terminal; `attempt` is its current attempt (jobs of earlier attempts are
    /// leftovers).
    Active {
        /// The run's current attempt.
        attempt: u32,
    },
    /// The run reached a terminal state.
    Terminal,
    /// The control plane has no such run.
    Unknown,
}

/// The control plane as a provider's sweep sees it: the phase of a run by id.
#[async_trait]
pub trait RunLedger: Send + Sync {
    /// The run's phase; `Err` when the control plane cannot tell right now (the sweep then
    /// leaves the run's infrastructure alone).
    async fn phase(&self, run_id: Uuid) -> Result<RunPhase, String>;
}

/// What a [`Provider::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Leftover jobs deleted.
    pub deleted: usize,
    /// Jobs looked at and kept (their run is active, or a retention period runs).
    pub kept: usize,
    /// Deletions or look-ups that failed (retried by the next sweep).
    pub failed: usize,
}

/// The AWS `ExternalId` pushpool passes on every `AssumeRole` made for a workspace's jobs:
/// `pushpool-<workspace id>`. Stable for the workspace's life and never chosen by a tenant, so a
/// role's trust policy that requires it admits only that workspace's pools (the confused-deputy
/// guard of a shared controller identity).
pub fn workspace_external_id(workspace_id: &str) -> String {
    format!("pushpool-{workspace_id}")
}

/// A cloud whose ambient identity (the controller's own credentials) a job may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cloud {
    /// AWS: the controller's default credential chain (environment, instance role, …).
    Aws,
    /// Google Cloud: Application Default Credentials of the controller.
    Gcp,
}

/// A string value that is there and not blank, trimmed: how [`Need`] detectors read the
/// credentials and endpoint of a leniently parsed, possibly defaults-only job configuration.
pub fn present_text(value: Option<&serde_json::Value>) -> Option<String> {
    value
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Something a rendered job configuration relies on beyond its own credentials; the core allows
/// each only where the instance administrator granted it (docs/security.md, "Cloud identity").
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The controller's own identity of a cloud (no credentials of the job's own).
    AmbientIdentity {
        /// Which cloud.
        cloud: Cloud,
        /// The job configuration field that would name the job's own credentials.
        field: String,
        /// How the job could carry its own credentials instead.
        how_to_fix: &'static str,
    },
    /// A credentials file or profile on the controller's disk.
    HostFile {
        /// The field naming it.
        field: String,
    },
    /// A non-default API endpoint the provider sends its calls (and credentials) to.
    Endpoint {
        /// The field naming it.
        field: String,
        /// The URL.
        url: String,
    },
}

/// The contract a push-pool provider implements.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The typed job configuration produced by [`Provider::validate`].
    type JobConfig: Send + Sync + 'static;

    /// Pool type this provider serves, e.g. `process` or `aws-lambda:push`.
    fn pool_type(&self) -> &'static str;

    /// The default base job template (`{"job_configuration":…, "variables":…}`).
    fn default_base_job_template(&self) -> Value;

    /// Pure check of a rendered job configuration; no I/O.
    fn validate(&self, rendered: &Value) -> Result<Self::JobConfig, ProviderError>;

    /// [`Provider::validate`] for a job of workspace `workspace_id` (what the controller
    /// submits): providers whose calls depend on the workspace, like the `ExternalId` of an
    /// `AssumeRole`, override it. Pure, no I/O.
    fn validate_in(
        &self,
        rendered: &Value,
        workspace_id: &str,
    ) -> Result<Self::JobConfig, ProviderError> {
        let _ = workspace_id;
        self.validate(rendered)
    }

    /// What a rendered (possibly partial: only defaults) job configuration relies on beyond its
    /// own credentials: the controller's ambient identity, files on its disk, custom endpoints.
    /// Lenient: reads only the fields concerned, never fails.
    fn needs(&self, rendered: &Value) -> Vec<Need> {
        let _ = rendered;
        vec![]
    }

    /// Object keys that hold secrets in this provider's job variables and configuration, at any
    /// depth (e.g. `service_account_info`, `external_id`): API answers show their values masked.
    /// Names that are secret for every provider (`password`, `token`, `*_secret`, …) need not be
    /// listed.
    fn secret_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Submissions per second a controller allows itself per pool of this type unless the pool
    /// sets its own `submit_rate` (respecting the provider's API quota); `None` = unlimited.
    fn default_submit_rate(&self) -> Option<f64> {
        None
    }

    /// Starts the job and returns its infrastructure id as soon as the provider accepted it.
    async fn submit(&self, run: &RunSpec, job: &Self::JobConfig) -> Result<String, ProviderError>;

    /// The provider-side status of a submitted job.
    async fn status(
        &self,
        infrastructure_id: &str,
        job: &Self::JobConfig,
    ) -> Result<JobStatus, ProviderError>;

    /// Stops the job, giving it `grace` to exit by itself.
    async fn cancel(
        &self,
        infrastructure_id: &str,
        job: &Self::JobConfig,
        grace: Duration,
    ) -> Result<CancelOutcome, ProviderError>;

    /// Resolves once the job has ended, for a provider that learns a job's end by itself (a
    /// child process exiting, a synchronous invoke returning), so the controller reads
    /// [`Provider::status`] at once instead of at its next poll. Returns `false` at once when
    /// this provider cannot tell (the default; also for a job it does not track): the
    /// controller then polls, with its backoff.
    async fn wait_ended(&self, _infrastructure_id: &str, _job: &Self::JobConfig) -> bool {
        false
    }

    /// Removes what the job left behind once the run is terminal.
    async fn cleanup(
        &self,
        _infrastructure_id: &str,
        _job: &Self::JobConfig,
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Looks for a job already created for this run attempt (after a controller takeover).
    async fn lookup(
        &self,
        _run: &RunSpec,
        _job: &Self::JobConfig,
    ) -> Result<Lookup, ProviderError> {
        Ok(Lookup::Unknown)
    }

    /// True when [`Provider::read_logs`] reads a log service: the controller then follows the
    /// run's provider logs while it is active and once after it ends.
    fn reads_logs(&self) -> bool {
        false
    }

    /// Reads the job's lines from the provider's log service, from `cursor` on: one bounded
    /// call (a few pages at most), each line passed through [`LogCursor::accept`] so repeats and
    /// lines past the budget are dropped. An error is shown as one warning line and the read is
    /// tried again later; it never changes the run's state.
    async fn read_logs(
        &self,
        _infrastructure_id: &str,
        _job: &Self::JobConfig,
        _cursor: &mut LogCursor,
    ) -> Result<Vec<ProviderLogLine>, ProviderError> {
        Ok(vec![])
    }

    /// Why a run ended FAILED or CRASHED, from the state message and the run's last log lines.
    /// Pure. The default applies the rules every provider shares ([`summary::common`]); a
    /// provider puts its own rules first and falls back to those.
    fn summarize(&self, end: &RunEnd<'_>) -> ErrorSummary {
        summary::common(end)
    }

    /// Housekeeping the controller calls often (every claim-loop tick): a provider whose jobs
    /// outlive their runs (a failed cleanup, a controller that died) deletes those whose run
    /// `ledger` says is terminal or unknown. The provider decides when a sweep is due and
    /// returns at once otherwise; the default does nothing.
    async fn sweep(&self, _ledger: &dyn RunLedger) -> Result<SweepReport, ProviderError> {
        Ok(SweepReport::default())
    }
}

/// A validated job configuration with its type erased, produced by [`DynProvider::validate`].
#[derive(Clone)]
pub struct ValidatedJob {
    config: Arc<dyn Any + Send + Sync>,
}

impl fmt::Debug for ValidatedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ValidatedJob")
    }
}

/// Object-safe face of [`Provider`]; implemented for every provider by a blanket impl.
#[async_trait]
pub trait DynProvider: Send + Sync {
    /// See [`Provider::pool_type`].
    fn pool_type(&self) -> &'static str;
    /// See [`Provider::default_base_job_template`].
    fn default_base_job_template(&self) -> Value;
    /// See [`Provider::validate`].
    fn validate(&self, rendered: &Value) -> Result<ValidatedJob, ProviderError>;
    /// See [`Provider::validate_in`].
    fn validate_in(
        &self,
        rendered: &Value,
        workspace_id: &str,
    ) -> Result<ValidatedJob, ProviderError>;
    /// See [`Provider::needs`].
    fn needs(&self, rendered: &Value) -> Vec<Need>;
    /// See [`Provider::secret_fields`].
    fn secret_fields(&self) -> &'static [&'static str];
    /// See [`Provider::default_submit_rate`].
    fn default_submit_rate(&self) -> Option<f64>;
    /// See [`Provider::submit`].
    async fn submit(&self, run: &RunSpec, job: &ValidatedJob) -> Result<String, ProviderError>;
    /// See [`Provider::status`].
    async fn status(&self, id: &str, job: &ValidatedJob) -> Result<JobStatus, ProviderError>;
    /// See [`Provider::cancel`].
    async fn cancel(
        &self,
        id: &str,
        job: &ValidatedJob,
        grace: Duration,
    ) -> Result<CancelOutcome, ProviderError>;
    /// See [`Provider::wait_ended`].
    async fn wait_ended(&self, id: &str, job: &ValidatedJob) -> bool;
    /// See [`Provider::cleanup`].
    async fn cleanup(&self, id: &str, job: &ValidatedJob) -> Result<(), ProviderError>;
    /// See [`Provider::lookup`].
    async fn lookup(&self, run: &RunSpec, job: &ValidatedJob) -> Result<Lookup, ProviderError>;
    /// See [`Provider::reads_logs`].
    fn reads_logs(&self) -> bool;
    /// See [`Provider::read_logs`].
    async fn read_logs(
        &self,
        id: &str,
        job: &ValidatedJob,
        cursor: &mut LogCursor,
    ) -> Result<Vec<ProviderLogLine>, ProviderError>;
    /// See [`Provider::summarize`].
    fn summarize(&self, end: &RunEnd<'_>) -> ErrorSummary;
    /// See [`Provider::sweep`].
    async fn sweep(&self, ledger: &dyn RunLedger) -> Result<SweepReport, ProviderError>;
}

fn typed<'a, C: 'static>(job: &'a ValidatedJob, pool_type: &str) -> Result<&'a C, ProviderError> {
    job.config.downcast_ref::<C>().ok_or_else(|| {
        ProviderError::invalid(
            "",
            format!("job configuration was validated by another provider than `{pool_type}`"),
        )
    })
}

#[async_trait]
impl<P: Provider> DynProvider for P {
    fn pool_type(&self) -> &'static str {
        Provider::pool_type(self)
    }
    fn default_base_job_template(&self) -> Value {
        Provider::default_base_job_template(self)
    }
    fn default_submit_rate(&self) -> Option<f64> {
        Provider::default_submit_rate(self)
    }
    fn secret_fields(&self) -> &'static [&'static str] {
        Provider::secret_fields(self)
    }
    fn validate(&self, rendered: &Value) -> Result<ValidatedJob, ProviderError> {
        let config = Provider::validate(self, rendered)?;
        Ok(ValidatedJob {
            config: Arc::new(config),
        })
    }
    fn validate_in(
        &self,
        rendered: &Value,
        workspace_id: &str,
    ) -> Result<ValidatedJob, ProviderError> {
        let config = Provider::validate_in(self, rendered, workspace_id)?;
        Ok(ValidatedJob {
            config: Arc::new(config),
        })
    }
    fn needs(&self, rendered: &Value) -> Vec<Need> {
        Provider::needs(self, rendered)
    }
    async fn submit(&self, run: &RunSpec, job: &ValidatedJob) -> Result<String, ProviderError> {
        let config = typed::<P::JobConfig>(job, Provider::pool_type(self))?;
        Provider::submit(self, run, config).await
    }
    async fn status(&self, id: &str, job: &ValidatedJob) -> Result<JobStatus, ProviderError> {
        let config = typed::<P::JobConfig>(job, Provider::pool_type(self))?;
        Provider::status(self, id, config).await
    }
    async fn cancel(
        &self,
        id: &str,
        job: &ValidatedJob,
        grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        let config = typed::<P::JobConfig>(job, Provider::pool_type(self))?;
        Provider::cancel(self, id, config, grace).await
    }
    async fn wait_ended(&self, id: &str, job: &ValidatedJob) -> bool {
        match typed::<P::JobConfig>(job, Provider::pool_type(self)) {
            Ok(config) => Provider::wait_ended(self, id, config).await,
            Err(_) => false,
        }
    }
    async fn cleanup(&self, id: &str, job: &ValidatedJob) -> Result<(), ProviderError> {
        let config = typed::<P::JobConfig>(job, Provider::pool_type(self))?;
        Provider::cleanup(self, id, config).await
    }
    async fn lookup(&self, run: &RunSpec, job: &ValidatedJob) -> Result<Lookup, ProviderError> {
        let config = typed::<P::JobConfig>(job, Provider::pool_type(self))?;
        Provider::lookup(self, run, config).await
    }
    fn reads_logs(&self) -> bool {
        Provider::reads_logs(self)
    }
    async fn read_logs(
        &self,
        id: &str,
        job: &ValidatedJob,
        cursor: &mut LogCursor,
    ) -> Result<Vec<ProviderLogLine>, ProviderError> {
        let config = typed::<P::JobConfig>(job, Provider::pool_type(self))?;
        Provider::read_logs(self, id, config, cursor).await
    }
    fn summarize(&self, end: &RunEnd<'_>) -> ErrorSummary {
        Provider::summarize(self, end)
    }
    async fn sweep(&self, ledger: &dyn RunLedger) -> Result<SweepReport, ProviderError> {
        Provider::sweep(self, ledger).await
    }
}

/// Maps pool types to providers.
#[derive(Clone, Default)]
pub struct Registry {
    providers: Vec<Arc<dyn DynProvider>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.pool_types()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the provider for its pool type.
    pub fn register(&mut self, provider: Arc<dyn DynProvider>) {
        let pool_type = provider.pool_type();
        self.providers.retain(|p| p.pool_type() != pool_type);
        self.providers.push(provider);
    }

    /// The provider for a pool type.
    pub fn get(&self, pool_type: &str) -> Option<Arc<dyn DynProvider>> {
        self.providers
            .iter()
            .find(|p| p.pool_type() == pool_type)
            .cloned()
    }

    /// All registered pool types, in registration order.
    pub fn pool_types(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.pool_type()).collect()
    }

    /// The secret fields every registered provider declares ([`Provider::secret_fields`]),
    /// sorted, without duplicates.
    pub fn secret_fields(&self) -> Vec<&'static str> {
        let mut fields: Vec<&'static str> = self
            .providers
            .iter()
            .flat_map(|p| p.secret_fields().iter().copied())
            .collect();
        fields.sort_unstable();
        fields.dedup();
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed() {
        let s = Secret::new("pp_supersecret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "pp_supersecret");
    }

    #[test]
    fn only_transient_errors_are_retriable() {
        assert!(ProviderError::transient("503").is_retriable());
        assert!(!ProviderError::permanent("denied").is_retriable());
        assert!(!ProviderError::NotFound {
            message: "x".into()
        }
        .is_retriable());
        assert_eq!(ProviderError::invalid("a", "b").class(), "invalid_config");
    }
}
