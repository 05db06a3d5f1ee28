//! `munja bench` works end to end on a small size (CI checks it runs, not how fast): its JSON
//! report has munja's rate, both ceilings measured in the same run (a bare HTTP load loop, the
//! store's claims and commits alone), the shared rate budget taken in slices rather than once
//! per request, and every message sent once.

use crate::common::BIN;

/// Runs `munja bench --recipients 2000 ARGS --json`; returns its report.
async fn bench(args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["bench", "--recipients", "2000", "--json"])
        .args(args)
        .env_remove("MUNJA_CONFIG")
        .env_remove("MUNJA_DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("spawn munja bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "munja bench {args:?} failed:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("munja bench {args:?} printed no JSON report ({e}):\n{stderr}"))
}

fn positive(r: &serde_json::Value, key: &str) -> f64 {
    let v = r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing from the bench report: {r}"));
    assert!(v > 0.0, "{key} = {v} in the bench report: {r}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_its_rate_and_both_ceilings() {
    let postgres = crate::common::on_postgres();
    let url = munja::store::postgres::scratch::test_server_url();
    let mut args = vec!["--batch-size", "1", "--concurrency", "16"];
    if postgres {
        args.extend(["--database-url", url.as_str()]);
    }
    let r = bench(&args).await;
    for key in [
        "msgs_per_sec",
        "http_ceiling_msgs_per_sec",
        "store_ceiling_msgs_per_sec",
        "http_ceiling_ratio",
        "store_ceiling_ratio",
    ] {
        positive(&r, key);
    }
    assert_eq!(r["sent"], 2000, "{r}");
    assert_eq!(r["accepted_at_gateway"], 2000, "{r}");
    assert_eq!(r["numbers_accepted_twice"], 0, "{r}");
    let run = r["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "campaign run"))
        .unwrap_or_else(|| panic!("no campaign run phase: {r}"));
    assert!(run["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{r}");
    // The shared rate budget is taken from the database in slices, not once per request.
    let requests = r["rate_budget_requests"].as_u64().unwrap_or(0);
    let takes = r["rate_budget_takes"].as_u64().unwrap_or(0);
    assert_eq!(
        requests, 2000,
        "one request per message asked the budget: {r}"
    );
    assert!(
        (1..=requests / 100).contains(&takes),
        "{takes} round trips to the database for {requests} requests: {r}"
    );
    assert!(
        r["rate_budget_share"].as_f64().is_some_and(|s| s < 0.5),
        "{r}"
    );
}

/// `--workers 3`: on PostgreSQL three `campaign run` processes share the campaign, each
/// message sent once, and the rate is theirs together; on SQLite the bench refuses at once,
/// saying what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_three_workers_sends_each_message_once_or_says_it_needs_postgres() {
    if !crate::common::on_postgres() {
        let out = std::process::Command::new(BIN)
            .args(["bench", "--recipients", "2000", "--workers", "3"])
            .env_remove("MUNJA_CONFIG")
            .env_remove("MUNJA_DATABASE_URL")
            .output()
            .expect("spawn munja bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("--workers 3 needs PostgreSQL"), "{stderr}");
        return;
    }
    let url = munja::store::postgres::scratch::test_server_url();
    let r = bench(&["--workers", "3", "--no-ceilings", "--database-url", &url]).await;
    positive(&r, "msgs_per_sec");
    assert_eq!(r["sent"], 2000, "{r}");
    assert_eq!(r["accepted_at_gateway"], 2000, "{r}");
    assert_eq!(r["numbers_accepted_twice"], 0, "{r}");
    let runs: Vec<&serde_json::Value> = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("campaign run (worker"))
        })
        .collect();
    assert_eq!(runs.len(), 3, "{r}");
    let sent: u64 = runs.iter().map(|p| p["rows"].as_u64().unwrap_or(0)).sum();
    assert_eq!(sent, 2000, "the workers' own counts add up: {r}");
}
