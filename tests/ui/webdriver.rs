//! A small WebDriver (W3C) client over `reqwest` for headless Chromium through Debian's
//! `chromedriver`, and a recording proxy that the browser must never use: every request to a
//! non-loopback host goes to it (Chromium sends only loopback traffic direct), it answers 403
//! and remembers the target, and the tests fail if it saw anything.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts the browser and its driver.
pub fn browser_paths() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(|n| n.to_string())
            .find(|n| std::path::Path::new(n).exists())
    };
    let chromium = find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"])?;
    let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?;
    Some((chromium, driver))
}

/// Returns the browser paths, or `None` after saying why the browser tests are skipped; under
/// `CI=true` a missing browser fails the test instead.
pub fn browser_or_skip() -> Option<(String, String)> {
    match browser_paths() {
        Some(p) => Some(p),
        None if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "CI=true and no headless Chromium: install Debian's `chromium` and `chromium-driver` \
             (scripts/test does when it runs as root)"
        ),
        None => {
            eprintln!(
                "SKIPPED: no chromium/chromedriver (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// The proxy every non-loopback request of the browser lands on.
pub struct TrapProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// What the browser tried to reach.
    pub attempts: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TrapProxy {
    /// Listens on a free loopback port.
    pub async fn start() -> TrapProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let attempts = Arc::new(Mutex::new(vec![]));
        let seen = attempts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let line = head.lines().next().unwrap_or_default().to_string();
                    seen.lock().unwrap().push(line);
                    let _ = sock
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        TrapProxy {
            addr,
            attempts,
            task,
        }
    }

    /// Every request line the browser sent to a non-loopback host.
    pub fn attempts(&self) -> Vec<String> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Drop for TrapProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A headless Chromium session driven through chromedriver.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a 1280×800 headless Chromium whose non-loopback traffic goes to
    /// `proxy` (and whose resolver knows no other host).
    pub async fn start(chromium: &str, chromedriver: &str, proxy: &TrapProxy) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let ready = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                ready.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--proxy-server=http://{}", proxy.addr),
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-default-apps".into(),
            "--disable-extensions".into(),
            "--disable-domain-reliability".into(),
            "--disable-client-side-phishing-detection".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--metrics-recording-only".into(),
            "--no-pings".into(),
            "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater,NetworkTimeServiceQuerying,PreconnectToSearch,DialMediaRouteProvider".into(),
            // The browser's own update and account services, which no flag turns off in this
            // Chromium, are pointed at a closed loopback port (discard, 9): they never leave the
            // machine, and the trap stays silent unless a page asks for another host.
            "--component-updater=url-source=http://127.0.0.1:9/".into(),
            "--gaia-url=http://127.0.0.1:9/".into(),
        ];
        // No preconnects, suggestions, sign-in, Safe Browsing lookups or search engine elsewhere.
        let prefs = json!({
            "net": {"network_prediction_options": 2},
            "search": {"suggest_enabled": false},
            "signin": {"allowed": false},
            "safebrowsing": {"enabled": false},
            // Debian's default search engine is preconnected to at start; make it loopback.
            "default_search_provider_data": {"template_url_data": {
                "keyword": "none", "short_name": "none",
                "url": "http://127.0.0.1:9/?q={searchTerms}"
            }},
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args, "prefs": prefs}
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    /// Opens a URL.
    pub async fn goto(&self, url: &str) {
        let v = self
            .cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
        assert!(v.get("error").is_none(), "goto {url}: {v}");
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Resizes the window (CSS pixels).
    pub async fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Resizes the window so that the page's viewport is `width`×`height` CSS pixels.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        self.set_size(width, height).await;
        let inner = self
            .js("return [window.innerWidth, window.innerHeight];")
            .await;
        let (iw, ih) = (
            inner[0].as_u64().unwrap_or(0),
            inner[1].as_u64().unwrap_or(0),
        );
        let (dw, dh) = (
            (width as u64).saturating_sub(iw),
            (height as u64).saturating_sub(ih),
        );
        if dw > 0 || dh > 0 {
            self.set_size(width + dw as u32, height + dh as u32).await;
        }
    }

    /// Runs a script; its return value.
    pub async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs an async script (its last argument is the callback).
    pub async fn js_async(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The elements matching a CSS selector.
    pub async fn all(&self, css: &str) -> Vec<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        match v.as_array() {
            Some(a) => a
                .iter()
                .filter_map(|e| {
                    e[ELEMENT]
                        .as_str()
                        .or_else(|| e["ELEMENT"].as_str())
                        .map(str::to_string)
                        .or_else(|| {
                            panic!(
                                "find `{css}`: an element reference of a shape unknown here: {e}"
                            )
                        })
                })
                .collect(),
            None => panic!("find `{css}`: {v}"),
        }
    }

    /// The first element matching a CSS selector (panics when none).
    pub async fn find(&self, css: &str) -> String {
        self.all(css)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element `{css}`"))
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        let v = self
            .cmd(
                reqwest::Method::POST,
                &format!("/element/{e}/click"),
                Some(json!({})),
            )
            .await;
        assert!(v.get("error").is_none(), "click {css}: {v}");
    }

    /// Clears an input and types into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        let v = self
            .cmd(
                reqwest::Method::POST,
                &format!("/element/{e}/value"),
                Some(json!({"text": text})),
            )
            .await;
        assert!(v.get("error").is_none(), "fill {css}: {v}");
    }

    /// The visible text of the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        let Some(e) = self.all(css).await.into_iter().next() else {
            return String::new();
        };
        self.cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the text of `css` contains `want` (the page is never reloaded).
    pub async fn wait_text(&self, css: &str, want: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let t = self.text(css).await;
            if t.contains(want) {
                return t;
            }
            assert!(
                start.elapsed() < limit,
                "`{css}` never showed `{want}` within {limit:?}; it shows `{t}`"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Every resource URL the page loaded (Resource Timing), plus its own URL.
    pub async fn loaded_urls(&self) -> Vec<String> {
        let v = self
            .js("return [location.href].concat(performance.getEntriesByType('resource').map(function(e){return e.name;}));")
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends the session.
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}
