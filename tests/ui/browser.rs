//! The dashboard in headless Chromium. Every non-loopback request the browser attempts lands on
//! a trap proxy, and each test fails if there was any (and if any loaded resource is not from
//! the server under test).

use std::path::PathBuf;
use std::time::Duration;

use super::webdriver::{browser_or_skip, Browser, TrapProxy};
use super::{api_run, key_with_role, seeded, wait_state};

/// Where the screenshots go: `target/ui-screenshots/` (docs/ui.md shows them).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("ui-screenshots")
}

async fn sign_in(b: &Browser, base: &str, key: &str) {
    b.goto(&format!("{base}/ui")).await;
    assert!(b.url().await.contains("/ui/signin"), "{}", b.url().await);
    if b.all("#key").await.is_empty() {
        panic!(
            "no sign-in form at {}: {}",
            b.url().await,
            b.js("return document.documentElement.outerHTML;").await
        );
    }
    b.fill("#key", key).await;
    b.click("form.signin button[type=submit]").await;
    b.wait_text("h1", "Dashboard", Duration::from_secs(10))
        .await;
}

/// Nothing but the server under test was asked for, by the page or anything else the browser did.
async fn assert_loopback_only(b: &Browser, proxy: &TrapProxy, base: &str) {
    for url in b.loaded_urls().await {
        assert!(url.starts_with(base), "the page loaded {url}");
    }
    assert_eq!(
        proxy.attempts(),
        Vec::<String>::new(),
        "non-loopback requests were attempted"
    );
}

