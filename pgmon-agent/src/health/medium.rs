//! The 60-second loop: transactions per second from `pg_stat_database` deltas, checkpoints
//! (`pg_stat_checkpointer` from PostgreSQL 17, `pg_stat_bgwriter` before: docs, section
//! 27.2.15/27.2.16), the WAL position, replication lag per standby
//! (`pg_stat_replication`), the top statements of `pg_stat_statements` (docs,
//! appendix F.32) when the extension is installed in the monitor's database, and WAL and
//! I/O statistics where the server has the views (`super::wal_io`: `pg_stat_wal` 14+,
//! `pg_stat_io` 16+), and WAL archiving and replication slots (`super::backups`).
//! Statements are chosen by `server_version_num` and work on 13 to 18.

use std::{collections::HashMap, time::Instant};

use tokio_postgres::{Client, Statement};

use super::board::{Family, Kind};
use super::{backups::Backups, wal_io::WalIo};

pub(crate) const DATABASES: &str = "SELECT datname::text, xact_commit::float8, xact_rollback::float8 \
     FROM pg_stat_database WHERE datname IS NOT NULL";

/// PostgreSQL 17 moved the checkpoint counters to `pg_stat_checkpointer`; its columns
/// here are the same in 17 and 18.
pub(crate) const CHECKPOINTER: &str = "SELECT num_timed::float8, num_requested::float8, buffers_written::float8, \
     write_time / 1000, sync_time / 1000 FROM pg_stat_checkpointer";
/// The checkpoint counters of `pg_stat_bgwriter`, PostgreSQL 13 to 16 (17 removed them).
pub(crate) const BGWRITER: &str = "SELECT checkpoints_timed::float8, checkpoints_req::float8, \
     buffers_checkpoint::float8, checkpoint_write_time / 1000, checkpoint_sync_time / 1000 \
     FROM pg_stat_bgwriter";

/// The checkpoint statement for the server `version`: [`CHECKPOINTER`] or [`BGWRITER`].
pub(crate) fn checkpoints_sql(version: u32) -> &'static str {
    if version >= super::PG17 {
        CHECKPOINTER
    } else {
        BGWRITER
    }
}

pub(crate) const WAL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0) \
          ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END::float8, \
     CASE WHEN pg_is_in_recovery() \
          THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) ELSE 0 END::float8";

pub(crate) const REPLICATION: &str = "SELECT coalesce(nullif(application_name, ''), client_addr::text, pid::text), \
     coalesce(extract(epoch FROM replay_lag), 0)::float8, \
     coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                                   ELSE pg_current_wal_lsn() END, replay_lsn), 0)::float8 \
     FROM pg_stat_replication";

/// `total_exec_time` is `pg_stat_statements` 1.8+ (PostgreSQL 13+; `total_time` before),
/// the same column in every version from 13 to 18.
const STATEMENTS: &str = "SELECT queryid::text, calls::float8, (total_exec_time / 1000)::float8, rows::float8, \
     shared_blks_read::float8 \
     FROM pg_stat_statements WHERE queryid IS NOT NULL ORDER BY total_exec_time DESC LIMIT $1";

/// The loop's statements and the previous run's counters (for rates).
pub struct Medium {
    databases: Statement,
    checkpoints: Statement,
    wal: Statement,
    replication: Statement,
    statements: Option<Statement>,
    wal_io: WalIo,
    backups: Backups,
    top_n: i64,
    previous: Option<(Instant, HashMap<String, f64>)>,
}

impl Medium {
    /// Prepares the statements for the server `version` (`server_version_num`);
    /// `pg_stat_statements` is read only when the view exists here.
    pub async fn prepare(
        client: &Client,
        version: u32,
        top_n: usize,
    ) -> Result<Self, tokio_postgres::Error> {
        let has_pss: bool = client
            .query_one("SELECT to_regclass('pg_stat_statements') IS NOT NULL", &[])
            .await?
            .get(0);
        Ok(Self {
            databases: client.prepare(DATABASES).await?,
            checkpoints: client.prepare(checkpoints_sql(version)).await?,
            wal: client.prepare(WAL).await?,
            replication: client.prepare(REPLICATION).await?,
            statements: if has_pss {
                Some(client.prepare(STATEMENTS).await?)
            } else {
                None
            },
            wal_io: WalIo::prepare(client, version).await?,
            backups: Backups::prepare(client).await?,
            top_n: top_n as i64,
            previous: None,
        })
    }

