//! Prefect's JSON to pushpool's model: flow runs, work pools and deployments as the controller
//! knows them. Prefect has no workspaces inside one API URL: every object belongs to the one
//! workspace [`PREFECT_WORKSPACE`].

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::{Deployment, FlowRun, State, WorkPool};
use crate::state::{RetryPolicy, StateType};

/// The workspace id every object read from a Prefect API gets (one API URL is one namespace:
/// a self-hosted server, or one Prefect Cloud workspace).
pub const PREFECT_WORKSPACE: Uuid = Uuid::nil();

/// What pushpool reads of a Prefect state.
#[derive(Debug, Clone, Deserialize)]
pub struct PfState {
    /// The state's id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// `SCHEDULED`, `PENDING`, …
    #[serde(rename = "type")]
    pub state_type: String,
    /// The sub-state name.
    #[serde(default)]
    pub name: Option<String>,
    /// The message.
    #[serde(default)]
    pub message: Option<String>,
    /// When it was entered.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
}

/// What pushpool reads of a Prefect flow run.
#[derive(Debug, Clone, Deserialize)]
pub struct PfFlowRun {
    /// Id.
    pub id: Uuid,
    /// Generated name (`discreet-labradoodle`).
    #[serde(default)]
    pub name: String,
    /// The flow.
    #[serde(default)]
    pub flow_id: Option<Uuid>,
    /// The deployment.
    #[serde(default)]
    pub deployment_id: Option<Uuid>,
    #[serde(default)]
    work_queue_name: Option<String>,
    #[serde(default)]
    work_queue_id: Option<Uuid>,
    /// The work pool's name.
    #[serde(default)]
    pub work_pool_name: Option<String>,
    #[serde(default)]
    work_pool_id: Option<Uuid>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    job_variables: Option<Map<String, Value>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    state_type: Option<String>,
    #[serde(default)]
    state_name: Option<String>,
    /// The current state (absent in `get_scheduled_flow_runs` answers).
    #[serde(default)]
    pub state: Option<PfState>,
    #[serde(default)]
    run_count: i64,
    #[serde(default)]
    expected_start_time: Option<DateTime<Utc>>,
    /// When the run is due.
    #[serde(default)]
    pub next_scheduled_start_time: Option<DateTime<Utc>>,
    /// The infrastructure's id, once recorded.
    #[serde(default)]
    pub infrastructure_pid: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    updated: Option<DateTime<Utc>>,
}

impl PfFlowRun {
    /// Reads a flow run from Prefect's JSON.
    pub fn parse(value: &Value) -> Result<Self, String> {
        serde_json::from_value(value.clone()).map_err(|e| format!("unexpected flow run JSON: {e}"))
    }

    /// The state type (unknown names read as SCHEDULED, which pushpool never acts on alone).
    pub fn state_type(&self) -> Option<StateType> {
        let name = self
            .state
            .as_ref()
            .map(|s| s.state_type.as_str())
            .or(self.state_type.as_deref())?;
        name.parse().ok()
    }

    /// When the run is due.
    pub fn due(&self) -> Option<DateTime<Utc>> {
        self.next_scheduled_start_time.or(self.expected_start_time)
    }

    /// The run in pushpool's model. `pool` fills what Prefect leaves out of some answers (the
    /// pool's name and id); `holder` is the controller holding it, if any.
    pub fn to_model(&self, pool: Option<(&str, Uuid)>, holder: Option<&str>) -> FlowRun {
        let now = Utc::now();
        let state_type = self.state_type().unwrap_or(StateType::Scheduled);
        let state = match &self.state {
            Some(s) => State {
                state_type,
                name: s
                    .name
                    .clone()
                    .unwrap_or_else(|| state_type.default_name().into()),
                message: s.message.clone(),
                timestamp: s.timestamp.unwrap_or(now),
            },
            None => State {
                state_type,
                name: self
                    .state_name
                    .clone()
                    .unwrap_or_else(|| state_type.default_name().into()),
                message: None,
                timestamp: self.updated.unwrap_or(now),
            },
        };
        let deployment_id = self.deployment_id.unwrap_or_default();
        FlowRun {
            id: self.id,
            workspace_id: PREFECT_WORKSPACE,
            deployment_id,
            deployment: deployment_id.to_string(),
            work_pool: self
                .work_pool_name
                .clone()
                .or_else(|| pool.map(|p| p.0.to_string()))
                .unwrap_or_default(),
            work_pool_id: self
                .work_pool_id
                .or_else(|| pool.map(|p| p.1))
                .unwrap_or_default(),
            work_queue: self.work_queue_name.clone().unwrap_or_default(),
            work_queue_id: self.work_queue_id.unwrap_or_default(),
            parameters: self.parameters.clone().unwrap_or_default(),
            job_variables: self.job_variables.clone().unwrap_or_default(),
            scheduled_time: self.due().unwrap_or(now),
            state,
            // Stable between the claim and an adoption (run_count grows only when the flow
            // starts RUNNING), so providers' deterministic names find the same job.
            error_summary: None,
            attempt: self.run_count.max(0) + 1,
            infrastructure_id: self.infrastructure_pid.clone().filter(|s| !s.is_empty()),
            idempotency_key: self.idempotency_key.clone(),
            lease_owner: holder.map(str::to_string),
            lease_expires: None,
            last_heartbeat: None,
            created: self.created.unwrap_or(now),
            updated: self.updated.unwrap_or(now),
            // Prefect's server applies its own retry rules to its runs; pushpool's store rule
            // (docs/retries.md) does not run in Prefect mode.
            retry: RetryPolicy::default(),
            tags: self.tags.clone().unwrap_or_default(),
        }
    }
}

