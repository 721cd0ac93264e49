//! The threshold rules (`Level`) as the engine and `pgmon-agent check` read them, and the
//! maintenance rules' settings: table bloat and configuration drift.

use serde::Deserialize;

use super::{AlertsConfig, Threshold};

/// A threshold rule as `pgmon-agent check` and the engine both read it: the policy field,
/// the alert's name, the metric compared, the labels naming the entity (none: the largest
/// sample decides), the threshold, the rule's default `for` in seconds, and whether a
/// value at or *below* the thresholds is the bad one.
pub struct Level {
    /// The field under `alerts:` (and the check's name in `pgmon-agent check`).
    pub field: &'static str,
    /// The alert's name, as in `alerts/pgmon-rules.yml`.
    pub alertname: &'static str,
    /// The health metric compared.
    pub metric: &'static str,
    /// The labels naming the entity; empty: cluster-wide, the largest sample decides (the
    /// smallest for a `below` rule).
    pub entity: &'static [&'static str],
    /// The policy's thresholds.
    pub threshold: Threshold,
    /// The catalog's `for`, seconds, when the policy gives none.
    pub default_for: u64,
    /// At or below `warn` is a warning, at or below `crit` critical (`crit` ≤ `warn`).
    pub below: bool,
}

impl Level {
    /// `>=` or `<=`.
    pub fn operator(&self) -> &'static str {
        if self.below { "<=" } else { ">=" }
    }
}

/// `alerts.table_bloat`: a table whose bloat (`pgmon_relation_bloat_ratio`, from the
/// hourly loop) is at least `ratio` of its size and at least `min_bytes`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TableBloat {
    /// Default 0.5.
    pub ratio: f64,
    /// Default 1073741824 (1 GiB): smaller waste is not worth a table rewrite.
    pub min_bytes: f64,
    /// Default 0 (the hourly loop is slow enough).
    pub for_seconds: u64,
}

impl Default for TableBloat {
    fn default() -> Self {
        Self {
            ratio: 0.5,
            min_bytes: 1_073_741_824.0,
            for_seconds: 0,
        }
    }
}

/// `alerts.settings_changed`: a server setting whose value the agent saw change within
/// the last `window_seconds` (`pgmon_setting_changed_timestamp_seconds`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SettingsChanged {
    /// Default 3600.
    pub window_seconds: u64,
    /// Default 0.
    pub for_seconds: u64,
}

impl Default for SettingsChanged {
    fn default() -> Self {
        Self {
            window_seconds: 3600,
            for_seconds: 0,
        }
    }
}

impl AlertsConfig {
    /// The threshold rules, in catalog order.
    pub fn levels(&self) -> [Level; 11] {
        let l = |field, alertname, metric, entity, threshold, default_for| Level {
            field,
            alertname,
            metric,
            entity,
            threshold,
            default_for,
            below: false,
        };
        [
            l(
                "connection_saturation",
                "PostgresConnectionSaturation",
                "pgmon_connections_used_ratio",
                &[],
                self.connection_saturation,
                120,
            ),
            l(
                "long_transaction_seconds",
                "PostgresLongTransaction",
                "pgmon_oldest_xact_age_seconds",
                &[],
                self.long_transaction_seconds,
                60,
            ),
            l(
                "idle_in_transaction_seconds",
                "PostgresIdleInTransaction",
                "pgmon_idle_in_transaction_max_seconds",
                &[],
                self.idle_in_transaction_seconds,
                60,
            ),
            l(
                "lock_wait_seconds",
                "PostgresBlockingLocks",
                "pgmon_lock_wait_max_seconds",
                &[],
                self.lock_wait_seconds,
                0,
            ),
            l(
                "replication_lag_seconds",
                "PostgresReplicationLag",
                "pgmon_replication_lag_seconds",
                &["application_name"],
                self.replication_lag_seconds,
                120,
            ),
            l(
                "wraparound_xid_age",
                "PostgresWraparoundDanger",
                "pgmon_database_xid_age",
                &["datname"],
                self.wraparound_xid_age,
                0,
            ),
            l(
                "archive_pending_seconds",
                "PostgresWalArchivingBehind",
                "pgmon_archive_pending_age_seconds",
                &[],
                self.archive_pending_seconds,
                0,
            ),
            l(
                "inactive_slot_retained_bytes",
                "PostgresInactiveReplicationSlot",
                "pgmon_replication_slot_inactive_retained_bytes",
                &["slot_name"],
                self.inactive_slot_retained_bytes,
                300,
            ),
            l(
                "canary_seconds",
                "PostgresCanarySlow",
                "pgmon_canary_seconds",
                &[],
                self.canary_seconds,
                60,
            ),
            l(
                "partition_retention_seconds",
                "PostgresPartitionPastRetention",
                "pgmon_partition_oldest_age_seconds",
                &["datname", "relation"],
                self.partition_retention_seconds,
                0,
            ),
            Level {
                below: true,
                ..l(
                    "partition_horizon_seconds",
                    "PostgresPartitionMissing",
                    "pgmon_partition_horizon_seconds",
                    &["datname", "relation"],
                    self.partition_horizon_seconds,
                    0,
                )
            },
        ]
    }
}
