//! pgmon's own footprint in the database it watches (issue 19), for `cargo xtask bench`:
//! what the agent writes into its `pgmon.*` tables while `--footprint-roles` budgeted roles
//! (default 1 000; a tier with a one-hour window) are all active.
//!
//! One PostgreSQL 15 cluster with `fsync`, `synchronous_commit` and `full_page_writes` on
//! (WAL as in production), `pg_stat_statements` loaded; pgmon's SQL installed in database
//! `postgres` (the agent's) and `tenants`, where every role owns a schema with two tables.
//! Each role's ledger is seeded with a full hour of 60 one-minute buckets (the state after
//! an hour of traffic; the agent loads it at start), so every row the agent writes is
//! full-size. The agent runs as role `pgmon` (its cost worker as the superuser, which may
//! `SET ROLE` to every tenant) with budgets in observe mode (a budget no role reaches) and
//! storage quotas on every role (limits no role reaches), every interval at its default.
//!
//! Phases: the agent starts, then the traffic (every role one read-write transaction per
//! `--footprint-interval-ms`, sessions held open); a warm-up until every ledger row has
//! been written by the agent, the triggers are on every table and the first storage
//! recount is done; the measured window (`--footprint-seconds`); then the traffic stops
//! and the agent stays attached for `--footprint-pause-seconds`.
//!
//! What is read ([`crate::bench_footprint_workload::snapshot`]), before the agent starts,
//! at the window's start and end and after the pause:
//! - rows written: `n_tup_ins + n_tup_upd + n_tup_del` of `pg_stat_user_tables` in schema
//!   `pgmon` of both databases; rows and `pg_total_relation_size` of every `pgmon.*` table;
//! - WAL: `pg_stat_statements.wal_bytes` summed over the statements of role `pgmon` (its
//!   writes while the tenants write too: the agent persists only ledgers charged since its
//!   last write, so with the traffic paused it writes once more and then nothing, and a
//!   `pg_current_wal_lsn()` delta over a pause would measure nothing of the steady state);
//!   the tenants' statements the same way; the whole cluster's WAL as the
//!   `pg_current_wal_lsn()` delta, which also holds what neither counts (commit records,
//!   autovacuum, checkpoints).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use pgmon_tests::{Agent, Cluster, ClusterOptions, PgVersion, free_port};

use crate::bench_footprint_workload::{self as w, TENANT_DB, Workload, role_name};

/// The budgets' persist interval, seconds (`budgets.persist_interval_seconds`' default).
pub const PERSIST_SECONDS: f64 = 5.0;

/// The tier's window, seconds.
pub const WINDOW_SECONDS: u64 = 3600;

/// Arguments of the footprint benchmark (part of `cargo xtask bench`).
#[derive(clap::Args)]
pub struct FootprintBenchArgs {
    /// Budgeted roles, every one active for the whole run.
    #[arg(long, default_value_t = 1000)]
    footprint_roles: usize,
    /// Seconds of the measured window (after the warm-up).
    /// (180 s holds a few autovacuum runs of the ledger at the default 60 s naptime.)
    #[arg(long, default_value_t = 180)]
    footprint_seconds: u64,
    /// Seconds with the traffic stopped and the agent still attached, after the window.
    #[arg(long, default_value_t = 20)]
    footprint_pause_seconds: u64,
    /// Milliseconds between two transactions of one role.
    #[arg(long, default_value_t = 1000)]
    pub footprint_interval_ms: u64,
    /// Client threads sharing the roles' sessions.
    #[arg(long, default_value_t = 10)]
    pub footprint_clients: usize,
    /// Run only this benchmark and write bench/FOOTPRINT.md.
    #[arg(long)]
    pub footprint_only: bool,
}

