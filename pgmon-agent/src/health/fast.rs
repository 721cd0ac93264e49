//! The 15-second loop: sessions against `max_connections`, the oldest transaction and the
//! longest idle-in-transaction session, blocking chains, lock entries against the lock
//! table's capacity, autovacuum workers and their
//! phases, temp files. Views: PostgreSQL docs, sections 27.2.3 (`pg_stat_activity`),
//! 27.2.17 (`pg_stat_database`), 28.4.5 (`pg_stat_progress_vacuum`), 54.12 (`pg_locks`).
//! Every statement works on PostgreSQL 13 to 18; the one that differs (the lock-wait age,
//! which needs `pg_locks.waitstart`, 14+) is chosen by `server_version_num`.

use std::collections::HashMap;

use tokio_postgres::{Client, Statement};

use super::board::{Family, Kind};

/// The gauge of `pg_locks` rows (granted and awaited; docs, section 54.12).
pub const LOCKS_METRIC: &str = "pgmon_locks";
/// The gauge of the lock table's capacity: max_locks_per_transaction × (max_connections +
/// max_prepared_transactions) (docs, section 20.12).
pub const LOCK_CAPACITY_METRIC: &str = "pgmon_lock_table_capacity";

pub(crate) const ACTIVITY: &str = "SELECT coalesce(datname, '')::text, coalesce(state, 'unknown'), count(*)::float8, \
     coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 \
     FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2";

pub(crate) const SETTINGS: &str = "SELECT current_setting('max_connections')::float8, \
     current_setting('superuser_reserved_connections')::float8, \
     current_setting('autovacuum_max_workers')::float8";

pub(crate) const AGES: &str = "SELECT \
     coalesce(max(extract(epoch FROM now() - xact_start)) FILTER (WHERE backend_type = 'client backend'), 0)::float8, \
     coalesce(max(extract(epoch FROM now() - state_change)) FILTER (WHERE state LIKE 'idle in transaction%'), 0)::float8, \
     coalesce(max(age(backend_xmin)), 0)::float8 \
     FROM pg_stat_activity";

/// Sessions waiting on a heavyweight lock, who blocks them (`pg_blocking_pids`), and since
/// when (`pg_locks.waitstart`, PostgreSQL 14+; docs, section 54.12 "pg_locks").
pub(crate) const BLOCKED: &str = "SELECT a.pid, pg_blocking_pids(a.pid), \
     coalesce(extract(epoch FROM now() - (SELECT min(l.waitstart) FROM pg_locks l \
                                           WHERE l.pid = a.pid AND NOT l.granted)), 0)::float8 \
     FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock'";

/// [`BLOCKED`] for PostgreSQL 13, whose `pg_locks` has no `waitstart`: the time waited is
/// unknown (NULL), not guessed (the statement's age would overstate it).
pub(crate) const BLOCKED_13: &str = "SELECT a.pid, pg_blocking_pids(a.pid), NULL::float8 \
     FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock'";

/// True when the server (`server_version_num`) records since when a lock is awaited
/// (`pg_locks.waitstart`, PostgreSQL 14+).
pub(crate) fn lock_wait_known(version: u32) -> bool {
    version >= super::PG14
}

/// The lock-wait statement for the server `version`: [`BLOCKED`] or [`BLOCKED_13`].
pub(crate) fn blocked_sql(version: u32) -> &'static str {
    if lock_wait_known(version) {
        BLOCKED
    } else {
        BLOCKED_13
    }
}

/// Lock entries (`pg_locks` rows, granted and awaited, fast-path ones included; docs,
/// section 54.12) and the objects the shared lock table is sized for:
/// max_locks_per_transaction × (max_connections + max_prepared_transactions) (docs, section
/// 20.12). Reading `pg_locks` takes each lock-manager partition's lock briefly, in shared
/// mode: once per 15 s run.
pub(crate) const LOCKS: &str = "SELECT count(*)::float8, \
     current_setting('max_locks_per_transaction')::float8 \
     * (current_setting('max_connections')::float8 + current_setting('max_prepared_transactions')::float8) \
     FROM pg_locks";

