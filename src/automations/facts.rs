//! The view of an event that triggers are evaluated on, and the names (event names, related
//! resource roles) triggers refer to.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// Related-resource role of a deployment.
pub const ROLE_DEPLOYMENT: &str = "deployment";
/// Related-resource role of a work pool.
pub const ROLE_WORK_POOL: &str = "work-pool";
/// Related-resource role of a work queue.
pub const ROLE_WORK_QUEUE: &str = "work-queue";
/// Related-resource role of a tag.
pub const ROLE_TAG: &str = "tag";
/// Related-resource role of a flow run.
pub const ROLE_FLOW_RUN: &str = "flow-run";
/// The roles a trigger's `related` filter may name.
pub const ROLES: [&str; 5] = [
    ROLE_DEPLOYMENT,
    ROLE_WORK_POOL,
    ROLE_WORK_QUEUE,
    ROLE_TAG,
    ROLE_FLOW_RUN,
];
/// The resource id prefix of flow runs (`pushpool.flow-run.<uuid>`).
pub const FLOW_RUN_PREFIX: &str = "pushpool.flow-run.";

/// Whether a label holds a resource's name (`pushpool.resource.name`, `name`, `….name`; not
/// `pushpool.state-name`).
pub fn is_name_label(key: &str) -> bool {
    key == "name" || key.ends_with(".name")
}

/// The event a flow run writes when it enters the state named `name` (`Failed`, `Late`, …).
pub fn run_state_event(name: &str) -> String {
    format!("{FLOW_RUN_PREFIX}{name}")
}

/// One related resource of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedFacts {
    /// Its id, e.g. `pushpool.deployment.<uuid>` or `pushpool.tag.prod`.
    pub id: String,
    /// Its role, e.g. `deployment`.
    pub role: String,
    /// Its labels (name → value).
    pub labels: BTreeMap<String, String>,
}

impl RelatedFacts {
    /// The names a filter value may use for it: its id, the id's last dot-separated part (the
    /// uuid or the tag), and its name label ([`is_name_label`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let tail = self.id.rsplit('.').next();
        std::iter::once(self.id.as_str()).chain(tail).chain(
            self.labels
                .iter()
                .filter(|(k, _)| is_name_label(k))
                .map(|(_, v)| v.as_str()),
        )
    }

    /// Its display name: its name label, else the last part of its id.
    pub fn name(&self) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| is_name_label(k))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| self.id.rsplit('.').next().unwrap_or(&self.id))
    }

    /// The uuid at the end of its id, if there is one.
    pub fn uuid(&self) -> Option<Uuid> {
        self.id
            .rsplit('.')
            .next()
            .and_then(|s| Uuid::parse_str(s).ok())
    }
}

/// An event as triggers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFacts {
    /// Event id.
    pub id: String,
    /// Its position in the store's event order (the consumer cursor).
    pub seq: i64,
    /// Workspace.
    pub workspace_id: Uuid,
    /// When it happened.
    pub occurred: DateTime<Utc>,
    /// Name, e.g. `pushpool.flow-run.Failed`.
    pub event: String,
    /// Its resource's id, e.g. `pushpool.flow-run.<uuid>`.
    pub resource_id: String,
    /// Its resource's labels.
    pub labels: BTreeMap<String, String>,
    /// Related resources.
    pub related: Vec<RelatedFacts>,
    /// Details.
    pub payload: Value,
}

impl EventFacts {
    /// The first related resource of `role`.
    pub fn related(&self, role: &str) -> Option<&RelatedFacts> {
        self.related.iter().find(|r| r.role == role)
    }

    /// The flow run this event is about (its resource, or a related flow run).
    pub fn flow_run_id(&self) -> Option<Uuid> {
        self.resource_id
            .strip_prefix(FLOW_RUN_PREFIX)
            .and_then(|s| Uuid::parse_str(s).ok())
            .or_else(|| self.related(ROLE_FLOW_RUN).and_then(|r| r.uuid()))
    }

    /// The event as JSON for action templates: `id`, `event`, `occurred`, `resource` (its id and
    /// labels), `related` (list), `payload`.
    pub fn to_json(&self) -> Value {
        let mut resource = serde_json::Map::new();
        resource.insert("id".into(), json!(self.resource_id));
        for (k, v) in &self.labels {
            resource.insert(k.clone(), json!(v));
        }
        let related: Vec<Value> = self
            .related
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("id".into(), json!(r.id));
                o.insert("role".into(), json!(r.role));
                for (k, v) in &r.labels {
                    o.insert(k.clone(), json!(v));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "id": self.id,
            "event": self.event,
            "occurred": self.occurred,
            "resource": resource,
            "related": related,
            "payload": self.payload,
        })
    }
}

impl From<&crate::model::Event> for EventFacts {
    fn from(e: &crate::model::Event) -> EventFacts {
        EventFacts {
            id: e.id.to_string(),
            seq: e.seq,
            workspace_id: e.workspace_id,
            occurred: e.occurred,
            event: e.event.clone(),
            resource_id: e.resource.id.clone(),
            labels: e.resource.labels.clone(),
            related: e
                .related
                .iter()
                .map(|r| RelatedFacts {
                    id: r.id.clone(),
                    role: r.role.clone(),
                    labels: r.labels.clone(),
                })
                .collect(),
            payload: e.payload.clone(),
        }
    }
}
