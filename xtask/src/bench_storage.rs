//! The storage-quota figures issues 4 and 27 name, for `cargo xtask bench` (one
//! PostgreSQL 15 cluster, the agent with `storage.enabled`, mode `enterprise_db` unless
//! said):
//!
//! 1. Full recount: `--storage-roles` roles owning `--storage-tables` tables each (default
//!    30 000 × 2, issue 27's size; each with a primary key: a table, its index, its TOAST
//!    table and that one's index), time of the agent's full recount of every database
//!    (`pgmon_storage_recount_seconds`, median of three; issue 4's target < 2 s was set at
//!    10 000 × 5, a similar 200 000 relations) and the agent's RSS. Besides: the time from
//!    the agent's start to the trigger on every table (full coverage, the walk running in
//!    the background) and to the first full recount; then a restart, and the time until
//!    every role is judged on its persisted usage.
//! 2. Lock latency: a role with grace 0 and three idle sessions commits an INSERT past its
//!    hard limit; a superuser session polling on the server (1 ms) times from the moment
//!    the rows are visible (the commit) to the moment the role has no session left and
//!    `rolcanlogin` is false. p50 and p99 over `--storage-samples` roles. Target p99 < 1 s.
//! 3. Outrunning the hard limit in both modes ([`crate::bench_storage_outrun`]): CREATE
//!    TABLE then a separate 80 MB load, and a loop of 1 MB commits. Target: locked within
//!    1 s of the load's commit; the bytes past the hard limit reported.
//! 4. Write overhead: `pgbench` TPC-B-like (default script, four trigger calls per
//!    transaction) with the pgmon_storage_notify triggers disabled (ALTER TABLE … DISABLE
//!    TRIGGER: the same tables), calling the C function (sql/native) and calling the
//!    PL/pgSQL one (`pgmon.storage_notify()` replaced by each in turn), the agent listening
//!    throughout at its default recount and refresh intervals. Short runs, the order
//!    rotating each round, a CHECKPOINT before each; per round the ratio of each variant to
//!    the disabled run, and the median of those ratios (the runs on this machine vary by
//!    ±15 %, so the pairing within a round matters more than the length of a run).
//!    Target ≥ 0.97.

use std::{fmt::Write as _, path::Path, time::Duration};

use crate::{bench_budget::quantile, bench_stats::median};
use anyhow::{Context as _, Result, bail};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Transport, free_port, quote_ident,
};

/// What the pgbench tables' storage triggers call in one run of section 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Off,
    C,
    PlPgSql,
}

/// Arguments of the storage benchmark (part of `cargo xtask bench`).
#[derive(clap::Args)]
pub struct StorageBenchArgs {
    /// Roles of the recount benchmark.
    #[arg(long, default_value_t = 30_000)]
    storage_roles: usize,
    /// Tables per role.
    #[arg(long, default_value_t = 2)]
    storage_tables: usize,
    /// Lock-latency samples (one role each).
    #[arg(long, default_value_t = 20)]
    storage_samples: usize,
    /// Samples per mode of the outrun figures (two roles each).
    #[arg(long, default_value_t = 3)]
    storage_outrun_samples: usize,
    /// Rounds of the pgbench comparison (three runs each).
    #[arg(long, default_value_t = 12)]
    storage_rounds: usize,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 5)]
    storage_duration: u64,
    /// Run only this benchmark and print its section (nothing written to bench/).
    #[arg(long)]
    pub storage_only: bool,
}

/// Runs the sql/ `files` as the superuser in database `db`.
fn install(cluster: &Cluster, db: &str, files: &[&str]) -> Result<()> {
    files.iter().try_for_each(|f| cluster.run_sql_file(db, f))
}