pub(crate) const AUTOVACUUM: &str = "SELECT coalesce(p.phase, 'starting'), count(*)::float8 \
     FROM pg_stat_activity a LEFT JOIN pg_stat_progress_vacuum p ON p.pid = a.pid \
     WHERE a.backend_type = 'autovacuum worker' GROUP BY 1";

pub(crate) const TEMP: &str = "SELECT datname::text, temp_files::float8, temp_bytes::float8, deadlocks::float8 \
     FROM pg_stat_database WHERE datname IS NOT NULL";

/// The synthetic canary's round trip: a statement that costs the server nothing, so its
/// time is the session's latency (socket, scheduling, a busy postmaster host).
pub(crate) const CANARY: &str = "SELECT 1";

/// The canary's execution: a tiny plan run for real on a table every server has
/// (`pg_database`, a few rows); its `Execution Time` shows a server slow to execute even
/// the smallest statement (CPU starvation, I/O stalls on the catalog).
pub(crate) const CANARY_EXPLAIN: &str =
    "EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM pg_catalog.pg_database";

/// The `Execution Time: 0.042 ms` line of an `EXPLAIN ANALYZE` in text format, in seconds.
pub(crate) fn execution_seconds<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<f64> {
    lines.into_iter().find_map(|l| {
        let ms = l
            .trim()
            .strip_prefix("Execution Time: ")?
            .strip_suffix(" ms")?;
        ms.parse::<f64>().ok().map(|ms| ms / 1000.0)
    })
}

/// `pg_up`: 1 when the last run of this loop reached the server, 0 when it failed.
pub fn pg_up(up: bool) -> Family {
    Family::single(
        "pg_up",
        "1 when the health monitor's last 15-second query succeeded.",
        Kind::Gauge,
        f64::from(u8::from(up)),
    )
}

/// The loop's statements, prepared once per session.
pub struct Fast {
    activity: Statement,
    settings: Statement,
    ages: Statement,
    blocked: Statement,
    locks: Statement,
    autovacuum: Statement,
    temp: Statement,
    canary: Statement,
    /// The server records lock-wait start times ([`lock_wait_known`]).
    lock_wait_known: bool,
}

