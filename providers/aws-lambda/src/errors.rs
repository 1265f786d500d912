//! What an AWS SDK error means for pushpool: retry it, give up, or report something missing.
//!
//! Service errors are classified by **explicit code lists** first, taken from the Lambda API
//! reference (`Invoke`, "Errors") and the SDK's retry classifiers, because the HTTP status alone
//! misleads: Lambda answers 502 both for a throttled EC2 call (worth retrying) and for an ENI limit,
//! an invalid subnet, a KMS key it may not use or an invalid deployment package (which no retry
//! fixes), and 409 both for a function being updated (retry) and for one that failed to deploy.
//! Codes on no list fall back to the status: 429 and 5xx are retriable, other 4xx are not.
//!
//! For synchronous invocations [`sent_without_answer`] says whether a failure may have happened
//! after Lambda received the request (so the function may have run): such a call is never
//! repeated.

use std::time::Duration;

use aws_sdk_lambda::config::http::HttpResponse;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use pushpool_provider::ProviderError;

/// Error codes the SDK treats as throttling (from `aws_runtime::retries::classifiers`), plus
/// Lambda's `EC2ThrottledException` (502: Lambda was throttled by EC2 while setting up the
/// function's network).
pub const THROTTLING_ERRORS: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Error codes that say Lambda did not run the function *yet* and will be able to soon, so the
/// same call is retried: a request timeout, the service's own internal error, a function that is
/// still being created or updated (`ResourceConflictException` unless the function is in state
/// `Failed`, see [`is_failed_function`]), a function still initialising
/// (`ResourceNotReadyException`) and a SnapStart snapshot not ready yet.
pub const TRANSIENT_ERRORS: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceException",
    "ServiceUnavailable",
    "ResourceConflictException",
    "ResourceNotReadyException",
    "SnapStartNotReadyException",
];

/// Error codes that no retry fixes, whatever their HTTP status (many are 502): the function's
/// KMS key, its VPC set-up (ENI limit, subnet, security group, EC2 permissions), its deployment
/// package or runtime, its EFS mount, SnapStart, or the request itself is wrong.
/// Compared without regard to case (AWS spells `ENILimitReachedException`, SDKs `Eni…`).
pub const PERMANENT_ERRORS: &[&str] = &[
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "ENILimitReachedException",
    "InvalidSubnetIDException",
    "InvalidSecurityGroupIDException",
    "SubnetIPAddressLimitReachedException",
    "EC2AccessDeniedException",
    "EC2UnexpectedException",
    "InvalidZipFileException",
    "InvalidRuntimeException",
    "EFSIOException",
    "EFSMountConnectivityException",
    "EFSMountFailureException",
    "EFSMountTimeoutException",
    "SnapStartException",
    "SnapStartTimeoutException",
    "RecursiveInvocationException",
    "RequestTooLargeException",
    "UnsupportedMediaTypeException",
    "InvalidRequestContentException",
    "InvalidParameterValueException",
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
];

/// Codes that say the function (or queue) does not exist.
pub const NOT_FOUND_ERRORS: &[&str] = &[
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// How an SDK error is to be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying; `retry_after` when the service said how long to wait.
    Transient {
        /// The service's `Retry-After` hint.
        retry_after: Option<Duration>,
    },
    /// The function, alias or queue does not exist.
    NotFound,
    /// Retrying will not help (access denied, invalid parameter, bad request).
    Permanent,
}

fn listed(list: &[&str], code: &str) -> bool {
    list.iter().any(|c| c.eq_ignore_ascii_case(code))
}

/// A `ResourceConflictException` about a function whose deployment failed
/// (`… the following state: Failed`): permanent, unlike one being created or updated.
pub fn is_failed_function(code: &str, message: &str) -> bool {
    code == "ResourceConflictException" && message.contains("state: Failed")
}

/// Classifies an SDK error: explicit code lists first, then the HTTP status.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorClass {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient { retry_after: None }
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let message = service.err().message().unwrap_or_default();
            let raw = service.raw();
            let status = raw.status().as_u16();
            let retry_after = raw
                .headers()
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if listed(NOT_FOUND_ERRORS, code) {
                ErrorClass::NotFound
            } else if listed(PERMANENT_ERRORS, code) || is_failed_function(code, message) {
                ErrorClass::Permanent
            } else if listed(THROTTLING_ERRORS, code)
                || listed(TRANSIENT_ERRORS, code)
                || status == 429
                || (500..600).contains(&status)
            {
                ErrorClass::Transient { retry_after }
            } else if status == 404 {
                ErrorClass::NotFound
            } else {
                ErrorClass::Permanent
            }
        }
        // Construction failures (bad input, no region, no credentials) do not fix themselves.
        _ => ErrorClass::Permanent,
    }
}

