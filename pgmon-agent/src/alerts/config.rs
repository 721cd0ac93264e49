//! `alerts:` in the policy file: the engine's schedule, the notifiers, and every rule's
//! thresholds and `for` duration. The defaults are the catalog's, the same numbers as
//! `alerts/pgmon-rules.yml` (the catalog shipped as Prometheus rules); `pgmon-agent check`
//! compares with the same thresholds.

use std::marker::PhantomData;

use serde::Deserialize;

pub use super::locks::TotalLocks;
pub use maintenance::{Level, SettingsChanged, TableBloat};
pub use notifiers::{DeliveryConfig, NotifierConfig, WebhookConfig};

#[path = "config_maintenance.rs"]
mod maintenance;
#[path = "config_notifiers.rs"]
mod notifiers;

/// A warning and a critical threshold; a value at or above one is in that state.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Warning at or above this (the unit is the rule's: seconds, a ratio, bytes, XIDs).
    pub warn: f64,
    /// Critical at or above this; at least `warn`.
    pub crit: f64,
    /// Seconds the condition must hold before the alert fires; absent: the rule's default.
    #[serde(default)]
    pub for_seconds: Option<u64>,
}

/// `alerts:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Run the alert engine in the agent (default true). It reads what the health loops
    /// publish (`health.enabled`) and the storage quota states (`storage.enabled`).
    pub enabled: bool,
    /// Seconds between two evaluations of the whole catalog (default 5).
    pub evaluation_interval_seconds: u64,
    /// A firing alert is notified again after this many seconds while it lasts (default
    /// 14400, Alertmanager's default `repeat_interval`); 0: never again.
    pub repeat_seconds: u64,
    /// Transitions (firing, resolved) kept for `GET /api/v1/alerts` (default 200).
    pub history: usize,
    /// Where notifications go: a list of `slack: {url}`, `webhook: {url}` and
    /// `email: {host, from, to, …}`, each with an optional `name` (the `sink` label;
    /// default its kind; unique). Empty by default: alerts only in the API and metrics.
    /// (A notifier is a one-key map, not a YAML `!tag`: yaml_serde's `singleton_map`.)
    #[serde(with = "yaml_serde::with::singleton_map_recursive")]
    pub notifiers: Vec<NotifierConfig>,
    /// How every notifier delivers.
    pub delivery: DeliveryConfig,
    /// Client backends / max_connections (default warn 0.8, crit 0.95, for 120 s).
    pub connection_saturation: Threshold,
    /// Age of the oldest open transaction, seconds (default 300 / 1800, for 60 s).
    pub long_transaction_seconds: Threshold,
    /// Longest idle-in-transaction session, seconds (default 300 / 1800, for 60 s).
    pub idle_in_transaction_seconds: Threshold,
    /// Longest current lock wait, seconds (default 30 / 120, for 0 s).
    pub lock_wait_seconds: Threshold,
    /// Lock entries in `pg_locks` (see [`TotalLocks`]; default 50 % / 80 % of the lock
    /// table's capacity, for 60 s).
    pub total_locks: TotalLocks,
    /// Largest replay lag of a standby, seconds (default 30 / 300, for 120 s).
    pub replication_lag_seconds: Threshold,
    /// Largest WAL not yet replayed by a standby, bytes (none by default; with
    /// `replication_lag_seconds` the worse of the two decides).
    pub replication_lag_bytes: Option<Threshold>,
    /// Largest age(datfrozenxid), transactions (default 1.5e9 / 1.8e9, for 0 s;
    /// wraparound protection stops writes near 2^31, PostgreSQL docs, section 24.1.5).
    pub wraparound_xid_age: Threshold,
    /// Age of the oldest WAL segment waiting for `archive_command`, seconds (default 600 /
    /// 3600, for 0 s): archiving is failing or falling behind, and point-in-time recovery
    /// loses what is not archived.
    pub archive_pending_seconds: Threshold,
    /// WAL held back by a replication slot no consumer is attached to, bytes (default
    /// 1 GiB / 10 GiB, for 300 s): it grows until the disk holding `pg_wal` fills.
    pub inactive_slot_retained_bytes: Threshold,
    /// Round trip of the synthetic canary (`SELECT 1` on the 15-second loop's session),
    /// seconds (default 0.5 / 2, for 60 s): the server or its host answers slowly even
    /// when asked nothing.
    pub canary_seconds: Threshold,
    /// Seconds of the future the newest partition of a table range-partitioned on time
    /// still covers (default warn at 7 days or less, critical at 1 day or less, for 0 s):
    /// after that, new rows find no partition and inserts fail (or fill the default
    /// partition). The one rule where less is worse: `crit` is at most `warn`.
    pub partition_horizon_seconds: Threshold,
    /// Age of the upper bound of the oldest partition of a table range-partitioned on time,
    /// seconds (default 400 / 800 days, for 0 s): every row of that partition is older.
    /// Set `warn` to the retention: past it, the partition should have been dropped.
    pub partition_retention_seconds: Threshold,
    /// Table bloat (see [`TableBloat`]).
    pub table_bloat: TableBloat,
    /// A server setting whose new value waits for a restart (default for 0 s).
    pub pending_restart: ForOnly,
    /// A server setting that changed value recently (see [`SettingsChanged`]).
    pub settings_changed: SettingsChanged,
    /// Dead-tuple backlog per relation (see [`DeadTuples`]).
    pub dead_tuples: DeadTuples,
    /// Stale statistics per database (see [`StaleStatistics`]).
    pub stale_statistics: StaleStatistics,
    /// Autovacuum starvation per database (see [`Starvation`]).
    pub autovacuum_starvation: Starvation,
    /// Checkpoint thrash (see [`CheckpointThrash`]).
    pub checkpoint_thrash: CheckpointThrash,
    /// WAL rate (default window 900 s, floor 1 MiB/s, for 900 s).
    pub wal_surge: Surge<Wal>,
    /// Temp-file bytes rate per database (default window 300 s, floor 1 MiB/s, for 300 s).
    pub temp_surge: Surge<Temp>,
    /// Unused large indexes (see [`UnusedIndex`]).
    pub unused_index: UnusedIndex,
    /// pgmon's storage quota states (soft, hard, locked).
    pub storage_quota: ForOnly,
    /// A budgeted role at or over its query-cost budget (see [`BudgetExceeded`]).
    pub budget_exceeded: BudgetExceeded,
    /// A health loop whose last run failed (default for 300 s).
    pub health_loop_failing: ForOnly,
}

