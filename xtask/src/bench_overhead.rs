//! The throughput rounds of the overhead benchmark (`cargo xtask bench`, section 1): one
//! timed pgbench run in a given mode (detached, attached, with budgets, attached to another
//! cluster, or one of the references a DBA would run instead: `pg_stat_statements`,
//! `log_min_duration_statement = 0`, PgBouncer in front), with the agent's (or PgBouncer's)
//! CPU and RSS.

use std::path::Path;

use anyhow::{Context as _, Result};
use pgmon_tests::{Agent, Cluster, PgbenchRun, Transport, free_port};

use crate::bench::{agent_config, proc_usage};

/// A way of running pgbench: without the agent, with it on one hook family, or with it
/// attached to another cluster (the hooks run for every syscall on the host, but nothing
/// of the measured cluster is copied: the floor no work inside the programs can remove).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Detached,
    Attached(&'static str),
    /// `auto`, with budgets on (observe) for the pgbench role: every query charged, costed.
    Budgets,
    OtherCluster,
    /// No agent; `pg_stat_statements.track = top` (every other mode runs with `none`): the
    /// reference a DBA would run instead, counting per statement in shared memory.
    PgStatStatements,
    /// No agent; `log_min_duration_statement = 0`: every statement and its duration written
    /// to the server log, what log-based tools need to see every statement.
    LogAll,
    /// No agent; pgbench connects through PgBouncer (transaction pooling,
    /// [`crate::bench_pgbouncer`]) over the run's transport: the cost of putting a proxy in
    /// the path, as proxy-based monitors do.
    PgBouncer,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Detached => "detached",
            Mode::Attached(h) => h,
            Mode::Budgets => "auto, budgets on",
            Mode::OtherCluster => "auto, on another cluster",
            Mode::PgStatStatements => "pg_stat_statements (track = top)",
            Mode::LogAll => "log_min_duration_statement = 0",
            Mode::PgBouncer => "PgBouncer in front",
        }
    }
}

/// The modes of each round. The fallback families (`tp_btf` and below, for kernels before
/// 6.3) are not in the rounds: each mode costs a run per round, and the rounds' power goes
/// to the figure the issue names; `every_hook_family_counts_exactly` (capture_edges) shows
/// that they count exactly, and `capture.probe_stats` times them on a host that uses them.
pub const MODES: [Mode; 7] = [
    Mode::Detached,
    Mode::Attached("tp_btf_sock"),
    Mode::Budgets,
    Mode::OtherCluster,
    Mode::PgStatStatements,
    Mode::LogAll,
    Mode::PgBouncer,
];

/// The modes of the TPC-B-like rounds: pgmon, the null control and the three references.
pub const TPCB_MODES: [Mode; 6] = [
    Mode::Detached,
    Mode::Attached("tp_btf_sock"),
    Mode::OtherCluster,
    Mode::PgStatStatements,
    Mode::LogAll,
    Mode::PgBouncer,
];

/// Puts in place the server settings `mode` runs under: `pg_stat_statements.track` (`top`
/// for [`Mode::PgStatStatements`], `none` otherwise, so the other modes' baseline has no
/// statement statistics; the library stays loaded) and `log_min_duration_statement` (`0`
/// for [`Mode::LogAll`], `-1` otherwise), by `ALTER SYSTEM` and a reload (both settings take
/// effect without a restart; the run's new connections read them). Needs
/// `pg_stat_statements` in `shared_preload_libraries`, as the bench cluster has.
pub fn server_settings(cluster: &Cluster, mode: Mode) -> Result<()> {
    let track = if mode == Mode::PgStatStatements {
        "top"
    } else {
        "none"
    };
    let log = if mode == Mode::LogAll { "0" } else { "-1" };
    cluster.psql_admin(&format!(
        "ALTER SYSTEM SET pg_stat_statements.track = '{track}'"
    ))?;
    cluster.psql_admin(&format!(
        "ALTER SYSTEM SET log_min_duration_statement = {log}"
    ))?;
    cluster.psql_admin("SELECT pg_reload_conf()")?;
    Ok(())
}

