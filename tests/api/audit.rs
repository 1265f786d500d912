//! The audit log through the API: every mutation and every key or role change is recorded with
//! actor, action, target, workspace, time, source address and outcome, denied attempts
//! included; owners read it with filters.

use pushpool_testkit::{both_backends, call_json, serve_fresh, TestDb};
use serde_json::{json, Value};

both_backends!(mutations_key_and_role_changes_and_denials_are_audited);

struct App {
    base: String,
    client: reqwest::Client,
}

impl App {
    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/api/workspaces/default{path}", self.base);
        call_json(&self.client, method, &url, key, body).await
    }
    async fn audit(&self, key: &str, query: &str) -> Vec<Value> {
        let (s, v) = self
            .call("GET", &format!("/audit_log?{query}"), key, None)
            .await;
        assert_eq!(s, 200, "{v}");
        v.as_array().unwrap().clone()
    }
}

fn find<'a>(log: &'a [Value], action: &str, outcome: &str) -> &'a Value {
    log.iter()
        .find(|e| e["action"] == action && e["outcome"] == outcome)
        .unwrap_or_else(|| panic!("no {outcome} {action} in {}", json!(log)))
}

async fn mutations_key_and_role_changes_and_denials_are_audited(db: TestDb) {
    let served = serve_fresh(&db.url, false).await;
    let owner = served.admin_key.clone();
    let ws_id = served
        .store
        .workspace("default")
        .await
        .unwrap()
        .id
        .to_string();
    let app = App {
        base: served.base.clone(),
        client: served.client.clone(),
    };
    let started = chrono::Utc::now();

    // A service account, as a viewer; it tries to create a pool and is denied.
    let (s, sa) = app
        .call(
            "POST",
            "/service_accounts",
            &owner,
            Some(json!({"name": "ci", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{sa}");
    let ci_key = sa["api_key"]["key"].as_str().unwrap().to_string();
    let (s, _) = app
        .call(
            "POST",
            "/work_pools",
            &ci_key,
            Some(json!({"name": "etl", "type": "process"})),
        )
        .await;
    assert_eq!(s, 403);
    // Promoted, it may.
    let (s, _) = app
        .call(
            "PATCH",
            "/service_accounts/ci",
            &owner,
            Some(json!({"role": "developer"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(
            "POST",
            "/work_pools",
            &ci_key,
            Some(json!({"name": "etl", "type": "process"})),
        )
        .await;
    assert_eq!(s, 201);
    // A failed mutation (duplicate name) and a request with a key nobody has.
    let (s, _) = app
        .call(
            "POST",
            "/work_pools",
            &ci_key,
            Some(json!({"name": "etl", "type": "process"})),
        )
        .await;
    assert_eq!(s, 409);
    let bogus = pushpool::auth::generate_api_key().key.expose().to_string();
    let (s, _) = app.call("DELETE", "/work_pools/etl", &bogus, None).await;
    assert_eq!(s, 401);
    // Key changes: create, rotate, revoke; a custom role.
    let (_, key) = app
        .call("POST", "/api_keys", &owner, Some(json!({"name": "laptop"})))
        .await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let (s, rotated) = app
        .call(
            "POST",
            &format!("/api_keys/{key_id}/rotate"),
            &owner,
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    assert_eq!(s, 200, "{rotated}");
    let new_id = rotated["api_key"]["id"].as_str().unwrap().to_string();
    let (s, _) = app
        .call("DELETE", &format!("/api_keys/{new_id}"), &owner, None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(
            "POST",
            "/roles",
            &owner,
            Some(json!({"name": "auditor", "scopes": ["audit:read"]})),
        )
        .await;
    assert_eq!(s, 201);

    let log = app.audit(&owner, "limit=1000").await;
    // Newest first.
    let times: Vec<&str> = log.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    for e in &log {
        assert_eq!(e["workspace_id"], ws_id.as_str(), "{e}");
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        let t = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
        assert!(t >= started - chrono::Duration::seconds(1), "{e}");
        assert_ne!(e["outcome"], "pending", "{e}");
    }
    let created = find(&log, "service_account.create", "success");
    assert_eq!(created["actor"]["name"], "admin");
    assert_eq!(created["actor"]["kind"], "user");
    assert_eq!(created["target"], "service_account:ci");
    assert_eq!(created["status"], 201);
    assert_eq!(created["method"], "POST");
    let denied = find(&log, "work_pool.create", "denied");
    assert_eq!(denied["actor"]["name"], "ci");
    assert_eq!(denied["actor"]["kind"], "service_account");
    assert_eq!(denied["status"], 403);
    assert!(
        denied["detail"]["message"]
            .as_str()
            .unwrap()
            .contains("pools:write"),
        "{denied}"
    );
    let promoted = find(&log, "service_account.update", "success");
    assert_eq!(promoted["target"], "service_account:ci");
    assert_eq!(
        promoted["detail"],
        json!({"from": "viewer", "to": "developer"})
    );
    let pool = find(&log, "work_pool.create", "success");
    assert_eq!(pool["actor"]["name"], "ci");
    assert_eq!(pool["actor"]["key_id"], sa["api_key"]["id"]);
    let failed = find(&log, "work_pool.create", "failed");
    assert_eq!(failed["status"], 409);
    assert_eq!(failed["detail"]["error"], "conflict");
    let anonymous = find(&log, "work_pool.delete", "denied");
    assert_eq!(anonymous["actor"]["kind"], "anonymous");
    assert_eq!(anonymous["status"], 401);
    assert_eq!(anonymous["target"], "work_pool:etl");
    assert_eq!(
        find(&log, "api_key.create", "success")["target"],
        format!("api_key:{key_id}")
    );
    assert_eq!(
        find(&log, "api_key.rotate", "success")["detail"]["new_key_id"],
        new_id.as_str()
    );
    assert_eq!(
        find(&log, "api_key.revoke", "success")["target"],
        format!("api_key:{new_id}")
    );
    assert_eq!(
        find(&log, "role.create", "success")["target"],
        "role:auditor"
    );
    // Reads are not recorded unless denied.
    assert!(log
        .iter()
        .all(|e| !e["action"].as_str().unwrap().ends_with(".list")));

    // Filters.
    let by_ci = app.audit(&owner, "actor=ci&limit=1000").await;
    assert!(!by_ci.is_empty() && by_ci.iter().all(|e| e["actor"]["name"] == "ci"));
    let by_id = app
        .audit(&owner, &format!("actor={}", sa["id"].as_str().unwrap()))
        .await;
    assert_eq!(by_id.len(), by_ci.len());
    let keys = app.audit(&owner, "action=api_key.*").await;
    assert_eq!(keys.len(), 3, "{}", json!(keys));
    let denials = app.audit(&owner, "outcome=denied").await;
    assert_eq!(denials.len(), 2, "{}", json!(denials));
    let later = app
        .audit(
            &owner,
            &format!("since={}", urlencode(&chrono::Utc::now().to_rfc3339())),
        )
        .await;
    assert!(later.is_empty(), "{}", json!(later));
    let all_since = app
        .audit(
            &owner,
            &format!("since={}&limit=1000", urlencode(&started.to_rfc3339())),
        )
        .await;
    assert_eq!(all_since.len(), log.len());
    let page1 = app.audit(&owner, "limit=3").await;
    let cursor = page1[2]["id"].as_str().unwrap();
    let page2 = app
        .audit(&owner, &format!("limit=1000&cursor={cursor}"))
        .await;
    assert_eq!(
        page1.len() + page2.len(),
        log.len(),
        "pages cover everything once"
    );
    assert!(page2.iter().all(|e| !page1.contains(e)));
    // Only those with audit:read may read it.
    let (s, _) = app.call("GET", "/audit_log", &ci_key, None).await;
    assert_eq!(s, 403);
    drop(served);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