/// `alerts.dead_tuples`: a relation with dead / (live + dead) ≥ `ratio` and at least
/// `min_tuples` dead tuples (top-N of the 10-minute loop).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeadTuples {
    /// Default 0.2.
    pub ratio: f64,
    /// Default 100000.
    pub min_tuples: f64,
    /// Default 600.
    pub for_seconds: u64,
}

/// `alerts.stale_statistics`: a database with at least `min_tables` tables changed since
/// an analyze more than 12 hours old (or never analyzed).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StaleStatistics {
    /// Default 1.
    pub min_tables: f64,
    /// Default 3600.
    pub for_seconds: u64,
}

/// `alerts.autovacuum_starvation`: a database where a table was not vacuumed for
/// `vacuum_age_seconds` while its dead tuples (sum of the top-N relations) rose over
/// `window_seconds`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Starvation {
    /// Default 21600 (6 h).
    pub vacuum_age_seconds: f64,
    /// Default 3600.
    pub window_seconds: u64,
    /// Default 1800.
    pub for_seconds: u64,
}

/// `alerts.checkpoint_thrash`: over `window_seconds`, at least `min_checkpoints`
/// checkpoints, and more than `requested_ratio` of them requested (WAL reached
/// max_wal_size, or CHECKPOINT) or their mean interval under `min_interval_seconds`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointThrash {
    /// Default 0.2.
    pub requested_ratio: f64,
    /// Default 300.
    pub min_interval_seconds: f64,
    /// Default 3.
    pub min_checkpoints: f64,
    /// Default 3600.
    pub window_seconds: u64,
    /// Default 900.
    pub for_seconds: u64,
}

/// `alerts.wal_surge` / `alerts.temp_surge`: the rate over `window_seconds` is above the
/// mean + `sigma` standard deviations of its own past rates (over `baseline_seconds`, one
/// observation per evaluation but at most 1440), once at least `min_samples` of those
/// exist, and at least `floor_bytes_per_second`, so an idle cluster never fires. `D` gives
/// the rule's default window and `for` ([`Wal`], [`Temp`]); `Surge` alone is one whose
/// defaults no longer matter.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, bound(deserialize = "D: SurgeDefaults"))]
pub struct Surge<D = ()> {
    /// Rate window, seconds (default `D::WINDOW_SECONDS`; at least twice the interval of
    /// the loop that reads the counter: medium for WAL, fast for temp files).
    pub window_seconds: u64,
    /// How far back the baseline reaches, seconds (default 86400).
    pub baseline_seconds: u64,
    /// Default 3.
    pub sigma: f64,
    /// Baseline observations needed before the rule can fire (default 30).
    pub min_samples: usize,
    /// Default 1048576 (1 MiB/s).
    pub floor_bytes_per_second: f64,
    /// Default `D::WINDOW_SECONDS`.
    pub for_seconds: u64,
    #[serde(skip)]
    defaults: PhantomData<D>,
}

