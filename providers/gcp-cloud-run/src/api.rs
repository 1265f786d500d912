//! The Cloud Run Admin API v2 through the official `google-cloud-run-v2` crate (HTTP/JSON REST),
//! authenticated with `google-cloud-auth`.
//!
//! Answers are handed to the rest of the provider as JSON (the models' own serde form), and
//! errors are classified into [`ProviderError`] classes: 408, 429, 500, 502, 503, 504, the
//! google.rpc status `ABORTED` (a concurrency conflict, HTTP 409), timeouts and connection
//! failures are transient; 404 is not-found; `ALREADY_EXISTS` is recognised by its status name
//! (HTTP 409 is shared with `ABORTED`); everything else is permanent. The client's own retry loop is switched off (`NeverRetry`): the controller
//! retries transient errors with its own backoff and deadlines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use google_cloud_gax::options::RequestOptionsBuilder as _;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_run_v2::client::{Executions, Jobs};
use pushpool_provider::ProviderError;
use serde_json::Value;

use crate::config::{CloudRunJobConfig, Credentials};

/// Per-request timeout of Admin API calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How to give the provider credentials; part of every error about missing or unusable ones.
pub const HOW_TO_PROVIDE_CREDENTIALS: &str = "provide credentials with the `credentials` job variable ({\"service_account_file\": PATH} or {\"service_account_info\": {…}}), with GOOGLE_APPLICATION_CREDENTIALS on the controller, or by running the controller on Google Cloud, where the metadata server provides them";

/// What the controller's machine offers as Application Default Credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmbientCredentials {
    /// A credentials file: `GOOGLE_APPLICATION_CREDENTIALS` or gcloud's
    /// `application_default_credentials.json`.
    File(PathBuf),
    /// No file, but the machine is on Google Cloud: the metadata server hands out tokens.
    MetadataServer,
    /// Nothing: Application Default Credentials cannot work here.
    Nothing,
}

impl AmbientCredentials {
    /// Looks at the environment and the machine (no network call).
    pub fn detect() -> Self {
        if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            return AmbientCredentials::File(path.into());
        }
        let gcloud = std::env::var_os("HOME").map(|home| {
            PathBuf::from(home).join(".config/gcloud/application_default_credentials.json")
        });
        if let Some(path) = gcloud.filter(|p| p.is_file()) {
            return AmbientCredentials::File(path);
        }
        if on_google_cloud() {
            AmbientCredentials::MetadataServer
        } else {
            AmbientCredentials::Nothing
        }
    }
}

/// True where a metadata server answers: the metadata host is configured, a Google Cloud
/// serverless runtime says so in its environment, or the machine is a Compute Engine VM.
fn on_google_cloud() -> bool {
    const RUNTIME_VARS: &[&str] = &[
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
        "K_SERVICE",
        "CLOUD_RUN_JOB",
        "FUNCTION_TARGET",
        "GAE_APPLICATION",
    ];
    RUNTIME_VARS.iter().any(|v| std::env::var_os(v).is_some())
        || std::fs::read_to_string("/sys/class/dmi/id/product_name")
            .is_ok_and(|name| name.trim_start().starts_with("Google"))
}

/// An Admin API failure, before it is mapped to a [`ProviderError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error envelope.
    #[error("HTTP {code} {status}: {message}")]
    Status {
        /// HTTP status code.
        code: u16,
        /// gRPC status name from the envelope (`NOT_FOUND`, `ALREADY_EXISTS`, …).
        status: String,
        /// The API's message.
        message: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, reset, timed out.
    #[error("no answer from the Cloud Run Admin API: {0}")]
    Transport(String),
    /// The credentials could not be turned into an access token.
    #[error("authentication failed: {message}")]
    Auth {
        /// What failed.
        message: String,
        /// Whether retrying may help (token endpoint unreachable, 5xx).
        transient: bool,
    },
    /// The API answered something this client cannot read.
    #[error("unexpected answer from the Cloud Run Admin API: {0}")]
    Decode(String),
}

