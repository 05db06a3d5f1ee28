//! `munja serve`: the admin API (auth, every route's happy path and its bad input), metrics,
//! SIGTERM and SIGKILL of a real server process. In-process servers boot on port 0 against the
//! test's own database; process servers run the real binary.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use munja::config::Config;
use munja::server::{self, AppState, Running};
use munja::store;
use munja::tools::sim::SimConfig;
use serde_json::{Value, json};

use crate::common::{Env, Gw, Setup, create_args, n, number, wait_until};

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// An in-process server on the test's database and a client for it.
pub struct Srv {
    pub running: Running,
    pub url: String,
    pub http: reqwest::Client,
}

/// Boots `munja serve` in this process on port 0.
pub async fn boot(env: &Env) -> Srv {
    let cfg = Config::load(&env.path("munja.toml")).expect("config");
    let store = store::open_existing(&cfg.database_url)
        .await
        .expect("open store");
    store.migrate().await.expect("migrate");
    let state = AppState::new(store, Arc::new(cfg), TOKEN.into());
    let running = server::start(state, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start server");
    let url = format!("http://{}", running.addr);
    Srv {
        running,
        url,
        http: reqwest::Client::new(),
    }
}

impl Srv {
    /// A request with the admin token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    /// GET with the token; (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path)).await
    }

    /// POST a JSON body with the token; (status, JSON body).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.req(reqwest::Method::POST, path).json(&body)).await
    }
}

pub async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls `cond` until it holds, failing after `secs` ([`wait_until`] in seconds).
pub async fn wait_for<F, Fut>(what: &str, secs: u64, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until(what, Duration::from_secs(secs), cond).await;
}