/// The defaults of a surge rule.
pub trait SurgeDefaults {
    /// Default window and `for`, seconds.
    const WINDOW_SECONDS: u64;
}

/// The WAL surge's defaults: 15 minutes (the catalog's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wal;

/// The temp surge's defaults: 5 minutes (the catalog's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temp;

impl SurgeDefaults for Wal {
    const WINDOW_SECONDS: u64 = 900;
}

impl SurgeDefaults for Temp {
    const WINDOW_SECONDS: u64 = 300;
}

impl SurgeDefaults for () {
    const WINDOW_SECONDS: u64 = 0;
}

impl<D> Surge<D> {
    /// The same numbers, without the defaults in the type.
    pub fn erased(self) -> Surge {
        Surge {
            window_seconds: self.window_seconds,
            baseline_seconds: self.baseline_seconds,
            sigma: self.sigma,
            min_samples: self.min_samples,
            floor_bytes_per_second: self.floor_bytes_per_second,
            for_seconds: self.for_seconds,
            defaults: PhantomData,
        }
    }
}

/// `alerts.unused_index`: an index (not unique, not a primary key) never scanned since
/// statistics were reset and at least `min_bytes` large.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UnusedIndex {
    /// Default 100e6.
    pub min_bytes: f64,
    /// Default 604800 (7 days).
    pub for_seconds: u64,
}

/// `alerts.budget_exceeded`: a budgeted role whose utilisation (max(0, spend − burst) ÷
/// budget, `pgmon_role_budget_utilisation`) is at least `utilisation`, within the
/// ladder's tolerance ([`crate::budget::reaches`]).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetExceeded {
    /// Default 1.
    pub utilisation: f64,
    /// Default 0.
    pub for_seconds: u64,
}

impl Default for BudgetExceeded {
    fn default() -> Self {
        Self {
            utilisation: 1.0,
            for_seconds: 0,
        }
    }
}

/// A rule with nothing to set but its `for`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForOnly {
    /// Seconds the condition must hold before the alert fires.
    pub for_seconds: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        let t = |warn, crit| Threshold {
            warn,
            crit,
            for_seconds: None,
        };
        Self {
            enabled: true,
            evaluation_interval_seconds: 5,
            repeat_seconds: 14_400,
            history: 200,
            notifiers: Vec::new(),
            delivery: DeliveryConfig::default(),
            connection_saturation: t(0.8, 0.95),
            long_transaction_seconds: t(300.0, 1800.0),
            idle_in_transaction_seconds: t(300.0, 1800.0),
            lock_wait_seconds: t(30.0, 120.0),
            total_locks: TotalLocks::default(),
            replication_lag_seconds: t(30.0, 300.0),
            replication_lag_bytes: None,
            wraparound_xid_age: t(1.5e9, 1.8e9),
            archive_pending_seconds: t(600.0, 3600.0),
            inactive_slot_retained_bytes: t(1_073_741_824.0, 10_737_418_240.0),
            canary_seconds: t(0.5, 2.0),
            partition_horizon_seconds: t(604_800.0, 86_400.0),
            partition_retention_seconds: t(34_560_000.0, 69_120_000.0),
            table_bloat: TableBloat::default(),
            pending_restart: ForOnly { for_seconds: 0 },
            settings_changed: SettingsChanged::default(),
            dead_tuples: DeadTuples::default(),
            stale_statistics: StaleStatistics::default(),
            autovacuum_starvation: Starvation::default(),
            checkpoint_thrash: CheckpointThrash::default(),
            wal_surge: Surge::default(),
            temp_surge: Surge::default(),
            unused_index: UnusedIndex::default(),
            storage_quota: ForOnly { for_seconds: 0 },
            budget_exceeded: BudgetExceeded::default(),
            health_loop_failing: ForOnly { for_seconds: 300 },
        }
    }
}

impl Default for DeadTuples {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_tuples: 100_000.0,
            for_seconds: 600,
        }
    }
}

impl Default for StaleStatistics {
    fn default() -> Self {
        Self {
            min_tables: 1.0,
            for_seconds: 3600,
        }
    }
}

impl Default for Starvation {
    fn default() -> Self {
        Self {
            vacuum_age_seconds: 21_600.0,
            window_seconds: 3600,
            for_seconds: 1800,
        }
    }
}

