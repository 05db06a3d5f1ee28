//! The gateway's rate budget across runs: five `campaign run`s of five campaigns at once on
//! one gateway, counted by the simulator per wall-clock second of acceptance. No second may
//! see more than `rate_per_sec + burst`, whatever the runs hold in their unspent slices (on
//! the backend `MUNJA_TEST_BACKEND` names).

use std::process::Child;
use std::time::Instant;

use munja::tools::sim::SimConfig;

use crate::common::{Env, Gw, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_runs_on_one_gateway_never_exceed_rate_plus_burst_in_any_second() {
    let (rate, burst) = (100_u64, 10_u64);
    let gw = Gw {
        rate: rate as u32,
        burst: burst as u32,
        concurrency: 8,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw, "chunk_size = 20").await;
    let per_campaign = 120_u64;
    let mut ids = vec![
        env.campaign(&env.segment_csv("c0.csv", 0, per_campaign), "hello", &[])
            .await,
    ];
    for i in 1..5 {
        let csv = env.segment_csv(&format!("c{i}.csv"), i * 1000, per_campaign);
        ids.push(env.another_campaign(&format!("c{i}"), &csv, "hello").await);
    }
    let t = Instant::now();
    let runs: Vec<Child> = ids.iter().map(|id| env.spawn_run(id, &[])).collect();
    for child in runs {
        let o = wait(child).await;
        assert_eq!(o.code, 0, "{}", o.all());
    }
    let took = t.elapsed().as_secs_f64();
    let s = env.sim.stats();
    let total = 5 * per_campaign;
    assert_eq!(s.accepted, total);
    assert_eq!(s.numbers_accepted_twice, 0);
    eprintln!("sent {total} in {took:.2}s; per second: {:?}", s.per_second);
    assert!(
        s.max_per_second <= rate + burst,
        "a wall-clock second saw {} messages (rate {rate} + burst {burst}): {:?}",
        s.max_per_second,
        s.per_second
    );
    // The budget is shared, not five budgets: the runs together took about total / rate.
    assert!(
        took >= (total - burst) as f64 / rate as f64,
        "sent {total} in {took:.2}s, faster than the shared {rate}/s"
    );
    for id in &ids {
        assert_eq!(env.status(id).await["status"], "COMPLETED");
    }
}
