//! `--split`: each gateway's exact share of a campaign's messages by its `weight`.
//!
//! Messages are dealt out one at a time by the quota method (Balinski and Young): among the
//! gateways whose count would not pass the upper end of their share, the next message goes to
//! the one with the highest `weight / (count + 1)`. After every message, so at the end of every
//! chunk and of the campaign, each gateway's count is within one message of
//! `messages × weight / total weight` (never a whole message off). A chunk gets the next shares
//! of that sequence, so what a chunk leaves over is carried into the next. (Largest remainder
//! per chunk, the obvious method, drifts past one message with three or more gateways: seen
//! 1.04 with eight in a simulation.)
//!
//! The state is the counts so far: the run starts from what the campaign's earlier runs
//! recorded per gateway ([`Shares::seeded`]), so a stopped and resumed campaign stays exact too.
//! With several workers each worker deals its own messages: each is exact, their sum is within
//! one message per worker.

/// Messages dealt to each gateway so far.
#[derive(Debug, Clone)]
pub(super) struct Shares {
    weights: Vec<u64>,
    counts: Vec<u64>,
    total: u64,
}

impl Shares {
    /// No message dealt yet; `weights` in the campaign's gateway order (each at least 1).
    pub(super) fn new(weights: &[u32]) -> Shares {
        Shares::seeded(weights, &vec![0; weights.len()])
    }

    /// Starting from `counts` already dealt (one per gateway, in the same order).
    pub(super) fn seeded(weights: &[u32], counts: &[u64]) -> Shares {
        let counts: Vec<u64> = (0..weights.len())
            .map(|i| counts.get(i).copied().unwrap_or(0))
            .collect();
        Shares {
            weights: weights.iter().map(|&w| u64::from(w.max(1))).collect(),
            total: counts.iter().sum(),
            counts,
        }
    }

    /// The gateway of the next message.
    pub(super) fn next(&mut self) -> usize {
        let sum: u64 = self.weights.iter().sum();
        let after = u128::from(self.total + 1);
        // Eligible: count + 1 <= ceil(share after this message), i.e. count < share.
        let eligible = |i: usize| {
            u128::from(self.counts[i]) * u128::from(sum) < after * u128::from(self.weights[i])
        };
        let mut best: Option<usize> = None;
        for i in (0..self.weights.len()).filter(|&i| eligible(i)) {
            // weight_i / (count_i + 1) > weight_b / (count_b + 1), in integers.
            let better = best.is_none_or(|b| {
                u128::from(self.weights[i]) * u128::from(self.counts[b] + 1)
                    > u128::from(self.weights[b]) * u128::from(self.counts[i] + 1)
            });
            if better {
                best = Some(i);
            }
        }
        // Some gateway is always below its share (the shares add up to the total).
        let i = best.unwrap_or(0);
        self.counts[i] += 1;
        self.total += 1;
        i
    }

    #[cfg(test)]
    fn counts(&self) -> &[u64] {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::Shares;

    /// How far gateway `i`'s count is from its exact share, in messages.
    fn off(s: &Shares, i: usize) -> f64 {
        let sum: u64 = s.weights.iter().sum();
        let share = s.total as f64 * s.weights[i] as f64 / sum as f64;
        (s.counts()[i] as f64 - share).abs()
    }

    #[test]
    fn every_chunk_leaves_each_gateway_within_one_message_of_its_share() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..300 {
            let n = rng.random_range(2..=8);
            let scale = [3, 10, 100, 1000][rng.random_range(0..4)];
            let weights: Vec<u32> = (0..n).map(|_| rng.random_range(1..=scale)).collect();
            let mut s = Shares::new(&weights);
            for _ in 0..40 {
                let chunk = rng.random_range(1..=120);
                for _ in 0..chunk {
                    s.next();
                }
                for i in 0..n {
                    assert!(
                        off(&s, i) < 1.0,
                        "seed {seed}: weights {weights:?}, after {} messages gateway {i} has {} \
                         ({:.3} off)",
                        s.total,
                        s.counts()[i],
                        off(&s, i)
                    );
                }
            }
        }
    }

    #[test]
    fn exact_shares_when_they_are_whole_numbers() {
        let mut s = Shares::new(&[1, 3]);
        for _ in 0..800 {
            s.next();
        }
        assert_eq!(s.counts(), &[200, 600]);
        // Resumed from what was dealt, it carries on as if never stopped.
        let mut a = Shares::new(&[5, 3, 2]);
        let mut b = Shares::new(&[5, 3, 2]);
        for _ in 0..37 {
            a.next();
            b.next();
        }
        let mut resumed = Shares::seeded(&[5, 3, 2], b.counts());
        for _ in 0..63 {
            assert_eq!(a.next(), resumed.next());
        }
        assert_eq!(resumed.counts(), &[50, 30, 20]);
    }
}
