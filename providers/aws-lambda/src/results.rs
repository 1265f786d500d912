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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pushpool_provider::JobStatus;
use serde_json::Value;

use crate::config::{
    CredentialsConfig, LambdaJobConfig, ASYNC_RETRY_DELAYS, MAX_TIMEOUT_SECONDS,
    MAX_WATCHDOG_GRACE_SECONDS,
};

/// A record written longer ago than this names a run that has ended: no run's watchdog window
/// (three attempts of the longest `timeout_seconds`, Lambda's pauses, the longest grace) is longer.
pub const STALE_RECORD_AGE: Duration = Duration::from_secs(
    3 * MAX_TIMEOUT_SECONDS
        + ASYNC_RETRY_DELAYS[0].as_secs()
        + ASYNC_RETRY_DELAYS[1].as_secs()
        + MAX_WATCHDOG_GRACE_SECONDS,
);

/// How long the request ids of ended runs are remembered, to delete their records on sight.
const ENDED_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many ended request ids are remembered (the oldest go first).
const ENDED_MAX: usize = 100_000;
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
    /// SQS's id of the message (the same on every receive of it).
    pub message_id: Option<String>,
}

/// What to do with a record read from a results queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// A watched run took it: keep it until the run's final state is stored.
    Taken,
    /// It names a run that has ended (or already has its record: a duplicate, as Lambda may
    /// deliver an event twice), or it is older than [`STALE_RECORD_AGE`]: delete it now, so
    /// stale records never pile up in front of the records runs wait for.
    Stale,
    /// Not for a run this provider knows: hand it back to the queue for other controllers.
    NotMine,
}

/// The runs waiting for a destination record, and the records read for them, keyed by
/// [`ResultSource`] and request id: a record read from one queue (or with one workspace's
/// credentials) resolves only a run whose job reads that same queue that same way, whatever
/// request id it carries.
#[derive(Debug, Default)]
pub struct ResultsMap {
    watched: HashMap<(ResultSource, String), Option<QueuedResult>>,
    ended: HashMap<(ResultSource, String), Instant>,
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

    /// Offers a record read from `source` (with the message's receipt handle and id): see
    /// [`Offered`]. A record resolves only a run waiting on that same source for its request id.
    pub fn offer(
        &mut self,
        source: &ResultSource,
        record: DestinationRecord,
        receipt_handle: Option<String>,
        message_id: Option<String>,
    ) -> Offered {
        let key = Self::key(source, &record.request_id);
        if self.ended.contains_key(&key) {
            return Offered::Stale;
        }
        let Some(slot) = self.watched.get_mut(&key) else {
            return if record.is_stale() {
                Offered::Stale
            } else {
                Offered::NotMine
            };
        };
        if let Some(held) = slot {
            if held.message_id.is_none() || held.message_id != message_id {
                return Offered::Stale;
            }
            // The same message again (its visibility ran out): only its newest handle deletes it.
            held.receipt_handle = receipt_handle;
            return Offered::Taken;
        }
        *slot = Some(QueuedResult {
            status: record.status,
            source: source.clone(),
            receipt_handle,
            message_id,
        });
        Offered::Taken
    }

    /// Stops waiting for `request_id` from `source`; the record read for it, if any.
    pub fn forget(&mut self, source: &ResultSource, request_id: &str) -> Option<QueuedResult> {
        self.watched
            .remove(&Self::key(source, request_id))
            .flatten()
    }

    /// The run of `request_id` has ended (its final state is stored): stops waiting for it,
    /// remembers it for [`ENDED_TTL`] so further records for it are deleted on sight, and returns
    /// the record read for it, if any.
    pub fn end(&mut self, source: &ResultSource, request_id: &str) -> Option<QueuedResult> {
        let now = Instant::now();
        self.ended
            .retain(|_, at| now.duration_since(*at) < ENDED_TTL);
        if self.ended.len() >= ENDED_MAX {
            if let Some(oldest) = self
                .ended
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            {
                self.ended.remove(&oldest);
            }
        }
        self.ended.insert(Self::key(source, request_id), now);
        self.forget(source, request_id)
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
    /// When Lambda wrote it (its `timestamp`, Unix seconds), when readable.
    pub written_at: Option<u64>,
}

impl DestinationRecord {
    /// Written longer than [`STALE_RECORD_AGE`] ago: whatever run it names has ended.
    pub fn is_stale(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.written_at
            .is_some_and(|t| now.saturating_sub(t) > STALE_RECORD_AGE.as_secs())
    }
}

/// Unix seconds of an RFC 3339 UTC timestamp as Lambda writes it (`2026-01-01T00:00:00.000Z`).
fn parse_utc(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { ts.get(r)?.parse().ok() };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !ts.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
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
    let written_at = v
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_utc);
    Some(DestinationRecord {
        request_id,
        status,
        written_at,
    })
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
            written_at: None,
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

        let no = Offered::NotMine;
        assert_eq!(
            map.offer(&theirs, record("req-1"), Some("h1".into()), None),
            no
        );
        assert_eq!(
            map.offer(&same_queue_other_credentials, record("req-1"), None, None),
            no
        );
        assert_eq!(
            map.offer(&mine, record("req-2"), Some("h2".into()), None),
            no
        );
        assert_eq!(map.offer(&mine, record("req-3"), None, None), no);
        assert_eq!(map.result(&mine, "req-1"), None);
        assert_eq!(map.result(&theirs, "req-2"), None);

        assert_eq!(
            map.offer(&mine, record("req-1"), Some("h3".into()), Some("m3".into())),
            Offered::Taken
        );
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

    /// Issue 16: records of ended runs, duplicates of a record already held, and records older
    /// than any watchdog window are deleted on sight; the same message received again is kept.
    #[test]
    fn stale_duplicate_and_ended_records_are_deleted_on_sight() {
        let q = source("results", None);
        let mut map = ResultsMap::default();
        map.watch(&q, "r1");
        let take = |map: &mut ResultsMap, id: &str, m: &str| {
            map.offer(&q, record(id), Some(format!("h-{m}")), Some(m.into()))
        };
        assert_eq!(take(&mut map, "r1", "m1"), Offered::Taken);
        assert_eq!(
            take(&mut map, "r1", "m1"),
            Offered::Taken,
            "the same message again"
        );
        assert_eq!(
            map.result(&q, "r1").unwrap().receipt_handle.as_deref(),
            Some("h-m1")
        );
        assert_eq!(
            take(&mut map, "r1", "m2"),
            Offered::Stale,
            "a duplicate delivery"
        );
        assert!(map.end(&q, "r1").is_some());
        assert_eq!(
            take(&mut map, "r1", "m3"),
            Offered::Stale,
            "the run has ended"
        );
        assert_eq!(take(&mut map, "r2", "m4"), Offered::NotMine);
        let old =
            json!({"timestamp": "2020-01-01T00:00:00.000Z", "requestContext": {"requestId": "r2"}});
        let old = parse_record(&old.to_string(), "f").unwrap();
        assert_eq!(old.written_at, Some(1_577_836_800));
        assert!(old.is_stale());
        assert_eq!(map.offer(&q, old, None, Some("m5".into())), Offered::Stale);
        let now =
            json!({"timestamp": "2099-01-01T00:00:00.000Z", "requestContext": {"requestId": "r2"}});
        assert!(!parse_record(&now.to_string(), "f").unwrap().is_stale());
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
