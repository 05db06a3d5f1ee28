//! PostgreSQL from the command line: every command against a fresh PostgreSQL database named by
//! `MUNJA_DATABASE_URL` (whatever `MUNJA_TEST_BACKEND` says), and the error for a server that
//! cannot be reached. Needs the server of `MUNJA_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); fails, never skips, without it.

use crate::common::*;
use munja::store::postgres::scratch::{ScratchDb, test_server_url};
use munja::tools::sim::SimConfig;

/// Runs munja with `MUNJA_DATABASE_URL` set to `url`.
async fn run_on(env: &Env, url: &str, args: &[&str]) -> Out {
    let mut c = env.cmd(args);
    c.env("MUNJA_DATABASE_URL", url);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("join")
        .expect("spawn munja");
    Out::from(out)
}

async fn ok_on(env: &Env, url: &str, args: &[&str]) -> Out {
    let o = run_on(env, url, args).await;
    assert_eq!(o.code, 0, "munja {args:?} failed:\n{}", o.all());
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_on_postgres() {
    let db = ScratchDb::create(&test_server_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = db.url.as_str();
    let env = Env::new(SimConfig::default()).await;
    let seg = env.segment_csv("seg.csv", 0, 10);
    let opt = env.write(
        "optouts.csv",
        &format!("phone\n{}\n{}\n", number(3), number(7)),
    );
    // Before init, a command other than init says to run it and creates nothing.
    let o = run_on(&env, url, &["campaign", "list"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("has no munja tables"), "{}", o.all());
    assert!(o.stderr.contains("run `munja init` first"), "{}", o.all());
    assert_eq!(
        pg_count(
            url,
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .await,
        0
    );
    let o = ok_on(&env, url, &["init"]).await;
    assert!(o.stderr.contains("database ready"), "{}", o.all());
    ok_on(&env, url, &["init"]).await; // harmless twice
    let o = ok_on(&env, url, &["optout", "import", opt.to_str().unwrap()]).await;
    assert!(o.stdout.contains("imported 2"), "{}", o.all());
    ok_on(&env, url, &["optout", "add", &number(9)]).await;
    ok_on(&env, url, &["optout", "remove", &number(9)]).await;
    ok_on(
        &env,
        url,
        &["segment", "import", "seg", seg.to_str().unwrap()],
    )
    .await;
    let o = ok_on(&env, url, &["segment", "list", "--json"]).await;
    assert!(o.stdout.contains("\"member_count\": 10"), "{}", o.all());
    let args = [
        "campaign",
        "create",
        "--name",
        "pg",
        "--segment",
        "seg",
        "--template",
        "hello",
        "--no-ad",
    ];
    let id = ok_on(&env, url, &args).await.stdout.trim().to_string();
    let o = run_on(&env, url, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stderr.contains("COMPLETED"), "{}", o.all());
    assert_eq!(env.sim.stats().accepted, 8);

    let st = ok_on(&env, url, &["campaign", "status", &id, "--json"]).await;
    let st: serde_json::Value = serde_json::from_str(&st.stdout).expect("status json");
    assert_eq!(st["status"], "COMPLETED");
    assert_eq!((n(&st, "sent"), n(&st, "suppressed")), (8, 2));
    let o = ok_on(&env, url, &["campaign", "list"]).await;
    assert!(o.stdout.contains("COMPLETED"), "{}", o.all());
    let audit = ok_on(&env, url, &["audit", "--campaign", &id, "--format", "json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).expect("audit json");
    assert_eq!(rows.len(), 10);
    let o = ok_on(
        &env,
        url,
        &[
            "audit",
            "--campaign",
            &id,
            "--phone",
            &number(3),
            "--format",
            "json",
        ],
    )
    .await;
    assert!(o.stdout.contains("suppressed"), "{}", o.all());
    // The rows are in PostgreSQL, not in a SQLite file next to the config.
    assert_eq!(pg_count(url, "SELECT COUNT(*) FROM messages").await, 10);
    assert!(!env.path("munja.db").exists());

    let o = ok_on(&env, url, &["purge", "--before", "2999-01-01", "--json"]).await;
    let r: serde_json::Value = serde_json::from_str(&o.stdout).expect("purge json");
    assert_eq!(n(&r, "attempts_deleted"), 8);
    assert_eq!(n(&r, "executions_deleted"), 1);
    assert_eq!(pg_count(url, "SELECT COUNT(*) FROM attempts").await, 0);

    // Stop and cancel of an idle campaign, then delete.
    let id2 = ok_on(&env, url, &args).await.stdout.trim().to_string();
    let o = run_on(&env, url, &["campaign", "stop", &id2]).await;
    assert!(
        o.stderr.contains("is not running (status CREATED)"),
        "{}",
        o.all()
    );
    ok_on(&env, url, &["campaign", "cancel", &id2]).await;
    let st = ok_on(&env, url, &["campaign", "status", &id2, "--json"]).await;
    assert!(st.stdout.contains("CANCELLED"), "{}", st.all());
    ok_on(&env, url, &["campaign", "delete", &id]).await;
    ok_on(&env, url, &["campaign", "delete", &id2]).await;
    assert_eq!(pg_count(url, "SELECT COUNT(*) FROM campaigns").await, 0);
    assert_eq!(pg_count(url, "SELECT COUNT(*) FROM messages").await, 0);
    db.drop_now().await.expect("drop the test database");
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_the_password() {
    let env = Env::new(SimConfig::default()).await;
    // Port 1 on loopback: nothing listens there.
    let o = run_on(&env, "postgres://munja:s3cret@127.0.0.1:1/jobs", &["init"]).await;
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr
            .contains("cannot connect to PostgreSQL at 127.0.0.1:1/jobs"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("MUNJA_DATABASE_URL"), "{}", o.all());
    assert!(!o.all().contains("s3cret"), "{}", o.all());
}
