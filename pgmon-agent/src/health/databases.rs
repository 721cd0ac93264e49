//! The loops that look inside each database: every 10 minutes the largest relations, dead
//! tuples, vacuum/analyze freshness, never-scanned indexes and partitions (statistics views,
//! PostgreSQL docs, section 27.2.19–27.2.20, are per database, so each database gets its own
//! short session); every hour the transaction-ID wraparound age of each database and its
//! oldest relation (docs, section 24.1.5 "Preventing Transaction ID Wraparound Failures"),
//! and the most bloated tables of each (`super::bloat`).

use tokio_postgres::Client;

use crate::db::DbConfig as Config;

use super::board::{Family, Kind};

/// Databases that accept connections, largest first: (name, bytes).
pub(crate) const DATABASES: &str = "SELECT datname::text, pg_database_size(oid)::float8 FROM pg_database \
     WHERE datallowconn AND NOT datistemplate ORDER BY 2 DESC";

pub(crate) const WRAPAROUND: &str = "SELECT datname::text, age(datfrozenxid)::float8, mxid_age(datminmxid)::float8 \
     FROM pg_database WHERE datallowconn";

pub(crate) const RELATIONS: &str = "SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid)::float8, \
     c.relkind::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg_toast%' \
     ORDER BY 2 DESC LIMIT $1";

pub(crate) const DEAD: &str = "SELECT schemaname || '.' || relname, n_dead_tup::float8, \
     (n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1)) \
     FROM pg_stat_user_tables WHERE n_dead_tup > 0 ORDER BY n_dead_tup DESC LIMIT $1";

pub(crate) const FRESHNESS: &str = "SELECT \
     coalesce(max(extract(epoch FROM now() - greatest(last_vacuum, last_autovacuum))), 0)::float8, \
     coalesce(max(extract(epoch FROM now() - greatest(last_analyze, last_autoanalyze))), 0)::float8, \
     count(*) FILTER (WHERE last_analyze IS NULL AND last_autoanalyze IS NULL AND n_live_tup > 0)::float8, \
     count(*) FILTER (WHERE n_mod_since_analyze > 0 AND coalesce(greatest(last_analyze, last_autoanalyze), \
                            '-infinity') < now() - interval '12 hours')::float8 \
     FROM pg_stat_user_tables";

pub(crate) const UNUSED_INDEXES: &str = "SELECT s.schemaname || '.' || s.indexrelname, pg_relation_size(s.indexrelid)::float8 \
     FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid \
     WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary \
     ORDER BY 2 DESC LIMIT $1";

/// The largest indexes: name, table, bytes, scans since the statistics reset, access method
/// (`pg_am.amname`: btree, gin, gist, …).
pub(crate) const INDEXES: &str = "SELECT s.schemaname || '.' || s.indexrelname, s.schemaname || '.' || s.relname, \
     pg_relation_size(s.indexrelid)::float8, s.idx_scan::float8, am.amname::text \
     FROM pg_stat_user_indexes s JOIN pg_class c ON c.oid = s.indexrelid JOIN pg_am am ON am.oid = c.relam \
     ORDER BY 3 DESC LIMIT $1";

/// Index usage, for the read API: the `$1` largest indexes with their table, access method,
/// bytes, scans, index entries returned by those scans (`idx_tup_read`) and live table rows
/// fetched through them (`idx_tup_fetch`) since the statistics reset (docs, "pg_stat_all_indexes",
/// section 27.2.19), whether the index is unique and valid, and its definition.
pub(crate) const INDEX_USAGE: &str = "SELECT s.schemaname || '.' || s.indexrelname AS index, \
     s.schemaname || '.' || s.relname AS relation, am.amname::text AS access_method, \
     pg_relation_size(s.indexrelid)::float8 AS bytes, s.idx_scan::float8 AS scans, \
     s.idx_tup_read::float8 AS tuples_read, s.idx_tup_fetch::float8 AS tuples_fetched, \
     i.indisunique AS unique, i.indisvalid AS valid, pg_get_indexdef(s.indexrelid) AS definition \
     FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid \
     JOIN pg_class c ON c.oid = s.indexrelid JOIN pg_am am ON am.oid = c.relam \
     ORDER BY bytes DESC, index LIMIT $1";

/// The tables with the most tuples, and the seconds since each was last vacuumed and
/// analyzed (manually or by autovacuum; NULL: never since the statistics reset).
pub(crate) const TABLE_AGES: &str = "SELECT schemaname || '.' || relname, \
     extract(epoch FROM now() - greatest(last_vacuum, last_autovacuum))::float8, \
     extract(epoch FROM now() - greatest(last_analyze, last_autoanalyze))::float8 \
     FROM pg_stat_user_tables ORDER BY n_live_tup + n_dead_tup DESC LIMIT $1";

