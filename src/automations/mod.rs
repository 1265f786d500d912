//! Automations: per workspace, a trigger ([`Trigger`]) and a list of actions ([`Action`]).
//!
//! The engine ([`Engine`]) runs inside `pushpool up` and `pushpool controller`. It reads the
//! event log in order through a cursor kept in the store, moves each automation's per-group
//! state ([`evaluate`], pure), and records each firing and its actions in the same transaction
//! that advances the cursor, while holding the cursor's row lock: several controllers on one
//! PostgreSQL store take turns, and a firing's occurrence key is unique, so every occurrence
//! fires exactly once, also across restarts. Actions are then claimed (lease) and done by any
//! controller; every firing and every action outcome is itself an event. See
//! docs/automations.md.

pub mod actions;
pub(crate) mod context;
mod engine;
pub mod evaluate;
mod execute;
pub mod facts;
mod notify_bridge;
pub mod template;
pub mod trigger;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use actions::Action;
pub use engine::{Engine, EngineConfig, TickReport};
pub use facts::EventFacts;
pub use trigger::{EventTrigger, Trigger, TriggerError};

/// An automation as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Automation {
    /// Id.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Unique name in the workspace.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Disabled automations neither count events nor fire.
    pub enabled: bool,
    /// What it reacts to.
    pub trigger: Trigger,
    /// What it does, in order.
    pub actions: Vec<Action>,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
}

/// One firing of an automation and the outcome of each of its actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Firing {
    /// Id.
    pub id: Uuid,
    /// The automation.
    pub automation_id: Uuid,
    /// What occurred (unique per automation).
    pub occurrence: String,
    /// The group (`for_each` value; empty without one).
    pub group_key: String,
    /// The event that completed the condition, or opened a proactive window.
    pub event_id: Option<String>,
    /// Events counted (reactive) or expected events seen (proactive).
    pub count: u32,
    /// When it fired.
    pub fired: DateTime<Utc>,
    /// Its actions, in order.
    pub actions: Vec<ActionOutcome>,
}

/// Where one action of a firing stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionOutcome {
    /// Position in the automation's list.
    pub position: u32,
    /// The action's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Tries so far.
    pub attempts: u32,
    /// What it did (`succeeded`) or why it failed.
    pub result: Option<Value>,
}