impl Fast {
    /// Prepares the statements on `client`, for the server `version` (`server_version_num`).
    pub async fn prepare(client: &Client, version: u32) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            activity: client.prepare(ACTIVITY).await?,
            settings: client.prepare(SETTINGS).await?,
            ages: client.prepare(AGES).await?,
            blocked: client.prepare(blocked_sql(version)).await?,
            locks: client.prepare(LOCKS).await?,
            autovacuum: client.prepare(AUTOVACUUM).await?,
            temp: client.prepare(TEMP).await?,
            canary: client.prepare(CANARY).await?,
            lock_wait_known: lock_wait_known(version),
        })
    }

    /// One run.
    pub async fn run(&self, client: &Client) -> Result<Vec<Family>, tokio_postgres::Error> {
        let mut out = vec![pg_up(true)];

        let mut count = Family::new(
            "pg_stat_activity_backends",
            "Client backends by database and state (pg_stat_activity).",
            Kind::Gauge,
        );
        let mut max_tx = Family::new(
            "pg_stat_activity_max_tx_duration",
            "Age of the oldest transaction by database and state, seconds.",
            Kind::Gauge,
        );
        let mut clients = 0.0;
        for r in client.query(&self.activity, &[]).await? {
            let (db, state): (String, String) = (r.get(0), r.get(1));
            let n: f64 = r.get(2);
            clients += n;
            count.push(vec![("datname", db.clone()), ("state", state.clone())], n);
            max_tx.push(vec![("datname", db), ("state", state)], r.get(3));
        }
        out.extend([count, max_tx]);

        let s = client.query_one(&self.settings, &[]).await?;
        let max_connections: f64 = s.get(0);
        out.push(Family::single(
            "pg_settings_max_connections",
            "max_connections.",
            Kind::Gauge,
            max_connections,
        ));
        out.push(Family::single(
            "pg_settings_superuser_reserved_connections",
            "superuser_reserved_connections.",
            Kind::Gauge,
            s.get(1),
        ));
        out.push(Family::single(
            "pg_settings_autovacuum_max_workers",
            "autovacuum_max_workers.",
            Kind::Gauge,
            s.get(2),
        ));
        out.push(Family::single(
            "pgmon_connections_used_ratio",
            "Client backends / max_connections.",
            Kind::Gauge,
            clients / max_connections.max(1.0),
        ));

        let a = client.query_one(&self.ages, &[]).await?;
        out.push(Family::single(
            "pgmon_oldest_xact_age_seconds",
            "Age of the oldest open transaction of a client backend, seconds.",
            Kind::Gauge,
            a.get(0),
        ));
        out.push(Family::single(
            "pgmon_idle_in_transaction_max_seconds",
            "Longest time a session has sat idle in transaction, seconds.",
            Kind::Gauge,
            a.get(1),
        ));
        out.push(Family::single(
            "pgmon_backend_xmin_age",
            "Oldest backend_xmin held by a session, in transactions (what vacuum cannot remove).",
            Kind::Gauge,
            a.get(2),
        ));

        let waits: Vec<(i32, Vec<i32>, Option<f64>)> = client
            .query(&self.blocked, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let chains = Chains::from_waits(&waits);
        out.push(Family::single(
            "pgmon_blocked_backends",
            "Sessions waiting on a lock another session holds.",
            Kind::Gauge,
            chains.blocked as f64,
        ));
        if self.lock_wait_known {
            out.push(Family::single(
                "pgmon_lock_wait_max_seconds",
                "Longest current lock wait, seconds (pg_locks.waitstart: PostgreSQL 14+; not exported on 13).",
                Kind::Gauge,
                chains.longest_wait,
            ));
        }
        out.push(Family::single(
            "pgmon_blocking_chain_max_length",
            "Sessions in the longest chain of blocked → blocker (0: none blocked).",
            Kind::Gauge,
            chains.longest_chain as f64,
        ));

        let l = client.query_one(&self.locks, &[]).await?;
        out.push(Family::single(
            LOCKS_METRIC,
            "Lock entries in pg_locks, granted and awaited.",
            Kind::Gauge,
            l.get(0),
        ));
        out.push(Family::single(
            LOCK_CAPACITY_METRIC,
            "Objects the shared lock table is sized for: max_locks_per_transaction x (max_connections + max_prepared_transactions).",
            Kind::Gauge,
            l.get(1),
        ));

        let mut av = Family::new(
            "pgmon_autovacuum_workers",
            "Autovacuum workers by phase (pg_stat_progress_vacuum; `starting` before the first phase).",
            Kind::Gauge,
        );
        for r in client.query(&self.autovacuum, &[]).await? {
            av.push(vec![("phase", r.get::<_, String>(0))], r.get(1));
        }
        out.push(av);

        let mut files = Family::new(
            "pg_stat_database_temp_files",
            "Temporary files created by queries, by database (pg_stat_database).",
            Kind::Counter,
        );
        let mut bytes = Family::new(
            "pg_stat_database_temp_bytes",
            "Bytes written to temporary files, by database.",
            Kind::Counter,
        );
        let mut deadlocks = Family::new(
            "pg_stat_database_deadlocks",
            "Deadlocks detected, by database.",
            Kind::Counter,
        );
        for r in client.query(&self.temp, &[]).await? {
            let db: String = r.get(0);
            files.push(vec![("datname", db.clone())], r.get(1));
            bytes.push(vec![("datname", db.clone())], r.get(2));
            deadlocks.push(vec![("datname", db)], r.get(3));
        }
        out.extend([files, bytes, deadlocks]);

        let started = std::time::Instant::now();
        client.query_one(&self.canary, &[]).await?;
        out.push(Family::single(
            "pgmon_canary_seconds",
            "Round trip of SELECT 1 on the 15-second loop's session, seconds.",
            Kind::Gauge,
            started.elapsed().as_secs_f64(),
        ));
        let plan: Vec<String> = client
            .simple_query(CANARY_EXPLAIN)
            .await?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        if let Some(secs) = execution_seconds(plan.iter().map(String::as_str)) {
            out.push(Family::single(
                "pgmon_canary_execution_seconds",
                "Execution Time of EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM pg_database, seconds.",
                Kind::Gauge,
                secs,
            ));
        }
        Ok(out)
    }
}

