//! The `aws-lambda:push` provider of pushpool: invokes an AWS Lambda function per flow run.
//!
//! - **`RequestResponse`** (default): [`Provider::submit`] starts the synchronous `Invoke` on a
//!   background task of this provider and returns at once with an infrastructure id; `status`
//!   reports RUNNING until the task has the answer, then COMPLETED (a short summary of the result),
//!   FAILED (`errorType: errorMessage` of a function error) or CRASHED (API errors that retrying
//!   cannot fix, or retriable ones that kept failing until `timeout_seconds`).
//! - **`Event`**: `submit` makes the asynchronous `Invoke` (202) and returns an id carrying the
//!   request id; the outcome comes from the job's own report through the run API, from the SQS
//!   results queue (Lambda destination records) when `result_queue_url` is set, or else a watchdog
//!   crashes the run once `timeout_seconds + watchdog_grace_seconds` passed with no word.
//!
//! Lambda has no idempotency token and no way to stop an invocation: [`Provider::lookup`] answers
//! [`Lookup::Unknown`] (a controller that takes over a run never invokes it again) and
//! [`Provider::cancel`] answers [`CancelOutcome::Unsupported`] after it stops waiting.
//! The infrastructure id encodes the submission time, so a controller that did not make the call
//! (after a restart or a takeover) still ends the run at the watchdog.
//!
//! Credentials come from the standard AWS chain (plus an optional profile and role to assume);
//! they are never logged, and the payload (which carries the run token) is never logged either.

mod clients;
mod config;
mod errors;
mod logs;
mod payload;
mod results;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::primitives::Blob;
use pushpool_provider::{
    CancelOutcome, JobStatus, LogSink, LogStream, Lookup, Provider, ProviderError, RunSpec,
};
use serde_json::Value;

pub use clients::{account_from_arn, ClientCache, Clients};
pub use config::{
    default_payload, CredentialsConfig, InvocationType, LambdaJobConfig, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TEMPLATE, DEFAULT_TIMEOUT_SECONDS, DEFAULT_WATCHDOG_GRACE_SECONDS, MAX_MAX_ATTEMPTS,
    MAX_TIMEOUT_SECONDS, MAX_WATCHDOG_GRACE_SECONDS,
};
pub use errors::{
    classify, describe, is_retriable_error, to_provider_error, ErrorClass, THROTTLING_ERRORS,
    TRANSIENT_ERRORS,
};
pub use logs::{decode_tail, log_group};
pub use payload::{
    function_error_message, redact_tokens, result_summary, PAYLOAD_PLACEHOLDERS, SUMMARY_LIMIT,
};
pub use results::{parse_record, DestinationRecord, QueuedResult, ResultSource, ResultsMap};

/// The pool type served by [`AwsLambdaProvider`].
pub const POOL_TYPE: &str = "aws-lambda:push";

/// Prefix of the infrastructure ids returned by [`AwsLambdaProvider`].
pub const ID_PREFIX: &str = "aws-lambda:";

/// Largest synchronous payload Lambda accepts (6 MB).
pub const SYNC_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

/// Largest asynchronous payload Lambda accepts (1 MB; older accounts 256 KB, Lambda says so).
pub const ASYNC_PAYLOAD_LIMIT: usize = 1024 * 1024;

/// First pause between pushpool's own retries of a synchronous invoke; doubles up to
/// [`RETRY_MAX_DELAY`].
const RETRY_MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between pushpool's own retries.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);
/// How long a finished synchronous result nobody asked for is kept.
const FINISHED_TTL: Duration = Duration::from_secs(3600);
/// Receive calls per results-queue check.
const RECEIVE_ROUNDS: usize = 3;
/// How long a received record is hidden from other readers while this provider holds it.
const OWN_VISIBILITY_SECONDS: i32 = 60;
/// How long a record for a run this provider does not watch is hidden before others may read it.
const OTHERS_VISIBILITY_SECONDS: i32 = 5;

