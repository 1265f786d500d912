//! HTTP access to the pushpool REST API for the client commands, and the error type they share.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Why a client command failed; shown to the user as `error: <this>` on stderr.
#[derive(Debug)]
pub enum CliError {
    /// Bad input from the user (a malformed `--var`, an unreadable file, …).
    Usage(String),
    /// The API answered with an error status and the documented `{error, message, field?}` body.
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The human-readable message.
        message: String,
        /// The offending input field, when the API named one.
        field: Option<String>,
    },
    /// The API answered with an error status and some other body.
    Http {
        /// HTTP status.
        status: StatusCode,
        /// The raw body (possibly shortened).
        body: String,
    },
    /// The API could not be reached at all.
    Unreachable {
        /// The base URL that was tried.
        url: String,
        /// The innermost cause (e.g. `Connection refused (os error 111)`).
        reason: String,
    },
    /// The API's answer could not be read or was not what the command expected.
    Response(String),
}

impl CliError {
    /// Whether retrying the same request later may succeed (unreachable, 5xx, 408, 429, cut
    /// answers); a 404 or an auth error is not.
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } | CliError::Response(_) => true,
            CliError::Api { status, .. } | CliError::Http { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            CliError::Usage(_) => false,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Response(message) => f.write_str(message),
            CliError::Api { message, field, .. } => match field {
                Some(field) => write!(f, "{message} (field: {field})"),
                None => f.write_str(message),
            },
            CliError::Http { status, body } => {
                if body.trim().is_empty() {
                    write!(f, "the API answered {status}")
                } else {
                    write!(f, "the API answered {status}: {}", body.trim())
                }
            }
            CliError::Unreachable { url, reason } => write!(
                f,
                "cannot reach the pushpool API at {url}: {reason} (is `pushpool up` running?)"
            ),
        }
    }
}

impl std::error::Error for CliError {}

/// Longest raw (non-JSON) error body shown to the user.
const MAX_RAW_BODY: usize = 2000;

/// A client for one API base URL, API key and workspace.
///
/// Deliberately not `Debug`: it holds the API key, which is never printed.
pub struct Api {
    http: reqwest::Client,
    base: Url,
    shown_base: String,
    key: Option<String>,
    workspace: String,
}

/// An answer from the API: its status and its JSON body (`null` when empty).
pub struct Answer {
    /// HTTP status (a success status).
    pub status: StatusCode,
    /// The parsed body.
    pub body: Value,
}

impl Api {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:4300`), sending `key` as a bearer
    /// token when present, addressing `workspace`.
    pub fn new(base: &str, key: Option<String>, workspace: &str) -> Result<Self, CliError> {
        let parsed = Url::parse(base.trim())
            .map_err(|e| CliError::Usage(format!("invalid --api URL `{base}`: {e}")))?;
        if parsed.cannot_be_a_base() || !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "invalid --api URL `{base}`: expected an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("pushpool-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Response(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api {
            http,
            shown_base: parsed.as_str().trim_end_matches('/').to_string(),
            base: parsed,
            key,
            workspace: workspace.to_string(),
        })
    }

    /// `{base}/api/{segments…}`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("api").extend(segments);
        }
        url
    }

    /// `{base}/api/workspaces/{workspace}/{segments…}`.
    pub fn ws_url(&self, segments: &[&str]) -> Url {
        let mut all = vec!["workspaces", self.workspace.as_str()];
        all.extend_from_slice(segments);
        self.url(&all)
    }

    /// `GET url`, expecting JSON.
    pub async fn get(&self, url: Url) -> Result<Value, CliError> {
        Ok(self.send(Method::GET, url, None).await?.body)
    }

    /// Sends one request with an optional JSON body; an error status becomes a [`CliError`].
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let mut request = self.http.request(method, url.clone());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            CliError::Response(format!(
                "cannot read the API's answer from {}: {}",
                self.shown_base,
                innermost(&e)
            ))
        })?;
        if status.is_success() {
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).map_err(|e| {
                    CliError::Response(format!(
                        "the API at {} answered {status} with a body that is not JSON: {e}",
                        self.shown_base
                    ))
                })?
            };
            return Ok(Answer { status, body });
        }
        Err(error_from_body(status, &text))
    }

    /// Opens a Server-Sent Events stream at `url` (no overall time limit), resuming after
    /// `last_event_id` when given; an error status becomes a [`CliError`].
    pub async fn open_stream(
        &self,
        url: Url,
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response, CliError> {
        let mut request = self
            .http
            .get(url)
            .header("Accept", "text/event-stream")
            .timeout(Duration::from_secs(100 * 365 * 24 * 3600));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(error_from_body(status, &text))
    }

    fn transport_error(&self, e: &reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            CliError::Unreachable {
                url: self.shown_base.clone(),
                reason: innermost(e),
            }
        } else {
            CliError::Response(format!(
                "request to the pushpool API at {} failed: {}",
                self.shown_base,
                innermost(e)
            ))
        }
    }
}

/// Turns an error answer into a [`CliError`]: the documented JSON body when it is one, else the
/// status line and the raw body.
pub fn error_from_body(status: StatusCode, text: &str) -> CliError {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        if let (Some(Value::String(_)), Some(Value::String(message))) =
            (map.get("error"), map.get("message"))
        {
            return CliError::Api {
                status,
                message: message.clone(),
                field: map.get("field").and_then(Value::as_str).map(str::to_string),
            };
        }
    }
    let mut body: String = text.chars().take(MAX_RAW_BODY).collect();
    if body.len() < text.len() {
        body.push('…');
    }
    CliError::Http { status, body }
}

/// The innermost cause of an error chain (the part a user can act on).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_api_and_encoded() {
        let api = Api::new("http://localhost:4300/", None, "my ws").unwrap();
        assert_eq!(
            api.ws_url(&["deployments", "a/b"]).as_str(),
            "http://localhost:4300/api/workspaces/my%20ws/deployments/a%2Fb"
        );
        let prefixed = Api::new("https://h.example/pp", None, "default").unwrap();
        assert_eq!(
            prefixed.url(&["workspaces"]).as_str(),
            "https://h.example/pp/api/workspaces"
        );
        assert!(matches!(
            Api::new("localhost:4300", None, "default"),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn error_bodies_are_shown_as_documented() {
        let e = error_from_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"error":"invalid","message":"must be a string","field":"job_variables.image"}"#,
        );
        assert_eq!(
            e.to_string(),
            "must be a string (field: job_variables.image)"
        );
        let e = error_from_body(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"no such pool"}"#,
        );
        assert_eq!(e.to_string(), "no such pool");
        assert!(!e.is_transient());
        let e = error_from_body(StatusCode::BAD_GATEWAY, "upstream down");
        assert_eq!(
            e.to_string(),
            "the API answered 502 Bad Gateway: upstream down"
        );
        assert!(e.is_transient());
        let e = CliError::Unreachable {
            url: "http://127.0.0.1:4300".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the pushpool API at http://127.0.0.1:4300: Connection refused \
             (os error 111) (is `pushpool up` running?)"
        );
    }
}