impl ApiError {
    /// The HTTP status, when the API answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for 404 / `NOT_FOUND`.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// True for the google.rpc status `ALREADY_EXISTS` (by name: `ABORTED` is HTTP 409 too).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ApiError::Status { status, .. } if status == "ALREADY_EXISTS")
    }

    /// True when retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // ABORTED: "retry at a higher level" (AIP-194); the calls here are idempotent.
            ApiError::Status { code, status, .. } => {
                matches!(code, 408 | 429 | 500 | 502 | 503 | 504) || status == "ABORTED"
            }
            ApiError::Transport(_) => true,
            ApiError::Auth { transient, .. } => *transient,
            ApiError::Decode(_) => false,
        }
    }

    /// Maps the failure to a [`ProviderError`], prefixed with what was being done.
    pub fn into_provider(self, context: &str) -> ProviderError {
        let message = format!("{context}: {self}");
        if self.is_not_found() {
            return ProviderError::NotFound { message };
        }
        if self.is_transient() {
            let retry_after = match &self {
                ApiError::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            return ProviderError::Transient {
                message,
                retry_after,
            };
        }
        let hint = match (&self, self.code()) {
            (ApiError::Auth { .. }, _) => format!("; {HOW_TO_PROVIDE_CREDENTIALS}"),
            (_, Some(401) | Some(403)) => "; check the credentials and that their principal has roles/run.developer (and iam.serviceAccountUser on the job's service account)".into(),
            _ => String::new(),
        };
        ProviderError::permanent(format!("{message}{hint}"))
    }
}

/// The two Admin API clients for one (endpoint, credentials).
#[derive(Clone)]
struct Clients {
    jobs: Jobs,
    executions: Executions,
}

/// Talks to the Admin API; keeps one client pair per (endpoint, credentials).
#[derive(Default)]
pub struct CloudRunApi {
    clients: tokio::sync::Mutex<HashMap<String, Clients>>,
    /// What Application Default Credentials may use; `None` = [`AmbientCredentials::detect`]
    /// when a client is built.
    ambient: Option<AmbientCredentials>,
}

impl std::fmt::Debug for CloudRunApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudRunApi").finish_non_exhaustive()
    }
}

fn auth(message: String) -> ApiError {
    ApiError::Auth {
        message,
        transient: false,
    }
}

fn read_key_file(path: &str) -> Result<Value, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| auth(format!("cannot read credentials file `{path}`: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| auth(format!("credentials file `{path}` is not JSON: {e}")))
}

fn key_credentials(key: Value) -> Result<google_cloud_auth::credentials::Credentials, ApiError> {
    use google_cloud_auth::credentials::{service_account, user_account};
    match key["type"].as_str() {
        Some("service_account") => service_account::Builder::new(key)
            .build()
            .map_err(|e| auth(format!("unusable service-account key: {e}"))),
        Some("authorized_user") => user_account::Builder::new(key)
            .build()
            .map_err(|e| auth(format!("unusable authorized-user credentials: {e}"))),
        other => Err(auth(format!(
            "credentials of type {other:?} are not supported (use a service-account key or an authorized-user file)"
        ))),
    }
}

fn credentials(
    creds: &Credentials,
    ambient: &AmbientCredentials,
) -> Result<google_cloud_auth::credentials::Credentials, ApiError> {
    match creds {
        Credentials::Anonymous => {
            Ok(google_cloud_auth::credentials::anonymous::Builder::new().build())
        }
        // Without this check the client falls back to a metadata server that is not there, and
        // each call fails "transiently" until the submit deadline.
        Credentials::ApplicationDefault if *ambient == AmbientCredentials::Nothing => Err(auth(
            "no Google Cloud credentials: the job configuration names none, GOOGLE_APPLICATION_CREDENTIALS is unset, there is no gcloud application_default_credentials.json and the controller does not run on Google Cloud (no metadata server)".into(),
        )),
        Credentials::ApplicationDefault => google_cloud_auth::credentials::Builder::default()
            .build()
            .map_err(|e| auth(format!("no usable Application Default Credentials: {e}"))),
        Credentials::ServiceAccountFile(path) => key_credentials(read_key_file(path)?),
        Credentials::ServiceAccountInfo(info) => key_credentials(
            serde_json::from_str(info.expose())
                .map_err(|e| auth(format!("service_account_info is not JSON: {e}")))?,
        ),
    }
}

/// Maps an error of the official client to an [`ApiError`].
pub(crate) fn api_error(e: google_cloud_run_v2::Error) -> ApiError {
    let status = e.status();
    let code = e.http_status_code().or_else(|| {
        status.map(|s| match s.code.name() {
            "NOT_FOUND" => 404,
            "ALREADY_EXISTS" | "ABORTED" => 409,
            "RESOURCE_EXHAUSTED" => 429,
            "UNAVAILABLE" => 503,
            "DEADLINE_EXCEEDED" => 504,
            "INTERNAL" | "UNKNOWN" => 500,
            "PERMISSION_DENIED" => 403,
            "UNAUTHENTICATED" => 401,
            "FAILED_PRECONDITION" | "INVALID_ARGUMENT" | "OUT_OF_RANGE" => 400,
            _ => 400,
        })
    });
    if let Some(code) = code {
        return ApiError::Status {
            code,
            status: status
                .map(|s| s.code.name().to_string())
                .unwrap_or_default(),
            message: status
                .map(|s| s.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| e.to_string()),
            retry_after: None,
        };
    }
    if e.is_authentication() {
        return ApiError::Auth {
            message: e.to_string(),
            transient: e.is_transient_and_before_rpc(),
        };
    }
    if e.is_timeout() || e.is_io() || e.is_transport() || e.is_exhausted() {
        return ApiError::Transport(e.to_string());
    }
    ApiError::Decode(e.to_string())
}

fn to_json<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Decode(e.to_string()))
}

