//! Sessions, cookies, CSRF, roles and tenant isolation over plain HTTP (no browser).

use pushpool_testkit::call_json;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

use super::{api_run, key_with_role, seeded, wait_state};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The sign-in CSRF token and cookie of a fresh sign-in form.
async fn signin_token(c: &reqwest::Client, base: &str) -> (String, String) {
    let r = c.get(format!("{base}/ui/signin")).send().await.unwrap();
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let html = r.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (token, cookie.split(';').next().unwrap().to_string())
}

/// The CSRF token of a signed-in page.
async fn page_csrf(c: &reqwest::Client, url: &str, key: &str) -> String {
    let html = c
        .get(url)
        .header(COOKIE, format!("pushpool_session={key}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn ui_root_redirects_and_pages_need_a_session() {
    let (s, _db) = seeded().await;
    let c = no_redirects();
    let r = c.get(format!("{}/", s.base)).send().await.unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()[LOCATION], "/ui");
    let r = c
        .get(format!("{}/ui/runs?state=FAILED", s.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(
        r.headers()[LOCATION],
        "/ui/signin?next=%2Fui%2Fruns%3Fstate%3DFAILED"
    );
    // A garbage or revoked cookie is no session either.
    let r = c
        .get(format!("{}/ui", s.base))
        .header(COOKIE, "pushpool_session=pp_nonsense")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    // Assets and the sign-in page need none, and name no other origin.
    for path in [
        "/ui/assets/ui.css",
        "/ui/assets/ui.js",
        "/ui/signin",
        "/docs",
    ] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("https://") && !body.contains("http://"),
            "{path} names another origin"
        );
    }
}

#[tokio::test]
async fn ui_signin_sets_a_strict_httponly_cookie_and_needs_its_csrf_token() {
    let (s, _db) = seeded().await;
    let c = no_redirects();
    let (token, cookie) = signin_token(&c, &s.base).await;
    // Without the form's token: refused.
    let r = c
        .post(format!("{}/ui/signin", s.base))
        .header(COOKIE, &cookie)
        .form(&[("key", s.admin_key.as_str()), ("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A wrong key: 401 and the form again, no session cookie.
    let r = c
        .post(format!("{}/ui/signin", s.base))
        .header(COOKIE, &cookie)
        .form(&[("key", "pp_wrong"), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .all(|v| !v.to_str().unwrap().starts_with("pushpool_session=pp")));
    // The right key: a session cookie, HttpOnly and SameSite=Strict, not Secure over plain HTTP.
    let r = c
        .post(format!("{}/ui/signin", s.base))
        .header(COOKIE, &cookie)
        .form(&[
            ("key", s.admin_key.as_str()),
            ("csrf", token.as_str()),
            ("next", "/ui/runs"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()[LOCATION], "/ui/runs");
    let set: Vec<String> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("pushpool_session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "{session}");
    // Behind a TLS proxy the cookie is Secure.
    let (token, cookie) = signin_token(&c, &s.base).await;
    let r = c
        .post(format!("{}/ui/signin", s.base))
        .header(COOKIE, &cookie)
        .header("x-forwarded-proto", "https")
        .form(&[
            ("key", s.admin_key.as_str()),
            ("csrf", token.as_str()),
            ("next", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui", "no open redirect");
    let secure = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("pushpool_session="))
        .unwrap();
    assert!(secure.contains("; Secure"), "{secure}");
}

#[tokio::test]
async fn ui_forms_need_the_session_csrf_token_and_a_same_site_origin() {
    let (s, _db) = seeded().await;
    let c = no_redirects();
    let id = api_run(&s, "sleeper").await;
    let cookie = format!("pushpool_session={}", s.admin_key);
    let url = format!("{}/ui/runs/{id}/cancel", s.base);
    for csrf in ["", "0000"] {
        let req = c.post(&url).header(COOKIE, &cookie).form(&[("csrf", csrf)]);
        assert_eq!(req.send().await.unwrap().status(), 403, "csrf `{csrf}`");
    }
    let token = page_csrf(&c, &format!("{}/ui/runs/{id}", s.base), &s.admin_key).await;
    let r = c
        .post(&url)
        .header(COOKIE, &cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another site's form");
    assert_ne!(super::run_state(&s, &id).await, "CANCELLED");
    // The session's own token from its own page: done, and audited as the key's act.
    let r = c
        .post(&url)
        .header(COOKIE, &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    wait_state(&s, &id, "CANCELLED", 30).await;
    let (_, audit) = call_json(
        &s.client,
        "GET",
        &format!(
            "{}/api/workspaces/default/audit_log?action=flow_run.cancel",
            s.base
        ),
        &s.admin_key,
        None,
    )
    .await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["outcome"], "success");
}

#[tokio::test]
async fn ui_viewer_sees_no_buttons_and_its_forged_posts_are_refused() {
    let (s, _db) = seeded().await;
    let c = no_redirects();
    let viewer = key_with_role(&s, "viewer").await;
    let id = api_run(&s, "sleeper").await;
    let page = c
        .get(format!("{}/ui/runs/{id}", s.base))
        .header(COOKIE, format!("pushpool_session={viewer}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"run-state\""), "{page}");
    assert!(
        !page.contains("/cancel\""),
        "a viewer sees no cancel button"
    );
    for path in ["/ui/pools/local", "/ui/deployments/hello"] {
        let html = c
            .get(format!("{}{path}", s.base))
            .header(COOKIE, format!("pushpool_session={viewer}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !html.contains("/pause\"") && !html.contains("/run\""),
            "{path}"
        );
    }
    // Owner-only pages are not offered, and refused when asked for.
    assert!(!page.contains("/ui/audit"));
    let r = c
        .get(format!("{}/ui/audit", s.base))
        .header(COOKIE, format!("pushpool_session={viewer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A forged POST with the viewer's own valid CSRF token: the API refuses it.
    let token = page_csrf(&c, &format!("{}/ui/runs/{id}", s.base), &viewer).await;
    for (path, what) in [
        (format!("/ui/runs/{id}/cancel"), "cancel"),
        ("/ui/pools/local/pause".to_string(), "pause"),
        ("/ui/deployments/hello/run".to_string(), "run"),
    ] {
        let r = c
            .post(format!("{}{path}", s.base))
            .header(COOKIE, format!("pushpool_session={viewer}"))
            .form(&[("csrf", token.as_str()), ("parameters", "{}")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{what}");
        let body = r.text().await.unwrap();
        assert!(body.contains("permission"), "{what}: {body}");
    }
    assert_ne!(super::run_state(&s, &id).await, "CANCELLED");
    let (_, pool) = call_json(
        &s.client,
        "GET",
        &format!("{}/api/workspaces/default/work_pools/local", s.base),
        &s.admin_key,
        None,
    )
    .await;
    assert_eq!(pool["paused"], false);
}

#[tokio::test]
async fn ui_another_workspace_key_sees_nothing_of_this_one() {
    let (s, _db) = seeded().await;
    let c = no_redirects();
    let id = api_run(&s, "hello").await;
    let (st, other) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces", s.base),
        &s.admin_key,
        Some(json!({"name": "other"})),
    )
    .await;
    assert_eq!(st, 201, "{other}");
    let key = other["api_key"]["key"]
        .as_str()
        .or_else(|| other["key"].as_str())
        .unwrap_or_else(|| panic!("{other}"))
        .to_string();
    for path in [
        format!("/ui/runs/{id}"),
        format!("/ui/runs/{id}/live"),
        "/ui/deployments/hello".into(),
        "/ui/pools/local".into(),
    ] {
        let r = c
            .get(format!("{}{path}", s.base))
            .header(COOKIE, format!("pushpool_session={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let list = c
        .get(format!("{}/ui/runs", s.base))
        .header(COOKIE, format!("pushpool_session={key}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains(&id), "another workspace's run listed");
}

/// The dashboard's own store reads (chart counts per bucket, late and failed runs, runs in
/// flight per pool) on both backends: the numbers match what happened.
#[tokio::test]
async fn ui_dashboard_counts_runs_on_sqlite_and_postgres() {
    let mut dbs = vec![pushpool_testkit::sqlite_db()];
    dbs.extend(pushpool_testkit::postgres_db().await);
    for db in dbs {
        let (s, _db) = super::seeded_on(db).await;
        let c = no_redirects();
        let done = api_run(&s, "hello").await;
        wait_state(&s, &done, "COMPLETED", 60).await;
        let long = api_run(&s, "sleeper").await;
        wait_state(&s, &long, "RUNNING", 60).await;
        // Due a minute ago and never claimed (its pool is paused): late.
        let (st, _) = call_json(
            &s.client,
            "PATCH",
            &format!("{}/api/workspaces/default/work_pools/local", s.base),
            &s.admin_key,
            Some(json!({"paused": true})),
        )
        .await;
        assert_eq!(st, 200);
        let at = (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339();
        let (st, late) = call_json(
            &s.client,
            "POST",
            &format!("{}/api/workspaces/default/deployments/hello/runs", s.base),
            &s.admin_key,
            Some(json!({"scheduled_time": at})),
        )
        .await;
        assert_eq!(st, 201, "{late}");
        let late_id = late["id"].as_str().unwrap();
        for window in ["hour", "day", "week"] {
            let html = c
                .get(format!("{}/ui?window={window}", s.base))
                .header(COOKIE, format!("pushpool_session={}", s.admin_key))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for (state, n) in [
                ("COMPLETED", 1),
                ("RUNNING", 1),
                ("SCHEDULED", 1),
                ("FAILED", 0),
            ] {
                assert!(
                    html.contains(&format!("{state} <strong>{n}</strong>")),
                    "{window}: {state} {n}"
                );
            }
            assert!(html.contains("(3 runs by scheduled time)"), "{window}");
            assert!(
                html.contains(&format!("/ui/runs/{late_id}")),
                "{window}: the late run is listed"
            );
            assert!(html.contains("1 / ∞"), "{window}: one run in flight");
        }
        super::cancel_all(&s, &long).await;
    }
}

/// The automations page lists the workspace's automations to a reader, and a viewer's session
/// shows it too (reading automations is a viewer scope); run events link to their run.
#[tokio::test]
async fn ui_automations_page_lists_the_workspace_automations() {
    let (s, _db) = seeded().await;
    let c = no_redirects();
    let (st, body) = call_json(
        &s.client,
        "POST",
        &format!("{}/api/workspaces/default/automations", s.base),
        &s.admin_key,
        Some(json!({
            "name": "page-on-failure",
            "trigger": {"type": "run-state", "states": ["Failed"]},
            "actions": [{"type": "cancel-flow-run"}],
        })),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let viewer = key_with_role(&s, "viewer").await;
    for key in [s.admin_key.clone(), viewer] {
        let r = c
            .get(format!("{}/ui/automations", s.base))
            .header(COOKIE, format!("pushpool_session={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.contains("page-on-failure"), "{html}");
        assert!(html.contains("cancel-flow-run"));
        assert!(html.contains("href=\"/ui/automations\""));
    }
    let id = api_run(&s, "hello").await;
    let html = c
        .get(format!("{}/ui/events", s.base))
        .header(COOKIE, format!("pushpool_session={}", s.admin_key))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("href=\"/ui/runs/{id}\"")), "{html}");
}