pub(crate) const PARTITIONS: &str = "SELECT n.nspname || '.' || c.relname, count(*)::float8 \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_inherits i ON i.inhparent = c.oid \
     WHERE c.relkind = 'p' GROUP BY 1 ORDER BY 2 DESC LIMIT $1";

/// Range-partitioned tables whose key is one `date`, `timestamp` or `timestamptz` column:
/// per table, seconds from now to the upper bound of its newest partition (what is covered
/// before rows find no partition, or fall into the default one; negative: already past),
/// seconds since the upper bound of its oldest partition (how long ago its newest rows
/// could be from: past the retention, the whole partition can go), and its time-ranged
/// partitions. Bounds are read from `pg_get_expr(relpartbound)` (`FOR VALUES FROM (…) TO
/// (…)`, docs, "CREATE TABLE … PARTITION OF"); `MINVALUE`/`MAXVALUE`/`DEFAULT` bounds are
/// not time ranges and are skipped. The `$1` tables nearest to running out first.
pub(crate) const PARTITION_TIMES: &str = "SELECT p.relation, \
       extract(epoch FROM max(p.upper) - now())::float8 AS horizon_seconds, \
       extract(epoch FROM now() - min(p.upper))::float8 AS oldest_age_seconds, \
       count(*)::float8 AS partitions, max(p.upper)::text AS newest_upper, min(p.upper)::text AS oldest_upper \
     FROM (SELECT n.nspname || '.' || c.relname AS relation, \
             (regexp_match(pg_get_expr(k.relpartbound, k.oid), 'TO \\(''([^'']+)''\\)$'))[1]::timestamptz AS upper \
           FROM pg_partitioned_table pt \
           JOIN pg_class c ON c.oid = pt.partrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0] \
           JOIN pg_inherits i ON i.inhparent = c.oid JOIN pg_class k ON k.oid = i.inhrelid \
           WHERE pt.partstrat = 'r' AND pt.partnatts = 1 \
             AND a.atttypid IN ('date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype)) p \
     WHERE p.upper IS NOT NULL AND isfinite(p.upper) \
     GROUP BY p.relation ORDER BY horizon_seconds, p.relation LIMIT $1";

const OLDEST_RELATION: &str = "SELECT coalesce(max(age(relfrozenxid)), 0)::float8 FROM pg_class \
     WHERE relkind IN ('r', 'm', 't')";

/// The 10-minute loop: one short session per database (at most `max_databases`, largest
/// first), each reading the top `top_n` of every per-relation family.
pub async fn slow(
    client: &Client,
    monitor: &Config,
    top_n: usize,
    max_databases: usize,
    setup: &str,
) -> anyhow::Result<Vec<Family>> {
    let mut size = Family::new(
        "pg_database_size_bytes",
        "Size of each database, bytes.",
        Kind::Gauge,
    );
    let mut names = Vec::new();
    for r in client.query(DATABASES, &[]).await? {
        let db: String = r.get(0);
        size.push(vec![("datname", db.clone())], r.get(1));
        names.push(db);
    }
    let mut f = PerDatabase::new();
    let top = top_n as i64;
    for db in names.into_iter().take(max_databases) {
        let mut config = monitor.clone();
        config.dbname(&db);
        let c = match crate::db::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(database = %db, error = %e, "health: cannot connect; skipped this round");
                continue;
            }
        };
        c.batch_execute(setup).await?;
        let d = || ("datname", db.clone());
        for r in c.query(RELATIONS, &[&top]).await? {
            f.relation_size.push(
                vec![d(), ("relation", r.get(0)), ("relkind", r.get(2))],
                r.get(1),
            );
        }
        for r in c.query(INDEXES, &[&top]).await? {
            let labels = vec![
                d(),
                ("index", r.get(0)),
                ("relation", r.get(1)),
                ("access_method", r.get(4)),
            ];
            f.index_size.push(labels.clone(), r.get(2));
            f.index_scans.push(labels, r.get(3));
        }
        for r in c.query(TABLE_AGES, &[&top]).await? {
            let rel: String = r.get(0);
            // Never vacuumed or analyzed: left out, not 0.
            if let Some(age) = r.get::<_, Option<f64>>(1) {
                f.relation_vacuum_age
                    .push(vec![d(), ("relation", rel.clone())], age);
            }
            if let Some(age) = r.get::<_, Option<f64>>(2) {
                f.relation_analyze_age
                    .push(vec![d(), ("relation", rel)], age);
            }
        }
        for r in c.query(DEAD, &[&top]).await? {
            let rel: String = r.get(0);
            f.dead.push(vec![d(), ("relation", rel.clone())], r.get(1));
            f.dead_ratio.push(vec![d(), ("relation", rel)], r.get(2));
        }
        let r = c.query_one(FRESHNESS, &[]).await?;
        f.vacuum_age.push(vec![d()], r.get(0));
        f.analyze_age.push(vec![d()], r.get(1));
        f.never_analyzed.push(vec![d()], r.get(2));
        f.stale.push(vec![d()], r.get(3));
        for r in c.query(UNUSED_INDEXES, &[&top]).await? {
            f.unused_index
                .push(vec![d(), ("index", r.get(0))], r.get(1));
        }
        for r in c.query(PARTITIONS, &[&top]).await? {
            f.partitions
                .push(vec![d(), ("relation", r.get(0))], r.get(1));
        }
        for r in c.query(PARTITION_TIMES, &[&top]).await? {
            let rel: String = r.get(0);
            f.partition_horizon
                .push(vec![d(), ("relation", rel.clone())], r.get(1));
            f.partition_oldest
                .push(vec![d(), ("relation", rel)], r.get(2));
        }
    }
    let mut out = vec![size];
    out.extend(f.into_families());
    Ok(out)
}

