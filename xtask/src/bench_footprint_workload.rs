//! The tenants and the readings of the footprint benchmark ([`crate::bench_footprint`]):
//! `n` roles, each owning a schema of its own with two tables in database `tenants`; their
//! traffic (one short read-write transaction per role at a steady pace, every role's
//! session held open); and snapshots of what pgmon wrote (`pg_stat_user_tables` of schema
//! `pgmon`, `pg_stat_statements` by role, `pg_current_wal_lsn()`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use pgmon_tests::{Cluster, Transport};

/// The database of the tenants' tables (pgmon's schema is installed there too).
pub const TENANT_DB: &str = "tenants";

/// The name of tenant `i` (1-based): `fp_00001`.
pub fn role_name(i: usize) -> String {
    format!("fp_{i:05}")
}

/// Creates roles `fp_00001`…: each `LOGIN`, owning schema `fp_NNNNN` in [`TENANT_DB`] with
/// `t` (100 rows, primary key) and `h` (append-only history). Unqualified names resolve
/// there through the default `search_path` (`"$user", public`). 100 roles per transaction.
pub fn create_tenants(cluster: &Cluster, n: usize) -> Result<()> {
    let mut script = String::new();
    for first in (1..=n).step_by(100) {
        let last = (first + 99).min(n);
        script.push_str(&format!(
            "DO $$ DECLARE r text; BEGIN FOR i IN {first}..{last} LOOP \
               r := format('fp_%s', lpad(i::text, 5, '0')); \
               EXECUTE format('CREATE ROLE %I LOGIN', r); \
               EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', r, r); \
               EXECUTE format('CREATE TABLE %I.t (id int PRIMARY KEY, v bigint NOT NULL, pad text)', r); \
               EXECUTE format('INSERT INTO %I.t SELECT g, 0, repeat(''x'', 80) FROM generate_series(1, 100) g', r); \
               EXECUTE format('CREATE TABLE %I.h (id int NOT NULL, delta int NOT NULL, at timestamptz NOT NULL)', r); \
               EXECUTE format('ALTER TABLE %I.t OWNER TO %I', r, r); \
               EXECUTE format('ALTER TABLE %I.h OWNER TO %I', r, r); \
             END LOOP; END $$;\n"
        ));
    }
    script.push_str("ANALYZE;\n");
    cluster.psql("postgres", TENANT_DB, Transport::Unix, &script)?;
    Ok(())
}

/// Writes a one-hour ledger of 60 one-minute buckets (the most the agent's `Ledger::coarse` keeps)
/// for each of the `n` roles into `pgmon.budget_ledgers` (database `postgres`), spends
/// with 17 significant digits like the agent's f64s: the state after an hour of traffic,
/// which the agent loads at start, so every row it writes is full-size from the first.
pub fn seed_ledgers(cluster: &Cluster, n: usize, tier: &str) -> Result<()> {
    cluster.psql(
        "postgres",
        "postgres",
        Transport::Unix,
        &format!(
            "INSERT INTO pgmon.budget_ledgers (role, tier, buckets) \
             SELECT format('fp_%s', lpad(i::text, 5, '0')), '{tier}', \
               (SELECT jsonb_agg(jsonb_build_array(m, random() * 50000 + i * 0) ORDER BY m) \
                  FROM generate_series(0, 59) j, \
                  LATERAL (SELECT (floor(extract(epoch FROM now()) / 60) * 60 - 60 * j)::bigint AS m) k) \
             FROM generate_series(1, {n}) i"
        ),
    )?;
    Ok(())
}

