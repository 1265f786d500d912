//! A small fault-injecting Lambda endpoint for tests: it records every `Invoke` it receives and
//! either forwards the request to an upstream emulator (moto) or answers with a scripted outcome
//! the emulator cannot produce (function errors, 404, 429, 5xx, slow answers).
//!
//! Non-invoke requests (STS, SQS, …) are forwarded to the upstream when there is one.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};

/// What the fake does with one `Invoke`.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward to the upstream emulator.
    PassThrough,
    /// 200 with `X-Amz-Function-Error: Unhandled` and `{errorType, errorMessage}`.
    FunctionError {
        /// `errorType` in the payload.
        error_type: String,
        /// `errorMessage` in the payload.
        message: String,
    },
    /// An API error: HTTP status, `x-amzn-ErrorType` code and message.
    ApiError {
        /// HTTP status.
        status: u16,
        /// Error code, e.g. `ResourceNotFoundException`.
        code: String,
        /// Message.
        message: String,
    },
    /// 200 with this payload (no upstream needed).
    Respond(Value),
    /// This exact answer: status, headers (e.g. `x-amz-function-error`, `x-amz-log-result`),
    /// body; for answers shaped like real Lambda's that moto cannot give.
    Reply {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
    /// Waits, then does the inner fault.
    Delay(Duration, Box<Fault>),
}

impl Fault {
    /// An API error.
    pub fn api(status: u16, code: &str, message: &str) -> Fault {
        Fault::ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// One `Invoke` the fake received.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Function name (or ARN) from the path.
    pub function: String,
    /// `X-Amz-Invocation-Type` (RequestResponse when absent).
    pub invocation_type: String,
    /// The query string (qualifier).
    pub query: Option<String>,
    /// The payload, parsed.
    pub payload: Value,
    /// The access key id the request was signed with (dummy credentials in tests).
    pub access_key_id: Option<String>,
    /// `X-Amz-Log-Type` (`Tail` asks for the log's last 4 KB).
    pub log_type: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Script {
    queued: HashMap<String, VecDeque<Fault>>,
    sticky: HashMap<String, Fault>,
    seen: Vec<Invocation>,
    forwarded: Vec<String>,
}

#[derive(Clone)]
struct FakeState {
    upstream: Option<String>,
    script: Arc<Mutex<Script>>,
    client: reqwest::Client,
}

/// The running fake.
pub struct LambdaFake {
    /// Its base URL (use as a pool's `endpoint_url`).
    pub url: String,
    state: FakeState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LambdaFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LambdaFake {
    /// Starts the fake on a free loopback port; `upstream` is the emulator to forward to.
    pub async fn start(upstream: Option<String>) -> LambdaFake {
        let state = FakeState {
            upstream,
            script: Arc::default(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LambdaFake {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// The next invocations of `function` get these outcomes, in order.
    pub fn push(&self, function: &str, faults: impl IntoIterator<Item = Fault>) {
        let mut s = self.state.script.lock().unwrap();
        s.queued
            .entry(function.to_string())
            .or_default()
            .extend(faults);
    }

    /// Every invocation of `function` (after the queued ones) gets this outcome.
    pub fn always(&self, function: &str, fault: Fault) {
        self.state
            .script
            .lock()
            .unwrap()
            .sticky
            .insert(function.to_string(), fault);
    }

    /// The bodies of the non-invoke requests forwarded so far (STS's form-encoded
    /// `Action=AssumeRole&…&ExternalId=…`, SQS calls), in order.
    pub fn forwarded_bodies(&self) -> Vec<String> {
        self.state.script.lock().unwrap().forwarded.clone()
    }

    /// The invocations of `function` received so far.
    pub fn invocations(&self, function: &str) -> Vec<Invocation> {
        self.state
            .script
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|i| i.function == function)
            .cloned()
            .collect()
    }
}

fn invoked_function(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/2015-03-31/functions/")?;
    let name = rest
        .strip_suffix("/invocations/")
        .or_else(|| rest.strip_suffix("/invocations"))?;
    // ARNs arrive URL-encoded.
    Some(percent_decode(name))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(state): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(function) = invoked_function(uri.path()) else {
        state
            .script
            .lock()
            .unwrap()
            .forwarded
            .push(String::from_utf8_lossy(&body).into_owned());
        return forward(&state, method, &uri, &headers, body).await;
    };
    let fault = {
        let mut s = state.script.lock().unwrap();
        s.seen.push(Invocation {
            function: function.clone(),
            invocation_type: headers
                .get("x-amz-invocation-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("RequestResponse")
                .to_string(),
            query: uri.query().map(str::to_string),
            payload: serde_json::from_slice(&body).unwrap_or(Value::Null),
            access_key_id: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|a| a.split("Credential=").nth(1))
                .and_then(|c| c.split('/').next())
                .map(str::to_string),
            log_type: headers
                .get("x-amz-log-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            at: Instant::now(),
        });
        let queued = s.queued.get_mut(&function).and_then(VecDeque::pop_front);
        queued
            .or_else(|| s.sticky.get(&function).cloned())
            .unwrap_or(Fault::PassThrough)
    };
    let mut fault = fault;
    loop {
        match fault {
            Fault::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                fault = *inner;
            }
            Fault::PassThrough => return forward(&state, method, &uri, &headers, body).await,
            Fault::FunctionError {
                error_type,
                message,
            } => {
                return reply(
                    200,
                    &[("x-amz-function-error", "Unhandled")],
                    json!({"errorType": error_type, "errorMessage": message, "stackTrace": []})
                        .to_string(),
                )
            }
            Fault::ApiError {
                status,
                code,
                message,
            } => {
                return reply(
                    status,
                    &[("x-amzn-errortype", code.as_str())],
                    json!({"Type": "User", "message": message}).to_string(),
                )
            }
            Fault::Respond(v) => return reply(200, &[], v.to_string()),
            Fault::Reply {
                status,
                headers,
                body,
            } => {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                return reply(status, &headers, body);
            }
        }
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: String) -> Response {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body)).unwrap()
}

async fn forward(
    state: &FakeState,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some(upstream) = &state.upstream else {
        return reply(
            404,
            &[("x-amzn-errortype", "UnknownOperationException")],
            "{}".into(),
        );
    };
    let url = format!(
        "{upstream}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = state.client.request(
        reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
        url,
    );
    for (k, v) in headers {
        if k.as_str().eq_ignore_ascii_case("host")
            || k.as_str().eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        req = req.header(k.as_str(), v.as_bytes());
    }
    let resp = match req.body(body.to_vec()).send().await {
        Ok(r) => r,
        Err(e) => return reply(502, &[], json!({"message": e.to_string()}).to_string()),
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        let name = k.as_str();
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        out = out.header(name, v.as_bytes());
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    out.body(Body::from(bytes)).unwrap()
}
