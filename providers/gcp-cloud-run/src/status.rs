//! Maps a Cloud Run v2 `Execution` to a [`JobStatus`].

use std::time::Duration;

use pushpool_provider::JobStatus;
use serde_json::Value;

use crate::config::CloudRunJobConfig;

/// What an execution says about itself, read from its conditions and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Created, no task started yet.
    Pending,
    /// At least one task started, not finished.
    Running,
    /// All tasks succeeded.
    Succeeded,
    /// Finished unsuccessfully; the condition's message.
    Failed(String),
    /// Cancelled (or being cancelled and stopped).
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
    execution[key]
        .as_u64()
        .or_else(|| execution[key].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Reads the execution's `Completed` condition, `completionTime` and task counts.
pub fn observe(execution: &Value) -> Observed {
    let condition = completed_condition(execution);
    let state = condition.map(|c| &c["state"]).unwrap_or(&Value::Null);
    let reason = condition
        .map(|c| &c["executionReason"])
        .unwrap_or(&Value::Null);
    let finished = execution["completionTime"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
        || state_is(state, "CONDITION_SUCCEEDED", 4)
        || state_is(state, "CONDITION_FAILED", 3);
    let cancelled = count(execution, "cancelledCount") > 0
        || state_is(reason, "CANCELLED", 3)
        || state_is(reason, "CANCELLING", 4);
    if finished {
        if cancelled {
            return Observed::Cancelled;
        }
        if state_is(state, "CONDITION_SUCCEEDED", 4) {
            return Observed::Succeeded;
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

/// True when a not yet finished execution has been going for longer than the watchdog window
/// (`timeout × (maxRetries + 1) + watchdog_grace_seconds` since it started, or was created).
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
    age_since(since).is_some_and(|age| age > job.watchdog_window())
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
        return JobStatus::Failed {
            message: format!(
                "Cloud Run execution `{short}` timed out: still not finished {}s after it started (task timeout {}s × {} attempt(s) + watchdog_grace_seconds {}s); pushpool cancelled it",
                job.watchdog_window().as_secs(),
                job.timeout_seconds,
                job.max_retries + 1,
                job.watchdog_grace_seconds
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
                job.timeout_seconds
            ),
        },
        Observed::Failed(message) => JobStatus::Failed {
            message: format!("Cloud Run execution `{short}` failed: {message}"),
        },
    }
}
