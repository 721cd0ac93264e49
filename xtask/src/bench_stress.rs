//! Completeness under stress (section 2 of [`crate::bench`]): 16 pgbench clients with the
//! agent attached, pgbench's transaction count against pgmon's count of the statement.

use std::{path::Path, time::Duration};

use anyhow::Result;
use pgmon_tests::{Agent, Cluster, PgbenchRun, Protocol, free_port};

use crate::bench::agent_config;

/// Runs 16 clients with the agent attached; returns (pgbench transactions, pgmon's count of
/// the statement, kernel drops, desyncs).
pub(crate) fn stress_run(
    binary: &Path,
    cluster: &Cluster,
    protocol: Protocol,
    duration: u64,
) -> Result<(u64, u64, u64, u64)> {
    let port = free_port();
    let mut agent = Agent::start(
        binary,
        &agent_config(cluster, port, "auto"),
        format!("127.0.0.1:{port}"),
    )?;
    let fp = pgmon_tests::agent_fingerprint(
        binary,
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    )?;
    let count = |agent: &Agent| agent.fingerprint_calls("bench", &fp);
    let before = count(&agent)?;
    let r = cluster.pgbench(&PgbenchRun {
        clients: 16,
        jobs: 2,
        transactions: None,
        duration_s: Some(duration),
        protocol,
        select_only: true,
        no_vacuum: true,
        ..PgbenchRun::new("bench", "bench")
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let seen = count(&agent)? - before;
    let s = agent.status_json()?;
    let drops = s["capture"]["dropped"].as_u64().unwrap_or(0);
    let desyncs = s["capture"]["desyncs_frontend"].as_u64().unwrap_or(0)
        + s["capture"]["desyncs_backend"].as_u64().unwrap_or(0);
    agent.stop()?;
    Ok((r.transactions_processed, seen, drops, desyncs))
}