/// Why an infrastructure id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfraIdError {
    /// The id does not have the `aws-lambda:<sync|event>:<ms>:<key>:<function>` form.
    #[error("`{0}` is not an aws-lambda:push infrastructure id (aws-lambda:<sync|event>:<submitted unix ms>:<request key>:<function>)")]
    Malformed(String),
}

/// What an infrastructure id of this provider says: how and when which function was invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfraId {
    /// Synchronous or asynchronous.
    pub mode: InvocationType,
    /// When the invocation was submitted (Unix milliseconds); the base of the watchdog.
    pub submitted_ms: u64,
    /// A local key (synchronous) or Lambda's request id (asynchronous).
    pub key: String,
    /// The function name or ARN as configured.
    pub function: String,
}

impl fmt::Display for InfraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            InvocationType::RequestResponse => "sync",
            InvocationType::Event => "event",
        };
        write!(
            f,
            "{ID_PREFIX}{mode}:{}:{}:{}",
            self.submitted_ms, self.key, self.function
        )
    }
}

impl FromStr for InfraId {
    type Err = InfraIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InfraIdError::Malformed(s.to_string());
        let rest = s.strip_prefix(ID_PREFIX).ok_or_else(bad)?;
        let mut parts = rest.splitn(4, ':');
        let mode = match parts.next() {
            Some("sync") => InvocationType::RequestResponse,
            Some("event") => InvocationType::Event,
            _ => return Err(bad()),
        };
        let submitted_ms = parts
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(bad)?;
        let key = parts.next().filter(|k| !k.is_empty()).ok_or_else(bad)?;
        let function = parts.next().filter(|f| !f.is_empty()).ok_or_else(bad)?;
        Ok(InfraId {
            mode,
            submitted_ms,
            key: key.to_string(),
            function: function.to_string(),
        })
    }
}

impl InfraId {
    /// Time since the submission (zero when the clock went backwards).
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.submitted_ms))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A synchronous invocation running on a background task of this provider.
struct SyncJob {
    outcome: Arc<Mutex<Option<(JobStatus, Instant)>>>,
    /// Turns `true` once `outcome` is set, for [`Provider::wait_ended`].
    ended: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

/// Invokes AWS Lambda functions (pool type `aws-lambda:push`).
#[derive(Default)]
pub struct AwsLambdaProvider {
    clients: ClientCache,
    sync_jobs: Mutex<HashMap<String, SyncJob>>,
    /// Event invocations whose status was asked, with their record once read.
    watched: Mutex<ResultsMap>,
    queue_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Request ids of answered synchronous invocations (for their CloudWatch logs).
    request_ids: Arc<logs::RequestIds>,
}

impl fmt::Debug for AwsLambdaProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsLambdaProvider")
            .field("sync_jobs", &lock(&self.sync_jobs).len())
            .field("watched", &lock(&self.watched).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AwsLambdaProvider {
    /// A provider that knows no invocations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The parsed default base job template (this crate's `template.json`).
    pub fn template() -> Value {
        pushpool_provider::builtin_template(DEFAULT_TEMPLATE)
    }

    /// Synchronous invocations this provider is waiting for or holds a result of.
    pub fn tracked_invocations(&self) -> usize {
        lock(&self.sync_jobs).len()
    }

    fn sweep_finished(&self) {
        lock(&self.sync_jobs).retain(|_, job| match &*lock(&job.outcome) {
            Some((_, at)) => at.elapsed() < FINISHED_TTL,
            None => true,
        });
    }

    fn queue_lock(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.queue_locks)
            .entry(url.to_string())
            .or_default()
            .clone()
    }

    fn cached_result(&self, source: &ResultSource, request_id: &str) -> Option<JobStatus> {
        lock(&self.watched)
            .result(source, request_id)
            .map(|r| r.status.clone())
    }

    /// Reads the results queue for the record of `id`'s request; keeps records of other runs this
    /// provider watches on the same queue, and hands the rest back to the queue for other
    /// controllers.
    async fn check_queue(
        &self,
        source: &ResultSource,
        id: &InfraId,
        job: &LambdaJobConfig,
    ) -> Result<Option<JobStatus>, ProviderError> {
        let queue_url = source.queue_url.as_str();
        lock(&self.watched).watch(source, &id.key);
        if let Some(s) = self.cached_result(source, &id.key) {
            return Ok(Some(s));
        }
        let queue = self.queue_lock(queue_url);
        let _reading = queue.lock().await;
        if let Some(s) = self.cached_result(source, &id.key) {
            return Ok(Some(s));
        }
        let clients = self.clients.get(job).await;
        for _ in 0..RECEIVE_ROUNDS {
            let out = clients
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(OWN_VISIBILITY_SECONDS)
                .send()
                .await
                .map_err(|e| {
                    to_provider_error(&e, &format!("reading the results queue `{queue_url}`"))
                })?;
            let messages = out.messages();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let record = m.body().and_then(|body| parse_record(body, &id.function));
                let receipt = m.receipt_handle().map(str::to_string);
                let mine =
                    record.is_some_and(|r| lock(&self.watched).offer(source, r, receipt.clone()));
                if !mine {
                    if let Some(receipt) = receipt {
                        let _ = clients
                            .sqs
                            .change_message_visibility()
                            .queue_url(queue_url)
                            .receipt_handle(receipt)
                            .visibility_timeout(OTHERS_VISIBILITY_SECONDS)
                            .send()
                            .await;
                    }
                }
            }
            if self.cached_result(source, &id.key).is_some() {
                break;
            }
        }
        Ok(self.cached_result(source, &id.key))
    }
}

