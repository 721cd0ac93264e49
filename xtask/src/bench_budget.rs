//! The query-cost budget figures of `cargo xtask bench` (issue 3):
//!
//! - enforcement latency: from the moment the client has the result of the query that
//!   crosses the `lock` step to the moment the catalog shows the role `NOLOGIN` with no
//!   backend left, polled by a second session every millisecond;
//! - the cost worker: distinct fingerprints costed per second, and the time of one
//!   estimate;
//! - with budgets on during the overhead runs (bench.rs, `Mode::Budgets`): the cost cache's
//!   hit ratio and the TPS ratio.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{Agent, Cluster, Transport, free_port};

/// The heavy statement of the latency trials: a sequential scan of `lat`.
const HEAVY: &str = "SELECT count(*) FROM lat WHERE g > 5";

/// Installs pgmon's roles and enforcement schema in database `postgres` (as superuser).
pub fn install_sql(cluster: &Cluster) -> Result<()> {
    for file in ["sql/001_roles.sql", "sql/002_enforcement.sql"] {
        cluster.run_sql_file("postgres", file)?;
    }
    Ok(())
}

/// An agent configuration with budgets on: `budgets` is the YAML of `tiers`, `roles`,
/// `ladder` and `mode`, indented by two spaces.
pub fn config(cluster: &Cluster, port: u16, hook: &str, budgets: &str) -> String {
    format!(
        "{}budgets:\n  enabled: true\n{budgets}",
        crate::bench::agent_config(cluster, port, hook)
    )
}

/// The report's budget section and its JSON: enforcement latency over `trials`, the cost
/// worker's rate on `corpus` (distinct statements, one per line), and the cost-cache hit
/// ratios of the overhead runs with budgets on.
pub fn section(
    binary: &Path,
    cluster: &Cluster,
    trials: usize,
    hit_ratios: &[f64],
    corpus: &Path,
) -> Result<(String, serde_json::Value)> {
    let latencies = enforcement_latency(binary, cluster, trials)?;
    let q = |p| quantile(&latencies, p);
    eprintln!(
        "bench: enforcement latency p50 {:.1} ms, p99 {:.1} ms",
        q(0.5),
        q(0.99)
    );
    let (costed, rate, mean) = cost_worker_rate(binary, cluster, corpus)?;
    let md = format!(
        "\n## Budgets\n\n| figure | value | target |\n|---|---|---|\n\
         | enforcement latency, crossing query's result → `NOLOGIN` and no backend left ({} trials) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | p99 < 1 s |\n\
         | cost worker: distinct fingerprints settled (costed or refused) | {costed:.0} at {rate:.0}/s, {:.2} ms per EXPLAIN | |\n\
         | cost-cache hit ratio during the pgbench runs with budgets on (median of {} runs) | {:.5} | > 0.99 |\n\n\
         The TPS ratio with budgets on is the `auto, budgets on` row of the overhead table.\n\n",
        latencies.len(),
        q(0.5),
        q(0.99),
        q(1.0),
        mean * 1000.0,
        hit_ratios.len(),
        crate::bench_stats::median(hit_ratios.to_vec()),
    );
    let json = serde_json::json!({
        "enforcement_latency_ms": latencies, "cost_worker": {"settled": costed, "per_second": rate, "mean_estimate_seconds": mean},
        "hit_ratios": hit_ratios,
    });
    Ok((md, json))
}

/// The budgets of the overhead runs: the pgbench role on a budget it never reaches, so
/// every query is charged and costed and nothing is enforced.
pub const OVERHEAD_BUDGETS: &str = "  mode: observe\n  tiers:\n    big: {budget: 1.0e15, window_seconds: 60}\n  default_tier: big\n";

/// Cost-cache hit ratio of `agent` so far: hits ÷ (hits + misses).
pub fn hit_ratio(agent: &Agent) -> Result<f64> {
    let m = agent.metrics()?;
    let hits = pgmon_tests::metrics::sum(&m, "pgmon_cost_cache_hits_total", &[]);
    let misses = pgmon_tests::metrics::sum(&m, "pgmon_cost_cache_misses_total", &[]);
    Ok(hits / (hits + misses).max(1.0))
}

fn connect(cluster: &Cluster, user: &str, db: &str) -> Result<postgres::Client> {
    postgres::Client::connect(
        &cluster.conninfo(user, db, Transport::Unix),
        postgres::NoTls,
    )
    .with_context(|| format!("connect as {user} to {db}"))
}

