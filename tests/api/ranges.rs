//! Regression (issue 19 item 7): `submit_rate` and queue `priority` are bounded; a value out of
//! range is a 422 naming the field and the range, and nothing stored changes.

use pushpool::store::Store;
use pushpool_testkit::{bootstrap_fresh, both_backends, connect, App, TestDb};
use serde_json::json;

both_backends!(out_of_range_rates_and_priorities_are_refused_and_nothing_is_stored,);

async fn out_of_range_rates_and_priorities_are_refused_and_nothing_is_stored(db: TestDb) {
    let store: Store = connect(&db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    let app = App::serve(&db.url, store, key, home, false).await;
    for rate in [
        json!(1e-300),
        json!(1e300),
        json!(0.0001),
        json!(20_000),
        json!(0),
    ] {
        let (s, b) = app
            .post(
                "/work_pools",
                json!({"name": "p", "type": "process", "submit_rate": rate}),
            )
            .await;
        assert_eq!(s, 422, "submit_rate {rate}: {b}");
        assert_eq!(b["field"], "submit_rate", "{b}");
        assert!(b["message"].as_str().unwrap().contains("10000"), "{b}");
    }
    let (_, pools) = app.get("/work_pools").await;
    assert!(
        pools.as_array().unwrap().is_empty(),
        "nothing stored: {pools}"
    );
    let (s, b) = app
        .post(
            "/work_pools",
            json!({"name": "p", "type": "process", "submit_rate": 0.001}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let patched = app
        .client
        .patch(app.url("/work_pools/p"))
        .bearer_auth(&app.key)
        .json(&json!({"submit_rate": 1e300}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 422);
    let (_, pool) = app.get("/work_pools/p").await;
    assert_eq!(pool["submit_rate"], json!(0.001), "unchanged: {pool}");
    for priority in [json!(i64::MAX), json!(i64::MIN), json!(1001), json!(-1001)] {
        let (s, b) = app
            .post(
                "/work_pools/p/queues",
                json!({"name": "q", "priority": priority}),
            )
            .await;
        assert_eq!(s, 422, "priority {priority}: {b}");
        assert_eq!(b["field"], "priority", "{b}");
        assert!(b["message"].as_str().unwrap().contains("-1000"), "{b}");
    }
    let (_, queues) = app.get("/work_pools/p/queues").await;
    assert_eq!(
        queues.as_array().unwrap().len(),
        1,
        "only `default`: {queues}"
    );
    for priority in [-1000, 1000] {
        let (s, b) = app
            .post(
                "/work_pools/p/queues",
                json!({"name": format!("q{}", priority + 1000), "priority": priority}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

/// The OpenAPI document states both ranges, for create and change.
#[test]
fn the_openapi_document_states_the_ranges() {
    let doc = pushpool::api::openapi::document();
    let schemas = &doc["components"]["schemas"];
    for body in ["CreatePool", "UpdatePool"] {
        let rate = serde_json::to_string(&schemas[body]["properties"]["submit_rate"]).unwrap();
        assert!(rate.contains("\"minimum\":0.001"), "{body}: {rate}");
        assert!(rate.contains("\"maximum\":10000.0"), "{body}: {rate}");
    }
    let priority = &schemas["CreateQueue"]["properties"]["priority"];
    assert_eq!(priority["minimum"], json!(-1000), "{priority}");
    assert_eq!(priority["maximum"], json!(1000), "{priority}");
}
