//! A fake Cloud Run Admin API v2 for tests: the REST paths the `cloud-run-v2:push` provider uses
//! (jobs create/get/delete, `:run` with a long-running operation, operations get, executions
//! list/get/`:cancel`), the `{"error":{code,message,status}}` envelope, enums as integers
//! (`$alt=json;enum-encoding=int`), and switches to inject 429/503 storms, `ALREADY_EXISTS`,
//! hanging `:run` calls, and to drive executions from RUNNING to SUCCEEDED/FAILED/CANCELLED.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// How an execution ends (or that it keeps running).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Tasks running.
    Running,
    /// All tasks succeeded.
    Succeeded,
    /// A task failed with this message.
    Failed(String),
    /// A task reached its timeout (Cloud Run's message).
    TimedOut,
    /// Cancelled.
    Cancelled,
}

#[derive(Debug, Clone)]
struct Execution {
    name: String,
    job: String,
    created: chrono::DateTime<chrono::Utc>,
    outcome: Outcome,
    ended: Option<chrono::DateTime<chrono::Utc>>,
}

impl Execution {
    fn to_json(&self) -> Value {
        let ts = |t: &chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut e = json!({
            "name": self.name, "uid": uuid::Uuid::new_v4().to_string(),
            "job": self.job.rsplit('/').next().unwrap(),
            "createTime": ts(&self.created), "startTime": ts(&self.created),
            "taskCount": 1, "parallelism": 1, "reconciling": self.ended.is_none(),
            "runningCount": 0, "succeededCount": 0, "failedCount": 0, "cancelledCount": 0,
        });
        let (state, message, reason) = match &self.outcome {
            Outcome::Running => {
                e["runningCount"] = json!(1);
                (2, String::new(), 0)
            }
            Outcome::Succeeded => {
                e["succeededCount"] = json!(1);
                (4, "Execution completed successfully in 1.2s.".into(), 0)
            }
            Outcome::Failed(m) => {
                e["failedCount"] = json!(1);
                (3, m.clone(), 2)
            }
            Outcome::TimedOut => {
                e["failedCount"] = json!(1);
                (
                    3,
                    format!(
                        "Task {}-task0 failed with message: The configured timeout was reached.",
                        self.name.rsplit('/').next().unwrap()
                    ),
                    2,
                )
            }
            Outcome::Cancelled => {
                e["cancelledCount"] = json!(1);
                (3, "The execution was cancelled.".into(), 3)
            }
        };
        let mut condition = json!({"type": "Completed", "state": state, "message": message});
        if reason != 0 {
            condition["executionReason"] = json!(reason);
        }
        e["conditions"] = json!([condition]);
        if let Some(end) = &self.ended {
            e["completionTime"] = json!(ts(end));
        }
        e
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path after `/v2/`.
    pub path: String,
    /// The `$alt` query parameter.
    pub alt: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, Value>,
    created_bodies: Vec<(String, Value)>,
    executions: Vec<Execution>,
    operations: BTreeMap<String, Value>,
    calls: Vec<Call>,
    run_calls: usize,
    executions_started: usize,
    cancel_calls: usize,
    storm: Option<(Instant, u16)>,
    storm_served: usize,
    fail_next: Vec<u16>,
    already_exists_once: bool,
    hang_runs: bool,
    auto: Option<Outcome>,
    /// Cloud Logging entries (the logging fake, `POST /v2/entries:list`).
    log_entries: Vec<Value>,
    /// The next `entries:list` calls answer 503, one each.
    logs_fail_next: usize,
    /// `entries:list` calls so far.
    logs_calls: usize,
}

/// The fake server.
#[derive(Clone)]
pub struct CloudRunFake {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

type Shared = Arc<Mutex<Inner>>;

fn error(code: u16, status: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({"error": {"code": code, "message": message, "status": status}})),
    )
        .into_response()
}

