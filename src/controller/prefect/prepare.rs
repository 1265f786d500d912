//! Prefect's own job preparation, after pushpool's template engine rendered the pool's base job
//! template with the deployment's and the flow run's `job_variables`:
//!
//! 1. References are resolved through the Prefect API, as Prefect's workers do after rendering:
//!    block documents (`{"$ref": {"block_document_id": …}}` and
//!    `{{ prefect.blocks.<type>.<name>[.<key path>] }}`, read with their secrets) and variables
//!    (`{{ prefect.variables.<name> }}`; a missing one becomes `""`). Placeholders in the
//!    template itself are hidden from the engine ([`hide_prefect_placeholders`]) and restored
//!    after rendering, so both the template's and the job variables' references resolve.
//! 2. `BaseJobConfiguration.prepare_for_flow_run`: `env` gets `PREFECT_API_URL`, the
//!    credentials, `PREFECT__FLOW_RUN_ID` and the attribution variables, with the template's
//!    `env` on top; `labels` get `prefect.io/flow-run-id`, `…/flow-run-name`, the pool, worker,
//!    flow and deployment labels, the template's on top; `name` defaults to the flow run's name
//!    and `command` to `prefect flow-run execute`. Each of `env`, `labels`, `name` and
//!    `command` is set only where the pool's template has that key (a provider refusing unknown
//!    fields, such as `aws-lambda:push` for `labels`, never gets it).
//!
//! Resolved values are secrets: they go into the job, never into logs or messages.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::client::{segment, PrefectClient, PrefectError};

/// Prefect's default command of a flow run job.
pub const DEFAULT_COMMAND: &str = "prefect flow-run execute";

const BLOCK_PREFIX: &str = "prefect.blocks.";
const VARIABLE_PREFIX: &str = "prefect.variables.";

/// Prefect's placeholder pattern (`find_placeholders`).
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}").expect("placeholder regex is valid")
});

/// A `prefect.*` placeholder in a template string.
static PREFECT_PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{(\s*)(prefect\.[\w.\-\[\]$]*)(\s*)\}\}").expect("regex is valid")
});

/// What marks a hidden `prefect.*` placeholder: not a placeholder character, so no engine
/// reads `{{ !prefect.x }}` as one.
const HIDDEN: &str = "!";

/// Hides the `{{ prefect.… }}` placeholders of a template from pushpool's engine (which would
/// refuse them as undeclared variables) until [`restore_prefect_placeholders`].
pub fn hide_prefect_placeholders(value: &mut Value) {
    map_strings(value, &|s| {
        PREFECT_PLACEHOLDER
            .replace_all(s, |c: &regex::Captures<'_>| {
                format!("{{{{{}{HIDDEN}{}{}}}}}", &c[1], &c[2], &c[3])
            })
            .into_owned()
    });
}

/// Undoes [`hide_prefect_placeholders`] in a rendered configuration.
pub fn restore_prefect_placeholders(value: &mut Value) {
    map_strings(value, &|s| {
        s.replace(&format!("{HIDDEN}prefect."), "prefect.")
    });
}

fn map_strings(value: &mut Value, f: &dyn Fn(&str) -> String) {
    match value {
        Value::String(s) if s.contains("{{") => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| map_strings(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| map_strings(v, f)),
        _ => {}
    }
}

/// Why a reference could not be resolved: the field and what is wrong (never a secret).
#[derive(Debug)]
pub enum ResolveError {
    /// The reference is wrong or names nothing; the run crashes with this message.
    Invalid(String),
    /// The API failed (retried).
    Api(PrefectError),
}

/// Resolves block documents and variables in a rendered configuration, as Prefect's
/// `resolve_block_document_references` then `resolve_variables` do.
pub async fn resolve_references(
    client: &PrefectClient,
    value: Value,
) -> Result<Value, ResolveError> {
    let mut resolver = Resolver {
        client,
        blocks_by_id: HashMap::new(),
        blocks_by_name: HashMap::new(),
        variables: HashMap::new(),
    };
    let value = resolver.walk(value, Pass::Blocks).await?;
    resolver.walk(value, Pass::Variables).await
}

