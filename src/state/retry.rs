//! Automatic retries (issue 13, items 5 and 6): a run's retry policy, and the store-side rule
//! that turns an accepted FAILED or CRASHED into `SCHEDULED/AwaitingRetry` with the next attempt
//! (documented in `docs/retries.md`). Pure: the store passes the clock and the jitter sample.

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{names, InfrastructureEffect, LeaseEffect, RunRecord, StateType, Transition};
use crate::model::State;

/// Most retries a policy may ask for.
pub const MAX_RETRIES: i64 = 100;
/// Longest retry delay, in seconds (7 days).
pub const MAX_RETRY_DELAY_SECONDS: f64 = 604_800.0;
/// Most per-attempt delays in a list.
pub const MAX_RETRY_DELAYS: usize = 50;
/// Largest jitter factor.
pub const MAX_JITTER_FACTOR: f64 = 10.0;
/// Most tags on a deployment or run.
pub const MAX_TAGS: usize = 50;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 100;

/// Seconds to wait before a retry: one number for every retry, or one per retry (the last
/// repeats when there are more retries than entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryDelay {
    /// The same delay before every retry.
    Seconds(f64),
    /// The delay before retry 1, 2, …; the last entry repeats.
    PerAttempt(Vec<f64>),
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay::Seconds(0.0)
    }
}

impl RetryDelay {
    /// The delay in seconds before retry number `retry` (1 for the first retry).
    pub fn before(&self, retry: i64) -> f64 {
        match self {
            RetryDelay::Seconds(s) => *s,
            RetryDelay::PerAttempt(list) => {
                let i = usize::try_from(retry.max(1) - 1).unwrap_or(usize::MAX);
                list.get(i).or(list.last()).copied().unwrap_or(0.0)
            }
        }
    }
}

fn default_retry_on() -> Vec<StateType> {
    vec![StateType::Failed, StateType::Crashed]
}

/// What happens when an attempt of a run fails: how many more attempts, after how long, for
/// which end states. A deployment's policy is copied onto each of its runs at creation (with the
/// run's own overrides on top), so editing the deployment never changes a run under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetryPolicy {
    /// How many times a failed run is tried again (0–100; default 0: never).
    #[serde(default)]
    pub retries: i64,
    /// Seconds before each retry (0–604800): a number, or a list with one entry per retry (at
    /// most 50; the last repeats). Default 0.
    #[serde(default)]
    pub retry_delay_seconds: RetryDelay,
    /// Adds up to this fraction of the delay at random (0–10): a delay `d` becomes a uniform
    /// pick in `[d, d × (1 + factor)]`, so retries of many runs spread out. Default none.
    #[serde(default)]
    pub retry_jitter_factor: Option<f64>,
    /// The end states that are retried: `FAILED`, `CRASHED` or both (default both).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<StateType>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            retry_delay_seconds: RetryDelay::default(),
            retry_jitter_factor: None,
            retry_on: default_retry_on(),
        }
    }
}

/// A refused retry setting or tag: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSetting {
    /// The JSON path at fault, e.g. `retry_delay_seconds[2]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        field: field.into(),
        message: message.into(),
    }
}

fn check_delay(field: String, seconds: f64) -> Result<(), InvalidSetting> {
    if seconds.is_finite() && (0.0..=MAX_RETRY_DELAY_SECONDS).contains(&seconds) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be between 0 and {MAX_RETRY_DELAY_SECONDS} seconds"),
        ))
    }
}

impl RetryPolicy {
    /// Checks every field's bounds; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(0..=MAX_RETRIES).contains(&self.retries) {
            return Err(invalid(
                "retries",
                format!("must be between 0 and {MAX_RETRIES}"),
            ));
        }
        match &self.retry_delay_seconds {
            RetryDelay::Seconds(s) => check_delay("retry_delay_seconds".into(), *s)?,
            RetryDelay::PerAttempt(list) => {
                if list.is_empty() || list.len() > MAX_RETRY_DELAYS {
                    return Err(invalid(
                        "retry_delay_seconds",
                        format!("a list needs 1 to {MAX_RETRY_DELAYS} delays"),
                    ));
                }
                for (i, s) in list.iter().enumerate() {
                    check_delay(format!("retry_delay_seconds[{i}]"), *s)?;
                }
            }
        }
        if let Some(f) = self.retry_jitter_factor {
            if !(f.is_finite() && (0.0..=MAX_JITTER_FACTOR).contains(&f)) {
                return Err(invalid(
                    "retry_jitter_factor",
                    format!("must be between 0 and {MAX_JITTER_FACTOR}"),
                ));
            }
        }
        for (i, t) in self.retry_on.iter().enumerate() {
            if !matches!(t, StateType::Failed | StateType::Crashed) {
                return Err(invalid(
                    format!("retry_on[{i}]"),
                    format!("`{t}` is not retried; use FAILED or CRASHED"),
                ));
            }
        }
        Ok(())
    }

    /// The delay before retry number `retry` (1 for the first), with `sample` (uniform in
    /// `[0, 1)`) picking the jitter.
    pub fn delay(&self, retry: i64, sample: f64) -> Duration {
        let base = self.retry_delay_seconds.before(retry);
        let jitter = self.retry_jitter_factor.unwrap_or(0.0) * sample.clamp(0.0, 1.0);
        let seconds = (base * (1.0 + jitter)).clamp(0.0, MAX_RETRY_DELAY_SECONDS * 11.0);
        Duration::microseconds((seconds * 1e6).round() as i64)
    }
}