impl CloudRunFake {
    /// Starts the fake on 127.0.0.1 on a free port.
    pub async fn start() -> CloudRunFake {
        let inner: Shared = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v2/entries:list", axum::routing::post(list_entries))
            .route("/v2/{*path}", axum::routing::any(handle))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CloudRunFake { url, inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every GET of an execution or an operation answers `code` (429 or 503) for `for_how_long`.
    pub fn storm(&self, code: u16, for_how_long: Duration) {
        self.lock().storm = Some((Instant::now() + for_how_long, code));
    }

    /// The next requests (any path) answer these codes, one each, in order.
    pub fn fail_next(&self, codes: &[u16]) {
        self.lock().fail_next = codes.to_vec();
    }

    /// Requests answered with an injected storm error so far.
    pub fn storm_served(&self) -> usize {
        self.lock().storm_served
    }

    /// The next job create stores the job but answers 409 ALREADY_EXISTS (a lost answer).
    pub fn already_exists_once(&self) {
        self.lock().already_exists_once = true;
    }

    /// While set, `:run` calls never answer and start nothing (a controller dies waiting).
    pub fn hang_runs(&self, on: bool) {
        self.lock().hang_runs = on;
    }

    /// New executions take this outcome at once (instead of staying RUNNING).
    pub fn auto(&self, outcome: Outcome) {
        self.lock().auto = Some(outcome);
    }

    /// Sets the outcome of every execution that is still RUNNING.
    pub fn finish_all(&self, outcome: Outcome) {
        let mut inner = self.lock();
        for e in inner.executions.iter_mut() {
            if e.outcome == Outcome::Running {
                e.outcome = outcome.clone();
                if outcome != Outcome::Running {
                    e.ended = Some(chrono::Utc::now());
                }
            }
        }
    }

    /// Names of the jobs that exist.
    pub fn jobs(&self) -> Vec<String> {
        self.lock().jobs.keys().cloned().collect()
    }

    /// Job bodies received by create calls (job name, body), in order.
    pub fn created_bodies(&self) -> Vec<(String, Value)> {
        self.lock().created_bodies.clone()
    }

    /// `:run` calls received (hanging ones included).
    pub fn run_calls(&self) -> usize {
        self.lock().run_calls
    }

    /// Executions actually started.
    pub fn executions_started(&self) -> usize {
        self.lock().executions_started
    }

    /// `:cancel` calls received.
    pub fn cancel_calls(&self) -> usize {
        self.lock().cancel_calls
    }

    /// The current outcome of every execution (name, outcome).
    pub fn executions(&self) -> Vec<(String, Outcome)> {
        self.lock()
            .executions
            .iter()
            .map(|e| (e.name.clone(), e.outcome.clone()))
            .collect()
    }

    /// Every request received.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }
}

fn operation(inner: &mut Inner, parent: &str, metadata: Value, done: bool) -> Value {
    let name = format!("{parent}/operations/{}", uuid::Uuid::new_v4().simple());
    let op = json!({"name": name, "metadata": metadata, "done": done});
    inner.operations.insert(name, op.clone());
    op
}

/// An operation's metadata: the resource with its `@type` (a `google.protobuf.Any`).
fn typed(mut v: Value, kind: &str) -> Value {
    v["@type"] = json!(format!("type.googleapis.com/google.cloud.run.v2.{kind}"));
    v
}

fn location_of(path: &str) -> String {
    path.split('/').take(4).collect::<Vec<_>>().join("/")
}

async fn handle(
    State(inner): State<Shared>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let hang = {
        let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
        s.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            alt: query.get("$alt").cloned(),
            at: Instant::now(),
        });
        if !s.fail_next.is_empty() {
            let code = s.fail_next.remove(0);
            s.storm_served += 1;
            let status = if code == 429 {
                "RESOURCE_EXHAUSTED"
            } else {
                "UNAVAILABLE"
            };
            return error(code, status, "injected failure");
        }
        if let Some((until, code)) = s.storm {
            let storm_target = method == Method::GET
                && (path.contains("/executions/") || path.contains("/operations/"));
            if Instant::now() < until && storm_target {
                s.storm_served += 1;
                let status = if code == 429 {
                    "RESOURCE_EXHAUSTED"
                } else {
                    "UNAVAILABLE"
                };
                return error(code, status, "injected storm");
            }
        }
        if method == Method::POST && path.ends_with(":run") {
            s.run_calls += 1;
            s.hang_runs
        } else {
            false
        }
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
    let s = &mut *s;
    if method == Method::POST && path.ends_with("/jobs") {
        let Some(id) = query.get("jobId") else {
            return error(400, "INVALID_ARGUMENT", "jobId is required");
        };
        let name = format!("{path}/{id}");
        let mut job = body.unwrap_or(Value::Null);
        s.created_bodies.push((name.clone(), job.clone()));
        if s.jobs.contains_key(&name) {
            return error(
                409,
                "ALREADY_EXISTS",
                &format!("Resource '{id}' already exists."),
            );
        }
        job["name"] = json!(name);
        job["reconciling"] = json!(false);
        job["terminalCondition"] = json!({"type": "Ready", "state": 4});
        s.jobs.insert(name.clone(), job.clone());
        if std::mem::take(&mut s.already_exists_once) {
            return error(
                409,
                "ALREADY_EXISTS",
                &format!("Resource '{id}' already exists."),
            );
        }
        let op = operation(s, &location_of(&path), typed(job, "Job"), true);
        return Json(op).into_response();
    }
    if method == Method::POST && path.ends_with(":run") {
        let job_name = path.trim_end_matches(":run").to_string();
        if !s.jobs.contains_key(&job_name) {
            return error(
                404,
                "NOT_FOUND",
                &format!("Resource '{job_name}' was not found"),
            );
        }
        let name = format!(
            "{job_name}/executions/{}-{}",
            job_name.rsplit('/').next().unwrap(),
            &uuid::Uuid::new_v4().simple().to_string()[..5]
        );
        let outcome = s.auto.clone().unwrap_or(Outcome::Running);
        let ended = (outcome != Outcome::Running).then(chrono::Utc::now);
        s.executions.push(Execution {
            name: name.clone(),
            job: job_name.clone(),
            created: chrono::Utc::now(),
            outcome,
            ended,
        });
        s.executions_started += 1;
        // Like Cloud Run, the first answer's metadata may not name the execution yet: it is only
        // in the operation read afterwards.
        let op = operation(
            s,
            &location_of(&path),
            json!({"@type": "type.googleapis.com/google.cloud.run.v2.Execution"}),
            false,
        );
        let op_name = op["name"].as_str().unwrap().to_string();
        s.operations.insert(
            op_name,
            json!({"name": op["name"], "done": false, "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Execution", "name": name}}),
        );
        return Json(op).into_response();
    }
    if method == Method::POST && path.ends_with(":cancel") {
        s.cancel_calls += 1;
        let name = path.trim_end_matches(":cancel");
        let Some(e) = s.executions.iter_mut().find(|e| e.name == name) else {
            return error(
                404,
                "NOT_FOUND",
                &format!("Resource '{name}' was not found"),
            );
        };
        if e.ended.is_some() {
            return error(
                400,
                "FAILED_PRECONDITION",
                "the execution has already finished",
            );
        }
        e.outcome = Outcome::Cancelled;
        e.ended = Some(chrono::Utc::now());
        let ex = typed(e.to_json(), "Execution");
        let op = operation(s, &location_of(&path), ex, true);
        return Json(op).into_response();
    }
    if method == Method::GET && path.ends_with("/executions") {
        let job_name = path.trim_end_matches("/executions");
        if !s.jobs.contains_key(job_name) {
            return error(
                404,
                "NOT_FOUND",
                &format!("Resource '{job_name}' was not found"),
            );
        }
        let list: Vec<Value> = s
            .executions
            .iter()
            .filter(|e| e.job == job_name)
            .map(Execution::to_json)
            .collect();
        return Json(if list.is_empty() {
            json!({})
        } else {
            json!({"executions": list})
        })
        .into_response();
    }
    if method == Method::GET && path.contains("/executions/") {
        return match s.executions.iter().find(|e| e.name == path) {
            Some(e) => Json(e.to_json()).into_response(),
            None => error(
                404,
                "NOT_FOUND",
                &format!("Resource '{path}' was not found"),
            ),
        };
    }
    if method == Method::GET && path.contains("/operations/") {
        return match s.operations.get(&path) {
            Some(op) => Json(op.clone()).into_response(),
            None => error(404, "NOT_FOUND", "operation not found"),
        };
    }
    if method == Method::GET && path.contains("/jobs/") {
        return match s.jobs.get(&path) {
            Some(j) => Json(j.clone()).into_response(),
            None => error(
                404,
                "NOT_FOUND",
                &format!("Resource '{path}' was not found"),
            ),
        };
    }
    if method == Method::DELETE && path.contains("/jobs/") {
        return match s.jobs.remove(&path) {
            Some(j) => {
                s.executions.retain(|e| e.job != path);
                let op = operation(s, &location_of(&path), typed(j, "Job"), true);
                Json(op).into_response()
            }
            None => error(
                404,
                "NOT_FOUND",
                &format!("Resource '{path}' was not found"),
            ),
        };
    }
    error(
        404,
        "NOT_FOUND",
        &format!("no route for {method} /v2/{path}"),
    )
}