/// `pgbench -c 2 -j 2 -T duration` with its built-in TPC-B-like script (five statements in
/// a transaction: three updates, a select, an insert) as role `bench` over `transport`.
pub fn tpcb_run(transport: Transport, duration: u64) -> PgbenchRun {
    PgbenchRun {
        select_only: false,
        ..select_only_run(transport, duration)
    }
}

/// Pause before every run's pgbench. An attached agent runs this long before pgbench starts:
/// the figure is the steady state of an agent that stays attached, so its one-off start-up
/// work (the first run of every health loop, the `pg_stat_activity` seed, the first EXPLAIN
/// of each statement with budgets on) is left out of the window. A detached run waits as
/// long, so that no mode starts closer than another to the previous run's end (its
/// backends' exit, its agent's teardown).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// One overhead sample.
pub struct Sample {
    pub transport: Transport,
    pub round: usize,
    pub mode: Mode,
    pub tps: f64,
    /// Agent CPU, fraction of one core, and resident memory at the end (attached only;
    /// PgBouncer's for [`Mode::PgBouncer`]).
    pub agent_cpu: Option<f64>,
    pub agent_rss: Option<u64>,
    /// Cost-cache hit ratio over the run (budgets on only).
    pub hit_ratio: Option<f64>,
}

/// The overhead workload: `pgbench -S -c 2 -j 2 -T duration` as role `bench` over
/// `transport`.
pub fn select_only_run(transport: Transport, duration: u64) -> PgbenchRun {
    PgbenchRun {
        transport,
        clients: 2,
        jobs: 2,
        transactions: None,
        duration_s: Some(duration),
        select_only: true,
        no_vacuum: true,
        ..PgbenchRun::new("bench", "bench")
    }
}

/// Clock ticks per second and the page size in bytes (the units of /proc/PID/stat).
fn clock_and_page() -> (f64, u64) {
    // SAFETY: sysconf is always safe to call.
    unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as u64,
        )
    }
}

/// One run of `run` (a timed pgbench run: `duration_s` set) in `mode`, the agent started
/// and stopped around it; `round` labels the sample.
pub fn overhead_run(
    binary: &Path,
    cluster: &Cluster,
    other: &Cluster,
    run: &PgbenchRun,
    round: usize,
    mode: Mode,
) -> Result<Sample> {
    let transport = run.transport;
    let duration = run
        .duration_s
        .context("an overhead run is timed (duration_s)")?;
    server_settings(cluster, mode)?;
    match mode {
        Mode::Detached | Mode::PgStatStatements | Mode::LogAll | Mode::PgBouncer => {
            let bouncer = match mode {
                Mode::PgBouncer => Some(crate::bench_pgbouncer::PgBouncer::start(
                    cluster, transport, &run.db, &run.user,
                )?),
                _ => None,
            };
            // The same pause as an attached run's: every run starts SETTLE after the one
            // before it ended (and after that run's agent, if any, detached and exited).
            std::thread::sleep(SETTLE);
            // PgBouncer's own CPU and RSS go in the agent columns of its row.
            let (r, proxy) = match &bouncer {
                Some(b) => {
                    let mut through = run.clone();
                    through.extra_args.extend(b.client_args());
                    let before = proc_usage(b.pid()).context("pgbouncer /proc stat")?;
                    let r = cluster.pgbench(&through)?;
                    let after = proc_usage(b.pid()).context("pgbouncer /proc stat")?;
                    (r, Some((after.0 - before.0, after.1)))
                }
                None => (cluster.pgbench(run)?, None),
            };
            drop(bouncer);
            let (hz, page) = clock_and_page();
            if mode == Mode::LogAll {
                // A run logs a few hundred MB at these rates: the next runs need not keep it.
                server_settings(cluster, Mode::Detached)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(cluster.log_file())?
                    .set_len(0)?;
            }
            Ok(Sample {
                transport,
                round,
                mode,
                tps: r.tps,
                agent_cpu: proxy.map(|(ticks, _)| ticks as f64 / hz / duration as f64),
                agent_rss: proxy.map(|(_, pages)| pages * page),
                hit_ratio: None,
            })
        }
        Mode::Attached(_) | Mode::Budgets | Mode::OtherCluster => {
            let port = free_port();
            let config = match mode {
                Mode::Attached(hook) => agent_config(cluster, port, hook),
                Mode::Budgets => crate::bench_budget::config(
                    cluster,
                    port,
                    "auto",
                    crate::bench_budget::OVERHEAD_BUDGETS,
                ),
                _ => agent_config(other, port, "auto"),
            };
            let mut agent = Agent::start(binary, &config, format!("127.0.0.1:{port}"))?;
            std::thread::sleep(SETTLE);
            let before = proc_usage(agent.pid()).context("agent /proc stat")?;
            let r = cluster.pgbench(run)?;
            let after = proc_usage(agent.pid()).context("agent /proc stat")?;
            let hit_ratio = if mode == Mode::Budgets {
                Some(crate::bench_budget::hit_ratio(&agent)?)
            } else {
                None
            };
            agent.stop()?;
            let (hz, page) = clock_and_page();
            let cpu = (after.0 - before.0) as f64 / hz / duration as f64;
            Ok(Sample {
                transport,
                round,
                mode,
                tps: r.tps,
                agent_cpu: Some(cpu),
                agent_rss: Some(after.1 * page),
                hit_ratio,
            })
        }
    }
}

