//! The job a run gets, built in one place: the pool's base job template, the built-in render
//! context, the job variables resolved in layers (template defaults < deployment `job_variables`
//! < run `job_variables`), the rendered job configuration and the provider's verdict on it.
//!
//! The controller (before it submits), the preview and run-creation API (before a run is
//! accepted) and the claim API (for executors outside pushpool) all go through here, so a job and
//! the errors about it read the same wherever they are produced: every [`JobError`] names the
//! field at fault ([`JobError::field`]), the rule it broke ([`JobError::rule`]) and what to fix
//! (its `Display`).
//!
//! The template engine itself is [`template`] (`docs/templates.md`).

mod patterns;
pub mod render;
pub mod template;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pushpool_provider::{DynProvider, ProviderError, Registry, ValidatedJob};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::model::{Deployment, FlowRun, WorkPool};

pub use template::{BaseJobTemplate, TemplateError};

/// What the built-in namespaces (`flow_run`, `pushpool`) and the run-level variables say about
/// the run a job is rendered for.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts<'a> {
    /// The run's id (`flow_run.id`, `pushpool.run_id`).
    pub run_id: Uuid,
    /// The attempt number, from 1 (`flow_run.attempt`).
    pub attempt: i64,
    /// The flow parameters (`flow_run.parameters`).
    pub parameters: &'a Map<String, Value>,
    /// Run-level job-variable overrides (the top layer).
    pub job_variables: &'a Map<String, Value>,
    /// URL the job reaches the API at (`pushpool.api_url`).
    pub api_url: &'a str,
    /// The run's token (`pushpool.run_token`).
    pub run_token: &'a str,
}

impl<'a> RunFacts<'a> {
    /// The facts of a stored run, with the API URL and token its job will get.
    pub fn of_run(run: &'a FlowRun, api_url: &'a str, run_token: &'a str) -> Self {
        RunFacts {
            run_id: run.id,
            attempt: run.attempt,
            parameters: &run.parameters,
            job_variables: &run.job_variables,
            api_url,
            run_token,
        }
    }

    /// Stand-in facts for a run not created yet (preview, checks before run creation): the nil
    /// id, attempt 1, the deployment's parameters and placeholder URL and token.
    pub fn preview(deployment: &'a Deployment, job_variables: &'a Map<String, Value>) -> Self {
        RunFacts {
            run_id: Uuid::nil(),
            attempt: 1,
            parameters: &deployment.parameters,
            job_variables,
            api_url: "<api url>",
            run_token: "<run token>",
        }
    }
}

