//! SQL segments against the real servers: a `customers` table on MariaDB (127.0.0.1:3306, root,
//! a fresh database per test, dropped after it) and on PostgreSQL (a fresh database on the
//! server of `MUNJA_TEST_PG_URL`), with numbers in mixed forms, invalid rows, duplicates,
//! consent flags and dates. Fails, never skips, when a server is down.

use std::collections::BTreeSet;

use crate::common::*;
use munja::store::postgres::scratch::{ScratchDb, test_server_url};
use munja::store::source::fixture::{self, MariaScratch, test_mariadb_url};
use munja::tools::sim::SimConfig;

/// (phone as written, name, points, night_consent, ad consent days ago (None: NULL), signed
/// up days ago (negative: in the future, so `:as_of` excludes it)).
type Customer = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    Option<i64>,
    i64,
);

const CUSTOMERS: &[Customer] = &[
    ("010-2000-0001", "김민준", "1500.00", true, Some(30), 100),
    ("+82 10 2000 0002", "이서연", "0.50", false, Some(400), 50),
    ("01020000003", "박지호", "20.00", false, Some(900), 40),
    ("(010) 2000.0004", "최수아", "7.00", true, None, 30),
    ("02-123-4567", "정우진", "1.00", false, Some(10), 20),
    ("1234", "강하은", "1.00", false, Some(10), 20),
    ("010 2000 0001", "김민준", "3.00", false, Some(10), 20),
    ("010-2000-0008", "윤도윤", "3.00", false, Some(10), 20),
    ("010-2000-0009", "장예린", "9.00", false, Some(10), -5),
    ("010-2000-0010", "임지후", "10.00", false, Some(20), 10),
];

/// Numbers that must be sent: valid, not opted out (…0008), consent fresh (not …0003 expired,
/// not …0004 missing), signed up before the run (not …0009), duplicates once.
const EXPECTED_SENT: &[&str] = &["01020000001", "01020000002", "01020000010"];
const OPTED_OUT: &str = "010-2000-0008";

const QUERY: &str = "SELECT mobile, name, points, night_consent, ad_consent_at \
                     FROM customers WHERE signup_at < :as_of ORDER BY id";

/// A source database with the customers table, and the URL munja gets (with a password).
struct Source {
    url: String,
    password: String,
    admin_url: String,
    _pg: Option<ScratchDb>,
    _maria: Option<MariaScratch>,
}

fn days_ago(d: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(d))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn insert_rows() -> String {
    CUSTOMERS
        .iter()
        .enumerate()
        .map(|(i, (phone, name, points, night, consent, signup))| {
            format!(
                "INSERT INTO customers VALUES ({}, '{phone}', '{name}', {points}, {night}, {}, '{}');",
                i + 1,
                consent.map_or("NULL".to_string(), |d| format!("'{}'", days_ago(d))),
                days_ago(*signup)
            )
        })
        .collect()
}

/// MariaDB: a fresh database, the table, and a user that may only SELECT (with a password).
async fn mariadb() -> Source {
    let db = MariaScratch::create(&test_mariadb_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let user = format!("ro_{}", &db.name[db.name.len() - 8..]);
    let password = format!("Ro-s3cret-{}", &db.name[db.name.len() - 8..]);
    let ddl = format!(
        "CREATE TABLE customers (id INT PRIMARY KEY, mobile VARCHAR(30), name VARCHAR(40), \
           points DECIMAL(10,2), night_consent TINYINT(1), ad_consent_at DATETIME NULL, \
           signup_at DATETIME) CHARACTER SET utf8mb4;
         {rows}
         CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}';
         CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY '{password}';
         GRANT SELECT ON {name}.* TO '{user}'@'%';
         GRANT SELECT ON {name}.* TO '{user}'@'localhost';",
        rows = insert_rows(),
        name = db.name
    );
    fixture::exec(&db.url, &ddl)
        .await
        .expect("create the MariaDB fixture");
    let url = format!("mysql://{user}:{password}@127.0.0.1:3306/{}", db.name);
    Source {
        url,
        password,
        admin_url: db.url.clone(),
        _pg: None,
        _maria: Some(db),
    }
}

