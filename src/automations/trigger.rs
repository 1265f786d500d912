//! What an automation reacts to: the trigger as the API takes it ([`Trigger`]), checked and
//! expanded into one normal form ([`EventTrigger`]), and the pure matching of an event against
//! it. No I/O here; [`super::evaluate`] keeps the per-group state.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::facts::EventFacts;

/// Most events a threshold may count.
pub const MAX_THRESHOLD: u32 = 1000;
/// Longest window, in seconds (30 days).
pub const MAX_WITHIN: u64 = 30 * 24 * 3600;
/// Most patterns in one list.
const MAX_PATTERNS: usize = 50;
/// Longest pattern, in bytes.
const MAX_PATTERN: usize = 200;

/// A trigger: a general event trigger, or a run-state shortcut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Trigger {
    /// Events matching filters (reactive), or the absence of an expected event (proactive).
    Event(EventTrigger),
    /// A flow run of the named deployments, pools or tags entered one of `states`.
    RunState(RunStateTrigger),
}

/// Reactive: fire when `threshold` events matching `expect` (and the filters) happen within
/// `within` seconds, counted per `for_each` group. Proactive: fire when, after an event matching
/// `after` (or, without `after`, after the previous expected event or the automation's enabling),
/// fewer than `threshold` events matching `expect` happen within `within` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// `reactive` (default) or `proactive`.
    #[serde(default, skip_serializing_if = "Posture::is_reactive")]
    pub posture: Posture,
    /// Event names counted (reactive) or awaited (proactive): exact names, or prefixes ending in
    /// `*` (`pushpool.flow-run.*`). At least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<String>,
    /// Proactive only: event names that open a window (e.g. `pushpool.flow-run.Running`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// The event's resource id must match one of these (exact or prefix with `*`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<String>,
    /// Resource labels the event must carry: label name → accepted values (exact or prefix
    /// with `*`); every label given must match one of its values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Vec<String>>,
    /// Related resources the event must have, by role (`deployment`, `work-pool`,
    /// `work-queue`, `tag`, `flow-run`): role → accepted names or ids; every role given must
    /// match one of its values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub related: BTreeMap<String, Vec<String>>,
    /// Count (or await) separately per resource, deployment, work pool or work queue; absent:
    /// one group for the whole workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Group>,
    /// How many events (1–1000, default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub threshold: u32,
    /// The window in seconds (0–2592000). Reactive: needed when `threshold` > 1. Proactive:
    /// required (at least 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub within: u64,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Reactive or proactive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Posture {
    /// Fire on events that happen.
    #[default]
    Reactive,
    /// Fire when an expected event does not happen in time.
    Proactive,
}

/// What a trigger groups events by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// The event's own resource (e.g. each flow run apart).
    Resource,
    /// The related deployment.
    Deployment,
    /// The related work pool.
    WorkPool,
    /// The related work queue.
    WorkQueue,
}

impl Posture {
    fn is_reactive(&self) -> bool {
        *self == Posture::Reactive
    }
}

impl Group {
    /// The related-resource role this groups by (`None` for the event's own resource).
    pub fn role(self) -> Option<&'static str> {
        match self {
            Group::Resource => None,
            Group::Deployment => Some(super::facts::ROLE_DEPLOYMENT),
            Group::WorkPool => Some(super::facts::ROLE_WORK_POOL),
            Group::WorkQueue => Some(super::facts::ROLE_WORK_QUEUE),
        }
    }
}

/// A flow run of the named deployments, pools or tags entered one of `states`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunStateTrigger {
    /// State names: `Failed`, `Crashed`, `Late`, `Cancelled` (also `Completed`, `Running`,
    /// `Pending`, `Cancelling`, `Paused`, `Scheduled`). At least one.
    pub states: Vec<String>,
    /// Only runs of these deployments (names or ids); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<String>,
    /// Only runs in these work pools (names or ids); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub work_pools: Vec<String>,
    /// Only runs with one of these tags; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// How many such runs (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub threshold: u32,
    /// Within this many seconds (needed when `threshold` > 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub within: u64,
    /// Count per deployment or pool (default: each run apart when `threshold` is 1, else the
    /// whole workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Group>,
}

/// The run-state names a [`RunStateTrigger`] accepts, as they appear in event names.
pub const RUN_STATES: [&str; 10] = [
    "Failed",
    "Crashed",
    "Late",
    "Cancelled",
    "Completed",
    "Running",
    "Pending",
    "Cancelling",
    "Paused",
    "Scheduled",
];

/// A trigger that breaks a rule: the field (from the trigger's root) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TriggerError {
    /// The field at fault, e.g. `trigger.threshold`.
    pub field: String,
    /// The rule it breaks.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> TriggerError {
    TriggerError {
        field: format!("trigger.{field}"),
        message: message.into(),
    }
}

impl Trigger {
    /// Checks the trigger and returns its normal form.
    pub fn compile(&self) -> Result<EventTrigger, TriggerError> {
        let t = match self {
            Trigger::Event(t) => t.clone(),
            Trigger::RunState(r) => r.expand()?,
        };
        t.check()?;
        Ok(t)
    }
}