/// Blocking chains from (blocked pid, its blockers, seconds waited if known).
#[derive(Debug, Default, PartialEq)]
pub struct Chains {
    /// Sessions that wait on at least one blocker.
    pub blocked: usize,
    /// Longest known wait, seconds (0 when none is known: nobody waits, or PostgreSQL 13).
    pub longest_wait: f64,
    /// Sessions in the longest blocked → blocker → … chain (a lone blocked session and
    /// its blocker make 2).
    pub longest_chain: usize,
}

impl Chains {
    /// Follows each blocked session's first blocker up to the root (cycles, which the
    /// deadlock detector is about to break, are cut).
    pub fn from_waits(waits: &[(i32, Vec<i32>, Option<f64>)]) -> Self {
        let next: HashMap<i32, i32> = waits
            .iter()
            .filter_map(|(pid, by, _)| by.first().map(|b| (*pid, *b)))
            .collect();
        let mut longest_chain = 0;
        for start in next.keys() {
            let mut len = 1;
            let mut at = *start;
            while let Some(&b) = next.get(&at) {
                len += 1;
                at = b;
                if at == *start || len > next.len() + 1 {
                    break;
                }
            }
            longest_chain = longest_chain.max(len);
        }
        Self {
            blocked: next.len(),
            longest_wait: waits
                .iter()
                .filter(|(_, by, _)| !by.is_empty())
                .filter_map(|w| w.2)
                .fold(0.0, f64::max),
            longest_chain,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_canary_reads_the_execution_time() {
        let plan = [
            "Aggregate  (cost=1.04..1.05 rows=1 width=8) (actual time=0.021..0.022 rows=1 loops=1)",
            "  Buffers: shared hit=1",
            "Planning Time: 0.101 ms",
            "Execution Time: 0.042 ms",
        ];
        let secs = super::execution_seconds(plan).expect("a time");
        assert!((secs - 0.000_042).abs() < 1e-12, "{secs}");
        assert_eq!(super::execution_seconds(["Seq Scan on t"]), None);
    }

    use super::*;

    #[test]
    fn chains_follow_blockers_to_the_root() {
        assert_eq!(Chains::from_waits(&[]), Chains::default());
        // 3 waits on 2, 2 waits on 1; 5 waits on 1: the longest chain is 3 → 2 → 1.
        let c = Chains::from_waits(&[
            (3, vec![2], Some(1.0)),
            (2, vec![1], Some(4.5)),
            (5, vec![1], Some(0.5)),
            (9, vec![], Some(7.0)),
        ]);
        assert_eq!(
            c,
            Chains {
                blocked: 3,
                longest_wait: 4.5,
                longest_chain: 3
            }
        );
        // A cycle ends.
        assert_eq!(
            Chains::from_waits(&[(1, vec![2], Some(1.0)), (2, vec![1], Some(1.0))]).longest_chain,
            3
        );
        // PostgreSQL 13: chains without wait times.
        let c = Chains::from_waits(&[(3, vec![2], None), (2, vec![1], None)]);
        assert_eq!((c.blocked, c.longest_chain, c.longest_wait), (2, 3, 0.0));
    }

    #[test]
    fn the_lock_wait_age_is_read_from_14_on() {
        assert_eq!(blocked_sql(130_023), BLOCKED_13);
        assert!(!BLOCKED_13.contains("waitstart"));
        assert!(!lock_wait_known(130_023));
        for v in [140_000, 150_014, 160_014, 170_010, 180_004] {
            assert_eq!(blocked_sql(v), BLOCKED, "{v}");
            assert!(lock_wait_known(v));
        }
    }
}