impl CloudRunApi {
    /// A client cache that builds clients on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `ambient` instead of detecting what the machine offers (tests, pinned set-ups).
    pub fn with_ambient_credentials(mut self, ambient: AmbientCredentials) -> Self {
        self.ambient = Some(ambient);
        self
    }

    /// The credentials this API's clients use for `job` (for the Cloud Logging client of
    /// `logs.rs`, which shares them).
    pub(crate) fn credentials_for(
        &self,
        job: &CloudRunJobConfig,
    ) -> Result<google_cloud_auth::credentials::Credentials, ApiError> {
        let ambient = self
            .ambient
            .clone()
            .unwrap_or_else(AmbientCredentials::detect);
        credentials(&job.credentials, &ambient)
    }

    async fn clients(&self, job: &CloudRunJobConfig) -> Result<Clients, ApiError> {
        let key = format!("{} {}", job.endpoint_url, job.credentials.cache_key());
        let mut cache = self.clients.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let ambient = self
            .ambient
            .clone()
            .unwrap_or_else(AmbientCredentials::detect);
        let creds = credentials(&job.credentials, &ambient)?;
        let jobs = Jobs::builder()
            .with_endpoint(job.endpoint_url.clone())
            .with_credentials(creds.clone())
            .with_retry_policy(NeverRetry)
            .build()
            .await
            .map_err(|e| auth(format!("building the Cloud Run client failed: {e}")))?;
        let executions = Executions::builder()
            .with_endpoint(job.endpoint_url.clone())
            .with_credentials(creds)
            .with_retry_policy(NeverRetry)
            .build()
            .await
            .map_err(|e| auth(format!("building the Cloud Run client failed: {e}")))?;
        let clients = Clients { jobs, executions };
        cache.insert(key, clients.clone());
        Ok(clients)
    }

    /// Reads a job, an execution or an operation by its full name.
    pub async fn get(&self, job: &CloudRunJobConfig, name: &str) -> Result<Value, ApiError> {
        let c = self.clients(job).await?;
        if name.contains("/operations/") {
            let op = c
                .jobs
                .get_operation()
                .set_name(name)
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(api_error)?;
            return to_json(op);
        }
        if name.contains("/executions/") {
            let e = c
                .executions
                .get_execution()
                .set_name(name)
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(api_error)?;
            return to_json(e);
        }
        let j = c
            .jobs
            .get_job()
            .set_name(name)
            .with_attempt_timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(api_error)?;
        to_json(j)
    }

