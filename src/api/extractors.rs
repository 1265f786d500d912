//! Request extractors whose every refusal is an [`ApiError`] naming the field (a JSON body, an
//! optional JSON body, a query string), and the JSON answer.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ApiError;

/// A JSON body whose problems become 400 (malformed JSON) or 422 (wrong shape), naming the field.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = is_json_content_type(req.headers());
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| unreadable_body(e.status(), e.body_text()))?;
        if !is_json {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the request body must be JSON with `Content-Type: application/json`",
            ));
        }
        require_object(&bytes)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(wrong_shape(&e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {}", e.body_text()),
            )),
            Err(other) => Err(unreadable_body(other.status(), other.body_text())),
        }
    }
}

/// `application/json` or any `application/*+json`, parameters aside (what axum's `Json` accepts).
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Every request body of this API is a JSON object. serde would also read a struct from a JSON
/// array (its fields by position), so `[null, null]` passed as an empty change: refuse any
/// other JSON value with a 422. Malformed JSON is left for the parser to report as 400.
///
/// No string in it (key or value) may hold the NUL character: PostgreSQL stores neither a `TEXT`
/// nor a `JSONB` with one, and a store must not answer 500 where the input is at fault (422,
/// naming the field).
fn require_object(bytes: &[u8]) -> Result<(), ApiError> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the request body must be a JSON object",
        ));
    }
    match nul_at(&value, String::new()) {
        None => Ok(()),
        Some(path) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("{path}: must not contain the NUL character (U+0000)"),
        )
        .field(path)),
    }
}

/// The path (`a.b[0]`, serde_path_to_error's spelling) of the first string, or key, holding NUL.
fn nul_at(value: &serde_json::Value, path: String) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_at(v, join(k))
            }
        }),
        _ => None,
    }
}

/// A 422 from axum's text for a value of the wrong shape. serde's message reads
/// "…: field: problem at line…"; the path is kept as the field when present.
fn wrong_shape(text: &str) -> ApiError {
    let detail = text
        .split_once(": ")
        .map(|x| x.1)
        .unwrap_or(text)
        .to_string();
    let field = detail.split_once(": ").map(|x| x.0.to_string());
    let err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail.clone());
    match field {
        Some(f) if !f.contains(' ') => err.field(f),
        _ => err,
    }
}

/// A body that could not be read: 413 when too large, else 400.
fn unreadable_body(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "too_large", text)
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", text)
    }
}

/// A JSON body that may be empty (then `T::default()`).
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| unreadable_body(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(T::default()));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {e}"),
            ));
        }
        require_object(&bytes)?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(v) => Ok(OptionalBody(v)),
            Err(e) if e.inner().is_syntax() || e.inner().is_eof() => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {}", e.inner()),
            )),
            Err(e) => {
                let field = e.path().to_string();
                let err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    e.inner().to_string(),
                );
                Err(if field == "." { err } else { err.field(field) })
            }
        }
    }
}

/// Query parameters; a value of the wrong type answers 422 naming the parameter (not axum's
/// plain-text 400).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::from_uri(&parts.uri)
    }
}

impl<T: DeserializeOwned> Query<T> {
    /// The query parameters of `uri`; a value of the wrong type is a 422 naming the parameter.
    pub(crate) fn from_uri(uri: &axum::http::Uri) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::try_from_uri(uri) {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(wrong_shape(&e.body_text()))
            }
            Err(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                other.body_text(),
            )),
        }
    }
}

/// A JSON answer, written with its keys in alphabetical order (as the API always has: through
/// a `serde_json::Value`), so typed answers stay byte-compatible with the earlier ones.
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.0) {
            Ok(value) => axum::Json(value).into_response(),
            Err(e) => ApiError::internal(&format!("answer not serializable: {e}")).into_response(),
        }
    }
}
