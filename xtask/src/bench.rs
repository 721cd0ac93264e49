//! `cargo xtask bench`: the figures issue 2 names, each against a baseline taken in the
//! same run (these machines are noisy and have 2 cores), written to `bench/`.
//!
//! 1. Overhead: `pgbench -S -c 2 -j 2` TPS with the agent attached ÷ TPS detached (also
//!    with budgets on), over the unix socket and TCP. Each round runs every mode once, the order
//!    rotated by one each round (a Latin square: over a multiple of four rounds every mode
//!    runs in every position equally often), so drift and position favour none; the ratio
//!    is taken within each round, and the report gives medians. One mode attaches the
//!    agent to another cluster: a null control, whose ratio shows the noise.
//!    Where it goes in CPU time, under `pgbench -S` and TPC-B-like
//!    ([`crate::bench_probe`]), and what a socket call of any
//!    other process on the host pays ([`crate::bench_host`]).
//! 2. Completeness under stress ([`crate::bench_stress`]): 16 clients; loss = pgbench's
//!    transactions − pgmon's count of the statement, with the kernel's drop counter beside it.
//! 3. Pipeline throughput without a kernel ([`crate::bench_replay`]): capture records of real
//!    pgbench traffic (`pgmon-agent record`) replayed through the pipeline on one core
//!    (`pgmon-agent replay`): statement-cache hits; and a corpus of distinct statements, each
//!    a libpg_query miss.
//! 4. The agent's RSS and CPU during the overhead runs, and per 1,000 queries/s at three
//!    throttled rates ([`crate::bench_rates`]).
//! 5. Budgets ([`crate::bench_budget`]): enforcement latency, the cost worker's rate, and the
//!    overhead and cost-cache hit ratio with budgets on.
//! 6. Storage quotas ([`crate::bench_storage`]) and health pollers ([`crate::bench_health`]).
//! 7. TLS sessions ([`crate::bench_tls`]): throughput with TLS capture, and what another
//!    process's SSL call pays; then the storage-metadata mix ([`crate::bench_meta`],
//!    issue 23): overhead rounds and the replay figure on a realistic statement mix.
//! 8. pgmon's own footprint in the database ([`crate::bench_footprint`]): rows and WAL it
//!    writes with 1 000 budgeted roles active, and the size of its tables.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Result, bail};

use crate::bench_overhead::{MODES, overhead_run};
use crate::bench_replay::{miss_corpus, record, replay, tempdir};
use crate::bench_stats::{ordinal, sign_test_rank};
use crate::bench_stress::stress_run;
use pgmon_tests::{
    Cluster, ClusterOptions, PgVersion, PgbenchRun, Protocol, SUPERUSER_MONITOR, Transport,
};

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
    /// Skip the release build (use the agent binary already in target/release).
    #[arg(long)]
    no_build: bool,
    /// Seconds per pgbench run. This host's TPS swings by ±15 % from one second to the next
    /// (`pgbench -P 1`, detached), so a run's mean is the noise the ratios carry.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Rounds of the overhead comparison per transport (a multiple of the seven modes keeps
    /// the rotation balanced). One round's ratio swings by ±15 % on this host; 21 rounds
    /// narrow the median's 95 % interval to the 6th–16th of 21.
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    /// Rounds of the TPC-B-like comparison per transport (a multiple of its six modes);
    /// 0 leaves it out.
    #[arg(long, default_value_t = 12)]
    tpcb_rounds: usize,
    /// Pairs of CPU-accounting runs (attached, null control) per workload (`pgbench -S`,
    /// TPC-B-like) and transport, for the capture's own share.
    #[arg(long, default_value_t = 3)]
    probe_runs: usize,
    /// Trials of the enforcement-latency measurement.
    #[arg(long, default_value_t = 40)]
    trials: usize,
    /// Measure only where the capture overhead goes (CPU time), print it and write
    /// `bench/PROBE.md` and `bench/probe.json`.
    #[arg(long)]
    probe_only: bool,
    /// Measure only the CPU accounting and the overhead rounds (pgbench -S and TPC-B-like,
    /// with the references), print them and write `bench/OVERHEAD.md` and
    /// `bench/overhead.json`.
    #[arg(long)]
    overhead_only: bool,
    #[command(flatten)]
    storage: crate::bench_storage::StorageBenchArgs,
    #[command(flatten)]
    health: crate::bench_health::HealthBenchArgs,
    #[command(flatten)]
    tls: crate::bench_tls::TlsBenchArgs,
    #[command(flatten)]
    footprint: crate::bench_footprint::FootprintBenchArgs,
    #[command(flatten)]
    meta: crate::bench_meta::MetaBenchArgs,
    #[command(flatten)]
    rates: crate::bench_rates::RatesBenchArgs,
}