impl RunStateTrigger {
    fn expand(&self) -> Result<EventTrigger, TriggerError> {
        if self.states.is_empty() {
            return Err(invalid("states", "name at least one state"));
        }
        let mut expect = vec![];
        for (i, s) in self.states.iter().enumerate() {
            let Some(name) = RUN_STATES.iter().find(|k| k.eq_ignore_ascii_case(s)) else {
                return Err(invalid(
                    &format!("states[{i}]"),
                    format!("must be one of {}", RUN_STATES.join(", ")),
                ));
            };
            expect.push(super::facts::run_state_event(name));
        }
        let mut related = BTreeMap::new();
        for (role, values) in [
            (super::facts::ROLE_DEPLOYMENT, &self.deployments),
            (super::facts::ROLE_WORK_POOL, &self.work_pools),
            (super::facts::ROLE_TAG, &self.tags),
        ] {
            if !values.is_empty() {
                related.insert(role.to_string(), values.clone());
            }
        }
        let for_each = self.for_each.or(if self.threshold <= 1 {
            Some(Group::Resource)
        } else {
            None
        });
        Ok(EventTrigger {
            posture: Posture::Reactive,
            expect,
            after: vec![],
            resource: vec![format!("{}*", super::facts::FLOW_RUN_PREFIX)],
            labels: BTreeMap::new(),
            related,
            for_each,
            threshold: self.threshold,
            within: self.within,
        })
    }
}

fn check_patterns(field: &str, list: &[String]) -> Result<(), TriggerError> {
    if list.len() > MAX_PATTERNS {
        return Err(invalid(field, format!("at most {MAX_PATTERNS} entries")));
    }
    for (i, p) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if p.is_empty() || p.len() > MAX_PATTERN || p.contains('\0') {
            return Err(invalid(
                &at,
                format!("must be 1–{MAX_PATTERN} bytes without NUL characters"),
            ));
        }
        if p.trim_end_matches('*').contains('*') {
            return Err(invalid(&at, "`*` may only end a pattern"));
        }
    }
    Ok(())
}

impl EventTrigger {
    /// Checks the rules the module documentation and the field docs state.
    pub fn check(&self) -> Result<(), TriggerError> {
        if self.expect.is_empty() {
            return Err(invalid("expect", "name at least one event (or prefix*)"));
        }
        check_patterns("expect", &self.expect)?;
        check_patterns("after", &self.after)?;
        check_patterns("resource", &self.resource)?;
        if self.labels.len() > MAX_PATTERNS || self.related.len() > MAX_PATTERNS {
            return Err(invalid("labels", format!("at most {MAX_PATTERNS} entries")));
        }
        for (name, values) in &self.labels {
            if values.is_empty() {
                return Err(invalid(
                    &format!("labels.{name}"),
                    "give at least one value",
                ));
            }
            check_patterns(&format!("labels.{name}"), values)?;
        }
        for (role, values) in &self.related {
            if !super::facts::ROLES.contains(&role.as_str()) {
                return Err(invalid(
                    &format!("related.{role}"),
                    format!(
                        "unknown role; the roles are {}",
                        super::facts::ROLES.join(", ")
                    ),
                ));
            }
            if values.is_empty() {
                return Err(invalid(
                    &format!("related.{role}"),
                    "give at least one value",
                ));
            }
            check_patterns(&format!("related.{role}"), values)?;
        }
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            return Err(invalid("threshold", format!("must be 1–{MAX_THRESHOLD}")));
        }
        if self.within > MAX_WITHIN {
            return Err(invalid("within", format!("must be 0–{MAX_WITHIN} seconds")));
        }
        match self.posture {
            Posture::Reactive => {
                if !self.after.is_empty() {
                    return Err(invalid("after", "only a proactive trigger has `after`"));
                }
                if self.threshold > 1 && self.within == 0 {
                    return Err(invalid(
                        "within",
                        "a threshold above 1 needs a window of at least 1 second",
                    ));
                }
            }
            Posture::Proactive => {
                if self.within == 0 {
                    return Err(invalid(
                        "within",
                        "a proactive trigger needs a window of at least 1 second",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `ev` passes the resource, label and related filters (not the event names).
    pub fn filters_pass(&self, ev: &EventFacts) -> bool {
        if !self.resource.is_empty() && !any_match(&self.resource, &ev.resource_id) {
            return false;
        }
        for (name, values) in &self.labels {
            match ev.labels.get(name) {
                Some(v) if any_match(values, v) => {}
                _ => return false,
            }
        }
        for (role, values) in &self.related {
            let found = ev
                .related
                .iter()
                .filter(|r| r.role == *role)
                .any(|r| r.names().any(|n| any_match(values, n)));
            if !found {
                return false;
            }
        }
        true
    }

    /// How `ev` concerns this trigger: whether it is an expected one, an opening one (proactive).
    pub fn relevance(&self, ev: &EventFacts) -> Relevance {
        if !self.filters_pass(ev) {
            return Relevance::default();
        }
        Relevance {
            expect: any_match(&self.expect, &ev.event),
            after: self.posture == Posture::Proactive && any_match(&self.after, &ev.event),
        }
    }

    /// The group `ev` counts in: `""` without `for_each`; `None` when the event has no
    /// resource of the grouping role (it is then ignored).
    pub fn group_key(&self, ev: &EventFacts) -> Option<String> {
        match self.for_each {
            None => Some(String::new()),
            Some(g) => match g.role() {
                None => Some(ev.resource_id.clone()),
                Some(role) => ev
                    .related
                    .iter()
                    .find(|r| r.role == role)
                    .map(|r| r.id.clone()),
            },
        }
    }
}

/// How an event concerns a trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relevance {
    /// It matches `expect` (and the filters).
    pub expect: bool,
    /// It matches `after` (and the filters; proactive only).
    pub after: bool,
}

impl Relevance {
    /// Either.
    pub fn any(self) -> bool {
        self.expect || self.after
    }
}

/// Whether `text` matches `pattern`: equal, or starting with the pattern's text before a
/// trailing `*`.
pub fn pattern_match(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

fn any_match(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| pattern_match(p, text))
}
