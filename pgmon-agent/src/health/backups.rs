//! WAL archiving and replication slots, read by the 60-second loop: what a DBA looks at to
//! know that point-in-time recovery still works and that no slot is filling the disk.
//!
//! - `pg_stat_archiver` (docs, section 27.2 "The Cumulative Statistics System", view
//!   `pg_stat_archiver`; every version from 13 to 18): segments archived and failed, and
//!   the age of the last success and of the last failure.
//! - The segments waiting for `archive_command`: the `.ready` files of
//!   `pg_wal/archive_status`, through `pg_ls_archive_statusdir()` (docs, section 9.28.9
//!   "Generic File Access Functions"; granted to `pg_monitor`). Their count and the age of
//!   the oldest one: how far archiving is behind, whatever the reason (a failing command,
//!   a slow one). Without the right to call the function the two are left out, never 0.
//! - `pg_replication_slots` (docs, section 54.19): per slot, whether a consumer is
//!   attached and the WAL it holds back (`restart_lsn` to the current position; on a
//!   standby, to the last received position). An inactive slot that holds WAL keeps every
//!   segment since its `restart_lsn` until the disk fills.

use tokio_postgres::{Client, Statement};

use super::board::{Family, Kind};

/// `pg_stat_archiver`: counts, the age of the last archived and last failed segment
/// (NULL: never), and whether archiving is on.
pub(crate) const ARCHIVER: &str = "SELECT archived_count::float8, failed_count::float8, \
     extract(epoch FROM now() - last_archived_time)::float8, \
     extract(epoch FROM now() - last_failed_time)::float8, \
     current_setting('archive_mode') <> 'off' FROM pg_stat_archiver";

/// Whether the monitor may list `pg_wal/archive_status`.
pub(crate) const PENDING_ALLOWED: &str =
    "SELECT has_function_privilege('pg_ls_archive_statusdir()', 'EXECUTE')";

/// The segments waiting to be archived and the age of the oldest, seconds (0: none).
pub(crate) const PENDING: &str = "SELECT count(*)::float8, \
     coalesce(extract(epoch FROM now() - min(modification)), 0)::float8 \
     FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'";

/// Every replication slot: name, type, active, WAL held back in bytes (0 when the slot
/// reserves none yet).
pub(crate) const SLOTS: &str = "SELECT slot_name::text, slot_type, active, \
     coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                                   ELSE pg_current_wal_lsn() END, restart_lsn), 0)::float8 \
     FROM pg_replication_slots ORDER BY slot_name";

/// The prepared statements.
pub struct Backups {
    archiver: Statement,
    pending: Option<Statement>,
    slots: Statement,
}

impl Backups {
    /// Prepares the statements; the pending segments only when the monitor may list them.
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let allowed: bool = client.query_one(PENDING_ALLOWED, &[]).await?.get(0);
        Ok(Self {
            archiver: client.prepare(ARCHIVER).await?,
            pending: if allowed {
                Some(client.prepare(PENDING).await?)
            } else {
                None
            },
            slots: client.prepare(SLOTS).await?,
        })
    }

    /// One run.
    pub async fn run(&self, client: &Client) -> Result<Vec<Family>, tokio_postgres::Error> {
        let mut out = Vec::new();
        let a = client.query_one(&self.archiver, &[]).await?;
        let archiving: bool = a.get(4);
        out.push(Family::single(
            "pgmon_archive_mode",
            "1 when archive_mode is on (or always).",
            Kind::Gauge,
            f64::from(u8::from(archiving)),
        ));
        out.push(Family::single(
            "pg_stat_archiver_archived_count",
            "WAL segments archived (pg_stat_archiver.archived_count).",
            Kind::Counter,
            a.get(0),
        ));
        out.push(Family::single(
            "pg_stat_archiver_failed_count",
            "Failed attempts to archive a WAL segment (pg_stat_archiver.failed_count).",
            Kind::Counter,
            a.get(1),
        ));
        if let Some(age) = a.get::<_, Option<f64>>(2) {
            out.push(Family::single(
                "pgmon_archive_last_archived_age_seconds",
                "Seconds since the last WAL segment was archived (absent: never since the statistics reset).",
                Kind::Gauge,
                age,
            ));
        }
        if let Some(age) = a.get::<_, Option<f64>>(3) {
            out.push(Family::single(
                "pgmon_archive_last_failed_age_seconds",
                "Seconds since archive_command last failed (absent: never since the statistics reset).",
                Kind::Gauge,
                age,
            ));
        }
        if let Some(st) = &self.pending {
            let p = client.query_one(st, &[]).await?;
            out.push(Family::single(
                "pgmon_archive_pending_segments",
                "WAL segments waiting for archive_command (.ready files in pg_wal/archive_status).",
                Kind::Gauge,
                p.get(0),
            ));
            out.push(Family::single(
                "pgmon_archive_pending_age_seconds",
                "Age of the oldest WAL segment waiting for archive_command, seconds (0: none waits).",
                Kind::Gauge,
                p.get(1),
            ));
        }
        let mut retained = Family::new(
            "pgmon_replication_slot_retained_bytes",
            "WAL each replication slot holds back (restart_lsn to the current position), bytes.",
            Kind::Gauge,
        );
        let mut active = Family::new(
            "pgmon_replication_slot_active",
            "1 when a consumer is attached to the replication slot.",
            Kind::Gauge,
        );
        let mut inactive = Family::new(
            "pgmon_replication_slot_inactive_retained_bytes",
            "WAL held back by each replication slot no consumer is attached to, bytes (0 while one is).",
            Kind::Gauge,
        );
        for r in client.query(&self.slots, &[]).await? {
            let (name, kind, is_active, bytes): (String, String, bool, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let labels = vec![("slot_name", name), ("slot_type", kind)];
            retained.push(labels.clone(), bytes);
            active.push(labels.clone(), f64::from(u8::from(is_active)));
            inactive.push(labels, if is_active { 0.0 } else { bytes });
        }
        out.extend([retained, active, inactive]);
        Ok(out)
    }
}