/// The tenants' traffic: `clients` threads share the roles (role `i` on thread
/// `i % clients`), each holding one session per role open and running, role after role,
/// `BEGIN; UPDATE t …; SELECT … FROM t …; INSERT INTO h …; COMMIT` (prepared statements),
/// paced so that every role runs one transaction per `interval`. Stopped on drop.
pub struct Workload {
    stop: Arc<AtomicBool>,
    transactions: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl Workload {
    /// Opens every session (returns once all are connected) and starts the traffic.
    pub fn start(
        cluster: &Cluster,
        roles: usize,
        clients: usize,
        interval: Duration,
    ) -> Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let transactions = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(std::sync::Barrier::new(clients + 1));
        let failed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for c in 0..clients {
            let conninfos: Vec<String> = (1..=roles)
                .filter(|i| i % clients == c)
                .map(|i| cluster.conninfo(&role_name(i), TENANT_DB, Transport::Unix))
                .collect();
            let (stop, transactions, errors, ready, failed) = (
                stop.clone(),
                transactions.clone(),
                errors.clone(),
                ready.clone(),
                failed.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let sessions = conninfos
                    .iter()
                    .map(|ci| Session::open(ci))
                    .collect::<Result<Vec<_>>>();
                if sessions.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                ready.wait();
                let mut sessions = sessions?;
                drive(&mut sessions, interval, &stop, &transactions, &errors);
                Ok(())
            }));
        }
        ready.wait();
        let mut w = Workload {
            stop,
            transactions,
            errors,
            threads,
        };
        if failed.load(Ordering::Relaxed) {
            w.finish()?;
            anyhow::bail!("a workload thread could not open its sessions");
        }
        Ok(w)
    }

    /// Transactions committed so far.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Statements that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Stops the traffic, closes the sessions and returns the first thread's error.
    pub fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .map_err(|_| anyhow::anyhow!("workload thread panicked"))
                .and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// One role's session and its prepared statements.
struct Session {
    client: postgres::Client,
    update: postgres::Statement,
    select: postgres::Statement,
    insert: postgres::Statement,
}

impl Session {
    fn open(conninfo: &str) -> Result<Session> {
        let mut client = postgres::Client::connect(conninfo, postgres::NoTls)
            .with_context(|| format!("connect {conninfo}"))?;
        Ok(Session {
            update: client.prepare("UPDATE t SET v = v + $1 WHERE id = $2")?,
            select: client.prepare("SELECT v, pad FROM t WHERE id = $1")?,
            insert: client.prepare("INSERT INTO h (id, delta, at) VALUES ($1, $2, now())")?,
            client,
        })
    }

    fn transaction(&mut self, id: i32, delta: i32) -> Result<(), postgres::Error> {
        let mut tx = self.client.transaction()?;
        tx.execute(&self.update, &[&i64::from(delta), &id])?;
        tx.query(&self.select, &[&id])?;
        tx.execute(&self.insert, &[&id, &delta])?;
        tx.commit()
    }
}

/// Runs the sessions in turn, one transaction each per `interval`, until `stop`; a thread
/// that falls behind runs without pausing and does not make up for lost slots.
fn drive(
    sessions: &mut [Session],
    interval: Duration,
    stop: &AtomicBool,
    transactions: &AtomicU64,
    errors: &AtomicU64,
) {
    if sessions.is_empty() {
        return;
    }
    let slot = interval / sessions.len() as u32;
    let mut next = Instant::now();
    let mut k: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let i = (k % sessions.len() as u64) as usize;
        let id = (k % 100) as i32 + 1;
        match sessions[i].transaction(id, (k % 7) as i32 - 3) {
            Ok(()) => transactions.fetch_add(1, Ordering::Relaxed),
            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
        };
        k += 1;
        next += slot;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval {
            next = now;
        }
    }
}

/// What pgmon's tables hold and what was written so far, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Seconds since the benchmark's start.
    pub at: f64,
    /// `(database, table)` → its figures.
    pub tables: BTreeMap<(String, String), TableStat>,
    /// `pg_stat_statements` summed by class of role: `pgmon`, `workload` (the tenants),
    /// `other` (the superuser: set-up, readings, the cost worker).
    pub statements: BTreeMap<String, Wal>,
    /// pgmon's statements: `(dbid, queryid)` → (text, figures).
    pub pgmon_statements: BTreeMap<String, (String, Wal)>,
    /// `pg_current_wal_lsn()` as bytes since 0/0.
    pub lsn: f64,
    /// `pg_stat_statements_info.dealloc` (entries evicted: must stay 0).
    pub dealloc: f64,
    /// Checkpoints so far (`pg_stat_bgwriter`, timed + requested).
    pub checkpoints: f64,
    /// The workload's committed transactions.
    pub transactions: u64,
}