/// The built-in values a template may use besides its variables.
pub fn render_context(
    run: &RunFacts,
    deployment: &Deployment,
    pool: &WorkPool,
) -> Map<String, Value> {
    let run_id = run.run_id.to_string();
    let v = json!({
        "flow_run": {"id": run_id, "attempt": run.attempt, "parameters": run.parameters},
        "deployment": {"id": deployment.id, "name": deployment.name},
        "work_pool": {"name": pool.name, "type": pool.pool_type},
        "pushpool": {"api_url": run.api_url, "run_id": run_id, "run_token": run.run_token},
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Longest that template work done for one request or one run (checking a template, validating
/// job variables against its schema, rendering) may take before it is answered as over budget.
/// Patterns are matched in linear time ([`template::MAX_TEMPLATE_PATTERNS`]), so this is a
/// backstop, far above what any real template needs.
pub const TIME_BUDGET: Duration = Duration::from_secs(10);

/// Template work ran past [`TIME_BUDGET`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("checking the template and job variables took longer than the time budget of {} s; simplify the template's schema or the values", TIME_BUDGET.as_secs())]
pub struct OverBudget;

/// Runs template work off the async runtime (on the blocking pool), so a slow schema check never
/// holds a runtime worker, and gives up waiting after [`TIME_BUDGET`]. The work itself is not
/// stopped (a thread cannot be cancelled); the engine's limits are what bound it. A panic in the
/// work is resumed here.
pub async fn bounded<T, F>(work: F) -> Result<T, OverBudget>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    bounded_within(TIME_BUDGET, work).await
}

async fn bounded_within<T, F>(budget: Duration, work: F) -> Result<T, OverBudget>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::time::timeout(budget, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down.
        Ok(Err(_)) | Err(_) => Err(OverBudget),
    }
}

/// Parses the pool's base job template.
pub fn parse_template(pool: &WorkPool) -> Result<BaseJobTemplate, JobError> {
    BaseJobTemplate::parse(&pool.base_job_template).map_err(|source| JobError::InvalidTemplate {
        pool: pool.name.clone(),
        source,
    })
}

/// Refuses a run-level override of a variable the pool's `overridable_variables` does not list
/// (rule `not_overridable`, field `job_variables.<key>`). `None` lets a run override any
/// variable; deployment-level job variables are never checked here (their authors hold
/// `deployments:write`).
pub fn check_run_overrides(
    pool: &WorkPool,
    run_variables: &Map<String, Value>,
) -> Result<(), TemplateError> {
    let Some(allowed) = &pool.overridable_variables else {
        return Ok(());
    };
    if run_variables.is_empty() {
        return Ok(());
    }
    let allowed_set: std::collections::BTreeSet<&str> =
        allowed.iter().map(String::as_str).collect();
    // Sorted, so the refusal names the same key whatever the request's key order.
    let mut keys: Vec<&String> = run_variables.keys().collect();
    keys.sort();
    for key in keys {
        // `env.FOO` overrides the variable `env` (split as the template engine splits it).
        let var = render::key_variable(key);
        let var = var.as_str();
        if allowed_set.contains(var) {
            continue;
        }
        let listed = if allowed.is_empty() {
            "lists none, so runs may not override any job variable".to_string()
        } else {
            format!(
                "lists only {}",
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(TemplateError {
            field: format!("job_variables.{key}"),
            rule: "not_overridable",
            message: format!(
                "a run may not override job variable `{}` of work pool `{}`: the pool's \
                 `overridable_variables` {listed} (set it in the deployment's job_variables, \
                 or have the pool's `overridable_variables` list it)",
                crate::access::shorten(var, 100),
                pool.name
            ),
        });
    }
    Ok(())
}

/// Resolves the job variables (defaults < deployment < run) and renders the job configuration.
/// Run-level overrides must be allowed by the pool ([`check_run_overrides`]).
pub fn render(
    template: &BaseJobTemplate,
    pool: &WorkPool,
    deployment: &Deployment,
    run: &RunFacts,
) -> Result<Value, JobError> {
    check_run_overrides(pool, run.job_variables).map_err(JobError::InvalidVariables)?;
    let values = template
        .resolve(&deployment.job_variables, run.job_variables)
        .map_err(JobError::InvalidVariables)?;
    Ok(template.render(&values, &render_context(run, deployment, pool)))
}

/// The provider serving `pool_type`.
pub fn provider_for(
    registry: &Registry,
    pool_type: &str,
) -> Result<Arc<dyn DynProvider>, JobError> {
    registry.get(pool_type).ok_or_else(|| JobError::NoProvider {
        pool_type: pool_type.to_string(),
        served: registry.pool_types().join(", "),
    })
}

/// The provider's pure check of a rendered job configuration.
pub fn validate(provider: &dyn DynProvider, rendered: &Value) -> Result<ValidatedJob, JobError> {
    provider
        .validate(rendered)
        .map_err(|e| provider_refusal(provider, e))
}

/// The provider's check of a rendered job configuration for a job of workspace `workspace_id`
/// (what is submitted: e.g. an assumed role gets the workspace's `ExternalId`).
pub fn validate_in(
    provider: &dyn DynProvider,
    rendered: &Value,
    workspace_id: Uuid,
) -> Result<ValidatedJob, JobError> {
    provider
        .validate_in(rendered, &workspace_id.to_string())
        .map_err(|e| provider_refusal(provider, e))
}

/// A provider's refusal of a job configuration: a bad field, or another provider error.
fn provider_refusal(provider: &dyn DynProvider, error: ProviderError) -> JobError {
    let pool_type = provider.pool_type().to_string();
    match error {
        ProviderError::InvalidConfig { field, message } => JobError::Refused {
            pool_type,
            field,
            message,
        },
        source => JobError::Provider { pool_type, source },
    }
}

/// Holds a rendered job configuration to what its workspace is granted: the controller's ambient
/// cloud identity, credential files on its disk, custom endpoints (docs/security.md, "Cloud
/// identity").
pub fn check_identity(
    provider: &dyn DynProvider,
    rendered: &Value,
    workspace: &str,
    grants: &crate::identity::Grants,
    endpoints: &crate::identity::AllowedEndpoints,
) -> Result<(), JobError> {
    crate::identity::check(&provider.needs(rendered), workspace, grants, endpoints)
        .map_err(JobError::NotGranted)
}

/// Renders and validates: the job a provider can submit.
pub fn prepare(
    template: &BaseJobTemplate,
    provider: &dyn DynProvider,
    pool: &WorkPool,
    deployment: &Deployment,
    run: &RunFacts,
) -> Result<ValidatedJob, JobError> {
    validate(provider, &render(template, pool, deployment, run)?)
}

impl From<OverBudget> for JobError {
    fn from(_: OverBudget) -> Self {
        JobError::OverBudget
    }
}

/// Why a run's job cannot be built. One set of messages for every place that builds jobs: a
/// crashed run's state message, a 422 of the API and the `error` of a claimed run all use it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobError {
    /// The run's pool or deployment was deleted.
    Gone {
        /// `work pool` or `deployment`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The pool's base job template does not parse.
    InvalidTemplate {
        /// The pool.
        pool: String,
        /// The template problem (field rooted at `base_job_template`).
        source: TemplateError,
    },
    /// The layered job variables break the template's rules (field rooted at `job_variables`).
    InvalidVariables(TemplateError),
    /// No provider here serves the pool's type.
    NoProvider {
        /// The pool type.
        pool_type: String,
        /// The types that are served, comma-separated.
        served: String,
    },
    /// The provider cannot use the rendered job configuration.
    Refused {
        /// The pool type.
        pool_type: String,
        /// Path inside the job configuration (may be empty).
        field: String,
        /// The provider's reason.
        message: String,
    },
    /// Checking or rendering took longer than [`TIME_BUDGET`].
    OverBudget,
    /// The job relies on a cloud identity, file or endpoint its workspace is not granted.
    NotGranted(crate::identity::Refusal),
    /// The provider's check failed in another way.
    Provider {
        /// The pool type.
        pool_type: String,
        /// Its error.
        source: ProviderError,
    },
}

impl JobError {
    /// The run's pool no longer exists.
    pub fn pool_gone(name: &str) -> Self {
        JobError::Gone {
            what: "work pool",
            name: name.to_string(),
        }
    }

    /// The run's deployment no longer exists.
    pub fn deployment_gone(name: &str) -> Self {
        JobError::Gone {
            what: "deployment",
            name: name.to_string(),
        }
    }

    /// The field at fault, as the API names it: `work_pool`, `deployment`, `type`,
    /// `job_variables.…` or `job_configuration.…`.
    pub fn field(&self) -> String {
        match self {
            JobError::Gone { what, .. } if *what == "deployment" => "deployment".into(),
            JobError::Gone { .. } | JobError::InvalidTemplate { .. } => "work_pool".into(),
            JobError::InvalidVariables(e) if e.field.starts_with("job_variables") => {
                e.field.clone()
            }
            JobError::InvalidVariables(e) => format!("job_variables.{}", e.field),
            JobError::OverBudget => "job_variables".into(),
            JobError::NoProvider { .. } => "type".into(),
            JobError::Refused { field, .. } if !field.is_empty() => {
                format!("job_configuration.{field}")
            }
            JobError::NotGranted(r) => format!("job_configuration.{}", r.field),
            JobError::Refused { .. } | JobError::Provider { .. } => "job_configuration".into(),
        }
    }

    /// The rule broken: the template engine's rule names (`invalid_template`, `unknown_variable`,
    /// `schema`, …), or `not_found`, `time_budget`, `unknown_pool_type`, `provider_config`,
    /// `provider`.
    pub fn rule(&self) -> &'static str {
        match self {
            JobError::Gone { .. } => "not_found",
            JobError::InvalidTemplate { source, .. } => source.rule,
            JobError::InvalidVariables(e) => e.rule,
            JobError::OverBudget => "time_budget",
            JobError::NoProvider { .. } => "unknown_pool_type",
            JobError::Refused { .. } => "provider_config",
            JobError::NotGranted(_) => "not_granted",
            JobError::Provider { .. } => "provider",
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Gone { what, name } => write!(f, "{what} `{name}` no longer exists"),
            JobError::InvalidTemplate { pool, source } => write!(
                f,
                "the base job template of work pool `{pool}` is invalid at `{}`: {}; fix the pool's template",
                source.field, source.message
            ),
            JobError::InvalidVariables(e) => write!(
                f,
                "the job variables are invalid at `{}`: {}; fix the deployment's or the run's job_variables",
                self.field(),
                e.message
            ),
            JobError::OverBudget => write!(f, "{OverBudget}"),
            JobError::NoProvider { pool_type, served } => write!(
                f,
                "no provider for pool type `{pool_type}` here (this build serves: {served}); build pushpool with that provider's feature"
            ),
            JobError::Refused {
                pool_type, message, ..
            } => write!(
                f,
                "the `{pool_type}` provider cannot use this job configuration at `{}`: {message}; fix the job variable or template field that produces it",
                self.field()
            ),
            JobError::Provider { pool_type, source } => {
                write!(f, "the `{pool_type}` provider refused the job: {source}")
            }
            JobError::NotGranted(r) => write!(
                f,
                "not allowed in this workspace: `{}` {}",
                self.field(),
                r.message
            ),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::InvalidTemplate { source, .. } | JobError::InvalidVariables(source) => {
                Some(source)
            }
            JobError::Provider { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