/// Which references a pass over the configuration resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Blocks,
    Variables,
}

struct Resolver<'a> {
    client: &'a PrefectClient,
    blocks_by_id: HashMap<String, Value>,
    blocks_by_name: HashMap<(String, String), Value>,
    variables: HashMap<String, Option<Value>>,
}

impl Resolver<'_> {
    /// One of Prefect's two passes over the configuration: `$ref` objects and
    /// `{{ prefect.blocks… }}` first, then `{{ prefect.variables… }}`.
    fn walk(
        &mut self,
        value: Value,
        pass: Pass,
    ) -> futures::future::BoxFuture<'_, Result<Value, ResolveError>> {
        Box::pin(async move {
            match value {
                Value::Object(map) => {
                    if pass == Pass::Blocks {
                        let id = map
                            .get("$ref")
                            .and_then(|r| r.get("block_document_id"))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        if let Some(id) = id {
                            return self.block_by_id(&id).await;
                        }
                    }
                    let mut out = Map::new();
                    for (k, v) in map {
                        out.insert(k, self.walk(v, pass).await?);
                    }
                    Ok(Value::Object(out))
                }
                Value::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for v in items {
                        out.push(self.walk(v, pass).await?);
                    }
                    Ok(Value::Array(out))
                }
                Value::String(s) => self.string(s, pass).await,
                other => Ok(other),
            }
        })
    }

    /// A string's placeholders of this pass: a whole-string placeholder becomes the value itself,
    /// partial ones are put into the text.
    async fn string(&mut self, s: String, pass: Pass) -> Result<Value, ResolveError> {
        let prefix = match pass {
            Pass::Blocks => BLOCK_PREFIX,
            Pass::Variables => VARIABLE_PREFIX,
        };
        let found: Vec<(String, String)> = PLACEHOLDER
            .captures_iter(&s)
            .filter(|c| c[1].starts_with(prefix))
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect();
        if found.is_empty() {
            return Ok(Value::String(s));
        }
        let all = PLACEHOLDER.find_iter(&s).count();
        if all == 1 && found.len() == 1 && found[0].0 == s {
            return match pass {
                Pass::Blocks => self.block_placeholder(&found[0].1).await,
                Pass::Variables => Ok(self
                    .variable(&found[0].1)
                    .await?
                    .unwrap_or_else(|| Value::String(String::new()))),
            };
        }
        let mut out = s.clone();
        for (full, name) in found {
            let text = match pass {
                Pass::Blocks => match self.block_placeholder(&name).await? {
                    Value::String(t) => t,
                    Value::Object(_) | Value::Array(_) => {
                        return Err(ResolveError::Invalid(format!(
                            "block placeholder `{full}` resolves to an object or list, which cannot be put inside a string; name a scalar attribute (e.g. `.value`)"
                        )))
                    }
                    other => other.to_string(),
                },
                Pass::Variables => match self.variable(&name).await? {
                    None => String::new(),
                    Some(Value::String(t)) => t,
                    // Python's str() of a number or boolean; JSON for the rest (documented).
                    Some(Value::Bool(true)) => "True".into(),
                    Some(Value::Bool(false)) => "False".into(),
                    Some(Value::Null) => "None".into(),
                    Some(other) => other.to_string(),
                },
            };
            out = out.replace(&full, &text);
        }
        Ok(Value::String(out))
    }

    async fn block_placeholder(&mut self, name: &str) -> Result<Value, ResolveError> {
        let rest = name.trim_start_matches(BLOCK_PREFIX);
        let mut parts = rest.splitn(3, '.');
        let (Some(slug), Some(doc)) = (parts.next(), parts.next()) else {
            return Err(ResolveError::Invalid(format!(
                "invalid block placeholder `{name}`: expected prefect.blocks.<block-type-slug>.<block-document-name>"
            )));
        };
        let keypath = parts.next();
        let key = (slug.to_string(), doc.to_string());
        let data = match self.blocks_by_name.get(&key) {
            Some(d) => d.clone(),
            None => {
                let path = format!(
                    "/block_types/slug/{}/block_documents/name/{}?include_secrets=true",
                    segment(slug),
                    segment(doc)
                );
                let data = self
                    .read_block(&path, &format!("`{doc}` of type `{slug}`"))
                    .await?;
                self.blocks_by_name.insert(key, data.clone());
                data
            }
        };
        let mut data = data;
        let only_value = data
            .as_object()
            .is_some_and(|m| m.len() == 1 && m.contains_key("value"));
        let points_at_value = keypath
            .is_some_and(|k| k == "value" || k.starts_with("value.") || k.starts_with("value["));
        if only_value && !points_at_value {
            data = data.get("value").cloned().unwrap_or(Value::Null);
        }
        match keypath {
            None => Ok(data),
            Some(k) => get_path(&data, k).cloned().ok_or_else(|| {
                ResolveError::Invalid(format!(
                    "block placeholder `{name}`: the key path `{k}` is not in the block document"
                ))
            }),
        }
    }

    async fn block_by_id(&mut self, id: &str) -> Result<Value, ResolveError> {
        if let Some(d) = self.blocks_by_id.get(id) {
            return Ok(d.clone());
        }
        if Uuid::parse_str(id).is_err() {
            return Err(ResolveError::Invalid(format!(
                "block document reference `{id}` is not a UUID"
            )));
        }
        let path = format!("/block_documents/{id}?include_secrets=true");
        let data = self.read_block(&path, &format!("with id `{id}`")).await?;
        self.blocks_by_id.insert(id.to_string(), data.clone());
        Ok(data)
    }

    async fn read_block(&self, path: &str, what: &str) -> Result<Value, ResolveError> {
        match self.client.get(path).await {
            Ok(doc) => Ok(doc.get("data").cloned().unwrap_or(Value::Null)),
            Err(e) if e.is_not_found() => Err(ResolveError::Invalid(format!(
                "block document {what} not found: it is referenced by the deployment or the work pool but does not exist (deleted?)"
            ))),
            Err(e) => Err(ResolveError::Api(e)),
        }
    }

    async fn variable(&mut self, placeholder: &str) -> Result<Option<Value>, ResolveError> {
        let name = placeholder.trim_start_matches(VARIABLE_PREFIX).to_string();
        if let Some(v) = self.variables.get(&name) {
            return Ok(v.clone());
        }
        let path = format!("/variables/name/{}", segment(&name));
        let value = match self.client.get(&path).await {
            Ok(v) => Some(v.get("value").cloned().unwrap_or(Value::Null)),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(ResolveError::Api(e)),
        };
        self.variables.insert(name, value.clone());
        Ok(value)
    }
}

