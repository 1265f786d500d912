//! The OpenAPI document a running server serves at `/api/openapi.json` is valid OpenAPI 3.1:
//! checked against the official OAS 3.1 JSON Schema (2022-10-07, vendored in
//! `tests/fixtures/openapi-3.1-schema.json`; `tests/fixtures/README.md` says where it comes from).
//!
//! The server is the real binary (`pushpool up` on a fresh home and a free loopback port), so the
//! document checked is exactly the one clients download.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The official JSON Schema of OpenAPI 3.1 documents.
const OAS_3_1_SCHEMA: &str = include_str!("../fixtures/openapi-3.1-schema.json");

/// `pushpool up` on a fresh home; killed (by its own PID) when dropped.
struct Server {
    child: Child,
    base: String,
    _home: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let home = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind a free port")
            .local_addr()
            .expect("local addr")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_pushpool"));
        // Its own home and SQLite file, whatever the test's environment says.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PUSHPOOL_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("up")
            .arg("--home")
            .arg(home.path())
            .arg("--listen")
            .arg(&listen)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start `pushpool up`");
        let mut server = Server {
            child,
            base: format!("http://{listen}"),
            _home: home,
        };
        let started = Instant::now();
        while http().get(server.url("/healthz")).send().await.is_err() {
            if let Some(status) = server.child.try_wait().expect("poll the server") {
                panic!("`pushpool up` exited at start with {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "`pushpool up` did not answer on {listen} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that never goes through a proxy (the server is on loopback).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// Every way `document` breaks the OAS 3.1 schema, one line each (empty when valid).
fn oas_3_1_violations(document: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(OAS_3_1_SCHEMA).expect("the vendored schema is JSON");
    let validator =
        jsonschema::draft202012::new(&schema).expect("the vendored OAS 3.1 schema compiles");
    validator
        .iter_errors(document)
        .map(|e| format!("at {}: {e}", e.instance_path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_openapi_document_is_valid_openapi_3_1() {
    let server = Server::start().await;
    let response = http()
        .get(server.url("/api/openapi.json"))
        .send()
        .await
        .expect("GET /api/openapi.json");
    assert_eq!(response.status().as_u16(), 200);
    let document: Value = response.json().await.expect("the document is JSON");

    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1"),
        "`openapi` is {:?}, expected 3.1.x",
        document["openapi"]
    );
    let violations = oas_3_1_violations(&document);
    assert!(
        violations.is_empty(),
        "/api/openapi.json is not valid OpenAPI 3.1:\n{}",
        violations.join("\n")
    );
}

/// The check above is only worth something if the vendored schema really refuses broken
/// documents: a missing `info`, a response without its required `description`, a path that does
/// not start with `/`, and a 3.0 version string.
#[test]
fn the_oas_3_1_schema_refuses_broken_documents() {
    let valid = json!({
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/x": {"get": {"responses": {"200": {"description": "OK"}}}}}
    });
    assert_eq!(oas_3_1_violations(&valid), Vec::<String>::new());

    let mut no_info = valid.clone();
    no_info.as_object_mut().unwrap().remove("info");
    let mut no_description = valid.clone();
    no_description["paths"]["/x"]["get"]["responses"]["200"] = json!({});
    let mut bad_path = valid.clone();
    bad_path["paths"] = json!({"x": {}});
    let mut old_version = valid.clone();
    old_version["openapi"] = json!("3.0.3");
    for (what, broken) in [
        ("no info", no_info),
        ("response without description", no_description),
        ("path without leading /", bad_path),
        ("version 3.0.3", old_version),
    ] {
        assert!(
            !oas_3_1_violations(&broken).is_empty(),
            "the OAS 3.1 schema accepted a document with {what}"
        );
    }
}
