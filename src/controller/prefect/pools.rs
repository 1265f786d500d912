//! `pushpool prefect pool …`: Prefect work pools with pushpool's default base job templates
//! (Prefect's own CLI refuses pool types it has no worker for), and a preview of the job a
//! deployment's runs would get.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::client::{segment, PrefectClient};
use super::convert::{PfDeployment, PfWorkPool};
use super::prepare::{self, JobFacts};
use crate::job::{self, RunFacts};
use crate::registry::default_registry;

/// pushpool's default base job template of `pool_type`, for a Prefect pool: the variables
/// Prefect's preparation fills (`command`) are not required.
pub fn default_template(pool_type: &str) -> Result<Value, String> {
    let registry = default_registry();
    let provider = registry.get(pool_type).ok_or_else(|| {
        format!(
            "no provider for pool type `{pool_type}` here (this build serves: {})",
            registry.pool_types().join(", ")
        )
    })?;
    let mut template = provider.default_base_job_template();
    if let Some(Value::Array(required)) = template.pointer_mut("/variables/required") {
        required.retain(|r| r != "command");
    }
    Ok(template)
}

/// Creates a work pool on the Prefect server; returns Prefect's answer.
pub async fn create_pool(
    client: &PrefectClient,
    name: &str,
    pool_type: &str,
    template: Option<Value>,
) -> Result<Value, String> {
    let template = match template {
        Some(t) => t,
        None => default_template(pool_type)?,
    };
    job::template::BaseJobTemplate::parse(&template).map_err(|e| {
        format!(
            "the base job template is invalid at `{}`: {}",
            e.field, e.message
        )
    })?;
    let body = json!({"name": name, "type": pool_type, "base_job_template": template});
    client
        .post("/work_pools/", &body)
        .await
        .map_err(|e| e.to_string())
}

/// The job configuration a run of `deployment` (id or `flow-name/deployment-name`) would get,
/// with run-level `job_variables`, rendered and prepared as the controller does, references to
/// blocks and variables left unresolved (they hold secrets) and the API key shown as a
/// placeholder.
pub async fn preview(
    client: &PrefectClient,
    deployment: &str,
    run_variables: &Map<String, Value>,
) -> Result<Value, String> {
    let path = match Uuid::parse_str(deployment) {
        Ok(id) => format!("/deployments/{id}"),
        Err(_) => {
            let (flow, name) = deployment.split_once('/').ok_or_else(|| {
                format!("deployment `{deployment}`: give its id or FLOW_NAME/DEPLOYMENT_NAME")
            })?;
            format!("/deployments/name/{}/{}", segment(flow), segment(name))
        }
    };
    let d = client.get(&path).await.map_err(|e| e.to_string())?;
    let pool_name = d
        .get("work_pool_name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("deployment `{deployment}` has no work pool"))?
        .to_string();
    let flow_id = d
        .get("flow_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let d = PfDeployment::parse(&d)?;
    let p = client
        .get(&format!("/work_pools/{}", segment(&pool_name)))
        .await
        .map_err(|e| e.to_string())?;
    let p = PfWorkPool::parse(&p)?;
    let mut template = p.base_job_template.clone();
    prepare::hide_prefect_placeholders(&mut template);
    let pool = p.to_model(template);
    let deployment = d.to_model(pool.id);
    let parsed = job::parse_template(&pool).map_err(|e| e.to_string())?;
    let facts = RunFacts::preview(&deployment, run_variables);
    let mut rendered =
        job::render(&parsed, &pool, &deployment, &facts).map_err(|e| e.to_string())?;
    prepare::restore_prefect_placeholders(&mut rendered);
    let Value::Object(mut config) = rendered else {
        return Err("the rendered job configuration is not an object".into());
    };
    let flow_name = match flow_id {
        Some(id) => client
            .get(&format!("/flows/{id}"))
            .await
            .ok()
            .and_then(|f| f.get("name").and_then(Value::as_str).map(str::to_string)),
        None => None,
    };
    let keys: Vec<String> = pool
        .base_job_template
        .get("job_configuration")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let auth_env = client
        .auth()
        .job_env()
        .into_iter()
        .map(|(k, _)| (k, format!("<{k}>")))
        .collect();
    let facts = JobFacts {
        flow_run_id: Uuid::nil(),
        flow_run_name: "<flow run name>".into(),
        flow_id,
        flow_name,
        deployment_id: Some(deployment.id),
        deployment_name: Some(deployment.name.clone()),
        deployment_updated: Some(deployment.updated.to_rfc3339()),
        pool_name: pool.name.clone(),
        pool_id: pool.id,
        worker_name: "<controller id>".into(),
        api_url: client.base_url().to_string(),
        auth_env,
        cloud_run: pool.pool_type.starts_with("cloud-run"),
    };
    prepare::prepare_for_flow_run(&mut config, &keys, &facts);
    Ok(Value::Object(config))
}
