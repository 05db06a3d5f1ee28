//! Two gateways in failover order: A down (connection refused, then 503s), B healthy. Every
//! message goes out exactly once, A's circuit breaker opens and, once A heals, closes again after
//! its cooldown so traffic returns to it; every attempt records its gateway.

use std::net::SocketAddr;

use munja::tools::sim::{self, SimConfig};

use super::{add_gateway, refusing_port, sql, wait_until};
use crate::common::{Env, Gw, Out, n};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_gateway_fails_over_and_comes_back_after_its_cooldown() {
    // B ("sim", the default gateway of the test config) is slow enough for A's phases to show.
    let gw = Gw::limited(40, 4, 4);
    let env = Env::with(SimConfig::default(), gw, "").await;
    let (a_socket, a_port) = refusing_port();
    add_gateway(
        &env,
        &format!(
            "name = \"a\"\nkind = \"http-json\"\nurl = \"http://127.0.0.1:{a_port}\"\n\
             rate_per_sec = 1000\nburst = 20\nconcurrency = 4\ntimeout_ms = 1000\n\
             breaker_failures = 3\nbreaker_cooldown_secs = 1\n"
        ),
    );
    let seg = env.segment_csv("seg.csv", 0, 300);
    let id = env
        .campaign(&seg, "hello", &["--gateway", "a", "--gateway", "sim"])
        .await;
    let mut run = env.cmd(&["campaign", "run", &id]);
    let mut child = tokio::task::spawn_blocking(move || run.output());

    // Phase 1: nothing listens on A's port; B takes the traffic.
    let t0 = std::time::Instant::now();
    while env.sim.stats().accepted < 20 {
        if child.is_finished() {
            let out = (&mut child).await.expect("join").expect("munja run");
            panic!("munja ended before A came up:\n{}", Out::from(out).all());
        }
        assert!(t0.elapsed().as_secs() < 30, "B never took traffic");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Phase 2: A answers, but only 503s.
    drop(a_socket);
    let a_cfg = SimConfig {
        fail_rate: 1.0,
        ..SimConfig::default()
    };
    let a = sim::spawn(SocketAddr::from(([127, 0, 0, 1], a_port)), a_cfg)
        .await
        .expect("A on its port");
    wait_until("a probe to meet A's 503", 30, || a.stats().faults_503 >= 1).await;
    // Phase 3: A heals; after its cooldown a probe closes the breaker and traffic returns.
    a.set_faults(0.0, 0.0, 0.0);
    let out = child.await.expect("join").expect("munja run");
    let out = Out::from(out);
    assert_eq!(out.code, 0, "{}", out.all());

    let (sa, sb) = (a.stats(), env.sim.stats());
    assert!(
        sa.accepted > 0,
        "A's breaker closed again and took traffic: {sa:?}"
    );
    assert!(sb.accepted > 0, "B took the traffic while A was down");
    assert_eq!(sa.accepted + sb.accepted, 300, "A {sa:?}\nB {sb:?}");
    assert_eq!(sa.distinct_numbers + sb.distinct_numbers, 300);
    assert_eq!(
        (sa.numbers_accepted_twice, sb.numbers_accepted_twice),
        (0, 0)
    );
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 300, "{st}");
    // The audit says through whom each message went.
    let audit = env.audit_json(&id).await;
    let through = |g: &str| audit.iter().filter(|r| r["gateway"] == g).count() as u64;
    assert_eq!((through("a"), through("sim")), (sa.accepted, sb.accepted));

    if env.pg.is_none() {
        let rows = sql(
            &env,
            "SELECT COALESCE(gateway, 'none'), COUNT(*) FROM attempts GROUP BY 1 ORDER BY 1",
        )
        .await;
        let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            names,
            vec!["a", "sim"],
            "every attempt names its gateway: {rows:?}"
        );
        let sent_at = sql(
            &env,
            "SELECT gateway, COUNT(*) FROM messages WHERE state = 'sent' GROUP BY 1 ORDER BY 1",
        )
        .await;
        let counts: Vec<u64> = sent_at.iter().map(|r| r[1].parse().unwrap_or(0)).collect();
        assert_eq!(counts, vec![sa.accepted, sb.accepted], "{sent_at:?}");
    }
}

