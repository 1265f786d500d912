//! A fake Cloud Run Admin API v2 for tests: the REST paths the `cloud-run-v2:push` provider uses
//! (jobs create/get/list/delete, `:run` with a long-running operation, operations get, executions
//! list/get/`:cancel`), the `{"error":{code,message,status}}` envelope (google.rpc status names:
//! `ALREADY_EXISTS` and `ABORTED` are both HTTP 409), enums as integers
//! (`$alt=json;enum-encoding=int`), and switches to inject 429/503 storms, errors on chosen calls,
//! `ALREADY_EXISTS`, hanging `:run` calls, and to drive executions from RUNNING to
//! SUCCEEDED/FAILED/CANCELLED.
//!
//! Shapes follow the Admin API v2 reference: an execution carries `taskCount`, `parallelism`,
//! its task `template` (`timeout`, `maxRetries`), the per-state task counts and `conditions`
//! (`type`, `state`, `message`, `reason`/`executionReason`), of which only `Completed` says
//! whether it ended; a job carries `labels`, `createTime`, `executionCount` and
//! `latestCreatedExecution` (`name`, `createTime`, `completionTime`). Behaviour the reference does
//! not pin down is a switch: `completionTime` written before the `Completed` condition
//! ([`CloudRunFake::condition_lag`]), a cancel that passes through `CANCELLING`
//! ([`CloudRunFake::cancel_lag`]), an executions list that shows a new execution late
//! ([`CloudRunFake::list_lag`]), a `:run` whose answer is lost after it started the execution
//! ([`CloudRunFake::lose_run_answers`]).

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
    /// Being cancelled (the `Completed` condition still reconciling, `executionReason`
    /// CANCELLING); becomes `Cancelled` after the fake's cancel lag.
    Cancelling,
}

