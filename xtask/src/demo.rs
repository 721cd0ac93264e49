//! `cargo xtask demo`: a PostgreSQL cluster with three roles under load, watched by the agent.
//!
//! Role `shop` owns database `shop` (pgbench tables, scale 5) and runs pgbench: the first
//! half of the time TPC-B-like with `-M simple`, the second half select-only with
//! `-M extended`. Role `analyst` (SELECT on the pgbench tables) runs an analytic mix in a
//! loop over TCP: aggregates, joins, GROUP BY, window functions, and a few deliberately
//! failing queries. The cluster has `ssl = on` with a self-signed certificate, as Debian's
//! packages do, so the analyst's session speaks TLS (libpq's default `sslmode=prefer`) and
//! `status` shows it read through libssl. Role `meta` owns database `meta`, the
//! storage-metadata service of `sql/workloads/storage_metadata/` (objects with JSONB
//! metadata and full-text search, versions, a monthly-partitioned audit log), seeded and
//! driven by its weighted pgbench mix over the unix socket; `--workload storage-metadata`
//! runs it alone (`--minutes` for longer). Next month's partition of its audit log is
//! dropped and the policy wants 32 days covered, so `PostgresPartitionMissing` fires. Then
//! the agent's `status`, the alerts firing and a sample of its `/metrics` are printed. The agent
//! and the cluster are stopped on every path (drop), Ctrl-C included.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Protocol, SUPERUSER_MONITOR, Transport,
    metrics,
};

use crate::util::{agent_release_binary, build_release, describe};

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
    /// Skip the release build (use the agent binary already in target/release).
    #[arg(long)]
    no_build: bool,
    /// Seconds of workload.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Address of the agent's HTTP server (metrics.listen).
    #[arg(long, default_value = "127.0.0.1:8181")]
    listen: String,
    /// PostgreSQL major version: 15 (Debian) or 18 (npm binaries).
    #[arg(long, default_value = "15")]
    pg: String,
    /// pgbench scale of database `shop`.
    #[arg(long, default_value_t = 5)]
    scale: u32,
    /// Agent binary to run (default: target/release/pgmon-agent, built first).
    #[arg(long)]
    agent: Option<std::path::PathBuf>,
    /// `all`: the three tenants; `storage-metadata`: role `meta` alone.
    #[arg(long, value_enum, default_value = "all")]
    workload: Workload,
    /// Minutes of workload (instead of `--duration` seconds).
    #[arg(long)]
    minutes: Option<u64>,
}

/// Which tenants the demo runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// shop (pgbench), analyst (analytic psql over TLS) and meta (storage metadata).
    All,
    /// meta alone: the storage-metadata service's mix.
    StorageMetadata,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Setup, build, then the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    if !crate::util::is_root() {
        bail!("`cargo xtask demo` must run as root (the agent loads eBPF programs)");
    }
    let version = PgVersion::parse(&args.pg).context("--pg must be 15 or 18")?;
    if !args.no_setup {
        crate::setup::run()?;
    }
    if !args.no_build {
        build_release()?;
    }
    // Ctrl-C reaches pgbench/psql/agent children too; we notice, unwind and drop
    // everything (the postmaster runs in its own session and would otherwise survive).
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let binary = args.agent.clone().unwrap_or_else(agent_release_binary);
    demo(&binary, version, args)
}