/// What pushpool reads of a Prefect work pool.
#[derive(Debug, Clone, Deserialize)]
pub struct PfWorkPool {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Type (`process`, `cloud-run-v2:push`, …).
    #[serde(rename = "type")]
    pub pool_type: String,
    #[serde(default)]
    description: Option<String>,
    /// `{"job_configuration", "variables"}`.
    #[serde(default)]
    pub base_job_template: Value,
    #[serde(default)]
    concurrency_limit: Option<i64>,
    /// Paused pools are not served.
    #[serde(default)]
    pub is_paused: bool,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    updated: Option<DateTime<Utc>>,
}

impl PfWorkPool {
    /// Reads a work pool from Prefect's JSON.
    pub fn parse(value: &Value) -> Result<Self, String> {
        serde_json::from_value(value.clone()).map_err(|e| format!("unexpected work pool JSON: {e}"))
    }

    /// The pool in pushpool's model; `template` is the base job template to render from (the
    /// pool's own, prepared by the caller).
    pub fn to_model(&self, template: Value) -> WorkPool {
        let now = Utc::now();
        WorkPool {
            id: self.id,
            workspace_id: PREFECT_WORKSPACE,
            name: self.name.clone(),
            pool_type: self.pool_type.clone(),
            description: self.description.clone(),
            base_job_template: template,
            concurrency_limit: self.concurrency_limit,
            paused: self.is_paused,
            created: self.created.unwrap_or(now),
            updated: self.updated.unwrap_or(now),
            submit_rate: None,
            overridable_variables: None,
            aws_external_id: None,
        }
    }
}

/// What pushpool reads of a Prefect deployment.
#[derive(Debug, Clone, Deserialize)]
pub struct PfDeployment {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    #[serde(default)]
    work_pool_name: Option<String>,
    #[serde(default)]
    work_queue_name: Option<String>,
    #[serde(default)]
    work_queue_id: Option<Uuid>,
    #[serde(default)]
    job_variables: Option<Map<String, Value>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    concurrency_limit: Option<i64>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    /// Last change.
    #[serde(default)]
    pub updated: Option<DateTime<Utc>>,
}

impl PfDeployment {
    /// Reads a deployment from Prefect's JSON.
    pub fn parse(value: &Value) -> Result<Self, String> {
        serde_json::from_value(value.clone())
            .map_err(|e| format!("unexpected deployment JSON: {e}"))
    }

    /// The deployment in pushpool's model (`pool_id` from the run).
    pub fn to_model(&self, pool_id: Uuid) -> Deployment {
        let now = Utc::now();
        Deployment {
            id: self.id,
            workspace_id: PREFECT_WORKSPACE,
            name: self.name.clone(),
            work_pool: self.work_pool_name.clone().unwrap_or_default(),
            work_pool_id: pool_id,
            work_queue: self.work_queue_name.clone().unwrap_or_default(),
            work_queue_id: self.work_queue_id.unwrap_or_default(),
            job_variables: self.job_variables.clone().unwrap_or_default(),
            parameters: self.parameters.clone().unwrap_or_default(),
            concurrency_limit: self.concurrency_limit,
            paused: self.paused,
            created: self.created.unwrap_or(now),
            updated: self.updated.unwrap_or(now),
            retry: RetryPolicy::default(),
            tags: self.tags.clone().unwrap_or_default(),
        }
    }
}