    /// One run.
    pub async fn run(&mut self, client: &Client) -> Result<Vec<Family>, tokio_postgres::Error> {
        let mut out = Vec::new();
        let now = Instant::now();
        let mut commits = Family::new(
            "pg_stat_database_xact_commit",
            "Transactions committed, by database (pg_stat_database).",
            Kind::Counter,
        );
        let mut rollbacks = Family::new(
            "pg_stat_database_xact_rollback",
            "Transactions rolled back, by database.",
            Kind::Counter,
        );
        let mut tps = Family::new(
            "pgmon_transactions_per_second",
            "Commits and rollbacks per second over the last 60-second loop, by database.",
            Kind::Gauge,
        );
        let mut totals = HashMap::new();
        for r in client.query(&self.databases, &[]).await? {
            let db: String = r.get(0);
            let (c, rb): (f64, f64) = (r.get(1), r.get(2));
            commits.push(vec![("datname", db.clone())], c);
            rollbacks.push(vec![("datname", db.clone())], rb);
            if let Some((at, prev)) = &self.previous
                && let Some(p) = prev.get(&db)
            {
                let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                // A stats reset makes the counters go back: no rate for that run.
                if c + rb >= *p {
                    tps.push(vec![("datname", db.clone())], (c + rb - p) / secs);
                }
            }
            totals.insert(db, c + rb);
        }
        self.previous = Some((now, totals));
        out.extend([commits, rollbacks, tps]);

        let c = client.query_one(&self.checkpoints, &[]).await?;
        let mut checkpoints = Family::new(
            "pgmon_checkpoints",
            "Checkpoints by kind: timed (checkpoint_timeout) or requested (WAL volume, CHECKPOINT).",
            Kind::Counter,
        );
        checkpoints.push(vec![("kind", "timed".into())], c.get(0));
        checkpoints.push(vec![("kind", "requested".into())], c.get(1));
        out.push(checkpoints);
        out.push(Family::single(
            "pgmon_checkpoint_buffers_written",
            "Buffers written by checkpoints.",
            Kind::Counter,
            c.get(2),
        ));
        out.push(Family::single(
            "pgmon_checkpoint_write_seconds",
            "Time checkpoints spent writing files, seconds.",
            Kind::Counter,
            c.get(3),
        ));
        out.push(Family::single(
            "pgmon_checkpoint_sync_seconds",
            "Time checkpoints spent syncing files, seconds.",
            Kind::Counter,
            c.get(4),
        ));

        let w = client.query_one(&self.wal, &[]).await?;
        let in_recovery: bool = w.get(0);
        out.push(Family::single(
            "pgmon_in_recovery",
            "1 on a standby (pg_is_in_recovery).",
            Kind::Gauge,
            f64::from(u8::from(in_recovery)),
        ));
        out.push(Family::single(
            "pgmon_wal_position_bytes",
            "WAL position (insert LSN on a primary, replay LSN on a standby), bytes; its rate is the WAL rate.",
            Kind::Counter,
            w.get(1),
        ));
        if in_recovery {
            out.push(Family::single(
                "pgmon_replay_delay_seconds",
                "Time since the last transaction replayed on this standby, seconds.",
                Kind::Gauge,
                w.get(2),
            ));
        }

        let mut lag_s = Family::new(
            "pgmon_replication_lag_seconds",
            "Replay lag of each standby (pg_stat_replication.replay_lag), seconds.",
            Kind::Gauge,
        );
        let mut lag_b = Family::new(
            "pgmon_replication_lag_bytes",
            "WAL not yet replayed by each standby, bytes.",
            Kind::Gauge,
        );
        for r in client.query(&self.replication, &[]).await? {
            let name: String = r.get(0);
            lag_s.push(vec![("application_name", name.clone())], r.get(1));
            lag_b.push(vec![("application_name", name)], r.get(2));
        }
        out.extend([lag_s, lag_b]);
        out.extend(self.wal_io.run(client).await?);
        out.extend(self.backups.run(client).await?);

        if let Some(st) = &self.statements {
            let mut calls = Family::new(
                "pg_stat_statements_calls",
                "Calls of the top statements by total execution time (pg_stat_statements).",
                Kind::Counter,
            );
            let mut seconds = Family::new(
                "pg_stat_statements_seconds",
                "Total execution time of the top statements, seconds.",
                Kind::Counter,
            );
            let mut rows = Family::new(
                "pg_stat_statements_rows",
                "Rows returned or affected by the top statements.",
                Kind::Counter,
            );
            let mut blks_read = Family::new(
                "pg_stat_statements_shared_blks_read",
                "Blocks the top statements read into shared buffers (from the OS cache or the disk).",
                Kind::Counter,
            );
            for r in client.query(st, &[&self.top_n]).await? {
                let id: String = r.get(0);
                calls.push(vec![("queryid", id.clone())], r.get(1));
                seconds.push(vec![("queryid", id.clone())], r.get(2));
                rows.push(vec![("queryid", id.clone())], r.get(3));
                blks_read.push(vec![("queryid", id)], r.get(4));
            }
            out.extend([calls, seconds, rows, blks_read]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_come_from_the_checkpointer_from_17_on() {
        for v in [130_023, 140_023, 150_014, 160_014] {
            assert_eq!(checkpoints_sql(v), BGWRITER, "{v}");
        }
        for v in [170_000, 170_010, 180_004] {
            assert_eq!(checkpoints_sql(v), CHECKPOINTER, "{v}");
        }
    }
}
