//! Issue 14's end-to-end acceptance for automations, on SQLite and PostgreSQL: the server with
//! its controller, automation engine and delivery worker (private targets allowed: every peer
//! here is on 127.0.0.1), the `process` provider, and peers written here — an HTTP receiver and
//! an SMTP server.
//! - A failing run → one signed webhook request within 2 s naming the run, deployment and state.
//! - The receiver down for 10 s → retried, then delivered exactly once.
//! - A failing run → an email with the right subject.
//! - An inbound webhook → an automation → a deployment run with parameters from the body,
//!   COMPLETED.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use pushpool::notify::worker::NotifyConfig;
use pushpool::notify::{self, TargetPolicy};
use pushpool::server::ServeOptions;
use pushpool_testkit::{both_backends, call_json, serve_fresh_with, Served, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

both_backends!(
    a_failing_run_sends_one_signed_webhook_within_2_s,
    a_receiver_down_for_10_s_gets_the_webhook_once_it_is_up,
    a_failing_run_emails_an_smtp_server_with_the_subject,
    an_inbound_webhook_starts_a_run_with_parameters_from_its_body,
);

const SECRET: &str = "automation-e2e-signing-secret-0123";

async fn serve(db: &TestDb) -> Served {
    pushpool_testkit::log_warnings();
    serve_fresh_with(
        &db.url,
        ServeOptions {
            controller: true,
            notify: NotifyConfig {
                policy: TargetPolicy {
                    allow_private: true,
                },
                poll: Duration::from_millis(100),
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_millis(1000),
                timeout: Duration::from_secs(5),
                ..NotifyConfig::default()
            },
            process_pools: pushpool::execution::ProcessPools::All,
            ..Default::default()
        },
    )
    .await
}

async fn call(s: &Served, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_json(
        &s.client,
        method,
        &format!("{}/api/workspaces/default{path}", s.base),
        &s.admin_key,
        body,
    )
    .await
}

async fn create(s: &Served, path: &str, body: Value) -> Value {
    let (status, v) = call(s, "POST", path, Some(body)).await;
    assert_eq!(status, 201, "{path}: {v}");
    v
}

/// Pool `local` and deployments `etl` (fails) and `recover` (echoes its parameters).
async fn pool_and_deployments(s: &Served) {
    create(
        s,
        "/work_pools",
        json!({"name": "local", "type": "process"}),
    )
    .await;
    for (name, command) in [("etl", "echo failing; exit 3"), ("recover", "true")] {
        create(
            s,
            "/deployments",
            json!({"name": name, "work_pool": "local", "job_variables": {"command": command}}),
        )
        .await;
    }
}

/// Starts a run of `deployment`; its id.
async fn run(s: &Served, deployment: &str) -> String {
    let (status, r) = call(
        s,
        "POST",
        &format!("/deployments/{deployment}/runs"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

/// Waits until run `id` is terminal; the run.
async fn terminal(s: &Served, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (_, r) = call(s, "GET", &format!("/flow_runs/{id}"), None).await;
        if ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
            .contains(&r["state"]["type"].as_str().unwrap_or(""))
        {
            return r;
        }
        assert!(start.elapsed() < limit, "not terminal after {limit:?}: {r}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One request a receiver got, and when.
#[derive(Debug, Clone)]
struct Received {
    at: DateTime<Utc>,
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback HTTP receiver recording every request.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(&self, port: u16) -> tokio::task::JoinHandle<()> {
        let got = self.got.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move {
                got.lock().unwrap().push(Received {
                    at: Utc::now(),
                    headers,
                    body,
                });
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        })
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let start = Instant::now();
        while self.all().len() < n {
            assert!(
                start.elapsed() < limit,
                "{} requests after {limit:?}",
                self.all().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.all()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A signed webhook channel to `port` and an automation notifying it when a run of `etl` fails.
async fn alerting(s: &Served, port: u16) {
    let c = create(
        s,
        "/notification_channels",
        json!({"name": "ops", "kind": "webhook", "url": format!("http://127.0.0.1:{port}/alerts"),
               "secret": SECRET}),
    )
    .await;
    create(
        s,
        "/automations",
        json!({"name": "alert-on-failure",
               "trigger": {"type": "run-state", "states": ["Failed", "Crashed"], "deployments": ["etl"]},
               "actions": [{"type": "send-notification", "channel": c["id"],
                            "subject": "Run {{ flow_run.id }} of {{ deployment.name }} is {{ flow_run.state }}",
                            "body": "{{ flow_run.message }}"}]}),
    )
    .await;
}

/// The request is signed with the channel's secret and names the run, its deployment and state.
fn check_request(got: &Received, run: &Value) {
    let sig = got.headers["x-pushpool-signature"].to_str().unwrap();
    assert!(notify::signature_matches(SECRET, &got.body, sig), "{sig}");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    let id = run["id"].as_str().unwrap();
    let state = run["state"]["type"].as_str().unwrap();
    assert_eq!(
        body["subject"],
        format!("Run {id} of etl is {state}"),
        "{body}"
    );
    assert_eq!(body["payload"]["flow_run"]["id"], id, "{body}");
    assert_eq!(body["payload"]["deployment"]["name"], "etl", "{body}");
    assert_eq!(body["payload"]["state"]["type"], state, "{body}");
}

async fn a_failing_run_sends_one_signed_webhook_within_2_s(db: TestDb) {
    let s = serve(&db).await;
    pool_and_deployments(&s).await;
    let port = free_port();
    let receiver = Receiver::default();
    let server = receiver.start(port).await;
    alerting(&s, port).await;
    let id = run(&s, "etl").await;
    let r = terminal(&s, &id, Duration::from_secs(60)).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let ended: DateTime<Utc> = serde_json::from_value(r["state"]["timestamp"].clone()).unwrap();
    let lag = got[0].at - ended;
    eprintln!("failure to webhook request: {} ms", lag.num_milliseconds());
    assert!(lag < chrono::TimeDelta::seconds(2), "{lag:?}");
    check_request(&got[0], &r);
    // Exactly one request for the one failure.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.all().len(), 1);
    server.abort();
}

async fn a_receiver_down_for_10_s_gets_the_webhook_once_it_is_up(db: TestDb) {
    let s = serve(&db).await;
    pool_and_deployments(&s).await;
    let port = free_port();
    alerting(&s, port).await;
    let id = run(&s, "etl").await;
    let r = terminal(&s, &id, Duration::from_secs(60)).await;
    // Nothing listens for 10 s: the delivery is attempted and retried.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, deliveries) = call(&s, "GET", "/notification_deliveries", None).await;
    let list = deliveries
        .as_array()
        .unwrap_or_else(|| panic!("{deliveries}"));
    assert_eq!(list.len(), 1, "{deliveries}");
    assert_eq!(list[0]["status"], "pending", "{deliveries}");
    assert!(list[0]["attempts"].as_i64().unwrap() >= 2, "{deliveries}");
    let receiver = Receiver::default();
    let server = receiver.start(port).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    check_request(&got[0], &r);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.all().len(), 1, "delivered once");
    server.abort();
}

/// What the SMTP peer saw: each message's data.
#[derive(Default)]
struct SmtpLog {
    data: Vec<String>,
}

/// A minimal SMTP server (the RFC 5321 happy path, AUTH PLAIN accepted) on a loopback port.
async fn smtp_peer() -> (u16, Arc<Mutex<SmtpLog>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(SmtpLog::default()));
    let shared = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = shared.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 peer.test ESMTP\r\n").await.unwrap();
                let (mut in_data, mut data) = (false, String::new());
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            log.lock().unwrap().data.push(std::mem::take(&mut data));
                            write.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-peer.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("AUTH") {
                        b"235 2.7.0 ok\r\n"
                    } else if upper == "DATA" {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, log)
}

async fn a_failing_run_emails_an_smtp_server_with_the_subject(db: TestDb) {
    let s = serve(&db).await;
    pool_and_deployments(&s).await;
    let (port, log) = smtp_peer().await;
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "mail", "kind": "email", "smtp": {
            "host": "127.0.0.1", "port": port, "tls": "none",
            "username": "alerts", "password": "smtp-password-secret",
            "from": "pushpool <alerts@example.com>", "to": ["oncall@example.com"]
        }}),
    )
    .await;
    create(
        &s,
        "/automations",
        json!({"name": "mail-on-failure",
               "trigger": {"type": "run-state", "states": ["Failed", "Crashed"]},
               "actions": [{"type": "send-notification", "channel": c["id"],
                            "subject": "{{ deployment.name }} run {{ flow_run.state }}",
                            "body": "Run {{ flow_run.id }}: {{ flow_run.message }}"}]}),
    )
    .await;
    let id = run(&s, "etl").await;
    let r = terminal(&s, &id, Duration::from_secs(60)).await;
    let state = r["state"]["type"].as_str().unwrap().to_string();
    let start = Instant::now();
    while log.lock().unwrap().data.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(15), "no email");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let data = log.lock().unwrap().data[0].clone();
    assert!(
        data.contains(&format!("Subject: etl run {state}")),
        "{data}"
    );
    assert!(data.contains(&id), "{data}");
}

async fn an_inbound_webhook_starts_a_run_with_parameters_from_its_body(db: TestDb) {
    let s = serve(&db).await;
    pool_and_deployments(&s).await;
    let hook = create(
        &s,
        "/inbound_hooks",
        json!({"name": "github", "event": "github.{{ body.action }}",
               "resource": "github.repo.{{ body.repository.id }}",
               "payload": {"ref": "{{ body.ref }}", "count": "{{ body.count }}"}}),
    )
    .await;
    create(
        &s,
        "/automations",
        json!({"name": "deploy-on-push",
               "trigger": {"type": "event", "expect": ["github.push"], "resource": ["github.repo.*"]},
               "actions": [{"type": "run-deployment", "deployment": "recover",
                            "parameters": {"ref": "{{ event.payload.ref }}",
                                           "count": "{{ event.payload.count }}",
                                           "repo": "{{ event.resource.id }}"}}]}),
    )
    .await;
    let url = format!("{}{}", s.base, hook["path"].as_str().unwrap());
    // An event the automation does not expect starts nothing.
    let r = s
        .client
        .post(&url)
        .json(&json!({"action": "opened", "repository": {"id": 7}, "ref": "x", "count": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = s
        .client
        .post(&url)
        .json(&json!({"action": "push", "repository": {"id": 77}, "ref": "main", "count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let start = Instant::now();
    let id = loop {
        let (_, runs) = call(&s, "GET", "/flow_runs?deployment=recover", None).await;
        if let Some(r) = runs.as_array().and_then(|l| l.first()) {
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = terminal(&s, &id, Duration::from_secs(60)).await;
    assert_eq!(r["state"]["type"], "COMPLETED", "{r}");
    assert_eq!(
        r["parameters"],
        json!({"ref": "main", "count": 3, "repo": "github.repo.77"}),
        "{r}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, runs) = call(&s, "GET", "/flow_runs?deployment=recover", None).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
}
