//! The SQS results queue: Lambda destination records (on-success / on-failure) of asynchronous
//! invocations, matched to runs by results queue (read with the run's own credentials) and
//! request id.
//!
//! A record looks like (AWS "Configuring destinations for asynchronous invocation"):
//! `{"version":"1.0","timestamp":…,"requestContext":{"requestId":…,"functionArn":…,
//! "condition":"Success"|"RetriesExhausted"|"EventAgeExceeded","approximateInvokeCount":n},
//! "requestPayload":…,"responseContext":{"statusCode":200,"executedVersion":…,
//! "functionError":"Unhandled"?},"responsePayload":…}`.

use std::collections::HashMap;

use pushpool_provider::JobStatus;
use serde_json::Value;

use crate::config::{CredentialsConfig, LambdaJobConfig};
use crate::payload::{function_error_message, result_summary, truncate, SUMMARY_LIMIT};

/// Where records are read from: one results queue, reached with one region, endpoint and set of
/// credentials (a job's own settings, so a workspace's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResultSource {
    /// The queue's URL.
    pub queue_url: String,
    /// The region the queue is read in.
    pub region: Option<String>,
    /// The endpoint override.
    pub endpoint_url: Option<String>,
    /// The credentials it is read with.
    pub credentials: CredentialsConfig,
}

impl ResultSource {
    /// The results queue of a job, when it has one.
    pub fn of(job: &LambdaJobConfig) -> Option<ResultSource> {
        job.result_queue_url.as_ref().map(|queue_url| ResultSource {
            queue_url: queue_url.clone(),
            region: job.region.clone(),
            endpoint_url: job.endpoint_url.clone(),
            credentials: job.credentials.clone(),
        })
    }
}

/// A record read for a watched run.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedResult {
    /// What it says about the job.
    pub status: JobStatus,
    /// Where it was read (its receipt handle is only good there).
    pub source: ResultSource,
    /// The handle to delete it with once the run's final state is stored.
    pub receipt_handle: Option<String>,
}

/// The runs waiting for a destination record, and the records read for them, keyed by
/// [`ResultSource`] and request id: a record read from one queue (or with one workspace's
/// credentials) resolves only a run whose job reads that same queue that same way, whatever
/// request id it carries.
#[derive(Debug, Default)]
pub struct ResultsMap {
    watched: HashMap<(ResultSource, String), Option<QueuedResult>>,
}

impl ResultsMap {
    fn key(source: &ResultSource, request_id: &str) -> (ResultSource, String) {
        (source.clone(), request_id.to_string())
    }

    /// Starts waiting for the record of `request_id` from `source`.
    pub fn watch(&mut self, source: &ResultSource, request_id: &str) {
        self.watched
            .entry(Self::key(source, request_id))
            .or_insert(None);
    }

    /// The record read for `request_id` from `source`, if any yet.
    pub fn result(&self, source: &ResultSource, request_id: &str) -> Option<&QueuedResult> {
        self.watched
            .get(&Self::key(source, request_id))
            .and_then(Option::as_ref)
    }

    /// Offers a record read from `source`; `true` when a run waiting on that same source for its
    /// request id takes it (it is kept), `false` otherwise (hand it back to the queue).
    pub fn offer(
        &mut self,
        source: &ResultSource,
        record: DestinationRecord,
        receipt_handle: Option<String>,
    ) -> bool {
        let Some(slot) = self.watched.get_mut(&Self::key(source, &record.request_id)) else {
            return false;
        };
        *slot = Some(QueuedResult {
            status: record.status,
            source: source.clone(),
            receipt_handle,
        });
        true
    }

    /// Stops waiting for `request_id` from `source`; the record read for it, if any.
    pub fn forget(&mut self, source: &ResultSource, request_id: &str) -> Option<QueuedResult> {
        self.watched
            .remove(&Self::key(source, request_id))
            .flatten()
    }

    /// How many runs are waiting or hold a record.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether no run is waiting or holds a record.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }
}

/// A destination record read from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRecord {
    /// The asynchronous invocation's request id.
    pub request_id: String,
    /// What the record says about the job.
    pub status: JobStatus,
}