/// The overhead table of `samples`: a markdown table (header included; one row per
/// transport × mode: median TPS, median ratio to the same round's detached run with its
/// 95 % interval and every round's ratio, the agent's median CPU in % of a core and RSS in
/// MiB) and the same rows as JSON.
pub fn table(
    samples: &[Sample],
    transports: &[Transport],
    modes: &[Mode],
) -> (String, Vec<serde_json::Value>) {
    use crate::bench_stats::{median, median_interval};
    use std::fmt::Write as _;
    let mut md = String::from(
        "| transport | mode | median TPS | median ratio | 95 % interval | ratios | agent (or PgBouncer) CPU, median % of a core | its RSS, median MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    let blank_nan =
        |v: f64, f: &dyn Fn(f64) -> String| if v.is_nan() { String::new() } else { f(v) };
    for &transport in transports {
        for &mode in modes {
            let of = |m: Mode| {
                samples
                    .iter()
                    .filter(move |s| s.transport == transport && s.mode == m)
            };
            let tps = median(of(mode).map(|s| s.tps).collect());
            let ratios: Vec<f64> = of(mode)
                .filter_map(|s| {
                    let base = of(Mode::Detached).find(|d| d.round == s.round)?;
                    Some(s.tps / base.tps)
                })
                .collect();
            let cpu = median(of(mode).filter_map(|s| s.agent_cpu).collect());
            let rss = median(
                of(mode)
                    .filter_map(|s| s.agent_rss.map(|r| r as f64 / (1 << 20) as f64))
                    .collect(),
            );
            let detached = mode == Mode::Detached;
            let ratio = median(ratios.clone());
            let interval = median_interval(ratios.clone()).filter(|_| !detached);
            let list = if detached {
                String::new()
            } else {
                ratios
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                md,
                "| {transport:?} | {} | {tps:.0} | {} | {} | {list} | {} | {} |",
                mode.name(),
                if detached {
                    "1".into()
                } else {
                    format!("{ratio:.3}")
                },
                interval.map_or(String::new(), |(lo, hi)| format!("{lo:.3}–{hi:.3}")),
                blank_nan(cpu, &|c| format!("{:.1}", c * 100.0)),
                blank_nan(rss, &|r| format!("{r:.1}")),
            );
            json.push(serde_json::json!({
                "transport": format!("{transport:?}"), "mode": mode.name(), "median_tps": tps,
                "median_ratio": if detached { 1.0 } else { ratio },
                "median_ratio_interval_95": interval.map(|(lo, hi)| [lo, hi]),
                "agent_cpu_fraction": if cpu.is_nan() { None } else { Some(cpu) },
                "agent_rss_mib": if rss.is_nan() { None } else { Some(rss) },
            }));
        }
    }
    (md, json)
}
