//! `cargo xtask …`: pgmon's developer tasks.
//!
//! - `setup`: installs what a fresh Debian 12 machine needs (idempotent, fast when done).
//! - `test`: setup, release build of the workspace (agent + eBPF), then every test.
//! - `demo`: a PostgreSQL 15 cluster with two roles under load, watched by the agent.
//! - `bench`: the benchmarks of `bench.rs`; writes `bench/REPORT.md`.
//! - `package`: the Debian package.
//! - `fresh-check`: strips what `setup` installed and runs `demo` and `test` in a fresh
//!   clone (the proof that both work on a new machine).
//! - `kernels`: boots Debian's 5.10, 6.1 and 6.12 kernels in QEMU and runs the agent's doctor
//!   per hook family and a short capture in each.

mod bench;
mod bench_budget;
mod bench_footprint;
mod bench_footprint_report;
mod bench_footprint_workload;
mod bench_health;
mod bench_host;
mod bench_meta;
mod bench_overhead;
mod bench_pgbouncer;
mod bench_probe;
mod bench_rates;
mod bench_replay;
mod bench_stats;
mod bench_storage;
mod bench_storage_outrun;
mod bench_stress;
mod bench_tls;
#[cfg(test)]
mod bootstrap;
mod demo;
mod fresh_check;
mod kernels;
mod package;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "pgmon's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install packages, toolchain pieces and PostgreSQL 18 binaries (idempotent; root).
    Setup,
    /// Setup, `cargo build --release`, then `cargo test --release -- --test-threads=1`.
    Test(test::TestArgs),
    /// Run the agent against a PostgreSQL 15 cluster with a mixed workload and show what it saw.
    Demo(demo::DemoArgs),
    /// Measure the agent's overhead and the figures the issues name; writes bench/REPORT.md.
    Bench(bench::BenchArgs),
    /// Prove the two commands on a machine as it comes: purge what setup installed, then
    /// run `demo` and `test` in a fresh clone, timed (destructive: needs --yes; root).
    FreshCheck(fresh_check::FreshCheckArgs),
    /// Build the Debian package (target/debian/pgmon_<version>_amd64.deb).
    Package(package::PackageArgs),
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels in QEMU (TCG) over the host's root and run
    /// `pgmon-agent doctor` per hook family and a short capture in each (root).
    Kernels(kernels::KernelsArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Test(args) => test::run(&args),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Package(args) => package::run(&args),
        Cmd::FreshCheck(args) => fresh_check::run(&args),
        Cmd::Kernels(args) => kernels::run(&args),
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
