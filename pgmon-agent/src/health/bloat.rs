//! Table bloat, read by the hourly loop in each database: the space a table holds beyond
//! what its live rows need, which only `VACUUM FULL` (or `pg_repack`) gives back; and the
//! pending lists of GIN indexes ([`GIN_PENDING`]), their own kind of backlog.
//!
//! Two methods, and the `method` label says which one produced a number:
//! - `estimate`, for every table of at least 128 pages (1 MiB at the default 8 kB block):
//!   the pages the live rows would fill, from `pg_class.reltuples` and the average row
//!   width of `pg_stats` — tuple header 24 bytes (23, MAXALIGNed), the data rounded up to 8
//!   bytes, a 4-byte line pointer, on pages of `block_size − 24` bytes filled to the
//!   table's `fillfactor` (PostgreSQL docs, section 73.6 "Database Page Layout") — against
//!   `relpages`. It reads only statistics, so it is cheap, and as good as the last
//!   `ANALYZE`. `pg_stats` shows a table's columns only to a role that may read them
//!   (superuser, `pg_read_all_data`, or `SELECT` on the table): a table whose every column
//!   has no visible statistics is not estimated.
//! - `pgstattuple_approx`, for the `health.bloat_sample_tables` largest tables of a
//!   database where the `pgstattuple` extension is installed and the monitor may call it
//!   (`pg_stat_scan_tables`, part of `pg_monitor`; docs, appendix F.33): free space and
//!   dead tuples measured from the pages the visibility map does not mark all-visible,
//!   estimated from the free space map for the rest. It reads those pages, so only a few
//!   tables are sampled, and it replaces the estimate for them.

use std::collections::HashMap;

use tokio_postgres::Client;

/// Tables of at least 128 pages with statistics for every column: relation, size in bytes
/// (`relpages` × `block_size`), estimated bloat in bytes; the `$1` most bloated first.
pub(crate) const ESTIMATE: &str = "SELECT t.relation, t.bytes, \
       greatest(t.pages - ceil(t.tuples * (28 + ceil(w.width / 8) * 8) / ((t.bs - 24) * t.ff / 100)), 0) \
         * t.bs AS bloat_bytes \
     FROM ( \
       SELECT c.oid, n.nspname AS nsp, c.relname AS rel, n.nspname || '.' || c.relname AS relation, \
         c.relpages::float8 AS pages, c.reltuples::float8 AS tuples, \
         current_setting('block_size')::float8 AS bs, \
         c.relpages::float8 * current_setting('block_size')::float8 AS bytes, \
         coalesce((SELECT substring(o FROM 'fillfactor=([0-9]+)')::float8 FROM unnest(c.reloptions) o \
                   WHERE o LIKE 'fillfactor=%'), 100) AS ff, \
         (SELECT count(*) FROM pg_attribute a \
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns \
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
       WHERE c.relkind IN ('r', 'm') AND c.relpages >= 128 AND c.reltuples > 0 \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%') t \
     JOIN LATERAL ( \
       SELECT count(*) AS with_stats, sum((1 - s.null_frac) * s.avg_width)::float8 AS width \
       FROM pg_stats s WHERE s.schemaname = t.nsp AND s.tablename = t.rel AND NOT s.inherited) w \
       ON w.with_stats = t.columns \
     ORDER BY bloat_bytes DESC, t.relation LIMIT $1";

/// The schema of `pgstattuple` in this database (quoted), when the monitor may call its
/// function `$1` (a signature: `pgstattuple_approx(regclass)`); no row otherwise.
/// (`to_regprocedure`: the planner may evaluate the privilege test on other extensions'
/// rows too, where the function does not exist.)
pub(crate) const PGSTATTUPLE_SCHEMA: &str = "SELECT quote_ident(n.nspname) FROM pg_extension e \
     JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgstattuple' \
       AND coalesce(has_function_privilege( \
             to_regprocedure(quote_ident(n.nspname) || '.' || $1), 'EXECUTE'), false)";

/// `sql`, written with `public.<function>`, with the function in schema `schema` (quoted).
pub(crate) fn in_schema(sql: &str, function: &str, schema: &str) -> String {
    sql.replace(
        &format!("public.{function}"),
        &format!("{schema}.{function}"),
    )
}

/// [`APPROX`] with `pgstattuple_approx` in schema `schema` (quoted).
pub(crate) fn approx_sql(schema: &str) -> String {
    in_schema(APPROX, "pgstattuple_approx", schema)
}

/// The schema `pgstattuple`'s `function` (a signature) can be called from, if any.
pub(crate) async fn pgstattuple_schema(
    c: &Client,
    function: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(c.query_opt(PGSTATTUPLE_SCHEMA, &[&function])
        .await?
        .map(|r| r.get(0)))
}

/// `pgstattuple_approx` on the `$1` largest tables of at least 128 pages: relation, table
/// bytes, free space + dead tuple bytes. Written for schema `public`; [`approx_sql`] puts
/// it in the extension's schema.
pub(crate) const APPROX: &str = "SELECT t.relation, a.table_len::float8, (a.approx_free_space + a.dead_tuple_len)::float8 \
     FROM (SELECT c.oid, n.nspname || '.' || c.relname AS relation FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') AND c.relpages >= 128 \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
           ORDER BY pg_relation_size(c.oid) DESC LIMIT $1) t, \
     LATERAL public.pgstattuple_approx(t.oid::regclass) a";

