//! Domain types: what the store keeps and the API shows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::state::{RetryPolicy, StateType};

/// Microseconds since the Unix epoch, the store's time unit.
pub type Micros = i64;

/// Now, in store units.
pub fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

/// Store units to a UTC timestamp.
pub fn from_micros(us: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A UTC timestamp to store units.
pub fn to_micros(t: DateTime<Utc>) -> Micros {
    t.timestamp_micros()
}

/// A tenant: every other object belongs to exactly one workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Workspace {
    /// Id.
    pub id: Uuid,
    /// Unique name, used in API paths.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
}

/// A push work pool: a provider type plus the base job template its runs are rendered from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkPool {
    /// Id.
    pub id: Uuid,
    /// Owning workspace.
    pub workspace_id: Uuid,
    /// Name, unique in the workspace.
    pub name: String,
    /// Provider pool type, e.g. `process`.
    #[serde(rename = "type")]
    pub pool_type: String,
    /// Free text.
    pub description: Option<String>,
    /// `{"job_configuration":…, "variables":…}`.
    #[schemars(with = "BaseJobTemplateDoc")]
    pub base_job_template: Value,
    /// Most runs of this pool in PENDING, RUNNING or CANCELLING at once.
    pub concurrency_limit: Option<i64>,
    /// A paused pool's runs are not claimed.
    pub paused: bool,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// Most submissions per second per controller; `None` means the provider's default.
    pub submit_rate: Option<f64>,
    /// The job variables a run may override (run-level `job_variables`); `None` means any
    /// variable of the template's schema, `[]` none. Deployment-level job variables are not
    /// restricted by it.
    #[serde(default)]
    pub overridable_variables: Option<Vec<String>>,
    /// `aws-lambda:push` pools: the `ExternalId` every `AssumeRole` of this workspace's jobs
    /// passes (`pushpool-<workspace id>`); require it in the role's trust policy. Shown, never
    /// stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_external_id: Option<String>,
}

/// A queue inside a pool; every pool has `default`. Lower priority numbers are claimed first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkQueue {
    /// Id.
    pub id: Uuid,
    /// Owning pool.
    pub pool_id: Uuid,
    /// Name, unique in the pool.
    pub name: String,
    /// 1 is the highest priority.
    pub priority: i64,
    /// Most active runs of this queue at once.
    pub concurrency_limit: Option<i64>,
    /// A paused queue's runs are not claimed.
    pub paused: bool,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
}

/// A deployment: a pool, a queue, and job-variable and parameter overrides for its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deployment {
    /// Id.
    pub id: Uuid,
    /// Owning workspace.
    pub workspace_id: Uuid,
    /// Name, unique in the workspace.
    pub name: String,
    /// Pool name.
    pub work_pool: String,
    /// Pool id.
    pub work_pool_id: Uuid,
    /// Queue name.
    pub work_queue: String,
    /// Queue id.
    pub work_queue_id: Uuid,
    /// Overrides of the pool template's variables.
    pub job_variables: Map<String, Value>,
    /// Default flow parameters of its runs.
    pub parameters: Map<String, Value>,
    /// Most active runs of this deployment at once.
    pub concurrency_limit: Option<i64>,
    /// A paused deployment's runs are not claimed.
    pub paused: bool,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    // Retries and tags (issue 13): copied onto each new run.
    /// The retry policy its runs get (`retries`, `retry_delay_seconds`, …; docs/retries.md).
    #[serde(flatten)]
    pub retry: RetryPolicy,
    /// Tags; its runs inherit them.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A run's current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct State {
    /// State type.
    #[serde(rename = "type")]
    pub state_type: StateType,
    /// Sub-state name, e.g. `Late` or `InfrastructurePending`.
    pub name: String,
    /// Why (failure message, what to fix).
    pub message: Option<String>,
    /// When the state was entered.
    pub timestamp: DateTime<Utc>,
}

/// One accepted state transition of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    /// State type.
    #[serde(rename = "type")]
    pub state_type: StateType,
    /// Sub-state name.
    pub name: String,
    /// Message.
    pub message: Option<String>,
    /// When it was accepted.
    pub timestamp: DateTime<Utc>,
    /// The proposal's idempotency id.
    pub transition_id: String,
}