/// The hourly loop: wraparound age of every database, and of the oldest relation in each;
/// the most bloated tables and the largest GIN indexes' pending lists (`super::bloat`) of
/// each (one short session per database, at most `max_databases`).
pub async fn hourly(
    client: &Client,
    monitor: &Config,
    max_databases: usize,
    bloat: (usize, usize),
    setup: &str,
) -> anyhow::Result<Vec<Family>> {
    let mut xid = Family::new(
        "pgmon_database_xid_age",
        "age(datfrozenxid): transactions since the database was last fully frozen. Wraparound protection stops writes near 2^31.",
        Kind::Gauge,
    );
    let mut mxid = Family::new(
        "pgmon_database_mxid_age",
        "mxid_age(datminmxid): multixacts since the database was last fully frozen.",
        Kind::Gauge,
    );
    let mut used = Family::new(
        "pgmon_database_wraparound_ratio",
        "age(datfrozenxid) / 2^31: how far the database is toward transaction ID wraparound.",
        Kind::Gauge,
    );
    let mut dbs = Vec::new();
    for r in client.query(WRAPAROUND, &[]).await? {
        let db: String = r.get(0);
        let age: f64 = r.get(1);
        xid.push(vec![("datname", db.clone())], age);
        mxid.push(vec![("datname", db.clone())], r.get(2));
        used.push(vec![("datname", db.clone())], age / 2_147_483_648.0);
        dbs.push((age, db));
    }
    dbs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut oldest = Family::new(
        "pgmon_relation_xid_age_max",
        "Largest age(relfrozenxid) of a relation in each database: the next one an anti-wraparound vacuum must reach.",
        Kind::Gauge,
    );
    let mut bloat_bytes = Family::new(
        "pgmon_relation_bloat_bytes",
        "Space the most bloated tables hold beyond what their live rows need, top-N per database, bytes; method: estimate (from pg_stats) or pgstattuple_approx.",
        Kind::Gauge,
    );
    let mut bloat_ratio = Family::new(
        "pgmon_relation_bloat_ratio",
        "The same bloat ÷ the table's size.",
        Kind::Gauge,
    );
    let mut gin_bytes = Family::new(
        "pgmon_gin_pending_list_bytes",
        "Pending list of the largest GIN indexes (entries not yet merged into the index, read whole by every search), top-N per database, bytes; where pgstattuple is installed.",
        Kind::Gauge,
    );
    let mut gin_tuples = Family::new(
        "pgmon_gin_pending_list_tuples",
        "Entries in the same pending lists.",
        Kind::Gauge,
    );
    for (_, db) in dbs.into_iter().take(max_databases) {
        let mut config = monitor.clone();
        config.dbname(&db);
        let Ok(c) = crate::db::connect(&config).await else {
            continue;
        };
        c.batch_execute(setup).await?;
        let r = c.query_one(OLDEST_RELATION, &[]).await?;
        oldest.push(vec![("datname", db.clone())], r.get(0));
        for b in super::bloat::read(&c, bloat.0, bloat.1).await? {
            let labels = vec![
                ("datname", db.clone()),
                ("relation", b.relation.clone()),
                ("method", b.method.to_owned()),
            ];
            bloat_ratio.push(labels.clone(), b.ratio());
            bloat_bytes.push(labels, b.bloat_bytes);
        }
        for g in super::bloat::gin_pending(&c, bloat.0).await? {
            let labels = vec![
                ("datname", db.clone()),
                ("index", g.index),
                ("relation", g.relation),
            ];
            gin_tuples.push(labels.clone(), g.pending_tuples);
            gin_bytes.push(labels, g.pending_bytes);
        }
    }
    Ok(vec![
        xid,
        mxid,
        used,
        oldest,
        bloat_bytes,
        bloat_ratio,
        gin_bytes,
        gin_tuples,
    ])
}

