//! What the agent costs per 1,000 queries/s, for sizing it (issue 24): `pgbench -S -c 2 -j 2
//! --rate R` (a throttled run: R transactions per second, one statement each) with the agent
//! attached on `auto`, at three rates. Per rate: the rate reached, the agent's CPU (utime +
//! stime over the run, /proc/PID/stat, fraction of one core), that CPU per 1,000 queries/s,
//! its RSS at the end, and the figure `pgmon-agent status` shows for the same run (its own
//! last ~10 s, `agent.recent`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use pgmon_tests::{Agent, Cluster, Transport, free_port};

use crate::bench::{agent_config, proc_usage};

/// Options of the per-rate section.
#[derive(clap::Args)]
pub struct RatesBenchArgs {
    /// Run only the per-rate section (on its own cluster) and print it.
    #[arg(long)]
    pub rates_only: bool,
    /// The throttled rates, transactions (= queries) per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
    pub rates: Vec<u32>,
    /// Seconds per throttled run.
    #[arg(long, default_value_t = 20)]
    pub rate_duration: u64,
}

/// One run's figures.
struct RateSample {
    target: u32,
    qps: f64,
    cpu: f64,
    rss_mib: f64,
    status_per_1000: Option<f64>,
}

/// Runs the section on `cluster` (role and database `bench`, initialised by pgbench):
/// (markdown, JSON).
pub fn section(
    binary: &Path,
    cluster: &Cluster,
    args: &RatesBenchArgs,
) -> Result<(String, serde_json::Value)> {
    // SAFETY: sysconf is always safe to call.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    let mut samples = Vec::new();
    for &target in &args.rates {
        let port = free_port();
        let mut agent = Agent::start(
            binary,
            &agent_config(cluster, port, "auto"),
            format!("127.0.0.1:{port}"),
        )?;
        std::thread::sleep(crate::bench_overhead::SETTLE);
        let before = proc_usage(agent.pid()).context("agent /proc stat")?;
        let mut run = crate::bench_overhead::select_only_run(Transport::Unix, args.rate_duration);
        run.extra_args = vec!["--rate".into(), target.to_string()];
        let r = cluster.pgbench(&run)?;
        let after = proc_usage(agent.pid()).context("agent /proc stat")?;
        let status = agent.status_json()?;
        agent.stop()?;
        let qps = r.transactions_processed as f64 / args.rate_duration as f64;
        let cpu = (after.0 - before.0) as f64 / hz / args.rate_duration as f64;
        let s = RateSample {
            target,
            qps,
            cpu,
            rss_mib: after.1 as f64 * page / (1 << 20) as f64,
            status_per_1000: status["agent"]["recent"]["cpu_fraction_per_1000_queries_per_second"]
                .as_f64(),
        };
        eprintln!(
            "bench: --rate {target}: {qps:.0} queries/s, agent {:.2} % of a core, {:.1} MiB",
            cpu * 100.0,
            s.rss_mib
        );
        samples.push(s);
    }
    let mut md = format!(
        "\n## What the agent costs per 1,000 queries/s\n\n\
         `pgbench -S -c 2 -j 2 --rate R -T {}` over the unix socket (one statement per \
         transaction), the agent attached on `auto`: its CPU over the run (all threads, \
         fraction of one core), that CPU per 1,000 queries/s, and its RSS at the end. \
         `status` is what `pgmon-agent status` showed for the same run (its last ~10 s).\n\n\
         | rate asked | queries/s | agent CPU (% of a core) | per 1,000 queries/s (% of a core) | RSS (MiB) | status, per 1,000 queries/s |\n\
         |---|---|---|---|---|---|\n",
        args.rate_duration
    );
    let mut json = Vec::new();
    for s in &samples {
        let per = s.cpu / (s.qps / 1000.0).max(1e-9);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.3} | {:.1} | {} |",
            s.target,
            s.qps,
            s.cpu * 100.0,
            per * 100.0,
            s.rss_mib,
            s.status_per_1000
                .map_or("-".into(), |v| format!("{:.3}", v * 100.0)),
        );
        json.push(serde_json::json!({
            "rate": s.target, "queries_per_second": s.qps, "agent_cpu_fraction": s.cpu,
            "cpu_fraction_per_1000_qps": per, "rss_mib": s.rss_mib,
            "status_cpu_fraction_per_1000_qps": s.status_per_1000,
        }));
    }
    Ok((md, serde_json::Value::Array(json)))
}