/// The agent's policy; `fast`: full recount every 10 s and catalog refresh every 5 s (for
/// the recount figures), else the defaults (60 s, 30 s).
fn config(cluster: &Cluster, port: u16, fast: bool) -> String {
    let intervals = if fast {
        "  recount_interval_seconds: 10\n  refresh_interval_seconds: 5\n"
    } else {
        ""
    };
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=pgmon dbname=postgres\"\n\
         metrics:\n  listen: 127.0.0.1:{port}\n\
         storage:\n  enabled: true\n  mode: enterprise_db\n{intervals}  roles:\n\
         \x20   - {{match: 'lat_*', soft_limit: 512kB, hard_limit: 1MB, hard_grace_period: 0, unlock_grace_period: 86400}}\n\
         \x20   - {{match: pgb, soft_limit: 100GB, hard_limit: 200GB}}\n\
         \x20   - {{match: 't*', soft_limit: 1GB, hard_limit: 2GB}}\n",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

/// Runs the three measurements; returns the report section (Markdown) and its JSON.
pub fn section(binary: &Path, args: &StorageBenchArgs) -> Result<(String, serde_json::Value)> {
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            max_connections: 100,
            ..ClusterOptions::default()
        },
    )?;
    install(&cluster, "postgres", &pgmon_tests::STORAGE_MONITOR_SQL)?;
    cluster.psql_admin("CREATE DATABASE quota")?;
    install(&cluster, "quota", &pgmon_tests::STORAGE_TENANT_SQL)?;
    cluster.psql(
        "postgres",
        "quota",
        Transport::Unix,
        "GRANT CREATE ON SCHEMA public TO PUBLIC",
    )?;

    // 1. Roles and tables, 50 roles per transaction (locks per transaction stay bounded).
    let t = std::time::Instant::now();
    let mut script = String::new();
    for first in (1..=args.storage_roles).step_by(50) {
        let last = (first + 49).min(args.storage_roles);
        let _ = writeln!(
            script,
            "DO $$ BEGIN FOR i IN {first}..{last} LOOP \
               EXECUTE format('CREATE ROLE t%s LOGIN', i); \
               FOR j IN 1..{} LOOP \
                 EXECUTE format('CREATE TABLE t%s_%s (id int PRIMARY KEY, v text)', i, j); \
                 EXECUTE format('ALTER TABLE t%s_%s OWNER TO t%s', i, j, i); \
               END LOOP; END LOOP; END $$;",
            args.storage_tables
        );
    }
    cluster.psql("postgres", "quota", Transport::Unix, &script)?;
    eprintln!(
        "bench storage: {} roles × {} tables created in {:.1} s",
        args.storage_roles,
        args.storage_tables,
        t.elapsed().as_secs_f64()
    );
    for i in 1..=args.storage_samples {
        cluster.psql_admin(&format!("CREATE ROLE lat_{i} LOGIN"))?;
    }
    cluster.psql_admin("CREATE ROLE pgb LOGIN")?;
    cluster.psql_admin("CREATE DATABASE pgb OWNER pgb")?;
    install(&cluster, "pgb", &pgmon_tests::STORAGE_TENANT_SQL)?;
    cluster.pgbench_init("pgb", "pgb", 10)?;

    let port = free_port();
    let started = std::time::Instant::now();
    let agent = Agent::start(
        binary,
        &config(&cluster, port, true),
        format!("127.0.0.1:{port}"),
    )?;
    // The walk attaches the triggers in the background; recounts follow every 10 s.
    let table_count = args.storage_roles * args.storage_tables;
    let triggers = || -> Result<usize> {
        Ok(cluster
            .query_value(
                "postgres",
                "quota",
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgmon_storage_notify'",
            )?
            .parse::<usize>()
            .unwrap_or(0))
    };
    let mut coverage_s = None;
    let mut first_recount_s = None;
    let mut recounts = Vec::new();
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while (recounts.len() < 3 || coverage_s.is_none()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        if coverage_s.is_none() && triggers()? >= table_count {
            coverage_s = Some(started.elapsed().as_secs_f64());
            eprintln!(
                "bench storage: triggers on all {table_count} tables {:.1} s after the agent started",
                started.elapsed().as_secs_f64()
            );
        }
        let s = agent.status_json()?;
        let (secs, age) = (
            s["storage"]["last_recount_seconds"].as_f64(),
            s["storage"]["last_recount_age_seconds"].as_f64(),
        );
        if let (Some(secs), Some(age)) = (secs, age) {
            let finished = started.elapsed().as_secs_f64() - age;
            if last.is_none_or(|l: f64| (finished - l).abs() > 1.0) {
                last = Some(finished);
                first_recount_s.get_or_insert(finished);
                recounts.push(secs);
                eprintln!("bench storage: full recount {secs:.3} s");
            }
        }
    }
    let rss = agent.status_json()?["agent"]["resident_memory_bytes"]
        .as_f64()
        .unwrap_or(f64::NAN);
    // A restart: the persisted usage judges every role before the first recount.
    drop(agent);
    let port = free_port();
    let restarted = std::time::Instant::now();
    let agent = Agent::start(
        binary,
        &config(&cluster, port, true),
        format!("127.0.0.1:{port}"),
    )?;
    let mut judged_s = None;
    let mut restart_recount_s = None;
    while restarted.elapsed() < Duration::from_secs(300) && restart_recount_s.is_none() {
        if judged_s.is_none()
            && agent
                .log()
                .contains("judging roles on their persisted usage")
        {
            judged_s = Some(restarted.elapsed().as_secs_f64());
        }
        if !agent.status_json()?["storage"]["last_recount_seconds"].is_null() {
            restart_recount_s = Some(restarted.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "bench storage: restart: roles judged on the persisted usage after {judged_s:?} s, first recount done after {restart_recount_s:?} s"
    );
    let attached = cluster
        .query_value(
            "postgres",
            "quota",
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgmon_storage_notify'",
        )?
        .parse::<u64>()
        .unwrap_or(0);

    // 2. Lock latency.
    let mut latencies = Vec::new();
    for i in 1..=args.storage_samples {
        let role = format!("lat_{i}");
        cluster.psql(
            &role,
            "quota",
            Transport::Unix,
            &format!("CREATE TABLE {} (v text)", quote_ident(&format!("w_{i}"))),
        )?;
        let idle: Vec<_> = (0..3)
            .map(|_| cluster.hold_session(&role, "quota", Transport::Unix))
            .collect::<Result<_>>()?;
        // Past the usage cache TTL of the CREATE TABLE's count (2 s in enterprise_db).
        std::thread::sleep(Duration::from_millis(2500));
        let handle =
            crate::bench_storage_outrun::lock_watcher(&cluster, "quota", &role, &format!("w_{i}"))?;
        std::thread::sleep(Duration::from_millis(100));
        let mut writer = cluster.hold_session(&role, "quota", Transport::Unix)?;
        // The writer itself is terminated right after its commit.
        let _ = writer.run(&format!(
            "INSERT INTO w_{i} SELECT repeat('x', 1000) FROM generate_series(1, 2000)"
        ));
        let ms = handle
            .join()
            .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
        eprintln!("bench storage: {role} locked {ms:.1} ms after its commit");
        latencies.push(ms);
        drop(idle);
    }

    // 3. Outrunning the hard limit, in both modes.
    drop(agent);
    let outrun =
        crate::bench_storage_outrun::run(&cluster, binary, "quota", args.storage_outrun_samples)?;

    // 4. pgbench: triggers off, C, PL/pgSQL.
    let port = free_port();
    let agent = Agent::start(
        binary,
        &config(&cluster, port, false),
        format!("127.0.0.1:{port}"),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while agent.status_json()?["storage"]["last_recount_seconds"].is_null() {
        if std::time::Instant::now() > deadline {
            bail!("the agent's first full recount did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let tables = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ];
    let set = |variant: Variant| -> Result<()> {
        let verb = if variant == Variant::Off {
            "DISABLE"
        } else {
            "ENABLE"
        };
        let mut sql = tables
            .map(|t| format!("ALTER TABLE {t} {verb} TRIGGER pgmon_storage_notify;"))
            .join(" ");
        sql.push_str(match variant {
            Variant::Off => "",
            Variant::C => {
                "CREATE OR REPLACE FUNCTION pgmon.storage_notify() RETURNS trigger \
                 LANGUAGE c AS '$libdir/pgmon_storage', 'pgmon_storage_notify';"
            }
            Variant::PlPgSql => {
                "DO $$ BEGIN EXECUTE format('CREATE OR REPLACE FUNCTION pgmon.storage_notify() \
                 RETURNS trigger LANGUAGE plpgsql AS %L', (SELECT prosrc FROM pg_proc \
                 WHERE oid = 'pgmon.storage_notify_plpgsql()'::regprocedure)); END $$;"
            }
        });
        sql.push_str(" CHECKPOINT;");
        cluster
            .psql("postgres", "pgb", Transport::Unix, &sql)
            .with_context(|| format!("switching the storage trigger to {variant:?} (the C one needs `cargo xtask setup`)"))?;
        Ok(())
    };
    const VARIANTS: [Variant; 3] = [Variant::Off, Variant::C, Variant::PlPgSql];
    let (mut c_ratios, mut pl_ratios, mut tps_c) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.storage_rounds {
        let mut tps = [0.0; 3];
        for k in 0..3 {
            let i = (round + k) % 3;
            set(VARIANTS[i])?;
            let r = cluster.pgbench(&PgbenchRun {
                clients: 2,
                jobs: 2,
                transactions: None,
                duration_s: Some(args.storage_duration),
                no_vacuum: true,
                ..PgbenchRun::new("pgb", "pgb")
            })?;
            tps[i] = r.tps;
            eprintln!(
                "bench storage: round {round} {:?} {:.0} tps",
                VARIANTS[i], r.tps
            );
        }
        tps_c.push(tps[1]);
        c_ratios.push(tps[1] / tps[0]);
        pl_ratios.push(tps[2] / tps[0]);
    }
    set(Variant::C)?;
    drop(agent);

    let recount = median(recounts.clone());
    let (p50, p99) = (quantile(&latencies, 0.5), quantile(&latencies, 0.99));
    let (ratio, pl_ratio) = (median(c_ratios.clone()), median(pl_ratios.clone()));
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let secs = |v: Option<f64>| {
        v.map_or_else(
            || "not within the bound".to_owned(),
            |s| format!("{s:.1} s"),
        )
    };
    let (outrun_md, outrun_json) = crate::bench_storage_outrun::report(&outrun);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Storage quotas (issues 4 and 27)\n\nPostgreSQL 15, agent `storage.mode: enterprise_db`, connected as `pgmon`.\n\n\
         | measurement | result | target |\n|---|---|---|\n\
         | full recount, {} roles × {} tables ({} relations with triggers attached: {}) | {:.3} s (median of {}: {}) | < 2 s |\n\
         | time to full coverage: agent start → the trigger on every one of the {} tables (walked in the background) | {} | reported |\n\
         | agent start → first full recount done (every role judged) | {} | |\n\
         | restart → every role judged on its persisted usage (pgmon.storage_usage) | {} (first recount done at {}) | |\n\
         | agent RSS after the recounts | {:.1} MiB | |\n\
         | commit past the hard limit (grace 0) → sessions gone and NOLOGIN, {} samples | p50 {:.1} ms, p99 {:.1} ms | p99 < 1 s |\n\
         {outrun_md}\
         | pgbench TPC-B-like `-c 2 -j 2 -T {}` scale 10, C trigger ÷ triggers off, {} rounds | {:.3} (ratios {}; C: median {:.0} tps) | ≥ 0.97 |\n\
         | the same, PL/pgSQL trigger (the fallback where the C one cannot be built) ÷ off | {:.3} (ratios {}) | |",
        args.storage_roles,
        args.storage_tables,
        args.storage_roles * args.storage_tables * 4,
        attached,
        recount,
        recounts.len(),
        recounts
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        table_count,
        secs(coverage_s),
        secs(first_recount_s),
        secs(judged_s),
        secs(restart_recount_s),
        rss / f64::from(1u32 << 20),
        latencies.len(),
        p50,
        p99,
        args.storage_duration,
        args.storage_rounds,
        ratio,
        list(&c_ratios),
        median(tps_c),
        pl_ratio,
        list(&pl_ratios),
    );
    let json = serde_json::json!({
        "roles": args.storage_roles, "tables_per_role": args.storage_tables,
        "recount_seconds": recounts, "agent_rss_bytes": rss,
        "lock_latency_ms": latencies, "lock_latency_p50_ms": p50, "lock_latency_p99_ms": p99,
        "coverage_seconds": coverage_s, "first_recount_seconds": first_recount_s,
        "restart_judged_seconds": judged_s, "restart_first_recount_seconds": restart_recount_s,
        "outrun": outrun_json,
        "pgbench_ratios_c": c_ratios, "pgbench_ratio_median": ratio,
        "pgbench_ratios_plpgsql": pl_ratios, "pgbench_ratio_plpgsql_median": pl_ratio,
    });
    Ok((md, json))
}