/// True when a failed call may have reached Lambda without its answer reaching pushpool: a
/// timeout, a connection lost after it was established, an answer that could not be read, or a
/// 5xx without an AWS error code (a proxy or load balancer in between). A synchronous invocation
/// that failed this way may have run the function, so it is not repeated. Failures to connect
/// at all (refused, unreachable, name not resolved) and answers from Lambda are not ambiguous.
pub fn sent_without_answer<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(failure) => !never_connected(
            failure
                .as_connector_error()
                .map(|e| e as &(dyn std::error::Error + 'static)),
        ),
        SdkError::ServiceError(service) => {
            service.err().code().is_none() && service.raw().status().is_server_error()
        }
        _ => false,
    }
}

/// Whether a dispatch failure happened before a connection existed (so nothing was sent).
fn never_connected(error: Option<&(dyn std::error::Error + 'static)>) -> bool {
    let mut source = error;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::NetworkUnreachable
                    | K::HostUnreachable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("dns error")
            || text.contains("failed to lookup address")
            || text.contains("Connection refused")
            || text.contains("tcp connect error")
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// True when the SDK error is worth retrying (throttling, 5xx, timeouts, connection failures).
pub fn is_retriable_error<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(classify(err), ErrorClass::Transient { .. })
}

/// A one-line description of an SDK error: `Code (HTTP n): message` for service errors, the
/// error chain otherwise. Never contains credentials (the SDK does not put them in errors).
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let status = service.raw().status().as_u16();
            let code = e.code().unwrap_or("UnknownError");
            match e.message() {
                Some(m) if !m.is_empty() => format!("{code} (HTTP {status}): {m}"),
                _ => format!("{code} (HTTP {status})"),
            }
        }
        SdkError::TimeoutError(_) => "the request timed out".to_string(),
        SdkError::DispatchFailure(_) => {
            format!("could not reach the endpoint: {}", DisplayErrorContext(err))
        }
        SdkError::ResponseError(_) => format!(
            "the response could not be read: {}",
            DisplayErrorContext(err)
        ),
        _ => format!("{}", DisplayErrorContext(err)),
    }
}