/// Prefect's `get_from_dict`: `a.b[0].c` into objects and lists.
fn get_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = value;
    for part in path.split('.') {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            cur = cur.as_object()?.get(key)?;
        }
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let n: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.as_array()?.get(n)?;
        }
    }
    Some(cur)
}

/// What Prefect's job preparation needs to know about a run.
#[derive(Debug, Clone, Default)]
pub struct JobFacts {
    /// The flow run.
    pub flow_run_id: Uuid,
    /// Its name.
    pub flow_run_name: String,
    /// The flow.
    pub flow_id: Option<Uuid>,
    /// Its name.
    pub flow_name: Option<String>,
    /// The deployment.
    pub deployment_id: Option<Uuid>,
    /// Its name.
    pub deployment_name: Option<String>,
    /// Its last change (RFC 3339).
    pub deployment_updated: Option<String>,
    /// The work pool.
    pub pool_name: String,
    /// Its id.
    pub pool_id: Uuid,
    /// The controller (the worker name Prefect shows).
    pub worker_name: String,
    /// `PREFECT_API_URL` for the job.
    pub api_url: String,
    /// The credentials' variables.
    pub auth_env: Vec<(&'static str, String)>,
    /// A `cloud-run-v2:push` job, prepared as Prefect's Cloud Run worker does: the labels
    /// pushpool adds are made Google Cloud labels (keys and values lowercased, other characters
    /// `-`, at most 63 characters: `prefect.io/flow-run-id` becomes `prefect-io-flow-run-id`),
    /// and a container without a command gets the job's `command`.
    pub cloud_run: bool,
}

/// A Google Cloud label key or value made from any text.
fn gcp_label(s: &str, key: bool) -> String {
    let mut out: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if key && !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert(0, 'p');
    }
    out.truncate(63);
    out
}