/// A flow run of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FlowRun {
    /// UUID v7 id.
    pub id: Uuid,
    /// Owning workspace.
    pub workspace_id: Uuid,
    /// Deployment id.
    pub deployment_id: Uuid,
    /// Deployment name.
    pub deployment: String,
    /// Pool name.
    pub work_pool: String,
    /// Pool id.
    pub work_pool_id: Uuid,
    /// Queue name.
    pub work_queue: String,
    /// Queue id.
    pub work_queue_id: Uuid,
    /// Flow parameters.
    pub parameters: Map<String, Value>,
    /// Run-level job-variable overrides.
    pub job_variables: Map<String, Value>,
    /// When it is due.
    pub scheduled_time: DateTime<Utc>,
    /// Current state.
    pub state: State,
    /// Why it failed: present on a FAILED or CRASHED run whose controller computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ErrorSummaryDoc>")]
    pub error_summary: Option<pushpool_provider::ErrorSummary>,
    /// Attempt number, from 1.
    pub attempt: i64,
    /// The provider's id of the job, once submitted.
    pub infrastructure_id: Option<String>,
    /// Client-chosen key; a repeated key returns the same run.
    pub idempotency_key: Option<String>,
    /// Controller holding the run's lease.
    pub lease_owner: Option<String>,
    /// When that lease runs out.
    pub lease_expires: Option<DateTime<Utc>>,
    /// Last heartbeat reported by the job.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    // Retries and tags (issue 13).
    /// Its retry policy: the deployment's with the run's overrides, fixed at creation.
    #[serde(flatten)]
    pub retry: RetryPolicy,
    /// Its deployment's tags and its own.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An event, shaped like Prefect's (docs/events.md): one per accepted transition and per
/// mutation, plus the controller's own (late runs, throttling, start/stop, rescued leases).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Id (UUID v7, so ids sort by time).
    pub id: Uuid,
    /// The cursor: a number the store assigns on write, increasing with each event written.
    /// Paging and the live stream resume from it (docs/events.md on commit order).
    pub seq: i64,
    /// Workspace.
    pub workspace_id: Uuid,
    /// When it happened.
    pub occurred: DateTime<Utc>,
    /// Name, e.g. `pushpool.flow-run.Failed` or `pushpool.work-pool.created`.
    pub event: String,
    /// What it happened to.
    pub resource: EventResource,
    /// Other resources it concerns (the run's deployment, pool, queue, workspace and tags).
    #[serde(default)]
    pub related: Vec<RelatedResource>,
    /// Details.
    pub payload: Value,
}

/// The resource an event is about.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct EventResource {
    /// `pushpool.<kind>.<id or name>`, e.g. `pushpool.flow-run.0190…`.
    pub id: String,
    /// Facts about it, e.g. `pushpool.state-type`: `FAILED`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A resource an event concerns besides its own.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct RelatedResource {
    /// `pushpool.<kind>.<id or name>`, e.g. `pushpool.deployment.0190…` or `pushpool.tag.nightly`.
    pub id: String,
    /// What it is to the event: `deployment`, `work-pool`, `work-queue`, `workspace`, `tag`, ….
    pub role: String,
    /// Facts about it, e.g. `pushpool.resource.name`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One line of a run's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// The line's id (UUID v7, increasing in the order lines were stored): pass the last one
    /// seen as `after` to read only newer lines (`run logs --follow`).
    #[serde(default)]
    pub id: String,
    /// When it was written: the provider log entry's own time for `provider` lines, else when
    /// pushpool received it.
    pub timestamp: DateTime<Utc>,
    /// `stdout`, `stderr`, `system` or `provider`.
    #[schemars(with = "LogSource")]
    pub stream: String,
    /// The text, without newline.
    pub line: String,
}

/// A base job template, Prefect's shape: the job configuration with `{{ placeholders }}`, and
/// the JSON Schema of the variables that fill them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaseJobTemplateDoc {
    /// The provider's job configuration, with `{{ placeholders }}`.
    pub job_configuration: Map<String, Value>,
    /// JSON Schema (`{"type": "object", "properties": {…}}`) of the variables.
    pub variables: Map<String, Value>,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The job's standard output.
    Stdout,
    /// The job's standard error.
    Stderr,
    /// pushpool itself (submission, status changes).
    System,
    /// The provider's log service (CloudWatch Logs, Cloud Logging, Lambda's log tail).
    Provider,
}

/// Why a FAILED or CRASHED run failed (docs/error-summaries.md): computed by the controller from
/// the provider's status and the run's last log lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorSummaryDoc {
    /// A short stable cause.
    pub cause: CauseDoc,
    /// One line for a human.
    pub explanation: String,
    /// The few status and log lines that show the cause (at most 4).
    pub evidence: Vec<String>,
}

/// The stable causes of an error summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CauseDoc {
    /// Ran out of time (own timeout, the provider's, or pushpool's watchdog).
    Timeout,
    /// Ran out of memory.
    OutOfMemory,
    /// A call was refused for lack of permission.
    PermissionDenied,
    /// The image, function or a file does not exist.
    NotFound,
    /// A rate or concurrency limit refused the work.
    Throttled,
    /// The job configuration is not usable.
    InvalidConfiguration,
    /// The job's own code failed (exception, non-zero exit code).
    UserCodeError,
    /// The infrastructure went away or pushpool lost sight of it.
    InfrastructureLost,
    /// The provider cancelled the job.
    CancelledByProvider,
    /// No rule recognised it.
    Unknown,
}

impl JsonSchema for StateType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StateType".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = crate::state::ALL_STATE_TYPES
            .iter()
            .map(|s| s.as_str())
            .collect();
        schemars::json_schema!({
            "type": "string",
            "enum": names,
            "description": "A Prefect state type; named sub-states (`Late`, `Submitting`, …) keep their type.",
        })
    }
}
