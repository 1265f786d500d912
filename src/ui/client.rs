//! The API, called in-process with the session's key: the guard authenticates, authorizes and
//! audits each call as it would a request from the CLI, and handlers mask secrets as usual.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

use super::session::{Session, UiError, UiResult};
use super::Ui;

/// Largest API answer a page reads.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Encodes one path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Calls the API for a session.
pub struct Api<'a> {
    ui: &'a Ui,
    session: &'a Session,
}

impl<'a> Api<'a> {
    /// The API as `session`'s key.
    pub fn new(ui: &'a Ui, session: &'a Session) -> Self {
        Api { ui, session }
    }

    /// `/api/workspaces/{ws}` + `rest`.
    pub fn ws_path(&self, rest: &str) -> String {
        format!("/api/workspaces/{}{rest}", seg(&self.session.workspace))
    }

    /// Sends one request; the status and the JSON answer (null when there is none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> UiResult<(StatusCode, Value)> {
        let mut req = Request::builder().method(method).uri(path).header(
            header::AUTHORIZATION,
            format!("Bearer {}", self.session.key),
        );
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(b).unwrap_or_default())
            }
            None => Body::empty(),
        };
        let mut req = req
            .body(body)
            .map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        if let Some(peer) = &self.session.peer {
            req.extensions_mut().insert(*peer);
        }
        let response = self
            .ui
            .api
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| UiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Sends one request and turns an error answer into an error page with its status and
    /// message.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> UiResult<Value> {
        let (status, value) = self.call(method, path, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(error_of(status, &value))
        }
    }

    /// GET, typed.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> UiResult<T> {
        let value = self.send("GET", path, None).await?;
        serde_json::from_value(value).map_err(|e| {
            UiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected answer of {path}: {e}"),
            )
        })
    }

    /// GET in the session's workspace, typed.
    pub async fn ws_get<T: DeserializeOwned>(&self, rest: &str) -> UiResult<T> {
        self.get(&self.ws_path(rest)).await
    }
}

/// The error page of an API error answer.
pub fn error_of(status: StatusCode, value: &Value) -> UiError {
    let message = value["message"].as_str().unwrap_or("the API refused this");
    let message = match value["field"].as_str() {
        Some(f) if !message.starts_with(f) => format!("{f}: {message}"),
        _ => message.to_string(),
    };
    UiError::new(status, message)
}
