//! The ad-consent age of CSV segments on the real binary: `ad_consent_at` older than
//! `policy.ad_consent_max_age_days` (730) is `consent_expired` and an empty cell
//! `consent_missing`, counted by `campaign create` and suppressed by the run after opt-outs;
//! a file without the column, and an informational campaign, suppress none.

use std::collections::BTreeMap;

use crate::common::{Env, number};
use munja::tools::sim::SimConfig;

/// A date `days` ago, as a CSV cell.
fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

/// Segment `seg` from `phone,name,ad_consent_at` rows: number 1 consented 10 days ago,
/// 2 in 2020, 3 never (empty cell), 4 yesterday (a time of day), 5 in 2020 and opted out.
async fn import_with_consent(env: &Env) {
    env.ok(&["init"]).await;
    let rows = [
        (1, days_ago(10)),
        (2, "2020-01-01".to_string()),
        (3, String::new()),
        (4, format!("{} 09:30:00", days_ago(1))),
        (5, "2020-01-01T00:00:00+09:00".to_string()),
    ];
    let mut csv = String::from("phone,name,ad_consent_at\n");
    for (i, at) in rows {
        csv.push_str(&format!("{},고객{i},{at}\n", number(i)));
    }
    let file = env.write("consent.csv", &csv);
    env.import("seg", &file).await;
    env.ok(&["optout", "add", &number(5)]).await;
}

/// (phone, status, reason) of each message of campaign `id`.
async fn outcomes(env: &Env, id: &str) -> BTreeMap<String, (String, String)> {
    env.audit_json(id)
        .await
        .iter()
        .map(|r| {
            (
                r["phone"].as_str().expect("phone").to_string(),
                (
                    r["status"].as_str().expect("status").to_string(),
                    r["error"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn want(rows: &[(u64, &str, &str)]) -> BTreeMap<String, (String, String)> {
    rows.iter()
        .map(|(i, st, r)| (number(*i), (st.to_string(), r.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_suppresses_old_and_missing_consent_and_sends_the_rest_once() {
    let env = Env::new(SimConfig::default()).await;
    import_with_consent(&env).await;
    let o = env.create("ad", "seg", "hello", &[]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    o.assert_stderr_has("suppressed consent_expired: 1 (");
    o.assert_stderr_has("suppressed consent_missing: 1 (");
    let id = o.stdout.trim().to_string();
    env.run_sends_once(&id, 2).await;
    assert_eq!(
        outcomes(&env, &id).await,
        want(&[
            (1, "sent", ""),
            (2, "suppressed", "consent_expired"),
            (3, "suppressed", "consent_missing"),
            (4, "sent", ""),
            (5, "suppressed", "opted_out"),
        ])
    );
    let st = env.status_is(&id, "COMPLETED").await;
    assert_eq!(st["suppressed"], 3, "{st}");
    assert_eq!(
        st["executions"][0]["suppressed"], 3,
        "counted on the run: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informational_campaign_suppresses_no_consent() {
    let env = Env::new(SimConfig::default()).await;
    import_with_consent(&env).await;
    let o = env.create("info", "seg", "hello", &["--no-ad"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(!o.stderr.contains("suppressed consent"), "{}", o.all());
    let id = o.stdout.trim().to_string();
    env.run_sends_once(&id, 4).await;
    let got = outcomes(&env, &id).await;
    assert_eq!(got[&number(2)], ("sent".into(), String::new()));
    assert_eq!(got[&number(3)], ("sent".into(), String::new()));
    assert_eq!(got[&number(5)], ("suppressed".into(), "opted_out".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_without_the_column_suppresses_no_consent() {
    let env = Env::new(SimConfig::default()).await;
    let seg = env.segment_csv("seg.csv", 1, 3);
    let id = env.campaign(&seg, "hello", &[]).await;
    env.run_sends_once(&id, 3).await;
    assert_eq!(
        outcomes(&env, &id).await,
        want(&[(1, "sent", ""), (2, "sent", ""), (3, "sent", "")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_on_a_segment_imported_before_consent_times_were_kept_is_refused() {
    let env = Env::new(SimConfig::default()).await;
    import_with_consent(&env).await;
    // What migration 0011 (SQLite) / 0012 (PostgreSQL) leaves on a segment imported before.
    let db = env.db().await;
    db.execute("UPDATE segments SET ad_consent_column = NULL")
        .await;
    db.execute("UPDATE segment_members SET ad_consent_at = NULL")
        .await;
    let o = env.create("ad", "seg", "hello", &[]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    o.assert_stderr_has(
        "segment \"seg\" was imported before munja kept the times of its ad_consent_at column",
    );
    o.assert_stderr_has("import it again (`munja segment import seg FILE.csv`)");
    // An informational campaign does not need them.
    let o = env.create("info", "seg", "hello", &["--no-ad"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
}
