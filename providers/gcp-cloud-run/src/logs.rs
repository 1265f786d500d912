//! The execution's own logs from Cloud Logging, and Cloud Run's error-summary rules
//! (docs/error-summaries.md).
//!
//! [`LogReader::read`] calls `entries:list` through the official `google-cloud-logging-v2` client
//! (HTTP/JSON, the same credentials as the Admin API) with the filter
//! `resource.type="cloud_run_job" resource.labels.job_name="<job>"
//! labels."run.googleapis.com/execution_name"="<execution>" timestamp>="<since>"`, oldest first,
//! a few pages per read; every entry passes the run's [`LogCursor`] (deduplicated by `insertId`,
//! bounded). The endpoint is `https://logging.googleapis.com` when the pool talks to the real
//! Admin API, else the pool's `endpoint_url` (a fake or an emulator serving both APIs).

use std::collections::HashMap;

use google_cloud_gax::options::RequestOptionsBuilder as _;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_logging_v2::client::LoggingServiceV2;
use pushpool_provider::summary::{self, Cause, ErrorSummary, RunEnd};
use pushpool_provider::{LogCursor, ProviderError, ProviderLogLine};
use serde_json::Value;

use crate::api::{api_error, ApiError, CloudRunApi};
use crate::config::{CloudRunJobConfig, DEFAULT_ENDPOINT};

/// Cloud Logging's public endpoint.
pub const LOGGING_ENDPOINT: &str = "https://logging.googleapis.com";
/// Entries asked for per page.
const PAGE_SIZE: i32 = 500;
/// Most pages one read goes through.
const PAGES_PER_READ: usize = 4;
/// Per-request timeout.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// One Cloud Logging client per (endpoint, credentials).
#[derive(Default)]
pub(crate) struct LogReader {
    clients: tokio::sync::Mutex<HashMap<String, LoggingServiceV2>>,
}

/// The Cloud Logging endpoint for a pool: Google's when the pool uses Google's Admin API, else
/// the pool's own endpoint.
pub fn logging_endpoint(job: &CloudRunJobConfig) -> String {
    if job.endpoint_url.trim_end_matches('/') == DEFAULT_ENDPOINT {
        LOGGING_ENDPOINT.to_string()
    } else {
        job.endpoint_url.clone()
    }
}

/// The `entries:list` filter of one execution's entries at or after `since` (RFC 3339).
pub fn filter(execution: &str, since: Option<&str>) -> Option<String> {
    // projects/P/locations/R/jobs/J/executions/E
    let parts: Vec<&str> = execution.split('/').collect();
    let (job, exec) = match parts.as_slice() {
        ["projects", _, "locations", _, "jobs", job, "executions", exec] => (*job, *exec),
        _ => return None,
    };
    let mut f = format!(
        "resource.type=\"cloud_run_job\" AND resource.labels.job_name=\"{job}\" AND labels.\"run.googleapis.com/execution_name\"=\"{exec}\""
    );
    if let Some(since) = since {
        f.push_str(&format!(" AND timestamp>=\"{since}\""));
    }
    Some(f)
}

fn project_of(execution: &str) -> Option<&str> {
    execution.strip_prefix("projects/")?.split('/').next()
}