/// Setup, build, then [`measure`].
pub fn run(args: &BenchArgs) -> Result<()> {
    if !crate::util::is_root() {
        bail!("`cargo xtask bench` must run as root (the agent loads eBPF programs)");
    }
    if !args.no_setup {
        crate::setup::run()?;
    }
    if !args.no_build {
        crate::util::build_release()?;
    }
    if args.storage.storage_only {
        let (md, _) =
            crate::bench_storage::section(&crate::util::agent_release_binary(), &args.storage)?;
        println!("{md}");
        return Ok(());
    }
    if args.health.health_only {
        let (md, _) =
            crate::bench_health::section(&crate::util::agent_release_binary(), &args.health)?;
        println!("{md}");
        return Ok(());
    }
    if args.footprint.footprint_only {
        return crate::bench_footprint::only(&crate::util::agent_release_binary(), &args.footprint);
    }
    if args.rates.rates_only {
        let cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default())?;
        cluster.create_role_with_db("bench")?;
        cluster.pgbench_init("bench", "bench", 10)?;
        let (md, _) = crate::bench_rates::section(
            &crate::util::agent_release_binary(),
            &cluster,
            &args.rates,
        )?;
        println!("{md}");
        return Ok(());
    }
    if args.meta.meta_only {
        let (md, json) =
            crate::bench_meta::section(&crate::util::agent_release_binary(), &args.meta)?;
        return write_section("META", "pgmon on the storage-metadata mix", &md, &json);
    }
    if args.tls.tls_only {
        let (md, json) =
            crate::bench_tls::section(&crate::util::agent_release_binary(), &args.tls)?;
        return write_section("TLS", "pgmon TLS benchmark", &md, &json);
    }
    measure(&crate::util::agent_release_binary(), args)
}

/// Writes one section run alone to `bench/<NAME>.md` (under `# title`) and
/// `bench/<name>.json`, and prints it.
fn write_section(name: &str, title: &str, md: &str, json: &serde_json::Value) -> Result<()> {
    let out_dir = crate::util::workspace_root().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let md_path = out_dir.join(format!("{name}.md"));
    std::fs::write(&md_path, format!("# {title}\n{md}"))?;
    std::fs::write(
        out_dir.join(format!("{}.json", name.to_lowercase())),
        serde_json::to_string_pretty(json)?,
    )?;
    println!("{md}\nwritten to {}", md_path.display());
    Ok(())
}

/// An agent configuration for `cluster` on hook family `hook`, metrics on `port`; the
/// monitor role is the superuser `postgres` (so `security.read_only_enforce` is off).
pub fn agent_config(cluster: &Cluster, port: u16, hook: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\ncapture:\n  hooks: {hook}\nmetrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

/// (utime + stime) ticks and RSS pages of `pid`, from /proc/<pid>/stat (proc(5)).
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let f = crate::util::proc_stat(pid)?;
    Some((f.get(11)? + f.get(12)?, *f.get(21)?))
}