/// A second simulator as gateway `name` (http-json) in the test's munja.toml.
async fn second_sim(env: &Env, name: &str, cfg: SimConfig, keys: &str) -> sim::SimHandle {
    let s = sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .expect("second simulator");
    add_gateway(
        env,
        &format!(
            "name = \"{name}\"\nkind = \"http-json\"\nurl = \"{}\"\nrate_per_sec = 5000\n\
             burst = 100\nconcurrency = 8\n{keys}",
            s.url()
        ),
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_shares_traffic_by_weight_and_sends_each_message_once() {
    let env = Env::with(SimConfig::default(), Gw::default(), "").await;
    add_gateway_weight(&env, 1);
    let b = second_sim(&env, "b", SimConfig::default(), "weight = 3\n").await;
    let seg = env.segment_csv("seg.csv", 0, 800);
    let id = env
        .campaign(
            &seg,
            "hello",
            &["--gateway", "sim", "--gateway", "b", "--split"],
        )
        .await;
    env.ok(&["campaign", "run", &id]).await;
    let (sa, sb) = (env.sim.stats(), b.stats());
    assert_eq!(sa.accepted + sb.accepted, 800, "A {sa:?}\nB {sb:?}");
    assert_eq!(sa.distinct_numbers + sb.distinct_numbers, 800);
    // Weights 1:3 of 800: exactly a quarter and three quarters.
    assert_eq!((sa.accepted, sb.accepted), (200, 600), "A {sa:?}\nB {sb:?}");
    let st = env.status(&id).await;
    assert_eq!(st["split"], true);
    assert_eq!(st["gateways"], serde_json::json!(["sim", "b"]));

    // --split needs two gateways.
    let o = env.create("x", "seg", "hello", &["--split"]).await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("--split"), "{}", o.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_shares_are_exact_over_a_campaign_killed_and_resumed() {
    // Three gateways 5:3:2; 1003 messages in chunks of 37; the first run killed mid-way.
    let gw = Gw {
        rate: 400,
        burst: 20,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw, "chunk_size = 37").await;
    add_gateway_weight(&env, 5);
    let b = second_sim(&env, "b", SimConfig::default(), "weight = 3\n").await;
    let c = second_sim(&env, "c", SimConfig::default(), "weight = 2\n").await;
    let total = 1003;
    let seg = env.segment_csv("seg.csv", 0, total);
    let id = env
        .campaign(
            &seg,
            "hello",
            &[
                "--gateway",
                "sim",
                "--gateway",
                "b",
                "--gateway",
                "c",
                "--split",
            ],
        )
        .await;
    let mut child = env.spawn_run(&id, &[]);
    let accepted = || env.sim.stats().accepted + b.stats().accepted + c.stats().accepted;
    wait_until("300 messages accepted", 60, || accepted() >= 300).await;
    child.kill().expect("SIGKILL the run");
    child.wait().expect("reap");
    assert!(accepted() < total, "killed mid-way: {}", accepted());
    env.ok(&["campaign", "run", &id]).await;

    let got = [env.sim.stats(), b.stats(), c.stats()];
    assert_eq!(
        got.iter().map(|s| s.distinct_numbers).sum::<u64>(),
        total,
        "{got:?}"
    );
    assert!(got.iter().all(|s| s.numbers_accepted_twice == 0), "{got:?}");
    for (s, weight) in got.iter().zip([5u64, 3, 2]) {
        let share = total as f64 * weight as f64 / 10.0;
        assert!(
            (s.distinct_numbers as f64 - share).abs() < 1.0,
            "weight {weight}: {} messages, share {share}: {got:?}",
            s.distinct_numbers
        );
    }
    // The audit says the same.
    let audit = env.audit_json(&id).await;
    for (name, s) in ["sim", "b", "c"].iter().zip(&got) {
        let through = audit.iter().filter(|r| r["gateway"] == *name).count() as u64;
        assert_eq!(through, s.distinct_numbers, "{name}");
    }
}

/// Sets `weight` on the test config's first gateway (`sim`).
fn add_gateway_weight(env: &Env, weight: u32) {
    let text = std::fs::read_to_string(env.path("munja.toml")).expect("config");
    let text = text.replacen(
        "kind = \"http-json\"\n",
        &format!("kind = \"http-json\"\nweight = {weight}\n"),
        1,
    );
    env.write("munja.toml", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_open_a_breaker_for_the_run_and_the_other_gateway_sends() {
    let env = Env::with(SimConfig::default(), Gw::default(), "").await;
    // A demands a key munja does not have: 401 on every request.
    let a_cfg = SimConfig {
        api_key: Some("the-right-key".into()),
        ..SimConfig::default()
    };
    let a = second_sim(&env, "a", a_cfg, "").await;
    let seg = env.segment_csv("seg.csv", 0, 50);
    let id = env
        .campaign(&seg, "hello", &["--gateway", "a", "--gateway", "sim"])
        .await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr
            .contains("circuit breaker open for the rest of the run")
            || a.stats().unauthorized >= 1,
        "{}",
        o.all()
    );
    assert_eq!(a.stats().accepted, 0);
    assert_eq!(env.sim.stats().accepted, 50);
    assert_eq!(n(&env.status(&id).await, "sent"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_pauses_gateway_unhealthy_only_when_every_gateway_is_open() {
    let env = Env::with(SimConfig::default(), Gw::default(), "").await;
    let (sa, pa) = refusing_port();
    let (sb, pb) = refusing_port();
    for (name, port) in [("a", pa), ("b", pb)] {
        add_gateway(
            &env,
            &format!(
                "name = \"{name}\"\nkind = \"http-json\"\nurl = \"http://127.0.0.1:{port}\"\n\
                 rate_per_sec = 1000\nbreaker_failures = 2\nbreaker_cooldown_secs = 60\n"
            ),
        );
    }
    let seg = env.segment_csv("seg.csv", 0, 20);
    let id = env
        .campaign(&seg, "hello", &["--gateway", "a", "--gateway", "b"])
        .await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "STOPPED:\n{}", o.all());
    assert!(o.stderr.contains("gateway_unhealthy"), "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 0);
    assert_eq!(n(&st, "pending") + n(&st, "failed"), 20, "{st}");
    drop((sa, sb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_doubt_at_one_gateway_never_moves_to_another_without_proof() {
    let env = Env::with(SimConfig::default(), Gw::default(), "").await;
    // A takes every message and never answers in time, and cannot be asked.
    let a_cfg = SimConfig {
        timeout_rate: 1.0,
        stall_ms: 3_000,
        lookups_unavailable: true,
        ..SimConfig::default()
    };
    let a = second_sim(
        &env,
        "a",
        a_cfg,
        "timeout_ms = 300\nbreaker_failures = 2\nbreaker_cooldown_secs = 600\n",
    )
    .await;
    let seg = env.segment_csv("seg.csv", 0, 100);
    let id = env
        .campaign(&seg, "hello", &["--gateway", "a", "--gateway", "sim"])
        .await;
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "STOPPED with messages in doubt:\n{}", o.all());
    let st = env.status(&id).await;
    let (sent, in_doubt) = (n(&st, "sent"), n(&st, "in_doubt"));
    let (sa, sb) = (a.stats(), env.sim.stats());
    assert!(sa.accepted > 0 && in_doubt > 0, "A {sa:?}\n{st}");
    assert_eq!(sent + in_doubt, 100, "{st}");
    // Nothing A may have was sent to B: each number is at one gateway only.
    assert_eq!(
        sa.distinct_numbers + sb.distinct_numbers,
        100,
        "A {sa:?}\nB {sb:?}"
    );
    assert_eq!(sb.accepted as i64, sent);

    // Once A can be asked, the next run finds them there: sent, never resent anywhere.
    a.set_lookups(true);
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "in_doubt")), (100, 0), "{st}");
    let (sa, sb) = (a.stats(), env.sim.stats());
    assert_eq!(sa.distinct_numbers + sb.distinct_numbers, 100);
    let audit = env.audit_json(&id).await;
    let at_a = audit.iter().filter(|r| r["gateway"] == "a").count() as u64;
    assert_eq!(
        at_a, sa.distinct_numbers,
        "the audit says they went through A"
    );
}
