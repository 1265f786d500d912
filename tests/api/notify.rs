//! Notifications end to end (issue 14, part 3; docs/notifications.md), on SQLite and
//! PostgreSQL: signed webhook deliveries to a loopback receiver, retries while it is down and
//! exactly one delivery once it is up, failure after the retry window (recorded, with an
//! event), Slack's body shape, email to an SMTP peer written here, the outbound-target guard
//! (refusals checked on the resolved address), inbound hooks, masked secrets, and workspace
//! isolation. Every server is on 127.0.0.1; the instance setting that allows private targets is
//! on except where the guard itself is tested.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use pushpool::notify::worker::NotifyConfig;
use pushpool::notify::{self, Notification, TargetPolicy};
use pushpool::server::ServeOptions;
use pushpool_testkit::{both_backends, call_json, serve_fresh_with, Served, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

both_backends!(
    webhook_is_signed_retried_while_down_and_delivered_once,
    failing_delivery_is_recorded_failed_with_an_event,
    slack_body_has_the_incoming_webhook_shape,
    email_reaches_an_smtp_server_with_the_subject,
    internal_targets_are_refused_by_resolved_address,
    inbound_hook_turns_a_body_into_an_event,
    secrets_are_masked_in_answers,
    other_workspaces_cannot_see_or_use_channels_and_hooks,
    outbox_survives_a_restart_and_two_workers_deliver_each_once,
    secrets_are_resealed_by_key_rotation,
);

/// The test configuration: fast polls and backoff; private targets allowed unless `guarded`.
fn config(guarded: bool) -> NotifyConfig {
    NotifyConfig {
        policy: TargetPolicy {
            allow_private: !guarded,
        },
        poll: Duration::from_millis(100),
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_millis(800),
        timeout: Duration::from_secs(5),
        ..NotifyConfig::default()
    }
}

async fn serve(db: &TestDb, guarded: bool) -> Served {
    pushpool_testkit::log_warnings();
    serve_fresh_with(
        &db.url,
        ServeOptions {
            controller: true,
            notify: config(guarded),
            process_pools: pushpool::execution::ProcessPools::All,
            ..Default::default()
        },
    )
    .await
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback HTTP receiver recording every POST; `start` on a fixed port (to come up late).
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
                got.lock().unwrap().push(Received { headers, body });
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
    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// A free loopback port (nothing listens on it until a receiver starts there).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Polls delivery `id` until `f` holds (at most `limit`).
async fn wait_delivery(s: &Served, id: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, d) = call(s, "GET", &format!("/notification_deliveries/{id}"), None).await;
        assert_eq!(status, 200, "{d}");
        if f(&d) {
            return d;
        }
        assert!(
            start.elapsed() < limit,
            "delivery not as expected after {limit:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether event `e` is `name`, also spelled the documented way (`pushpool.notification.failed`).
fn event_is(e: &Value, name: &str) -> bool {
    let got = e["event"].as_str().unwrap_or_default();
    got == name || got.replace('-', "_") == format!("pushpool.{name}")
}

/// An event's resource id: `resource.id`, or the older flat `resource_id`.
fn resource_of(e: &Value) -> &str {
    e["resource"]["id"]
        .as_str()
        .or(e["resource_id"].as_str())
        .unwrap_or_default()
}

async fn workspace_id(s: &Served) -> Uuid {
    s.store.workspace("default").await.unwrap().id
}

fn run_notification() -> Notification {
    Notification {
        subject: "Run {{ flow_run.name }} of {{ deployment.name }} is {{ state.type }}".into(),
        body: "{{ message }} — {{ links.run }}".into(),
        payload: json!({
            "flow_run": {"id": "3f1e", "name": "etl-42"},
            "deployment": {"name": "etl"},
            "state": {"type": "FAILED", "name": "Failed"},
            "message": "exit code 1",
            "links": {"run": "http://127.0.0.1:4300/runs/3f1e"},
        }),
    }
}

async fn webhook_is_signed_retried_while_down_and_delivered_once(db: TestDb) {
    let s = serve(&db, false).await;
    let port = free_port();
    let secret = "a-test-signing-secret-0123456789";
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "hook", "kind": "webhook", "url": format!("http://127.0.0.1:{port}/in"),
               "secret": secret, "headers": {"Authorization": "Bearer receiver-token"}}),
    )
    .await;
    let channel_id: Uuid = c["id"].as_str().unwrap().parse().unwrap();
    let ws = workspace_id(&s).await;
    let id = notify::enqueue(&s.store, ws, channel_id, run_notification())
        .await
        .unwrap()
        .to_string();

    // The receiver is down: attempts fail and are retried with backoff, none is lost.
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["attempts"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(d["status"], "pending", "{d}");
    assert!(
        d["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{d}"
    );

    let receiver = Receiver::default();
    let server = receiver.start(port).await;
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "delivered", "{d}");
    // Delivered exactly once, and not again later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 1);
    let got = &receiver.all()[0];
    let sig = got.headers["x-pushpool-signature"].to_str().unwrap();
    assert!(notify::signature_matches(secret, &got.body, sig), "{sig}");
    assert!(!notify::signature_matches(
        "another-secret-0123456789",
        &got.body,
        sig
    ));
    assert_eq!(got.headers["x-pushpool-delivery"].to_str().unwrap(), id);
    assert_eq!(
        got.headers["authorization"].to_str().unwrap(),
        "Bearer receiver-token"
    );
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["subject"], "Run etl-42 of etl is FAILED", "{body}");
    assert_eq!(
        body["body"],
        "exit code 1 — http://127.0.0.1:4300/runs/3f1e"
    );
    assert_eq!(body["payload"]["flow_run"]["name"], "etl-42");
    assert_eq!(body["payload"]["state"]["type"], "FAILED");
    assert_eq!(body["channel"], "hook");
    let (_, events) = call(&s, "GET", "/events", None).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| event_is(e, "notification.delivered") && resource_of(e) == id),
        "{events}"
    );
    server.abort();
}