/// `trials` lock latencies, milliseconds: each trial role runs [`HEAVY`] once, whose cost
/// (already cached, from a warm-up role) is over its whole budget, so that one query
/// crosses the `lock` step.
pub fn enforcement_latency(binary: &Path, cluster: &Cluster, trials: usize) -> Result<Vec<f64>> {
    let mut admin = connect(cluster, "postgres", "bench")?;
    admin.batch_execute(
        "DROP TABLE IF EXISTS lat; CREATE TABLE lat AS SELECT generate_series(1, 20000) AS g; \
         ANALYZE lat; GRANT SELECT ON lat TO PUBLIC",
    )?;
    for i in 0..=trials {
        let role = if i == trials {
            "lat_warm".to_owned()
        } else {
            format!("lat_{i}")
        };
        admin.batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
        ))?;
    }
    let budgets = "  mode: enforce\n  tiers:\n    warm: {budget: 1.0e15, window_seconds: 60}\n    \
                   tiny: {budget: 10, window_seconds: 60}\n  roles:\n    - {match: lat_warm, tier: warm}\n    \
                   - {match: 'lat_*', tier: tiny}\n  ladder:\n    - {at: 1.0, action: lock}\n";
    let port = free_port();
    let mut agent = Agent::start(
        binary,
        &config(cluster, port, "auto", budgets),
        format!("127.0.0.1:{port}"),
    )?;
    // Warm the cost cache: the fingerprint is costed once, for every role.
    let mut warm = connect(cluster, "lat_warm", "bench")?;
    let fp = pgmon_tests::agent_fingerprint(binary, HEAVY)?;
    let started = Instant::now();
    loop {
        warm.simple_query(HEAVY)?;
        let s = agent.status_json()?;
        let costed = s["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["fingerprints"].as_array().into_iter().flatten())
            .any(|f| f["fingerprint"] == fp.as_str() && f["cost_state"] == "costed");
        if costed {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{HEAVY} not costed within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut poller = connect(cluster, "postgres", "postgres")?;
    let probe = poller.prepare(
        "SELECT NOT r.rolcanlogin AND NOT EXISTS \
         (SELECT FROM pg_stat_activity a WHERE a.usename = r.rolname) \
         FROM pg_roles r WHERE r.rolname = $1",
    )?;
    let mut out = Vec::with_capacity(trials);
    for i in 0..trials {
        let role = format!("lat_{i}");
        let mut client = connect(cluster, &role, "bench")?;
        client.simple_query(HEAVY)?;
        let done = Instant::now();
        loop {
            let locked: bool = poller.query_one(&probe, &[&role])?.get(0);
            if locked {
                break;
            }
            if done.elapsed() > Duration::from_secs(10) {
                bail!("{role} not locked 10 s after crossing its budget");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(done.elapsed().as_secs_f64() * 1000.0);
    }
    agent.stop()?;
    Ok(out)
}

/// The cost worker's throughput: `corpus` (distinct fingerprints, one per line) sent by
/// psql as role `bench`; returns (fingerprints settled, settled per second from the first
/// statement to the last answer, mean seconds per EXPLAIN from
/// `pgmon_cost_estimate_seconds`).
pub fn cost_worker_rate(
    binary: &Path,
    cluster: &Cluster,
    corpus: &Path,
) -> Result<(f64, f64, f64)> {
    let n = std::fs::read_to_string(corpus)?.lines().count() as f64;
    let port = free_port();
    let mut agent = Agent::start(
        binary,
        &config(cluster, port, "auto", OVERHEAD_BUDGETS),
        format!("127.0.0.1:{port}"),
    )?;
    let settled = |agent: &Agent| -> Result<f64> {
        let m = agent.metrics()?;
        let sum = |name: &str| pgmon_tests::metrics::sum(&m, name, &[]);
        Ok(sum("pgmon_cost_estimates_total") + sum("pgmon_cost_cache_errors_total"))
    };
    let before = settled(&agent)?;
    let started = Instant::now();
    let out = cluster
        .psql_cmd("bench", "bench", Transport::Unix)
        .args(["-o", "/dev/null", "-f"])
        .arg(corpus)
        .output()?;
    if !out.status.success() {
        bail!("psql -f corpus: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut last = (0.0, started.elapsed());
    loop {
        let now = settled(&agent)? - before;
        if now > last.0 {
            last = (now, started.elapsed());
        }
        if now >= n || started.elapsed() - last.1 > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = agent.metrics()?;
    let mean = pgmon_tests::metrics::sum(&m, "pgmon_cost_estimate_seconds_sum", &[])
        / pgmon_tests::metrics::sum(&m, "pgmon_cost_estimate_seconds_count", &[]).max(1.0);
    agent.stop()?;
    Ok((last.0, last.0 / last.1.as_secs_f64(), mean))
}

/// The `p`-quantile (0–1) of `v` by nearest rank.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}