/// Turns an SDK error into the [`ProviderError`] of its class; `context` says what was tried
/// (function, region, account, endpoint).
pub fn to_provider_error<E>(err: &SdkError<E, HttpResponse>, context: &str) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{context}: {}", describe(err));
    match classify(err) {
        ErrorClass::Transient { retry_after } => ProviderError::Transient {
            message,
            retry_after,
        },
        ErrorClass::NotFound => ProviderError::NotFound { message },
        ErrorClass::Permanent => ProviderError::Permanent { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_lambda::operation::invoke::InvokeError;
    use aws_sdk_lambda::primitives::SdkBody;
    use aws_sdk_lambda::types::error::{
        InvalidParameterValueException, ResourceNotFoundException, ServiceException,
        TooManyRequestsException,
    };
    use aws_smithy_runtime_api::http::StatusCode;

    fn response(status: u16, headers: &[(&str, &str)]) -> HttpResponse {
        let mut r = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        for (k, v) in headers {
            r.headers_mut().insert(k.to_string(), v.to_string());
        }
        r
    }

    fn service(err: InvokeError, status: u16, headers: &[(&str, &str)]) -> SdkError<InvokeError> {
        SdkError::service_error(err, response(status, headers))
    }

    fn meta(code: &str) -> aws_sdk_lambda::error::ErrorMetadata {
        aws_sdk_lambda::error::ErrorMetadata::builder()
            .code(code)
            .message("msg")
            .build()
    }

    #[test]
    fn throttling_and_5xx_are_retriable() {
        let throttled = service(
            InvokeError::TooManyRequestsException(
                TooManyRequestsException::builder()
                    .meta(meta("TooManyRequestsException"))
                    .build(),
            ),
            429,
            &[("retry-after", "3")],
        );
        assert_eq!(
            classify(&throttled),
            ErrorClass::Transient {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(is_retriable_error(&throttled));
        assert_eq!(
            describe(&throttled),
            "TooManyRequestsException (HTTP 429): msg"
        );
        let server = service(
            InvokeError::ServiceException(
                ServiceException::builder()
                    .meta(meta("ServiceException"))
                    .build(),
            ),
            500,
            &[],
        );
        assert!(is_retriable_error(&server));
        let unknown_503 = service(InvokeError::generic(meta("Whatever")), 503, &[]);
        assert!(is_retriable_error(&unknown_503));
        let timeout: SdkError<InvokeError> = SdkError::timeout_error("slow");
        assert!(is_retriable_error(&timeout));
    }

    #[test]
    fn missing_function_and_bad_requests_are_not() {
        let missing = service(
            InvokeError::ResourceNotFoundException(
                ResourceNotFoundException::builder()
                    .meta(meta("ResourceNotFoundException"))
                    .build(),
            ),
            404,
            &[],
        );
        assert_eq!(classify(&missing), ErrorClass::NotFound);
        assert!(matches!(
            to_provider_error(&missing, "invoking f"),
            ProviderError::NotFound { .. }
        ));
        let invalid = service(
            InvokeError::InvalidParameterValueException(
                InvalidParameterValueException::builder()
                    .meta(meta("InvalidParameterValueException"))
                    .build(),
            ),
            400,
            &[],
        );
        assert_eq!(classify(&invalid), ErrorClass::Permanent);
        let denied = service(
            InvokeError::generic(meta("AccessDeniedException")),
            403,
            &[],
        );
        assert_eq!(classify(&denied), ErrorClass::Permanent);
        let construction: SdkError<InvokeError> = SdkError::construction_failure("no region");
        assert!(!is_retriable_error(&construction));
    }

    fn coded(status: u16, code: &str, message: &str) -> SdkError<InvokeError> {
        let meta = aws_sdk_lambda::error::ErrorMetadata::builder()
            .code(code)
            .message(message)
            .build();
        service(InvokeError::generic(meta), status, &[])
    }

    /// Issue 16: the class comes from the code lists, not the status: Lambda's 502s for an ENI
    /// limit, a subnet, KMS, EC2 permissions or a bad zip are permanent; its 409 for a function
    /// being updated or still Pending, and SnapStart not ready, are retried; 409 for a function
    /// whose deployment Failed is not.
    #[test]
    fn explicit_code_lists_win_over_the_status() {
        for code in [
            "ENILimitReachedException",
            "EniLimitReachedException",
            "KMSAccessDeniedException",
            "KMSDisabledException",
            "KMSInvalidStateException",
            "KMSNotFoundException",
            "InvalidSubnetIDException",
            "InvalidSecurityGroupIDException",
            "EC2AccessDeniedException",
            "InvalidZipFileException",
        ] {
            let err = coded(502, code, "x");
            assert_eq!(classify(&err), ErrorClass::Permanent, "{code}");
            assert!(!sent_without_answer(&err), "{code}");
        }
        for (status, code, message) in [
            (409, "ResourceConflictException", "The operation cannot be performed at this time. An update is in progress for resource: arn:aws:lambda:us-east-1:123456789012:function:f"),
            (409, "ResourceConflictException", "The operation cannot be performed at this time. The function is currently in the following state: Pending"),
            (409, "SnapStartNotReadyException", "Lambda is initializing your function"),
            (502, "ResourceNotReadyException", "The function is not ready"),
            (502, "EC2ThrottledException", "throttled by EC2"),
            (500, "ServiceException", "internal"),
        ] {
            let err = coded(status, code, message);
            assert!(matches!(classify(&err), ErrorClass::Transient { .. }), "{code}: {message}");
            assert!(!sent_without_answer(&err), "{code}");
        }
        let failed = coded(409, "ResourceConflictException", "The operation cannot be performed at this time. The function is currently in the following state: Failed");
        assert_eq!(classify(&failed), ErrorClass::Permanent);
    }

    /// A failure after the request went out may have run the function; an answer from Lambda or
    /// a failure to connect at all did not.
    #[test]
    fn ambiguous_failures_are_told_apart_from_answers() {
        let timeout: SdkError<InvokeError> = SdkError::timeout_error("slow");
        assert!(sent_without_answer(&timeout));
        let unreadable: SdkError<InvokeError> = SdkError::response_error("eof", response(200, &[]));
        assert!(sent_without_answer(&unreadable));
        let gateway = service(
            InvokeError::generic(aws_sdk_lambda::error::ErrorMetadata::builder().build()),
            504,
            &[],
        );
        assert!(
            sent_without_answer(&gateway),
            "a 5xx without an AWS error code"
        );
        assert!(!sent_without_answer(&coded(
            429,
            "TooManyRequestsException",
            "Rate Exceeded."
        )));
        let refused = SdkError::<InvokeError>::dispatch_failure(
            aws_smithy_runtime_api::client::result::ConnectorError::io(Box::new(
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
            )),
        );
        assert!(!sent_without_answer(&refused));
        let reset = SdkError::<InvokeError>::dispatch_failure(
            aws_smithy_runtime_api::client::result::ConnectorError::io(Box::new(
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer"),
            )),
        );
        assert!(sent_without_answer(&reset));
        let construction: SdkError<InvokeError> = SdkError::construction_failure("no region");
        assert!(!sent_without_answer(&construction));
    }
}