/// One `pgmon.*` table: exact row count, `pg_total_relation_size` (heap, indexes, TOAST),
/// and its `pg_stat_user_tables` counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableStat {
    pub rows: f64,
    pub bytes: f64,
    /// n_tup_ins + n_tup_upd + n_tup_del.
    pub written: f64,
    pub hot_updates: f64,
    pub dead: f64,
    pub autovacuums: f64,
}

/// Sums of `pg_stat_statements` columns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wal {
    pub calls: f64,
    pub rows: f64,
    pub records: f64,
    pub fpi: f64,
    pub bytes: f64,
}

impl Wal {
    /// `self − before`, column by column.
    pub fn minus(&self, before: &Wal) -> Wal {
        Wal {
            calls: self.calls - before.calls,
            rows: self.rows - before.rows,
            records: self.records - before.records,
            fpi: self.fpi - before.fpi,
            bytes: self.bytes - before.bytes,
        }
    }
}

fn wal_of(r: &postgres::Row, from: usize) -> Wal {
    Wal {
        calls: r.get(from),
        rows: r.get(from + 1),
        records: r.get(from + 2),
        fpi: r.get(from + 3),
        bytes: r.get(from + 4),
    }
}

const WAL_COLUMNS: &str = "sum(calls)::float8, sum(rows)::float8, sum(wal_records)::float8, \
                           sum(wal_fpi)::float8, sum(wal_bytes)::float8";

/// Reads a [`Snapshot`] over fresh sessions (so the statistics are not a cached
/// snapshot), `at` seconds after `start`.
pub fn snapshot(cluster: &Cluster, start: Instant, transactions: u64) -> Result<Snapshot> {
    let mut s = Snapshot {
        at: start.elapsed().as_secs_f64(),
        transactions,
        ..Snapshot::default()
    };
    for db in ["postgres", TENANT_DB] {
        let mut c = postgres::Client::connect(
            &cluster.conninfo("postgres", db, Transport::Unix),
            postgres::NoTls,
        )?;
        for r in c.query(
            "SELECT relname::text, pg_total_relation_size(relid)::float8, \
                    (n_tup_ins + n_tup_upd + n_tup_del)::float8, n_tup_hot_upd::float8, \
                    n_dead_tup::float8, autovacuum_count::float8 \
             FROM pg_stat_user_tables WHERE schemaname = 'pgmon' ORDER BY relname",
            &[],
        )? {
            let name: String = r.get(0);
            let rows: i64 = c
                .query_one(&format!("SELECT count(*) FROM pgmon.{name}"), &[])?
                .get(0);
            s.tables.insert(
                (db.to_owned(), name),
                TableStat {
                    rows: rows as f64,
                    bytes: r.get(1),
                    written: r.get(2),
                    hot_updates: r.get(3),
                    dead: r.get(4),
                    autovacuums: r.get(5),
                },
            );
        }
    }
    let mut c = postgres::Client::connect(
        &cluster.conninfo("postgres", "postgres", Transport::Unix),
        postgres::NoTls,
    )?;
    for r in c.query(
        &format!(
            "SELECT CASE WHEN r.rolname = 'pgmon' THEN 'pgmon' \
                         WHEN r.rolname LIKE 'fp\\_%' THEN 'workload' ELSE 'other' END, \
                    {WAL_COLUMNS} \
             FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid GROUP BY 1"
        ),
        &[],
    )? {
        s.statements.insert(r.get(0), wal_of(&r, 1));
    }
    for r in c.query(
        &format!(
            "SELECT dbid::text || '/' || queryid::text, \
                    left(regexp_replace(min(query), '\\s+', ' ', 'g'), 110), {WAL_COLUMNS} \
             FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
             WHERE r.rolname = 'pgmon' GROUP BY 1"
        ),
        &[],
    )? {
        s.pgmon_statements
            .insert(r.get(0), (r.get(1), wal_of(&r, 2)));
    }
    let r = c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                (SELECT dealloc::float8 FROM pg_stat_statements_info), \
                (SELECT (checkpoints_timed + checkpoints_req)::float8 FROM pg_stat_bgwriter)",
        &[],
    )?;
    s.lsn = r.get(0);
    s.dealloc = r.get(1);
    s.checkpoints = r.get(2);
    Ok(s)
}
