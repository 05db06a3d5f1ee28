//! `munja segment delete NAME` and `DELETE /v1/segments/{name}` on the real binary and an
//! in-process server: CSV and SQL segments, refused (naming the campaigns, deleting nothing)
//! while an unfinished campaign uses the segment, and what stays for finished campaigns.

use crate::common::{Env, Out};
use crate::server::{boot, send};
use munja::tools::sim::SimConfig;

/// Runs munja with `CRM_URL` set to the SQLite source `url`.
async fn with_source(env: &Env, url: &str, args: &[&str]) -> Out {
    let mut c = env.cmd(args);
    c.env("CRM_URL", url);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("join")
        .expect("spawn munja");
    Out::from(out)
}

/// Names of the segments `segment list --json` shows.
async fn listed(env: &Env) -> Vec<String> {
    let o = env.ok(&["segment", "list", "--json"]).await;
    let v: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).expect("json");
    v.iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_segment_is_deleted_only_once_its_campaigns_are_finished() {
    let env = Env::new(SimConfig::default()).await;
    let seg = env.segment_csv("seg.csv", 0, 3);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.run(&["segment", "delete", "seg"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains(&format!(
            "segment \"seg\" is used by unfinished campaign {id} (t, CREATED): nothing was deleted"
        )),
        "{}",
        o.all()
    );
    assert_eq!(listed(&env).await, ["seg"]);

    env.ok(&["campaign", "cancel", &id]).await;
    let o = env.ok(&["segment", "delete", "seg"]).await;
    assert!(
        o.stderr.contains("segment seg deleted: CSV, 3 recipients"),
        "{}",
        o.all()
    );
    assert!(listed(&env).await.is_empty());
    let o = env
        .run(&["template", "preview", "hello", "--segment", "seg"])
        .await;
    assert_eq!(o.code, 1, "{}", o.all());
    let o = env.run(&["segment", "delete", "seg"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("no segment named \"seg\""), "{}", o.all());
    // The finished campaign keeps its records.
    assert_eq!(env.status(&id).await["status"], "CANCELLED");
    assert_eq!(env.audit_json(&id).await.len(), 0, "never snapshotted");
    // And the name can be imported again.
    env.ok(&["segment", "import", "seg", seg.to_str().expect("utf-8")])
        .await;
    assert_eq!(listed(&env).await, ["seg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_segment_is_deleted_and_its_completed_campaign_keeps_its_query() {
    let env = Env::new(SimConfig::default()).await;
    let cfg = std::fs::read_to_string(env.path("munja.toml")).expect("config");
    env.write(
        "munja.toml",
        &format!("{cfg}\n[sources.crm]\nurl_env = \"CRM_URL\"\n"),
    );
    env.ok(&["init"]).await;
    let url = format!("sqlite://{}", env.path("crm.db").display());
    crate::common::sqlite_crm(
        &url,
        "CREATE TABLE customers (phone TEXT, name TEXT);
         INSERT INTO customers VALUES ('010-2000-0001', '한지민'), ('010-2000-0002', '오세훈');",
    )
    .await;
    let q = "SELECT phone, name FROM customers";
    let define = ["segment", "define", "lite", "--source", "crm", "--query", q];
    let o = with_source(&env, &url, &define).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let create = [
        "campaign",
        "create",
        "--name",
        "lite-1",
        "--segment",
        "lite",
        "--template",
        "hello",
    ];
    let o = with_source(&env, &url, &create).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let id = o.stdout.trim().to_string();

    let o = env.run(&["segment", "delete", "lite"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr
            .contains(&format!("unfinished campaign {id} (lite-1, CREATED)")),
        "{}",
        o.all()
    );
    let o = with_source(&env, &url, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());

    let o = env.ok(&["segment", "delete", "lite"]).await;
    assert!(
        o.stderr.contains("segment lite deleted: SQL, 1 versions"),
        "{}",
        o.all()
    );
    assert!(listed(&env).await.is_empty());
    let o = env.run(&["segment", "show", "lite"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    let o = with_source(&env, &url, &create).await;
    assert_eq!(
        o.code,
        1,
        "a deleted segment makes no campaign: {}",
        o.all()
    );
    // The completed campaign still says which query it ran.
    let status = env.status(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert!(status.to_string().contains(q), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_deletes_a_segment_or_names_the_campaigns_that_use_it() {
    let env = Env::new(SimConfig::default()).await;
    let seg = env.segment_csv("seg.csv", 0, 2);
    let id = env.campaign(&seg, "hello", &[]).await;
    let srv = boot(&env).await;
    let del = |name: &str| srv.req(reqwest::Method::DELETE, &format!("/v1/segments/{name}"));
    let (code, body) = send(del("seg")).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["field"], "name", "{body}");
    let error = body["error"].as_str().expect("error text");
    assert!(
        error.contains(&format!("campaign {id} (t, CREATED)")),
        "{body}"
    );
    assert_eq!(listed(&env).await, ["seg"], "nothing deleted");

    env.ok(&["campaign", "cancel", &id]).await;
    let (code, body) = send(del("seg")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"deleted": "seg", "csv_members": 2, "sql_versions": 0})
    );
    assert!(listed(&env).await.is_empty());
    let (code, body) = send(del("seg")).await;
    assert_eq!(code, 404, "{body}");
    // Without the token: 401, as every /v1 route.
    let r = srv
        .http
        .delete(format!("{}/v1/segments/seg", srv.url))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
}
