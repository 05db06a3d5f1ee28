//! The core workflow through the real binary, the real simulator on loopback and real SQLite files.

use std::net::SocketAddr;

use crate::common::{Env, Gw, create_args, n, number};
use munja::tools::sim::{self, FixedAnswer, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_workflow_suppresses_optouts_merges_duplicates_and_reports_bad_rows() {
    let env = Env::new(SimConfig::default()).await;
    // 300 customers, 5 of them listed twice in another format, 3 bad rows.
    let mut seg = String::from("phone,name,grade\n");
    for i in 0..300 {
        seg.push_str(&format!("{},고객{i},VIP\n", number(i)));
    }
    for i in 0..5 {
        let p = number(i);
        seg.push_str(&format!(
            "+82 {}-{}-{},중복{i},VIP\n",
            &p[1..3],
            &p[3..7],
            &p[7..]
        ));
    }
    seg.push_str("02-123-4567,서울,VIP\nabc,쓰레기,VIP\n070-1234-5678,인터넷,VIP\n");
    let seg_file = env.write("customers.csv", &seg);
    let mut opt = String::from("phone,when\n");
    for i in 0..20 {
        let p = number(i * 10);
        opt.push_str(&format!("{}-{}-{},today\n", &p[..3], &p[3..7], &p[7..]));
    }
    opt.push_str("not a number,today\n");
    let opt_file = env.write("optouts.csv", &opt);

    env.ok(&["init"]).await;
    env.ok(&["init"]).await; // harmless twice
    let o = env
        .ok(&["optout", "import", opt_file.to_str().unwrap()])
        .await;
    assert!(
        o.stdout
            .contains("imported 20, already present 0, rejected 1"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("line 22: invalid_number"), "{}", o.all());
    let o = env
        .ok(&["optout", "import", opt_file.to_str().unwrap()])
        .await;
    assert!(
        o.stdout
            .contains("imported 0, already present 20, rejected 1"),
        "{}",
        o.all()
    );

    let o = env
        .ok(&["segment", "import", "vip", seg_file.to_str().unwrap()])
        .await;
    assert!(
        o.stdout
            .contains("imported 300, merged duplicates 5, rejected 3"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("line 307: not_mobile"), "{}", o.all());
    assert!(o.stderr.contains("line 308: invalid_number"), "{}", o.all());
    assert!(o.stderr.contains("line 309: not_mobile"), "{}", o.all());

    let o = env
        .ok(&[
            "campaign",
            "create",
            "--name",
            "spring",
            "--segment",
            "vip",
            "--template",
            "recruit",
        ])
        .await;
    let id = o.stdout.trim().to_string();
    assert!(
        id.parse::<i64>().is_ok(),
        "stdout must be the id alone: {:?}",
        o.stdout
    );
    assert!(
        o.stderr
            .contains("300 recipients: 0 SMS, 300 LMS, 0 refused"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("estimated cost: 8700 KRW"), "{}", o.all());

    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stderr.contains("COMPLETED"), "{}", o.all());

    let st = env.status(&id).await;
    assert_eq!(st["status"], "COMPLETED");
    assert_eq!(
        (
            n(&st, "total"),
            n(&st, "sent"),
            n(&st, "suppressed"),
            n(&st, "failed")
        ),
        (300, 280, 20, 0)
    );
    assert_eq!((n(&st, "pending"), n(&st, "sending")), (0, 0));
    let stats = env.sim.stats();
    assert_eq!(stats.accepted, 280);
    assert_eq!(stats.numbers_accepted_twice, 0);

    let rows = env.audit_json(&id).await;
    assert_eq!(rows.len(), 300);
    for r in &rows {
        match r["status"].as_str() {
            Some("sent") => {
                assert!(r["gateway_id"].is_string());
                assert_eq!(r["type"], "LMS");
                assert!(r["bytes"].as_i64().unwrap() > 90);
            }
            Some("suppressed") => assert_eq!(r["error"], "opted_out"),
            other => panic!("unexpected status {other:?} in {r}"),
        }
    }
    // The table masks numbers; csv is a full export; --phone takes any form.
    let table = env.ok(&["audit", "--campaign", &id]).await.stdout;
    assert!(!table.contains(&number(1)), "table must mask numbers");
    assert!(table.contains("010-****-0001"), "{table}");
    let csv = env
        .ok(&["audit", "--campaign", &id, "--format", "csv"])
        .await
        .stdout;
    assert!(csv.contains(&number(1)));
    let p = number(7);
    let one = env
        .ok(&[
            "audit",
            "--campaign",
            &id,
            "--phone",
            &format!("+82 {}-{}-{}", &p[1..3], &p[3..7], &p[7..]),
            "--format",
            "json",
        ])
        .await;
    let one: Vec<serde_json::Value> = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["phone"], p);
    let failed = env
        .ok(&[
            "audit",
            "--campaign",
            &id,
            "--status",
            "suppressed",
            "--format",
            "json",
        ])
        .await;
    let failed: Vec<serde_json::Value> = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(failed.len(), 20);

    // opt-out check exit codes
    assert_eq!(env.run(&["optout", "check", &number(10)]).await.code, 0);
    assert_eq!(env.run(&["optout", "check", &number(11)]).await.code, 1);
    env.ok(&["optout", "add", "010-2000-0011"]).await;
    assert_eq!(env.run(&["optout", "check", "+821020000011"]).await.code, 0);
    env.ok(&["optout", "remove", &number(11)]).await;
    assert_eq!(env.run(&["optout", "check", &number(11)]).await.code, 1);

    // A completed campaign cannot run again.
    let again = env.run(&["campaign", "run", &id]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("COMPLETED"), "{}", again.all());
    assert_eq!(env.sim.stats().accepted, 280);

    let list = env.ok(&["campaign", "list", "--json"]).await;
    assert!(list.stdout.contains("\"spring\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_503_429_and_timeouts_every_number_is_accepted_exactly_once() {
    let sim = SimConfig {
        fail_rate: 0.10,
        throttle_rate: 0.02,
        retry_after_secs: 1,
        timeout_rate: 0.05,
        stall_ms: 700,
        seed: Some(7),
        ..SimConfig::default()
    };
    let gw = Gw::timing_out(300, 12);
    let env = Env::with(sim, gw, "max_consecutive_failures = 1000").await;
    let seg = env.segment_csv("seg.csv", 0, 600);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let s = env.sim.stats();
    assert!(
        s.faults_503 > 0 && s.faults_429 > 0 && s.faults_timeout > 0,
        "faults were injected: {s:?}"
    );
    assert_eq!(s.accepted, 600, "every number accepted");
    assert_eq!(s.distinct_numbers, 600);
    assert_eq!(s.numbers_accepted_twice, 0, "no number accepted twice");
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 600);
    // Every attempt is in the log: retried messages show more than one attempt.
    let rows = env.audit_json(&id).await;
    assert!(rows.iter().any(|r| r["attempts"].as_i64().unwrap() > 1));
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_requests_reach_the_same_result() {
    let gw = Gw {
        batch_size: 50,
        ..Gw::default()
    };
    let env = Env::with(crate::common::failing(0.1, 3), gw, "").await;
    let seg = env.segment_csv("seg.csv", 0, 1000);
    let id = env.campaign(&seg, "hello", &[]).await;
    env.run_sends_once(&id, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_stops_the_campaign_without_failing_messages() {
    let sim = SimConfig {
        api_key: Some("right-key".into()),
        ..SimConfig::default()
    };
    let gw = Gw {
        api_key_env: Some("MUNJA_TEST_GW_KEY".into()),
        ..Gw::default()
    };
    let env = Env::with(sim, gw, "").await;
    let seg = env.segment_csv("seg.csv", 0, 100);
    let mut c = env.cmd(&["init"]);
    c.env("MUNJA_TEST_GW_KEY", "wrong-key-s3cr3t");
    assert!(c.status().unwrap().success());
    let mut c = env.cmd(&["segment", "import", "seg", seg.to_str().unwrap()]);
    assert!(
        c.env("MUNJA_TEST_GW_KEY", "wrong-key-s3cr3t")
            .status()
            .unwrap()
            .success()
    );
    let mut c = env.cmd(&create_args("x", "seg", "hello", &[]));
    let id = String::from_utf8(
        c.env("MUNJA_TEST_GW_KEY", "wrong-key-s3cr3t")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id = id.trim();
    let mut c = env.cmd(&["-vv", "campaign", "run", id]);
    c.env("MUNJA_TEST_GW_KEY", "wrong-key-s3cr3t");
    let o: crate::common::Out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
        .into();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("credentials"), "{}", o.all());
    assert!(
        !o.stderr.contains("wrong-key-s3cr3t"),
        "the key must never be printed"
    );
    let st = env.status(id).await;
    assert_eq!(st["status"], "FAILED");
    assert_eq!(
        n(&st, "failed"),
        0,
        "no message is failed for a credentials problem"
    );
    assert_eq!(n(&st, "sent"), 0);
    assert_eq!(n(&st, "pending"), 100);
    // Unset variable: a config error naming the key, as soon as the gateway is needed.
    let o = env.run(&["campaign", "run", id]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("api_key_env") && o.stderr.contains("MUNJA_TEST_GW_KEY"),
        "{}",
        o.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_errors_name_template_line_and_variable() {
    let env = Env::new(SimConfig::default()).await;
    env.write("templates/coupon.txt", "{{ name }}님\n쿠폰 {{ coupon }}");
    let seg = env.segment_csv("seg.csv", 0, 10);
    env.ok(&["init"]).await;
    env.ok(&["segment", "import", "seg", seg.to_str().unwrap()])
        .await;
    let o = env
        .run(&[
            "campaign",
            "create",
            "--name",
            "c",
            "--segment",
            "seg",
            "--template",
            "coupon",
        ])
        .await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains("coupon") && o.stderr.contains("line 2"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("template_error: 10"), "{}", o.all());
    assert!(o.stdout.is_empty(), "nothing created, no id printed");

    // A per-recipient error fails that message only.
    env.write(
        "templates/ratio.txt",
        "{{ name }}님 {{ 100 // (n|int) }}% 할인",
    );
    env.write(
        "ratio.csv",
        &format!(
            "phone,name,n\n{},a,4\n{},b,0\n{},c,5\n",
            number(1),
            number(2),
            number(3)
        ),
    );
    env.ok(&[
        "segment",
        "import",
        "ratio",
        env.path("ratio.csv").to_str().unwrap(),
    ])
    .await;
    let o = env
        .ok(&[
            "campaign",
            "create",
            "--name",
            "r",
            "--segment",
            "ratio",
            "--template",
            "ratio",
        ])
        .await;
    assert!(
        o.stderr.contains("refused template_error: 1"),
        "{}",
        o.all()
    );
    let id = o.stdout.trim().to_string();
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (2, 1));
    let failed = env
        .ok(&[
            "audit",
            "--campaign",
            &id,
            "--status",
            "failed",
            "--format",
            "json",
        ])
        .await;
    let failed: Vec<serde_json::Value> = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(failed[0]["error"], "template_error");
    assert_eq!(failed[0]["phone"], number(2));

    // Syntax errors are found by `template check`.
    env.write("templates/broken.txt", "안녕\n{{ name }");
    let o = env.run(&["template", "check", "broken"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("broken") && o.stderr.contains("line 2"),
        "{}",
        o.all()
    );
    let o = env.ok(&["template", "check", "coupon"]).await;
    assert!(o.stdout.contains("coupon, name"), "{}", o.all());
}

/// `h` Hangul syllables and `a` ASCII letters.
fn text(h: usize, a: usize) -> String {
    "가".repeat(h) + &"a".repeat(a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_and_lms_are_sized_at_the_byte_edges() {
    let env = Env::new(SimConfig::default()).await;
    env.write("templates/raw.txt", "{{ body }}");
    // Informational (--no-ad): the text is exactly the body.
    let cases = [
        (text(44, 2), Some(("SMS", 90))),
        (text(45, 1), Some(("LMS", 91))),
        (text(999, 2), Some(("LMS", 2000))),
        (text(1000, 1), None),
    ];
    let mut csv = String::from("phone,body\n");
    for (i, (t, _)) in cases.iter().enumerate() {
        csv.push_str(&format!("{},{t}\n", number(i as u64)));
    }
    let seg = env.write("sizes.csv", &csv);
    let id = env.campaign(&seg, "raw", &["--no-ad"]).await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let rows = env.audit_json(&id).await;
    for (i, (_, want)) in cases.iter().enumerate() {
        let r = &rows[i];
        match want {
            Some((kind, bytes)) => {
                assert_eq!(r["status"], "sent", "{r}");
                assert_eq!(r["type"], *kind, "{r}");
                assert_eq!(r["bytes"], *bytes, "{r}");
            }
            None => {
                assert_eq!(r["status"], "failed", "{r}");
                assert_eq!(r["error"], "too_long", "{r}");
            }
        }
    }
    assert_eq!(env.sim.stats().accepted, 3);

    // With the ad frame: "(광고) 토스페이먼츠\n" + body + "\n무료수신거부 080-600-5653" adds 46 bytes.
    let csv = format!(
        "phone,body\n{},{}\n{},{}\n",
        number(10),
        text(22, 0),
        number(11),
        text(22, 1)
    );
    let f = env.write("ad.csv", &csv);
    env.ok(&["segment", "import", "ad", f.to_str().unwrap()])
        .await;
    let id = env
        .ok(&[
            "campaign",
            "create",
            "--name",
            "ad",
            "--segment",
            "ad",
            "--template",
            "raw",
        ])
        .await
        .stdout;
    let id = id.trim();
    env.ok(&["campaign", "run", id]).await;
    let rows = env.audit_json(id).await;
    assert_eq!(
        (rows[0]["type"].as_str(), rows[0]["bytes"].as_i64()),
        (Some("SMS"), Some(90))
    );
    assert_eq!(
        (rows[1]["type"].as_str(), rows[1]["bytes"].as_i64()),
        (Some("LMS"), Some(91))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_never_sees_more_than_the_configured_rate() {
    let gw = Gw::limited(200, 20, 32);
    let env = Env::with(SimConfig::default(), gw, "").await;
    let seg = env.segment_csv("seg.csv", 0, 1000);
    let id = env.campaign(&seg, "hello", &[]).await;
    let t = std::time::Instant::now();
    env.ok(&["campaign", "run", &id]).await;
    let took = t.elapsed().as_secs_f64();
    let s = env.sim.stats();
    assert_eq!(s.accepted, 1000);
    // GCRA: after the first burst of 20, one message every 5 ms.
    assert!(
        took >= (1000.0 - 20.0) / 200.0,
        "sent 1000 in {took:.2}s, faster than 200/s"
    );
    assert!(
        s.max_per_second <= 200 + 20,
        "a calendar second saw {} requests",
        s.max_per_second
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_campaigns_running_at_once_share_their_gateways_rate() {
    let gw = Gw {
        rate: 100,
        burst: 10,
        concurrency: 8,
        batch_size: 1,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw, "").await;
    let a = env
        .campaign(&env.segment_csv("a.csv", 0, 300), "hello", &[])
        .await;
    let b = env
        .another_campaign("b", &env.segment_csv("b.csv", 1000, 300), "hello")
        .await;
    let t = std::time::Instant::now();
    // Two processes on one gateway: each alone could send 100 a second.
    let (run_a, run_b) = (["campaign", "run", &a], ["campaign", "run", &b]);
    let (ra, rb) = tokio::join!(env.run(&run_a), env.run(&run_b));
    let took = t.elapsed().as_secs_f64();
    assert_eq!((ra.code, rb.code), (0, 0), "{}\n{}", ra.all(), rb.all());
    env.assert_shared_100_a_second(600, took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_no_sooner_than_retry_after() {
    let sim = SimConfig {
        throttle_rate: 1.0,
        retry_after_secs: 2,
        ..SimConfig::default()
    };
    let env = Env::new(sim).await;
    let seg = env.segment_csv("seg.csv", 0, 1);
    let id = env.campaign(&seg, "hello", &[]).await;
    let t = std::time::Instant::now();
    // Heals once the first request was answered 429 (whenever the run gets that far).
    let heal = async {
        let t0 = std::time::Instant::now();
        while env.sim.stats().faults_429 == 0 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(30), "no 429");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        env.sim.set_faults(0.0, 0.0, 0.0);
    };
    let args = ["campaign", "run", id.as_str()];
    let (o, _) = tokio::join!(env.run(&args), heal);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        t.elapsed().as_secs_f64() >= 2.0,
        "retried after {:?}, before Retry-After",
        t.elapsed()
    );
    let s = env.sim.stats();
    assert_eq!((s.faults_429, s.accepted), (1, 1));
    let rows = env.audit_json(&id).await;
    assert_eq!(rows[0]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optout_rows_with_stray_commas_in_ignored_columns_are_imported() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    let opt = env.write(
        "optouts.csv",
        "phone,memo\n010-1111-2222,고객 요청, 전화\n010-1111-3333\n,only a memo, here\n",
    );
    let o = env.ok(&["optout", "import", opt.to_str().unwrap()]).await;
    assert!(
        o.stdout
            .contains("imported 2, already present 0, rejected 1"),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains("line 4: wrong_field_count"),
        "{}",
        o.all()
    );
    assert_eq!(env.run(&["optout", "check", "010-1111-2222"]).await.code, 0);
    assert_eq!(env.run(&["optout", "check", "010-1111-3333"]).await.code, 0);
    assert_eq!(env.run(&["optout", "check", "010-1111-4444"]).await.code, 1);

    // Segments still refuse such rows: their other columns are used.
    let seg = env.write(
        "seg.csv",
        "phone,name\n010-1111-5555,김, 민수\n010-1111-6666\n010-1111-7777,이영희\n",
    );
    let o = env
        .ok(&["segment", "import", "s", seg.to_str().unwrap()])
        .await;
    assert!(o.stdout.contains("imported 1"), "{}", o.all());
    assert!(o.stdout.contains("rejected 2"), "{}", o.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed_and_fail_the_campaign_naming_the_location() {
    for status in [302, 307] {
        // The host the redirect points to: it must never hear from munja.
        let elsewhere = sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), SimConfig::default())
            .await
            .unwrap();
        let location = format!("{}/v1/messages", elsewhere.url());
        let redirecting = SimConfig {
            fixed_answer: Some(FixedAnswer {
                status,
                location: Some(location.clone()),
                body: String::new(),
            }),
            ..SimConfig::default()
        };
        let env = Env::new(redirecting).await;
        let seg = env.segment_csv("seg.csv", 0, 50);
        let id = env.campaign(&seg, "hello", &[]).await;
        let o = env.run(&["campaign", "run", &id]).await;
        assert_eq!(o.code, 1, "{status}: {}", o.all());
        assert!(o.stderr.contains(&location), "{status}: {}", o.all());
        assert!(o.stderr.contains("munja.toml"), "{status}: {}", o.all());
        let st = env.status(&id).await;
        assert_eq!(st["status"], "FAILED", "{st}");
        assert_eq!((n(&st, "pending"), n(&st, "failed")), (50, 0), "{st}");
        assert_eq!(
            elsewhere.stats().requests,
            0,
            "{status}: nothing reached the other host"
        );
        assert!(env.sim.stats().requests < 50, "the list was not walked");
        crate::common::agree::assert_agrees(&env, &id).await;
        elsewhere.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_level_rejections_stop_the_campaign_and_keep_messages_pending() {
    let fixed = |status: u16, body: &str| SimConfig {
        fixed_answer: Some(FixedAnswer {
            status,
            location: None,
            body: body.into(),
        }),
        ..SimConfig::default()
    };
    let too_small = SimConfig {
        max_batch: 10,
        ..SimConfig::default()
    };
    let cases = [
        (
            fixed(
                400,
                r#"{"error":"invalid_sender","message":"sender not registered"}"#,
            ),
            1,
            "invalid_sender",
            "[sender]",
        ),
        (
            fixed(413, "request entity too large"),
            50,
            "too large",
            "batch_size",
        ),
        (too_small, 50, "invalid_request", "batch_size"),
    ];
    for (sim, batch_size, cause, fix) in cases {
        let gw = Gw {
            batch_size,
            ..Gw::default()
        };
        let env = Env::with(sim, gw.clone(), "").await;
        let seg = env.segment_csv("seg.csv", 0, 300);
        let id = env.campaign(&seg, "hello", &[]).await;
        let o = env.run(&["campaign", "run", &id]).await;
        assert_eq!(o.code, 1, "{cause}: {}", o.all());
        assert!(
            o.stderr.contains(cause) && o.stderr.contains(fix),
            "{}",
            o.all()
        );
        let st = env.status(&id).await;
        assert_eq!(st["status"], "FAILED", "{st}");
        assert_eq!((n(&st, "pending"), n(&st, "failed")), (300, 0), "{st}");
        crate::common::agree::assert_agrees(&env, &id).await;
        if cause == "invalid_request" {
            // Fixed in munja.toml: the same campaign now goes out whole.
            env.write_config(
                &Gw {
                    batch_size: 10,
                    ..gw
                },
                "",
            );
            let o = env.run(&["campaign", "run", &id]).await;
            assert_eq!(o.code, 0, "{}", o.all());
            crate::common::agree::assert_agrees(&env, &id).await;
            assert_eq!(env.sim.stats().accepted, 300);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rejection_for_many_recipients_in_a_row_pauses_the_run() {
    let sim = SimConfig {
        invalid_prefix: Some("010".into()),
        ..SimConfig::default()
    };
    let gw = Gw {
        concurrency: 2,
        ..Gw::default()
    };
    let env = Env::with(sim, gw, "max_consecutive_failures = 20").await;
    let seg = env.segment_csv("seg.csv", 0, 300);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr.contains("repeated_rejection") && o.stderr.contains("invalid_number"),
        "{}",
        o.all()
    );
    let st = env.status(&id).await;
    assert_eq!(st["status"], "STOPPED", "{st}");
    assert!(n(&st, "failed") >= 20, "{st}");
    assert!(n(&st, "pending") > 200, "the list was not walked: {st}");
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_sends_nothing_exits_non_zero_naming_the_leading_reasons() {
    let sim = SimConfig {
        invalid_prefix: Some("010".into()),
        ..SimConfig::default()
    };
    let env = Env::with(sim, Gw::default(), "max_consecutive_failures = 1000").await;
    let mut csv = String::from("phone,name\n");
    for i in 0..30 {
        let name = if i < 5 { "김😀" } else { "김민수" };
        csv.push_str(&format!("{},{name}\n", number(i)));
    }
    let seg = env.write("seg.csv", &csv);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("no message was sent"), "{}", o.all());
    assert!(
        o.stderr.contains("invalid_number 25, unencodable_char 5"),
        "{}",
        o.all()
    );
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (0, 30), "{st}");
    crate::common::agree::assert_agrees(&env, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_shown_at_default_verbosity() {
    let env = Env::with(
        SimConfig::default(),
        Gw {
            max_attempts: 2,
            ..Gw::default()
        },
        "max_consecutive_failures = 5",
    )
    .await;
    let seg = env.segment_csv("seg.csv", 0, 20);
    let id = env.campaign(&seg, "hello", &[]).await;
    // Nothing listens there any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cfg = std::fs::read_to_string(env.path("munja.toml")).unwrap();
    env.write("munja.toml", &cfg.replace(&env.sim.url(), &closed_url));
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr.contains("cannot connect to the gateway") && o.stderr.contains("refused"),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.matches("cannot connect").count() < 5,
        "not one line per request: {}",
        o.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optout_list_with_an_unbalanced_quote_is_refused_whole() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    // The quote opened on line 3 closes on line 6: read as CSV, lines 3-6 are one row whose
    // memo holds three other numbers.
    let text = "phone,memo\n\
                010-3000-0001,web form\n\
                010-3000-0002,\"web form\n\
                010-3000-0003,phone call\n\
                010-3000-0004,phone call\n\
                010-3000-0005,\"store\"\n\
                010-3000-0006,web form\n";
    let opt = env.write("optouts.csv", text);
    let o = env.run(&["optout", "import", opt.to_str().unwrap()]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(!o.stdout.contains("imported"), "{}", o.all());
    assert!(
        o.stderr.contains(
            "refused, nothing imported: 1 row(s) run over more than one line, so some lines of \
             this opt-out list cannot be read as one number each: lines 3-6."
        ),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains(
            "line 3: multiline_record (a quoted field opened on line 3 runs to line 6, so lines \
             3-6 read as one row: check line 3 for an unbalanced quote"
        ),
        "{}",
        o.all()
    );
    for i in 1..=6 {
        let p = format!("010-3000-000{i}");
        assert_eq!(env.run(&["optout", "check", &p]).await.code, 1, "{p}");
    }

    // Many such rows: the first five ranges are named.
    let mut many = String::from("phone,memo\n");
    for i in 0..7 {
        many.push_str(&format!(
            "010-3100-000{i},\"open\n010-3200-000{i},\"closed\"\n"
        ));
    }
    let f = env.write("many.csv", &many);
    let o = env.run(&["optout", "import", f.to_str().unwrap()]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains(
            "7 row(s) run over more than one line, so some lines of this opt-out list cannot \
             be read as one number each: lines 2-3, lines 4-5, lines 6-7, lines 8-9, lines \
             10-11 and 2 more."
        ),
        "{}",
        o.all()
    );
    assert_eq!(
        o.stderr.matches("multiline_record").count(),
        7,
        "{}",
        o.all()
    );
    assert_eq!(env.run(&["optout", "check", "010-3100-0000"]).await.code, 1);

    // Fixed, the same list imports all six, every line accounted for.
    let opt = env.write("optouts.csv", &text.replace("\"web form\n", "web form\n"));
    let o = env.ok(&["optout", "import", opt.to_str().unwrap()]).await;
    assert!(
        o.stdout.contains(
            "imported 6, already present 0, rejected 0 (UTF-8)\n\
             7 lines: 1 header, 6 imported, 0 already present, 0 rejected, 0 blank\n"
        ),
        "{}",
        o.all()
    );
    for i in 1..=6 {
        let p = format!("010-3000-000{i}");
        assert_eq!(env.run(&["optout", "check", &p]).await.code, 0, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_with_an_unbalanced_quote_accounts_for_every_line() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    env.write("templates/memo.txt", "{{ name }}: {{ memo }}");
    // 1,000 rows on lines 2-1001; line 12 opens a quote that line 21 closes.
    let mut seg = String::from("phone,name,memo\n");
    for i in 0..1000u64 {
        let line = i + 2;
        let memo = match line {
            12 => "\"web form".to_string(),
            21 => "\"VIP\"".to_string(),
            _ => format!("memo{line}"),
        };
        seg.push_str(&format!("{},고객{i},{memo}\n", number(i)));
    }
    let f = env.write("customers.csv", &seg);
    let o = env
        .ok(&["segment", "import", "s", f.to_str().unwrap()])
        .await;
    assert!(
        o.stdout.contains(
            "imported 990, merged duplicates 0, rejected 1 (UTF-8)\n\
             1001 lines: 1 header, 990 imported, 0 merged duplicates, 10 rejected, 0 blank\n"
        ),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains(
            "customers.csv line 12: multiline_record (a quoted field opened on line 12 runs to \
             line 21, so lines 12-21 read as one row"
        ),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains("segment s: 990 recipients"),
        "{}",
        o.all()
    );

    // No recipient's fields hold another customer's row.
    let o = env
        .ok(&[
            "template",
            "preview",
            "memo",
            "--segment",
            "s",
            "--limit",
            "2000",
            "--no-ad",
        ])
        .await;
    let bodies: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| !l.starts_with("──") && !l.starts_with('['))
        .collect();
    assert_eq!(bodies.len(), 990, "{}", o.stdout);
    for body in &bodies {
        let (name, memo) = body.split_once(": ").expect("name: memo");
        assert!(name.starts_with("고객") && !name.contains(','), "{body}");
        assert!(memo.starts_with("memo") && !memo.contains("010"), "{body}");
    }
    for i in 10..20 {
        assert!(!bodies.contains(&format!("고객{i}: memo{}", i + 2).as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_summaries_count_every_line_with_bom_crlf_and_blank_lines() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    // BOM, CRLF, blank lines before and after the header and between rows, a duplicate,
    // a bad row, and no final newline.
    let text = "\u{feff}\r\nphone,name\r\n\r\n010-4000-0001,a\r\n,\r\n010-4000-0002,b\r\n\
                +82 10-4000-0001,dup\r\nabc,bad\r\n\r\n010-4000-0003,c";
    let f = env.write("seg.csv", text);
    let o = env
        .ok(&["segment", "import", "s", f.to_str().unwrap()])
        .await;
    assert!(
        o.stdout.contains(
            "imported 3, merged duplicates 1, rejected 1 (UTF-8)\n\
             10 lines: 1 header, 3 imported, 1 merged duplicates, 1 rejected, 4 blank\n"
        ),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains("seg.csv line 8: invalid_number"),
        "{}",
        o.all()
    );

    let f = env.write("opt.csv", &format!("{text}\r\n\r\n"));
    let o = env.ok(&["optout", "import", f.to_str().unwrap()]).await;
    assert!(
        o.stdout.contains(
            "imported 3, already present 1, rejected 1 (UTF-8)\n\
             11 lines: 1 header, 3 imported, 1 already present, 1 rejected, 5 blank\n"
        ),
        "{}",
        o.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_field_with_two_numbers_is_a_rejected_row() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    let text = "phone,memo\n\
                010-5000-0001 010-5000-0002,space\n\
                010-5000-0003;010-5000-0004,semicolon\n\
                \"010-5000-0005,010-5000-0006\",comma\n\
                010-5000-0007/010-5000-0008,slash\n\
                010-5000-0009,one\n";
    let f = env.write("opt.csv", text);
    let o = env.ok(&["optout", "import", f.to_str().unwrap()]).await;
    assert!(
        o.stdout.contains(
            "imported 1, already present 0, rejected 4 (UTF-8)\n\
             6 lines: 1 header, 1 imported, 0 already present, 4 rejected, 0 blank\n"
        ),
        "{}",
        o.all()
    );
    for line in 2..=5 {
        assert!(
            o.stderr
                .contains(&format!("opt.csv line {line}: multiple_numbers (010-****-")),
            "{}",
            o.all()
        );
    }
    assert!(
        !o.stderr.contains("5000-000"),
        "numbers masked: {}",
        o.all()
    );
    for i in 1..=8 {
        let p = format!("010-5000-000{i}");
        assert_eq!(env.run(&["optout", "check", &p]).await.code, 1, "{p}");
    }
    assert_eq!(env.run(&["optout", "check", "010-5000-0009"]).await.code, 0);

    let f = env.write("seg.csv", text);
    let o = env
        .ok(&["segment", "import", "s", f.to_str().unwrap()])
        .await;
    assert!(
        o.stdout
            .contains("imported 1, merged duplicates 0, rejected 4 (UTF-8)"),
        "{}",
        o.all()
    );
    assert_eq!(
        o.stderr.matches("multiple_numbers").count(),
        4,
        "{}",
        o.all()
    );
}

#[test]
fn help_of_run_and_optout_import_tells_the_hardened_behaviour() {
    let help = |args: &[&str]| {
        let o = std::process::Command::new(crate::common::BIN)
            .args(args)
            .arg("--help")
            .output()
            .expect("munja --help");
        assert!(o.status.success(), "{args:?}");
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let run = help(&["campaign", "run"]);
    assert!(run.contains("1 FAILED or nothing sent"), "{run}");
    assert!(run.contains("a second one abandons them"), "{run}");
    let import = help(&["optout", "import"]);
    assert!(
        import.contains("is refused whole, nothing imported"),
        "{import}"
    );
}
