//! The total-locks rule (seed 002, "Total Locks … Investigate lock contention"): the lock
//! entries of the cluster (`pg_locks` rows, granted and awaited; PostgreSQL docs, section
//! 54.12 "pg_locks") against a warning and a critical count.
//!
//! By default the counts follow the server's lock table, so the rule means the same on a
//! small and a large server: the shared lock table is sized for
//! `max_locks_per_transaction × (max_connections + max_prepared_transactions)` objects
//! (docs, section 20.12 "Lock Management"; PostgreSQL 17+ also counts background processes
//! in, so this capacity is a lower bound), and a transaction that needs a slot past the
//! table's end fails with "out of shared memory" (53200). Warning at 50 %, critical at 80 %
//! of that capacity. The seed's fixed counts (50 and 100, written for a small server) can be
//! set instead with `warn` and `crit`.

use serde::Deserialize;

use super::{
    config::Threshold,
    state::{Active, Severity},
};
use crate::health::Board;

/// The rule's name, as in `alerts/pgmon-rules.yml`.
pub const ALERTNAME: &str = "PostgresTooManyLocks";
/// The gauge compared (`pg_locks` rows) and the lock table's capacity the ratios apply to,
/// as the fast health loop exports them.
pub use crate::health::fast::{LOCK_CAPACITY_METRIC as CAPACITY, LOCKS_METRIC as METRIC};

/// `alerts.total_locks`: lock entries (`pg_locks` rows, granted or awaited) at or above a
/// warning and a critical count. Each count is `warn`/`crit` when given, else the ratio of
/// the lock table's capacity (`pgmon_lock_table_capacity`, max_locks_per_transaction ×
/// (max_connections + max_prepared_transactions)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TotalLocks {
    /// Warning at or above this many lock entries (none by default: `warn_ratio` of the
    /// capacity). Seed 002 says 50.
    pub warn: Option<f64>,
    /// Critical at or above this many (none by default: `crit_ratio` of the capacity).
    /// Seed 002 says 100.
    pub crit: Option<f64>,
    /// Warning at or above this share of the lock table's capacity, when `warn` is not set
    /// (default 0.5).
    pub warn_ratio: f64,
    /// Critical at or above this share, when `crit` is not set (default 0.8).
    pub crit_ratio: f64,
    /// Seconds the count must stay high before the alert fires (default 60: a DDL on a
    /// partitioned table or a pg_dump takes many locks for a moment).
    pub for_seconds: u64,
}

impl Default for TotalLocks {
    fn default() -> Self {
        Self {
            warn: None,
            crit: None,
            warn_ratio: 0.5,
            crit_ratio: 0.8,
            for_seconds: 60,
        }
    }
}

impl TotalLocks {
    /// The warning and critical counts for a lock table of `capacity` objects.
    pub fn threshold(&self, capacity: f64) -> Threshold {
        Threshold {
            warn: self.warn.unwrap_or(self.warn_ratio * capacity),
            crit: self.crit.unwrap_or(self.crit_ratio * capacity),
            for_seconds: Some(self.for_seconds),
        }
    }

    /// The rule's expression with these numbers.
    pub fn expression(&self) -> String {
        let side = |count: Option<f64>, ratio: f64| match count {
            Some(n) => format!("{n}"),
            None => format!("{ratio} * {CAPACITY}"),
        };
        format!(
            "{METRIC} >= {} (critical: >= {})",
            side(self.warn, self.warn_ratio),
            side(self.crit, self.crit_ratio)
        )
    }

    /// Checks the ranges; the error is `(field under alerts.total_locks, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((format!("total_locks.{f}"), m));
        for (f, v) in [("warn", self.warn), ("crit", self.crit)] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return err(f, format!("{v} must be a count, 0 or more"));
            }
        }
        if let (Some(w), Some(c)) = (self.warn, self.crit)
            && c < w
        {
            return err("crit", format!("{c} must be at least warn ({w})"));
        }
        let ratio_ok = |r: f64| r.is_finite() && r > 0.0;
        if !ratio_ok(self.warn_ratio) {
            return err("warn_ratio", format!("{} must be above 0", self.warn_ratio));
        }
        if !(ratio_ok(self.crit_ratio) && self.crit_ratio >= self.warn_ratio) {
            return err(
                "crit_ratio",
                format!(
                    "{} must be at least warn_ratio ({})",
                    self.crit_ratio, self.warn_ratio
                ),
            );
        }
        Ok(())
    }
}

