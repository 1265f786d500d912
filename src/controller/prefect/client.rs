//! A small client of Prefect 3's REST API: the base URL (self-hosted `http://host:4200/api`, or
//! Prefect Cloud's `https://api.prefect.cloud/api/accounts/{account}/workspaces/{workspace}`),
//! the credentials Prefect users already set (`PREFECT_API_KEY` as a bearer token,
//! `PREFECT_API_AUTH_STRING` as HTTP basic) and JSON requests with errors classified for the
//! control plane (404 not found; 408, 429, 5xx and transport errors retriable).

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::controller::plane::PlaneError;

/// How pushpool authenticates to a Prefect API.
#[derive(Clone, Default)]
pub enum PrefectAuth {
    /// No credentials (a self-hosted server without auth).
    #[default]
    None,
    /// `PREFECT_API_KEY`: `Authorization: Bearer <key>` (Prefect Cloud).
    ApiKey(String),
    /// `PREFECT_API_AUTH_STRING` (`user:password`): HTTP basic (a self-hosted server with
    /// `server.api.auth_string`).
    AuthString(String),
}

impl fmt::Debug for PrefectAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret itself.
        f.write_str(match self {
            PrefectAuth::None => "None",
            PrefectAuth::ApiKey(_) => "ApiKey(<redacted>)",
            PrefectAuth::AuthString(_) => "AuthString(<redacted>)",
        })
    }
}

impl PrefectAuth {
    /// From `PREFECT_API_KEY` / `PREFECT_API_AUTH_STRING` values (the key wins when both are set;
    /// blank values count as unset).
    pub fn from_values(api_key: Option<String>, auth_string: Option<String>) -> Self {
        let api_key = api_key.filter(|s| !s.trim().is_empty());
        let auth_string = auth_string.filter(|s| !s.trim().is_empty());
        match (api_key, auth_string) {
            (Some(k), _) => PrefectAuth::ApiKey(k),
            (None, Some(a)) => PrefectAuth::AuthString(a),
            (None, None) => PrefectAuth::None,
        }
    }

    fn header(&self) -> Option<String> {
        match self {
            PrefectAuth::None => None,
            PrefectAuth::ApiKey(k) => Some(format!("Bearer {k}")),
            PrefectAuth::AuthString(a) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )),
        }
    }

    /// The environment variables a job needs to authenticate the same way.
    pub fn job_env(&self) -> Vec<(&'static str, String)> {
        match self {
            PrefectAuth::None => vec![],
            PrefectAuth::ApiKey(k) => vec![("PREFECT_API_KEY", k.clone())],
            PrefectAuth::AuthString(a) => vec![("PREFECT_API_AUTH_STRING", a.clone())],
        }
    }
}

/// A failed Prefect API call.
#[derive(Debug, thiserror::Error)]
pub enum PrefectError {
    /// The server answered with an error status.
    #[error("Prefect API {method} {path} answered {status}: {body}")]
    Status {
        /// The method.
        method: Method,
        /// The path below the base URL.
        path: String,
        /// The status.
        status: StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    /// The server could not be reached or its answer not read.
    #[error("Prefect API {method} {path}: {source}")]
    Transport {
        /// The method.
        method: Method,
        /// The path below the base URL.
        path: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
}

impl PrefectError {
    /// True for a 404 answer.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PrefectError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// True for errors a later retry may cure.
    pub fn is_retriable(&self) -> bool {
        match self {
            PrefectError::Transport { .. } => true,
            PrefectError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
        }
    }
}

impl From<PrefectError> for PlaneError {
    fn from(e: PrefectError) -> Self {
        if e.is_not_found() {
            let key = match &e {
                PrefectError::Status { path, .. } | PrefectError::Transport { path, .. } => {
                    path.clone()
                }
            };
            PlaneError::NotFound {
                what: "Prefect object",
                key,
            }
        } else if e.is_retriable() {
            PlaneError::Unavailable(Box::new(e))
        } else {
            PlaneError::Failed(Box::new(e))
        }
    }
}

/// A Prefect API client. Cheap to clone.
#[derive(Clone)]
pub struct PrefectClient {
    http: reqwest::Client,
    base: String,
    auth: PrefectAuth,
}

impl fmt::Debug for PrefectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefectClient")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish()
    }
}

impl PrefectClient {
    /// A client of the API at `base_url` (the URL Prefect's `PREFECT_API_URL` holds).
    pub fn new(base_url: &str, auth: PrefectAuth) -> Result<Self, String> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| format!("--prefect-api-url `{base}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "--prefect-api-url `{base}` must be an http or https URL"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(PrefectClient { http, base, auth })
    }

    /// The API's base URL (what jobs get as `PREFECT_API_URL`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The credentials used.
    pub fn auth(&self) -> &PrefectAuth {
        &self.auth
    }

    /// Sends a request; `Ok(Value::Null)` for an empty answer (204). Answers 429, 502, 503 and
    /// 504 (a Prefect server on SQLite answers 503 while its database is locked) are retried up
    /// to 6 times, 100 ms to 3.2 s apart: Prefect rolls such a request back, and a repeated
    /// PENDING proposal that did land is aborted like any second claim (the orphan scan finds
    /// the run, its claim message names this controller).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PrefectError> {
        let mut delay = Duration::from_millis(100);
        for _ in 0..6 {
            match self.call_once(method.clone(), path, body).await {
                Err(PrefectError::Status { status, .. })
                    if matches!(status.as_u16(), 429 | 502 | 503 | 504) =>
                {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        self.call_once(method, path, body).await
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PrefectError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(h) = self.auth.header() {
            request = request.header(reqwest::header::AUTHORIZATION, h);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source| PrefectError::Transport {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(PrefectError::Status {
                method,
                path: path.to_string(),
                status,
                body: crate::access::shorten(&text, 300),
            });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| PrefectError::Status {
            method,
            path: path.to_string(),
            status,
            body: format!("the answer is not JSON: {e}"),
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, PrefectError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, PrefectError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, PrefectError> {
        self.call(Method::PATCH, path, Some(body)).await
    }
}

/// Percent-encodes one path segment (pool, block and variable names).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
