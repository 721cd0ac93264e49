//! The report of the footprint benchmark ([`crate::bench_footprint`]): its Markdown section
//! and JSON, from the four snapshots of a run.

use std::fmt::Write as _;

use crate::{
    bench_footprint::{FootprintBenchArgs, PERSIST_SECONDS, WINDOW_SECONDS},
    bench_footprint_workload::{Snapshot, TENANT_DB, Wal},
};

/// Everything the report is made of.
pub struct Run<'a> {
    pub version: String,
    pub roles: usize,
    pub args: &'a FootprintBenchArgs,
    pub warm_up: f64,
    pub errors: u64,
    /// Ledger rows: total, written in the window, written in its last two intervals, mean
    /// buckets, mean `pg_column_size(buckets)`.
    pub ledgers: Vec<f64>,
    pub charged: usize,
    pub agent_rss: f64,
    /// `pgmon.budget_ledgers`' total size every 30 s of the window: (seconds, bytes).
    pub sizes: Vec<(f64, f64)>,
    /// Before the agent, window start, window end, after the pause.
    pub snaps: [Snapshot; 4],
}

/// Bytes in decimal kB / MB / GB.
fn size(b: f64) -> String {
    if b.abs() >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b.abs() >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

fn class(s: &Snapshot, name: &str) -> Wal {
    s.statements.get(name).copied().unwrap_or_default()
}

/// Rows of pgmon's statements that wrote WAL between `from` and `to`
/// (`pg_stat_statements.rows`: exact, unlike the tables' counters at the edges).
fn statement_rows(from: &Snapshot, to: &Snapshot) -> f64 {
    to.pgmon_statements
        .iter()
        .map(|(k, (_, v))| {
            let b = from
                .pgmon_statements
                .get(k)
                .map_or_else(Wal::default, |x| x.1);
            v.minus(&b)
        })
        .filter(|d| d.bytes > 0.0)
        .map(|d| d.rows)
        .sum()
}

fn written(s: &Snapshot) -> f64 {
    s.tables.values().map(|t| t.written).sum()
}

pub fn report(r: &Run) -> (String, serde_json::Value) {
    let [before, from, to, after] = &r.snaps;
    let secs = to.at - from.at;
    let pause = after.at - to.at;
    let tps = (to.transactions - from.transactions) as f64 / secs;
    let rows = written(to) - written(from);
    let pg = class(to, "pgmon").minus(&class(from, "pgmon"));
    let wl = class(to, "workload").minus(&class(from, "workload"));
    let total = to.lsn - from.lsn;
    let pg_pause = class(after, "pgmon").minus(&class(to, "pgmon"));
    let rows_pause = written(after) - written(to);
    let statement_rows_pause = statement_rows(to, after);
    let total_pause = after.lsn - to.lsn;
    let ledger_key = ("postgres".to_owned(), "budget_ledgers".to_owned());
    let ledger_rows = to.tables.get(&ledger_key).map_or(0.0, |t| t.written)
        - from.tables.get(&ledger_key).map_or(0.0, |t| t.written);
    let ledger_hot = to.tables.get(&ledger_key).map_or(0.0, |t| t.hot_updates)
        - from.tables.get(&ledger_key).map_or(0.0, |t| t.hot_updates);
    let day = 86_400.0;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## pgmon's own footprint in the database (issue 19)\n\n\
         PostgreSQL {}, `fsync`, `synchronous_commit` and `full_page_writes` on. {} roles, each on a budget tier with `window_seconds: {WINDOW_SECONDS}` (budget never reached, observe mode) and a storage quota (never reached), each owning a schema with two tables in database `{TENANT_DB}`; ledgers seeded with a full hour of 60 buckets, which the agent loads at start (every row it writes is full-size: {} buckets, {:.0} bytes of `buckets` on average at the end). The agent runs as role `pgmon`, every interval at its default (`budgets.persist_interval_seconds` {PERSIST_SECONDS}). Traffic: every role one transaction (`UPDATE`, `SELECT`, `INSERT` on its own tables, prepared) every {} ms, {} client threads holding one session per role, {tps:.0} transactions/s measured, {} failed statements. Warm-up (agent start → every ledger row written by the agent, triggers on every table, first storage recount done) {:.0} s, then a measured window of {secs:.0} s, then {pause:.0} s with the traffic stopped and the agent attached. Every role was charged: {} of {} ledger rows were written in the window, {} in its last {:.0} s, {} roles carry `pgmon_role_budget_spent`. Agent RSS at the end {:.0} MiB.\n",
        r.version,
        r.roles,
        r.ledgers[3],
        r.ledgers[4],
        r.args.footprint_interval_ms,
        r.args.footprint_clients,
        r.errors,
        r.warm_up,
        r.ledgers[1],
        r.ledgers[0],
        r.ledgers[2],
        2.0 * PERSIST_SECONDS,
        r.charged,
        r.agent_rss / f64::from(1u32 << 20),
    );
    let _ = writeln!(
        md,
        "| figure (measured window, {secs:.0} s) | value |\n|---|---|\n\
         | rows written by pgmon (`n_tup_ins + n_tup_upd + n_tup_del`, schema `pgmon`, both databases) | {rows:.0} = **{:.1} rows/s** ({:.2} per role per persist interval) |\n\
         | of which `pgmon.budget_ledgers` | {ledger_rows:.0} = {:.1} rows/s ({:.0} HOT updates) |\n\
         | pgmon's statements (`pg_stat_statements`, role `pgmon`) | {:.0} calls, {:.0} rows, {:.0} WAL records ({:.0} full-page images) |\n\
         | WAL of pgmon's statements | {} = **{}/s** ({:.0} bytes per row written) |\n\
         | WAL of the tenants' statements (`pg_stat_statements`, the {} roles) | {} = {}/s |\n\
         | WAL of the whole cluster (`pg_current_wal_lsn()` delta; also commit records, autovacuum, and the checkpoints: {:.0} in the window) | {} = {}/s |\n\
         | pgmon's WAL ÷ the tenants' statements' WAL | **{:.3}** |\n\
         | pgmon's WAL ÷ the whole cluster's WAL | {:.3} |\n\
         | traffic stopped, agent attached ({pause:.0} s): rows written by pgmon (table counters; its statements' own count), WAL of its statements, cluster WAL | {rows_pause:.0} rows ({statement_rows_pause:.0}), {}, {} |\n",
        rows / secs,
        rows / secs * PERSIST_SECONDS / r.roles as f64,
        ledger_rows / secs,
        ledger_hot,
        pg.calls,
        pg.rows,
        pg.records,
        pg.fpi,
        size(pg.bytes),
        size(pg.bytes / secs),
        pg.bytes / rows.max(1.0),
        r.roles,
        size(wl.bytes),
        size(wl.bytes / secs),
        to.checkpoints - from.checkpoints,
        size(total),
        size(total / secs),
        pg.bytes / wl.bytes.max(1.0),
        pg.bytes / total.max(1.0),
        size(pg_pause.bytes),
        size(total_pause),
    );
    // pgmon's statements that wrote WAL in the window.
    let mut stmts: Vec<(String, Wal)> = to
        .pgmon_statements
        .iter()
        .filter_map(|(k, (q, v))| {
            let b = from
                .pgmon_statements
                .get(k)
                .map_or_else(Wal::default, |x| x.1);
            let d = v.minus(&b);
            (d.bytes > 0.0).then(|| (q.clone(), d))
        })
        .collect();
    stmts.sort_by(|a, b| b.1.bytes.total_cmp(&a.1.bytes));
    let _ = writeln!(
        md,
        "pgmon's statements that wrote WAL in the window:\n\n| statement | calls | rows | WAL |\n|---|---|---|---|"
    );
    for (q, d) in &stmts {
        let _ = writeln!(
            md,
            "| `{}` | {:.0} | {:.0} | {} |",
            q.replace('|', "\\|"),
            d.calls,
            d.rows,
            size(d.bytes)
        );
    }
    let write_rows: f64 = stmts.iter().map(|(_, d)| d.rows).sum();
    let _ = writeln!(
        md,
        "\nThese statements' own count of rows written in the window: {write_rows:.0} ({:.1}/s). The table counters above differ by whatever crossed the window's edges: each backend flushes them when it goes idle, at most once a second.",
        write_rows / secs
    );
    let _ = writeln!(
        md,
        "\nEvery `pgmon.*` table: rows and `pg_total_relation_size` (heap, indexes, TOAST) before the agent started (ledgers seeded), at the window's start and end; dead tuples and autovacuum runs at the end.\n\n\
         | database | table | rows before | rows at start | rows at end | bytes before | bytes at start | bytes at end | dead tuples | autovacuums |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut tables_json = Vec::new();
    for (key, end) in &to.tables {
        let b = before.tables.get(key).copied().unwrap_or_default();
        let f = from.tables.get(key).copied().unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | pgmon.{} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} |",
            key.0,
            key.1,
            b.rows,
            f.rows,
            end.rows,
            size(b.bytes),
            size(f.bytes),
            size(end.bytes),
            end.dead,
            end.autovacuums
        );
        tables_json.push(serde_json::json!({
            "database": key.0, "table": key.1,
            "rows": [b.rows, f.rows, end.rows], "bytes": [b.bytes, f.bytes, end.bytes],
            "written_in_window": end.written - f.written, "hot_updates_in_window": end.hot_updates - f.hot_updates,
            "dead_tuples": end.dead, "autovacuums": end.autovacuums,
        }));
    }
    let total_bytes: f64 = to.tables.values().map(|t| t.bytes).sum();
    let ledger_bytes = to.tables.get(&ledger_key).map_or(0.0, |t| t.bytes);
    let ledger_end = to.tables.get(&ledger_key).copied().unwrap_or_default();
    let ledger_from = from.tables.get(&ledger_key).copied().unwrap_or_default();
    let series = r
        .sizes
        .iter()
        .map(|(t, b)| format!("{t:.0} s: {}", size(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "\nSize: `pgmon.budget_ledgers` holds one row per role ({:.0} rows). Its total size every 30 s of the window: {series}. {ledger_hot:.0} of its {ledger_rows:.0} updates were HOT (a new version on the same page, no new index entry: the table keeps half of each page free, `fillfactor = 50`); dead versions stay until pruning or autovacuum reuses their space ({:.0} autovacuum runs in the window, {:.0} dead tuples at its end), so the table levels off near its live rows plus what is written between two runs ({:.0} rows/s × the 60 s naptime), whatever the time.\n\n\
         Projected per day, assuming the window's steady state all day (the same {} roles, each charged all day; a ledger is written when its spend moved by 1 % of the budget, when its role is on a step, or once a minute, so a role idle for a minute is not written; ledger rows bounded by the roles): **{:.1} million rows written**, **{} of WAL** from pgmon's statements, and the tables' size that of the window's end: **{}** for all `pgmon.*` tables ({} of it `pgmon.budget_ledgers`, {:.0} bytes per role), not growing with the days: `pgmon.storage_usage` keeps one row per role and database, `pgmon.audit` only enforcement actions (none here) for `audit.retention_days` (90), and ledgers idle for a day are deleted.\n",
        ledger_end.rows,
        ledger_end.autovacuums - ledger_from.autovacuums,
        ledger_end.dead,
        ledger_rows / secs,
        r.roles,
        rows / secs * day / 1e6,
        size(pg.bytes / secs * day),
        size(total_bytes),
        size(ledger_bytes),
        ledger_bytes / r.roles as f64,
    );
    let json = serde_json::json!({
        "postgresql": r.version, "roles": r.roles, "window_seconds": WINDOW_SECONDS,
        "persist_interval_seconds": PERSIST_SECONDS, "measured_seconds": secs,
        "pause_seconds": pause, "warm_up_seconds": r.warm_up,
        "transactions_per_second": tps, "failed_statements": r.errors,
        "ledgers": {"rows": r.ledgers[0], "written_in_window": r.ledgers[1], "written_last_two_intervals": r.ledgers[2], "mean_buckets": r.ledgers[3], "mean_bucket_bytes": r.ledgers[4]},
        "roles_charged": r.charged, "agent_rss_bytes": r.agent_rss,
        "pgmon_rows_written_per_second": rows / secs,
        "pgmon_ledger_rows_written_per_second": ledger_rows / secs,
        "pgmon_wal_bytes_per_second": pg.bytes / secs,
        "pgmon_wal": {"calls": pg.calls, "rows": pg.rows, "records": pg.records, "fpi": pg.fpi, "bytes": pg.bytes},
        "workload_wal_bytes_per_second": wl.bytes / secs,
        "cluster_wal_bytes_per_second": total / secs,
        "pgmon_to_workload_wal": pg.bytes / wl.bytes.max(1.0),
        "pause": {"pgmon_rows_written": rows_pause, "pgmon_statement_rows": statement_rows_pause, "pgmon_wal_bytes": pg_pause.bytes, "cluster_wal_bytes": total_pause},
        "tables": tables_json,
        "ledger_bytes_every_30s": r.sizes,
        "per_day": {"rows_written": rows / secs * day, "pgmon_wal_bytes": pg.bytes / secs * day, "tables_bytes": total_bytes},
    });
    (md, json)
}