impl Default for CheckpointThrash {
    fn default() -> Self {
        Self {
            requested_ratio: 0.2,
            min_interval_seconds: 300.0,
            min_checkpoints: 3.0,
            window_seconds: 3600,
            for_seconds: 900,
        }
    }
}

impl<D: SurgeDefaults> Default for Surge<D> {
    fn default() -> Self {
        Self {
            window_seconds: D::WINDOW_SECONDS,
            baseline_seconds: 86_400,
            sigma: 3.0,
            min_samples: 30,
            floor_bytes_per_second: 1_048_576.0,
            for_seconds: D::WINDOW_SECONDS,
            defaults: PhantomData,
        }
    }
}

impl Default for UnusedIndex {
    fn default() -> Self {
        Self {
            min_bytes: 100e6,
            for_seconds: 604_800,
        }
    }
}

impl AlertsConfig {
    /// Checks ranges and notifiers against the health loops' intervals; the error is
    /// `(field, message)` with the field's dotted path.
    pub fn validate(&self, health: &crate::health::HealthConfig) -> Result<(), (String, String)> {
        let err = |field: &str, message: String| Err((format!("alerts.{field}"), message));
        if self.evaluation_interval_seconds == 0 {
            return err("evaluation_interval_seconds", "must be at least 1".into());
        }
        let mut thresholds: Vec<(&str, Threshold)> = self
            .levels()
            .iter()
            .map(|l| (l.field, l.threshold))
            .collect();
        if let Some(b) = self.replication_lag_bytes {
            thresholds.push(("replication_lag_bytes", b));
        }
        for (field, t) in thresholds {
            let below = field == "partition_horizon_seconds";
            let ordered = if below {
                t.crit <= t.warn
            } else {
                t.warn <= t.crit
            };
            if !(t.warn.is_finite() && t.crit.is_finite() && ordered) {
                let (word, field) = if below {
                    ("at most", format!("{field}.crit"))
                } else {
                    ("at least", format!("{field}.crit"))
                };
                return err(
                    &field,
                    format!("{} must be a number {word} warn ({})", t.crit, t.warn),
                );
            }
        }
        if let Err((field, message)) = self.total_locks.validate() {
            return err(&field, message);
        }
        for (field, s, l) in [
            ("wal_surge", self.wal_surge.erased(), health.loops.medium),
            ("temp_surge", self.temp_surge.erased(), health.loops.fast),
        ] {
            if s.window_seconds < 2 * l.interval_seconds {
                return err(
                    &format!("{field}.window_seconds"),
                    format!(
                        "{} must be at least twice the interval of the loop that reads the counter ({} s)",
                        s.window_seconds, l.interval_seconds
                    ),
                );
            }
            if s.baseline_seconds <= s.window_seconds {
                return err(
                    &format!("{field}.baseline_seconds"),
                    format!("{} must exceed window_seconds", s.baseline_seconds),
                );
            }
            if !(s.sigma > 0.0 && s.sigma.is_finite()) || s.min_samples < 2 {
                return err(
                    &format!("{field}.sigma"),
                    "sigma must be above 0 and min_samples at least 2".into(),
                );
            }
        }
        self.validate_notifiers()
    }

    fn validate_notifiers(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.notifiers.iter().enumerate() {
            let at = |f: &str| format!("alerts.notifiers[{i}].{f}");
            let (kind, name) = match n {
                NotifierConfig::Slack(w) | NotifierConfig::Webhook(w) => {
                    let kind = if matches!(n, NotifierConfig::Slack(_)) {
                        "slack"
                    } else {
                        "webhook"
                    };
                    let ok = w.url.parse::<hyper::Uri>().ok().is_some_and(|u| {
                        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                    });
                    if !ok {
                        return Err((
                            at(&format!("{kind}.url")),
                            format!("{:?} is not an http:// or https:// URL", w.url),
                        ));
                    }
                    (kind, w.name.clone())
                }
                NotifierConfig::Email(e) => {
                    if let Err(err) = e.mailboxes() {
                        let text = err.to_string();
                        let (field, message) = text.split_once(": ").unwrap_or(("", &text));
                        return Err((at(&format!("email.{field}")), message.to_owned()));
                    }
                    ("email", e.name.clone())
                }
            };
            let name = name.unwrap_or_else(|| kind.to_owned());
            if !names.insert(name.clone()) {
                return Err((
                    at(&format!("{kind}.name")),
                    format!("another notifier is already called {name:?}; give each a name"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
