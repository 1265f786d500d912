//! Store outages: the API answers 503 quickly (not a hang) while PostgreSQL is unreachable, and the
//! API and a controller recover without a restart once it is back. The outage is a TCP proxy in
//! front of the test server that drops every connection and refuses new ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushpool::server::{bootstrap, ServeOptions};
use pushpool::store::{ConnectOptions, Store};
use pushpool_testkit::{postgres_db, Server};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

/// A loopback proxy to PostgreSQL that can be cut.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_answers_503_during_an_outage_and_everything_recovers() {
    let Some(db) = postgres_db().await else {
        return;
    };
    // Route the store through the proxy: same database, the proxy's port.
    let target = db
        .url
        .split("@")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = Proxy::start(target.clone()).await;
    let url = db
        .url
        .replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1);
    let store = Store::connect_with(
        &url,
        ConnectOptions {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(2),
            secret_key: Some(pushpool_testkit::test_secret_key()),
        },
    )
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let key = bootstrap(&store, home.path()).await.unwrap().unwrap();
    let options = ServeOptions {
        database_url: url.clone(),
        controller: true,
        ..Default::default()
    };
    let server = Server::start(store, options).await;
    let client = reqwest::Client::new();
    let base = format!("{}/api/workspaces/default", server.base);
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.timeout(Duration::from_secs(20)).send()
    };
    for _ in 0..100 {
        if call(reqwest::Method::GET, "/work_pools", None)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = call(
        reqwest::Method::POST,
        "/work_pools",
        Some(json!({"name": "local", "type": "process"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = call(
        reqwest::Method::POST,
        "/deployments",
        Some(json!({"name": "d", "work_pool": "local", "job_variables": {"command": "echo ok"}})),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    proxy.cut();
    let asked = Instant::now();
    let r = call(reqwest::Method::GET, "/work_pools", None)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "{:?}", r.text().await);
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "503 took {:?}",
        asked.elapsed()
    );
    let r = call(reqwest::Method::GET, "/readyz", None);
    drop(r);

    // A run requested during the outage fails cleanly; after the outage everything works again
    // and the controller (which kept running) completes a new run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    let start = Instant::now();
    let run_id = loop {
        let r = call(
            reqwest::Method::POST,
            "/deployments/d/runs",
            Some(json!({})),
        )
        .await
        .unwrap();
        if r.status().as_u16() == 201 {
            break r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "API did not recover: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let r = call(reqwest::Method::GET, &format!("/flow_runs/{run_id}"), None)
            .await
            .unwrap();
        let run: Value = r.json().await.unwrap_or(Value::Null);
        if run["state"]["type"] == "COMPLETED" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "controller did not recover: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
