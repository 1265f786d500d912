//! The SQS results queue: Lambda destination records (on-success / on-failure) of asynchronous
//! invocations, matched to runs by request id.
//!
//! A record looks like (AWS "Configuring destinations for asynchronous invocation"):
//! `{"version":"1.0","timestamp":…,"requestContext":{"requestId":…,"functionArn":…,
//! "condition":"Success"|"RetriesExhausted"|"EventAgeExceeded","approximateInvokeCount":n},
//! "requestPayload":…,"responseContext":{"statusCode":200,"executedVersion":…,
//! "functionError":"Unhandled"?},"responsePayload":…}`.

use pushpool_provider::JobStatus;
use serde_json::Value;

use crate::payload::{function_error_message, result_summary, truncate, SUMMARY_LIMIT};

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