/// Parses a message body as a Lambda destination record; `None` when it is not one. The function
/// is named after the record's `functionArn`, else `function`.
pub fn parse_record(body: &str, function: &str) -> Option<DestinationRecord> {
    let v: Value = serde_json::from_str(body).ok()?;
    let ctx = v.get("requestContext")?;
    let request_id = ctx.get("requestId")?.as_str()?.to_string();
    // arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]
    let function = ctx
        .get("functionArn")
        .and_then(Value::as_str)
        .and_then(|arn| arn.split(':').nth(6))
        .filter(|name| !name.is_empty())
        .unwrap_or(function);
    let condition = ctx
        .get("condition")
        .and_then(Value::as_str)
        .unwrap_or("Success");
    let attempts = ctx
        .get("approximateInvokeCount")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let function_error = v
        .get("responseContext")
        .and_then(|c| c.get("functionError"))
        .and_then(Value::as_str);
    let response = v.get("responsePayload");
    let response_bytes = match response {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let status = match (condition, function_error) {
        (_, Some(kind)) => JobStatus::Failed {
            message: format!(
                "{} (after {attempts} attempt{}, from the results queue)",
                function_error_message(kind, &response_bytes),
                if attempts == 1 { "" } else { "s" }
            ),
        },
        ("Success", None) => JobStatus::Completed {
            summary: Some(result_summary(function, &response_bytes)),
        },
        (other, None) => JobStatus::Crashed {
            message: truncate(
                &format!(
                    "Lambda gave up on the asynchronous invocation of `{function}` ({other}, after {attempts} attempt{}) without a function error: it was throttled, timed out or failed in the Lambda service",
                    if attempts == 1 { "" } else { "s" }
                ),
                SUMMARY_LIMIT,
            ),
        },
    };
    Some(DestinationRecord { request_id, status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(queue: &str, profile: Option<&str>) -> ResultSource {
        ResultSource {
            queue_url: format!("http://127.0.0.1:1/123456789012/{queue}"),
            region: Some("us-east-1".into()),
            endpoint_url: None,
            credentials: CredentialsConfig {
                profile_name: profile.map(str::to_string),
                ..Default::default()
            },
        }
    }

    fn record(request_id: &str) -> DestinationRecord {
        DestinationRecord {
            request_id: request_id.into(),
            status: JobStatus::Completed { summary: None },
        }
    }

    /// Issue 19 item 12: a record with another run's request id, put in another workspace's
    /// queue (or read with another workspace's credentials), never resolves that run.
    #[test]
    fn a_record_resolves_only_a_run_watching_the_queue_it_came_from() {
        let mine = source("results-a", None);
        let theirs = source("results-b", None);
        let same_queue_other_credentials = source("results-a", Some("other-team"));
        let mut map = ResultsMap::default();
        map.watch(&mine, "req-1");
        map.watch(&theirs, "req-2");

        assert!(!map.offer(&theirs, record("req-1"), Some("h1".into())));
        assert!(!map.offer(&same_queue_other_credentials, record("req-1"), None));
        assert!(!map.offer(&mine, record("req-2"), Some("h2".into())));
        assert!(!map.offer(&mine, record("req-3"), None));
        assert_eq!(map.result(&mine, "req-1"), None);
        assert_eq!(map.result(&theirs, "req-2"), None);

        assert!(map.offer(&mine, record("req-1"), Some("h3".into())));
        let got = map.result(&mine, "req-1").unwrap();
        assert_eq!(
            (&got.source, got.receipt_handle.as_deref()),
            (&mine, Some("h3"))
        );
        assert_eq!(map.result(&theirs, "req-1"), None);
        assert_eq!(map.forget(&theirs, "req-1"), None);
        assert!(map.forget(&mine, "req-1").is_some());
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn success_failure_and_dropped_records() {
        let ok = json!({"version": "1.0", "requestContext": {"requestId": "r1", "condition": "Success", "approximateInvokeCount": 1},
                        "responseContext": {"statusCode": 200}, "responsePayload": {"rows": 3}});
        let r = parse_record(&ok.to_string(), "f").unwrap();
        assert_eq!(r.request_id, "r1");
        assert_eq!(
            r.status,
            JobStatus::Completed {
                summary: Some("Lambda function `f` returned: {\"rows\":3}".into())
            }
        );
        let named = json!({"requestContext": {"requestId": "r4", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:other:$LATEST"}, "responsePayload": null});
        assert_eq!(
            parse_record(&named.to_string(), "f").unwrap().status,
            JobStatus::Completed {
                summary: Some("Lambda function `other` returned no result".into())
            }
        );
        let failed = json!({"requestContext": {"requestId": "r2", "condition": "RetriesExhausted", "approximateInvokeCount": 3},
                            "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
                            "responsePayload": {"errorType": "KeyError", "errorMessage": "'x'"}});
        let r = parse_record(&failed.to_string(), "f").unwrap();
        assert_eq!(
            r.status,
            JobStatus::Failed {
                message: "KeyError: 'x' (after 3 attempts, from the results queue)".into()
            }
        );
        let dropped = json!({"requestContext": {"requestId": "r3", "condition": "EventAgeExceeded", "approximateInvokeCount": 0}});
        let r = parse_record(&dropped.to_string(), "f").unwrap();
        assert!(
            matches!(&r.status, JobStatus::Crashed { message } if message.contains("EventAgeExceeded"))
        );
        assert!(parse_record("not json", "f").is_none());
        assert!(parse_record("{\"a\":1}", "f").is_none());
    }
}
