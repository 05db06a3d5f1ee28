//! The simulator's acceptance store: accepted refs and (campaign, number) pairs as 64-bit
//! hashes in [`CompactSet`]s (sorted arrays, about 8 bytes a key), the counters that prove "no
//! message was sent twice", and the per-second ring behind `max_per_second`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher, Hasher};

use super::SECONDS_KEPT;

pub(super) fn hash_ref(msg_ref: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(msg_ref.as_bytes());
    h.finish()
}

fn pair_key(campaign: u32, to: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u32(campaign);
    h.write(to.as_bytes());
    h.finish()
}

#[derive(Default)]
pub(super) struct Store {
    /// Hashes of accepted refs.
    pub(super) refs: CompactSet,
    /// `pair_key(campaign index, to)` of every accepted message.
    pairs: CompactSet,
    /// Pair keys already counted in `numbers_accepted_twice`.
    doubles: HashSet<u64, IdentityBuild>,
    /// Campaign name → index used in pair keys.
    campaigns: HashMap<String, u32>,
    pub(super) accepted: u64,
    pub(super) duplicate_replays: u64,
    pub(super) distinct_numbers: u64,
    pub(super) numbers_accepted_twice: u64,
    pub(super) max_per_second: u64,
    /// Ring of `(unix second, count)`, slot = second % SECONDS_KEPT.
    seconds: Vec<(i64, u64)>,
}

impl Store {
    /// Records an accepted message; returns its ref hash and whether it was a replay.
    pub(super) fn record(&mut self, msg_ref: &str, campaign: &str, to: &str) -> (u64, bool) {
        let ref_hash = hash_ref(msg_ref);
        if !self.refs.insert(ref_hash) {
            self.duplicate_replays += 1;
            return (ref_hash, true);
        }
        self.accepted += 1;
        let campaign_count = self.campaigns.len();
        let idx = match self.campaigns.get(campaign) {
            Some(&idx) => idx,
            None => {
                let idx = u32::try_from(campaign_count).unwrap_or(u32::MAX);
                self.campaigns.insert(campaign.to_owned(), idx);
                idx
            }
        };
        let key = pair_key(idx, to);
        if !self.pairs.insert(key) {
            // A second ref for a (campaign, number) that already got a message.
            if self.doubles.insert(key) {
                self.numbers_accepted_twice += 1;
            }
        } else {
            let seen_elsewhere = (0..self.campaigns.len() as u32)
                .filter(|&other| other != idx)
                .any(|other| self.pairs.contains(pair_key(other, to)));
            if !seen_elsewhere {
                self.distinct_numbers += 1;
            }
        }
        (ref_hash, false)
    }

    pub(super) fn count_second(&mut self, now: i64, n: u64) {
        if n == 0 {
            return;
        }
        if self.seconds.is_empty() {
            self.seconds = vec![(0, 0); SECONDS_KEPT];
        }
        let slot = &mut self.seconds[now.rem_euclid(SECONDS_KEPT as i64) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += n;
        self.max_per_second = self.max_per_second.max(slot.1);
    }

    pub(super) fn recent_seconds(&self, now: i64) -> Vec<(i64, u64)> {
        let oldest = now - SECONDS_KEPT as i64 + 1;
        let mut out: Vec<(i64, u64)> = self
            .seconds
            .iter()
            .copied()
            .filter(|&(sec, n)| n > 0 && sec >= oldest && sec <= now)
            .collect();
        out.sort_unstable();
        out
    }
}

/// `Hasher` for keys that already are uniform 64-bit hashes.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdentityBuild = BuildHasherDefault<IdentityHasher>;

/// A set of 64-bit hashes in about 8 bytes each: a sorted array plus a small hash set of
/// recent inserts, merged into the array when it reaches 1/16 of its size (amortised O(1)
/// per insert, no transient copy of the whole set).
#[derive(Default)]
pub(super) struct CompactSet {
    pub(super) sorted: Vec<u64>,
    recent: HashSet<u64, IdentityBuild>,
}

impl CompactSet {
    pub(super) const MIN_RECENT: usize = 4096;

    pub(super) fn contains(&self, key: u64) -> bool {
        self.recent.contains(&key) || self.sorted.binary_search(&key).is_ok()
    }

    /// Inserts `key`; `false` when it was already present.
    pub(super) fn insert(&mut self, key: u64) -> bool {
        if self.contains(key) {
            return false;
        }
        self.recent.insert(key);
        if self.recent.len() >= Self::MIN_RECENT.max(self.sorted.len() / 16) {
            self.merge();
        }
        true
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Merges `recent` into `sorted` in place, from the back.
    fn merge(&mut self) {
        let mut tail: Vec<u64> = self.recent.drain().collect();
        tail.sort_unstable();
        let mut read = self.sorted.len();
        self.sorted.resize(read + tail.len(), 0);
        let mut write = self.sorted.len();
        let mut pending = tail.len();
        while pending > 0 {
            write -= 1;
            if read > 0 && self.sorted[read - 1] > tail[pending - 1] {
                read -= 1;
                self.sorted[write] = self.sorted[read];
            } else {
                pending -= 1;
                self.sorted[write] = tail[pending];
            }
        }
    }
}