/// The pending lists of the `$1` largest GIN indexes, read with `pgstatginindex`
/// (pgstattuple; docs, appendix F.33): index, table, index bytes, pending pages, pending
/// tuples, pending bytes (pages × `block_size`). With `fastupdate` on (the default) a GIN
/// index takes new entries into an unsorted pending list, moved into the index proper by
/// VACUUM or autovacuum, `gin_clean_pending_list()`, or once the list outgrows
/// `gin_pending_list_limit` (4 MB by default); every search reads the whole list, so a long
/// one slows full-text and JSONB searches (docs, "GIN Fast Update Technique"). Reads only
/// each index's metapage. Written for schema `public`; see [`gin_pending_sql`].
pub(crate) const GIN_PENDING: &str = "SELECT n.nspname || '.' || c.relname AS index, \
       tn.nspname || '.' || t.relname AS relation, pg_relation_size(c.oid)::float8 AS index_bytes, \
       g.pending_pages::float8 AS pending_pages, g.pending_tuples::float8 AS pending_tuples, \
       g.pending_pages::float8 * current_setting('block_size')::float8 AS pending_bytes \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = c.relam \
     JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid \
     JOIN pg_namespace tn ON tn.oid = t.relnamespace, \
     LATERAL public.pgstatginindex(c.oid::regclass) g \
     WHERE am.amname = 'gin' AND c.relkind = 'i' AND i.indisvalid \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     ORDER BY index_bytes DESC, index LIMIT $1";

/// [`GIN_PENDING`] with `pgstatginindex` in schema `schema` (quoted).
pub(crate) fn gin_pending_sql(schema: &str) -> String {
    in_schema(GIN_PENDING, "pgstatginindex", schema)
}

/// One GIN index's pending list (see [`GIN_PENDING`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GinPending {
    pub index: String,
    pub relation: String,
    pub pending_tuples: f64,
    pub pending_bytes: f64,
}

/// The pending lists of the `top_n` largest GIN indexes of the database `c` is in; empty
/// where `pgstattuple` is not installed or the monitor may not call `pgstatginindex`.
pub async fn gin_pending(
    c: &Client,
    top_n: usize,
) -> Result<Vec<GinPending>, tokio_postgres::Error> {
    let Some(schema) = pgstattuple_schema(c, "pgstatginindex(regclass)").await? else {
        return Ok(Vec::new());
    };
    let rows = c
        .query(&gin_pending_sql(&schema), &[&(top_n as i64)])
        .await?;
    Ok(rows
        .iter()
        .map(|r| GinPending {
            index: r.get(0),
            relation: r.get(1),
            pending_tuples: r.get(4),
            pending_bytes: r.get(5),
        })
        .collect())
}

/// One table's bloat: relation, table bytes, bloat bytes, method.
#[derive(Clone, Debug, PartialEq)]
pub struct Bloat {
    pub relation: String,
    pub table_bytes: f64,
    pub bloat_bytes: f64,
    pub method: &'static str,
}

impl Bloat {
    /// Bloat ÷ table size (0 for an empty table).
    pub fn ratio(&self) -> f64 {
        if self.table_bytes > 0.0 {
            (self.bloat_bytes / self.table_bytes).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// The `top_n` most bloated tables of the database `c` is in: estimated, and measured
/// with `pgstattuple_approx` on the `sample` largest where it can be called.
pub async fn read(
    c: &Client,
    top_n: usize,
    sample: usize,
) -> Result<Vec<Bloat>, tokio_postgres::Error> {
    let mut by: HashMap<String, Bloat> = HashMap::new();
    // A measured sample replaces the estimate of the same table.
    let mut add = |rows: Vec<tokio_postgres::Row>, method: &'static str| {
        for r in rows {
            let b = Bloat {
                relation: r.get(0),
                table_bytes: r.get(1),
                bloat_bytes: r.get(2),
                method,
            };
            by.insert(b.relation.clone(), b);
        }
    };
    add(c.query(ESTIMATE, &[&(top_n as i64)]).await?, "estimate");
    if sample > 0
        && let Some(schema) = pgstattuple_schema(c, "pgstattuple_approx(regclass)").await?
    {
        let rows = c.query(&approx_sql(&schema), &[&(sample as i64)]).await?;
        add(rows, "pgstattuple_approx");
    }
    Ok(top(by.into_values().collect(), top_n))
}

/// The `n` largest by bloat bytes (ties by name), without the tables with none.
fn top(mut all: Vec<Bloat>, n: usize) -> Vec<Bloat> {
    all.retain(|b| b.bloat_bytes > 0.0);
    all.sort_by(|a, b| {
        b.bloat_bytes
            .total_cmp(&a.bloat_bytes)
            .then_with(|| a.relation.cmp(&b.relation))
    });
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_bloated_first_and_none_without_bloat() {
        let b = |r: &str, bloat| Bloat {
            relation: r.into(),
            table_bytes: 100.0,
            bloat_bytes: bloat,
            method: "estimate",
        };
        let t = top(
            vec![b("a", 10.0), b("b", 0.0), b("c", 50.0), b("d", 10.0)],
            2,
        );
        assert_eq!(
            t.iter().map(|x| x.relation.as_str()).collect::<Vec<_>>(),
            ["c", "a"]
        );
        assert_eq!(t[0].ratio(), 0.5);
        assert_eq!(b("z", 500.0).ratio(), 1.0);
    }

    #[test]
    fn the_approx_statement_is_the_documented_one_in_its_schema() {
        assert_eq!(approx_sql("public"), APPROX);
        assert!(
            approx_sql("\"my ext\"").contains("\"my ext\".pgstattuple_approx(t.oid::regclass)")
        );
        assert!(gin_pending_sql("ext").contains("LATERAL ext.pgstatginindex(c.oid::regclass)"));
        assert!(!gin_pending_sql("ext").contains("public."));
    }
}
