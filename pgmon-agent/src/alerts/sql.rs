//! The SQL behind each rule: the health loops' statements whose rows the rule reads
//! through the [`crate::health::Board`] (the read API's promise, issue 5: every answer
//! carries the SQL that produced it). Rules on pgmon's own state (storage quotas, budgets,
//! the loops themselves) read no SQL of their own.

use crate::health::{backups, bloat, databases, fast, medium, settings};

/// One statement: its name, the loop that runs it, its text.
pub type Source = (&'static str, &'static str, &'static str);

const ACTIVITY: Source = ("activity", "health loop fast", fast::ACTIVITY);
const SETTINGS: Source = ("settings", "health loop fast", fast::SETTINGS);
const AGES: Source = ("ages", "health loop fast", fast::AGES);
const BLOCKED: Source = ("blocked", "health loop fast", fast::BLOCKED);
const TEMP: Source = ("temp_files", "health loop fast", fast::TEMP);
const LOCKS: Source = ("locks", "health loop fast", fast::LOCKS);
const WAL: Source = ("wal", "health loop medium", medium::WAL);
const CHECKPOINTER: Source = (
    "checkpoints (PostgreSQL 17+)",
    "health loop medium",
    medium::CHECKPOINTER,
);
const BGWRITER: Source = (
    "checkpoints (before 17)",
    "health loop medium",
    medium::BGWRITER,
);
const REPLICATION: Source = ("replication", "health loop medium", medium::REPLICATION);
const DEAD: Source = ("dead_tuples", "health loop slow", databases::DEAD);
const FRESHNESS: Source = ("freshness", "health loop slow", databases::FRESHNESS);
const UNUSED: Source = (
    "unused_indexes",
    "health loop slow",
    databases::UNUSED_INDEXES,
);
const WRAPAROUND: Source = ("wraparound", "health loop hourly", databases::WRAPAROUND);
const ARCHIVER: Source = ("archiver", "health loop medium", backups::ARCHIVER);
const ARCHIVE_PENDING: Source = ("archive_pending", "health loop medium", backups::PENDING);
const CANARY: Source = ("canary", "health loop fast", fast::CANARY);
const CANARY_EXPLAIN: Source = ("canary_explain", "health loop fast", fast::CANARY_EXPLAIN);
const SLOTS: Source = ("replication_slots", "health loop medium", backups::SLOTS);
const PARTITION_TIMES: Source = (
    "partition_times",
    "health loop slow",
    databases::PARTITION_TIMES,
);
const BLOAT_ESTIMATE: Source = ("bloat_estimate", "health loop hourly", bloat::ESTIMATE);
const BLOAT_APPROX: Source = (
    "bloat_pgstattuple_approx",
    "health loop hourly",
    bloat::APPROX,
);
const SERVER_SETTINGS: Source = ("server_settings", "health loop medium", settings::SETTINGS);

/// The statements `alertname` reads, in the order its evaluation uses them.
pub fn sources(alertname: &str) -> &'static [Source] {
    match alertname {
        "PostgresConnectionSaturation" => &[ACTIVITY, SETTINGS],
        "PostgresLongTransaction" => &[AGES, ACTIVITY],
        "PostgresIdleInTransaction" => &[AGES],
        "PostgresBlockingLocks" => &[BLOCKED],
        "PostgresTooManyLocks" => &[LOCKS],
        "PostgresReplicationLag" => &[REPLICATION],
        "PostgresWraparoundDanger" => &[WRAPAROUND],
        "PostgresDeadTupleBacklog" => &[DEAD],
        "PostgresStaleStatistics" => &[FRESHNESS],
        "PostgresAutovacuumStarvation" => &[FRESHNESS, DEAD],
        "PostgresCheckpointThrash" => &[CHECKPOINTER, BGWRITER],
        "PostgresWalSurge" => &[WAL],
        "PostgresTempSurge" => &[TEMP],
        "PostgresUnusedLargeIndex" => &[UNUSED],
        "PostgresWalArchivingBehind" => &[ARCHIVE_PENDING, ARCHIVER],
        "PostgresInactiveReplicationSlot" => &[SLOTS],
        "PostgresCanarySlow" => &[CANARY, CANARY_EXPLAIN],
        "PostgresPartitionMissing" | "PostgresPartitionPastRetention" => &[PARTITION_TIMES],
        "PostgresTableBloat" => &[BLOAT_ESTIMATE, BLOAT_APPROX],
        "PostgresPendingRestart" | "PostgresSettingChanged" => &[SERVER_SETTINGS],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_postgres_rule_has_its_sql() {
        let rules = super::super::rules::catalog(&Default::default());
        for r in &rules {
            let has = !super::sources(r.meta.name).is_empty();
            assert_eq!(
                has,
                r.meta.name.starts_with("Postgres"),
                "{}: only pgmon's own rules read no SQL",
                r.meta.name
            );
        }
        let runs = crate::api::alerts::runs(rules.iter().map(|r| r.meta.name));
        assert_eq!(runs.len(), 23, "each statement once");
        assert!(runs[0].text.contains("pg_stat_activity"));
    }
}
