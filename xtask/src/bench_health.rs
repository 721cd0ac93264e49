//! The health-poller figures issue 5 names, for `cargo xtask bench` (one PostgreSQL 15
//! cluster):
//!
//! 1. Loop durations: a database with `--health-tables` tables (nine in ten with a primary
//!    key, an index on a text column and 20 rows; the rest partitions, 50 to each of
//!    `tables / 500` partitioned tables, 1 000 rows each), the agent's four loops at short
//!    intervals (1, 2, 10, 10 s: a run's work does not depend on its interval), and
//!    `pgmon_scrape_duration_seconds{loop}` read every 200 ms: each change is one run. The
//!    first run of each loop (which opens its session and prepares its statements) is kept
//!    apart; the median of the next `--health-runs` is compared with the loop's default
//!    budget (15 s / < 1 s, 60 s / < 3 s, 10 min / < 10 s, 1 h / < 60 s).
//! 2. The monitor's share of the cluster's CPU during `pgbench` TPC-B-like (`-c 4 -j 2`,
//!    scale 10, `--health-duration` s) with the agent at its default intervals, started a
//!    second into the run: utime + stime (`/proc/PID/stat`, proc(5)) of the backends whose
//!    `application_name` is `pgmon` (`pg_stat_activity`, sampled every 100 ms with
//!    `/proc` read at each sample, so a session shorter than that is missed) ÷ the CPU of
//!    every process of the cluster: the postmaster's own and its reaped children's
//!    (cutime, cstime) plus its live children's (the sampling session excluded). Over the
//!    whole window every loop runs once at the agent's start (the 10-minute and hourly
//!    loops' share is thus overstated); the second window starts once every loop's first
//!    run is done and holds the 15-second and 60-second loops only; the steady state is
//!    estimated from both: the first runs' CPU once per 10 minutes (the hourly loop's too,
//!    an overestimate) plus the second window's rate.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Transport, free_port, metrics,
};

use crate::{bench_stats::median, util::proc_stat};

/// Arguments of the health-poller benchmark (part of `cargo xtask bench`).
#[derive(clap::Args)]
pub struct HealthBenchArgs {
    /// Tables of the loop-duration benchmark (one database).
    #[arg(long, default_value_t = 10_000)]
    health_tables: usize,
    /// Runs of each loop after its first one (the median is reported).
    #[arg(long, default_value_t = 5)]
    health_runs: usize,
    /// Seconds of the pgbench run of the CPU share.
    #[arg(long, default_value_t = 120)]
    health_duration: u64,
    /// Run only this benchmark and print its section (nothing written to bench/).
    #[arg(long)]
    pub health_only: bool,
}

/// Each loop: name, default interval (s), default budget (s), interval in the benchmark (s).
const LOOPS: [(&str, u64, f64, u64); 4] = [
    ("fast", 15, 1.0, 1),
    ("medium", 60, 3.0, 2),
    ("slow", 600, 10.0, 10),
    ("hourly", 3600, 60.0, 10),
];

/// Makes `tables` tables in database `many`: plain ones in transactions of 250 (locks per
/// transaction stay bounded), then the partitioned ones, five parents per transaction.
fn make_tables(cluster: &Cluster, tables: usize) -> Result<()> {
    let parents = tables / 500;
    let plain = tables - parents * 50;
    cluster.psql_admin("CREATE DATABASE many")?;
    let mut script = String::new();
    for first in (1..=plain).step_by(250) {
        let last = (first + 249).min(plain);
        let _ = writeln!(
            script,
            "DO $$ BEGIN FOR i IN {first}..{last} LOOP \
               EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i); \
               EXECUTE format('CREATE INDEX ON t%s (v)', i); \
               EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text) FROM generate_series(1, 20) g', i); \
             END LOOP; END $$;"
        );
    }
    for first in (1..=parents).step_by(5) {
        let last = (first + 4).min(parents);
        let _ = writeln!(
            script,
            "DO $$ BEGIN FOR p IN {first}..{last} LOOP \
               EXECUTE format('CREATE TABLE p%s (id int, d int, v text) PARTITION BY RANGE (d)', p); \
               FOR j IN 0..49 LOOP \
                 EXECUTE format('CREATE TABLE p%s_%s PARTITION OF p%s FOR VALUES FROM (%s) TO (%s)', \
                                p, j, p, j * 100, (j + 1) * 100); \
               END LOOP; \
               EXECUTE format('INSERT INTO p%s SELECT g, g %% 5000, md5(g::text) FROM generate_series(1, 1000) g', p); \
             END LOOP; END $$;"
        );
    }
    cluster.psql("postgres", "many", Transport::Unix, &script)?;
    Ok(())
}