/// `prepare_for_flow_run` on a rendered configuration; `template_keys` are the keys of the
/// pool template's `job_configuration`.
pub fn prepare_for_flow_run(
    config: &mut Map<String, Value>,
    template_keys: &[String],
    facts: &JobFacts,
) {
    let mut env = Map::new();
    env.insert("PREFECT_API_URL".into(), facts.api_url.clone().into());
    for (k, v) in &facts.auth_env {
        env.insert((*k).into(), v.clone().into());
    }
    env.insert(
        "PREFECT__FLOW_RUN_ID".into(),
        facts.flow_run_id.to_string().into(),
    );
    env.insert(
        "PREFECT__WORKER_NAME".into(),
        facts.worker_name.clone().into(),
    );
    if let Some(id) = facts.flow_id {
        env.insert("PREFECT__FLOW_ID".into(), id.to_string().into());
    }
    if let Some(n) = &facts.flow_name {
        env.insert("PREFECT__FLOW_NAME".into(), n.clone().into());
    }
    if let Some(id) = facts.deployment_id {
        env.insert("PREFECT__DEPLOYMENT_ID".into(), id.to_string().into());
    }
    if let Some(n) = &facts.deployment_name {
        env.insert("PREFECT__DEPLOYMENT_NAME".into(), n.clone().into());
    }
    if let Some(Value::Object(own)) = config.get("env") {
        for (k, v) in own {
            env.insert(k.clone(), v.clone());
        }
    }
    // Prefect drops None values; the process and cloud providers take strings.
    let env: Map<String, Value> = env
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(_) => (k, v),
            other => (k, Value::String(other.to_string())),
        })
        .collect();
    let has = |k: &str| template_keys.iter().any(|t| t == k);
    if has("env") {
        config.insert("env".into(), Value::Object(env));
    }
    if has("labels") {
        let mut labels = Map::new();
        let gcp = facts.cloud_run;
        let mut put = |k: &str, v: String| {
            if gcp {
                labels.insert(gcp_label(k, true), Value::String(gcp_label(&v, false)));
            } else {
                labels.insert(k.to_string(), Value::String(v));
            }
        };
        put("prefect.io/flow-run-id", facts.flow_run_id.to_string());
        put("prefect.io/flow-run-name", facts.flow_run_name.clone());
        put("prefect.io/work-pool-name", facts.pool_name.clone());
        put("prefect.io/work-pool-id", facts.pool_id.to_string());
        put("prefect.io/worker-name", facts.worker_name.clone());
        if let Some(id) = facts.flow_id {
            put("prefect.io/flow-id", id.to_string());
        }
        if let Some(n) = &facts.flow_name {
            put("prefect.io/flow-name", n.clone());
        }
        if let Some(id) = facts.deployment_id {
            put("prefect.io/deployment-id", id.to_string());
        }
        if let Some(n) = &facts.deployment_name {
            put("prefect.io/deployment-name", n.clone());
        }
        if let Some(u) = &facts.deployment_updated {
            put("prefect.io/deployment-updated", u.clone());
        }
        if let Some(Value::Object(own)) = config.get("labels") {
            for (k, v) in own {
                labels.insert(k.clone(), v.clone());
            }
        }
        config.insert("labels".into(), Value::Object(labels));
    }
    let blank = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    if has("name") && blank(config.get("name")) {
        config.insert("name".into(), facts.flow_run_name.clone().into());
    }
    if has("command") && blank(config.get("command")) {
        config.insert("command".into(), DEFAULT_COMMAND.into());
    }
    if facts.cloud_run {
        let command = config.get("command").cloned();
        let container = config
            .get_mut("job_body")
            .and_then(|b| b.pointer_mut("/template/template/containers/0"));
        if let (Some(Value::Object(container)), Some(command)) = (container, command) {
            if blank(container.get("command")) {
                container.insert("command".into(), command);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prefect_placeholders_are_hidden_and_restored() {
        let mut v = json!({"a": "{{ prefect.variables.x }}", "b": "x-{{prefect.blocks.secret.s}}-{{ image }}"});
        hide_prefect_placeholders(&mut v);
        assert_eq!(v["a"], "{{ !prefect.variables.x }}");
        assert_eq!(v["b"], "x-{{!prefect.blocks.secret.s}}-{{ image }}");
        restore_prefect_placeholders(&mut v);
        assert_eq!(v["a"], "{{ prefect.variables.x }}");
        assert_eq!(v["b"], "x-{{prefect.blocks.secret.s}}-{{ image }}");
    }

    #[test]
    fn key_paths_reach_into_objects_and_lists() {
        let v = json!({"a": {"list": [{"k": "v"}, 1]}});
        assert_eq!(get_path(&v, "a.list[0].k"), Some(&json!("v")));
        assert_eq!(get_path(&v, "a.list[1]"), Some(&json!(1)));
        assert_eq!(get_path(&v, "a.missing"), None);
    }

    #[test]
    fn preparation_sets_env_labels_name_and_command_under_the_template() {
        let facts = JobFacts {
            flow_run_id: Uuid::nil(),
            flow_run_name: "happy-fox".into(),
            flow_name: Some("etl".into()),
            deployment_name: Some("nightly".into()),
            pool_name: "pool".into(),
            worker_name: "controller-1".into(),
            api_url: "http://127.0.0.1:4200/api".into(),
            auth_env: vec![("PREFECT_API_KEY", "k".into())],
            ..JobFacts::default()
        };
        let keys: Vec<String> = ["command", "env", "labels", "name"]
            .map(String::from)
            .to_vec();
        let mut config =
            json!({"env": {"PREFECT_API_URL": "http://override", "N": 1}, "labels": {"team": "a"}})
                .as_object()
                .cloned()
                .unwrap();
        prepare_for_flow_run(&mut config, &keys, &facts);
        assert_eq!(config["env"]["PREFECT_API_URL"], "http://override");
        assert_eq!(
            config["env"]["PREFECT__FLOW_RUN_ID"],
            Uuid::nil().to_string()
        );
        assert_eq!(config["env"]["PREFECT_API_KEY"], "k");
        assert_eq!(config["env"]["N"], "1");
        assert_eq!(config["labels"]["prefect.io/flow-run-name"], "happy-fox");
        assert_eq!(config["labels"]["prefect.io/flow-name"], "etl");
        assert_eq!(config["labels"]["team"], "a");
        assert_eq!(config["name"], "happy-fox");
        assert_eq!(config["command"], DEFAULT_COMMAND);

        // A template without those keys (aws-lambda:push refuses unknown fields) gets env only.
        let mut lambda = Map::new();
        prepare_for_flow_run(&mut lambda, &["env".to_string()], &facts);
        assert_eq!(lambda.keys().collect::<Vec<_>>(), vec!["env"]);
        let mut none = Map::new();
        prepare_for_flow_run(&mut none, &[], &facts);
        assert!(none.is_empty());
    }
}
