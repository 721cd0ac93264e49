//! Per-database endpoints: `/api/v1/autovacuum` and `/api/v1/partitions`. Statistics
//! views and catalogs are per database (PostgreSQL docs, section 27.2.19–27.2.20), so these
//! run in the database `?database=` names (the health loops' SQL where they read the same:
//! `crate::health::databases`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio_postgres::Client;

use super::{ApiError, Recorder, session::Session};
use crate::health::{bloat, databases};

/// Tables with the most dead tuples, with their vacuum and analyze history and the number
/// of dead tuples past which autovacuum takes them: `autovacuum_vacuum_threshold +
/// autovacuum_vacuum_scale_factor × reltuples` (docs, section 24.1.6 "The Autovacuum
/// Daemon"; per-table storage parameters, listed in `reloptions`, may change it).
const TABLES: &str = "SELECT s.schemaname || '.' || s.relname AS relation, \
     s.n_live_tup, s.n_dead_tup, \
     s.n_dead_tup::float8 / greatest(s.n_live_tup + s.n_dead_tup, 1) AS dead_ratio, \
     current_setting('autovacuum_vacuum_threshold')::float8 \
       + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0) \
       AS autovacuum_threshold, \
     s.n_mod_since_analyze, \
     s.last_vacuum::text, s.last_autovacuum::text, s.last_analyze::text, s.last_autoanalyze::text, \
     s.vacuum_count, s.autovacuum_count, s.analyze_count, s.autoanalyze_count, \
     coalesce(c.reloptions, '{}')::text[] AS reloptions \
     FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
     ORDER BY s.n_dead_tup DESC, relation LIMIT $1";

/// Autovacuum workers of the whole cluster and their progress (docs, "VACUUM Progress
/// Reporting", section 27.4.5 in PostgreSQL 17); `query` names the table.
const WORKERS: &str = "SELECT a.pid, a.datname::text, a.query, coalesce(p.phase, 'starting') AS phase, \
     p.heap_blks_total, p.heap_blks_scanned, p.heap_blks_vacuumed, \
     extract(epoch FROM now() - a.xact_start)::float8 AS running_seconds \
     FROM pg_stat_activity a LEFT JOIN pg_stat_progress_vacuum p ON p.pid = a.pid \
     WHERE a.backend_type = 'autovacuum worker' ORDER BY running_seconds DESC NULLS LAST";

/// The autovacuum settings the thresholds above use (docs, "Automatic Vacuuming",
/// section 19.10 in PostgreSQL 17).
const SETTINGS: &str = "SELECT name, setting, unit FROM pg_settings \
     WHERE name = 'autovacuum' OR name LIKE 'autovacuum\\_%' ORDER BY name";

/// The partitions of the parents in `$1` (`text[]`, `schema.name`), the first `$2` of each by
/// name, with each parent's partition key and totals over all its partitions (docs,
/// "pg_inherits", section 5.12 "Table Partitioning"). `bytes` is
/// `pg_total_relation_size`: 0 for a partition that is itself partitioned.
const PARTITIONS: &str = "SELECT parent, partition_key, partition, relkind, bound, bytes, \
     estimated_rows, total_bytes, has_default FROM ( \
       SELECT pn.nspname || '.' || p.relname AS parent, pg_get_partkeydef(p.oid) AS partition_key, \
         n.nspname || '.' || c.relname AS partition, c.relkind::text AS relkind, \
         pg_get_expr(c.relpartbound, c.oid) AS bound, \
         pg_total_relation_size(c.oid)::float8 AS bytes, greatest(c.reltuples, 0)::float8 AS estimated_rows, \
         (sum(pg_total_relation_size(c.oid)) OVER w)::float8 AS total_bytes, \
         bool_or(pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') OVER w AS has_default, \
         row_number() OVER (w ORDER BY c.relname) AS n \
       FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
       JOIN pg_namespace pn ON pn.oid = p.relnamespace \
       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
       WHERE p.relkind = 'p' AND pn.nspname || '.' || p.relname = ANY ($1) \
       WINDOW w AS (PARTITION BY p.oid)) x \
     WHERE n <= $2 ORDER BY parent, partition";