/// Per-run (or PATCH) changes to a retry policy: each field given replaces the deployment's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetryOverride {
    /// Replaces `retries`.
    #[serde(default)]
    pub retries: Option<i64>,
    /// Replaces `retry_delay_seconds`.
    #[serde(default)]
    pub retry_delay_seconds: Option<RetryDelay>,
    /// Replaces `retry_jitter_factor`.
    #[serde(default)]
    pub retry_jitter_factor: Option<f64>,
    /// Replaces `retry_on`.
    #[serde(default)]
    pub retry_on: Option<Vec<StateType>>,
}

impl RetryOverride {
    /// True when no field is given.
    pub fn is_empty(&self) -> bool {
        *self == RetryOverride::default()
    }

    /// `base` with the given fields replaced, checked.
    pub fn apply(&self, base: &RetryPolicy) -> Result<RetryPolicy, InvalidSetting> {
        let policy = RetryPolicy {
            retries: self.retries.unwrap_or(base.retries),
            retry_delay_seconds: self
                .retry_delay_seconds
                .clone()
                .unwrap_or_else(|| base.retry_delay_seconds.clone()),
            retry_jitter_factor: self.retry_jitter_factor.or(base.retry_jitter_factor),
            retry_on: self
                .retry_on
                .clone()
                .unwrap_or_else(|| base.retry_on.clone()),
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// Checks tags (at most 50, each 1–100 characters, no control characters and no commas: the
/// CLI and the `state` filter use commas as separators) and returns them without duplicates,
/// first occurrence first.
pub fn check_tags(field: &str, tags: &[String]) -> Result<Vec<String>, InvalidSetting> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, tag) in tags.iter().enumerate() {
        let chars = tag.chars().count();
        if chars == 0
            || chars > MAX_TAG_CHARS
            || tag.chars().any(|c| c.is_control() || c == ',')
            || tag.trim() != tag
        {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!(
                    "a tag is 1–{MAX_TAG_CHARS} characters without commas, control characters or surrounding spaces"
                ),
            ));
        }
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(invalid(field, format!("at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// A run's tags: its deployment's, then its own not already among them.
pub fn inherit_tags(deployment: &[String], own: &[String]) -> Vec<String> {
    let mut tags = deployment.to_vec();
    for t in own {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags
}

/// The retry an accepted transition calls for: the extra transition to `SCHEDULED/AwaitingRetry`
/// and the new scheduled time.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// From the failed state to `SCHEDULED/AwaitingRetry`, attempt + 1, lease and
    /// infrastructure id cleared.
    pub transition: Transition,
    /// When the next attempt is due: the failure plus the delay.
    pub scheduled_time: DateTime<Utc>,
}

/// The orchestration rule: `accepted` (the run's row after an accepted transition from `from`)
/// is retried when it is FAILED or CRASHED, listed in the policy's `retry_on`, attempts remain
/// (`attempt <= retries`), and the run was not being cancelled (`from` is not CANCELLING; a
/// CANCELLED run is never retried). `sample` is uniform in `[0, 1)` for the jitter.
pub fn retry_after(
    accepted: &RunRecord,
    from: StateType,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    sample: f64,
) -> Option<Retry> {
    let failed = accepted.state.state_type;
    if !matches!(failed, StateType::Failed | StateType::Crashed)
        || from == StateType::Cancelling
        || !policy.retry_on.contains(&failed)
        || accepted.attempt > policy.retries
    {
        return None;
    }
    let retry = accepted.attempt;
    let scheduled_time = now + policy.delay(retry, sample);
    let message = format!(
        "attempt {} ended {failed}; retry {retry} of {} due at {}",
        accepted.attempt,
        policy.retries,
        scheduled_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let row = RunRecord {
        state: State {
            state_type: StateType::Scheduled,
            name: names::AWAITING_RETRY.to_string(),
            message: Some(message),
            timestamp: now,
        },
        attempt: accepted.attempt + 1,
        lease_owner: None,
        lease_expires: None,
        infrastructure_id: None,
    };
    Some(Retry {
        transition: Transition {
            from: failed,
            row,
            lease: LeaseEffect::Cleared,
            infrastructure: InfrastructureEffect::Cleared,
            next_attempt: true,
            wakes_controllers: true,
        },
        scheduled_time,
    })
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