/// An agent on `cluster`; with `short`, its health loops at [`LOOPS`]' benchmark intervals
/// (their budgets the default, or the interval when shorter: the agent refuses a budget
/// beyond it), else at the defaults.
fn config(cluster: &Cluster, port: u16, short: bool) -> String {
    let mut yaml = crate::bench::agent_config(cluster, port, "auto");
    if short {
        yaml.push_str("health:\n  loops:\n");
        for (name, _, budget, interval) in LOOPS {
            let _ = writeln!(
                yaml,
                "    {name}: {{interval_seconds: {interval}, budget_seconds: {}}}",
                budget.min(interval as f64)
            );
        }
    }
    yaml
}

/// Loop durations: (name, first run, later runs) for each loop.
fn loop_durations(agent: &Agent, runs: usize) -> Result<Vec<(&'static str, f64, Vec<f64>)>> {
    let mut seen: HashMap<&str, Vec<f64>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120 + 20 * runs as u64);
    while LOOPS
        .iter()
        .any(|l| seen.get(l.0).map_or(0, Vec::len) < runs + 1)
    {
        if Instant::now() > deadline {
            bail!("health loops: fewer than {} runs each: {seen:?}", runs + 1);
        }
        let m = agent.metrics()?;
        for (name, ..) in LOOPS {
            let labels = [("loop", name)];
            if metrics::find(&m, "pgmon_scrape_duration_seconds", &labels).is_empty() {
                continue;
            }
            let v = metrics::sum(&m, "pgmon_scrape_duration_seconds", &labels);
            // The series is exported at 0 from the start, before the loop's first run.
            if v == 0.0 {
                continue;
            }
            let runs_of = seen.entry(name).or_default();
            if runs_of.last() != Some(&v) {
                runs_of.push(v);
                eprintln!("bench health: {name} loop {v:.3} s");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors = metrics::sum(&agent.metrics()?, "pgmon_errors_total", &[]);
    if errors > 0.0 {
        bail!(
            "health loops failed {errors} times; agent log:\n{}",
            agent.log()
        );
    }
    Ok(LOOPS
        .iter()
        .map(|(name, ..)| {
            let v = seen.remove(name).unwrap_or_default();
            (*name, v[0], v[1..=runs].to_vec())
        })
        .collect())
}

/// CPU ticks of every process of the cluster whose postmaster is `pm`: the postmaster's
/// own and its reaped children's, plus its live children's.
fn cluster_ticks(pm: u32) -> Result<u64> {
    let Some(f) = proc_stat(pm) else {
        bail!("postmaster {pm} is gone");
    };
    let mut total = f[11] + f[12] + f[13] + f[14];
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if let Some(c) = proc_stat(pid).filter(|c| c[1] == u64::from(pm)) {
            total += c[11] + c[12];
        }
    }
    Ok(total)
}

/// Samples the `pgmon` backends every 100 ms until `stop`: pid → its last utime + stime.
fn sample_pgmon(
    mut session: pgmon_tests::HeldSession,
    ticks: Arc<Mutex<HashMap<u32, u64>>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let out =
            session.run("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgmon'")?;
        let mut t = ticks.lock().expect("not poisoned");
        let known: Vec<u32> = t.keys().copied().collect();
        for pid in out
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .chain(known)
        {
            if let Some(f) = proc_stat(pid) {
                t.insert(pid, f[11] + f[12]);
            }
        }
        drop(t);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One point of the CPU-share run: pgmon ticks, cluster ticks without the sampler, when.
type Point = (u64, u64, Instant);

fn point(pm: u32, sampler: u32, ticks: &Mutex<HashMap<u32, u64>>) -> Result<Point> {
    let own = proc_stat(sampler).map_or(0, |f| f[11] + f[12]);
    let pgmon = ticks.lock().expect("not poisoned").values().sum();
    Ok((pgmon, cluster_ticks(pm)? - own, Instant::now()))
}

/// CPU seconds of the `pgmon` backends and of the cluster, and wall seconds, over a window.
#[derive(Clone, Copy, Debug)]
struct Window {
    pgmon: f64,
    cluster: f64,
    wall: f64,
}

impl Window {
    /// pgmon's share, percent.
    fn share(self) -> f64 {
        100.0 * self.pgmon / self.cluster.max(1e-9)
    }
}

/// The monitor's CPU share over the whole window and after the first runs.
fn cpu_share(binary: &Path, cluster: &Cluster, duration: u64) -> Result<[Window; 2]> {
    cluster.create_role_with_db("bench")?;
    cluster.pgbench_init("bench", "bench", 10)?;
    let sampler = cluster.hold_session("postgres", "postgres", Transport::Unix)?;
    let sampler_pid = sampler.backend_pid();
    let pm = cluster.postmaster_pid();
    let ticks = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = {
        let (ticks, stop) = (ticks.clone(), stop.clone());
        std::thread::spawn(move || sample_pgmon(sampler, ticks, stop))
    };
    let run = PgbenchRun {
        clients: 4,
        jobs: 2,
        transactions: None,
        duration_s: Some(duration),
        no_vacuum: true,
        ..PgbenchRun::new("bench", "bench")
    };
    let (points, tps) = std::thread::scope(|s| -> Result<_> {
        let bench = s.spawn(|| cluster.pgbench(&run));
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let t0 = point(pm, sampler_pid, &ticks)?;
        let port = free_port();
        let agent = Agent::start(
            binary,
            &config(cluster, port, false),
            format!("127.0.0.1:{port}"),
        )?;
        // Every loop's first run done.
        loop {
            let m = agent.metrics()?;
            if LOOPS.iter().all(|(name, ..)| {
                metrics::sum(&m, "pgmon_last_scrape_success", &[("loop", name)]) == 1.0
            }) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let t1 = point(pm, sampler_pid, &ticks)?;
        let end = Duration::from_secs(duration.saturating_sub(2));
        std::thread::sleep(end.saturating_sub(started.elapsed()));
        let t2 = point(pm, sampler_pid, &ticks)?;
        drop(agent);
        let r = bench
            .join()
            .map_err(|_| anyhow::anyhow!("pgbench panicked"))??;
        Ok(([t0, t1, t2], r.tps))
    })?;
    stop.store(true, Ordering::Relaxed);
    sampling
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let span = |a: Point, b: Point| Window {
        pgmon: b.0.saturating_sub(a.0) as f64 / hz,
        cluster: b.1.saturating_sub(a.1) as f64 / hz,
        wall: b.2.duration_since(a.2).as_secs_f64(),
    };
    eprintln!("bench health: pgbench {tps:.0} tps during the CPU-share run");
    Ok([span(points[0], points[2]), span(points[1], points[2])])
}

/// Runs both measurements; returns the report section (Markdown) and its JSON.
pub fn section(binary: &Path, args: &HealthBenchArgs) -> Result<(String, serde_json::Value)> {
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            max_connections: 100,
            ..ClusterOptions::default()
        },
    )?;
    let t = Instant::now();
    make_tables(&cluster, args.health_tables)?;
    let made = t.elapsed().as_secs_f64();
    eprintln!(
        "bench health: {} tables made in {made:.1} s",
        args.health_tables
    );
    let port = free_port();
    let agent = Agent::start(
        binary,
        &config(&cluster, port, true),
        format!("127.0.0.1:{port}"),
    )?;
    let loops = loop_durations(&agent, args.health_runs)?;
    drop(agent);
    let [whole, steady] = cpu_share(binary, &cluster, args.health_duration)?;

    // The first runs' CPU spread over the 10-minute loop's interval (the hourly loop's too:
    // an overestimate), plus what the 15 s and 60 s loops spend per second.
    let first_runs = whole.pgmon - steady.pgmon;
    let estimate = 100.0 * (steady.pgmon / steady.wall.max(1e-9) + first_runs / 600.0)
        / (whole.cluster / whole.wall.max(1e-9)).max(1e-9);
    let mut md = format!(
        "\n## Health pollers (issue 5)\n\nPostgreSQL 15, one database with {} tables ({} with a primary key, an index \
         and 20 rows; {} partitions of {} partitioned tables), made in {made:.0} s. Loops at 1, 2, 10 and 10 s \
         intervals (a run's work does not depend on its interval); durations are \
         `pgmon_scrape_duration_seconds{{loop}}`, the first run (session opened, statements prepared) apart.\n\n\
         | loop | default interval | budget | first run | median of {} runs | runs (ms) | median ÷ budget |\n|---|---|---|---|---|---|---|\n",
        args.health_tables,
        args.health_tables - args.health_tables / 500 * 50,
        args.health_tables / 500 * 50,
        args.health_tables / 500,
        args.health_runs,
    );
    let mut json_loops = Vec::new();
    for ((name, first, runs), (_, interval, budget, _)) in loops.iter().zip(LOOPS) {
        let m = median(runs.clone());
        let list: Vec<String> = runs.iter().map(|r| format!("{:.1}", r * 1e3)).collect();
        let _ = writeln!(
            md,
            "| {name} | {interval} s | {budget} s | {:.1} ms | {:.1} ms | {} | {:.2} % |",
            first * 1e3,
            m * 1e3,
            list.join(" "),
            100.0 * m / budget
        );
        json_loops.push(serde_json::json!({"loop": name, "interval_seconds": interval, "budget_seconds": budget,
            "first_run_seconds": first, "runs_seconds": runs, "median_seconds": m, "ratio_to_budget": m / budget}));
    }
    let _ = write!(
        md,
        "\nMonitor's share of the cluster's CPU during `pgbench` TPC-B-like `-c 4 -j 2` (scale 10, {} s), the \
         agent at its default intervals started a second into the run (same cluster, the {} tables included): \
         utime + stime (10 ms ticks) of the `application_name = pgmon` backends, sampled every 100 ms, ÷ every \
         process of the cluster.\n\n| window | pgmon backends | cluster | share | target |\n|---|---|---|---|---|\n\
         | agent start → end ({:.0} s): every loop's first run and session set-up inside | {:.2} s | {:.1} s | {:.3} % | < 1 % |\n\
         | after every loop's first run → end ({:.0} s): the 15 s and 60 s loops | {:.2} s | {:.1} s | {:.3} % | < 1 % |\n\
         | steady state at default intervals, estimated: the first runs' {:.2} s once per 10 min, plus the row above | | | {:.3} % | < 1 % |\n",
        args.health_duration,
        args.health_tables,
        whole.wall,
        whole.pgmon,
        whole.cluster,
        whole.share(),
        steady.wall,
        steady.pgmon,
        steady.cluster,
        steady.share(),
        first_runs,
        estimate,
    );
    let window = |w: Window| serde_json::json!({"pgmon_seconds": w.pgmon, "cluster_seconds": w.cluster, "wall_seconds": w.wall, "percent": w.share()});
    let json = serde_json::json!({
        "tables": args.health_tables, "loops": json_loops,
        "cpu_share": {
            "duration_seconds": args.health_duration,
            "whole": window(whole), "after_first_runs": window(steady),
            "steady_state_estimate_percent": estimate,
        },
    });
    Ok((md, json))
}