// ---------------------------------------------------------------------------------------------
// The logging fake: Cloud Logging's `entries:list` (REST `POST /v2/entries:list`) over entries
// the test seeds, shaped like a Cloud Run job's (`resource.type` `cloud_run_job`, the execution
// name label, `textPayload`, `insertId`, RFC 3339 `timestamp`). It understands the part of the
// filter the provider sends: the execution name and `timestamp>=`; it orders by timestamp and
// pages with `pageSize` / `pageToken` (an offset).

impl CloudRunFake {
    /// Seeds log entries of `execution` (its full name or its last segment): `(log, text)` pairs
    /// where `log` is `stdout`, `stderr` or `varlog/system`, one millisecond apart from now.
    pub fn seed_logs(&self, execution: &str, lines: &[(&str, &str)]) {
        let exec = execution
            .rsplit('/')
            .next()
            .unwrap_or(execution)
            .to_string();
        let job = execution
            .split("/jobs/")
            .nth(1)
            .and_then(|j| j.split('/').next())
            .unwrap_or("")
            .to_string();
        let start = chrono::Utc::now();
        let mut inner = self.lock();
        for (i, (log, text)) in lines.iter().enumerate() {
            let at = start + chrono::Duration::milliseconds(i as i64);
            let entry = json!({
                "insertId": format!("{:024x}", uuid::Uuid::new_v4().as_u128() >> 32),
                "logName": format!("projects/test-project/logs/run.googleapis.com%2F{}", log.replace('/', "%2F")),
                "resource": {"type": "cloud_run_job", "labels": {"job_name": job, "location": "us-central1", "project_id": "test-project"}},
                "labels": {"run.googleapis.com/execution_name": exec, "run.googleapis.com/task_index": "0", "run.googleapis.com/task_attempt": "0"},
                "textPayload": text,
                "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "receiveTimestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            });
            inner.log_entries.push(entry);
        }
    }

