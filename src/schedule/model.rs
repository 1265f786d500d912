//! A stored schedule, as the API shows it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Kind, Recurrence, SpecError};

/// What the scheduler does with slots missed while no scheduler ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// Skip them (the default, like Prefect).
    #[default]
    None,
    /// Run the latest missed slot once.
    Latest,
    /// Run every missed slot, at most the scheduler's catch-up bound (100 by default), the
    /// latest ones.
    All,
}

impl Catchup {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Catchup::None => "none",
            Catchup::Latest => "latest",
            Catchup::All => "all",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Catchup> {
        match s {
            "none" => Some(Catchup::None),
            "latest" => Some(Catchup::Latest),
            "all" => Some(Catchup::All),
            _ => None,
        }
    }
}

/// A deployment's schedule: when its runs are due, with per-schedule overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Schedule {
    /// Id.
    pub id: Uuid,
    /// The deployment it creates runs of.
    pub deployment_id: Uuid,
    /// `cron`, `interval` or `rrule`.
    pub kind: String,
    /// The cron expression, interval (seconds or ISO 8601 duration) or RRULE.
    pub spec: String,
    /// IANA time zone the cron or RRULE wall times are read in.
    pub timezone: String,
    /// Where an interval counts from; the default RRULE DTSTART (its wall time).
    pub anchor: DateTime<Utc>,
    /// An inactive schedule creates no runs.
    pub active: bool,
    /// Flow parameters merged over the deployment's for this schedule's runs.
    pub parameters: Map<String, Value>,
    /// Run-level job-variable overrides of this schedule's runs.
    pub job_variables: Map<String, Value>,
    /// At most this many of this schedule's runs are active (PENDING, RUNNING, CANCELLING) at
    /// once; a due run waits for a slot. `null`: no limit.
    pub max_active_runs: Option<i64>,
    /// What to do with slots missed while no scheduler ran.
    pub catchup: Catchup,
    /// The latest slot runs have been created up to.
    pub last_slot: Option<DateTime<Utc>>,
    /// Grows with every change.
    pub version: i64,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
}

impl Schedule {
    /// The schedule's kind.
    pub fn kind(&self) -> Result<Kind, SpecError> {
        Kind::parse(&self.kind).ok_or_else(|| SpecError::new("kind", "unknown schedule kind"))
    }

    /// Its recurrence, ready to evaluate.
    pub fn recurrence(&self) -> Result<Recurrence, SpecError> {
        Recurrence::new(self.kind()?, &self.spec, &self.timezone, self.anchor)
    }
}