async fn failing_delivery_is_recorded_failed_with_an_event(db: TestDb) {
    let s = serve(&db, false).await;
    let port = free_port();
    create(
        &s,
        "/notification_channels",
        json!({"name": "down", "kind": "webhook", "url": format!("http://127.0.0.1:{port}/"),
               "retry_for_seconds": 1}),
    )
    .await;
    let (status, d) = call(&s, "POST", "/notification_channels/down/test", None).await;
    assert_eq!(status, 202, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["attempts"].as_i64().unwrap() >= 2, "{d}");
    let error = d["last_error"].as_str().unwrap();
    assert!(
        error.contains("gave up") && error.contains("retry window"),
        "{error}"
    );
    assert!(d["finished"].is_string(), "{d}");
    let (_, events) = call(&s, "GET", "/events", None).await;
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| event_is(e, "notification.failed") && resource_of(e) == id)
        .unwrap_or_else(|| panic!("no notification.failed event: {events}"));
    assert!(failed["payload"]["error"]
        .as_str()
        .unwrap()
        .contains("gave up"));

    // A 4xx answer is not retried: failed at the first attempt.
    let receiver_port = free_port();
    let app = axum::Router::new().fallback(|| async { (axum::http::StatusCode::GONE, "gone") });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", receiver_port))
        .await
        .unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    create(
        &s,
        "/notification_channels",
        json!({"name": "gone", "kind": "webhook", "url": format!("http://127.0.0.1:{receiver_port}/")}),
    )
    .await;
    let (_, d) = call(&s, "POST", "/notification_channels/gone/test", None).await;
    let id = d["id"].as_str().unwrap().to_string();
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(
        d["last_error"].as_str().unwrap().contains("HTTP 410"),
        "{d}"
    );
    server.abort();
}

async fn slack_body_has_the_incoming_webhook_shape(db: TestDb) {
    let s = serve(&db, false).await;
    let port = free_port();
    let receiver = Receiver::default();
    let server = receiver.start(port).await;
    let url = format!("http://127.0.0.1:{port}/services/T000/B000/XXXXSECRETXXXX");
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "slack", "kind": "slack", "url": url,
               "subject_template": "[prod] {{ subject }}"}),
    )
    .await;
    // The URL is a credential: shown without its path.
    assert_eq!(c["url"], format!("http://127.0.0.1/**********"), "{c}");
    let (status, d) = call(
        &s,
        "POST",
        "/notification_channels/slack/test",
        Some(json!({"subject": "Run failed", "body": "exit code 1"})),
    )
    .await;
    assert_eq!(status, 202, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "delivered", "{d}");
    let got = receiver.all();
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["text"], "*[prod] Run failed*\nexit code 1", "{body}");
    assert_eq!(body["blocks"][0]["type"], "section");
    assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
    assert_eq!(body["blocks"][0]["text"]["text"], body["text"]);
    assert!(got[0].headers.get("x-pushpool-signature").is_none());
    let (_, list) = call(&s, "GET", "/notification_channels", None).await;
    assert!(!list.to_string().contains("XXXXSECRETXXXX"), "{list}");
    server.abort();
}