async fn invoke(
    clients: &Clients,
    job: &LambdaJobConfig,
    body: Vec<u8>,
) -> Result<InvokeOutput, aws_sdk_lambda::error::SdkError<InvokeError>> {
    clients
        .lambda
        .invoke()
        .function_name(&job.function_name)
        .set_qualifier(job.qualifier.clone())
        .invocation_type(aws_sdk_lambda::types::InvocationType::from(
            job.invocation_type.as_str(),
        ))
        // The last 4 KB of the log with a synchronous answer (docs/error-summaries.md).
        .set_log_type(
            (job.invocation_type == InvocationType::RequestResponse)
                .then_some(aws_sdk_lambda::types::LogType::Tail),
        )
        .payload(Blob::new(body))
        .send()
        .await
}

/// What a synchronous answer means for the run.
fn sync_outcome(job: &LambdaJobConfig, out: &InvokeOutput) -> JobStatus {
    let payload = out.payload().map(|b| b.as_ref()).unwrap_or_default();
    match out.function_error() {
        Some(kind) => JobStatus::Failed {
            message: function_error_message(kind, payload),
        },
        None => JobStatus::Completed {
            summary: Some(result_summary(&job.function_name, payload)),
        },
    }
}

/// The background task of a synchronous invocation: calls `Invoke`, retrying what the SDK
/// classifies as retriable until `timeout_seconds` after the submission.
async fn run_sync(
    clients: Clients,
    job: Arc<LambdaJobConfig>,
    body: Vec<u8>,
    started: Instant,
    logs: Arc<dyn LogSink>,
    tail: (String, Arc<logs::RequestIds>),
) -> JobStatus {
    let deadline = started + job.timeout();
    let mut delay = RETRY_MIN_DELAY;
    let mut calls = 0u32;
    let mut last_error: Option<String> = None;
    let gave_up = |calls: u32, last_error: Option<String>| {
        let waited = started.elapsed().as_secs_f64();
        match last_error {
            Some(e) => JobStatus::Crashed {
                message: format!(
                    "invoking Lambda function `{}` kept failing for {waited:.1}s ({calls} call{}, each with up to {} SDK attempts) until timeout_seconds = {}s passed; the last error: {e}",
                    job.function_name,
                    if calls == 1 { "" } else { "s" },
                    job.max_attempts,
                    job.timeout_seconds
                ),
            },
            None => JobStatus::Crashed {
                message: format!(
                    "no result from Lambda function `{}` within timeout_seconds = {}s; Lambda cannot stop an invocation, so the function may still be running",
                    job.function_name, job.timeout_seconds
                ),
            },
        }
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return gave_up(calls, last_error);
        }
        calls += 1;
        let answer = tokio::time::timeout(remaining, invoke(&clients, &job, body.clone())).await;
        let err = match answer {
            Err(_) => return gave_up(calls, last_error),
            Ok(Ok(out)) => {
                logs::write_tail(&out, &tail.0, &tail.1, logs.as_ref());
                return sync_outcome(&job, &out);
            }
            Ok(Err(e)) => e,
        };
        match classify(&err) {
            ErrorClass::Transient { retry_after } => {
                let message = describe(&err);
                logs.line(
                    LogStream::System,
                    format!(
                        "invoking Lambda function `{}` failed transiently ({message}); retrying",
                        job.function_name
                    ),
                );
                last_error = Some(message);
                let remaining = deadline.saturating_duration_since(Instant::now());
                let pause = retry_after.unwrap_or(delay).max(delay).min(remaining);
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(RETRY_MAX_DELAY);
            }
            ErrorClass::NotFound | ErrorClass::Permanent => {
                let target = clients.describe_target(&job).await;
                return JobStatus::Crashed {
                    message: format!(
                        "invoking {target} failed: {}; check the function name, qualifier, region and the credentials' permissions (lambda:InvokeFunction)",
                        describe(&err)
                    ),
                };
            }
        }
    }
}

