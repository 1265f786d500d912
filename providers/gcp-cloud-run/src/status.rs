//! Maps a Cloud Run v2 `Execution` to a [`JobStatus`].
//!
//! Only the execution's `Completed` condition decides that it ended (`CONDITION_SUCCEEDED` or
//! `CONDITION_FAILED`): `completionTime` is written separately from the conditions, so an
//! execution may show one before the other says how it ended. Only the condition's
//! `executionReason` `CANCELLED` makes it cancelled: a failed execution of several tasks has
//! cancelled tasks too (Cloud Run stops the others), so `cancelledCount > 0` says nothing about
//! who ended it.

use std::time::Duration;

use pushpool_provider::JobStatus;
use serde_json::Value;

use crate::config::CloudRunJobConfig;

/// What an execution says about itself, read from its `Completed` condition and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Created, no task started yet.
    Pending,
    /// At least one task started, not finished (also while a cancel is in progress).
    Running,
    /// All tasks succeeded.
    Succeeded,
    /// Finished unsuccessfully; the condition's message.
    Failed(String),
    /// Ended by a cancel (`executionReason` `CANCELLED`).
    Cancelled,
}

/// True when an enum value (int or name, depending on `enum-encoding`) is `name`/`number`.
pub(crate) fn state_is(v: &Value, name: &str, number: i64) -> bool {
    v.as_str() == Some(name) || v.as_i64() == Some(number)
}

fn completed_condition(execution: &Value) -> Option<&Value> {
    execution["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Completed")
}

fn count(execution: &Value, key: &str) -> u64 {
    number(&execution[key]).unwrap_or(0)
}

/// An integer as the API writes it (int32 as a number, int64 as a string, durations `"600s"`).
fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_str()
            .and_then(|s| s.trim_end_matches('s').parse().ok())
    })
}

/// Reads the execution's `Completed` condition (the only word on whether it ended) and task counts.
pub fn observe(execution: &Value) -> Observed {
    let condition = completed_condition(execution);
    let state = condition.map(|c| &c["state"]).unwrap_or(&Value::Null);
    let reason = condition
        .map(|c| &c["executionReason"])
        .unwrap_or(&Value::Null);
    if state_is(state, "CONDITION_SUCCEEDED", 4) {
        return Observed::Succeeded;
    }
    if state_is(state, "CONDITION_FAILED", 3) {
        if state_is(reason, "CANCELLED", 3) {
            return Observed::Cancelled;
        }
        let message = condition
            .and_then(|c| c["message"].as_str())
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{} of {} task(s) failed",
                    count(execution, "failedCount"),
                    count(execution, "taskCount").max(1)
                )
            });
        return Observed::Failed(message);
    }
    if count(execution, "runningCount") > 0
        || execution["startTime"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        || count(execution, "succeededCount") + count(execution, "failedCount") > 0
    {
        Observed::Running
    } else {
        Observed::Pending
    }
}

fn age_since(ts: &Value) -> Option<Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(ts.as_str()?).ok()?;
    let elapsed = chrono::Utc::now().signed_duration_since(t);
    elapsed.to_std().ok()
}

/// How long an execution may take before the watchdog calls it timed out, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogWindow {
    /// Tasks of the execution.
    pub tasks: u64,
    /// Tasks run at once (`0` = unknown: counted as 1).
    pub parallelism: u64,
    /// Waves of tasks: `ceil(tasks / parallelism)`.
    pub waves: u64,
    /// Timeout of one task attempt, seconds.
    pub task_timeout: u64,
    /// Attempts of one task (`maxRetries + 1`).
    pub attempts: u64,
    /// `watchdog_grace_seconds`.
    pub grace: u64,
}

impl WatchdogWindow {
    /// `waves × task timeout × attempts + grace`.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(
            self.waves
                .saturating_mul(self.task_timeout)
                .saturating_mul(self.attempts)
                .saturating_add(self.grace),
        )
    }
}

/// The watchdog window of `execution`: its own `taskCount`, `parallelism` and task template
/// (timeout, `maxRetries`) when it shows them, else the job configuration's. Tasks run in waves
/// of `parallelism`; an unknown parallelism (0: "as many as the quota allows") counts as 1, so
/// the watchdog is late rather than early.
pub fn watchdog_window(execution: &Value, job: &CloudRunJobConfig) -> WatchdogWindow {
    let tasks = number(&execution["taskCount"])
        .filter(|n| *n > 0)
        .unwrap_or(job.task_count)
        .max(1);
    let parallelism = number(&execution["parallelism"])
        .filter(|n| *n > 0)
        .unwrap_or(job.parallelism)
        .min(tasks);
    let waves = tasks.div_ceil(parallelism.max(1));
    let task = &execution["template"];
    let task_timeout = number(&task["timeout"])
        .filter(|n| *n > 0)
        .unwrap_or(job.timeout_seconds);
    let attempts = number(&task["maxRetries"])
        .unwrap_or(job.max_retries)
        .saturating_add(1);
    WatchdogWindow {
        tasks,
        parallelism,
        waves,
        task_timeout,
        attempts,
        grace: job.watchdog_grace_seconds,
    }
}

/// True when a not yet finished execution has been going for longer than its watchdog window
/// (since it started, or was created).
pub(crate) fn is_watchdog(execution: &Value, job: &CloudRunJobConfig) -> bool {
    if !matches!(observe(execution), Observed::Pending | Observed::Running) {
        return false;
    }
    let since = if execution["startTime"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        &execution["startTime"]
    } else {
        &execution["createTime"]
    };
    age_since(since).is_some_and(|age| age > watchdog_window(execution, job).duration())
}

fn looks_like_timeout(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("timeout") || m.contains("timed out") || m.contains("deadline exceeded")
}

/// The [`JobStatus`] of an execution for a job configured as `job`.
pub fn execution_status(execution: &Value, job: &CloudRunJobConfig) -> JobStatus {
    let name = execution["name"].as_str().unwrap_or("");
    let short = crate::short(name);
    if is_watchdog(execution, job) {
        let w = watchdog_window(execution, job);
        return JobStatus::Failed {
            message: format!(
                "Cloud Run execution `{short}` timed out: still not finished {}s after it started ({} wave(s) of {} task(s) at parallelism {} × task timeout {}s × {} attempt(s) + watchdog_grace_seconds {}s); pushpool cancelled it",
                w.duration().as_secs(),
                w.waves,
                w.tasks,
                w.parallelism.max(1),
                w.task_timeout,
                w.attempts,
                w.grace
            ),
        };
    }
    match observe(execution) {
        Observed::Pending => JobStatus::Pending,
        Observed::Running => JobStatus::Running,
        Observed::Succeeded => JobStatus::Completed {
            summary: Some(format!(
                "Cloud Run execution `{short}` succeeded ({} of {} task(s))",
                count(execution, "succeededCount"),
                count(execution, "taskCount").max(1)
            )),
        },
        Observed::Cancelled => JobStatus::Cancelled,
        Observed::Failed(message) if looks_like_timeout(&message) => JobStatus::Failed {
            message: format!(
                "Cloud Run execution `{short}` timed out: a task exceeded its timeout of {}s ({message})",
                watchdog_window(execution, job).task_timeout
            ),
        },
        Observed::Failed(message) => JobStatus::Failed {
            message: format!("Cloud Run execution `{short}` failed: {message}"),
        },
    }
}