#[derive(Debug, Clone)]
struct Execution {
    name: String,
    job: String,
    created: chrono::DateTime<chrono::Utc>,
    outcome: Outcome,
    ended: Option<chrono::DateTime<chrono::Utc>>,
    /// When the `Completed` condition shows the outcome (`completionTime` shows at `ended`).
    condition_at: Option<Instant>,
    /// When a `Cancelling` execution becomes `Cancelled`.
    cancelled_at: Option<Instant>,
    /// From the job's execution template: tasks, parallelism, task timeout, maxRetries.
    tasks: u64,
    parallelism: u64,
    task_timeout: String,
    max_retries: u64,
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Execution {
    /// Moves a cancel in progress on once its lag has passed.
    fn settle(&mut self) {
        if self.outcome == Outcome::Cancelling
            && self.cancelled_at.is_some_and(|t| Instant::now() >= t)
        {
            self.outcome = Outcome::Cancelled;
            self.ended = Some(chrono::Utc::now());
        }
    }

    fn short(&self) -> &str {
        self.name.rsplit('/').next().unwrap()
    }

    fn to_json(&self) -> Value {
        let n = self.tasks;
        let mut e = json!({
            "name": self.name, "uid": uuid::Uuid::new_v4().to_string(),
            "job": self.job.rsplit('/').next().unwrap(),
            "createTime": ts(&self.created), "startTime": ts(&self.created),
            "taskCount": n, "parallelism": self.parallelism,
            "template": {"timeout": self.task_timeout, "maxRetries": self.max_retries,
                         "containers": [{"image": "img"}]},
            "reconciling": self.ended.is_none(),
            "runningCount": 0, "succeededCount": 0, "failedCount": 0, "cancelledCount": 0,
            "retriedCount": 0,
        });
        // The condition catches up with `completionTime` only at `condition_at`.
        let shown = if self.condition_at.is_some_and(|t| Instant::now() < t) {
            &Outcome::Running
        } else {
            &self.outcome
        };
        let short = self.short();
        // (Completed state, message, executionReason): CONDITION_RECONCILING 2, FAILED 3,
        // SUCCEEDED 4; NON_ZERO_EXIT_CODE 2, CANCELLED 3, CANCELLING 4.
        let (state, message, reason) = match shown {
            Outcome::Running => {
                e["runningCount"] = json!(n);
                (2, String::new(), 0)
            }
            Outcome::Succeeded => {
                e["succeededCount"] = json!(n);
                (4, "Execution completed successfully in 1.2s.".into(), 0)
            }
            // One task failed for good: Cloud Run stops the others, which count as cancelled.
            Outcome::Failed(m) => {
                e["failedCount"] = json!(1);
                e["cancelledCount"] = json!(n - 1);
                (3, m.clone(), 2)
            }
            Outcome::TimedOut => {
                e["failedCount"] = json!(1);
                e["cancelledCount"] = json!(n - 1);
                (
                    3,
                    format!(
                        "Task {short}-task0 failed with message: The configured timeout was reached."
                    ),
                    2,
                )
            }
            Outcome::Cancelling => {
                e["runningCount"] = json!(n);
                (2, "The execution is being cancelled.".into(), 4)
            }
            Outcome::Cancelled => {
                e["cancelledCount"] = json!(n);
                (3, "The execution was cancelled.".into(), 3)
            }
        };
        let mut condition = json!({"type": "Completed", "state": state, "message": message,
                                   "lastTransitionTime": ts(&self.created)});
        if reason != 0 {
            condition["executionReason"] = json!(reason);
        }
        // Real executions list other conditions before `Completed`.
        e["conditions"] = json!([
            {"type": "ResourcesAvailable", "state": 4, "lastTransitionTime": ts(&self.created)},
            {"type": "Started", "state": 4, "lastTransitionTime": ts(&self.created)},
            condition
        ]);
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

/// An error answered to matching calls, a number of times.
struct FailRule {
    method: String,
    path_suffix: String,
    code: u16,
    status: String,
    times: usize,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, Value>,
    rules: Vec<FailRule>,
    condition_lag: Duration,
    cancel_lag: Duration,
    list_lag: Duration,
    lose_run_answers: bool,
    deleted_jobs: Vec<String>,
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

    /// The next `times` calls whose method is `method` and whose path (after `/v2/`) ends with
    /// `path_suffix` answer `code` with the google.rpc status `status` (e.g. 409 `ABORTED`).
    pub fn fail_calls(
        &self,
        method: &str,
        path_suffix: &str,
        code: u16,
        status: &str,
        times: usize,
    ) {
        self.lock().rules.push(FailRule {
            method: method.into(),
            path_suffix: path_suffix.into(),
            code,
            status: status.into(),
            times,
        });
    }

    /// Finished executions show `completionTime` at once but their `Completed` condition only
    /// `lag` later (the two are not written together).
    pub fn condition_lag(&self, lag: Duration) {
        self.lock().condition_lag = lag;
    }

    /// A cancelled execution stays CANCELLING (condition reconciling, `executionReason`
    /// CANCELLING) for `lag` before it is CANCELLED.
    pub fn cancel_lag(&self, lag: Duration) {
        self.lock().cancel_lag = lag;
    }

    /// The executions list leaves out executions younger than `lag` (the job's
    /// `latestCreatedExecution` names them at once).
    pub fn list_lag(&self, lag: Duration) {
        self.lock().list_lag = lag;
    }

    /// While set, `:run` starts the execution and then never answers (the answer is lost).
    pub fn lose_run_answers(&self, on: bool) {
        self.lock().lose_run_answers = on;
    }

    /// Adds a job as if created earlier: `labels`, created `age` ago.
    pub fn insert_job(&self, name: &str, labels: Value, age: Duration) {
        let created = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
        self.lock().jobs.insert(
            name.to_string(),
            json!({"name": name, "labels": labels, "createTime": ts(&created),
                   "reconciling": false, "executionCount": 0,
                   "terminalCondition": {"type": "Ready", "state": 4}}),
        );
    }

    /// Names of the jobs deleted so far, in order.
    pub fn deleted_jobs(&self) -> Vec<String> {
        self.lock().deleted_jobs.clone()
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
        let lag = inner.condition_lag;
        for e in inner.executions.iter_mut() {
            if e.outcome == Outcome::Running {
                e.outcome = outcome.clone();
                if outcome != Outcome::Running {
                    e.ended = Some(chrono::Utc::now());
                    e.condition_at = Some(Instant::now() + lag);
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
        let mut inner = self.lock();
        inner.executions.iter_mut().for_each(Execution::settle);
        inner
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
        let m = method.to_string();
        if let Some(rule) = s
            .rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == m && path.ends_with(&r.path_suffix))
        {
            rule.times -= 1;
            let (code, status) = (rule.code, rule.status.clone());
            if method == Method::POST && path.ends_with(":run") {
                s.run_calls += 1;
            }
            return error(code, &status, "injected failure");
        }
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
    let response = answer(&inner, &method, &path, &query, body);
    let lost = method == Method::POST
        && path.ends_with(":run")
        && response.status().is_success()
        && inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lose_run_answers;
    if lost {
        std::future::pending::<()>().await;
    }
    response
}

fn answer(
    inner: &Shared,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: Option<Value>,
) -> Response {
    let path = path.to_string();
    let method = method.clone();
    let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
    let s = &mut *s;
    s.executions.iter_mut().for_each(Execution::settle);
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
        job["createTime"] = json!(ts(&chrono::Utc::now()));
        job["executionCount"] = json!(0);
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
    if method == Method::GET && path.ends_with("/jobs") {
        let prefix = format!("{path}/");
        let all: Vec<Value> = s
            .jobs
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(_, j)| j.clone())
            .collect();
        // Pages of `pageSize` (default 100), the token being the offset.
        let size: usize = query
            .get("pageSize")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0)
            .unwrap_or(100);
        let from: usize = query
            .get("pageToken")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let page: Vec<Value> = all.iter().skip(from).take(size).cloned().collect();
        let mut answer = json!({});
        if !page.is_empty() {
            answer["jobs"] = json!(page);
        }
        if from + size < all.len() {
            answer["nextPageToken"] = json!((from + size).to_string());
        }
        return Json(answer).into_response();
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
        let created = chrono::Utc::now();
        let job = s.jobs.get_mut(&job_name).unwrap();
        let template = &job["template"];
        let num = |v: &Value, default: u64| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(default)
        };
        let tasks = num(&template["taskCount"], 1).max(1);
        let parallelism = num(&template["parallelism"], 0);
        let task_timeout = template["template"]["timeout"]
            .as_str()
            .unwrap_or("600s")
            .to_string();
        let max_retries = num(&template["template"]["maxRetries"], 3);
        let short = name.rsplit('/').next().unwrap().to_string();
        job["executionCount"] = json!(num(&job["executionCount"], 0) + 1);
        job["latestCreatedExecution"] = json!({"name": short, "createTime": ts(&created)});
        s.executions.push(Execution {
            name: name.clone(),
            job: job_name.clone(),
            created,
            outcome,
            ended,
            condition_at: None,
            cancelled_at: None,
            tasks,
            parallelism,
            task_timeout,
            max_retries,
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
        let cancel_lag = s.cancel_lag;
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
        if e.outcome != Outcome::Cancelling {
            e.outcome = Outcome::Cancelling;
            e.cancelled_at = Some(Instant::now() + cancel_lag);
            e.settle();
        }
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
        let lag = chrono::Duration::from_std(s.list_lag).unwrap();
        let list: Vec<Value> = s
            .executions
            .iter()
            .filter(|e| e.job == job_name && chrono::Utc::now() - e.created >= lag)
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
                s.deleted_jobs.push(path.clone());
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
