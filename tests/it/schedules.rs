//! Schedules with a real server: a one-off time is kept (sent then, not before), a recurring
//! 6-field schedule makes each occurrence once across a restart and with two servers, a
//! campaign stopped by quiet hours resumes when the window ends, and an ad scheduled inside
//! quiet hours is refused at create.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use munja::tools::sim::SimConfig;

use crate::common::{Env, Gw};
use crate::server::{boot, import_segment, status_of, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_scheduled_3_seconds_ahead_is_sent_then_and_not_before() {
    let env = Env::new(SimConfig::default()).await;
    let seg = env.segment_csv("seg.csv", 0, 20);
    let at = Utc::now() + chrono::Duration::seconds(3);
    let at_text = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let id = env
        .campaign(&seg, "hello", &["--no-ad", "--at", &at_text])
        .await;
    let st = env.status(&id).await;
    assert_eq!(st["status"], "SCHEDULED");
    assert_eq!(st["scheduled_at"], at_text.as_str());
    let srv = boot(&env).await;
    // Until its time, nothing is sent.
    while Utc::now() < at - chrono::Duration::milliseconds(150) {
        assert_eq!(env.sim.stats().requests, 0, "sent before its time");
        assert_eq!(status_of(&env, &id).await, "SCHEDULED");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("the campaign to complete", 20, || async {
        status_of(&env, &id).await == "COMPLETED"
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 20);
    let st = env.status(&id).await;
    let started = st["executions"][0]["started_at"]
        .as_str()
        .expect("started_at");
    let started = chrono::DateTime::parse_from_rfc3339(started).expect("time");
    assert!(started >= at, "started {started} before {at}");
    assert!(
        started < at + chrono::Duration::milliseconds(1500),
        "started {started}, more than a second after {at}"
    );
    srv.running.shutdown().await.expect("shutdown");
}

/// The scheduled times of the campaigns of a schedule, sorted.
async fn occurrences(env: &Env) -> Vec<chrono::DateTime<Utc>> {
    let o = env.ok(&["campaign", "list", "--json"]).await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).expect("json");
    let mut times = Vec::new();
    for c in list {
        let id = c["id"].to_string();
        let st = env.status(&id).await;
        if let Some(t) = st["scheduled_at"].as_str() {
            times.push(
                chrono::DateTime::parse_from_rfc3339(t)
                    .expect("time")
                    .to_utc(),
            );
        }
    }
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recurring_schedule_makes_each_occurrence_once_across_a_restart_and_two_servers() {
    let env = Env::new(SimConfig::default()).await;
    import_segment(&env, 5).await;
    env.schedule_hello("tick", "*/2 * * * * *").await;
    let list = env.ok(&["schedule", "list"]).await;
    assert!(
        list.stdout.contains("tick") && list.stdout.contains("active"),
        "{}",
        list.all()
    );
    let first = boot(&env).await;
    wait_for("two occurrences", 20, || async {
        occurrences(&env).await.len() >= 2
    })
    .await;
    first.running.shutdown().await.expect("shutdown");
    // Down until an occurrence has passed: that missed occurrence (within the grace) is made
    // once on start, by one of two servers starting together.
    let last = *occurrences(&env).await.last().expect("an occurrence");
    wait_for("an occurrence to pass while no server runs", 10, || async {
        Utc::now() > last + chrono::Duration::milliseconds(2500)
    })
    .await;
    let seen = occurrences(&env).await.len();
    let (a, b) = (boot(&env).await, boot(&env).await);
    wait_for("two more occurrences", 20, || async {
        occurrences(&env).await.len() >= seen + 2
    })
    .await;
    env.ok(&["schedule", "pause", "tick"]).await;
    a.running.shutdown().await.expect("shutdown a");
    b.running.shutdown().await.expect("shutdown b");
    let times = occurrences(&env).await;
    // Every 2 seconds, none twice, none missing between the first and the last.
    for w in times.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_milliseconds(),
            2000,
            "occurrences {times:?}"
        );
    }
    assert!(times.len() >= 4, "{times:?}");
    // Each occurrence campaign was sent once: 5 recipients each.
    let sim = env.sim.stats();
    assert_eq!(sim.numbers_accepted_twice, 0);
    assert!(sim.accepted <= 5 * times.len() as u64);
    let paused = env.ok(&["schedule", "list", "--json"]).await;
    assert!(
        paused.stdout.contains("\"paused\": true"),
        "{}",
        paused.all()
    );
    env.ok(&["schedule", "remove", "tick"]).await;
    let gone = env.run(&["schedule", "remove", "tick"]).await;
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("no schedule named"), "{}", gone.all());
}