/// What the SMTP peer saw: the decoded `AUTH PLAIN` credentials and each message's data.
#[derive(Default)]
struct SmtpLog {
    auth: Vec<String>,
    data: Vec<String>,
    rcpt: Vec<String>,
}

/// A minimal SMTP server (RFC 5321 happy path, AUTH PLAIN) on a loopback port.
async fn smtp_peer() -> (u16, Arc<Mutex<SmtpLog>>) {
    use base64::Engine as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(SmtpLog::default()));
    let shared = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = shared.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 peer.test ESMTP\r\n").await.unwrap();
                let mut in_data = false;
                let mut data = String::new();
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
                    } else if let Some(rest) = upper.strip_prefix("AUTH PLAIN ") {
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(line[11..].trim())
                            .unwrap_or_default();
                        let _ = rest;
                        log.lock()
                            .unwrap()
                            .auth
                            .push(String::from_utf8_lossy(&raw).replace('\0', "|"));
                        b"235 2.7.0 ok\r\n"
                    } else if upper.starts_with("MAIL FROM") {
                        b"250 ok\r\n"
                    } else if upper.starts_with("RCPT TO") {
                        log.lock().unwrap().rcpt.push(line.clone());
                        b"250 ok\r\n"
                    } else if upper == "DATA" {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if upper == "QUIT" {
                        write.write_all(b"221 bye\r\n").await.unwrap();
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

async fn email_reaches_an_smtp_server_with_the_subject(db: TestDb) {
    let s = serve(&db, false).await;
    let (port, log) = smtp_peer().await;
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "mail", "kind": "email", "smtp": {
            "host": "127.0.0.1", "port": port, "tls": "none",
            "username": "alerts", "password": "smtp-password-secret",
            "from": "pushpool <alerts@example.com>", "to": ["oncall@example.com", "b@example.com"]
        }}),
    )
    .await;
    assert_eq!(c["smtp"]["password"], "**********", "{c}");
    assert!(!c.to_string().contains("smtp-password-secret"));
    let channel_id: Uuid = c["id"].as_str().unwrap().parse().unwrap();
    let ws = workspace_id(&s).await;
    let id = notify::enqueue(&s.store, ws, channel_id, run_notification())
        .await
        .unwrap()
        .to_string();
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "delivered", "{d}");
    {
        let log = log.lock().unwrap();
        assert_eq!(log.data.len(), 1, "one email");
        let data = &log.data[0];
        assert!(
            data.contains("Subject: Run etl-42 of etl is FAILED"),
            "{data}"
        );
        assert!(data.contains("exit code 1"), "{data}");
        assert_eq!(log.auth, vec!["|alerts|smtp-password-secret".to_string()]);
        assert_eq!(log.rcpt.len(), 2, "{:?}", log.rcpt);
    }

    // STARTTLS is the default and required: a server that does not offer it gets no email.
    let (port2, log2) = smtp_peer().await;
    create(
        &s,
        "/notification_channels",
        json!({"name": "mail-tls", "kind": "email", "retry_for_seconds": 1, "smtp": {
            "host": "localhost", "port": port2, "from": "alerts@example.com", "to": ["a@example.com"]
        }}),
    )
    .await;
    let (_, d) = call(&s, "POST", "/notification_channels/mail-tls/test", None).await;
    let id = d["id"].as_str().unwrap().to_string();
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(log2.lock().unwrap().data.is_empty());
}

