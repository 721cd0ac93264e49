//! `cargo xtask bench`: the agent's overhead on pgbench.
//!
//! LEAD: `measure` below is left for you. Setup and the release build are done here; the
//! harness gives you everything else: `Cluster::start(PgVersion::Pg15, ClusterOptions {
//! durable: true, .. })`, `cluster.pgbench_init(..)`, `cluster.pgbench(&PgbenchRun { .. })`
//! → `PgbenchResult { tps, .. }`, and `Agent::start(&binary, &yaml, addr)` / `agent.stop()`.
//! CLI contract of the agent: `pgmon-agent run --config FILE`,
//! `pgmon-agent status --addr 127.0.0.1:8181 [--json]`, `GET /metrics`.

use std::path::Path;

use anyhow::{Result, bail};

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
    /// Skip the release build (use the agent binary already in target/release).
    #[arg(long)]
    no_build: bool,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 30)]
    duration: u64,
}

/// Setup, build, then [`measure`].
pub fn run(args: &BenchArgs) -> Result<()> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    if !args.no_build {
        crate::util::build_release()?;
    }
    measure(&crate::util::agent_release_binary(), args.duration)
}

/// LEAD: TO BE WRITTEN — pgbench TPS without the agent vs with it (per hook set), same
/// cluster, alternating runs; results under `bench/`.
fn measure(agent: &Path, duration_s: u64) -> Result<()> {
    bail!(
        "cargo xtask bench is not written yet (agent {}, {duration_s} s per run): see xtask/src/bench.rs",
        agent.display()
    )
}
