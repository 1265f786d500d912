//! The worked example provider (`providers/example`, pool type `example`) through the whole
//! service: registered by its one registry line, it takes a run from the API to COMPLETED or
//! FAILED with its message in the run's logs, and its declared secret field is masked.

use std::time::Duration;

use pushpool_testkit::{infra, state};
use serde_json::json;

#[tokio::test]
async fn example_pool_runs_end_to_end_through_the_registry() {
    let app = pushpool_testkit::spawn_app().await;
    app.ensure_pool("demo", json!({"name": "demo", "type": "example"}))
        .await;
    for (name, variables) in [
        (
            "ok",
            json!({"message": "hello from the example test", "signing_key": "s3cr3t-example-key"}),
        ),
        ("bad", json!({"message": "this one fails", "fail": true})),
    ] {
        let (s, b) = app
            .post(
                "/deployments",
                json!({"name": name, "work_pool": "demo", "job_variables": variables}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    // The provider's declared secret field never comes back in an answer.
    let (s, preview) = app.post("/deployments/ok/preview", json!({})).await;
    assert_eq!(s, 200, "{preview}");
    assert_eq!(
        preview["job_configuration"]["message"],
        "hello from the example test"
    );
    assert!(
        !preview.to_string().contains("s3cr3t-example-key"),
        "{preview}"
    );

    let ok = app.run("ok").await;
    let bad = app.run("bad").await;
    let run = app.wait_terminal(&ok, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "COMPLETED", "{run}");
    assert!(infra(&run).starts_with("example:"), "{run}");
    let (_, logs) = app.get(&format!("/flow_runs/{ok}/logs")).await;
    assert!(
        logs.to_string().contains("hello from the example test"),
        "{logs}"
    );
    let run = app.wait_terminal(&bad, Duration::from_secs(20)).await;
    assert_eq!(state(&run).0, "FAILED", "{run}");
    app.stop().await;
}
