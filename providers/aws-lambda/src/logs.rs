//! The function's own logs and error summaries (docs/error-summaries.md).
//!
//! - A synchronous (`RequestResponse`) invoke asks for `LogType=Tail`: Lambda answers the last
//!   4 KB of the invocation's log, base64 in `X-Amz-Log-Result`; [`write_tail`] stores it as the
//!   run's `provider` lines and remembers the invocation's request id.
//! - CloudWatch Logs holds the whole log, in the group `/aws/lambda/<function>`: [`read`] finds
//!   the stream with the invocation's `START RequestId: <id>` line (`FilterLogEvents` filtered by
//!   the request id), then pages through that stream from there (`FilterLogEvents` with the
//!   stream name and `nextToken`) until the invocation's `REPORT RequestId: <id>` line. Every line
//!   passes the run's [`LogCursor`] (deduplicated by `eventId`, bounded).
//! - [`summarize`]: Lambda's rules (the `errorType: errorMessage` of a function error, the
//!   runtime's `Task timed out` and `Runtime.OutOfMemory`, the watchdog of an invocation without
//!   word), then the common ones.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_lambda::operation::invoke::InvokeOutput;
use aws_sdk_lambda::operation::RequestId;
use base64::Engine as _;
use pushpool_provider::summary::{self, Cause, ErrorSummary, RunEnd};
use pushpool_provider::{LogCursor, LogSink, LogStream, ProviderError, ProviderLogLine};

use crate::clients::Clients;
use crate::errors::{describe, to_provider_error};
use crate::InfraId;

/// Most `FilterLogEvents` pages one read goes through.
const PAGES_PER_READ: usize = 5;
/// How far before the submission the search for the invocation's stream starts (clock skew).
const SEARCH_MARGIN_MS: i64 = 60_000;

/// Request ids of synchronous invocations, by the infrastructure id's local key (Lambda names
/// the request id only in its answer).
#[derive(Debug, Default)]
pub(crate) struct RequestIds(Mutex<HashMap<String, String>>);

impl RequestIds {
    fn remember(&self, key: &str, request_id: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(key.to_string(), request_id.to_string());
    }

    /// The request id of the invocation behind `id`: the id's own key for an `Event`
    /// invocation, the remembered one for a synchronous invocation that answered.
    pub(crate) fn of(&self, id: &InfraId) -> Option<String> {
        match id.mode {
            crate::InvocationType::Event => {
                Some(id.key.clone()).filter(|k| !k.starts_with("local-"))
            }
            crate::InvocationType::RequestResponse => self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id.key)
                .cloned(),
        }
    }
}