/// Local time in Seoul `secs` from now, as HH:MM:SS.
fn seoul_in(secs: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(secs))
        .with_timezone(&chrono_tz::Asia::Seoul)
        .format("%H:%M:%S")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_stopped_by_quiet_hours_resumes_when_the_window_ends() {
    let window = format!("quiet_hours = \"{}-{}\"", seoul_in(-2), seoul_in(5));
    let env = Env::with(SimConfig::default(), Gw::default(), &window).await;
    let seg = env.segment_csv("seg.csv", 0, 30);
    // Created without a time (so not refused), then made due now, inside the window.
    let id = env.campaign(&seg, "hello", &[]).await;
    let srv = boot(&env).await;
    env.ok(&["campaign", "schedule", &id, "--now"]).await;
    wait_for("the night rule to stop it", 20, || async {
        status_of(&env, &id).await == "STOPPED"
    })
    .await;
    let st = env.status(&id).await;
    assert_eq!(st["executions"][0]["exit_code"], "QUIET_HOURS", "{st}");
    assert_eq!(env.sim.stats().accepted, 0);
    wait_for("the server to resume it after the window", 30, || async {
        status_of(&env, &id).await == "COMPLETED"
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 30);
    let st = env.status(&id).await;
    assert_eq!(st["executions"].as_array().expect("execs").len(), 2);
    srv.running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ad_scheduled_inside_quiet_hours_or_in_the_past_is_refused_at_create() {
    let env = Env::with(
        SimConfig::default(),
        Gw::default(),
        "quiet_hours = \"21:00-08:00\"",
    )
    .await;
    import_segment(&env, 5).await;
    let create = |at: &'static str, extra: &'static [&'static str]| {
        let mut args = vec![
            "campaign",
            "create",
            "--name",
            "n",
            "--segment",
            "seg",
            "--template",
            "hello",
            "--at",
            at,
        ];
        args.extend_from_slice(extra);
        args
    };
    let o = env.run(&create("2099-01-01 23:30", &[])).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("quiet hours 21:00-08:00"), "{}", o.all());
    assert!(o.stderr.contains("5 recipients"), "{}", o.all());
    assert!(
        o.stderr.contains("2099-01-02 08:00"),
        "names the next open time: {}",
        o.all()
    );
    let o = env.run(&create("2001-01-01 10:00", &[])).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("in the past"), "{}", o.all());
    let o = env.run(&create("next tuesday", &[])).await;
    assert!(o.stderr.contains("YYYY-MM-DD HH:MM"), "{}", o.all());
    let list = env.ok(&["campaign", "list", "--json"]).await;
    assert_eq!(list.stdout.trim(), "[]", "nothing was created");
    // Informational messages have no night rule; daytime ads are fine.
    env.ok(&create("2099-01-01 23:30", &["--no-ad"])).await;
    let id = env
        .ok(&create("2099-01-01 10:00", &[]))
        .await
        .stdout
        .trim()
        .to_string();
    // Moving it into the night is refused too, and changes nothing; unschedule works.
    let o = env
        .run(&["campaign", "schedule", &id, "--at", "2099-01-01 22:00"])
        .await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert_eq!(
        env.status(&id).await["scheduled_at"],
        "2099-01-01T01:00:00.000Z"
    );
    env.ok(&["campaign", "unschedule", &id]).await;
    let st = env.status(&id).await;
    assert_eq!(st["status"], "CREATED");
    assert!(st["scheduled_at"].is_null());
}