/// The TPC-B-like rounds (`pgbench` without `-S`): pgmon, the null control and the two
/// references, `args.tpcb_rounds` per transport: (markdown section, JSON rows).
fn tpcb_rounds(
    binary: &Path,
    cluster: &Cluster,
    other: &Cluster,
    args: &BenchArgs,
) -> Result<(String, Vec<serde_json::Value>)> {
    use crate::bench_overhead::{TPCB_MODES, tpcb_run};
    if args.tpcb_rounds == 0 {
        return Ok((String::new(), Vec::new()));
    }
    let transports = [Transport::Unix, Transport::Tcp];
    let mut samples = Vec::new();
    for transport in transports {
        for round in 0..args.tpcb_rounds {
            let mut order = TPCB_MODES.to_vec();
            order.rotate_left(round % TPCB_MODES.len());
            for mode in order {
                let run = tpcb_run(transport, args.duration);
                let s = overhead_run(binary, cluster, other, &run, round, mode)?;
                eprintln!(
                    "bench: tpc-b {transport:?} round {round} {:<32} {:>7.0} tps",
                    mode.name(),
                    s.tps
                );
                samples.push(s);
            }
        }
    }
    let (table, json) = crate::bench_overhead::table(&samples, &transports, &TPCB_MODES);
    let rank = sign_test_rank(args.tpcb_rounds)
        .map_or("(too few rounds for an interval)".to_owned(), |k| {
            format!("the {} smallest and largest ratio", ordinal(k))
        });
    Ok((
        format!(
            "\n## Overhead on TPC-B-like transactions\n\n`pgbench -c 2 -j 2 -T {}` with its built-in script (three updates, a select and an insert per transaction, 5 statements plus BEGIN/END), {} rounds per transport, the modes rotating as above; the interval: {rank}. Target: attached ≥ 0.99.\n\n{table}",
            args.duration, args.tpcb_rounds
        ),
        json,
    ))
}

