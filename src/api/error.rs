//! The API's one error answer: `{"error": CODE, "message": TEXT, "field": PATH?}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use super::guard::ErrorNote;
use super::table::Method;
use crate::store::StoreError;
use crate::template::TemplateError;

/// An API error; answered as an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
    /// The methods a path serves, for a 405's `Allow` header.
    allow: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    /// A machine-readable code: `invalid`, `malformed_json`, `bad_request`, `too_large`,
    /// `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`, `conflict`,
    /// `unavailable`.
    pub error: String,
    /// What went wrong and, for bad input, the rule it broke.
    pub message: String,
    /// The JSON path (or parameter) at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The same error with every one of `secrets` masked in its message (values restored
    /// from a mask must never come back in a refusal or in the audit log).
    pub(crate) fn scrubbed(mut self, secrets: &[String]) -> Self {
        self.message = crate::redact::scrub(&self.message, secrets);
        self
    }

    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            allow: None,
        }
    }
    pub(crate) fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub(crate) fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).field(field)
    }
    pub(crate) fn not_found(what: &str, key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} `{key}` not found"),
        )
    }
    /// A path no route serves.
    pub(crate) fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }
    /// A known path asked with a method it does not serve.
    pub(crate) fn method_not_allowed(allowed: &[Method]) -> Self {
        let allow = allowed
            .iter()
            .flat_map(|m| match m {
                Method::Get => vec!["GET", "HEAD"],
                other => vec![other.as_upper()],
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut err = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this path serves {allow}"),
        );
        err.allow = Some(allow);
        err
    }
    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub(crate) fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub(crate) fn conflict(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message).field(field)
    }
    pub(crate) fn internal(message: &str) -> Self {
        tracing::error!(message, "internal API error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
            field: self.field,
        };
        let mut response = (self.status, super::Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read, so the connection cannot carry another
            // request; say so, or a client reusing it fails on its next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response.extensions_mut().insert(ErrorNote {
            code: self.code,
            message: self.message,
        });
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, key } => ApiError::not_found(what, &key),
            StoreError::Conflict { field, message } => {
                let err = ApiError::new(StatusCode::CONFLICT, "conflict", message);
                match field {
                    Some(f) => err.field(f),
                    None => err,
                }
            }
            StoreError::Invalid { field, message } => ApiError::unprocessable(&field, message),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is unavailable; retry shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// A job that cannot be built (pool template, layered variables, provider check): a 422 naming
/// the field, in the job module's one wording.
impl From<crate::job::JobError> for ApiError {
    fn from(e: crate::job::JobError) -> Self {
        if let crate::job::JobError::NotGranted(_) = &e {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
                .field(e.field());
        }
        ApiError::unprocessable(&e.field(), e.to_string())
    }
}

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.message).field(e.field)
    }
}