fn demo(binary: &Path, version: PgVersion, args: &DemoArgs) -> Result<()> {
    println!("== {version}: starting a cluster");
    let mut cluster = Cluster::start(version, ClusterOptions::default())?;
    println!(
        "   data {} · socket {} · port {} · postmaster {}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port(),
        cluster.postmaster_pid()
    );
    cluster.enable_ssl()?;
    println!("   ssl = on (self-signed certificate, as Debian ships it): TCP clients speak TLS");
    let all = args.workload == Workload::All;
    if all {
        println!(
            "== roles: shop (owns db shop, pgbench -i -s {}, unix socket), analyst (SELECT, TCP + TLS)",
            args.scale
        );
        cluster.create_role_with_db("shop")?;
        cluster.pgbench_init("shop", "shop", args.scale)?;
        cluster.create_role("analyst")?;
        cluster.psql(
            "shop",
            "shop",
            Transport::Unix,
            "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO analyst",
        )?;
    }
    println!(
        "== role meta (owns db meta): the storage-metadata service of sql/workloads/storage_metadata/, seeded"
    );
    let seeded = Instant::now();
    cluster.load_storage_metadata("meta", "meta")?;
    println!(
        "   schema and seed in {:.0} s",
        seeded.elapsed().as_secs_f64()
    );
    // The maintenance job that creates next month's audit-log partition "did not run":
    // its partition is dropped, so rows only have somewhere to go until the month ends.
    let dropped = cluster.psql(
        "meta",
        "meta",
        Transport::Unix,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'audit_log'::regclass \
         ORDER BY pg_get_expr(c.relpartbound, c.oid) DESC LIMIT 1",
    )?;
    let dropped = dropped.trim();
    cluster.psql(
        "meta",
        "meta",
        Transport::Unix,
        &format!("DROP TABLE {dropped}"),
    )?;
    println!("   next month's audit-log partition {dropped} dropped (a skipped maintenance run)");
    // pgstattuple (a superuser installs it) lets the agent read the GIN indexes' pending
    // lists (`pgstatginindex`) and sample table bloat (`pgstattuple_approx`).
    cluster.psql(
        "postgres",
        "meta",
        Transport::Unix,
        "CREATE EXTENSION IF NOT EXISTS pgstattuple",
    )?;
    println!("   extension pgstattuple created in db meta (GIN pending lists, measured bloat)");

    let tenant_dbs: &[&str] = if all { &["shop", "meta"] } else { &["meta"] };
    println!(
        "== pgmon's SQL: sql/001_roles.sql, 002_enforcement.sql (postgres, {dbs}), 003_ddl_notify.sql ({dbs})",
        dbs = tenant_dbs.join(", ")
    );
    cluster.run_sql_file("postgres", "sql/001_roles.sql")?;
    cluster.run_sql_file("postgres", "sql/002_enforcement.sql")?;
    for db in tenant_dbs {
        cluster.run_sql_file(db, "sql/002_enforcement.sql")?;
        cluster.run_sql_file(db, "sql/003_ddl_notify.sql")?;
    }

    // Budgets in observe mode: analyst's tier is small enough that its analytic queries
    // climb the ladder, which is audited and logged but not acted on. The monitor role is
    // the superuser (the cost worker shares its connection and must SET ROLE to analyst),
    // so security.read_only_enforce is off. The policy wants each time-partitioned table
    // covered 32 days ahead: with next month's partition of meta's audit log dropped it is
    // covered only to the month's end, so PostgresPartitionMissing fires (a warning) on
    // the slow loop's first run. Its retention is 28 days: the seed's oldest month ended at
    // least 28 days ago (it is the month before last) and the retention routine
    // (audit_log_drop_older_than) has not run, so PostgresPartitionPastRetention fires too.
    let config = format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\ncapture:\n  hooks: auto\nmetrics:\n  listen: {}\n\
         {SUPERUSER_MONITOR}budgets:\n  enabled: true\n  mode: observe\n  tiers:\n    analytics: {{budget: 300000, window_seconds: 30}}\n    \
         oltp: {{budget: 1.0e9, window_seconds: 30}}\n  roles:\n    - {{match: analyst, tier: analytics}}\n    \
         - {{match: shop, tier: oltp}}\n    - {{match: meta, tier: oltp}}\n\
         alerts:\n  partition_horizon_seconds: {{warn: 2764800, crit: 86400}}\n  \
         partition_retention_seconds: {{warn: 2419200, crit: 4838400}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
        args.listen
    );
    println!(
        "== agent {} with config:\n{}",
        binary.display(),
        indent(&config)
    );
    let mut agent = Agent::start(binary, &config, &args.listen)?;
    println!(
        "   agent pid {} healthy at http://{}/healthz",
        agent.pid(),
        args.listen
    );
    println!(
        "   the web UI: http://{}/ (open it while the workload runs)",
        args.listen
    );

    let duration = args.minutes.map_or(args.duration, |m| m * 60);
    if all {
        println!(
            "== workload for {duration} s: shop (pgbench), analyst (psql) and meta (pgbench mix) in parallel"
        );
    } else {
        println!("== workload for {duration} s: meta (the storage-metadata pgbench mix)");
    }
    workload(&cluster, duration, all)?;
    if interrupted() {
        bail!("interrupted");
    }

    let mut problems = Vec::new();
    let roles: &[&[&str]] = if all {
        &[&[], &["--role", "analyst"], &["--role", "meta"]]
    } else {
        &[&[], &["--role", "meta"]]
    };
    for extra in roles {
        let mut status = Command::new(binary);
        status.args(["status", "--addr", &args.listen]).args(*extra);
        println!("\n== {}", describe(&status));
        match status.output() {
            Ok(out) => {
                print!("{}", String::from_utf8_lossy(&out.stdout));
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                if !out.status.success() {
                    problems.push(format!("`{}` failed ({})", describe(&status), out.status));
                }
            }
            Err(e) => problems.push(format!("cannot run pgmon-agent status: {e}")),
        }
    }

    println!("\n== alerts firing (GET /api/v1/alerts; no notifier is configured)");
    match agent.get("/api/v1/alerts") {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let firing = v["data"]["firing"].as_array().cloned().unwrap_or_default();
            if firing.is_empty() {
                println!("   (none)");
            }
            for a in firing {
                println!(
                    "   {} [{}] {}",
                    a["alertname"].as_str().unwrap_or("?"),
                    a["severity"].as_str().unwrap_or("?"),
                    a["message"].as_str().unwrap_or("")
                );
            }
        }
        Ok((code, body)) => problems.push(format!("/api/v1/alerts answered {code}: {body}")),
        Err(e) => problems.push(format!("/api/v1/alerts: {e:#}")),
    }

    println!(
        "\n== meta's largest indexes (GET /api/v1/storage?database=meta) and GIN pending lists (/api/v1/autovacuum)"
    );
    match meta_indexes(&agent) {
        Ok(lines) => print!("{}", indent(&lines)),
        Err(e) => problems.push(format!("meta's indexes: {e:#}")),
    }

    println!("\n== pgmon.audit: what the budget ladder decided (mode: observe acts on nothing)");
    match cluster.psql_admin(
        "SELECT to_char(at, 'HH24:MI:SS') || '  ' || role || '  ' || step || '  ' || action || '  ' || result \
         FROM pgmon.audit ORDER BY id LIMIT 20",
    ) {
        Ok(rows) if rows.trim().is_empty() => println!("   (no step reached)"),
        Ok(rows) => print!("{}", indent(&rows)),
        Err(e) => problems.push(format!("pgmon.audit: {e:#}")),
    }

    println!("\n== /metrics (pgmon_ lines without histogram buckets, first 40)");
    match agent.metrics_text() {
        Ok(text) => {
            // Histogram buckets would fill the sample; their _sum/_count lines stay.
            let lines = metrics::filter_lines(&text, "pgmon_", usize::MAX);
            for line in lines.iter().filter(|l| !l.contains("_bucket{")).take(40) {
                println!("{line}");
            }
        }
        Err(e) => problems.push(format!("/metrics: {e:#}")),
    }

    println!("\n== stopping the agent (SIGTERM) and the cluster");
    let exit = agent.stop()?;
    println!("   agent exited: {exit}");
    if !exit.success() {
        problems.push(format!(
            "agent exited with {exit}; log tail:\n{}",
            pgmon_tests::tail(&agent.log(), 30)
        ));
    }
    cluster.stop()?;
    println!("   cluster stopped");
    if !problems.is_empty() {
        bail!("demo finished with problems:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// The largest indexes of database `meta` as the read API lists them (access method, size,
/// scans), then its GIN indexes' pending lists: one line each.
fn meta_indexes(agent: &Agent) -> Result<String> {
    let get = |path: &str| -> Result<serde_json::Value> {
        match agent.get(path)? {
            (200, body) => Ok(serde_json::from_str(&body)?),
            (code, body) => bail!("{path} answered {code}: {body}"),
        }
    };
    let mut out = format!(
        "{:<50} {:<8} {:>8} {:>10}\n",
        "index", "method", "MiB", "scans"
    );
    let storage = get("/api/v1/storage?database=meta&limit=8")?;
    for i in storage["data"]["indexes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<50} {:<8} {:>8.1} {:>10}\n",
            i["index"].as_str().unwrap_or("?"),
            i["access_method"].as_str().unwrap_or("?"),
            i["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            i["scans"].as_f64().unwrap_or(0.0),
        ));
    }
    let vacuum = get("/api/v1/autovacuum?database=meta")?;
    match vacuum["data"]["gin_pending_lists"].as_array() {
        Some(lists) => {
            for g in lists {
                out.push_str(&format!(
                    "GIN pending list of {}: {} entries, {:.0} KiB\n",
                    g["index"].as_str().unwrap_or("?"),
                    g["pending_tuples"].as_f64().unwrap_or(0.0),
                    g["pending_bytes"].as_f64().unwrap_or(0.0) / 1024.0,
                ));
            }
        }
        None => out.push_str("GIN pending lists: pgstattuple is not callable in meta\n"),
    }
    Ok(out)
}

/// Analytic queries of role `analyst`; `{n}` is replaced by a changing number.
const ANALYST_QUERIES: &[&str] = &[
    "SELECT bid, count(*), sum(abalance), avg(abalance)::numeric(12,2) FROM pgbench_accounts GROUP BY bid ORDER BY bid",
    "SELECT b.bid, b.bbalance, count(h.tid) AS moves FROM pgbench_branches b \
     LEFT JOIN pgbench_history h ON h.bid = b.bid GROUP BY b.bid, b.bbalance ORDER BY moves DESC",
    "SELECT tid, delta, sum(delta) OVER (PARTITION BY tid ORDER BY mtime) AS running \
     FROM pgbench_history ORDER BY mtime DESC LIMIT 20",
    "SELECT t.bid, count(*) FILTER (WHERE h.delta > 0) AS ups, count(*) FILTER (WHERE h.delta < 0) AS downs \
     FROM pgbench_tellers t JOIN pgbench_history h ON h.tid = t.tid GROUP BY t.bid ORDER BY t.bid",
    "SELECT aid, abalance, rank() OVER (ORDER BY abalance DESC) FROM pgbench_accounts \
     WHERE aid BETWEEN {n} AND {n} + 999 ORDER BY 3 LIMIT 10",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
];

/// Queries that fail on purpose (division by zero, unknown column, no privilege).
const FAILING_QUERIES: &[&str] = &[
    "SELECT sum(abalance) / (count(*) - count(*)) FROM pgbench_accounts WHERE aid < {n}",
    "SELECT no_such_column FROM pgbench_branches",
    "UPDATE pgbench_branches SET bbalance = 0 WHERE bid = 1",
];

fn workload(cluster: &Cluster, duration_s: u64, all: bool) -> Result<()> {
    if !all {
        return meta_load(cluster, duration_s);
    }
    let done = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let half = (duration_s / 2).max(1);
    std::thread::scope(|s| {
        let meta = s.spawn(|| meta_load(cluster, (half * 2).max(1)));
        let shop = s.spawn(|| {
            let res = shop_load(cluster, half);
            done.store(true, Ordering::SeqCst);
            res
        });
        let analyst = s.spawn(|| analyst_load(cluster, &done, &ok, &failed));
        let shop_res = shop
            .join()
            .map_err(|_| anyhow::anyhow!("shop thread panicked"))?;
        let analyst_res = analyst
            .join()
            .map_err(|_| anyhow::anyhow!("analyst thread panicked"))?;
        println!(
            "   analyst: {} queries ok, {} failed (as intended)",
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
        let meta_res = meta
            .join()
            .map_err(|_| anyhow::anyhow!("meta thread panicked"))?;
        shop_res.and(analyst_res).and(meta_res)
    })
}

/// Role `meta`: the storage-metadata mix (record, get, list by prefix, full-text search,
/// versions, audit log, hook statistics, lifecycle deletes), 2 clients, simple protocol.
fn meta_load(cluster: &Cluster, duration_s: u64) -> Result<()> {
    if interrupted() {
        return Ok(());
    }
    let run = pgmon_tests::storage_metadata_run("meta", "meta", Transport::Unix, 2, 1, duration_s);
    let r = cluster.pgbench(&run)?;
    println!(
        "   meta: storage-metadata mix: {} transactions, {:.0} tps, {} failed",
        r.transactions_processed, r.tps, r.failed
    );
    Ok(())
}

fn shop_load(cluster: &Cluster, half_s: u64) -> Result<()> {
    let phases = [
        ("TPC-B-like, -M simple", Protocol::Simple, false),
        ("select-only, -M extended", Protocol::Extended, true),
    ];
    for (label, protocol, select_only) in phases {
        if interrupted() {
            break;
        }
        let run = PgbenchRun {
            clients: 2,
            jobs: 2,
            transactions: None,
            duration_s: Some(half_s),
            protocol,
            select_only,
            no_vacuum: true,
            ..PgbenchRun::new("shop", "shop")
        };
        let r = cluster.pgbench(&run)?;
        println!(
            "   shop: pgbench {label}: {} transactions, {:.0} tps, {} failed",
            r.transactions_processed, r.tps, r.failed
        );
    }
    Ok(())
}

fn analyst_load(
    cluster: &Cluster,
    done: &AtomicBool,
    ok: &AtomicU64,
    failed: &AtomicU64,
) -> Result<()> {
    let mut session = cluster.hold_session("analyst", "shop", Transport::Tcp)?;
    let start = Instant::now();
    let mut round: u64 = 0;
    while !done.load(Ordering::SeqCst) && !interrupted() {
        round += 1;
        let n = (round * 7919) % 400_000 + 1;
        for q in ANALYST_QUERIES {
            let sql = q.replace("{n}", &n.to_string());
            match session.run(&sql) {
                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("   analyst: unexpected failure: {e:#}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        // Every third round: the failing queries, and one short-lived connection.
        if round.is_multiple_of(3) {
            for q in FAILING_QUERIES {
                let sql = q.replace("{n}", &n.to_string());
                match session.run(&sql) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            let one_shot =
                "SELECT count(*) FROM pgbench_history WHERE mtime > now() - interval '10 seconds'";
            match cluster.psql("analyst", "shop", Transport::Unix, one_shot) {
                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "   analyst: {round} rounds in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