/// The lines of a `X-Amz-Log-Result` value (base64 of the log's last 4 KB); empty when it is
/// not base64. The first line may be cut mid-way (the tail starts inside it).
pub fn decode_tail(encoded: &str) -> Vec<String> {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return vec![];
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Stores the log tail of a synchronous answer as `provider` lines and remembers its request id.
pub(crate) fn write_tail(out: &InvokeOutput, key: &str, ids: &RequestIds, logs: &dyn LogSink) {
    if let Some(request_id) = out.request_id().filter(|r| !r.is_empty()) {
        ids.remember(key, request_id);
    }
    let Some(tail) = out.log_result() else {
        return;
    };
    let now = now_micros();
    for line in decode_tail(tail) {
        logs.line_at(LogStream::Provider, now, line);
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The log group Lambda writes a function's logs to by default: `/aws/lambda/<name>`, the name
/// taken from an ARN or a `name:qualifier`.
pub fn log_group(function: &str) -> String {
    let name = if function.starts_with("arn:") {
        function.split(':').nth(6).unwrap_or(function)
    } else if function.split(':').nth(1) == Some("function") {
        // `123456789012:function:name[:qualifier]`
        function.split(':').nth(2).unwrap_or(function)
    } else {
        function.split(':').next().unwrap_or(function)
    };
    format!("/aws/lambda/{name}")
}

/// Where the read of one invocation's stream stands, kept in [`LogCursor::page_token`]:
/// `<stream>\n<query start ms>\n<next token>` (the start and token empty between queries; a
/// token is only valid with the query it came from), or [`DONE`] once the `REPORT` line was
/// read.
struct StreamToken {
    stream: String,
    query_start_ms: Option<i64>,
    next: Option<String>,
}

impl StreamToken {
    fn parse(token: &str) -> StreamToken {
        let mut parts = token.splitn(3, '\n');
        let stream = parts.next().unwrap_or_default().to_string();
        let query_start_ms = parts.next().and_then(|s| s.parse().ok());
        let next = parts.next().filter(|n| !n.is_empty()).map(str::to_string);
        StreamToken {
            stream,
            query_start_ms,
            next,
        }
    }

    fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.stream,
            self.query_start_ms
                .map(|s| s.to_string())
                .unwrap_or_default(),
            self.next.as_deref().unwrap_or_default()
        )
    }
}

const DONE: &str = "\u{0}done";

/// Reads the invocation's lines from CloudWatch Logs, from `cursor` on (see the module docs).
pub(crate) async fn read(
    clients: &Clients,
    id: &InfraId,
    request_id: &str,
    cursor: &mut LogCursor,
) -> Result<Vec<ProviderLogLine>, ProviderError> {
    if cursor.page_token.as_deref() == Some(DONE) {
        return Ok(vec![]);
    }
    let group = log_group(&id.function);
    let search_from = id.submitted_ms as i64 - SEARCH_MARGIN_MS;
    if cursor.page_token.is_none() {
        // Find the invocation's stream by its START line.
        let found = clients
            .logs
            .filter_log_events()
            .log_group_name(&group)
            .start_time(search_from)
            .filter_pattern(format!("\"START RequestId: {request_id}\""))
            .send()
            .await;
        let out = match found {
            Ok(out) => out,
            Err(e) if describe(&e).starts_with("ResourceNotFoundException") => {
                // No group yet: the function has not logged anything yet.
                return Ok(vec![]);
            }
            Err(e) => {
                return Err(to_provider_error(
                    &e,
                    &format!("reading the log group `{group}` from CloudWatch Logs"),
                ))
            }
        };
        let start = out.events().iter().find(|e| {
            e.message()
                .is_some_and(|m| m.starts_with(&format!("START RequestId: {request_id}")))
        });
        let Some((stream, at)) = start.and_then(|e| Some((e.log_stream_name()?, e.timestamp()?)))
        else {
            return Ok(vec![]);
        };
        cursor.page_token = Some(
            StreamToken {
                stream: stream.to_string(),
                query_start_ms: None,
                next: None,
            }
            .encode(),
        );
        if cursor.since_micros.is_none() {
            cursor.since_micros = Some(at * 1000);
        }
    }
    let report = format!("REPORT RequestId: {request_id}");
    let mut lines = vec![];
    for _ in 0..PAGES_PER_READ {
        let mut token = StreamToken::parse(cursor.page_token.as_deref().unwrap_or_default());
        let query_start = token
            .query_start_ms
            .or(cursor.since_micros.map(|us| us / 1000))
            .unwrap_or(search_from);
        let out = clients
            .logs
            .filter_log_events()
            .log_group_name(&group)
            .log_stream_names(&token.stream)
            .start_time(query_start)
            .set_next_token(token.next.clone())
            .send()
            .await
            .map_err(|e| {
                to_provider_error(
                    &e,
                    &format!(
                        "reading the log stream `{}` of `{group}` from CloudWatch Logs",
                        token.stream
                    ),
                )
            })?;
        let mut finished = false;
        for event in out.events() {
            let text = event.message().unwrap_or_default().trim_end().to_string();
            let line = ProviderLogLine {
                id: event
                    .event_id()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{}:{text}", event.timestamp().unwrap_or(0))),
                timestamp_micros: event.timestamp().unwrap_or(0) * 1000,
                line: text,
            };
            let is_report = line.line.starts_with(&report);
            if let Some(line) = cursor.accept(line) {
                lines.push(line);
            }
            if is_report {
                finished = true;
                break;
            }
        }
        if finished {
            cursor.page_token = Some(DONE.to_string());
            break;
        }
        match out.next_token().filter(|n| !n.is_empty()) {
            Some(next) if !cursor.exhausted() => {
                token.query_start_ms = Some(query_start);
                token.next = Some(next.to_string());
                cursor.page_token = Some(token.encode());
            }
            _ => {
                // Caught up: the next read asks again from the newest line's time (repeats
                // there are dropped by their event id).
                token.query_start_ms = None;
                token.next = None;
                cursor.page_token = Some(token.encode());
                break;
            }
        }
    }
    Ok(lines)
}

/// `errorType` and `errorMessage` of a function error as the provider's state message gives
/// them (`ValueError: bad input`), or of the `[ERROR]` line the Python runtime logs.
fn function_error(end: &RunEnd<'_>) -> Option<(String, String)> {
    // The runtime's own line: `[ERROR] ValueError: bad input` (Python), with a tab-separated
    // timestamp and request id before it on some runtimes.
    let logged = end.job_lines().rev().find_map(|l| {
        let at = l.find("[ERROR] ")?;
        let rest = l[at + "[ERROR] ".len()..].trim();
        let (kind, message) = rest.split_once(": ")?;
        Some((kind.trim().to_string(), message.trim().to_string()))
    });
    logged.or_else(|| {
        let (kind, message) = end.message.split_once(": ")?;
        let kind = kind.trim();
        let typed = !kind.is_empty()
            && !kind.contains(' ')
            && kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
        typed.then(|| (kind.to_string(), message.trim().to_string()))
    })
}

/// Lambda's rules, then the common ones.
pub fn summarize(end: &RunEnd<'_>) -> ErrorSummary {
    let timed_out = end
        .job_lines()
        .rev()
        .find(|l| l.contains("Task timed out after"));
    if let Some(line) = timed_out {
        return ErrorSummary::new(
            Cause::Timeout,
            "the function ran into its Lambda timeout; raise the function's timeout or make it faster",
        )
        .with_evidence(line);
    }
    if end.message.contains("watchdog_grace_seconds") {
        // The watchdog: no result within the run's window (its own report, the results queue).
        return ErrorSummary::new(
            Cause::Timeout,
            "pushpool's watchdog ended the run: no result within timeout_seconds + watchdog_grace_seconds",
        )
        .with_evidence(end.message)
        .with_evidence(summary::last_job_line(end).unwrap_or_default());
    }
    if let Some((kind, message)) = function_error(end) {
        let (cause, why) = match kind.as_str() {
            "Runtime.OutOfMemory" | "MemoryError" => (
                Cause::OutOfMemory,
                "the function ran out of memory; raise its memory size".to_string(),
            ),
            "Sandbox.Timedout" => (
                Cause::Timeout,
                "the function ran into its Lambda timeout".to_string(),
            ),
            "Runtime.ImportModuleError" | "Runtime.HandlerNotFound" => (
                Cause::InvalidConfiguration,
                format!("the function's handler could not be loaded ({kind})"),
            ),
            "AccessDeniedException" | "PermissionError" => (
                Cause::PermissionDenied,
                format!("the function's code was refused a permission ({kind})"),
            ),
            other if other.starts_with("Runtime.") || other.starts_with("Sandbox.") => (
                Cause::InfrastructureLost,
                format!("the Lambda runtime failed ({other})"),
            ),
            _ => (Cause::UserCodeError, format!("the function raised {kind}")),
        };
        let mut s = ErrorSummary::new(cause, why).with_evidence(format!("{kind}: {message}"));
        if let Some((_, last)) = summary::python_exception(end.job_lines()) {
            s = s.with_evidence(last);
        }
        return s;
    }
    summary::common(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpool_provider::{Ending, TailLine};

    /// The decoded `X-Amz-Log-Result` of a Python 3.12 function that raised (real shape).
    const TAIL: &str = "START RequestId: 6d8e3f0a-1b2c-4d5e-8f90-0a1b2c3d4e5f Version: $LATEST\n\
        loading rows\n\
        [ERROR] ValueError: bad input row 7\n\
        Traceback (most recent call last):\n\
        \u{20} File \"/var/task/app.py\", line 9, in handler\n\
        \u{20}   raise ValueError(\"bad input row 7\")\n\
        END RequestId: 6d8e3f0a-1b2c-4d5e-8f90-0a1b2c3d4e5f\n\
        REPORT RequestId: 6d8e3f0a-1b2c-4d5e-8f90-0a1b2c3d4e5f\tDuration: 2.35 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\tMax Memory Used: 39 MB\n";

    fn provider_lines(text: &str) -> Vec<TailLine> {
        text.lines()
            .map(|l| TailLine::new(LogStream::Provider, l))
            .collect()
    }

    #[test]
    fn the_log_tail_is_decoded_line_by_line() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(TAIL);
        let lines = decode_tail(&encoded);
        assert_eq!(lines.len(), 8);
        assert_eq!(lines[2], "[ERROR] ValueError: bad input row 7");
        assert!(decode_tail("not base64 !").is_empty());
    }

    #[test]
    fn a_function_error_gives_its_type_and_message() {
        // The state message the provider makes of `{"errorType": "ValueError", "errorMessage":
        // "bad input row 7", …}` with `X-Amz-Function-Error: Unhandled`.
        let logs = provider_lines(TAIL);
        let s = summarize(&RunEnd {
            ending: Ending::Failed,
            message: "ValueError: bad input row 7",
            logs: &logs,
        });
        assert_eq!(s.cause, Cause::UserCodeError);
        assert_eq!(s.explanation, "the function raised ValueError");
        assert_eq!(s.evidence[0], "ValueError: bad input row 7");
    }

    #[test]
    fn runtime_errors_map_to_their_causes() {
        let cases = [
            ("Runtime.OutOfMemory: RequestId: 6d8e Error: Runtime exited with error: signal: killed", Cause::OutOfMemory),
            ("Runtime.ImportModuleError: Unable to import module 'app': No module named 'pandas'", Cause::InvalidConfiguration),
            ("Runtime.ExitError: RequestId: 6d8e Error: Runtime exited with error: exit status 1", Cause::InfrastructureLost),
            ("KeyError: 'rows'", Cause::UserCodeError),
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

    #[test]
    fn a_lambda_timeout_line_is_a_timeout() {
        let logs = provider_lines(
            "START RequestId: 6d8e Version: $LATEST\n\
             2026-12-01T21:00:03.512Z 6d8e Task timed out after 3.00 seconds\n\
             END RequestId: 6d8e",
        );
        let s = summarize(&RunEnd {
            ending: Ending::Failed,
            message: "Sandbox.Timedout: RequestId: 6d8e Error: Task timed out after 3.00 seconds",
            logs: &logs,
        });
        assert_eq!(s.cause, Cause::Timeout);
        assert!(s.evidence[0].contains("Task timed out after 3.00 seconds"));
    }

    #[test]
    fn the_watchdog_is_a_timeout() {
        let s = summarize(&RunEnd {
            ending: Ending::Crashed,
            message: "no word about the asynchronous invocation 6d8e of Lambda function `etl` within timeout_seconds + watchdog_grace_seconds = 960s of the submission: no report through the run API",
            logs: &[],
        });
        assert_eq!(s.cause, Cause::Timeout);
        assert!(s.explanation.contains("watchdog"));
    }

    #[test]
    fn log_groups_come_from_names_arns_and_qualifiers() {
        assert_eq!(log_group("etl"), "/aws/lambda/etl");
        assert_eq!(log_group("etl:prod"), "/aws/lambda/etl");
        assert_eq!(
            log_group("arn:aws:lambda:eu-west-1:123456789012:function:etl:prod"),
            "/aws/lambda/etl"
        );
        assert_eq!(log_group("123456789012:function:etl"), "/aws/lambda/etl");
    }
}