#[tokio::test]
async fn browser_owner_runs_watches_cancels_and_pauses() {
    let Some((chromium, driver)) = browser_or_skip() else {
        return;
    };
    let (s, _db) = seeded().await;
    // Some history for the dashboard and the lists.
    let done = api_run(&s, "hello").await;
    wait_state(&s, &done, "COMPLETED", 60).await;
    let proxy = TrapProxy::start().await;
    let b = Browser::start(&chromium, &driver, &proxy).await;
    sign_in(&b, &s.base, &s.admin_key).await;
    let shots = screenshot_dir();
    b.set_viewport(1280, 800).await;

    // Run now from the deployment page; the run page follows it to COMPLETED without a reload.
    b.goto(&format!("{}/ui/deployments/hello", s.base)).await;
    b.fill("#params", r#"{"who": "browser"}"#).await;
    b.click("#run-now").await;
    b.wait_text("h1", "Run", Duration::from_secs(10)).await;
    let run_url = b.url().await;
    b.js("window.__notReloaded = true; return 1;").await;
    b.wait_text("#run-state", "Completed", Duration::from_secs(60))
        .await;
    assert_eq!(
        b.js("return window.__notReloaded === true;").await,
        true,
        "the page reloaded"
    );
    // Its logs arrived on the page, live.
    b.wait_text("#logs", "hello-from-the-ui", Duration::from_secs(15))
        .await;
    let timeline = b.text("#run-timeline").await;
    for state in ["Scheduled", "Running", "Completed"] {
        assert!(timeline.contains(state), "timeline: {timeline}");
    }
    assert!(b.text(".facts").await.contains("Infrastructure id"));
    assert!(b.text("body").await.contains("browser"), "parameters shown");
    b.js("document.querySelectorAll('details').forEach(function(d){d.open=true;}); return 1;")
        .await;
    b.screenshot(&shots.join("run-detail.png")).await;
    assert!(run_url.contains("/ui/runs/"));
    // Re-run: a new run of the deployment with the same parameters.
    b.click("#run-actions form[action$='/rerun'] button").await;
    b.wait_text("#run-state", "Completed", Duration::from_secs(60))
        .await;
    assert_ne!(b.url().await, run_url, "re-run opened the new run");
    assert!(
        b.text("#main").await.contains("\"who\": \"browser\""),
        "same parameters"
    );

    // Cancel a long run from its page and see CANCELLED, again without reloading.
    let long = api_run(&s, "sleeper").await;
    wait_state(&s, &long, "RUNNING", 60).await;
    b.goto(&format!("{}/ui/runs/{long}", s.base)).await;
    b.wait_text("#run-state", "Running", Duration::from_secs(10))
        .await;
    b.click("#run-actions form[action$='/cancel'] button").await;
    b.wait_text("#run-state", "Cancelled", Duration::from_secs(60))
        .await;
    assert!(b
        .all("#run-actions form[action$='/cancel']")
        .await
        .is_empty());

    // The runs list, filtered.
    b.goto(&format!("{}/ui/runs", s.base)).await;
    b.wait_text("#runs", "hello", Duration::from_secs(10)).await;
    b.screenshot(&shots.join("runs.png")).await;
    b.goto(&format!("{}/ui/runs?state=CANCELLED", s.base)).await;
    let cancelled = b.text("#runs").await;
    assert!(
        cancelled.contains("sleeper") && !cancelled.contains("hello"),
        "{cancelled}"
    );

    // Pause the pool.
    b.goto(&format!("{}/ui/pools/local", s.base)).await;
    b.click("form[action$='/pause'] button").await;
    b.wait_text("#pool-status", "paused", Duration::from_secs(10))
        .await;
    assert!(!b.all("form[action$='/resume']").await.is_empty());

    // The dashboard, with the chart, late/failed lists, pools and events.
    b.goto(&format!("{}/ui?window=hour", s.base)).await;
    let dash = b.text("main").await;
    for part in [
        "Late runs",
        "Failed and crashed",
        "Runs per state",
        "Pools",
        "Recent events",
    ] {
        assert!(dash.contains(part), "dashboard lacks {part}");
    }
    assert!(!b.all("svg rect.bar").await.is_empty(), "chart has bars");
    b.screenshot(&shots.join("dashboard.png")).await;
    // Keyboard: the skip link comes first and every control can take focus.
    let first = b
        .js("return document.querySelector('a, button, input, select, textarea').className;")
        .await;
    assert_eq!(first, "skip");
    // Phone width: the page itself does not scroll sideways (wide tables scroll in their box).
    for page in ["/ui", "/ui/runs", &format!("/ui/runs/{long}")] {
        b.set_viewport(390, 844).await;
        b.goto(&format!("{}{page}", s.base)).await;
        let fits = b
            .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
            .await;
        assert_eq!(fits, true, "{page} scrolls sideways at phone width");
    }
    b.screenshot(&shots.join("run-detail-phone.png")).await;
    b.set_viewport(1280, 800).await;
    assert_loopback_only(&b, &proxy, &s.base).await;

    // The API reference loads completely from this server too.
    b.goto(&format!("{}/docs", s.base)).await;
    let docs = b.text("main").await;
    assert!(
        docs.contains("/api/workspaces/{ws}/flow_runs") && docs.contains("Schemas"),
        "docs"
    );
    assert_loopback_only(&b, &proxy, &s.base).await;

    // Sign out: the session is gone.
    b.goto(&format!("{}/ui", s.base)).await;
    b.click("form[action='/ui/signout'] button").await;
    b.wait_text("h1", "Sign in", Duration::from_secs(10)).await;
    b.goto(&format!("{}/ui/runs", s.base)).await;
    assert!(b.url().await.contains("/ui/signin"));
    assert_loopback_only(&b, &proxy, &s.base).await;
    b.quit().await;
}

#[tokio::test]
async fn browser_viewer_sees_no_cancel_button_and_a_forged_post_is_refused() {
    let Some((chromium, driver)) = browser_or_skip() else {
        return;
    };
    let (s, _db) = seeded().await;
    let viewer = key_with_role(&s, "viewer").await;
    let long = api_run(&s, "sleeper").await;
    wait_state(&s, &long, "RUNNING", 60).await;
    let proxy = TrapProxy::start().await;
    let b = Browser::start(&chromium, &driver, &proxy).await;
    sign_in(&b, &s.base, &viewer).await;
    b.goto(&format!("{}/ui/runs/{long}", s.base)).await;
    b.wait_text("#run-state", "Running", Duration::from_secs(10))
        .await;
    assert!(
        b.all("#run-actions button").await.is_empty(),
        "a viewer sees no buttons"
    );
    assert!(b.all("form[action$='/cancel']").await.is_empty());
    // Forge the POST from the page, with the session's own CSRF token: the API refuses it.
    let status = b
        .js_async(&format!(
            "var done = arguments[arguments.length - 1];
             var token = document.querySelector('input[name=csrf]').value;
             fetch('/ui/runs/{long}/cancel', {{method: 'POST', credentials: 'same-origin',
               headers: {{'Content-Type': 'application/x-www-form-urlencoded'}},
               body: 'csrf=' + encodeURIComponent(token)}})
               .then(function (r) {{ done(r.status); }}, function (e) {{ done(String(e)); }});"
        ))
        .await;
    assert_eq!(status, 403, "forged cancel: {status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(super::run_state(&s, &long).await, "RUNNING");
    b.goto(&format!("{}/ui/pools/local", s.base)).await;
    assert!(b.all("form[action$='/pause']").await.is_empty());
    assert_loopback_only(&b, &proxy, &s.base).await;
    // The control: a request for another host does reach the trap (and no further). A page's
    // own request never gets that far (the CSP refuses it first), so navigate there.
    b.goto("http://blocked.example/pixel.png").await;
    let start = std::time::Instant::now();
    while !proxy
        .attempts()
        .iter()
        .any(|a| a.contains("blocked.example"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the trap missed a page's request: {:?}",
            proxy.attempts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.quit().await;
}