    /// `CreateJob` (`POST /v2/{parent}/jobs?jobId={id}`); answers the operation.
    pub async fn create_job(
        &self,
        job: &CloudRunJobConfig,
        parent: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let model: google_cloud_run_v2::model::Job =
            serde_json::from_value(body.clone()).map_err(|e| {
                ApiError::Decode(format!("the job body is not a Cloud Run v2 Job: {e}"))
            })?;
        let c = self.clients(job).await?;
        let op = c
            .jobs
            .create_job()
            .set_parent(parent)
            .set_job_id(id)
            .set_job(model)
            .with_attempt_timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(api_error)?;
        to_json(op)
    }

    /// `ListExecutions` of a job (all pages).
    pub async fn list_executions(
        &self,
        job: &CloudRunJobConfig,
        job_name: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let c = self.clients(job).await?;
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = c
                .executions
                .list_executions()
                .set_parent(job_name)
                .set_page_size(100)
                .set_page_token(token.clone())
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(api_error)?;
            for e in page.executions {
                out.push(to_json(e)?);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(out)
    }

    /// `ListJobs` of a location (`projects/P/locations/R`), all pages (at most 100 of 100).
    pub async fn list_jobs(
        &self,
        job: &CloudRunJobConfig,
        parent: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let c = self.clients(job).await?;
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = c
                .jobs
                .list_jobs()
                .set_parent(parent)
                .set_page_size(100)
                .set_page_token(token.clone())
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(api_error)?;
            for j in page.jobs {
                out.push(to_json(j)?);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(out)
    }

    /// `RunJob` (`:run` on a job) or `CancelExecution` (`:cancel` on an execution); answers the
    /// operation.
    pub async fn post_verb(
        &self,
        job: &CloudRunJobConfig,
        name: &str,
        verb: &str,
    ) -> Result<Value, ApiError> {
        let c = self.clients(job).await?;
        let op = match verb {
            "run" => c
                .jobs
                .run_job()
                .set_name(name)
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(api_error)?,
            "cancel" => c
                .executions
                .cancel_execution()
                .set_name(name)
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(api_error)?,
            other => return Err(ApiError::Decode(format!("unknown verb `{other}`"))),
        };
        to_json(op)
    }

    /// `DeleteJob`; answers the operation.
    pub async fn delete(&self, job: &CloudRunJobConfig, name: &str) -> Result<Value, ApiError> {
        let c = self.clients(job).await?;
        let op = c
            .jobs
            .delete_job()
            .set_name(name)
            .with_attempt_timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(api_error)?;
        to_json(op)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A job whose credentials are this inline service-account key.
    fn job_with_key(private_key: &str) -> CloudRunJobConfig {
        let key = json!({
            "type": "service_account", "project_id": "proj",
            "client_email": "runner@proj.iam.gserviceaccount.com",
            "private_key_id": "0123456789abcdef", "private_key": private_key,
        });
        CloudRunJobConfig::from_rendered(&json!({
            "region": "us-central1", "project": "proj", "endpoint_url": "http://127.0.0.1:9",
            "credentials": {"service_account_info": key},
            "job_body": {"template": {"template": {"containers": [{"image": "img"}]}}}
        }))
        .unwrap()
    }

    /// Issue 19 item 4: workspace B copies A's `client_email` and `private_key_id` (both public:
    /// they travel in every JWT header) with a junk key. B must not be handed A's cached client
    /// (it would sign B's calls with A's key), and B's junk must not replace A's entry.
    #[tokio::test]
    async fn a_copied_email_and_key_id_never_reach_another_credentials_client() {
        let api = CloudRunApi::new();
        let a =
            job_with_key("-----BEGIN PRIVATE KEY-----\nA-real-key\n-----END PRIVATE KEY-----\n");
        let b = job_with_key("junk");
        let a_first = api.clients(&a).await.is_ok();
        let b_result = api.clients(&b).await;
        let cache = api.clients.lock().await;
        // B either fails on its own junk key or gets a client of its own, never A's entry.
        assert!(
            b_result.is_err() || cache.len() == usize::from(a_first) + 1,
            "B was served from the cache entry of A's credentials"
        );
        for key in cache.keys() {
            assert!(
                !key.contains("A-real-key") && !key.contains("junk"),
                "{key}"
            );
        }
    }
}
