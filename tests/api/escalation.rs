//! Privilege escalation through credential minting (issue 19, items 1–3): each request on its
//! own passes the authorization matrix; the escalation is in what its answer lets the caller do
//! next. Every minted or rotated key must stay within the caller's own effective grant.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use pushpool_testkit::{bootstrap_fresh, both_backends, connect, App, TestDb};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    a_capped_key_mints_only_keys_within_its_cap_and_lifetime,
    keys_write_cannot_mint_or_rotate_beyond_the_callers_grant,
    administrator_keys_are_only_for_the_administrator_at_home,
    keys_write_cannot_revoke_an_owners_key,
);

async fn spawn_app(db: &TestDb) -> App {
    let store = connect(db, 8).await;
    let (key, home) = bootstrap_fresh(&store).await;
    App::serve(&db.url, store, key, home, false).await
}

/// Calls `path` (under `/api`) with `key`: status and JSON answer.
async fn call(
    app: &App,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, format!("{}/api{path}", app.base))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(app: &App, path: &str, key: &str, body: Value) -> (u16, Value) {
    call(app, Method::POST, path, key, Some(body)).await
}

async fn get(app: &App, path: &str, key: &str) -> (u16, Value) {
    call(app, Method::GET, path, key, None).await
}

/// Mints a key in `ws` with `body` as `key`, expecting success: (secret, id).
async fn mint(app: &App, ws: &str, key: &str, body: Value) -> (String, String, Value) {
    let (s, b) = post(app, &format!("/workspaces/{ws}/api_keys"), key, body).await;
    assert_eq!(s, 201, "{b}");
    (
        b["key"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
        b,
    )
}

fn assert_refused(status: u16, body: &Value, rule: &str) {
    assert_eq!(status, 403, "{body}");
    let text = body.to_string();
    assert!(
        text.contains(rule),
        "the refusal names the rule `{rule}`: {body}"
    );
}

/// The audit log of `ws` (read with the owner key `key`) has a denied record of `action`.
async fn assert_audited_denied(app: &App, ws: &str, key: &str, action: &str) {
    let (s, log) = get(app, &format!("/workspaces/{ws}/audit_log"), key).await;
    assert_eq!(s, 200, "{log}");
    let entries = log
        .as_array()
        .cloned()
        .or_else(|| log["entries"].as_array().cloned());
    let found = entries.unwrap_or_default().iter().any(|e| {
        e["action"] == action
            && e["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("denied"))
    });
    assert!(found, "a denied `{action}` in the audit log: {log}");
}

/// Item 1: an owner key capped at `viewer` (and expiring) calls `POST …/api_keys {"name":"x"}`.
async fn a_capped_key_mints_only_keys_within_its_cap_and_lifetime(db: TestDb) {
    let app = spawn_app(&db).await;
    let expiry = Utc::now() + ChronoDuration::hours(1);
    let (viewer, _, _) = mint(
        &app,
        "default",
        &app.key,
        json!({"name": "capped", "role": "viewer", "expires_at": expiry}),
    )
    .await;
    let (minted, _, body) = mint(&app, "default", &viewer, json!({"name": "x"})).await;
    assert_eq!(
        body["role"], "viewer",
        "the new key keeps the caller's cap: {body}"
    );
    let expires: DateTime<Utc> = serde_json::from_value(body["expires"].clone())
        .unwrap_or_else(|_| panic!("the new key expires: {body}"));
    assert!(expires <= expiry + ChronoDuration::seconds(1), "{body}");
    let (s, b) = get(&app, "/workspaces/default/members", &minted).await;
    assert_eq!(s, 403, "the minted key is no owner key: {b}");
    // Asking for more than the caller holds is refused, naming the rule.
    let later = Utc::now() + ChronoDuration::days(30);
    let (s, b) = post(
        &app,
        "/workspaces/default/api_keys",
        &viewer,
        json!({"name": "y", "expires_at": later}),
    )
    .await;
    assert_refused(s, &b, "outlive");
    let (s, b) = post(
        &app,
        "/workspaces/default/api_keys",
        &viewer,
        json!({"name": "z", "role": "owner"}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_audited_denied(&app, "default", &app.key, "api_key.create").await;
    app.stop().await;
}

/// Item 2: a custom role with `keys:self`, `keys:read`, `keys:write` mints a key for an owner and
/// rotates the owner's key with `grace_seconds: 0`.
async fn keys_write_cannot_mint_or_rotate_beyond_the_callers_grant(db: TestDb) {
    let app = spawn_app(&db).await;
    let k = &app.key;
    for user in ["bob", "mallory"] {
        let (s, b) = post(&app, "/users", k, json!({"name": user})).await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = post(
        &app,
        "/workspaces/default/roles",
        k,
        json!({"name": "keyadmin", "scopes": ["keys:self", "keys:read", "keys:write"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    for (user, role) in [("bob", "owner"), ("mallory", "keyadmin")] {
        let (s, b) = post(
            &app,
            "/workspaces/default/members",
            k,
            json!({"user": user, "role": role}),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let (bob, bob_key_id, _) =
        mint(&app, "default", k, json!({"name": "bob", "user": "bob"})).await;
    let (mallory, _, _) = mint(&app, "default", k, json!({"name": "m", "user": "mallory"})).await;

    let (s, b) = post(
        &app,
        "/workspaces/default/api_keys",
        &mallory,
        json!({"name": "x", "user": "bob"}),
    )
    .await;
    assert_refused(s, &b, "you do not hold");
    let rotate = format!("/workspaces/default/api_keys/{bob_key_id}/rotate");
    let (s, b) = post(&app, &rotate, &mallory, json!({"grace_seconds": 0})).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = get(&app, "/workspaces/default/members", &bob).await;
    assert_eq!(s, 200, "bob is not locked out: {b}");
    assert_audited_denied(&app, "default", k, "api_key.rotate").await;

    // Within its grant `keys:write` still works: a key for a principal it does not exceed.
    let (s, b) = post(&app, "/users", k, json!({"name": "carol"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        &app,
        "/workspaces/default/members",
        k,
        json!({"user": "carol", "role": "keyadmin"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    mint(
        &app,
        "default",
        &mallory,
        json!({"name": "c", "user": "carol"}),
    )
    .await;
    // An owner may rotate another owner's key with no grace.
    let (s, b) = post(&app, &rotate, k, json!({"grace_seconds": 0})).await;
    assert_eq!(s, 200, "{b}");
    app.stop().await;
}

/// Item 3: an owner of another workspace mints a key for the instance administrator.
async fn administrator_keys_are_only_for_the_administrator_at_home(db: TestDb) {
    let app = spawn_app(&db).await;
    let k = &app.key;
    let (s, b) = post(&app, "/users", k, json!({"name": "eve"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, created) = post(&app, "/workspaces", k, json!({"name": "other"})).await;
    assert_eq!(s, 201, "{created}");
    let admin_other = created["api_key"]["key"].as_str().unwrap().to_string();
    let admin_other_id = created["api_key"]["id"].as_str().unwrap().to_string();
    let (s, b) = post(
        &app,
        "/workspaces/other/members",
        &admin_other,
        json!({"user": "eve", "role": "owner"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (eve, _, _) = mint(
        &app,
        "other",
        &admin_other,
        json!({"name": "eve", "user": "eve"}),
    )
    .await;

    let (s, b) = post(
        &app,
        "/workspaces/other/api_keys",
        &eve,
        json!({"name": "x", "user": "admin"}),
    )
    .await;
    assert_refused(s, &b, "administrator");
    let rotate = format!("/workspaces/other/api_keys/{admin_other_id}/rotate");
    let (s, b) = post(&app, &rotate, &eve, json!({"grace_seconds": 0})).await;
    assert_refused(s, &b, "administrator");

    // A key of the administrator outside its home workspace confers no administrator powers.
    for key in [
        &admin_other,
        &mint(&app, "other", &admin_other, json!({"name": "mine"}))
            .await
            .0,
    ] {
        for path in ["/users", "/audit_log"] {
            let (s, b) = get(&app, path, key).await;
            assert_eq!(s, 403, "{path}: {b}");
        }
        let (s, b) = post(&app, "/users", key, json!({"name": "boss", "admin": true})).await;
        assert_eq!(s, 403, "{b}");
    }
    // At home it does.
    let (s, b) = get(&app, "/users", k).await;
    assert_eq!(s, 200, "{b}");
    assert_audited_denied(&app, "other", &admin_other, "api_key.create").await;
    app.stop().await;
}

/// Found by the generative test (`escalation_model`): a custom role with `keys:write` revoked an
/// owner's only key, locking the owner out; revoking another owner's key needs a full owner.
async fn keys_write_cannot_revoke_an_owners_key(db: TestDb) {
    let app = spawn_app(&db).await;
    let k = &app.key;
    let (s, b) = post(
        &app,
        "/workspaces/default/roles",
        k,
        json!({"name": "keyadmin", "scopes": ["keys:self", "keys:read", "keys:write"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    for (user, role) in [
        ("bob", "owner"),
        ("mallory", "keyadmin"),
        ("carol", "runner"),
    ] {
        let (s, b) = post(&app, "/users", k, json!({"name": user})).await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = post(
            &app,
            "/workspaces/default/members",
            k,
            json!({"user": user, "role": role}),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let (bob, bob_id, _) = mint(&app, "default", k, json!({"name": "b", "user": "bob"})).await;
    let (_, bob_capped_id, _) = mint(
        &app,
        "default",
        k,
        json!({"name": "bc", "user": "bob", "role": "viewer"}),
    )
    .await;
    let (mallory, _, _) = mint(&app, "default", k, json!({"name": "m", "user": "mallory"})).await;
    let (_, carol_id, _) = mint(&app, "default", k, json!({"name": "c", "user": "carol"})).await;

    for id in [&bob_id, &bob_capped_id] {
        let path = format!("/workspaces/default/api_keys/{id}");
        let (s, b) = call(&app, Method::DELETE, &path, &mallory, None).await;
        assert_refused(s, &b, "only an owner may revoke another owner's key");
    }
    let (s, b) = get(&app, "/workspaces/default/members", &bob).await;
    assert_eq!(s, 200, "bob is not locked out: {b}");
    assert_audited_denied(&app, "default", k, "api_key.revoke").await;
    // `keys:write` still revokes a non-owner's key, and an owner revokes another owner's.
    let path = format!("/workspaces/default/api_keys/{carol_id}");
    let (s, b) = call(&app, Method::DELETE, &path, &mallory, None).await;
    assert_eq!(s, 200, "{b}");
    let path = format!("/workspaces/default/api_keys/{bob_id}");
    let (s, b) = call(&app, Method::DELETE, &path, k, None).await;
    assert_eq!(s, 200, "{b}");
    app.stop().await;
}