/// The per-relation families of the 10-minute loop.
struct PerDatabase {
    relation_size: Family,
    index_size: Family,
    index_scans: Family,
    relation_vacuum_age: Family,
    relation_analyze_age: Family,
    dead: Family,
    dead_ratio: Family,
    vacuum_age: Family,
    analyze_age: Family,
    never_analyzed: Family,
    stale: Family,
    unused_index: Family,
    partitions: Family,
    partition_horizon: Family,
    partition_oldest: Family,
}

impl PerDatabase {
    fn new() -> Self {
        Self {
            relation_size: Family::new(
                "pgmon_relation_size_bytes",
                "Largest relations (table + indexes + TOAST), top-N per database, bytes; relkind as pg_class says (r table, m materialized view).",
                Kind::Gauge,
            ),
            index_size: Family::new(
                "pgmon_index_size_bytes",
                "Largest indexes, top-N per database, bytes; access_method as pg_am names it (btree, gin, gist, …).",
                Kind::Gauge,
            ),
            index_scans: Family::new(
                "pgmon_index_scans",
                "Scans of the same indexes since the statistics reset (pg_stat_user_indexes.idx_scan).",
                Kind::Counter,
            ),
            relation_vacuum_age: Family::new(
                "pgmon_relation_vacuum_age_seconds",
                "Seconds since each of the top-N tables (by tuples) was last vacuumed, manually or by autovacuum; absent: never.",
                Kind::Gauge,
            ),
            relation_analyze_age: Family::new(
                "pgmon_relation_analyze_age_seconds",
                "Seconds since each of the same tables was last analyzed, manually or by autovacuum; absent: never.",
                Kind::Gauge,
            ),
            dead: Family::new(
                "pgmon_relation_dead_tuples",
                "Relations with the most dead tuples, top-N per database.",
                Kind::Gauge,
            ),
            dead_ratio: Family::new(
                "pgmon_relation_dead_ratio",
                "Dead / (live + dead) tuples of the same relations.",
                Kind::Gauge,
            ),
            vacuum_age: Family::new(
                "pgmon_vacuum_age_max_seconds",
                "Longest time since a table of the database was last vacuumed (manual or auto), seconds.",
                Kind::Gauge,
            ),
            analyze_age: Family::new(
                "pgmon_analyze_age_max_seconds",
                "Longest time since a table of the database was last analyzed, seconds.",
                Kind::Gauge,
            ),
            never_analyzed: Family::new(
                "pgmon_never_analyzed_tables",
                "Tables with rows that were never analyzed (the planner guesses their statistics).",
                Kind::Gauge,
            ),
            stale: Family::new(
                "pgmon_stale_statistics_tables",
                "Tables changed since their last analyze, which is more than 12 hours old (or never happened).",
                Kind::Gauge,
            ),
            unused_index: Family::new(
                "pgmon_unused_index_bytes",
                "Indexes never scanned since statistics were reset (not unique, not primary key), top-N per database by size, bytes.",
                Kind::Gauge,
            ),
            partitions: Family::new(
                "pgmon_partitions",
                "Partitions of each partitioned table, top-N per database.",
                Kind::Gauge,
            ),
            partition_horizon: Family::new(
                "pgmon_partition_horizon_seconds",
                "Seconds until the upper bound of the newest partition of each table range-partitioned on time (negative: new rows already find no partition of their own).",
                Kind::Gauge,
            ),
            partition_oldest: Family::new(
                "pgmon_partition_oldest_age_seconds",
                "Seconds since the upper bound of the oldest partition of the same tables: its rows are all at least this old.",
                Kind::Gauge,
            ),
        }
    }

    fn into_families(self) -> Vec<Family> {
        vec![
            self.relation_size,
            self.index_size,
            self.index_scans,
            self.relation_vacuum_age,
            self.relation_analyze_age,
            self.dead,
            self.dead_ratio,
            self.vacuum_age,
            self.analyze_age,
            self.never_analyzed,
            self.stale,
            self.unused_index,
            self.partitions,
            self.partition_horizon,
            self.partition_oldest,
        ]
    }
}
