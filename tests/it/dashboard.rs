//! The dashboard in a real browser: Debian's chromium, headless, driven over the WebDriver
//! protocol by chromedriver (plain HTTP + JSON, spoken here with reqwest). A wrong token is
//! refused; with the right one the page shows a running campaign's progress moving (pushed by
//! the server's event stream, with no polling request), and its stop button stops it (STOPPED
//! on the page and in the database); when the server goes away and comes back the page
//! reconnects by itself and shows a campaign created meanwhile, without a reload.

use std::process::{Child, Command, Stdio};

use munja::tools::sim::SimConfig;
use serde_json::{Value, json};

use crate::common::{Env, Gw};
use crate::server::{Srv, TOKEN, boot, free_port, status_of, wait_for};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless browser session, both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: `apt-get install chromium chromium-driver` (.ci/run does it)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let http = reqwest::Client::new();
        let status = format!("http://127.0.0.1:{port}/status");
        wait_for("chromedriver to listen", 30, || {
            let (http, status) = (http.clone(), status.clone());
            async move { http.get(&status).send().await.is_ok() }
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"]}
        }}});
        let r: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {r}"))
            .to_string();
        Browser {
            driver,
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r: Value = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("webdriver request")
            .json()
            .await
            .expect("webdriver json");
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// The element matching `css`, waiting for it to appear.
    async fn find(&self, css: &str) -> String {
        let t0 = std::time::Instant::now();
        loop {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(
                t0.elapsed().as_secs() < 20,
                "no element {css} on the page: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            json!({}),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            json!({}),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The visible text of the first element matching `css` ("" when none).
    async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            json!(css)
        );
        self.eval(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Browser {
    /// Ends the session first, so that chromedriver closes the browser (killing chromedriver
    /// alone leaves chromium's processes running), then chromedriver. Plain blocking HTTP: a
    /// drop cannot await.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Some((host, path)) = self
            .base
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
            && let Ok(mut s) = std::net::TcpStream::connect(host)
        {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let request =
                format!("DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            if s.write_all(request.as_bytes()).is_ok() {
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_progress_moving_and_its_stop_button_stops_the_campaign() {
    let gw = Gw::limited(40, 5, 2);
    let env = Env::with(SimConfig::default(), gw, "").await;
    let seg = env.segment_csv("seg.csv", 0, 2000);
    let id = env.campaign(&seg, "hello", &["--no-ad"]).await;
    let srv = boot(&env).await;
    let browser = Browser::start().await;
    browser.goto(&srv.url).await;
    // A wrong token is refused and the page shows nothing else.
    browser.type_into("#token", "not-the-token-at-all").await;
    browser.click("#login-button").await;
    wait_for("the refusal", 20, || async {
        browser.text("#login-error").await.contains("refused")
    })
    .await;
    assert_eq!(
        browser
            .eval("return document.getElementById('app').hidden")
            .await,
        true
    );
    // The right one opens the dashboard; the campaign starts from the API.
    browser.type_into("#token", TOKEN).await;
    browser.click("#login-button").await;
    let row = format!("#campaign-{id}");
    browser.find(&row).await;
    wait_for("the live stream", 20, || async {
        browser.eval("return document.body.dataset.live").await == "stream"
    })
    .await;
    let polls_before = browser.eval(POLLS).await.as_i64().unwrap_or(-1);
    let (code, body) = srv
        .post(&format!("/v1/campaigns/{id}/run"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let done = format!(
        "const e = document.querySelector('{row} .progress'); return e ? Number(e.dataset.done) : -1;"
    );
    wait_for("progress on the page", 30, || async {
        browser.eval(&done).await.as_i64().unwrap_or(-1) > 0
    })
    .await;
    let first = browser.eval(&done).await.as_i64().unwrap_or(-1);
    wait_for("the progress to move", 30, || async {
        browser.eval(&done).await.as_i64().unwrap_or(-1) > first
    })
    .await;
    assert_eq!(browser.text(&format!("{row} .status")).await, "STARTED");
    // Seconds of progress came without the page asking: no request to the list route, one
    // stream since the page opened.
    assert_eq!(
        browser.eval(POLLS).await.as_i64().unwrap_or(-1),
        polls_before,
        "no polling request while the campaign ran"
    );
    assert_eq!(
        browser.eval("return document.body.dataset.streams").await,
        "1"
    );
    // Open it and press stop.
    browser.click(&row).await;
    browser.find("#btn-stop").await;
    browser.click("#btn-stop").await;
    wait_for("STOPPED on the page", 30, || async {
        browser.text("#detail-status").await == "STOPPED"
    })
    .await;
    assert_eq!(status_of(&env, &id).await, "STOPPED");
    assert!(env.sim.stats().accepted < 2000, "stopped before the end");

    // The server goes away: the stream ends and the page says so; a server back on the same
    // address gets a new stream, and a campaign created meanwhile appears without a reload.
    let addr = srv.running.addr;
    srv.running.shutdown().await.expect("shutdown");
    wait_for("the page to notice", 20, || async {
        browser.eval("return document.body.dataset.live").await == "reconnecting"
    })
    .await;
    let srv = boot_at(&env, addr).await;
    let (code, body) = srv
        .post(
            "/v1/campaigns",
            json!({"name": "second", "segment": "seg", "template": "hello", "no_ad": true}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let second = format!("#campaign-{}", body["id"]);
    wait_for("the new campaign on the page", 30, || async {
        browser
            .eval(&format!("return !!document.querySelector('{second}')"))
            .await
            == true
    })
    .await;
    assert_eq!(
        browser.eval("return document.body.dataset.live").await,
        "stream"
    );
    assert_eq!(
        browser.eval(POLLS).await.as_i64().unwrap_or(-1),
        polls_before,
        "reconnected by stream, not by polling"
    );
    drop(browser);
    srv.running.shutdown().await.expect("shutdown");
}

/// Requests the page made to the list route (the old per-second poll), by the browser's own
/// resource timing.
const POLLS: &str = "return performance.getEntriesByType('resource')\
    .filter((e) => new URL(e.name).pathname === '/v1/campaigns').length;";

/// `munja serve` in this process again, on `addr` (a server that was shut down).
async fn boot_at(env: &Env, addr: std::net::SocketAddr) -> Srv {
    use std::sync::Arc;
    let cfg = munja::config::Config::load(&env.path("munja.toml")).expect("config");
    let store = munja::store::open_existing(&cfg.database_url)
        .await
        .expect("open store");
    let state = munja::server::AppState::new(store, Arc::new(cfg), TOKEN.into());
    let t0 = std::time::Instant::now();
    let running = loop {
        match munja::server::start(state.clone(), addr).await {
            Ok(r) => break r,
            Err(e) if t0.elapsed().as_secs() < 20 => {
                eprintln!("binding {addr} again: {e:#}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("server back on {addr}: {e:#}"),
        }
    };
    Srv {
        running,
        url: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}
