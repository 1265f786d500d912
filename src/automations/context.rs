//! The context of a firing, which action templates read: `event` (the triggering event, see
//! [`super::EventFacts::to_json`]), `automation` (`id`, `name`), `firing` (`id`, `occurrence`,
//! `count`, `group`), and, when the event concerns them, `flow_run` (`id`, `state`, `name`,
//! `error_summary` of a failed run),
//! `deployment`, `work_pool`, `work_queue` (`id`, `name` each).

use serde_json::{json, Map, Value};

use super::facts::{
    FLOW_RUN_PREFIX, ROLE_DEPLOYMENT, ROLE_FLOW_RUN, ROLE_WORK_POOL, ROLE_WORK_QUEUE,
};

/// What a firing's context is made from.
#[derive(Debug, Clone)]
pub struct FiringInfo<'a> {
    /// The firing's id.
    pub id: uuid::Uuid,
    /// The automation's id.
    pub automation_id: uuid::Uuid,
    /// The automation's name.
    pub automation_name: &'a str,
    /// The occurrence key.
    pub occurrence: &'a str,
    /// The group key.
    pub group: &'a str,
    /// The count.
    pub count: u32,
    /// The event, as [`super::EventFacts::to_json`] gives it.
    pub event: Option<&'a Value>,
}

fn related_of<'a>(event: &'a Value, role: &str) -> Option<&'a Value> {
    event["related"]
        .as_array()?
        .iter()
        .find(|r| r["role"] == role)
}

/// `{id, name}` of a related resource: the uuid at the end of its id, and its `…name` label.
fn named(resource: &Value, prefix: &str) -> Value {
    let full = resource["id"].as_str().unwrap_or_default();
    let id = full.strip_prefix(prefix).unwrap_or(full);
    let name = resource
        .as_object()
        .and_then(|o| {
            o.iter()
                .find(|(k, v)| super::facts::is_name_label(k) && v.is_string())
                .map(|(_, v)| v.clone())
        })
        .unwrap_or(Value::Null);
    json!({"id": id, "name": name, "resource_id": full})
}

/// The template context of a firing.
pub fn build(f: &FiringInfo<'_>) -> Value {
    let mut ctx = Map::new();
    ctx.insert(
        "automation".into(),
        json!({"id": f.automation_id, "name": f.automation_name}),
    );
    ctx.insert(
        "firing".into(),
        json!({"id": f.id, "occurrence": f.occurrence, "count": f.count, "group": f.group}),
    );
    let Some(event) = f.event else {
        ctx.insert("event".into(), Value::Null);
        return Value::Object(ctx);
    };
    ctx.insert("event".into(), event.clone());
    let resource = &event["resource"];
    let run = if resource["id"]
        .as_str()
        .is_some_and(|id| id.starts_with(FLOW_RUN_PREFIX))
    {
        Some(resource)
    } else {
        related_of(event, ROLE_FLOW_RUN)
    };
    if let Some(run) = run {
        let mut r = named(run, FLOW_RUN_PREFIX);
        let state = event["payload"]["to"]
            .as_str()
            .or_else(|| event["payload"]["state"]["type"].as_str())
            .or_else(|| event["payload"]["state_type"].as_str())
            .map(str::to_string)
            .or_else(|| {
                event["event"]
                    .as_str()
                    .and_then(|e| e.strip_prefix(FLOW_RUN_PREFIX))
                    .map(str::to_ascii_uppercase)
            });
        r["state"] = json!(state);
        r["state_name"] = event["payload"]["name"].clone();
        r["message"] = event["payload"]["message"].clone();
        // Why a FAILED/CRASHED run failed (docs/error-summaries.md), null otherwise.
        r["error_summary"] = event["payload"]["error_summary"].clone();
        ctx.insert("flow_run".into(), r);
    }
    for (key, role, prefix) in [
        ("deployment", ROLE_DEPLOYMENT, "pushpool.deployment."),
        ("work_pool", ROLE_WORK_POOL, "pushpool.work-pool."),
        ("work_queue", ROLE_WORK_QUEUE, "pushpool.work-queue."),
    ] {
        if let Some(r) = related_of(event, role) {
            ctx.insert(key.into(), named(r, prefix));
        }
    }
    Value::Object(ctx)
}

/// The body a `call-webhook` action without `body` sends: the event's name, resource and
/// occurred time, the run, deployment and pool, the automation and the firing.
pub fn standard_body(ctx: &Value) -> Value {
    json!({
        "automation": ctx["automation"],
        "firing": ctx["firing"],
        "event": {
            "id": ctx["event"]["id"],
            "event": ctx["event"]["event"],
            "occurred": ctx["event"]["occurred"],
            "resource": ctx["event"]["resource"]["id"],
        },
        "flow_run": ctx.get("flow_run").cloned().unwrap_or(Value::Null),
        "deployment": ctx.get("deployment").cloned().unwrap_or(Value::Null),
        "work_pool": ctx.get("work_pool").cloned().unwrap_or(Value::Null),
    })
}