#[async_trait]
impl Provider for AwsLambdaProvider {
    type JobConfig = LambdaJobConfig;

    fn pool_type(&self) -> &'static str {
        POOL_TYPE
    }

    fn default_base_job_template(&self) -> Value {
        Self::template()
    }

    /// Lambda's default Invoke rate is 10 x the account's concurrency (1,000) per second and
    /// region; 100/s per pool per controller stays far inside it and smooths bursts.
    fn default_submit_rate(&self) -> Option<f64> {
        Some(100.0)
    }

    fn validate(&self, rendered: &Value) -> Result<LambdaJobConfig, ProviderError> {
        LambdaJobConfig::from_rendered(rendered)
    }

    /// Every assumed role gets the workspace's `ExternalId`.
    fn validate_in(
        &self,
        rendered: &Value,
        workspace_id: &str,
    ) -> Result<LambdaJobConfig, ProviderError> {
        Ok(LambdaJobConfig::from_rendered(rendered)?.in_workspace(workspace_id))
    }

    fn needs(&self, rendered: &Value) -> Vec<pushpool_provider::Need> {
        config::needs(rendered)
    }

    /// The role's external id, and static keys should someone put them in a template anyway
    /// (validation refuses them, but stored variables are still masked).
    fn secret_fields(&self) -> &'static [&'static str] {
        &[
            "external_id",
            "aws_secret_access_key",
            "aws_session_token",
            "secret_access_key",
            "session_token",
        ]
    }

    async fn submit(&self, run: &RunSpec, job: &LambdaJobConfig) -> Result<String, ProviderError> {
        let body = payload::build(&job.payload, &job.env, run);
        let limit = match job.invocation_type {
            InvocationType::RequestResponse => SYNC_PAYLOAD_LIMIT,
            InvocationType::Event => ASYNC_PAYLOAD_LIMIT,
        };
        if body.len() > limit {
            return Err(ProviderError::invalid(
                "payload",
                format!(
                    "the rendered payload is {} bytes; Lambda accepts at most {limit} bytes for {} invocations",
                    body.len(),
                    job.invocation_type.as_str()
                ),
            ));
        }
        let clients = self.clients.get(job).await;
        let submitted_ms = now_ms();
        match job.invocation_type {
            InvocationType::Event => {
                let out = match invoke(&clients, job, body).await {
                    Ok(out) => out,
                    Err(e) => {
                        let context = if is_retriable_error(&e) {
                            format!(
                                "invoking Lambda function `{}` asynchronously",
                                job.function_name
                            )
                        } else {
                            format!(
                                "invoking {} asynchronously",
                                clients.describe_target(job).await
                            )
                        };
                        return Err(to_provider_error(&e, &context));
                    }
                };
                let key = out
                    .request_id()
                    .filter(|r| !r.is_empty() && !r.contains(':'))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("local-{}", uuid::Uuid::new_v4().simple()));
                let id = InfraId {
                    mode: InvocationType::Event,
                    submitted_ms,
                    key,
                    function: job.function_name.clone(),
                };
                run.logs.line(
                    LogStream::System,
                    format!(
                        "Lambda accepted the asynchronous invocation of `{}` (HTTP {}, request id {})",
                        job.function_name,
                        out.status_code(),
                        id.key
                    ),
                );
                tracing::info!(run_id = %run.run_id, infrastructure_id = %id, "invoked Lambda function asynchronously");
                Ok(id.to_string())
            }
            InvocationType::RequestResponse => {
                self.sweep_finished();
                let id = InfraId {
                    mode: InvocationType::RequestResponse,
                    submitted_ms,
                    key: uuid::Uuid::new_v4().simple().to_string(),
                    function: job.function_name.clone(),
                };
                let outcome: Arc<Mutex<Option<(JobStatus, Instant)>>> = Arc::default();
                let slot = outcome.clone();
                let job = Arc::new(job.clone());
                let logs = run.logs.clone();
                let started = Instant::now();
                let run_id = run.run_id;
                let tail = (id.key.clone(), self.request_ids.clone());
                let (ended_tx, ended) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(async move {
                    let status = run_sync(clients, job, body, started, logs, tail).await;
                    tracing::info!(%run_id, final = ?std::mem::discriminant(&status), "synchronous Lambda invocation ended");
                    *lock(&slot) = Some((status, Instant::now()));
                    ended_tx.send_replace(true);
                });
                lock(&self.sync_jobs).insert(
                    id.key.clone(),
                    SyncJob {
                        outcome,
                        ended,
                        task: task.abort_handle(),
                    },
                );
                tracing::info!(run_id = %run.run_id, infrastructure_id = %id, "invoking Lambda function synchronously");
                Ok(id.to_string())
            }
        }
    }

    /// A synchronous invocation's answer arrives on this provider's own task: the controller is
    /// told at once. Event invocations are polled.
    async fn wait_ended(&self, infrastructure_id: &str, _job: &LambdaJobConfig) -> bool {
        let Ok(id) = infrastructure_id.parse::<InfraId>() else {
            return false;
        };
        let Some(mut ended) = lock(&self.sync_jobs).get(&id.key).map(|j| j.ended.clone()) else {
            return false;
        };
        // An error: the invocation's task was aborted before answering (cancel); poll then.
        let ended = ended.wait_for(|done| *done).await.is_ok();
        ended
    }

    async fn status(
        &self,
        infrastructure_id: &str,
        job: &LambdaJobConfig,
    ) -> Result<JobStatus, ProviderError> {
        let id: InfraId = infrastructure_id
            .parse()
            .map_err(|e: InfraIdError| ProviderError::permanent(e.to_string()))?;
        let window = job.watchdog_window();
        match id.mode {
            InvocationType::RequestResponse => {
                if let Some(entry) = lock(&self.sync_jobs).get(&id.key) {
                    return Ok(lock(&entry.outcome)
                        .as_ref()
                        .map(|(s, _)| s.clone())
                        .unwrap_or(JobStatus::Running));
                }
                if id.age() < window {
                    return Ok(JobStatus::Unobservable);
                }
                Ok(JobStatus::Crashed {
                    message: format!(
                        "no result for the synchronous invocation of Lambda function `{}`: the controller that made it stopped before the answer came (a synchronous result cannot be fetched later) and no report came through the run API within timeout_seconds + watchdog_grace_seconds = {}s of the submission; the function may or may not have finished",
                        id.function,
                        window.as_secs()
                    ),
                })
            }
            InvocationType::Event => {
                if let Some(source) = ResultSource::of(job) {
                    if let Some(status) = self.check_queue(&source, &id, job).await? {
                        return Ok(status);
                    }
                }
                if id.age() < window {
                    return Ok(JobStatus::Running);
                }
                let where_from = match &job.result_queue_url {
                    Some(q) => format!("no report through the run API and no destination record in the results queue `{q}`"),
                    None => "no report through the run API, and no result_queue_url is set to read Lambda's destination records from".to_string(),
                };
                Ok(JobStatus::Crashed {
                    message: format!(
                        "no word about the asynchronous invocation {} of Lambda function `{}` within timeout_seconds + watchdog_grace_seconds = {}s of the submission: {where_from}; the function failed, timed out, was throttled or is still queued (Lambda keeps events up to 6 hours and retries failures twice)",
                        id.key,
                        id.function,
                        window.as_secs()
                    ),
                })
            }
        }
    }

    /// Lambda cannot stop an invocation: this stops waiting for it (a synchronous call is
    /// dropped, the function may still run to its end) and answers
    /// [`CancelOutcome::Unsupported`]; the job sees the cancellation through its run API.
    async fn cancel(
        &self,
        infrastructure_id: &str,
        job: &LambdaJobConfig,
        _grace: Duration,
    ) -> Result<CancelOutcome, ProviderError> {
        if let Ok(id) = infrastructure_id.parse::<InfraId>() {
            if let Some(entry) = lock(&self.sync_jobs).remove(&id.key) {
                entry.task.abort();
            }
            if let Some(source) = ResultSource::of(job) {
                lock(&self.watched).forget(&source, &id.key);
            }
        }
        Ok(CancelOutcome::Unsupported)
    }

    /// Forgets the invocation and deletes its record from the results queue, now that the run's
    /// final state is stored.
    async fn cleanup(
        &self,
        infrastructure_id: &str,
        job: &LambdaJobConfig,
    ) -> Result<(), ProviderError> {
        let Ok(id) = infrastructure_id.parse::<InfraId>() else {
            return Ok(());
        };
        if let Some(entry) = lock(&self.sync_jobs).remove(&id.key) {
            entry.task.abort();
        }
        let record = ResultSource::of(job).and_then(|s| lock(&self.watched).forget(&s, &id.key));
        if let Some(QueuedResult {
            source: ResultSource { queue_url, .. },
            receipt_handle: Some(receipt),
            ..
        }) = record
        {
            let clients = self.clients.get(job).await;
            if let Err(e) = clients
                .sqs
                .delete_message()
                .queue_url(&queue_url)
                .receipt_handle(receipt)
                .send()
                .await
            {
                tracing::warn!(infrastructure_id, error = %describe(&e), "could not delete the result record from the results queue");
            }
        }
        Ok(())
    }

    fn reads_logs(&self) -> bool {
        true
    }

    /// The invocation's lines from CloudWatch Logs (`/aws/lambda/<function>`, filtered by the
    /// request id); nothing for a synchronous invocation that has not answered yet (its request
    /// id comes with the answer, with the log tail).
    async fn read_logs(
        &self,
        infrastructure_id: &str,
        job: &LambdaJobConfig,
        cursor: &mut pushpool_provider::LogCursor,
    ) -> Result<Vec<pushpool_provider::ProviderLogLine>, ProviderError> {
        let Ok(id) = infrastructure_id.parse::<InfraId>() else {
            return Ok(vec![]);
        };
        let Some(request_id) = self.request_ids.of(&id) else {
            return Ok(vec![]);
        };
        let clients = self.clients.get(job).await;
        logs::read(&clients, &id, &request_id, cursor).await
    }

    fn summarize(&self, end: &pushpool_provider::RunEnd<'_>) -> pushpool_provider::ErrorSummary {
        logs::summarize(end)
    }

    /// Lambda's `Invoke` takes no idempotency token and there is no API listing invocations, so
    /// whether an attempt was invoked cannot be proven either way: always [`Lookup::Unknown`].
    async fn lookup(
        &self,
        _run: &RunSpec,
        _job: &LambdaJobConfig,
    ) -> Result<Lookup, ProviderError> {
        Ok(Lookup::Unknown)
    }
}

#[cfg(test)]
mod tests;
