//! A role's spend over a rolling window, in one-second buckets. Pure; time is passed in
//! (unix milliseconds), so tests drive it with an injected clock.

use std::collections::VecDeque;

/// Spend per unix second, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    buckets: VecDeque<(u64, f64)>,
}

impl Ledger {
    /// Adds `amount` at `now_ms`.
    pub fn charge(&mut self, now_ms: u64, amount: f64) {
        self.charge_second(now_ms / 1000, amount);
    }

    /// Adds `amount` to the bucket of unix second `sec` (a correction may land in an
    /// older bucket; one that has left every window is dropped by [`Self::prune`]).
    pub fn charge_second(&mut self, sec: u64, amount: f64) {
        match self.buckets.iter_mut().rev().find(|(s, _)| *s <= sec) {
            Some((s, v)) if *s == sec => *v += amount,
            _ => {
                let at = self.buckets.partition_point(|(s, _)| *s < sec);
                self.buckets.insert(at, (sec, amount));
            }
        }
    }

    /// Spend in the `window_s` seconds ending at `now_ms` (the current second included).
    pub fn spend(&self, now_ms: u64, window_s: u64) -> f64 {
        let now = now_ms / 1000;
        let from = now.saturating_sub(window_s.saturating_sub(1));
        self.buckets
            .iter()
            .filter(|(s, _)| *s >= from && *s <= now)
            .map(|(_, v)| v)
            .sum()
    }

    /// Drops buckets older than the window.
    pub fn prune(&mut self, now_ms: u64, window_s: u64) {
        let from = (now_ms / 1000).saturating_sub(window_s.saturating_sub(1));
        while self.buckets.front().is_some_and(|(s, _)| *s < from) {
            self.buckets.pop_front();
        }
    }

    /// The buckets, oldest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.buckets.iter().copied()
    }

    /// The spend of the `window_s` seconds ending at `now_ms`, in at most
    /// [`PERSISTED_BUCKETS`] buckets of `window_s / PERSISTED_BUCKETS` seconds (rounded
    /// up), each keyed by its first unix second: what the agent persists, so a row's size
    /// does not grow with the window. Reloaded with [`Self::charge_second`], a spend moves
    /// back by less than one such bucket (1 minute of a one-hour window), which makes it
    /// leave the window at most that much early.
    pub fn coarse(&self, now_ms: u64, window_s: u64) -> Vec<(u64, f64)> {
        let width = window_s.div_ceil(PERSISTED_BUCKETS).max(1);
        let now = now_ms / 1000;
        let from = now.saturating_sub(window_s.saturating_sub(1));
        let mut out: Vec<(u64, f64)> = Vec::new();
        let mut last_key = None;
        for (s, v) in self.buckets.iter().filter(|(s, _)| *s >= from && *s <= now) {
            let key = s - s % width;
            match out.last_mut() {
                Some((_, acc)) if last_key == Some(key) => *acc += v,
                _ => out.push((key.max(from), *v)),
            }
            last_key = Some(key);
        }
        out
    }
}

/// Buckets of a persisted ledger at most ([`Ledger::coarse`]).
pub const PERSISTED_BUCKETS: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_window_persists_in_sixty_buckets() {
        let mut l = Ledger::default();
        // One charge a second for an hour.
        for sec in 0..3600 {
            l.charge_second(100_000 + sec, 1.0);
        }
        let now_ms = (100_000 + 3599) * 1000;
        let c = l.coarse(now_ms, 3600);
        assert!(c.len() <= 61, "{} buckets", c.len());
        assert_eq!(c.iter().map(|(_, v)| v).sum::<f64>(), 3600.0);
        let mut back = Ledger::default();
        for (s, v) in &c {
            back.charge_second(*s, *v);
        }
        assert_eq!(back.spend(now_ms, 3600), 3600.0);
        // A minute later at most a minute and a bucket's worth has left the window.
        let later = back.spend(now_ms + 60_000, 3600);
        assert!((3480.0..=3540.0).contains(&later), "{later}");
    }

    #[test]
    fn rolling_window() {
        let mut l = Ledger::default();
        l.charge(10_000, 5.0);
        l.charge(10_500, 1.0);
        l.charge(12_000, 2.0);
        assert_eq!(l.spend(12_000, 3), 8.0);
        assert_eq!(l.spend(12_999, 2), 2.0);
        assert_eq!(l.spend(13_000, 3), 2.0);
        l.charge_second(11, 4.0); // a late correction
        assert_eq!(l.spend(12_000, 3), 12.0);
        assert_eq!(l.coarse(12_000, 3), vec![(10, 6.0), (11, 4.0), (12, 2.0)]);
        l.prune(14_000, 3);
        assert_eq!(l.buckets().count(), 1);
        assert_eq!(l.spend(60_000, 3), 0.0);
    }
}
