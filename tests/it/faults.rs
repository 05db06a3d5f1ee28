//! Faults from outside: a gateway asking for absurd `Retry-After` pauses, templates that never
//! finish, a full disk, a database file deleted or replaced mid-run, commands run where there
//! is no database, and quiet hours that say nothing. Real binary, real simulator, real SQLite.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{BIN, Env, Gw, Out, create_args, n, wait};
use munja::tools::sim::SimConfig;
use sqlx::sqlite::SqlitePool;

fn spawn_run(env: &Env, id: &str, envs: &[(&str, String)]) -> Child {
    let mut c = env.cmd(&["campaign", "run", id]);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn munja")
}

/// Polls `cond` every 20 ms; fails the test after `secs`.
async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends keys to the `[[gateways]]` table (the last table of the test config).
fn add_gateway_keys(env: &Env, keys: &str) {
    let text = std::fs::read_to_string(env.path("munja.toml")).expect("config");
    env.write("munja.toml", &format!("{text}\n{keys}\n"));
}

fn last_execution(status: &serde_json::Value) -> serde_json::Value {
    status["executions"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_else(|| panic!("no execution in {status}"))
}

// ---------------------------------------------------------------------------------------------
// Retry-After

/// Runs 40 messages against a gateway that answers every request with `Retry-After: asked`
/// until munja has logged that it cut the pause; then the gateway heals. Returns the run's
/// output and how long it took.
async fn run_against_retry_after(sim: SimConfig, asked: u64, max: u64) -> (Out, Duration, Env) {
    let env = Env::with(sim, Gw::default(), "max_consecutive_failures = 100000").await;
    add_gateway_keys(&env, &format!("max_retry_after_secs = {max}"));
    let seg = env.segment_csv("seg.csv", 0, 40);
    let id = env.campaign(&seg, "hello", &[]).await;
    let t0 = Instant::now();
    let mut child = spawn_run(&env, &id, &[]);
    // Read stderr as it comes, so the gateway heals only once the cut was logged.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let wanted = format!("asked to wait {asked}s");
    wait_until("the Retry-After cut in the log", 30, || {
        lines.extend(rx.try_iter());
        lines.iter().any(|l| l.contains(&wanted))
    })
    .await;
    env.sim.set_faults(0.0, 0.0, 0.0);
    let mut out = wait(child).await;
    reader.join().expect("stderr reader");
    lines.extend(rx.try_iter());
    out.stderr = lines.join("\n");
    (out, t0.elapsed(), env)
}

fn assert_cut_and_shown(out: &Out, asked: u64, max: u64) {
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.stderr.contains("panicked"), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "the gateway asked to wait {asked}s (Retry-After: {asked}); waiting {max}s, its max_retry_after_secs"
        )),
        "the cut is logged at default verbosity:\n{}",
        out.all()
    );
    assert!(
        out.stderr
            .contains(&format!("progress: waiting {max}s for gateway Retry-After")),
        "the pause is in the progress output:\n{}",
        out.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_asking_for_u64_max_seconds_is_cut_to_the_maximum_and_shown() {
    let sim = SimConfig {
        throttle_rate: 1.0,
        retry_after_secs: u64::MAX,
        seed: Some(7),
        ..SimConfig::default()
    };
    let (out, took, env) = run_against_retry_after(sim, u64::MAX, 1).await;
    assert_cut_and_shown(&out, u64::MAX, 1);
    assert!(took < Duration::from_secs(60), "no long sleep: {took:?}");
    let s = env.sim.stats();
    assert_eq!((s.accepted, s.numbers_accepted_twice), (40, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_pauses_the_gateway_and_is_cut_too() {
    let sim = SimConfig {
        fail_rate: 1.0,
        retry_after_on_503: true,
        retry_after_secs: 999_999,
        seed: Some(8),
        ..SimConfig::default()
    };
    let (out, took, env) = run_against_retry_after(sim, 999_999, 5).await;
    assert_cut_and_shown(&out, 999_999, 5);
    assert!(
        out.stderr
            .contains("gateway Retry-After: pausing all sends for 5s"),
        "a long pause is logged at default verbosity:\n{}",
        out.all()
    );
    assert!(
        took < Duration::from_secs(60),
        "no multi-day sleep: {took:?}"
    );
    assert_eq!(env.sim.stats().accepted, 40);
}

// ---------------------------------------------------------------------------------------------
// Templates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_template_is_an_error_naming_it_in_check_preview_and_create() {
    let env = Env::new(SimConfig::default()).await;
    env.write(
        "templates/loop.txt",
        "{{ name }}님 {% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    );
    let seg = env.segment_csv("seg.csv", 0, 3);
    env.ok(&["init"]).await;
    env.ok(&["segment", "import", "seg", seg.to_str().expect("utf-8")])
        .await;
    let runs = [
        vec!["template", "check", "loop"],
        vec!["template", "preview", "loop", "--segment", "seg"],
        create_args("x", "seg", "loop", &[]),
    ];
    for args in runs {
        let t0 = Instant::now();
        let o = env.run(&args).await;
        assert_eq!(o.code, 1, "{args:?}: {}", o.all());
        assert!(
            o.stderr.contains("template 'loop' line 1")
                && o.stderr.contains("too much work")
                && o.stderr.contains("loop"),
            "{args:?}: {}",
            o.all()
        );
        assert!(!o.stdout.contains("OK"), "{args:?}: {}", o.all());
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{args:?} is bounded"
        );
    }
    let o = env.ok(&["campaign", "list", "--json"]).await;
    assert_eq!(o.stdout.trim(), "[]", "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stops_at_the_first_recipient_whose_values_make_the_template_run_away() {
    let env = Env::new(SimConfig::default()).await;
    env.write(
        "templates/rows.txt",
        "{% for i in range(n|int) %}{% for j in range(n|int) %}*{% endfor %}{% endfor %}",
    );
    let csv = env.write(
        "seg.csv",
        "phone,n\n010-2000-0001,3\n010-2000-0002,100000\n010-2000-0003,2\n",
    );
    env.ok(&["init"]).await;
    env.import("seg", &csv).await;
    let o = env.create("x", "seg", "rows", &[]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains("template 'rows' line 1")
            && o.stderr.contains("too much work")
            && o.stderr.contains("010-****-0002")
            && o.stderr.contains("nothing was created"),
        "{}",
        o.all()
    );
    assert!(!o.stderr.contains("010-2000-0002"), "masked: {}", o.all());
    let o = env.ok(&["campaign", "list", "--json"]).await;
    assert_eq!(o.stdout.trim(), "[]");
}

// ---------------------------------------------------------------------------------------------
// Storage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_create_no_database_and_say_to_run_init() {
    let env = Env::on_sqlite(SimConfig::default(), Gw::default(), "").await;
    let db = env.path("munja.db");
    for args in [
        vec!["campaign", "list"],
        vec!["campaign", "status", "1"],
        vec!["segment", "list"],
        vec!["audit", "--campaign", "1"],
        vec!["optout", "check", "010-1234-5678"],
        vec!["purge", "--before", "2026-01-01"],
    ] {
        let o = env.run(&args).await;
        assert_eq!(o.code, 1, "{args:?}: {}", o.all());
        assert!(
            o.stderr
                .contains(&format!("no database at {}", db.display()))
                && o.stderr.contains("run `munja init` first"),
            "{args:?}: {}",
            o.all()
        );
        assert!(!db.exists(), "{args:?} created {}", db.display());
    }
    // Checking a template needs no database at all.
    let o = env.ok(&["template", "check", "hello"]).await;
    assert!(o.stdout.contains("template hello: OK"), "{}", o.all());
    assert!(!db.exists());
    env.ok(&["init"]).await;
    assert!(db.exists(), "init creates it");
    env.ok(&["campaign", "list"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dev_null_creates_nothing_in_dev() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out: Out = std::process::Command::new(BIN)
        .args(["--config", "/dev/null", "campaign", "list"])
        .current_dir(dir.path())
        .env_remove("MUNJA_DATABASE_URL")
        .env_remove("MUNJA_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run munja")
        .into();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("no database at /dev/munja.db") && out.stderr.contains("munja init"),
        "{}",
        out.all()
    );
    assert!(!std::path::Path::new("/dev/munja.db").exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

async fn page_count(env: &Env) -> i64 {
    let url = format!("sqlite://{}", env.path("munja.db").display());
    let pool = SqlitePool::connect(&url).await.expect("open the test db");
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&pool)
        .await
        .expect("page_count");
    pool.close().await;
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_saying_so_and_a_resume_completes_without_duplicates() {
    // First run: snapshot, then the gateway is down and the run pauses (STOPPED).
    let gw = Gw {
        max_attempts: 100,
        ..Gw::default()
    };
    let policy = "max_consecutive_failures = 20";
    let env = Env::on_sqlite(crate::common::failing(1.0, 3), gw, policy).await;
    let seg = env.segment_csv("seg.csv", 0, 1000);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    env.sim.set_faults(0.0, 0.0, 0.0);

    // Second run on a database that can grow by twenty pages only (a few chunks): the disk
    // fills up mid-run.
    let cap = page_count(&env).await + 20;
    let child = spawn_run(
        &env,
        &id,
        &[("MUNJA_SQLITE_MAX_PAGE_COUNT", cap.to_string())],
    );
    let o = wait(child).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains("database or disk is full"),
        "the real cause is named:\n{}",
        o.all()
    );
    assert!(
        !o.stderr.contains("transaction depth") && !o.stderr.contains("begin_with"),
        "{}",
        o.all()
    );
    let st = env.status(&id).await;
    assert_eq!(st["status"], "FAILED", "{st}");
    let exec = last_execution(&st);
    assert_eq!(exec["status"], "FAILED", "{st}");
    assert!(
        exec["exit_message"]
            .as_str()
            .is_some_and(|m| m.contains("database or disk is full")),
        "{st}"
    );
    assert!(
        n(&st, "sent") as u64 <= env.sim.stats().accepted,
        "nothing is reported sent that the gateway does not have: {st}"
    );

    // With room again, the run resumes and ends with every message sent exactly once.
    env.run_sends_once(&id, 1000).await;
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "sending")), (1000, 0), "{st}");
}

/// Runs a campaign, applies `swap` to the database file once the run is under way, and insists
/// that the run fails (exit 1) saying `says`, without completing and before sending it all.
async fn run_and_swap_the_database(swap: impl FnOnce(&Env), says: impl FnOnce(&Env) -> String) {
    let sim = SimConfig {
        latency_ms: 20,
        ..SimConfig::default()
    };
    let gw = Gw::limited(50, 5, 4);
    let env = Env::on_sqlite(sim, gw, "chunk_size = 20").await;
    let seg = env.segment_csv("seg.csv", 0, 300);
    let id = env.campaign(&seg, "hello", &[]).await;
    let child = spawn_run(&env, &id, &[]);
    wait_until("the first messages", 30, || env.sim.stats().accepted >= 10).await;
    swap(&env);
    let o = wait(child).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains(&says(&env)), "{}", o.all());
    assert!(!o.stderr.contains("COMPLETED"), "{}", o.all());
    assert!(env.sim.stats().accepted < 300, "the run stopped sending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_database_mid_run_fails_the_run() {
    run_and_swap_the_database(
        |env| std::fs::remove_file(env.path("munja.db")).expect("delete the db"),
        |env| {
            let db = env.path("munja.db");
            format!("the database file {} was deleted", db.display())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_database_mid_run_fails_the_run() {
    run_and_swap_the_database(
        |env| {
            let copy = env.path("copy.db");
            std::fs::copy(env.path("munja.db"), &copy).expect("copy the db");
            std::fs::rename(&copy, env.path("munja.db")).expect("replace the db");
        },
        |_| "was replaced by another file".to_string(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Config

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_with_equal_start_and_end_is_a_config_error() {
    let env = Env::with(
        SimConfig::default(),
        Gw::default(),
        "quiet_hours = \"21:00-21:00\"",
    )
    .await;
    let o = env.run(&["init"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains("policy.quiet_hours")
            && o.stderr.contains("\"21:00-21:00\"")
            && o.stderr.contains("\"off\""),
        "{}",
        o.all()
    );
    assert!(!env.path("munja.db").exists());
}