fn agent_config(cluster: &Cluster, port: u16) -> String {
    let (sock, pgport) = (cluster.socket_dir(), cluster.port());
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={pgport} user=pgmon dbname=postgres\"\n\
         metrics:\n  listen: 127.0.0.1:{port}\n\
         cost:\n  connection: \"host={} port={pgport} user=postgres dbname=postgres\"\n\
         budgets:\n  enabled: true\n  mode: observe\n  tiers:\n    hour: {{budget: 1.0e15, window_seconds: {WINDOW_SECONDS}}}\n  default_tier: hour\n\
         storage:\n  enabled: true\n  roles:\n    - {{match: 'fp_*', soft_limit: 1GB, hard_limit: 2GB}}\n",
        cluster.data_dir().display(),
        sock.display(),
        sock.display(),
    )
}

/// Server time, unix seconds.
fn server_now(cluster: &Cluster) -> Result<f64> {
    Ok(cluster
        .query_value("postgres", "postgres", "SELECT extract(epoch FROM now())")?
        .parse()?)
}

/// Runs the benchmark; returns the report section (Markdown) and its JSON.
pub fn section(binary: &Path, args: &FootprintBenchArgs) -> Result<(String, serde_json::Value)> {
    let n = args.footprint_roles;
    let start = Instant::now();
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            max_connections: u32::try_from(n + 100)?,
            durable: true,
            settings: vec![(
                "pg_stat_statements.max".into(),
                (n * 10).max(5000).to_string(),
            )],
            ..ClusterOptions::default()
        },
    )?;
    let version = cluster.query_value("postgres", "postgres", "SHOW server_version")?;
    cluster.run_sql_file("postgres", "sql/001_roles.sql")?;
    cluster.psql_admin(&format!("CREATE DATABASE {TENANT_DB}"))?;
    for db in ["postgres", TENANT_DB] {
        for f in [
            "sql/002_enforcement.sql",
            "sql/003_ddl_notify.sql",
            "sql/004_storage.sql",
            "sql/005_sessions.sql",
        ] {
            cluster.run_sql_file(db, f)?;
        }
    }
    w::create_tenants(&cluster, n)?;
    w::seed_ledgers(&cluster, n, "hour")?;
    cluster.psql_admin("CHECKPOINT")?;
    eprintln!(
        "bench footprint: {n} roles, their tables and ledgers ready in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let before = w::snapshot(&cluster, start, 0)?;

    let agent_started = server_now(&cluster)?;
    let port = free_port();
    let mut agent = Agent::start(
        binary,
        &agent_config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )?;
    let interval = Duration::from_millis(args.footprint_interval_ms);
    let mut workload = Workload::start(&cluster, n, args.footprint_clients, interval)?;
    let traffic = Instant::now();
    let deadline = traffic + Duration::from_secs(300);
    let mut last_print = Instant::now();
    loop {
        let fresh: usize = cluster
            .query_value(
                "postgres",
                "postgres",
                &format!("SELECT count(*) FROM pgmon.budget_ledgers WHERE updated_at > to_timestamp({agent_started})"),
            )?
            .parse()?;
        let triggers: usize = cluster
            .query_value(
                "postgres",
                TENANT_DB,
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgmon_storage_notify'",
            )?
            .parse()?;
        let recounted = !agent.status_json()?["storage"]["last_recount_seconds"].is_null();
        let settled = traffic.elapsed().as_secs_f64() > 2.0 * PERSIST_SECONDS;
        if fresh >= n && triggers >= 2 * n && recounted && settled {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "warm-up not done within 300 s: {fresh}/{n} ledgers written, triggers on {triggers}/{} tables, recount done: {recounted}; {} transactions, {} errors",
                2 * n,
                workload.transactions(),
                workload.errors()
            );
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "bench footprint: warm-up {:.0} s: {fresh}/{n} ledgers written, triggers on {triggers}/{} tables, recount done: {recounted}, {} transactions",
                traffic.elapsed().as_secs_f64(),
                2 * n,
                workload.transactions()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let warm_up = traffic.elapsed().as_secs_f64();
    let window_started = server_now(&cluster)?;
    let from = w::snapshot(&cluster, start, workload.transactions())?;
    eprintln!("bench footprint: warm-up done after {warm_up:.0} s; measuring");
    // The window holds one checkpoint's full-page images (a checkpoint every window's
    // length: denser than the default checkpoint_timeout of 5 min).
    cluster.psql_admin("CHECKPOINT")?;
    let window = Instant::now();
    let ledger_size = || -> Result<f64> {
        Ok(cluster
            .query_value(
                "postgres",
                "postgres",
                "SELECT pg_total_relation_size('pgmon.budget_ledgers')",
            )?
            .parse()?)
    };
    let mut sizes = vec![(0.0, ledger_size()?)];
    while window.elapsed() < Duration::from_secs(args.footprint_seconds) {
        std::thread::sleep(Duration::from_secs(1));
        if window.elapsed().as_secs().is_multiple_of(30) {
            sizes.push((window.elapsed().as_secs_f64(), ledger_size()?));
            eprintln!(
                "bench footprint: {:.0} s, {} transactions, {} errors, pgmon.budget_ledgers {:.0} bytes",
                window.elapsed().as_secs_f64(),
                workload.transactions(),
                workload.errors(),
                sizes.last().map_or(0.0, |s| s.1),
            );
        }
    }
    let to = w::snapshot(&cluster, start, workload.transactions())?;
    let ledgers = cluster.query_value(
        "postgres",
        "postgres",
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE updated_at > to_timestamp({window_started})), \
                    count(*) FILTER (WHERE updated_at > now() - interval '{} seconds'), \
                    round(avg(jsonb_array_length(buckets)), 1), round(avg(pg_column_size(buckets))) \
             FROM pgmon.budget_ledgers",
            2.0 * PERSIST_SECONDS
        ),
    )?;
    let ledgers: Vec<f64> = ledgers
        .split('|')
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    let charged = agent
        .metrics()?
        .iter()
        .filter(|s| {
            s.name == "pgmon_role_budget_spent"
                && s.label("role").is_some_and(|r| r.starts_with("fp_"))
        })
        .count();
    let errors = workload.errors();
    workload.finish()?;
    std::thread::sleep(Duration::from_secs(args.footprint_pause_seconds));
    let after = w::snapshot(&cluster, start, to.transactions)?;
    let agent_rss = agent.status_json()?["agent"]["resident_memory_bytes"]
        .as_f64()
        .unwrap_or(f64::NAN);
    agent.stop()?;
    eprintln!(
        "bench footprint: {} ledgers, {} written in the window, {} in its last {} s; {charged} roles in pgmon_role_budget_spent",
        ledgers[0],
        ledgers[1],
        ledgers[2],
        2.0 * PERSIST_SECONDS
    );
    if ledgers[1] < n as f64 || charged < n {
        bail!(
            "not every role was charged: {} of {n} ledgers written in the window, {charged} roles with a budget gauge",
            ledgers[1]
        );
    }
    if to.dealloc > 0.0 {
        bail!(
            "pg_stat_statements evicted {} entries: its WAL sums are incomplete",
            to.dealloc
        );
    }
    let run = crate::bench_footprint_report::Run {
        version,
        roles: n,
        args,
        warm_up,
        errors,
        ledgers,
        charged,
        agent_rss,
        sizes,
        snaps: [before, from, to, after],
    };
    Ok(crate::bench_footprint_report::report(&run))
}

/// Role names used, for the record (`fp_00001` … `fp_NNNNN`).
pub fn role_range(n: usize) -> String {
    format!("{} … {}", role_name(1), role_name(n))
}

/// `cargo xtask bench --footprint-only`: the section, written to bench/FOOTPRINT.md and
/// bench/footprint.json.
pub fn only(binary: &Path, args: &FootprintBenchArgs) -> Result<()> {
    let (md, json) = section(binary, args)?;
    let out_dir = crate::util::workspace_root().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let title = format!(
        "# pgmon footprint benchmark\n\nOutput of `cargo xtask bench --no-setup --no-build --footprint-only` (roles {}). A full `cargo xtask bench` writes the same section into REPORT.md.\n",
        role_range(args.footprint_roles)
    );
    std::fs::write(out_dir.join("FOOTPRINT.md"), format!("{title}{md}"))?;
    std::fs::write(
        out_dir.join("footprint.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!(
        "{md}\nwritten to {}",
        out_dir.join("FOOTPRINT.md").display()
    );
    Ok(())
}
