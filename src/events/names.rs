//! Event and resource names: the short names the store's writers use, mapped to Prefect-like ones.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::{FlowRun, RelatedResource};

/// The kinds writers use in short names, and their spelling in `pushpool.<kind>.…`.
const KINDS: &[(&str, &str)] = &[
    ("workspace", "workspace"),
    ("work_pool", "work-pool"),
    ("work_queue", "work-queue"),
    ("deployment", "deployment"),
    ("flow_run", "flow-run"),
    ("api_key", "api-key"),
    ("service_account", "service-account"),
    ("member", "member"),
    ("role", "role"),
    ("schedule", "schedule"),
];

/// The documented name of an event a writer names `event` about the object `raw_resource` (an id
/// or name), and the resource id: a short name `kind.action` of a known kind becomes
/// `pushpool.<kind>.<action>` (dashes for underscores) and the resource `pushpool.<kind>.<raw>`;
/// `flow_run.state.<type>` becomes `pushpool.flow-run.<state name>` (the `name` in `payload`, as
/// Prefect names state events, else the type capitalised). Any other name (already
/// `pushpool.…`, or an inbound webhook's) is kept, and so is its resource id.
pub fn canonical(event: &str, raw_resource: &str, payload: &Value) -> (String, String) {
    let Some((kind, action)) = event.split_once('.') else {
        return (event.to_string(), raw_resource.to_string());
    };
    let Some((_, dashed)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return (event.to_string(), raw_resource.to_string());
    };
    let resource = resource_id(dashed, raw_resource);
    if let Some(state_type) = action.strip_prefix("state.") {
        let name = payload["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| capitalised(state_type));
        return (format!("pushpool.{dashed}.{name}"), resource);
    }
    (
        format!("pushpool.{dashed}.{}", action.replace('_', "-")),
        resource,
    )
}

/// `pushpool.<kind>.<raw>`, unless `raw` already is a `pushpool.` id.
pub fn resource_id(kind: &str, raw: &str) -> String {
    if raw.starts_with("pushpool.") {
        raw.to_string()
    } else {
        format!("pushpool.{kind}.{raw}")
    }
}

/// The kind of a documented event name: `work-pool` for `pushpool.work-pool.created`; the part
/// before the first dot for other names.
pub fn event_kind(event: &str) -> &str {
    let rest = event.strip_prefix("pushpool.").unwrap_or(event);
    rest.split('.').next().unwrap_or_default()
}

fn capitalised(state_type: &str) -> String {
    let lower = state_type.to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// One label map with `pushpool.resource.name` = `name`.
fn named(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("pushpool.resource.name".to_string(), name.to_string())])
}

/// The resources a flow run's events concern besides the run: its deployment, pool, queue,
/// workspace and each of its tags.
pub fn flow_run_related(run: &FlowRun) -> Vec<RelatedResource> {
    let mut related = vec![
        RelatedResource {
            id: resource_id("deployment", &run.deployment_id.to_string()),
            role: "deployment".into(),
            labels: named(&run.deployment),
        },
        RelatedResource {
            id: resource_id("work-pool", &run.work_pool_id.to_string()),
            role: "work-pool".into(),
            labels: named(&run.work_pool),
        },
        RelatedResource {
            id: resource_id("work-queue", &run.work_queue_id.to_string()),
            role: "work-queue".into(),
            labels: named(&run.work_queue),
        },
        RelatedResource {
            id: resource_id("workspace", &run.workspace_id.to_string()),
            role: "workspace".into(),
            labels: BTreeMap::new(),
        },
    ];
    related.extend(run.tags.iter().map(|tag| RelatedResource {
        id: format!("pushpool.tag.{tag}"),
        role: "tag".into(),
        labels: BTreeMap::new(),
    }));
    related
}

/// The labels of a flow run's resource: its state type and name, attempt and deployment name.
pub fn flow_run_labels(run: &FlowRun) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "pushpool.state-type".to_string(),
            run.state.state_type.as_str().to_string(),
        ),
        ("pushpool.state-name".to_string(), run.state.name.clone()),
        ("pushpool.attempt".to_string(), run.attempt.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_names_become_documented_ones() {
        assert_eq!(
            canonical("work_pool.created", "abc", &json!({})),
            (
                "pushpool.work-pool.created".to_string(),
                "pushpool.work-pool.abc".to_string()
            )
        );
        assert_eq!(
            canonical("flow_run.infrastructure_assigned", "r1", &json!({})).0,
            "pushpool.flow-run.infrastructure-assigned"
        );
        assert_eq!(
            canonical("flow_run.state.failed", "r1", &json!({"name": "Failed"})).0,
            "pushpool.flow-run.Failed"
        );
        assert_eq!(
            canonical("flow_run.state.scheduled", "r1", &json!({"name": "Late"})).0,
            "pushpool.flow-run.Late"
        );
        assert_eq!(
            canonical("flow_run.state.crashed", "r1", &json!({})).0,
            "pushpool.flow-run.Crashed"
        );
        // Names already documented, and unknown kinds, are kept.
        assert_eq!(
            canonical(
                "pushpool.controller.started",
                "pushpool.controller.c1",
                &json!({})
            ),
            (
                "pushpool.controller.started".to_string(),
                "pushpool.controller.c1".to_string()
            )
        );
        assert_eq!(
            canonical("github.push", "repo", &json!({})),
            ("github.push".to_string(), "repo".to_string())
        );
        assert_eq!(event_kind("pushpool.work-pool.created"), "work-pool");
        assert_eq!(event_kind("github.push"), "github");
    }
}
