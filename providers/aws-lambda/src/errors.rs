//! What an AWS SDK error means for pushpool: retry it, give up, or report something missing.
//!
//! The classification follows the SDK's own retry classifiers (`aws-runtime`'s
//! `AwsErrorCodeClassifier` and the HTTP status classifier of `aws-smithy-runtime`): throttling and
//! transient error codes, HTTP 429 and 5xx, timeouts and connection failures are retriable;
//! everything else is not.

use std::time::Duration;

use aws_sdk_lambda::config::http::HttpResponse;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use pushpool_provider::ProviderError;

/// Error codes the SDK treats as throttling (from `aws_runtime::retries::classifiers`).
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

/// Error codes the SDK treats as transient.
pub const TRANSIENT_ERRORS: &[&str] = &["RequestTimeout", "RequestTimeoutException"];

/// Codes that say the function (or queue) does not exist.
const NOT_FOUND_ERRORS: &[&str] = &[
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

/// Classifies an SDK error the way the SDK's retry classifiers do.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorClass {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient { retry_after: None }
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let raw = service.raw();
            let status = raw.status().as_u16();
            let retry_after = raw
                .headers()
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if THROTTLING_ERRORS.contains(&code)
                || TRANSIENT_ERRORS.contains(&code)
                || status == 429
                || (500..600).contains(&status)
            {
                ErrorClass::Transient { retry_after }
            } else if NOT_FOUND_ERRORS.contains(&code) || status == 404 {
                ErrorClass::NotFound
            } else {
                ErrorClass::Permanent
            }
        }
        // Construction failures (bad input, no region, no credentials) do not fix themselves.
        _ => ErrorClass::Permanent,
    }
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
}
