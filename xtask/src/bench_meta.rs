//! The storage-metadata mix in the benchmark (issue 23): the overhead rounds of section 1
//! run again with the nine weighted scripts of `sql/workloads/storage_metadata/` instead of
//! `pgbench -S` (upserts with a trigger-maintained `tsvector`, full-text and JSONB searches
//! on GIN indexes, inserts into a partitioned audit log), and the pipeline's replay figure on
//! a capture of that mix: a heavier, more varied statement stream than pgbench's one
//! `SELECT`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use pgmon_tests::{Cluster, ClusterOptions, PgVersion, Protocol, Transport, storage_metadata_run};

use crate::bench_overhead::{Mode, overhead_run};
use crate::bench_replay::{record, replay, tempdir};
use crate::bench_stats::{ordinal, sign_test_rank};

/// Options of the storage-metadata section of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct MetaBenchArgs {
    /// Run only the storage-metadata section and write `bench/META.md` and `bench/meta.json`.
    #[arg(long)]
    pub meta_only: bool,
    /// Rounds of the mix's overhead comparison per transport (a multiple of the six modes
    /// keeps the rotation balanced).
    #[arg(long, default_value_t = 12)]
    pub meta_rounds: usize,
    /// Seconds per pgbench run of the mix.
    #[arg(long, default_value_t = 8)]
    pub meta_duration: u64,
}

/// The modes of each round: those of the TPC-B-like rounds (detached, attached on the
/// family these hosts use, the null control and the three references). Budgets are left
/// out: the mix's role is measured as the capture sees it.
pub const META_MODES: [Mode; 6] = crate::bench_overhead::TPCB_MODES;

/// Role and database the mix runs as.
const ROLE: &str = "meta";

/// Throughput target of issue 23: attached ÷ detached on this mix.
pub const TARGET: f64 = 0.98;

/// Runs the section on a cluster of its own: (markdown, JSON).
pub fn section(binary: &Path, args: &MetaBenchArgs) -> Result<(String, serde_json::Value)> {
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            max_connections: 100,
            ..ClusterOptions::default()
        },
    )?;
    let other = Cluster::start(PgVersion::Pg15, ClusterOptions::default())?;
    cluster.load_storage_metadata(ROLE, ROLE)?;
    let transports = [Transport::Unix, Transport::Tcp];
    let mut samples = Vec::new();
    for transport in transports {
        for round in 0..args.meta_rounds {
            let mut order = META_MODES.to_vec();
            order.rotate_left(round % META_MODES.len());
            for mode in order {
                let run = storage_metadata_run(ROLE, ROLE, transport, 2, 2, args.meta_duration);
                let s = overhead_run(binary, &cluster, &other, &run, round, mode)?;
                eprintln!(
                    "bench: storage-metadata {transport:?} round {round} {:<24} {:>7.0} tps{}",
                    mode.name(),
                    s.tps,
                    s.agent_cpu
                        .map_or(String::new(), |c| format!(", {:.1}% CPU", c * 100.0))
                );
                samples.push(s);
            }
        }
    }
    let (table, overhead_json) = crate::bench_overhead::table(&samples, &transports, &META_MODES);
    // The same figure without the rounds' noise: pgmon's share of the machine's busy CPU.
    let mut costs = Vec::new();
    for transport in transports {
        costs.push(crate::bench_probe::measure(
            binary,
            &cluster,
            &cluster,
            "storage-metadata mix",
            &storage_metadata_run(ROLE, ROLE, transport, 2, 2, args.meta_duration),
        )?);
    }
    let (cpu_table, cpu_json) = crate::bench_probe::table(&costs);
    let rank = ordinal(sign_test_rank(args.meta_rounds).unwrap_or(0));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## The storage-metadata mix (issue 23)\n\n\
         `pgbench -c 2 -j 2 -T {}` with the nine weighted scripts of `sql/workloads/storage_metadata/` \
         (get 35 %, list by prefix 15 %, log an access 15 %, upsert 12 %, full-text search 8 %, \
         record a version 6 %, JSONB containment 4 %, delete old 3 %, hook statistics 2 %) on \
         50,000 seeded objects, as role `{ROLE}`, PostgreSQL 15, {} rounds per transport, the \
         order of the six modes (pgmon, the null control, the three references) rotating. Ratios to the same round's detached run; the \
         interval as in the overhead section (the {rank} smallest and largest of {} rounds). \
         Target: attached ≥ {TARGET}.\n\n{table}\n\
         Where it goes in CPU time, as in the section on `pgbench -S` (one run per transport, \
         the agent on `auto` with `capture.probe_stats`; per transaction of the mix, which \
         sends 1.6 statements on average): `1 − share` is the ratio a CPU-bound run of the mix \
         keeps, without the rounds' noise.\n\n{cpu_table}",
        args.meta_duration, args.meta_rounds, args.meta_rounds,
    );

    // The replay figure: a capture of the mix, simple protocol then prepared.
    let dir = tempdir()?;
    let file = dir.join("meta.capture");
    record(binary, &cluster, &file, || {
        for protocol in [Protocol::Simple, Protocol::Prepared] {
            cluster.pgbench(&pgmon_tests::PgbenchRun {
                protocol,
                ..storage_metadata_run(ROLE, ROLE, Transport::Unix, 2, 2, 5)
            })?;
        }
        Ok(())
    })?;
    let hits = replay(binary, &file, &["--passes", "5"])?;
    let _ = std::fs::remove_dir_all(&dir);
    let f = |k: &str| hits[k].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        md,
        "\nThe pipeline on a capture of this mix (`pgmon-agent record` during 5 s of `-M simple` \
         then 5 s of `-M prepared`, replayed by `pgmon-agent replay --passes 5` on one core, no \
         kernel): the statement cache's hit ratio over the first pass with an empty cache \
         (every distinct shape one miss) and over the measured passes.\n\n\
         | records | statements | records/s | statements/s | hit ratio, first pass | hit ratio, measured |\n|---|---|---|---|---|---|\n\
         | {} | {} | {:.0} | {:.0} | {:.4} | {:.4} |",
        hits["records"],
        hits["queries"],
        f("records_per_second"),
        f("queries_per_second"),
        f("first_pass_hit_ratio"),
        f("hit_ratio"),
    );
    Ok((
        md,
        serde_json::json!({"overhead": overhead_json, "cpu": cpu_json, "replay": hits, "target": TARGET}),
    ))
}