/// The rule against what the fast loop published: one cluster-wide alert, or none; `None`
/// before the loop has counted.
pub(super) fn evaluate(t: &TotalLocks, board: &Board) -> Option<Vec<Active>> {
    let n = board.value(METRIC, &[])?;
    let capacity = board.value(CAPACITY, &[]).unwrap_or(0.0);
    let th = t.threshold(capacity);
    let severity = if n >= th.crit {
        Severity::Critical
    } else if n >= th.warn {
        Severity::Warning
    } else {
        return Some(Vec::new());
    };
    let share = if capacity > 0.0 {
        format!(
            ", {:.0}% of the lock table's {capacity:.0}",
            n / capacity * 100.0
        )
    } else {
        String::new()
    };
    Some(vec![Active {
        labels: Vec::new(),
        severity,
        value: n,
        message: format!(
            "{n:.0} lock entries in pg_locks{share} (warning at {:.0}, critical at {:.0})",
            th.warn, th.crit
        ),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Family, Kind};

    fn board(locks: f64, capacity: f64) -> Board {
        let b = Board::default();
        b.publish(
            "fast",
            vec![
                Family::single(METRIC, "", Kind::Gauge, locks),
                Family::single(CAPACITY, "", Kind::Gauge, capacity),
            ],
        );
        b
    }

    fn severity_of(t: &TotalLocks, b: &Board) -> Option<Severity> {
        evaluate(t, b).expect("data").first().map(|a| a.severity)
    }

    #[test]
    fn default_counts_follow_the_lock_table() {
        // PostgreSQL's defaults: 64 × (100 + 0) = 6400.
        let t = TotalLocks::default();
        assert_eq!(t.threshold(6400.0).warn, 3200.0);
        assert_eq!(t.threshold(6400.0).crit, 5120.0);
        assert_eq!(severity_of(&t, &board(3199.0, 6400.0)), None);
        assert_eq!(
            severity_of(&t, &board(3200.0, 6400.0)),
            Some(Severity::Warning)
        );
        assert_eq!(
            severity_of(&t, &board(5120.0, 6400.0)),
            Some(Severity::Critical)
        );
        let a = &evaluate(&t, &board(5120.0, 6400.0)).unwrap()[0];
        assert_eq!(
            a.message,
            "5120 lock entries in pg_locks, 80% of the lock table's 6400 (warning at 3200, critical at 5120)"
        );
        assert!(a.labels.is_empty(), "cluster-wide");
        // Nothing counted yet: no verdict.
        assert!(evaluate(&t, &Board::default()).is_none());
    }

    #[test]
    fn the_seeds_fixed_counts() {
        let t = TotalLocks {
            warn: Some(50.0),
            crit: Some(100.0),
            ..TotalLocks::default()
        };
        assert_eq!(severity_of(&t, &board(49.0, 6400.0)), None);
        assert_eq!(
            severity_of(&t, &board(50.0, 6400.0)),
            Some(Severity::Warning)
        );
        assert_eq!(
            severity_of(&t, &board(100.0, 6400.0)),
            Some(Severity::Critical)
        );
        assert_eq!(t.expression(), "pgmon_locks >= 50 (critical: >= 100)");
        assert_eq!(
            TotalLocks::default().expression(),
            "pgmon_locks >= 0.5 * pgmon_lock_table_capacity (critical: >= 0.8 * pgmon_lock_table_capacity)"
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        let bad = |t: TotalLocks| t.validate().unwrap_err().0;
        let d = TotalLocks::default();
        assert_eq!(
            bad(TotalLocks {
                warn: Some(100.0),
                crit: Some(50.0),
                ..d
            }),
            "total_locks.crit"
        );
        assert_eq!(
            bad(TotalLocks {
                warn: Some(-1.0),
                ..d
            }),
            "total_locks.warn"
        );
        assert_eq!(
            bad(TotalLocks {
                warn_ratio: 0.9,
                ..d
            }),
            "total_locks.crit_ratio"
        );
        assert!(d.validate().is_ok());
    }
}