    /// The next `n` `entries:list` calls answer 503 UNAVAILABLE.
    pub fn fail_logs_next(&self, n: usize) {
        self.lock().logs_fail_next = n;
    }

    /// `entries:list` calls so far.
    pub fn logs_calls(&self) -> usize {
        self.lock().logs_calls
    }
}

/// The quoted value after `key` in a logging filter (`key"value"` with `=` or `>=` before it).
fn filter_value<'a>(filter: &'a str, key: &str) -> Option<&'a str> {
    let rest = &filter[filter.find(key)? + key.len()..];
    let rest = rest.trim_start_matches(['=', '>', ' ']);
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

async fn list_entries(State(inner): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.logs_calls += 1;
    if inner.logs_fail_next > 0 {
        inner.logs_fail_next -= 1;
        return error(503, "UNAVAILABLE", "The service is currently unavailable.");
    }
    let filter = body["filter"].as_str().unwrap_or_default();
    if !filter.contains("resource.type=\"cloud_run_job\"") {
        return error(
            400,
            "INVALID_ARGUMENT",
            "the fake expects a cloud_run_job filter",
        );
    }
    let exec = filter_value(filter, "labels.\"run.googleapis.com/execution_name\"");
    let since = filter_value(filter, "timestamp>=")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let mut matching: Vec<&Value> = inner
        .log_entries
        .iter()
        .filter(|e| exec.is_none_or(|x| e["labels"]["run.googleapis.com/execution_name"] == x))
        .filter(|e| {
            since.is_none_or(|s| {
                chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap_or(""))
                    .is_ok_and(|t| t >= s)
            })
        })
        .collect();
    matching.sort_by_key(|e| e["timestamp"].as_str().unwrap_or("").to_string());
    let size = body["pageSize"].as_u64().filter(|n| *n > 0).unwrap_or(50) as usize;
    let offset: usize = body["pageToken"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(size)
        .map(|e| (*e).clone())
        .collect();
    let next = if offset + size < matching.len() {
        (offset + size).to_string()
    } else {
        String::new()
    };
    Json(json!({"entries": page, "nextPageToken": next})).into_response()
}