fn rfc3339_micros(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The text of an entry: `textPayload`, or `jsonPayload.message` (structured logging), or the
/// JSON payload itself.
fn entry_text(entry: &Value) -> Option<String> {
    if let Some(t) = entry["textPayload"].as_str() {
        return Some(t.trim_end().to_string());
    }
    let json = entry.get("jsonPayload")?;
    Some(match json["message"].as_str() {
        Some(m) => m.trim_end().to_string(),
        None => json.to_string(),
    })
}

/// One entry as a provider line (`None` for entries without text or time).
pub fn entry_line(entry: &Value) -> Option<ProviderLogLine> {
    let text = entry_text(entry)?;
    let ts = entry["timestamp"].as_str()?;
    let micros = chrono::DateTime::parse_from_rfc3339(ts)
        .ok()?
        .timestamp_micros();
    let id = entry["insertId"]
        .as_str()
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{ts}:{text}"));
    Some(ProviderLogLine {
        id,
        timestamp_micros: micros,
        line: text,
    })
}

impl LogReader {
    async fn client(
        &self,
        api: &CloudRunApi,
        job: &CloudRunJobConfig,
    ) -> Result<LoggingServiceV2, ApiError> {
        let endpoint = logging_endpoint(job);
        let key = format!("{endpoint} {}", job.credentials.cache_key());
        let mut cache = self.clients.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let client = LoggingServiceV2::builder()
            .with_endpoint(endpoint)
            .with_credentials(api.credentials_for(job)?)
            .with_retry_policy(NeverRetry)
            .build()
            .await
            .map_err(|e| ApiError::Auth {
                message: format!("building the Cloud Logging client failed: {e}"),
                transient: false,
            })?;
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// Reads the execution's entries from `cursor` on (see the module docs).
    pub(crate) async fn read(
        &self,
        api: &CloudRunApi,
        job: &CloudRunJobConfig,
        execution: &str,
        cursor: &mut LogCursor,
    ) -> Result<Vec<ProviderLogLine>, ProviderError> {
        let (Some(project), Some(_)) = (project_of(execution), filter(execution, None)) else {
            return Ok(vec![]);
        };
        let context = format!("reading the logs of `{execution}` from Cloud Logging");
        let client = self
            .client(api, job)
            .await
            .map_err(|e| e.into_provider(&context))?;
        let mut lines = vec![];
        for _ in 0..PAGES_PER_READ {
            let since = cursor.since_micros.and_then(rfc3339_micros);
            let query = filter(execution, since.as_deref()).unwrap_or_default();
            let answer = client
                .list_log_entries()
                .set_resource_names([format!("projects/{project}")])
                .set_filter(query)
                .set_order_by("timestamp asc")
                .set_page_size(PAGE_SIZE)
                .set_page_token(cursor.page_token.clone().unwrap_or_default())
                .with_attempt_timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| api_error(e).into_provider(&context))?;
            let answer = serde_json::to_value(answer).unwrap_or(Value::Null);
            for entry in answer["entries"].as_array().into_iter().flatten() {
                if let Some(line) = entry_line(entry).and_then(|l| cursor.accept(l)) {
                    lines.push(line);
                }
            }
            let next = answer["nextPageToken"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            // Without a next page the next read starts again from the newest entry's time
            // (repeats there are dropped by their insertId).
            let more = next.is_some();
            cursor.page_token = next;
            if !more || cursor.exhausted() {
                break;
            }
        }
        Ok(lines)
    }
}

/// Cloud Run's rules, then the common ones: pushpool's watchdog and Cloud Run's task timeout
/// (`timeout`), the memory limit (`out_of_memory`), the container's exit code from the
/// condition message or the `Container called exit(N).` system line (`user_code_error`, with
/// the signal name for codes above 128 and the container's last lines as evidence), an image
/// that cannot be pulled (`not_found`).
pub fn summarize(end: &RunEnd<'_>) -> ErrorSummary {
    let lower = end.message.to_ascii_lowercase();
    if lower.contains("watchdog_grace_seconds") || lower.contains("timed out") {
        return ErrorSummary::new(
            Cause::Timeout,
            if lower.contains("watchdog") {
                "pushpool's watchdog stopped the execution: it ran past its task timeout × attempts + watchdog_grace_seconds"
            } else {
                "a task ran into its Cloud Run task timeout; raise `timeout` or make the job faster"
            },
        )
        .with_evidence(end.message)
        .with_evidence(summary::last_job_line(end).unwrap_or_default());
    }
    if lower.contains("memory limit") {
        return ErrorSummary::new(
            Cause::OutOfMemory,
            "a task exceeded its memory limit; raise `memory` or make the job use less",
        )
        .with_evidence(end.message);
    }
    if lower.contains("image")
        && (lower.contains("not found")
            || lower.contains("manifest unknown")
            || lower.contains("pull"))
    {
        return ErrorSummary::new(
            Cause::NotFound,
            "the container image could not be pulled; check `image` and the service account's access to the registry",
        )
        .with_evidence(end.message);
    }
    // The exit code: in the condition message, or in Cloud Run's system log line.
    let exit_line = end
        .job_lines()
        .rev()
        .find(|l| l.starts_with("Container called exit(") || l.contains("terminated on signal"));
    let code = summary::exit_code(end.message).or_else(|| exit_line.and_then(summary::exit_code));
    let signal = exit_line.and_then(summary::signal);
    if code.is_some() || signal.is_some() {
        let python = summary::python_exception(end.job_lines());
        let (what, cause) = match (code, signal) {
            (Some(c), _) if c > 128 && summary::signal_name(c - 128).is_some() => {
                (summary::describe_exit(c), Cause::Unknown)
            }
            (Some(c), _) => (summary::describe_exit(c), Cause::UserCodeError),
            (None, Some(n)) => (
                format!(
                    "signal {n} ({})",
                    summary::signal_name(n).unwrap_or("unknown signal")
                ),
                Cause::Unknown,
            ),
            (None, None) => unreachable!("checked above"),
        };
        let why = match (&python, cause) {
            (Some((kind, _)), _) => format!("the container's Python code raised {kind} and it ended with {what}"),
            (None, Cause::UserCodeError) => format!("the container ended with {what}"),
            _ => format!("the container was stopped with {what} (the out-of-memory killer, a stop, or its host going away)"),
        };
        let cause = if python.is_some() {
            Cause::UserCodeError
        } else {
            cause
        };
        let mut s = ErrorSummary::new(cause, why).with_evidence(&what);
        if let Some((_, line)) = &python {
            s = s.with_evidence(line);
        }
        s = s.with_evidence(end.message);
        // The container's last own line before Cloud Run's exit line.
        let last = end
            .job_lines()
            .rev()
            .find(|l| !l.starts_with("Container called exit(") && !l.trim().is_empty());
        return s.with_evidence(last.unwrap_or_default());
    }
    summary::common(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpool_provider::{Ending, LogStream, TailLine};
    use serde_json::json;

    fn lines(text: &str) -> Vec<TailLine> {
        text.lines()
            .map(|l| TailLine::new(LogStream::Provider, l))
            .collect()
    }

    #[test]
    fn the_filter_names_job_and_execution() {
        let f = filter(
            "projects/p1/locations/us-central1/jobs/etl-ab12/executions/etl-ab12-x7k2p",
            Some("2026-12-01T21:00:00.000000Z"),
        )
        .unwrap();
        assert_eq!(
            f,
            "resource.type=\"cloud_run_job\" AND resource.labels.job_name=\"etl-ab12\" AND labels.\"run.googleapis.com/execution_name\"=\"etl-ab12-x7k2p\" AND timestamp>=\"2026-12-01T21:00:00.000000Z\""
        );
        assert!(filter("not/an/execution", None).is_none());
    }

    #[test]
    fn entries_become_lines_with_their_own_time_and_id() {
        // A real-shaped entry of a Cloud Run job's stderr.
        let entry = json!({
            "insertId": "6750c2a1000b3f9e1c4d2a87",
            "logName": "projects/p1/logs/run.googleapis.com%2Fstderr",
            "resource": {"type": "cloud_run_job", "labels": {"job_name": "etl-ab12", "location": "us-central1", "project_id": "p1"}},
            "labels": {"run.googleapis.com/execution_name": "etl-ab12-x7k2p", "run.googleapis.com/task_index": "0", "run.googleapis.com/task_attempt": "0"},
            "textPayload": "ValueError: bad input row 7\n",
            "timestamp": "2026-12-01T21:00:01.123456Z",
            "receiveTimestamp": "2026-12-01T21:00:01.380512Z"
        });
        let l = entry_line(&entry).unwrap();
        assert_eq!(l.id, "6750c2a1000b3f9e1c4d2a87");
        assert_eq!(l.line, "ValueError: bad input row 7");
        assert_eq!(l.timestamp_micros, 1_796_158_801_123_456);
        let structured = json!({"insertId": "a", "timestamp": "2026-12-01T21:00:01Z",
                                "jsonPayload": {"message": "loaded 3 rows", "severity": "INFO"}});
        assert_eq!(entry_line(&structured).unwrap().line, "loaded 3 rows");
    }

    #[test]
    fn a_failed_task_names_the_exit_code_and_the_containers_last_lines() {
        // Cloud Run's condition message of a failed execution, and the job's last log entries.
        let logs = lines(
            "loading rows\nTraceback (most recent call last):\n  File \"/app/etl.py\", line 9, in <module>\n    raise ValueError(\"bad input row 7\")\nValueError: bad input row 7\nContainer called exit(1).",
        );
        let s = summarize(&RunEnd {
            ending: Ending::Failed,
            message: "Cloud Run execution `etl-ab12-x7k2p` failed: Task etl-ab12-x7k2p-task0 failed with message: The container exited with an error.",
            logs: &logs,
        });
        assert_eq!(s.cause, Cause::UserCodeError);
        assert_eq!(s.evidence[0], "exit code 1");
        assert_eq!(s.evidence[1], "ValueError: bad input row 7");
        assert!(s.explanation.contains("exit code 1"), "{s:?}");
    }

    #[test]
    fn a_signal_exit_names_the_signal() {
        let logs = lines("working\nContainer called exit(137).");
        let s = summarize(&RunEnd {
            ending: Ending::Failed,
            message: "Cloud Run execution `e` failed: 1 of 1 task(s) failed",
            logs: &logs,
        });
        assert_eq!(s.evidence[0], "exit code 137 (SIGKILL)");
        assert_eq!(s.cause, Cause::Unknown);
    }

    #[test]
    fn timeouts_memory_and_images() {
        let cases = [
            ("Cloud Run execution `e` timed out: a task exceeded its timeout of 600s (Task e-task0 failed with message: The configured timeout was reached.)", Cause::Timeout),
            ("Cloud Run execution `e` timed out: still not finished 1260s after it started (task timeout 600s × 2 attempt(s) + watchdog_grace_seconds 60s); pushpool cancelled it", Cause::Timeout),
            ("Cloud Run execution `e` failed: Task e-task0 failed with message: Memory limit of 512 MiB exceeded with 530 MiB used. Consider increasing the memory limit, see https://cloud.google.com/run/docs/configuring/memory-limits", Cause::OutOfMemory),
            ("submitting to the `cloud-run-v2:push` provider failed: HTTP 400 INVALID_ARGUMENT: Image 'us-docker.pkg.dev/p1/jobs/etl:9' not found.", Cause::NotFound),
        ];
        for (message, cause) in cases {
            let s = summarize(&RunEnd {
                ending: Ending::Failed,
                message,
                logs: &[],
            });
            assert_eq!(s.cause, cause, "{message}");
        }
    }
}