/// The campaign's status text, read through the CLI.
pub async fn status_of(env: &Env, id: &str) -> String {
    env.status(id).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The real `munja serve` as a process on `port`.
pub fn spawn_serve(env: &Env, port: u16) -> Child {
    env.cmd(&["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("MUNJA_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn munja serve")
}

/// Waits until the server on `port` answers /healthz.
pub async fn wait_healthy(port: u16) {
    let http = reqwest::Client::new();
    wait_for("the server to answer /healthz", 30, || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
}

/// `munja init` and segment `seg` of `size` recipients.
pub async fn import_segment(env: &Env, size: u64) {
    let seg = env.segment_csv("seg.csv", 0, size);
    env.ok(&["init"]).await;
    env.import("seg", &seg).await;
}

/// A gateway at 100 messages a second: a campaign of 400 takes four seconds.
pub fn slow_env_gw() -> Gw {
    Gw::limited(100, 10, 4)
}

/// A segment of `size` and an informational campaign on it, not started; returns its id.
pub async fn campaign(env: &Env, size: u64) -> String {
    let seg = env.segment_csv("seg.csv", 0, size);
    env.campaign(&seg, "hello", &["--no-ad"]).await
}

/// A new environment with an informational campaign of `size`, not started, and an in-process
/// server on it.
async fn served_campaign(setup: Setup, size: u64) -> (Env, String, Srv) {
    let env = setup.env().await;
    let id = campaign(&env, size).await;
    let srv = boot(&env).await;
    (env, id, srv)
}

/// A campaign of 400 on the slow gateway ([`slow_env_gw`]), started through the API: the
/// gateway has accepted its first 20 messages.
async fn running_through_the_api() -> (Env, String, Srv) {
    let (env, id, srv) = served_campaign(Setup::new(0).gw(slow_env_gw()), 400).await;
    let (code, body) = srv
        .post(&format!("/v1/campaigns/{id}/run"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    env.until_accepted(20).await;
    (env, id, srv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_refuses_to_start_without_a_token() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    let o = env.run(&["serve", "--listen", "127.0.0.1:0"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    o.assert_stderr_has("MUNJA_TOKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_v1_route_needs_the_token_and_health_does_not() {
    let (env, id, srv) = served_campaign(Setup::new(0), 3).await;
    let routes = [
        ("GET", "/v1/campaigns".to_string()),
        ("POST", "/v1/campaigns".to_string()),
        ("GET", format!("/v1/campaigns/{id}")),
        ("POST", format!("/v1/campaigns/{id}/run")),
        ("POST", format!("/v1/campaigns/{id}/stop")),
        ("POST", format!("/v1/campaigns/{id}/cancel")),
        ("POST", format!("/v1/campaigns/{id}/schedule")),
        ("GET", format!("/v1/campaigns/{id}/messages")),
        ("POST", "/v1/optouts".to_string()),
        ("GET", "/v1/optouts/01012345678".to_string()),
        ("DELETE", "/v1/optouts/01012345678".to_string()),
        ("GET", "/v1/schedules".to_string()),
    ];
    for (method, path) in &routes {
        let m: reqwest::Method = method.parse().expect("method");
        let url = format!("{}{path}", srv.url);
        let (code, body) = send(srv.http.request(m.clone(), &url).json(&json!({}))).await;
        assert_eq!(code, 401, "{method} {path} without a token: {body}");
        assert_eq!(body["field"], "authorization", "{body}");
        let (code, _) = send(
            srv.http
                .request(m, &url)
                .bearer_auth("wrong-token-0123456789"),
        )
        .await;
        assert_eq!(code, 401, "{method} {path} with a wrong token");
    }
    // Nothing changed: the campaign is still CREATED, never run or cancelled.
    assert_eq!(status_of(&env, &id).await, "CREATED");
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        let r = srv
            .http
            .get(format!("{}{path}", srv.url))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let (code, body) = srv.get("/v1/campaigns").await;
    assert_eq!(code, 200, "{body}");
    srv.running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_creates_schedules_runs_and_audits_a_campaign() {
    let env = Setup::new(30).segment().await;
    let srv = boot(&env).await;
    // Create, scheduled far ahead: SCHEDULED, and not started.
    let (code, body) = srv
        .post(
            "/v1/campaigns",
            json!({"name": "api", "segment": "seg", "template": "hello", "no_ad": true,
                   "at": "2099-01-01 10:00"}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "SCHEDULED");
    assert_eq!(body["plan"]["recipients"], 30);
    let id = body["id"].as_i64().expect("id");
    let (code, body) = srv.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["scheduled_at"], "2099-01-01T01:00:00.000Z");
    // Due now: the server starts it within a second or so and completes it.
    let (code, body) = srv
        .post(
            &format!("/v1/campaigns/{id}/schedule"),
            json!({"now": true}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let sid = id.to_string();
    wait_for("the campaign to complete", 30, || async {
        status_of(&env, &sid).await == "COMPLETED"
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 30);
    // The audit: paged with a cursor, masked unless full=true, filtered by phone and status.
    let (code, page1) = srv
        .get(&format!("/v1/campaigns/{id}/messages?limit=20"))
        .await;
    assert_eq!(code, 200, "{page1}");
    let rows = page1["messages"].as_array().expect("rows");
    assert_eq!(rows.len(), 20);
    assert!(
        rows[0]["phone"].as_str().expect("phone").contains('*'),
        "{}",
        rows[0]
    );
    let cursor = page1["next_cursor"].as_str().expect("cursor");
    let (_, page2) = srv
        .get(&format!(
            "/v1/campaigns/{id}/messages?limit=20&cursor={cursor}"
        ))
        .await;
    assert_eq!(page2["messages"].as_array().expect("rows").len(), 10);
    assert!(page2["next_cursor"].is_null());
    let phone = number(3);
    let (_, one) = srv
        .get(&format!(
            "/v1/campaigns/{id}/messages?phone={phone}&full=true&status=sent"
        ))
        .await;
    let rows = one["messages"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{one}");
    assert_eq!(rows[0]["phone"], phone.as_str());
    // Show: counts, executions.
    let (_, body) = srv.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(body["counts"]["sent"], 30);
    assert_eq!(body["executions"].as_array().expect("execs").len(), 1);
    // Finished: run, stop and cancel are refused with the reason.
    let (code, body) = srv
        .post(&format!("/v1/campaigns/{id}/run"), json!({}))
        .await;
    assert_eq!(code, 409, "{body}");
    let (code, _) = srv
        .post(&format!("/v1/campaigns/{id}/stop"), json!({}))
        .await;
    assert_eq!(code, 409);
    let (code, _) = srv
        .post(&format!("/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 409);
    // Opt-outs.
    let (code, body) = srv
        .post("/v1/optouts", json!({"phone": "010-9999-0001"}))
        .await;
    assert_eq!(code, 201, "{body}");
    assert!(
        body["phone"].as_str().expect("masked").contains('*'),
        "{body}"
    );
    let (code, _) = srv
        .post("/v1/optouts", json!({"phone": "01099990001"}))
        .await;
    assert_eq!(code, 200, "already opted out");
    let (_, body) = srv.get("/v1/optouts/01099990001").await;
    assert_eq!(body["opted_out"], true);
    let (code, _) = send(srv.req(reqwest::Method::DELETE, "/v1/optouts/01099990001")).await;
    assert_eq!(code, 200);
    let (_, body) = srv.get("/v1/optouts/01099990001").await;
    assert_eq!(body["opted_out"], false);
    // Schedules and the list.
    env.schedule_hello("weekly", "0 10 * * MON").await;
    let (_, body) = srv.get("/v1/schedules").await;
    assert_eq!(body["schedules"][0]["name"], "weekly");
    assert_eq!(
        body["schedules"][0]["next_runs"]
            .as_array()
            .expect("next")
            .len(),
        3
    );
    let (_, body) = srv.get("/v1/campaigns").await;
    assert_eq!(body["campaigns"].as_array().expect("list").len(), 1);
    srv.running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_4xx_naming_the_field_and_changes_nothing() {
    let (env, id, srv) = served_campaign(Setup::new(0), 3).await;
    let cases = [
        (json!({"segment": "seg", "template": "hello"}), "name"),
        (
            json!({"name": "x", "segment": "nope", "template": "hello"}),
            "segment",
        ),
        (
            json!({"name": "x", "segment": "seg", "template": "nope"}),
            "template",
        ),
        (
            json!({"name": "x", "segment": "seg", "template": "hello", "gateway": "nope"}),
            "gateway",
        ),
        (
            json!({"name": "x", "segment": "seg", "template": "hello", "at": "tomorrow"}),
            "at",
        ),
        (
            json!({"name": "x", "segment": "seg", "template": "hello", "at": "2001-01-01 10:00"}),
            "at",
        ),
        (
            json!({"name": "", "segment": "seg", "template": "hello"}),
            "name",
        ),
        (
            json!({"name": "x", "segment": "seg", "template": "hello", "colour": 1}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (code, got) = srv.post("/v1/campaigns", body.clone()).await;
        assert!((400..500).contains(&code), "{body} -> {code} {got}");
        let named = got["field"].as_str().unwrap_or_default();
        assert!(
            named == field,
            "{body}: field {named:?}, expected {field}: {got}"
        );
        assert!(
            !got["error"].as_str().unwrap_or_default().is_empty(),
            "{got}"
        );
    }
    let bad_queries = [
        ("status=bogus", "status"),
        ("phone=12", "phone"),
        ("cursor=abc", "cursor"),
        ("limit=0", "limit"),
    ];
    for (q, field) in bad_queries {
        let (code, got) = srv.get(&format!("/v1/campaigns/{id}/messages?{q}")).await;
        assert_eq!(code, 400, "{q}: {got}");
        assert_eq!(got["field"], field, "{q}: {got}");
    }
    let (code, got) = srv
        .post("/v1/optouts", json!({"phone": "not a phone"}))
        .await;
    assert_eq!((code, got["field"].as_str()), (400, Some("phone")), "{got}");
    let (code, got) = srv
        .post("/v1/optouts", json!({"number": "01012345678"}))
        .await;
    assert_eq!(code, 400, "{got}");
    let (code, got) = srv
        .post(
            &format!("/v1/campaigns/{id}/schedule"),
            json!({"at": "someday"}),
        )
        .await;
    assert_eq!((code, got["field"].as_str()), (400, Some("at")), "{got}");
    let (code, _) = srv.get("/v1/campaigns/999").await;
    assert_eq!(code, 404);
    let (code, _) = srv.post("/v1/campaigns/999/run", json!({})).await;
    assert_eq!(code, 404);
    // Nothing stored changed.
    let (_, list) = srv.get("/v1/campaigns").await;
    assert_eq!(list["campaigns"].as_array().expect("list").len(), 1);
    assert_eq!(status_of(&env, &id).await, "CREATED");
    assert!(env.status(&id).await["scheduled_at"].is_null());
    let o = env.run(&["optout", "check", "01012345678"]).await;
    assert_eq!(o.code, 1, "not opted out: {}", o.all());
    srv.running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_optout_reaches_a_running_campaign_and_stop_cancel_work() {
    let (env, id, srv) = running_through_the_api().await;
    // The last recipient opts out through the 080 provider's webhook mid-run.
    let last = number(399);
    let (code, _) = srv.post("/v1/optouts", json!({"phone": last})).await;
    assert_eq!(code, 201);
    let (code, body) = srv
        .post(&format!("/v1/campaigns/{id}/stop"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    wait_for("STOPPED", 30, || async {
        status_of(&env, &id).await == "STOPPED"
    })
    .await;
    // Resume through the API, and it completes without the opted-out number.
    let (code, _) = srv
        .post(&format!("/v1/campaigns/{id}/run"), json!({}))
        .await;
    assert_eq!(code, 202);
    wait_for("COMPLETED", 60, || async {
        status_of(&env, &id).await == "COMPLETED"
    })
    .await;
    let st = env.status(&id).await;
    assert_eq!(n(&st, "suppressed"), 1, "{st}");
    assert_eq!(n(&st, "sent"), 399);
    let (_, one) = srv
        .get(&format!("/v1/campaigns/{id}/messages?phone={last}"))
        .await;
    assert_eq!(one["messages"][0]["status"], "suppressed", "{one}");
    srv.running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_on_one_database_run_each_campaign_once() {
    let env = Setup::new(50).segment().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let name = format!("c{i}");
        let o = env
            .ok(&create_args(&name, "seg", "hello", &["--no-ad"]))
            .await;
        ids.push(o.stdout.trim().to_string());
    }
    let servers = [boot(&env).await, boot(&env).await, boot(&env).await];
    for id in &ids {
        env.ok(&["campaign", "schedule", id, "--now"]).await;
    }
    for id in &ids {
        wait_for("every campaign to complete", 60, || async {
            status_of(&env, id).await == "COMPLETED"
        })
        .await;
    }
    for id in &ids {
        let st = env.status(id).await;
        let execs = st["executions"].as_array().expect("executions");
        assert_eq!(execs.len(), 1, "campaign {id} launched once: {st}");
    }
    let sim = env.sim.stats();
    assert_eq!(sim.accepted, 300);
    assert_eq!(sim.numbers_accepted_twice, 0);
    assert_eq!(sim.duplicate_replays, 0);
    for s in servers {
        s.running.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_through_the_api_ends_a_running_campaign_and_sends_nothing_more() {
    let (env, id, srv) = running_through_the_api().await;
    let (code, body) = srv
        .post(&format!("/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body["cancelled"].as_u64().expect("cancelled") > 0, "{body}");
    wait_for("CANCELLED", 30, || async {
        status_of(&env, &id).await == "CANCELLED"
    })
    .await;
    let sent = env.sim.stats().accepted;
    assert!(sent < 400);
    let (code, _) = srv
        .post(&format!("/v1/campaigns/{id}/run"), json!({}))
        .await;
    assert_eq!(code, 409, "a cancelled campaign does not run again");
    assert!(
        env.status(&id).await["lease"].is_null(),
        "the run has ended"
    );
    assert_eq!(
        env.sim.stats().accepted,
        sent,
        "nothing sent after the cancel"
    );
    srv.running.shutdown().await.expect("shutdown");
}