/// `/api/v1/autovacuum`: the cluster's autovacuum workers and settings, and in the
/// database `db` (through `c`) its freshness summary, the `limit` tables with the most
/// dead tuples, the `limit` most bloated by the estimate of `health::bloat`, and the pending
/// lists of its `limit` largest GIN indexes (`gin_pending_lists`, `health::bloat::GIN_PENDING`;
/// null where `pgstattuple` is not installed or the monitor may not call `pgstatginindex`).
pub async fn autovacuum(
    s: &Session,
    c: &Client,
    db: &str,
    rec: &mut Recorder,
    limit: i64,
) -> Result<Value, ApiError> {
    let workers = rec
        .rows(&s.client, &s.database, ("workers", WORKERS), &[], &[])
        .await?;
    let settings = rec
        .rows(&s.client, &s.database, ("settings", SETTINGS), &[], &[])
        .await?;
    let freshness = rec
        .rows(
            c,
            db,
            ("freshness", databases::FRESHNESS),
            &[],
            &[
                "vacuum_age_max_seconds",
                "analyze_age_max_seconds",
                "never_analyzed_tables",
                "stale_statistics_tables",
            ],
        )
        .await?;
    let tables = rec.rows(c, db, ("tables", TABLES), &[&limit], &[]).await?;
    // The hourly loop's estimate, run live; its pgstattuple_approx samples are in /metrics.
    let bloat = rec
        .rows(
            c,
            db,
            ("bloat_estimate", bloat::ESTIMATE),
            &[&limit],
            &["relation", "table_bytes", "bloat_bytes"],
        )
        .await?;
    // GIN pending lists, where pgstattuple can be called in this database (null otherwise).
    let gin_pending = match bloat::pgstattuple_schema(c, "pgstatginindex(regclass)")
        .await
        .map_err(|source| ApiError::Query {
            name: "pgstattuple_schema",
            source,
        })? {
        Some(schema) => Value::from(
            rec.rows(
                c,
                db,
                ("gin_pending_lists", bloat::gin_pending_sql(&schema)),
                &[&limit],
                &[],
            )
            .await?,
        ),
        None => Value::Null,
    };
    Ok(json!({
        "bloat": bloat,
        "gin_pending_lists": gin_pending,
        "workers": workers,
        "settings": settings,
        "freshness": freshness.into_iter().next().unwrap_or(Value::Null),
        "tables": tables,
    }))
}

/// `/api/v1/partitions`: the `limit` partitioned tables of `db` with the most partitions
/// (`databases::PARTITIONS`), each with its key, totals and its first `limit` partitions;
/// and `time_ranges`, the tables range-partitioned on time nearest to running out of
/// partitions (`databases::PARTITION_TIMES`: horizon and oldest partition's age, seconds).
pub async fn partitions(
    c: &Client,
    db: &str,
    rec: &mut Recorder,
    limit: i64,
) -> Result<Value, ApiError> {
    let parents = rec
        .raw(
            c,
            db,
            ("partitioned_tables", databases::PARTITIONS),
            &[&limit],
        )
        .await?;
    let names: Vec<String> = parents.iter().map(|r| r.get(0)).collect();
    let rows = rec
        .raw(c, db, ("partitions", PARTITIONS), &[&names, &limit])
        .await?;
    let times = rec
        .rows(
            c,
            db,
            ("partition_times", databases::PARTITION_TIMES),
            &[&limit],
            &[],
        )
        .await?;
    let mut by_parent: BTreeMap<String, Vec<&tokio_postgres::Row>> = BTreeMap::new();
    for r in &rows {
        by_parent.entry(r.get(0)).or_default().push(r);
    }
    let tables: Vec<Value> = parents
        .iter()
        .map(|p| {
            let name: String = p.get(0);
            let count: f64 = p.get(1);
            let children = by_parent.remove(&name).unwrap_or_default();
            let first = children.first();
            json!({
                "parent": name,
                "partition_key": first.map(|r| r.get::<_, Option<String>>(1)),
                "partitions": count,
                "has_default": first.is_some_and(|r| r.get::<_, Option<bool>>(8).unwrap_or(false)),
                "total_bytes": first.map(|r| r.get::<_, Option<f64>>(7)),
                "listed": children.len(),
                "children": children.iter().map(|r| json!({
                    "partition": r.get::<_, String>(2),
                    "relkind": r.get::<_, String>(3),
                    "bound": r.get::<_, Option<String>>(4),
                    "bytes": r.get::<_, f64>(5),
                    "estimated_rows": r.get::<_, f64>(6),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "partitioned_tables": tables, "time_ranges": times }))
}