fn measure(binary: &Path, args: &BenchArgs) -> Result<()> {
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            max_connections: 100,
            ..ClusterOptions::default()
        },
    )?;
    let other = Cluster::start(PgVersion::Pg15, ClusterOptions::default())?;
    cluster.create_role_with_db("bench")?;
    cluster.pgbench_init("bench", "bench", 10)?;
    crate::bench_budget::install_sql(&cluster)?;
    // The baseline every measurement but the pg_stat_statements reference runs under.
    crate::bench_overhead::server_settings(&cluster, crate::bench_overhead::Mode::Detached)?;
    let mut report = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        report,
        "# pgmon benchmark\n\nPostgreSQL 15, `pgbench -S -c 2 -j 2 -T {}` (scale 10), {} rounds per transport, \
         kernel {}, {} cores. Ratios are to the detached run of the same round, the order of the modes rotating each round; medians over rounds. Every run's pgbench starts {} s after the previous run ended; an attached agent runs through that pause (steady state: its start-up work is left out). `auto, on another cluster` attaches the agent to a second cluster: a null control, its spread is the noise. Two references run without the agent, as a DBA would instead: `pg_stat_statements` with `track = top`, and `log_min_duration_statement = 0` (every statement in the server log); every other mode, the detached baseline included, runs with `pg_stat_statements.track = none` and no statement logging (the library stays loaded; the settings change by `ALTER SYSTEM` and a reload).\n",
        args.duration,
        args.rounds,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::bench_overhead::SETTLE.as_secs(),
    );

    // 1. Overhead: CPU time, then the throughput rounds.
    let mut costs = Vec::new();
    use crate::bench_probe::{SELECT_ONLY, TPCB};
    for (workload, transport) in [SELECT_ONLY, TPCB]
        .iter()
        .flat_map(|w| [Transport::Unix, Transport::Tcp].map(|t| (*w, t)))
    {
        let run = if workload == SELECT_ONLY {
            crate::bench_overhead::select_only_run(transport, args.duration)
        } else {
            crate::bench_overhead::tpcb_run(transport, args.duration)
        };
        for rep in 0..args.probe_runs {
            // Attached and null control alternate, the first of each pair alternating too.
            let order = if rep % 2 == 0 {
                [&cluster, &other]
            } else {
                [&other, &cluster]
            };
            for watched in order {
                let c = crate::bench_probe::measure(binary, &cluster, watched, workload, &run)?;
                eprintln!(
                    "bench: probe cost {} {transport:?} {} share {:.2} %",
                    c.workload,
                    if c.attached {
                        "attached"
                    } else {
                        "null control"
                    },
                    c.share() * 100.0
                );
                costs.push(c);
            }
        }
    }
    let (mut probe_md, probe_json) = crate::bench_probe::section(&costs);
    let (host_md, host_json) =
        crate::bench_host::section(&crate::bench_host::measure(binary, &cluster)?);
    probe_md.push_str(&host_md);
    if args.probe_only {
        return write_section(
            "PROBE",
            "Where the capture overhead goes: CPU time",
            &probe_md,
            &serde_json::json!({"probe_cost": probe_json, "other_process_socket_call": host_json}),
        );
    }
    let mut samples = Vec::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        for round in 0..args.rounds {
            let mut order = MODES.to_vec();
            order.rotate_left(round % MODES.len());
            for mode in order {
                let s = overhead_run(
                    binary,
                    &cluster,
                    &other,
                    &crate::bench_overhead::select_only_run(transport, args.duration),
                    round,
                    mode,
                )?;
                eprintln!(
                    "bench: {transport:?} round {round} {:<15} {:>9.0} tps{}",
                    mode.name(),
                    s.tps,
                    s.agent_cpu.map_or(String::new(), |c| format!(
                        ", {} {:.1}% CPU",
                        if mode == crate::bench_overhead::Mode::PgBouncer {
                            "PgBouncer"
                        } else {
                            "agent"
                        },
                        c * 100.0
                    ))
                );
                samples.push(s);
            }
        }
    }
    let (table_md, json_overhead) =
        crate::bench_overhead::table(&samples, &[Transport::Unix, Transport::Tcp], &MODES);
    let (tpcb_md, json_tpcb) = tpcb_rounds(binary, &cluster, &other, args)?;
    crate::bench_overhead::server_settings(&cluster, crate::bench_overhead::Mode::Detached)?;
    let _ = writeln!(
        report,
        "## Overhead\n\nThe interval is a distribution-free confidence interval of at least 95 % for the median ratio (sign test on the rounds' ratios: with {} rounds, the {} smallest and the {} largest).\n\n{table_md}",
        args.rounds,
        ordinal(sign_test_rank(args.rounds).unwrap_or(0)),
        ordinal(sign_test_rank(args.rounds).unwrap_or(0)),
    );

    report.push_str(&tpcb_md);
    report.push_str(&probe_md);
    if args.overhead_only {
        let body = report
            .split_once('\n')
            .map_or(report.as_str(), |(_, rest)| rest);
        let json = serde_json::json!({"overhead": json_overhead, "probe_cost": probe_json, "tpcb": json_tpcb});
        return write_section(
            "OVERHEAD",
            "pgmon overhead against the references",
            body,
            &json,
        );
    }
    let (rates_md, rates_json) = crate::bench_rates::section(binary, &cluster, &args.rates)?;
    report.push_str(&rates_md);

    // 2. Completeness under stress.
    let _ = writeln!(
        report,
        "\n## Completeness under stress (agent on `auto`)\n\n| run | pgbench transactions | pgmon count | loss | kernel drops | desyncs |\n|---|---|---|---|---|---|"
    );
    let mut json_stress = Vec::new();
    for protocol in [Protocol::Simple, Protocol::Prepared] {
        let (tx, seen, drops, desyncs) = stress_run(binary, &cluster, protocol, args.duration)?;
        let loss = tx as i64 - seen as i64;
        eprintln!(
            "bench: stress -c 16 -M {}: pgbench {tx}, pgmon {seen}, loss {loss}, drops {drops}",
            protocol.as_arg()
        );
        let _ = writeln!(
            report,
            "| `pgbench -S -c 16 -j 2 -M {}` | {tx} | {seen} | {loss} | {drops} | {desyncs} |",
            protocol.as_arg()
        );
        json_stress.push(serde_json::json!({"protocol": protocol.as_arg(), "transactions": tx, "pgmon": seen, "loss": loss, "drops": drops, "desyncs": desyncs}));
    }

    // 3. Pipeline replay.
    let dir = tempdir()?;
    let hits_file = dir.join("hits.capture");
    record(binary, &cluster, &hits_file, || {
        for protocol in [Protocol::Simple, Protocol::Extended, Protocol::Prepared] {
            cluster.pgbench(&PgbenchRun {
                clients: 2,
                jobs: 2,
                transactions: None,
                duration_s: Some(3),
                protocol,
                select_only: true,
                no_vacuum: true,
                ..PgbenchRun::new("bench", "bench")
            })?;
        }
        Ok(())
    })?;
    let misses_file = dir.join("misses.capture");
    let corpus = dir.join("corpus.sql");
    std::fs::write(&corpus, miss_corpus(3000))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    record(binary, &cluster, &misses_file, || {
        let out = Command::new(pgmon_tests::PSQL)
            .args(["-X", "-q", "-h"])
            .arg(cluster.socket_dir())
            .args([
                "-p",
                &cluster.port().to_string(),
                "-U",
                "bench",
                "-d",
                "bench",
                "-o",
                "/dev/null",
                "-f",
            ])
            .arg(&corpus)
            .output()?;
        if !out.status.success() {
            bail!(
                "psql -f corpus failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })?;
    let hits = replay(binary, &hits_file, &["--passes", "5"])?;
    let misses = replay(binary, &misses_file, &["--passes", "3", "--cold"])?;
    let qps = |v: &serde_json::Value| v["queries_per_second"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        report,
        "\n## Pipeline throughput, one core, no kernel (`pgmon-agent replay`)\n\n| corpus | queries | queries/s | records/s |\n|---|---|---|---|\n\
         | pgbench -S simple+extended+prepared (statement-cache hits) | {} | {:.0} | {:.0} |\n\
         | 3000 distinct statements (libpg_query misses, cold cache) | {} | {:.0} | {:.0} |\n\nHits are {:.0}× faster than misses. Target for hits: ≥ 500 000 queries/s.\n",
        hits["queries"],
        qps(&hits),
        hits["records_per_second"].as_f64().unwrap_or(0.0),
        misses["queries"],
        qps(&misses),
        misses["records_per_second"].as_f64().unwrap_or(0.0),
        qps(&hits) / qps(&misses).max(1.0),
    );

    // 5. Budgets.
    let hit_ratios: Vec<f64> = samples.iter().filter_map(|s| s.hit_ratio).collect();
    let worker_corpus = dir.join("worker.sql");
    std::fs::write(&worker_corpus, miss_corpus(1000))?;
    let (budgets_md, json_budgets) =
        crate::bench_budget::section(binary, &cluster, args.trials, &hit_ratios, &worker_corpus)?;
    report.push_str(&budgets_md);
    let _ = std::fs::remove_dir_all(&dir);
    let (meta_md, meta_json) = crate::bench_meta::section(binary, &args.meta)?;
    report.push_str(&meta_md);
    let (storage_md, storage_json) = crate::bench_storage::section(binary, &args.storage)?;
    report.push_str(&storage_md);
    let (health_md, health_json) = crate::bench_health::section(binary, &args.health)?;
    report.push_str(&health_md);
    let (tls_md, tls_json) = crate::bench_tls::section(binary, &args.tls)?;
    report.push_str(&tls_md);
    let (footprint_md, footprint_json) = crate::bench_footprint::section(binary, &args.footprint)?;
    report.push_str(&footprint_md);

    let out_dir = crate::util::workspace_root().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("REPORT.md"), &report)?;
    let json = serde_json::json!({"overhead": json_overhead, "probe_cost": probe_json, "other_process_socket_call": host_json, "stress": json_stress, "replay": {"hits": hits, "misses": misses}, "budgets": json_budgets, "storage": storage_json, "health": health_json, "tls": tls_json, "footprint": footprint_json, "storage_metadata": meta_json, "per_1000_qps": rates_json, "tpcb": json_tpcb});
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!(
        "{report}\nwritten to {}",
        out_dir.join("REPORT.md").display()
    );
    Ok(())
}