/// PostgreSQL: a fresh database with the table (trust auth: the password is not checked, but
/// it is in the URL munja gets, so it must never be printed).
async fn postgres() -> Source {
    let db = ScratchDb::create(&test_server_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ddl = format!(
        "CREATE TABLE customers (id INT PRIMARY KEY, mobile TEXT, name TEXT, points NUMERIC(10,2), \
           night_consent BOOLEAN, ad_consent_at TIMESTAMPTZ, signup_at TIMESTAMPTZ);
         {}",
        insert_rows()
    );
    fixture::exec(&db.url, &ddl)
        .await
        .expect("create the PostgreSQL fixture");
    let password = format!("Pg-s3cret-{:08x}", std::process::id());
    let url = db
        .url
        .replacen("://postgres@", &format!("://postgres:{password}@"), 1);
    assert_ne!(url, db.url, "the test server URL has a user: {}", db.url);
    Source {
        url,
        password,
        admin_url: db.url.clone(),
        _pg: Some(db),
        _maria: None,
    }
}

/// An environment whose munja.toml has `[sources.crm]` (URL from `CRM_URL`), after
/// `munja init`.
async fn env_with_source(timeout_secs: u64) -> Env {
    let env = Env::new(SimConfig::default()).await;
    let cfg = std::fs::read_to_string(env.path("munja.toml")).expect("config");
    env.write(
        "munja.toml",
        &format!(
            "{cfg}\n[sources.crm]\nurl_env = \"CRM_URL\"\nstatement_timeout_secs = {timeout_secs}\n"
        ),
    );
    env.write("templates/points.txt", "{{ name }}님 적립금 {{ points }}점");
    env.ok(&["init"]).await;
    env
}

/// Runs munja with the source's URL in `CRM_URL`.
async fn run_src(env: &Env, url: &str, args: &[&str]) -> Out {
    env.run_with(args, &[("CRM_URL", url)]).await
}

async fn ok_src(env: &Env, src: &Source, args: &[&str]) -> Out {
    let o = run_src(env, &src.url, args).await;
    assert_eq!(o.code, 0, "munja {args:?} failed:\n{}", o.all());
    assert!(
        !o.all().contains(&src.password),
        "password printed:\n{}",
        o.all()
    );
    o
}

/// Defines segment `vip` as [`QUERY`] on source `crm`.
async fn define_vip(env: &Env, src: &Source) {
    let args = [
        "segment", "define", "vip", "--source", "crm", "--query", QUERY,
    ];
    let mut args = args.to_vec();
    args.extend(["--phone-column", "mobile"]);
    ok_src(env, src, &args).await;
}

/// The whole flow on one server: define, preview, template preview, create, run, audit.
async fn end_to_end(src: Source) {
    let env = env_with_source(60).await;
    env.ok(&["optout", "add", OPTED_OUT]).await;
    define_vip(&env, &src).await;

    let o = ok_src(&env, &src, &["segment", "list"]).await;
    assert!(
        o.stdout.contains("vip") && o.stdout.contains("sql"),
        "{}",
        o.all()
    );
    let o = ok_src(&env, &src, &["segment", "show", "vip"]).await;
    o.assert_stdout_has(QUERY);

    let o = ok_src(
        &env,
        &src,
        &["segment", "preview", "vip", "--limit", "5", "--json"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("preview json");
    assert_eq!(v["rows"].as_array().expect("rows").len(), 5, "{}", o.stdout);
    assert!(
        !o.stdout.contains("01020000001") && !o.stdout.contains("2000-0001"),
        "{}",
        o.stdout
    );
    assert_eq!(v["rows"][0]["phone"], "010-****-0001", "{}", o.stdout);
    assert_eq!(v["rows"][0]["vars"]["points"], "1500", "{}", o.stdout);
    let report = &v["report"];
    assert_eq!(report["rows"], 9, "{report}");
    assert_eq!(report["rejected"]["not_mobile"], 1, "{report}");
    assert_eq!(report["suppressed"]["consent_expired"], 1, "{report}");
    assert_eq!(report["suppressed"]["consent_missing"], 1, "{report}");

    let o = ok_src(
        &env,
        &src,
        &[
            "template",
            "preview",
            "points",
            "--segment",
            "vip",
            "--limit",
            "2",
        ],
    )
    .await;
    o.assert_stdout_has("김민준님 적립금 1500점");
    o.assert_stdout_has("이서연님 적립금 0.5점");

    let args = create_args("sql", "vip", "points", &[]);
    let o = ok_src(&env, &src, &args).await;
    o.assert_stderr_has("suppressed consent_expired: 1");
    let id = o.stdout.trim().to_string();
    // A redefinition after create does not change what the campaign reads.
    ok_src(
        &env,
        &src,
        &[
            "segment",
            "define",
            "vip",
            "--source",
            "crm",
            "--query",
            "SELECT mobile FROM customers WHERE 1 = 0",
            "--phone-column",
            "mobile",
        ],
    )
    .await;
    let o = ok_src(
        &env,
        &src,
        &["segment", "show", "vip", "--all-versions", "--json"],
    )
    .await;
    let versions: serde_json::Value = serde_json::from_str(&o.stdout).expect("versions");
    assert_eq!(versions.as_array().expect("list").len(), 2);

    let o = run_src(&env, &src.url, &["campaign", "run", &id, "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        !o.all().contains(&src.password),
        "password printed:\n{}",
        o.all()
    );
    let rows = env.audit_json(&id).await;
    let sent: BTreeSet<String> = rows
        .iter()
        .filter(|r| r["status"] == "sent")
        .map(|r| r["phone"].as_str().expect("phone").to_string())
        .collect();
    let expected: BTreeSet<String> = EXPECTED_SENT.iter().map(|s| s.to_string()).collect();
    assert_eq!(sent, expected);
    let reasons: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| r["status"] == "suppressed")
        .map(|r| {
            (
                r["phone"].as_str().expect("phone").to_string(),
                r["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("01020000003", "consent_expired"),
        ("01020000004", "consent_missing"),
        ("01020000008", "opted_out"),
    ]
    .iter()
    .map(|(p, r)| (p.to_string(), r.to_string()))
    .collect();
    assert_eq!(reasons, want);
    assert_eq!(
        rows.len(),
        6,
        "duplicates merged, rejected rows absent: {rows:?}"
    );
    assert_eq!(env.sim.stats().accepted, 3);
    // The campaign says which query text it read, when, and how many rows.
    let st = env.status(&id).await;
    assert_eq!(st["sql_segment"]["segment"]["version"], 1, "{st}");
    assert_eq!(st["sql_segment"]["segment"]["query"], QUERY, "{st}");
    assert_eq!(st["sql_segment"]["rows_read"], 9, "{st}");
    // The source is as it was.
    let n = fixture::scalar(&src.admin_url, "SELECT COUNT(*) FROM customers")
        .await
        .expect("count");
    assert_eq!(n, CUSTOMERS.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_segment_sends_what_the_query_selects() {
    end_to_end(mariadb().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_segment_sends_what_the_query_selects() {
    end_to_end(postgres().await).await;
}

/// A query that writes is refused (by the text check, or by the read-only transaction) and
/// the source is unchanged.
async fn writes_are_refused(src: &Source, sneaky: &str) {
    let env = env_with_source(60).await;
    let url = src.admin_url.as_str();
    let define = |q: &'static str| {
        [
            "segment",
            "define",
            "w",
            "--source",
            "crm",
            "--query",
            q,
            "--phone-column",
            "mobile",
        ]
    };
    let o = run_src(
        &env,
        url,
        &define("SELECT mobile FROM customers; DELETE FROM customers"),
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.all());
    o.assert_stderr_has("more than one statement");
    let o = run_src(&env, url, &define("DELETE FROM customers")).await;
    o.assert_stderr_has("must read, not write");
    let leaked: &'static str = Box::leak(sneaky.to_string().into_boxed_str());
    let o = run_src(&env, url, &define(leaked)).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let o = run_src(&env, url, &["segment", "preview", "w"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    o.assert_stderr_has("tried to change the database and was refused");
    let n = fixture::scalar(url, "SELECT COUNT(*) FROM customers")
        .await
        .expect("count");
    assert_eq!(n, CUSTOMERS.len() as i64, "the source is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_query_that_writes_is_refused() {
    let src = mariadb().await;
    // A function that deletes, called by a SELECT: only the read-only transaction stops it
    // (the URL is root's, which may delete).
    fixture::exec(
        &src.admin_url,
        "CREATE FUNCTION wipe() RETURNS INT MODIFIES SQL DATA BEGIN DELETE FROM customers; RETURN 1; END",
    )
    .await
    .expect("create function");
    writes_are_refused(&src, "SELECT mobile, wipe() AS w FROM customers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_query_that_writes_is_refused() {
    let src = postgres().await;
    writes_are_refused(
        &src,
        "WITH gone AS (DELETE FROM customers RETURNING mobile) SELECT mobile FROM gone",
    )
    .await;
}

async fn timeout_is_reported(src: &Source, slow: &'static str) {
    let env = env_with_source(1).await;
    ok_src(
        &env,
        src,
        &[
            "segment", "define", "slow", "--source", "crm", "--query", slow,
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let o = run_src(&env, &src.url, &["segment", "preview", "slow"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    o.assert_stderr_has("ran longer than statement_timeout_secs = 1");
    assert!(started.elapsed().as_secs() < 20, "cut at the timeout");
    assert!(!o.all().contains(&src.password), "{}", o.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_timeout_is_reported() {
    let src = mariadb().await;
    timeout_is_reported(
        &src,
        "SELECT mobile AS phone, SLEEP(30) AS s FROM customers",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_timeout_is_reported() {
    let src = postgres().await;
    timeout_is_reported(
        &src,
        "SELECT mobile AS phone, pg_sleep(30)::text AS s FROM customers",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_never_printed() {
    let src = mariadb().await;
    let env = env_with_source(60).await;
    define_vip(&env, &src).await;
    let wrong = src.url.replace(&src.password, "Wr0ng-pa55word");
    for args in [
        &["segment", "preview", "vip"][..],
        &create_args("x", "vip", "points", &[])[..],
        &["segment", "preview", "vip", "-vv"][..],
    ] {
        let o = run_src(&env, &wrong, args).await;
        assert_eq!(o.code, 1, "{}", o.all());
        o.assert_stderr_has("source \"crm\"");
        o.assert_stderr_has(":***@127.0.0.1");
        assert!(!o.all().contains("Wr0ng-pa55word"), "{}", o.all());
    }
    // Without the variable, the error says which one to set.
    let mut c = env.cmd(&["segment", "preview", "vip"]);
    c.env_remove("CRM_URL");
    let o = Out::from(c.output().expect("spawn"));
    o.assert_stderr_has("environment variable CRM_URL is not set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_source_is_read_with_as_of_bound() {
    let env = env_with_source(60).await;
    let path = env.path("crm.db");
    let url = format!("sqlite://{}", path.display());
    crate::common::sqlite_crm(
        &url,
        "CREATE TABLE customers (phone INTEGER, name TEXT, vip BOOLEAN, joined TEXT);
         INSERT INTO customers VALUES (1020000001, '한지민', 1, '2020-01-01 00:00:00');
         INSERT INTO customers VALUES (1020000002, '오세훈', 0, '2999-01-01 00:00:00');",
    )
    .await;
    let src = Source {
        url: url.clone(),
        password: "no-password-in-a-sqlite-url".into(),
        admin_url: url,
        _pg: None,
        _maria: None,
    };
    let q = "SELECT phone, name, vip FROM customers WHERE joined < :as_of";
    ok_src(
        &env,
        &src,
        &["segment", "define", "lite", "--source", "crm", "--query", q],
    )
    .await;
    let o = ok_src(&env, &src, &["segment", "preview", "lite", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["report"]["rows"], 1, "{}", o.stdout);
    assert_eq!(v["rows"][0]["phone"], "010-****-0001", "{}", o.stdout);
    assert_eq!(v["rows"][0]["vars"]["vip"], "true", "{}", o.stdout);
    assert_eq!(v["rows"][0]["vars"]["name"], "한지민", "{}", o.stdout);
    // A scheduled campaign reads as of its scheduled time: a customer who joins before it is
    // in, one who joins after is not.
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&src.url)
        .await
        .expect("open crm.db");
    sqlx::query(
        "INSERT INTO customers VALUES (1020000003, '박서준', 0, '2030-01-01 00:00:00'), \
         (1020000004, '김유진', 0, '2032-01-01 00:00:00')",
    )
    .execute(&db)
    .await
    .expect("more customers");
    db.close().await;
    let at = ["--no-ad", "--at", "2031-01-01T10:00:00+09:00"];
    let id = ok_src(&env, &src, &create_args("later", "lite", "hello", &at))
        .await
        .stdout
        .trim()
        .to_string();
    let o = ok_src(&env, &src, &["campaign", "run", &id]).await;
    o.assert_stderr_has("COMPLETED");
    let st = env.status(&id).await;
    assert_eq!(st["total"], 2, "joined before 2031 only: {st}");
}