async fn internal_targets_are_refused_by_resolved_address(db: TestDb) {
    let s = serve(&db, true).await;
    let receiver = Receiver::default();
    let port = free_port();
    let server = receiver.start(port).await;
    // A name: refused for the address it resolves to, which the answer names.
    let (status, v) = call(
        &s,
        "POST",
        "/notification_channels",
        Some(
            json!({"name": "local", "kind": "webhook", "url": format!("http://localhost:{port}/")}),
        ),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["field"], "url");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("resolves to 127.0.0.1") || message.contains("resolves to ::1"),
        "{message}"
    );
    for (url, class) in [
        ("http://10.1.2.3/", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:9/", "loopback"),
    ] {
        let (status, v) = call(
            &s,
            "POST",
            "/notification_channels",
            Some(json!({"name": "x", "kind": "slack", "url": url})),
        )
        .await;
        assert_eq!(status, 422, "{url}: {v}");
        assert!(v["message"].as_str().unwrap().contains(class), "{url}: {v}");
    }
    let (status, v) = call(
        &s,
        "POST",
        "/notification_channels",
        Some(json!({"name": "m", "kind": "email",
                    "smtp": {"host": "localhost", "from": "a@example.com", "to": ["b@example.com"]}})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["field"], "smtp.host");

    // A webhook action to a name that resolves to loopback: the worker refuses it on the
    // resolved address, records it failed (not retried) and sends nothing.
    let ws = workspace_id(&s).await;
    let id = notify::enqueue_webhook(
        &s.store,
        ws,
        &format!("http://localhost:{port}/action"),
        &Default::default(),
        json!({"hello": "internal service"}),
    )
    .await
    .unwrap()
    .to_string();
    let d = wait_delivery(&s, &id, Duration::from_secs(10), |d| {
        d["status"] != "pending"
    })
    .await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    let error = d["last_error"].as_str().unwrap();
    assert!(
        error.contains("resolves to 127.0.0.1") || error.contains("resolves to ::1"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 0, "nothing reached the internal receiver");
    server.abort();
}

async fn inbound_hook_turns_a_body_into_an_event(db: TestDb) {
    let s = serve(&db, false).await;
    let hook = create(
        &s,
        "/inbound_hooks",
        json!({"name": "github", "event": "github.{{ body.action }}",
               "resource": "github.repo.{{ body.repository.id }}",
               "payload": {"ref": "{{ body.ref }}", "count": "{{ body.count }}", "fixed": 1}}),
    )
    .await;
    let path = hook["path"].as_str().unwrap().to_string();
    assert!(hook["slug"].is_string());
    let url = format!("{}{path}", s.base);
    let body = json!({"action": "push", "repository": {"id": 77}, "ref": "main", "count": 3});
    let r = s.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    assert_eq!(
        accepted,
        json!({"event": "github.push", "resource": "github.repo.77"})
    );
    let (_, events) = call(&s, "GET", "/events", None).await;
    let e = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "github.push")
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(resource_of(e), "github.repo.77");
    assert_eq!(e["payload"], json!({"ref": "main", "count": 3, "fixed": 1}));

    // A body without a field the template uses: 400 naming it.
    let r = s
        .client
        .post(&url)
        .json(&json!({"repository": {"id": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "body.action", "{v}");
    // Not JSON: 400.
    let r = s.client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Unknown slug: 404.
    let r = s
        .client
        .post(format!("{}/hooks/nosuchslug", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A signed hook: no signature 401, a wrong one 403, the right one 202.
    let signed = create(
        &s,
        "/inbound_hooks",
        json!({"name": "signed", "signed": true}),
    )
    .await;
    let secret = signed["secret"].as_str().unwrap().to_string();
    let url = format!("{}{}", s.base, signed["path"].as_str().unwrap());
    let raw = br#"{"hello":"world"}"#.to_vec();
    let post = |sig: Option<String>| {
        let mut req = s.client.post(&url).body(raw.clone());
        if let Some(sig) = sig {
            req = req.header("X-Pushpool-Signature", sig);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    let wrong = notify::signature("not-the-secret-at-all", &raw);
    assert_eq!(post(Some(wrong)).await.unwrap().status(), 403);
    let right = notify::signature(&secret, &raw);
    assert_eq!(post(Some(right)).await.unwrap().status(), 202);
    let (_, events) = call(&s, "GET", "/events", None).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "webhook.received" && e["payload"] == json!({"hello": "world"})),
        "{events}"
    );
    // Listed without the slug or the secret.
    let (_, list) = call(&s, "GET", "/inbound_hooks", None).await;
    let text = list.to_string();
    assert!(!text.contains(&secret) && !text.contains(hook["slug"].as_str().unwrap()));
    assert_eq!(list[1]["secret"], "**********", "{list}");
}

async fn secrets_are_masked_in_answers(db: TestDb) {
    let s = serve(&db, false).await;
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "generated", "kind": "webhook", "url": "http://127.0.0.1:9/x",
               "headers": {"X-Api-Key": "header-secret-value"}}),
    )
    .await;
    // A generated secret is shown once.
    let secret = c["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() > 30, "{c}");
    assert_eq!(c["headers"]["X-Api-Key"], "**********");
    let given = create(
        &s,
        "/notification_channels",
        json!({"name": "given", "kind": "webhook", "url": "http://127.0.0.1:9/x",
               "secret": "my-own-secret-value-123"}),
    )
    .await;
    assert_eq!(given["secret"], "**********");
    for path in [
        "/notification_channels".to_string(),
        "/notification_channels/generated".to_string(),
        "/audit_log".to_string(),
        "/events".to_string(),
    ] {
        let (status, v) = call(&s, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}");
        let text = v.to_string();
        for secret in [
            secret.as_str(),
            "header-secret-value",
            "my-own-secret-value-123",
        ] {
            assert!(!text.contains(secret), "{path} shows a secret: {text}");
        }
    }
    let (_, one) = call(&s, "GET", "/notification_channels/generated", None).await;
    assert_eq!(one["secret"], "**********");
    // Bad input names the field.
    for (body, field) in [
        (json!({"name": "a", "kind": "webhook"}), "url"),
        (
            json!({"name": "a", "kind": "webhook", "url": "ftp://x"}),
            "url",
        ),
        (
            json!({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:9/", "secret": "short"}),
            "secret",
        ),
        (
            json!({"name": "a", "kind": "slack", "url": "http://127.0.0.1:9/", "secret": "0123456789abcdefg"}),
            "secret",
        ),
        (json!({"name": "a", "kind": "email"}), "smtp"),
        (
            json!({"name": "a", "kind": "email", "smtp": {"host": "h", "from": "nope", "to": ["a@b.c"]}}),
            "smtp.from",
        ),
        (
            json!({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:9/", "retry_for_seconds": 0}),
            "retry_for_seconds",
        ),
        (
            json!({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:9/", "headers": {"X-Pushpool-Signature": "x"}}),
            "headers.X-Pushpool-Signature",
        ),
        (
            json!({"name": "bad name!", "kind": "webhook", "url": "http://127.0.0.1:9/"}),
            "name",
        ),
    ] {
        let (status, v) = call(&s, "POST", "/notification_channels", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let (status, v) = call(
        &s,
        "POST",
        "/notification_channels",
        Some(json!({"name": "given", "kind": "webhook", "url": "http://127.0.0.1:9/x"})),
    )
    .await;
    assert_eq!(status, 409, "{v}");
}

async fn other_workspaces_cannot_see_or_use_channels_and_hooks(db: TestDb) {
    let s = serve(&db, false).await;
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "alpha-channel", "kind": "webhook", "url": "http://127.0.0.1:9/x"}),
    )
    .await;
    let hook = create(&s, "/inbound_hooks", json!({"name": "alpha-hook"})).await;
    let (status, b) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces", s.base),
        &s.admin_key,
        Some(json!({"name": "bravo"})),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    let b_key = b["owner_key"]["key"]
        .as_str()
        .or_else(|| b["api_key"]["key"].as_str())
        .or_else(|| b["key"].as_str())
        .unwrap_or_else(|| panic!("{b}"))
        .to_string();
    let in_b = |method: &'static str, path: String| {
        let url = format!("{}/api/workspaces/bravo{path}", s.base);
        let client = s.client.clone();
        let key = b_key.clone();
        async move { call_json(&client, method, &url, &key, Some(json!({}))).await }
    };
    let id = c["id"].as_str().unwrap();
    let (status, list) = in_b("GET", "/notification_channels".into()).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([]));
    for (method, path) in [
        ("GET", format!("/notification_channels/{id}")),
        ("GET", "/notification_channels/alpha-channel".to_string()),
        ("POST", format!("/notification_channels/{id}/test")),
        ("DELETE", format!("/notification_channels/{id}")),
        (
            "GET",
            format!("/inbound_hooks/{}", hook["id"].as_str().unwrap()),
        ),
        ("DELETE", "/inbound_hooks/alpha-hook".to_string()),
    ] {
        let (status, v) = in_b(method, path.clone()).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
    }
    let (_, hooks) = in_b("GET", "/inbound_hooks".into()).await;
    assert_eq!(hooks, json!([]));
    // A's key cannot reach B's objects through B's path either.
    let (status, _) = call_json(
        &s.client,
        "GET",
        &format!("{}/api/workspaces/bravo/notification_channels", s.base),
        &s.admin_key,
        None,
    )
    .await;
    assert!(status == 404 || status == 200, "{status}");
    // The library refuses a channel of another workspace.
    let b_ws = s.store.workspace("bravo").await.unwrap().id;
    let err = notify::enqueue(&s.store, b_ws, id.parse().unwrap(), run_notification())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // A's test delivery is not among B's; an inbound hook of A writes only into A.
    let (_, d) = call(
        &s,
        "POST",
        "/notification_channels/alpha-channel/test",
        None,
    )
    .await;
    let (_, deliveries) = in_b("GET", "/notification_deliveries".into()).await;
    assert_eq!(deliveries, json!([]));
    let (status, _) = in_b(
        "GET",
        format!("/notification_deliveries/{}", d["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 404);
    let r = s
        .client
        .post(format!("{}{}", s.base, hook["path"].as_str().unwrap()))
        .json(&json!({"marker": "alpha-only"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, events) = in_b("GET", "/events".into()).await;
    assert!(!events.to_string().contains("alpha-only"), "{events}");
    let (_, events) = call(&s, "GET", "/events", None).await;
    assert!(events.to_string().contains("alpha-only"), "{events}");
}

async fn outbox_survives_a_restart_and_two_workers_deliver_each_once(db: TestDb) {
    // No worker runs: the API alone.
    let options = ServeOptions {
        notify: config(false),
        ..Default::default()
    };
    let s = serve_fresh_with(&db.url, options).await;
    let port = free_port();
    let c = create(
        &s,
        "/notification_channels",
        json!({"name": "many", "kind": "webhook", "url": format!("http://127.0.0.1:{port}/")}),
    )
    .await;
    let channel: Uuid = c["id"].as_str().unwrap().parse().unwrap();
    let ws = workspace_id(&s).await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..60 {
        let n = Notification {
            subject: format!("n{i}"),
            body: String::new(),
            payload: json!({"i": i}),
        };
        ids.insert(
            notify::enqueue(&s.store, ws, channel, n)
                .await
                .unwrap()
                .to_string(),
        );
    }
    let receiver = Receiver::default();
    let server = receiver.start(port).await;
    // Two workers (two controllers) on their own store connections deliver the outbox.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![];
    for name in ["worker-a", "worker-b"] {
        let store = pushpool_testkit::open_store(&db.url).await;
        let worker = notify::worker::Worker::new(store, name, config(false));
        tasks.push(tokio::spawn(worker.run(stop_rx.clone())));
    }
    let start = Instant::now();
    while receiver.count() < ids.len() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let got: Vec<String> = receiver
        .all()
        .iter()
        .map(|r| {
            r.headers["x-pushpool-delivery"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let unique: std::collections::BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), ids.len(), "each delivered exactly once");
    assert_eq!(unique, ids);
    let (_, list) = call(&s, "GET", "/notification_deliveries?limit=500", None).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "delivered"),
        "{list}"
    );
    server.abort();
}

async fn secrets_are_resealed_by_key_rotation(db: TestDb) {
    use pushpool::store::{ConnectOptions, SecretKey, Store};
    let s = serve(&db, false).await;
    create(
        &s,
        "/notification_channels",
        json!({"name": "rot", "kind": "webhook", "url": "http://127.0.0.1:9/",
               "secret": "rotate-me-secret-0123", "headers": {"X-K": "header-value"}}),
    )
    .await;
    create(
        &s,
        "/notification_channels",
        json!({"name": "mail", "kind": "email", "smtp": {"host": "127.0.0.1", "port": 9,
               "tls": "none", "username": "u", "password": "pw-123",
               "from": "a@example.com", "to": ["b@example.com"]}}),
    )
    .await;
    let hook = create(
        &s,
        "/inbound_hooks",
        json!({"name": "signed", "signed": true}),
    )
    .await;
    let new = SecretKey::generate("the rotation test");
    let report = s.store.reseal_all(&new).await.unwrap();
    assert!(report.notifications >= 3, "{report:?}");
    let reopened = Store::connect_with(
        &db.url,
        ConnectOptions {
            secret_key: Some(new),
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    let ws = reopened.workspace("default").await.unwrap().id;
    let c = reopened.channel(ws, "rot").await.unwrap();
    assert_eq!(c.config["secret"], "rotate-me-secret-0123");
    assert_eq!(c.config["headers"]["X-K"], "header-value");
    let m = reopened.channel(ws, "mail").await.unwrap();
    assert_eq!(m.config["smtp"]["password"], "pw-123");
    let h = reopened.hook(ws, "signed").await.unwrap();
    assert_eq!(h.secret.as_deref(), hook["secret"].as_str());
    // The old key no longer opens them.
    assert!(s.store.channel(ws, "rot").await.is_err());
}
