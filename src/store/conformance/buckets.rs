//! Conformance of the shared rate budget (`take_tokens`): a new bucket grants its capacity, an
//! empty one grants nothing until the database clock refills it, a bucket holding fewer than
//! the tokens a request needs grants none and keeps them, and concurrent takers (as from
//! several workers or campaigns) never get more than the bucket held.

use super::*;

conformance!(
    a_new_bucket_grants_its_burst_and_then_only_what_the_rate_refills,
    concurrent_takers_never_share_a_token,
    a_bucket_with_fewer_tokens_than_needed_grants_none_and_keeps_them,
);

/// [`CampaignStore::take_tokens`] of `[need, want, rate, capacity]` from `gateway`'s bucket.
async fn take(s: &Arc<dyn Store>, gateway: &str, [need, want, rate, capacity]: [u32; 4]) -> u32 {
    let take = Take {
        need,
        want,
        rate,
        capacity,
    };
    s.take_tokens(gateway, take).await.expect("take").tokens
}

/// At 1 token a second a slow test machine adds at most a few tokens between two calls; the
/// store's clock, moved forward, stands for the time that refills the bucket.
async fn a_new_bucket_grants_its_burst_and_then_only_what_the_rate_refills(s: Arc<dyn Store>) {
    assert_eq!(take(&s, "gw", [0, 8, 1, 10]).await, 8);
    let rest = take(&s, "gw", [0, 8, 1, 10]).await;
    assert!((2..=4).contains(&rest), "granted {rest} of the 2 left");
    let empty = take(&s, "gw", [0, 8, 1, 10]).await;
    assert!(empty <= 2, "an emptied bucket granted {empty}");
    s.clock().advance(std::time::Duration::from_secs(5));
    let refilled = take(&s, "gw", [0, 100, 1, 10]).await;
    assert!(
        (5..=7).contains(&refilled),
        "5 s at 1/s refilled {refilled}"
    );
    // A long idle time fills the bucket to its burst, never beyond.
    s.clock().advance(std::time::Duration::from_secs(600));
    assert_eq!(take(&s, "gw", [0, 100, 1, 10]).await, 10);
    // Another gateway has its own full bucket; asking for 0 takes nothing.
    assert_eq!(take(&s, "other", [0, 0, 1, 10]).await, 0);
    assert_eq!(take(&s, "other", [0, 100, 1, 10]).await, 10);
}

async fn concurrent_takers_never_share_a_token(s: Arc<dyn Store>) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let s = s.clone();
        set.spawn(async move {
            s.take_tokens(
                "shared",
                Take {
                    need: 0,
                    want: 7,
                    rate: 1,
                    capacity: 20,
                },
            )
            .await
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r.expect("join").expect("take").tokens;
    }
    // 20 in the bucket, 42 asked for: at most what the bucket held (plus a refill of a few
    // seconds at 1 token a second on a slow machine), and all of it handed out.
    assert!((20..=23).contains(&total), "granted {total} tokens in all");
}

async fn a_bucket_with_fewer_tokens_than_needed_grants_none_and_keeps_them(s: Arc<dyn Store>) {
    assert_eq!(take(&s, "gw", [4, 8, 1, 10]).await, 8);
    // 2 left (a slow machine may add one or two): a request needing 5 gets nothing.
    assert_eq!(take(&s, "gw", [5, 5, 1, 10]).await, 0);
    let kept = take(&s, "gw", [1, 5, 1, 10]).await;
    assert!((2..=4).contains(&kept), "the 2 left were kept: {kept}");
    s.clock().advance(std::time::Duration::from_secs(5));
    assert_eq!(take(&s, "gw", [5, 5, 1, 10]).await, 5);
}
